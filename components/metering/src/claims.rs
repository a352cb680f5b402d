//! The store side of receipt claims (kernel `usage::claim` decides the keys): the write-once marker of when
//! per-SIM claims started, and the reads that look receipts up under their legacy claims. Claims themselves
//! are won by `increment` in [`crate::ingest`]; nothing here writes a claim, and a legacy key is only read.

use std::collections::{BTreeSet, HashSet};

use esim402_core::join::join_windows;
use esim402_core::store::keys;
use esim402_guest::convert::{internal, kv_err, store_err};
use esim402_guest::kv::{self, KvError};
use esim402_guest::{instance_cache, wit};
use spin_sdk::key_value::Store;

/// Concurrent store reads at most, here and in [`crate::ingest`] (a batch of 1 000 receipts may name 1 000
/// SIMs).
pub const WINDOW: usize = 64;

instance_cache!(SINCE: u64);

/// When per-SIM claims started in this store (`keys::RECEIPT_CLAIMS_SINCE`): `now` if no batch needed it
/// before (an atomic insert-if-absent, one winner), else what the first one wrote. Kept per instance: it never
/// changes. Once made, one read.
pub async fn since(now: u64) -> Result<u64, wit::Error> {
    let since = SINCE
        .get_or_load(move || async move {
            let read = || kv::get_json::<u64, wit::Error>(keys::RECEIPT_CLAIMS_SINCE);
            if let Some(since) = read().await.map_err(kv_err)? {
                return Ok(since);
            }
            let json = serde_json::to_vec(&now).map_err(internal)?;
            match kv::insert_if_absent::<wit::Error>(keys::RECEIPT_CLAIMS_SINCE, &json).await {
                Ok(()) | Err(KvError::Exists) => {}
                Err(e) => return Err(kv_err(e)),
            }
            read()
                .await
                .map_err(kv_err)?
                .ok_or_else(|| internal("the receipt-claims marker vanished after it was inserted"))
        })
        .await?;
    Ok(*since)
}

/// Which of the legacy claim keys `keys` exist (read concurrently, [`WINDOW`] at a time).
pub async fn legacy_claimed(
    store: &Store,
    keys: BTreeSet<String>,
) -> Result<HashSet<String>, wit::Error> {
    let found = join_windows(keys.iter().map(|k| store.exists(k)), WINDOW).await;
    let mut claimed = HashSet::new();
    for (key, found) in keys.into_iter().zip(found) {
        if found.map_err(store_err)? {
            claimed.insert(key);
        }
    }
    Ok(claimed)
}

/// Whether a record was claimed before: under its own key, or (`legacy`, for a receipt checked against legacy
/// claims too) under its legacy key.
pub async fn seen(store: &Store, key: &str, legacy: Option<&str>) -> Result<bool, wit::Error> {
    if store.exists(key).await.map_err(store_err)? {
        return Ok(true);
    }
    match legacy {
        Some(legacy) => store.exists(legacy).await.map_err(store_err),
        None => Ok(false),
    }
}
