//! Receipt claims: the identity a receipt is charged under, once, and which older claims it is also checked
//! against. The metering component claims with an atomic `increment` (one winner ever, on every backend);
//! this module decides the keys.
//!
//! **The claim is per SIM**: `(carrier, iccid, session, seq)` (`store::keys::receipt_claim`). A carrier's
//! charging ids (3GPP `chargingID`) are per gateway and wrap, so two of its SIMs can report the same
//! `(session, seq)`: each is charged to its own SIM. A replay of the same SIM's receipt is a duplicate.
//!
//! **The upgrade from per-session claims** (`store::keys::legacy_receipt_claim`, `(carrier, session, seq)`):
//! a receipt charged under its legacy key and sent again (carriers retry) must stay a duplicate. Rule
//! ([`claim_check`]), at no cost for receipts that cannot have been charged before, and never a write:
//! - an account opened by this version ([`crate::usage::account::Account::claims_per_sim`]) never had a
//!   receipt claimed the old way: its receipts are checked against their own claim only;
//! - for an account opened before, the store's write-once marker (`store::keys::RECEIPT_CLAIMS_SINCE`: the
//!   clock of the first batch that needed it, set by an atomic insert-if-absent) bounds what the older
//!   version can have charged: a receipt it charged at `t` ended by `t + CLOCK_SKEW_SECS` (`receipt::verify`),
//!   so one ending later than [`UPGRADE_SLACK_SECS`] past the marker is checked against its own claim only;
//!   one ending earlier is also looked up (a read) under its legacy key, and an existing legacy claim makes
//!   it a duplicate.
//!
//! Assumes the older version stopped claiming before this one started (no mixed-version fleet on one store:
//! an older instance would neither see nor make the per-SIM claims). A receipt of an older account that
//! meets another SIM's legacy claim in the overlap is still taken for a duplicate (the legacy key does not
//! say which SIM claimed it); that was the old behaviour, and it ends with the overlap.

use super::receipt::{CLOCK_SKEW_SECS, Receipt};
use crate::store::keys;

/// How far past the marker a receipt of an older account may end and still have been charged by the older
/// version: the carrier clock skew it allowed, and as much again for the clocks of the hosts sharing the store.
pub const UPGRADE_SLACK_SECS: u64 = 2 * CLOCK_SKEW_SECS;

/// A receipt's claim identity.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ClaimId<'a> {
    /// Carrier.
    pub carrier: &'a str,
    /// The SIM.
    pub iccid: &'a str,
    /// Session (charging id).
    pub session: &'a str,
    /// Record number.
    pub seq: u64,
}

impl ClaimId<'_> {
    /// The claim key: one winner per SIM's `(carrier, session, seq)`.
    pub fn key(&self) -> String {
        keys::receipt_claim(self.carrier, self.iccid, self.session, self.seq)
    }

    /// The key the older version claimed the receipt under: `(carrier, session, seq)`, read only.
    pub fn legacy_key(&self) -> String {
        keys::legacy_receipt_claim(self.carrier, self.session, self.seq)
    }

    /// The same session's previous record (`seq - 1`), if there is one (`seq > 1`): a gap's lookup.
    pub fn previous(&self) -> Option<Self> {
        (self.seq > 1).then(|| Self {
            seq: self.seq - 1,
            ..*self
        })
    }
}

impl Receipt {
    /// The claim identity: `(carrier, iccid, session_id, seq)`.
    pub fn claim(&self) -> ClaimId<'_> {
        ClaimId {
            carrier: self.carrier.as_str(),
            iccid: self.iccid.as_str(),
            session: &self.session_id,
            seq: self.seq,
        }
    }
}

/// Which claims decide whether a verified receipt is new.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClaimCheck {
    /// Its own claim only: won, it is charged; lost, a duplicate.
    PerSim,
    /// Its legacy claim first (a read: present, a duplicate), then its own claim. The same for the gap lookup
    /// of its previous record.
    AlsoLegacy,
}

/// Which claims decide a receipt that ends at `window_end`, for an account opened with per-SIM claims
/// (`claims_per_sim`) or before; `since`: the store's marker of when per-SIM claims started, `None` if not
/// known (then every receipt of an older account is also checked against its legacy claim).
pub fn claim_check(claims_per_sim: bool, window_end: u64, since: Option<u64>) -> ClaimCheck {
    let overlaps = since.is_none_or(|s| window_end <= s.saturating_add(UPGRADE_SLACK_SECS));
    if !claims_per_sim && overlaps {
        ClaimCheck::AlsoLegacy
    } else {
        ClaimCheck::PerSim
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SINCE: u64 = 1_790_000_000;

    fn id<'a>(iccid: &'a str, session: &'a str, seq: u64) -> ClaimId<'a> {
        ClaimId {
            carrier: "tmobile",
            iccid,
            session,
            seq,
        }
    }

    #[test]
    fn two_sims_with_the_same_session_and_seq_claim_apart() {
        let (a, b) = (id("8901", "s1", 3), id("8902", "s1", 3));
        assert_ne!(a.key(), b.key());
        assert_eq!(a.key(), "rcpt/tmobile/8901/s1/3");
        assert_eq!(
            a.key(),
            id("8901", "s1", 3).key(),
            "a replay meets its own claim"
        );
        assert_ne!(a.key(), id("8901", "s1", 4).key());
        assert_ne!(a.key(), id("8901", "s2", 3).key());
        // Both had one legacy key: the collision this scheme ends.
        assert_eq!(a.legacy_key(), b.legacy_key());
        assert_eq!(a.legacy_key(), "rcpt/tmobile/s1/3");
    }

    #[test]
    fn claim_keys_never_meet_legacy_dispute_or_marker_keys() {
        // Slugs, ICCIDs and session ids have no `/`: the number of segments keeps the schemes apart.
        let segments = |k: &str| k.split('/').count();
        let a = id("8901", "s1", 3);
        assert_eq!(segments(&a.key()), 5);
        assert_eq!(segments(&a.legacy_key()), 4);
        assert_eq!(segments(keys::RECEIPT_CLAIMS_SINCE), 2);
        assert_eq!(
            segments(&keys::dispute_claim(alloy_primitives::B256::ZERO, true)),
            3
        );
    }

    #[test]
    fn the_previous_record_is_the_same_sims() {
        assert_eq!(id("8901", "s1", 3).previous(), Some(id("8901", "s1", 2)));
        assert_eq!(
            id("8901", "s1", 1).previous(),
            None,
            "a session starts at 1"
        );
    }

    #[test]
    fn accounts_opened_with_per_sim_claims_never_read_a_legacy_claim() {
        for since in [None, Some(SINCE), Some(0), Some(u64::MAX)] {
            for end in [0, SINCE - 1, SINCE, SINCE + UPGRADE_SLACK_SECS, u64::MAX] {
                assert_eq!(claim_check(true, end, since), ClaimCheck::PerSim);
            }
        }
    }

    #[test]
    fn an_older_accounts_receipts_are_checked_against_legacy_claims_until_past_the_marker() {
        let check = |end| claim_check(false, end, Some(SINCE));
        assert_eq!(check(0), ClaimCheck::AlsoLegacy, "a late receipt");
        assert_eq!(check(SINCE - 1), ClaimCheck::AlsoLegacy);
        // The older version accepted windows ending up to its clock skew ahead of it.
        assert_eq!(check(SINCE + CLOCK_SKEW_SECS), ClaimCheck::AlsoLegacy);
        assert_eq!(check(SINCE + UPGRADE_SLACK_SECS), ClaimCheck::AlsoLegacy);
        assert_eq!(check(SINCE + UPGRADE_SLACK_SECS + 1), ClaimCheck::PerSim);
        assert_eq!(check(u64::MAX), ClaimCheck::PerSim);
        assert_eq!(
            claim_check(false, u64::MAX, Some(u64::MAX)),
            ClaimCheck::AlsoLegacy,
            "the slack saturates"
        );
    }

    #[test]
    fn without_the_marker_an_older_accounts_receipts_are_all_checked() {
        for end in [0, SINCE, u64::MAX] {
            assert_eq!(claim_check(false, end, None), ClaimCheck::AlsoLegacy);
        }
    }
}
