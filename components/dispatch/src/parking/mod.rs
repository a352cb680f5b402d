//! Pending orders parked until their payment can no longer settle (`cleanup/parked`, kernel `order::parked`).
//! An order left pending (its confirm outlived the budget) whose payment may expire is parked; if nobody
//! completes it, the cleanup sweep of a later order withdraws it once it is due: the journal claimed (so the
//! same payment sent again meanwhile finds the order busy), the pending SIM terminated inside its cell update,
//! the profile retired at the carrier, the journal failed (a resend ends uncharged). A tx-hash payment's order
//! (its money moved) is parked as paid: only the operator's run (`run-cleanup`) withdraws it, after
//! `paid_order_pending_secs`, and names its invoice as owed until told the refund is recorded (`settle-owed`).

use esim402_core::esim::{Iccid, ProfileState, retire_on_terminate};
use esim402_core::order::parked::{self, Park, Parked, SimWithdrawal, Withdrawal};
use esim402_core::order::{self, Claim, Order, StoredSim};
use esim402_core::store::keys;
use esim402_guest::convert::{kv_err, message};
use esim402_guest::kv::{self, Change};
use esim402_guest::wit;

use crate::calls::{self, Deadline};
use crate::config::Config;
use crate::spec::Withdraw;
use crate::{journal, queue};

/// `sim`, the pending SIM an order returns: parked first ([`Withdraw`]; `None`: never withdrawn). Best effort:
/// a failure is logged.
pub async fn pending(cfg: &Config, withdraw: Option<Withdraw>, sim: StoredSim) -> StoredSim {
    match withdraw {
        Some(Withdraw::UnsettledAfter(after)) => park(&Parked::of(&sim, after)).await,
        Some(Withdraw::Paid { since }) => {
            park(&Parked::paid(
                &sim,
                since.saturating_add(cfg.paid_pending_secs),
            ))
            .await;
        }
        None => {}
    }
    sim
}

/// The list an entry is kept in: a paid one under a key of its own, which earlier builds never rewrite.
fn key_of(paid: bool) -> &'static str {
    if paid {
        keys::CLEANUP_PARKED_PAID
    } else {
        keys::CLEANUP_PARKED
    }
}

/// Park `item` in its list (once per order's profile; not beyond [`parked::MAX_PARKED`]).
async fn park(item: &Parked) {
    let r = kv::change_json::<Vec<Parked>, bool, ()>(key_of(item.paid), |list| {
        Ok(
            match parked::park(list.unwrap_or_default(), item, parked::MAX_PARKED) {
                Park::Add(list) => (Change::Put(list), true),
                Park::Already => (Change::Keep, true),
                Park::Full => (Change::Keep, false),
            },
        )
    })
    .await;
    match r {
        Ok((_, true)) => {}
        Ok((_, false)) => eprintln!(
            "dispatch: ALERT: too many pending orders parked; profile {} at {} (invoice {}) is not withdrawn \
             if its payment never completes: an operator must cancel it after {}{}",
            item.iccid,
            item.carrier,
            item.invoice,
            item.not_before,
            if item.paid {
                " and refund its payment (its money moved)"
            } else {
                ""
            }
        ),
        Err(e) => eprintln!(
            "dispatch: cannot park the pending order of invoice {} (profile {} at {}): {e}",
            item.invoice, item.iccid, item.carrier
        ),
    }
}

/// Take up to `max` entries of the list at `key` due at `now` atomically, held until `lease_until` (kernel
/// `parked::take_due`): two sweeps never take the same one, and one a sweep never [`settle`]s (it crashed) is
/// due again after the hold. The common case is nothing due: a plain read, so concurrent orders do not contend
/// on a write.
async fn take_due(key: &str, max: usize, now: u64, lease_until: u64) -> Vec<Parked> {
    match kv::get_json::<Vec<Parked>, ()>(key).await {
        Ok(Some(list)) if parked::any_due(&list, now) => {}
        _ => return Vec::new(),
    }
    kv::update_json_with::<Vec<Parked>, Vec<Parked>, ()>(key, |list| {
        Ok(parked::take_due(
            list.unwrap_or_default(),
            max,
            now,
            lease_until,
        ))
    })
    .await
    .map(|(_, taken)| taken)
    .unwrap_or_default()
}

/// Settle an entry this sweep took (kernel `parked::settle`): gone (`next` `None`) or due again at `next`. A
/// failed write leaves it held: due again after the hold.
async fn settle(item: &Parked, lease_until: u64, next: Option<u64>) {
    let r = kv::change_json::<Vec<Parked>, (), ()>(key_of(item.paid), |list| {
        Ok(
            match parked::settle(list.unwrap_or_default(), item, lease_until, next) {
                Some(list) => (Change::Put(list), ()),
                None => (Change::Keep, ()),
            },
        )
    })
    .await;
    if let Err(e) = r {
        eprintln!(
            "dispatch: cannot settle the parked order of invoice {} (looked at again after its hold): {e}",
            item.invoice
        );
    }
}

/// What a sweep of the parked orders did ([`sweep`]).
#[derive(Debug, Default)]
pub struct Withdrawn {
    /// Orders withdrawn by this sweep.
    pub count: u32,
    /// Invoices of paid orders withdrawn (by this sweep or an earlier one) whose payment is owed back: their
    /// entries stay held until [`acknowledge`]d, and are named again after the hold.
    pub owed: Vec<String>,
}

/// Withdraw up to `max` parked orders due at `now` (and up to `max` paid ones with `paid_too`: the operator's
/// run), within the sweep's `deadline`, holding them until `lease_until`; an entry not reached in time is due
/// again as it was.
pub async fn sweep(
    cfg: &Config,
    deadline: Deadline,
    max: usize,
    (now, lease_until): (u64, u64),
    paid_too: bool,
) -> Withdrawn {
    let mut done = Withdrawn::default();
    let mut taken = take_due(keys::CLEANUP_PARKED, max, now, lease_until).await;
    if paid_too {
        taken.extend(take_due(keys::CLEANUP_PARKED_PAID, max, now, lease_until).await);
    }
    for item in taken {
        let next = if deadline.next_call().is_none() {
            Some(item.not_before)
        } else {
            match withdraw(cfg, &item, deadline, now).await {
                Outcome::Withdrawn => {
                    done.count = done.count.saturating_add(1);
                    None
                }
                Outcome::Owed { now } => {
                    if now {
                        done.count = done.count.saturating_add(1);
                    }
                    if !done.owed.contains(&item.invoice) {
                        done.owed.push(item.invoice.clone());
                    }
                    // Held as taken until the refund is acknowledged (or the hold ends: named again).
                    continue;
                }
                Outcome::Gone => None,
                Outcome::Again(at) => Some(at),
            }
        };
        settle(&item, lease_until, next).await;
    }
    done
}

/// `settle-owed`: of the invoices a run named owed, those in `recorded` have their refunds recorded (their paid
/// entries leave) and those in `operator` need an operator (looked at again a day after `now`, kernel
/// `parked::OPERATOR_RETRY_SECS`). How many entries left.
pub async fn acknowledge(
    recorded: &[String],
    operator: &[String],
    now: u64,
) -> Result<u32, wit::Error> {
    if recorded.is_empty() && operator.is_empty() {
        return Ok(0);
    }
    let later = now.saturating_add(parked::OPERATOR_RETRY_SECS);
    let key = keys::CLEANUP_PARKED_PAID;
    let (_, left) = kv::change_json::<Vec<Parked>, u32, wit::Error>(key, |list| {
        let list = list.unwrap_or_default();
        let before = list.len();
        Ok(match parked::acknowledge(list, recorded, operator, later) {
            Some(list) => {
                let left = u32::try_from(before - list.len()).unwrap_or(u32::MAX);
                (Change::Put(list), left)
            }
            None => (Change::Keep, 0),
        })
    })
    .await
    .map_err(kv_err)?;
    Ok(left)
}

/// How many entries are parked, paid ones and held ones included (an unreadable list counts none).
pub async fn parked_len() -> usize {
    let mut n = 0;
    for key in [keys::CLEANUP_PARKED, keys::CLEANUP_PARKED_PAID] {
        n += kv::get_json::<Vec<Parked>, ()>(key)
            .await
            .ok()
            .flatten()
            .map_or(0, |l| l.len());
    }
    n
}

/// Withdraw one due entry (kernel `parked::withdrawal`, `parked::withdraw_pending`).
async fn withdraw(cfg: &Config, item: &Parked, deadline: Deadline, now: u64) -> Outcome {
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
        Withdrawal::Drop => return Outcome::Gone,
        Withdrawal::Later(until) => return Outcome::Again(until),
        Withdrawal::Proceed => {}
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
        Ok(Err(Claim::Done(_) | Claim::Failed(_))) => return Outcome::Gone,
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
    let withdrawn = kv::change_json::<StoredSim, Option<Option<ProfileState>>, wit::Error>(
        &keys::sim(iccid),
        |current| {
            Ok(match parked::withdraw_pending(current.as_ref(), invoice) {
                SimWithdrawal::Terminate(next) => {
                    let profile = next.profile_state;
                    (Change::Put(next), Some(profile))
                }
                SimWithdrawal::Finish(sim) => (Change::Keep, Some(sim.profile_state)),
                SimWithdrawal::Absent => (Change::Keep, Some(None)),
                SimWithdrawal::Nothing => (Change::Keep, None),
            })
        },
    )
    .await
    .map_err(kv_err);
    let profile_state = match withdrawn {
        Ok((_, Some(profile))) => profile,
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
    // A confirm executed whose answer was lost may have released the profile: retired, never returned to the
    // pool (a device may hold its code). One a device installed already cannot be cancelled over ES2+.
    if !retire_on_terminate(profile_state) {
        if profile_state != Some(ProfileState::Deleted) {
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
    } else {
        match cfg.carrier(carrier) {
            Ok(c) => {
                let owner = Some(invoice.clone());
                if let Some(left) = calls::cancel_as(cfg, c, &i, true, None, deadline, owner).await
                {
                    queue::enqueue(left).await;
                }
            }
            Err(e) => eprintln!(
                "dispatch: ALERT: SIM {iccid} of invoice {invoice} is withdrawn, but {carrier} is no longer in \
                 the catalog: cancel its profile there by hand ({})",
                message(&e)
            ),
        }
    }
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

/// What became of a taken entry ([`withdraw`]).
enum Outcome {
    /// Withdrawn: it leaves the list.
    Withdrawn,
    /// A paid order withdrawn (`now`: by this sweep): its payment is owed back; it stays held until that is
    /// acknowledged.
    Owed { now: bool },
    /// Nothing (left) to withdraw: it leaves the list.
    Gone,
    /// Looked at again once due then.
    Again(u64),
}
