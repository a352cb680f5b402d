//! Per-component tests: each built component alone in wasmtime, called through its exported WIT functions.
#![allow(clippy::unwrap_used, reason = "tests")]

mod dispatch;
mod fee_bump;
mod invoice_keys;
mod invoices;
mod metering;
mod refunds;
mod verifier;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

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

/// The in-memory store, except that writes (or every call) to keys under `prefix` fail while `failing` is set.
pub type FailingWrites = esim402_host::kv::wrapped::Wrapped<Failing>;

/// What [`FailingWrites`] adds: writes (`reads`: every call) under `prefix` fail while `failing` is set.
pub struct Failing {
    prefix: &'static str,
    failing: Arc<AtomicBool>,
    reads: bool,
}

impl esim402_host::kv::wrapped::Hook for Failing {
    fn before(
        &self,
        op: esim402_host::kv::wrapped::Op,
        key: &str,
    ) -> esim402_host::kv::KvResult<()> {
        if (self.reads || op.writes())
            && key.starts_with(self.prefix)
            && self.failing.load(Ordering::SeqCst)
        {
            return Err(esim402_host::kv::KvError(format!("injected: {key}")));
        }
        Ok(())
    }
}

/// An empty store whose writes under `prefix` fail while `failing` is set.
pub fn failing_writes(prefix: &'static str, failing: &Arc<AtomicBool>) -> FailingWrites {
    failing_store(prefix, failing, false)
}

/// An empty store whose calls of any kind under `prefix` fail while `failing` is set.
pub fn failing_calls(prefix: &'static str, failing: &Arc<AtomicBool>) -> FailingWrites {
    failing_store(prefix, failing, true)
}

fn failing_store(prefix: &'static str, failing: &Arc<AtomicBool>, reads: bool) -> FailingWrites {
    esim402_host::kv::wrapped::Wrapped::new(
        Arc::new(esim402_host::kv::MemoryStore::default()),
        Failing {
            prefix,
            failing: failing.clone(),
            reads,
        },
    )
}
