//! The `paid` benchmark: paid activations end to end on the embedded dev stack. The host (`esim402 up` with its
//! dev stack: anvil + the EIP-3009 test token + the SM-DP+ simulator) is started as a child; `count` activations
//! run with `concurrency` workers, each:
//!
//! 1. `POST /v1/esim/activate` → 402 with `PAYMENT-REQUIRED` (a new invoice);
//! 2. decode the challenge, sign an EIP-3009 authorization for its first requirement with the demo agent's key
//!    (`sign_authorization`, random nonce);
//! 3. the same request with `PAYMENT-SIGNATURE` → 200 with an `LPA:1$` activation code: the host verifies
//!    (chain reads), claims the payment, orders the profile from the simulator (DownloadOrder + ConfirmOrder),
//!    then settles (one `transferWithAuthorization` sent by the facilitator, mined by anvil), appending to the
//!    ledger along the way.
//!
//! Checks at the end: every activation answered 200, the ledger verifies, and the facilitator sent exactly one
//! transaction per activation (its account nonce on anvil).

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use alloy_primitives::U256;
use anyhow::{Context, bail};
use esim402_core::Network;
use esim402_core::x402::exact::{TokenDomain, TransferAuthorization, sign_authorization};
use esim402_core::x402::header::{decode_payment_required_header, encode_payment_payload_header};
use esim402_core::x402::wire::{
    ExactEvmPayload, PaymentPayload, PaymentPayloadV2, PaymentRequirements,
};
use esim402_host::devstack::chain;
use serde_json::{Value, json};

use crate::{cpu_time, pct, rss_kib};

const ACTIVATION: &str = r#"{"region":"us-west","data_mb":100}"#;
/// us-west's default carrier and the profile type it orders (crates/core/catalog/carriers.toml).
const POOL: &str = "tmobile/pools/tmo-iot-data";

/// What a run measured.
#[derive(Default)]
struct Samples {
    /// The paid request alone (with `PAYMENT-SIGNATURE`).
    paid: Vec<Duration>,
    /// The unpaid request that returns the 402.
    challenge: Vec<Duration>,
    ok: u64,
    failures: Vec<String>,
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// `POST /v1/esim/activate` without payment: the 402's `PAYMENT-REQUIRED` header (the answer read to its end).
async fn payment_required(http: &reqwest::Client, url: &str) -> anyhow::Result<String> {
    let r = http
        .post(format!("{url}/v1/esim/activate"))
        .header("content-type", "application/json")
        .body(ACTIVATION)
        .send()
        .await?;
    if r.status().as_u16() != 402 {
        bail!("expected 402, got {}: {}", r.status(), r.text().await?);
    }
    let header = r
        .headers()
        .get("payment-required")
        .context("402 without PAYMENT-REQUIRED")?
        .to_str()?
        .to_owned();
    r.bytes().await?;
    Ok(header)
}

/// The first payment requirement of a `PAYMENT-REQUIRED` header.
fn first_requirement(header: &str) -> anyhow::Result<PaymentRequirements> {
    let required = decode_payment_required_header(header)?;
    required
        .accepts
        .into_iter()
        .next()
        .context("no requirement")
}

/// One activation: 402, sign, pay. The two latencies and the answer, or why it failed.
pub(crate) async fn activate(
    http: &reqwest::Client,
    url: &str,
    key: &k256::ecdsa::SigningKey,
    from: alloy_primitives::Address,
) -> anyhow::Result<(Duration, Duration, Value)> {
    let t = Instant::now();
    let header = payment_required(http, url).await?;
    let challenge = t.elapsed();
    let req = first_requirement(&header)?;
    let network = Network::parse(&req.network).map_err(|e| anyhow::anyhow!("{e}"))?;
    let mut nonce = [0u8; 32];
    getrandom::fill(&mut nonce).map_err(|e| anyhow::anyhow!("getrandom: {e}"))?;
    let auth = TransferAuthorization {
        from,
        to: req.pay_to.parse()?,
        value: req.amount.parse()?,
        valid_after: U256::ZERO,
        valid_before: U256::from(now() + req.max_timeout_seconds),
        nonce: nonce.into(),
    };
    let domain = TokenDomain {
        name: req.eip712_name().context("no EIP-712 name")?.to_owned(),
        version: req
            .eip712_version()
            .context("no EIP-712 version")?
            .to_owned(),
        chain_id: network.chain_id().0,
        verifying_contract: req.asset.parse()?,
    };
    let signature = sign_authorization(key, &auth, &domain)?;
    let payment = encode_payment_payload_header(&PaymentPayload::V2(PaymentPayloadV2 {
        resource: None,
        accepted: req,
        payload: ExactEvmPayload {
            signature: format!("0x{}", hex::encode(signature)),
            authorization: auth.to_wire(),
        },
        extensions: None,
    }));
    let t = Instant::now();
    let r = http
        .post(format!("{url}/v1/esim/activate"))
        .header("content-type", "application/json")
        .header("payment-signature", payment)
        .body(ACTIVATION)
        .send()
        .await?;
    let status = r.status().as_u16();
    let body: Value = r.json().await.unwrap_or(Value::Null);
    let paid = t.elapsed();
    if status != 200 {
        bail!("expected 200, got {status}: {body}");
    }
    if !body["activation_code"]
        .as_str()
        .is_some_and(|c| c.starts_with("LPA:1$"))
    {
        bail!("200 without an activation code: {body}");
    }
    Ok((challenge, paid, body))
}

/// `count` activations with `concurrency` workers; stops starting new ones after `deadline`.
async fn drive(
    url: &str,
    key: &k256::ecdsa::SigningKey,
    count: u64,
    concurrency: usize,
    deadline: Instant,
) -> Samples {
    let from = esim402_core::x402::exact::address_of(key.verifying_key());
    let next = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for _ in 0..concurrency.max(1) {
        let (url, key, next) = (url.to_owned(), key.clone(), next.clone());
        tasks.push(tokio::spawn(async move {
            let http = reqwest::Client::builder()
                .pool_max_idle_per_host(1)
                .timeout(Duration::from_secs(60))
                .build()
                .unwrap_or_default();
            let mut s = Samples::default();
            while Instant::now() < deadline && next.fetch_add(1, Ordering::Relaxed) < count {
                match activate(&http, &url, &key, from).await {
                    Ok((challenge, paid, _)) => {
                        s.challenge.push(challenge);
                        s.paid.push(paid);
                        s.ok += 1;
                    }
                    Err(e) => s.failures.push(format!("{e:#}")),
                }
            }
            s
        }));
    }
    let mut all = Samples::default();
    for t in tasks {
        match t.await {
            Ok(s) => {
                all.paid.extend(s.paid);
                all.challenge.extend(s.challenge);
                all.ok += s.ok;
                all.failures.extend(s.failures);
            }
            Err(e) => all.failures.push(format!("worker: {e}")),
        }
    }
    all
}

async fn rpc(
    http: &reqwest::Client,
    url: &str,
    method: &str,
    params: Value,
) -> anyhow::Result<Value> {
    let r: Value = http
        .post(url)
        .json(&json!({"jsonrpc": "2.0", "id": 1, "method": method, "params": params}))
        .send()
        .await?
        .json()
        .await?;
    if let Some(e) = r.get("error") {
        bail!("{method}: {e}");
    }
    Ok(r["result"].clone())
}

/// The demo agent's key from `.spin/devstack.json`, once the file is checked to be this host's (against what the
/// host printed): another `esim402 up` in the same directory would overwrite it.
pub fn demo_agent_key(
    printed: &HashMap<String, String>,
) -> anyhow::Result<k256::ecdsa::SigningKey> {
    let path = printed
        .get("devstack_json")
        .context("the host printed no dev stack (is anvil installed? run scripts/setup.sh)")?;
    let file: Value = serde_json::from_str(
        &std::fs::read_to_string(path).with_context(|| format!("read {path}"))?,
    )?;
    for k in ["rpc_url", "smdp_url", "token_address"] {
        let (Some(a), Some(b)) = (printed.get(k), file[k].as_str()) else {
            bail!("dev stack fact {k} missing");
        };
        if a != b {
            bail!("{path} belongs to another esim402 up ({k} {b} is not this host's {a})");
        }
    }
    let key = file["demo_agent_private_key"]
        .as_str()
        .context("no demo_agent_private_key in devstack.json")?;
    Ok(k256::ecdsa::SigningKey::from_slice(&hex::decode(
        key.trim_start_matches("0x"),
    )?)?)
}

/// Run the scenario against the app at `url` served with its dev stack: `server` is the process that serves it
/// (its memory is reported), `procs` every process whose CPU time counts, by name.
#[allow(
    clippy::too_many_arguments,
    reason = "one call site per runtime, each argument named there"
)]
pub async fn run(
    server: u32,
    procs: &[(String, u32)],
    url: &str,
    printed: &HashMap<String, String>,
    count: u64,
    concurrency: usize,
    limit: Duration,
    kv: &str,
) -> anyhow::Result<u64> {
    let key = demo_agent_key(printed)?;
    let (rpc_url, smdp_url) = (&printed["rpc_url"], &printed["smdp_url"]);
    let http = reqwest::Client::new();
    let warmup = concurrency.max(1) as u64;
    // The dev stack funds the demo agent with 1 000 test USDC (~2 400 activations at the default price): a
    // longer run gets the rest minted first.
    let price: U256 = first_requirement(&payment_required(&http, url).await?)?
        .amount
        .parse()?;
    let minted = chain::fund(
        rpc_url,
        printed["token_address"].parse()?,
        esim402_core::x402::exact::address_of(key.verifying_key()),
        price * U256::from(count + warmup),
    )
    .await?;
    if !minted.is_zero() {
        println!("minted {minted} test USDC (atomic units) to the demo agent for this run");
    }
    // Each activation consumes one profile: make sure the pool outlasts the run (default 1000 per type).
    http.put(format!("{smdp_url}/admin/operators/{POOL}"))
        .json(&json!({"available": count + warmup + 100}))
        .send()
        .await?
        .error_for_status()
        .context("refill the simulator's pool")?;
    let (rss_idle, _) = rss_kib(server);
    let warm = drive(url, &key, warmup, concurrency, Instant::now() + limit).await;
    if !warm.failures.is_empty() {
        bail!("warm-up failed: {}", warm.failures[0]);
    }
    let cpu_before: Vec<Duration> = procs.iter().map(|(_, p)| cpu_time(Some(*p))).collect();
    let bench_before = cpu_time(None);
    let start = Instant::now();
    let mut run = drive(url, &key, count, concurrency, start + limit).await;
    let elapsed = start.elapsed();
    let (rss, hwm) = rss_kib(server);
    let cpu: Vec<(String, Duration)> = procs
        .iter()
        .zip(&cpu_before)
        .map(|((name, p), before)| (name.clone(), cpu_time(Some(*p)).saturating_sub(*before)))
        .chain(std::iter::once((
            "bench (client + signing)".to_owned(),
            cpu_time(None).saturating_sub(bench_before),
        )))
        .collect();

    run.paid.sort_unstable();
    run.challenge.sort_unstable();
    let ms = |v: &[Duration], p: f64| pct(v, p).as_secs_f64() * 1e3;
    println!(
        "scenario=Paid kv={kv} concurrency={concurrency} count={count} (+{warmup} warm-up) duration={:.1}s",
        elapsed.as_secs_f64()
    );
    println!(
        "activations: 200={} failed={} activations/s={:.1} (402 + sign + paid request)",
        run.ok,
        run.failures.len(),
        run.ok as f64 / elapsed.as_secs_f64()
    );
    println!(
        "paid request alone: p50={:.1}ms p90={:.1}ms p99={:.1}ms max={:.1}ms",
        ms(&run.paid, 0.5),
        ms(&run.paid, 0.9),
        ms(&run.paid, 0.99),
        ms(&run.paid, 1.0)
    );
    let slow = run
        .paid
        .iter()
        .filter(|d| **d >= Duration::from_millis(250))
        .count();
    println!(
        "paid requests of 250 ms or more (the verifier's longest receipt poll interval): {slow} of {}",
        run.paid.len()
    );
    println!(
        "402 challenge:      p50={:.1}ms p90={:.1}ms p99={:.1}ms",
        ms(&run.challenge, 0.5),
        ms(&run.challenge, 0.9),
        ms(&run.challenge, 0.99)
    );
    println!(
        "server rss idle={:.1}MiB after={:.1}MiB peak={:.1}MiB (the serving process only; anvil and smdp-sim are separate processes)",
        rss_idle as f64 / 1024.0,
        rss as f64 / 1024.0,
        hwm as f64 / 1024.0
    );

    let per = |d: &Duration| d.as_secs_f64() * 1e3 / run.ok.max(1) as f64;
    let total: Duration = cpu.iter().map(|(_, d)| *d).sum();
    println!(
        "cpu per activation: {} = {:.1}ms over {:.1}s wall on 2 cores ({:.0}% of the machine)",
        cpu.iter()
            .map(|(n, d)| format!("{n} {:.1}ms", per(d)))
            .collect::<Vec<_>>()
            .join(", "),
        per(&total),
        elapsed.as_secs_f64(),
        total.as_secs_f64() / elapsed.as_secs_f64() / 2.0 * 100.0
    );

    // Checks: every activation paid once, the ledger intact.
    let verify: Value = http
        .get(format!("{url}/v1/ledger/verify"))
        .send()
        .await?
        .json()
        .await?;
    let sent = rpc(
        &http,
        rpc_url,
        "eth_getTransactionCount",
        json!([esim402_host::devstack::chain::FACILITATOR, "latest"]),
    )
    .await?;
    let sent = u64::from_str_radix(sent.as_str().unwrap_or("0x0").trim_start_matches("0x"), 16)?;
    println!(
        "checks: ledger verify={verify} facilitator transactions={sent} (activations incl. warm-up: {})",
        run.ok + warm.ok
    );
    for f in run.failures.iter().take(5) {
        println!("  failure: {f}");
    }
    if !run.failures.is_empty() {
        // What the node holds for the facilitator: a gap below queued transactions stalls every later one.
        let pending = rpc(
            &http,
            rpc_url,
            "eth_getTransactionCount",
            json!([esim402_host::devstack::chain::FACILITATOR, "pending"]),
        )
        .await
        .unwrap_or_default();
        let pool = rpc(&http, rpc_url, "txpool_inspect", json!([]))
            .await
            .unwrap_or_default();
        println!("  facilitator pending count {pending}; node pool {pool}");
    }
    if run.ok != count {
        bail!("{} of {count} activations answered 200", run.ok);
    }
    if verify["ok"] != true {
        bail!("the ledger does not verify: {verify}");
    }
    if sent != run.ok + warm.ok {
        bail!(
            "the facilitator sent {sent} transactions for {} activations",
            run.ok + warm.ok
        );
    }
    Ok(run.ok + warm.ok)
}

/// What `activations` paid activations left in the SQLite store at `db` (read once the server has stopped: it
/// holds the file while it runs).
pub fn report_store(db: &std::path::Path, activations: u64) {
    match stored_bytes(db) {
        Ok((rows, bytes)) => println!(
            "store: {rows} keys, {:.1} MiB of keys and values after {activations} activations ({:.1} KiB per activation); file {:.1} MiB",
            bytes as f64 / 1_048_576.0,
            bytes as f64 / 1024.0 / activations.max(1) as f64,
            file_mib(db),
        ),
        Err(e) => println!("store: not read ({e:#})"),
    }
}

/// Keys, and bytes of keys and values, in the SQLite store at `db` (read-only).
fn stored_bytes(db: &std::path::Path) -> anyhow::Result<(u64, u64)> {
    let conn =
        rusqlite::Connection::open_with_flags(db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)?;
    let (rows, bytes): (i64, Option<i64>) = conn.query_row(
        "SELECT count(*), sum(length(key) + length(value)) FROM spin_key_value",
        [],
        |r| Ok((r.get(0)?, r.get(1)?)),
    )?;
    Ok((
        u64::try_from(rows).unwrap_or(0),
        u64::try_from(bytes.unwrap_or(0)).unwrap_or(0),
    ))
}

fn file_mib(path: &std::path::Path) -> f64 {
    std::fs::metadata(path).map_or(0.0, |m| m.len() as f64 / 1_048_576.0)
}
