//! The dispatch benchmark: profile orders (DownloadOrder + ConfirmOrder with release) against the SM-DP+
//! simulator with zero injected latency, measured twice over the same loopback HTTP:
//!
//! - **native**: the two ES2+ calls made directly from Rust (reqwest): the simulator's own time plus the
//!   client's;
//! - **native-fresh-conn**: the same, with a new TCP connection per call (as the component's outbound
//!   `wasi:http` makes them), separating connection set-up from the rest;
//! - **component**: `dispatch.order-profile` in the real `dispatch.wasm` on wasmtime (the test-kit's host
//!   boundary with real outbound HTTP): ES2+ plus catalog, journal and SIM records in key-value, and the wasm
//!   boundary.
//!
//! The difference of the mean latencies is the host's overhead per dispatch beyond the simulator's own time.

use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use esim402_host::devstack::spawn_announcing;
use esim402_host::kv::{MemoryStore, SharedBackend};
use esim402_testkit::{Kit, Scripted, types};
use serde_json::json;

struct Sim {
    child: Child,
    url: String,
}

impl Drop for Sim {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_sim(bin: &std::path::Path) -> anyhow::Result<Sim> {
    let (child, url) = spawn_announcing(
        Command::new(bin)
            .args(["--listen", "127.0.0.1:0"])
            .env("SMDP_SIM_LOG", "warn")
            .stderr(Stdio::null()),
        "smdp-sim listening on ",
    )
    .with_context(|| format!("start {}", bin.display()))?;
    Ok(Sim { child, url })
}

/// Mean and p99 of a sample, in milliseconds.
fn stats(mut lat: Vec<Duration>) -> (usize, f64, f64) {
    lat.sort_unstable();
    let n = lat.len();
    if n == 0 {
        return (0, 0.0, 0.0);
    }
    let mean = lat.iter().map(Duration::as_secs_f64).sum::<f64>() / n as f64 * 1e3;
    let p99 = lat[((n - 1) * 99 / 100).min(n - 1)].as_secs_f64() * 1e3;
    (n, mean, p99)
}

async fn native_worker(
    url: String,
    until: Instant,
    seq: Arc<AtomicU64>,
    keep_alive: bool,
) -> anyhow::Result<Vec<Duration>> {
    let mut http = reqwest::Client::builder();
    if !keep_alive {
        // A new TCP connection per call, as wasmtime-wasi-http's default sender makes for the component.
        http = http.pool_max_idle_per_host(0);
    }
    let http = http.build()?;
    let base = format!("{url}/tmobile/gsma/rsp2/es2plus");
    let mut lat = Vec::new();
    while Instant::now() < until {
        let n = seq.fetch_add(1, Ordering::Relaxed);
        let t = Instant::now();
        let header = |f: &str| json!({"functionRequesterIdentifier": "esim402-tmobile", "functionCallIdentifier": format!("BENCH-{f}-{n}")});
        let r: serde_json::Value = http
            .post(format!("{base}/downloadOrder"))
            .header("x-admin-protocol", "gsma/rsp/v2.5.0")
            .json(&json!({"header": header("d"), "profileType": "tmo-iot-data"}))
            .send()
            .await?
            .json()
            .await?;
        let iccid = r["iccid"].as_str().context("no iccid")?.to_owned();
        let r: serde_json::Value = http
            .post(format!("{base}/confirmOrder"))
            .header("x-admin-protocol", "gsma/rsp/v2.5.0")
            .json(&json!({"header": header("c"), "iccid": iccid, "releaseFlag": true}))
            .send()
            .await?
            .json()
            .await?;
        if r["matchingId"].as_str().is_none() {
            bail!("confirmOrder failed: {r}");
        }
        lat.push(t.elapsed());
    }
    Ok(lat)
}

async fn component_worker(
    url: String,
    store: SharedBackend,
    until: Instant,
    seq: Arc<AtomicU64>,
) -> anyhow::Result<Vec<Duration>> {
    let mut kit = Kit::builder("dispatch")
        .store(store)
        .var("smdp_url", &url)
        .allow(&url)
        .respond(|_| Scripted::Forward)
        .build()
        .await?;
    let mut lat = Vec::new();
    while Instant::now() < until {
        let invoice = format!("bench-{}", seq.fetch_add(1, Ordering::Relaxed));
        let req = types::ActivationRequest {
            region: "us-west".into(),
            data_mb: 100,
            carrier: Some("tmobile".into()),
            eid: None,
            payer: None,
            networks: Vec::new(),
            allow_failover: false,
        };
        let t = Instant::now();
        let sim = kit
            .call(async move |a, g| {
                g.dispatch()
                    .call_order_profile(
                        a,
                        req,
                        invoice,
                        "0x70997970C51812dc3A010C7d01b50e0d17dc79C8".into(),
                        None,
                        1_764_000_000,
                        None,
                    )
                    .await
            })
            .await?;
        match sim {
            Ok(s) if s.activation_code.is_some() => lat.push(t.elapsed()),
            other => bail!("order failed: {other:?}"),
        }
    }
    Ok(lat)
}

/// Run both measurements for `secs` each with `concurrency` workers.
pub async fn run(sim_bin: &std::path::Path, concurrency: usize, secs: u64) -> anyhow::Result<()> {
    let sim = start_sim(sim_bin)?;
    // Enough profiles for the run (the simulator mints more on request).
    reqwest::Client::new()
        .put(format!(
            "{}/admin/operators/tmobile/pools/tmo-iot-data",
            sim.url
        ))
        .json(&json!({"available": 500_000}))
        .send()
        .await?
        .error_for_status()?;
    let seq = Arc::new(AtomicU64::new(0));
    let mut results = Vec::new();
    for phase in ["native", "native-fresh-conn", "component"] {
        let store: SharedBackend = Arc::new(MemoryStore::default());
        // Warm-up (compiles the component once, fills connection pools), then the measured run.
        for measured in [false, true] {
            let secs = if measured { secs } else { 1 };
            let until = Instant::now() + Duration::from_secs(secs);
            let start = Instant::now();
            let mut tasks = Vec::new();
            for _ in 0..concurrency {
                let (url, seq, store) = (sim.url.clone(), seq.clone(), store.clone());
                tasks.push(tokio::spawn(async move {
                    if phase == "native" {
                        native_worker(url, until, seq, true).await
                    } else if phase == "native-fresh-conn" {
                        native_worker(url, until, seq, false).await
                    } else {
                        component_worker(url, store, until, seq).await
                    }
                }));
            }
            let mut lat = Vec::new();
            for t in tasks {
                lat.extend(t.await??);
            }
            if measured {
                let elapsed = start.elapsed().as_secs_f64();
                let (n, mean, p99) = stats(lat);
                println!(
                    "dispatch {phase:>17}: {n} orders in {elapsed:.1}s = {:.0}/s, mean {mean:.2}ms, p99 {p99:.2}ms",
                    n as f64 / elapsed
                );
                results.push((n as f64 / elapsed, mean));
            }
        }
    }
    if let [
        (native_rate, native_mean),
        (fresh_rate, fresh_mean),
        (comp_rate, comp_mean),
    ] = results[..]
    {
        println!(
            "dispatch overhead: {:.2}ms per dispatch beyond the simulator's own time (component/native throughput = {:.2})",
            comp_mean - native_mean,
            comp_rate / native_rate
        );
        println!(
            "  of which connection set-up (fresh-conn - native): {:.2}ms; the rest (wasm, key-value, outbound plumbing): {:.2}ms (component/fresh-conn throughput = {:.2})",
            fresh_mean - native_mean,
            comp_mean - fresh_mean,
            comp_rate / fresh_rate
        );
    }
    Ok(())
}
