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
//! - **Fixed by the first close**: a repeat (the SM-DP+ sends the notification again) returns the same shares.

use crate::esim::iccid::Iccid;
use crate::usage::account::{Account, RefundShare, unused_shares};

impl Account {
    /// The invoices of the credits this account (the SIM a switch replaced) moved to `to`, if they may go back
    /// to it: the move to `to` is recorded and owes nothing (not bounced), and the account is not being closed.
    pub fn returnable_to(&self, to: &Iccid) -> Option<Vec<String>> {
        let (dest, moved) = self.moved_to.as_ref()?;
        let untouched_move = self.closed.as_ref().is_some_and(Vec::is_empty);
        (dest == to && untouched_move && !self.closing)
            .then(|| moved.iter().map(|c| c.invoice.clone()).collect())
    }

    /// Close the account of a SIM whose profile can never be installed at `used`: its refunds, as
    /// [`Account::close`] computes them, less the credits of the invoices in `returned` (a switch's balance,
    /// which goes back to the old SIM, [`Account::take_back`]). Fixed by the first close; a repeat returns the
    /// same shares.
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
    /// every byte the SIM reported since (handed on to `from` too, which no longer matters), so the balance is
    /// what it would be without the switch. `true` if it changed; `false` when [`Account::returnable_to`] says
    /// the data may not come back (a repeat finds it back already).
    pub fn take_back(&mut self, from: &Iccid) -> bool {
        if self.returnable_to(from).is_none() {
            return false;
        }
        self.moved_to = None;
        self.moved_at = None;
        self.closed = None;
        self.forwarded_up_to = None;
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
        let returned = old.returnable_to(&new_iccid).unwrap();
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
        assert!(old.take_back(&new_iccid));
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
        assert!(!old.take_back(&new_iccid));
    }

    #[test]
    fn a_bounced_or_closing_move_does_not_come_back() {
        let new_iccid = iccid(NEW);
        let mut old = account(
            OLD,
            credit("inv_act", CreditKind::Activation, 10_000_000, 30_000),
        );
        old.transfer_out(&new_iccid, 0, 100).unwrap();
        let mut closing = old.clone();
        closing.closing = true;
        assert_eq!(closing.returnable_to(&new_iccid), None);
        assert!(!closing.take_back(&new_iccid));
        // The new SIM refused the move (it was terminated): the old account owes it, it does not come back.
        old.bounce(&new_iccid).unwrap();
        assert_eq!(old.returnable_to(&new_iccid), None);
        assert!(!old.take_back(&new_iccid));
        assert_eq!(old.closed.as_ref().map(Vec::len), Some(1));
        // Never moved: nothing to take back.
        let mut plain = account(
            OLD,
            credit("inv_act", CreditKind::Activation, 1_000_000, 3_000),
        );
        assert!(!plain.take_back(&new_iccid));
    }
}
