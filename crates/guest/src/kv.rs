//! Atomic key-value operations over `wasi:keyvalue@0.2.0-draft2` (store + atomics), on the `default` store.
//!
//! `cas::new` snapshots the key's current value (or its absence); `swap` succeeds only if the key still holds
//! exactly that snapshot, so "insert if absent" is `new` on a missing key followed by `swap`. The host makes
//! both correct on every backend (SQLite, Redis, memory).

use serde::Serialize;
use serde::de::DeserializeOwned;
use spin_sdk::experimental::wasi::keyvalue::{atomics, store};

/// The store every component shares.
pub const DEFAULT_STORE: &str = "default";

/// How many times a read-modify-write retries under contention before giving up.
const MAX_CAS_ATTEMPTS: usize = 64;

/// A key-value failure, mapped to each component's WIT error by the caller.
#[derive(Debug, thiserror::Error)]
pub enum KvError<E> {
    /// The key already exists (insert-if-absent lost).
    #[error("key already exists")]
    Exists,
    /// Contention did not settle within the retry budget.
    #[error("too much contention on {0}")]
    Contended(String),
    /// The store failed.
    #[error("key-value store error: {0}")]
    Store(String),
    /// A stored value did not decode.
    #[error("stored value under {key} is corrupt: {message}")]
    Corrupt {
        /// Key.
        key: String,
        /// Decoder message.
        message: String,
    },
    /// The caller's update function refused the current value.
    #[error("update refused")]
    Refused(E),
}

fn store_err<E>(e: store::Error) -> KvError<E> {
    KvError::Store(match e {
        store::Error::NoSuchStore => "no such store".into(),
        store::Error::AccessDenied => "access denied".into(),
        store::Error::Other(m) => m,
    })
}

fn open<E>() -> Result<store::Bucket, KvError<E>> {
    store::open(DEFAULT_STORE).map_err(store_err)
}

/// Store `value` under `key` only if the key does not exist yet.
pub fn insert_if_absent<E>(key: &str, value: &[u8]) -> Result<(), KvError<E>> {
    let bucket = open()?;
    let cas = atomics::Cas::new(&bucket, key).map_err(store_err)?;
    if cas.current().map_err(store_err)?.is_some() {
        return Err(KvError::Exists);
    }
    match atomics::swap(cas, value) {
        Ok(()) => Ok(()),
        Err(atomics::CasError::CasFailed(_)) => Err(KvError::Exists),
        Err(atomics::CasError::StoreError(e)) => Err(store_err(e)),
    }
}

/// Read the JSON value at `key` (or `None`), let `update` compute the new value, and write it only if nobody
/// changed the key meanwhile; retry on contention. `update` may run several times and must be pure.
pub fn update_json<T, E>(
    key: &str,
    update: impl Fn(Option<T>) -> Result<T, E>,
) -> Result<T, KvError<E>>
where
    T: Serialize + DeserializeOwned,
{
    update_json_with(key, |current| update(current).map(|next| (next, ()))).map(|(next, ())| next)
}

/// [`update_json`] whose update also returns a by-product `R` (e.g. the items it took off a queue); the
/// by-product of the attempt that was actually written is returned.
pub fn update_json_with<T, R, E>(
    key: &str,
    update: impl Fn(Option<T>) -> Result<(T, R), E>,
) -> Result<(T, R), KvError<E>>
where
    T: Serialize + DeserializeOwned,
{
    let bucket = open()?;
    for _ in 0..MAX_CAS_ATTEMPTS {
        let cas = atomics::Cas::new(&bucket, key).map_err(store_err)?;
        let current = cas
            .current()
            .map_err(store_err)?
            .map(|bytes| serde_json::from_slice::<T>(&bytes))
            .transpose()
            .map_err(|e| KvError::Corrupt {
                key: key.to_owned(),
                message: e.to_string(),
            })?;
        let (next, by_product) = update(current).map_err(KvError::Refused)?;
        let bytes = serde_json::to_vec(&next).map_err(|e| KvError::Corrupt {
            key: key.to_owned(),
            message: e.to_string(),
        })?;
        match atomics::swap(cas, &bytes) {
            Ok(()) => return Ok((next, by_product)),
            Err(atomics::CasError::CasFailed(_)) => continue,
            Err(atomics::CasError::StoreError(e)) => return Err(store_err(e)),
        }
    }
    Err(KvError::Contended(key.to_owned()))
}

/// Read and decode the JSON value at `key`.
pub fn get_json<T: DeserializeOwned, E>(key: &str) -> Result<Option<T>, KvError<E>> {
    let bucket = open()?;
    bucket
        .get(key)
        .map_err(store_err)?
        .map(|bytes| {
            serde_json::from_slice(&bytes).map_err(|e| KvError::Corrupt {
                key: key.to_owned(),
                message: e.to_string(),
            })
        })
        .transpose()
}

/// Atomically add `delta` to the integer counter at `key`, returning the new value.
pub fn increment<E>(key: &str, delta: i64) -> Result<i64, KvError<E>> {
    atomics::increment(&open()?, key, delta).map_err(store_err)
}
