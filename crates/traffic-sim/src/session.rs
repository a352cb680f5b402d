//! Sessions, quota and signed receipts (see the crate docs).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use esim402_core::CarrierId;
use esim402_core::esim::catalog::Catalog;
use esim402_core::esim::iccid::Iccid;
use esim402_core::esim::plmn::Plmn;
use esim402_core::usage::receipt::{Receipt, dev_signing_key, sign_page};
use serde::Serialize;
use serde_json::{Value, json};
use tokio::sync::Mutex;

/// Where the simulator reaches its peers.
#[derive(Debug, Clone)]
pub struct Config {
    /// The facilitator's base URL (`http://127.0.0.1:3000`).
    pub facilitator: String,
    /// The SM-DP+ simulator's base URL.
    pub smdp: String,
    /// Time compression of scheduled traffic (60: one simulated hour per real minute).
    pub compression: u64,
    /// The carriers' credentials (the facilitator's `carrier_callback_credentials`): each carrier's quota
    /// requests present its own.
    pub credentials: esim402_core::auth::callback::CallbackCredentials,
}

/// One SIM's data session.
#[derive(Debug, Clone)]
struct Session {
    carrier: CarrierId,
    id: String,
    seq: u64,
}

/// The simulator's state.
pub struct Traffic {
    cfg: Config,
    http: reqwest::Client,
    sessions: Mutex<HashMap<String, Session>>,
    schedules: Mutex<HashMap<String, tokio::task::JoinHandle<()>>>,
    tag: String,
}

/// What one `/admin/usage` did.
#[derive(Debug, Clone, Serialize)]
pub struct UsageOutcome {
    /// The SIM.
    pub iccid: String,
    /// Bytes asked for.
    pub requested: u64,
    /// Bytes moved and accepted.
    pub delivered: u64,
    /// Receipts sent.
    pub receipts: u64,
    /// The quota ran out before `requested` (the facilitator answered 402).
    pub capped: bool,
    /// The facilitator's batch reports.
    pub results: Vec<Value>,
}

/// Bytes per receipt: at least 100 KB (1NCE-style interim records), at most ~50 receipts per call.
fn receipt_size(total: u64) -> u64 {
    total.div_ceil(50).max(100_000)
}

impl Traffic {
    /// A simulator talking to `cfg`'s peers.
    pub fn new(cfg: Config) -> anyhow::Result<Arc<Self>> {
        let mut tag = [0u8; 4];
        getrandom::fill(&mut tag).map_err(|e| anyhow::anyhow!("no entropy: {e}"))?;
        Ok(Arc::new(Self {
            cfg,
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(30))
                .build()?,
            sessions: Mutex::new(HashMap::new()),
            schedules: Mutex::new(HashMap::new()),
            tag: tag.iter().map(|b| format!("{b:02x}")).collect(),
        }))
    }

    /// The carrier that issued `iccid`, asked of the SM-DP+ simulator.
    async fn carrier_of(&self, iccid: &str) -> anyhow::Result<CarrierId> {
        let base = self.cfg.smdp.trim_end_matches('/');
        let ops: Value = self
            .http
            .get(format!("{base}/admin/operators"))
            .send()
            .await?
            .json()
            .await?;
        let names: Vec<String> = match &ops {
            Value::Array(a) => a
                .iter()
                .filter_map(|o| o.get("name").or(Some(o)).and_then(Value::as_str))
                .map(str::to_owned)
                .collect(),
            Value::Object(o) => match o.get("operators") {
                Some(Value::Array(a)) => a
                    .iter()
                    .filter_map(|o| o.get("name").or(Some(o)).and_then(Value::as_str))
                    .map(str::to_owned)
                    .collect(),
                _ => o.keys().cloned().collect(),
            },
            _ => Vec::new(),
        };
        for name in names {
            let r = self
                .http
                .get(format!("{base}/admin/operators/{name}/profiles/{iccid}"))
                .send()
                .await?;
            if r.status().is_success() {
                return CarrierId::parse(&name).map_err(|e| anyhow::anyhow!("{e}"));
            }
        }
        bail!("no carrier on the SM-DP+ simulator issued {iccid}")
    }

    async fn session(&self, iccid: &str) -> anyhow::Result<Session> {
        if let Some(s) = self.sessions.lock().await.get(iccid) {
            return Ok(s.clone());
        }
        let carrier = self.carrier_of(iccid).await?;
        let s = Session {
            id: format!(
                "sim-{}-{}",
                self.tag,
                &iccid[iccid.len().saturating_sub(8)..]
            ),
            carrier,
            seq: 0,
        };
        Ok(self
            .sessions
            .lock()
            .await
            .entry(iccid.to_owned())
            .or_insert(s)
            .clone())
    }

    /// Ask for quota: `Some(granted bytes)`, or `None` when the facilitator answers 402 (top up first).
    async fn quota(
        &self,
        carrier: &CarrierId,
        iccid: &str,
        want: u64,
    ) -> anyhow::Result<Option<u64>> {
        let url = format!(
            "{}/v1/esim/{iccid}/data",
            self.cfg.facilitator.trim_end_matches('/')
        );
        let mut request = self
            .http
            .post(url)
            .json(&json!({ "quota_kb": want.div_ceil(1_000).max(1) }));
        if let Some(secret) = self.cfg.credentials.secret_of(carrier) {
            request = request.bearer_auth(secret);
        }
        let r = request.send().await?;
        let status = r.status().as_u16();
        let body: Value = r.json().await.unwrap_or(Value::Null);
        match status {
            200 => Ok(Some(body["granted_bytes"].as_u64().unwrap_or(0))),
            402 => Ok(None),
            s => bail!("quota request answered {s}: {body}"),
        }
    }

    /// Move `bytes` for `iccid` on `plmn` (default: the carrier's home network), within quota.
    pub async fn usage(
        &self,
        iccid: &str,
        bytes: u64,
        plmn: Option<&str>,
    ) -> anyhow::Result<UsageOutcome> {
        let iccid = Iccid::parse(iccid).map_err(|e| anyhow::anyhow!("iccid: {e}"))?;
        let session = self.session(iccid.as_str()).await?;
        let plmn = match plmn {
            Some(p) => Plmn::parse(p).map_err(|e| anyhow::anyhow!("plmn: {e}"))?,
            None => Catalog::builtin()
                .carrier(&session.carrier)
                .and_then(|c| c.home_plmns.first().cloned())
                .context("the carrier has no home network in the catalog; name a plmn")?,
        };
        let key = dev_signing_key(&session.carrier);
        let mut out = UsageOutcome {
            iccid: iccid.to_string(),
            requested: bytes,
            delivered: 0,
            receipts: 0,
            capped: false,
            results: Vec::new(),
        };
        let size = receipt_size(bytes);
        while out.delivered < bytes {
            let left = bytes - out.delivered;
            let Some(granted) = self.quota(&session.carrier, iccid.as_str(), left).await? else {
                out.capped = true;
                break;
            };
            if granted == 0 {
                out.capped = true;
                break;
            }
            let mut chunk_left = granted.min(left);
            let mut batch = Vec::new();
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)?
                .as_secs();
            while chunk_left > 0 {
                let n = chunk_left.min(size);
                chunk_left -= n;
                let seq = {
                    let mut sessions = self.sessions.lock().await;
                    let s = sessions
                        .get_mut(iccid.as_str())
                        .context("session vanished")?;
                    s.seq += 1;
                    s.seq
                };
                let r = Receipt {
                    carrier: session.carrier.clone(),
                    iccid: iccid.clone(),
                    plmn: plmn.clone(),
                    session_id: session.id.clone(),
                    seq,
                    window_start: now.saturating_sub(60),
                    window_end: now,
                    bytes_up: n / 5,
                    bytes_down: n - n / 5,
                    signature: Vec::new(),
                    page: None,
                };
                batch.push(r);
            }
            // One carrier signature per delivered batch: a page (each receipt keeps its own proof).
            let batch: Vec<_> = sign_page(batch, &key)
                .map_err(|e| anyhow::anyhow!("signing: {e}"))?
                .iter()
                .map(Receipt::to_wire)
                .collect();
            let url = format!("{}/v1/usage", self.cfg.facilitator.trim_end_matches('/'));
            let r = self
                .http
                .post(url)
                .json(&json!({ "receipts": batch }))
                .send()
                .await?;
            let status = r.status();
            let report: Value = r.json().await.unwrap_or(Value::Null);
            if !status.is_success() {
                bail!("/v1/usage answered {status}: {report}");
            }
            let accepted = report["totals"]["bytes_charged"].as_u64().unwrap_or(0);
            out.receipts += batch.len() as u64;
            out.delivered += accepted;
            out.results.push(report);
            if accepted == 0 {
                bail!(
                    "the facilitator accepted none of the receipts: {:?}",
                    out.results.last()
                );
            }
        }
        Ok(out)
    }

    /// Start (or replace, or with `mode = "off"` stop) the scheduled traffic of `iccid`.
    pub async fn schedule(self: &Arc<Self>, iccid: &str, mode: &str) -> anyhow::Result<()> {
        let (every_secs, bytes) = match mode {
            "steady" => (6 * 3_600, 2_000),
            "anomaly" => (3_600, 200_000),
            "off" => {
                if let Some(h) = self.schedules.lock().await.remove(iccid) {
                    h.abort();
                }
                return Ok(());
            }
            other => bail!("mode must be steady, anomaly or off, not {other:?}"),
        };
        let period = Duration::from_secs(every_secs / self.cfg.compression.max(1))
            .max(Duration::from_millis(100));
        let me = self.clone();
        let id = iccid.to_owned();
        let handle = tokio::spawn(async move {
            let mut tick = tokio::time::interval(period);
            loop {
                tick.tick().await;
                match me.usage(&id, bytes, None).await {
                    Ok(o) if o.capped => {
                        tracing::info!(iccid = %id, "quota exhausted: no traffic until a top-up")
                    }
                    Ok(_) => {}
                    Err(e) => tracing::warn!(iccid = %id, "scheduled usage failed: {e:#}"),
                }
            }
        });
        if let Some(old) = self.schedules.lock().await.insert(iccid.to_owned(), handle) {
            old.abort();
        }
        Ok(())
    }
}
