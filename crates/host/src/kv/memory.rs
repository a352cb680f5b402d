//! In-memory backend: tests, `--memory-kv`, and a runtime config's `type = "spin"` store without a `path` (or
//! `state_dir = ""`), which Spin opens as an in-memory SQLite database. So counters are kept as Spin's SQLite
//! store keeps them (8-byte little-endian `i64`), and `increment` of any other value is refused, as by
//! [`super::SqliteStore`].

use std::collections::HashMap;
use std::sync::Mutex;

use async_trait::async_trait;

use super::{Backend, KvError, KvResult, decode_counter};

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
            let next = decode_counter(key, m.get(key).map(Vec::as_slice))?
                .checked_add(delta)
                .ok_or_else(|| KvError("counter overflow".into()))?;
            m.insert(key.to_owned(), next.to_le_bytes().to_vec());
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
    use super::super::{SharedBackend, SqliteStore};
    use super::*;

    #[tokio::test]
    async fn conformance() {
        super::super::conformance::check(std::sync::Arc::new(super::MemoryStore::default())).await;
    }

    /// A counter reads the same in memory as in the SQLite store (and as in Spin's, which backs a `type =
    /// "spin"` store without a `path` with an in-memory SQLite database): 8 bytes, little-endian; `increment`
    /// of any other value is refused by both. Before, the memory store kept decimal text (`b"5"`).
    #[tokio::test]
    async fn counters_are_encoded_as_in_the_sqlite_store() {
        let dir = tempfile::tempdir().unwrap();
        let sqlite: SharedBackend =
            std::sync::Arc::new(SqliteStore::open(&dir.path().join("kv.db"), "default").unwrap());
        let memory: SharedBackend = std::sync::Arc::new(MemoryStore::default());
        for store in [sqlite, memory] {
            assert_eq!(store.increment("k", 5).await.unwrap(), 5);
            assert_eq!(
                store.get("k").await.unwrap(),
                Some(5i64.to_le_bytes().to_vec())
            );
            assert_eq!(store.increment("k", -7).await.unwrap(), -2);
            assert_eq!(
                store.get("k").await.unwrap(),
                Some((-2i64).to_le_bytes().to_vec())
            );
            // Eight bytes written by `set` are a counter too; decimal text is not.
            store.set("eight", &40i64.to_le_bytes()).await.unwrap();
            assert_eq!(store.increment("eight", 2).await.unwrap(), 42);
            store.set("text", b"5").await.unwrap();
            assert!(store.increment("text", 1).await.is_err());
            assert_eq!(store.get("text").await.unwrap(), Some(b"5".to_vec()));
            store.set("max", &i64::MAX.to_le_bytes()).await.unwrap();
            assert!(store.increment("max", 1).await.is_err(), "overflow");
        }
    }
}
