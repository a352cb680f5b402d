//! A device's request end to end, one at a time per device: forwarded; an answer other than a 402 passed back;
//! a 402 on a paid route paid by the device's agent within the device's budget and the wallet's daily cap, and
//! answered with the paid result (or a refusal naming why nothing was paid).
//!
//! A paid answer is kept a while in the device's state ([`crate::replay`]): the device's same request sent again
//! (its answer lost on the way) by the same requester (its credential and label, to the same facilitator) is
//! answered with it before anything is forwarded or paid; a device named by a header only by its
//! `Idempotency-Key`.
//!
//! Every payment signed for the device is in the audit log as it is recorded, before it is sent, and again with
//! how it ended. A device's state directory is made only once a payment is signed for it.

use std::sync::Arc;

use http_body_util::Full;
use hyper::Response;
use serde_json::{Value, json};

use super::audit::{device_spends, outcomes, unix_now};
use super::checks::is_paid_route;
use super::devices::{MAX_BUSY_DEVICES, device_lock};
use super::forward::Parts;
use super::reply::{Reply, error_reply, json_reply};
use super::shared::{Shared, over_budget};
use crate::client::Before;
use crate::replay::{Recall, Requester, Slot, hand_over, recall};
use crate::state::Spend;
use crate::{AgentError, StateDir};

impl Shared {
    pub(super) async fn handle(&self, req: Parts, device: String) -> Reply {
        let lock = device_lock(&mut *self.devices.lock().await, &device);
        let Some(lock) = lock else {
            return error_reply(
                503,
                "unavailable",
                &format!(
                    "{MAX_BUSY_DEVICES} devices have a request in progress: send the request again shortly"
                ),
            );
        };
        let _one_at_a_time = lock.lock().await;
        // A paid request sent again (its answer lost on the way to the device) is answered with the answer kept,
        // never forwarded nor paid again.
        let slot = if is_paid_route(req.method.as_str(), &req.path) {
            let key = req.idempotency_key.as_deref();
            // Tied to who asks (its credential, its label, the facilitator), never to the device id alone: one
            // claimed by a header, or an address shared behind a NAT, is not a requester.
            let origin = self.config.origin();
            let from = Requester {
                origin: &origin,
                headers: &req.headers,
                claimed: self.settings.device_header.is_some(),
            };
            let slot = match Slot::of(req.method.as_str(), &req.path, &req.body, key, &from) {
                Ok(slot) => slot,
                Err(why) => return error_reply(400, "invalid_input", &why),
            };
            if let Some(reply) = self.replay(&slot, &req.path, &device) {
                return reply;
            }
            Some(slot)
        } else {
            None
        };
        // A payment still pending for this very request (its answer lost on the way) is sent again before
        // anything else. Forwarded unpaid first, the request may no longer be answered 402 (a switch already made
        // answers 409, a quota request is granted) and the payment would stay pending, its purchase never
        // delivered.
        let body = (req.method != reqwest::Method::GET)
            .then(|| serde_json::from_slice::<Value>(&req.body).ok())
            .flatten();
        let parsed = req.method == reqwest::Method::GET || body.is_some();
        // What the device's state says of it, read once (`client/device.rs`).
        let before = match (&slot, parsed) {
            (Some(slot), true) => {
                self.agent_for(&device)
                    .before_paying(&req.path, body.as_ref(), slot)
            }
            _ => Before::Clear,
        };
        let resend = before == Before::Resend;
        // The device's other payments still pending for the same purchase are sent again first (each answer kept
        // for its own request: a collected top-up may make this one free); one still pending holds a new payment
        // back, told only if the request does draw a 402.
        let mut held_back = None;
        match (before, &slot) {
            (Before::KeyTaken, _) => {
                return error_reply(
                    422,
                    "invalid_input",
                    "this Idempotency-Key was sent with another request whose payment is still pending; nothing \
                     was paid (send that request again to collect it, or use a new key)",
                );
            }
            (Before::Earlier, Some(slot)) => {
                let collected = match self
                    .collect_earlier(&req, body.as_ref(), slot, &device)
                    .await
                {
                    Ok((held, collected)) => {
                        held_back = held;
                        collected
                    }
                    Err(refused) => return refused,
                };
                // A payment just collected may have been this very request's under another spelling (a paid
                // GET's query in another order): its answer is now kept for it.
                if collected && let Some(reply) = self.replay(slot, &req.path, &device) {
                    return reply;
                }
            }
            _ => {}
        }
        if !resend {
            let (status, headers, body) = match self.forward(&req).await {
                Ok(a) => a,
                Err(e) => {
                    let why = match e {
                        crate::client::SendError::Transport(e) => {
                            format!("facilitator unreachable: {e}")
                        }
                        e @ crate::client::SendError::TooLarge { .. } => {
                            format!("facilitator: {e}")
                        }
                    };
                    return error_reply(502, "unavailable", &why);
                }
            };
            if let (402, Some(held)) = (status, held_back) {
                return error_reply(503, "unavailable", &held.to_string());
            }
            if status != 402 {
                let mut r = Response::new(Full::new(body));
                *r.status_mut() =
                    hyper::StatusCode::from_u16(status).unwrap_or(hyper::StatusCode::BAD_GATEWAY);
                for name in [reqwest::header::CONTENT_TYPE, reqwest::header::ALLOW] {
                    if let Some(v) = headers.get(&name) {
                        r.headers_mut().insert(name, v.clone());
                    }
                }
                return r;
            }
        }
        let Some(slot) = slot else {
            return error_reply(
                402,
                "payment_required",
                "the facilitator asks for a payment the proxy does not make: it pays only to activate a SIM (POST \
                 /v1/esim/activate, or GET with the fields as a query), top it up (POST /v1/esim/{iccid}/data) or \
                 switch it (POST /v1/esim/{iccid}/switch); nothing was paid",
            );
        };
        let json_body = if req.method == reqwest::Method::GET {
            // The query form: its fields are the query, sent again as they came.
            if !req.body.is_empty() {
                return error_reply(
                    400,
                    "invalid_input",
                    "a paid GET carries its fields in the query, not in a body",
                );
            }
            None
        } else {
            let Ok(json_body) = serde_json::from_slice::<Value>(&req.body) else {
                return error_reply(400, "invalid_input", "the body must be JSON to be paid for");
            };
            Some(json_body)
        };
        // Every payment signed for the device is logged as it is recorded (what the agent signed: its amount,
        // recipient, network and id), before it is sent.
        let signed = Arc::new(std::sync::Mutex::new(Vec::<Spend>::new()));
        let hook: crate::client::SignedHook = {
            let (log, signed, device, path) = (
                self.audit.clone(),
                signed.clone(),
                device.clone(),
                req.path.clone(),
            );
            Arc::new(move |spend: &Spend| {
                log.append(&json!({
                    "at": unix_now(), "event": "signed", "device": device, "path": path,
                    "payment_id": spend.payment_id, "amount_usdc": spend.amount_usdc,
                    "pay_to": spend.pay_to, "network": spend.network,
                }));
                signed
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .push(spend.clone());
            })
        };
        let agent = self.agent_for(&device).on_signed(hook);
        // A device's directory is made when a payment is first signed for it, not for every id a client names:
        // until then there is nothing to lock (the agent locks it as it signs).
        let exists = agent.state().path().exists();
        let agent = if exists { agent } else { agent.lock_on_sign() };
        // Another command (the CLI run by hand on this device's directory) holds it: passing, so 503 (the device
        // sends again); a directory that cannot be locked at all is the proxy's own fault.
        let _state = match exists.then(|| agent.state().try_lock()) {
            None => None,
            Some(Ok(Some(l))) => Some(l),
            Some(Ok(None)) => {
                return error_reply(
                    503,
                    "unavailable",
                    "this device's payment state is in use by another esim402-agent; send the request again shortly",
                );
            }
            Some(Err(e)) => return error_reply(500, "internal", &e),
        };
        let before = device_spends(agent.state());
        let result = agent
            .pay_for_device(
                &req.path,
                json_body.as_ref(),
                &req.headers,
                &format!("device {device}"),
                &slot,
            )
            .await;
        let signed = std::mem::take(
            &mut *signed
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        );
        let after = device_spends(agent.state());
        for (spend, outcome) in outcomes(before.as_ref(), &signed, after.as_ref()) {
            let mut entry = json!({
                "at": unix_now(), "event": outcome, "device": device, "path": req.path,
                "payment_id": spend.payment_id, "amount_usdc": spend.amount_usdc,
                "pay_to": spend.pay_to, "network": spend.network,
                "transaction": spend.transaction,
            });
            // The facilitator's own figures, beside the agent's.
            if let (Ok(paid), "settled") = (&result, outcome) {
                entry["status"] = json!(paid.status);
                entry["invoice_id"] = paid.body["invoice_id"].clone();
                entry["facilitator_amount_usdc"] = paid.body["amount_usdc"].clone();
            }
            self.audit.append(&entry);
        }
        drop(agent);
        match result {
            Ok(paid) => json_reply(paid.status, &paid.body),
            Err(AgentError::Policy(refusal)) => error_reply(
                403,
                "over_budget",
                &over_budget(&device, &refusal, &self.policy, &self.settings),
            ),
            // A redirect the agent does not follow is no answer a device can follow either.
            Err(AgentError::Refused { status, message }) => {
                error_reply(if status < 400 { 502 } else { status }, "refused", &message)
            }
            // A payment kept pending (the facilitator unreachable, or its paid answer not saved here): the
            // device's same request sends that very payment again and collects what it bought.
            Err(AgentError::Unavailable {
                message,
                pending: true,
            }) => error_reply(
                503,
                "unavailable",
                &format!(
                    "{message}; the payment is kept: send the same request again to collect what it paid for (it is never paid twice)"
                ),
            ),
            Err(e @ AgentError::Unavailable { .. }) => {
                error_reply(503, "unavailable", &e.to_string())
            }
            Err(e) => error_reply(500, "internal", &e.to_string()),
        }
    }

    /// Send again the device's other payments pending for the purchase `req` makes (`body`: its JSON, `None`
    /// for a GET), under the device's state lock, each outcome in the audit log: why a new payment must wait, if
    /// one does (`None`: go on), and whether any was collected. `Err`: the answer to give at once (the state is
    /// another command's, or cannot be read).
    async fn collect_earlier(
        &self,
        req: &Parts,
        body: Option<&Value>,
        slot: &Slot,
        device: &str,
    ) -> Result<(Option<AgentError>, bool), Reply> {
        let agent = self.agent_for(device);
        let _state = match agent.state().try_lock() {
            Ok(Some(l)) => l,
            Ok(None) => {
                return Err(error_reply(
                    503,
                    "unavailable",
                    "this device's payment state is in use by another esim402-agent; send the request again shortly",
                ));
            }
            Err(e) => return Err(error_reply(500, "internal", &e)),
        };
        let before = device_spends(agent.state());
        let earlier = agent
            .collect_for_device(&req.path, body, slot, &req.headers)
            .await
            .map_err(|e| error_reply(500, "internal", &e.to_string()))?;
        let after = device_spends(agent.state());
        for (spend, outcome) in outcomes(before.as_ref(), &[], after.as_ref()) {
            let Some(sent) = earlier
                .sent
                .iter()
                .find(|s| s.payment_id == spend.payment_id)
            else {
                continue;
            };
            let mut entry = json!({
                "at": unix_now(), "event": outcome, "device": device, "path": sent.path,
                "payment_id": spend.payment_id, "amount_usdc": spend.amount_usdc,
                "pay_to": spend.pay_to, "network": spend.network,
                "transaction": spend.transaction, "collected_before": true,
            });
            // The facilitator's own figures, beside the agent's (as for a payment of the request itself).
            if let (Some((status, body)), "settled") = (&sent.answer, outcome) {
                entry["status"] = json!(status);
                entry["invoice_id"] = body["invoice_id"].clone();
                entry["facilitator_amount_usdc"] = body["amount_usdc"].clone();
            }
            self.audit.append(&entry);
        }
        let collected = earlier.sent.iter().any(|s| s.answer.is_some());
        Ok((earlier.held_back, collected))
    }

    /// The answer to `slot` if the device's same request was paid for a short while ago (kept in its state,
    /// [`crate::replay`]), logged as `replayed`; a refusal if its `Idempotency-Key` named another request.
    /// `None`: go on (forward it, pay it).
    fn replay(&self, slot: &Slot, path: &str, device: &str) -> Option<Reply> {
        let dir = StateDir::new(self.settings.state_dir.join("devices").join(device));
        let state = match dir.load() {
            Ok(state) => state,
            Err(e) => return Some(error_reply(500, "internal", &e)),
        };
        let now = unix_now();
        let recalled = match recall(&state.paid_answers, slot, now) {
            // An answer another request collected for this one: handed over once (a state update).
            Recall::Nothing if state.collected_answers.contains_key(&slot.key) => {
                match dir
                    .update(|s| hand_over(&mut s.collected_answers, &mut s.paid_answers, slot, now))
                {
                    Ok(found) => found,
                    Err(e) => return Some(error_reply(500, "internal", &e)),
                }
            }
            found => found,
        };
        match recalled {
            Recall::Nothing => None,
            Recall::OtherRequest => Some(error_reply(
                422,
                "invalid_input",
                "this Idempotency-Key was sent with another request, whose answer is kept; nothing was paid",
            )),
            Recall::Answer(kept) => {
                self.audit.append(&json!({
                    "at": unix_now(), "event": "replayed", "device": device, "path": path,
                    "status": kept.status, "invoice_id": kept.body["invoice_id"],
                    "transaction": kept.body["transaction"], "paid_at": kept.at,
                }));
                Some(json_reply(kept.status, &kept.body))
            }
        }
    }
}
