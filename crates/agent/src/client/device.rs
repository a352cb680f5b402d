//! The paying proxy's earlier payments for a device's purchase: before a device's request is paid, every other
//! payment of the same requester (its credential and label, [`crate::replay::Slot::who`]) pending in the device's
//! state for the same purchase (its kind and target: any activation, a top-up or a switch of the same SIM)
//! holds a new payment for that purchase back while it stays pending: it may have been charged and bought what
//! the new one would (before, a device whose paid activation or top-up was left pending got a second one paid
//! by sending another body: another `data_mb`, `quota_kb` or the query form).
//!
//! One whose answer its own request can read back ([`crate::replay::Slot::kept`]), or a top-up (whose answer the
//! device does not need: the data is credited), is sent again first, its answer kept for its own request until
//! that request comes back ([`crate::replay::keep_collected`]); once that ends it, it holds nothing back. Any
//! other of the requester's (a device named by a header without a key, an earlier proxy's) is left to its own
//! request while its authorization can still be settled (`validBefore` and [`SETTLE_GRACE_SECS`]); after that
//! it is sent again here too, its answer kept for the operator ([`crate::State::unrecorded_answers`]), so the
//! requester is not held back for ever by a request it will not send again (that request, sent again, pays
//! anew: its answer is with the operator). Another requester's payment for this very request (the same body:
//! its key in the state is this request's) is never sent here (with this request's credential a switch would
//! be refused, and a refusal would end a payment that may have been charged): it holds this request back until
//! its own request collects it or the operator gives it up (`Agent::pay_for_device`). One pending with another
//! facilitator (the proxy restarted with another `--url`) is never sent here, and holds back the same way.
//!
//! An `Idempotency-Key` names one request: while a payment signed under it is pending, the key sent with
//! another request (or by another requester) is refused ([`Before::KeyTaken`]), as a kept answer's is.

use serde_json::Value;

use super::collect::{PendingRequest, Purchase};
use super::facilitator::forget_hint;
use super::paid::{Held, PaidRequest, SETTLE_GRACE_SECS};
use super::pending_key::pending_for;
use super::{Agent, local, now};
use crate::error::AgentError;
use crate::replay::Slot;
use crate::state::{PendingPayment, State};

/// What [`Agent::collect_for_device`] did: the payments it sent again, and why a new payment for the purchase
/// must wait, if one is still held back.
#[derive(Debug, Default)]
pub struct Earlier {
    /// Each payment sent again.
    pub sent: Vec<Sent>,
    /// A payment for the same purchase still pending ([`AgentError::Unavailable`], nothing signed).
    pub held_back: Option<AgentError>,
}

/// A payment [`Agent::collect_for_device`] sent again.
#[derive(Debug)]
pub struct Sent {
    /// Its payment id.
    pub payment_id: String,
    /// The path of the request it paid for.
    pub path: String,
    /// The facilitator's paid answer (status, body), if it was collected.
    pub answer: Option<(u16, Value)>,
}

/// What a device's state says of a paid request before it is forwarded ([`Agent::before_paying`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Before {
    /// A payment signed for this very request of this requester is pending with this facilitator: it is sent
    /// again ([`Agent::pay_for_device`]), before anything is forwarded unpaid.
    Resend,
    /// Its `Idempotency-Key` names another request (or requester) whose payment is pending: refused (module
    /// docs; before, the new body was paid too, and the first payment's answer, collected first, was
    /// overwritten under the key). A request without a key is its own key (its requester included).
    KeyTaken,
    /// Other payments pending for the same purchase hold it back or are collected first
    /// ([`Agent::collect_for_device`]).
    Earlier,
    /// None of these: forward it.
    Clear,
}

impl Agent {
    /// What the device's state (one read of it) says of the request `path` with `body` (`None`: a GET) of
    /// `slot`'s requester before it is forwarded. A state that cannot be read says [`Before::Clear`]: the
    /// request goes on as any other, and if it draws a 402, paying reads the state again and reports the
    /// problem. A payment pending with another facilitator, or another requester's for this same request, is
    /// never [`Before::Resend`].
    pub fn before_paying(&self, path: &str, body: Option<&Value>, slot: &Slot) -> Before {
        let Ok(state) = self.state.load() else {
            return Before::Clear;
        };
        let resend = matches!(
            pending_for(&state, &self.config.origin(), path, body),
            Ok((_, Some(p))) if p.slot.as_ref().is_none_or(|s| s.same_requester(slot))
        );
        let key_taken = || {
            state.pending.values().any(|p| {
                p.slot
                    .as_ref()
                    .is_some_and(|s| s.key == slot.key && s.request != slot.request)
            })
        };
        if resend {
            Before::Resend
        } else if key_taken() {
            Before::KeyTaken
        } else if !self.earlier(&state, path, body, slot).is_empty() {
            Before::Earlier
        } else {
            Before::Clear
        }
    }

    /// Send again, once each, the payments of [`Before::Earlier`] that may be collected here (module
    /// docs), keeping each paid answer for its own request; `headers`: the device's (its credential and label;
    /// never its single-use sign-in), sent with each. What it did, and whether a new payment must still wait.
    pub async fn collect_for_device(
        &self,
        path: &str,
        body: Option<&Value>,
        slot: &Slot,
        headers: &[(&'static str, String)],
    ) -> Result<Earlier, AgentError> {
        let headers: Vec<(&'static str, String)> = headers
            .iter()
            .filter(|(name, _)| !name.eq_ignore_ascii_case("sign-in-with-x"))
            .cloned()
            .collect();
        let state = self.state.load().map_err(local)?;
        let origin = self.config.origin();
        let mut out = Earlier::default();
        for (request, payment) in self.earlier(&state, path, body, slot) {
            let mine = payment.slot.as_ref().is_none_or(|s| s.who == slot.who);
            let readable = matches!(request.purchase, Purchase::TopUp(_))
                || payment.slot.as_ref().is_some_and(|s| s.kept);
            let settled_or_never = now() >= payment.valid_before.saturating_add(SETTLE_GRACE_SECS);
            let why = match request.elsewhere(&payment, &origin) {
                Some(other) => format!("with another facilitator, {other}: not sent here"),
                None if mine && (readable || settled_or_never) => {
                    let (answer, still) = self
                        .collect_one_for(&request, &payment, &headers, !readable)
                        .await?;
                    out.sent.push(Sent {
                        payment_id: payment.payment_id.clone(),
                        path: request.path.clone(),
                        answer,
                    });
                    match still {
                        None => continue,
                        Some(why) => why,
                    }
                }
                None if mine => "the device's request it was signed for collects it".to_owned(),
                // Never sent with this request's credential: a switch of the other's SIM would answer 401 and
                // end a payment that may have been charged.
                None => "another requester's, for this same request: its own request collects it"
                    .to_owned(),
            };
            out.held_back.get_or_insert(AgentError::Unavailable {
                message: format!(
                    "the payment {id} for {purchase}, signed earlier for another request of this device ({path}), is \
                     still pending ({why}); nothing new is signed for {purchase} while it is (it may have been \
                     charged): send the request again later; {}",
                    forget_hint(&payment.payment_id),
                    id = payment.payment_id,
                    purchase = request.purchase,
                    path = request.path,
                ),
                pending: false,
            });
        }
        Ok(out)
    }

    /// Send `payment` for `request` again once, its paid answer kept for its own request (and, `for_operator`,
    /// whole for the operator too: its own request may never read it): the answer, if collected, and `None` once
    /// it no longer pends, or why it still does.
    async fn collect_one_for(
        &self,
        request: &PendingRequest,
        payment: &PendingPayment,
        headers: &[(&'static str, String)],
        for_operator: bool,
    ) -> Result<(Option<(u16, Value)>, Option<String>), AgentError> {
        self.say(&format!(
            "sending again the payment {} still pending for {} of this device (never paid twice)",
            payment.payment_id, request.purchase
        ));
        let paid = PaidRequest {
            path: &request.path,
            body: request.body.as_ref(),
            owner: None,
            headers,
            slot: payment.slot.as_ref(),
        };
        let held = Held {
            key: request.key.clone(),
            payment_id: payment.payment_id.clone(),
            header: payment.header.clone(),
            valid_before: payment.valid_before,
        };
        let (theirs, id) = (payment.slot.clone(), payment.payment_id.clone());
        let sent = self
            .deliver(&paid, &held, 1, |s, answer| {
                if let Some(theirs) = &theirs {
                    crate::replay::keep_collected(
                        &mut s.collected_answers,
                        theirs,
                        answer.status,
                        &answer.body,
                        now(),
                    );
                }
                if for_operator {
                    s.unrecorded_answers.insert(id, answer.body.clone());
                }
                Ok((answer.status, answer.body))
            })
            .await;
        let undelivered = match sent {
            Ok(answer) => return Ok((Some(answer), None)),
            Err(undelivered) => undelivered,
        };
        // Ended by its answer (nothing charged, or its spend kept): it holds nothing back.
        let state = self.state.load().map_err(local)?;
        Ok((
            None,
            state
                .pending
                .contains_key(&request.key)
                .then(|| undelivered.error.to_string()),
        ))
    }

    /// The payments pending in `state` for the purchase of `path` that hold this request of `slot`'s requester
    /// back: that requester's (but for this very request: the paid walk sends that one again), and another
    /// requester's for this very request (its key in the state is this request's).
    fn earlier(
        &self,
        state: &State,
        path: &str,
        body: Option<&Value>,
        slot: &Slot,
    ) -> Vec<(PendingRequest, PendingPayment)> {
        let purchase = Purchase::of(path);
        if matches!(purchase, Purchase::Other(_)) {
            return Vec::new();
        }
        state
            .pending
            .iter()
            .filter_map(|(key, payment)| {
                let request = PendingRequest::parse(key)?;
                let theirs = payment.slot.as_ref();
                let same_key = request.path == path && request.body.as_ref() == body;
                let this_one = same_key && theirs.is_none_or(|s| s.same_requester(slot));
                let mine = theirs.is_none_or(|s| s.who == slot.who);
                (request.purchase == purchase && !this_one && (mine || same_key))
                    .then(|| (request, payment.clone()))
            })
            .collect()
    }
}
