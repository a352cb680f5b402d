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
//!
//! What a command may not do with them: act, without `--iccid`, on a SIM it has just collected (the SIM it acts
//! on is the one it would have picked before collecting: [`Agent::before_command`]); take over a pending switch
//! (a `watch` follows its SIM through it: only `switch` and `watch` send a switch again, each its own SIM's); or
//! send a request the CLI does not make itself (the paying proxy's, for its devices). And a payment that can
//! never be collected can be given up on ([`forget_pending`]), its spend kept.

use std::fmt;

use serde_json::Value;

use super::facilitator::{FORGET_WARNING, Facilitator};
use super::paid::{Held, PENDING_RETRIES, PaidRequest, Undelivered};
use super::pending_key::{host_of, legacy_host, pending_for};
use super::{Activation, Agent, local, now, record_sim, redacted, top_up_line};
use crate::error::AgentError;
use crate::state::{PendingPayment, State, StateDir};

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
pub(super) struct PendingRequest {
    pub(super) key: String,
    origin: String,
    pub(super) path: String,
    /// The JSON body of a POST; `None` for a GET (its fields in the path's query).
    pub(super) body: Option<Value>,
    pub(super) purchase: Purchase,
}

impl PendingRequest {
    /// `None` if `key` is not a key the agent writes.
    pub(super) fn parse(key: &str) -> Option<Self> {
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

    /// Whether the CLI makes this request itself, and so collects it: a POST activation, top-up (`top_up_mb`)
    /// or switch. A paid GET, a quota request or another route is the paying proxy's, made for a device (a
    /// state directory of `<state-dir>/devices/`): that device's same request sent again collects it.
    fn is_the_clis(&self) -> bool {
        let Some(body) = &self.body else {
            return false;
        };
        match &self.purchase {
            Purchase::Activation | Purchase::Switch(_) => true,
            Purchase::TopUp(_) => body.get("top_up_mb").is_some(),
            Purchase::Other(_) => false,
        }
    }

    /// The facilitator this payment is pending with: the origin in its key, or for a key without one the host
    /// its signature names.
    fn facilitator(&self, payment: &PendingPayment) -> Facilitator {
        if self.origin.is_empty() {
            legacy_host(payment).map_or(Facilitator::Unknown, Facilitator::Host)
        } else {
            Facilitator::Origin(self.origin.clone())
        }
    }

    /// The facilitator this payment is pending with, if not `origin` (this agent's, normalised): the origin in
    /// its key (it need not be spelled as `origin` is), or for a key without one the host its signature names.
    pub(super) fn elsewhere(&self, payment: &PendingPayment, origin: &str) -> Option<Facilitator> {
        let ours = match self.facilitator(payment) {
            Facilitator::Origin(o) => crate::config::bare_origin(&o).is_some_and(|o| o == origin),
            Facilitator::Host(h) => Some(&h) == host_of(origin).as_ref(),
            Facilitator::Unknown => false,
        };
        (!ours).then(|| self.facilitator(payment))
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
    /// Not sent this time, and still pending: the facilitator did not answer a payment sent before it in the
    /// same pass (unreachable, or timed out), so nothing more was sent to it. Why.
    NotTried(String),
    /// Not collected, and no longer pending: the answer ended it as the error says (nothing charged; or kept as
    /// an unknown spend; or paid, its answer naming no SIM and kept whole in the state).
    Ended(AgentError),
    /// Pending with another facilitator: not sent to this one.
    Elsewhere(Facilitator),
}

impl Collection {
    /// Whether the payment is still pending after this.
    pub fn is_pending(&self) -> bool {
        matches!(
            self.outcome,
            Outcome::StillPending(_) | Outcome::NotTried(_) | Outcome::Elsewhere(_)
        )
    }
}

impl fmt::Display for Collection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (id, what) = (&self.payment_id, &self.purchase);
        match &self.outcome {
            // Not the activation code: a stderr line ends up in logs, and the code is what installs the profile.
            Outcome::Sim(a) => write!(
                f,
                "collected {what} paid earlier (payment {id}): SIM {iccid} on {}; its access token and activation \
                 code are kept in the state directory (`esim402-agent status --iccid {iccid} --activation-code` shows the \
                 code)",
                a.answer["carrier"].as_str().unwrap_or("?"),
                iccid = a.iccid,
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
            Outcome::NotTried(why) => write!(
                f,
                "the payment {id} for {what} was not sent this time ({why}): it stays pending, sent again before \
                 the next command"
            ),
            Outcome::Ended(e) => write!(f, "the payment {id} for {what} is no longer pending: {e}"),
            Outcome::Elsewhere(other) => write!(
                f,
                "the payment {id} for {what} is still pending with {other}: it is not sent here; {}",
                other.advice(id)
            ),
        }
    }
}

/// What a command does, for the collection before it ([`Agent::before_command`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CommandKind {
    /// Reads only (`status`, `balance`, `usage`, `receipts`, `sims`): without `--iccid` and without a SIM before,
    /// it may read the one just collected.
    Reads,
    /// Changes a SIM without paying (`suspend`, `resume`, `terminate`), or keeps one alive, paying (`watch`).
    Changes,
    /// Pays for a new SIM (`activate`): pending activations are its own to collect ([`Agent::activate`]).
    Activates,
    /// Pays for a top-up (`top-up`): pending top-ups are its own to collect ([`Agent::top_up`]).
    TopsUp,
    /// Pays for a switch (`switch`): its SIM's pending switches are its own to collect ([`Agent::switch`]).
    Switches,
}

/// A payment still pending, as `esim402-agent pending` lists it: never its signed payment.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct PendingInfo {
    /// Its `payment-identifier`.
    pub payment_id: String,
    /// What it pays for.
    pub purchase: String,
    /// The facilitator it is pending with: its origin, or (a payment of an earlier agent) the host its
    /// signature names; `None` if unknown.
    pub origin: Option<String>,
    /// Unix seconds when it was signed, if its spend is recorded.
    pub signed_at: Option<u64>,
    /// Its amount in USDC, if its spend is recorded.
    pub amount_usdc: Option<String>,
    /// Unix seconds after which its authorization is no longer valid.
    pub valid_before: u64,
    /// Whether commands send it again (the CLI's own requests, with their facilitator); else it is the paying
    /// proxy's, for a device, collected by that device's same request.
    pub collected_by_commands: bool,
}

impl fmt::Display for PendingInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}  {}  with {}  signed {}  {}",
            self.payment_id,
            self.purchase,
            self.origin.as_deref().unwrap_or("an unknown facilitator"),
            self.signed_at
                .map_or_else(|| "at an unknown time".to_owned(), utc_time),
            self.amount_usdc
                .as_deref()
                .map_or_else(|| "amount unknown".to_owned(), |a| format!("{a} USDC")),
        )?;
        if !self.collected_by_commands {
            write!(
                f,
                "  (a proxied device's request: its own request collects it)"
            )?;
        }
        Ok(())
    }
}

/// Unix seconds as `YYYY-MM-DD hh:mm:ss UTC`.
pub fn utc_time(secs: u64) -> String {
    let (days, rest) = (secs / 86_400, secs % 86_400);
    // Days since 1970-01-01 to a civil date (H. Hinnant's `civil_from_days`), in unsigned arithmetic: the era
    // starts on 0000-03-01, 719 468 days before the epoch.
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z % 146_097;
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + u64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02} UTC",
        rest / 3_600,
        rest % 3_600 / 60,
        rest % 60
    )
}

/// Every payment still pending in `state` (`esim402-agent pending`), without its signed payment.
pub fn pending_payments(state: &State) -> Vec<PendingInfo> {
    state
        .pending
        .iter()
        .map(|(key, p)| {
            let request = PendingRequest::parse(key);
            let spend = state
                .spends
                .iter()
                .rev()
                .find(|s| s.payment_id == p.payment_id);
            PendingInfo {
                payment_id: p.payment_id.clone(),
                purchase: request.as_ref().map_or_else(
                    || {
                        format!(
                            "an unrecognised request ({})",
                            key.split(' ').next().unwrap_or("?")
                        )
                    },
                    |r| r.purchase.to_string(),
                ),
                origin: request
                    .as_ref()
                    .and_then(|r| r.facilitator(p).name().map(str::to_owned)),
                signed_at: spend.map(|s| s.at),
                amount_usdc: spend.map(|s| s.amount_usdc.to_string()),
                valid_before: p.valid_before,
                collected_by_commands: request.as_ref().is_some_and(PendingRequest::is_the_clis),
            }
        })
        .collect()
}

/// Give up on the pending payment `payment_id` (`esim402-agent pending --forget`): it is no longer sent again,
/// and no longer holds back a new payment for what it paid for; its spend stays counted (it may have been
/// charged), and a record of it (never its signed payment) is kept in the state under `abandoned`
/// ([`State::abandon`]). What it was. The caller holds the state directory's lock.
///
/// `origin` is this agent's facilitator (normalised; `None` if `--url` names none): a payment pending with it
/// whose authorization is still valid (`now` before its `validBefore`) is one a command run again later may
/// still collect, so forgetting it, which may pay twice for the same purchase if it was charged, takes `force`
/// (else a usage error saying so). One pending with another facilitator (or an unknown one) can never be sent
/// from here, and one whose authorization has expired can no longer be charged anew: no `force` needed. A
/// usage error if no payment of that id is pending.
pub fn forget_pending(
    dir: &StateDir,
    payment_id: &str,
    origin: Option<&str>,
    force: bool,
) -> Result<PendingInfo, AgentError> {
    let state = dir.load().map_err(local)?;
    let Some(info) = pending_payments(&state)
        .into_iter()
        .find(|p| p.payment_id == payment_id)
    else {
        return Err(AgentError::Usage(format!(
            "no payment {payment_id} is pending (`esim402-agent pending` lists those that are)"
        )));
    };
    let here = state
        .pending
        .iter()
        .find(|(_, p)| p.payment_id == payment_id)
        .is_some_and(|(key, p)| match (PendingRequest::parse(key), origin) {
            (Some(r), Some(o)) => r.elsewhere(p, o).is_none(),
            // Not known to be elsewhere: it may be this facilitator's.
            _ => true,
        });
    let now = now();
    if here && now < info.valid_before && !force {
        return Err(AgentError::Usage(format!(
            "the payment {payment_id} for {what} is pending with this facilitator{with} and its authorization is \
             valid until {until}: run the command again later (any command sends it again; a passing outage \
             needs nothing more). Forgetting it now needs --force: {FORGET_WARNING}",
            what = info.purchase,
            with = origin.map(|o| format!(" ({o})")).unwrap_or_default(),
            until = utc_time(info.valid_before),
        )));
    }
    dir.update(|s| s.abandon(payment_id, &info.purchase, info.origin.as_deref(), now))
        .map_err(local)?;
    Ok(info)
}

/// The text of an error without the advice [`AgentError::Unavailable`] appends (for an error quoted in another).
fn reason(e: &AgentError) -> String {
    match e {
        AgentError::Unavailable { message, .. } => message.clone(),
        other => other.to_string(),
    }
}

impl Agent {
    /// Send again, once each, every payment pending with this facilitator for a purchase `which` accepts (the
    /// very same payments: nothing is signed), record what each bought (a SIM and its token, in the save that
    /// ends its payment), and say on stderr what became of each (always: it is about money, not progress). Only
    /// the requests the CLI makes itself are sent (not the paying proxy's, for its devices); one pending with
    /// another facilitator is not sent, and reported; a settlement still pending stays pending (not waited
    /// for); once the facilitator gives no answer (unreachable, timed out), nothing more is sent to it in this
    /// pass (nor in a later stage of the same command, until it answers again: [`Agent::silent`]), and the rest
    /// are reported as not tried. The CLI runs this before every command that talks to the
    /// facilitator ([`Agent::before_command`]).
    ///
    /// An error only for a local problem (the state cannot be read or saved); a payment that cannot be
    /// collected is an [`Outcome`], and stays pending when it may have been charged.
    pub async fn collect_pending(
        &self,
        which: impl Fn(&Purchase) -> bool,
    ) -> Result<Vec<Collection>, AgentError> {
        self.collect_where(|r| which(&r.purchase), 1).await
    }

    /// What the CLI runs before a command of `kind` on the SIM `iccid` (`None`: the default, the newest live
    /// SIM): the SIM it acts on, which is `iccid`, else the SIM it would have acted on before anything was
    /// collected — so a SIM collected now never becomes the target of a command that did not name it. Then
    /// every payment pending with this facilitator is collected ([`Agent::collect_pending`]), except those of
    /// the command's own kind (the paying command collects those itself, its own request last) and every
    /// switch (only `switch` and `watch` send a switch again, each of its own SIM: a `watch` follows its SIM
    /// through it).
    ///
    /// `None` when there was no SIM before: a command that only reads then acts on the newest live SIM after
    /// the collection (one just collected), and `activate` needs none; any other command is refused (a usage
    /// error naming the SIM collected: pass `--iccid`), or, when nothing was collected either, left to say
    /// that there is no SIM.
    pub async fn before_command(
        &self,
        iccid: Option<&str>,
        kind: CommandKind,
    ) -> Result<Option<String>, AgentError> {
        let before = match iccid {
            Some(id) => Some(id.to_owned()),
            None => self
                .state
                .load()
                .map_err(local)?
                .pick_sim(None)
                .map(|s| s.iccid),
        };
        self.collect_pending(|p| match p {
            Purchase::Activation => kind != CommandKind::Activates,
            Purchase::TopUp(_) => kind != CommandKind::TopsUp,
            Purchase::Switch(_) | Purchase::Other(_) => false,
        })
        .await?;
        if before.is_some() || matches!(kind, CommandKind::Reads | CommandKind::Activates) {
            return Ok(before);
        }
        match self.state.load().map_err(local)?.pick_sim(None) {
            Some(sim) => Err(AgentError::Usage(format!(
                "no --iccid given, and the state directory held no live SIM before this command: SIM {iccid} \
                 ({carrier}), paid earlier, was collected just now; nothing was done to it: run the command \
                 again with --iccid {iccid} to act on it",
                iccid = sim.iccid,
                carrier = sim.carrier.as_deref().unwrap_or("carrier unknown"),
            ))),
            None => Ok(None),
        }
    }

    /// What `watch` runs before it starts, on the SIM `iccid` (`None`: the default): with the state directory's
    /// lock, [`Agent::before_command`] for a command that changes a SIM (switches excepted: a pending switch of
    /// the SIM watched is the watch's first tick's), and the SIM to watch. When another command holds the lock,
    /// that command collects them: the watch starts without the pass (saying so on stderr), on `iccid`. Any other
    /// failure to take the lock (the directory cannot be made, its lock file opened or locked) is an error
    /// ([`AgentError::Local`]): before, it was taken for a busy lock and the watch went on without it. The watch
    /// takes the lock per tick, not for its whole run.
    pub async fn before_watch(&self, iccid: Option<&str>) -> Result<Option<String>, AgentError> {
        let Some(_lock) = self.state.try_lock().map_err(local)? else {
            self.notice(&format!(
                "pending payments not collected now: another esim402-agent is using the state directory {}",
                self.state.path().display()
            ));
            return Ok(iccid.map(str::to_owned));
        };
        self.before_command(iccid, CommandKind::Changes).await
    }

    /// [`Agent::collect_pending`] for the pending requests `which` accepts (the CLI's own only), each sent up to
    /// `tries` times while its settlement is pending.
    async fn collect_where(
        &self,
        which: impl Fn(&PendingRequest) -> bool,
        tries: u32,
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
            if !request.is_the_clis() || !which(&request) {
                continue;
            }
            // Once the facilitator gave no answer (in this pass or an earlier stage of this command), nothing more
            // is sent to it until it answers again (`Agent::silent`).
            let outcome = match (request.elsewhere(payment, &origin), self.silent()) {
                (Some(other), _) => Outcome::Elsewhere(other),
                (None, Some(why)) => Outcome::NotTried(why),
                (None, None) => {
                    let (outcome, unreachable) = self
                        .collect_one(&state, &request, payment, &origin, tries)
                        .await?;
                    if unreachable {
                        self.mark_silent();
                    }
                    outcome
                }
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

    /// Send the pending `payment` for `request` again (with the SIM's credential for a switch or a top-up, as
    /// they were sent) and keep what it bought; and whether the facilitator gave no answer at all.
    async fn collect_one(
        &self,
        state: &State,
        request: &PendingRequest,
        payment: &PendingPayment,
        origin: &str,
        tries: u32,
    ) -> Result<(Outcome, bool), AgentError> {
        self.say(&format!(
            "sending again the payment {} still pending for {} (never paid twice)",
            payment.payment_id, request.purchase
        ));
        let owner = match &request.purchase {
            Purchase::Switch(iccid) | Purchase::TopUp(iccid) => state.pick_sim(Some(iccid)),
            _ => None,
        };
        // Its label, as the first sending carried it.
        let label: Vec<(&'static str, String)> = payment
            .label
            .iter()
            .map(|l| ("x-agent-id", l.clone()))
            .collect();
        let paid = PaidRequest {
            path: &request.path,
            body: request.body.as_ref(),
            owner: owner.as_ref(),
            headers: &label,
            slot: None,
        };
        let held = Held {
            key: request.key.clone(),
            payment_id: payment.payment_id.clone(),
            header: payment.header.clone(),
            valid_before: payment.valid_before,
        };
        let got = match &request.purchase {
            Purchase::Activation => {
                let data_mb = request.body.as_ref().and_then(|b| b["data_mb"].as_u64());
                self.deliver(&paid, &held, tries, |s, a| {
                    record_sim(s, a.body, None, origin, data_mb).map(Outcome::Sim)
                })
                .await
            }
            Purchase::Switch(old) => {
                self.deliver(&paid, &held, tries, |s, a| {
                    record_sim(s, a.body, Some(old), origin, None).map(Outcome::Sim)
                })
                .await
            }
            Purchase::TopUp(_) | Purchase::Other(_) => {
                self.deliver(&paid, &held, tries, |_, a| Ok(Outcome::Answer(a.body)))
                    .await
            }
        };
        match got {
            Ok(outcome) => Ok((outcome, false)),
            Err(Undelivered { error, unreachable }) => {
                // Whatever the error, the state says whether the payment is still pending.
                let state = self.state.load().map_err(local)?;
                let outcome = if state.pending.contains_key(&request.key) {
                    Outcome::StillPending(error)
                } else {
                    Outcome::Ended(error)
                };
                Ok((outcome, unreachable))
            }
        }
    }

    /// Before a payment for `purchase` (the request `path` with `body`): every other payment pending with this
    /// facilitator for the same kind of purchase (any target; for a switch, of the same SIM only: another SIM's
    /// may be a `watch`'s to follow) is collected first, and then, unless this very request has a payment
    /// pending (the paid walk sends that one again), a new payment is refused while one for the same purchase
    /// (kind and target) is still pending: it may have been charged, and may already have bought what this one
    /// would. Pending with this facilitator, the refusal is [`AgentError::Unavailable`] (exit 5: run the command
    /// again later); pending with another facilitator (or an unknown one), [`AgentError::Local`] (exit 1,
    /// naming it and how to collect it: `localhost` and `127.0.0.1` may be one facilitator, so a new payment
    /// here could pay twice). Only one given up on (`pending --forget`) holds nothing back. The collections
    /// made.
    pub(super) async fn clear_way(
        &self,
        purchase: &Purchase,
        path: &str,
        body: &Value,
    ) -> Result<Vec<Collection>, AgentError> {
        let collected = self
            .collect_where(
                |r| {
                    let same = match purchase {
                        Purchase::Switch(_) => r.purchase == *purchase,
                        _ => r.purchase.same_kind(purchase),
                    };
                    same && !r.is(path, body)
                },
                PENDING_RETRIES,
            )
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
            let id = &c.payment_id;
            let why = match &c.outcome {
                Outcome::StillPending(e) => reason(e),
                Outcome::NotTried(why) => why.clone(),
                Outcome::Elsewhere(other) => {
                    return Err(AgentError::Local(format!(
                        "the payment {id} for {purchase}, signed earlier for another request, is still pending \
                         with {other}; no new payment for {purchase} is signed here while it is (it may have been \
                         charged, and it may be the same facilitator under another name: this one could pay \
                         twice): {}",
                        other.advice(id)
                    )));
                }
                // Collected, or ended by its answer: it holds nothing back.
                Outcome::Sim(_) | Outcome::Answer(_) | Outcome::Ended(_) => continue,
            };
            return Err(AgentError::Unavailable {
                message: format!(
                    "the payment {id} for {purchase}, signed earlier for another request, is still pending with \
                     this facilitator ({why}); no new payment for {purchase} is signed while it is (it may have \
                     been charged). Run the command again later: the pending payment is sent again first, and \
                     once it is answered this one is paid. Only as a last resort, if it can never be collected: \
                     `esim402-agent pending --forget {id}` stops sending it (its spend stays counted); \
                     {FORGET_WARNING}"
                ),
                pending: true,
            });
        }
        Ok(collected)
    }
}

#[cfg(test)]
#[path = "collect_tests.rs"]
mod tests;
