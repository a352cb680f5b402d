//! Pending payments collected before a command: every payment still pending with this facilitator is sent again
//! (the very same payment, as recorded: never re-signed) and what it bought is recorded, so that a SIM paid for
//! reaches the state whatever command runs next; and no new payment is signed for what a pending one of the same
//! kind, for the same target, may already have bought.
//!
//! [`Agent::pay_and_keep`] finds a pending payment by its request (`POST <origin><path> <body>`), so on its own
//! only the very same command run again collected it: `status`, `sims` or an `activate` with other arguments
//! never delivered the SIM paid for, and a top-up of 20 MB after a lost top-up of 10 MB of the same SIM signed a
//! second payment while the first was still in flight.
//!
//! What is kept from before: a payment is sent only to the facilitator it is pending with (the origin in its key,
//! compared normalised; for a key of an earlier agent without one, the host its signature names), never signed
//! anew, and ended by its answer in one atomic state save with what it bought ([`Agent::deliver`]).

use std::fmt;

use serde_json::Value;

use super::paid::{Held, PaidRequest, host_of, legacy_host, pending_for};
use super::{Activation, Agent, local, record_sim, redacted, top_up_line};
use crate::error::AgentError;
use crate::state::{PendingPayment, State};

/// What a payment pays for: the kind of purchase and its target, read from its request's path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Purchase {
    /// A new SIM (`/v1/esim/activate`). Every activation has the same target: a new SIM for this wallet.
    Activation,
    /// More data for the SIM (`/v1/esim/{iccid}/data`).
    TopUp(String),
    /// A move of the SIM to another carrier or region (`/v1/esim/{iccid}/switch`).
    Switch(String),
    /// Another paid route (its path, without the query).
    Other(String),
}

impl Purchase {
    /// The purchase a request to `path` (a query allowed) pays for.
    pub fn of(path: &str) -> Self {
        let route = path.split('?').next().unwrap_or(path);
        let parts: Option<Vec<&str>> = route
            .strip_prefix("/v1/esim/")
            .map(|r| r.split('/').collect());
        match parts.as_deref() {
            Some(["activate"]) => Self::Activation,
            Some([iccid, "data"]) if !iccid.is_empty() => Self::TopUp((*iccid).to_owned()),
            Some([iccid, "switch"]) if !iccid.is_empty() => Self::Switch((*iccid).to_owned()),
            _ => Self::Other(route.to_owned()),
        }
    }

    /// Whether `other` is the same kind of purchase, whatever its target.
    pub fn same_kind(&self, other: &Self) -> bool {
        std::mem::discriminant(self) == std::mem::discriminant(other)
    }
}

impl fmt::Display for Purchase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Activation => write!(f, "an activation (a new SIM)"),
            Self::TopUp(iccid) => write!(f, "a top-up of SIM {iccid}"),
            Self::Switch(iccid) => write!(f, "a switch of SIM {iccid}"),
            Self::Other(path) => write!(f, "a payment for {path}"),
        }
    }
}

/// A pending payment's key read back: `<method> <origin><path>[ <body>]` (see `pending_for`); the origin is empty
/// in a key an earlier agent wrote.
#[derive(Debug, Clone, PartialEq)]
struct PendingRequest {
    key: String,
    origin: String,
    path: String,
    /// The JSON body of a POST; `None` for a GET (its fields in the path's query).
    body: Option<Value>,
    purchase: Purchase,
}

impl PendingRequest {
    /// `None` if `key` is not a key the agent writes.
    fn parse(key: &str) -> Option<Self> {
        let (method, rest) = key.split_once(' ')?;
        let origin_len = if rest.starts_with('/') {
            0
        } else {
            let scheme_end = rest.find("://")? + 3;
            scheme_end + rest.get(scheme_end..)?.find('/')?
        };
        let (origin, request) = rest.split_at_checked(origin_len)?;
        let (path, body) = match method {
            "POST" => {
                let (path, body) = request.split_once(' ')?;
                (path, Some(serde_json::from_str(body).ok()?))
            }
            // Paid GETs came with the proxy, after keys named the facilitator.
            "GET" if !origin.is_empty() => (request, None),
            _ => return None,
        };
        Some(Self {
            key: key.to_owned(),
            origin: origin.to_owned(),
            path: path.to_owned(),
            body,
            purchase: Purchase::of(path),
        })
    }

    /// Whether this is the request `path` with `body` (under any origin).
    fn is(&self, path: &str, body: &Value) -> bool {
        self.path == path && self.body.as_ref() == Some(body)
    }

    /// The facilitator this payment is pending with, if not `origin` (this agent's, normalised): the origin in
    /// its key (it need not be spelled as `origin` is), or for a key without one the host its signature names.
    fn elsewhere(&self, payment: &PendingPayment, origin: &str) -> Option<String> {
        if self.origin.is_empty() {
            return match legacy_host(payment) {
                Some(h) if Some(&h) == host_of(origin).as_ref() => None,
                other => Some(other.unwrap_or_else(|| "an unknown facilitator".into())),
            };
        }
        match crate::config::bare_origin(&self.origin) {
            Some(o) if o == origin => None,
            _ => Some(self.origin.clone()),
        }
    }
}

/// What became of a pending payment sent again before a command.
#[derive(Debug)]
pub struct Collection {
    /// The payment's `payment-identifier`.
    pub payment_id: String,
    /// What it pays for.
    pub purchase: Purchase,
    /// What became of it.
    pub outcome: Outcome,
}

/// What sending a pending payment again gave.
#[derive(Debug)]
pub enum Outcome {
    /// The SIM it bought (an activation's, or the new SIM of a switch), now in the state with its access token;
    /// the payment settled.
    Sim(Activation),
    /// Its paid answer (a top-up's: what was bought, and the balance if the facilitator shows it); the payment
    /// settled.
    Answer(Value),
    /// Not collected, and still pending (sent again before the next command): why.
    StillPending(AgentError),
    /// Not collected, and no longer pending: the answer ended it as the error says (nothing charged; or kept as
    /// an unknown spend; or paid, its answer naming no SIM and kept whole in the state).
    Ended(AgentError),
    /// Pending with another facilitator (the origin, or host, named): not sent to this one.
    Elsewhere(String),
}

impl Collection {
    /// Whether the payment is still pending after this.
    pub fn is_pending(&self) -> bool {
        matches!(
            self.outcome,
            Outcome::StillPending(_) | Outcome::Elsewhere(_)
        )
    }
}

impl fmt::Display for Collection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (id, what) = (&self.payment_id, &self.purchase);
        match &self.outcome {
            Outcome::Sim(a) => write!(
                f,
                "collected {what} paid earlier (payment {id}): SIM {} on {}, {}; its access token is kept in the \
                 state directory",
                a.iccid,
                a.answer["carrier"].as_str().unwrap_or("?"),
                a.activation_code
            ),
            Outcome::Answer(answer) => match what {
                Purchase::TopUp(iccid) => write!(
                    f,
                    "collected {what} paid earlier (payment {id}): SIM {iccid} {}",
                    top_up_line(answer)
                ),
                _ => write!(
                    f,
                    "collected {what} paid earlier (payment {id}): {}",
                    redacted(answer)
                ),
            },
            Outcome::StillPending(e) => write!(
                f,
                "the payment {id} for {what} is still pending, not collected: {e}"
            ),
            Outcome::Ended(e) => write!(f, "the payment {id} for {what} is no longer pending: {e}"),
            Outcome::Elsewhere(other) => write!(
                f,
                "the payment {id} for {what} is still pending with the facilitator {other}: it is not sent here; \
                 run a command with --url {other} to collect it"
            ),
        }
    }
}

impl Agent {
    /// Send again every payment pending with this facilitator for a purchase `which` accepts (the very same
    /// payments: nothing is signed), record what each bought (a SIM and its token, in the save that ends its
    /// payment), and say on stderr what became of each (always: it is about money, not progress). A payment
    /// pending with another facilitator is not sent, and reported. The CLI runs this before every command that
    /// talks to the facilitator, leaving the payments of the command's own kind to the command
    /// ([`Agent::activate`], [`Agent::top_up`] and [`Agent::switch`] collect those first themselves).
    ///
    /// An error only for a local problem (the state cannot be read or saved); a payment that cannot be
    /// collected is an [`Outcome`], and stays pending when it may have been charged.
    pub async fn collect_pending(
        &self,
        which: impl Fn(&Purchase) -> bool,
    ) -> Result<Vec<Collection>, AgentError> {
        self.collect_where(|r| which(&r.purchase)).await
    }

    async fn collect_where(
        &self,
        which: impl Fn(&PendingRequest) -> bool,
    ) -> Result<Vec<Collection>, AgentError> {
        let origin = self.config.origin();
        let state = self.state.load().map_err(local)?;
        let mut out = Vec::new();
        for (key, payment) in &state.pending {
            let Some(request) = PendingRequest::parse(key) else {
                self.notice(&format!(
                    "the payment {} pending under {key:?} is not a request this agent can send again: left as is",
                    payment.payment_id
                ));
                continue;
            };
            if !which(&request) {
                continue;
            }
            let outcome = match request.elsewhere(payment, &origin) {
                Some(other) => Outcome::Elsewhere(other),
                None => self.collect_one(&state, &request, payment, &origin).await?,
            };
            let collection = Collection {
                payment_id: payment.payment_id.clone(),
                purchase: request.purchase,
                outcome,
            };
            self.notice(&collection.to_string());
            out.push(collection);
        }
        Ok(out)
    }

    /// Send the pending `payment` for `request` again (with the owner's credential for a switch, as the switch
    /// was sent) and keep what it bought.
    async fn collect_one(
        &self,
        state: &State,
        request: &PendingRequest,
        payment: &PendingPayment,
        origin: &str,
    ) -> Result<Outcome, AgentError> {
        self.say(&format!(
            "sending again the payment {} still pending for {} (never paid twice)",
            payment.payment_id, request.purchase
        ));
        let owner = match &request.purchase {
            Purchase::Switch(iccid) => state.pick_sim(Some(iccid)),
            _ => None,
        };
        let paid = PaidRequest {
            path: &request.path,
            body: request.body.as_ref(),
            owner: owner.as_ref(),
            headers: &[],
        };
        let held = Held {
            key: request.key.clone(),
            payment_id: payment.payment_id.clone(),
            header: payment.header.clone(),
        };
        let got = match &request.purchase {
            Purchase::Activation => {
                self.deliver(&paid, &held, |s, a| {
                    record_sim(s, a.body, None, origin).map(Outcome::Sim)
                })
                .await
            }
            Purchase::Switch(old) => {
                self.deliver(&paid, &held, |s, a| {
                    record_sim(s, a.body, Some(old), origin).map(Outcome::Sim)
                })
                .await
            }
            Purchase::TopUp(_) | Purchase::Other(_) => {
                self.deliver(&paid, &held, |_, a| Ok(Outcome::Answer(a.body)))
                    .await
            }
        };
        match got {
            Ok(outcome) => Ok(outcome),
            Err(e) => {
                // Whatever the error, the state says whether the payment is still pending.
                let state = self.state.load().map_err(local)?;
                Ok(if state.pending.contains_key(&request.key) {
                    Outcome::StillPending(e)
                } else {
                    Outcome::Ended(e)
                })
            }
        }
    }

    /// Before a payment for `purchase` (the request `path` with `body`): every other payment pending with this
    /// facilitator for the same kind of purchase (any target) is collected first, and then, unless this very
    /// request has a payment pending (the paid walk sends that one again), a new payment is refused while one
    /// for the same purchase (kind and target) is still pending: it may have been charged, and may already have
    /// bought what this one would. With another facilitator too: `localhost` and `127.0.0.1` are one facilitator
    /// under two origins. The collections made.
    pub(super) async fn clear_way(
        &self,
        purchase: &Purchase,
        path: &str,
        body: &Value,
    ) -> Result<Vec<Collection>, AgentError> {
        let collected = self
            .collect_where(|r| r.purchase.same_kind(purchase) && !r.is(path, body))
            .await?;
        let state = self.state.load().map_err(local)?;
        if !matches!(
            pending_for(&state, &self.config.origin(), path, Some(body)),
            Ok((_, None))
        ) {
            // This very request has a payment pending: it is sent again, never a new one (or, pending with
            // another facilitator, refused by the paid walk naming it).
            return Ok(collected);
        }
        for c in collected.iter().filter(|c| c.purchase == *purchase) {
            match &c.outcome {
                Outcome::StillPending(e) => {
                    return Err(AgentError::Unavailable {
                        message: format!(
                            "the payment {} for {purchase}, signed earlier for another request, is still pending \
                             ({e}); no new payment for {purchase} is signed while it is (it may have been charged)",
                            c.payment_id
                        ),
                        pending: true,
                    });
                }
                Outcome::Elsewhere(other) => {
                    return Err(AgentError::Local(format!(
                        "the payment {} for {purchase}, signed earlier for another request, is still pending with \
                         the facilitator {other}; no new payment for {purchase} is signed while it is (it may \
                         have been charged): run a command with --url {other} to collect it",
                        c.payment_id
                    )));
                }
                _ => {}
            }
        }
        Ok(collected)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "tests")]
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};

    use super::*;
    use crate::testing::{Seen, Server, challenge, facilitator, sim_answer};
    use crate::{Config, SpendPolicy, StateDir, WalletKey};
    use serde_json::json;

    fn agent(url: &str, dir: &std::path::Path) -> Agent {
        let key = WalletKey::parse(&"11".repeat(32), "test").unwrap();
        Agent::new(
            Config::new(url, key).unwrap(),
            SpendPolicy::default(),
            StateDir::new(dir),
            false,
        )
        .unwrap()
    }

    fn buy(region: &str) -> Value {
        json!({"region": region, "data_mb": 1})
    }

    fn pending_error(e: &AgentError) -> bool {
        matches!(e, AgentError::Unavailable { pending: true, .. })
    }

    /// A facilitator whose paid answers fail (500) while `down` is set; else a paid activation or switch gets a
    /// new SIM (`89` and the number of paid answers so far), a paid top-up what it bought, without the balance
    /// (as the facilitator answers a top-up sent without the owner's credential). A GET gets the balance.
    async fn flaky(down: Arc<AtomicBool>) -> Server {
        let served = std::sync::Mutex::new(0u32);
        Server::start(move |seen: &Seen| {
            if seen.method == "GET" {
                return (200, vec![], json!({"remaining_kb": 1000}));
            }
            if seen.header("payment-signature").is_none() {
                return challenge(seen);
            }
            if down.load(Ordering::SeqCst) {
                return (500, vec![], json!({"error": {"message": "down"}}));
            }
            let mut n = served.lock().unwrap();
            *n += 1;
            let body: Value = serde_json::from_slice(&seen.body).unwrap();
            if seen.target.ends_with("/data") {
                let answer = json!({"iccid": seen.target.split('/').nth(3), "status": "topped_up",
                    "topped_up_mb": body["top_up_mb"], "amount_usdc": "0.42", "transaction": format!("0x{n}")});
                return (200, vec![], answer);
            }
            (200, vec![], sim_answer(&format!("89{n}")))
        })
        .await
    }

    /// A different activation, run after an activation's reply was lost, first sends the pending one again (the
    /// same payment) and records its SIM, and only then pays its own; while the pending one cannot be collected,
    /// it pays nothing (exit 5). Before, it signed a second payment at once and the first SIM was never
    /// recorded.
    #[tokio::test]
    async fn another_activation_collects_the_pending_one_first_and_pays_nothing_new_while_it_is_pending()
     {
        let down = Arc::new(AtomicBool::new(true));
        let f = flaky(down.clone()).await;
        let dir = tempfile::tempdir().unwrap();
        let a = agent(&f.url, dir.path());
        let e = a.activate(&buy("us-west")).await.unwrap_err();
        assert!(pending_error(&e), "{e}");
        let first = f.payments();
        assert_eq!(first.len(), 1);

        // Still down: the pending one is sent again, not collected, and no new payment is signed.
        let e = a.activate(&buy("eu-central")).await.unwrap_err();
        assert!(pending_error(&e), "{e}");
        let held = &a.state().load().unwrap().spends[0].payment_id;
        assert!(e.to_string().contains(held.as_str()), "names it: {e}");
        assert_eq!(
            f.payments(),
            [first[0].clone(), first[0].clone()],
            "nothing signed anew"
        );
        let st = a.state().load().unwrap();
        assert_eq!((st.spends.len(), st.pending.len()), (1, 1), "{st:?}");

        // Up again: the pending one is collected (its SIM recorded, with its token), then the new one is paid.
        down.store(false, Ordering::SeqCst);
        let got = a.activate(&buy("eu-central")).await.unwrap();
        let paid = f.payments();
        assert_eq!(paid.len(), 4);
        assert_eq!(
            paid[2], first[0],
            "the same payment collected the first SIM"
        );
        assert_ne!(paid[3], first[0], "then the new activation's own payment");
        let st = a.state().load().unwrap();
        assert!(st.pending.is_empty(), "{st:?}");
        assert_eq!(st.sims.len(), 2, "{st:?}");
        assert_eq!(
            st.sims[&got.iccid].access_token.as_deref(),
            Some("sim_secret_892")
        );
        assert_eq!(
            st.sims["891"].access_token.as_deref(),
            Some("sim_secret_891")
        );
        assert!(
            st.spends
                .iter()
                .all(|s| s.status == crate::state::SpendStatus::Settled)
        );
    }

    /// A top-up of another size for a SIM whose top-up is pending sends the pending one again first: collected,
    /// it is settled and the new one paid; not collected, nothing new is paid for that SIM, while another SIM's
    /// top-up is not held back by it. Before, each signed a new payment beside the pending one.
    #[tokio::test]
    async fn a_top_up_is_not_paid_again_while_one_of_the_same_sim_is_pending() {
        let down = Arc::new(AtomicBool::new(true));
        let f = flaky(down.clone()).await;
        let dir = tempfile::tempdir().unwrap();
        let a = agent(&f.url, dir.path());
        let e = a.top_up(Some("8901"), 10).await.unwrap_err();
        assert!(pending_error(&e), "{e}");
        let e = a.top_up(Some("8901"), 20).await.unwrap_err();
        assert!(pending_error(&e), "{e}");
        assert_eq!(
            f.payments().len(),
            2,
            "the pending one sent again, nothing new"
        );
        assert_eq!(a.state().load().unwrap().spends.len(), 1);

        down.store(false, Ordering::SeqCst);
        let other = a.top_up(Some("8902"), 5).await.unwrap();
        assert_eq!(other["topped_up_mb"], 5, "another SIM's top-up is paid");
        let st = a.state().load().unwrap();
        assert!(st.pending.is_empty(), "collected first: {st:?}");
        let paid = f.payments();
        assert_eq!(paid[2], paid[0], "with the same payment");

        // Once nothing is pending, a top-up of the first SIM pays (one new payment).
        let got = a.top_up(Some("8901"), 20).await.unwrap();
        assert_eq!(got["topped_up_mb"], 20);
        assert_eq!(f.payments().len(), 5);
        let st = a.state().load().unwrap();
        assert_eq!(st.spends.len(), 3, "{st:?}");
        assert!(
            st.spends
                .iter()
                .all(|s| s.status == crate::state::SpendStatus::Settled)
        );
    }

    /// What the CLI runs before `status`, `sims`, `balance`, …: every payment pending with this facilitator is
    /// sent again and what it bought recorded (the activation's SIM and token; the switch's new SIM, retiring
    /// the old one, sent with the old SIM's token as the switch was), a top-up settled; one pending with another
    /// facilitator is not sent there, and stays. Nothing is signed.
    #[tokio::test]
    async fn every_pending_payment_is_collected_before_a_command() {
        let down = Arc::new(AtomicBool::new(true));
        let f = flaky(down.clone()).await;
        let other = facilitator(vec![(200, sim_answer("7777"))]).await;
        let dir = tempfile::tempdir().unwrap();
        let a = agent(&f.url, dir.path());
        // A SIM to switch and top up, with its token from this facilitator.
        a.state()
            .update(|s| {
                record_sim(s, sim_answer("8900"), None, &a.config().origin()).unwrap();
            })
            .unwrap();
        a.activate(&buy("us-west")).await.unwrap_err();
        a.top_up(Some("8900"), 10).await.unwrap_err();
        a.switch(Some("8900"), &json!({"carrier": "att"}))
            .await
            .unwrap_err();
        // And one pending with another facilitator.
        agent(&other.url, dir.path())
            .state()
            .update(|s| {
                let (k, p) = s.pending.iter().next().unwrap();
                let key = k
                    .replace(&f.url, &other.url)
                    .replace("us-west", "eu-central");
                let p = PendingPayment {
                    payment_id: "pay_elsewhere".into(),
                    ..p.clone()
                };
                s.pending.insert(key, p);
            })
            .unwrap();
        let signed = f.payments();
        assert_eq!(signed.len(), 3);

        // Still down: nothing collected, everything stays pending, and says so.
        let got = a.collect_pending(|_| true).await.unwrap();
        assert_eq!(got.len(), 4);
        assert!(got.iter().all(Collection::is_pending), "{got:?}");
        assert!(
            got.iter()
                .any(|c| matches!(&c.outcome, Outcome::Elsewhere(o) if *o == other.url))
        );
        assert_eq!(a.state().load().unwrap().pending.len(), 4);

        down.store(false, Ordering::SeqCst);
        let got = a.collect_pending(|_| true).await.unwrap();
        let said: Vec<String> = got.iter().map(ToString::to_string).collect();
        let st = a.state().load().unwrap();
        assert_eq!(
            st.pending.len(),
            1,
            "the other facilitator's stays: {said:?}"
        );
        assert_eq!(
            st.pending.values().next().unwrap().payment_id,
            "pay_elsewhere"
        );
        assert!(
            other.seen().is_empty(),
            "nothing sent to the other facilitator"
        );
        let resent = &f.payments()[6..];
        assert_eq!(resent.len(), 3);
        assert!(
            resent.iter().all(|p| signed.contains(p)),
            "the same payments, nothing signed"
        );
        assert_eq!(st.spends.len(), 3);
        assert!(
            st.spends
                .iter()
                .all(|s| s.status == crate::state::SpendStatus::Settled)
        );
        // The activation's SIM and the switch's new one are recorded, the switched SIM retired.
        let new: Vec<&crate::state::SimRecord> =
            st.sims.values().filter(|s| s.iccid != "8900").collect();
        assert_eq!(new.len(), 2, "{st:?}");
        assert!(new.iter().all(|s| s.access_token.is_some()));
        assert!(new.iter().any(|s| s.replaces.as_deref() == Some("8900")));
        assert!(st.sims["8900"].terminated);
        let switch = f
            .seen()
            .into_iter()
            .rfind(|s| s.target.ends_with("/switch"))
            .unwrap();
        assert_eq!(
            switch.header("authorization"),
            Some("Bearer sim_secret_8900")
        );
        assert!(
            said.iter()
                .any(|l| l.contains("a top-up of SIM 8900") && l.contains("topped up 10 MB")),
            "{said:?}"
        );
        assert!(said.iter().all(|l| !l.contains("null")), "{said:?}");
    }

    /// A switch of a SIM whose other switch is pending collects that one first: the SIM has moved, so nothing
    /// new is paid (exit 2, naming the new SIM). Before, a second switch of the same SIM was paid.
    #[tokio::test]
    async fn a_switch_collects_a_pending_switch_of_the_same_sim_and_pays_nothing_new() {
        let down = Arc::new(AtomicBool::new(true));
        let f = flaky(down.clone()).await;
        let dir = tempfile::tempdir().unwrap();
        let a = agent(&f.url, dir.path());
        a.state()
            .update(|s| {
                record_sim(s, sim_answer("8900"), None, &a.config().origin()).unwrap();
            })
            .unwrap();
        a.switch(None, &json!({"carrier": "att"}))
            .await
            .unwrap_err();
        let e = a
            .switch(None, &json!({"carrier": "verizon"}))
            .await
            .unwrap_err();
        assert!(pending_error(&e), "{e}");
        assert_eq!(f.payments().len(), 2, "nothing new signed");
        down.store(false, Ordering::SeqCst);
        let e = a
            .switch(None, &json!({"carrier": "verizon"}))
            .await
            .unwrap_err();
        assert_eq!(e.exit_code(), crate::ExitCode::Usage, "{e}");
        assert!(e.to_string().contains("moved to SIM 891"), "{e}");
        let paid = f.payments();
        assert_eq!(paid.len(), 3);
        assert!(paid.iter().all(|p| *p == paid[0]), "one payment");
        let st = a.state().load().unwrap();
        assert!(
            st.pending.is_empty() && st.sims["8900"].terminated,
            "{st:?}"
        );
        assert_eq!(st.spends.len(), 1);
    }

    #[test]
    fn keys_are_read_back() {
        let r = PendingRequest::parse(
            r#"POST http://127.0.0.1:3000/v1/esim/activate {"data_mb":1,"region":"us-west"}"#,
        )
        .unwrap();
        assert_eq!(r.origin, "http://127.0.0.1:3000");
        assert_eq!(r.path, "/v1/esim/activate");
        assert_eq!(r.body, Some(json!({"region": "us-west", "data_mb": 1})));
        assert_eq!(r.purchase, Purchase::Activation);
        let r =
            PendingRequest::parse(r#"POST https://[::1]:8443/v1/esim/8901/data {"top_up_mb":10}"#)
                .unwrap();
        assert_eq!(
            (r.origin.as_str(), r.purchase),
            ("https://[::1]:8443", Purchase::TopUp("8901".into()))
        );
        let r = PendingRequest::parse(r#"POST /v1/esim/8901/switch {"carrier":"att"}"#).unwrap();
        assert_eq!(
            (r.origin.as_str(), r.purchase),
            ("", Purchase::Switch("8901".into()))
        );
        let r = PendingRequest::parse("GET http://h:1/v1/esim/activate?region=us-west&data_mb=1")
            .unwrap();
        assert_eq!(
            (r.body, r.purchase),
            (None, Purchase::Activation),
            "the proxy's paid GET"
        );
        for bad in [
            "activate x",
            "POST http://h:1/v1/esim/activate not-json",
            "GET /v1/esim/activate",
            "PUT http://h:1/v1/esim/activate {}",
            "POST http://h:1",
        ] {
            assert_eq!(PendingRequest::parse(bad), None, "{bad}");
        }
        assert_eq!(
            Purchase::of("/v1/esim/8901/suspend"),
            Purchase::Other("/v1/esim/8901/suspend".into())
        );
    }
}
