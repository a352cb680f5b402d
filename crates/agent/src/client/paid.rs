//! The paid walk: 402 → policy → sign → record as pending → send, retrying the very same payment while the
//! settlement is pending (see the parent module and the crate's invariant: recorded before it is sent).

use std::time::Duration;

use esim402_core::paid::IN_PROGRESS;
use esim402_core::x402::header::{
    PAYMENT_REQUIRED, PAYMENT_SIGNATURE, decode_payment_required_header,
};
use serde_json::{Value, json};

use super::pending_key::pending_for;
use super::{Agent, Answer, SendError, local, now, random, transient, unexpected};
use crate::error::AgentError;
use crate::pay::{new_payment_id, sign_exact};
use crate::state::{PendingPayment, SimRecord, Spend, SpendStatus, State};

/// How often a `settlement_pending` answer is retried with the same payment before giving up (exit 5, the
/// payment kept for the next run).
pub const PENDING_RETRIES: u32 = 10;
/// The longest wait between two of those retries, whatever `Retry-After` says.
pub const MAX_RETRY_WAIT: Duration = Duration::from_secs(5);

/// A paid request: `POST path` with `body`, or `GET path` (`body` `None`), carrying `owner`'s credential (routes
/// only a SIM's owner may pay for, such as a switch) and `headers` (a proxied device's own) on every sending.
pub(super) struct PaidRequest<'a> {
    pub path: &'a str,
    pub body: Option<&'a Value>,
    pub owner: Option<&'a SimRecord>,
    pub headers: &'a [(&'static str, String)],
    /// The device request the paying proxy pays for ([`crate::replay`]); `None` for the CLI's own.
    pub slot: Option<&'a crate::replay::Slot>,
}

impl PaidRequest<'_> {
    fn method(&self) -> reqwest::Method {
        match self.body {
            Some(_) => reqwest::Method::POST,
            None => reqwest::Method::GET,
        }
    }
}

/// A signed payment recorded as pending under `key`: what [`Agent::deliver`] sends, as is; `valid_before` is
/// its authorization's end, as its pending entry knows it ([`PendingPayment::valid_before`]).
pub(super) struct Held {
    pub key: String,
    pub payment_id: String,
    pub header: String,
    pub valid_before: u64,
}

/// How long after its authorization's `validBefore` a payment may still be settled (a settlement sent just before
/// it, mined just after): until then, an answer that does not say whether it was charged keeps it pending.
pub const SETTLE_GRACE_SECS: u64 = 60;

/// Why [`Agent::deliver`] did not deliver a payment: the error, and whether the facilitator gave no answer at
/// all (unreachable: a connection refused, cut or timed out), which tells a collection pass to send nothing
/// more to it this time.
pub(super) struct Undelivered {
    pub error: AgentError,
    pub unreachable: bool,
}

impl From<AgentError> for Undelivered {
    fn from(error: AgentError) -> Self {
        Self {
            error,
            unreachable: false,
        }
    }
}

impl Agent {
    /// POST `body` to `path`, paying the 402 it answers within the policy; the paid answer. With `owner`, every
    /// request carries that SIM's credential (routes only its owner may pay for, such as a switch).
    pub async fn pay(
        &self,
        path: &str,
        body: &Value,
        purpose: &str,
        owner: Option<&SimRecord>,
    ) -> Result<Answer, AgentError> {
        self.pay_and_keep(path, Some(body), purpose, owner, &[], |_, answer| {
            Ok(answer)
        })
        .await
    }

    /// The paying proxy's walk for a device: `POST path` with the JSON `body`, or `GET path` (`body` `None`: the
    /// fields are the path's query, as `GET /v1/esim/activate?…` takes them), every request carrying the
    /// device's own `headers` (its SIM token or sign-in, its label), paid as [`Agent::pay`] pays. The paid
    /// answer is kept under `slot` in the save that settles its payment ([`crate::replay`]): the device's same
    /// request, sent again after it lost the answer, is answered with it instead of paying again.
    pub async fn pay_for_device(
        &self,
        path: &str,
        body: Option<&Value>,
        headers: &[(&'static str, String)],
        purpose: &str,
        slot: &crate::replay::Slot,
    ) -> Result<Answer, AgentError> {
        let request = PaidRequest {
            path,
            body,
            owner: None,
            headers,
            slot: Some(slot),
        };
        self.pay_request(&request, purpose, |s, answer| {
            crate::replay::remember(
                &mut s.paid_answers,
                slot,
                answer.status,
                &answer.body,
                now(),
            );
            Ok(answer)
        })
        .await
    }

    /// [`Agent::pay`], with `keep` recording in the state what the paid answer bought (a SIM), in the very save
    /// that ends the payment: a failed save or a crash leaves the payment pending, so the same command run again
    /// collects the answer again (the facilitator replays it), never a paid answer that was not kept (a failed
    /// save is [`AgentError::Unavailable`] with `pending`: run the same command again). `keep` changes the state
    /// only when it succeeds; when it fails (the answer names nothing to keep, and a replay would name nothing
    /// either) the payment is settled, the answer kept whole in [`State::unrecorded_answers`], and the error says
    /// where. `body` `None`: a GET (see [`Agent::pay_for_device`]); `headers` go with every request.
    pub(crate) async fn pay_and_keep<T>(
        &self,
        path: &str,
        body: Option<&Value>,
        purpose: &str,
        owner: Option<&SimRecord>,
        headers: &[(&'static str, String)],
        keep: impl FnOnce(&mut State, Answer) -> Result<T, AgentError>,
    ) -> Result<T, AgentError> {
        let request = PaidRequest {
            path,
            body,
            owner,
            headers,
            slot: None,
        };
        self.pay_request(&request, purpose, keep).await
    }

    /// [`Agent::pay_and_keep`] of `request`.
    async fn pay_request<T>(
        &self,
        request: &PaidRequest<'_>,
        purpose: &str,
        keep: impl FnOnce(&mut State, Answer) -> Result<T, AgentError>,
    ) -> Result<T, AgentError> {
        let (path, body) = (request.path, request.body);
        let origin = self.config.origin();
        let state = self.state.load().map_err(local)?;
        // Keyed by the facilitator too: a payment signed for one facilitator is sent again to that one only
        // (another could use the authorization without delivering anything).
        let (key, pending) = pending_for(&state, &origin, path, body)?;
        // The CLI's own payment pending for this request goes again with the label it was first sent with (not
        // this run's: a first sending the facilitator never saw orders the SIM with it).
        let first_label: Option<Vec<(&'static str, String)>> = pending
            .as_ref()
            .filter(|_| request.slot.is_none())
            .map(|p| {
                let mut headers: Vec<_> = request
                    .headers
                    .iter()
                    .filter(|(h, _)| !h.eq_ignore_ascii_case("x-agent-id"))
                    .cloned()
                    .collect();
                headers.extend(p.label.iter().map(|l| ("x-agent-id", l.clone())));
                headers
            });
        let resent;
        let request = match &first_label {
            Some(headers) => {
                resent = PaidRequest {
                    path: request.path,
                    body: request.body,
                    owner: request.owner,
                    headers,
                    slot: None,
                };
                &resent
            }
            None => request,
        };
        let held = match pending {
            // The same request of another of the device's requesters (another credential or label, or another
            // `Idempotency-Key`: modules behind one address): never sent again for it (it would hand this one
            // that one's SIM, and that one would pay again), and nothing new is signed while it is pending (its
            // key is the request's). Before, it was sent again for whoever sent the same body.
            Some(p)
                if request
                    .slot
                    .zip(p.slot.as_ref())
                    .is_some_and(|(mine, theirs)| !mine.same_requester(theirs)) =>
            {
                return Err(AgentError::Unavailable {
                    message: format!(
                        "the payment {id} for this same request, signed for another requester of this device (another \
                         credential, label or Idempotency-Key), is still pending; nothing is signed for this one \
                         while it is (that requester's same request collects it; {})",
                        super::facilitator::forget_hint(&p.payment_id),
                        id = p.payment_id
                    ),
                    pending: false,
                });
            }
            Some(p) => {
                self.say(&format!(
                    "sending again the payment {} still pending for this request (never paid twice)",
                    p.payment_id
                ));
                Held {
                    key,
                    payment_id: p.payment_id,
                    header: p.header,
                    valid_before: p.valid_before,
                }
            }
            None => {
                let first = self
                    .send(
                        request.method(),
                        path,
                        body,
                        &self.credentials(request, None)?,
                    )
                    .await
                    .map_err(|e| self.unreachable(&e, false))?;
                if first.status != 402 {
                    return Err(unexpected(&first));
                }
                let required = first
                    .header(PAYMENT_REQUIRED)
                    .ok_or_else(|| AgentError::Refused {
                        status: 402,
                        message: format!(
                            "402 without a {PAYMENT_REQUIRED} header: {}",
                            first.message()
                        ),
                    })
                    .and_then(|h| {
                        decode_payment_required_header(h).map_err(|e| AgentError::Refused {
                            status: 402,
                            message: e.to_string(),
                        })
                    })?;
                let now = now();
                // A clock off the facilitator's would sign an authorization valid too long, counted on the wrong
                // day: nothing is signed (see `crate::clock`). Passing (NTP sets it): `watch` tries again next
                // tick, a device is told to send again (503).
                crate::clock::check(first.header("date"), now).map_err(|message| {
                    AgentError::Unavailable {
                        message,
                        pending: false,
                    }
                })?;
                let (req, approval) = self
                    .policy
                    .choose(&required.accepts, state.spent_today(now))?;
                let price = approval.price;
                let id = new_payment_id(random()?);
                let nonce = random()?;
                let spend = Spend {
                    payment_id: id.as_str().to_owned(),
                    purpose: purpose.to_owned(),
                    at: now,
                    amount_usdc: price,
                    network: req.network.clone(),
                    pay_to: req.pay_to.clone(),
                    status: SpendStatus::Pending,
                    transaction: None,
                };
                // Within the wallet's shared cap too (the proxy's devices), before anything is signed: reserved
                // with the record, so two devices paying at once cannot both pass the last of it.
                if let Some(budget) = &self.budget {
                    budget.reserve(&spend, now).map_err(local)??;
                }
                let signed = match sign_exact(
                    &self.config.key,
                    req,
                    &approval.domain,
                    Some(&required.resource),
                    now,
                    nonce,
                    &id,
                ) {
                    Ok(signed) => signed,
                    Err(e) => {
                        self.release(id.as_str())?;
                        return Err(AgentError::Refused {
                            status: 402,
                            message: e.to_string(),
                        });
                    }
                };
                self.say(&format!(
                    "paying {price} USDC on {} to {} (payment {})",
                    req.network,
                    req.pay_to,
                    id.as_str()
                ));
                // Recorded before it is sent: a lost reply must find it (module docs).
                let pending = PendingPayment {
                    payment_id: id.as_str().to_owned(),
                    header: signed.header.clone(),
                    valid_before: signed.valid_before,
                    slot: request.slot.cloned(),
                    // The CLI's own label (a proxied device's headers go with its slot).
                    label: request
                        .slot
                        .is_none()
                        .then(|| header_value(request.headers, "x-agent-id"))
                        .flatten(),
                };
                if let Err(e) = self.lock_for_signing() {
                    self.release(id.as_str())?;
                    return Err(e);
                }
                let told = spend.clone();
                // Never over a payment pending for the same request (one recorded meanwhile by another command:
                // it would be lost, and its purchase paid twice).
                let begun = self.state.update(|s| {
                    let free = !s.pending.contains_key(&key);
                    if free {
                        s.begin(&key, pending, spend);
                    }
                    free
                });
                match begun {
                    Ok(true) => {}
                    Ok(false) => {
                        self.release(id.as_str())?;
                        return Err(AgentError::Unavailable {
                            message: "another esim402-agent recorded a payment for this very request meanwhile"
                                .into(),
                            pending: true,
                        });
                    }
                    Err(e) => {
                        self.release(id.as_str())?;
                        return Err(local(e));
                    }
                }
                if let Some(hook) = &self.on_signed {
                    hook(&told);
                }
                Held {
                    key,
                    payment_id: id.as_str().to_owned(),
                    header: signed.header,
                    valid_before: signed.valid_before,
                }
            }
        };
        self.deliver(request, &held, PENDING_RETRIES, keep)
            .await
            .map_err(|u| u.error)
    }

    /// The headers of one sending of `request`: its owner's credential (a fresh wallet sign-in each time when
    /// there is no token: a sign-in is single-use), the caller's headers, and `extra`.
    fn credentials(
        &self,
        request: &PaidRequest<'_>,
        extra: Option<(&'static str, String)>,
    ) -> Result<Vec<(&'static str, String)>, AgentError> {
        let mut all = Vec::new();
        if let Some(sim) = request.owner {
            all.push(self.credential(sim, request.path)?);
        }
        all.extend(request.headers.iter().cloned());
        all.extend(extra);
        Ok(all)
    }

    /// Send the payment `held` (already recorded as pending under `held.key`) with `request`, up to `tries`
    /// times in all while its settlement is pending, and end it as its answer says (see [`Agent::pay_and_keep`]
    /// for `keep`). Never signs anything: what is sent is `held.header` as recorded.
    pub(super) async fn deliver<T>(
        &self,
        request: &PaidRequest<'_>,
        held: &Held,
        tries: u32,
        keep: impl FnOnce(&mut State, Answer) -> Result<T, AgentError>,
    ) -> Result<T, Undelivered> {
        let Held {
            key,
            payment_id,
            header,
            valid_before,
        } = held;
        let (path, body) = (request.path, request.body);
        let method = request.method();
        let tries = tries.max(1);
        let mut settling = String::new();
        for sent in 1..=tries {
            let answer = self
                .send(
                    method.clone(),
                    path,
                    body,
                    &self.credentials(request, Some((PAYMENT_SIGNATURE, header.clone())))?,
                )
                .await
                .map_err(|e| Undelivered {
                    error: self.unreachable(&e, true),
                    unreachable: matches!(e, SendError::Transport(_)),
                })?;
            let code = answer.body["error"]["code"].as_str().unwrap_or_default();
            match answer.status {
                // Paid for, but unreadable (a firewall's or maintenance page's HTML, a cut body): what was bought
                // is not known, so the payment stays pending and the same payment collects the answer later (the
                // facilitator replays it). Ending it here lost the answer, and a rerun paid again.
                200..=299 if !answer.json => {
                    return Err(AgentError::Unavailable {
                        message: format!(
                            "the facilitator answered the payment {payment_id} ({}) with a body that is not JSON{}",
                            answer.status,
                            answer
                                .header("content-type")
                                .map(|t| format!(" ({t})"))
                                .unwrap_or_default()
                        ),
                        pending: true,
                    }
                    .into());
                }
                200..=299 => {
                    let tx = answer.body["transaction"].as_str().map(str::to_owned);
                    let (status, raw) = (answer.status, answer.body.clone());
                    // One save: what was bought, and the payment settled (see `pay_and_keep`).
                    let saved = self.state.update(|s| {
                        let kept = keep(s, answer);
                        s.settled(key, payment_id, tx);
                        if kept.is_err() {
                            // The answer itself cannot be kept (it names no SIM): the facilitator replays that
                            // same answer to every re-run, so keeping the payment pending would fail the same
                            // way forever. Money moved: the payment is settled and the answer kept whole.
                            s.unrecorded_answers.insert(payment_id.clone(), raw);
                        }
                        kept
                    });
                    return match saved {
                        Ok(Ok(kept)) => Ok(kept),
                        Ok(Err(e)) => Err(Undelivered::from(AgentError::Refused {
                            status,
                            message: format!(
                                "the payment {payment_id} went through, but {}; the whole answer is kept in {} \
                                 (unrecorded_answers.{payment_id}); nothing is pending: running the command again \
                                 pays again",
                                match &e {
                                    AgentError::Refused { message, .. } => message.clone(),
                                    other => other.to_string(),
                                },
                                self.state.path().join(crate::state::FILE).display()
                            ),
                        })),
                        // Nothing saved: the payment is still pending as recorded before it was sent, and the
                        // facilitator replays its answer to it.
                        Err(e) => Err(Undelivered::from(AgentError::Unavailable {
                            message: format!(
                                "the facilitator answered the payment {payment_id} ({status}: paid for), but the \
                                 answer could not be saved: {e}"
                            ),
                            pending: true,
                        })),
                    };
                }
                402 if code == "settlement_pending" => {
                    settling = answer.body["transaction"]
                        .as_str()
                        .unwrap_or("?")
                        .to_owned();
                    if sent == tries {
                        // Sent as often as allowed: it stays pending, sent again next time.
                        break;
                    }
                    let wait = answer
                        .header("retry-after")
                        .and_then(|s| s.parse().ok())
                        .map_or(MAX_RETRY_WAIT, Duration::from_secs)
                        .min(MAX_RETRY_WAIT);
                    self.say(&format!(
                        "settlement pending (tx {}); sending the same payment again in {}s",
                        answer.body["transaction"].as_str().unwrap_or("?"),
                        wait.as_secs()
                    ));
                    tokio::time::sleep(wait).await;
                }
                // Refused before settlement: nothing was charged. One that says it charged (`charged: true`)
                // never frees its spend: it goes on to the arms below (kept pending, or its spend kept). Only
                // the facilitator's own 402 (one saying `charged: false`, or a new challenge): a 402 from
                // something in front of it (a hosting platform's "payment required" page, JSON or not) says
                // nothing of this payment, which goes on to the foreign-4xx arm below. Before, it ended the
                // payment as uncharged, and a payment charged earlier (its answer lost) was paid again on the
                // next run.
                402 if answer.body["charged"] == json!(false)
                    || answer.body["charged"].is_null()
                        && answer.header(PAYMENT_REQUIRED).is_some() =>
                {
                    self.state
                        .update(|s| s.refused(key, payment_id))
                        .map_err(local)?;
                    self.release(payment_id)?;
                    return Err(AgentError::Refused {
                        status: 402,
                        message: format!("payment refused: {}", answer.message()),
                    }
                    .into());
                }
                // The payment stopped verifying after its profile was ordered (its authorization expired while
                // the order ran): the facilitator withdrew the profile and took nothing (`pay/withdraw.rs`).
                410 if withdrawn_uncharged(&answer) => {
                    self.state
                        .update(|s| s.refused(key, payment_id))
                        .map_err(local)?;
                    self.release(payment_id)?;
                    return Err(AgentError::Refused {
                        status: 410,
                        message: format!(
                            "payment withdrawn, nothing was charged (run the command again to pay afresh): {}",
                            answer.message()
                        ),
                    }
                    .into());
                }
                _ if answer.body["charged"] == json!(false) => {
                    // The facilitator says nothing was charged (e.g. the carrier failed the order): forget it;
                    // running the command again pays afresh.
                    self.state
                        .update(|s| s.refused(key, payment_id))
                        .map_err(local)?;
                    self.release(payment_id)?;
                    // A refusal of the request itself (a 4xx: a switch paid from another wallet than the SIM's
                    // owner's, two invoices named) is final: sent again it is refused again (before, `watch`
                    // signed and released a payment every tick). A 5xx or a throttle may pass.
                    if (400..500).contains(&answer.status) && !transient(&answer) {
                        return Err(AgentError::Refused {
                            status: answer.status,
                            message: format!("nothing was charged: {}", answer.message()),
                        }
                        .into());
                    }
                    return Err(AgentError::Unavailable {
                        message: format!(
                            "facilitator failed ({}), nothing was charged: {}",
                            answer.status,
                            answer.message()
                        ),
                        pending: false,
                    }
                    .into());
                }
                // Sent again while the facilitator still drives its first sending: it may yet be settled, and
                // only this payment collects its answer then.
                409 if answer.message().contains(IN_PROGRESS) => {
                    return Err(AgentError::Unavailable {
                        message: format!(
                            "the facilitator is still processing this payment ({})",
                            answer.message()
                        ),
                        pending: true,
                    }
                    .into());
                }
                // Charged, and the refund it is owed not recorded yet: sending the same payment again records it
                // (the facilitator resumes the attempt), so it is kept.
                _ if answer.body["charged"] == json!(true)
                    && answer.body["refund"]["status"] == json!("unrecorded") =>
                {
                    return Err(AgentError::Unavailable {
                        message: format!(
                            "the facilitator charged this payment and has not recorded its refund yet ({}): {}",
                            answer.status,
                            answer.message()
                        ),
                        pending: true,
                    }
                    .into());
                }
                // Charged and owed back, its refund recorded (the order failed after the payment settled): the
                // facilitator's answer is final (it replays it to every resend), so the payment is not sent again;
                // its spend stays counted until the refund arrives. Before, a 5xx of this kind kept it pending
                // for good, sent again by every command and holding back the purchase it paid for.
                _ if answer.body["charged"] == json!(true) && answer.body["refund"].is_object() => {
                    self.state
                        .update(|s| s.unknown(key, payment_id))
                        .map_err(local)?;
                    return Err(AgentError::Refused {
                        status: answer.status,
                        message: format!(
                            "the facilitator charged this payment and owes it back (refund {}): {}",
                            answer.body["refund"]["status"]
                                .as_str()
                                .unwrap_or("recorded"),
                            answer.message()
                        ),
                    }
                    .into());
                }
                // A timeout or throttling, most likely from something between us and the facilitator (408, 429,
                // nginx's 499, or any answer with `Retry-After`): the payment may have landed, and only it
                // collects the answer then.
                _ if transient(&answer) => {
                    return Err(AgentError::Unavailable {
                        message: format!(
                            "the request timed out or was throttled ({}): {}",
                            answer.status,
                            answer.message()
                        ),
                        pending: true,
                    }
                    .into());
                }
                // Kept even once the authorization has expired: an attempt that got as far as an order is
                // resumed and completed by the facilitator, and the same payment collects its answer.
                500.. => {
                    return Err(AgentError::Unavailable {
                        message: format!(
                            "facilitator failed ({}): {}",
                            answer.status,
                            answer.message()
                        ),
                        pending: true,
                    }
                    .into());
                }
                // Too large for something on the way (a 413, 414 or 431 that is not the facilitator's own
                // refusal): the request never reached the facilitator, which reads one whole before acting on
                // it, so nothing was charged. Kept pending, every sending would meet the same limit.
                413 | 414 | 431 if !answer.body["error"].is_object() => {
                    self.state
                        .update(|s| s.refused(key, payment_id))
                        .map_err(local)?;
                    self.release(payment_id)?;
                    return Err(AgentError::Refused {
                        status: answer.status,
                        message: format!(
                            "the payment {payment_id} was stopped on its way ({}, too large), before the \
                             facilitator: nothing was charged: {}",
                            answer.status,
                            answer.message()
                        ),
                    }
                    .into());
                }
                // A redirect (never followed: see `http_client`), or a 4xx that is not the facilitator's own
                // refusal (no JSON `error` object: an intermediary's page, a cut body): it says nothing of the
                // payment, which may have been charged, so it stays pending while it can still be settled, and
                // the same payment collects its answer later. Once it can no longer be (its `validBefore` and
                // the grace past), the same answer is a WAF's or proxy's refusal that every sending meets: its
                // spend stays counted (`unknown`) and the request is no longer held back by it.
                // A 402 that got here not saying it charged is not the facilitator's refusal either (the 402
                // arms above).
                300..=499
                    if answer.status < 400
                        || answer.status == 402 && answer.body["charged"] != json!(true)
                        || !answer.body["error"].is_object() =>
                {
                    let what = match answer.header("location") {
                        Some(to) if answer.status < 400 => {
                            format!("a redirect ({} to {to})", answer.status)
                        }
                        _ if answer.status < 400 => format!("a redirect ({})", answer.status),
                        _ => format!("a {} that is not the facilitator's refusal", answer.status),
                    };
                    if now() < valid_before.saturating_add(SETTLE_GRACE_SECS) {
                        return Err(AgentError::Unavailable {
                            message: format!(
                                "the payment {payment_id} got {what}, which does not say whether it was charged: \
                                 {}",
                                answer.message()
                            ),
                            pending: true,
                        }
                        .into());
                    }
                    self.state
                        .update(|s| s.unknown(key, payment_id))
                        .map_err(local)?;
                    return Err(AgentError::Refused {
                        status: answer.status,
                        message: format!(
                            "the payment {payment_id} got {what} after its authorization expired ({}): it can no \
                             longer be charged; its spend stays counted (it may have been), and the request is no \
                             longer held back by it (sent again, it is paid afresh): {}",
                            super::utc_time(*valid_before),
                            answer.message()
                        ),
                    }
                    .into());
                }
                _ => {
                    // Another conflict (the invoice settled or held by another payment): stop sending it, keep
                    // its spend.
                    self.state
                        .update(|s| s.unknown(key, payment_id))
                        .map_err(local)?;
                    return Err(unexpected(&answer).into());
                }
            }
        }
        Err(AgentError::Unavailable {
            message: format!(
                "settlement still pending (tx {settling}) after {tries} {}",
                if tries == 1 { "try" } else { "tries" }
            ),
            pending: true,
        }
        .into())
    }

    /// With [`Agent::lock_on_sign`], take the state directory's lock (creating it) now that a payment is about
    /// to be recorded, held until the agent is dropped.
    fn lock_for_signing(&self) -> Result<(), AgentError> {
        if !self.lock_on_sign {
            return Ok(());
        }
        let mut held = self
            .held
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if held.is_some() {
            return Ok(());
        }
        match self.state.try_lock() {
            Ok(Some(lock)) => {
                *held = Some(lock);
                Ok(())
            }
            Ok(None) => Err(AgentError::Unavailable {
                message: format!(
                    "the payment state {} is in use by another esim402-agent; nothing was sent",
                    self.state.path().display()
                ),
                pending: false,
            }),
            Err(e) => Err(local(e)),
        }
    }

    /// Give the shared budget's reservation of `payment_id` back (nothing was charged).
    fn release(&self, payment_id: &str) -> Result<(), AgentError> {
        match &self.budget {
            Some(budget) => budget.release(payment_id).map_err(local),
            None => Ok(()),
        }
    }
}

/// Whether a 410 says its payment was withdrawn without a charge: the facilitator's `expired` answer to a
/// payment that stopped verifying, which says `charged: false` (facilitators from before `8bb2046` say it in
/// the message only: "… so nothing was charged and the profile was withdrawn …"). One that says
/// `charged: true` (a late transfer owed back) or says neither keeps its spend.
fn withdrawn_uncharged(answer: &Answer) -> bool {
    answer.status == 410
        && (answer.body["charged"] == json!(false)
            || answer.body["charged"] != json!(true)
                && answer.body["error"]["message"]
                    .as_str()
                    .is_some_and(|m| m.contains("nothing was charged")))
}

/// The value of header `name` among `headers`, if present.
fn header_value(headers: &[(&'static str, String)], name: &str) -> Option<String> {
    headers
        .iter()
        .find(|(h, _)| h.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.clone())
}
