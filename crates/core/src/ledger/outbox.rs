//! Events whose append failed, parked until a drain appends them: one record (`ledger/outbox`, kept by the
//! invoices component), written only when an append fails and by drains, so a request whose append succeeds
//! never touches it.
//!
//! Rules a reader must not break:
//! - A batch is parked with exactly the events its append did not write, in order, each tagged
//!   [`OUTBOX_TAG`]` = "<batch id>/<index>"` and keeping its original time.
//! - A drain claims the batches nobody drains ([`Outbox::claim`]: a token and a lease), recording per shard the
//!   head count it read *before* claiming (`since`): every entry it appends for a batch lands at or after it.
//! - A claim whose lease ran out may be taken over. The new claim keeps the older `since`, and the new drainer
//!   scans the batch's shards from there for the tags the lapsed one appended ([`Parked::unwritten`]): an event
//!   is appended once, whoever drains it.
//! - Two drains may hold a batch at once (an append that outlasts the lease, and the drain that took it over):
//!   each attempt of a drain's append first drops the events whose tags the shard gained since it last looked
//!   ([`drop_appended`]); inserts are decided per seq, so whichever of two equal events is inserted second is
//!   dropped by its drain.
//! - Only the claimer removes its batches, once appended ([`Outbox::release`]); what it claimed but did not
//!   append it lets go at once (the next drain takes it over as above). A batch whose append failed is claimed
//!   after every batch that did not ([`Parked::failures`]), so it never holds up the rest of the outbox; one
//!   found blocked (a hole in one of its shards, which no drain appends past) also waits a growing while
//!   ([`retry_after`]).
//!
//! ```
//! use std::collections::BTreeMap;
//! use esim402_core::ledger::outbox::Outbox;
//! use esim402_core::ledger::{EntryFields, EntryKind};
//!
//! let mut outbox = Outbox::default();
//! let events = vec![(EntryKind::RefundPaid, EntryFields::default().invoice("inv_1"))];
//! outbox.park("b1", 1_700_000_000, events, BTreeMap::new()).unwrap();
//! let heads: BTreeMap<u16, u64> = outbox.shards_to_claim(1_700_000_001).into_iter().map(|s| (s, 0)).collect();
//! let claimed = outbox.claim("drainer", 1_700_000_001, &heads);
//! assert_eq!(claimed.len(), 1);
//! assert!(claimed[0].scan_from.is_none(), "nobody drained it before: nothing to look for");
//! outbox.release("drainer", &["b1".to_owned()], &BTreeMap::new(), 1_700_000_002);
//! assert_eq!(outbox.parked_events(), 0);
//! ```

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use super::{EntryFields, EntryKind, LedgerEntry, shard_for};

/// The detail naming a parked event: `<batch id>/<index in the batch>`.
pub const OUTBOX_TAG: &str = "outbox";
/// At most this many events wait in the outbox; past it a failed append is reported, not parked.
pub const MAX_PARKED_EVENTS: usize = 10_000;
/// How long a drain holds the batches it claimed.
pub const DRAIN_LEASE_SECS: u64 = 60;
/// At most this many events are claimed by one drain (but at least one batch), so a drain ends well within its
/// lease even on a slow store; the rest waits for the next.
pub const MAX_DRAIN_EVENTS: usize = 500;
/// How long a batch found blocked ([`Failure::Blocked`]) waits before a drain tries it again, the first time
/// ([`retry_after`]).
pub const BLOCKED_RETRY_SECS: u64 = DRAIN_LEASE_SECS;
/// The longest a blocked batch waits between tries.
pub const MAX_BLOCKED_RETRY_SECS: u64 = 3_600;

/// How long a blocked batch whose append failed `times` waits before the next try: [`BLOCKED_RETRY_SECS`],
/// doubled each time, at most [`MAX_BLOCKED_RETRY_SECS`].
pub fn retry_after(times: u32) -> u64 {
    BLOCKED_RETRY_SECS
        .saturating_mul(1u64 << times.saturating_sub(1).min(16))
        .min(MAX_BLOCKED_RETRY_SECS)
}

/// The outbox record.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Outbox {
    /// Parked batches, oldest first.
    pub batches: Vec<Parked>,
}

/// The events of one failed append.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Parked {
    /// Random, unique among batches.
    pub id: String,
    /// When the events happened (the time their append was given).
    pub at: u64,
    /// In order, each tagged [`OUTBOX_TAG`].
    pub events: Vec<(EntryKind, EntryFields)>,
    /// The drain holding it, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub claim: Option<DrainClaim>,
    /// Per shard: the seq from which the failed append may have written one of these events after all (a store
    /// call that failed after its write took effect, e.g. a timeout). The first drain looks there for an entry
    /// equal to an event (before its tag) and does not append that event again.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub landed_since: BTreeMap<u16, u64>,
    /// Events logged again after a crash (`crate::usage::held`), whose first append may have landed, been
    /// parked or drained under another id: the first drain scans their shards from the start and skips an event
    /// equal to any entry there of the same time, tagged or not.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub recovered: bool,
    /// A resumed payment attempt's events whose repeat check could not run (`crate::ledger::not_yet_logged`):
    /// the first drain scans their shards from the start and leaves out a once-per-invoice event its invoice
    /// has there already.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub repeats: bool,
    /// How many drains failed to append it: it is claimed after the batches none failed ([`Outbox::claim`]).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub failures: u32,
}

/// Why a drain did not append a batch it claimed ([`Outbox::release`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// The store failed: the next drain tries again (after the batches that did not fail).
    Store,
    /// A hole in one of its shards (an entry missing below the head): no drain appends it until the hole is
    /// repaired, so it waits [`retry_after`] its failures.
    Blocked,
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

/// A drain's hold on a batch.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DrainClaim {
    /// The drainer's random token.
    pub token: String,
    /// Until when (unix seconds).
    pub until: u64,
    /// Per shard of the batch: the head count read before the first claim; the batch's entries are at or past it.
    pub since: BTreeMap<u16, u64>,
}

/// A batch a drain now holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claimed {
    /// The batch.
    pub batch: Parked,
    /// Taken over from a lapsed drain: scan these shards from these seqs for entries it appended.
    pub scan_from: Option<BTreeMap<u16, u64>>,
}

/// The outbox holds [`MAX_PARKED_EVENTS`] already.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the ledger outbox is full ({MAX_PARKED_EVENTS} events wait for a drain)")]
pub struct OutboxFull;

impl Outbox {
    /// Park `events` (those an append did not write) as batch `id`, time `at`.
    pub fn park(
        &mut self,
        id: &str,
        at: u64,
        events: Vec<(EntryKind, EntryFields)>,
        landed_since: BTreeMap<u16, u64>,
    ) -> Result<(), OutboxFull> {
        if self.parked_events() + events.len() > MAX_PARKED_EVENTS {
            return Err(OutboxFull);
        }
        let events = events
            .into_iter()
            .enumerate()
            .map(|(i, (kind, fields))| (kind, fields.detail(OUTBOX_TAG, format!("{id}/{i}"))))
            .collect();
        self.batches.push(Parked {
            id: id.to_owned(),
            at,
            events,
            claim: None,
            landed_since,
            recovered: false,
            repeats: false,
            failures: 0,
        });
        Ok(())
    }

    /// Park a resumed payment attempt's `events` as batch `id`, time `at`, when their repeat check could not
    /// run: its first drain leaves out the repeats ([`Parked::repeats`]).
    pub fn park_repeats(
        &mut self,
        id: &str,
        at: u64,
        events: Vec<(EntryKind, EntryFields)>,
    ) -> Result<(), OutboxFull> {
        self.park_scanning_whole_shards(id, at, events)?.repeats = true;
        Ok(())
    }

    /// Park `events` logged again after a crash as batch `id` (the same id for every recovery of them,
    /// `crate::usage::held::Held::outbox_id`), time `at`: `false` if they wait here already, as batch `id`
    /// (another recovery's) or in the batch their own failed append parked. Its first drain scans its shards from
    /// the start ([`Parked::recovered`]).
    pub fn park_recovered(
        &mut self,
        id: &str,
        at: u64,
        events: Vec<(EntryKind, EntryFields)>,
    ) -> Result<bool, OutboxFull> {
        if self.batches.iter().any(|b| b.id == id) {
            return Ok(false);
        }
        // Parked already by its own failed append (under another id, maybe held by a drain right now): that
        // batch logs them. Their ids are random per batch, so equal content at the same time is the same event.
        let waiting = |(kind, fields): &(EntryKind, EntryFields)| {
            self.batches.iter().any(|b| {
                b.at == at
                    && b.events
                        .iter()
                        .any(|(k, f)| k == kind && untagged(f) == untagged(fields))
            })
        };
        if !events.is_empty() && events.iter().all(waiting) {
            return Ok(false);
        }
        self.park_scanning_whole_shards(id, at, events)?.recovered = true;
        Ok(true)
    }

    /// [`Outbox::park`] with the whole of each event's shard to scan at the first drain; the batch parked.
    fn park_scanning_whole_shards(
        &mut self,
        id: &str,
        at: u64,
        events: Vec<(EntryKind, EntryFields)>,
    ) -> Result<&mut Parked, OutboxFull> {
        let whole_shards = events
            .iter()
            .map(|(kind, fields)| (shard_for(*kind, fields), 0))
            .collect();
        self.park(id, at, events, whole_shards)?;
        // `park` pushed it (it refuses before pushing, never after).
        self.batches.last_mut().ok_or(OutboxFull)
    }

    /// How many events wait.
    pub fn parked_events(&self) -> usize {
        self.batches.iter().map(|b| b.events.len()).sum()
    }

    fn claimable(b: &Parked, now: u64) -> bool {
        b.claim.as_ref().is_none_or(|c| c.until <= now)
    }

    /// The shards whose heads a drain reads before [`Outbox::claim`]: those of the batches it may claim at `now`.
    pub fn shards_to_claim(&self, now: u64) -> BTreeSet<u16> {
        self.batches
            .iter()
            .filter(|b| Self::claimable(b, now))
            .flat_map(Parked::shards)
            .collect()
    }

    /// Claim, for `token` until `now` + [`DRAIN_LEASE_SECS`], the batches nobody holds at `now`, oldest first
    /// (those a drain failed to append after all the others: [`Parked::failures`]), up to [`MAX_DRAIN_EVENTS`] events
    /// (at least one batch); `heads`: the head counts read before this claim (a batch whose shard is missing from
    /// it is left alone). A batch taken over keeps the `since` of its first claim. Nothing claimed: the outbox is
    /// unchanged.
    pub fn claim(&mut self, token: &str, now: u64, heads: &BTreeMap<u16, u64>) -> Vec<Claimed> {
        let mut out = Vec::new();
        let mut claimed = 0;
        let mut order: Vec<usize> = (0..self.batches.len()).collect();
        order.sort_by_key(|i| self.batches[*i].failures > 0);
        for i in order {
            let b = &mut self.batches[i];
            if !Self::claimable(b, now) || !b.shards().iter().all(|s| heads.contains_key(s)) {
                continue;
            }
            if claimed > 0 && claimed + b.events.len() > MAX_DRAIN_EVENTS {
                break;
            }
            claimed += b.events.len();
            let earlier = b.claim.take().map(|c| c.since);
            let since = earlier
                .clone()
                .unwrap_or_else(|| b.shards().into_iter().map(|s| (s, heads[&s])).collect());
            b.claim = Some(DrainClaim {
                token: token.to_owned(),
                until: now.saturating_add(DRAIN_LEASE_SECS),
                since,
            });
            // Where to look for what was appended already: from a lapsed drain's claim, and where the failed
            // append may have landed.
            let mut scan = earlier.unwrap_or_default();
            for (shard, from) in &b.landed_since {
                scan.entry(*shard)
                    .and_modify(|n| *n = (*n).min(*from))
                    .or_insert(*from);
            }
            out.push(Claimed {
                batch: b.clone(),
                scan_from: (!scan.is_empty()).then_some(scan),
            });
        }
        out
    }

    /// The batches batch `id` defers to ([`Parked::unwritten`]'s `others`): every other batch, but for a
    /// [`Parked::repeats`] batch only the batches parked before it and those that are not `repeats` (two
    /// `repeats` batches of one invoice must not each leave an event to the other: the earlier one logs it).
    pub fn deferred_to(&self, id: &str) -> Vec<Parked> {
        let Some(at) = self.batches.iter().position(|b| b.id == id) else {
            return Vec::new();
        };
        let repeats = self.batches[at].repeats;
        self.batches
            .iter()
            .enumerate()
            .filter(|(i, b)| *i != at && (!repeats || *i < at || !b.repeats))
            .map(|(_, b)| b.clone())
            .collect()
    }

    /// Before appending batch `id`: whether `token` still holds it, its lease then renewed from `now`. `false`
    /// if another drain took it over (its lease ran out during a long scan): that one appends it.
    pub fn renew(&mut self, token: &str, id: &str, now: u64) -> bool {
        match self
            .batches
            .iter_mut()
            .find(|b| b.id == id)
            .and_then(|b| b.claim.as_mut())
            .filter(|c| c.token == token)
        {
            Some(c) => {
                c.until = now.saturating_add(DRAIN_LEASE_SECS);
                true
            }
            None => false,
        }
    }

    /// End `token`'s drain at `now`: remove the batches `done` it holds (appended by it), count a failure on
    /// those it `failed` to append, and let the others it holds go: at once, except a [`Failure::Blocked`] one,
    /// held for [`retry_after`] its failures. Either way their claim lapses keeping its `since`, so the drain
    /// that takes them over scans for what this one appended. Batches others hold are left as they are.
    pub fn release(
        &mut self,
        token: &str,
        done: &[String],
        failed: &BTreeMap<String, Failure>,
        now: u64,
    ) {
        let mine = |b: &Parked| b.claim.as_ref().is_some_and(|c| c.token == token);
        self.batches.retain(|b| !(mine(b) && done.contains(&b.id)));
        for b in self.batches.iter_mut() {
            let Some(c) = b.claim.as_mut().filter(|c| c.token == token) else {
                continue;
            };
            c.until = 0;
            if let Some(failure) = failed.get(&b.id) {
                b.failures = b.failures.saturating_add(1);
                if *failure == Failure::Blocked {
                    c.until = now.saturating_add(retry_after(b.failures));
                }
            }
        }
    }
}

impl Claimed {
    /// Per shard of the batch, the seq from which a drain looks for what another drain appended (by tags,
    /// [`drop_appended`]): the lowest of the head count read before the batch's first claim and
    /// [`Claimed::scan_from`].
    pub fn look_from(&self) -> BTreeMap<u16, u64> {
        let mut look: BTreeMap<u16, u64> = self
            .batch
            .claim
            .iter()
            .flat_map(|claim| claim.since.clone())
            .collect();
        for (shard, from) in self.scan_from.iter().flatten() {
            look.entry(*shard)
                .and_modify(|n| *n = (*n).min(*from))
                .or_insert(*from);
        }
        look
    }
}

impl Parked {
    /// The shards its events go to.
    pub fn shards(&self) -> BTreeSet<u16> {
        self.events
            .iter()
            .map(|(kind, fields)| shard_for(*kind, fields))
            .collect()
    }

    /// Its events not among `found` (entries of its shards, read from [`Claimed::scan_from`]), in order: an
    /// event is among them if an entry carries its tag (a lapsed drain appended it) or, untagged, equals it
    /// (its failed append landed after all; each such entry stands for one event). For a [`Parked::recovered`]
    /// batch, an entry equal to an event but for its tag (the first append, drained under another id) counts
    /// too, and so does an event another batch of `others` holds (its first append's events, parked under
    /// another id); of a [`Parked::repeats`] batch, a once-per-invoice event whose invoice has one of its kind
    /// among `found` or the events of `others` is left out. `others`: the batches it defers to, which their own
    /// drains append ([`Outbox::deferred_to`]).
    pub fn unwritten(
        &self,
        found: &[LedgerEntry],
        others: &[Parked],
    ) -> Vec<(EntryKind, EntryFields)> {
        let written: BTreeSet<&str> = found
            .iter()
            .filter_map(|e| e.details.get(OUTBOX_TAG).map(String::as_str))
            .collect();
        let mut landed: Vec<(EntryKind, EntryFields)> = found
            .iter()
            .filter(|e| (self.recovered || !e.details.contains_key(OUTBOX_TAG)) && e.at == self.at)
            .map(|e| (e.kind, untagged(&e.fields())))
            .collect();
        if self.recovered {
            landed.extend(
                others
                    .iter()
                    .filter(|b| b.at == self.at)
                    .flat_map(|b| b.events.iter().map(|(k, f)| (*k, untagged(f)))),
            );
        }
        let left: Vec<(EntryKind, EntryFields)> = self
            .events
            .iter()
            .filter(|(kind, f)| {
                if f.details
                    .get(OUTBOX_TAG)
                    .is_some_and(|tag| written.contains(tag.as_str()))
                {
                    return false;
                }
                let plain = untagged(f);
                match landed.iter().position(|(k, g)| k == kind && *g == plain) {
                    Some(i) => {
                        landed.swap_remove(i);
                        false
                    }
                    None => true,
                }
            })
            .cloned()
            .collect();
        if self.repeats {
            let waiting: Vec<(EntryKind, EntryFields)> = others
                .iter()
                .flat_map(|b| b.events.iter().cloned())
                .collect();
            return super::not_yet_logged(left, found, &waiting);
        }
        left
    }
}

/// Remove from `pending` the parked events an entry of `entries` carries the tag of (another drain appended
/// them: one that took the batch over while this one's append was slow, or the one this drain took it over
/// from); how many were removed. A drain calls it before every attempt of an append with the entries its shard
/// gained since it last looked, so whichever drain's insert comes second sees the first one's entry, whatever
/// the timing: an event is appended once even if an append outlasts the drain lease.
pub fn drop_appended<'a>(
    pending: &mut std::collections::VecDeque<(EntryKind, EntryFields)>,
    entries: impl IntoIterator<Item = &'a LedgerEntry>,
) -> usize {
    let written: BTreeSet<&str> = entries
        .into_iter()
        .filter_map(|e| e.details.get(OUTBOX_TAG).map(String::as_str))
        .collect();
    if written.is_empty() {
        return 0;
    }
    let before = pending.len();
    pending.retain(|(_, f)| {
        f.details
            .get(OUTBOX_TAG)
            .is_none_or(|tag| !written.contains(tag.as_str()))
    });
    before - pending.len()
}

/// `fields` without their [`OUTBOX_TAG`].
fn untagged(fields: &EntryFields) -> EntryFields {
    let mut fields = fields.clone();
    fields.details.remove(OUTBOX_TAG);
    fields
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ledger::{ChainHead, shard_of};

    fn event(invoice: &str) -> (EntryKind, EntryFields) {
        (
            EntryKind::RefundPaid,
            EntryFields::default().invoice(invoice),
        )
    }

    fn heads(outbox: &Outbox, now: u64, count: u64) -> BTreeMap<u16, u64> {
        outbox
            .shards_to_claim(now)
            .into_iter()
            .map(|s| (s, count))
            .collect()
    }

    #[test]
    fn parked_events_are_tagged_in_order_and_bounded() {
        let mut o = Outbox::default();
        o.park(
            "b1",
            7,
            vec![event("inv_a"), event("inv_b")],
            BTreeMap::new(),
        )
        .unwrap();
        let tags: Vec<_> = o.batches[0]
            .events
            .iter()
            .map(|(_, f)| f.details[OUTBOX_TAG].clone())
            .collect();
        assert_eq!(tags, ["b1/0", "b1/1"]);
        assert_eq!(o.batches[0].at, 7, "the events keep their time");
        assert_eq!(
            o.batches[0].shards(),
            [shard_of("inv_a"), shard_of("inv_b")].into()
        );
        let many = vec![event("inv_c"); MAX_PARKED_EVENTS - 1];
        assert_eq!(o.park("b2", 8, many, BTreeMap::new()), Err(OutboxFull));
        assert_eq!(o.parked_events(), 2, "a refused batch parks nothing");
        o.park(
            "b2",
            8,
            vec![event("inv_c"); MAX_PARKED_EVENTS - 2],
            BTreeMap::new(),
        )
        .unwrap();
        assert_eq!(o.parked_events(), MAX_PARKED_EVENTS);
    }

    #[test]
    fn a_claim_holds_until_its_lease_ends_and_a_takeover_keeps_the_first_since() {
        let mut o = Outbox::default();
        o.park("b1", 7, vec![event("inv_a")], BTreeMap::new())
            .unwrap();
        let first = o.claim("d1", 100, &heads(&o, 100, 5));
        assert_eq!(first.len(), 1);
        assert_eq!(first[0].scan_from, None);
        // Held: another drain claims nothing and reads no heads for it.
        assert!(o.shards_to_claim(100 + DRAIN_LEASE_SECS - 1).is_empty());
        assert!(o.claim("d2", 101, &heads(&o, 101, 9)).is_empty());
        // A release by anyone but the holder removes nothing.
        o.release("d2", &["b1".into()], &BTreeMap::new(), 0);
        assert_eq!(o.parked_events(), 1);
        // Lapsed: taken over, scanning from the first claim's head count (5), which the claim keeps.
        let later = 100 + DRAIN_LEASE_SECS;
        let taken = o.claim("d2", later, &heads(&o, later, 9));
        assert_eq!(taken.len(), 1);
        let shard = shard_of("inv_a");
        assert_eq!(taken[0].scan_from, Some([(shard, 5)].into()));
        assert_eq!(
            o.batches[0].claim.as_ref().unwrap().since,
            [(shard, 5)].into()
        );
        // The lapsed drainer can no longer remove it; the holder can.
        o.release("d1", &["b1".into()], &BTreeMap::new(), 0);
        assert_eq!(o.parked_events(), 1);
        assert_eq!(o.batches[0].claim.as_ref().unwrap().token, "d2");
        o.release("d2", &["b1".into()], &BTreeMap::new(), 0);
        assert_eq!(o.parked_events(), 0);
    }

    /// A drain that could not append a batch lets it go when it ends: the next drain, at once, takes it over
    /// and scans from the first claim's head count.
    #[test]
    fn a_drain_lets_go_of_what_it_did_not_append() {
        let mut o = Outbox::default();
        o.park("b1", 7, vec![event("inv_a")], BTreeMap::new())
            .unwrap();
        o.park("b2", 7, vec![event("inv_b")], BTreeMap::new())
            .unwrap();
        o.claim("d1", 100, &heads(&o, 100, 5));
        o.release("d1", &["b1".into()], &BTreeMap::new(), 0);
        assert_eq!(o.batches.len(), 1);
        let next = o.claim("d2", 100, &heads(&o, 100, 9));
        assert_eq!(next.len(), 1);
        assert_eq!(next[0].batch.id, "b2");
        assert_eq!(next[0].scan_from, Some([(shard_of("inv_b"), 5)].into()));
    }

    #[test]
    fn a_drain_claims_a_bounded_share_oldest_first() {
        let mut o = Outbox::default();
        o.park(
            "b1",
            7,
            vec![event("inv_a"); MAX_DRAIN_EVENTS - 1],
            BTreeMap::new(),
        )
        .unwrap();
        o.park("b2", 7, vec![event("inv_a"); 2], BTreeMap::new())
            .unwrap();
        o.park(
            "b3",
            7,
            vec![event("inv_a"); MAX_DRAIN_EVENTS + 1],
            BTreeMap::new(),
        )
        .unwrap();
        let ids = |c: Vec<Claimed>| c.into_iter().map(|c| c.batch.id).collect::<Vec<_>>();
        assert_eq!(ids(o.claim("d1", 100, &heads(&o, 100, 0))), ["b1"]);
        assert_eq!(ids(o.claim("d2", 100, &heads(&o, 100, 0))), ["b2"]);
        assert_eq!(
            ids(o.claim("d3", 100, &heads(&o, 100, 0))),
            ["b3"],
            "a batch larger than the bound is still drained, alone"
        );
    }

    /// A batch no drain can append (a hole in its shard) waits a growing while and, once it may be tried
    /// again, is claimed after every batch that is not blocked: it never uses up a drain's share while others
    /// wait. Before, it was let go at once and, the oldest, claimed first by every drain: a batch filling the
    /// share held up the whole outbox.
    #[test]
    fn a_blocked_batch_waits_behind_the_others() {
        let mut o = Outbox::default();
        o.park(
            "stuck",
            7,
            vec![event("inv_a"); MAX_DRAIN_EVENTS],
            BTreeMap::new(),
        )
        .unwrap();
        o.park("b2", 8, vec![event("inv_b")], BTreeMap::new())
            .unwrap();
        let ids = |c: Vec<Claimed>| c.into_iter().map(|c| c.batch.id).collect::<Vec<_>>();
        assert_eq!(ids(o.claim("d1", 100, &heads(&o, 100, 0))), ["stuck"]);
        let blocked: BTreeMap<String, Failure> = [("stuck".into(), Failure::Blocked)].into();
        o.release("d1", &[], &blocked, 100);
        assert_eq!(o.batches[0].failures, 1);
        // The next drain, at once, gets the rest of the outbox.
        assert_eq!(ids(o.claim("d2", 100, &heads(&o, 100, 0))), ["b2"]);
        o.release("d2", &["b2".into()], &BTreeMap::new(), 100);
        // Once its wait is over, it is tried again, behind a batch parked after it.
        o.park("b3", 9, vec![event("inv_c")], BTreeMap::new())
            .unwrap();
        let later = 100 + retry_after(1);
        assert!(
            o.claim("d3", later - 1, &heads(&o, later - 1, 0))
                .iter()
                .all(|c| c.batch.id != "stuck")
        );
        o.release("d3", &[], &BTreeMap::new(), later - 1);
        assert_eq!(ids(o.claim("d4", later, &heads(&o, later, 0))), ["b3"]);
        o.release("d4", &["b3".into()], &BTreeMap::new(), later);
        let taken = o.claim("d5", later, &heads(&o, later, 0));
        assert_eq!(ids(taken), ["stuck"], "tried again, taken over");
        o.release("d5", &[], &blocked, later);
        assert_eq!(
            o.batches[0].claim.as_ref().unwrap().until,
            later + retry_after(2)
        );
        // Other undrained batches are let go at once, as before; one the store failed too, but behind the rest.
        o.park("b4", 9, vec![event("inv_d")], BTreeMap::new())
            .unwrap();
        o.park("b5", 9, vec![event("inv_e")], BTreeMap::new())
            .unwrap();
        o.claim("d6", later, &heads(&o, later, 0));
        let failed: BTreeMap<String, Failure> = [("b4".into(), Failure::Store)].into();
        o.release("d6", &[], &failed, later);
        assert_eq!(
            ids(o.claim("d7", later, &heads(&o, later, 0))),
            ["b5", "b4"]
        );
    }

    #[test]
    fn blocked_batches_wait_longer_each_time_up_to_a_bound() {
        assert_eq!(retry_after(1), BLOCKED_RETRY_SECS);
        assert_eq!(retry_after(2), 2 * BLOCKED_RETRY_SECS);
        assert_eq!(retry_after(40), MAX_BLOCKED_RETRY_SECS);
        assert_eq!(retry_after(u32::MAX), MAX_BLOCKED_RETRY_SECS);
    }

    #[test]
    fn a_batch_whose_head_was_not_read_is_not_claimed() {
        let mut o = Outbox::default();
        o.park("b1", 7, vec![event("inv_a")], BTreeMap::new())
            .unwrap();
        assert!(o.claim("d1", 100, &BTreeMap::new()).is_empty());
        assert!(o.batches[0].claim.is_none());
    }

    #[test]
    fn what_a_lapsed_drain_appended_is_not_appended_again() {
        let mut o = Outbox::default();
        o.park(
            "b1",
            7,
            vec![event("inv_a"), event("inv_a"), event("inv_a")],
            BTreeMap::new(),
        )
        .unwrap();
        let batch = &o.batches[0];
        // The lapsed drain appended the first event; an unrelated entry (another batch's) sits between.
        let mut head = ChainHead::genesis_of(shard_of("inv_a"));
        let (k, f) = batch.events[0].clone();
        let mine = head.append(7, k, f);
        let other = head.append(
            8,
            EntryKind::RefundPaid,
            EntryFields::default()
                .invoice("inv_a")
                .detail(OUTBOX_TAG, "b0/1"),
        );
        let left = batch.unwritten(&[mine, other], &[]);
        let tags: Vec<_> = left
            .iter()
            .map(|(_, f)| f.details[OUTBOX_TAG].as_str())
            .collect();
        assert_eq!(tags, ["b1/1", "b1/2"]);
        assert_eq!(batch.unwritten(&[], &[]).len(), 3);
    }

    /// An append that failed may have written an event after all (its store call failed after the write took
    /// effect): the first drain looks where it could have landed, and an equal untagged entry there stands for
    /// one event, which is not appended again.
    #[test]
    fn an_event_whose_failed_append_landed_is_not_appended_again() {
        let shard = shard_of("inv_a");
        let mut o = Outbox::default();
        o.park(
            "b1",
            7,
            vec![event("inv_a"), event("inv_a")],
            [(shard, 4)].into(),
        )
        .unwrap();
        let claimed = o.claim("d1", 100, &heads(&o, 100, 9));
        assert_eq!(
            claimed[0].scan_from,
            Some([(shard, 4)].into()),
            "from where it may have landed"
        );
        let batch = &claimed[0].batch;
        let mut head = ChainHead::genesis_of(shard);
        let (k, f) = event("inv_a");
        let landed = head.append(7, k, f.clone());
        // Same kind and fields but another time: another event.
        let other = head.append(8, k, f);
        assert_eq!(
            batch.unwritten(&[landed.clone(), other], &[]).len(),
            1,
            "one of the two landed"
        );
        assert_eq!(batch.unwritten(&[landed.clone(), landed], &[]).len(), 0);
        assert_eq!(batch.unwritten(&[], &[]).len(), 2);
    }

    /// A charged batch's events logged again after a crash (`crate::usage::held`): one copy parked per batch
    /// whatever the number of recoveries, and not appended again if its first append landed, was drained
    /// under another id, or a drain of an earlier recovery appended it.
    #[test]
    fn recovered_events_are_parked_once_and_never_appended_twice() {
        let usage = |batch: &str| {
            (
                EntryKind::UsageCharged,
                EntryFields::default()
                    .detail("batch", batch)
                    .detail("bytes", "10"),
            )
        };
        let shard = shard_for(usage("b1").0, &usage("b1").1);
        let mut o = Outbox::default();
        assert_eq!(o.park_recovered("usage/b1", 7, vec![usage("b1")]), Ok(true));
        assert_eq!(
            o.park_recovered("usage/b1", 7, vec![usage("b1")]),
            Ok(false),
            "a second recovery finds the first's"
        );
        assert_eq!(o.parked_events(), 1);
        let claimed = o.claim("d1", 100, &heads(&o, 100, 9));
        assert_eq!(
            claimed[0].scan_from,
            Some([(shard, 0)].into()),
            "the whole shard"
        );
        let batch = &claimed[0].batch;
        assert!(batch.recovered);
        let mut head = ChainHead::genesis_of(shard);
        let (k, f) = usage("b1");
        // Landed by the batch's own append.
        let first = head.append(7, k, f.clone());
        assert!(
            batch
                .unwritten(std::slice::from_ref(&first), &[])
                .is_empty()
        );
        // Parked by a failed append and drained under that batch's id.
        let drained = head.append(7, k, f.clone().detail(OUTBOX_TAG, "x9/0"));
        assert!(
            batch
                .unwritten(std::slice::from_ref(&drained), &[])
                .is_empty()
        );
        // Appended by an earlier recovery's drain (its tag).
        let again = head.append(7, k, batch.events[0].1.clone());
        assert!(
            batch
                .unwritten(std::slice::from_ref(&again), &[])
                .is_empty()
        );
        // Another batch's, or another time: not this event.
        let other = head.append(7, k, usage("b2").1);
        let later = head.append(8, k, f);
        assert_eq!(batch.unwritten(&[other, later], &[]).len(), 1);
        // An ordinary parked batch still ignores tagged entries of other batches.
        let mut plain = Outbox::default();
        plain
            .park("b3", 7, vec![usage("b1")], [(shard, 0)].into())
            .unwrap();
        assert_eq!(plain.batches[0].unwritten(&[drained], &[]).len(), 1);
    }

    /// A resumed attempt's events parked because their repeat check could not read the store: the drain
    /// scans the whole shard and leaves out what the invoice has logged already.
    #[test]
    fn parked_repeats_leave_out_what_the_invoice_has() {
        let shard = shard_of("inv_a");
        let confirmed = (
            EntryKind::SettlementConfirmed,
            EntryFields::default().invoice("inv_a"),
        );
        let completed = (
            EntryKind::ActivationCompleted,
            EntryFields::default().invoice("inv_a"),
        );
        let verified = (
            EntryKind::PaymentVerified,
            EntryFields::default().invoice("inv_a"),
        );
        let mut o = Outbox::default();
        o.park_repeats(
            "r1",
            20,
            vec![verified.clone(), confirmed.clone(), completed.clone()],
        )
        .unwrap();
        let claimed = o.claim("d1", 100, &heads(&o, 100, 9));
        assert_eq!(claimed[0].scan_from, Some([(shard, 0)].into()));
        let batch = &claimed[0].batch;
        assert!(batch.repeats);
        let mut head = ChainHead::genesis_of(shard);
        let earlier = [
            head.append(10, verified.0, verified.1),
            head.append(10, confirmed.0, confirmed.1),
        ];
        let kinds: Vec<EntryKind> = batch
            .unwritten(&earlier, &[])
            .into_iter()
            .map(|(k, _)| k)
            .collect();
        assert_eq!(
            kinds,
            [EntryKind::PaymentVerified, EntryKind::ActivationCompleted],
            "each attempt's verification, and what the first attempt did not log"
        );
        assert_eq!(batch.unwritten(&[], &[]).len(), 3);
    }

    /// Recovered events their own failed append parked already (another id, maybe held by a drain): not parked
    /// again, so the two copies cannot both land.
    #[test]
    fn recovered_events_waiting_under_their_own_append_are_not_parked_again() {
        let usage = (
            EntryKind::UsageCharged,
            EntryFields::default().detail("batch", "b1"),
        );
        let mut o = Outbox::default();
        o.park("x9", 7, vec![usage.clone()], BTreeMap::new())
            .unwrap();
        o.claim("d1", 100, &heads(&o, 100, 3));
        assert_eq!(
            o.park_recovered("usage/b1", 7, vec![usage.clone()]),
            Ok(false)
        );
        assert_eq!(o.parked_events(), 1);
        // Another time: another event.
        assert_eq!(o.park_recovered("usage/b1", 8, vec![usage]), Ok(true));
    }

    /// A drain renews its claim before each append, and finds out when another took it over.
    #[test]
    fn a_drain_appends_only_what_it_still_holds() {
        let mut o = Outbox::default();
        o.park("b1", 7, vec![event("inv_a")], BTreeMap::new())
            .unwrap();
        o.claim("d1", 100, &heads(&o, 100, 0));
        assert!(o.renew("d1", "b1", 150));
        assert_eq!(
            o.batches[0].claim.as_ref().unwrap().until,
            150 + DRAIN_LEASE_SECS
        );
        // d1 stalls past its lease; d2 takes the batch over.
        let later = 150 + DRAIN_LEASE_SECS;
        assert_eq!(o.claim("d2", later, &heads(&o, later, 0)).len(), 1);
        assert!(
            !o.renew("d1", "b1", later + 1),
            "taken over: d1 must not append"
        );
        assert!(o.renew("d2", "b1", later + 1));
        assert!(!o.renew("d2", "gone", later + 1));
    }

    /// A resumed attempt's events parked for the drain to check leave out what another parked batch (the
    /// earlier attempt's, held by another drain) will log.
    #[test]
    fn parked_repeats_leave_out_what_waits_elsewhere() {
        let confirmed = (
            EntryKind::SettlementConfirmed,
            EntryFields::default().invoice("inv_b"),
        );
        let completed = (
            EntryKind::ActivationCompleted,
            EntryFields::default().invoice("inv_b"),
        );
        let mut o = Outbox::default();
        o.park("x1", 10, vec![confirmed.clone()], BTreeMap::new())
            .unwrap();
        o.park_repeats("r1", 20, vec![confirmed.clone(), completed.clone()])
            .unwrap();
        o.park_repeats("r2", 30, vec![confirmed.clone(), completed])
            .unwrap();
        let kinds = |o: &Outbox, id: &str| -> Vec<EntryKind> {
            let b = o.batches.iter().find(|b| b.id == id).unwrap();
            b.unwritten(&[], &o.deferred_to(id))
                .into_iter()
                .map(|(k, _)| k)
                .collect()
        };
        assert_eq!(
            kinds(&o, "r1"),
            [EntryKind::ActivationCompleted],
            "x1 logs it"
        );
        assert!(kinds(&o, "r2").is_empty(), "x1 and r1 log them");
        // Without x1: r1, the earlier, logs the settlement; r2 defers to it (and not the other way round).
        o.batches.remove(0);
        assert_eq!(
            kinds(&o, "r1"),
            [
                EntryKind::SettlementConfirmed,
                EntryKind::ActivationCompleted
            ]
        );
        assert!(kinds(&o, "r2").is_empty());
        assert_eq!(o.deferred_to("r1").len(), 0);
        assert_eq!(o.deferred_to("gone").len(), 0);
    }

    /// A recovered batch leaves out what its own failed append parked (part of it, under another id).
    #[test]
    fn a_recovered_batch_defers_to_its_own_parked_part() {
        let usage = |bytes: &str| {
            (
                EntryKind::UsageDisputed,
                EntryFields::default()
                    .detail("batch", "b1")
                    .detail("bytes", bytes),
            )
        };
        let mut o = Outbox::default();
        o.park("p1", 7, vec![usage("1")], BTreeMap::new()).unwrap();
        assert_eq!(
            o.park_recovered("usage/b1", 7, vec![usage("1"), usage("2")]),
            Ok(true),
            "not all of it waits"
        );
        let r = o.batches.iter().find(|b| b.id == "usage/b1").unwrap();
        let left = r.unwritten(&[], &o.deferred_to("usage/b1"));
        assert_eq!(left.len(), 1);
        assert_eq!(left[0].1.details["bytes"], "2");
        assert_eq!(r.unwritten(&[], &[]).len(), 2);
    }

    /// Two drains hold one batch (the first one's append outlasted its lease and a second took the batch over):
    /// whichever inserts second drops what the entries it has not looked at yet show the other appended, by tag
    /// alone (an untagged entry equal to an event is another event, and another batch's tags are not this one's).
    #[test]
    fn a_drain_drops_what_another_drain_appended_meanwhile() {
        let mut o = Outbox::default();
        o.park(
            "b1",
            7,
            vec![event("inv_a"), event("inv_a")],
            BTreeMap::new(),
        )
        .unwrap();
        o.park("b2", 7, vec![event("inv_a")], BTreeMap::new())
            .unwrap();
        let shard = shard_of("inv_a");
        let mut first: std::collections::VecDeque<_> = o.batches[0].events.clone().into();
        let mut second = first.clone();
        // The second drain appended the batch's first event; the shard also holds an untagged equal event and
        // the other batch's.
        let mut head = ChainHead::genesis_of(shard);
        let mut entries = Vec::new();
        for (kind, fields) in [
            second.pop_front().unwrap(),
            event("inv_a"),
            o.batches[1].events[0].clone(),
        ] {
            let entry = LedgerEntry::new(&head, 7, kind, fields);
            head = ChainHead::after(&entry);
            entries.push(entry);
        }
        assert_eq!(drop_appended(&mut first, &entries), 1);
        assert_eq!(first.len(), 1);
        assert_eq!(first[0].1.details[OUTBOX_TAG], "b1/1", "order kept");
        assert_eq!(drop_appended(&mut first, &entries), 0, "idempotent");
        assert_eq!(drop_appended(&mut first, &[]), 0);
        // The first drain now appends "b1/1"; the second, looking again, drops it.
        let entry = LedgerEntry::new(&head, 7, first[0].0, first[0].1.clone());
        assert_eq!(drop_appended(&mut second, &[entry]), 1);
        assert!(second.is_empty());
    }

    /// A first claim looks from the heads read before it; a takeover from its first claim's, lowered where the
    /// failed append may have landed.
    #[test]
    fn a_drain_looks_from_the_first_claim_or_lower() {
        let shard = shard_of("inv_a");
        let mut o = Outbox::default();
        o.park("b1", 7, vec![event("inv_a")], [(shard, 2)].into())
            .unwrap();
        let first = o.claim("d1", 100, &heads(&o, 100, 5));
        assert_eq!(
            first[0].look_from(),
            [(shard, 2)].into(),
            "where it may have landed"
        );
        o.release("d1", &[], &BTreeMap::new(), 0);
        let again = o.claim("d2", 101, &heads(&o, 101, 9));
        assert_eq!(
            again[0].look_from(),
            [(shard, 2)].into(),
            "the first claim's, kept"
        );
        let mut plain = Outbox::default();
        plain
            .park("b2", 7, vec![event("inv_a")], BTreeMap::new())
            .unwrap();
        let claimed = plain.claim("d1", 100, &heads(&plain, 100, 5));
        assert_eq!(claimed[0].look_from(), [(shard, 5)].into());
    }

    #[test]
    fn the_record_round_trips() {
        let mut o = Outbox::default();
        o.park("b1", 7, vec![event("inv_a")], BTreeMap::new())
            .unwrap();
        o.claim("d1", 100, &heads(&o, 100, 5));
        let json = serde_json::to_string(&o).unwrap();
        assert_eq!(serde_json::from_str::<Outbox>(&json).unwrap(), o);
    }
}
