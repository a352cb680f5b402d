//! The `usage` benchmark: receipt ingest (`POST /v1/usage`, batches of `--batch` receipts, signature
//! verification included) through the host, against the same verification done natively by the kernel.
//!
//! 1. The host starts with its dev stack; `--sims` SIMs are activated with real paid activations (100 MB each).
//! 2. `count` receipts are signed with the carrier's dev key (not measured), spread over the SIMs, each SIM its
//!    own session with consecutive `seq`.
//! 3. Native: the kernel's `usage::receipt::verify` over every receipt on one thread → receipts/s.
//! 4. Wasm, verification only: batches of receipts naming a SIM nobody metered, one client: the component
//!    parses, recovers every signature and refuses (`unknown_sim`) without claiming → receipts/s; the ratio to
//!    step 3 is the wasm cost of the verification step.
//! 5. Ingest: every batch posted once by `--concurrency` clients (round-robin over `--instances` hosts sharing
//!    one Redis with `--kv redis`) → receipts/s and batch latency. Checks: every receipt accepted exactly once
//!    and each SIM's `used_bytes` equals what was sent.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, bail};
use esim402_core::CarrierId;
use esim402_core::esim::catalog::Catalog;
use esim402_core::esim::iccid::Iccid;
use esim402_core::esim::plmn::{Plmn, RoamingPolicy};
use esim402_core::usage::receipt::{
    Receipt, Recoveries, SimTerms, dev_signing_key, sign_page, verify_cached,
};
use esim402_core::x402::exact::address_of;
use serde_json::{Value, json};

use crate::{cpu_time, pct};

const RECEIPT_BYTES: u64 = 1_000;

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// `count` receipts spread over `iccids`, signed one by one, or (`paged`) one page signature per `batch`.
fn sign_all(
    iccids: &[String],
    count: usize,
    session_tag: &str,
    batch: usize,
    paged: bool,
) -> anyhow::Result<Vec<Receipt>> {
    let carrier = CarrierId::parse("tmobile").map_err(|e| anyhow::anyhow!("{e}"))?;
    let key = dev_signing_key(&carrier);
    let plmn = Plmn::parse("310-260").map_err(|e| anyhow::anyhow!("{e}"))?;
    let t = now();
    let mut seqs = vec![0u64; iccids.len()];
    let unsigned = (0..count)
        .map(|i| {
            let s = i % iccids.len();
            seqs[s] += 1;
            Ok(Receipt {
                carrier: carrier.clone(),
                iccid: Iccid::parse(&iccids[s]).map_err(|e| anyhow::anyhow!("{e}"))?,
                plmn: plmn.clone(),
                session_id: format!("bench-{session_tag}-{s}"),
                seq: seqs[s],
                window_start: t - 900,
                window_end: t - 1,
                bytes_up: RECEIPT_BYTES / 4,
                bytes_down: RECEIPT_BYTES - RECEIPT_BYTES / 4,
                signature: Vec::new(),
                page: None,
            })
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    if paged {
        let mut out = Vec::with_capacity(count);
        for page in unsigned.chunks(batch.max(1)) {
            out.extend(sign_page(page.to_vec(), &key).map_err(|e| anyhow::anyhow!("sign: {e}"))?);
        }
        return Ok(out);
    }
    unsigned
        .into_iter()
        .map(|r| r.sign(&key).map_err(|e| anyhow::anyhow!("sign: {e}")))
        .collect()
}

fn bodies(receipts: &[Receipt], batch: usize) -> Vec<String> {
    receipts
        .chunks(batch)
        .map(|c| {
            json!({ "receipts": c.iter().map(Receipt::to_wire).collect::<Vec<_>>() }).to_string()
        })
        .collect()
}

/// Post every body once with `concurrency` clients over `urls`; per-batch latencies, accepted total, elapsed.
async fn post_all(
    urls: &[String],
    bodies: Vec<String>,
    concurrency: usize,
) -> anyhow::Result<(Vec<Duration>, u64, Duration)> {
    let bodies = Arc::new(bodies);
    let next = Arc::new(AtomicUsize::new(0));
    let start = Instant::now();
    let mut tasks = Vec::new();
    for w in 0..concurrency.max(1) {
        let (bodies, next) = (bodies.clone(), next.clone());
        let url = format!("{}/v1/usage", urls[w % urls.len()]);
        tasks.push(tokio::spawn(async move {
            let http = reqwest::Client::new();
            let mut lat = Vec::new();
            let mut accepted = 0u64;
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some(body) = bodies.get(i) else { break };
                let t = Instant::now();
                let r = http
                    .post(&url)
                    .header("content-type", "application/json")
                    .body(body.clone())
                    .send()
                    .await?;
                let status = r.status();
                let report: Value = r.json().await?;
                lat.push(t.elapsed());
                if !status.is_success() {
                    bail!("/v1/usage answered {status}: {report}");
                }
                accepted += report["totals"]["accepted"].as_u64().unwrap_or(0);
            }
            Ok::<_, anyhow::Error>((lat, accepted))
        }));
    }
    let mut lat = Vec::new();
    let mut accepted = 0;
    for t in tasks {
        let (l, a) = t.await??;
        lat.extend(l);
        accepted += a;
    }
    Ok((lat, accepted, start.elapsed()))
}

/// Run the scenario: `urls[0]` is the host with the dev stack (`printed`), the others share its store.
#[allow(
    clippy::too_many_arguments,
    reason = "the scenario's knobs, passed through from the CLI"
)]
pub async fn run(
    urls: &[String],
    procs: &[(&str, u32)],
    printed: &HashMap<String, String>,
    count: usize,
    batch: usize,
    paged: bool,
    sims: usize,
    concurrency: usize,
    kv: &str,
) -> anyhow::Result<()> {
    let key = crate::paid::demo_agent_key(printed)?;
    let from = address_of(key.verifying_key());
    let http = reqwest::Client::new();
    let mut iccids = Vec::new();
    let mut tokens = Vec::new();
    for _ in 0..sims.max(1) {
        let (_, _, body) = crate::paid::activate(&http, &urls[0], &key, from).await?;
        iccids.push(body["iccid"].as_str().context("no iccid")?.to_owned());
        // The balance is the owner's to read: the SIM's access token from the paid answer.
        tokens.push(
            body["access_token"]
                .as_str()
                .context("no access_token")?
                .to_owned(),
        );
    }
    let tag = format!("{:x}", now());
    let receipts = sign_all(&iccids, count, &tag, batch, paged)?;

    // Native verification, one thread (page signatures recovered once per batch, as ingest does).
    let carrier = CarrierId::parse("tmobile").map_err(|e| anyhow::anyhow!("{e}"))?;
    let signer = Catalog::builtin()
        .carrier(&carrier)
        .and_then(|c| c.receipt_signer)
        .context("tmobile has no receipt signer")?;
    let roaming = RoamingPolicy::default();
    let t = Instant::now();
    for chunk in receipts.chunks(batch.max(1)) {
        let mut recoveries = Recoveries::default();
        for r in chunk {
            verify_cached(
                r,
                |_| Some(signer),
                Some(SimTerms {
                    carrier: &carrier,
                    roaming: &roaming,
                    opened_at: None,
                    retired_at: None,
                }),
                now(),
                &mut recoveries,
            )
            .map_err(|e| anyhow::anyhow!("native verify: {e}"))?;
        }
    }
    let native = receipts.len() as f64 / t.elapsed().as_secs_f64();

    // Wasm verification only: receipts for a SIM nobody metered (refused after the signature check).
    let ghost = vec![
        Iccid::with_check_digit("899999000000000001")
            .map_err(|e| anyhow::anyhow!("{e}"))?
            .to_string(),
    ];
    let n_ghost = count.min(5_000);
    let ghosts = sign_all(&ghost, n_ghost, &tag, batch, paged)?;
    let (_, _, took) = post_all(&urls[..1], bodies(&ghosts, batch), 1).await?;
    let wasm_verify = n_ghost as f64 / took.as_secs_f64();

    // Ingest, with the CPU time each server process and the bench spent on it.
    let bodies = bodies(&receipts, batch);
    let cpu_before: Vec<Duration> = procs.iter().map(|(_, p)| cpu_time(Some(*p))).collect();
    let bench_before = cpu_time(None);
    let (mut lat, accepted, elapsed) = post_all(urls, bodies, concurrency).await?;
    let per_receipt = |d: Duration| d.as_secs_f64() * 1e6 / receipts.len() as f64;
    let mut cpu: Vec<(String, f64)> = Vec::new();
    for ((name, pid), before) in procs.iter().zip(cpu_before) {
        let d = cpu_time(Some(*pid)).saturating_sub(before);
        match cpu.iter_mut().find(|(n, _)| n == name) {
            Some((_, t)) => *t += per_receipt(d),
            None => cpu.push(((*name).to_owned(), per_receipt(d))),
        }
    }
    cpu.push((
        "bench".into(),
        per_receipt(cpu_time(None).saturating_sub(bench_before)),
    ));
    lat.sort_unstable();
    if accepted != receipts.len() as u64 {
        bail!("{accepted} of {} receipts accepted", receipts.len());
    }
    let per_sim = receipts.len() / iccids.len();
    for (i, iccid) in iccids.iter().enumerate() {
        let b: Value = http
            .get(format!("{}/v1/esim/{iccid}/balance", urls[urls.len() - 1]))
            .bearer_auth(&tokens[i])
            .send()
            .await?
            .json()
            .await?;
        let want =
            (per_sim + usize::from(i < receipts.len() % iccids.len())) as u64 * RECEIPT_BYTES;
        if b["used_bytes"].as_u64() != Some(want) {
            bail!(
                "{iccid}: used_bytes {} but {want} were sent",
                b["used_bytes"]
            );
        }
    }
    let rps = receipts.len() as f64 / elapsed.as_secs_f64();
    println!(
        "scenario=usage kv={kv} instances={} receipts={} batch={batch} paged={paged} sims={} concurrency={concurrency}",
        urls.len(),
        receipts.len(),
        iccids.len()
    );
    println!(
        "ingest receipts/s={rps:.0} batch p50={:.1}ms p99={:.1}ms (every receipt accepted once, balances exact)",
        pct(&lat, 0.5).as_secs_f64() * 1e3,
        pct(&lat, 0.99).as_secs_f64() * 1e3
    );
    println!(
        "cpu per receipt (10 ms ticks): {}",
        cpu.iter()
            .map(|(n, us)| format!("{n}={us:.0}us"))
            .collect::<Vec<_>>()
            .join(" ")
    );
    println!(
        "verification receipts/s native={native:.0} wasm={wasm_verify:.0} native/wasm={:.1}x",
        native / wasm_verify
    );
    Ok(())
}
