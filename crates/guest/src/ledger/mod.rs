//! The money ledger in the `default` store (written by the invoices component only; `esim402_core::ledger`
//! holds the rules). [`SHARDS`](esim402_core::ledger::SHARDS) chains: `ledger/<shard>/entry/<seq>` holds one entry as a JSON line,
//! `ledger/<shard>/head` the shard's [`ChainHead`] (count + last hash), kept apart from the entries so a
//! removed tail is detected too. An event goes to the shard of its invoice (one invoice's events stay in order
//! in one chain), so concurrent appends for different invoices rarely meet.
//!
//! Appends never lose or reorder entries: an appender builds entry `n` of its shard from the head it read and
//! claims the entry key with insert-if-absent; exactly one appender wins each `n`. The head is then advanced
//! with a cell update (started from the version read, not read again; and past a head this protocol wrote,
//! the entry keys are claimed without a read: kernel `cell::Update::after`); an appender that finds entry `n`
//! already written but the head still at `n` advances the head itself before retrying ("helping"), so a crash
//! between the two writes stalls nobody. Both are versioned cells ([`crate::kv`]), so this holds on Spin's
//! SQLite and Redis stores too.
//!
//! An append that fails at the store hands back the events it did not write ([`Unwritten`]); the caller
//! [`park`]s them in `ledger/outbox` (kernel `ledger::outbox`), and a [`drain`] appends them later, once each.

use std::collections::VecDeque;

use esim402_core::ledger::{
    ChainHead, EntryFields, EntryKind, LedgerEntry, from_json_line, shard_for, to_json_line,
};
use esim402_core::store::keys;

use crate::kv::{self, KvError};

mod check;
mod outbox;

pub use check::{MAX_HOLE, Shards, read_all, read_shard};
pub use outbox::{Drained, drain, park, park_recovered, park_repeats, parked, parked_events};

/// How many times an append retries under contention.
const MAX_ATTEMPTS: usize = 256;

async fn read_entry(shard: u16, seq: u64) -> Result<Option<LedgerEntry>, KvError<()>> {
    let key = keys::ledger_entry(shard, seq);
    let Some(bytes) = kv::get_bytes(&key).await? else {
        return Ok(None);
    };
    let line = String::from_utf8(bytes).map_err(|e| KvError::Corrupt {
        key: key.clone(),
        message: e.to_string(),
    })?;
    from_json_line(&line)
        .map(Some)
        .map_err(|e| KvError::Corrupt {
            key,
            message: e.to_string(),
        })
}

/// The stored head of `shard` (its genesis if nothing was ever appended, or if it reads absent: a check tells
/// the two apart, [`read_shard`]).
pub async fn head(shard: u16) -> Result<ChainHead, KvError<()>> {
    head_version(shard).await.map(|(head, _)| head)
}

/// [`head`], with the cell version holding it (to advance it from without reading it again).
async fn head_version(shard: u16) -> Result<(ChainHead, kv::Stored), KvError<()>> {
    let (head, version) = kv::read_json::<ChainHead, ()>(&keys::ledger_head(shard)).await?;
    Ok((head.unwrap_or(ChainHead::genesis_of(shard)), version))
}

/// Move the head from `from` to `to` if it still is `from`; whether this call moved it (someone else may
/// have: fine). `read`: the head's cell version as the caller read it, holding `from`.
async fn advance(
    from: ChainHead,
    to: ChainHead,
    read: Option<kv::Stored>,
) -> Result<bool, KvError<()>> {
    let key = keys::ledger_head(from.shard);
    let step = |current: Option<ChainHead>| {
        if current.unwrap_or(ChainHead::genesis_of(from.shard)) == from {
            Ok(to)
        } else {
            Err(())
        }
    };
    match kv::update_json_from(&key, read, step).await {
        Ok(_) => Ok(true),
        Err(KvError::Refused(())) => Ok(false),
        Err(e) => Err(e),
    }
}

/// Help a stranded head forward (kernel `ledger::stranded`): from `from` to `to`, past entries that continue its
/// chain, as an appender helps one it finds cut off. Whether this call moved it (an append in flight may have
/// meanwhile, and its own advance then walks on from where this one left it).
pub async fn help_forward(from: ChainHead, to: ChainHead) -> Result<bool, KvError<()>> {
    advance(from, to, None).await
}

/// Move the head from `from` (read as cell version `read`) to `to` (past entries this appender wrote). A
/// helper may have moved it part of the way meanwhile; then it is walked forward entry by entry, so the head
/// never stays behind a finished run (a verifier would read the run as entries past the head).
async fn catch_up(from: ChainHead, to: ChainHead, read: kv::Stored) -> Result<(), KvError<()>> {
    if advance(from, to, Some(read)).await? {
        return Ok(());
    }
    let mut current = head(to.shard).await?;
    while current.count < to.count {
        let Some(entry) = read_entry(to.shard, current.count).await? else {
            break;
        };
        advance(current, ChainHead::after(&entry), None).await?;
        current = head(to.shard).await?;
    }
    Ok(())
}

/// A random pause before retrying a lost race, growing with the attempt (capped at ~8 ms).
async fn back_off(attempt: usize) {
    let jitter = crate::util::random_u64().unwrap_or(0);
    let cap_us = 250u64 << attempt.min(5);
    spin_sdk::time::sleep(std::time::Duration::from_micros(jitter % cap_us)).await;
}

/// An append that stopped at a store failure: the error, and the events it did not write, in order.
#[derive(Debug)]
pub struct Unwritten {
    /// Why it stopped.
    pub error: KvError<()>,
    /// The shard whose run failed (its events may all be written, its head advance not).
    pub shard: u16,
    /// What it did not write.
    pub events: Vec<(EntryKind, EntryFields)>,
    /// Per shard, where the failing write may have landed after all (the head count its attempt started from).
    pub landed_since: std::collections::BTreeMap<u16, u64>,
}

/// Append events in order, each to its shard; returns the entries written. Consecutive events of one shard
/// (one invoice's events of one request) are written as a run: entry by entry, each claimed with
/// insert-if-absent, and the head advanced once past all of them. On a store failure, the events not written
/// (for [`park`]).
pub async fn append_all(
    at: u64,
    events: Vec<(EntryKind, EntryFields)>,
) -> Result<Vec<LedgerEntry>, Unwritten> {
    append_fenced(at, events, None).await
}

/// [`append_all`]; with `checked` (a drain appending parked events: per shard, the seq up to which it has
/// looked for their tags), every attempt first reads the entries its shard gained since and drops the events
/// another drain appended there (kernel `outbox::drop_appended`), so an append that outlasts the drain lease
/// and one by the drain that took the batch over do not both land.
async fn append_fenced(
    at: u64,
    events: Vec<(EntryKind, EntryFields)>,
    mut checked: Option<std::collections::BTreeMap<u16, u64>>,
) -> Result<Vec<LedgerEntry>, Unwritten> {
    let mut runs: VecDeque<(u16, VecDeque<(EntryKind, EntryFields)>)> = VecDeque::new();
    for (kind, fields) in events {
        let shard = shard_for(kind, &fields);
        match runs.back_mut() {
            Some((s, run)) if *s == shard => run.push_back((kind, fields)),
            _ => runs.push_back((shard, [(kind, fields)].into())),
        }
    }
    let mut written = Vec::new();
    while let Some((shard, run)) = runs.pop_front() {
        let fence = checked.as_mut().and_then(|c| c.get_mut(&shard));
        match append_run(at, shard, run, fence).await {
            Ok(entries) => written.extend(entries),
            Err((error, left, from)) => {
                let events = left
                    .into_iter()
                    .chain(runs.into_iter().flat_map(|(_, run)| run))
                    .collect();
                let landed_since = from.map(|n| (shard, n)).into_iter().collect();
                return Err(Unwritten {
                    error,
                    shard,
                    events,
                    landed_since,
                });
            }
        }
    }
    Ok(written)
}

/// A run that stopped at a store failure: the error, the events not written, and the head count its last
/// attempt started from (where its failing write may have landed), if it got that far.
type RunFailure = (KvError<()>, VecDeque<(EntryKind, EntryFields)>, Option<u64>);

/// One shard's run; on a store failure, what [`RunFailure`] says.
async fn append_run(
    at: u64,
    shard: u16,
    mut pending: VecDeque<(EntryKind, EntryFields)>,
    checked: Option<&mut u64>,
) -> Result<Vec<LedgerEntry>, RunFailure> {
    let mut from = None;
    match append_run_inner(at, shard, &mut pending, &mut from, checked).await {
        Ok(written) => Ok(written),
        Err(e) => Err((e, pending, from)),
    }
}

async fn append_run_inner(
    at: u64,
    shard: u16,
    pending: &mut VecDeque<(EntryKind, EntryFields)>,
    from: &mut Option<u64>,
    mut checked: Option<&mut u64>,
) -> Result<Vec<LedgerEntry>, KvError<()>> {
    let mut written = Vec::with_capacity(pending.len());
    for attempt in 0..MAX_ATTEMPTS {
        if pending.is_empty() {
            return Ok(written);
        }
        if attempt > 0 {
            back_off(attempt).await;
        }
        let (start, read) = head_version(shard).await?;
        *from = Some(start.count);
        // A drain: what another drain appended below this head is dropped, and every insert below goes at or
        // past the head, so an entry of another drain's that this one's insert runs into is looked at on the
        // next attempt (entries this run wrote carry tags no longer pending).
        if let Some(seen) = checked.as_deref_mut() {
            if *seen < start.count {
                let gained = read_from(shard, *seen, start.count - *seen).await?;
                // An entry missing below the head: what lies past it cannot be looked at, so nothing is appended
                // (the batch stays parked; the ledger check reports the gap).
                if (gained.len() as u64) < start.count - *seen {
                    return Err(KvError::Corrupt {
                        key: keys::ledger_entry(shard, *seen + gained.len() as u64),
                        message: "missing below the shard's head".into(),
                    });
                }
                esim402_core::ledger::outbox::drop_appended(pending, &gained);
                *seen = start.count;
            }
            if pending.is_empty() {
                return Ok(written);
            }
        }
        // Past a head this protocol wrote (cell version 1 or later), no entry can be one written before cells
        // existed: every entry there was claimed through a cell, so it is claimed without being read first.
        // (Past an older head, the first append reads and helps past such an entry, and advances the head.)
        let assume_new = read.version >= 1;
        let mut cursor = start;
        while let Some((kind, fields)) = pending.front() {
            let entry = LedgerEntry::new(&cursor, at, *kind, fields.clone());
            let key = keys::ledger_entry(shard, entry.seq);
            let line = to_json_line(&entry);
            let inserted = if assume_new {
                kv::insert_new::<()>(&key, line.as_bytes()).await
            } else {
                kv::insert_if_absent::<()>(&key, line.as_bytes()).await
            };
            match inserted {
                Ok(()) => {
                    cursor = ChainHead::after(&entry);
                    written.push(entry);
                    pending.pop_front();
                }
                // The head's next entry is written but the head not advanced past it (its appender is between
                // the two writes, or crashed there): help it along, then start again from the head.
                // Only past an entry that is that next link: a head moved past anything else (an edited or
                // forged entry; a seq far ahead) would seal it into the chain.
                Err(KvError::Exists) if cursor == start => {
                    if let Some(existing) = read_entry(shard, start.count).await? {
                        let next =
                            esim402_core::ledger::continues(&start, &existing).map_err(|e| {
                                KvError::Corrupt {
                                    key: key.clone(),
                                    message: format!("not the next entry of its shard: {e}"),
                                }
                            })?;
                        advance(start, next, Some(read.clone())).await?;
                    }
                    break;
                }
                // Someone chained onto our run: re-read the head and go on.
                Err(KvError::Exists) => break,
                Err(e) => return Err(e),
            }
        }
        if cursor != start {
            catch_up(start, cursor, read).await?;
        }
    }
    if pending.is_empty() {
        return Ok(written);
    }
    Err(KvError::Contended(keys::ledger_head(shard)))
}

/// Entries of `shard` from `from` (inclusive), at most `limit`, in order; stops at the first missing seq.
pub async fn read_from(shard: u16, from: u64, limit: u64) -> Result<Vec<LedgerEntry>, KvError<()>> {
    let mut out = Vec::new();
    let mut seq = from;
    while (out.len() as u64) < limit {
        match read_entry(shard, seq).await? {
            Some(e) => out.push(e),
            None => break,
        }
        seq += 1;
    }
    Ok(out)
}

/// [`read_from`] for deciding which events already landed (a drain's scan, a resumed payment's repeat check):
/// every entry of `shard` from `from` on, with the first absent one settled first. An entry key whose first
/// version was claimed but never published (its appender's write failed, or it crashed, between the claim and
/// the write: kernel `store::cell`) reads as absent, and the next append there adopts the claimant's entry
/// (`cell::ADOPT_AFTER_US` later): decided on the plain read, its event would be appended a second time. So a
/// claimed first version is adopted here (a claim of it can only lose, and losing long enough publishes the
/// winner's proposal), and the scan goes on past it. One counter read more per scan; the pause only where a
/// claim is left.
pub async fn read_landed(shard: u16, from: u64) -> Result<Vec<LedgerEntry>, KvError<()>> {
    let mut out = read_from(shard, from, u64::MAX).await?;
    loop {
        let seq = from + out.len() as u64;
        let key = keys::ledger_entry(shard, seq);
        if kv::increment::<()>(&esim402_core::store::cell::claim_key(&key, 1), 0)? == 0 {
            return Ok(out);
        }
        match kv::insert_new::<()>(&key, b"").await {
            Err(KvError::Exists) => {}
            Ok(()) => {
                return Err(KvError::Corrupt {
                    key,
                    message: "claimed, yet a later claim of it won".into(),
                });
            }
            Err(e) => return Err(e),
        }
        let more = read_from(shard, seq, u64::MAX).await?;
        if more.is_empty() {
            // Adopted, yet not there (a tombstone): nothing more to read.
            return Ok(out);
        }
        out.extend(more);
    }
}
