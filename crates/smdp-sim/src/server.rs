//! The simulator's HTTP side: routes ES2+ calls to an [`Operator`], applies injected faults, serves the admin
//! API, and plays the device that downloads released profiles, POSTing `handleDownloadProgressInfo` to the
//! operator's callback URL.
//!
//! Build a [`Sim`] from a [`SimConfig`], then [`serve`] it on a bound listener until a shutdown future
//! resolves. Operator state sits behind a `std::sync::Mutex` that is never held across an await.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::graceful::GracefulShutdown;
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tracing::Instrument;

use crate::config::{Faults, SimConfig, valid_profile_type};
use crate::es2::{ADMIN_PROTOCOL, ADMIN_PROTOCOL_PREFIX, Function};
use crate::ids;
use crate::operator::{AdminError, CallResult, Notification, Operator, ProfileState};

/// Largest ES2+ or admin request body accepted.
pub const MAX_BODY: usize = 1024 * 1024;
/// Attempts per callback (the first try included).
pub const CALLBACK_ATTEMPTS: u32 = 4;
/// Backoff before the first retry of a callback; doubles each retry.
pub const CALLBACK_BACKOFF: Duration = Duration::from_millis(100);
/// Per-attempt timeout of a callback POST.
pub const CALLBACK_TIMEOUT: Duration = Duration::from_secs(5);
/// How long shutdown waits for in-flight requests and connections.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

/// Why the simulator could not be built.
#[derive(Debug, thiserror::Error)]
pub enum SimError {
    /// An operator's pools could not be minted.
    #[error("operator {operator:?}: {source}")]
    Operator {
        /// The operator.
        operator: String,
        /// What went wrong.
        source: AdminError,
    },
    /// `--callback-url` is not usable.
    #[error("{0}")]
    CallbackUrl(String),
    /// The HTTP client for callbacks could not be built.
    #[error("cannot build the callback HTTP client: {0}")]
    Client(#[from] reqwest::Error),
}

/// The running simulator: every operator's state, the callback client and the shutdown flag.
pub struct Sim {
    operators: BTreeMap<String, Mutex<Operator>>,
    /// Operator → the secret its callbacks present (`Authorization: Bearer …`).
    callback_credentials: BTreeMap<String, String>,
    client: reqwest::Client,
    shutdown: watch::Sender<bool>,
}

impl Sim {
    /// Builds every operator of `cfg` (minting its pools). `callback_url` (from `--callback-url`) applies to
    /// operators that set none themselves, before the file's top-level `callback_url`.
    pub fn new(cfg: &SimConfig, callback_url: Option<&str>) -> Result<Self, SimError> {
        if let Some(url) = callback_url {
            crate::config::validate_callback_url(url).map_err(SimError::CallbackUrl)?;
        }
        let default_callback = callback_url.or(cfg.callback_url.as_deref());
        let mut operators = BTreeMap::new();
        for (name, op_cfg) in &cfg.operators {
            let op = Operator::new(name, op_cfg, default_callback).map_err(|source| {
                SimError::Operator {
                    operator: name.clone(),
                    source,
                }
            })?;
            operators.insert(name.clone(), Mutex::new(op));
        }
        let client = reqwest::Client::builder()
            .timeout(CALLBACK_TIMEOUT)
            .build()?;
        Ok(Sim {
            operators,
            callback_credentials: BTreeMap::new(),
            client,
            shutdown: watch::channel(false).0,
        })
    }

    /// Set the operators' callback credentials from `operator=secret,…` (the facilitator's
    /// `carrier_callback_credentials` takes the same string). An operator without one sends no
    /// `Authorization` header. The error names the item, never a secret.
    pub fn set_callback_credentials(&mut self, spec: &str) -> Result<(), String> {
        for item in spec.split(',').map(str::trim).filter(|i| !i.is_empty()) {
            let (op, secret) = item
                .split_once('=')
                .ok_or_else(|| "callback credentials must be operator=secret pairs".to_owned())?;
            let op = op.trim();
            if !self.operators.contains_key(op) {
                return Err(format!("callback credential for unknown operator {op:?}"));
            }
            self.callback_credentials
                .insert(op.to_owned(), secret.trim().to_owned());
        }
        Ok(())
    }

    /// Names of the configured operators.
    pub fn operator_names(&self) -> impl Iterator<Item = &str> {
        self.operators.keys().map(String::as_str)
    }

    fn operator(&self, name: &str) -> Option<MutexGuard<'_, Operator>> {
        self.operators.get(name).map(lock)
    }

    /// Resolves once shutdown has begun.
    async fn stopping(&self) {
        let mut rx = self.shutdown.subscribe();
        // An error means the sender is gone, which only happens when the Sim is dropped: stop waiting.
        let _ = rx.wait_for(|stopping| *stopping).await;
    }
}

/// A poisoned lock only means another request panicked mid-update; the simulator keeps serving.
fn lock(m: &Mutex<Operator>) -> MutexGuard<'_, Operator> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

type Resp = Response<Full<Bytes>>;

fn json_response(status: StatusCode, body: &Value) -> Resp {
    let mut resp = Response::new(Full::new(Bytes::from(body.to_string())));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/json"),
    );
    resp
}

fn error_response(status: StatusCode, code: &str, message: &str) -> Resp {
    json_response(
        status,
        &json!({ "error": { "code": code, "message": message } }),
    )
}

fn es2_response(mut resp: Resp) -> Resp {
    resp.headers_mut().insert(
        "x-admin-protocol",
        header::HeaderValue::from_static(ADMIN_PROTOCOL),
    );
    resp
}

fn unknown_operator(name: &str) -> Resp {
    error_response(
        StatusCode::NOT_FOUND,
        "unknown_operator",
        &format!("no operator named {name:?}"),
    )
}

fn method_not_allowed() -> Resp {
    error_response(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        "method not allowed on this path",
    )
}

fn admin_error(e: &AdminError) -> Resp {
    let (status, code) = match e {
        AdminError::UnknownIccid(_) => (StatusCode::NOT_FOUND, "unknown_iccid"),
        AdminError::WrongState { .. } => (StatusCode::CONFLICT, "wrong_state"),
        AdminError::TooLarge(_) => (StatusCode::BAD_REQUEST, "too_large"),
        AdminError::Exhausted(_) => (StatusCode::CONFLICT, "exhausted"),
    };
    error_response(status, code, &e.to_string())
}

async fn read_body(body: Incoming) -> Result<Bytes, Resp> {
    match Limited::new(body, MAX_BODY).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => Err(error_response(
            StatusCode::PAYLOAD_TOO_LARGE,
            "too_large",
            "request body too large",
        )),
        Err(_) => Err(error_response(
            StatusCode::BAD_REQUEST,
            "bad_body",
            "could not read the request body",
        )),
    }
}

/// Routes one request.
pub async fn handle(sim: Arc<Sim>, req: Request<Incoming>) -> Resp {
    let path = req.uri().path().to_owned();
    let segments: Vec<&str> = path
        .trim_start_matches('/')
        .trim_end_matches('/')
        .split('/')
        .collect();
    match segments.as_slice() {
        ["health"] if req.method() == Method::GET => {
            json_response(StatusCode::OK, &json!({ "status": "ok" }))
        }
        ["admin", "stats"] if req.method() == Method::GET => stats(&sim),
        ["admin", "operators"] if req.method() == Method::GET => operators(&sim),
        ["health"] | ["admin", "stats"] | ["admin", "operators"] => method_not_allowed(),
        ["admin", "operators", op, rest @ ..] => admin_operator(&sim, op, rest, req).await,
        [op, "gsma", "rsp2", "es2plus", function] => {
            es2_response(es2(sim.clone(), op, function, req).await)
        }
        _ => error_response(
            StatusCode::NOT_FOUND,
            "not_found",
            &format!("no route for {path}"),
        ),
    }
}

fn stats(sim: &Sim) -> Resp {
    let ops: serde_json::Map<String, Value> = sim
        .operators
        .iter()
        .map(|(name, op)| (name.clone(), lock(op).stats_json()))
        .collect();
    json_response(StatusCode::OK, &json!({ "operators": ops }))
}

fn operator_summary(op: &Operator) -> Value {
    json!({
        "name": op.name(),
        "smdpAddress": op.smdp_address(),
        "callbackUrl": op.callback_url(),
        "autoDownload": op.auto_download(),
        "pools": op.pools(),
        "faults": op.faults,
    })
}

fn operators(sim: &Sim) -> Resp {
    let list: Vec<Value> = sim
        .operators
        .values()
        .map(|op| operator_summary(&lock(op)))
        .collect();
    json_response(StatusCode::OK, &json!({ "operators": list }))
}

/// What the fault settings decide for one ES2+ call, taken when it arrives.
enum FaultAction {
    Proceed,
    Unavailable,
    Hang,
}

/// One ES2+ call; the caller adds `X-Admin-Protocol` to every answer.
async fn es2(sim: Arc<Sim>, op_name: &str, function: &str, req: Request<Incoming>) -> Resp {
    let Some(function) = Function::from_name(function) else {
        return error_response(
            StatusCode::NOT_FOUND,
            "unknown_function",
            &format!("no ES2+ function {function:?}"),
        );
    };
    let (action, latency, reply_delay) = {
        let Some(mut op) = sim.operator(op_name) else {
            return unknown_operator(op_name);
        };
        if req.method() != Method::POST {
            return method_not_allowed();
        }
        op.stats_mut(function).calls += 1;
        let action = if op.faults.hang {
            op.stats_mut(function).hung += 1;
            FaultAction::Hang
        } else if op.faults.http_503 {
            FaultAction::Unavailable
        } else if op.faults.fail_next > 0 {
            op.faults.fail_next -= 1;
            FaultAction::Unavailable
        } else {
            FaultAction::Proceed
        };
        if matches!(action, FaultAction::Unavailable) {
            op.stats_mut(function).http_503 += 1;
        }
        (
            action,
            Duration::from_millis(op.faults.latency_ms),
            Duration::from_millis(op.faults.reply_delay_ms),
        )
    };
    let unavailable = || {
        error_response(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            "injected fault: service unavailable",
        )
    };
    if matches!(action, FaultAction::Hang) {
        tracing::info!(
            operator = op_name,
            function = function.name(),
            "holding the call (hang fault)"
        );
        sim.stopping().await;
        return unavailable();
    }
    if !latency.is_zero() {
        tokio::select! {
            () = tokio::time::sleep(latency) => {}
            () = sim.stopping() => return unavailable(),
        }
    }
    if matches!(action, FaultAction::Unavailable) {
        tracing::info!(
            operator = op_name,
            function = function.name(),
            "answering 503 (fault)"
        );
        return unavailable();
    }
    let body = match check_es2_request(req).await {
        Ok(body) => body,
        Err(resp) => {
            if let Some(mut op) = sim.operator(op_name) {
                op.stats_mut(function).rejected += 1;
            }
            return resp;
        }
    };
    let (outcome, auto) = {
        let Some(mut op) = sim.operator(op_name) else {
            return unknown_operator(op_name);
        };
        let outcome = op.handle(function, &body);
        let auto = op.auto_download() && !op.faults.no_device && op.callback_url().is_some();
        (outcome, auto)
    };
    let fci = body
        .pointer("/header/functionCallIdentifier")
        .and_then(Value::as_str)
        .unwrap_or_default();
    match &outcome.result {
        CallResult::Success => {
            tracing::info!(
                operator = op_name,
                function = function.name(),
                fci,
                "Executed-Success"
            );
        }
        CallResult::Replayed => {
            tracing::info!(
                operator = op_name,
                function = function.name(),
                fci,
                "replayed stored response"
            );
        }
        CallResult::Failed(code) => tracing::info!(
            operator = op_name,
            function = function.name(),
            fci,
            code = %code.code(),
            message = %code.message,
            "Failed"
        ),
    }
    if auto && let Some((iccid, seq)) = outcome.released {
        spawn_device(&sim, op_name, iccid, seq);
    }
    if !reply_delay.is_zero() {
        tokio::select! {
            () = tokio::time::sleep(reply_delay) => {}
            () = sim.stopping() => return unavailable(),
        }
    }
    json_response(StatusCode::OK, &outcome.response)
}

/// Header and body checks of the ES2+ JSON binding; the body as a JSON object.
async fn check_es2_request(req: Request<Incoming>) -> Result<Value, Resp> {
    let (parts, body) = req.into_parts();
    let protocol = parts
        .headers
        .get("x-admin-protocol")
        .and_then(|v| v.to_str().ok());
    if !protocol.is_some_and(|p| p.starts_with(ADMIN_PROTOCOL_PREFIX)) {
        return Err(error_response(
            StatusCode::BAD_REQUEST,
            "bad_admin_protocol",
            &format!("X-Admin-Protocol must start with {ADMIN_PROTOCOL_PREFIX}"),
        ));
    }
    let content_type = parts
        .headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .map(str::trim);
    if !content_type.is_some_and(|ct| ct.eq_ignore_ascii_case("application/json")) {
        return Err(error_response(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "bad_content_type",
            "Content-Type must be application/json",
        ));
    }
    let bytes = read_body(body).await?;
    match serde_json::from_slice::<Value>(&bytes) {
        Ok(v) if v.is_object() => Ok(v),
        Ok(_) => Err(error_response(
            StatusCode::BAD_REQUEST,
            "bad_json",
            "the body must be a JSON object",
        )),
        Err(e) => Err(error_response(
            StatusCode::BAD_REQUEST,
            "bad_json",
            &format!("malformed JSON: {e}"),
        )),
    }
}

async fn admin_operator(
    sim: &Arc<Sim>,
    op_name: &str,
    rest: &[&str],
    req: Request<Incoming>,
) -> Resp {
    if !sim.operators.contains_key(op_name) {
        return unknown_operator(op_name);
    }
    let method = req.method().clone();
    let query = req.uri().query().unwrap_or_default().to_owned();
    match (rest, method) {
        ([], Method::GET) => sim.operator(op_name).map_or_else(
            || unknown_operator(op_name),
            |op| json_response(StatusCode::OK, &operator_summary(&op)),
        ),
        (["profiles"], Method::GET) => list_profiles(sim, op_name, &query),
        (["profiles", iccid], Method::GET) => {
            let Some(op) = sim.operator(op_name) else {
                return unknown_operator(op_name);
            };
            match op.profile(iccid) {
                Some(p) => json_response(StatusCode::OK, &p.to_json(true)),
                None => admin_error(&AdminError::UnknownIccid((*iccid).to_owned())),
            }
        }
        (["profiles", iccid, "download"], Method::POST) => {
            let seq = match sim.operator(op_name).map(|op| op.released_order(iccid)) {
                Some(Ok(seq)) => seq,
                Some(Err(e)) => return admin_error(&e),
                None => return unknown_operator(op_name),
            };
            spawn_device(sim, op_name, (*iccid).to_owned(), seq);
            json_response(
                StatusCode::ACCEPTED,
                &json!({ "iccid": iccid, "state": ProfileState::Released.name(), "download": "scheduled" }),
            )
        }
        (["profiles", iccid, "fail"], Method::POST) => {
            let (result, target) = match sim.operator(op_name) {
                Some(mut op) => {
                    let result = op.device_fail(iccid);
                    let profile = op.profile(iccid).map(|p| p.to_json(false));
                    (result.map(|n| (n, profile)), callback_target(&op))
                }
                None => return unknown_operator(op_name),
            };
            match result {
                Ok((notification, profile)) => {
                    if let Some((url, requester)) = target {
                        let sim = sim.clone();
                        let op_name = op_name.to_owned();
                        tokio::spawn(async move {
                            notify(&sim, &op_name, &url, &requester, &notification).await;
                        });
                    }
                    json_response(StatusCode::OK, &profile.unwrap_or(Value::Null))
                }
                Err(e) => admin_error(&e),
            }
        }
        (["pools", profile_type], Method::PUT) => {
            set_pool(sim, op_name, profile_type, req.into_body()).await
        }
        (["faults"], Method::GET) => match sim.operator(op_name) {
            Some(op) => json_response(StatusCode::OK, &json!(op.faults)),
            None => unknown_operator(op_name),
        },
        (["faults"], Method::PUT) => set_faults(sim, op_name, req.into_body()).await,
        (
            []
            | ["profiles"]
            | ["profiles", _]
            | ["profiles", _, "download" | "fail"]
            | ["pools", _]
            | ["faults"],
            _,
        ) => method_not_allowed(),
        _ => error_response(StatusCode::NOT_FOUND, "not_found", "no such admin route"),
    }
}

fn list_profiles(sim: &Sim, op_name: &str, query: &str) -> Resp {
    let mut state = None;
    let mut profile_type = None;
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        match key {
            "state" => match ProfileState::from_name(value) {
                Some(s) => state = Some(s),
                None => {
                    return error_response(
                        StatusCode::BAD_REQUEST,
                        "bad_query",
                        &format!("unknown state {value:?}"),
                    );
                }
            },
            "profileType" => profile_type = Some(value),
            _ => {}
        }
    }
    let Some(op) = sim.operator(op_name) else {
        return unknown_operator(op_name);
    };
    json_response(
        StatusCode::OK,
        &json!({ "counts": op.counts(), "pools": op.pools(), "profiles": op.list(state, profile_type) }),
    )
}

async fn set_pool(sim: &Sim, op_name: &str, profile_type: &str, body: Incoming) -> Resp {
    if !valid_profile_type(profile_type) {
        return error_response(
            StatusCode::BAD_REQUEST,
            "bad_profile_type",
            "profile types are 1-64 of [A-Za-z0-9._-]",
        );
    }
    let bytes = match read_body(body).await {
        Ok(b) => b,
        Err(resp) => return resp,
    };
    let Some(target) = serde_json::from_slice::<Value>(&bytes)
        .ok()
        .and_then(|v| v.get("available").and_then(Value::as_u64))
    else {
        return error_response(
            StatusCode::BAD_REQUEST,
            "bad_json",
            "expected {\"available\": <non-negative integer>}",
        );
    };
    let Some(mut op) = sim.operator(op_name) else {
        return unknown_operator(op_name);
    };
    match op.set_available(profile_type, target) {
        Ok(n) => {
            tracing::info!(
                operator = op_name,
                profile_type,
                available = n,
                "pool resized"
            );
            json_response(
                StatusCode::OK,
                &json!({ "profileType": profile_type, "available": n }),
            )
        }
        Err(e) => admin_error(&e),
    }
}

async fn set_faults(sim: &Sim, op_name: &str, body: Incoming) -> Resp {
    let bytes = match read_body(body).await {
        Ok(b) => b,
        Err(resp) => return resp,
    };
    let faults: Faults = match serde_json::from_slice(&bytes) {
        Ok(f) => f,
        Err(e) => {
            return error_response(
                StatusCode::BAD_REQUEST,
                "bad_json",
                &format!("invalid faults: {e}"),
            );
        }
    };
    if let Err(e) = faults.validate() {
        return error_response(StatusCode::BAD_REQUEST, "bad_faults", &e.to_string());
    }
    let Some(mut op) = sim.operator(op_name) else {
        return unknown_operator(op_name);
    };
    tracing::info!(operator = op_name, ?faults, "faults set");
    op.faults = faults;
    json_response(StatusCode::OK, &json!(op.faults))
}

/// The callback URL and the requester id to sign callbacks with, if the operator has a callback.
fn callback_target(op: &Operator) -> Option<(String, String)> {
    op.callback_url()
        .map(|url| (url.to_owned(), op.smdp_address().to_owned()))
}

/// One step of the simulated device ([`Operator::device_download`] or [`Operator::device_install`]).
type DeviceStep = fn(&mut Operator, &str, u64) -> Option<Notification>;

/// Plays the device for order `seq` of `iccid`: after the download delay Released → Downloaded (notification
/// point 3), after the install delay → Installed (point 4). Stops if the order changed meanwhile.
fn spawn_device(sim: &Arc<Sim>, op_name: &str, iccid: String, seq: u64) {
    let sim = sim.clone();
    let span = tracing::info_span!("device", operator = op_name, iccid = %iccid);
    let op_name = op_name.to_owned();
    tokio::spawn(
        async move {
            let Some((download_delay, install_delay)) = sim
                .operator(&op_name)
                .map(|op| (op.download_delay(), op.install_delay()))
            else {
                return;
            };
            let steps: [(Duration, DeviceStep); 2] = [
                (download_delay, Operator::device_download),
                (install_delay, Operator::device_install),
            ];
            for (delay, step) in steps {
                tokio::select! {
                    () = tokio::time::sleep(delay) => {}
                    () = sim.stopping() => return,
                }
                let (notification, target) = {
                    let Some(mut op) = sim.operator(&op_name) else {
                        return;
                    };
                    let n = step(&mut op, &iccid, seq);
                    (n, callback_target(&op))
                };
                let Some(notification) = notification else {
                    tracing::info!("order changed before the device acted; stopping");
                    return;
                };
                tracing::info!(point = notification.point, "device progressed");
                if let Some((url, requester)) = target {
                    notify(&sim, &op_name, &url, &requester, &notification).await;
                }
            }
        }
        .instrument(span),
    );
}

/// POSTs one `handleDownloadProgressInfo`, retrying with exponential backoff until the operator answers 2xx
/// (204 expected). Every attempt carries the same `functionCallIdentifier` and the operator's credential.
async fn notify(sim: &Sim, operator: &str, url: &str, requester: &str, n: &Notification) {
    let fci = match ids::random_hex(8) {
        Ok(hex) => format!("smdp-sim-{hex}"),
        Err(_) => format!("smdp-sim-{}-{}", n.iccid, n.point),
    };
    let body = n
        .to_json(requester, &fci, &ids::es2_timestamp(SystemTime::now()))
        .to_string();
    let mut backoff = CALLBACK_BACKOFF;
    for attempt in 1..=CALLBACK_ATTEMPTS {
        if attempt > 1 {
            tokio::select! {
                () = tokio::time::sleep(backoff) => {}
                () = sim.stopping() => return,
            }
            backoff *= 2;
        }
        let mut request = sim
            .client
            .post(url)
            .header(header::CONTENT_TYPE, "application/json")
            .header("x-admin-protocol", ADMIN_PROTOCOL);
        if let Some(secret) = sim.callback_credentials.get(operator) {
            request = request.bearer_auth(secret);
        }
        let sent = request.body(body.clone()).send().await;
        match sent {
            Ok(r) if r.status() == StatusCode::NO_CONTENT => {
                tracing::info!(point = n.point, fci, "download progress delivered");
                return;
            }
            Ok(r) if r.status().is_success() => {
                tracing::warn!(point = n.point, fci, status = %r.status(), "callback accepted but not with 204");
                return;
            }
            Ok(r) => {
                tracing::warn!(point = n.point, fci, attempt, status = %r.status(), "callback refused");
            }
            Err(e) => {
                tracing::warn!(point = n.point, fci, attempt, error = %e, "callback failed");
            }
        }
    }
    tracing::error!(
        point = n.point,
        fci,
        "giving up on the download-progress callback"
    );
}

/// Serves `sim` on `listener` until `shutdown` resolves; then releases held (hanging) calls, stops accepting
/// and waits up to [`SHUTDOWN_GRACE`] for in-flight requests.
pub async fn serve(
    sim: Arc<Sim>,
    listener: TcpListener,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()> {
    let graceful = GracefulShutdown::new();
    tokio::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let _ = stream.set_nodelay(true);
        let sim = sim.clone();
        let service = hyper::service::service_fn(move |req| {
            let sim = sim.clone();
            async move { Ok::<_, Infallible>(handle(sim, req).await) }
        });
        let conn = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
            .serve_connection(TokioIo::new(stream), service)
            .into_owned();
        let conn = graceful.watch(conn);
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(%peer, error = %e, "connection ended with an error");
            }
        });
    }
    tracing::info!("shutting down");
    sim.shutdown.send_replace(true);
    tokio::select! {
        () = graceful.shutdown() => {}
        () = tokio::time::sleep(SHUTDOWN_GRACE) => tracing::warn!("connections still open after the grace period"),
    }
    Ok(())
}
