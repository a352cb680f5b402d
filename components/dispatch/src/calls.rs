//! ES2+ calls as dispatch makes them: a shared deadline per order, a transport failure retried once with the
//! **same** call id (the SM-DP+ replays its stored answer, so a lost reply never allocates twice), and
//! CancelOrder, queued for a later sweep when it cannot be done now.

use std::time::{Duration, Instant};

use esim402_core::esim::es2::{
    self, CancelOrderRequest, CancelOutcome, FinalProfileStatus, FunctionCallId,
    HeaderOnlyResponse, RequestHeader,
};
use esim402_core::esim::{Carrier, Iccid};
use esim402_core::order::Cleanup;
use esim402_guest::convert::internal;
use esim402_guest::{util, wit};

use crate::config::Config;
use crate::es2_client::{self, Transport};

/// A fresh ES2+ function call id.
pub fn fci() -> Result<String, wit::Error> {
    let n = util::random_u64().map_err(internal)?;
    Ok(FunctionCallId::new("FCI", util::now_secs(), n).to_string())
}

/// A deadline shared by every call of one order.
#[derive(Clone, Copy)]
pub struct Deadline {
    end: Instant,
    per_call: Duration,
}

impl Deadline {
    /// The order's budget.
    pub fn new(cfg: &Config) -> Self {
        Self {
            end: Instant::now() + cfg.budget,
            per_call: cfg.call_timeout,
        }
    }

    /// One call's timeout, for cleanup work outside an order (a fast failure leaves room for the same-id retry).
    pub fn single_call(cfg: &Config) -> Self {
        Self {
            end: Instant::now() + cfg.call_timeout,
            per_call: cfg.call_timeout,
        }
    }

    /// The time an order sweeps queued cleanups in (kernel `order::SWEEP_CALL_TIMEOUTS`, counted in the
    /// order's lease): every call of the sweep shares it.
    pub fn sweep(cfg: &Config) -> Self {
        let calls = u32::try_from(esim402_core::order::SWEEP_CALL_TIMEOUTS).unwrap_or(1);
        Self {
            end: Instant::now() + cfg.call_timeout.saturating_mul(calls),
            per_call: cfg.call_timeout,
        }
    }

    /// Whole seconds left (rounded up): how long work under this deadline may hold what it took.
    pub fn secs_left(&self) -> u64 {
        let left = self.end.saturating_duration_since(Instant::now());
        left.as_secs()
            .saturating_add(u64::from(left.subsec_nanos() > 0))
    }

    /// Time for the next call, or `None` once the budget is spent.
    pub fn next_call(&self) -> Option<Duration> {
        let left = self.end.checked_duration_since(Instant::now())?;
        (left >= Duration::from_millis(50)).then(|| left.min(self.per_call))
    }
}

/// The ES2+ request header of a call to `carrier`.
pub fn header(carrier: &Carrier, fci: &str) -> RequestHeader {
    RequestHeader {
        function_requester_identifier: carrier.requester_id.clone(),
        function_call_identifier: fci.to_owned(),
    }
}

/// Call, and on a transport failure repeat the same call id once. The failure reported is the last, unless a
/// retry that never reached the SM-DP+ follows a try that may have been executed: that one is reported
/// (`Transport::may_have_executed`), so the caller still learns the call may have taken effect.
pub async fn call_twice<Req: serde::Serialize, Resp: serde::de::DeserializeOwned>(
    cfg: &Config,
    carrier: &Carrier,
    path: &str,
    body: &Req,
    deadline: Deadline,
) -> Result<Resp, Transport> {
    let base = carrier.es2_url(&cfg.smdp_base);
    let mut last: Option<Transport> = None;
    for _ in 0..2 {
        let Some(timeout) = deadline.next_call() else {
            break;
        };
        match es2_client::call(&base, path, body, timeout).await {
            Ok(r) => return Ok(r),
            Err(e) => {
                last = Some(match last {
                    Some(prev) if prev.may_have_executed() && !e.may_have_executed() => prev,
                    _ => e,
                });
            }
        }
    }
    Err(last.unwrap_or(Transport::Timeout))
}

/// CancelOrder (`retire`: the profile may never be downloaded again) within one call timeout; if it cannot be
/// done now it is queued, naming `invoice`, whose SIM the profile was (kernel `order::sweep_may_cancel`).
pub async fn cancel(cfg: &Config, carrier: &Carrier, iccid: &Iccid, retire: bool, invoice: &str) {
    let left = cancel_as(
        cfg,
        carrier,
        iccid,
        retire,
        None,
        Deadline::single_call(cfg),
        Some(invoice.to_owned()),
    )
    .await;
    if let Some(item) = left {
        crate::queue::enqueue(item).await;
    }
}

/// [`cancel`] under the call id `call` of an earlier try (a new one if `None`), within `deadline`; what is left
/// to queue, if it could not be done now: with the call id used, so a try whose answer was lost is sent again
/// as the same call (the SM-DP+ replays it instead of cancelling whatever that ICCID is by then).
pub async fn cancel_as(
    cfg: &Config,
    carrier: &Carrier,
    iccid: &Iccid,
    retire: bool,
    call: Option<String>,
    deadline: Deadline,
    invoice: Option<String>,
) -> Option<Cleanup> {
    let Some(call) = call.or_else(|| fci().ok()) else {
        return Some(Cleanup::Cancel {
            carrier: carrier.id.to_string(),
            iccid: iccid.as_str().to_owned(),
            retire,
            fci: None,
            invoice,
        });
    };
    let next_call = async {
        let body = CancelOrderRequest {
            header: header(carrier, &call),
            iccid: iccid.clone(),
            eid: None,
            matching_id: None,
            final_profile_status_indicator: if retire {
                FinalProfileStatus::Unavailable
            } else {
                FinalProfileStatus::Available
            },
        };
        let answer =
            call_twice::<_, HeaderOnlyResponse>(cfg, carrier, es2::CANCEL_ORDER_PATH, &body, deadline)
                .await;
        match answer.map(|r| r.header.cancel_outcome()) {
            Ok(CancelOutcome::Done) => None,
            // The device has the profile: no cancel returns it, but it is live at the carrier, which the SIM's
            // terminate or withdrawal meant to end.
            Ok(CancelOutcome::InUse) => {
                eprintln!(
                    "dispatch: ALERT: {} cannot cancel profile {iccid}: it was downloaded to a device, which keeps \
                     it ({}); ask the carrier to disable it",
                    carrier.id,
                    if retire {
                        "its SIM is retired"
                    } else {
                        "it was being given back"
                    }
                );
                None
            }
            // Not executed: the next try is a new call (this call id would replay the failure).
            Ok(CancelOutcome::Retry(code)) => {
                eprintln!(
                    "dispatch: {} could not cancel profile {iccid} now ({code}); queued",
                    carrier.id
                );
                Some(None)
            }
            Ok(CancelOutcome::Refused(code)) => {
                eprintln!(
                    "dispatch: {} refused to cancel profile {iccid} ({code}); an operator must return it",
                    carrier.id
                );
                None
            }
            // The answer was lost: the same call again, which the SM-DP+ replays if it executed it.
            Err(_) => Some(Some(call)),
        }
    }
    .await;
    next_call.map(|fci| Cleanup::Cancel {
        carrier: carrier.id.to_string(),
        iccid: iccid.as_str().to_owned(),
        retire,
        fci,
        invoice,
    })
}
