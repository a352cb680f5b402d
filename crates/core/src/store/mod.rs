//! How esim402 keeps state in a Spin key-value store: [`keys`] is the key map (every prefix, its one writer);
//! [`cell`] is the versioned-cell protocol every component's read-modify-write goes through (correct on Spin's
//! SQLite and Redis stores, whose compare-and-swap cannot be trusted).

pub mod cell;
pub mod keys;
pub mod retry;
