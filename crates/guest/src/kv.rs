//! Key-value access for esim402's components, correct on every backend Spin ships — including the ones whose
//! compare-and-swap cannot be trusted (`reference/spin-compat.md` §2).
//!
//! - Every mutable record is a **versioned cell** (kernel [`esim402_core::store::cell`]): read-modify-write
//!   whose winner is decided by an atomic `increment`, never by a backend's compare-and-swap. [`update_json`]
//!   and [`update_json_with`] are linearizable, [`insert_if_absent`] has exactly one winner, and a crash at any
//!   point neither loses an update nor blocks the key.
//! - [`get_json`] reads a cell's latest published version (one `get`); it may lag an update in flight, so every
//!   decision that must not race is made inside an update.
//! - [`claim`] is the cheapest at-most-once primitive: `increment(key, 1) == 1`. Its key is a counter: never
//!   read or write it any other way.
//!
//! Plain reads and writes go through the async `spin:key-value@3` interface; `increment` exists only in the
//! synchronous `wasi:keyvalue@0.2.0-draft2` atomics, so it is the one call that blocks — with [`set_many`]
//! (the same interface's `batch`): many keys in one call, one commit on SQLite and one `MSET` on Redis, where
//! as many async `set`s cost one each. (Its `get-many` is not used: Spin's Redis store answers it with a
//! `KEYS` command taking the keys as patterns, which fails for more than one key.)

use esim402_core::store::cell::{self, CellError, Committed, Next, Op, Reply, Step, Update};
use serde::Serialize;
use serde::de::DeserializeOwned;
use spin_sdk::experimental::wasi::keyvalue::{atomics, batch, store as wasi_store};
use spin_sdk::key_value::Store;

/// The store every component shares.
pub const DEFAULT_STORE: &str = "default";

/// A key-value failure, mapped to each component's WIT error by the caller.
#[derive(Debug, thiserror::Error)]
pub enum KvError<E> {
    /// The key already holds a value (insert-if-absent lost).
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

fn spin_err<E>(e: spin_sdk::key_value::Error) -> KvError<E> {
    KvError::Store(format!("{e:?}"))
}

fn wasi_err<E>(e: wasi_store::Error) -> KvError<E> {
    KvError::Store(match e {
        wasi_store::Error::NoSuchStore => "no such store".into(),
        wasi_store::Error::AccessDenied => "access denied".into(),
        wasi_store::Error::Other(m) => m,
    })
}

fn corrupt<E>(key: &str, message: impl ToString) -> KvError<E> {
    KvError::Corrupt {
        key: key.to_owned(),
        message: message.to_string(),
    }
}

/// Fresh randomness for a cell update's tokens.
fn seed() -> u64 {
    let mut b = [0u8; 8];
    // Without an entropy source, fall back to the clock: tokens then still differ between instances.
    if getrandom::fill(&mut b).is_err() {
        return std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| d.as_nanos() as u64);
    }
    u64::from_le_bytes(b)
}

crate::instance_cache!(STORE: Store);
crate::instance_cache!(BUCKET: wasi_store::Bucket);

/// The `default` store, opened on the instance's first use and kept: an open is a host call and a handle to
/// drop again, and one handle serves every request the instance runs (Spin scopes handles to the instance).
/// A failed open is not kept.
pub async fn default_store<E>() -> Result<std::rc::Rc<Store>, KvError<E>> {
    STORE
        .get_or_load(|| async { Store::open_default().await.map_err(spin_err) })
        .await
}

/// The `default` store's `wasi:keyvalue` bucket (for the atomics and the batch calls), kept like
/// [`default_store`].
fn bucket<E>() -> Result<std::rc::Rc<wasi_store::Bucket>, KvError<E>> {
    BUCKET.get_or_load_now(|| wasi_store::open(DEFAULT_STORE).map_err(wasi_err))
}

/// Atomically add `delta` to the counter at `key` (absent = 0); the new value.
pub fn increment<E>(key: &str, delta: i64) -> Result<i64, KvError<E>> {
    atomics::increment(&*bucket()?, key, delta).map_err(wasi_err)
}

/// Overwrite plain values in one call (`wasi:keyvalue/batch` `set-many`: one commit on SQLite, one `MSET` on
/// Redis; not atomic as a whole).
pub fn set_many<E>(entries: &[(String, Vec<u8>)]) -> Result<(), KvError<E>> {
    if entries.is_empty() {
        return Ok(());
    }
    batch::set_many(&*bucket()?, entries).map_err(wasi_err)
}

/// Claim `key` once: `true` for exactly one caller ever (an atomic `increment`; correct on every backend).
pub fn claim<E>(key: &str) -> Result<bool, KvError<E>> {
    Ok(increment::<E>(key, 1)? == 1)
}

/// The update machine for `key`: from the caller's version `start` if it holds one (kernel `Update::after`),
/// else from a read.
fn machine<F, R, E>(key: &str, update: F, start: Option<Stored>) -> Update<F, R, E>
where
    F: FnMut(Option<&[u8]>) -> Result<(Next, R), E>,
{
    match start {
        Some(head) => Update::after(key, seed(), update, head),
        None => Update::new(key, seed(), update),
    }
}

/// A committed update as the version now holding its result (a start for a later update, whose owner deletes
/// this version's proposal once it publishes the next) and its by-product.
fn split<R>(c: Committed<R>) -> (Stored, R) {
    let version = Stored {
        version: c.version,
        token: c.token,
        data: c.data,
    };
    (version, c.by_product)
}

/// Drive a cell protocol machine against the default store.
async fn drive<F, R, E>(key: &str, mut machine: Update<F, R, E>) -> Result<Committed<R>, KvError<E>>
where
    F: FnMut(Option<&[u8]>) -> Result<(Next, R), E>,
{
    let mut reply = None;
    loop {
        match machine.resume(reply.take()) {
            Step::Op(op) => reply = Some(perform(op).await.map_err(rewrap)?),
            Step::Pause(us) => spin_sdk::time::sleep(std::time::Duration::from_micros(us)).await,
            Step::Done(Ok(c)) => return Ok(c),
            Step::Done(Err(CellError::Refused(e))) => return Err(KvError::Refused(e)),
            Step::Done(Err(CellError::Contended)) => {
                return Err(KvError::Contended(key.to_owned()));
            }
            Step::Done(Err(CellError::Corrupt(m))) => return Err(corrupt(key, m)),
        }
    }
}

/// One store operation of a cell update (not generic: one copy for every update, the store lookup included:
/// the instance keeps it open, so each lookup is a clone of a pointer).
async fn perform(op: Op) -> Result<Reply, KvError<()>> {
    let store = default_store().await?;
    Ok(match op {
        Op::Get(k) => Reply::Value(store.get(&k).await.map_err(spin_err)?),
        Op::Set(k, v) => {
            store.set(&k, &v).await.map_err(spin_err)?;
            Reply::Done
        }
        Op::Delete(k) => {
            store.delete(&k).await.map_err(spin_err)?;
            Reply::Done
        }
        Op::Increment(k, d) => Reply::Counter(increment(&k, d)?),
    })
}

/// Why an update closure stopped: the caller's refusal, or a value that did not (de)serialise.
enum Stop<E> {
    Refused(E),
    Corrupt(String),
}

/// Read-modify-write the JSON cell at `key`: `update` gets the current value (`None` if absent) and returns
/// the next one plus a by-product; the by-product of the attempt that was committed is returned. `update` may
/// run several times and must not have effects.
pub async fn update_json_with<T, R, E>(
    key: &str,
    update: impl Fn(Option<T>) -> Result<(T, R), E>,
) -> Result<(T, R), KvError<E>>
where
    T: Serialize + DeserializeOwned,
{
    update_json_inner(key, None, update)
        .await
        .map(|(next, r, _)| (next, r))
}

/// [`update_json`] starting from `start` when given, a version of the cell the caller holds (from
/// [`read_json`] or an earlier update), instead of reading it: one store call fewer when `start` is still the
/// newest, three more when it is not (kernel `Update::after`). Returns the value written and the version now
/// holding it.
pub async fn update_json_from<T, E>(
    key: &str,
    start: Option<Stored>,
    update: impl Fn(Option<T>) -> Result<T, E>,
) -> Result<(T, Stored), KvError<E>>
where
    T: Serialize + DeserializeOwned,
{
    update_json_inner(key, start, |cur| update(cur).map(|next| (next, ())))
        .await
        .map(|(next, (), version)| (next, version))
}

async fn update_json_inner<T, R, E>(
    key: &str,
    start: Option<Stored>,
    update: impl Fn(Option<T>) -> Result<(T, R), E>,
) -> Result<(T, R, Stored), KvError<E>>
where
    T: Serialize + DeserializeOwned,
{
    let step = |cur: Option<&[u8]>| -> Result<(Next, (T, R)), Stop<E>> {
        let current = cur
            .map(serde_json::from_slice::<T>)
            .transpose()
            .map_err(|e| Stop::Corrupt(e.to_string()))?;
        let (next, r) = update(current).map_err(Stop::Refused)?;
        let bytes = serde_json::to_vec(&next).map_err(|e| Stop::Corrupt(e.to_string()))?;
        Ok((Next::Put(bytes), (next, r)))
    };
    match drive(key, machine(key, step, start)).await {
        Ok(c) => {
            let (version, (next, r)) = split(c);
            Ok((next, r, version))
        }
        Err(KvError::Refused(Stop::Refused(e))) => Err(KvError::Refused(e)),
        Err(KvError::Refused(Stop::Corrupt(m))) => Err(corrupt(key, m)),
        Err(e) => Err(rewrap(e)),
    }
}

/// What [`change_json`]'s function wants done.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change<T> {
    /// Write this value.
    Put(T),
    /// Remove the value (a tombstone: later inserts may take the key).
    Remove,
    /// Leave the cell as it is (nothing is written).
    Keep,
}

/// The general read-modify-write: `update` sees the current value and says whether to write, remove or keep
/// it; returns the value after the update and the committed attempt's by-product.
pub async fn change_json<T, R, E>(
    key: &str,
    update: impl Fn(Option<T>) -> Result<(Change<T>, R), E>,
) -> Result<(Option<T>, R), KvError<E>>
where
    T: Serialize + DeserializeOwned,
{
    change_json_from(key, None, update)
        .await
        .map(|(value, r, _)| (value, r))
}

/// [`change_json`], starting from `start` when given (a version the caller holds: see [`update_json_from`]);
/// also returns the version now holding the value.
pub async fn change_json_from<T, R, E>(
    key: &str,
    start: Option<Stored>,
    update: impl Fn(Option<T>) -> Result<(Change<T>, R), E>,
) -> Result<(Option<T>, R, Stored), KvError<E>>
where
    T: Serialize + DeserializeOwned,
{
    let step = |cur: Option<&[u8]>| -> Result<(Next, R), Stop<E>> {
        let current = cur
            .map(serde_json::from_slice::<T>)
            .transpose()
            .map_err(|e| Stop::Corrupt(e.to_string()))?;
        let (change, r) = update(current).map_err(Stop::Refused)?;
        let next = match change {
            Change::Put(v) => {
                Next::Put(serde_json::to_vec(&v).map_err(|e| Stop::Corrupt(e.to_string()))?)
            }
            Change::Remove => Next::Remove,
            Change::Keep => Next::Keep,
        };
        Ok((next, r))
    };
    match drive(key, machine(key, step, start)).await {
        Ok(c) => {
            let (version, r) = split(c);
            let value = decode(key, &version)?;
            Ok((value, r, version))
        }
        Err(KvError::Refused(Stop::Refused(e))) => Err(KvError::Refused(e)),
        Err(KvError::Refused(Stop::Corrupt(m))) => Err(corrupt(key, m)),
        Err(e) => Err(rewrap(e)),
    }
}

/// Apply `transition` (a kernel state machine's step, which says whether it changed the value) to the value at
/// `key`, writing only when it did: the value after the committed attempt and that answer; `None` if there is
/// no value (nothing is written then).
pub async fn transition_json<T, E>(
    key: &str,
    transition: impl Fn(&mut T) -> bool,
) -> Result<Option<(T, bool)>, KvError<E>>
where
    T: Serialize + DeserializeOwned,
{
    transition_json_from(key, None, transition)
        .await
        .map(|r| r.map(|(value, changed, _)| (value, changed)))
}

/// [`transition_json`], starting from `start` when given (see [`update_json_from`]); also returns the version
/// now holding the value.
pub async fn transition_json_from<T, E>(
    key: &str,
    start: Option<Stored>,
    transition: impl Fn(&mut T) -> bool,
) -> Result<Option<(T, bool, Stored)>, KvError<E>>
where
    T: Serialize + DeserializeOwned,
{
    let (after, changed, version) = change_json_from::<T, bool, E>(key, start, |cur| {
        Ok(match cur {
            Some(mut v) => {
                if transition(&mut v) {
                    (Change::Put(v), true)
                } else {
                    (Change::Keep, false)
                }
            }
            None => (Change::Keep, false),
        })
    })
    .await?;
    Ok(after.map(|v| (v, changed, version)))
}

/// [`update_json_with`] without a by-product.
pub async fn update_json<T, E>(
    key: &str,
    update: impl Fn(Option<T>) -> Result<T, E>,
) -> Result<T, KvError<E>>
where
    T: Serialize + DeserializeOwned,
{
    update_json_with(key, |cur| update(cur).map(|next| (next, ())))
        .await
        .map(|(next, ())| next)
}

/// Store `value` (JSON bytes) under `key` only if the key holds nothing; exactly one concurrent caller wins.
pub async fn insert_if_absent<E>(key: &str, value: &[u8]) -> Result<(), KvError<E>> {
    insert_inner(key, value, None).await
}

/// [`insert_if_absent`] that claims the key's first version without reading it first: one store call fewer
/// when the key is new, three more when it is not. Only for a key that cannot hold a value written before
/// cells existed (an unversioned value has no claim counter, so the claim would win and overwrite it).
pub async fn insert_new<E>(key: &str, value: &[u8]) -> Result<(), KvError<E>> {
    insert_inner(key, value, Some(Stored::absent())).await
}

async fn insert_inner<E>(key: &str, value: &[u8], start: Option<Stored>) -> Result<(), KvError<E>> {
    let step = |cur: Option<&[u8]>| -> Result<(Next, ()), ()> {
        match cur {
            Some(_) => Err(()),
            None => Ok((Next::Put(value.to_vec()), ())),
        }
    };
    match drive(key, machine(key, step, start)).await {
        Ok(_) => Ok(()),
        Err(KvError::Refused(())) => Err(KvError::Exists),
        Err(e) => Err(rewrap(e)),
    }
}

/// Remove the value at `key` (a tombstone version; a later [`insert_if_absent`] may take the key again).
pub async fn remove<E>(key: &str) -> Result<(), KvError<E>> {
    let step = |_: Option<&[u8]>| -> Result<(Next, ()), ()> { Ok((Next::Remove, ())) };
    drive(key, machine(key, step, None))
        .await
        .map(drop)
        .map_err(rewrap)
}

/// Whether the store answers a read of `key` (its bytes are not looked at: a readiness probe must not fail on
/// one key's content).
pub async fn probe<E>(key: &str) -> Result<(), KvError<E>> {
    let store = default_store().await?;
    store.get(key).await.map(|_| ()).map_err(spin_err)
}

/// Read the latest published value of the cell at `key` as raw bytes.
pub async fn get_bytes<E>(key: &str) -> Result<Option<Vec<u8>>, KvError<E>> {
    read_version(key).await.map(|s| s.data)
}

/// Read the latest published version of the cell at `key` (its data, and the version to start a later
/// [`update_json_from`] from).
pub async fn read_version<E>(key: &str) -> Result<Stored, KvError<E>> {
    let store = default_store().await?;
    let head = store.get(key).await.map_err(spin_err)?;
    Stored::from_head(head.as_deref()).map_err(|e| corrupt(key, e))
}

/// [`get_json`], with the version read (to start a later [`update_json_from`] from).
pub async fn read_json<T: DeserializeOwned, E>(
    key: &str,
) -> Result<(Option<T>, Stored), KvError<E>> {
    let version = read_version(key).await?;
    Ok((decode(key, &version)?, version))
}

/// Read and decode the JSON cell at `key`.
pub async fn get_json<T: DeserializeOwned, E>(key: &str) -> Result<Option<T>, KvError<E>> {
    read_json(key).await.map(|(value, _)| value)
}

/// The JSON value a cell version holds (`None`: absent or removed).
fn decode<T: DeserializeOwned, E>(key: &str, version: &Stored) -> Result<Option<T>, KvError<E>> {
    version
        .data
        .as_deref()
        .map(|bytes| serde_json::from_slice(bytes).map_err(|e| corrupt(key, e)))
        .transpose()
}

/// Change a `KvError`'s refusal type where no refusal can occur.
fn rewrap<A, B>(e: KvError<A>) -> KvError<B> {
    match e {
        KvError::Exists | KvError::Refused(_) => KvError::Exists,
        KvError::Contended(k) => KvError::Contended(k),
        KvError::Store(m) => KvError::Store(m),
        KvError::Corrupt { key, message } => KvError::Corrupt { key, message },
    }
}

/// The cell protocol's key names, for components that document their key map; a cell's version.
pub use cell::{Stored, claim_key, proposal_key};

/// A random 32-byte server key kept at `key`: inserted once by whichever instance gets there first, read by
/// all (for secrets the operator did not set as variables; the error names the key, never the value).
/// A host without randomness fails as a store would (`Store`: try again later).
pub async fn shared_random_key(key: &str) -> Result<[u8; 32], KvError<()>> {
    let fresh = crate::util::random_bytes::<32>().map_err(KvError::Store)?;
    let json =
        serde_json::to_vec(&alloy_primitives::B256::from(fresh)).map_err(|e| corrupt(key, e))?;
    match insert_if_absent::<()>(key, &json).await {
        Ok(()) | Err(KvError::Exists) => {}
        Err(e) => return Err(e),
    }
    get_json::<alloy_primitives::B256, ()>(key)
        .await?
        .map(|b| b.0)
        .ok_or_else(|| corrupt(key, "vanished after it was inserted"))
}
