//! The paying proxy's earlier payments for a device's purchase: before a device's request is paid, every other
//! payment of the same requester (its credential and label, [`crate::replay::Slot::who`]) pending in the device's
//! state for the same purchase (its kind and target: any activation, a top-up or a switch of the same SIM)
//! holds a new payment for that purchase back while it stays pending: it may have been charged and bought what
//! the new one would (before, a device whose paid activation or top-up was left pending got a second one paid
//! by sending another body: another `data_mb`, `quota_kb` or the query form).
//!
//! One whose answer its own request can read again ([`crate::replay::Slot::kept`]), or a top-up (whose answer
//! the device does not need: the data is credited), is sent again first, its answer kept for its own request;
//! once that ends it, it holds nothing back. Any other (a sign-in's, a device named by a header without a key,
//! an earlier proxy's) is left to its own request, which collects it: sent for another, its answer (a SIM's
//! activation code and token) would reach nobody. Another requester's payments are never sent here (its
//! credential is not this request's to use), and hold back only that requester's same request
//! (`Agent::pay_for_device`).

use std::path::Path;

use serde_json::Value;

use super::collect::{PendingRequest, Purchase};
use super::paid::{Held, PaidRequest};
use super::{Agent, local, now};
use crate::error::AgentError;
use crate::replay::Slot;
use crate::state::{PendingPayment, State};

/// What [`Agent::collect_for_device`] did: the payments it sent again (payment id, the path each paid for), and
/// why a new payment for the purchase must wait, if one is still held back.
#[derive(Debug, Default)]
pub struct Earlier {
    /// Each payment sent again: its id and its request's path.
    pub sent: Vec<(String, String)>,
    /// A payment for the same purchase still pending ([`AgentError::Unavailable`], nothing signed).
    pub held_back: Option<AgentError>,
}

/// How an operator gives up the payment `id` pending in the state directory `dir` (as a last resort: it may
/// have been charged).
pub(super) fn forget_hint(dir: &Path, id: &str) -> String {
    format!(
        "if it can never be collected, the operator gives it up with `esim402-agent --state-dir {} pending --forget \
         {id}` (it may have been charged: its spend stays counted)",
        dir.display()
    )
}

impl Agent {
    /// Whether the device's state holds a payment [`Agent::collect_for_device`] looks at before the request
    /// `path` with `body` (`None`: a GET) of `slot`'s requester is paid. A state that cannot be read holds
    /// none (paying reads it again and reports the problem).
    pub fn has_earlier(&self, path: &str, body: Option<&Value>, slot: &Slot) -> bool {
        self.state
            .load()
            .is_ok_and(|state| !self.earlier(&state, path, body, slot).is_empty())
    }

    /// Send again, once each, the payments [`Agent::has_earlier`] finds that may be collected here (module
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
        let mut out = Earlier::default();
        for (request, payment) in self.earlier(&state, path, body, slot) {
            let collectable = matches!(request.purchase, Purchase::TopUp(_))
                || payment.slot.as_ref().is_some_and(|s| s.kept);
            let why = if collectable {
                out.sent
                    .push((payment.payment_id.clone(), request.path.clone()));
                match self.collect_one_for(&request, &payment, &headers).await? {
                    None => continue,
                    Some(why) => why,
                }
            } else {
                "its own request (sent again) collects it".to_owned()
            };
            out.held_back.get_or_insert(AgentError::Unavailable {
                message: format!(
                    "the payment {id} for {purchase}, signed earlier for another request of this device ({path}), is \
                     still pending ({why}); nothing new is signed for {purchase} while it is (it may have been \
                     charged): send the request again later; {}",
                    forget_hint(self.state.path(), &payment.payment_id),
                    id = payment.payment_id,
                    purchase = request.purchase,
                    path = request.path,
                ),
                pending: false,
            });
        }
        Ok(out)
    }

    /// Send `payment` for `request` again once, its paid answer kept for its own request; `None` once it no
    /// longer pends, or why it still does.
    async fn collect_one_for(
        &self,
        request: &PendingRequest,
        payment: &PendingPayment,
        headers: &[(&'static str, String)],
    ) -> Result<Option<String>, AgentError> {
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
        let theirs = payment.slot.clone();
        let sent = self
            .deliver(&paid, &held, 1, |s, answer| {
                if let Some(theirs) = &theirs {
                    crate::replay::remember(
                        &mut s.paid_answers,
                        theirs,
                        answer.status,
                        &answer.body,
                        now(),
                    );
                }
                Ok(())
            })
            .await;
        let Err(undelivered) = sent else {
            return Ok(None);
        };
        // Ended by its answer (nothing charged, or its spend kept): it holds nothing back.
        let state = self.state.load().map_err(local)?;
        Ok(state
            .pending
            .contains_key(&request.key)
            .then(|| undelivered.error.to_string()))
    }

    /// The payments of `slot`'s requester pending in `state` with this facilitator for the purchase of `path`,
    /// but for this very request (the paid walk sends that one again).
    fn earlier(
        &self,
        state: &State,
        path: &str,
        body: Option<&Value>,
        slot: &Slot,
    ) -> Vec<(PendingRequest, PendingPayment)> {
        let (origin, purchase) = (self.config.origin(), Purchase::of(path));
        if matches!(purchase, Purchase::Other(_)) {
            return Vec::new();
        }
        state
            .pending
            .iter()
            .filter_map(|(key, payment)| {
                let request = PendingRequest::parse(key)?;
                let theirs = payment.slot.as_ref();
                let this_one = request.path == path
                    && request.body.as_ref() == body
                    && theirs.is_none_or(|s| s.same_requester(slot));
                let mine = theirs.is_none_or(|s| s.who == slot.who);
                (request.purchase == purchase
                    && mine
                    && !this_one
                    && request.elsewhere(payment, &origin).is_none())
                .then(|| (request, payment.clone()))
            })
            .collect()
    }
}
