//! The money of a SIM whose profile can never be installed (a terminal download failure, kernel
//! `esim::failure`): a payment whose activation failed is never kept. Metering closes the SIM's account with
//! [`Account::close_failed`] (a switch's balance going back to the SIM it replaced with [`Account::take_back`]),
//! and the gateway owes what [`failed_refunds`] lists through the refund job, as a terminate owes its refunds.
//!
//! Invariants:
//! - **Each invoice is owed back once** (the refund record is once per invoice, as for a terminate): the SIM's
//!   own invoice (its activation, or the switch that ordered it) is owed whole — its fee too — only while
//!   none of the data it bought was used ([`RefundShare::untouched`]); a credit partly used (which a profile
//!   never installed cannot do, unless a carrier reported usage for it) is owed its unused data only, and
//!   the fee is kept. A switch invoice buys no data: it is owed whole.
//! - **A switch's balance goes back, it is not refunded**: the credits the old SIM's account moved to the failed
//!   replacement return to the old account (still in service: a failed switch must not leave the device
//!   without its balance), and the replacement's close leaves them out of its refunds. They go back only while
//!   the old account still records the move to this SIM and owes nothing for it (not bounced): otherwise the
//!   old account already owes them (a bounce) or moved elsewhere, and the replacement keeps nothing of them
//!   either way. The close comes first: once the replacement's account is closed no grant or charge lands
//!   there, and the old account then takes its data back.
//! - **The old side is total**: if the old SIM left service (terminated) since the move, its data does not
//!   come back to a SIM nobody can use: [`Account::take_back`] fixes the moved credits (less what the old SIM
//!   used since the move) as the old account's refunds instead, as a bounce does, which its terminate's refund
//!   owes (`close` returns them). Whether the terminate came before the replacement's close read the move or
//!   between that close and the take-back (a store error failing the callback in between, the terminate before
//!   the SM-DP+ retries), the replacement's close left them out and the old account owes them, once; before,
//!   the terminate in between left them owed by nobody.
//! - **A byte is charged once**: the old SIM stays in use while its replacement never installs, and what it
//!   reports after the move counts on its own used counter and is also handed on to the replacement's. Taken
//!   back, the old account counts all of it against its credits again, so the replacement is closed at its own
//!   use only ([`Returnable::own_use`]: its counter less what the old SIM handed on since the move), never
//!   at those bytes a second time.
//! - **The data back is sent a hold that wins**: [`Account::take_back`] decides the old SIM's balance hold
//!   afresh (a release if a balance is left) at an epoch past its own and the failed replacement's, whatever
//!   hold for it dispatch applied last (an earlier build sent it the replacement's holds, in the replacement's
//!   epochs).
//! - **Fixed by the first close**: a repeat (the SM-DP+ sends the notification again) returns the same shares.

use crate::esim::iccid::Iccid;
use crate::usage::account::{Account, Credit, LateRate, RefundShare, unused_shares};

/// What a switch moved from the SIM it replaced to a replacement that failed, and may go back
/// ([`Account::returnable_to`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Returnable {
    /// The invoices of the moved credits: left out of the replacement's refunds ([`Account::close_failed`]).
    pub invoices: Vec<String>,
    /// The old account's used counter when the move was made, if the old SIM hands its later usage on (an
    /// account moved before the mark existed hands nothing on): what its counter holds beyond this went to the
    /// replacement's counter too. When nothing was left to move (the balance was used up) only a lower bound is
    /// known, its credited bytes.
    pub used_at_move: Option<u64>,
    /// The rates the old SIM's usage was handed on at, if the move changed carrier ([`Account::late_rate`]).
    pub late_rate: Option<LateRate>,
}

impl Returnable {
    /// The replacement's own use: its used counter `used_new` less the bytes the old SIM handed on to it since
    /// the move, those the old account counts again once it takes its data back. `used_old` is the old SIM's
    /// counter read *after* `used_new` (a byte is handed on only once counted there, so it is in `used_old`
    /// before it can be in `used_new`): what was counted in between is left out here too, in the payer's favour,
    /// never charged twice.
    pub fn own_use(&self, used_new: u64, used_old: u64) -> u64 {
        let handed_on = self.used_at_move.map_or(0, |at| match &self.late_rate {
            Some(rate) => rate.handed_on(at, used_old),
            None => used_old.saturating_sub(at),
        });
        used_new.saturating_sub(handed_on)
    }
}

impl Account {
    /// What this account (the SIM a switch replaced) moved to `to`, if it goes back to it: the move to `to` is
    /// recorded and owes nothing (not bounced, nor owed already by [`Account::take_back`]). It goes back whether
    /// or not the SIM is still in service: taken back as data if it is, owed as this account's refunds if it
    /// was terminated since the move ([`Account::take_back`]), so the failed replacement's close always leaves
    /// it out.
    pub fn returnable_to(&self, to: &Iccid) -> Option<Returnable> {
        let (dest, moved) = self.moved_to.as_ref()?;
        let untouched_move = self.closed.as_ref().is_some_and(Vec::is_empty);
        (dest == to && untouched_move).then(|| Returnable {
            invoices: moved.iter().map(|c| c.invoice.clone()).collect(),
            used_at_move: self.forwarded_up_to.map(|_| self.used_at_move(moved)),
            late_rate: self.late_rate,
        })
    }

    /// The used counter at [`Account::transfer_out`], from what it left: the credits are kept as they were and
    /// `moved` is their unused part at that counter (oldest first), so the counter was what the credits hold
    /// beyond `moved`. Exact when anything moved; otherwise the credited bytes, a lower bound.
    fn used_at_move(&self, moved: &[Credit]) -> u64 {
        let left: u64 = moved.iter().fold(0, |sum, c| sum.saturating_add(c.bytes));
        self.credited().saturating_sub(left)
    }

    /// Close the account of a SIM whose profile can never be installed at `used`: its refunds, as
    /// [`Account::close`] computes them, less the credits of the invoices in `returned` (a switch's balance,
    /// which goes back to the old SIM, [`Account::take_back`]; `used` is then the SIM's own use,
    /// [`Returnable::own_use`]). Fixed by the first close; a repeat returns the same shares.
    pub fn close_failed(&mut self, used: u64, returned: &[String]) -> Vec<RefundShare> {
        if let Some(done) = &self.closed {
            return done.clone();
        }
        let shares: Vec<RefundShare> =
            unused_shares(&self.credits, used.saturating_sub(self.spent.bytes))
                .into_iter()
                .filter(|s| !returned.contains(&s.invoice))
                .collect();
        self.closed = Some(shares.clone());
        self.closing = false;
        shares
    }

    /// The switch that moved this account's data to `from` failed for good (`from`'s profile can never be
    /// installed, and its account is closed): take the data back, as if it had never moved. The account's
    /// credits are still those it had ([`Account::transfer_out`] keeps them), and its used counter has counted
    /// every byte the SIM reported since (handed on to `from` too, whose close left them out:
    /// [`Returnable::own_use`]), so the balance is what it would be without the switch. `true` if it changed;
    /// `false` when [`Account::returnable_to`] says the data may not come back (a repeat finds it back already).
    ///
    /// The balance hold is decided afresh with the data back, at the used counter `used` (any value read
    /// before: it only grows): released if the balance has some left, held otherwise, with a hold epoch past
    /// both this account's and `past`, the failed replacement's ([`Account::hold`]). Its dispatch record may
    /// hold any epoch the replacement's account reached: an earlier build sent a switched-away SIM the new SIM's
    /// holds under the new SIM's epochs, and this account counted none of them (not suspended, at a lower
    /// epoch), so a release at this account's own epoch would be ignored and the SIM left suspended with a
    /// balance. The hold sent now is newer than any of those.
    ///
    /// A SIM terminated since the move (or being closed) takes no data back: the moved credits, less what it
    /// used since the move (`used` beyond [`Returnable::used_at_move`], handed on to the replacement, whose
    /// close left it out), are fixed as this account's refunds, as [`Account::bounce`] fixes them, which its
    /// terminate's refund owes ([`Account::close`] returns them). `true` then too; a repeat changes nothing.
    pub fn take_back(&mut self, from: &Iccid, used: u64, past: u64) -> bool {
        let Some(back) = self.returnable_to(from) else {
            return false;
        };
        if self.closing || self.closed_at.is_some() {
            let since_move = back.used_at_move.map_or(0, |at| used.saturating_sub(at));
            let moved = self
                .moved_to
                .as_ref()
                .map_or(&[][..], |(_, m)| m.as_slice());
            let shares = unused_shares(moved, since_move)
                .into_iter()
                .map(|s| RefundShare {
                    untouched: false,
                    ..s
                })
                .collect();
            self.closed = Some(shares);
            return true;
        }
        self.moved_to = None;
        self.moved_at = None;
        self.closed = None;
        self.forwarded_up_to = None;
        self.late_rate = None;
        self.suspended_for_balance = self.remaining(used) <= 0;
        self.hold_epoch = self.hold_epoch.max(past) + 1;
        true
    }
}

/// One refund a failed SIM owes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FailedRefund {
    /// A credit's unused data, owed at its value as a terminate owes it.
    Data(RefundShare),
    /// The whole payment of the SIM's own invoice, its fee included: `share` is the data it bought, none of it
    /// used (`None`: it bought none, a switch, or its credit is not in the account).
    Whole {
        /// The SIM's invoice.
        invoice: String,
        /// Its data, untouched.
        share: Option<RefundShare>,
    },
}

/// What a SIM whose profile can never be installed owes back, from its account's refunds (`shares`,
/// [`Account::close_failed`]): its own invoice `own` whole if its data was untouched, or if it bought no data
/// (`bought_data` false: a switch's fee); every other credit's unused data as a terminate owes it. An
/// activation whose credit is not among the shares (used up, or it never landed) owes nothing here: a credit
/// arriving after the close is refused and owed back by the credit itself.
pub fn failed_refunds(shares: Vec<RefundShare>, own: &str, bought_data: bool) -> Vec<FailedRefund> {
    let mut named = false;
    let mut out: Vec<FailedRefund> = shares
        .into_iter()
        .map(|share| {
            if share.invoice != own {
                return FailedRefund::Data(share);
            }
            named = true;
            if share.untouched {
                FailedRefund::Whole {
                    invoice: share.invoice.clone(),
                    share: Some(share),
                }
            } else {
                FailedRefund::Data(share)
            }
        })
        .collect();
    if !bought_data && !named {
        out.push(FailedRefund::Whole {
            invoice: own.to_owned(),
            share: None,
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::esim::plmn::RoamingPolicy;
    use crate::ids::CarrierId;
    use crate::money::UsdcAmount;
    use crate::usage::account::{Credit, CreditKind};

    fn iccid(n: &str) -> Iccid {
        Iccid::parse(n).unwrap()
    }

    const OLD: &str = "8944478600003770170";
    const NEW: &str = "8901260000000000014";

    fn credit(invoice: &str, kind: CreditKind, bytes: u64, paid: u64) -> Credit {
        Credit {
            invoice: invoice.into(),
            kind,
            bytes,
            paid: UsdcAmount::from_micros(paid),
            payer: "0xpayer".into(),
            tx: format!("0xtx-{invoice}"),
            network: "eip155:84532".into(),
            at: 1,
        }
    }

    fn account(sim: &str, first: Credit) -> Account {
        Account::open(
            iccid(sim),
            CarrierId::parse("tmobile").unwrap(),
            RoamingPolicy::default(),
            first,
            0,
        )
    }

    #[test]
    fn an_untouched_activation_is_owed_whole_and_a_used_one_its_data() {
        let mut a = account(
            NEW,
            credit("inv_act", CreditKind::Activation, 1_000_000, 3_000),
        );
        a.credit(credit("inv_top", CreditKind::TopUp, 10_000_000, 30_000), 0)
            .unwrap();
        let shares = a.close_failed(0, &[]);
        assert!(shares.iter().all(|s| s.untouched), "{shares:?}");
        let owed = failed_refunds(shares.clone(), "inv_act", true);
        assert_eq!(
            owed,
            vec![
                FailedRefund::Whole {
                    invoice: "inv_act".into(),
                    share: Some(shares[0].clone()),
                },
                FailedRefund::Data(shares[1].clone()),
            ]
        );
        // Fixed once: a repeat returns the same shares (and owes the same).
        assert_eq!(a.close_failed(500_000, &[]), shares);

        // Some of the activation's data was used (a carrier reported usage): its unused data only.
        let mut b = account(
            NEW,
            credit("inv_act", CreditKind::Activation, 1_000_000, 3_000),
        );
        let shares = b.close_failed(250_000, &[]);
        assert_eq!(
            (shares[0].amount.micros(), shares[0].untouched),
            (2_250, false)
        );
        assert_eq!(
            failed_refunds(shares.clone(), "inv_act", true),
            vec![FailedRefund::Data(shares[0].clone())]
        );
        // Used up entirely: nothing of it is owed, and the whole payment is not either.
        let mut c = account(
            NEW,
            credit("inv_act", CreditKind::Activation, 1_000_000, 3_000),
        );
        assert_eq!(
            failed_refunds(c.close_failed(1_000_000, &[]), "inv_act", true),
            vec![]
        );
    }

    #[test]
    fn a_switch_fee_is_owed_whole_and_its_balance_goes_back_to_the_old_sim() {
        let (old_iccid, new_iccid) = (iccid(OLD), iccid(NEW));
        let mut old = account(
            OLD,
            credit("inv_act", CreditKind::Activation, 10_000_000, 30_000),
        );
        let before = old.clone();
        // 4 MB used, then the switch moves the 6 MB left to the new SIM.
        let moved = old.transfer_out(&new_iccid, 4_000_000, 100).unwrap();
        let mut new = Account::opened_with(
            new_iccid.clone(),
            CarrierId::parse("verizon").unwrap(),
            RoamingPolicy::default(),
            moved,
            100,
        );
        new.replaces = Some(old_iccid.clone());
        // A top-up bought on the new SIM before it failed.
        new.credit(credit("inv_top", CreditKind::TopUp, 10_000_000, 30_000), 0)
            .unwrap();
        let returned = old.returnable_to(&new_iccid).unwrap().invoices;
        assert_eq!(returned, ["inv_act"]);
        assert_eq!(old.returnable_to(&old_iccid), None, "moved elsewhere");
        // The old SIM reported 1 MB more after the move (handed on to the new SIM's counter too).
        let shares = new.close_failed(1_000_000, &returned);
        assert_eq!(shares.len(), 1, "only the new SIM's own top-up: {shares:?}");
        assert_eq!(
            (shares[0].invoice.as_str(), shares[0].amount.micros()),
            ("inv_top", 30_000)
        );
        assert_eq!(
            failed_refunds(shares.clone(), "inv_switch", false),
            vec![
                FailedRefund::Data(shares[0].clone()),
                FailedRefund::Whole {
                    invoice: "inv_switch".into(),
                    share: None,
                },
            ]
        );
        // The old account takes its data back, as if it had never moved: 10 MB less the 5 MB it used.
        assert!(old.take_back(&new_iccid, 0, 0));
        assert_eq!(
            Account {
                hold_epoch: before.hold_epoch,
                ..old.clone()
            },
            before
        );
        assert_eq!(old.remaining(5_000_000), 5_000_000);
        assert!(
            old.credit(credit("inv_top2", CreditKind::TopUp, 1, 1), 5_000_000)
                .is_ok()
        );
        // A repeat changes nothing.
        assert!(!old.take_back(&new_iccid, 0, 0));
    }

    #[test]
    fn a_bounced_or_closing_move_does_not_come_back() {
        let new_iccid = iccid(NEW);
        let mut old = account(
            OLD,
            credit("inv_act", CreditKind::Activation, 10_000_000, 30_000),
        );
        old.transfer_out(&new_iccid, 0, 100).unwrap();
        // The new SIM refused the move (it was terminated): the old account owes it, it does not come back.
        old.bounce(&new_iccid).unwrap();
        assert_eq!(old.returnable_to(&new_iccid), None);
        assert!(!old.take_back(&new_iccid, 0, 0));
        assert_eq!(old.closed.as_ref().map(Vec::len), Some(1));
        // Never moved: nothing to take back.
        let mut plain = account(
            OLD,
            credit("inv_act", CreditKind::Activation, 1_000_000, 3_000),
        );
        assert!(!plain.take_back(&new_iccid, 0, 0));
    }

    /// The old SIM stays in use while its replacement never installs: 6 MB move, the owner tops the
    /// replacement up with 10 MB, and the old SIM reports 8 MB (handed on to the replacement's counter, and
    /// counted on its own). The replacement fails: its top-up is owed whole, and the old SIM, its 10 MB back,
    /// counts all 12 MB it used (2 MB below zero, held for want of balance), each byte charged once. Before,
    /// the replacement was closed at the 8 MB handed on, taking 2 MB of the top-up, and the old SIM counted
    /// the same 2 MB again. Whether the top-up landed before or after the usage (which folds the moved credit
    /// away) does not matter.
    #[test]
    fn usage_the_old_sim_handed_on_goes_back_with_its_balance_and_is_not_charged_twice() {
        let (old_iccid, new_iccid) = (iccid(OLD), iccid(NEW));
        for top_up_first in [true, false] {
            let mut old = account(
                OLD,
                credit("inv_act", CreditKind::Activation, 10_000_000, 30_000),
            );
            let moved = old.transfer_out(&new_iccid, 4_000_000, 100).unwrap();
            assert_eq!(moved[0].bytes, 6_000_000);
            let mut new = Account::opened_with(
                new_iccid.clone(),
                CarrierId::parse("tmobile").unwrap(),
                RoamingPolicy::default(),
                moved,
                100,
            );
            new.replaces = Some(old_iccid.clone());
            let (mut used_old, mut used_new) = (4_000_000_u64, 0_u64);
            let top_up = credit("inv_top", CreditKind::TopUp, 10_000_000, 30_000);
            if top_up_first {
                new.credit(top_up.clone(), used_new).unwrap();
            }
            // The old SIM's 8 MB, in two batches, each handed on.
            for bytes in [5_000_000, 3_000_000] {
                used_old += bytes;
                let (to, handed) = old.forward(used_old).unwrap();
                assert_eq!(to, new_iccid);
                used_new += handed;
            }
            if !top_up_first {
                new.credit(top_up.clone(), used_new).unwrap();
                assert_eq!(new.spent.bytes, 6_000_000, "the moved credit folded away");
            }
            assert_eq!(used_new, 8_000_000);

            let returnable = old.returnable_to(&new_iccid).unwrap();
            assert_eq!(
                returnable,
                Returnable {
                    invoices: vec!["inv_act".into()],
                    used_at_move: Some(4_000_000),
                    late_rate: None,
                }
            );
            let own = returnable.own_use(used_new, used_old);
            let shares = new.close_failed(own, &returnable.invoices);
            assert_eq!(shares.len(), 1, "{shares:?}");
            assert_eq!(
                (
                    shares[0].invoice.as_str(),
                    shares[0].bytes,
                    shares[0].amount.micros(),
                    shares[0].untouched
                ),
                ("inv_top", 10_000_000, 30_000, true),
                "the top-up whole (top-up first: {top_up_first})"
            );
            assert_eq!(own, 0, "the replacement itself used nothing");
            assert!(old.take_back(&new_iccid, 0, 0));
            assert_eq!(old.credited(), 10_000_000);
            assert_eq!(old.remaining(used_old), -2_000_000);
            assert!(old.exhausted(used_old), "held for want of balance");
            // Its later usage stays its own.
            assert_eq!(old.forward(used_old + 1), None);
        }
        // Usage the replacement reported itself (a carrier's report for a profile never installed) is its own;
        // a byte the old SIM counted after the replacement's counter was read is not charged here either.
        let r = Returnable {
            invoices: vec!["inv_act".into()],
            used_at_move: Some(4_000_000),
            late_rate: None,
        };
        assert_eq!(r.own_use(9_000_000, 12_000_000), 1_000_000);
        assert_eq!(r.own_use(9_000_000, 12_500_000), 500_000);
        // Nothing moved (used up at the move): the credited bytes bound the counter then, from below.
        let mut dry = account(
            OLD,
            credit("inv_act", CreditKind::Activation, 1_000_000, 3_000),
        );
        assert_eq!(
            dry.transfer_out(&new_iccid, 1_200_000, 100).unwrap(),
            vec![]
        );
        assert_eq!(
            dry.returnable_to(&new_iccid).unwrap().used_at_move,
            Some(1_000_000)
        );
    }

    /// The old SIM terminated while its replacement failed: `fail` read the move (untouched), closed the
    /// replacement leaving the moved credit out, and the old SIM's terminate landed before the take-back (or
    /// before the read). The take-back owes the moved credit as the old account's refunds (its 6 MB less the
    /// 1 MB the old SIM used since the move, handed on), which its `close` returns: owed once. Before, the
    /// terminate made the move not returnable, the take-back changed nothing, and the old account's close
    /// returned no refunds: the moved value was owed by nobody. Taken back before the terminate, the data is
    /// the old account's again and its terminate refunds it as usual, once.
    #[test]
    fn a_move_back_to_a_sim_terminated_meanwhile_is_owed_once_by_it() {
        let (old_iccid, new_iccid) = (iccid(OLD), iccid(NEW));
        let setup = || {
            let mut old = account(
                OLD,
                credit("inv_act", CreditKind::Activation, 10_000_000, 30_000),
            );
            let moved = old.transfer_out(&new_iccid, 4_000_000, 100).unwrap();
            let mut new = Account::opened_with(
                new_iccid.clone(),
                CarrierId::parse("tmobile").unwrap(),
                RoamingPolicy::default(),
                moved,
                100,
            );
            new.replaces = Some(old_iccid.clone());
            (old, new)
        };
        let owed = |shares: &[RefundShare]| -> Vec<(String, u64, u64)> {
            shares
                .iter()
                .map(|s| (s.invoice.clone(), s.bytes, s.amount.micros()))
                .collect()
        };
        // The old SIM used 1 MB after the move (4 MB → 5 MB on its counter).
        let used_old = 5_000_000;

        // Terminated between the replacement's close and the take-back.
        let (mut old, mut new) = setup();
        let r = old.returnable_to(&new_iccid).unwrap();
        assert!(new.close_failed(0, &r.invoices).is_empty(), "left out");
        assert_eq!(old.terminate(used_old, 200), vec![], "the balance is away");
        assert!(old.take_back(&new_iccid, used_old, 0));
        let expected = vec![("inv_act".to_owned(), 5_000_000, 15_000)];
        assert_eq!(owed(&old.terminate(used_old, 300)), expected);
        assert_eq!(owed(&old.close(used_old)), expected, "close returns them");
        assert!(old.closed.as_ref().unwrap().iter().all(|s| !s.untouched));
        assert!(old.moved_to.is_some(), "no data back on a terminated SIM");
        // A repeat (the SM-DP+ sends the notification again) owes nothing more.
        assert_eq!(old.returnable_to(&new_iccid), None);
        assert!(!old.take_back(&new_iccid, used_old + 9, 0));
        assert_eq!(owed(&old.close(used_old)), expected);

        // Terminated before `fail` read the move: the same, the replacement still leaves it out.
        let (mut old, mut new) = setup();
        old.terminate(used_old, 200);
        let r = old.returnable_to(&new_iccid).expect("still goes back");
        assert!(new.close_failed(0, &r.invoices).is_empty());
        assert!(old.take_back(&new_iccid, used_old, 0));
        assert_eq!(owed(&old.close(used_old)), expected);

        // Taken back before the terminate: the old SIM's own refund, at its counter.
        let (mut old, mut new) = setup();
        let r = old.returnable_to(&new_iccid).unwrap();
        assert!(new.close_failed(0, &r.invoices).is_empty());
        assert!(old.take_back(&new_iccid, used_old, 0));
        assert_eq!(owed(&old.terminate(used_old, 300)), expected);
        assert!(!old.take_back(&new_iccid, used_old, 0), "nothing twice");
        assert_eq!(owed(&old.terminate(used_old, 400)), expected);
    }

    /// A SIM held with its replacement's balance (`Account::follow`) is released when it takes its data back,
    /// if that leaves a balance, with its own next epoch; one whose own balance is used up stays held.
    #[test]
    fn data_taken_back_releases_a_hold_that_followed_the_replacement() {
        let new_iccid = iccid(NEW);
        let mut old = account(
            OLD,
            credit("inv_act", CreditKind::Activation, 10_000_000, 30_000),
        );
        old.transfer_out(&new_iccid, 4_000_000, 100).unwrap();
        assert!(old.follow(true, 0));
        assert_eq!(old.hold(), Some((true, 1)));
        let mut dry = old.clone();
        assert!(old.take_back(&new_iccid, 9_000_000, 0));
        assert_eq!(old.hold(), Some((false, 2)), "1 MB left: released");
        assert!(dry.take_back(&new_iccid, 10_000_000, 0));
        assert_eq!(dry.hold(), Some((true, 2)), "nothing left: still held");
    }

    /// A SIM switched away under an earlier build was held with its replacement's holds under the
    /// replacement's epochs (its dispatch record: suspended at the new SIM's epoch 5), while its own account
    /// counted nothing (not suspended, at its own epoch 2). The replacement fails and the data comes back with a
    /// balance: the hold it is sent is a release past epoch 5, which dispatch applies. Before, nothing changed
    /// its own hold (it was not suspended), so it was sent `(false, 2)`, which dispatch ignored (not newer than
    /// 5): the SIM stayed suspended with a paid balance. One with its balance used up is held, past 5 as well.
    #[test]
    fn data_taken_back_is_sent_a_hold_past_any_epoch_of_the_replacement() {
        use crate::esim::{Holds, SimState, balance_hold};
        let new_iccid = iccid(NEW);
        let mut old = account(
            OLD,
            credit("inv_act", CreditKind::Activation, 10_000_000, 30_000),
        );
        // Its own account: held once, released by a top-up (epoch 2), then switched away.
        assert!(old.exhausted(10_000_000));
        let top_up = credit("inv_top", CreditKind::TopUp, 1_000_000, 3_000);
        assert_eq!(old.credit(top_up, 10_000_000), Ok(true));
        assert_eq!(old.hold(), Some((false, 2)));
        old.transfer_out(&new_iccid, 10_500_000, 100).unwrap();
        // Its dispatch record, as the earlier build left it: suspended by the new SIM's hold at epoch 5.
        let replacement_epoch = 5;
        let (state, holds) =
            balance_hold(SimState::Active, Holds::default(), true, replacement_epoch).unwrap();
        assert_eq!(state, SimState::Suspended);

        let mut dry = old.clone();
        assert!(old.take_back(&new_iccid, 10_600_000, replacement_epoch));
        let (held, epoch) = old.hold().unwrap();
        assert_eq!(
            (held, epoch),
            (false, 6),
            "a release past the replacement's epoch"
        );
        let applied = balance_hold(state, holds, held, epoch).expect("applied");
        assert_eq!(applied.0, SimState::Active, "resumed with its balance");
        assert!(
            !old.take_back(&new_iccid, 10_600_000, replacement_epoch),
            "once"
        );

        // Its balance used up meanwhile: held, past 5 too.
        assert!(dry.take_back(&new_iccid, 11_000_000, replacement_epoch));
        assert_eq!(dry.hold(), Some((true, 6)));
        assert!(balance_hold(state, holds, true, 6).is_some());
    }
}
