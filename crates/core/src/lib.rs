//! esim402's kernel: the domain types every component and the host share.
//!
//! Everything here is pure (no I/O, no clocks, no randomness: callers pass `now` and random bytes in), so it is
//! unit-tested natively and runs unchanged inside the wasm components. Values are parsed at the boundary into
//! newtypes whose only constructors validate ("parse, don't validate"); money is integer micro-USDC.
#![deny(missing_docs)]

pub mod activation;
pub mod api_error;
pub mod auth;
pub mod chain;
pub mod cost;
pub mod deployment;
pub mod esim;
pub mod evm;
pub mod hold;
pub mod ids;
pub mod invoice;
pub mod join;
pub mod json_body;
pub mod ledger;
pub mod money;
pub mod order;
pub mod paid;
pub mod pricing;
pub mod query;
pub mod refund;
pub mod routes;
pub mod settlement;
pub mod store;
pub mod toml_text;
pub mod usage;
pub mod x402;

pub use activation::ActivationRequest;
pub use api_error::{ApiError, ErrorKind};
pub use chain::{Address, ChainId, Network};
pub use ids::{CarrierId, DataMb, InvoiceId, Region};
pub use invoice::{Invoice, InvoiceStatus, PaymentOption};
pub use money::UsdcAmount;
