//! Per-component tests: each built component alone in wasmtime, called through its exported WIT functions.
#![allow(clippy::unwrap_used, reason = "tests")]

mod dispatch;
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

/// The in-memory store, except that writes to keys under `prefix` fail while `failing` is set.
pub struct FailingWrites {
    inner: esim402_host::kv::MemoryStore,
    prefix: &'static str,
    failing: Arc<AtomicBool>,
}

impl FailingWrites {
    /// An empty store whose writes under `prefix` fail while `failing` is set.
    pub fn new(prefix: &'static str, failing: &Arc<AtomicBool>) -> Self {
        Self {
            inner: esim402_host::kv::MemoryStore::default(),
            prefix,
            failing: failing.clone(),
        }
    }

    fn check(&self, key: &str) -> esim402_host::kv::KvResult<()> {
        if key.starts_with(self.prefix) && self.failing.load(Ordering::SeqCst) {
            return Err(esim402_host::kv::KvError(format!("injected: {key}")));
        }
        Ok(())
    }
}

#[async_trait::async_trait]
impl esim402_host::kv::Backend for FailingWrites {
    async fn get(&self, key: &str) -> esim402_host::kv::KvResult<Option<Vec<u8>>> {
        self.inner.get(key).await
    }
    async fn set(&self, key: &str, value: &[u8]) -> esim402_host::kv::KvResult<()> {
        self.check(key)?;
        self.inner.set(key, value).await
    }
    async fn delete(&self, key: &str) -> esim402_host::kv::KvResult<()> {
        self.check(key)?;
        self.inner.delete(key).await
    }
    async fn exists(&self, key: &str) -> esim402_host::kv::KvResult<bool> {
        self.inner.exists(key).await
    }
    async fn keys(&self) -> esim402_host::kv::KvResult<Vec<String>> {
        self.inner.keys().await
    }
    async fn increment(&self, key: &str, delta: i64) -> esim402_host::kv::KvResult<i64> {
        self.check(key)?;
        self.inner.increment(key, delta).await
    }
    async fn compare_and_swap(
        &self,
        key: &str,
        expected: Option<&[u8]>,
        value: &[u8],
    ) -> esim402_host::kv::KvResult<bool> {
        self.check(key)?;
        self.inner.compare_and_swap(key, expected, value).await
    }
}
