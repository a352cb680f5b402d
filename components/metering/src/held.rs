//! A charged batch's ledger events, held from its last charge until the ledger has them (kernel
//! `usage::held`, which has the rules): [`hold`] on the ingest path (one `increment`, one `set`), [`release`]
//! once logged (one `delete`), [`due`] for `GET /v1/ledger/verify` to log what a crash left behind.

use esim402_core::join::join_windows;
use esim402_core::ledger::{EntryFields, EntryKind};
use esim402_core::store::keys;
use esim402_core::usage::held::{
    self, Held, MAX_DUE, MAX_DUE_EVENTS, Recovery, SHARDS, Slot, SlotId,
};
use esim402_guest::convert::{event_to_wit, internal, invalid, kv_err, store_err};
use esim402_guest::kv;
use esim402_guest::wit;

/// Concurrent slot reads at most.
const WINDOW: usize = 64;

/// Hold batch `batch`'s `events` (appended with time `at`); the slot's id. Only after the batch's charges.
pub fn hold(
    batch: &str,
    at: u64,
    events: &[(EntryKind, EntryFields)],
) -> Result<SlotId, wit::Error> {
    let held = Held {
        batch: batch.to_owned(),
        at,
        events: events.to_vec(),
    };
    let shard = held::shard(batch);
    let slot = kv::increment::<wit::Error>(&keys::meter_held_slots(shard), 1).map_err(kv_err)?;
    let id = SlotId {
        shard,
        slot: u64::try_from(slot).map_err(internal)?,
    };
    let json = serde_json::to_vec(&held).map_err(internal)?;
    kv::set_many::<wit::Error>(&[(keys::meter_held(id), json)]).map_err(kv_err)?;
    Ok(id)
}

/// `release-held`: empty these slots (their events are logged; one `delete` each); how many.
pub async fn release(ids: &[String]) -> Result<u32, wit::Error> {
    let ids = ids
        .iter()
        .map(|id| SlotId::parse(id).map_err(|e| invalid("ids", e.to_string())))
        .collect::<Result<Vec<_>, _>>()?;
    let store = kv::default_store().await.map_err(kv_err)?;
    for id in &ids {
        store
            .delete(keys::meter_held(*id))
            .await
            .map_err(store_err)?;
    }
    u32::try_from(ids.len()).map_err(internal)
}

/// `held-due`: every ring scanned from its low-water mark; the held batches due at `now` (at most [`MAX_DUE`]
/// batches and [`MAX_DUE_EVENTS`] events, at least one batch), and each ring's mark moved past what is done
/// with (kernel `Recovery::after`).
pub async fn due(now: u64) -> Result<Vec<wit::HeldEvents>, wit::Error> {
    let store = kv::default_store().await.map_err(kv_err)?;
    let mut out: Vec<wit::HeldEvents> = Vec::new();
    let mut events = 0;
    let full = |out: &Vec<wit::HeldEvents>, events: usize, more: usize| {
        out.len() >= MAX_DUE || (!out.is_empty() && events + more > MAX_DUE_EVENTS)
    };
    for shard in 0..SHARDS {
        if full(&out, events, 1) {
            break;
        }
        let read = kv::get_json::<Recovery, wit::Error>(&keys::meter_held_low(shard))
            .await
            .map_err(kv_err)?
            .unwrap_or_default();
        let top = kv::increment::<wit::Error>(&keys::meter_held_slots(shard), 0).map_err(kv_err)?;
        let top = u64::try_from(top).map_err(internal)?;
        let range: Vec<u64> = read.scan(top).collect();
        let bytes = join_windows(
            range
                .iter()
                .map(|slot| store.get(keys::meter_held(SlotId { shard, slot: *slot }))),
            WINDOW,
        )
        .await;
        let mut slots = Vec::with_capacity(range.len());
        for (slot, bytes) in range.iter().zip(bytes) {
            let id = SlotId { shard, slot: *slot };
            let found = match bytes.map_err(store_err)? {
                None => Slot::Empty,
                Some(b) => match serde_json::from_slice::<Held>(&b) {
                    Ok(h) if h.due(now) && !full(&out, events, h.events.len()) => {
                        events += h.events.len();
                        out.push(wit::HeldEvents {
                            id: id.to_string(),
                            batch: h.batch.clone(),
                            at: h.at,
                            events: h.events.iter().map(|(k, f)| event_to_wit(*k, f)).collect(),
                        });
                        Slot::Due(h)
                    }
                    Ok(_) => Slot::Waiting,
                    Err(e) => {
                        eprintln!(
                            "metering: held slot {id} does not parse ({e}); left in place for an operator"
                        );
                        Slot::Unreadable
                    }
                },
            };
            slots.push(found);
        }
        let next = read.after(now, top, &slots);
        if next != read {
            kv::update_json::<Recovery, wit::Error>(&keys::meter_held_low(shard), |current| {
                Ok(next.merge(&read, current))
            })
            .await
            .map_err(kv_err)?;
        }
    }
    Ok(out)
}
