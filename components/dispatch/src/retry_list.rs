//! The operator's retry lists (kernel `store::retry`), each one `cleanup/` key of this component's, changed by
//! compare-and-swap: listed before the work, taken by the cleanup run, settled once done.

use esim402_core::store::retry::{self, Listed, Push, Taken, Tried};
use esim402_guest::convert::kv_err;
use esim402_guest::kv::{self, Change};
use esim402_guest::wit;

/// List `id` on `key` (at most `max` items): `Ok(true)` listed (now or before), `Ok(false)` the list is full.
pub async fn push(key: &str, id: &str, max: usize) -> Result<bool, wit::Error> {
    let (_, listed) = kv::change_json::<Vec<Listed>, bool, wit::Error>(key, |list| {
        Ok(match retry::push(list.unwrap_or_default(), id, max) {
            Push::Listed(list) => (Change::Put(list), true),
            Push::Already => (Change::Keep, true),
            Push::Full => (Change::Keep, false),
        })
    })
    .await
    .map_err(kv_err)?;
    Ok(listed)
}

/// Take up to `max` items of `key` due at `now` (each counts a try; kernel `retry::take`).
pub async fn take(key: &str, now: u64, max: usize) -> Result<Taken, wit::Error> {
    let (_, taken) = kv::change_json::<Vec<Listed>, Taken, wit::Error>(key, |list| {
        let taken = retry::take(list.unwrap_or_default(), now, max);
        if taken.due.is_empty() && taken.given_up.is_empty() {
            return Ok((Change::Keep, taken));
        }
        Ok((Change::Put(taken.list.clone()), taken))
    })
    .await
    .map_err(kv_err)?;
    Ok(taken)
}

/// A try of `id` on `key` ended as `tried`: whether it left the list after its last try (an operator must look).
pub async fn settle(key: &str, id: &str, tried: Tried) -> Result<bool, wit::Error> {
    let (_, gave) = kv::change_json::<Vec<Listed>, bool, wit::Error>(key, |list| {
        Ok(match retry::settle(list.unwrap_or_default(), id, tried) {
            (Some(list), gave) => (Change::Put(list), gave),
            (None, _) => (Change::Keep, false),
        })
    })
    .await
    .map_err(kv_err)?;
    Ok(gave)
}
