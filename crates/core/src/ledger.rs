//! The tamper-evident money ledger (being written): hash-chained, append-only entries.
