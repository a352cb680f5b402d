//! Metered data: carrier-signed usage receipts ([`receipt`]: the EIP-712 scheme and its checks), a SIM's
//! account of credits against used bytes ([`account`]: credits once per invoice, quota decisions, unused-data
//! refunds), page signatures over many receipts ([`page`]), the claims a receipt is charged under once ([`claim`]),
//! batch ingest ([`ingest`]: parsing, outcomes, the receipt log), a charged batch's ledger events held until logged ([`held`]), the quota request body ([`quota`]), grants that reserve their bytes ([`grant`]) and usage queries ([`report`]).
//! Pure: the metering component loads, calls these and stores with atomics.

pub mod account;
pub mod claim;
pub mod failed;
pub mod grant;
pub mod hashes;
pub mod held;
pub mod ingest;
pub mod page;
pub mod quota;
pub mod receipt;
pub mod report;
