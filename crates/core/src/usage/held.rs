//! A receipt batch's ledger events (`usage_charged`, `usage_disputed`), held in the store from the moment its
//! charges are done until the ledger has them, so a crash between the charges and the append loses neither.
//!
//! Rules a reader must not break:
//! - A batch's events are held only **after its last charge** (the `used` increments): a held batch is a
//!   charged batch, so logging it again never records a charge that did not happen. A crash during the charges
//!   (between the first increment and the hold) still loses the events, and the charges that landed stay.
//! - Each held batch takes a write-once slot of one of [`SHARDS`] rings (`meter/held/<shard>/<slot>`, the slot
//!   reserved by an `increment` of the ring's counter): one `increment` and one `set` per batch, and one
//!   `delete` once the ledger has the events ([`SlotId`]). No read-modify-write on the ingest path.
//! - Only a slot older than [`RELOG_AFTER_SECS`] is logged again ([`Held::due`]): by then its batch's request
//!   has appended its events or stopped for good, so a repeat never races the original append. The ledger
//!   keeps a repeat once (`crate::ledger::outbox`: a recovered batch is parked under [`Held::outbox_id`] and
//!   matched by content against its shard), so a slot whose events landed but whose delete was lost is safe.
//! - A recovery scans each ring from its low-water mark ([`Recovery`]) and moves the mark only past slots that
//!   are empty **and** were reserved before a mark it set at least [`RELOG_AFTER_SECS`] earlier: an empty slot
//!   may be one whose batch reserved it and has not written it yet.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::ledger::{EntryFields, EntryKind};

/// Rings of held batches (a batch's ring follows from its id, `crate::ledger::shard_of`).
pub const SHARDS: u16 = crate::ledger::SHARDS;
/// How long after its batch a held slot may be logged again: the batch's request is over by then (a request's
/// store calls time out well within it), as for a refund's repeat (`crate::refund::RELOG_AFTER_SECS`).
pub const RELOG_AFTER_SECS: u64 = crate::refund::RELOG_AFTER_SECS;
/// Slots one recovery reads per ring at most; the rest waits for the next. The low mark moves at most this far
/// per ring per recovery (and once per [`RELOG_AFTER_SECS`]), so recovery keeps up with 16 × this many batches
/// between two verifies at least that far apart: ~8 900 batches/s with a verify every 3 minutes, ~440/s with one
/// an hour. A scan reads about as many keys as the ledger gained entries meanwhile (each batch is one), and a
/// verify reads the whole ledger anyway.
pub const MAX_SCAN: u64 = 100_000;
/// Held batches one recovery hands back at most, and their events at most (at least one batch): each is
/// parked in the ledger's outbox (`crate::ledger::outbox::MAX_PARKED_EVENTS`).
pub const MAX_DUE: usize = 100;
/// See [`MAX_DUE`].
pub const MAX_DUE_EVENTS: usize = 2_000;

/// One batch's events, as held.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Held {
    /// The batch id (its events carry it as their `batch` detail).
    pub batch: String,
    /// The time the events were (to be) appended with.
    pub at: u64,
    /// The events, in order.
    pub events: Vec<(EntryKind, EntryFields)>,
}

impl Held {
    /// Whether it may be logged again at `now` ([`RELOG_AFTER_SECS`]).
    pub fn due(&self, now: u64) -> bool {
        now >= self.at.saturating_add(RELOG_AFTER_SECS)
    }

    /// The id its events are parked under in the ledger's outbox: the same for every recovery of the batch, so
    /// a second recovery finds the first's (parked, or appended with this id in their tags).
    pub fn outbox_id(&self) -> String {
        format!("usage/{}", self.batch)
    }
}

/// The ring a batch's events are held in.
pub fn shard(batch: &str) -> u16 {
    crate::ledger::shard_of(batch)
}

/// A held slot, as named across components: `<shard>/<slot>`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SlotId {
    /// The ring.
    pub shard: u16,
    /// The slot (from 1).
    pub slot: u64,
}

/// Not a `<shard>/<slot>` id.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("not a held-slot id (<shard>/<slot>, shard below {max}): {0:?}", max = SHARDS)]
pub struct BadSlotId(pub String);

impl SlotId {
    /// Parse `<shard>/<slot>` (shard below [`SHARDS`], slot from 1).
    pub fn parse(s: &str) -> Result<Self, BadSlotId> {
        let bad = || BadSlotId(s.to_owned());
        let (shard, slot) = s.split_once('/').ok_or_else(bad)?;
        let shard: u16 = shard.parse().map_err(|_| bad())?;
        let slot: u64 = slot.parse().map_err(|_| bad())?;
        if shard >= SHARDS || slot == 0 {
            return Err(bad());
        }
        Ok(Self { shard, slot })
    }
}

impl fmt::Display for SlotId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.shard, self.slot)
    }
}

/// A slot as a recovery reads it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Slot {
    /// Empty: its events reached the ledger, or its batch has not written it (yet, or ever: a crash).
    Empty,
    /// Held, not yet due (or unreadable): left for a later recovery, and the mark stays before it.
    Waiting,
    /// Held and due: log its events again, then empty it.
    Due(Held),
    /// Holds something that is not a held batch: reported, left for an operator, and passed (it would hold the
    /// low mark for good).
    Unreadable,
}

/// A ring's recovery record (`meter/held/<shard>/low`): where the next scan starts, and the mark that bounds
/// how far an empty slot may be passed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Recovery {
    /// Every slot up to here is done with (scans start after it).
    pub low: u64,
    /// The ring's counter as a recovery read it, and when.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mark: Option<Mark>,
}

/// A ring's counter read at a time: every slot up to `top` was reserved by then.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Mark {
    /// The counter.
    pub top: u64,
    /// When it was read (unix seconds).
    pub at: u64,
}

impl Recovery {
    /// The slots to read, given the ring's counter `top`: after [`Recovery::low`], at most [`MAX_SCAN`].
    pub fn scan(&self, top: u64) -> std::ops::RangeInclusive<u64> {
        self.low + 1..=top.min(self.low.saturating_add(MAX_SCAN))
    }

    /// The record after a scan at `now` of the ring with counter `top` that read `slots` (those of
    /// [`Recovery::scan`], in order): the low mark moves past the leading empty slots, but not past the mark's
    /// `top` unless the mark is [`RELOG_AFTER_SECS`] old (before that, an empty slot may still be written by
    /// its batch), nor past a slot that is waiting or due (an unreadable one counts as empty) (a due one is emptied first, and passed next time).
    /// A mark that old is used up, and `top` at `now` becomes the next.
    pub fn after(&self, now: u64, top: u64, slots: &[Slot]) -> Self {
        let settled = self
            .mark
            .filter(|m| now >= m.at.saturating_add(RELOG_AFTER_SECS));
        let limit = settled.map_or(self.low, |m| m.top.max(self.low));
        let empty = slots
            .iter()
            .take_while(|s| matches!(s, Slot::Empty | Slot::Unreadable))
            .count() as u64;
        let low = self.low.saturating_add(empty).min(limit).max(self.low);
        let mark = match self.mark {
            Some(m) if settled.is_none() => Some(m),
            _ => Some(Mark { top, at: now }),
        };
        Self { low, mark }
    }

    /// Merge this recovery's result into the stored record `current` (another recovery may have written it
    /// since this one read `read`): the higher low mark wins; the mark is this one's unless the other changed it.
    pub fn merge(&self, read: &Self, current: Option<Self>) -> Self {
        let current = current.unwrap_or_default();
        Self {
            low: self.low.max(current.low),
            mark: if current.mark == read.mark {
                self.mark
            } else {
                current.mark
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn held(at: u64) -> Held {
        Held {
            batch: "b1".into(),
            at,
            events: vec![(
                EntryKind::UsageCharged,
                EntryFields::default().detail("batch", "b1"),
            )],
        }
    }

    #[test]
    fn a_held_batch_is_due_once_its_request_is_surely_over() {
        let h = held(1_000);
        assert!(!h.due(1_000 + RELOG_AFTER_SECS - 1));
        assert!(h.due(1_000 + RELOG_AFTER_SECS));
        assert_eq!(h.outbox_id(), "usage/b1");
        let json = serde_json::to_string(&h).unwrap();
        assert_eq!(serde_json::from_str::<Held>(&json).unwrap(), h);
    }

    #[test]
    fn slot_ids_round_trip_and_refuse_what_is_not_one() {
        let id = SlotId { shard: 7, slot: 42 };
        assert_eq!(SlotId::parse(&id.to_string()), Ok(id));
        for bad in ["", "7", "7/", "/4", "16/1", "7/0", "x/1", "7/1/2", "-1/3"] {
            assert!(SlotId::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn the_first_scan_only_sets_a_mark() {
        let r = Recovery::default();
        assert_eq!(r.scan(5), 1..=5);
        let next = r.after(100, 5, &[const { Slot::Empty }; 5]);
        assert_eq!(
            next.low, 0,
            "empty slots may still be written by their batches"
        );
        assert_eq!(next.mark, Some(Mark { top: 5, at: 100 }));
    }

    #[test]
    fn the_low_mark_passes_empty_slots_reserved_before_a_settled_mark() {
        let r = Recovery {
            low: 0,
            mark: Some(Mark { top: 3, at: 100 }),
        };
        // Not settled yet: nothing passed, the mark kept.
        let early = r.after(100 + RELOG_AFTER_SECS - 1, 6, &[const { Slot::Empty }; 6]);
        assert_eq!(early, r);
        // Settled: past slots 1-3 only (4-6 may be reserved and not yet written), and a new mark.
        let now = 100 + RELOG_AFTER_SECS;
        let next = r.after(now, 6, &[const { Slot::Empty }; 6]);
        assert_eq!(next.low, 3);
        assert_eq!(next.mark, Some(Mark { top: 6, at: now }));
        assert_eq!(next.scan(6), 4..=6);
    }

    #[test]
    fn the_low_mark_stops_before_a_slot_still_held() {
        let r = Recovery {
            low: 10,
            mark: Some(Mark { top: 20, at: 0 }),
        };
        let slots = [Slot::Empty, Slot::Waiting, Slot::Empty];
        assert_eq!(r.after(RELOG_AFTER_SECS, 13, &slots).low, 11);
        let slots = [Slot::Unreadable, Slot::Empty, Slot::Waiting];
        assert_eq!(
            r.after(RELOG_AFTER_SECS, 13, &slots).low,
            12,
            "an unreadable slot does not hold the mark"
        );
        let slots = [Slot::Due(held(0)), Slot::Empty];
        assert_eq!(
            r.after(RELOG_AFTER_SECS, 12, &slots).low,
            10,
            "a due slot is emptied first and passed by a later scan"
        );
        // A mark below the low mark never moves it back.
        let r = Recovery {
            low: 10,
            mark: Some(Mark { top: 4, at: 0 }),
        };
        assert_eq!(
            r.after(RELOG_AFTER_SECS, 12, &[const { Slot::Empty }; 2])
                .low,
            10
        );
    }

    #[test]
    fn a_scan_is_bounded() {
        let r = Recovery { low: 5, mark: None };
        assert!(r.scan(5).is_empty(), "nothing past the counter");
        assert_eq!(r.scan(u64::MAX).count() as u64, MAX_SCAN);
    }

    #[test]
    fn concurrent_recoveries_merge_to_the_higher_low_mark() {
        let read = Recovery {
            low: 3,
            mark: Some(Mark { top: 9, at: 0 }),
        };
        let mine = Recovery {
            low: 9,
            mark: Some(Mark { top: 15, at: 500 }),
        };
        // Nobody wrote since: mine.
        assert_eq!(mine.merge(&read, Some(read)), mine);
        // Another recovery moved further and set its own mark: its mark, the higher low.
        let other = Recovery {
            low: 12,
            mark: Some(Mark { top: 20, at: 600 }),
        };
        assert_eq!(
            mine.merge(&read, Some(other)),
            Recovery {
                low: 12,
                mark: other.mark
            }
        );
        assert_eq!(mine.merge(&Recovery::default(), None), mine);
    }
}
