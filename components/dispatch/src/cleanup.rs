//! Carrier-side work that must still happen so no profile leaks (`cleanup/queue`): cancels that could not be
//! sent, and DownloadOrders whose answer was lost (replayed with the same call id to learn the ICCID, then
//! cancelled). Orders sweep a few items before they start, within one shared deadline (`Deadline::sweep`,
//! part of the order's lease): an item the sweep does not reach in time goes back on the queue.

use esim402_core::esim::Eid;
use esim402_core::esim::Iccid;
use esim402_core::esim::es2::{self, DownloadOrderRequest, DownloadOrderResponse};
use esim402_core::order::{Cleanup, Queued};

use crate::calls::{self, Deadline};
use crate::config::Config;
use crate::queue;

/// Work off up to `max` queued cleanups: take them off the queue atomically (so two sweeps never do the same
/// item), try each once within the sweep's deadline, and re-queue what still fails or was not reached.
pub async fn sweep(cfg: &Config, max: usize) {
    let deadline = Deadline::sweep(cfg);
    for Queued { item, tries } in queue::take(max).await {
        // Not reached in the sweep's time: back on the queue, not counted as a try.
        if deadline.next_call().is_none() {
            queue::requeue(item, tries).await;
            continue;
        }
        match &item {
            Cleanup::Cancel {
                carrier,
                iccid,
                retire,
                fci,
            } => {
                if let (Ok(c), Ok(i)) = (cfg.carrier(carrier), Iccid::parse(iccid)) {
                    let left = calls::cancel_as(cfg, c, &i, *retire, fci.clone(), deadline).await;
                    if let Some(left) = left {
                        queue::requeue(left, tries.saturating_add(1)).await;
                    }
                }
            }
            Cleanup::LostDownload {
                carrier,
                fci,
                profile_type,
                eid,
            } => {
                let Ok(c) = cfg.carrier(carrier) else {
                    continue;
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
                    Ok(r) => {
                        if let (None, Some(iccid)) = (r.header.failure(), r.iccid) {
                            let left =
                                calls::cancel_as(cfg, c, &iccid, false, None, deadline).await;
                            if let Some(left) = left {
                                queue::requeue(left, tries.saturating_add(1)).await;
                            }
                        }
                    }
                    Err(_) => queue::requeue(item.clone(), tries.saturating_add(1)).await,
                }
            }
        }
    }
}
