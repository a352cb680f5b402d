//! Test helpers: a scripted HTTP server standing in for a facilitator (or for anything the agent must not
//! reach), recording every request it gets.
#![allow(clippy::unwrap_used, clippy::expect_used, reason = "tests")]

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use esim402_core::x402::header::{PAYMENT_REQUIRED, encode_payment_required_header};
use esim402_core::x402::wire::{Extra, PaymentRequired, PaymentRequirements, Resource};
use http_body_util::{BodyExt as _, Full};
use hyper::service::service_fn;
use serde_json::{Value, json};

/// One request the server got.
#[derive(Debug, Clone)]
pub(crate) struct Seen {
    pub method: String,
    pub target: String,
    pub headers: hyper::HeaderMap,
    pub body: Bytes,
}

impl Seen {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

/// An answer: status, headers, JSON body.
pub(crate) type Answer = (u16, Vec<(&'static str, String)>, Value);

/// A loopback HTTP/1.1 server answering every request with its handler.
pub(crate) struct Server {
    pub url: String,
    seen: Arc<Mutex<Vec<Seen>>>,
}

impl Server {
    pub async fn start(handler: impl Fn(&Seen) -> Answer + Send + Sync + 'static) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr: SocketAddr = listener.local_addr().unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let handler = Arc::new(handler);
        let log = seen.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let (handler, log) = (handler.clone(), log.clone());
                tokio::spawn(async move {
                    let service = service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                        let (handler, log) = (handler.clone(), log.clone());
                        async move {
                            let (parts, body) = req.into_parts();
                            let seen = Seen {
                                method: parts.method.to_string(),
                                target: parts.uri.to_string(),
                                headers: parts.headers,
                                body: body.collect().await.unwrap().to_bytes(),
                            };
                            let (status, headers, body) = handler(&seen);
                            log.lock().unwrap().push(seen);
                            // A string body under a Content-Type of the handler's that is not JSON is sent as
                            // is (an HTML page); any other body as JSON.
                            let raw = headers.iter().any(|(k, v)| {
                                k.eq_ignore_ascii_case("content-type") && !v.contains("json")
                            });
                            let text = match (&body, raw) {
                                (Value::String(s), true) => s.clone(),
                                _ => body.to_string(),
                            };
                            let mut r = hyper::Response::new(Full::new(Bytes::from(text)));
                            *r.status_mut() = hyper::StatusCode::from_u16(status).unwrap();
                            r.headers_mut().insert(
                                hyper::header::CONTENT_TYPE,
                                hyper::header::HeaderValue::from_static("application/json"),
                            );
                            for (k, v) in headers {
                                r.headers_mut().insert(k, v.parse().unwrap());
                            }
                            Ok::<_, std::convert::Infallible>(r)
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Self {
            url: format!("http://{addr}"),
            seen,
        }
    }

    /// Every request so far.
    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    /// The `PAYMENT-SIGNATURE` of every paid request so far.
    pub fn payments(&self) -> Vec<String> {
        self.seen()
            .iter()
            .filter_map(|s| s.header("payment-signature").map(str::to_owned))
            .collect()
    }
}

/// The 402 challenge for a request: 0.42 USDC on anvil, for the URL the request named.
pub(crate) fn challenge(seen: &Seen) -> Answer {
    let host = seen.header("host").unwrap_or("127.0.0.1");
    let required = PaymentRequired {
        x402_version: 2,
        error: Some("PAYMENT-SIGNATURE header is required".into()),
        resource: Resource {
            url: format!("http://{host}{}", seen.target),
            description: None,
            mime_type: None,
        },
        accepts: vec![PaymentRequirements {
            scheme: "exact".into(),
            network: "eip155:31337".into(),
            amount: "420000".into(),
            asset: "0x5FbDB2315678afecb367f032d93F642f64180aa3".into(),
            pay_to: "0x3C44CdDdB6a900fa2b585dd299e03d12FA4293BC".into(),
            max_timeout_seconds: 300,
            extra: Some(Extra::eip712("USD Coin", "2")),
        }],
        extensions: None,
    };
    (
        402,
        vec![(PAYMENT_REQUIRED, encode_payment_required_header(&required))],
        json!({"error": {"code": "payment_required", "message": "pay"}}),
    )
}

/// A facilitator selling with [`challenge`]: an unpaid POST gets the 402, the paid ones get `paid`'s answers
/// in turn (the last one again once they run out); a GET gets `{"ok": true}`.
pub(crate) async fn facilitator(paid: Vec<(u16, Value)>) -> Server {
    let paid = Mutex::new((paid, 0usize));
    Server::start(move |seen| {
        if seen.method == "GET" {
            return (200, vec![], json!({"ok": true}));
        }
        if seen.header("payment-signature").is_none() {
            return challenge(seen);
        }
        let mut p = paid.lock().unwrap();
        let (answers, next) = &mut *p;
        let (status, body) = answers[(*next).min(answers.len() - 1)].clone();
        *next += 1;
        (status, vec![], body)
    })
    .await
}

/// A paid activation's answer.
pub(crate) fn sim_answer(iccid: &str) -> Value {
    json!({
        "iccid": iccid,
        "activation_code": format!("LPA:1$smdp.example${iccid}"),
        "access_token": format!("sim_secret_{iccid}"),
        "carrier": "tmobile",
        "region": "us-west",
        "network": "eip155:31337",
        "invoice_id": "inv_1",
        "amount_usdc": "0.42",
        "transaction": "0xab",
    })
}

/// An agent paying `url` from a fixed test wallet, the default policy and its state in `dir`, quiet.
pub(crate) fn agent(url: &str, dir: &std::path::Path) -> crate::Agent {
    let key = crate::WalletKey::parse(&"11".repeat(32), "test").unwrap();
    crate::Agent::new(
        crate::Config::new(url, key).unwrap(),
        crate::SpendPolicy::default(),
        crate::StateDir::new(dir),
        false,
    )
    .unwrap()
}

/// [`agent`], paying within a wallet-wide daily cap of 20 USDC whose spends are kept in `wallet` (the root state
/// directory the CLI's runs share).
pub(crate) fn budgeted_agent(
    url: &str,
    dir: &std::path::Path,
    wallet: &std::path::Path,
) -> crate::Agent {
    let budget = std::sync::Arc::new(crate::budget::Budget::new(
        "20".parse().unwrap(),
        crate::StateDir::new(wallet),
    ));
    agent(url, dir).with_budget(budget)
}

/// The replay slot of a body-less `method path` from a device named by its source address, without credentials.
pub(crate) fn plain_slot(method: &str, path: &str) -> crate::replay::Slot {
    let from = crate::replay::Requester {
        origin: "http://127.0.0.1",
        headers: &[],
        claimed: false,
    };
    crate::replay::Slot::of(method, path, b"", None, &from).unwrap()
}
