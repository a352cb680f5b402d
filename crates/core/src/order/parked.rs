//! Orders parked until their payment can no longer settle (`cleanup/parked`). An `exact` payment's order is
//! placed before its settlement; one that outlives the dispatch budget stays pending, and resumes when the
//! same payment is sent again. A payer that never sends it again would leave the profile allocated at the
//! carrier for good: once the authorization's `validBefore` has passed nothing can pay for that profile, so a
//! later order's cleanup sweep withdraws it (its SIM terminated, its profile retired, its journal failed).
//!
//! A tx-hash payment's money moved before its order: its order left pending is completed by the same proof sent
//! again. Parked too ([`Parked::paid`], under a key of its own, `cleanup/parked-paid`, which earlier builds
//! neither read nor rewrite), it is withdrawn only by the operator's cleanup run, once it has stayed pending a
//! grace period (dispatch `paid_order_pending_secs`, a day by default), and that run owes the payment back: the
//! entry stays ([`Withdrawal::Owed`], found again on every run) until the run says the refund is recorded
//! ([`acknowledge`]). A run that stops between the withdrawal and the refund loses nothing.
//!
//! A list of its own, not entries in `cleanup/queue`: a dispatch of an earlier build (a rolling deploy) could
//! not read a new kind of queued cleanup, and would lose the whole queue.

use serde::{Deserialize, Serialize};

use super::{Order, OrderStatus, StoredSim};
use crate::esim::SimState;

/// Seconds after a payment can no longer settle before its pending order is withdrawn: a node whose clock runs
/// ahead must not withdraw a profile whose settlement is landing at the last moment.
pub const WITHDRAW_MARGIN_SECS: u64 = 60;

/// The most orders parked at once; beyond, an order is not parked (logged for an operator).
pub const MAX_PARKED: usize = 4_096;

/// Seconds a paid order (a tx-hash payment's) may stay pending before the operator's cleanup run withdraws it and
/// owes its payment back, unless configured (dispatch `paid_order_pending_secs`): a day.
pub const PAID_PENDING_SECS: u64 = 86_400;

/// A pending order to withdraw once its payment can no longer settle.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Parked {
    /// The invoice whose order it is.
    pub invoice: String,
    /// The carrier holding the profile.
    pub carrier: String,
    /// The allocated profile.
    pub iccid: String,
    /// Unix seconds: not withdrawn before.
    pub not_before: u64,
    /// Its money moved already (a tx-hash transfer): kept under its own key, withdrawn only by the operator's
    /// cleanup run, which owes the payment back ([`Withdrawal::Owed`]). Absent in entries of earlier builds,
    /// which parked no paid order.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub paid: bool,
}

impl Parked {
    /// The entry of `sim`, a pending SIM whose payment can no longer settle after `withdraw_after`.
    pub fn of(sim: &StoredSim, withdraw_after: u64) -> Self {
        Self {
            invoice: sim.invoice_id.clone(),
            carrier: sim.carrier.clone(),
            iccid: sim.iccid.clone(),
            not_before: withdraw_after.saturating_add(WITHDRAW_MARGIN_SECS),
            paid: false,
        }
    }

    /// The entry of `sim`, a pending SIM whose money moved already (a tx-hash payment), withdrawn by the
    /// operator's cleanup run from `not_before` on (no margin: no settlement can land after it).
    pub fn paid(sim: &StoredSim, not_before: u64) -> Self {
        Self {
            not_before,
            paid: true,
            ..Self::of(sim, 0)
        }
    }

    /// Whether `other` is an entry of the same order's profile (same invoice and ICCID), in either list.
    pub fn same_order(&self, other: &Parked) -> bool {
        (&self.invoice, &self.iccid) == (&other.invoice, &other.iccid)
    }
}

/// What parking an entry comes to ([`park`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Park {
    /// Write this list.
    Add(Vec<Parked>),
    /// The order's profile is parked already (the first entry is kept): nothing to write.
    Already,
    /// The list is full: nothing written; an operator must look.
    Full,
}

/// Park `item` at the end of `list`: once per (invoice, ICCID), at most `max` entries.
pub fn park(mut list: Vec<Parked>, item: &Parked, max: usize) -> Park {
    if list.iter().any(|p| p.same_order(item)) {
        return Park::Already;
    }
    if list.len() >= max {
        return Park::Full;
    }
    list.push(item.clone());
    Park::Add(list)
}

/// `list` without the entries of `item`'s order's profile (same invoice and ICCID), or `None` if it holds none:
/// an `exact` payment's order parked to be withdrawn unpaid whose money then moved (its authorization executed
/// by another transaction while the order waited) is parked as paid instead, and must not be withdrawn unpaid.
pub fn unpark(mut list: Vec<Parked>, item: &Parked) -> Option<Vec<Parked>> {
    let before = list.len();
    list.retain(|p| !p.same_order(item));
    (list.len() != before).then_some(list)
}

/// Whether any entry of `list` is due at `now` (a sweep writes the list only then).
pub fn any_due(list: &[Parked], now: u64) -> bool {
    list.iter().any(|p| p.not_before <= now)
}

/// Take up to `max` entries due at `now`, held until `lease_until`: `(list to store, taken)`. A taken entry
/// stays in the list, due again at `lease_until`, so a sweep that stops before it is done with it (a crash)
/// loses nothing: the next sweep after the hold takes it again. `taken` holds the entries as they were; due
/// ones behind not-yet-due entries are taken, and a taken entry's duplicates (same invoice and ICCID) leave.
pub fn take_due(
    list: Vec<Parked>,
    max: usize,
    now: u64,
    lease_until: u64,
) -> (Vec<Parked>, Vec<Parked>) {
    let mut stored = Vec::with_capacity(list.len());
    let mut taken: Vec<Parked> = Vec::new();
    for p in list {
        if taken.iter().any(|t| t.same_order(&p)) {
            continue;
        }
        if p.not_before <= now && taken.len() < max {
            stored.push(Parked {
                not_before: lease_until,
                ..p.clone()
            });
            taken.push(p);
        } else {
            stored.push(p);
        }
    }
    // A duplicate seen before its due twin was taken.
    stored.retain(|p| p.not_before == lease_until || !taken.iter().any(|t| t.same_order(p)));
    (stored, taken)
}

/// The list once the sweep that took `item` (held until `lease_until`, [`take_due`]) is done with it: gone
/// (`next` `None`: withdrawn, or nothing is left to withdraw) or due again at `next`. `None` when there is
/// nothing to write because the entry is no longer that sweep's: another sweep took it once the hold ran
/// out, or it left the list.
pub fn settle(
    mut list: Vec<Parked>,
    item: &Parked,
    lease_until: u64,
    next: Option<u64>,
) -> Option<Vec<Parked>> {
    let at = list
        .iter()
        .position(|p| p.same_order(item) && p.not_before == lease_until)?;
    match next {
        Some(due) => list[at].not_before = due,
        None => {
            list.remove(at);
        }
    }
    Some(list)
}

/// Seconds before the run looks again at a paid entry whose refund an operator must record (its invoice no key
/// opens, names no transaction, or owes back another payment of it): a day, so the log asks once a day.
pub const OPERATOR_RETRY_SECS: u64 = 86_400;

/// The list of paid entries once the operator's run has dealt with the invoices it named owed: those in
/// `recorded` (their refunds recorded) leave; those in `operator` (a refund no retry records) stay, due again
/// at `later`. `None` when nothing changes (nothing to write).
pub fn acknowledge(
    mut list: Vec<Parked>,
    recorded: &[String],
    operator: &[String],
    later: u64,
) -> Option<Vec<Parked>> {
    let before = list.clone();
    list.retain(|p| !(p.paid && recorded.contains(&p.invoice)));
    for p in list
        .iter_mut()
        .filter(|p| p.paid && operator.contains(&p.invoice))
    {
        p.not_before = later;
    }
    (list != before).then_some(list)
}

/// What the sweep does with a due entry for `iccid`, its order's journal being `journal` ([`withdrawal`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Withdrawal {
    /// Claim the journal and withdraw the profile.
    Proceed,
    /// A paid entry's order ended undelivered (withdrawn by this run or an earlier one, or failed otherwise, e.g.
    /// the owner's refresh after the carrier's reservation expired): its payment is owed back (once per invoice:
    /// a driver that owed it already makes this a repeat), and the entry stays until the run that owes it
    /// acknowledges that ([`acknowledge`]).
    Owed,
    /// A driver holds the journal until then: parked again, due then.
    Later(u64),
    /// Nothing to withdraw: the order ended (delivered, failed), or moved on to another profile (whose own
    /// pending step parks its own entry), or its journal is gone.
    Drop,
}

/// Whether a due entry for `iccid` is withdrawn at `now`, its order's journal being `journal`: only an order
/// still ordering with `iccid` as its step, once no driver holds it. A `paid` entry whose order failed (withdrawn
/// or not: nothing was delivered for money that moved) is [`Withdrawal::Owed`].
pub fn withdrawal(journal: Option<&Order>, iccid: &str, now: u64, paid: bool) -> Withdrawal {
    match journal {
        Some(o) if paid && o.status == OrderStatus::Failed => Withdrawal::Owed,
        Some(o)
            if o.status == OrderStatus::Ordering
                && o.step.as_ref().is_some_and(|s| s.iccid == iccid) =>
        {
            if o.lease_until > now {
                Withdrawal::Later(o.lease_until)
            } else {
                Withdrawal::Proceed
            }
        }
        _ => Withdrawal::Drop,
    }
}

/// The journal's error once its order is withdrawn: a resend ends uncharged with it.
pub const WITHDRAWN: &str =
    "withdrawn: its payment was not completed before its authorization expired";

/// The journal's error once a paid order (a tx-hash payment's) is withdrawn: a resend is owed its payment back.
pub const WITHDRAWN_PAID: &str =
    "withdrawn: its order stayed pending too long; the payment is owed back";

/// What withdrawing an order still ordering on a profile finds in that profile's SIM record
/// ([`withdraw_pending`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SimWithdrawal {
    /// A pending SIM of the invoice: store this (terminated, its access token revoked), then retire the
    /// profile and fail the journal.
    Terminate(StoredSim),
    /// Terminated already, still the invoice's, never given its activation code (a withdrawal that stopped
    /// before its cancel or its journal, or the owner's terminate of the pending SIM): store nothing; retire the
    /// profile (again) and fail the journal, so the withdrawal is finished (and a paid order's payment owed
    /// back). A terminated SIM that had its code was delivered (its journal's end lost), never withdrawn.
    Finish(StoredSim),
    /// No record (the order stopped before storing its pending SIM): store nothing; retire the profile and fail
    /// the journal. No SIM of ours holds the ICCID, so cancelling it takes nothing from anyone.
    Absent,
    /// Anything else (active, suspended, failed, another invoice's): nothing changes and nothing is cancelled.
    Nothing,
}

/// The SIM record of a withdrawn order, from the record as stored now (`current`, inside its cell update):
/// only a pending SIM of `invoice` is withdrawn ([`SimWithdrawal`]).
pub fn withdraw_pending(current: Option<&StoredSim>, invoice: &str) -> SimWithdrawal {
    let Some(c) = current else {
        return SimWithdrawal::Absent;
    };
    match c {
        c if c.invoice_id != invoice => SimWithdrawal::Nothing,
        c if c.state == SimState::Pending => {
            let mut sim = c.clone();
            sim.state = SimState::Terminated;
            sim.access.token = None;
            SimWithdrawal::Terminate(sim)
        }
        c if c.state == SimState::Terminated && c.activation_code.is_none() => {
            SimWithdrawal::Finish(c.clone())
        }
        _ => SimWithdrawal::Nothing,
    }
}

#[cfg(test)]
mod tests {
    use super::super::{AfterConfirm, Confirmation, Step, after_confirm, settled_before_confirm};
    use super::*;
    use crate::esim::ProfileState;

    fn entry(invoice: &str, iccid: &str, not_before: u64) -> Parked {
        Parked {
            invoice: invoice.into(),
            carrier: "tmobile".into(),
            iccid: iccid.into(),
            not_before,
            paid: false,
        }
    }

    fn paid(invoice: &str, iccid: &str, not_before: u64) -> Parked {
        Parked {
            paid: true,
            ..entry(invoice, iccid, not_before)
        }
    }

    #[test]
    fn parking_an_order_as_paid_takes_out_its_unpaid_entry_only() {
        let list = vec![
            entry("a", "1", 10),
            entry("b", "2", 10),
            entry("a", "3", 10),
        ];
        // Its own profile's entry leaves; another invoice's, or another profile of the same invoice, stays.
        let left = unpark(list.clone(), &paid("a", "1", 99)).expect("its entry was there");
        assert_eq!(left, vec![entry("b", "2", 10), entry("a", "3", 10)]);
        // Nothing of it parked: nothing to write.
        assert_eq!(unpark(list, &paid("c", "1", 99)), None);
        assert_eq!(unpark(Vec::new(), &paid("a", "1", 99)), None);
    }

    /// The kernel's test SIM ([`crate::order::tests::sim`]) of `invoice`, holding a token.
    fn sim(state: SimState, invoice: &str) -> StoredSim {
        StoredSim {
            invoice_id: invoice.into(),
            created_at: 1,
            access: crate::auth::SimAccess {
                owner: None,
                token: Some(crate::auth::TokenState {
                    generation: 0,
                    hash: Default::default(),
                }),
            },
            ..crate::order::tests::sim(state)
        }
    }

    fn journal(status: OrderStatus, step: Option<&str>, lease_until: u64) -> Order {
        Order {
            invoice_id: "inv_1".into(),
            status,
            token: "t".into(),
            lease_until,
            step: step.map(|i| Step {
                carrier: "tmobile".into(),
                iccid: i.into(),
                confirm_fci: "c".into(),
            }),
            iccid: None,
            failovers: vec![],
            error: None,
        }
    }

    #[test]
    fn an_entry_is_due_a_margin_after_its_payment_can_no_longer_settle() {
        let p = Parked::of(&sim(SimState::Pending, "inv_1"), 1_000);
        assert_eq!(p, entry("inv_1", "8901", 1_000 + WITHDRAW_MARGIN_SECS));
        assert!(!any_due(std::slice::from_ref(&p), 1_059));
        assert!(any_due(&[p], 1_060));
        assert_eq!(
            Parked::of(&sim(SimState::Pending, "i"), u64::MAX).not_before,
            u64::MAX
        );
    }

    #[test]
    fn an_order_is_parked_once_and_the_list_is_bounded() {
        let a = entry("inv_1", "8901", 10);
        let Park::Add(list) = park(vec![], &a, 2) else {
            panic!()
        };
        assert_eq!(list, vec![a.clone()]);
        // The same order's profile again (a resend left pending again): the first entry is kept.
        assert_eq!(
            park(list.clone(), &entry("inv_1", "8901", 99), 2),
            Park::Already
        );
        // Another profile of the same invoice (a failover) is its own entry.
        let b = entry("inv_1", "8902", 10);
        let Park::Add(list) = park(list, &b, 2) else {
            panic!()
        };
        assert_eq!(list, vec![a, b]);
        assert_eq!(park(list, &entry("inv_2", "8903", 10), 2), Park::Full);
    }

    #[test]
    fn due_entries_are_taken_and_the_rest_stay_in_order() {
        let list = vec![
            entry("a", "1", 50),
            entry("b", "2", 10),
            entry("c", "3", 60),
            entry("d", "4", 20),
            entry("e", "5", 30),
        ];
        // Nothing due: nothing changes (the caller writes nothing).
        assert_eq!(take_due(list.clone(), 4, 5, 500), (list.clone(), vec![]));
        // Not-yet-due entries stay; due ones behind them are taken, up to `max`, and stay held where they are.
        let (stored, taken) = take_due(list.clone(), 2, 40, 500);
        assert_eq!(taken, vec![entry("b", "2", 10), entry("d", "4", 20)]);
        assert_eq!(
            stored,
            vec![
                entry("a", "1", 50),
                entry("b", "2", 500),
                entry("c", "3", 60),
                entry("d", "4", 500),
                entry("e", "5", 30)
            ]
        );
        // Held ones are not due to another sweep until the hold has passed.
        let (_, again) = take_due(stored.clone(), 9, 499, 900);
        assert_eq!(
            again,
            vec![
                entry("a", "1", 50),
                entry("c", "3", 60),
                entry("e", "5", 30)
            ]
        );
        let (_, after) = take_due(stored, 9, 500, 900);
        assert_eq!(after.len(), 5);
    }

    /// The sweep that took an entry settles it: gone, or due again later. A sweep that never does (it crashed)
    /// leaves it held, and the next sweep after the hold takes it again; the first sweep, late, then finds it
    /// no longer its own and writes nothing.
    #[test]
    fn a_taken_entry_is_settled_by_its_sweep_or_taken_again_after_the_hold() {
        let list = vec![entry("a", "1", 10), entry("b", "2", 10)];
        let (stored, taken) = take_due(list, 9, 20, 100);
        assert_eq!(
            settle(stored.clone(), &taken[0], 100, None),
            Some(vec![entry("b", "2", 100)])
        );
        assert_eq!(
            settle(stored.clone(), &taken[1], 100, Some(300)),
            Some(vec![entry("a", "1", 100), entry("b", "2", 300)])
        );
        // The sweep crashed: after the hold, another takes both again (held until 400).
        let (retaken, again) = take_due(stored, 9, 100, 400);
        assert_eq!(again, vec![entry("a", "1", 100), entry("b", "2", 100)]);
        assert_eq!(settle(retaken.clone(), &taken[0], 100, None), None);
        assert_eq!(
            settle(retaken, &again[0], 400, None),
            Some(vec![entry("b", "2", 400)])
        );
        assert_eq!(settle(vec![], &taken[0], 100, None), None);
    }

    #[test]
    fn duplicates_collapse_when_taken() {
        let list = vec![
            entry("a", "1", 90),
            entry("a", "1", 10),
            entry("b", "2", 90),
            entry("a", "1", 20),
        ];
        let (stored, taken) = take_due(list, 4, 50, 500);
        assert_eq!(taken, vec![entry("a", "1", 10)]);
        assert_eq!(stored, vec![entry("a", "1", 500), entry("b", "2", 90)]);
    }

    #[test]
    fn only_an_abandoned_order_still_on_its_profile_is_withdrawn() {
        let now = 1_000;
        // No journal, delivered, failed: nothing to withdraw.
        assert_eq!(withdrawal(None, "8901", now, false), Withdrawal::Drop);
        for status in [OrderStatus::Done, OrderStatus::Failed] {
            let j = journal(status, Some("8901"), 0);
            assert_eq!(withdrawal(Some(&j), "8901", now, false), Withdrawal::Drop);
        }
        // Failover moved the order to another profile, or it holds none.
        let other = journal(OrderStatus::Ordering, Some("8902"), 0);
        assert_eq!(
            withdrawal(Some(&other), "8901", now, false),
            Withdrawal::Drop
        );
        let none = journal(OrderStatus::Ordering, None, 0);
        assert_eq!(
            withdrawal(Some(&none), "8901", now, false),
            Withdrawal::Drop
        );
        // A live driver holds it: again when its lease ends.
        let live = journal(OrderStatus::Ordering, Some("8901"), now + 1);
        assert_eq!(
            withdrawal(Some(&live), "8901", now, false),
            Withdrawal::Later(now + 1)
        );
        // Its lease lapsed (or was handed over): withdrawn.
        for lease in [now, 0] {
            let lapsed = journal(OrderStatus::Ordering, Some("8901"), lease);
            assert_eq!(
                withdrawal(Some(&lapsed), "8901", now, false),
                Withdrawal::Proceed
            );
        }
    }

    #[test]
    fn only_a_pending_sim_of_the_invoice_is_terminated() {
        let SimWithdrawal::Terminate(withdrawn) =
            withdraw_pending(Some(&sim(SimState::Pending, "inv_1")), "inv_1")
        else {
            panic!()
        };
        assert_eq!(withdrawn.state, SimState::Terminated);
        assert_eq!(withdrawn.access.token, None);
        assert_eq!(withdrawn.invoice_id, "inv_1");
        for state in [SimState::Active, SimState::Suspended, SimState::Failed] {
            assert_eq!(
                withdraw_pending(Some(&sim(state, "inv_1")), "inv_1"),
                SimWithdrawal::Nothing
            );
        }
        // Terminated already (a withdrawal that stopped before its cancel, or the owner's terminate): finished,
        // nothing stored. One that had its code was delivered (only its journal's end was lost): left alone.
        let ended = sim(SimState::Terminated, "inv_1");
        assert_eq!(
            withdraw_pending(Some(&ended), "inv_1"),
            SimWithdrawal::Finish(ended.clone())
        );
        let delivered = StoredSim {
            activation_code: Some("1$smdp.example$X".into()),
            ..ended
        };
        assert_eq!(
            withdraw_pending(Some(&delivered), "inv_1"),
            SimWithdrawal::Nothing
        );
        // Another invoice's SIM (the profile went to another order), or none.
        assert_eq!(
            withdraw_pending(Some(&sim(SimState::Pending, "inv_2")), "inv_1"),
            SimWithdrawal::Nothing
        );
        for state in [SimState::Pending, SimState::Terminated] {
            assert_eq!(
                withdraw_pending(Some(&sim(state, "inv_2")), "inv_1"),
                SimWithdrawal::Nothing
            );
        }
        // No record (the order stopped before storing it): the profile is cancelled, the journal failed.
        assert_eq!(withdraw_pending(None, "inv_1"), SimWithdrawal::Absent);
    }

    #[test]
    fn a_confirm_landing_after_the_withdrawal_never_delivers() {
        let pending = sim(SimState::Pending, "inv_1");
        let SimWithdrawal::Terminate(withdrawn) = withdraw_pending(Some(&pending), "inv_1") else {
            panic!()
        };
        // The first driver's confirm answered late: the profile it released is retired, the SIM stays ended.
        assert_eq!(
            after_confirm(Some(&withdrawn), &pending, Confirmation::Released("1$x$y")),
            AfterConfirm::Withdrawn {
                sim: withdrawn.clone(),
                retire: true
            }
        );
        // A resumed order finds it ended without calling the carrier.
        assert!(matches!(
            settled_before_confirm(&withdrawn),
            Some(AfterConfirm::Withdrawn { .. })
        ));
        // A progress report for a released profile does not bring it back either.
        let mut installed = withdrawn;
        installed.profile_state = Some(ProfileState::Installed);
        assert!(matches!(
            after_confirm(Some(&installed), &pending, Confirmation::Released("1$x$y")),
            AfterConfirm::Withdrawn { .. }
        ));
    }

    /// A tx-hash payment's pending order is parked as paid: due after its grace with no margin and, once its
    /// order ended undelivered (withdrawn, or failed otherwise), owed back on every run until acknowledged; an
    /// operator's case waits a day.
    #[test]
    fn a_paid_entry_is_owed_once_its_order_ended_undelivered_until_acknowledged() {
        let p = Parked::paid(&sim(SimState::Pending, "inv_1"), 5_000);
        assert_eq!(p, paid("inv_1", "8901", 5_000));
        assert!(!any_due(std::slice::from_ref(&p), 4_999));
        assert!(any_due(&[p], 5_000));
        // A paid order still ordering on its profile is withdrawn like any other.
        let now = 9_000;
        let lapsed = journal(OrderStatus::Ordering, Some("8901"), 0);
        assert_eq!(
            withdrawal(Some(&lapsed), "8901", now, true),
            Withdrawal::Proceed
        );
        // Failed, withdrawn or not (the owner's refresh found the reservation expired): owed.
        for error in [
            WITHDRAWN_PAID,
            WITHDRAWN,
            "no carrier could supply a profile",
        ] {
            let mut failed = lapsed.clone();
            failed.fail(error, vec![]);
            assert_eq!(
                withdrawal(Some(&failed), "8901", now, true),
                Withdrawal::Owed
            );
            // An unpaid entry's failed order is done with.
            assert_eq!(
                withdrawal(Some(&failed), "8901", now, false),
                Withdrawal::Drop
            );
        }
        // Delivered, gone, or moved on to another profile: nothing for the run to owe.
        let mut done = lapsed.clone();
        done.status = OrderStatus::Done;
        assert_eq!(withdrawal(Some(&done), "8901", now, true), Withdrawal::Drop);
        assert_eq!(withdrawal(None, "8901", now, true), Withdrawal::Drop);
        let moved = journal(OrderStatus::Ordering, Some("8902"), 0);
        assert_eq!(
            withdrawal(Some(&moved), "8901", now, true),
            Withdrawal::Drop
        );
        // Acknowledged: recorded invoices' paid entries leave; an operator's case is due again later; unpaid
        // entries and other invoices' stay as they were.
        let list = vec![
            paid("inv_1", "8901", 1),
            entry("inv_1", "8903", 1),
            paid("inv_1", "8904", 1),
            paid("inv_3", "8905", 1),
            paid("inv_4", "8906", 1),
        ];
        let (recorded, operator) = (["inv_1".to_owned()], ["inv_4".to_owned()]);
        assert_eq!(
            acknowledge(list.clone(), &recorded, &operator, 500),
            Some(vec![
                entry("inv_1", "8903", 1),
                paid("inv_3", "8905", 1),
                paid("inv_4", "8906", 500)
            ])
        );
        assert_eq!(acknowledge(list, &["inv_9".to_owned()], &[], 500), None);
    }

    /// Entries stored by an earlier build (no `paid`) read as unpaid, and an unpaid entry is stored as before.
    #[test]
    fn entries_of_earlier_builds_read_as_unpaid() {
        let old = r#"{"invoice":"inv_1","carrier":"tmobile","iccid":"8901","not_before":7}"#;
        let read: Parked = serde_json::from_str(old).unwrap();
        assert_eq!(read, entry("inv_1", "8901", 7));
        assert_eq!(serde_json::to_string(&read).unwrap(), old);
        let stored = serde_json::to_string(&paid("inv_1", "8901", 7)).unwrap();
        assert!(stored.contains(r#""paid":true"#), "{stored}");
    }
}
