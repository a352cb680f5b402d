//! Withdrawing one due parked order ([`withdraw`]): its journal claimed, its pending SIM terminated inside its
//! cell update, its profile retired at the carrier, its journal failed (kernel `order::parked`).

use esim402_core::esim::{Iccid, ProfileState, retire_on_terminate};
use esim402_core::order::parked::{self, Parked, SimWithdrawal, Withdrawal};
use esim402_core::order::{self, Claim, Cleanup, Order, OrderStatus, StoredSim};
use esim402_core::store::keys;
use esim402_guest::convert::{kv_err, message};
use esim402_guest::kv::{self, Change};
use esim402_guest::wit;

use crate::calls::{self, Deadline};
use crate::config::Config;
use crate::{journal, queue};

/// Withdraw one due entry (kernel `parked::withdrawal`, `parked::withdraw_pending`).
pub(super) async fn withdraw(cfg: &Config, item: &Parked, deadline: Deadline, now: u64) -> Outcome {
    let Parked {
        invoice,
        carrier,
        iccid,
        ..
    } = item;
    let journal = match kv::get_json::<Order, wit::Error>(&keys::order(invoice)).await {
        Ok(j) => j,
        Err(e) => {
            eprintln!(
                "dispatch: the parked order of invoice {invoice} waits: its journal cannot be read: {e}"
            );
            return Outcome::Again(item.not_before);
        }
    };
    match parked::withdrawal(journal.as_ref(), iccid, now, item.paid) {
        Withdrawal::Owed => return Outcome::Owed { now: false },
        Withdrawal::Drop => {
            return match journal.as_ref().map(|o| o.status) {
                Some(OrderStatus::Failed) => Outcome::Ended,
                Some(OrderStatus::Done) => Outcome::Finished,
                _ => Outcome::Gone,
            };
        }
        Withdrawal::Later(until) => return Outcome::Again(until),
        Withdrawal::Proceed => {}
    }
    // An unpaid entry whose order is parked as paid since (its money moved; a driver that started before that
    // parked it unpaid again): only the paid entry withdraws it, owing the payment back.
    if !item.paid && super::parked_as_paid(item).await {
        return Outcome::Finished;
    }
    let lease = order::lease_secs(cfg.budget.as_secs(), cfg.call_timeout.as_secs());
    let driver = match journal::claim(invoice, now, lease).await {
        Ok(Ok(driver)) => driver,
        // Taken by the same payment sent again meanwhile: looked at again once its lease ends.
        Ok(Err(Claim::Busy(_) | Claim::Drive(_))) => {
            return Outcome::Again(now.saturating_add(lease));
        }
        // Failed since it was read: a paid order's payment is owed back all the same.
        Ok(Err(Claim::Failed(_))) if item.paid => return Outcome::Owed { now: false },
        Ok(Err(Claim::Failed(_))) => return Outcome::Ended,
        Ok(Err(Claim::Done(_))) => return Outcome::Finished,
        Err(e) => {
            eprintln!(
                "dispatch: the parked order of invoice {invoice} waits: its journal cannot be claimed: {}",
                message(&e)
            );
            return Outcome::Again(item.not_before);
        }
    };
    // Handed back at once when nothing is withdrawn: the same payment sent again drives it without waiting.
    let hand_back = async || {
        if let Err(e) = journal::journal(&driver, Order::hand_over).await {
            eprintln!(
                "dispatch: the order of invoice {invoice} stays claimed until its lease ends: {}",
                message(&e)
            );
        }
    };
    // Claimed (so still ordering): unless a failover moved it to another profile since it was read.
    if driver.order.step.as_ref().is_none_or(|s| s.iccid != *iccid) {
        hand_back().await;
        return Outcome::Gone;
    }
    let Ok(i) = Iccid::parse(iccid) else {
        hand_back().await;
        return Outcome::Gone;
    };
    // A SIM terminated already before its code (a withdrawal that stopped before its cancel or journal, or its
    // owner's terminate) is finished, and so is an order that never stored its SIM: the profile retired, the
    // journal failed (kernel `parked::SimWithdrawal`). What to retire: the profile's state as recorded.
    let withdrawn =
        kv::change_json::<StoredSim, Option<Retire>, wit::Error>(&keys::sim(iccid), |current| {
            Ok(match parked::withdraw_pending(current.as_ref(), invoice) {
                SimWithdrawal::Terminate(next) => {
                    let profile = next.profile_state;
                    (Change::Put(next), Some(Retire::Now(profile)))
                }
                SimWithdrawal::Finish(sim) => (Change::Keep, Some(Retire::Now(sim.profile_state))),
                SimWithdrawal::Absent => (Change::Keep, Some(Retire::Queued)),
                SimWithdrawal::Nothing => (Change::Keep, None),
            })
        })
        .await
        .map_err(kv_err);
    let retire = match withdrawn {
        Ok((_, Some(retire))) => retire,
        // Delivered (terminated since or not), failed, or another order's since: nothing to withdraw.
        Ok(_) => {
            hand_back().await;
            return Outcome::Gone;
        }
        Err(e) => {
            eprintln!(
                "dispatch: the parked order of invoice {invoice} waits: SIM {iccid} cannot be updated: {}",
                message(&e)
            );
            hand_back().await;
            return Outcome::Again(item.not_before);
        }
    };
    retire_profile(cfg, item, &i, retire, deadline).await;
    let why = if item.paid {
        parked::WITHDRAWN_PAID
    } else {
        parked::WITHDRAWN
    };
    let failed = journal::journal(&driver, |o| {
        let failovers = o.failovers.clone();
        o.fail(why, failovers);
    })
    .await;
    if let Err(e) = failed {
        // Its SIM says so; the next sweep after the hold finishes it (kernel `parked::SimWithdrawal::Finish`).
        eprintln!(
            "dispatch: the journal of invoice {invoice} does not say it was withdrawn (its SIM does): {}",
            message(&e)
        );
        return Outcome::Again(item.not_before);
    }
    eprintln!(
        "dispatch: withdrew the pending order of invoice {invoice} ({why}); SIM {iccid} at {carrier} terminated"
    );
    if item.paid {
        Outcome::Owed { now: true }
    } else {
        Outcome::Withdrawn
    }
}

/// How a withdrawn order's profile is retired ([`withdraw`]).
enum Retire {
    /// Cancelled now, unless a device holds it (its state as recorded).
    Now(Option<ProfileState>),
    /// Queued: no record says who holds the ICCID now.
    Queued,
}

/// Retire the profile of a withdrawn order at its carrier ([`Retire`]). A confirm executed whose answer was lost
/// may have released it: retired, never returned to the pool (a device may hold its code). One a device
/// installed already cannot be cancelled over ES2+ (logged for an operator). With no record of ours, another
/// order may have been handed the ICCID since: the cancel is queued, and the queue sends it only if no live SIM
/// of ours holds it then (kernel `order::sweep_may_cancel`).
async fn retire_profile(
    cfg: &Config,
    item: &Parked,
    i: &Iccid,
    retire: Retire,
    deadline: Deadline,
) {
    let Parked {
        invoice,
        carrier,
        iccid,
        ..
    } = item;
    let profile_state = match retire {
        Retire::Queued => {
            let owner = Some(invoice.clone());
            let cancel = Cleanup::Cancel {
                carrier: carrier.clone(),
                iccid: iccid.clone(),
                retire: true,
                fci: None,
                invoice: owner,
            };
            return queue::enqueue(cancel).await;
        }
        Retire::Now(profile) => profile,
    };
    if retire_on_terminate(profile_state) {
        match cfg.carrier(carrier) {
            Ok(c) => {
                let owner = Some(invoice.clone());
                if let Some(left) = calls::cancel_as(cfg, c, i, true, None, deadline, owner).await {
                    queue::enqueue(left).await;
                }
            }
            Err(e) => eprintln!(
                "dispatch: ALERT: SIM {iccid} of invoice {invoice} is withdrawn, but {carrier} is no longer in \
                 the catalog: cancel its profile there by hand ({})",
                message(&e)
            ),
        }
    } else if profile_state != Some(ProfileState::Deleted) {
        eprintln!(
            "dispatch: ALERT: SIM {iccid} of invoice {invoice} is withdrawn ({}), but its profile at {carrier} is \
             {} on a device: ask the carrier to disable it",
            if item.paid {
                "its payment owed back"
            } else {
                "unpaid"
            },
            profile_state.map_or_else(
                || "installed".to_owned(),
                |p| format!("{p:?}").to_lowercase()
            )
        );
    }
}

/// What became of a taken entry ([`withdraw`]).
pub(super) enum Outcome {
    /// Withdrawn: it leaves the list.
    Withdrawn,
    /// A paid order withdrawn (`now`: by this sweep): its payment is owed back; it stays held until that is
    /// acknowledged.
    Owed { now: bool },
    /// Nothing (left) to withdraw: it leaves the list (an order that moved on to another profile parks that
    /// one's entry, under the same invoice).
    Gone,
    /// Delivered, or parked as paid: it leaves the list, and its kept request is not needed.
    Finished,
    /// An unpaid entry whose order failed (withdrawn by an earlier sweep that stopped before settling the
    /// entry, or failed otherwise): it leaves the list, and its payment is looked at again as a withdrawn one's.
    Ended,
    /// Looked at again once due then.
    Again(u64),
}
