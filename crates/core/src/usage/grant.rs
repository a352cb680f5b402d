//! Quota grants that reserve what they grant (online charging's reservation, as Gy/Nchf do): a grant's bytes
//! are held for the SIM until usage reports them or the grant lapses, so two grants asked at once (two
//! sessions, or two requests before any report) never hand out the same bytes, and a terminate does not refund
//! bytes a grant let the device use that the carrier has not reported yet.
//!
//! A SIM's reservation is one small record ([`Reservation`], `meter/<iccid>/grant`), changed by
//! compare-and-swap per SIM (no key shared between SIMs):
//! - `mark` is a value of the SIM's used counter: every byte below it is either reported (counted in `used`)
//!   or granted and not reported yet. A new grant starts at `max(used, mark)` and moves the mark past its bytes,
//!   so what is outstanding is `mark − used` and what may still be granted is `credited − max(used, mark)`.
//! - `until` is when the newest grant lapses: it may be used for [`GRANT_VALID_SECS`] and its usage reported
//!   within [`GRANT_REPORT_SECS`] after that. Grants are made in time order with one validity, so the newest
//!   lapses last: once it has lapsed, every older one has too, and nothing is outstanding.
//!
//! Invariant: the bytes handed out by grants whose reservations are live never exceed what the account has
//! left after reported usage. Usage the carrier reports beyond its grants (a carrier ignoring them) is charged
//! like any other and pushes `used` past the mark; nothing is reserved for it.

use serde::{Deserialize, Serialize};

use super::account::{Account, Quota, decide_quota};

/// How long a grant may be used (seconds): the requester asks again after it (Gy's Validity-Time).
pub const GRANT_VALID_SECS: u64 = 900;

/// How long after a grant stops being usable its usage may still be reported while its bytes stay reserved
/// (seconds; carrier feeds report about every 15 minutes). A report later than that finds the reservation
/// lapsed, and its bytes may meanwhile have been granted again.
pub const GRANT_REPORT_SECS: u64 = 900;

/// A SIM's outstanding grants: see the module docs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reservation {
    /// The used-counter value up to which bytes are granted (the newest grant's end).
    pub mark: u64,
    /// When the newest grant's reservation lapses (unix seconds).
    pub until: u64,
}

impl Reservation {
    /// Bytes granted beyond `used` and still reserved at `now` (0 once they are reported or lapsed).
    pub fn outstanding(&self, used: u64, now: u64) -> u64 {
        if now >= self.until {
            0
        } else {
            self.mark.saturating_sub(used)
        }
    }

    /// Take on `bytes` outstanding under another SIM's reservation lapsing at `until` (a switch: what the old
    /// SIM still reports is charged here, so its outstanding grants are this SIM's to reserve). Kept as live as
    /// the later of the two.
    pub fn carry(current: Option<&Self>, used: u64, bytes: u64, until: u64, now: u64) -> Self {
        let (base, lapse) = match current {
            Some(r) if r.outstanding(used, now) > 0 => (r.mark, r.until.max(until)),
            _ => (used, until),
        };
        Self {
            mark: base.saturating_add(bytes),
            until: lapse,
        }
    }
}

/// [`decide`]'s answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
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
/// Below the low-water mark once outstanding grants are counted (kernel `decide_quota`), or while the SIM is
/// suspended for balance, nothing is granted.
pub fn decide(
    account: &Account,
    used: u64,
    current: Option<&Reservation>,
    requested: Option<u64>,
    now: u64,
) -> Grant {
    if account.closing || account.closed.is_some() {
        return Grant::Closed;
    }
    let outstanding = current.map_or(0, |r| r.outstanding(used, now));
    let left = account.remaining(used) - i128::from(outstanding);
    match decide_quota(left, requested) {
        Quota::Low { remaining } => Grant::Low { remaining },
        Quota::Grant { .. } if account.suspended_for_balance => Grant::Low {
            remaining: u64::try_from(left.max(0)).unwrap_or(u64::MAX),
        },
        Quota::Grant { bytes, remaining } => Grant::Granted {
            bytes,
            remaining,
            valid_until: now.saturating_add(GRANT_VALID_SECS),
            reservation: Reservation {
                mark: used.saturating_add(outstanding).saturating_add(bytes),
                until: now
                    .saturating_add(GRANT_VALID_SECS)
                    .saturating_add(GRANT_REPORT_SECS),
            },
        },
    }
}

/// The used counter a terminate's refunds are fixed at: `used`, plus what outstanding grants let the device
/// use that the carrier has not reported yet (they are charged when they come, and must not be refunded).
pub fn close_at(used: u64, current: Option<&Reservation>, now: u64) -> u64 {
    used.saturating_add(current.map_or(0, |r| r.outstanding(used, now)))
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

    #[test]
    fn two_grants_at_once_never_hand_out_the_same_bytes() {
        let a = account(2);
        // The first grant takes 1.5 MB of 2 MB; the second, decided on the reservation the first stored, gets
        // what is left, not another 1.5 MB.
        let (first, r1) = granted(decide(&a, 0, None, Some(1_500_000), NOW));
        assert_eq!((first, r1.mark), (1_500_000, 1_500_000));
        let (second, r2) = granted(decide(&a, 0, Some(&r1), Some(1_500_000), NOW));
        assert_eq!((second, r2.mark), (500_000, 2 * BYTES_PER_MB));
        assert_eq!(
            decide(&a, 0, Some(&r2), None, NOW),
            Grant::Low { remaining: 0 },
            "nothing left to grant while both are outstanding"
        );
    }

    #[test]
    fn reported_usage_consumes_the_reservation_and_a_lapsed_one_frees_its_bytes() {
        let a = account(2);
        let (_, r) = granted(decide(&a, 0, None, Some(1_500_000), NOW));
        // The grant's usage reported: the used counter reached the mark, nothing is outstanding.
        assert_eq!(r.outstanding(1_500_000, NOW + 60), 0);
        let (bytes, r2) = granted(decide(&a, 1_500_000, Some(&r), None, NOW + 60));
        assert_eq!((bytes, r2.mark), (500_000, 2 * BYTES_PER_MB));
        // Part reported: the rest stays reserved until the grant lapses, then it may be granted again.
        let (_, r) = granted(decide(&a, 0, None, Some(1_500_000), NOW));
        assert_eq!(r.outstanding(200_000, NOW + 1), 1_300_000);
        assert!(matches!(
            decide(&a, 200_000, Some(&r), Some(1_000_000), NOW + 1),
            Grant::Granted { bytes: 500_000, .. }
        ));
        let lapse = NOW + GRANT_VALID_SECS + GRANT_REPORT_SECS;
        assert_eq!((r.until, r.outstanding(200_000, lapse)), (lapse, 0));
        let (bytes, after) = granted(decide(&a, 200_000, Some(&r), Some(1_800_000), lapse));
        assert_eq!((bytes, after.mark), (1_800_000, 2 * BYTES_PER_MB));
    }

    #[test]
    fn usage_beyond_the_grants_is_counted_from_the_used_counter() {
        let a = account(2);
        let (_, r) = granted(decide(&a, 0, None, Some(100_000), NOW));
        // The carrier reported more than it was granted: grants start from what was used.
        let (bytes, r2) = granted(decide(&a, 1_000_000, Some(&r), None, NOW));
        assert_eq!((bytes, r2.mark), (1_000_000, 2 * BYTES_PER_MB));
    }

    #[test]
    fn low_suspended_and_closed_accounts_grant_nothing() {
        let a = account(1);
        let (_, r) = granted(decide(&a, 0, None, Some(950_000), NOW));
        assert_eq!(
            decide(&a, 0, Some(&r), None, NOW),
            Grant::Low { remaining: 50_000 },
            "below the low-water mark once the outstanding grant is counted"
        );
        const { assert!(50_000 < LOW_WATER_BYTES) };
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
        assert_eq!(close_at(300_000, Some(&r), r.until), 300_000, "lapsed");
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
        // A fresh SIM takes on 400 KB lapsing when the old SIM's reservation does.
        let r = Reservation::carry(None, 0, 400_000, NOW + 100, NOW);
        assert_eq!(
            r,
            Reservation {
                mark: 400_000,
                until: NOW + 100
            }
        );
        // One with its own live grant stacks them, live as long as the later.
        let own = Reservation {
            mark: 700_000,
            until: NOW + 50,
        };
        let r = Reservation::carry(Some(&own), 500_000, 400_000, NOW + 100, NOW);
        assert_eq!(
            r,
            Reservation {
                mark: 1_100_000,
                until: NOW + 100
            }
        );
        // A lapsed own reservation counts from the used counter.
        let r = Reservation::carry(Some(&own), 500_000, 400_000, NOW + 100, NOW + 50);
        assert_eq!(r.mark, 900_000);
    }
}
