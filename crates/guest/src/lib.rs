//! Guest-side helpers shared by esim402's components (compiled into each component for wasm32-wasip2).
//!
//! [`kv`] wraps `wasi:keyvalue` atomics into the two operations our at-most-once designs need: insert a key only
//! if it is absent, and read-modify-write a JSON value with compare-and-swap, retrying on contention.
//! [`ledger`] appends to and reads the hash-chained money ledger on top of them. [`config`] reads the Spin
//! variables several components share.
#![deny(missing_docs)]

pub mod config;
pub mod kv;
pub mod ledger;
