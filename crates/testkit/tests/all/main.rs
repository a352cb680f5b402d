//! Per-component tests: each built component alone in wasmtime, called through its exported WIT functions.
#![allow(clippy::unwrap_used, reason = "tests")]

mod dispatch;
mod invoices;
mod metering;
mod refunds;
mod verifier;

use esim402_testkit::types;

/// A plain activation request.
pub fn activation(region: &str, data_mb: u32) -> types::ActivationRequest {
    types::ActivationRequest {
        region: region.into(),
        data_mb,
        carrier: None,
        eid: None,
        payer: None,
        networks: Vec::new(),
        allow_failover: false,
    }
}

pub use esim402_core::join::join_all;
