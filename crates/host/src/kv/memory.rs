//! In-memory backend (tests, `--kv memory`).

use std::collections::HashMap;
use std::sync::Mutex;

use async_trait::async_trait;

use super::{Backend, KvError, KvResult, parse_counter};

/// A process-local map behind one mutex: every operation is atomic.
#[derive(Default)]
pub struct MemoryStore {
    map: Mutex<HashMap<String, Vec<u8>>>,
}

impl MemoryStore {
    fn with<R>(&self, f: impl FnOnce(&mut HashMap<String, Vec<u8>>) -> R) -> KvResult<R> {
        let mut guard = self
            .map
            .lock()
            .map_err(|_| KvError("memory store poisoned".into()))?;
        Ok(f(&mut guard))
    }
}

#[async_trait]
impl Backend for MemoryStore {
    async fn get(&self, key: &str) -> KvResult<Option<Vec<u8>>> {
        self.with(|m| m.get(key).cloned())
    }
    async fn set(&self, key: &str, value: &[u8]) -> KvResult<()> {
        self.with(|m| {
            m.insert(key.to_owned(), value.to_vec());
        })
    }
    async fn delete(&self, key: &str) -> KvResult<()> {
        self.with(|m| {
            m.remove(key);
        })
    }
    async fn exists(&self, key: &str) -> KvResult<bool> {
        self.with(|m| m.contains_key(key))
    }
    async fn keys(&self) -> KvResult<Vec<String>> {
        self.with(|m| m.keys().cloned().collect())
    }
    async fn increment(&self, key: &str, delta: i64) -> KvResult<i64> {
        self.with(|m| {
            let next = parse_counter(key, m.get(key).map(Vec::as_slice))?
                .checked_add(delta)
                .ok_or_else(|| KvError("counter overflow".into()))?;
            m.insert(key.to_owned(), next.to_string().into_bytes());
            Ok(next)
        })?
    }
    async fn compare_and_swap(
        &self,
        key: &str,
        expected: Option<&[u8]>,
        value: &[u8],
    ) -> KvResult<bool> {
        self.with(|m| {
            if m.get(key).map(Vec::as_slice) != expected {
                return false;
            }
            m.insert(key.to_owned(), value.to_vec());
            true
        })
    }
}

#[cfg(test)]
mod tests {
    #[tokio::test]
    async fn conformance() {
        super::super::conformance::check(std::sync::Arc::new(super::MemoryStore::default())).await;
    }
}
