//! Pending orders parked until their payment can no longer settle (`cleanup/parked`, kernel `order::parked`).
//! An order left pending (its confirm outlived the budget) whose payment may expire is parked; if nobody
//! completes it, the cleanup sweep of a later order withdraws it once it is due: the journal claimed (so the
//! same payment sent again meanwhile finds the order busy), the pending SIM terminated inside its cell update,
//! the profile retired at the carrier, the journal failed (a resend ends uncharged).

use esim402_core::esim::{Iccid, ProfileState, retire_on_terminate};
use esim402_core::order::parked::{self, Park, Parked, Withdrawal};
use esim402_core::order::{self, Claim, Order, StoredSim};
use esim402_core::store::keys;
use esim402_guest::convert::{kv_err, message};
use esim402_guest::kv::{self, Change};
use esim402_guest::wit;

use crate::calls::{self, Deadline};
use crate::config::Config;
use crate::{journal, queue};

/// `sim`, the pending SIM an order returns: parked first if its payment can no longer settle after
/// `withdraw_after` (`None`: the money moved, never withdrawn). Best effort: a failure is logged.
pub async fn pending(withdraw_after: Option<u64>, sim: StoredSim) -> StoredSim {
    if let Some(after) = withdraw_after {
        park(&Parked::of(&sim, after)).await;
    }
    sim
}

/// Park `item` (once per order's profile; not beyond [`parked::MAX_PARKED`]).
async fn park(item: &Parked) {
    let r = kv::change_json::<Vec<Parked>, bool, ()>(keys::CLEANUP_PARKED, |list| {
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
             if its payment never completes: an operator must cancel it after {}",
            item.iccid, item.carrier, item.invoice, item.not_before
        ),
        Err(e) => eprintln!(
            "dispatch: cannot park the pending order of invoice {} (profile {} at {}): {e}",
            item.invoice, item.iccid, item.carrier
        ),
    }
}

/// Take up to `max` entries due at `now` atomically, held until `lease_until` (kernel `parked::take_due`):
/// two sweeps never take the same one, and one a sweep never [`settle`]s (it crashed) is due again after the
/// hold. The common case is nothing due: a plain read, so concurrent orders do not contend on a write.
async fn take_due(max: usize, now: u64, lease_until: u64) -> Vec<Parked> {
    match kv::get_json::<Vec<Parked>, ()>(keys::CLEANUP_PARKED).await {
        Ok(Some(list)) if parked::any_due(&list, now) => {}
        _ => return Vec::new(),
    }
    kv::update_json_with::<Vec<Parked>, Vec<Parked>, ()>(keys::CLEANUP_PARKED, |list| {
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
    let r = kv::change_json::<Vec<Parked>, (), ()>(keys::CLEANUP_PARKED, |list| {
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

/// Withdraw up to `max` parked orders due at `now`, within the sweep's `deadline`, holding them until
/// `lease_until`; an entry not reached in time is due again as it was. How many were withdrawn.
pub async fn sweep(
    cfg: &Config,
    deadline: Deadline,
    max: usize,
    now: u64,
    lease_until: u64,
) -> u32 {
    let mut withdrawn = 0u32;
    for item in take_due(max, now, lease_until).await {
        let next = if deadline.next_call().is_none() {
            Some(item.not_before)
        } else {
            match withdraw(cfg, &item, deadline, now).await {
                Outcome::Withdrawn => {
                    withdrawn = withdrawn.saturating_add(1);
                    None
                }
                Outcome::Gone => None,
                Outcome::Again(at) => Some(at),
            }
        };
        settle(&item, lease_until, next).await;
    }
    withdrawn
}

/// How many entries are parked, held ones included (an unreadable list counts none).
pub async fn parked_len() -> usize {
    kv::get_json::<Vec<Parked>, ()>(keys::CLEANUP_PARKED)
        .await
        .ok()
        .flatten()
        .map_or(0, |l| l.len())
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
    match parked::withdrawal(journal.as_ref(), iccid, now) {
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
    let withdrawn = kv::change_json::<StoredSim, bool, wit::Error>(&keys::sim(iccid), |current| {
        Ok(match parked::withdraw_pending(current.as_ref(), invoice) {
            Some(next) => (Change::Put(next), true),
            None => (Change::Keep, false),
        })
    })
    .await
    .map_err(kv_err);
    let sim = match withdrawn {
        Ok((Some(sim), true)) => sim,
        // Delivered, terminated by its owner, given up, or another order's since: nothing to withdraw.
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
    if !retire_on_terminate(sim.profile_state) {
        if sim.profile_state != Some(ProfileState::Deleted) {
            eprintln!(
                "dispatch: ALERT: SIM {iccid} of invoice {invoice} is withdrawn unpaid, but its profile at {carrier} is \
             {} on a device: ask the carrier to disable it",
                sim.profile_state.map_or_else(
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
    let failed = journal::journal(&driver, |o| {
        let failovers = o.failovers.clone();
        o.fail(parked::WITHDRAWN, failovers);
    })
    .await;
    if let Err(e) = failed {
        eprintln!(
            "dispatch: the journal of invoice {invoice} does not say it was withdrawn (its SIM does): {}",
            message(&e)
        );
    }
    eprintln!(
        "dispatch: withdrew the pending order of invoice {invoice}: its payment can no longer settle; SIM \
         {iccid} at {carrier} terminated"
    );
    Outcome::Withdrawn
}

/// What became of a taken entry ([`withdraw`]).
enum Outcome {
    /// Withdrawn: it leaves the list.
    Withdrawn,
    /// Nothing (left) to withdraw: it leaves the list.
    Gone,
    /// Looked at again once due then.
    Again(u64),
}
