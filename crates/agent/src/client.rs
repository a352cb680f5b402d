//! The agent's HTTP side: the paid walk (402 → policy → sign → send, retrying the same payment) and the SIM
//! routes, with the SIM's access token or, without one, a wallet sign-in (`SIGN-IN-WITH-X`).
//!
//! Paid requests are keyed by what they buy (`POST <path> <body>`): a payment still pending for the same key is
//! sent again as is, never re-signed, so a command run again after a lost reply collects the first answer
//! (the facilitator replays it for the same `payment-identifier`) instead of paying twice.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use esim402_core::UsdcAmount;
use esim402_core::auth::siwx;
use esim402_core::x402::header::{
    PAYMENT_REQUIRED, PAYMENT_SIGNATURE, decode_payment_required_header,
};
use serde_json::{Value, json};

use crate::config::Config;
use crate::error::AgentError;
use crate::pay::{new_payment_id, sign_exact};
use crate::policy::SpendPolicy;
use crate::state::{PendingPayment, SimRecord, Spend, SpendStatus, StateDir};

/// How often a `settlement_pending` answer is retried with the same payment before giving up (exit 5, the
/// payment kept for the next run).
pub const PENDING_RETRIES: u32 = 10;
/// The longest wait between two of those retries, whatever `Retry-After` says.
pub const MAX_RETRY_WAIT: Duration = Duration::from_secs(5);

/// An HTTP answer.
#[derive(Debug, Clone)]
pub struct Answer {
    /// Status code.
    pub status: u16,
    /// Headers.
    pub headers: reqwest::header::HeaderMap,
    /// The JSON body (`Null` if it was not JSON).
    pub body: Value,
}

impl Answer {
    fn message(&self) -> String {
        self.body["error"]["message"]
            .as_str()
            .map(str::to_owned)
            .or_else(|| (!self.body.is_null()).then(|| self.body.to_string()))
            .unwrap_or_else(|| format!("HTTP {}", self.status))
    }

    fn header(&self, name: &str) -> Option<&str> {
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

impl Agent {
    /// An agent; `progress` prints what it does on stderr.
    pub fn new(config: Config, policy: SpendPolicy, state: StateDir, progress: bool) -> Self {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(120))
            .build()
            .unwrap_or_default();
        Self {
            config,
            policy,
            state,
            http,
            progress,
        }
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

    async fn send(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<&Value>,
        headers: &[(&str, String)],
    ) -> Result<Answer, reqwest::Error> {
        let mut req = self
            .http
            .request(method, format!("{}{path}", self.config.url));
        if let Some(b) = body {
            req = req.json(b);
        }
        for (k, v) in headers {
            req = req.header(*k, v);
        }
        let r = req.send().await?;
        let status = r.status().as_u16();
        let headers = r.headers().clone();
        let bytes = r.bytes().await?;
        let body = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        Ok(Answer {
            status,
            headers,
            body,
        })
    }

    fn unreachable(&self, e: &reqwest::Error, pending: bool) -> AgentError {
        AgentError::Unavailable {
            message: format!("facilitator {} unreachable: {e}", self.config.url),
            pending,
        }
    }

    /// POST `body` to `path`, paying the 402 it answers within the policy; the paid answer. With `owner`, every
    /// request carries that SIM's credential (routes only its owner may pay for, such as a switch).
    pub async fn pay(
        &self,
        path: &str,
        body: &Value,
        purpose: &str,
        owner: Option<&SimRecord>,
    ) -> Result<Answer, AgentError> {
        let credential = |extra: Option<(&'static str, String)>| {
            let mut headers = Vec::new();
            if let Some(sim) = owner {
                headers.push(self.credential(sim, path)?);
            }
            headers.extend(extra);
            Ok::<_, AgentError>(headers)
        };
        let key = format!("POST {path} {body}");
        let state = self.state.load().map_err(local)?;
        let (payment_id, header, valid_before) = match state.pending.get(&key) {
            Some(p) => {
                self.say(&format!(
                    "sending again the payment {} still pending for this request (never paid twice)",
                    p.payment_id
                ));
                (p.payment_id.clone(), p.header.clone(), p.valid_before)
            }
            None => {
                let first = self
                    .send(reqwest::Method::POST, path, Some(body), &credential(None)?)
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
                let (req, price) = self
                    .policy
                    .choose(&required.accepts, state.spent_today(now))?;
                let id = new_payment_id(random()?);
                let signed = sign_exact(
                    &self.config.key,
                    req,
                    Some(&required.resource),
                    now,
                    random()?,
                    &id,
                )
                .map_err(|e| AgentError::Refused {
                    status: 402,
                    message: e.to_string(),
                })?;
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
                };
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
                self.state
                    .update(|s| s.begin(&key, pending, spend))
                    .map_err(local)?;
                (id.as_str().to_owned(), signed.header, signed.valid_before)
            }
        };
        for _ in 0..PENDING_RETRIES {
            let expired = now() >= valid_before;
            let answer = self
                .send(
                    reqwest::Method::POST,
                    path,
                    Some(body),
                    &credential(Some((PAYMENT_SIGNATURE, header.clone())))?,
                )
                .await
                .map_err(|e| self.unreachable(&e, true))?;
            let code = answer.body["error"]["code"].as_str().unwrap_or_default();
            match answer.status {
                200..=299 => {
                    let tx = answer.body["transaction"].as_str().map(str::to_owned);
                    self.state
                        .update(|s| s.settled(&key, &payment_id, tx))
                        .map_err(local)?;
                    return Ok(answer);
                }
                402 if code == "settlement_pending" => {
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
                402 => {
                    // Refused before settlement: nothing was charged.
                    self.state
                        .update(|s| s.refused(&key, &payment_id))
                        .map_err(local)?;
                    return Err(AgentError::Refused {
                        status: 402,
                        message: format!("payment refused: {}", answer.message()),
                    });
                }
                _ if answer.body["charged"] == json!(false) => {
                    // The facilitator says nothing was charged (e.g. the carrier failed the order): forget it;
                    // running the command again pays afresh.
                    self.state
                        .update(|s| s.refused(&key, &payment_id))
                        .map_err(local)?;
                    return Err(AgentError::Unavailable {
                        message: format!(
                            "facilitator failed ({}), nothing was charged: {}",
                            answer.status,
                            answer.message()
                        ),
                        pending: false,
                    });
                }
                500.. if !expired => {
                    return Err(AgentError::Unavailable {
                        message: format!(
                            "facilitator failed ({}): {}",
                            answer.status,
                            answer.message()
                        ),
                        pending: true,
                    });
                }
                _ => {
                    // A conflict, or a failure after the payment expired: stop sending it, keep its spend.
                    self.state
                        .update(|s| s.unknown(&key, &payment_id))
                        .map_err(local)?;
                    return Err(unexpected(&answer));
                }
            }
        }
        Err(AgentError::Unavailable {
            message: format!("settlement still pending after {PENDING_RETRIES} tries"),
            pending: true,
        })
    }

    /// Buy a SIM: `request` is the activation body (`region`, `data_mb`, optional `carrier`, `chain`, `eid`).
    pub async fn activate(&self, request: &Value) -> Result<Activation, AgentError> {
        let purpose = format!("activate {request}");
        let answer = self
            .pay("/v1/esim/activate", request, &purpose, None)
            .await?
            .body;
        self.record_sim(answer, None)
    }

    /// Move a SIM to another carrier or region (`{"carrier": …}` or `{"region": …}`): a paid new SIM that takes
    /// over the old one's unused data; the old one is retired by the facilitator once the new one is installed.
    pub async fn switch(
        &self,
        iccid: Option<&str>,
        target: &Value,
    ) -> Result<Activation, AgentError> {
        let sim = self.sim(iccid)?;
        let path = format!("/v1/esim/{}/switch", sim.iccid);
        let purpose = format!("switch {} {target}", sim.iccid);
        let answer = self.pay(&path, target, &purpose, Some(&sim)).await?.body;
        self.record_sim(answer, Some(&sim.iccid))
    }

    /// Keep the SIM a paid answer bought (its token out of the answer), retiring `replaces`.
    fn record_sim(
        &self,
        mut answer: Value,
        replaces: Option<&str>,
    ) -> Result<Activation, AgentError> {
        let (Some(iccid), Some(code)) = (
            answer["iccid"].as_str().map(str::to_owned),
            answer["activation_code"].as_str().map(str::to_owned),
        ) else {
            return Err(AgentError::Refused {
                status: 200,
                message: format!("paid answer without iccid/activation_code: {answer}"),
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
        };
        self.state
            .update(|s| {
                s.sims.insert(iccid.clone(), record);
                if let Some(old) = replaces.and_then(|id| s.sims.get_mut(id)) {
                    old.terminated = true;
                }
            })
            .map_err(local)?;
        Ok(Activation {
            iccid,
            activation_code: code,
            answer,
        })
    }

    /// Buy `data_mb` more for a SIM (anyone may pay a top-up: no credential is sent).
    pub async fn top_up(&self, iccid: Option<&str>, data_mb: u64) -> Result<Value, AgentError> {
        let sim = self.sim(iccid)?;
        let path = format!("/v1/esim/{}/data", sim.iccid);
        let body = json!({"top_up_mb": data_mb});
        let purpose = format!("top-up {} {data_mb} MB", sim.iccid);
        Ok(self.pay(&path, &body, &purpose, None).await?.body)
    }

    fn sim(&self, iccid: Option<&str>) -> Result<SimRecord, AgentError> {
        self.state
            .load()
            .map_err(local)?
            .pick_sim(iccid)
            .ok_or_else(|| {
                AgentError::Usage(
                    "no SIM in the state directory: run `activate` first or pass --iccid".into(),
                )
            })
    }

    /// The credential for a SIM route: its access token, else a wallet sign-in for `path`.
    fn credential(
        &self,
        sim: &SimRecord,
        path: &str,
    ) -> Result<(&'static str, String), AgentError> {
        if let Some(t) = &sim.access_token {
            return Ok(("authorization", format!("Bearer {t}")));
        }
        let chain_id = sim
            .network
            .as_deref()
            .and_then(|n| esim402_core::Network::parse(n).ok())
            .map_or(1, |n| n.chain_id().0);
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
        let path = format!("/v1/esim/{}{route}", sim.iccid);
        let cred = self.credential(&sim, &path)?;
        let answer = self
            .send(method, &path, None, &[(cred.0, cred.1)])
            .await
            .map_err(|e| self.unreachable(&e, false))?;
        if (200..300).contains(&answer.status) {
            Ok(answer.body)
        } else {
            Err(unexpected(&answer))
        }
    }

    /// What was spent since 00:00 UTC.
    pub fn spent_today(&self) -> Result<UsdcAmount, AgentError> {
        Ok(self.state.load().map_err(local)?.spent_today(now()))
    }
}

fn unexpected(answer: &Answer) -> AgentError {
    if answer.status >= 500 {
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

    fn agent(url: &str, dir: &std::path::Path) -> Agent {
        let key = WalletKey::parse(&"11".repeat(32), "test").unwrap();
        Agent::new(
            Config::new(url, key).unwrap(),
            SpendPolicy::default(),
            StateDir::new(dir),
            false,
        )
    }

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
        // A port nothing listens on (bound, then closed).
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
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
    }
}
