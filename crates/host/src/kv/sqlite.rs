//! SQLite backend, file-compatible with Spin's `type = "spin"` store (table `spin_key_value`, one row per
//! `(store, key)`; counters as 8-byte little-endian integers, as Spin's `increment` writes them), so `spin up`
//! and `esim402 up` can take turns on one `.spin/sqlite_key_value.db`. Operations run on a blocking thread;
//! atomics run inside `BEGIN IMMEDIATE` transactions, so concurrent writers (even other processes on the same
//! file) serialise on SQLite's write lock.

use std::path::Path;
use std::sync::{Arc, Mutex};

use anyhow::Context;
use async_trait::async_trait;
use rusqlite::{Connection, OptionalExtension, TransactionBehavior, params};

use super::{Backend, KvError, KvResult};

/// One store label inside a SQLite file.
pub struct SqliteStore {
    conn: Arc<Mutex<Connection>>,
    label: String,
}

impl SqliteStore {
    /// Open (creating if needed) the database file and its table.
    pub fn open(path: &Path, label: &str) -> anyhow::Result<Self> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)
                .with_context(|| format!("cannot create {}", dir.display()))?;
        }
        let conn = Connection::open(path)
            .with_context(|| format!("cannot open SQLite store {}", path.display()))?;
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.execute(
            "CREATE TABLE IF NOT EXISTS spin_key_value (store TEXT NOT NULL, key TEXT NOT NULL, value BLOB NOT NULL, PRIMARY KEY (store, key))",
            [],
        )?;
        Ok(Self {
            conn: Arc::new(Mutex::new(conn)),
            label: label.to_owned(),
        })
    }

    async fn run<R: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Connection, &str) -> rusqlite::Result<R> + Send + 'static,
    ) -> KvResult<R> {
        let conn = self.conn.clone();
        let label = self.label.clone();
        tokio::task::spawn_blocking(move || {
            let mut guard = conn
                .lock()
                .map_err(|_| KvError("sqlite connection poisoned".into()))?;
            f(&mut guard, &label).map_err(KvError::from_display)
        })
        .await
        .map_err(KvError::from_display)?
    }
}

const GET: &str = "SELECT value FROM spin_key_value WHERE store = ?1 AND key = ?2";
const UPSERT: &str = "INSERT INTO spin_key_value (store, key, value) VALUES (?1, ?2, ?3) ON CONFLICT (store, key) DO UPDATE SET value = excluded.value";

#[async_trait]
impl Backend for SqliteStore {
    async fn get(&self, key: &str) -> KvResult<Option<Vec<u8>>> {
        let key = key.to_owned();
        self.run(move |c, s| c.query_row(GET, params![s, key], |r| r.get(0)).optional())
            .await
    }
    async fn set(&self, key: &str, value: &[u8]) -> KvResult<()> {
        let (key, value) = (key.to_owned(), value.to_vec());
        self.run(move |c, s| c.execute(UPSERT, params![s, key, value]).map(drop))
            .await
    }
    async fn delete(&self, key: &str) -> KvResult<()> {
        let key = key.to_owned();
        self.run(move |c, s| {
            c.execute(
                "DELETE FROM spin_key_value WHERE store = ?1 AND key = ?2",
                params![s, key],
            )
            .map(drop)
        })
        .await
    }
    async fn exists(&self, key: &str) -> KvResult<bool> {
        Ok(self.get(key).await?.is_some())
    }
    async fn keys(&self) -> KvResult<Vec<String>> {
        self.run(|c, s| {
            let mut stmt = c.prepare("SELECT key FROM spin_key_value WHERE store = ?1")?;
            stmt.query_map(params![s], |r| r.get(0))?.collect()
        })
        .await
    }
    async fn increment(&self, key: &str, delta: i64) -> KvResult<i64> {
        let key = key.to_owned();
        self.run(move |c, s| {
            let tx = c.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let current: Option<Vec<u8>> = tx
                .query_row(GET, params![s, key], |r| r.get(0))
                .optional()?;
            let current = match current.map(|v| <[u8; 8]>::try_from(v.as_slice())) {
                None => 0,
                Some(Ok(le)) => i64::from_le_bytes(le),
                // Spin's own store panics here; this one refuses.
                Some(Err(_)) => {
                    return Ok(Err(KvError(format!(
                        "value of {key:?} is not a counter (8-byte little-endian integer)"
                    ))));
                }
            };
            let Some(next) = current.checked_add(delta) else {
                return Ok(Err(KvError("counter overflow".into())));
            };
            tx.execute(UPSERT, params![s, key, next.to_le_bytes().to_vec()])?;
            tx.commit()?;
            Ok(Ok(next))
        })
        .await?
    }
    async fn compare_and_swap(
        &self,
        key: &str,
        expected: Option<&[u8]>,
        value: &[u8],
    ) -> KvResult<bool> {
        let (key, expected, value) = (key.to_owned(), expected.map(<[u8]>::to_vec), value.to_vec());
        self.run(move |c, s| {
            let tx = c.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let current: Option<Vec<u8>> = tx
                .query_row(GET, params![s, key], |r| r.get(0))
                .optional()?;
            if current != expected {
                return Ok(false);
            }
            tx.execute(UPSERT, params![s, key, value])?;
            tx.commit()?;
            Ok(true)
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn conformance_and_persistence() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("kv.db");
        super::super::conformance::check(Arc::new(SqliteStore::open(&path, "default").unwrap()))
            .await;
        // Counters are stored as Spin stores them: 8 bytes, little-endian.
        let again = SqliteStore::open(&path, "default").unwrap();
        assert_eq!(
            again.get("n").await.unwrap(),
            Some(3i64.to_le_bytes().to_vec())
        );
        assert!(
            again.increment("b", 1).await.is_err(),
            "\"y\" is not a counter"
        );
        // A second handle (a restarted host) sees the data; another label does not.
        let again = SqliteStore::open(&path, "default").unwrap();
        assert_eq!(again.get("b").await.unwrap().as_deref(), Some(&b"y"[..]));
        let other = SqliteStore::open(&path, "other").unwrap();
        assert_eq!(other.get("b").await.unwrap(), None);
    }
}
