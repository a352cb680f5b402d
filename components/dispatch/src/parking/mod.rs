//! Pending orders parked until their payment can no longer settle (`cleanup/parked`, kernel `order::parked`).
//! An order left pending (its confirm outlived the budget) whose payment may expire is parked; if nobody
//! completes it, the cleanup sweep of a later order withdraws it once it is due: the journal claimed (so the
//! same payment sent again meanwhile finds the order busy), the pending SIM terminated inside its cell update,
//! the profile retired at the carrier, the journal failed (a resend ends uncharged). A tx-hash payment's order
//! (its money moved) is parked as paid: only the operator's run (`run-cleanup`) withdraws it, after
//! `paid_order_pending_secs`, and names its invoice as owed until told the refund is recorded (`settle-owed`).

use esim402_core::order::StoredSim;
use esim402_core::order::parked::{self, Park, Parked};
use esim402_core::store::keys;
use esim402_guest::convert::kv_err;
use esim402_guest::kv::{self, Change};
use esim402_guest::wit;

use crate::calls::Deadline;
use crate::config::Config;
use crate::spec::Withdraw;

pub mod recheck;
mod withdraw;

use withdraw::{Outcome, withdraw};

/// `sim`, the pending SIM an order returns: parked first ([`Withdraw`]; `None`: never withdrawn). Best effort:
/// a failure is logged.
pub async fn pending(cfg: &Config, withdraw: Option<Withdraw>, sim: StoredSim) -> StoredSim {
    match withdraw {
        // Not if it is parked as paid already (its money moved since: an `exact` payment's authorization
        // executed by another transaction), which a driver that started before that must not undo.
        Some(Withdraw::UnsettledAfter(after)) => {
            let item = Parked::of(&sim, after);
            if !parked_as_paid(&item).await {
                park(&item).await;
            }
        }
        Some(Withdraw::Paid { since }) => {
            let item = Parked::paid(&sim, since.saturating_add(cfg.paid_pending_secs));
            if park(&item).await {
                unpark_unpaid(&item).await;
            } else {
                eprintln!(
                    "dispatch: OPERATOR: the paid order of invoice {} (profile {} at {}) could not be parked as \
                     paid: if an unpaid entry withdraws it, its payment must be refunded by hand",
                    item.invoice, item.iccid, item.carrier
                );
            }
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

/// Whether `item`'s order's profile is parked as paid (a failed read counts as not: parked unpaid as before).
pub(super) async fn parked_as_paid(item: &Parked) -> bool {
    matches!(
        kv::get_json::<Vec<Parked>, ()>(keys::CLEANUP_PARKED_PAID).await,
        Ok(Some(list)) if list.iter().any(|p| p.same_order(item))
    )
}

/// An order parked to be withdrawn unpaid (an `exact` payment's) whose money has moved since (its
/// authorization executed by another transaction while it waited) and that is now parked as paid: its unpaid
/// entry leaves (kernel `parked::unpark`), so no sweep withdraws it without owing the payment back. A sweep
/// that took it already may still withdraw it: the paid entry then owes the payment back. A plain read first:
/// the unpaid list is shared by every pending order.
async fn unpark_unpaid(item: &Parked) {
    // Paid now: the payment's kept request is not needed (the paid entry owes it back if it is withdrawn).
    recheck::drop_kept(&item.invoice).await;
    let key = keys::CLEANUP_PARKED;
    match kv::get_json::<Vec<Parked>, ()>(key).await {
        Ok(Some(list)) if list.iter().any(|p| p.same_order(item)) => {}
        _ => return,
    }
    let r = kv::change_json::<Vec<Parked>, (), ()>(key, |list| {
        Ok(match parked::unpark(list.unwrap_or_default(), item) {
            Some(list) => (Change::Put(list), ()),
            None => (Change::Keep, ()),
        })
    })
    .await;
    if let Err(e) = r {
        eprintln!(
            "dispatch: the order of invoice {} is paid but stays parked to be withdrawn unpaid: {e}",
            item.invoice
        );
    }
}

/// Park `item` in its list (once per order's profile; not beyond [`parked::MAX_PARKED`]); whether it is parked.
async fn park(item: &Parked) -> bool {
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
        Ok((_, true)) => true,
        Ok((_, false)) => {
            eprintln!(
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
            );
            false
        }
        Err(e) => {
            eprintln!(
                "dispatch: cannot park the pending order of invoice {} (profile {} at {}): {e}",
                item.invoice, item.iccid, item.carrier
            );
            false
        }
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
                    // Its payer may have executed the authorization meanwhile: the run sends the payment again.
                    if !item.paid {
                        recheck::withdrawn(&item.invoice).await;
                    }
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
                // Moved on (a failover's next profile is parked under the same invoice, its request with it).
                Outcome::Gone => None,
                Outcome::Finished => {
                    if !item.paid {
                        recheck::drop_kept(&item.invoice).await;
                    }
                    None
                }
                Outcome::Ended => {
                    recheck::withdrawn(&item.invoice).await;
                    None
                }
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
