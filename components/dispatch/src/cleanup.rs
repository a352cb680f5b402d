//! Carrier-side work that must still happen so no profile leaks (`cleanup/queue`): cancels that could not be
//! sent, and DownloadOrders whose answer was lost (replayed with the same call id to learn the ICCID, then
//! cancelled). Orders sweep a few items before they start, within one shared deadline (`Deadline::sweep`,
//! part of the order's lease): an item the sweep does not reach in time goes back on the queue. Orders parked
//! for withdrawal (`cleanup/parked`, [`crate::parking`]) that are due are withdrawn first, within the same deadline.

use esim402_core::esim::Eid;
use esim402_core::esim::Iccid;
use esim402_core::esim::es2::{self, DownloadOrderRequest, DownloadOrderResponse};
use esim402_core::order::{self, Cleanup, Queued, Settle};

use esim402_guest::wit;

use crate::bindings::exports::esim402::dispatch::dispatch::CleanupRun;
use crate::calls::{self, Deadline};
use crate::config::Config;
use crate::{queue, sim_store};

/// Withdraw up to `max` parked orders due at `now` (orders left pending whose payment can no longer settle,
/// [`crate::parking::sweep`]), then work off up to `max` queued cleanups within `deadline`: take them
/// atomically, held for the sweep (so two sweeps never do the same item, and a sweep that stops before it is
/// done with one, a crash, loses nothing), try each once, and settle it: done, free again where it stood when
/// not reached (not counted as a try), or to the back of the queue when it still fails. So a carrier that
/// takes the whole deadline cannot keep the items behind it from ever being tried. Paid parked orders (a
/// tx-hash payment's) only with `paid_too`: the operator's run, which owes their payment back.
pub async fn sweep(
    cfg: &Config,
    deadline: Deadline,
    max: usize,
    now: u64,
    paid_too: bool,
) -> Swept {
    let lease_until = order::sweep_lease_until(now, deadline.secs_left());
    let parked = crate::parking::sweep(cfg, deadline, max, (now, lease_until), paid_too).await;
    let mut swept = Swept {
        withdrawn: parked.count,
        owed: parked.owed,
        ..Swept::default()
    };
    for taken in queue::take(max, now, lease_until, || calls::fci().ok()).await {
        let outcome = if deadline.next_call().is_none() {
            Settle::Untried
        } else {
            swept.tried = swept.tried.saturating_add(1);
            work(cfg, &taken, deadline).await
        };
        // Counted as settled: a failure given up is done, not queued again.
        if queue::settle(&taken, outcome).await {
            swept.requeued = swept.requeued.saturating_add(1);
        }
    }
    swept
}

/// Try one queued item once within `deadline`: what became of it.
async fn work(cfg: &Config, taken: &Queued, deadline: Deadline) -> Settle {
    let Queued {
        item, tries, since, ..
    } = taken;
    let fail = |left: Cleanup| Settle::Again(left, tries.saturating_add(1), *since);
    match item {
        Cleanup::Cancel {
            carrier,
            iccid,
            retire,
            fci,
            invoice,
        } => match (cfg.carrier(carrier), Iccid::parse(iccid)) {
            (Ok(c), Ok(i)) => match held_now(&i, invoice.as_deref()).await {
                Err(()) => fail(item.clone()),
                Ok(Some(holder)) => dropped(&i, carrier, &holder),
                Ok(None) => {
                    let (call, owner) = (fci.clone(), invoice.clone());
                    match calls::cancel_as(cfg, c, &i, *retire, call, deadline, owner).await {
                        Some(left) => fail(left),
                        None => Settle::Done,
                    }
                }
            },
            _ => {
                eprintln!(
                    "dispatch: dropping queued cancel of {iccid} at {carrier}: the carrier left the catalog or the ICCID does not parse; an operator must return the profile"
                );
                Settle::Done
            }
        },
        Cleanup::LostDownload {
            carrier,
            fci,
            profile_type,
            eid,
        } => {
            let Ok(c) = cfg.carrier(carrier) else {
                eprintln!(
                    "dispatch: dropping lost DownloadOrder {fci} at {carrier}: the carrier left the catalog; an operator must return the profile"
                );
                return Settle::Done;
            };
            let body = DownloadOrderRequest {
                header: calls::header(c, fci),
                eid: eid.as_deref().and_then(|e| Eid::parse(e).ok()),
                iccid: None,
                profile_type: Some(profile_type.clone()),
            };
            let answer = calls::call_twice::<_, DownloadOrderResponse>(
                cfg,
                c,
                es2::DOWNLOAD_ORDER_PATH,
                &body,
                deadline,
            )
            .await;
            match answer {
                Ok(r) => match (r.header.failure(), r.iccid) {
                    (None, Some(iccid)) => match held_now(&iccid, None).await {
                        // The replay is answered again the same way: learn it again next time.
                        Err(()) => fail(item.clone()),
                        Ok(Some(holder)) => dropped(&iccid, carrier, &holder),
                        Ok(None) => {
                            // A cancel just learned of is new work, in the lost DownloadOrder's place: counted
                            // from its own first failure. Its call id comes from the lost call's, so a redo of
                            // this item (a sweep that stopped before settling it) sends the same call, which the
                            // SM-DP+ replays (kernel `order::learned_cancel_fci`).
                            let call = Some(order::learned_cancel_fci(fci));
                            match calls::cancel_as(cfg, c, &iccid, false, call, deadline, None)
                                .await
                            {
                                Some(left) => Settle::Again(left, 1, 0),
                                None => Settle::Done,
                            }
                        }
                    },
                    // The replay could not be executed now: again later.
                    (Some(_), _) if r.header.failed_for_now() => fail(item.clone()),
                    (code, _) => {
                        eprintln!(
                            "dispatch: lost DownloadOrder {fci} at {carrier} replayed with {}: nothing to cancel, or an operator must look",
                            code.map_or_else(|| "no ICCID".to_owned(), |c| c.to_string())
                        );
                        Settle::Done
                    }
                },
                Err(_) => fail(item.clone()),
            }
        }
    }
}

/// `run-cleanup` (the operator's `POST /admin/cleanup/run`, e.g. from cron): a sweep of up to `limit` parked
/// orders and `limit` queued items within one order budget, then what is left. Without it, parked orders are
/// withdrawn and queued items retried only by the sweep of a later order.
pub async fn run(now: u64, limit: u32) -> Result<CleanupRun, wit::Error> {
    let cfg = crate::config::get().await?;
    let max = usize::try_from(limit).unwrap_or(usize::MAX);
    let swept = sweep(&cfg, Deadline::new(&cfg), max, now, true).await;
    let count = |n: usize| u32::try_from(n).unwrap_or(u32::MAX);
    Ok(CleanupRun {
        withdrawn: swept.withdrawn,
        tried: swept.tried,
        requeued: swept.requeued,
        queued: count(queue::len().await),
        parked: count(crate::parking::parked_len().await),
        owed: swept.owed,
        recheck: crate::parking::recheck::due(now, max).await,
        unrefunded: crate::unrefunded::due(now, max).await,
    })
}

/// What one sweep did.
#[derive(Debug, Default, Clone)]
pub struct Swept {
    /// Parked orders withdrawn.
    pub withdrawn: u32,
    /// Invoices of paid orders withdrawn whose payment is owed back (the operator's run only).
    pub owed: Vec<String>,
    /// Queued items tried (each either done, dropped, or back on the queue).
    pub tried: u32,
    /// Items left on the queue: failed again, or not reached in the sweep's time (a cancel a lost
    /// DownloadOrder's replay just learned of counts here too).
    pub requeued: u32,
}

/// The invoice of a live SIM of another order that holds `iccid` now (kernel `order::sweep_may_cancel`; `invoice`:
/// the item's own), `None` when the profile may be cancelled; `Err` when the record cannot be read (the item is
/// tried again later).
async fn held_now(iccid: &Iccid, invoice: Option<&str>) -> Result<Option<String>, ()> {
    match sim_store::load(iccid).await {
        Ok(current) if order::sweep_may_cancel(current.as_ref(), invoice) => Ok(None),
        Ok(current) => Ok(current.map(|c| c.invoice_id)),
        Err(e) => {
            eprintln!(
                "dispatch: queued cancel of {iccid} waits: its SIM record cannot be read: {e:?}"
            );
            Err(())
        }
    }
}

/// Logs why a queued cancel is not sent: it leaves the queue.
fn dropped(iccid: &Iccid, carrier: &str, invoice: &str) -> Settle {
    eprintln!(
        "dispatch: not cancelling profile {iccid} at {carrier}: the carrier has handed it to a live SIM of ours since (invoice {invoice}); dropped from the queue"
    );
    Settle::Done
}
