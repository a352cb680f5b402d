//! `esim402-agent proxy`: the paying proxy for devices that cannot pay (no x402, no wallet). A device sends plain
//! HTTP to it; it forwards the request to the facilitator (method, path and query, body, `Content-Type`, and the
//! device's own `Authorization`, `X-Agent-ID` and `Sign-In-With-X`: its SIM token or wallet sign-in, its label;
//! no other header, so no hop-by-hop one) and, when the answer is a 402 on a route a device buys connectivity
//! with ([`PAID_ROUTES`]), pays it from the gateway's wallet on the device's behalf and answers with the paid
//! result. Another route's 402 is answered with a 402 of the proxy's own, unpaid. The proxy pays, not the
//! device: a request carrying a payment (`PAYMENT-SIGNATURE`, `X-PAYMENT*`, `payment-identifier`) is refused.
//!
//! Each device is identified by a header (e.g. `X-Device-ID`) or, without one configured, by its source
//! address, and has a budget: the gateway's spend policy narrowed to the device's per-payment and per-day
//! limits, kept in a state directory of its own (`<state>/devices/<id>/`), so its spend history and any
//! pending payment are its own. Over budget: 403 with a JSON error naming the rule, nothing paid. Every payment
//! made for a device is appended to an audit log (JSON lines: time, device, path, invoice, amount, tx hash).
//! One request at a time per device (a payment and its retry must not race); devices run in parallel.
//!
//! Devices are not browsers: a request a browser sent (it carries `Origin` or `Sec-Fetch-*`), one with a body
//! that is not `application/json`, or one naming a host other than this proxy's address (DNS rebinding: a web
//! page whose name now points at this machine) is refused before anything is forwarded or paid. Otherwise any
//! page open on the host could have this wallet pay, and read the answer (activation code, access token).
//! Devices therefore address the proxy by IP address (or `localhost`), never by a host name.

use std::collections::HashMap;
use std::io::Write as _;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use esim402_core::UsdcAmount;
use http_body_util::{BodyExt, Full, Limited};
use hyper::service::service_fn;
use hyper::{Request, Response};
use serde_json::{Value, json};
use tokio::sync::Mutex;

use crate::state::{Spend, SpendStatus};
use crate::{Agent, AgentError, Config, SpendPolicy, StateDir};

/// Largest request body forwarded.
const MAX_BODY: usize = 64 * 1024;

/// The routes whose 402 the proxy pays, as the kernel's route table (`esim402_core::routes`) names them: what a
/// device buys connectivity with. Any other 402 is not the proxy's to pay.
pub const PAID_ROUTES: &[(&str, &str)] = &[
    ("POST", "/v1/esim/activate"),
    ("GET", "/v1/esim/activate"),
    ("POST", "/v1/esim/{iccid}/data"),
    ("POST", "/v1/esim/{iccid}/switch"),
];

/// The device's headers forwarded (and sent with the proxy's paid requests): its SIM's access token or wallet
/// sign-in, and its label. Lower case, as `http` names headers.
const FORWARDED: &[&str] = &["authorization", "x-agent-id", "sign-in-with-x"];

/// What a connection may hold of the proxy.
#[derive(Debug, Clone, Copy)]
struct Limits {
    /// The longest a client may take to send a request's headers, and to stay idle between two requests (a
    /// connection that sends nothing holds a slot until then).
    header_read: Duration,
    /// The longest a client may take to send a request's body.
    body_read: Duration,
    /// Connections served at once; past it, new ones wait in the listen backlog.
    max_connections: usize,
}

const LIMITS: Limits = Limits {
    header_read: Duration::from_secs(30),
    body_read: Duration::from_secs(30),
    max_connections: 256,
};

/// The pause after a failed `accept` (e.g. out of file descriptors) before the next one, so the loop does not
/// spin while the condition lasts.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// How the proxy runs.
#[derive(Debug, Clone)]
pub struct ProxySettings {
    /// The header naming the device (`None`: the source address).
    pub device_header: Option<String>,
    /// A device's most per payment.
    pub device_max_per_payment: UsdcAmount,
    /// A device's most per UTC day.
    pub device_max_per_day: UsdcAmount,
    /// The audit log (JSON lines, appended).
    pub audit_log: PathBuf,
    /// The gateway's state directory (devices get sub-directories).
    pub state_dir: PathBuf,
}

struct Shared {
    config: Config,
    policy: SpendPolicy,
    /// The wallet's `max_per_day_usdc`, shared by every device (each also has its own, smaller budget).
    budget: Arc<crate::budget::Budget>,
    settings: ProxySettings,
    http: reqwest::Client,
    /// One lock per device with a request in progress (see [`device_lock`]).
    devices: Mutex<HashMap<String, Arc<Mutex<()>>>>,
    audit: Arc<AuditLog>,
    /// The address the proxy listens on (the `Host` a request may name).
    listen: SocketAddr,
}

type Reply = Response<Full<Bytes>>;

fn json_reply(status: u16, body: &Value) -> Reply {
    let mut r = Response::new(Full::new(Bytes::from(body.to_string())));
    *r.status_mut() = hyper::StatusCode::from_u16(status).unwrap_or(hyper::StatusCode::BAD_GATEWAY);
    r.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/json"),
    );
    r
}

fn error_reply(status: u16, code: &str, message: &str) -> Reply {
    json_reply(
        status,
        &json!({"error": {"code": code, "message": message}}),
    )
}

/// A device id as given: 1–64 letters, digits and `._:-` (a source address qualifies).
pub fn device_id(raw: &str) -> Option<String> {
    ((1..=64).contains(&raw.len())
        && !raw.bytes().all(|b| b == b'.')
        && raw
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b".-_:".contains(&b)))
    .then(|| raw.to_owned())
}

/// The most devices with a request in progress at once (a backstop: the connection cap keeps it far lower).
const MAX_BUSY_DEVICES: usize = 4_096;

/// The lock serialising `device`'s requests, from `devices`, which holds only devices with a request in progress
/// or waiting: an entry nobody else holds is dropped (taking a fresh one later is the same: nobody holds the
/// old). Before, every device id ever seen (any header value, with `--device-header`) stayed in the map for
/// good. `None`: [`MAX_BUSY_DEVICES`] devices are busy.
fn device_lock(
    devices: &mut HashMap<String, Arc<Mutex<()>>>,
    device: &str,
) -> Option<Arc<Mutex<()>>> {
    if let Some(lock) = devices.get(device) {
        return Some(lock.clone());
    }
    devices.retain(|_, lock| Arc::strong_count(lock) > 1);
    if devices.len() >= MAX_BUSY_DEVICES {
        return None;
    }
    Some(devices.entry(device.to_owned()).or_default().clone())
}

/// The audit log: JSON lines, appended by one writer at a time.
struct AuditLog {
    path: PathBuf,
    lock: std::sync::Mutex<()>,
}

impl AuditLog {
    /// Append `entry`; a failure is said on stderr (with the entry: it holds no secret), never fatal.
    fn append(&self, entry: &Value) {
        if let Err(e) = self.write(entry) {
            eprintln!("esim402-agent proxy: AUDIT LOG WRITE FAILED ({e}): {entry}");
        }
    }

    fn write(&self, entry: &Value) -> std::io::Result<()> {
        let _one_writer = self
            .lock
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut opts = std::fs::OpenOptions::new();
        opts.create(true).append(true);
        // Who was paid for, when and how much: the operator's only (the mode applies when it is created).
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut opts, 0o600);
        let mut f = opts.open(&self.path)?;
        // One that existed before (another tool's, an older proxy's) is made private too, through the open
        // file: the very file written to.
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            let mode = f.metadata()?.permissions().mode();
            if mode & 0o077 != 0 {
                f.set_permissions(std::fs::Permissions::from_mode(mode & 0o7700))?;
            }
        }
        f.write_all(format!("{entry}\n").as_bytes())?;
        f.sync_data()
    }
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or_default()
}

/// A device's payments as its state records them, by payment id.
fn device_spends(state: &StateDir) -> HashMap<String, Spend> {
    state
        .load()
        .map(|s| {
            s.spends
                .into_iter()
                .map(|x| (x.payment_id.clone(), x))
                .collect()
        })
        .unwrap_or_default()
}

/// The audit entries ending this request's payments: each payment signed during it (`signed`) and each that was
/// pending before it (`before`), whose standing changed, as the device's state says after it (`after`): `settled`,
/// `refused` (dropped: nothing was charged), `unknown` (kept, counted: it may have been charged) or, for one
/// signed now, `pending` (kept, sent again by the device's same request). The amount is the agent's own.
fn outcomes(
    before: &HashMap<String, Spend>,
    signed: &[Spend],
    after: &HashMap<String, Spend>,
) -> Vec<(Spend, &'static str)> {
    let was_pending = before
        .values()
        .filter(|s| s.status == SpendStatus::Pending)
        .map(|s| (s, true));
    let mut out = Vec::new();
    for (spend, earlier) in was_pending.chain(signed.iter().map(|s| (s, false))) {
        let now = after.get(&spend.payment_id);
        let outcome = match now.map(|s| s.status) {
            None => "refused",
            Some(SpendStatus::Settled) => "settled",
            Some(SpendStatus::Unknown) => "unknown",
            Some(SpendStatus::Pending) if earlier => continue,
            Some(SpendStatus::Pending) => "pending",
        };
        out.push((now.cloned().unwrap_or_else(|| spend.clone()), outcome));
    }
    out
}

impl Shared {
    /// The device's agent: the gateway's wallet and policy, narrowed to the device's budget, with the device's
    /// own state directory, talking through the proxy's one HTTP client.
    fn agent_for(&self, device: &str) -> Agent {
        let mut policy = self.policy.clone();
        policy.max_per_payment_usdc = policy
            .max_per_payment_usdc
            .min(self.settings.device_max_per_payment);
        policy.max_per_day_usdc = policy
            .max_per_day_usdc
            .min(self.settings.device_max_per_day);
        let dir = self.settings.state_dir.join("devices").join(device);
        Agent::with_http(
            self.config.clone(),
            policy,
            StateDir::new(dir),
            false,
            self.http.clone(),
        )
        .with_budget(self.budget.clone())
    }

    async fn forward(
        &self,
        req: &Parts,
    ) -> Result<(u16, reqwest::header::HeaderMap, Bytes), crate::client::SendError> {
        let mut r = self
            .http
            .request(
                req.method.clone(),
                format!("{}{}", self.config.url, req.path),
            )
            .body(req.body.clone());
        if let Some(ct) = &req.content_type {
            r = r.header(reqwest::header::CONTENT_TYPE, ct);
        }
        for (name, value) in &req.headers {
            r = r.header(*name, value);
        }
        let r = r
            .send()
            .await
            .map_err(crate::client::SendError::Transport)?;
        let status = r.status().as_u16();
        let headers = r.headers().clone();
        // Never more than an answer may hold: the device gets a 502 instead of the proxy holding (and copying)
        // whatever the facilitator sends.
        let body = crate::client::read_limited(r, crate::client::MAX_ANSWER).await?;
        Ok((status, headers, body))
    }

    async fn handle(&self, req: Parts, device: String) -> Reply {
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
        let (status, headers, body) = match self.forward(&req).await {
            Ok(a) => a,
            Err(e) => {
                let why = match e {
                    crate::client::SendError::Transport(e) => {
                        format!("facilitator unreachable: {e}")
                    }
                    e @ crate::client::SendError::TooLarge { .. } => format!("facilitator: {e}"),
                };
                return error_reply(502, "unavailable", &why);
            }
        };
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
        if !is_paid_route(req.method.as_str(), &req.path) {
            return error_reply(
                402,
                "payment_required",
                "the facilitator asks for a payment the proxy does not make: it pays only to activate a SIM (POST \
                 /v1/esim/activate, or GET with the fields as a query), top it up (POST /v1/esim/{iccid}/data) or \
                 switch it (POST /v1/esim/{iccid}/switch); nothing was paid",
            );
        }
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
            )
            .await;
        let signed = std::mem::take(
            &mut *signed
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        );
        let after = device_spends(agent.state());
        for (spend, outcome) in outcomes(&before, &signed, &after) {
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
                &format!(
                    "device {device} (or the wallet all devices share): {refusal}; nothing was paid"
                ),
            ),
            Err(AgentError::Refused { status, message }) => {
                error_reply(status, "refused", &message)
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
}

/// A request as the proxy forwards it.
struct Parts {
    method: reqwest::Method,
    path: String,
    content_type: Option<String>,
    /// The device's [`FORWARDED`] headers it sent.
    headers: Vec<(&'static str, String)>,
    body: Bytes,
}

/// Whether `method` on `path` (with its query) is one of [`PAID_ROUTES`], matched as the gateway matches its
/// routes (the kernel's table, on the path split at `/` without empty ends).
fn is_paid_route(method: &str, path: &str) -> bool {
    let path = path.split_once('?').map_or(path, |(p, _)| p);
    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
    esim402_core::routes::route(&segments).is_some_and(|route| {
        PAID_ROUTES
            .iter()
            .any(|&(m, p)| m == method && p == route.path)
    })
}

/// The refusal of a request that carries a payment of its own: the proxy pays, and a device's payment (or
/// payment id) sent on would be another payer's, or make the proxy's own payment ambiguous.
fn refuse_payments(headers: &hyper::HeaderMap) -> Option<Reply> {
    let payment = headers.keys().find(|k| {
        let k = k.as_str();
        k == "payment-signature" || k == "payment-identifier" || k.starts_with("x-payment")
    })?;
    Some(error_reply(
        400,
        "invalid_input",
        &format!(
            "the proxy pays for the device: a request must not carry a payment ({payment}); send it without"
        ),
    ))
}

/// The device's [`FORWARDED`] headers, or why one is refused (sent twice, not text). One the `Connection`
/// header names is hop-by-hop (RFC 9110, 7.6.1) and stays here.
fn forwarded_headers(headers: &hyper::HeaderMap) -> Result<Vec<(&'static str, String)>, String> {
    let hop_by_hop: Vec<String> = headers
        .get_all(hyper::header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|t| t.trim().to_ascii_lowercase())
        .collect();
    let mut out = Vec::new();
    for &name in FORWARDED {
        if hop_by_hop.iter().any(|h| h == name) {
            continue;
        }
        let mut values = headers.get_all(name).iter();
        let Some(value) = values.next() else {
            continue;
        };
        if values.next().is_some() {
            return Err(format!("the {name} header is sent twice"));
        }
        let Ok(value) = value.to_str() else {
            return Err(format!("the {name} header is not text"));
        };
        out.push((name, value.to_owned()));
    }
    Ok(out)
}

/// The proxy's hold on the wallet record under `state_dir`, for as long as it serves: the daily cap's record is
/// read and rewritten by one process alone (another proxy on it would lose reservations and pass the cap).
/// Taken before the proxy binds and says it listens, so a second proxy on the same directory never announces
/// itself, whichever of the two gets there first. The state directory (every device's pending payments, the
/// audit log by default) is created private (0700) here, before anything creates it with the default mode.
pub fn hold_wallet(state_dir: &std::path::Path) -> Result<crate::state::StateLock, String> {
    StateDir::new(state_dir).create()?;
    StateDir::new(state_dir.join("wallet")).lock()
}

/// Serve on `listener` until the process ends, holding the wallet record ([`hold_wallet`]).
pub async fn serve(
    listener: tokio::net::TcpListener,
    held: crate::state::StateLock,
    config: Config,
    policy: SpendPolicy,
    settings: ProxySettings,
) -> std::io::Result<()> {
    serve_with(listener, held, config, policy, settings, LIMITS).await
}

async fn serve_with(
    listener: tokio::net::TcpListener,
    _held: crate::state::StateLock,
    config: Config,
    policy: SpendPolicy,
    settings: ProxySettings,
    limits: Limits,
) -> std::io::Result<()> {
    let wallet = StateDir::new(settings.state_dir.join("wallet"));
    let audit = Arc::new(AuditLog {
        path: settings.audit_log.clone(),
        lock: std::sync::Mutex::new(()),
    });
    let shared = Arc::new(Shared {
        http: crate::client::http_client().map_err(std::io::Error::other)?,
        budget: Arc::new(crate::budget::Budget::new(policy.max_per_day_usdc, wallet)),
        config,
        policy,
        settings,
        devices: Mutex::default(),
        audit,
        listen: listener.local_addr()?,
    });
    let slots = Arc::new(tokio::sync::Semaphore::new(limits.max_connections));
    loop {
        // At the cap, stop accepting: further connections wait in the listen backlog, not in this process.
        let slot = slots
            .clone()
            .acquire_owned()
            .await
            .map_err(std::io::Error::other)?;
        let (stream, peer) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                // Out of file descriptors, a connection reset before it was accepted, …: passing, and no reason
                // to stop serving every device.
                eprintln!("esim402-agent proxy: accepting a connection failed ({e}); going on");
                tokio::time::sleep(ACCEPT_BACKOFF).await;
                continue;
            }
        };
        let shared = shared.clone();
        tokio::spawn(async move {
            let _slot = slot;
            let service = service_fn(move |req: Request<hyper::body::Incoming>| {
                let shared = shared.clone();
                async move {
                    Ok::<_, std::convert::Infallible>(
                        respond(&shared, req, peer, limits.body_read).await,
                    )
                }
            });
            let io = hyper_util::rt::TokioIo::new(stream);
            let _ = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(limits.header_read)
                .serve_connection(io, service)
                .await;
        });
    }
}

/// The refusal of a request a device would not send (see the module docs): a browser's (`Origin`,
/// `Sec-Fetch-*`), one naming another host than the proxy's address (DNS rebinding), a body that is not JSON
/// (a browser's "simple" cross-origin POST is `text/plain`). `None`: it may go on.
fn refuse_non_device(
    headers: &hyper::HeaderMap,
    has_body: bool,
    listen: SocketAddr,
) -> Option<Reply> {
    let browser = headers.contains_key(hyper::header::ORIGIN)
        || headers.keys().any(|k| k.as_str().starts_with("sec-fetch-"));
    if browser {
        return Some(error_reply(
            403,
            "forbidden",
            "requests from a web browser are refused (Origin or Sec-Fetch-* header): the proxy pays for devices",
        ));
    }
    // A browser always names the host; a device speaking HTTP/1.0 may not, and cannot be rebound.
    if let Some(host) = headers.get(hyper::header::HOST)
        && !host.to_str().is_ok_and(|h| host_is_this_proxy(h, listen))
    {
        return Some(error_reply(
            403,
            "forbidden",
            &format!(
                "the Host header must name this proxy by address (e.g. 127.0.0.1:{}) or localhost",
                listen.port()
            ),
        ));
    }
    let json = headers
        .get(hyper::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|m| m.trim().eq_ignore_ascii_case("application/json"));
    if has_body && !json {
        return Some(error_reply(
            415,
            "unsupported_media_type",
            "a request body must be JSON, sent as Content-Type: application/json",
        ));
    }
    None
}

/// Whether `host` (a `Host` header: `name[:port]`, `[v6][:port]`) names the proxy listening on `listen`:
/// `localhost` (`localhost.`), a loopback address (an IPv4-mapped one too), the listen address itself or, when
/// listening on every address (`--allow-public` on `0.0.0.0`), any IP address. An IP address cannot be rebound
/// to another machine; a host name can (DNS rebinding), so no other name is accepted. The port is not compared:
/// a device reaching the proxy through a port mapping (docker, ssh, NAT) names another one, and a rebinding
/// page needs a host name whatever the port. Parsed as the URL standard parses a host (`127.1`, an empty port);
/// an IPv6 zone (`[fe80::1%eth0]`) does not parse and is refused.
fn host_is_this_proxy(host: &str, listen: SocketAddr) -> bool {
    let Ok(url) = reqwest::Url::parse(&format!("http://{host}/")) else {
        return false;
    };
    // Nothing but a host and a port: not `user@host`, nor `host/path` (the URL's host would be another part).
    let bare = url.username().is_empty()
        && url.password().is_none()
        && url.path() == "/"
        && url.query().is_none()
        && url.fragment().is_none();
    let name = url.host_str().unwrap_or_default();
    if !bare || name.is_empty() {
        return false;
    }
    if crate::config::is_loopback_host(name) {
        return true;
    }
    name.trim_start_matches('[')
        .trim_end_matches(']')
        .parse::<std::net::IpAddr>()
        .is_ok_and(|ip| {
            ip.to_canonical() == listen.ip().to_canonical() || listen.ip().is_unspecified()
        })
}

async fn respond(
    shared: &Shared,
    req: Request<hyper::body::Incoming>,
    peer: SocketAddr,
    body_read: Duration,
) -> Reply {
    let has_body = !hyper::body::Body::is_end_stream(req.body());
    if let Some(refusal) = refuse_non_device(req.headers(), has_body, shared.listen)
        .or_else(|| refuse_payments(req.headers()))
    {
        return refusal;
    }
    let headers = match forwarded_headers(req.headers()) {
        Ok(h) => h,
        Err(why) => return error_reply(400, "invalid_input", &why),
    };
    let raw = match &shared.settings.device_header {
        Some(h) => match req.headers().get(h.as_str()).and_then(|v| v.to_str().ok()) {
            Some(v) => v.to_owned(),
            None => return error_reply(400, "invalid_input", &format!("missing {h} header")),
        },
        None => peer.ip().to_string().replace(':', "-"),
    };
    let Some(device) = device_id(&raw) else {
        return error_reply(
            400,
            "invalid_input",
            "the device id must be 1-64 letters, digits and . _ : -",
        );
    };
    let Ok(method) = reqwest::Method::from_bytes(req.method().as_str().as_bytes()) else {
        return error_reply(405, "method_not_allowed", "unsupported method");
    };
    let path = req
        .uri()
        .path_and_query()
        .map_or("/", |p| p.as_str())
        .to_owned();
    let content_type = req
        .headers()
        .get(hyper::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let body = Limited::new(req.into_body(), MAX_BODY).collect();
    let body = match tokio::time::timeout(body_read, body).await {
        Ok(Ok(b)) => b.to_bytes(),
        Ok(Err(_)) => return error_reply(413, "payload_too_large", "body over 64 KiB"),
        Err(_) => return error_reply(408, "timeout", "the request body took too long"),
    };
    shared
        .handle(
            Parts {
                method,
                path,
                content_type,
                headers,
                body,
            },
            device,
        )
        .await
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "tests")]
    use super::*;
    use crate::WalletKey;
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

    /// A proxy in front of `upstream`, its state in `state_dir`; its address.
    async fn proxy(upstream: &str, state_dir: &std::path::Path, limits: Limits) -> SocketAddr {
        proxy_with(upstream, state_dir, limits, |_| {}).await
    }

    /// [`proxy`], its settings changed by `change`.
    async fn proxy_with(
        upstream: &str,
        state_dir: &std::path::Path,
        limits: Limits,
        change: impl FnOnce(&mut ProxySettings),
    ) -> SocketAddr {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let key = WalletKey::parse(&"11".repeat(32), "test").unwrap();
        let mut settings = ProxySettings {
            device_header: None,
            device_max_per_payment: "1".parse().unwrap(),
            device_max_per_day: "5".parse().unwrap(),
            audit_log: state_dir.join("audit.jsonl"),
            state_dir: state_dir.to_owned(),
        };
        change(&mut settings);
        let config = Config::new(upstream, key).unwrap();
        let held = hold_wallet(state_dir).unwrap();
        tokio::spawn(serve_with(
            listener,
            held,
            config,
            SpendPolicy::default(),
            settings,
            limits,
        ));
        addr
    }

    /// Send `request` (raw HTTP/1.1) to `addr`; the answer's status (0: closed without one).
    async fn raw(addr: SocketAddr, request: &str) -> u16 {
        let mut conn = tokio::net::TcpStream::connect(addr).await.unwrap();
        conn.write_all(request.as_bytes()).await.unwrap();
        let mut head = [0u8; 12];
        match conn.read_exact(&mut head).await {
            Ok(_) => String::from_utf8_lossy(&head[9..12]).parse().unwrap(),
            Err(_) => 0,
        }
    }

    /// A device whose state directory another esim402-agent holds is told to send again (503), not that the
    /// proxy failed (500, before), and nothing is paid.
    #[tokio::test]
    async fn a_device_whose_state_is_in_use_is_told_to_send_again() {
        let upstream = crate::testing::facilitator(vec![(200, json!({"paid": true}))]).await;
        let dir = tempfile::tempdir().unwrap();
        let addr = proxy(&upstream.url, dir.path(), LIMITS).await;
        let held = StateDir::new(dir.path().join("devices").join("127.0.0.1"))
            .lock()
            .unwrap();
        let buy = request(
            addr,
            "POST",
            "/v1/esim/activate",
            "",
            r#"{"region":"us-west","data_mb":1}"#,
        );
        assert_eq!(raw(addr, &buy).await, 503);
        // Only the unpaid request that drew the 402 went out: nothing was signed or paid.
        let seen = upstream.seen();
        assert_eq!(seen.len(), 1, "{seen:?}");
        assert!(seen[0].header("payment-signature").is_none(), "{seen:?}");
        drop(held);
    }

    /// A browser on the host (any page: a cross-origin "simple" POST, a DNS-rebound name) must not get this
    /// wallet to pay, nor read an answer: what a device would not send is refused before anything is
    /// forwarded. Before, all of these were forwarded (and a 402 paid).
    #[tokio::test]
    async fn browser_requests_rebound_hosts_and_non_json_bodies_are_refused() {
        let upstream = crate::testing::facilitator(vec![(200, json!({"paid": true}))]).await;
        let dir = tempfile::tempdir().unwrap();
        let addr = proxy(&upstream.url, dir.path(), LIMITS).await;
        let port = addr.port();
        let get = |host: &str, extra: &str| {
            format!("GET /health HTTP/1.1\r\nhost: {host}\r\n{extra}connection: close\r\n\r\n")
        };
        let post = |ct: &str| {
            let body = r#"{"region":"us-west","data_mb":1}"#;
            format!(
                "POST /v1/esim/activate HTTP/1.1\r\nhost: 127.0.0.1:{port}\r\n{ct}content-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            )
        };
        let here = format!("127.0.0.1:{port}");
        for (request, status, why) in [
            (get(&here, "origin: http://evil.example\r\n"), 403, "Origin"),
            (get(&here, "origin: null\r\n"), 403, "an opaque Origin"),
            (
                get(&here, "sec-fetch-site: cross-site\r\n"),
                403,
                "Sec-Fetch-Site",
            ),
            (
                get(&here, "sec-fetch-mode: no-cors\r\n"),
                403,
                "Sec-Fetch-Mode",
            ),
            (
                get(&format!("evil.example:{port}"), ""),
                403,
                "a rebound host name",
            ),
            (get(&format!("[::1]:{port}:1"), ""), 403, "junk"),
            (
                get(&format!("127.0.0.1@evil.example:{port}"), ""),
                403,
                "a user name",
            ),
            (
                get(&format!("[fe80::1%25eth0]:{port}"), ""),
                403,
                "an IPv6 zone",
            ),
            (
                post("content-type: text/plain\r\n"),
                415,
                "a simple cross-origin POST",
            ),
            (post(""), 415, "a body without a type"),
        ] {
            assert_eq!(raw(addr, &request).await, status, "{why}");
        }
        assert!(
            upstream.seen().is_empty(),
            "nothing forwarded: {:?}",
            upstream.seen()
        );

        // What devices send goes through (and is paid): any port (a device behind a port mapping names its own),
        // none, an empty one, `localhost.`, an IPv4-mapped loopback address.
        let hosts = [
            here.clone(),
            format!("localhost:{port}"),
            format!("[::1]:{port}"),
            format!("127.0.0.1:{}", port ^ 1),
            "127.0.0.1".into(),
            "127.0.0.1:".into(),
            format!("localhost.:{port}"),
            format!("[::ffff:127.0.0.1]:{port}"),
        ];
        for host in &hosts {
            assert_eq!(raw(addr, &get(host, "")).await, 200, "{host}");
        }
        assert_eq!(
            raw(
                addr,
                &post("content-type: application/json; charset=utf-8\r\n")
            )
            .await,
            200
        );
        let seen = upstream.seen();
        assert_eq!(
            seen.len(),
            hosts.len() + 3,
            "the GETs; the device's POST, the agent's, the paid one"
        );
        let paid = &seen[hosts.len() + 2];
        assert!(paid.header("payment-signature").is_some());
        assert_eq!(
            serde_json::from_slice::<Value>(&paid.body).unwrap(),
            json!({"region": "us-west", "data_mb": 1})
        );
    }

    /// Send `request` (raw HTTP/1.1, `connection: close`) to `addr`; the answer's status and body.
    async fn exchange(addr: SocketAddr, request: &str) -> (u16, Value) {
        let mut conn = tokio::net::TcpStream::connect(addr).await.unwrap();
        conn.write_all(request.as_bytes()).await.unwrap();
        let mut answer = Vec::new();
        conn.read_to_end(&mut answer).await.unwrap();
        let answer = String::from_utf8_lossy(&answer);
        let status = answer[9..12].parse().unwrap();
        let body = answer.split_once("\r\n\r\n").unwrap().1;
        (status, serde_json::from_str(body).unwrap_or(Value::Null))
    }

    /// `method target` with `headers` (each line ending `\r\n`) and a JSON `body` if any, to the proxy at `addr`.
    fn request(addr: SocketAddr, method: &str, target: &str, headers: &str, body: &str) -> String {
        let typed = if body.is_empty() {
            String::new()
        } else {
            format!(
                "content-type: application/json\r\ncontent-length: {}\r\n",
                body.len()
            )
        };
        format!(
            "{method} {target} HTTP/1.1\r\nhost: 127.0.0.1:{}\r\n{headers}{typed}connection: close\r\n\r\n{body}",
            addr.port()
        )
    }

    /// A facilitator asking a payment for every unpaid request, whatever its route, and selling a SIM to every
    /// paid one.
    async fn asks_everywhere() -> crate::testing::Server {
        crate::testing::Server::start(|seen| {
            if seen.header("payment-signature").is_none() {
                return crate::testing::challenge(seen);
            }
            (200, vec![], crate::testing::sim_answer("8902"))
        })
        .await
    }

    /// The proxy pays only what a device buys connectivity with: an activation (its JSON or its query form), a
    /// top-up and a switch. Another route's 402 comes back as the proxy's own 402, nothing paid. Before, every
    /// POST's 402 was paid, whatever the route (and the query form was refused).
    #[tokio::test]
    async fn only_connectivity_routes_are_paid() {
        let upstream = asks_everywhere().await;
        let dir = tempfile::tempdir().unwrap();
        let addr = proxy(&upstream.url, dir.path(), LIMITS).await;
        let buy = r#"{"region":"us-west","data_mb":1}"#;
        for (method, target, body) in [
            ("POST", "/v1/esim/activate", buy),
            ("GET", "/v1/esim/activate?region=us-west&data_mb=1", ""),
            ("POST", "/v1/esim/8901/data", r#"{"top_up_mb":100}"#),
            ("POST", "/v1/esim/8901/switch", r#"{"carrier":"verizon"}"#),
        ] {
            let before = upstream.payments().len();
            let (status, answer) = exchange(addr, &request(addr, method, target, "", body)).await;
            assert_eq!(status, 200, "{method} {target}: {answer}");
            assert_eq!(answer["iccid"], "8902");
            assert_eq!(upstream.payments().len(), before + 1, "{method} {target}");
            let paid = upstream.seen().pop().unwrap();
            assert_eq!(
                (paid.method.as_str(), paid.target.as_str()),
                (method, target)
            );
            let json = |b: &[u8]| serde_json::from_slice::<Value>(b).ok();
            assert_eq!(json(&paid.body), json(body.as_bytes()), "sent as it came");
        }
        for (method, target, body) in [
            ("POST", "/v1/esim/8901/suspend", ""),
            ("POST", "/v1/esim/8901/token", ""),
            ("POST", "/v1/usage", "[]"),
            ("POST", "/settle", "{}"),
            ("GET", "/v1/invoices/inv_1", ""),
            ("GET", "/v1/esim/8901/balance", ""),
            ("POST", "/v1/esim/activate/more", buy),
            ("POST", "/v1/esim//activate", buy),
            ("POST", "/v2/esim/activate", buy),
        ] {
            let (status, answer) = exchange(addr, &request(addr, method, target, "", body)).await;
            assert_eq!(status, 402, "{method} {target}: {answer}");
            let message = answer["error"]["message"].as_str().unwrap();
            assert!(message.contains("nothing was paid"), "{message}");
        }
        assert_eq!(upstream.payments().len(), 4, "only the four purchases");
        let log = audit_lines(dir.path());
        assert_eq!(log.len(), 8, "signed, then settled, for each: {log:?}");
        for pair in log.chunks(2) {
            assert_eq!(
                (pair[0]["event"].as_str(), pair[1]["event"].as_str()),
                (Some("signed"), Some("settled"))
            );
            assert_eq!(pair[0]["payment_id"], pair[1]["payment_id"]);
            assert_eq!(pair[1]["invoice_id"], "inv_1");
            assert_eq!(pair[1]["transaction"], "0xab");
        }
    }

    /// The audit log's entries.
    fn audit_lines(state_dir: &std::path::Path) -> Vec<Value> {
        std::fs::read_to_string(state_dir.join("audit.jsonl"))
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }

    /// Fix: every payment signed for a device is in the audit log as it is recorded (the agent's own amount,
    /// recipient, network and id), and so is how it ended: `pending` (kept, the facilitator failed), then
    /// `settled` when the device's same request collects it; `unknown` (a conflict after sending: kept, it may
    /// have been charged); `refused` (nothing charged). Before, only a paid 2xx was logged, with the facilitator's
    /// figures: a payment ending unknown, still pending or abandoned left no line although its spend was kept.
    #[tokio::test]
    async fn every_payment_signed_is_in_the_audit_log_and_how_it_ended() {
        let upstream = crate::testing::facilitator(vec![
            (500, json!({"error": {"message": "down"}})),
            (200, crate::testing::sim_answer("8902")),
            (
                409,
                json!({"error": {"message": "invoice held by another payment"}}),
            ),
            (
                402,
                json!({"error": {"code": "invalid_signature", "message": "no"}}),
            ),
        ])
        .await;
        let dir = tempfile::tempdir().unwrap();
        let addr = proxy(&upstream.url, dir.path(), LIMITS).await;
        let buy = |mb: u8| {
            request(
                addr,
                "POST",
                "/v1/esim/activate",
                "",
                &format!(r#"{{"region":"us-west","data_mb":{mb}}}"#),
            )
        };
        assert_eq!(exchange(addr, &buy(1)).await.0, 503);
        assert_eq!(exchange(addr, &buy(1)).await.0, 200, "collected");
        assert_eq!(exchange(addr, &buy(2)).await.0, 409);
        assert_eq!(exchange(addr, &buy(3)).await.0, 402);
        let log = audit_lines(dir.path());
        let events: Vec<&str> = log.iter().map(|l| l["event"].as_str().unwrap()).collect();
        assert_eq!(
            events,
            [
                "signed", "pending", "settled", "signed", "unknown", "signed", "refused"
            ],
            "{log:?}"
        );
        for l in &log {
            assert_eq!(l["device"], "127.0.0.1", "{l}");
            assert_eq!(l["amount_usdc"], "0.42", "the agent's own: {l}");
            assert_eq!(l["network"], "eip155:31337", "{l}");
            assert_eq!(
                l["pay_to"], "0x3C44CdDdB6a900fa2b585dd299e03d12FA4293BC",
                "{l}"
            );
            assert!(l["payment_id"].as_str().unwrap().starts_with("pay_"), "{l}");
        }
        assert_eq!(
            log[0]["payment_id"], log[2]["payment_id"],
            "the same payment"
        );
        assert_eq!(log[2]["transaction"], "0xab");
        assert_eq!(log[2]["invoice_id"], "inv_1");
        assert!(
            !log.iter()
                .any(|l| l.to_string().contains("LPA:") || l.to_string().contains("sim_secret"))
        );
    }

    /// Fix: a device's directory is made only once a payment is signed for it (a refusal by its budget leaves
    /// nothing on disk), so a client naming ever new device ids does not fill the disk. Before, every id whose
    /// paid route drew a 402 got `devices/<id>/` and a lock file.
    #[tokio::test]
    async fn a_device_gets_a_directory_only_once_a_payment_is_signed() {
        let upstream = asks_everywhere().await;
        let dir = tempfile::tempdir().unwrap();
        let addr = proxy_with(&upstream.url, dir.path(), LIMITS, |s| {
            s.device_header = Some("x-device-id".into());
            s.device_max_per_payment = "0.10".parse().unwrap();
        })
        .await;
        let buy = |id: &str| {
            request(
                addr,
                "POST",
                "/v1/esim/activate",
                &format!("x-device-id: {id}\r\n"),
                r#"{"region":"us-west","data_mb":1}"#,
            )
        };
        for n in 0..5 {
            let (status, answer) = exchange(addr, &buy(&format!("pump-{n}"))).await;
            assert_eq!(status, 403, "{answer}");
        }
        assert!(upstream.payments().is_empty());
        assert!(
            !dir.path().join("devices").exists(),
            "{:?}",
            std::fs::read_dir(dir.path().join("devices")).map(|d| d.count())
        );

        let upstream = asks_everywhere().await;
        let dir = tempfile::tempdir().unwrap();
        let addr = proxy_with(&upstream.url, dir.path(), LIMITS, |s| {
            s.device_header = Some("x-device-id".into());
        })
        .await;
        assert_eq!(exchange(addr, &buy("pump-9")).await.0, 200);
        let state = StateDir::new(dir.path().join("devices/pump-9"))
            .load()
            .unwrap();
        assert_eq!(state.spends.len(), 1, "paid, and recorded where it belongs");
        assert!(
            dir.path().join("devices/pump-9/lock").exists(),
            "locked as it signed"
        );
    }

    /// An agent that locks its directory only as it signs refuses the payment when another command holds the
    /// directory by then: nothing sent, nothing recorded, the wallet's shared cap given back.
    #[tokio::test]
    async fn a_lock_taken_at_signing_that_is_held_refuses_the_payment() {
        let upstream = asks_everywhere().await;
        let dir = tempfile::tempdir().unwrap();
        let wallet = tempfile::tempdir().unwrap();
        let budget = Arc::new(crate::budget::Budget::new(
            "5".parse().unwrap(),
            StateDir::new(wallet.path()),
        ));
        let held = StateDir::new(dir.path()).lock().unwrap();
        let agent = crate::testing::agent(&upstream.url, dir.path())
            .with_budget(budget)
            .lock_on_sign();
        let e = agent
            .pay_for_device(
                "/v1/esim/activate?region=us-west&data_mb=1",
                None,
                &[],
                "device d",
            )
            .await
            .unwrap_err();
        assert!(
            matches!(e, AgentError::Unavailable { pending: false, .. }),
            "{e}"
        );
        assert!(e.to_string().contains("in use"), "{e}");
        assert!(upstream.payments().is_empty());
        assert!(agent.state().load().unwrap().spends.is_empty());
        assert!(
            StateDir::new(wallet.path())
                .load()
                .unwrap()
                .spends
                .is_empty()
        );
        drop(held);
    }

    /// Fix: the proxy keeps a lock only for devices with a request in progress: ever new device ids leave
    /// nothing behind. Before, every id ever seen stayed in the map.
    #[test]
    fn only_busy_devices_are_tracked() {
        let mut devices = HashMap::new();
        for n in 0..100 {
            let lock = device_lock(&mut devices, &format!("d{n}")).unwrap();
            drop(lock);
        }
        assert!(devices.len() <= 1, "{}", devices.len());
        let busy = device_lock(&mut devices, "busy").unwrap();
        let again = device_lock(&mut devices, "busy").unwrap();
        assert!(Arc::ptr_eq(&busy, &again), "one lock per device while busy");
        for n in 0..10 {
            drop(device_lock(&mut devices, &format!("e{n}")));
        }
        assert!(devices.contains_key("busy"));
        assert!(devices.len() <= 2, "{}", devices.len());
    }

    /// Fix: a facilitator answer over [`crate::client::MAX_ANSWER`] is not forwarded (502), not read whole and
    /// copied to the device.
    #[tokio::test]
    async fn an_answer_over_the_limit_is_not_forwarded() {
        let huge = "x".repeat(crate::client::MAX_ANSWER + 1);
        let upstream =
            crate::testing::Server::start(move |_| (200, vec![], Value::String(huge.clone())))
                .await;
        let dir = tempfile::tempdir().unwrap();
        let addr = proxy(&upstream.url, dir.path(), LIMITS).await;
        let get = request(addr, "GET", "/v1/esim/8901", "", "");
        let (status, answer) = exchange(addr, &get).await;
        assert_eq!(status, 502, "{answer}");
        assert!(
            answer["error"]["message"]
                .as_str()
                .unwrap()
                .contains("over 4 MiB"),
            "{answer}"
        );
    }

    /// A device's own credential, sign-in and label reach the facilitator, on the forwarded request and on the
    /// proxy's paid ones; nothing else it sends does (hop-by-hop headers, cookies, those its `Connection` names).
    /// A request carrying a payment is refused, nothing forwarded. Before, only `Content-Type` was forwarded and
    /// a device's payment headers were silently dropped (and its request paid by the proxy).
    #[tokio::test]
    async fn a_devices_credentials_are_forwarded_and_its_payments_refused() {
        let upstream = asks_everywhere().await;
        let dir = tempfile::tempdir().unwrap();
        let addr = proxy(&upstream.url, dir.path(), LIMITS).await;
        let own =
            "authorization: Bearer sim_tok\r\nx-agent-id: pump-7\r\nsign-in-with-x: siwx-proof\r\n";
        let others = "proxy-authorization: Basic eA==\r\nkeep-alive: timeout=5\r\nte: trailers\r\n\
                      cookie: a=b\r\nx-custom: 1\r\nx-invoice-id: inv_1\r\n";
        let body = r#"{"carrier":"verizon"}"#;
        let switch = request(
            addr,
            "POST",
            "/v1/esim/8901/switch",
            &format!("{own}{others}"),
            body,
        );
        assert_eq!(exchange(addr, &switch).await.0, 200);
        let seen = upstream.seen();
        assert_eq!(seen.len(), 3, "the device's, the agent's, the paid one");
        for s in &seen {
            assert_eq!(s.header("authorization"), Some("Bearer sim_tok"));
            assert_eq!(s.header("x-agent-id"), Some("pump-7"));
            assert_eq!(s.header("sign-in-with-x"), Some("siwx-proof"));
            for name in [
                "proxy-authorization",
                "keep-alive",
                "te",
                "cookie",
                "x-custom",
                "x-invoice-id",
            ] {
                assert_eq!(s.header(name), None, "{name}");
            }
        }
        assert!(seen[2].header("payment-signature").is_some());

        // A header the device's `Connection` names is hop-by-hop: not forwarded.
        let hop = request(
            addr,
            "GET",
            "/v1/esim/8901",
            "x-agent-id: pump-7\r\nconnection: x-agent-id\r\n",
            "",
        );
        exchange(addr, &hop).await;
        assert_eq!(upstream.seen().pop().unwrap().header("x-agent-id"), None);

        let before = upstream.seen().len();
        for (header, why) in [
            ("payment-signature: eyJ4\r\n", "PAYMENT-SIGNATURE"),
            ("x-payment: eyJ4\r\n", "X-PAYMENT"),
            (
                "x-payment-proof: 0x0000000000000000000000000000000000000000000000000000000000000001\r\n",
                "X-Payment-Proof",
            ),
            (
                "x-payment-proof-signature: 0x01\r\n",
                "X-Payment-Proof-Signature",
            ),
            (
                "payment-identifier: pay_0123456789abcdef\r\n",
                "payment-identifier",
            ),
            (
                "authorization: Bearer a\r\nauthorization: Bearer b\r\n",
                "a credential sent twice",
            ),
        ] {
            let paid = request(addr, "POST", "/v1/esim/8901/switch", header, body);
            let (status, answer) = exchange(addr, &paid).await;
            assert_eq!(status, 400, "{why}: {answer}");
        }
        assert_eq!(upstream.seen().len(), before, "nothing forwarded");
        assert_eq!(upstream.payments().len(), 1);
    }

    /// The Host names this proxy by address or `localhost`, whatever the port. Before, the port had to be the
    /// listening one (a device behind a port mapping was refused, an empty port too), and `localhost.` and an
    /// IPv4-mapped loopback address were refused.
    #[test]
    fn the_host_must_be_this_proxys_address() {
        let lo: SocketAddr = "127.0.0.1:8480".parse().unwrap();
        for host in [
            "127.0.0.1:8480",
            "LOCALHOST:8480",
            "[::1]:8480",
            "127.0.0.1",
            "127.0.0.1:",
            "127.0.0.1:9000",
            "localhost.:8480",
            "[::ffff:127.0.0.1]:8480",
            "127.1:8480",
        ] {
            assert!(host_is_this_proxy(host, lo), "{host}");
        }
        for host in [
            "192.168.1.5:8480",
            "rebind.example:8480",
            "localhost.example:8480",
            "localhost..",
            "[fe80::1%25eth0]:8480",
            "[fe80::1%eth0]:8480",
            "user@127.0.0.1:8480",
            "127.0.0.1/x",
            "127.0.0.1?x",
            "127.0.0.1#x",
            "[::1]:8480:1",
            "",
        ] {
            assert!(!host_is_this_proxy(host, lo), "{host}");
        }
        let public: SocketAddr = "192.168.1.5:80".parse().unwrap();
        assert!(host_is_this_proxy("192.168.1.5", public));
        assert!(
            host_is_this_proxy("192.168.1.5:8080", public),
            "a mapped port"
        );
        assert!(host_is_this_proxy("[::ffff:192.168.1.5]", public));
        assert!(!host_is_this_proxy("192.168.1.6", public));
        assert!(!host_is_this_proxy("gateway.lan", public));
        let any: SocketAddr = "0.0.0.0:8480".parse().unwrap();
        assert!(
            host_is_this_proxy("10.1.2.3:8480", any),
            "any address, not a name"
        );
        assert!(host_is_this_proxy("[fe80::1]:8480", any));
        assert!(!host_is_this_proxy("gateway.lan:8480", any));
    }

    /// A client that never finishes its headers is disconnected, and past the connection cap new connections
    /// wait until one ends. Before, the first held its task forever and nothing capped the connections.
    #[tokio::test]
    async fn slow_clients_are_cut_off_and_connections_are_capped() {
        let upstream = crate::testing::facilitator(vec![]).await;
        let dir = tempfile::tempdir().unwrap();
        let quick = Limits {
            header_read: Duration::from_millis(200),
            ..LIMITS
        };
        let addr = proxy(&upstream.url, dir.path(), quick).await;
        let mut slow = tokio::net::TcpStream::connect(addr).await.unwrap();
        slow.write_all(b"GET /health HTTP/1.1\r\nhost: 127.0.0.1\r\n")
            .await
            .unwrap();
        let mut buf = [0u8; 64];
        let end = tokio::time::timeout(Duration::from_secs(20), slow.read(&mut buf)).await;
        assert!(
            matches!(end, Ok(Ok(0) | Err(_))),
            "disconnected without an answer: {end:?}"
        );

        let dir = tempfile::tempdir().unwrap();
        let one = Limits {
            max_connections: 1,
            header_read: Duration::from_secs(600),
            ..LIMITS
        };
        let addr = proxy(&upstream.url, dir.path(), one).await;
        let idle = tokio::net::TcpStream::connect(addr).await.unwrap();
        // Served at once when alone (refused: no upstream needed)...
        let refused = "GET / HTTP/1.1\r\norigin: x\r\nconnection: close\r\n\r\n";
        let waiting = tokio::spawn(raw(addr, refused));
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(!waiting.is_finished(), "served beside the idle connection");
        drop(idle);
        let status = tokio::time::timeout(Duration::from_secs(20), waiting).await;
        assert_eq!(
            status.unwrap().unwrap(),
            403,
            "served once the slot was free"
        );
    }

    /// The gateway's state directory is private (0700) when the proxy creates it, and so is its audit log
    /// (0600). Before, both had the default mode.
    #[cfg(unix)]
    #[tokio::test]
    async fn the_state_directory_and_audit_log_are_private() {
        use std::os::unix::fs::PermissionsExt as _;
        let upstream = crate::testing::facilitator(vec![(200, json!({"paid": true}))]).await;
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("gateway");
        let addr = proxy(&upstream.url, &state, LIMITS).await;
        let paid = request(
            addr,
            "POST",
            "/v1/esim/activate",
            "",
            r#"{"region":"us-west","data_mb":1}"#,
        );
        assert_eq!(raw(addr, &paid).await, 200);
        let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&state), 0o700);
        assert_eq!(mode(&state.join("audit.jsonl")), 0o600);
    }

    /// A state directory and an audit log that existed before the proxy, readable by others, are made private
    /// (0700, 0600). Before, only ones the proxy created were.
    #[cfg(unix)]
    #[tokio::test]
    async fn an_existing_state_directory_and_audit_log_are_made_private() {
        use std::os::unix::fs::PermissionsExt as _;
        let upstream = crate::testing::facilitator(vec![(200, json!({"paid": true}))]).await;
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("gateway");
        std::fs::create_dir(&state).unwrap();
        std::fs::set_permissions(&state, std::fs::Permissions::from_mode(0o755)).unwrap();
        let log = state.join("audit.jsonl");
        std::fs::write(&log, "").unwrap();
        std::fs::set_permissions(&log, std::fs::Permissions::from_mode(0o644)).unwrap();
        let addr = proxy(&upstream.url, &state, LIMITS).await;
        let buy = request(
            addr,
            "POST",
            "/v1/esim/activate",
            "",
            r#"{"region":"us-west","data_mb":1}"#,
        );
        assert_eq!(exchange(addr, &buy).await.0, 200);
        let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&state), 0o700);
        assert_eq!(mode(&log), 0o600);
    }

    /// A paid answer the proxy cannot save (the device's state unwritable) keeps the payment pending, and the
    /// device is told that it was paid and that the same request collects it: a 503, and the same request
    /// sent again sends the very same payment and answers with the SIM. Before, a bare 500 "internal".
    #[tokio::test]
    async fn a_paid_answer_that_cannot_be_saved_is_collected_by_the_same_request() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("devices/127.0.0.1/state.json");
        let aside = file.with_extension("aside");
        let sabotaged = std::sync::atomic::AtomicBool::new(false);
        let (path, moved) = (file.clone(), aside.clone());
        let upstream = crate::testing::Server::start(move |seen| {
            if seen.header("payment-signature").is_none() {
                return crate::testing::challenge(seen);
            }
            // The payment is recorded; its answer's save will fail (a directory where the file goes).
            if !sabotaged.swap(true, std::sync::atomic::Ordering::SeqCst) {
                std::fs::rename(&path, &moved).unwrap();
                std::fs::create_dir_all(path.join("x")).unwrap();
            }
            (200, vec![], crate::testing::sim_answer("8903"))
        })
        .await;
        let addr = proxy(&upstream.url, dir.path(), LIMITS).await;
        let buy = request(
            addr,
            "POST",
            "/v1/esim/activate",
            "",
            r#"{"region":"us-west","data_mb":1}"#,
        );
        let (status, answer) = exchange(addr, &buy).await;
        assert_eq!(status, 503, "{answer}");
        let message = answer["error"]["message"].as_str().unwrap();
        assert!(
            message.contains("paid for") && message.contains("send the same request again"),
            "{message}"
        );
        std::fs::remove_dir_all(&file).unwrap();
        std::fs::rename(&aside, &file).unwrap();
        let (status, answer) = exchange(addr, &buy).await;
        assert_eq!(status, 200, "{answer}");
        assert_eq!(answer["iccid"], "8903");
        let paid = upstream.payments();
        assert_eq!(paid.len(), 2);
        assert_eq!(paid[0], paid[1], "the same payment, collected");
    }

    #[test]
    fn device_ids() {
        assert_eq!(device_id("pump-17"), Some("pump-17".into()));
        assert_eq!(device_id("127.0.0.1"), Some("127.0.0.1".into()));
        assert_eq!(
            device_id("../etc"),
            None,
            "no path separators: it names a directory"
        );
        assert_eq!(device_id(""), None);
        assert_eq!(device_id(".."), None);
        assert_eq!(device_id(&"a".repeat(65)), None);
    }
}
