//! One paid order: claim its journal (kernel `order::claim`: one driver at a time, with a lease), sweep a few
//! queued cleanups, then try the region's carriers in plan order — DownloadOrder → (journal the step, store the
//! pending SIM) → ConfirmOrder(release) — until one delivers or the budget runs out. A profile allocated but not
//! delivered is cancelled; a confirm whose outcome is unknown when the budget ends leaves the order pending,
//! and a repeat resumes it with the same call id (so does a resumed step whose SIM record cannot be read). A
//! DownloadOrder naming another SIM's ICCID is a failed step: that SIM is never written over, confirmed or
//! cancelled. Once a SIM is delivered, the writes after it (journal, owner index) are best effort.

use esim402_core::esim::Carrier;
use esim402_core::esim::es2::{self, DownloadOrderRequest, DownloadOrderResponse};
use esim402_core::order::{self, AfterConfirm, Claim, Order, Plan, Step, StoredSim};
use esim402_guest::convert::{internal, invalid, message};
use esim402_guest::wit;

use crate::calls::{Deadline, call_twice, fci, header};
use crate::config::Config;
use crate::confirming::{Skip, cancel_profile, conclude, finish};
use crate::journal::{Driver, claim, journal};
use crate::spec::{OrderSpec, candidates};
use crate::{cleanup, parking, queue, sim_store};

/// Try one carrier: DownloadOrder → (pending SIM) → ConfirmOrder(release) → active SIM.
async fn try_carrier(
    cfg: &Config,
    driver: &Driver,
    spec: &OrderSpec,
    carrier: &Carrier,
    failovers: &[String],
    deadline: Deadline,
    now: u64,
) -> Result<StoredSim, Skip> {
    let id = carrier.id.to_string();
    // Both call ids before anything is allocated: a profile is never left without the id to confirm it with.
    let download_fci = fci().map_err(Skip::Reject)?;
    let confirm_fci = fci().map_err(Skip::Reject)?;
    let body = DownloadOrderRequest {
        header: header(carrier, &download_fci),
        eid: spec.eid.clone(),
        iccid: None,
        profile_type: Some(carrier.profile_type.clone()),
    };
    let r: DownloadOrderResponse =
        match call_twice(cfg, carrier, es2::DOWNLOAD_ORDER_PATH, &body, deadline).await {
            Ok(r) => r,
            Err(t) => {
                // The carrier may have allocated a profile we never heard about: find out later and return it
                // (not for a call that never reached it: a replay would allocate one only to cancel it).
                if t.may_have_executed() {
                    queue::enqueue(order::Cleanup::LostDownload {
                        carrier: id.clone(),
                        fci: download_fci,
                        profile_type: carrier.profile_type.clone(),
                        eid: spec.eid.as_ref().map(|e| e.as_str().to_owned()),
                    })
                    .await;
                }
                return Err(Skip::Next(format!("{id}: DownloadOrder {t}")));
            }
        };
    if let Some(code) = r.header.failure() {
        return Err(Skip::refused(carrier, &code));
    }
    let Some(iccid) = r.iccid else {
        return Err(Skip::Next(format!("{id}: DownloadOrder returned no ICCID")));
    };
    let mut sim = spec.pending_sim(cfg, &driver.order.invoice_id, &id, iccid.as_str(), now);
    // The carriers that failed before this one, as the delivered SIM will name them: its next write (active)
    // is then its last.
    sim.failovers = failovers.to_vec();
    let step = Step {
        carrier: id.clone(),
        iccid: sim.iccid.clone(),
        confirm_fci,
    };
    // Journal first, then the pending SIM: a crash after this point is resumable and visible. The step carries
    // the failovers before it, in the same write: a resumed order values the data at the quoted carrier's rate
    // even if the journal missed them (their own write's failure is ignored).
    if let Err(e) = journal(driver, |o| {
        o.step = Some(step.clone());
        o.failovers = failovers.to_vec();
    })
    .await
    {
        // Given back, unless the carrier named another SIM's ICCID (that profile is not ours to cancel).
        let theirs = matches!(sim_store::load(&iccid).await,
            Ok(Some(c)) if !order::may_record_allocation(Some(&c), &sim));
        if !theirs {
            cancel_profile(cfg, carrier, &step, false, &sim.invoice_id).await;
        }
        return Err(Skip::Reject(e));
    }
    // A SIM just allocated has no record yet, or a failed one of this carrier's (a profile given back and
    // handed out again); the carrier naming someone else's SIM is a failed step (kernel
    // `order::may_record_allocation`): that profile is not ours to confirm or cancel.
    let at = match sim_store::record_allocation(&sim).await {
        Ok(Some(at)) => at,
        Ok(None) => {
            alert_foreign_iccid(&id, &download_fci, &sim.iccid);
            return Err(Skip::Next(format!(
                "{id}: DownloadOrder named a profile that is already another SIM's"
            )));
        }
        Err(e) => {
            // The order fails on this error: the profile must not stay allocated with nobody to confirm it. The
            // write may have landed with its reply lost: our record is then marked failed first, as `finish`
            // does (one left pending would refuse the profile when the carrier hands it out again), and a
            // record that is someone else's SIM keeps its profile.
            let give_back = match sim_store::unrecord_allocation(&sim).await {
                Ok(give_back) => give_back,
                Err(again) => {
                    eprintln!(
                        "dispatch: SIM {} may stay pending although its profile is given back: {}",
                        sim.iccid,
                        message(&again)
                    );
                    true
                }
            };
            if give_back {
                cancel_profile(cfg, carrier, &step, false, &sim.invoice_id).await;
            } else {
                alert_foreign_iccid(&id, &download_fci, &sim.iccid);
            }
            return Err(Skip::Reject(e));
        }
    };
    finish(
        cfg,
        carrier,
        &step,
        &sim,
        Some(at),
        spec.eid.as_ref(),
        deadline,
    )
    .await
}

/// Resume the journal's `step`, a profile an earlier attempt allocated: confirm it with the same call id,
/// unless its record says how the order ends without calling the carrier (kernel `order::settled_before_confirm`),
/// or it is another payer's (refused, as a repeat of a busy or done order is).
async fn resume(
    cfg: &Config,
    driver: &Driver,
    spec: &OrderSpec,
    step: &Step,
    deadline: Deadline,
    now: u64,
) -> Result<StoredSim, Skip> {
    let invoice_id = &driver.order.invoice_id;
    let rebuilt = spec.pending_sim(cfg, invoice_id, &step.carrier, &step.iccid, now);
    let went_back = || {
        Skip::Next(format!(
            "{}: profile {} went back to the pool",
            step.carrier, step.iccid
        ))
    };
    let iccid = sim_store::parse_iccid(&step.iccid).map_err(Skip::Reject)?;
    let sim = match sim_store::load(&iccid).await {
        Ok(Some(sim)) if order::belongs_to(&sim, invoice_id) => sim,
        // Given back to the pool by an earlier attempt and handed to another order since: not ours to
        // confirm, deliver or give back; the order goes on with the next carrier.
        Ok(Some(_)) => return Err(went_back()),
        // A crash between journaling the step and storing the pending SIM leaves only the journal: the SIM
        // record is rebuilt from it, so the allocated profile is confirmed (or given back), never stranded.
        Ok(None) => match sim_store::record_allocation(&rebuilt).await {
            Ok(Some(_)) => rebuilt,
            Ok(None) => return Err(went_back()),
            Err(e) => return Err(hand_over(driver, step, rebuilt, e).await),
        },
        Err(e) => return Err(hand_over(driver, step, rebuilt, e).await),
    };
    // Another payer's order (kernel `order::replay_for`), as a busy or done one is: neither confirmed nor
    // returned for this caller, and its lease handed back so its own payer's repeat drives it at once.
    if let Err(why) = order::replay_for(&sim, spec.owner.as_ref()) {
        if let Err(e) = journal(driver, Order::hand_over).await {
            eprintln!(
                "dispatch: the order's lease is kept until it ends: {}",
                message(&e)
            );
        }
        return Err(Skip::Refuse(wit::Error::Conflict(why)));
    }
    // A SIM no longer pending (terminated by its owner, delivered, given up) is not confirmed again; one
    // delivered needs no carrier (even one gone from the catalog since).
    let settled = order::settled_before_confirm(&sim);
    if let Some(AfterConfirm::Delivered(sim)) = settled {
        return Ok(sim);
    }
    let carrier = cfg.carrier(&step.carrier).map_err(|e| {
        eprintln!(
            "dispatch: ALERT: the order of invoice {invoice_id} holds profile {} of {}, which is no longer in \
             the catalog: it is neither confirmed nor cancelled (cancel it at the carrier by hand)",
            step.iccid, step.carrier
        );
        Skip::Reject(e)
    })?;
    match settled {
        Some(after) => conclude(cfg, carrier, step, after, None).await,
        None => finish(cfg, carrier, step, &sim, None, spec.eid.as_ref(), deadline).await,
    }
}

/// The record of a resumed step cannot be read or rebuilt (`e`): its outcome is unknown, so the order is left
/// pending, not failed (failing it would end the payment as if nothing were allocated, with the profile left
/// at the carrier): the journal keeps the step and its lease is handed over (best effort), so the same payment
/// sent again drives it at once instead of meeting a busy order without a SIM record.
async fn hand_over(driver: &Driver, step: &Step, pending: StoredSim, e: wit::Error) -> Skip {
    eprintln!(
        "dispatch: the record of profile {} (invoice {}) cannot be read or stored: {}; the order stays pending",
        step.iccid,
        driver.order.invoice_id,
        message(&e)
    );
    if let Err(e) = journal(driver, Order::hand_over).await {
        eprintln!(
            "dispatch: the order's lease is kept until it ends: {}",
            message(&e)
        );
    }
    Skip::Pending(Box::new(pending))
}

fn in_progress(invoice_id: &str) -> wit::Error {
    wit::Error::Conflict(format!("an order for invoice {invoice_id} is in progress"))
}

/// Whether `e`, an error of [`order`] for `invoice_id`, says another call drives that order (busy, or its
/// journal taken over): unlike any other error, that order may still deliver.
pub fn driven_elsewhere(e: &wit::Error, invoice_id: &str) -> bool {
    let taken_over = order::JournalError::TakenOver(invoice_id.to_owned()).to_string();
    let busy = message(&in_progress(invoice_id));
    matches!(e, wit::Error::Conflict(m) if *m == taken_over || *m == busy)
}

/// Order a profile for `spec`, paid by `invoice_id`, with failover; idempotent per invoice. One left pending
/// is parked for withdrawal (`spec.withdraw`, [`parking::pending`]).
pub async fn order(spec: OrderSpec, invoice_id: &str, now: u64) -> Result<StoredSim, wit::Error> {
    if invoice_id.is_empty() || invoice_id.len() > esim402_core::InvoiceId::MAX_LEN {
        return Err(invalid("invoice_id", "invoice_id must be 1-400 characters"));
    }
    let cfg = crate::config::get().await?;
    cfg.signers_usable()?;
    let plan = Plan::new(
        candidates(&cfg, &spec)?
            .iter()
            .map(|c| c.id.to_string())
            .collect(),
    );
    let lease = order::lease_secs(cfg.budget.as_secs(), cfg.call_timeout.as_secs());
    let driver = match claim(invoice_id, now, lease).await? {
        Ok(d) => d,
        Err(Claim::Done(iccid)) => {
            let sim = sim_store::load(&sim_store::parse_iccid(&iccid)?)
                .await?
                .filter(|sim| order::belongs_to(sim, invoice_id))
                .ok_or_else(|| internal(format!("SIM {iccid} of invoice {invoice_id} vanished")))?;
            order::replay_for(&sim, spec.owner.as_ref()).map_err(wit::Error::Conflict)?;
            return Ok(sim);
        }
        Err(Claim::Failed(e)) => return Err(wit::Error::Unavailable(e)),
        Err(Claim::Busy(Some(iccid))) => {
            if let Some(sim) = sim_store::load(&sim_store::parse_iccid(&iccid)?)
                .await?
                .filter(|sim| order::belongs_to(sim, invoice_id))
            {
                order::replay_for(&sim, spec.owner.as_ref()).map_err(wit::Error::Conflict)?;
                // Still pending while another call drives it: parked as this call asks too (an `exact`
                // payment's order whose money moved meanwhile is parked as paid, its unpaid entry taken out).
                if sim.state == esim402_core::esim::SimState::Pending {
                    return Ok(parking::pending(&cfg, spec.withdraw, sim).await);
                }
                return Ok(sim);
            }
            return Err(in_progress(invoice_id));
        }
        Err(Claim::Busy(None)) | Err(Claim::Drive(_)) => return Err(in_progress(invoice_id)),
    };
    cleanup::sweep(&cfg, Deadline::sweep(&cfg), 4, now, false).await;
    let deadline = Deadline::new(&cfg);
    let mut failovers = driver.order.failovers.clone();

    // Resume: a profile was allocated by an earlier attempt; confirm it with the same call id.
    let mut tried = None;
    if let Some(step) = Plan::resume(&driver.order).cloned() {
        match resume(&cfg, &driver, &spec, &step, deadline, now).await {
            Ok(sim) => return Ok(complete(&driver, sim, failovers).await),
            Err(Skip::Next(why)) => {
                failovers.push(why);
                tried = Some(step.carrier.clone());
            }
            Err(Skip::Pending(sim)) => return Ok(parking::pending(&cfg, spec.withdraw, *sim).await),
            Err(Skip::Reject(e)) => return fail(&driver, e, failovers).await,
            Err(Skip::Refuse(e)) => return Err(e),
        }
    }

    // Each carrier's step is journaled with the failovers before it (`try_carrier`).
    for id in plan.after(tried.as_deref()) {
        let carrier = cfg.carrier(&id)?;
        if deadline.next_call().is_none() {
            failovers.push(format!("{id}: retry budget exhausted"));
            break;
        }
        match try_carrier(&cfg, &driver, &spec, carrier, &failovers, deadline, now).await {
            Ok(sim) => return Ok(complete(&driver, sim, failovers).await),
            Err(Skip::Next(why)) => failovers.push(why),
            Err(Skip::Pending(sim)) => return Ok(parking::pending(&cfg, spec.withdraw, *sim).await),
            Err(Skip::Reject(e)) => return fail(&driver, e, failovers).await,
            Err(Skip::Refuse(e)) => return Err(e),
        }
    }
    let e = wit::Error::Unavailable(format!(
        "no carrier could supply a profile in {}: {}",
        spec.region,
        failovers.join("; ")
    ));
    fail(&driver, e, failovers).await
}

/// The order delivered `sim` (stored active with its code, or delivered before): the rest is bookkeeping, done
/// best effort. The SIM record is what delivers: failing the order here would end the payment as if nothing
/// had been delivered while the profile stays released under a code nobody paid for. A journal not marked
/// done still names the SIM in its step, so a repeat of the order finds it (a busy order's SIM, or a resumed
/// driver's `AfterConfirm::Delivered`, which completes it again); a SIM missing from its owner's index is
/// missing from the wallet's `list-sims` only (its owner still opens it by wallet or token).
async fn complete(driver: &Driver, mut sim: StoredSim, failovers: Vec<String>) -> StoredSim {
    // A SIM delivered by `try_carrier` was stored with these failovers already.
    if sim.failovers != failovers {
        sim.failovers = failovers.clone();
        if let Err(e) = sim_store::set_failovers(&sim, &failovers).await {
            eprintln!(
                "dispatch: the failovers of SIM {} are not stored: {}",
                sim.iccid,
                message(&e)
            );
        }
    }
    if let Some(owner) = sim.access.owner
        && let Err(e) = sim_store::index_owner(owner, &sim.iccid).await
    {
        eprintln!(
            "dispatch: SIM {} is missing from its owner's index (list-sims will not show it): {}",
            sim.iccid,
            message(&e)
        );
    }
    if let Err(e) = journal(driver, |o| o.complete(&sim.iccid, failovers.clone())).await {
        eprintln!(
            "dispatch: the order of invoice {} delivered SIM {} but its journal says so only by its step: {}",
            driver.order.invoice_id,
            sim.iccid,
            message(&e)
        );
    }
    sim
}

async fn fail(
    driver: &Driver,
    e: wit::Error,
    failovers: Vec<String>,
) -> Result<StoredSim, wit::Error> {
    let msg = message(&e);
    let _ = journal(driver, |o| o.fail(&msg, failovers.clone())).await;
    Err(e)
}

/// The operator's line for a carrier whose DownloadOrder (call `fci`) named `iccid`, another SIM's.
fn alert_foreign_iccid(carrier: &str, fci: &str, iccid: &str) {
    eprintln!(
        "dispatch: ALERT: {carrier} answered DownloadOrder (call {fci}) with ICCID {iccid}, the ICCID of another \
         SIM on record: not recorded, confirmed or cancelled; the carrier must check its pool"
    );
}
