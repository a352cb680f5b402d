//! `esim402-agent proxy`: the paying proxy for devices that cannot pay (no x402, no wallet). A device sends plain
//! HTTP to it; it forwards the request to the facilitator unchanged and, when the answer is a 402, pays it from
//! the gateway's wallet on the device's behalf and answers with the paid result.
//!
//! Each device is identified by a header (e.g. `X-Device-ID`) or, without one configured, by its source
//! address, and has a budget: the gateway's spend policy narrowed to the device's per-payment and per-day
//! limits, kept in a state directory of its own (`<state>/devices/<id>/`), so its spend history and any
//! pending payment are its own. Over budget: 403 with a JSON error naming the rule, nothing paid. Every payment
//! made for a device is appended to an audit log (JSON lines: time, device, path, invoice, amount, tx hash).
//! One request at a time per device (a payment and its retry must not race); devices run in parallel.

use std::collections::HashMap;
use std::io::Write as _;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use bytes::Bytes;
use esim402_core::UsdcAmount;
use http_body_util::{BodyExt, Full, Limited};
use hyper::service::service_fn;
use hyper::{Request, Response};
use serde_json::{Value, json};
use tokio::sync::Mutex;

use crate::{Agent, AgentError, Config, SpendPolicy, StateDir};

/// Largest request body forwarded.
const MAX_BODY: usize = 64 * 1024;

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
    devices: Mutex<HashMap<String, Arc<Mutex<()>>>>,
    audit: std::sync::Mutex<()>,
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

impl Shared {
    /// The device's agent: the gateway's wallet and policy, narrowed to the device's budget, with the device's
    /// own state directory.
    fn agent_for(&self, device: &str) -> Agent {
        let mut policy = self.policy.clone();
        policy.max_per_payment_usdc = policy
            .max_per_payment_usdc
            .min(self.settings.device_max_per_payment);
        policy.max_per_day_usdc = policy
            .max_per_day_usdc
            .min(self.settings.device_max_per_day);
        let dir = self.settings.state_dir.join("devices").join(device);
        Agent::new(self.config.clone(), policy, StateDir::new(dir), false)
            .with_budget(self.budget.clone())
    }

    fn audit(&self, entry: &Value) -> std::io::Result<()> {
        let _one_writer = self
            .audit
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.settings.audit_log)?;
        f.write_all(format!("{entry}\n").as_bytes())?;
        f.sync_data()
    }

    async fn forward(
        &self,
        req: &Parts,
    ) -> Result<(u16, reqwest::header::HeaderMap, Bytes), reqwest::Error> {
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
        let r = r.send().await?;
        let status = r.status().as_u16();
        let headers = r.headers().clone();
        Ok((status, headers, r.bytes().await?))
    }

    async fn handle(&self, req: Parts, device: String) -> Reply {
        let lock = {
            let mut devices = self.devices.lock().await;
            devices.entry(device.clone()).or_default().clone()
        };
        let _one_at_a_time = lock.lock().await;
        let (status, headers, body) = match self.forward(&req).await {
            Ok(a) => a,
            Err(e) => {
                return error_reply(502, "unavailable", &format!("facilitator unreachable: {e}"));
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
        if req.method != reqwest::Method::POST {
            return error_reply(
                400,
                "unsupported",
                "the proxy pays POST requests with a JSON body; send the request as a POST",
            );
        }
        let Ok(json_body) = serde_json::from_slice::<Value>(&req.body) else {
            return error_reply(400, "invalid_input", "the body must be JSON to be paid for");
        };
        let agent = self.agent_for(&device);
        let _state = match agent.state().lock() {
            Ok(l) => l,
            Err(e) => return error_reply(500, "internal", &e),
        };
        match agent
            .pay(&req.path, &json_body, &format!("device {device}"), None)
            .await
        {
            Ok(paid) => {
                let entry = json!({
                    "at": std::time::SystemTime::now()
                        .duration_since(std::time::UNIX_EPOCH)
                        .map(|d| d.as_secs())
                        .unwrap_or_default(),
                    "device": device, "path": req.path, "status": paid.status,
                    "invoice_id": paid.body["invoice_id"], "amount_usdc": paid.body["amount_usdc"],
                    "transaction": paid.body["transaction"],
                });
                if let Err(e) = self.audit(&entry) {
                    eprintln!("esim402-agent proxy: AUDIT LOG WRITE FAILED ({e}): {entry}");
                }
                json_reply(paid.status, &paid.body)
            }
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
    body: Bytes,
}

/// Serve on `listener` until the process ends.
pub async fn serve(
    listener: tokio::net::TcpListener,
    config: Config,
    policy: SpendPolicy,
    settings: ProxySettings,
) -> std::io::Result<()> {
    // One proxy per wallet record for as long as it serves: the daily cap's record is read and rewritten by this
    // process alone (another proxy on it would lose reservations and pass the cap).
    let wallet = StateDir::new(settings.state_dir.join("wallet"));
    let _held = wallet.lock().map_err(std::io::Error::other)?;
    let shared = Arc::new(Shared {
        http: reqwest::Client::builder()
            .timeout(crate::client::REQUEST_TIMEOUT)
            .build()
            .map_err(std::io::Error::other)?,
        budget: Arc::new(crate::budget::Budget::new(policy.max_per_day_usdc, wallet)),
        config,
        policy,
        settings,
        devices: Mutex::default(),
        audit: std::sync::Mutex::new(()),
    });
    loop {
        let (stream, peer) = listener.accept().await?;
        let shared = shared.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req: Request<hyper::body::Incoming>| {
                let shared = shared.clone();
                async move { Ok::<_, std::convert::Infallible>(respond(&shared, req, peer).await) }
            });
            let io = hyper_util::rt::TokioIo::new(stream);
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(io, service)
                .await;
        });
    }
}

async fn respond(shared: &Shared, req: Request<hyper::body::Incoming>, peer: SocketAddr) -> Reply {
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
    let body = match Limited::new(req.into_body(), MAX_BODY).collect().await {
        Ok(b) => b.to_bytes(),
        Err(_) => return error_reply(413, "payload_too_large", "body over 64 KiB"),
    };
    shared
        .handle(
            Parts {
                method,
                path,
                content_type,
                body,
            },
            device,
        )
        .await
}

#[cfg(test)]
mod tests {
    use super::*;

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
