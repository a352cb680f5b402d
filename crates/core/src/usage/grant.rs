//! Quota grants that reserve what they grant (online charging's reservation, as Gy/Nchf do): a grant's bytes
//! are held for the SIM until usage reports them or the grant lapses, so two grants asked at once (two
//! sessions, or two requests before any report) never hand out the same bytes, and a terminate does not refund
//! bytes a grant let the device use that the carrier has not reported yet.
//!
//! A SIM's reservation is one small record ([`Reservation`], `meter/<iccid>/grant`), changed by
//! compare-and-swap per SIM (no key shared between SIMs): the live grants in the order they were made, each
//! with the bytes it has not seen reported yet and its own lapse time, from a point of the SIM's used counter
//! (`base`). Usage reports consume the grants oldest first (the counter beyond `base`); a grant lapses
//! [`GRANT_VALID_SECS`] + [`GRANT_REPORT_SECS`] after it was made, whatever later grants do, and what it had not
//! seen reported is released then (a carrier asking again every 15 minutes while its device uses a little
//! never piles up reservations: at most the grants of the last half hour are held).
//!
//! Invariant: the bytes reserved (the live grants' unreported bytes) plus reported usage never exceed what
//! was credited when each grant was made. Usage reported for a grant after it lapsed is counted against the
//! next live grant (reports carry no grant id), and usage beyond every grant (a carrier ignoring them) is
//! charged like any other; neither is reserved for.

use serde::{Deserialize, Serialize};

use super::account::{Account, LateRate, Quota, decide_quota};

/// How long a grant may be used (seconds): the requester asks again after it (Gy's Validity-Time).
pub const GRANT_VALID_SECS: u64 = 900;

/// How long after a grant stops being usable its usage may still be reported while its bytes stay reserved
/// (seconds; carrier feeds report about every 15 minutes). A report later than that finds the reservation
/// lapsed, and its bytes may meanwhile have been granted again.
pub const GRANT_REPORT_SECS: u64 = 900;

/// Grants lapse on whole minutes (their lapse rounded up): grants made within the same minute share one entry,
/// so the list holds at most one entry per minute of the half hour a grant is held.
pub const LAPSE_STEP_SECS: u64 = 60;

/// The most entries a reservation lists (the half hour's minutes, and a switch's carried ones); beyond, the two
/// oldest merge (their bytes together, held as long as the later: never less reserved).
pub const MAX_LIVE_GRANTS: usize = 40;

/// One live grant: the bytes it has not seen reported yet, and when it lapses (unix seconds).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Held {
    /// Bytes not reported yet.
    pub bytes: u64,
    /// When its reservation lapses.
    pub until: u64,
}

/// A SIM's live grants: see the module docs.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reservation {
    /// The used-counter value the oldest live grant starts at: usage beyond it consumes the grants in order.
    pub base: u64,
    /// The live grants, oldest first.
    pub grants: Vec<Held>,
    /// The SIM's account is closing and its terminate has read these grants ([`Reservation::sealed`]): its
    /// refunds leave them out (they are the device's to use), and no grant is added after them. A grant that
    /// reserved before the seal is handed out whatever the account says by then; one after it is refused.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub sealed: bool,
}

impl Reservation {
    /// The reservation at the used counter `used` and the clock `now`: reported usage consumed from the oldest
    /// grant on, lapsed grants dropped.
    pub fn at(&self, used: u64, now: u64) -> Self {
        let mut reported = used.saturating_sub(self.base);
        let mut base = self.base;
        let mut grants = Vec::with_capacity(self.grants.len());
        for g in &self.grants {
            let taken = reported.min(g.bytes);
            reported -= taken;
            base = base.saturating_add(taken);
            let left = g.bytes - taken;
            if left > 0 && now < g.until {
                grants.push(Held {
                    bytes: left,
                    until: g.until,
                });
            }
        }
        // Usage beyond every grant (or after they all lapsed): the next grant starts from the counter.
        if grants.is_empty() {
            base = base.max(used);
        }
        Self {
            base,
            grants,
            sealed: self.sealed,
        }
    }

    /// `current` sealed at the used counter `used` (a terminate's: see [`Reservation::sealed`]); its grants as
    /// they were, for the refunds to leave out.
    pub fn sealed(current: Option<&Self>, used: u64) -> Self {
        let mut next = current.cloned().unwrap_or(Self {
            base: used,
            grants: Vec::new(),
            sealed: false,
        });
        next.sealed = true;
        next
    }

    /// Bytes granted and not reported yet at `used`, `now` (0 once reported or lapsed).
    pub fn outstanding(&self, used: u64, now: u64) -> u64 {
        self.at(used, now)
            .grants
            .iter()
            .fold(0, |sum, g| sum.saturating_add(g.bytes))
    }

    /// This reservation (as [`Reservation::at`] `used`, `now`) with one more grant of `bytes` lapsing at `until`
    /// (rounded up to [`LAPSE_STEP_SECS`]: a grant lapsing in the same minute as the newest joins it).
    pub fn with(&self, used: u64, now: u64, bytes: u64, until: u64) -> Self {
        let mut next = self.at(used, now);
        next.push(bytes, until);
        next
    }

    fn push(&mut self, bytes: u64, until: u64) {
        if bytes == 0 {
            return;
        }
        let until = until
            .div_ceil(LAPSE_STEP_SECS)
            .saturating_mul(LAPSE_STEP_SECS);
        // In lapse order, which is grant order (every grant is held as long): a switch's carried grants may lapse
        // before this SIM's own, and are consumed first.
        let at = self.grants.partition_point(|g| g.until < until);
        match self.grants.get_mut(at) {
            Some(same) if same.until == until => same.bytes = same.bytes.saturating_add(bytes),
            _ => self.grants.insert(at, Held { bytes, until }),
        }
        while self.grants.len() > MAX_LIVE_GRANTS {
            let second = self.grants.remove(1);
            let first = &mut self.grants[0];
            first.bytes = first.bytes.saturating_add(second.bytes);
            first.until = first.until.max(second.until);
        }
    }

    /// Take on another SIM's live grants `carried` (a switch: what the old SIM still reports is charged here, so
    /// its outstanding grants are this SIM's to reserve), each lapsing when it did there, at this SIM's used
    /// counter `used`. From another carrier (`rate`) each reserves what its bytes are worth here, as the usage
    /// it carries is handed on ([`LateRate`]).
    pub fn carry(
        current: Option<&Self>,
        used: u64,
        carried: &[Held],
        rate: Option<&LateRate>,
        now: u64,
    ) -> Self {
        let mut next = current.map_or_else(
            || Self {
                base: used,
                grants: Vec::new(),
                sealed: false,
            },
            |r| r.at(used, now),
        );
        for g in carried.iter().filter(|g| now < g.until) {
            next.push(rate.map_or(g.bytes, |r| r.worth(g.bytes)), g.until);
        }
        next
    }
}

/// [`decide`]'s answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Grant {
    /// The account is closed or closing (terminated, or switched away): no quota.
    Closed,
    /// Too little left once outstanding grants are counted, or suspended for balance: a top-up first.
    Low {
        /// Bytes left after reported usage and outstanding grants (0 when overdrawn).
        remaining: u64,
    },
    /// Grant `bytes`, usable until `valid_until`; store `reservation` (by compare-and-swap on the one read).
    Granted {
        /// Bytes granted.
        bytes: u64,
        /// Bytes left before this grant (after reported usage and the grants outstanding before it).
        remaining: u64,
        /// When the grant may no longer be used (unix seconds).
        valid_until: u64,
        /// The SIM's reservation with this grant.
        reservation: Reservation,
    },
}

impl Grant {
    /// The bytes granted and until when they may be used (`(0, 0)` when nothing is).
    pub fn granted(&self) -> (u64, u64) {
        match self {
            Self::Granted {
                bytes, valid_until, ..
            } => (*bytes, *valid_until),
            Self::Closed | Self::Low { .. } => (0, 0),
        }
    }
}

/// Decide a quota request for `requested` bytes (`None`: the default grant) of `account` at the used counter
/// `used` (the SIM's, with what a replaced SIM still hands on), with the SIM's reservation `current` as read.
/// At the low-water mark or below once outstanding grants are counted (kernel `decide_quota`), or while the SIM is
/// suspended for balance, nothing is granted.
pub fn decide(
    account: &Account,
    used: u64,
    current: Option<&Reservation>,
    requested: Option<u64>,
    now: u64,
) -> Grant {
    if account.closing || account.closed.is_some() || current.is_some_and(|r| r.sealed) {
        return Grant::Closed;
    }
    let current = current.cloned().unwrap_or_else(|| Reservation {
        base: used,
        grants: Vec::new(),
        sealed: false,
    });
    let (used, outstanding) = counted(Some(&current), used, now);
    let left = account.remaining(used) - i128::from(outstanding);
    match decide_quota(left, requested) {
        Quota::Low { remaining } => Grant::Low { remaining },
        Quota::Grant { .. } if account.suspended_for_balance => Grant::Low {
            remaining: u64::try_from(left.max(0)).unwrap_or(u64::MAX),
        },
        Quota::Grant { bytes, remaining } => {
            let valid_until = now.saturating_add(GRANT_VALID_SECS);
            Grant::Granted {
                bytes,
                remaining,
                valid_until,
                reservation: current.with(
                    used,
                    now,
                    bytes,
                    valid_until.saturating_add(GRANT_REPORT_SECS),
                ),
            }
        }
    }
}

/// The SIM's used counter as `current` knows it, and the bytes its grants hold beyond it at `now`: a counter
/// `used` read before a concurrent grant stored the record may be older than the record's base (which no
/// report ever passes back), and the base is then the newer value.
pub fn counted(current: Option<&Reservation>, used: u64, now: u64) -> (u64, u64) {
    current.map_or((used, 0), |r| {
        let used = used.max(r.base);
        (used, r.outstanding(used, now))
    })
}

/// The used counter a terminate's refunds are fixed at: `used` ([`counted`]), plus what outstanding grants let
/// the device use that the carrier has not reported yet (they are charged when they come, and must not be
/// refunded).
pub fn close_at(used: u64, current: Option<&Reservation>, now: u64) -> u64 {
    let (used, outstanding) = counted(current, used, now);
    used.saturating_add(outstanding)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::esim::iccid::Iccid;
    use crate::esim::plmn::RoamingPolicy;
    use crate::ids::CarrierId;
    use crate::money::UsdcAmount;
    use crate::usage::account::{BYTES_PER_MB, Credit, CreditKind, LOW_WATER_BYTES};

    const NOW: u64 = 1_800_000_000;
    const LAPSE: u64 = GRANT_VALID_SECS + GRANT_REPORT_SECS;

    fn account(mb: u64) -> Account {
        Account::opened_with(
            Iccid::parse("8901260000000000014").unwrap(),
            CarrierId::parse("tmo").unwrap(),
            RoamingPolicy::default(),
            vec![Credit {
                invoice: "inv_a".into(),
                kind: CreditKind::Activation,
                bytes: mb * BYTES_PER_MB,
                paid: UsdcAmount::from_micros(mb * 10_000),
                payer: "0xpayer".into(),
                tx: "0xtx".into(),
                network: "eip155:31337".into(),
                at: NOW,
            }],
            NOW,
        )
    }

    fn granted(g: Grant) -> (u64, Reservation) {
        match g {
            Grant::Granted {
                bytes, reservation, ..
            } => (bytes, reservation),
            other => panic!("not granted: {other:?}"),
        }
    }

    /// A terminate's seal keeps the grants it read for the refunds (the refunds count them used) and refuses
    /// every grant after it, though the account the grant read was open; lapsing and carrying keep the seal; a
    /// reservation stored before seals existed reads unsealed, and an unsealed one is stored as before.
    #[test]
    fn a_sealed_reservation_keeps_its_grants_and_takes_no_more() {
        let a = account(10);
        let (bytes, held) = granted(decide(&a, 0, None, Some(BYTES_PER_MB), NOW));
        assert_eq!(bytes, BYTES_PER_MB);
        let sealed = Reservation::sealed(Some(&held), 0);
        assert_eq!((sealed.base, &sealed.grants), (held.base, &held.grants));
        assert_eq!(close_at(0, Some(&sealed), NOW), BYTES_PER_MB);
        assert_eq!(
            decide(&a, 0, Some(&sealed), Some(BYTES_PER_MB), NOW + 1),
            Grant::Closed
        );
        assert!(
            sealed.at(0, NOW + LAPSE + 60).sealed,
            "lapsed, still sealed"
        );
        assert!(Reservation::carry(Some(&sealed), 0, &[], None, NOW).sealed);
        let none = Reservation::sealed(None, 42);
        assert!(none.sealed && none.grants.is_empty() && none.base == 42);
        assert_eq!(decide(&a, 0, Some(&none), None, NOW), Grant::Closed);
        let stored = serde_json::to_value(&held).unwrap();
        assert_eq!(stored.get("sealed"), None, "{stored}");
        let old: Reservation =
            serde_json::from_value(serde_json::json!({"base": 0, "grants": []})).unwrap();
        assert!(!old.sealed);
    }

    #[test]
    fn two_grants_at_once_never_hand_out_the_same_bytes() {
        let a = account(2);
        // The first grant takes 1.5 MB of 2 MB; the second, decided on the reservation the first stored, gets
        // what is left, not another 1.5 MB.
        let (first, r1) = granted(decide(&a, 0, None, Some(1_500_000), NOW));
        assert_eq!((first, r1.outstanding(0, NOW)), (1_500_000, 1_500_000));
        let (second, r2) = granted(decide(&a, 0, Some(&r1), Some(1_500_000), NOW));
        assert_eq!(
            (second, r2.outstanding(0, NOW)),
            (400_000, 1_900_000),
            "what is left above the low-water mark"
        );
        assert_eq!(
            decide(&a, 0, Some(&r2), None, NOW),
            Grant::Low { remaining: 100_000 },
            "nothing left to grant while both are outstanding"
        );
    }

    #[test]
    fn reported_usage_consumes_the_oldest_grant_and_each_lapses_on_its_own() {
        let a = account(2);
        let (_, r) = granted(decide(&a, 0, None, Some(1_500_000), NOW));
        // The grant's usage reported: nothing is outstanding.
        assert_eq!(r.outstanding(1_500_000, NOW + 60), 0);
        let (bytes, r2) = granted(decide(&a, 1_500_000, Some(&r), None, NOW + 60));
        assert_eq!(
            (bytes, r2.outstanding(1_500_000, NOW + 60)),
            (400_000, 400_000)
        );
        // Part reported: the rest stays reserved until the grant lapses, then it may be granted again.
        let (_, r) = granted(decide(&a, 0, None, Some(1_500_000), NOW));
        assert_eq!(r.outstanding(200_000, NOW + 1), 1_300_000);
        assert!(matches!(
            decide(&a, 200_000, Some(&r), Some(1_000_000), NOW + 1),
            Grant::Granted { bytes: 400_000, .. }
        ));
        assert_eq!(r.outstanding(200_000, NOW + LAPSE), 0);
        let (bytes, after) = granted(decide(&a, 200_000, Some(&r), Some(1_700_000), NOW + LAPSE));
        assert_eq!(
            (bytes, after.outstanding(200_000, NOW + LAPSE)),
            (1_700_000, 1_700_000)
        );
    }

    /// A carrier asking again every 15 minutes while its device uses a little: each grant's unused part lapses
    /// half an hour after that grant, so at most the last half hour's grants are held and the device is never
    /// starved of a balance it has (a first version kept every grant's unused part while any grant was live).
    #[test]
    fn a_carrier_asking_again_every_quarter_hour_never_piles_up_reservations() {
        let a = account(10);
        let mut r: Option<Reservation> = None;
        let mut used = 0;
        for tick in 0..40 {
            let now = NOW + tick * GRANT_VALID_SECS;
            let (bytes, next) = granted(decide(&a, used, r.as_ref(), None, now));
            assert_eq!(bytes, BYTES_PER_MB, "tick {tick}");
            used += 10_000;
            assert!(
                next.outstanding(used, now) <= 2 * BYTES_PER_MB,
                "tick {tick}: {next:?}"
            );
            r = Some(next);
        }
        assert_eq!(used, 400_000);
    }

    #[test]
    fn usage_beyond_the_grants_is_counted_from_the_used_counter() {
        let a = account(2);
        let (_, r) = granted(decide(&a, 0, None, Some(100_000), NOW));
        // The carrier reported more than it was granted: grants start from what was used.
        let (bytes, r2) = granted(decide(&a, 1_000_000, Some(&r), None, NOW));
        assert_eq!(bytes, 900_000);
        assert_eq!(
            (r2.base, r2.outstanding(1_000_000, NOW)),
            (1_000_000, 900_000)
        );
    }

    #[test]
    fn the_record_stays_small_and_never_reserves_less() {
        let mut r = Reservation::default();
        // Grants lapsing within one minute share an entry (each `+ 1` joins the next minute's); one per minute
        // beyond the bound merges the oldest.
        for i in 0..(MAX_LIVE_GRANTS as u64 + 10) {
            r = r.with(0, NOW, 1_000, NOW + 6_000 + i * 60);
            r = r.with(0, NOW, 1_000, NOW + 6_000 + i * 60 + 1);
        }
        assert_eq!(r.grants.len(), MAX_LIVE_GRANTS);
        assert_eq!(r.outstanding(0, NOW), (MAX_LIVE_GRANTS as u64 + 10) * 2_000);
        assert!(r.grants.windows(2).all(|w| w[0].until <= w[1].until));
    }

    /// A carrier asking every 30 s for the default grant, its device using 10 KB each time, for ten hours on a
    /// 1 GB SIM: at most the last half hour's grants are held (about 60 MB), and every ask is granted. A first
    /// version merged the oldest entries once the list was full, which kept moving the merged entry's lapse: it
    /// never lapsed and grew by a megabyte per ask.
    #[test]
    fn a_carrier_asking_every_half_minute_holds_only_the_last_half_hour() {
        let a = account(1_000);
        let mut r: Option<Reservation> = None;
        let mut used = 0;
        for tick in 0..1_200 {
            let now = NOW + tick * 30;
            let (bytes, next) = granted(decide(&a, used, r.as_ref(), None, now));
            assert_eq!(bytes, BYTES_PER_MB, "tick {tick}");
            used += 10_000;
            let held = next.outstanding(used, now);
            assert!(held <= 62 * BYTES_PER_MB, "tick {tick}: {held}");
            assert!(
                next.grants.len() <= 31,
                "tick {tick}: {}",
                next.grants.len()
            );
            r = Some(next);
        }
    }

    /// A counter read before a concurrent grant stored its record can be older than the record's base: the
    /// base counts (a refund fixed at the older value would refund reported bytes).
    #[test]
    fn a_stale_used_counter_never_undercounts() {
        let a = account(2);
        let (_, r) = granted(decide(&a, 0, None, Some(500_000), NOW));
        // Usage reported, and another grant made at the newer counter.
        let (_, r) = granted(decide(&a, 800_000, Some(&r), Some(500_000), NOW));
        assert_eq!(r.base, 800_000);
        assert_eq!(close_at(300_000, Some(&r), NOW), 1_300_000);
        assert!(matches!(
            decide(&a, 300_000, Some(&r), None, NOW),
            Grant::Granted { bytes: 600_000, .. }
        ));
    }

    #[test]
    fn low_suspended_and_closed_accounts_grant_nothing() {
        let a = account(1);
        let (bytes, r) = granted(decide(&a, 0, None, Some(950_000), NOW));
        assert_eq!(bytes, 900_000, "never the last 100 KB");
        assert_eq!(
            decide(&a, 0, Some(&r), None, NOW),
            Grant::Low { remaining: 100_000 },
            "at the low-water mark once the outstanding grant is counted"
        );
        const { assert!(100_000 == LOW_WATER_BYTES) };
        let mut held = account(1);
        held.suspended_for_balance = true;
        assert_eq!(
            decide(&held, 0, None, None, NOW),
            Grant::Low {
                remaining: BYTES_PER_MB
            }
        );
        let mut closing = account(1);
        assert!(closing.begin_close());
        assert_eq!(decide(&closing, 0, None, None, NOW), Grant::Closed);
        let mut closed = account(1);
        closed.close(0);
        assert_eq!(decide(&closed, 0, None, None, NOW), Grant::Closed);
    }

    #[test]
    fn a_terminate_counts_outstanding_grants_as_used() {
        let a = account(2);
        let (_, r) = granted(decide(&a, 0, None, Some(1_000_000), NOW));
        assert_eq!(close_at(300_000, Some(&r), NOW + 10), 1_000_000);
        assert_eq!(close_at(1_200_000, Some(&r), NOW + 10), 1_200_000);
        assert_eq!(close_at(300_000, Some(&r), NOW + LAPSE), 300_000, "lapsed");
        assert_eq!(close_at(300_000, None, NOW), 300_000);
        // The refunds at that counter leave the granted megabyte out.
        let mut closed = a.clone();
        let shares = closed.terminate(close_at(300_000, Some(&r), NOW + 10), NOW + 10);
        assert_eq!(shares[0].bytes, BYTES_PER_MB);
        // The terminated SIM is retired then (its receipts end a day later), fixed by the first close.
        assert_eq!(closed.terms().and_then(|t| t.retired_at), Some(NOW + 10));
        assert_eq!(closed.terminate(0, NOW + 99), shares);
        assert_eq!(closed.closed_at, Some(NOW + 10));
        assert_eq!(a.terms().and_then(|t| t.retired_at), None);
    }

    #[test]
    fn a_switch_carries_the_old_sims_outstanding_grants() {
        let held = |bytes, until| Held { bytes, until };
        // A fresh SIM takes on the old SIM's grants, each lapsing when it did there (on whole minutes).
        let old = [held(400_000, NOW + 120), held(100_000, NOW + 600)];
        let r = Reservation::carry(None, 0, &old, None, NOW);
        assert_eq!(
            (r.outstanding(0, NOW), r.grants.last().map(|g| g.until)),
            (500_000, Some(NOW + 600))
        );
        assert_eq!(r.outstanding(0, NOW + 120), 100_000);
        // From another carrier, by their worth here ($0.003/MB to $0.0035/MB: 6/7).
        let rate = LateRate::between_carriers(0, 3_000_000, 3_500_000).unwrap();
        let priced = Reservation::carry(None, 0, &old, Some(&rate), NOW);
        assert_eq!(priced.outstanding(0, NOW), 342_857 + 85_714);
        // One with its own live grant holds all of them, each on its own clock, in lapse (grant) order: the
        // carried grant lapsing first is consumed first by what the old SIM reports late.
        let own = Reservation::carry(None, 500_000, &[held(200_000, NOW + 300)], None, NOW);
        let r = Reservation::carry(Some(&own), 500_000, &old, None, NOW);
        assert_eq!(r.outstanding(500_000, NOW), 700_000);
        assert_eq!(r.outstanding(500_000, NOW + 120), 300_000);
        assert_eq!(r.outstanding(900_000, NOW), 300_000);
        assert_eq!(
            r.outstanding(700_000, NOW + 120),
            300_000,
            "the carried grant lapsing first took the late report"
        );
        assert_eq!(
            r.at(900_000, NOW + 300).grants,
            vec![held(100_000, NOW + 600)]
        );
    }
}
