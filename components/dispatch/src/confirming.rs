//! The last step of one carrier's attempt: ConfirmOrder(release) on an allocated profile, then the SIM record
//! updated by the kernel's rule (`order::after_confirm`) inside the record's cell update. Only a SIM still
//! pending takes the outcome: one its owner terminated meanwhile stays terminated (and a profile released
//! for it is retired), one delivered before is never written over. Whatever is not delivered is given back to
//! the carrier's pool.

use esim402_core::esim::es2::{
    self, ConfirmOrderRequest, ConfirmOrderResponse, DispatchAction, StatusCode,
};
use esim402_core::esim::{ActivationCode, Carrier, Eid, Iccid, SimState};
use esim402_core::order::{AfterConfirm, Confirmation, Step, StoredSim};
use esim402_guest::convert::{invalid, message};
use esim402_guest::kv::Stored;
use esim402_guest::wit;

use crate::calls::{self, Deadline, call_twice, header};
use crate::config::Config;
use crate::es2_client::Transport;
use crate::sim_store;

/// Why one carrier did not deliver.
pub enum Skip {
    /// Try the next carrier; the reason goes into the SIM's `failovers`.
    Next(String),
    /// Stop: the request itself is wrong (e.g. the EID), no carrier will do better.
    Reject(wit::Error),
    /// The budget ran out with a profile allocated: the order stays pending.
    Pending(Box<StoredSim>),
    /// Stop, leaving the order as it is for another caller: this one may not have it (another payer's).
    Refuse(wit::Error),
}

impl Skip {
    /// The skip for a carrier's refusal `code` of `carrier`'s call: a refusal of the client's input (the
    /// EID, kernel `es2::client_fault`) stops the order with a 400 on that field; any other fails over.
    pub fn refused(carrier: &Carrier, code: &StatusCode) -> Self {
        match es2::client_fault(code, carrier.id.as_str()) {
            Some((field, why)) => Self::Reject(invalid(field, why)),
            None => Self::Next(format!("{}: {}", carrier.id, reason_of(code))),
        }
    }
}

fn reason_of(code: &StatusCode) -> String {
    let what = match es2::action(code) {
        DispatchAction::FailOver if *code == StatusCode::POOL_EMPTY => "pool empty",
        DispatchAction::FailOverAndAlert => "carrier configuration error",
        DispatchAction::RetryLaterOrFailOver => "SM-DS unreachable",
        _ => "refused",
    };
    format!("{what} ({}/{})", code.subject, code.reason)
}

/// Why a ConfirmOrder released nothing.
pub enum Refusal {
    /// The carrier refused with this code.
    Code(StatusCode),
    /// The call failed.
    Transport(Transport),
    /// The answer cannot be used.
    Unusable(String),
}

/// Confirm and release an allocated profile; returns the activation code.
async fn confirm(
    cfg: &Config,
    carrier: &Carrier,
    step: &Step,
    eid: Option<&Eid>,
    deadline: Deadline,
) -> Result<ActivationCode, Refusal> {
    let iccid = Iccid::parse(&step.iccid).map_err(|e| Refusal::Unusable(e.to_string()))?;
    let body = ConfirmOrderRequest {
        header: header(carrier, &step.confirm_fci),
        iccid,
        eid: eid.cloned(),
        matching_id: None,
        confirmation_code: None,
        smds_address: None,
        release_flag: true,
    };
    let r: ConfirmOrderResponse =
        call_twice(cfg, carrier, es2::CONFIRM_ORDER_PATH, &body, deadline)
            .await
            .map_err(Refusal::Transport)?;
    if let Some(code) = r.header.failure() {
        return Err(Refusal::Code(code));
    }
    // `smdpAddress` is optional in ES2+ (the SM-DP+'s default address applies): the catalog names it.
    let Some(mid) = r.matching_id else {
        return Err(Refusal::Transport(Transport::Malformed(
            "ConfirmOrder succeeded without matchingId".into(),
        )));
    };
    // An empty one only an order naming an EID can use (kernel `es2::usable_matching_id`).
    let mid = es2::usable_matching_id(mid, eid).map_err(|why| Refusal::Unusable(why.into()))?;
    let Some(smdp) = r.smdp_address.or_else(|| carrier.smdp_address.clone()) else {
        return Err(Refusal::Transport(Transport::Malformed(format!(
            "ConfirmOrder succeeded without smdpAddress, and the catalog names no smdp_address for {}",
            carrier.id
        ))));
    };
    ActivationCode::new(smdp, mid, None, false)
        .map_err(|e| Refusal::Unusable(format!("invalid activation code: {e}")))
}

/// Confirm `sim`'s allocated profile (the journal's `step`) and record the outcome, starting from the record's
/// version `at` if the caller holds it: the SIM the order ends with, or why this carrier did not deliver.
pub async fn finish(
    cfg: &Config,
    carrier: &Carrier,
    step: &Step,
    sim: &StoredSim,
    at: Option<Stored>,
    eid: Option<&Eid>,
    deadline: Deadline,
) -> Result<StoredSim, Skip> {
    let answer = confirm(cfg, carrier, step, eid, deadline).await;
    let code = match &answer {
        Ok(code) => Some(code.to_string()),
        // Out of budget with the outcome unknown: leave the order pending; a repeat call resumes it with the
        // same call id.
        Err(Refusal::Transport(Transport::Timeout)) if deadline.next_call().is_none() => {
            return Err(Skip::Pending(Box::new(sim.clone())));
        }
        Err(_) => None,
    };
    let outcome = code
        .as_deref()
        .map_or(Confirmation::Refused, Confirmation::Released);
    let after = match sim_store::after_confirm(sim, at, outcome).await {
        Ok(after) => after,
        Err(e) => {
            // The outcome may not be recorded, and then the order fails: give the profile back rather than
            // leave it allocated (or released under a code nobody will get), its record marked failed first
            // (best effort): one left pending would refuse that profile when the carrier hands it out again
            // (kernel `order::may_record_allocation`). But the write may have landed with its reply lost: what
            // the record says decides (the kernel's answer to the failed mark), never the error alone.
            match sim_store::after_confirm(sim, None, Confirmation::Refused).await {
                // Stored active with its code after all: the order ends with it.
                Ok(AfterConfirm::Delivered(sim)) => return Ok(sim),
                // Terminated meanwhile: nothing delivered, and a profile this confirm released is retired (nobody
                // gets its code), as `conclude` does for any confirm.
                Ok(AfterConfirm::Withdrawn { sim, retire }) => {
                    let retire = retire || code.is_some();
                    let after = AfterConfirm::Withdrawn { sim, retire };
                    return conclude(cfg, carrier, step, after, answer.err()).await;
                }
                // Given up by an earlier attempt, which queued its profile's cancel.
                Ok(AfterConfirm::GivenUp) => {
                    return conclude(cfg, carrier, step, AfterConfirm::GivenUp, None).await;
                }
                Ok(AfterConfirm::Store(_)) => {}
                Err(e) => eprintln!(
                    "dispatch: SIM {} stays pending although its profile is given back: {}",
                    sim.iccid,
                    message(&e)
                ),
            }
            cancel_profile(cfg, carrier, step, false, &sim.invoice_id).await;
            return Err(Skip::Reject(e));
        }
    };
    conclude(cfg, carrier, step, after, answer.err()).await
}

/// Carry out what the kernel decided for the SIM of `step` (`refusal`: why its confirm released nothing).
pub async fn conclude(
    cfg: &Config,
    carrier: &Carrier,
    step: &Step,
    after: AfterConfirm,
    refusal: Option<Refusal>,
) -> Result<StoredSim, Skip> {
    match after {
        AfterConfirm::Store(sim) if sim.state != SimState::Failed => Ok(sim),
        AfterConfirm::Delivered(sim) => Ok(sim),
        AfterConfirm::Store(sim) => {
            cancel_profile(cfg, carrier, step, false, &sim.invoice_id).await;
            Err(match refusal {
                Some(Refusal::Code(code)) => Skip::refused(carrier, &code),
                Some(Refusal::Transport(t)) => {
                    Skip::Next(format!("{}: ConfirmOrder {t}", carrier.id))
                }
                Some(Refusal::Unusable(why)) => Skip::Next(format!("{}: {why}", carrier.id)),
                // Released, but the SM-DP+ had reported the profile dead (kernel `order::after_confirm`).
                None => Skip::Next(format!(
                    "{}: the profile failed at the SM-DP+ before its release was recorded",
                    carrier.id
                )),
            })
        }
        AfterConfirm::Withdrawn { sim, retire } => {
            if retire {
                cancel_profile(cfg, carrier, step, true, &sim.invoice_id).await;
            }
            Err(Skip::Reject(wit::Error::Conflict(format!(
                "SIM {} was terminated by its owner before its order finished; nothing was delivered",
                sim.iccid
            ))))
        }
        AfterConfirm::GivenUp => Err(Skip::Next(format!(
            "{}: the profile was given up by an earlier attempt",
            carrier.id
        ))),
    }
}

/// CancelOrder the profile of `step`: back to the carrier's pool, or `retire`d (`Unavailable`: nobody may
/// download it).
pub async fn cancel_profile(
    cfg: &Config,
    carrier: &Carrier,
    step: &Step,
    retire: bool,
    invoice: &str,
) {
    if let Ok(iccid) = Iccid::parse(&step.iccid) {
        calls::cancel(cfg, carrier, &iccid, retire, invoice).await;
    }
}
