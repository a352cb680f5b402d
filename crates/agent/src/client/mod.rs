//! The agent's HTTP side: the paid walk (402 → policy → sign → send, retrying the same payment) and the SIM
//! routes, with the SIM's access token or, without one, a wallet sign-in (`SIGN-IN-WITH-X`).
//!
//! Paid requests are keyed by what they buy (`POST <path> <body>`, `pending_key.rs`): a payment still pending for the same key is
//! sent again as is, never re-signed, so a command run again after a lost reply collects the first answer
//! (the facilitator replays it for the same `payment-identifier`) instead of paying twice. Any other command
//! collects it too, first ([`Agent::collect_pending`], `collect.rs`).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use esim402_core::UsdcAmount;
use esim402_core::auth::siwx;
use serde_json::{Value, json};

mod collect;
mod device;
mod facilitator;
mod list;
mod paid;
mod pending_key;

pub use collect::{
    Collection, CommandKind, Outcome, PendingInfo, Purchase, forget_pending, pending_payments,
    utc_time,
};
pub use device::{Before, Earlier, Sent};
pub use facilitator::{FORGET_WARNING, Facilitator};
pub use list::{MAX_LIST_PAGES, MAX_LISTED_BYTES, MAX_LISTED_SIMS};
pub use paid::{MAX_RETRY_WAIT, PENDING_RETRIES};

use crate::config::Config;
use crate::error::AgentError;
use crate::policy::SpendPolicy;
use crate::state::{SimRecord, State, StateDir};

/// An HTTP answer.
#[derive(Debug, Clone)]
pub struct Answer {
    /// Status code.
    pub status: u16,
    /// Headers.
    pub headers: reqwest::header::HeaderMap,
    /// The JSON body (`Null` if it was not JSON).
    pub body: Value,
    /// Whether the body was JSON (`body` is `Null` otherwise: a proxy's or firewall's HTML page, an empty body).
    pub json: bool,
}

impl Answer {
    /// The answer's error message (or its body), without any access token or activation code: error texts are
    /// printed.
    pub fn message(&self) -> String {
        self.body["error"]["message"]
            .as_str()
            .map(redacted_text)
            .or_else(|| (!self.body.is_null()).then(|| redacted(&self.body).to_string()))
            .unwrap_or_else(|| format!("HTTP {}", self.status))
    }

    /// A header's value, if it is text.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

/// What an activation bought.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Activation {
    /// The new SIM's ICCID.
    pub iccid: String,
    /// The `LPA:1$…` code.
    pub activation_code: String,
    /// The whole answer (access token removed: it is kept in the state directory).
    pub answer: Value,
}

/// The agent: configuration, policy, state, and an HTTP client.
pub struct Agent {
    config: Config,
    policy: SpendPolicy,
    state: StateDir,
    http: reqwest::Client,
    progress: bool,
    /// A daily cap shared with other agents of this wallet (the proxy's devices), on top of this one's policy.
    budget: Option<std::sync::Arc<crate::budget::Budget>>,
    /// Why the facilitator is taken for silent: set when a request to it got no answer (refused, cut, timed
    /// out), cleared by its next answer. While set, collection passes send nothing to it ([`Agent::silent`]).
    silent: std::sync::Mutex<Option<String>>,
    /// Take the state directory's lock (creating the directory) only when a payment is signed, and hold it
    /// until this agent is dropped: the proxy's agent for a device that has no directory yet, so a device that
    /// never gets a payment signed leaves nothing on disk ([`Agent::lock_on_sign`]).
    lock_on_sign: bool,
    /// The lock taken that way.
    held: std::sync::Mutex<Option<crate::state::StateLock>>,
    /// Told of every payment as it is recorded as pending, before it is sent (the proxy's audit log).
    on_signed: Option<SignedHook>,
}

/// See [`Agent::on_signed`].
pub(crate) type SignedHook = std::sync::Arc<dyn Fn(&crate::state::Spend) + Send + Sync>;

/// `v` without its secrets (at any depth): no `access_token` nor `activation_code` field, and any other string
/// that is an activation code (`LPA:…`) replaced: for text that is printed or logged (an activation code
/// installs the profile).
pub(crate) fn redacted(v: &Value) -> Value {
    match v {
        Value::Object(o) => Value::Object(
            o.iter()
                .filter(|(k, _)| !matches!(k.as_str(), "access_token" | "activation_code"))
                .map(|(k, v)| (k.clone(), redacted(v)))
                .collect(),
        ),
        Value::Array(a) => Value::Array(a.iter().map(redacted).collect()),
        Value::String(s) => Value::String(redacted_text(s)),
        other => other.clone(),
    }
}

/// `text` with every activation code in it (`LPA:` up to the next whitespace or quote, any case) replaced.
pub(crate) fn redacted_text(text: &str) -> String {
    const MARK: &str = "lpa:";
    // Lowercased once, and searched from where the last code ended: lowercasing the rest at every code made a
    // text of many codes quadratic. ASCII lowercasing keeps every byte where it was, so an offset found in
    // `lower` is one in `text`, on the same character boundary.
    let lower = text.to_ascii_lowercase();
    let mut out = String::with_capacity(text.len());
    let mut from = 0;
    while let Some(found) = lower.get(from..).and_then(|rest| rest.find(MARK)) {
        let at = from + found;
        out.push_str(&text[from..at]);
        out.push_str("LPA:[redacted]");
        let code = &text[at..];
        let end = code
            .find(|c: char| c.is_whitespace() || matches!(c, '"' | '\'' | ',' | ')'))
            .unwrap_or(code.len());
        from = at + end;
    }
    out.push_str(&text[from..]);
    out
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn random<const N: usize>() -> Result<[u8; N], AgentError> {
    let mut b = [0u8; N];
    getrandom::fill(&mut b).map_err(|e| AgentError::Local(format!("no randomness: {e}")))?;
    Ok(b)
}

fn local(e: String) -> AgentError {
    AgentError::Local(e)
}

/// How long one request to the facilitator may take: a paid activation may legally run until its payment's
/// lease ends (dispatch budget and settlement wait, kernel `paid::LEASE_SECS`); a shorter timeout would report
/// a payment that is still being completed as unreachable. The host's own backstop is the lease plus 30 s.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(esim402_core::paid::LEASE_SECS + 30);

/// How long opening a connection to the facilitator may take. Much shorter than [`REQUEST_TIMEOUT`] (which
/// bounds a paid request the facilitator is working on): a facilitator that does not even accept the
/// connection is down, and every command says so in seconds instead of minutes.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// The largest answer read from the facilitator (and, by the proxy, forwarded to a device): a receipt page of
/// 1 000 entries is under 2 MB even with the longest fields and page proofs (measured by
/// `a_full_receipt_page_fits_the_answer_limit`); anything beyond is not read, and is taken as the facilitator
/// failing (a paid one keeps its payment pending).
pub const MAX_ANSWER: usize = 4 * 1024 * 1024;

/// Why a request got no usable answer.
#[derive(Debug, thiserror::Error)]
pub(crate) enum SendError {
    /// No answer: refused, cut, timed out.
    #[error(transparent)]
    Transport(reqwest::Error),
    /// An answer over [`MAX_ANSWER`], not read.
    #[error("its answer ({status}) is over {} MiB: not read", limit / (1024 * 1024))]
    TooLarge {
        /// The answer's status.
        status: u16,
        /// The limit it passed.
        limit: usize,
    },
}

/// `r`'s body, at most `limit` bytes (an answer saying or turning out to be longer is an error, read no further).
pub(crate) async fn read_limited(
    mut r: reqwest::Response,
    limit: usize,
) -> Result<bytes::Bytes, SendError> {
    let status = r.status().as_u16();
    let too_large = SendError::TooLarge { status, limit };
    if r.content_length()
        .is_some_and(|n| usize::try_from(n).map_or(true, |n| n > limit))
    {
        return Err(too_large);
    }
    let mut body = bytes::BytesMut::new();
    while let Some(chunk) = r.chunk().await.map_err(SendError::Transport)? {
        if body.len().saturating_add(chunk.len()) > limit {
            return Err(too_large);
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body.freeze())
}

/// The HTTP client the agent talks to the facilitator with. Redirects are not followed: one would carry a paid
/// request's `PAYMENT-SIGNATURE` or a wallet sign-in to wherever it points (a 307 even re-sends the POST); a
/// redirect is an answer like any other (a refusal). No system proxy (`HTTP_PROXY`, `HTTPS_PROXY`,
/// `ALL_PROXY`) is used: the agent talks to the one facilitator URL it is given, and a proxy would carry plain
/// `http://` meant for this machine (payments, tokens) off it.
pub(crate) fn http_client() -> reqwest::Result<reqwest::Client> {
    client_builder().build()
}

/// Everything [`http_client`] is built with (its timeouts [`REQUEST_TIMEOUT`] and [`CONNECT_TIMEOUT`], the
/// loopback names pinned), and nothing else: the tests check the very builder the agent's client comes from.
fn client_builder() -> reqwest::ClientBuilder {
    // `localhost` and `localhost.` may be spoken to in plain http (`config::is_loopback_host`), so they must
    // reach this machine whatever the system resolver does: `localhost.` is a fully qualified name it may send
    // to DNS, where anyone answering could point it elsewhere. Port 0: the URL's port (or the scheme's) is used.
    let loopback = [
        std::net::SocketAddr::from((std::net::Ipv4Addr::LOCALHOST, 0)),
        std::net::SocketAddr::from((std::net::Ipv6Addr::LOCALHOST, 0)),
    ];
    reqwest::Client::builder()
        .timeout(REQUEST_TIMEOUT)
        .connect_timeout(CONNECT_TIMEOUT)
        .redirect(reqwest::redirect::Policy::none())
        .no_proxy()
        .resolve_to_addrs("localhost", &loopback)
        .resolve_to_addrs("localhost.", &loopback)
}

/// The route that switches the SIM `iccid`.
fn switch_path(iccid: &str) -> String {
    format!("/v1/esim/{iccid}/switch")
}

/// The body of a switch of `iccid` whose payment is pending, if any: sent again as is, it is the same pending
/// request (see [`Agent::switch`]). Under any facilitator: with another one than the payment's, sending it is
/// refused, naming the one it is pending with.
pub(crate) fn pending_switch(state: &State, iccid: &str) -> Option<Value> {
    let route = format!("{} ", switch_path(iccid));
    state.pending.keys().find_map(|key| {
        // `POST <origin><route> <body>`, or without the origin (an earlier agent's key).
        let (origin, body) = key.strip_prefix("POST ")?.split_once(route.as_str())?;
        let ours = origin.is_empty() || crate::config::bare_origin(origin).is_some();
        ours.then(|| serde_json::from_str(body).ok()).flatten()
    })
}

/// The start of a switch's spend purpose (`switch <iccid> <target>`): how `watch` finds a SIM's switches in
/// the spend history.
pub(crate) fn switch_purpose_prefix(iccid: &str) -> String {
    format!("switch {iccid} ")
}

impl Agent {
    /// An agent; `progress` prints what it does on stderr. An error if the HTTP client cannot be built (a
    /// default client instead would follow redirects).
    pub fn new(
        config: Config,
        policy: SpendPolicy,
        state: StateDir,
        progress: bool,
    ) -> Result<Self, AgentError> {
        let http = http_client()
            .map_err(|e| AgentError::Local(format!("cannot set up the HTTP client: {e}")))?;
        Ok(Self::with_http(config, policy, state, progress, http))
    }

    /// An agent talking through `http` (one of [`http_client`]'s, shared: the proxy's devices reuse its
    /// connections and TLS sessions instead of opening new ones for every payment).
    pub(crate) fn with_http(
        config: Config,
        policy: SpendPolicy,
        state: StateDir,
        progress: bool,
        http: reqwest::Client,
    ) -> Self {
        Self {
            config,
            policy,
            state,
            http,
            progress,
            budget: None,
            silent: std::sync::Mutex::new(None),
            lock_on_sign: false,
            held: std::sync::Mutex::new(None),
            on_signed: None,
        }
    }

    /// This agent, taking its state directory's lock (and creating the directory) only once a payment is signed,
    /// held until it is dropped; a lock another command holds then refuses the payment (unavailable, nothing
    /// sent, the shared budget given back).
    #[must_use]
    pub(crate) fn lock_on_sign(mut self) -> Self {
        self.lock_on_sign = true;
        self
    }

    /// This agent, telling `hook` of every payment it records as pending (before sending it).
    #[must_use]
    pub(crate) fn on_signed(mut self, hook: SignedHook) -> Self {
        self.on_signed = Some(hook);
        self
    }

    /// This agent, also within `budget`, a daily cap it shares with other agents of the same wallet.
    #[must_use]
    pub fn with_budget(mut self, budget: std::sync::Arc<crate::budget::Budget>) -> Self {
        self.budget = Some(budget);
        self
    }

    /// The configuration (facilitator URL, wallet).
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// The spend policy.
    pub fn policy(&self) -> &SpendPolicy {
        &self.policy
    }

    /// The state directory.
    pub fn state(&self) -> &StateDir {
        &self.state
    }

    fn say(&self, line: &str) {
        if self.progress {
            eprintln!("{line}");
        }
    }

    /// A line on stderr whatever `progress` says: what became of a payment collected before a command (a SIM
    /// delivered, a payment still pending) is a result, not progress.
    fn notice(&self, line: &str) {
        eprintln!("esim402-agent: {line}");
    }

    async fn send(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<&Value>,
        headers: &[(&str, String)],
    ) -> Result<Answer, SendError> {
        let mut req = self
            .http
            .request(method, format!("{}{path}", self.config.url));
        if let Some(b) = body {
            req = req.json(b);
        }
        for (k, v) in headers {
            req = req.header(*k, v);
        }
        let answered = async {
            let r = req.send().await.map_err(SendError::Transport)?;
            let status = r.status().as_u16();
            let headers = r.headers().clone();
            let bytes = read_limited(r, MAX_ANSWER).await?;
            Ok::<_, SendError>((status, headers, bytes))
        }
        .await;
        let (status, headers, bytes) = match answered {
            Ok(got) => {
                self.set_silent(None);
                got
            }
            // It answered (too much): not silent.
            Err(e @ SendError::TooLarge { .. }) => {
                self.set_silent(None);
                return Err(e);
            }
            Err(e) => {
                self.mark_silent();
                return Err(e);
            }
        };
        let (body, json) = match serde_json::from_slice(&bytes) {
            Ok(v) => (v, true),
            Err(_) => (Value::Null, false),
        };
        Ok(Answer {
            status,
            headers,
            body,
            json,
        })
    }

    /// Why the facilitator is taken for silent, if it is: a request to it in this process got no answer, and
    /// none has answered since. A collection pass then sends nothing to it and reports its payments as not
    /// tried at once (a command's own request still tries once): before, each stage of one command (the pass
    /// before it, the paying command's own pass, its request) waited out the same silence again.
    pub(super) fn silent(&self) -> Option<String> {
        self.silent.lock().map_or(None, |s| s.clone())
    }

    /// Take the facilitator for silent (see [`Agent::silent`]).
    pub(super) fn mark_silent(&self) {
        self.set_silent(Some(format!(
            "the facilitator {} did not answer a request sent earlier by this command",
            self.config.url
        )));
    }

    fn set_silent(&self, why: Option<String>) {
        if let Ok(mut s) = self.silent.lock() {
            *s = why;
        }
    }

    fn unreachable(&self, e: &SendError, pending: bool) -> AgentError {
        let message = match e {
            SendError::Transport(e) => format!("facilitator {} unreachable: {e}", self.config.url),
            SendError::TooLarge { .. } => format!("facilitator {}: {e}", self.config.url),
        };
        AgentError::Unavailable { message, pending }
    }

    /// Buy a SIM: `request` is the activation body (`region`, `data_mb`, optional `carrier`, `chain`, `eid`).
    ///
    /// Every other activation pending with this facilitator is collected first (its SIM recorded); while one
    /// stays pending, no new activation is paid (see [`Agent::collect_pending`]).
    pub async fn activate(&self, request: &Value) -> Result<Activation, AgentError> {
        self.activate_labelled(request, None).await
    }

    /// [`Agent::activate`], the SIM labelled with `label` (its `X-Agent-ID`: `sims --agent-id` lists it; the
    /// facilitator checks the label's form).
    pub async fn activate_labelled(
        &self,
        request: &Value,
        label: Option<&str>,
    ) -> Result<Activation, AgentError> {
        const PATH: &str = "/v1/esim/activate";
        if let Some(l) = label {
            esim402_core::order::parse_agent_label(l)
                .map_err(|e| AgentError::Usage(format!("--agent-id: {e}")))?;
        }
        self.clear_way(&Purchase::Activation, PATH, request).await?;
        let purpose = format!("activate {request}");
        let origin = self.config.origin();
        // What this agent asked for (not the answer's word): `watch`'s floor under the facilitator's credit.
        let data_mb = request["data_mb"].as_u64();
        let headers: Vec<(&'static str, String)> = label
            .map(|l| ("x-agent-id", l.to_owned()))
            .into_iter()
            .collect();
        self.pay_and_keep(PATH, Some(request), &purpose, None, &headers, |s, a| {
            record_sim(s, a.body, None, &origin, data_mb)
        })
        .await
    }

    /// Move a SIM to another carrier or region (`{"carrier": …}` or `{"region": …}`): a paid new SIM that takes
    /// over the old one's unused data; the old one is retired by the facilitator once the new one is installed.
    /// Every other switch of this SIM pending with this facilitator is collected first (another SIM's is left to
    /// its own `switch` or `watch`); while one stays pending, no new one is paid, and if one is collected (the
    /// SIM moved) nothing new is paid either.
    pub async fn switch(
        &self,
        iccid: Option<&str>,
        target: &Value,
    ) -> Result<Activation, AgentError> {
        let sim = self.sim(iccid)?;
        let path = switch_path(&sim.iccid);
        let collected = self
            .clear_way(&Purchase::Switch(sim.iccid.clone()), &path, target)
            .await?;
        // Another switch of this SIM, paid earlier and collected now, has moved it: this one would pay to move a
        // SIM that is being retired.
        if let Some((id, moved)) = collected
            .iter()
            .find_map(|c| match (&c.purchase, &c.outcome) {
                (Purchase::Switch(old), Outcome::Sim(moved)) if *old == sim.iccid => {
                    Some((&c.payment_id, moved))
                }
                _ => None,
            })
        {
            return Err(AgentError::Usage(format!(
                "SIM {} has just moved to SIM {} ({}) by the switch paid earlier (payment {id}), collected now; \
                 nothing new was paid: run the command again (with --iccid {}) if that SIM should move too",
                sim.iccid,
                moved.iccid,
                moved.answer["carrier"].as_str().unwrap_or("?"),
                moved.iccid
            )));
        }
        let purpose = format!("{}{target}", switch_purpose_prefix(&sim.iccid));
        let origin = self.config.origin();
        self.pay_and_keep(&path, Some(target), &purpose, Some(&sim), &[], |s, a| {
            record_sim(s, a.body, Some(&sim.iccid), &origin, None)
        })
        .await
    }

    /// Buy `data_mb` more for a SIM. Anyone may pay a top-up, but the SIM's credential is sent with it so the
    /// answer carries the balance (the facilitator shows it to the owner only: before, an owner's top-up printed
    /// none). Every other top-up pending with this facilitator is collected first; while one of this SIM stays
    /// pending, no new one is paid.
    pub async fn top_up(
        &self,
        iccid: Option<&str>,
        data_mb: Option<u64>,
    ) -> Result<Value, AgentError> {
        let sim = self.sim(iccid)?;
        let data_mb = match data_mb {
            Some(mb) => mb,
            None => self.smallest_top_up(&sim).await?,
        };
        let path = format!("/v1/esim/{}/data", sim.iccid);
        let body = json!({"top_up_mb": data_mb});
        self.clear_way(&Purchase::TopUp(sim.iccid.clone()), &path, &body)
            .await?;
        let purpose = format!("top-up {} {data_mb} MB", sim.iccid);
        Ok(self.pay(&path, &body, &purpose, Some(&sim)).await?.body)
    }

    /// The smallest top-up the facilitator's catalog (`GET /v1/catalog`) offers for `sim`'s carrier, in MB: the
    /// most data its minimum invoice buys (what its low-balance 402 offers first).
    async fn smallest_top_up(&self, sim: &SimRecord) -> Result<u64, AgentError> {
        let none = |why: &str| {
            AgentError::Usage(format!(
                "{why}: name the size with --data-mb (GET {}/v1/catalog lists each carrier's top-ups)",
                self.config.url
            ))
        };
        let carrier = sim
            .carrier
            .as_deref()
            .ok_or_else(|| none("the SIM's carrier is not in the state"))?;
        let answer = self
            .send(reqwest::Method::GET, "/v1/catalog", None, &[])
            .await
            .map_err(|e| self.unreachable(&e, false))?;
        if answer.status != 200 {
            return Err(unexpected(&answer));
        }
        answer.body["carriers"]
            .as_array()
            .and_then(|all| all.iter().find(|c| c["id"] == carrier))
            .and_then(|c| c["top_ups"][0]["data_mb"].as_u64())
            .filter(|mb| (1..=u64::from(esim402_core::DataMb::MAX)).contains(mb))
            .ok_or_else(|| {
                none(&format!(
                    "the facilitator's catalog offers no top-up for carrier {carrier}"
                ))
            })
    }

    /// The SIM to act on: `iccid`, else the newest live SIM in the state directory.
    pub fn sim(&self, iccid: Option<&str>) -> Result<SimRecord, AgentError> {
        let state = self.state.load().map_err(local)?;
        state
            .pick_sim(iccid)
            .ok_or_else(|| AgentError::Usage(no_live_sim(&state)))
    }

    /// The credential for a SIM route: its access token if this facilitator issued it (a token never goes to
    /// another one, see [`SimRecord::token_for`]), else a wallet sign-in for `path` (bound to this origin).
    fn credential(
        &self,
        sim: &SimRecord,
        path: &str,
    ) -> Result<(&'static str, String), AgentError> {
        if let Some(t) = sim.token_for(&self.config.origin()) {
            return Ok(("authorization", format!("Bearer {t}")));
        }
        self.wallet_credential(sim, path)
    }

    /// A wallet sign-in for `path` on `sim`'s network.
    fn wallet_credential(
        &self,
        sim: &SimRecord,
        path: &str,
    ) -> Result<(&'static str, String), AgentError> {
        let chain_id = sim
            .network
            .as_deref()
            .and_then(|n| esim402_core::Network::parse(n).ok())
            .map_or(1, |n| n.chain_id().0);
        self.sign_in(path, chain_id)
    }

    /// A wallet sign-in (`SIGN-IN-WITH-X`, single-use nonce) for `path`.
    fn sign_in(&self, path: &str, chain_id: u64) -> Result<(&'static str, String), AgentError> {
        let Some((_, domain)) = siwx::origin_of(&self.config.url) else {
            return Err(AgentError::Local(format!("bad URL {}", self.config.url)));
        };
        let nonce = hex::encode(random::<16>()?);
        let uri = format!("{}{path}", self.config.url);
        let proof = siwx::sign(
            self.config.key.signing_key(),
            &siwx::Challenge {
                domain,
                uri: &uri,
                chain_id,
                nonce: &nonce,
                issued_at: now(),
                expires_in: 120,
                statement: Some("esim402-agent"),
            },
        )
        .map_err(|e| AgentError::Local(format!("cannot sign in: {e}")))?;
        Ok(("sign-in-with-x", proof.to_header()))
    }

    /// The SIM's status (`GET /v1/esim/{iccid}`); with `activation_code` (`status --activation-code`), also its
    /// `activation_code` from the state directory when the answer has none: the facilitator shows the code only
    /// in the paid answer that bought the SIM, and the agent keeps it (a SIM collected before another command is
    /// announced without it, see [`Agent::collect_pending`]). Only when asked for: `status` is a routine command
    /// whose output ends up in logs, and the code installs the profile. Never for a SIM terminated (by the
    /// state, or by the answer).
    pub async fn status(
        &self,
        iccid: Option<&str>,
        activation_code: bool,
    ) -> Result<Value, AgentError> {
        let sim = self.sim(iccid)?;
        let mut out = self.sim_get(Some(&sim.iccid), "").await?;
        let live = !sim.terminated && out["state"].as_str() != Some("terminated");
        if !(activation_code && live) {
            return Ok(out);
        }
        // The code kept in the state, else (a SIM this state directory did not buy: another device's, or the
        // new SIM of a switch made elsewhere) the facilitator's, read with the wallet's sign-in (the only
        // credential it gives the code to). Before, nothing was printed and nothing said.
        let code = match sim.activation_code.clone() {
            Some(code) => code,
            None => self.activation_code_of(&sim).await?,
        };
        if let Some(o) = out.as_object_mut()
            && o.get("activation_code").is_none_or(Value::is_null)
        {
            o.insert("activation_code".into(), Value::String(code));
        }
        Ok(out)
    }

    /// `sim`'s activation code from the facilitator (`GET /v1/esim/{iccid}/activation`, a wallet sign-in).
    async fn activation_code_of(&self, sim: &SimRecord) -> Result<String, AgentError> {
        let path = format!("/v1/esim/{}/activation", sim.iccid);
        let credential = self.wallet_credential(sim, &path)?;
        let answer = self
            .send(reqwest::Method::GET, &path, None, &[credential])
            .await
            .map_err(|e| self.unreachable(&e, false))?;
        if answer.status != 200 {
            return Err(unexpected(&answer));
        }
        answer.body["activation_code"]
            .as_str()
            .map(str::to_owned)
            .ok_or_else(|| AgentError::Refused {
                status: 200,
                message: format!("{path} answered no activation_code"),
            })
    }

    /// GET a SIM route (`""`, `/balance`, `/usage?…`, `/receipts?…`) with the SIM's credential.
    pub async fn sim_get(&self, iccid: Option<&str>, route: &str) -> Result<Value, AgentError> {
        self.sim_call(reqwest::Method::GET, iccid, route).await
    }

    /// POST a SIM action (`/suspend`, `/resume`, `/terminate`) with the SIM's credential.
    pub async fn sim_post(&self, iccid: Option<&str>, route: &str) -> Result<Value, AgentError> {
        let out = self.sim_call(reqwest::Method::POST, iccid, route).await?;
        if route == "/terminate"
            && let Some(id) = out["iccid"]
                .as_str()
                .map(str::to_owned)
                .or_else(|| iccid.map(str::to_owned))
        {
            self.state
                .update(|s| {
                    if let Some(sim) = s.sims.get_mut(&id) {
                        sim.terminated = true;
                    }
                })
                .map_err(local)?;
            // A SIM a switch replaced: its balance and service are the new SIM's, which this did not end (before,
            // it said nothing, and the balance stayed on a SIM the state did not know).
            if let Some(next) = out["replaced_by"].as_str() {
                self.say(&format!(
                    "SIM {id} had been switched to SIM {next}, which holds its balance and is not ended by this: \
                     if it is in service, terminate it with `esim402-agent terminate --iccid {next}` to end the \
                     data and refund its unused part (its owner's wallet signs in for it)"
                ));
            }
        }
        Ok(out)
    }

    async fn sim_call(
        &self,
        method: reqwest::Method,
        iccid: Option<&str>,
        route: &str,
    ) -> Result<Value, AgentError> {
        let sim = self.sim(iccid)?;
        let answer = self.sim_request(method, &sim, route, None).await?;
        if (200..300).contains(&answer.status) {
            Ok(answer.body)
        } else {
            Err(unexpected(&answer))
        }
    }

    /// A SIM route (`/v1/esim/{iccid}{route}`) with the SIM's credential: the answer whatever its status (a
    /// quota request's 402 is an answer, not an error); only an unreachable facilitator is an error.
    pub async fn sim_request(
        &self,
        method: reqwest::Method,
        sim: &SimRecord,
        route: &str,
        body: Option<&Value>,
    ) -> Result<Answer, AgentError> {
        let path = format!("/v1/esim/{}{route}", sim.iccid);
        let bare = path.split('?').next().unwrap_or(&path).to_owned();
        let (name, value) = self.credential(sim, &bare)?;
        let answer = self
            .send(method.clone(), &path, body, &[(name, value)])
            .await
            .map_err(|e| self.unreachable(&e, false))?;
        // A token that no longer opens the SIM (404: rotated elsewhere, or revoked by a terminate), or a
        // terminate that revoked it and asks to be sent again with the wallet (503: a refund not recorded):
        // once more with a wallet sign-in. Only for requests without a body (reads and lifecycle actions).
        let retry = name == "authorization"
            && body.is_none()
            && (answer.status == 404 || (route == "/terminate" && answer.status == 503));
        if !retry {
            return Ok(answer);
        }
        let credential = self.wallet_credential(sim, &bare)?;
        self.send(method, &path, None, &[credential])
            .await
            .map_err(|e| self.unreachable(&e, false))
    }

    /// What was spent since 00:00 UTC.
    pub fn spent_today(&self) -> Result<UsdcAmount, AgentError> {
        Ok(self.state.load().map_err(local)?.spent_today(now()))
    }
}

/// Why a command without `--iccid` has no SIM to act on: the state directory holds none, or every SIM in it is
/// terminated (the default is the newest live SIM). Then the newest is named, with how to see it: before, both
/// read "run `activate` first", as if nothing had ever been bought.
fn no_live_sim(state: &State) -> String {
    let Some(newest) = state
        .sims
        .values()
        .max_by_key(|s| (s.activated_at, s.iccid.clone()))
    else {
        return "no SIM in the state directory: run `activate` first or pass --iccid".into();
    };
    let all = match state.sims.len() {
        1 => "its only SIM is terminated".to_owned(),
        n => format!("all {n} of its SIMs are terminated"),
    };
    format!(
        "no live SIM in the state directory: {all} (the newest: {iccid}{carrier}), and without --iccid a command \
         acts on the newest live SIM: `esim402-agent status --iccid {iccid}` shows that one; `activate` buys a \
         new SIM",
        iccid = newest.iccid,
        carrier = newest
            .carrier
            .as_deref()
            .map(|c| format!(" on {c}"))
            .unwrap_or_default(),
    )
}

/// Keep in `state` the SIM a paid answer bought (its token out of the answer, bound to the facilitator `origin`
/// that issued it), retiring `replaces`. Changes nothing when the answer names no SIM.
fn record_sim(
    state: &mut State,
    mut answer: Value,
    replaces: Option<&str>,
    origin: &str,
    data_mb: Option<u64>,
) -> Result<Activation, AgentError> {
    let (Some(iccid), Some(code)) = (
        answer["iccid"].as_str().map(str::to_owned),
        answer["activation_code"].as_str().map(str::to_owned),
    ) else {
        return Err(AgentError::Refused {
            status: 200,
            message: format!(
                "the paid answer names no SIM (no iccid/activation_code): {}",
                redacted(&answer)
            ),
        });
    };
    let token = answer
        .as_object_mut()
        .and_then(|o| o.remove("access_token"))
        .and_then(|t| t.as_str().map(str::to_owned));
    let record = SimRecord {
        iccid: iccid.clone(),
        access_token: token,
        activation_code: Some(code.clone()),
        region: answer["region"].as_str().map(str::to_owned),
        carrier: answer["carrier"].as_str().map(str::to_owned),
        network: answer["network"].as_str().map(str::to_owned),
        activated_at: now(),
        terminated: false,
        origin: Some(origin.to_owned()),
        replaces: replaces.map(str::to_owned),
        data_mb,
    };
    state.sims.insert(iccid.clone(), record);
    if let Some(old) = replaces.and_then(|id| state.sims.get_mut(id)) {
        old.terminated = true;
    }
    Ok(Activation {
        iccid,
        activation_code: code,
        answer,
    })
}

/// The line a paid top-up's answer is told by: what was bought, and the SIM's balance when the answer carries
/// one. The facilitator puts the balance only in an answer to the SIM's owner (a top-up anyone may pay for shows
/// only what was bought), so without one the line says so instead of printing a missing figure.
pub fn top_up_line(answer: &Value) -> String {
    let bought = answer["topped_up_mb"]
        .as_u64()
        .map_or_else(|| "data".to_owned(), |mb| format!("{mb} MB"));
    let balance = match answer["remaining_kb"].as_u64() {
        Some(kb) => format!("{kb} KB left"),
        None => format!(
            "the facilitator's answer carries no balance (it shows one to the SIM's owner only): run \
             `esim402-agent balance{}` to see it",
            answer["iccid"]
                .as_str()
                .map(|iccid| format!(" --iccid {iccid}"))
                .unwrap_or_default()
        ),
    };
    format!(
        "topped up {bought} for {} USDC (tx {}); {balance}",
        answer["amount_usdc"].as_str().unwrap_or("?"),
        answer["transaction"].as_str().unwrap_or("?"),
    )
}

/// Whether `answer` is passing: a timeout or throttling (408, 429, nginx's 499), most likely from something
/// between the agent and the facilitator, or any answer with `Retry-After`. Asking again later may succeed.
pub(crate) fn transient(answer: &Answer) -> bool {
    matches!(answer.status, 408 | 429 | 499) || answer.headers.contains_key("retry-after")
}

/// The error a non-2xx answer stands for (5xx and [`transient`] ones: unavailable; else refused).
pub fn unexpected(answer: &Answer) -> AgentError {
    if transient(answer) && answer.status < 500 {
        AgentError::Unavailable {
            message: format!(
                "the request timed out or was throttled ({}{}): {}",
                answer.status,
                answer
                    .header("retry-after")
                    .map(|s| format!(", retry after {s}"))
                    .unwrap_or_default(),
                answer.message()
            ),
            pending: false,
        }
    } else if answer.status >= 500 {
        AgentError::Unavailable {
            message: format!(
                "facilitator failed ({}): {}",
                answer.status,
                answer.message()
            ),
            pending: false,
        }
    } else {
        AgentError::Refused {
            status: answer.status,
            message: answer.message(),
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "tests")]
    use super::*;
    use crate::config::WalletKey;
    use tokio::io::AsyncReadExt as _;

    use crate::testing::{agent, budgeted_agent};

    #[tokio::test]
    async fn https_facilitators_are_spoken_to_in_tls() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let first_byte = tokio::spawn(async move {
            let (mut conn, _) = listener.accept().await.unwrap();
            conn.read_u8().await.unwrap()
        });
        let dir = tempfile::tempdir().unwrap();
        let a = agent(&format!("https://127.0.0.1:{port}"), dir.path());
        let e = a
            .sim_get(Some("8901260000000000014"), "")
            .await
            .unwrap_err();
        assert_eq!(first_byte.await.unwrap(), 0x16, "a TLS handshake record");
        assert_eq!(e.exit_code(), crate::ExitCode::Unavailable, "{e}");
    }

    #[tokio::test]
    async fn an_unreachable_facilitator_is_exit_5_and_keeps_nothing() {
        let dir = tempfile::tempdir().unwrap();
        // A port nothing listens on: bound but never listening, so a connection is refused, and held for the
        // whole test, so no other test's `:0` server can be given it meanwhile.
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let port = socket.local_addr().unwrap().port();
        let a = agent(&format!("http://127.0.0.1:{port}"), dir.path());
        let e = a
            .activate(&json!({"region": "us-west", "data_mb": 1}))
            .await
            .unwrap_err();
        assert!(
            matches!(e, AgentError::Unavailable { pending: false, .. }),
            "{e}"
        );
        assert_eq!(e.exit_code(), crate::ExitCode::Unavailable);
        assert!(a.state().load().unwrap().pending.is_empty());
        let e = a.sim_get(None, "/balance").await.unwrap_err();
        assert_eq!(e.exit_code(), crate::ExitCode::Usage, "no SIM yet: {e}");
        drop(socket);
    }

    fn agent_in(url: &str, state: StateDir) -> Agent {
        let key = WalletKey::parse(&"11".repeat(32), "test").unwrap();
        Agent::new(
            Config::new(url, key).unwrap(),
            SpendPolicy::default(),
            state,
            false,
        )
        .unwrap()
    }

    const BUY: &str = r#"{"region": "us-west", "data_mb": 1}"#;

    fn buy() -> Value {
        serde_json::from_str(BUY).unwrap()
    }

    /// The SIM a paid answer bought is kept in the very save that ends its payment. Before, the payment was
    /// settled (pending entry gone) in one save and the SIM recorded in a second: a failure in between lost the
    /// activation code and token, and a re-run paid again. Here only two saves succeed (the payment recorded,
    /// then the answer): the old code failed its third. And when the second fails, the payment stays pending and
    /// a re-run collects the answer with the very same payment.
    #[tokio::test]
    async fn a_paid_sim_is_kept_in_the_same_save_that_ends_its_payment() {
        use std::sync::atomic::{AtomicUsize, Ordering};
        let f = crate::testing::facilitator(vec![(200, crate::testing::sim_answer("8901"))]).await;
        let dir = tempfile::tempdir().unwrap();
        let saves = std::sync::Arc::new(AtomicUsize::new(2));
        let a = agent_in(
            &f.url,
            StateDir::new(dir.path()).failing_after(saves.clone()),
        );
        let got = a.activate(&buy()).await.unwrap();
        assert_eq!(got.iccid, "8901");
        assert!(got.answer.get("access_token").is_none(), "{}", got.answer);
        let st = a.state().load().unwrap();
        assert!(st.pending.is_empty(), "{st:?}");
        assert_eq!(
            st.sims["8901"].access_token.as_deref(),
            Some("sim_secret_8901")
        );
        assert_eq!(st.spends[0].status, crate::state::SpendStatus::Settled);

        // The save that ends the payment fails: it stays pending, nothing is lost, and the error says that the
        // payment went through and that running the command again collects it (exit 5: a payment is kept).
        let dir = tempfile::tempdir().unwrap();
        saves.store(1, Ordering::SeqCst);
        let a = agent_in(
            &f.url,
            StateDir::new(dir.path()).failing_after(saves.clone()),
        );
        let e = a.activate(&buy()).await.unwrap_err();
        assert!(
            matches!(e, AgentError::Unavailable { pending: true, .. }),
            "{e}"
        );
        let said = e.to_string();
        assert!(
            said.contains("paid for") && said.contains("run the same command again"),
            "{said}"
        );
        let st = a.state().load().unwrap();
        assert_eq!(st.pending.len(), 1, "{st:?}");
        assert!(st.sims.is_empty());
        saves.store(usize::MAX, Ordering::SeqCst);
        let got = a.activate(&buy()).await.unwrap();
        assert_eq!(got.iccid, "8901");
        let st = a.state().load().unwrap();
        assert!(
            st.pending.is_empty() && st.sims.contains_key("8901"),
            "{st:?}"
        );
        let paid = f.payments();
        assert_eq!(paid.len(), 3);
        assert_eq!(
            paid[1], paid[2],
            "the same payment sent again, none signed anew"
        );
        assert_eq!(st.spends.len(), 1);
    }

    /// A 2xx answer naming no SIM (money moved, and a re-run would be answered the same): exit 4, the payment
    /// settled and the whole answer kept in the state (its token too: the file is private), the error text
    /// saying so, without the token. Before, the payment was kept pending and every re-run failed alike while
    /// the text said to run the command again.
    #[tokio::test]
    async fn a_paid_answer_without_a_sim_is_settled_and_kept_and_prints_no_token() {
        let answer =
            json!({"access_token": "sim_secret_9", "nested": {"access_token": "sim_secret_9"}});
        let f = crate::testing::facilitator(vec![(200, answer.clone())]).await;
        let dir = tempfile::tempdir().unwrap();
        let a = agent(&f.url, dir.path());
        let e = a.activate(&buy()).await.unwrap_err();
        assert_eq!(e.exit_code(), crate::ExitCode::Refused, "{e}");
        let said = e.to_string();
        assert!(!said.contains("sim_secret"), "{said}");
        assert!(
            said.contains("no iccid") && said.contains("went through"),
            "{said}"
        );
        assert!(
            said.contains(&dir.path().join("state.json").display().to_string()),
            "{said}"
        );
        let st = a.state().load().unwrap();
        assert!(st.pending.is_empty() && st.sims.is_empty(), "{st:?}");
        assert_eq!(st.spends[0].status, crate::state::SpendStatus::Settled);
        assert_eq!(st.unrecorded_answers[&st.spends[0].payment_id], answer);
        assert!(said.contains(&st.spends[0].payment_id), "{said}");
    }

    /// Fix: an activation code (it installs the profile) never reaches printed text: a paid answer naming no
    /// SIM but carrying a code, and a refusal whose message quotes one, are told without it. Before, only
    /// `access_token` was taken out, and the code went to stderr.
    #[tokio::test]
    async fn printed_answers_carry_no_activation_code() {
        let answer = json!({"activation_code": "LPA:1$smdp.example$SECRET1",
            "profile": {"code": "lpa:1$smdp.example$SECRET2"}, "codes": ["LPA:1$smdp.example$SECRET3"]});
        let f = crate::testing::facilitator(vec![(200, answer.clone())]).await;
        let dir = tempfile::tempdir().unwrap();
        let a = agent(&f.url, dir.path());
        let e = a.activate(&buy()).await.unwrap_err();
        let said = e.to_string();
        assert!(said.contains("no iccid"), "{said}");
        assert!(!said.contains("SECRET"), "{said}");
        let st = a.state().load().unwrap();
        assert_eq!(
            st.unrecorded_answers[&st.spends[0].payment_id], answer,
            "kept whole"
        );
        let refusal = Answer {
            status: 409,
            headers: reqwest::header::HeaderMap::new(),
            body: json!({"error": {"message": "SIM already has LPA:1$smdp.example$SECRET4, (see it)"}}),
            json: true,
        };
        let said = refusal.message();
        assert_eq!(said, "SIM already has LPA:[redacted], (see it)");
        assert!(!unexpected(&refusal).to_string().contains("SECRET"));
    }

    /// Fix (a review): redacting takes one pass over the text, however many codes it holds: a hostile message
    /// of 200 000 `lpa:` (1 MB) is redacted whole. Before, the rest of the text was lowercased again at every
    /// code found (quadratic: minutes for this one, the proxy's one thread stuck meanwhile). Mixed case,
    /// quotes and text that is not ASCII are redacted as before.
    #[test]
    fn redacting_is_one_pass_and_misses_no_code() {
        let hostile = "lpa: ".repeat(200_000);
        assert_eq!(redacted_text(&hostile), "LPA:[redacted] ".repeat(200_000));
        let glued = "LpA:".repeat(100_000);
        assert_eq!(redacted_text(&glued), "LPA:[redacted]");
        for (text, want) in [
            (
                "SIM already has LPA:1$smdp.example$SECRET4, (see it)",
                "SIM already has LPA:[redacted], (see it)",
            ),
            (
                "é lpa:1$ü€$S'x lPa:2$S\"y",
                "é LPA:[redacted]'x LPA:[redacted]\"y",
            ),
            (
                "(LPA:1$a$b) and\tlpa:1$c$d\nend",
                "(LPA:[redacted]) and\tLPA:[redacted]\nend",
            ),
            ("no code, only lpa", "no code, only lpa"),
            ("ends in lpa:", "ends in LPA:[redacted]"),
            ("", ""),
        ] {
            assert_eq!(redacted_text(text), want, "{text}");
        }
    }

    /// A SIM's token is sent to the facilitator that issued it only, and a pending payment to the one it was
    /// signed for: switching `--url` sent both to the new server before.
    /// A terminate that revoked the token but could not record a refund answers 503 and asks to be sent again
    /// with the wallet; a token that no longer opens its SIM is a 404. Either way the agent sends the request
    /// once more with a wallet sign-in (before, it sent the revoked token again on every retry: a 404 for good,
    /// and the refund never recorded).
    #[tokio::test]
    async fn a_revoked_token_is_followed_by_a_wallet_sign_in() {
        let f = crate::testing::Server::start(|seen| {
            if seen.target.starts_with("/v1/esim/activate") {
                return match seen.header("payment-signature") {
                    None => crate::testing::challenge(seen),
                    Some(_) => (200, vec![], crate::testing::sim_answer("8905")),
                };
            }
            match (seen.header("authorization"), seen.header("sign-in-with-x")) {
                (Some(_), _) if seen.target.ends_with("/terminate") => (
                    503,
                    vec![],
                    json!({"error": {"code": "unavailable", "message": "terminate again with the wallet"}}),
                ),
                (Some(_), _) => (404, vec![], json!({"error": {"code": "not_found", "message": "no SIM"}})),
                (None, Some(_)) => (
                    200,
                    vec![],
                    json!({"iccid": "8905", "state": "terminated", "refunds": []}),
                ),
                (None, None) => (401, vec![], json!({"error": {"code": "unauthorized", "message": "?"}})),
            }
        })
        .await;
        let dir = tempfile::tempdir().unwrap();
        let a = agent(&f.url, dir.path());
        a.activate(&buy()).await.unwrap();
        let read = a.sim_get(Some("8905"), "/balance").await.unwrap();
        assert_eq!(read["state"], "terminated");
        let out = a.sim_post(Some("8905"), "/terminate").await.unwrap();
        assert_eq!(out["state"], "terminated");
        assert!(a.state().load().unwrap().sims["8905"].terminated);
        let asked: Vec<(String, bool, bool)> = f
            .seen()
            .iter()
            .filter(|s| s.target.starts_with("/v1/esim/8905"))
            .map(|s| {
                (
                    s.target.clone(),
                    s.header("authorization").is_some(),
                    s.header("sign-in-with-x").is_some(),
                )
            })
            .collect();
        assert_eq!(
            asked,
            vec![
                ("/v1/esim/8905/balance".into(), true, false),
                ("/v1/esim/8905/balance".into(), false, true),
                ("/v1/esim/8905/terminate".into(), true, false),
                ("/v1/esim/8905/terminate".into(), false, true),
            ]
        );
    }

    #[tokio::test]
    async fn tokens_and_pending_payments_stay_with_their_facilitator() {
        let first = crate::testing::facilitator(vec![
            (200, crate::testing::sim_answer("8901")),
            (500, json!({"error": {"message": "down"}})),
        ])
        .await;
        let other =
            crate::testing::facilitator(vec![(200, crate::testing::sim_answer("8902"))]).await;
        let dir = tempfile::tempdir().unwrap();
        let a = agent(&first.url, dir.path());
        a.activate(&buy()).await.unwrap();
        assert_eq!(
            a.state().load().unwrap().sims["8901"].origin.as_deref(),
            Some(first.url.as_str())
        );
        let b = agent(&other.url, dir.path());
        b.sim_get(Some("8901"), "/balance").await.unwrap();
        let asked = other.seen().pop().unwrap();
        assert_eq!(
            asked.header("authorization"),
            None,
            "no token to another server"
        );
        assert!(
            asked.header("sign-in-with-x").is_some(),
            "a wallet sign-in instead"
        );
        a.sim_get(Some("8901"), "/balance").await.unwrap();
        let asked = first.seen().pop().unwrap();
        assert_eq!(
            asked.header("authorization"),
            Some("Bearer sim_secret_8901"),
            "its issuer gets it"
        );

        // A payment left pending with the first server is not sent to the other one, and the other one is not
        // paid afresh either: another origin may be the same facilitator (`localhost` and `127.0.0.1`), where
        // the first payment may have been charged. The error names the first one's origin. (Before, the other
        // was paid afresh.)
        let top_up = json!({"region": "eu-central", "data_mb": 1});
        let e = a.activate(&top_up).await.unwrap_err();
        assert!(
            matches!(e, AgentError::Unavailable { pending: true, .. }),
            "{e}"
        );
        let held = first.payments().pop().unwrap();
        let before = other.seen().len();
        let e = b.activate(&top_up).await.unwrap_err();
        assert_eq!(e.exit_code(), crate::ExitCode::Local, "{e}");
        assert!(e.to_string().contains(&first.url), "{e}");
        assert_eq!(other.seen().len(), before, "nothing sent, nothing signed");
        assert!(
            !other.payments().contains(&held),
            "the first server's payment stays there"
        );
        let st = a.state().load().unwrap();
        assert_eq!(
            st.pending.len(),
            1,
            "the first server's is still pending: {st:?}"
        );

        // A pending entry of an earlier agent (no origin in its key) goes to the server it was signed for only.
        let (key, p) = st.pending.iter().next().unwrap();
        assert!(key.starts_with(&format!("POST {}", first.url)), "{key}");
        let legacy = format!("POST /v1/esim/activate {top_up}");
        a.state()
            .update(|s| {
                s.pending.clear();
                s.pending.insert(legacy.clone(), p.clone());
            })
            .unwrap();
        let before = other.seen().len();
        let e = b.activate(&top_up).await.unwrap_err();
        assert_eq!(e.exit_code(), crate::ExitCode::Local, "{e}");
        assert!(
            e.to_string()
                .contains(first.url.trim_start_matches("http://")),
            "{e}"
        );
        assert_eq!(other.seen().len(), before, "nothing sent, nothing signed");
        let e = a.activate(&top_up).await.unwrap_err();
        assert!(
            matches!(e, AgentError::Unavailable { pending: true, .. }),
            "{e}"
        );
        assert_eq!(
            first.payments().pop().unwrap(),
            held,
            "sent again to its server"
        );
        assert!(a.state().load().unwrap().pending.contains_key(&legacy));
    }

    /// A payment pending under one spelling of the facilitator's URL is sent again under another spelling of
    /// the same origin (`127.1`, `127.0.0.1`, and a key an earlier agent wrote as `--url` was spelled), and
    /// refused under another origin that may be the same server (`localhost`): never a second payment. The
    /// proxy's walk (a paid GET) too. Before, each of these signed a new payment.
    #[tokio::test]
    async fn a_pending_payment_is_found_whatever_the_urls_spelling() {
        let f =
            crate::testing::facilitator(vec![(500, json!({"error": {"message": "down"}}))]).await;
        let port = f.url.rsplit(':').next().unwrap().to_owned();
        let dir = tempfile::tempdir().unwrap();
        let short = agent(&format!("http://127.1:{port}"), dir.path());
        let e = short.activate(&buy()).await.unwrap_err();
        assert!(
            matches!(e, AgentError::Unavailable { pending: true, .. }),
            "{e}"
        );
        let held = f.payments().pop().unwrap();
        let long = agent(&format!("http://127.0.0.1:{port}/"), dir.path());
        long.activate(&buy()).await.unwrap_err();
        assert_eq!(f.payments().pop().unwrap(), held, "the same payment");

        // A key as an earlier agent wrote it, with the origin spelled as given.
        let st = long.state().load().unwrap();
        let (key, p) = st.pending.iter().next().unwrap();
        let spelled = key.replace("127.0.0.1", "127.1");
        long.state()
            .update(|s| {
                s.pending.clear();
                s.pending.insert(spelled.clone(), p.clone());
            })
            .unwrap();
        long.activate(&buy()).await.unwrap_err();
        assert_eq!(f.payments().pop().unwrap(), held, "the same payment");
        assert!(long.state().load().unwrap().pending.contains_key(&spelled));

        let before = f.seen().len();
        let named = agent(&format!("http://localhost:{port}"), dir.path());
        let e = named.activate(&buy()).await.unwrap_err();
        assert_eq!(e.exit_code(), crate::ExitCode::Local, "{e}");
        assert!(
            e.to_string()
                .contains(&format!("with the facilitator http://127.1:{port}")),
            "{e}"
        );
        assert_eq!(f.seen().len(), before, "nothing sent, nothing signed");
        assert_eq!(named.state().load().unwrap().spends.len(), 1);

        // The proxy's paid GET: pending under one spelling, sent again under another, refused under `localhost`.
        let query = "/v1/esim/activate?region=us-west&data_mb=1";
        let slot = crate::testing::plain_slot("GET", query);
        let g = crate::testing::Server::start(|seen| {
            if seen.header("payment-signature").is_none() {
                return crate::testing::challenge(seen);
            }
            (500, vec![], json!({"error": {"message": "down"}}))
        })
        .await;
        let port = g.url.rsplit(':').next().unwrap().to_owned();
        let dir = tempfile::tempdir().unwrap();
        let short = agent(&format!("http://127.1:{port}"), dir.path());
        short
            .pay_for_device(query, None, &[], "device d", &slot)
            .await
            .unwrap_err();
        let held = g.payments().pop().unwrap();
        let long = agent(&format!("http://127.0.0.1:{port}"), dir.path());
        long.pay_for_device(query, None, &[], "device d", &slot)
            .await
            .unwrap_err();
        assert_eq!(g.payments().pop().unwrap(), held, "the same payment");
        let before = g.seen().len();
        let named = agent(&format!("http://localhost:{port}"), dir.path());
        let e = named
            .pay_for_device(query, None, &[], "device d", &slot)
            .await
            .unwrap_err();
        assert_eq!(e.exit_code(), crate::ExitCode::Local, "{e}");
        assert_eq!(g.seen().len(), before, "nothing sent, nothing signed");
    }

    /// A charged payment owed back with its refund recorded, answered 5xx (the order failed after settlement):
    /// final, not sent again, its spend kept counted. Before, it stayed pending for good behind the `500..` arm:
    /// every command sent it again and got the same stored answer, and no new payment for the purchase was signed.
    #[tokio::test]
    async fn a_payment_owed_back_with_its_refund_recorded_is_not_sent_again() {
        let owed = json!({"error": {"message": "the carrier failed; the payment is owed back"},
            "charged": true, "refund": {"status": "owed", "amount": "420000"}});
        let f = crate::testing::facilitator(vec![(503, owed)]).await;
        let dir = tempfile::tempdir().unwrap();
        let a = agent(&f.url, dir.path());
        let e = a.activate(&buy()).await.unwrap_err();
        assert_eq!(e.exit_code(), crate::ExitCode::Refused, "{e}");
        assert!(e.to_string().contains("owes it back (refund owed)"), "{e}");
        let st = a.state().load().unwrap();
        assert!(st.pending.is_empty(), "{st:?}");
        assert_eq!(st.spends[0].status, crate::state::SpendStatus::Unknown);
        assert_eq!(f.payments().len(), 1, "sent once");
    }

    /// Answers that may hide a charge keep the payment: a charge whose refund is not recorded yet (sending it
    /// again records it), and an intermediary's 408/429/499. Before, each dropped the pending entry. A refund
    /// that is recorded ends it.
    #[tokio::test]
    async fn answers_that_may_hide_a_charge_keep_the_payment() {
        let unrecorded = json!({"error": {"message": "carrier failed; owed back"}, "charged": true,
            "refund": {"status": "unrecorded", "error": "store down"}});
        let f = crate::testing::facilitator(vec![
            (409, unrecorded.clone()),
            (502, unrecorded),
            (408, Value::Null),
            (429, Value::Null),
            (499, Value::Null),
            (
                409,
                json!({"error": {"message": "owed back"}, "charged": true,
                "refund": {"status": "owed"}}),
            ),
        ])
        .await;
        let dir = tempfile::tempdir().unwrap();
        let a = agent(&f.url, dir.path());
        for _ in 0..5 {
            let e = a.activate(&buy()).await.unwrap_err();
            assert!(
                matches!(e, AgentError::Unavailable { pending: true, .. }),
                "{e}"
            );
            assert_eq!(a.state().load().unwrap().pending.len(), 1);
        }
        let e = a.activate(&buy()).await.unwrap_err();
        assert_eq!(e.exit_code(), crate::ExitCode::Refused, "{e}");
        let st = a.state().load().unwrap();
        assert!(st.pending.is_empty(), "{st:?}");
        assert_eq!(st.spends[0].status, crate::state::SpendStatus::Unknown);
        let paid = f.payments();
        assert_eq!(paid.len(), 6);
        assert!(
            paid.iter().all(|p| *p == paid[0]),
            "one payment, sent again"
        );
    }

    /// A 410 saying the payment was withdrawn and nothing was charged (the facilitator's answer to a payment
    /// that stopped verifying after its profile was ordered, `pay/withdraw.rs`) frees its spend, here and in the
    /// wallet's shared cap: exit 4, nothing pending. Before, it was kept as unknown, counted toward the day's cap.
    /// A 410 that does not say so keeps its spend.
    #[tokio::test]
    async fn a_withdrawn_payment_frees_its_spend() {
        let withdrawn = json!({"error": {"code": "expired", "message": "invoice inv_1 can no longer be paid \
            (authorization expired): the payment stopped verifying after its profile was ordered, so nothing was \
            charged and the profile was withdrawn; request a new invoice"}});
        let f = crate::testing::facilitator(vec![
            (410, withdrawn),
            (
                410,
                json!({"error": {"code": "expired", "message": "invoice inv_1 expired"}}),
            ),
        ])
        .await;
        let dir = tempfile::tempdir().unwrap();
        let wallet = tempfile::tempdir().unwrap();
        let a = budgeted_agent(&f.url, dir.path(), wallet.path());
        let e = a.activate(&buy()).await.unwrap_err();
        assert!(matches!(e, AgentError::Refused { status: 410, .. }), "{e}");
        assert!(e.to_string().contains("nothing was charged"), "{e}");
        let st = a.state().load().unwrap();
        assert!(st.pending.is_empty() && st.spends.is_empty(), "{st:?}");
        assert_eq!(a.spent_today().unwrap(), UsdcAmount::ZERO);
        let shared = StateDir::new(wallet.path()).load().unwrap();
        assert!(shared.spends.is_empty(), "released: {shared:?}");

        let e = a.activate(&buy()).await.unwrap_err();
        assert!(matches!(e, AgentError::Refused { status: 410, .. }), "{e}");
        let st = a.state().load().unwrap();
        assert!(st.pending.is_empty(), "{st:?}");
        assert_eq!(st.spends.len(), 1);
        assert_eq!(st.spends[0].status, crate::state::SpendStatus::Unknown);
        assert_eq!(a.spent_today().unwrap(), "0.42".parse().unwrap());
        assert_eq!(StateDir::new(wallet.path()).load().unwrap().spends.len(), 1);
    }

    /// The facilitator's own word for it: a 410 with `charged: false` (what the gateway answers since
    /// `8bb2046`) frees its spend whatever its message says.
    #[tokio::test]
    async fn a_410_that_says_charged_false_frees_its_spend() {
        let withdrawn = json!({"error": {"code": "expired", "message": "invoice inv_1 can no longer be paid"},
                               "charged": false});
        let f = crate::testing::facilitator(vec![(410, withdrawn)]).await;
        let dir = tempfile::tempdir().unwrap();
        let a = agent(&f.url, dir.path());
        let e = a.activate(&buy()).await.unwrap_err();
        assert!(matches!(e, AgentError::Refused { status: 410, .. }), "{e}");
        let st = a.state().load().unwrap();
        assert!(st.pending.is_empty() && st.spends.is_empty(), "{st:?}");
        assert_eq!(a.spent_today().unwrap(), UsdcAmount::ZERO);
    }

    /// A paid top-up's line prints the balance when the answer carries one, and says so when it does not: the
    /// facilitator's answer to a top-up sent without the owner's credential (the agent's) has no `remaining_kb`,
    /// which the CLI printed as "null KB left".
    #[test]
    fn a_top_up_line_never_prints_a_missing_balance() {
        let bought = json!({"iccid": "8901", "status": "topped_up", "topped_up_mb": 10,
            "amount_usdc": "0.03", "transaction": "0xab"});
        let line = top_up_line(&bought);
        assert!(!line.contains("null"), "{line}");
        assert!(
            line.starts_with("topped up 10 MB for 0.03 USDC (tx 0xab); ")
                && line.contains("carries no balance")
                && line.contains("`esim402-agent balance --iccid 8901`"),
            "{line}"
        );
        let mut owners = bought.clone();
        owners["remaining_kb"] = json!(110_000);
        assert_eq!(
            top_up_line(&owners),
            "topped up 10 MB for 0.03 USDC (tx 0xab); 110000 KB left"
        );
        let line = top_up_line(&json!({"remaining_kb": null}));
        assert!(!line.contains("null"), "{line}");
        assert!(line.contains("carries no balance"), "{line}");
        assert!(
            line.contains("`esim402-agent balance`"),
            "no ICCID to name: {line}"
        );
    }

    /// `status --activation-code` shows the SIM's activation code kept in the state directory (the
    /// facilitator's status answer carries none: it shows the code only in the paid answer that bought the
    /// SIM), which is where the line announcing a SIM collected before a command points to; a plain `status`
    /// does not, nor does any `status` of a terminated SIM.
    #[tokio::test]
    async fn status_shows_the_activation_code_kept() {
        let f = crate::testing::facilitator(vec![(200, crate::testing::sim_answer("8901"))]).await;
        let dir = tempfile::tempdir().unwrap();
        let a = agent(&f.url, dir.path());
        let got = a.activate(&buy()).await.unwrap();
        let status = a.status(None, true).await.unwrap();
        assert_eq!(status["ok"], true, "the facilitator's answer: {status}");
        assert_eq!(status["activation_code"], got.activation_code.as_str());
        assert_eq!(
            a.status(Some("8901"), true).await.unwrap()["activation_code"],
            got.activation_code.as_str()
        );
        // A SIM this state did not buy: its code is asked of the facilitator (with the wallet's sign-in); an
        // answer without one is an error naming the route, never a status silently without the code.
        let unknown = a.status(Some("8999"), true).await.unwrap_err();
        assert!(
            unknown.to_string().contains("/v1/esim/8999/activation"),
            "{unknown}"
        );
        // Fix: only when asked for (a routine `status` ends up in logs), never for a terminated SIM. Before,
        // every `status` printed it.
        let routine = a.status(Some("8901"), false).await.unwrap();
        assert!(routine.get("activation_code").is_none(), "{routine}");
        a.state()
            .update(|s| s.sims.get_mut("8901").unwrap().terminated = true)
            .unwrap();
        let ended = a.status(Some("8901"), true).await.unwrap();
        assert!(ended.get("activation_code").is_none(), "{ended}");
    }

    /// Fix: when every SIM in the state is terminated, a command without --iccid (`status`, `balance`, …) says
    /// so, naming the newest and how to see it (still a usage error, exit 2). Before, it said "no SIM in the
    /// state directory: run `activate` first", as if nothing had ever been bought.
    #[test]
    fn with_every_sim_terminated_the_newest_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let a = agent("http://127.0.0.1:9", dir.path());
        let e = a.sim(None).unwrap_err();
        assert!(e.to_string().contains("run `activate` first"), "{e}");
        let sim = |iccid: &str, at: u64| SimRecord {
            iccid: iccid.to_owned(),
            access_token: None,
            activation_code: None,
            region: Some("us-west".into()),
            carrier: Some("tmobile".into()),
            network: None,
            activated_at: at,
            terminated: true,
            origin: None,
            replaces: None,
            data_mb: None,
        };
        a.state()
            .update(|s| {
                s.sims.insert("8901".into(), sim("8901", 200));
            })
            .unwrap();
        let e = a.sim(None).unwrap_err();
        assert_eq!(e.exit_code(), crate::ExitCode::Usage);
        let text = e.to_string();
        assert!(text.contains("its only SIM is terminated"), "{text}");
        assert!(text.contains("8901 on tmobile"), "{text}");
        assert!(text.contains("status --iccid 8901`"), "{text}");
        assert!(!text.contains("run `activate` first"), "{text}");
        assert!(!text.contains("  "), "one line, no runs of spaces: {text}");
        a.state()
            .update(|s| {
                s.sims.insert("8902".into(), sim("8902", 100));
            })
            .unwrap();
        let text = a.sim(None).unwrap_err().to_string();
        assert!(text.contains("all 2 of its SIMs are terminated"), "{text}");
        assert!(text.contains("the newest: 8901"), "{text}");
    }

    /// Fix: the agent's own client (the builder [`http_client`] builds, and nothing else) gives up on a
    /// connection within [`CONNECT_TIMEOUT`], not only the request timeout a paid request may need. Before, the
    /// test checked a helper given 300 ms, and the real client's connect timeout was never looked at.
    #[test]
    fn the_agents_client_gives_up_on_a_connection_within_the_connect_timeout() {
        const { assert!(CONNECT_TIMEOUT.as_secs() <= 10) };
        const { assert!(CONNECT_TIMEOUT.as_secs() < REQUEST_TIMEOUT.as_secs()) };
        let built = format!("{:?}", client_builder());
        assert!(
            built.contains(&format!("connect_timeout: {CONNECT_TIMEOUT:?}")),
            "{built}"
        );
        assert!(
            built.contains(&format!("timeout: {REQUEST_TIMEOUT:?}")),
            "{built}"
        );
        http_client().unwrap();
    }

    /// Fix (a review): `http://localhost.` (allowed in plain http, as this machine) reaches this machine
    /// whatever the system resolver makes of the name: the agent's client pins `localhost` and `localhost.` to
    /// the loopback addresses. Before, `localhost.` went to the system resolver, which may ask DNS (here it
    /// does not resolve at all), and a plain-http request could go wherever DNS pointed.
    #[tokio::test]
    async fn localhost_names_reach_this_machine_whatever_the_resolver_says() {
        let f = crate::testing::facilitator(vec![]).await;
        let port = f.url.rsplit(':').next().unwrap();
        let key = WalletKey::parse(&"11".repeat(32), "test").unwrap();
        for url in [
            format!("http://localhost.:{port}"),
            format!("http://LOCALHOST:{port}"),
        ] {
            let config = crate::Config::new(&url, key.clone()).unwrap();
            let answer = http_client()
                .unwrap()
                .get(format!("{}/v1/esim", config.url))
                .send()
                .await
                .unwrap();
            assert_eq!(answer.status(), 200, "{url}");
        }
        assert_eq!(f.seen().len(), 2);
    }

    /// A connect timeout, as [`client_builder`] sets it, applies to a facilitator that does not accept the
    /// connection (here: its listen queue full, so the handshake is never answered; where the system answers
    /// it anyway, the request fails another way, as fast). Shortened so the test does not wait 10 s.
    #[tokio::test]
    async fn a_connection_never_accepted_fails_within_the_connect_timeout() {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let addr = socket.local_addr().unwrap();
        let _listener = socket.listen(0).unwrap();
        // Fill the queue (never accepted): the next handshakes are dropped.
        let mut fillers = Vec::new();
        for _ in 0..4 {
            match tokio::time::timeout(
                Duration::from_millis(200),
                tokio::net::TcpStream::connect(addr),
            )
            .await
            {
                Ok(Ok(c)) => fillers.push(c),
                _ => break,
            }
        }
        let client = client_builder()
            .connect_timeout(Duration::from_millis(300))
            .build()
            .unwrap();
        let e = tokio::time::timeout(
            Duration::from_secs(5),
            client.get(format!("http://{addr}/v1/esim")).send(),
        )
        .await
        .expect("gave up within the connect timeout")
        .unwrap_err();
        assert!(e.is_connect() || e.is_timeout(), "{e}");
    }

    /// Redirects are answers, not followed: a 307 would re-send the paid POST (its PAYMENT-SIGNATURE) or a
    /// sign-in to wherever it points. A paid request's redirect keeps its payment pending (exit 5): something
    /// between the agent and the facilitator answered it, and the payment may have gone through and been
    /// charged; the same payment sent again collects its answer. Before, it was dropped (refused, exit 4) and
    /// the same command paid again. An unpaid request's redirect is a refusal.
    #[tokio::test]
    async fn redirects_are_not_followed() {
        let elsewhere =
            crate::testing::facilitator(vec![(200, crate::testing::sim_answer("1"))]).await;
        let to = format!("{}/v1/esim/activate", elsewhere.url);
        let redirecting = crate::testing::Server::start(move |seen| {
            if seen.method == "POST" && seen.header("payment-signature").is_none() {
                return crate::testing::challenge(seen);
            }
            (307, vec![("location", to.clone())], Value::Null)
        })
        .await;
        let dir = tempfile::tempdir().unwrap();
        let a = agent(&redirecting.url, dir.path());
        let e = a.activate(&buy()).await.unwrap_err();
        assert!(
            matches!(e, AgentError::Unavailable { pending: true, .. }),
            "{e}"
        );
        assert!(e.to_string().contains("a redirect (307 to "), "{e}");
        let st = a.state().load().unwrap();
        assert_eq!(st.pending.len(), 1, "{st:?}");
        assert_eq!(st.spends[0].status, crate::state::SpendStatus::Pending);
        let e = a.sim_get(Some("8901"), "/balance").await.unwrap_err();
        assert!(matches!(e, AgentError::Refused { status: 307, .. }), "{e}");
        assert!(elsewhere.seen().is_empty(), "{:?}", elsewhere.seen());
        assert_eq!(redirecting.payments().len(), 1);
    }

    /// Fix: a paid request's 4xx that is not the facilitator's own refusal (no JSON `error` object: an
    /// intermediary's page; a 402 too, without a new challenge) keeps its payment pending, sent again as is; a
    /// 402 that says `charged: true` never frees its spend (here or in the wallet's shared cap). Before, the
    /// first was dropped (never collected), a hosting platform's 402 page ended the payment as uncharged, and
    /// the 402 that says charged freed the spend, though the payment was charged.
    #[tokio::test]
    async fn answers_that_are_not_the_facilitators_or_say_charged_keep_the_payment() {
        let f = crate::testing::facilitator(vec![
            (403, Value::Null),
            (404, json!({"detail": "blocked"})),
            (402, Value::Null),
            (402, json!({"error": "deployment over quota"})),
            (
                402,
                json!({"error": {"code": "over_quota", "message": "a platform's"}}),
            ),
            (
                402,
                json!({"error": {"code": "invalid_signature", "message": "no"}, "charged": true}),
            ),
        ])
        .await;
        let dir = tempfile::tempdir().unwrap();
        let wallet = tempfile::tempdir().unwrap();
        let a = budgeted_agent(&f.url, dir.path(), wallet.path());
        for status in [403, 404, 402, 402, 402] {
            let e = a.activate(&buy()).await.unwrap_err();
            assert!(
                matches!(e, AgentError::Unavailable { pending: true, .. }),
                "{status}: {e}"
            );
            assert!(
                e.to_string().contains(&format!("a {status} that is not")),
                "{e}"
            );
            assert_eq!(a.state().load().unwrap().pending.len(), 1, "{status}");
        }
        let e = a.activate(&buy()).await.unwrap_err();
        assert_eq!(e.exit_code(), crate::ExitCode::Refused, "{e}");
        let st = a.state().load().unwrap();
        assert!(st.pending.is_empty(), "{st:?}");
        assert_eq!(st.spends.len(), 1, "{st:?}");
        assert_eq!(st.spends[0].status, crate::state::SpendStatus::Unknown);
        assert_eq!(a.spent_today().unwrap(), "0.42".parse().unwrap());
        assert_eq!(StateDir::new(wallet.path()).load().unwrap().spends.len(), 1);
        let paid = f.payments();
        assert_eq!(paid.len(), 6);
        assert!(
            paid.iter().all(|p| *p == paid[0]),
            "one payment, sent again"
        );
    }

    /// The facilitator's own refusal of a payment, a 402 carrying a new challenge (`PAYMENT-REQUIRED`) without
    /// `charged`, frees the payment: nothing was charged (the spend is dropped, and the next run pays afresh).
    #[tokio::test]
    async fn a_refusal_with_a_new_challenge_frees_the_payment() {
        let f = crate::testing::Server::start(|seen| {
            let (_, headers, _) = crate::testing::challenge(seen);
            if seen.header("payment-signature").is_none() {
                return crate::testing::challenge(seen);
            }
            (402, headers, json!({"error": {"code": "payment_required", "reason": "invalid_exact_evm_payload_signature", "message": "payment refused"}}))
        })
        .await;
        let dir = tempfile::tempdir().unwrap();
        let a = agent(&f.url, dir.path());
        let e = a.activate(&buy()).await.unwrap_err();
        assert!(matches!(e, AgentError::Refused { status: 402, .. }), "{e}");
        let st = a.state().load().unwrap();
        assert!(st.pending.is_empty() && st.spends.is_empty(), "{st:?}");
        assert_eq!(f.payments().len(), 1);
    }

    /// Fix: a redirect or a 4xx that is not the facilitator's keeps its payment pending only while its
    /// authorization can still be settled (`validBefore` and [`paid::SETTLE_GRACE_SECS`]); after, the same answer
    /// marks its spend unknown (kept counted, here and in the wallet's cap) and the request is paid afresh next
    /// time. Before, a WAF refusing every sending held the payment pending for ever, and every later purchase of
    /// the same request with it, until `pending --forget --force`.
    #[tokio::test]
    async fn a_foreign_refusal_holds_a_payment_only_while_it_can_be_settled() {
        let f = crate::testing::facilitator(vec![(403, Value::Null)]).await;
        let dir = tempfile::tempdir().unwrap();
        let wallet = tempfile::tempdir().unwrap();
        let a = budgeted_agent(&f.url, dir.path(), wallet.path());
        let e = a.activate(&buy()).await.unwrap_err();
        assert!(
            matches!(e, AgentError::Unavailable { pending: true, .. }),
            "{e}"
        );
        // Its authorization expired more than the grace ago.
        let expired = now() - paid::SETTLE_GRACE_SECS - 1;
        a.state()
            .update(|s| {
                s.pending
                    .values_mut()
                    .for_each(|p| p.valid_before = expired);
            })
            .unwrap();
        let e = a.activate(&buy()).await.unwrap_err();
        assert_eq!(e.exit_code(), crate::ExitCode::Refused, "{e}");
        assert!(
            e.to_string().contains("after its authorization expired"),
            "{e}"
        );
        let st = a.state().load().unwrap();
        assert!(st.pending.is_empty(), "{st:?}");
        assert_eq!(st.spends.len(), 1, "{st:?}");
        assert_eq!(st.spends[0].status, crate::state::SpendStatus::Unknown);
        assert_eq!(StateDir::new(wallet.path()).load().unwrap().spends.len(), 1);
        // No longer held back: the same request signs a new payment.
        a.activate(&buy()).await.unwrap_err();
        let paid = f.payments();
        assert_eq!(paid.len(), 3);
        assert_eq!(paid[0], paid[1], "sent again until it expired");
        assert_ne!(paid[2], paid[0], "then a new payment");
        assert_eq!(a.state().load().unwrap().pending.len(), 1);
    }

    /// Fix: a 413, 414 or 431 that is not the facilitator's own refusal (something on the way found the request
    /// too large) frees its payment: it never reached the facilitator, nothing was charged, nothing stays
    /// counted. Before, it was kept pending (and every sending met the same limit).
    #[tokio::test]
    async fn a_request_too_large_for_the_way_frees_its_payment() {
        for status in [413, 414, 431] {
            let f = crate::testing::facilitator(vec![(status, Value::Null)]).await;
            let dir = tempfile::tempdir().unwrap();
            let wallet = tempfile::tempdir().unwrap();
            let a = budgeted_agent(&f.url, dir.path(), wallet.path());
            let e = a.activate(&buy()).await.unwrap_err();
            assert_eq!(e.exit_code(), crate::ExitCode::Refused, "{status}: {e}");
            assert!(e.to_string().contains("nothing was charged"), "{e}");
            let st = a.state().load().unwrap();
            assert!(st.pending.is_empty() && st.spends.is_empty(), "{st:?}");
            let shared = StateDir::new(wallet.path()).load().unwrap();
            assert!(shared.spends.is_empty(), "{status}");
            assert_eq!(f.payments().len(), 1, "{status}");
        }
    }

    /// Fix: a local clock more than a minute off the facilitator's (its 402's `Date`) signs nothing: unavailable
    /// for now (exit 5: `watch` goes on, the proxy answers 503; a local error stopped `watch` for good and made
    /// the proxy answer 500), naming the difference, nothing sent, spent or pending. Before, the local clock alone dated the
    /// authorization and the spend: one running ahead signed authorizations valid long after they should be,
    /// counted on a day whose cap was still free. Within a minute, the payment goes through.
    #[tokio::test]
    async fn a_clock_off_the_facilitators_signs_nothing() {
        let off = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(3_600));
        let behind = off.clone();
        let f = crate::testing::Server::start(move |seen| {
            if seen.header("payment-signature").is_some() {
                return (200, vec![], crate::testing::sim_answer("8901"));
            }
            let (status, mut headers, body) = crate::testing::challenge(seen);
            let theirs = now() - behind.load(std::sync::atomic::Ordering::SeqCst);
            headers.push(("date", crate::clock::http_date(theirs)));
            (status, headers, body)
        })
        .await;
        let dir = tempfile::tempdir().unwrap();
        let a = agent(&f.url, dir.path());
        let e = a.activate(&buy()).await.unwrap_err();
        // Passing, not local: `watch` tries again next tick, a device is told to send again (503).
        assert!(
            matches!(e, AgentError::Unavailable { pending: false, .. }),
            "{e}"
        );
        assert_eq!(e.exit_code(), crate::ExitCode::Unavailable, "{e}");
        assert!(
            e.to_string().contains("s ahead of the facilitator's"),
            "{e}"
        );
        assert!(f.payments().is_empty());
        let st = a.state().load().unwrap();
        assert!(st.pending.is_empty() && st.spends.is_empty(), "{st:?}");
        off.store(5, std::sync::atomic::Ordering::SeqCst);
        assert_eq!(a.activate(&buy()).await.unwrap().iccid, "8901");
    }

    /// Fix: a timeout or throttling (408, 429, nginx's 499) and any answer with `Retry-After` is the facilitator
    /// being unavailable for now (exit 5; `watch` goes on), not a refusal (exit 4; `watch` stopped for good).
    #[test]
    fn throttling_and_retry_after_are_unavailable_not_refused() {
        let answer = |status: u16, retry_after: Option<&str>| Answer {
            status,
            headers: retry_after
                .map(|v| {
                    let mut h = reqwest::header::HeaderMap::new();
                    h.insert("retry-after", v.parse().unwrap());
                    h
                })
                .unwrap_or_default(),
            body: Value::Null,
            json: false,
        };
        for (status, retry_after) in [
            (408, None),
            (429, None),
            (499, None),
            (403, Some("30")),
            (503, Some("5")),
            (500, None),
        ] {
            let e = unexpected(&answer(status, retry_after));
            assert!(
                matches!(e, AgentError::Unavailable { pending: false, .. }),
                "{status}: {e}"
            );
        }
        let e = unexpected(&answer(429, Some("7")));
        assert!(e.to_string().contains("retry after 7"), "{e}");
        for status in [400, 401, 403, 404, 409] {
            let e = unexpected(&answer(status, None));
            assert!(matches!(e, AgentError::Refused { .. }), "{status}: {e}");
        }
    }

    /// Fix: a paid 2xx whose body is not JSON (a firewall's or maintenance page's HTML) keeps the payment pending,
    /// and the same command collects the real answer with the very same payment. Before, it was settled and
    /// dropped ("running the command again pays again"): the paid answer lost, and a rerun paid twice.
    #[tokio::test]
    async fn a_paid_answer_that_is_not_json_keeps_the_payment() {
        let answers = std::sync::Mutex::new(0usize);
        let f = crate::testing::Server::start(move |seen| {
            if seen.header("payment-signature").is_none() {
                return crate::testing::challenge(seen);
            }
            let mut n = answers.lock().unwrap();
            *n += 1;
            if *n == 1 {
                return (
                    200,
                    vec![("content-type", "text/html".into())],
                    Value::String("<html><body>Down for maintenance</body></html>".into()),
                );
            }
            (200, vec![], crate::testing::sim_answer("8901"))
        })
        .await;
        let dir = tempfile::tempdir().unwrap();
        let a = agent(&f.url, dir.path());
        let e = a.activate(&buy()).await.unwrap_err();
        assert!(
            matches!(e, AgentError::Unavailable { pending: true, .. }),
            "{e}"
        );
        assert!(e.to_string().contains("not JSON (text/html)"), "{e}");
        let st = a.state().load().unwrap();
        assert_eq!(st.pending.len(), 1, "{st:?}");
        assert!(st.unrecorded_answers.is_empty());
        let got = a.activate(&buy()).await.unwrap();
        assert_eq!(got.iccid, "8901");
        let paid = f.payments();
        assert_eq!(paid.len(), 2);
        assert_eq!(paid[0], paid[1], "the same payment, collected");
        let st = a.state().load().unwrap();
        assert!(st.pending.is_empty());
        assert_eq!(st.spends.len(), 1);
        assert_eq!(st.sims["8901"].data_mb, Some(1), "what the agent asked for");
    }

    /// Fix: an answer over [`MAX_ANSWER`] is not read (the facilitator failing: exit 5), whether it says its
    /// length or not; a paid one keeps its payment. Before, any answer was read whole.
    #[tokio::test]
    async fn an_answer_over_the_limit_is_not_read() {
        let huge = "x".repeat(MAX_ANSWER + 1);
        let f = crate::testing::Server::start(move |seen| {
            if seen.method == "GET" {
                return (200, vec![], Value::String(huge.clone()));
            }
            if seen.header("payment-signature").is_none() {
                return crate::testing::challenge(seen);
            }
            (200, vec![], json!({"padding": huge}))
        })
        .await;
        let dir = tempfile::tempdir().unwrap();
        let a = agent(&f.url, dir.path());
        let e = a.sim_get(Some("8901"), "").await.unwrap_err();
        assert!(
            matches!(e, AgentError::Unavailable { pending: false, .. }),
            "{e}"
        );
        assert!(e.to_string().contains("over 4 MiB"), "{e}");
        let e = a.activate(&buy()).await.unwrap_err();
        assert!(
            matches!(e, AgentError::Unavailable { pending: true, .. }),
            "{e}"
        );
        assert_eq!(a.state().load().unwrap().pending.len(), 1);
        // Without a length: read until the limit, no further.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            use tokio::io::AsyncWriteExt as _;
            let (mut conn, _) = listener.accept().await.unwrap();
            let mut head = [0u8; 1024];
            let _ = conn.read(&mut head).await;
            conn.write_all(
                b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\nconnection: close\r\n\r\n",
            )
            .await
            .unwrap();
            let chunk = vec![b' '; 64 * 1024];
            while conn.write_all(&chunk).await.is_ok() {}
        });
        let dir = tempfile::tempdir().unwrap();
        let a = agent(&format!("http://{addr}"), dir.path());
        let e = tokio::time::timeout(Duration::from_secs(20), a.sim_get(Some("8901"), ""))
            .await
            .expect("stopped reading at the limit")
            .unwrap_err();
        assert!(e.to_string().contains("over 4 MiB"), "{e}");
    }
}
