//! The ledger's outbox (`ledger/outbox`, kernel `ledger::outbox`): events an append could not write are
//! [`park`]ed there (so are a resumed attempt's events whose repeat check could not run, and usage batches a
//! crash left held), and a [`drain`] appends them later, once each.

use std::collections::{BTreeMap, VecDeque};

use esim402_core::ledger::outbox::{Claimed, Failure, Outbox, OutboxFull};
use esim402_core::ledger::{EntryFields, EntryKind, LedgerEntry};
use esim402_core::store::keys;
use esim402_core::usage::held::Held;

use super::{append_fenced, head, read_landed};
use crate::kv::{self, KvError};

/// Park the events an append did not write (`ledger/outbox`, kernel `ledger::outbox`) until a [`drain`];
/// `landed_since`: where its failing write may have landed after all ([`Unwritten::landed_since`]).
pub async fn park(
    at: u64,
    events: Vec<(EntryKind, EntryFields)>,
    landed_since: std::collections::BTreeMap<u16, u64>,
) -> Result<(), KvError<OutboxFull>> {
    let id = crate::util::holder_token().map_err(KvError::Store)?;
    kv::update_json(&keys::ledger_outbox(), |current: Option<Outbox>| {
        let mut outbox = current.unwrap_or_default();
        outbox.park(&id, at, events.clone(), landed_since.clone())?;
        Ok(outbox)
    })
    .await
    .map(drop)
}

/// Park a resumed payment attempt's events whose repeat check could not run (kernel `Outbox::park_repeats`):
/// the drain leaves out the repeats.
pub async fn park_repeats(
    at: u64,
    events: Vec<(EntryKind, EntryFields)>,
) -> Result<(), KvError<OutboxFull>> {
    let id = crate::util::holder_token().map_err(KvError::Store)?;
    kv::update_json(&keys::ledger_outbox(), |current: Option<Outbox>| {
        let mut outbox = current.unwrap_or_default();
        outbox.park_repeats(&id, at, events.clone())?;
        Ok(outbox)
    })
    .await
    .map(drop)
}

/// Park held usage events logged again after a crash (kernel `Outbox::park_recovered`), each batch under its
/// own id (`Held::outbox_id`), once: one update of the outbox for all of them. How many of `batches`, from the
/// first, now wait there (the rest did not fit; the outbox is full only if none did).
pub async fn park_recovered(batches: &[Held]) -> Result<usize, KvError<OutboxFull>> {
    if batches.is_empty() {
        return Ok(0);
    }
    let (_, parked) = kv::update_json_with(&keys::ledger_outbox(), |current: Option<Outbox>| {
        let mut outbox = current.unwrap_or_default();
        let mut parked = 0;
        for held in batches {
            match outbox.park_recovered(&held.outbox_id(), held.at, held.events.clone()) {
                Ok(_) => parked += 1,
                Err(full) if parked == 0 => return Err(full),
                Err(_) => break,
            }
        }
        Ok((outbox, parked))
    })
    .await?;
    Ok(parked)
}

/// What a [`drain`] did.
#[derive(Debug, Default)]
pub struct Drained {
    /// Entries appended.
    pub appended: usize,
    /// Events still parked (held by another drain, or their append failed again).
    pub left: usize,
}

/// Append what the outbox holds, at `now`: claim the batches nobody drains, append each (after a lapsed drain,
/// only what it did not append), then remove them. A batch that cannot be appended does not stop the others,
/// and goes behind them at the next drain (kernel `Outbox::release`): one found blocked (a hole in its shard,
/// `Corrupt`) also waits a while, and so do the other batches of that shard this drain claimed; after a store
/// failure on a shard, this drain leaves that shard's other batches to the next one and goes on with the other
/// shards. The outbox is written only when something is claimed, renewed or released.
pub async fn drain(now: u64) -> Result<Drained, KvError<()>> {
    let key = keys::ledger_outbox();
    let (outbox, _) = kv::read_json::<Outbox, ()>(&key).await?;
    let Some(outbox) = outbox.filter(|o| !o.batches.is_empty()) else {
        return Ok(Drained::default());
    };
    let to_claim = outbox.shards_to_claim(now);
    if to_claim.is_empty() {
        // Every batch is held by a drain (or waits out a block): nothing to claim, nothing to write.
        return Ok(Drained {
            appended: 0,
            left: outbox.parked_events(),
        });
    }
    // A shard whose head cannot be read now (a store fault, or a head that does not decode) is left out: its
    // batches are not claimed (kernel `Outbox::claim`), the other shards' drain.
    let mut heads = std::collections::BTreeMap::new();
    for shard in to_claim {
        match head(shard).await {
            Ok(h) => {
                heads.insert(shard, h.count);
            }
            Err(e) => eprintln!(
                "ledger: the head of shard {shard} cannot be read, its parked batches wait: {e:?}"
            ),
        }
    }
    let token = crate::util::holder_token().map_err(KvError::Store)?;
    let (after, claimed) = kv::change_json(&key, |current: Option<Outbox>| {
        let mut outbox = current.unwrap_or_default();
        let claimed = outbox.claim(&token, now, &heads);
        let change = if claimed.is_empty() {
            kv::Change::Keep
        } else {
            kv::Change::Put(outbox)
        };
        Ok::<_, ()>((change, claimed))
    })
    .await?;
    let after = after.unwrap_or_default();
    if claimed.is_empty() {
        return Ok(Drained {
            appended: 0,
            left: after.parked_events(),
        });
    }
    // Where each claimed batch looks for what another drain appended, per shard (kernel `Claimed::look_from`).
    // Each shard is read once, from the lowest of them, and caught up before each batch (only what was appended
    // since, its own appends included): a drain reads each entry once, however many batches it appends, and
    // each batch sees the shard as fresh as just before its append.
    let looks: Vec<BTreeMap<u16, u64>> = claimed.iter().map(Claimed::look_from).collect();
    let mut scanned: BTreeMap<u16, (u64, Vec<LedgerEntry>)> = BTreeMap::new();
    for (shard, from) in looks.iter().flatten() {
        let low = scanned.entry(*shard).or_insert((*from, Vec::new()));
        low.0 = low.0.min(*from);
    }
    let mut drained = Drained::default();
    let mut done = Vec::new();
    let mut failing = Failing::default();
    for (c, look) in claimed.into_iter().zip(looks) {
        let shards = c.batch.shards();
        if failing.blocks(&shards) {
            failing.waits(&c.batch.id, &shards);
            continue;
        }
        // A scan the store fails ends this batch's turn like a failed append.
        let mut scan_failed = false;
        for shard in look.keys() {
            if let Some((next, entries)) = scanned.get_mut(shard) {
                match read_landed(*shard, *next).await {
                    Ok(more) => {
                        *next += more.len() as u64;
                        entries.extend(more);
                    }
                    Err(e) => {
                        eprintln!(
                            "ledger: scanning shard {shard} for parked batch {} failed: {e:?}",
                            c.batch.id
                        );
                        failing.failed(&c.batch.id, *shard, &e);
                        scan_failed = true;
                        break;
                    }
                }
            }
        }
        if scan_failed {
            continue;
        }
        let seen = |from: &BTreeMap<u16, u64>| -> Vec<&LedgerEntry> {
            from.iter()
                .flat_map(|(shard, from)| {
                    scanned
                        .get(shard)
                        .into_iter()
                        .flat_map(|(_, entries)| entries.iter())
                        .filter(move |e| e.seq >= *from)
                })
                .collect()
        };
        let mut events: VecDeque<(EntryKind, EntryFields)> = match &c.scan_from {
            None => c.batch.events.clone().into(),
            Some(since) => {
                let found: Vec<LedgerEntry> = seen(since).into_iter().cloned().collect();
                // Only recovered and repeats batches look at the other batches.
                let others = if c.batch.recovered || c.batch.repeats {
                    after.deferred_to(&c.batch.id)
                } else {
                    Vec::new()
                };
                c.batch.unwritten(&found, &others).into()
            }
        };
        // What another drain appended since the batch's first claim (its append outlasted the lease, or this
        // drain's did): by its tags.
        esim402_core::ledger::outbox::drop_appended(&mut events, seen(&look));
        // Still ours? A long scan may outlast the lease, and a drain that took the batch over appends it.
        let id = c.batch.id.clone();
        let (_, ours) = kv::change_json(&key, |current: Option<Outbox>| {
            let mut outbox = current.unwrap_or_default();
            let ours = outbox.renew(&token, &id, crate::util::now_secs());
            let change = if ours {
                kv::Change::Put(outbox)
            } else {
                kv::Change::Keep
            };
            Ok::<_, ()>((change, ours))
        })
        .await?;
        if !ours {
            continue;
        }
        // The append looks past what was read here.
        let checked = look
            .keys()
            .filter_map(|shard| scanned.get(shard).map(|(next, _)| (*shard, *next)))
            .collect();
        let events: Vec<_> = events.into();
        match append_fenced(c.batch.at, events, Some(checked)).await {
            Ok(entries) => {
                drained.appended += entries.len();
                done.push(c.batch.id.clone());
            }
            Err(e) => {
                eprintln!(
                    "ledger: draining parked batch {} failed: {:?}",
                    c.batch.id, e.error
                );
                // The shard whose run failed (a run whose inserts all landed but whose head advance failed
                // leaves nothing of its own among the events not written).
                let shard = e.shard;
                failing.failed(&c.batch.id, shard, &e.error);
            }
        }
    }
    let released = crate::util::now_secs();
    let (left, ()) = kv::change_json(&key, |current: Option<Outbox>| {
        let before = current.unwrap_or_default();
        let mut outbox = before.clone();
        outbox.release(&token, &done, &failing.batches, released);
        // All of it taken over by other drains meanwhile: nothing of ours to let go.
        if outbox == before {
            return Ok::<_, ()>((kv::Change::Keep, ()));
        }
        Ok((kv::Change::Put(outbox), ()))
    })
    .await?;
    drained.left = left.map_or(0, |o| o.parked_events());
    Ok(drained)
}

/// The shards a [`drain`] found it cannot append to now, and the batches it failed (kernel `Outbox::release`).
#[derive(Default)]
struct Failing {
    /// Shards with a hole (`Corrupt`): no drain appends past it, so their batches wait.
    blocked: std::collections::BTreeSet<u16>,
    /// Shards the store failed on: their other batches are left to the next drain.
    down: std::collections::BTreeSet<u16>,
    /// Batches this drain failed to append, and how.
    batches: BTreeMap<String, Failure>,
}

impl Failing {
    /// Whether a batch going to `shards` is not tried in this drain.
    fn blocks(&self, shards: &std::collections::BTreeSet<u16>) -> bool {
        shards
            .iter()
            .any(|s| self.blocked.contains(s) || self.down.contains(s))
    }

    /// Batch `id`, going to `shards`, is not tried: if one of them is blocked, it fails blocked too.
    fn waits(&mut self, id: &str, shards: &std::collections::BTreeSet<u16>) {
        if shards.iter().any(|s| self.blocked.contains(s)) {
            self.batches.insert(id.to_owned(), Failure::Blocked);
        }
    }

    /// Batch `id` failed at `shard` with `error`.
    fn failed(&mut self, id: &str, shard: u16, error: &KvError<()>) {
        let failure = if matches!(error, KvError::Corrupt { .. }) {
            self.blocked.insert(shard);
            Failure::Blocked
        } else {
            self.down.insert(shard);
            Failure::Store
        };
        self.batches.insert(id.to_owned(), failure);
    }
}

/// How many events the outbox holds.
pub async fn parked() -> Result<usize, KvError<()>> {
    Ok(parked_events().await?.len())
}

/// The events the outbox holds, every batch's, in order.
pub async fn parked_events() -> Result<Vec<(EntryKind, EntryFields)>, KvError<()>> {
    let (outbox, _) = kv::read_json::<Outbox, ()>(&keys::ledger_outbox()).await?;
    Ok(outbox
        .map(|o| o.batches.into_iter().flat_map(|b| b.events).collect())
        .unwrap_or_default())
}
