//! SIM records (`sim/<iccid>`, kernel `order::StoredSim`): read and written here, by orders and by the
//! lifecycle alike; and the owner index (the ICCIDs a wallet paid for, oldest first: kernel
//! `order::owner_index`), one write-once slot per SIM, so that indexing never rewrites what is already there.

use esim402_core::esim::Iccid;
use esim402_core::join::join_all;
use esim402_core::order::{self, AfterConfirm, Confirmation, StoredSim};
use esim402_core::store::keys;
use esim402_guest::convert::{internal, invalid, kv_err, store_err};
use esim402_guest::kv::{self, Change};
use esim402_guest::wit;

/// Parse an ICCID (`invalid-input` on `iccid`).
pub fn parse_iccid(iccid: &str) -> Result<Iccid, wit::Error> {
    Iccid::parse(iccid).map_err(|e| invalid("iccid", e.to_string()))
}

/// The stored SIM.
pub async fn load(iccid: &Iccid) -> Result<Option<StoredSim>, wit::Error> {
    kv::get_json::<StoredSim, wit::Error>(&keys::sim(iccid.as_str()))
        .await
        .map_err(kv_err)
}

/// Record `sim`, the pending SIM of a profile its carrier just allocated, unless the record under its ICCID is
/// another SIM's (kernel `order::may_record_allocation`, decided inside the record's cell update): the version
/// now holding it, or `None` if nothing was written. The record is read first rather than assumed absent: a
/// record written before versioned cells existed reads as absent to a write that does not read.
pub async fn record_allocation(sim: &StoredSim) -> Result<Option<kv::Stored>, wit::Error> {
    kv::change_json_from::<StoredSim, bool, wit::Error>(&keys::sim(&sim.iccid), None, |current| {
        Ok(if order::may_record_allocation(current.as_ref(), sim) {
            (Change::Put(sim.clone()), true)
        } else {
            (Change::Keep, false)
        })
    })
    .await
    .map(|(_, recorded, version)| recorded.then_some(version))
    .map_err(kv_err)
}

/// After [`record_allocation`] failed (its write may have landed, the reply lost): our record, if it landed,
/// marked failed (kernel `order::after_lost_allocation`); whether the profile may be given back (not when the
/// ICCID is someone else's SIM).
pub async fn unrecord_allocation(sim: &StoredSim) -> Result<bool, wit::Error> {
    kv::change_json::<StoredSim, bool, wit::Error>(&keys::sim(&sim.iccid), |current| {
        Ok(match order::after_lost_allocation(current.as_ref(), sim) {
            (Some(failed), give_back) => (Change::Put(failed), give_back),
            (None, give_back) => (Change::Keep, give_back),
        })
    })
    .await
    .map(|(_, give_back)| give_back)
    .map_err(kv_err)
}

/// Set the `failovers` of `sim`'s record, if it is still that order's (a cell update: whatever else changed
/// since, a terminate, a hold, a progress callback, is kept).
pub async fn set_failovers(sim: &StoredSim, failovers: &[String]) -> Result<(), wit::Error> {
    kv::change_json::<StoredSim, (), wit::Error>(&keys::sim(&sim.iccid), |current| {
        Ok(match current {
            Some(mut c) if order::belongs_to(&c, &sim.invoice_id) && c.failovers != failovers => {
                c.failovers = failovers.to_vec();
                (Change::Put(c), ())
            }
            _ => (Change::Keep, ()),
        })
    })
    .await
    .map(|_| ())
    .map_err(kv_err)
}

/// Record the outcome of the ConfirmOrder of `pending`'s profile (kernel `order::after_confirm`, inside the
/// record's cell update from `start`, so an owner's terminate racing the confirm is never written over).
pub async fn after_confirm(
    pending: &StoredSim,
    start: Option<kv::Stored>,
    outcome: Confirmation<'_>,
) -> Result<AfterConfirm, wit::Error> {
    kv::change_json_from::<StoredSim, AfterConfirm, wit::Error>(
        &keys::sim(&pending.iccid),
        start,
        |current| {
            let after = order::after_confirm(current.as_ref(), pending, outcome);
            Ok(match &after {
                AfterConfirm::Store(sim) => (Change::Put(sim.clone()), after),
                _ => (Change::Keep, after),
            })
        },
    )
    .await
    .map(|(_, after, _)| after)
    .map_err(kv_err)
}

/// Add `iccid` to `owner`'s index: one `increment` reserves the next slot, one write fills it. A crash in
/// between leaves an empty slot (skipped); indexing the same SIM again adds a slot that listing ignores.
pub async fn index_owner(
    owner: esim402_core::chain::Address,
    iccid: &str,
) -> Result<(), wit::Error> {
    let slot = kv::increment::<wit::Error>(&keys::owner_slots(owner), 1).map_err(kv_err)?;
    let slot = u64::try_from(slot).map_err(|_| internal("the owner index counter is negative"))?;
    kv::default_store::<wit::Error>()
        .await
        .map_err(kv_err)?
        .set(&keys::owner_slot(owner, slot), iccid.as_bytes())
        .await
        .map_err(store_err)
}

/// Slots (and SIMs) read at once when listing.
pub const READ_AHEAD: usize = 32;

/// One page of the ICCIDs `owner` paid for, oldest first (kernel `order::owner_page`), and the next page's
/// cursor.
pub async fn owned(
    owner: esim402_core::chain::Address,
    after: u64,
    limit: u32,
) -> Result<(Vec<String>, Option<u64>), wit::Error> {
    let legacy = kv::get_json::<Vec<String>, wit::Error>(&keys::owner_sims(owner))
        .await
        .map_err(kv_err)?
        .unwrap_or_default();
    let slots = kv::increment::<wit::Error>(&keys::owner_slots(owner), 0).map_err(kv_err)?;
    let page = order::owner_page(
        legacy.len(),
        u64::try_from(slots).unwrap_or(0),
        after,
        limit,
    );
    let store = kv::default_store::<wit::Error>().await.map_err(kv_err)?;
    let wanted: Vec<u64> = page.slots.clone().collect();
    let mut filled = Vec::with_capacity(wanted.len());
    for chunk in wanted.chunks(READ_AHEAD) {
        let read = join_all(chunk.iter().map(|&n| store.get(keys::owner_slot(owner, n)))).await;
        for bytes in read {
            filled.push(
                bytes
                    .map_err(store_err)?
                    .and_then(|b| String::from_utf8(b).ok()),
            );
        }
    }
    Ok((order::owner_index(&legacy, &page, filled), page.next))
}
