//! Key-value backends behind `spin:key-value` and `wasi:keyvalue`: SQLite (Spin's default), Redis and memory.
//!
//! What this host gives, on every backend: `increment` is atomic; `compare_and_swap` (`wasi:keyvalue`'s
//! `swap`) writes only if the key still holds exactly the expected value, an expected *absence* only while
//! the key is still absent, and reports what happened (on Redis: `SET NX`, or a server-side script that
//! compares and sets); `get-many` answers each key in order (one snapshot on SQLite, `MGET` on Redis).
//!
//! That is stronger than Spin 4.1 gives (`reference/spin-compat.md` §2), so a guest tested here can still
//! break under `spin up`: on Spin's SQLite store a swap on a key that was absent when read is an upsert (two
//! racers both win); on its Redis store every swap reports `CasFailed` after it wrote, a lost race can be
//! reported as success, and `get-many` sends the keys to `KEYS` as patterns (failing for more than one key).
//! Only `increment` is atomic on both.
//!
//! The app does not rely on the difference: its components call `increment`, plain `get`/`set`/`delete` and
//! `set-many` only, never `swap` nor `get-many` (`crates/guest/src/kv.rs`); every claim and state transition
//! is a versioned cell whose winner an `increment` decides (`esim402_core::store::cell`). The stricter
//! atomics here are for other guests, not a parity switch.
//!
//! Counters are stored as each backend's Spin counterpart stores them, so a store file or server can be
//! shared with `spin up`: 8-byte little-endian on SQLite and in memory (Spin's `type = "spin"` store without a
//! `path` is an in-memory SQLite database), decimal ASCII on Redis (`INCRBY`). Never mix `get`/`set` with
//! `increment` on one key: the bytes differ per backend.
//!
//! `compare_and_swap` compares *values*: a key changed and changed back (A → B → A) since the guest read it
//! still swaps (the ABA case), and an expected absence holds after a key was created and deleted again. A
//! guest that must see every write in between keeps a version in its value (the app's cells do).

use std::sync::Arc;

use async_trait::async_trait;

pub mod failpoint;
mod memory;
mod redis_store;
mod sqlite;
pub mod wrapped;

pub use memory::MemoryStore;
pub use redis_store::RedisStore;
pub use sqlite::SqliteStore;

use crate::runtime_config::StoreConfig;

/// A backend failure; the message goes to the guest as `error::other`.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct KvError(pub String);

impl KvError {
    /// Wrap any displayable error.
    pub fn from_display(e: impl std::fmt::Display) -> Self {
        Self(e.to_string())
    }
}

/// The result type of backend operations.
pub type KvResult<T> = Result<T, KvError>;

/// One key-value store.
#[async_trait]
pub trait Backend: Send + Sync + 'static {
    /// Value of `key`.
    async fn get(&self, key: &str) -> KvResult<Option<Vec<u8>>>;
    /// Overwrite `key`.
    async fn set(&self, key: &str, value: &[u8]) -> KvResult<()>;
    /// Remove `key` (no error if absent).
    async fn delete(&self, key: &str) -> KvResult<()>;
    /// Whether `key` exists.
    async fn exists(&self, key: &str) -> KvResult<bool>;
    /// Every key.
    async fn keys(&self) -> KvResult<Vec<String>>;
    /// Add `delta` to the counter at `key` (absent = 0) atomically; the new value. The counter is encoded as
    /// the backend's Spin counterpart encodes it (module docs); a value that is not a counter is an error.
    async fn increment(&self, key: &str, delta: i64) -> KvResult<i64>;
    /// Write `value` only if `key` still holds `expected` (`None` = still absent). True if written.
    async fn compare_and_swap(
        &self,
        key: &str,
        expected: Option<&[u8]>,
        value: &[u8],
    ) -> KvResult<bool>;
    /// Values of `keys`, in their order (`wasi:keyvalue/batch` `get-many`). Backends that can read them in one
    /// round trip or one snapshot override this.
    async fn get_many(&self, keys: &[String]) -> KvResult<Vec<Option<Vec<u8>>>> {
        let mut out = Vec::with_capacity(keys.len());
        for key in keys {
            out.push(self.get(key).await?);
        }
        Ok(out)
    }
    /// Overwrite each key (`wasi:keyvalue/batch` `set-many`; not atomic as a whole, like Spin's). Backends that
    /// can write them in one commit or one round trip override this.
    async fn set_many(&self, entries: Vec<(String, Vec<u8>)>) -> KvResult<()> {
        for (key, value) in &entries {
            self.set(key, value).await?;
        }
        Ok(())
    }
    /// Remove each key (`wasi:keyvalue/batch` `delete-many`).
    async fn delete_many(&self, keys: &[String]) -> KvResult<()> {
        for key in keys {
            self.delete(key).await?;
        }
        Ok(())
    }
    /// Make every write acknowledged so far durable (see [`Durability`]). Stores whose writes are as durable
    /// as they will ever be once acknowledged (memory, Redis under its own persistence settings) have nothing
    /// to do.
    async fn barrier(&self) -> KvResult<()> {
        Ok(())
    }
}

/// A shared backend.
pub type SharedBackend = Arc<dyn Backend>;

/// The host's durability barrier over every store it opened.
///
/// A store may acknowledge a write before it is on disk (the SQLite store commits without waiting for the
/// disk and syncs on demand), as long as nothing outside the host can learn of the write first. The host
/// waits on this barrier before each of the two ways a write becomes visible outside: before it answers an
/// HTTP request ([`crate::server`]) and before a component's outbound request leaves
/// ([`crate::outbound`]). So a client, a chain or a carrier never acts on a write that a power loss could
/// still take back: after a crash the store is as it was at some earlier moment, one that nobody outside
/// observed past — what a crash of the host at that moment would have left, which every flow already
/// recovers from. Concurrent barriers share one disk sync.
#[derive(Clone, Default)]
pub struct Durability {
    stores: Vec<SharedBackend>,
}

impl std::fmt::Debug for Durability {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Durability")
            .field("stores", &self.stores.len())
            .finish()
    }
}

impl Durability {
    /// A barrier over `stores`.
    pub fn new(stores: impl IntoIterator<Item = SharedBackend>) -> Self {
        Self {
            stores: stores.into_iter().collect(),
        }
    }

    /// Wait until every write any store acknowledged before this call is durable.
    pub async fn wait(&self) -> KvResult<()> {
        for store in &self.stores {
            store.barrier().await?;
        }
        Ok(())
    }
}

/// Decode a counter as Spin's SQLite store keeps it (8-byte little-endian `i64`; absent = 0), as the SQLite and
/// memory stores do. Spin's store panics on a value of another length; these refuse it.
pub(crate) fn decode_counter(key: &str, bytes: Option<&[u8]>) -> KvResult<i64> {
    match bytes.map(<[u8; 8]>::try_from) {
        None => Ok(0),
        Some(Ok(le)) => Ok(i64::from_le_bytes(le)),
        Some(Err(_)) => Err(KvError(format!(
            "value of {key:?} is not a counter (8-byte little-endian integer)"
        ))),
    }
}

/// Open the backend for one configured store (behind the test-only [`failpoint`] when it is armed).
pub async fn open(label: &str, cfg: &StoreConfig) -> anyhow::Result<SharedBackend> {
    let backend: SharedBackend = match cfg {
        StoreConfig::Memory => Arc::new(MemoryStore::default()),
        StoreConfig::Sqlite(path) => Arc::new(SqliteStore::open(path, label)?),
        StoreConfig::Redis(url) => Arc::new(RedisStore::connect(url).await?),
    };
    failpoint::wrap(backend)
}

#[doc(hidden)]
#[allow(
    clippy::unwrap_used,
    reason = "test support: a failed store call fails the check"
)]
pub mod conformance {
    //! The same behavioural checks for every backend (SQLite and memory in this crate's unit tests, Redis
    //! against a real `redis-server` in `tests/all/backends.rs`). Test support: panics on a failed check.
    use super::*;

    pub async fn check(store: SharedBackend) {
        assert_eq!(store.get("a").await.unwrap(), None);
        store.set("a", b"1").await.unwrap();
        assert_eq!(store.get("a").await.unwrap().as_deref(), Some(&b"1"[..]));
        assert!(store.exists("a").await.unwrap());
        assert!(!store.exists("b").await.unwrap());
        // CAS on an absent key succeeds only while it is absent.
        assert!(store.compare_and_swap("b", None, b"x").await.unwrap());
        assert!(
            !store.compare_and_swap("b", None, b"y").await.unwrap(),
            "absent-expected CAS must fail once present"
        );
        assert!(
            !store
                .compare_and_swap("b", Some(b"wrong"), b"y")
                .await
                .unwrap()
        );
        assert!(store.compare_and_swap("b", Some(b"x"), b"y").await.unwrap());
        assert_eq!(store.get("b").await.unwrap().as_deref(), Some(&b"y"[..]));
        assert_eq!(store.increment("n", 5).await.unwrap(), 5);
        assert_eq!(store.increment("n", -2).await.unwrap(), 3);
        store.set("t", b"text").await.unwrap();
        assert!(store.increment("t", 1).await.is_err());
        let mut keys = store.keys().await.unwrap();
        keys.sort();
        assert_eq!(keys, vec!["a", "b", "n", "t"]);
        store.delete("a").await.unwrap();
        store.delete("a").await.unwrap();
        assert!(!store.exists("a").await.unwrap());

        // Batches: values in the keys' order, absent ones as `None`; a counter reads as the backend stores it.
        let entries: Vec<(String, Vec<u8>)> = (0..100u8)
            .map(|i| (format!("many-{i}"), vec![i; usize::from(i) + 1]))
            .collect();
        store.set_many(entries.clone()).await.unwrap();
        store.set_many(Vec::new()).await.unwrap();
        let mut keys: Vec<String> = entries.iter().rev().map(|(k, _)| k.clone()).collect();
        keys.insert(50, "many-absent".into());
        let got = store.get_many(&keys).await.unwrap();
        assert_eq!(got.len(), 101);
        for (key, value) in keys.iter().zip(&got) {
            let want = entries.iter().find(|(k, _)| k == key).map(|(_, v)| v);
            assert_eq!(value.as_ref(), want, "{key}");
        }
        assert_eq!(
            store.get_many(&[]).await.unwrap(),
            Vec::<Option<Vec<u8>>>::new()
        );
        let n = store.get_many(&["n".into()]).await.unwrap();
        assert_eq!(n, vec![store.get("n").await.unwrap()]);
        assert!(n[0].is_some());
        store.delete_many(&keys[..10]).await.unwrap();
        let got = store.get_many(&keys[..12]).await.unwrap();
        assert!(got[..10].iter().all(Option::is_none));
        assert!(got[10..].iter().all(Option::is_some));
        store.delete_many(&keys).await.unwrap();
        assert!(
            store
                .get_many(&keys)
                .await
                .unwrap()
                .iter()
                .all(Option::is_none)
        );

        // 64 racing increments all count; 64 racing absent-CAS inserts have exactly one winner.
        let mut tasks = Vec::new();
        for i in 0..64u8 {
            let s = store.clone();
            tasks.push(tokio::spawn(async move {
                s.increment("race-n", 1).await.unwrap();
                s.compare_and_swap("race-cas", None, &[i]).await.unwrap()
            }));
        }
        let mut winners = 0;
        for t in tasks {
            winners += usize::from(t.await.unwrap());
        }
        assert_eq!(winners, 1);
        assert_eq!(store.increment("race-n", 0).await.unwrap(), 64);
    }
}
