//! Per-signer nonce bookkeeping, kept in key-value storage and updated atomically (a versioned cell).
//!
//! Spin runs a fresh instance per request, so two settlements may sign at once with the same key. Each reads the
//! stored [`NonceState`], calls [`NonceState::reserve`] with the node's `eth_getTransactionCount(pending)`, and
//! writes the state back atomically (retrying on conflict) *before* signing. The rules:
//!
//! - A reserved nonce is never handed out again while it is held, and never below what the chain has used.
//! - [`release_on_failure`](NonceState::release_on_failure) returns a nonce whose transaction was certainly
//!   **not** broadcast (signing failed, or the node rejected it outright: "nonce too low", "insufficient funds").
//!   The next reservation reuses it first. But if later nonces are already out, their transactions wait
//!   behind it until that next reservation comes, so [`give_back`](NonceState::give_back) keeps such a nonce
//!   held and the sender fills it with a no-op transaction (releasing it only if that is refused too).
//! - A nonce whose signed transaction is already on its owner's record (recorded, then refused) is not given
//!   back before that record is released ([`give_back_recorded`](NonceState::give_back_recorded)): it stays
//!   held as an orphan, and the next send releases it once no record names a transaction at it.
//! - A nonce whose transaction was, or may have been, broadcast (sent, timed out, connection dropped) is never
//!   released: reusing it would replace or race the first transaction. It leaves the state once the chain's
//!   count passes it.
//! - [`reset`](NonceState::reset) forgets everything and reseeds from the chain, for when the reference advice
//!   ("reset on any send/receipt failure") applies and no other settlement of this signer is in flight.
//!
//! A nonce can also be lost *after* its transaction was recorded: the request is cancelled before the send
//! reaches the node, or the node drops the transaction. Every later nonce then waits behind the gap. So
//! [`reserve_for`](NonceState::reserve_for) remembers which record holds each nonce's transaction
//! ([`owners`](NonceState::owners)) until the chain has *mined* past it
//! ([`observe_mined`](NonceState::observe_mined)), and [`unsent`](NonceState::unsent) lists the ones at or
//! above the node's pending count: the transactions a sender should offer the node again (identical bytes,
//! see `evm::rebroadcast`) before its own.
//!
//! A request can also be cancelled *between* the reservation and the recording of its transaction (both are
//! store calls the host may cancel at): the nonce is held but no record names a transaction for it, and it was
//! never broadcast (broadcast happens only after recording). Each reservation carries its time
//! ([`reserved_at`](NonceState::reserved_at)); [`orphans`](NonceState::orphans) lists the ones older than a
//! bound whose owner may have died, and a sender that finds the owner's record without that nonce's
//! transaction [releases](NonceState::release_on_failure) it, so the gap is filled by the next reservation.
//! When no send comes (a payment waiting behind the hole is only ever sent again, never re-signed), a replay
//! fills it with a no-op transaction instead ([`heal_orphan`](NonceState::heal_orphan)). Each reservation
//! also carries its sender's own token ([`holders`](NonceState::holders)): a send that stalled past its
//! claim's lease gives back only its own reservation, never its successor's under the same record key.
//! Should the owner turn out to be alive after all and broadcast late, its transaction competes for a reused
//! nonce and is dropped — the case `evm::rebroadcast` already resolves (it fails only if its authorization is
//! unused).

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

/// The answer of [`NonceState::give_back`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GiveBack {
    /// Given back: it was the newest nonce handed out.
    Released,
    /// Still held: later nonces are out, so it must be filled (with a no-op transaction) rather than left empty.
    Plug,
    /// Not held (already given back, or passed by the chain).
    NotHeld,
}

/// The nonce state of one signer on one chain.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NonceState {
    /// The lowest nonce never handed out.
    pub next: u64,
    /// Nonces handed out and not yet passed by the chain's count (in flight or possibly broadcast).
    pub pending: BTreeSet<u64>,
    /// Nonces given back unbroadcast, to be reused before `next`.
    #[serde(default)]
    pub released: BTreeSet<u64>,
    /// The key of the record that holds the signed transaction of each nonce handed out with
    /// [`reserve_for`](Self::reserve_for), until the chain has mined past it.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub owners: BTreeMap<u64, String>,
    /// When each nonce in [`owners`](Self::owners) was handed out (unix seconds).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub reserved_at: BTreeMap<u64, u64>,
    /// The token of the send that holds each nonce reserved with [`reserve_held`](Self::reserve_held): a
    /// random value per reservation. The owner's key alone does not tell two sends apart (a claim taken over
    /// keeps its record key), so a send gives back only the reservation it made. Absent (states from before,
    /// or [`reserve_for`](Self::reserve_for)): the owner alone decides, as before.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub holders: BTreeMap<u64, String>,
}

impl NonceState {
    /// A state seeded from the chain's pending transaction count.
    pub fn new(chain_pending_count: u64) -> Self {
        Self {
            next: chain_pending_count,
            ..Self::default()
        }
    }

    /// Forget nonces the chain has passed: `chain_pending_count` is `eth_getTransactionCount(pending)`.
    /// Counts are monotonic on chain, but a lagging node may report an older one; that only keeps entries longer.
    pub fn observe(&mut self, chain_pending_count: u64) {
        self.pending = self.pending.split_off(&chain_pending_count);
        self.released = self.released.split_off(&chain_pending_count);
        self.next = self.next.max(chain_pending_count);
    }

    /// Hand out a nonce: the lowest released one still ahead of the chain, else `max(next, chain count)`.
    pub fn reserve(&mut self, chain_pending_count: u64) -> u64 {
        self.observe(chain_pending_count);
        let nonce = match self.released.pop_first() {
            Some(n) => n,
            None => {
                let n = self.next;
                self.next = n.saturating_add(1);
                n
            }
        };
        self.pending.insert(nonce);
        nonce
    }

    /// [`reserve`](Self::reserve) a nonce, at `now`, for the transaction that the record at `owner` will hold.
    pub fn reserve_for(&mut self, chain_pending_count: u64, owner: &str, now: u64) -> u64 {
        let nonce = self.reserve(chain_pending_count);
        self.owners.insert(nonce, owner.to_owned());
        self.reserved_at.insert(nonce, now);
        nonce
    }

    /// [`reserve_for`](Self::reserve_for), remembering `holder` (the reserving send's own token) for it: only
    /// that send may give it back ([`give_back`](Self::give_back), [`give_back_recorded`](Self::give_back_recorded)).
    pub fn reserve_held(
        &mut self,
        chain_pending_count: u64,
        owner: &str,
        holder: &str,
        now: u64,
    ) -> u64 {
        let nonce = self.reserve_for(chain_pending_count, owner, now);
        self.holders.insert(nonce, holder.to_owned());
        nonce
    }

    /// Whether `nonce` is held for another send than `owner`'s reservation `holder` (a reservation without a
    /// holder token is compared on its owner only).
    fn held_by_another(&self, nonce: u64, owner: &str, holder: &str) -> bool {
        self.owners.get(&nonce).is_some_and(|o| o != owner)
            || self.holders.get(&nonce).is_some_and(|h| h != holder)
    }

    /// The owned nonces at or above the node's pending count that were handed out at least `min_age` seconds
    /// before `now` (with their owner): if the owner's record names no transaction for one of them, its request
    /// died between reserving and recording, and it should be released.
    pub fn orphans(&self, chain_pending_count: u64, now: u64, min_age: u64) -> Vec<(u64, String)> {
        self.owners
            .range(chain_pending_count..)
            .filter(|(n, _)| {
                // Entries from before reservation times were kept count as old.
                self.reserved_at
                    .get(n)
                    .is_none_or(|at| at.saturating_add(min_age) <= now)
            })
            .map(|(n, owner)| (*n, owner.clone()))
            .collect()
    }

    /// Forget the owners of nonces the chain has mined: `chain_mined_count` is
    /// `eth_getTransactionCount(latest)`. Not the pending count: a transaction in a node's pool can still be
    /// evicted, and then its owner is what finds it again.
    pub fn observe_mined(&mut self, chain_mined_count: u64) {
        self.owners = self.owners.split_off(&chain_mined_count);
        self.reserved_at = self.reserved_at.split_off(&chain_mined_count);
        self.holders = self.holders.split_off(&chain_mined_count);
    }

    /// The nonces at or above the node's pending count whose transactions are on record (with the record's
    /// key), lowest first and at most `limit`: a node that lost them, or never got them, waits for them before
    /// it mines anything newer. A nonce that already left [`pending`](Self::pending) (the node had it in its
    /// pool, then evicted it) is listed too: it is never handed out again, so only its own bytes fill it.
    pub fn unsent(&self, chain_pending_count: u64, limit: usize) -> Vec<(u64, String)> {
        self.owners
            .range(chain_pending_count..)
            .take(limit)
            .map(|(n, owner)| (*n, owner.clone()))
            .collect()
    }

    /// What to do with `nonce`, held and certainly not broadcast, that its send no longer needs: give it back if
    /// it is the newest handed out ([`GiveBack::Released`], `next` steps back; changed here), else keep it held
    /// ([`GiveBack::Plug`], nothing changed): later nonces of this key are out, their transactions may already
    /// wait in the node's pool behind this one, and a hole would stall them until some later send happens to
    /// reuse it. The caller then sends a no-op transaction at it, and gives it back with
    /// [`release_on_failure`](Self::release_on_failure) only if that fails too. [`GiveBack::NotHeld`] (nothing
    /// changed) if the nonce is not held, or is held for another record than `owner` or another reservation
    /// than `holder`'s (released as an orphan meanwhile and handed to another send, whose transaction it now
    /// is, maybe the same record's after its claim was taken over).
    pub fn give_back(&mut self, nonce: u64, owner: &str, holder: &str) -> GiveBack {
        let others = self.held_by_another(nonce, owner, holder);
        if others || !self.pending.contains(&nonce) {
            GiveBack::NotHeld
        } else if nonce.saturating_add(1) == self.next {
            self.release_on_failure(nonce);
            GiveBack::Released
        } else {
            GiveBack::Plug
        }
    }

    /// [`give_back`](Self::give_back) for a nonce whose signed transaction `owner`'s record may already name
    /// (the send failed after recording it: the node refused it, or a later write of the record failed). The
    /// record is released only after this returns, and that may fail: a nonce handed out again while the record
    /// still names its transaction would give two transactions one nonce (the recorded one can be sent again).
    /// So the nonce is never released here: it stays held, and the next send's orphan check releases it only
    /// once `owner`'s record names no transaction at it. [`GiveBack::Plug`] if later nonces are out: the caller
    /// fills it with a no-op transaction (which moves nothing) after releasing its record, so it is held as
    /// reserved at `now` and no orphan check hands it to another send before that no-op went out (the release
    /// comes first, and a nonce released as an orphan in between would be reused under the no-op). Else
    /// [`GiveBack::Released`], an orphan at once (reserved at time 0), left for the next send;
    /// [`GiveBack::NotHeld`] as for `give_back`, nothing changed.
    pub fn give_back_recorded(
        &mut self,
        nonce: u64,
        owner: &str,
        holder: &str,
        now: u64,
    ) -> GiveBack {
        let others = self.held_by_another(nonce, owner, holder);
        if others || !self.pending.contains(&nonce) {
            return GiveBack::NotHeld;
        }
        self.owners.insert(nonce, owner.to_owned());
        if nonce.saturating_add(1) == self.next {
            self.reserved_at.insert(nonce, 0);
            GiveBack::Released
        } else {
            self.reserved_at.insert(nonce, now);
            GiveBack::Plug
        }
    }

    /// Give back `nonce` because its transaction was certainly not broadcast (its owner is forgotten).
    /// Returns `false` (and changes nothing else) if the nonce is not currently held.
    pub fn release_on_failure(&mut self, nonce: u64) -> bool {
        self.owners.remove(&nonce);
        self.reserved_at.remove(&nonce);
        self.holders.remove(&nonce);
        if !self.pending.remove(&nonce) {
            return false;
        }
        if nonce.saturating_add(1) == self.next {
            // The newest nonce: just step back instead of leaving a hole to fill.
            self.next = nonce;
            // Earlier released holes directly below collapse the same way.
            while let Some(&last) = self.released.last() {
                if last.saturating_add(1) != self.next {
                    break;
                }
                self.released.pop_last();
                self.next = last;
            }
        } else {
            self.released.insert(nonce);
        }
        true
    }

    /// Release the orphan `nonce` (from [`orphans`](Self::orphans), read earlier) only if it is still the same
    /// reservation: held by `owner` since `reserved_at`. A sender working from an older read must not release a
    /// nonce that was released and handed out again meanwhile: its new owner would share it with the next.
    /// Returns whether it released it.
    pub fn release_orphan(&mut self, nonce: u64, owner: &str, reserved_at: Option<u64>) -> bool {
        let same = self.owners.get(&nonce).map(String::as_str) == Some(owner)
            && self.reserved_at.get(&nonce).copied() == reserved_at;
        same && self.release_on_failure(nonce)
    }

    /// What to do with the orphan `nonce` (from [`orphans`](Self::orphans), read earlier: held by `owner` since
    /// `reserved_at`, and its owner's record names no transaction at it) when no send may come to fill it: a
    /// later transaction of this key waits behind it in the node's pool, and only a new send would reuse a
    /// released nonce. If it is still that reservation: the newest handed out is released
    /// ([`GiveBack::Released`], nothing waits behind it); an older one stays held for the key's no-op
    /// transaction ([`GiveBack::Plug`]), its time set to `now`, so no other sender releases it, or fills it
    /// again, before another orphan age (should the no-op be lost, it is an orphan again then). Else
    /// [`GiveBack::NotHeld`], nothing changed.
    pub fn heal_orphan(
        &mut self,
        nonce: u64,
        owner: &str,
        reserved_at: Option<u64>,
        now: u64,
    ) -> GiveBack {
        let same = self.owners.get(&nonce).map(String::as_str) == Some(owner)
            && self.reserved_at.get(&nonce).copied() == reserved_at
            && self.pending.contains(&nonce);
        if !same {
            GiveBack::NotHeld
        } else if nonce.saturating_add(1) == self.next {
            self.release_on_failure(nonce);
            GiveBack::Released
        } else {
            self.reserved_at.insert(nonce, now);
            GiveBack::Plug
        }
    }

    /// Drop all bookkeeping and reseed from the chain.
    pub fn reset(&mut self, chain_pending_count: u64) {
        *self = Self::new(chain_pending_count);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reserves_consecutive_nonces_from_the_chain_count() {
        let mut s = NonceState::default();
        assert_eq!(s.reserve(5), 5);
        assert_eq!(s.reserve(5), 6);
        assert_eq!(s.reserve(5), 7);
        assert_eq!(s.pending, BTreeSet::from([5, 6, 7]));
        assert_eq!(s.next, 8);
    }

    #[test]
    fn chain_ahead_of_the_store_wins() {
        // Someone else used the key, or the store was lost: never go below the chain.
        let mut s = NonceState::new(3);
        assert_eq!(s.reserve(3), 3);
        assert_eq!(s.reserve(10), 10);
        assert_eq!(s.pending, BTreeSet::from([10]));
    }

    #[test]
    fn lagging_node_never_reissues_a_held_nonce() {
        let mut s = NonceState::default();
        assert_eq!(s.reserve(10), 10);
        assert_eq!(s.reserve(10), 11);
        // A node behind the others reports an older count.
        assert_eq!(s.reserve(4), 12);
        assert_eq!(s.pending, BTreeSet::from([10, 11, 12]));
    }

    #[test]
    fn unbroadcast_nonce_is_reused_first() {
        let mut s = NonceState::default();
        let a = s.reserve(0);
        let b = s.reserve(0);
        let c = s.reserve(0);
        assert_eq!((a, b, c), (0, 1, 2));
        // b's signing failed before broadcast; c is in flight and needs b filled.
        assert!(s.release_on_failure(b));
        assert_eq!(s.released, BTreeSet::from([1]));
        assert_eq!(s.reserve(0), 1);
        assert_eq!(s.reserve(0), 3);
    }

    #[test]
    fn releasing_the_newest_steps_back() {
        let mut s = NonceState::default();
        let a = s.reserve(0);
        let b = s.reserve(0);
        let c = s.reserve(0);
        assert!(s.release_on_failure(b));
        assert!(s.release_on_failure(c));
        assert_eq!(s.next, 1, "both holes collapse");
        assert!(s.released.is_empty());
        assert_eq!(s.pending, BTreeSet::from([a]));
        assert_eq!(s.reserve(0), 1);
    }

    #[test]
    fn orphans_are_old_owned_nonces_at_or_above_the_node() {
        let mut s = NonceState::default();
        assert_eq!(s.reserve_for(0, "settlement/a", 100), 0);
        assert_eq!(s.reserve_for(0, "settlement/b", 150), 1);
        assert_eq!(s.reserve_for(0, "refund/c", 190), 2);
        // At 210 with a 60 s bound only a and b (exactly 60 s) may have died.
        assert_eq!(
            s.orphans(0, 210, 60),
            vec![
                (0, "settlement/a".to_owned()),
                (1, "settlement/b".to_owned())
            ]
        );
        // The node has nonce 0: only what is ahead of it can be a gap.
        assert_eq!(s.orphans(1, 210, 60), vec![(1, "settlement/b".to_owned())]);
        // Releasing an orphan forgets its owner and time, and the next reservation fills the hole.
        assert!(s.release_on_failure(1));
        assert!(!s.reserved_at.contains_key(&1));
        assert_eq!(s.orphans(1, 1_000, 60), vec![(2, "refund/c".to_owned())]);
        assert_eq!(s.reserve_for(1, "settlement/d", 300), 1);
        // A second sender that read the orphan before it was released and handed out again releases nothing.
        assert!(!s.release_orphan(1, "settlement/b", Some(150)));
        assert_eq!(s.owners.get(&1).map(String::as_str), Some("settlement/d"));
        assert!(s.pending.contains(&1));
        // The same reservation as read is released.
        assert!(s.release_orphan(2, "refund/c", Some(190)));
        assert!(!s.pending.contains(&2) && !s.owners.contains_key(&2));
        assert!(!s.release_orphan(2, "refund/c", Some(190)), "released once");
        // Mined nonces leave both maps.
        s.observe_mined(2);
        assert!(s.reserved_at.is_empty(), "{:?}", s.reserved_at);
    }

    #[test]
    fn releasing_twice_or_a_foreign_nonce_does_nothing() {
        let mut s = NonceState::default();
        let a = s.reserve(0);
        let _b = s.reserve(0);
        assert!(s.release_on_failure(a));
        assert!(!s.release_on_failure(a));
        assert!(!s.release_on_failure(99));
        assert_eq!(s.reserve(0), a);
        assert_eq!(s.reserve(0), 2);
    }

    #[test]
    fn broadcast_nonces_leave_only_when_the_chain_passes_them() {
        let mut s = NonceState::default();
        for _ in 0..3 {
            s.reserve(0);
        }
        // 0 and 1 were broadcast and mined; 2 is still out there.
        s.observe(2);
        assert_eq!(s.pending, BTreeSet::from([2]));
        assert_eq!(s.reserve(2), 3);
        // A released nonce the chain has since used (another process) is not handed out.
        assert!(s.release_on_failure(2));
        assert_eq!(s.reserve(5), 5);
        assert!(s.released.is_empty());
    }

    #[test]
    fn reset_reseeds() {
        let mut s = NonceState::default();
        s.reserve(0);
        s.reserve(0);
        s.reset(9);
        assert_eq!(s, NonceState::new(9));
        assert_eq!(s.reserve(0), 9);
    }

    #[test]
    fn owners_are_kept_until_mined_and_listed_from_the_pending_count() {
        let mut s = NonceState::default();
        assert_eq!(s.reserve_for(7, "settlement/a", 0), 7);
        assert_eq!(s.reserve_for(7, "settlement/b", 0), 8);
        assert_eq!(s.reserve_for(7, "refund/c", 0), 9);
        // The node has 7 in its pool (pending count 8): only 8 and 9 may be missing there.
        assert_eq!(
            s.unsent(8, 16),
            vec![(8, "settlement/b".to_owned()), (9, "refund/c".to_owned())]
        );
        assert_eq!(s.unsent(8, 1), vec![(8, "settlement/b".to_owned())]);
        // The next send sees 7 in the pool (pending count 8) and lets go of it; 7 is never handed out again.
        assert_eq!(s.reserve_for(8, "settlement/d", 0), 10);
        assert_eq!(s.pending, BTreeSet::from([8, 9, 10]));
        // The pool evicts 7: the pending count falls back to 7, and 7 is listed again, its owner still known.
        assert_eq!(s.unsent(7, 16)[0], (7, "settlement/a".to_owned()));
        assert_eq!(s.unsent(7, 16).len(), 4);
        // Mined past 8: those owners go.
        s.observe_mined(9);
        assert_eq!(s.owners.keys().copied().collect::<Vec<_>>(), vec![9, 10]);
        assert_eq!(s.unsent(7, 16).len(), 2);
    }

    #[test]
    fn a_released_nonce_loses_its_owner() {
        let mut s = NonceState::default();
        let a = s.reserve_for(3, "settlement/a", 0);
        let b = s.reserve_for(3, "settlement/b", 0);
        assert!(s.release_on_failure(a));
        assert_eq!(s.unsent(3, 16), vec![(b, "settlement/b".to_owned())]);
        // Reused for another record.
        assert_eq!(s.reserve_for(3, "settlement/c", 0), a);
        assert_eq!(s.owners[&a], "settlement/c");
        assert!(!s.release_on_failure(99));
    }

    #[test]
    fn stored_as_json() {
        let mut s = NonceState::default();
        s.reserve(4);
        let json = serde_json::to_string(&s).unwrap();
        assert_eq!(json, r#"{"next":5,"pending":[4],"released":[]}"#);
        let old: NonceState = serde_json::from_str(r#"{"next":5,"pending":[4]}"#).unwrap();
        assert_eq!(old, s);
        let mut owned = NonceState::default();
        owned.reserve_for(4, "settlement/x", 0);
        let json = serde_json::to_string(&owned).unwrap();
        assert_eq!(
            json,
            r#"{"next":5,"pending":[4],"released":[],"owners":{"4":"settlement/x"},"reserved_at":{"4":0}}"#
        );
        assert_eq!(serde_json::from_str::<NonceState>(&json).unwrap(), owned);
    }

    #[test]
    fn giving_back_the_newest_nonce_steps_back_and_an_older_one_asks_for_a_plug() {
        let mut s = NonceState::default();
        let (a, b) = (
            s.reserve_for(5, "settlement/a", 100),
            s.reserve_for(5, "settlement/b", 100),
        );
        assert_eq!((a, b), (5, 6));
        // 5's send failed while 6 is out: giving 5 back would leave a hole 6 waits behind.
        let before = s.clone();
        assert_eq!(
            s.give_back(a, "settlement/b", "h"),
            GiveBack::NotHeld,
            "not b's nonce"
        );
        assert_eq!(s, before);
        assert_eq!(s.give_back(a, "settlement/a", "h"), GiveBack::Plug);
        assert_eq!(s, before, "a plug keeps the nonce held, with its owner");
        // The plug failed too: now it is given back, and the next reservation fills it.
        assert!(s.release_on_failure(a));
        assert_eq!(s.reserve(5), 5);
        // The newest nonce goes straight back.
        assert_eq!(s.give_back(b, "settlement/b", "h"), GiveBack::Released);
        assert_eq!((s.next, s.pending.contains(&b)), (6, false));
        assert_eq!(s.give_back(b, "settlement/b", "h"), GiveBack::NotHeld);
        assert_eq!(s.give_back(99, "settlement/b", "h"), GiveBack::NotHeld);
    }

    #[test]
    fn a_recorded_nonce_is_never_given_back_before_its_record_lets_go() {
        let mut s = NonceState::default();
        let a = s.reserve_for(5, "settlement/a", 1_000);
        // a's transaction was recorded, then refused: the record still names it until its claim is released,
        // so the nonce stays held (the next reservation does not get it) ...
        assert_eq!(
            s.give_back_recorded(a, "settlement/b", "h", 1_000),
            GiveBack::NotHeld
        );
        assert_eq!(
            s.give_back_recorded(a, "settlement/a", "h", 1_000),
            GiveBack::Released
        );
        assert!(s.pending.contains(&a));
        assert_eq!(s.next, a + 1);
        // ... and is an orphan at once, for the next send to release once the record names nothing at it.
        assert_eq!(
            s.orphans(5, 1_000, 120),
            vec![(a, "settlement/a".to_owned())]
        );
        assert!(s.release_orphan(a, "settlement/a", Some(0)));
        assert_eq!(s.reserve_for(5, "settlement/c", 1_001), a);
        // Below a nonce that is out: the caller fills it with a no-op once it released its record; still held,
        // and no orphan until that no-op had its time (before, an orphan at once: a send's orphan check between
        // the release and the no-op handed the nonce to another transaction, which the no-op then collided with).
        let b = s.reserve_for(5, "settlement/b", 1_001);
        assert_eq!(
            s.give_back_recorded(a, "settlement/c", "h", 1_001),
            GiveBack::Plug
        );
        assert!(s.pending.contains(&a) && s.pending.contains(&b));
        assert!(s.orphans(5, 1_001, 120).is_empty());
        assert!(s.orphans(5, 1_120, 120).is_empty());
        assert!(
            s.orphans(5, 1_121, 120)
                .contains(&(a, "settlement/c".to_owned()))
        );
    }

    #[test]
    fn a_send_gives_back_only_its_own_reservation_not_its_successors_on_the_same_record() {
        let mut s = NonceState::default();
        // A send reserves 5 for the record, stalls past the claim lease, and is taken for dead: its nonce is
        // released as an orphan and the claim's new holder reserves it again, under the same record key.
        let n = s.reserve_held(5, "x402/nonce/a", "first", 100);
        assert!(s.release_orphan(n, "x402/nonce/a", Some(100)));
        assert_eq!(s.reserve_held(5, "x402/nonce/a", "second", 300), n);
        let later = s.reserve_held(5, "x402/nonce/b", "third", 300);
        // The first send wakes up and fails: the nonce is the successor's, whose transaction may be out.
        let before = s.clone();
        assert_eq!(s.give_back(n, "x402/nonce/a", "first"), GiveBack::NotHeld);
        assert_eq!(
            s.give_back_recorded(n, "x402/nonce/a", "first", 300),
            GiveBack::NotHeld
        );
        assert_eq!(s, before);
        // Its own holder still may.
        assert_eq!(s.give_back(n, "x402/nonce/a", "second"), GiveBack::Plug);
        assert_eq!(
            s.give_back(later, "x402/nonce/b", "third"),
            GiveBack::Released
        );
        assert!(!s.holders.contains_key(&later));
        // States from before holder tokens were kept: the owner alone decides.
        let mut old: NonceState =
            serde_json::from_str(r#"{"next":8,"pending":[7],"owners":{"7":"x402/nonce/a"}}"#)
                .unwrap();
        assert_eq!(old.give_back(7, "x402/nonce/a", "any"), GiveBack::Released);
        // Kept as JSON beside the owner, absent when there are none.
        let json = serde_json::to_value(&before).unwrap();
        assert_eq!(json["holders"][n.to_string()], "second");
        assert!(
            serde_json::to_value(NonceState::default())
                .unwrap()
                .get("holders")
                .is_none()
        );
    }

    #[test]
    fn an_orphan_below_a_waiting_nonce_is_kept_for_a_no_op_and_not_handed_out_again() {
        let mut s = NonceState::default();
        let a = s.reserve_for(7, "x402/nonce/a", 100);
        // The newest: nothing waits behind it, so it is released for the next send.
        assert_eq!(
            s.heal_orphan(a, "x402/nonce/a", Some(100), 500),
            GiveBack::Released
        );
        assert!(!s.pending.contains(&a));
        let a = s.reserve_for(7, "x402/nonce/a", 100);
        let b = s.reserve_for(7, "x402/nonce/b", 450);
        // A read from before it was handed out again changes nothing.
        assert_eq!(
            s.heal_orphan(a, "x402/nonce/a", Some(90), 500),
            GiveBack::NotHeld
        );
        // b waits behind it: held for the no-op, no longer an orphan for another orphan age.
        assert_eq!(
            s.heal_orphan(a, "x402/nonce/a", Some(100), 500),
            GiveBack::Plug
        );
        assert!(s.pending.contains(&a) && s.pending.contains(&b));
        assert!(s.orphans(7, 500, 120).is_empty());
        assert_eq!(
            s.reserve(7),
            b + 1,
            "never handed out while the no-op may fill it"
        );
        // Another sender's older read neither releases nor fills it again.
        assert!(!s.release_orphan(a, "x402/nonce/a", Some(100)));
        assert_eq!(
            s.heal_orphan(a, "x402/nonce/a", Some(100), 600),
            GiveBack::NotHeld
        );
        // The no-op was lost: an orphan again after the orphan age.
        assert_eq!(s.orphans(7, 620, 120)[0], (a, "x402/nonce/a".to_owned()));
        assert_eq!(s.orphans(7, 619, 120), vec![(b, "x402/nonce/b".to_owned())]);
    }
}
