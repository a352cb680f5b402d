//! Peer comparisons, every peer measured in one run under the same load, one peer at a time (the others idle):
//!
//! - `compare402`: 402 issuance (`POST /v1/esim/activate {"region":"us-west","data_mb":N}` without payment → 402
//!   with `PAYMENT-REQUIRED`) through
//!   (a) the host on its default SQLite store (`esim402 up --no-dev-stack`),
//!   (b) the official x402 Python resource server (x402 2.25 Flask middleware, `bench/peers/flask_402.py`, on
//!   werkzeug's threaded server; its start-up `GET /supported` goes to the host's facilitator API), and
//!   (c) the native baseline (`crate::native402`: the same kernel code on axum, a subprocess of this binary).
//!   With `--spin-peer`, also (d) the same app under the real `spin up` (Spin 4.1) on Spin's SQLite store: what
//!   a user deploying to Spin gets, and where the wasm host's own floor lies next to the native server.
//!   `--concurrency` keep-alive clients, `--warmup` then `--duration` seconds per peer, every answer checked (402
//!   and the header present; one probe per peer also decodes the header as x402 v2). `--rounds N` measures the
//!   three in turn N times against the same processes and ends with the min, median and max of each ratio
//!   (this VM's speed, and the Python server's own rate, drift between runs).
//! - `compare-verify`: the x402 facilitator `POST /verify` of valid v2 `exact` payments through the host (with
//!   its dev stack: anvil + the EIP-3009 token) and through the official Python facilitator (x402 2.25
//!   `x402FacilitatorSync`, `tests/peers/py_facilitator.py`) pointed at the same anvil with its own dev account
//!   (#3). `--count` distinct payments from the demo agent (random nonces, signed beforehand), each verified
//!   once per peer by `--concurrency` clients within `--duration` seconds per peer, every answer `isValid: true`.
//!
//! Every server is on 127.0.0.1 and stopped by its PID when the run ends, also on error ([`Proc`], [`Host`]) or
//! when the bench is interrupted (SIGINT/SIGTERM: `stop_children_on_signal`).

use std::collections::{BTreeSet, VecDeque};
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use alloy_primitives::U256;
use anyhow::{Context, bail};
use esim402_core::x402::exact::{
    TokenDomain, TransferAuthorization, address_of, sign_authorization,
};
use esim402_core::x402::header::decode_payment_required_header;
use esim402_core::x402::wire::{
    ExactEvmPayload, Extra, PaymentPayload, PaymentPayloadV2, PaymentRequirements,
};
use serde_json::{Value, json};

use crate::{Args, Host, Scenario, cpu_time, drive, pct, rss_kib};

/// A server this bench started (a Python peer, the native baseline): stopped by its PID on drop (SIGTERM, then
/// SIGKILL after 3 s). Its stdin is a pipe held here, so peers that watch it exit when the bench is gone.
pub struct Proc {
    name: String,
    child: Child,
    _stdin: Option<ChildStdin>,
    stderr: Arc<Mutex<VecDeque<String>>>,
}

impl Proc {
    /// Start `cmd` and wait (at most `timeout`) for it to print `listening <port>` on stdout.
    pub fn start(name: &str, mut cmd: Command, timeout: Duration) -> anyhow::Result<(Self, u16)> {
        cmd.stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().with_context(|| format!("start {name}"))?;
        crate::track(child.id(), "TERM");
        let stdin = child.stdin.take();
        let stdout = child.stdout.take();
        let stderr = child.stderr.take();
        let tail = Arc::new(Mutex::new(VecDeque::new()));
        let proc = Self {
            name: name.to_owned(),
            child,
            _stdin: stdin,
            stderr: tail.clone(),
        };
        let (Some(stdout), Some(stderr)) = (stdout, stderr) else {
            bail!("{name}: no stdout/stderr pipe");
        };
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Ok(mut t) = tail.lock() {
                    if t.len() == 20 {
                        t.pop_front();
                    }
                    t.push_back(line);
                }
            }
        });
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Some(port) = line.strip_prefix("listening ") {
                    let _ = tx.send(port.trim().parse::<u16>().ok());
                }
            }
        });
        match rx.recv_timeout(timeout) {
            Ok(Some(port)) => Ok((proc, port)),
            Ok(None) => bail!("{name} printed an unreadable `listening` line"),
            Err(mpsc::RecvTimeoutError::Timeout) => bail!(
                "{name} did not print `listening <port>` within {timeout:?}: {}",
                proc.stderr_tail()
            ),
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                // Give the stderr reader a moment to collect the reason.
                std::thread::sleep(Duration::from_millis(300));
                bail!("{name} exited before listening: {}", proc.stderr_tail())
            }
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    fn stderr_tail(&self) -> String {
        self.stderr
            .lock()
            .map(|t| t.iter().cloned().collect::<Vec<_>>().join("\n"))
            .unwrap_or_default()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        crate::untrack(self.child.id());
        let pid = self.child.id();
        if !esim402_host::devstack::stop_child(&mut self.child, "TERM", Duration::from_secs(3)) {
            eprintln!(
                "{} ({pid}) still running 3 s after SIGTERM: SIGKILL",
                self.name
            );
        }
    }
}

fn python(args: &Args) -> anyhow::Result<&Path> {
    if !args.python.exists() {
        bail!(
            "{} not found: scripts/setup.sh installs the x402 Python SDK there (or pass --python)",
            args.python.display()
        );
    }
    Ok(&args.python)
}

/// What one peer measured.
struct Row {
    name: String,
    ok: usize,
    failed: usize,
    elapsed: Duration,
    /// Sorted.
    lat: Vec<Duration>,
    /// CPU per successful request of the server process (and of anvil, which it uses), in ms.
    cpu: Vec<(String, f64)>,
    /// The server process's resident memory after the run.
    rss_kib: u64,
    note: String,
}

impl Row {
    fn rate(&self) -> f64 {
        self.ok as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    /// The server process's CPU ms per successful request.
    fn server_cpu(&self) -> f64 {
        self.cpu.first().map_or(0.0, |(_, v)| *v)
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn print_rows(what: &str, rows: &[Row]) {
    println!(
        "{:<42} {:>7} {:>6} {:>9} {:>7} {:>7} {:>7} {:>7}  server cpu ms/{what}; rss after",
        "peer",
        "ok",
        "failed",
        format!("{what}/s"),
        "p50 ms",
        "p90 ms",
        "p99 ms",
        "max ms"
    );
    for r in rows {
        let cpu = r
            .cpu
            .iter()
            .map(|(n, v)| format!("{n} {v:.2}"))
            .collect::<Vec<_>>()
            .join(" + ");
        println!(
            "{:<42} {:>7} {:>6} {:>9.0} {:>7.2} {:>7.2} {:>7.2} {:>7.2}  {cpu}; {:.1} MiB",
            r.name,
            r.ok,
            r.failed,
            r.rate(),
            ms(pct(&r.lat, 0.5)),
            ms(pct(&r.lat, 0.9)),
            ms(pct(&r.lat, 0.99)),
            ms(pct(&r.lat, 1.0)),
            r.rss_kib as f64 / 1024.0
        );
    }
    for r in rows.iter().filter(|r| !r.note.is_empty()) {
        println!("  {}: {}", r.name, r.note);
    }
}

fn target(ok: bool) -> &'static str {
    if ok { "met" } else { "NOT met" }
}

// ---------------------------------------------------------------------------------------------------------
// compare402

/// One probe of a peer's 402.
struct Probe {
    header_len: usize,
    body_len: usize,
    accepts: usize,
    /// The JSON body's top-level fields.
    fields: BTreeSet<String>,
}

/// One unpaid request: 402 with a `PAYMENT-REQUIRED` header that decodes as x402 v2 with an offer.
async fn probe402(url: &str) -> anyhow::Result<Probe> {
    let r = reqwest::Client::new()
        .post(format!("{url}/v1/esim/activate"))
        .header("content-type", "application/json")
        .body(r#"{"region":"us-west","data_mb":100}"#)
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
    let body = r.bytes().await?;
    let required = decode_payment_required_header(&header)
        .map_err(|e| anyhow::anyhow!("PAYMENT-REQUIRED does not decode as x402 v2: {e}"))?;
    if required.x402_version != 2 || required.accepts.is_empty() {
        bail!(
            "PAYMENT-REQUIRED: x402Version {} with {} accepts",
            required.x402_version,
            required.accepts.len()
        );
    }
    let fields = match serde_json::from_slice::<Value>(&body) {
        Ok(Value::Object(m)) => m.keys().cloned().collect(),
        _ => BTreeSet::new(),
    };
    Ok(Probe {
        header_len: header.len(),
        body_len: body.len(),
        accepts: required.accepts.len(),
        fields,
    })
}

/// Measure one peer's 402; `pids` are its server processes (their CPU and resident memory are summed: `spin up`
/// serves from a child process).
async fn measure402(
    name: &str,
    url: &str,
    pids: &[u32],
    args: &Args,
    duration: Duration,
) -> anyhow::Result<(Row, Probe)> {
    let probe = probe402(url)
        .await
        .with_context(|| format!("{name}: probe"))?;
    let warm = drive(
        url,
        Scenario::Issue402,
        args.concurrency,
        Duration::from_secs(args.warmup),
        u64::MAX,
    )
    .await;
    if warm.latencies.is_empty() && args.warmup > 0 {
        bail!(
            "{name}: warm-up produced no successful request ({} errors)",
            warm.errors
        );
    }
    let cpu_of = || -> Duration { pids.iter().map(|p| cpu_time(Some(*p))).sum() };
    let cpu_before = cpu_of();
    let start = Instant::now();
    let mut run = drive(
        url,
        Scenario::Issue402,
        args.concurrency,
        duration,
        args.max_requests,
    )
    .await;
    let elapsed = start.elapsed();
    let cpu = cpu_of().saturating_sub(cpu_before);
    let rss = pids.iter().map(|p| rss_kib(*p).0).sum();
    run.latencies.sort_unstable();
    let ok = run.latencies.len();
    let row = Row {
        name: name.to_owned(),
        ok,
        failed: usize::try_from(run.errors).unwrap_or(usize::MAX),
        elapsed,
        lat: run.latencies,
        cpu: vec![("server".into(), ms(cpu) / ok.max(1) as f64)],
        rss_kib: rss,
        note: format!(
            "402 = PAYMENT-REQUIRED {} B ({} accepts) + body {} B",
            probe.header_len, probe.accepts, probe.body_len
        ),
    };
    Ok((row, probe))
}

/// The same app under the real `spin up` (Spin 4.1, `esim402_tests::spin_binary`), on Spin's SQLite store in a
/// temporary directory, with no dev stack (as the host's peer runs): stopped by its PID when dropped.
struct SpinPeer {
    app: esim402_tests::AppProcess,
}

impl SpinPeer {
    fn start(rt: &tokio::runtime::Runtime) -> anyhow::Result<Self> {
        let bin = esim402_tests::spin_binary().map_err(|e| anyhow::anyhow!("--spin-peer: {e}"))?;
        let port = esim402_tests::free_port();
        let app = rt.block_on(esim402_tests::AppProcess::start(
            &esim402_tests::Runner::Spin(bin),
            port,
            "[key_value_store.default]\ntype = \"spin\"\npath = \"kv.db\"\n",
            &[],
        ))?;
        crate::track(app.pid(), "TERM");
        Ok(Self { app })
    }

    /// `spin up` and the process that serves (its child, `spin trigger http`).
    fn pids(&self) -> Vec<u32> {
        let mut pids = vec![self.app.pid()];
        pids.extend(
            crate::children_of(self.app.pid())
                .into_iter()
                .map(|(p, _)| p),
        );
        pids
    }
}

impl Drop for SpinPeer {
    fn drop(&mut self) {
        crate::untrack(self.app.pid());
    }
}

/// The `compare402` scenario (see the module docs).
pub fn compare402(args: &Args, duration: Duration) -> anyhow::Result<()> {
    let py = python(args)?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .worker_threads(1)
        .build()?;
    // Each guard stops its process by PID when dropped, also when a later step fails.
    let (host, url, _) = Host::start(args, false)?;
    let flask_script = Path::new(env!("CARGO_MANIFEST_DIR")).join("peers/flask_402.py");
    let mut cmd = Command::new(py);
    cmd.arg(&flask_script)
        .args(["--facilitator", &url])
        .env("PYTHONUNBUFFERED", "1");
    let (flask, flask_port) = Proc::start("python flask_402.py", cmd, Duration::from_secs(60))?;
    let mut cmd = Command::new(std::env::current_exe()?);
    cmd.env_remove("RUST_BACKTRACE");
    cmd.arg("--serve-native402");
    let (native, native_port) = Proc::start("native402", cmd, Duration::from_secs(30))?;
    let flask_url = format!("http://127.0.0.1:{flask_port}");
    let native_url = format!("http://127.0.0.1:{native_port}");
    let spin = if args.spin_peer {
        Some(SpinPeer::start(&rt)?)
    } else {
        None
    };

    println!(
        "compare402: POST /v1/esim/activate without payment, {} keep-alive clients, {}s warm-up + {}s measured per \
         peer, one peer at a time; every answer checked (402 + PAYMENT-REQUIRED); the load generator shares the machine",
        args.concurrency,
        args.warmup,
        duration.as_secs()
    );
    let kv = format!("{:?}", args.kv).to_lowercase();
    let mut failed = 0;
    let mut ratios = Vec::new();
    for round in 1..=args.rounds {
        if args.rounds > 1 {
            println!("round {round} of {}", args.rounds);
        }
        let (ours, ours_probe) = rt.block_on(measure402(
            &format!("esim402 host ({kv} store)"),
            &url,
            &[host.pid()],
            args,
            duration,
        ))?;
        let (theirs, _) = rt
            .block_on(measure402(
                "python x402 2.25 Flask middleware",
                &flask_url,
                &[flask.pid()],
                args,
                duration,
            ))
            .with_context(|| format!("its stderr:\n{}", flask.stderr_tail()))?;
        let (nat, nat_probe) = rt
            .block_on(measure402(
                "native: axum + esim402_core",
                &native_url,
                &[native.pid()],
                args,
                duration,
            ))
            .with_context(|| format!("its stderr:\n{}", native.stderr_tail()))?;
        let mut rows = vec![ours, theirs, nat];
        if let Some(spin) = &spin {
            let (row, _) = rt
                .block_on(measure402(
                    "spin up 4.1, the same app (sqlite store)",
                    &spin.app.url,
                    &spin.pids(),
                    args,
                    duration,
                ))
                .with_context(|| format!("spin up's log:\n{}", spin.app.log_text()))?;
            rows.push(row);
        }
        print_rows("req", &rows);
        if ours_probe.fields != nat_probe.fields {
            println!(
                "  warning: the native 402 body's fields differ from the host's: host {:?}, native {:?}",
                ours_probe.fields, nat_probe.fields
            );
        }
        let round = Ratios::of(&rows);
        round.print(args.concurrency);
        ratios.push(round);
        failed += rows.iter().map(|r| r.failed).sum::<usize>();
    }
    drop(spin);
    drop(native);
    drop(flask);
    drop(host);
    if args.rounds > 1 {
        Ratios::summarise(&ratios, args.concurrency);
    }
    if failed > 0 {
        bail!("{failed} requests failed");
    }
    Ok(())
}

/// The smallest, median and largest of `v` (the mean of the middle two for an even count); NaN for none.
fn min_median_max(mut v: Vec<f64>) -> (f64, f64, f64) {
    if v.is_empty() {
        return (f64::NAN, f64::NAN, f64::NAN);
    }
    v.sort_by(f64::total_cmp);
    let mid = v.len() / 2;
    let median = if v.len() % 2 == 1 {
        v[mid]
    } else {
        (v[mid - 1] + v[mid]) / 2.0
    };
    (v[0], median, v[v.len() - 1])
}

/// One round of compare402: ours against Python and native, by throughput and by server CPU per request.
struct Ratios {
    /// Our req/s over Python's.
    python: f64,
    /// Our req/s over native's.
    native: f64,
    /// Our p99, ms.
    p99: f64,
    /// Python's server CPU per request over ours.
    python_cpu: f64,
    /// Our server CPU per request over native's.
    native_cpu: f64,
    /// With `--spin-peer`: our req/s over the same app's under `spin up`, and that over native's.
    spin: Option<(f64, f64)>,
}

impl Ratios {
    /// From the rows of one round: ours, Python, native (and `spin up`, if measured).
    fn of(rows: &[Row]) -> Self {
        let (o, p, n) = (rows[0].rate(), rows[1].rate(), rows[2].rate());
        Self {
            python: o / p,
            native: o / n,
            p99: ms(pct(&rows[0].lat, 0.99)),
            python_cpu: rows[1].server_cpu() / rows[0].server_cpu(),
            native_cpu: rows[0].server_cpu() / rows[2].server_cpu(),
            spin: rows.get(3).map(|s| (o / s.rate(), s.rate() / n)),
        }
    }

    fn print(&self, clients: usize) {
        println!(
            "ratios: ours/python = {:.2}x (target >= 10x: {}); ours/native = {:.3} (target >= 0.5: {}); ours p99 = \
             {:.2} ms at {clients} clients (target < 10 ms: {})",
            self.python,
            target(self.python >= 10.0),
            self.native,
            target(self.native >= 0.5),
            self.p99,
            target(self.p99 < 10.0)
        );
        println!(
            "server CPU per request (robust on a shared machine): python / ours = {:.2}x, ours / native = {:.2}x",
            self.python_cpu, self.native_cpu
        );
        if let Some((ours, native)) = self.spin {
            println!(
                "the same app under spin up: ours / spin = {ours:.2}x; spin / native = {native:.3}"
            );
        }
    }

    /// Min, median and max of each ratio over the rounds, and in how many rounds each target was met.
    fn summarise(rounds: &[Self], clients: usize) {
        let spread = |f: fn(&Self) -> f64| min_median_max(rounds.iter().map(f).collect());
        let met = |ok: fn(&Self) -> bool| rounds.iter().filter(|r| ok(r)).count();
        let n = rounds.len();
        let (lo, med, hi) = spread(|r| r.python);
        println!(
            "over {n} rounds: ours/python min {lo:.2}x, median {med:.2}x, max {hi:.2}x (>= 10x in {} of {n})",
            met(|r| r.python >= 10.0)
        );
        let (lo, med, hi) = spread(|r| r.native);
        println!(
            "over {n} rounds: ours/native min {lo:.3}, median {med:.3}, max {hi:.3} (>= 0.5 in {} of {n})",
            met(|r| r.native >= 0.5)
        );
        let (lo, med, hi) = spread(|r| r.p99);
        println!(
            "over {n} rounds: ours p99 at {clients} clients min {lo:.2}, median {med:.2}, max {hi:.2} ms (< 10 ms in {} of {n})",
            met(|r| r.p99 < 10.0)
        );
        let (lo, med, hi) = spread(|r| r.python_cpu);
        println!(
            "over {n} rounds: server CPU per request python / ours min {lo:.2}x, median {med:.2}x, max {hi:.2}x"
        );
        let spin: Vec<(f64, f64)> = rounds.iter().filter_map(|r| r.spin).collect();
        if !spin.is_empty() {
            let (lo, med, hi) = min_median_max(spin.iter().map(|s| s.0).collect());
            println!(
                "over {n} rounds: ours / spin up min {lo:.2}x, median {med:.2}x, max {hi:.2}x"
            );
            let (lo, med, hi) = min_median_max(spin.iter().map(|s| s.1).collect());
            println!("over {n} rounds: spin up / native min {lo:.3}, median {med:.3}, max {hi:.3}");
        }
    }
}

// ---------------------------------------------------------------------------------------------------------
// compare-verify

/// anvil's dev account #3 (a public test key of the standard mnemonic): the Python facilitator's signer. The
/// dev stack uses #0 (deployer), #1 (our facilitator), #2 (recipient, treasury) and #9 (demo agent).
const PY_FACILITATOR_KEY: &str =
    "0x7c852118294e51e653712a81e05800f419141751be58f605c371e15141b007a6";
const PRICE: u64 = 420_000;
const MAX_TIMEOUT_SECS: u64 = 600;

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// `n` facilitator `/verify` bodies, each a valid payment of `requirements` with a random nonce.
fn signed_bodies(
    n: usize,
    key: &k256::ecdsa::SigningKey,
    requirements: &PaymentRequirements,
    domain: &TokenDomain,
) -> anyhow::Result<Vec<String>> {
    let from = address_of(key.verifying_key());
    let to = requirements.pay_to.parse()?;
    let valid_before = U256::from(now() + requirements.max_timeout_seconds);
    let requirements_json = serde_json::to_value(requirements)?;
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        let mut nonce = [0u8; 32];
        getrandom::fill(&mut nonce).map_err(|e| anyhow::anyhow!("getrandom: {e}"))?;
        let auth = TransferAuthorization {
            from,
            to,
            value: U256::from(PRICE),
            valid_after: U256::ZERO,
            valid_before,
            nonce: nonce.into(),
        };
        let signature = sign_authorization(key, &auth, domain)?;
        let payload = PaymentPayload::V2(PaymentPayloadV2 {
            resource: None,
            accepted: requirements.clone(),
            payload: ExactEvmPayload {
                signature: format!("0x{}", hex::encode(signature)),
                authorization: auth.to_wire(),
            },
            extensions: None,
        });
        out.push(
            json!({"x402Version": 2,
                   "paymentPayload": serde_json::from_str::<Value>(&payload.to_json())?,
                   "paymentRequirements": requirements_json})
            .to_string(),
        );
    }
    Ok(out)
}

/// POST each body to `{url}/verify` once, one worker per client (each holds one keep-alive connection), until
/// all are done or `deadline`: the latencies of `isValid: true` answers, and what came back instead of the others.
async fn verify_all(
    url: &str,
    bodies: Arc<Vec<String>>,
    clients: &[reqwest::Client],
    deadline: Instant,
) -> (Vec<Duration>, Vec<String>) {
    let next = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for http in clients {
        let (url, bodies, next) = (format!("{url}/verify"), bodies.clone(), next.clone());
        let http = http.clone();
        tasks.push(tokio::spawn(async move {
            let (mut lat, mut failures) = (Vec::new(), Vec::new());
            while Instant::now() < deadline {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some(body) = bodies.get(i) else { break };
                let t = Instant::now();
                let answer = async {
                    let r = http
                        .post(&url)
                        .header("content-type", "application/json")
                        .body(body.clone())
                        .send()
                        .await?;
                    let status = r.status();
                    let text = r.text().await?;
                    anyhow::Ok((status, text))
                }
                .await;
                let elapsed = t.elapsed();
                match answer {
                    Ok((status, text)) => {
                        let v: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
                        if status.is_success() && v["isValid"] == true {
                            lat.push(elapsed);
                        } else {
                            failures.push(format!("{status}: {text}"));
                        }
                    }
                    Err(e) => failures.push(format!("{e:#}")),
                }
            }
            (lat, failures)
        }));
    }
    let (mut lat, mut failures) = (Vec::new(), Vec::new());
    for t in tasks {
        match t.await {
            Ok((l, f)) => {
                lat.extend(l);
                failures.extend(f);
            }
            Err(e) => failures.push(format!("worker: {e}")),
        }
    }
    (lat, failures)
}

/// One peer: warm up on `warm`, then verify `bodies`; CPU is accounted to `procs` (the server first). The same
/// `concurrency` clients serve both phases, so the measured one runs on the connections the warm-up opened (the
/// Python facilitator's stdlib server listens with a backlog of 5: 32 simultaneous connects would otherwise
/// measure SYN retransmits).
async fn measure_verify(
    name: &str,
    url: &str,
    procs: &[(String, u32)],
    (warm, bodies): (Arc<Vec<String>>, Arc<Vec<String>>),
    concurrency: usize,
    limit: Duration,
) -> anyhow::Result<Row> {
    let clients: Vec<reqwest::Client> = (0..concurrency.max(1))
        .map(|_| {
            reqwest::Client::builder()
                .pool_max_idle_per_host(1)
                .timeout(Duration::from_secs(30))
                .build()
        })
        .collect::<Result<_, _>>()?;
    let (_, failures) = verify_all(url, warm, &clients, Instant::now() + limit).await;
    if let Some(f) = failures.first() {
        bail!("{name}: warm-up verify failed: {f}");
    }
    let before: Vec<Duration> = procs.iter().map(|(_, p)| cpu_time(Some(*p))).collect();
    let start = Instant::now();
    let (mut lat, failures) = verify_all(url, bodies.clone(), &clients, start + limit).await;
    let elapsed = start.elapsed();
    let ok = lat.len();
    let cpu = procs
        .iter()
        .zip(&before)
        .map(|((n, p), b)| {
            let d = cpu_time(Some(*p)).saturating_sub(*b);
            (n.clone(), ms(d) / ok.max(1) as f64)
        })
        .collect();
    lat.sort_unstable();
    let mut note = String::new();
    if ok + failures.len() < bodies.len() {
        note = format!(
            "stopped at the {}s limit after {} of {} payments",
            limit.as_secs(),
            ok + failures.len(),
            bodies.len()
        );
    }
    for f in failures.iter().take(3) {
        note.push_str(&format!("\n    failure: {f}"));
    }
    Ok(Row {
        name: name.to_owned(),
        ok,
        failed: failures.len(),
        elapsed,
        lat,
        cpu,
        rss_kib: rss_kib(procs.first().map_or(0, |(_, p)| *p)).0,
        note,
    })
}

/// The `compare-verify` scenario (see the module docs).
pub fn compare_verify(args: &Args, duration: Duration) -> anyhow::Result<()> {
    let py = python(args)?;
    if !args.py_facilitator.exists() {
        bail!(
            "{} not found (the Python facilitator peer; pass --py-facilitator)",
            args.py_facilitator.display()
        );
    }
    let count = usize::try_from(args.count.unwrap_or(2000))?.clamp(10, 20_000);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .worker_threads(1)
        .build()?;
    // Each guard stops its process by PID when dropped (the host also its dev stack), also on error.
    let (host, url, printed) = Host::start(args, true)?;
    let key = crate::paid::demo_agent_key(&printed)?;
    let fact = |k: &str| -> anyhow::Result<&String> {
        printed
            .get(k)
            .with_context(|| format!("the host printed no dev stack fact {k}"))
    };
    let rpc_url = fact("rpc_url")?.clone();
    let network = fact("network")?.clone();
    let token: alloy_primitives::Address = fact("token_address")?.parse()?;
    let recipient: alloy_primitives::Address = fact("recipient_address")?.parse()?;
    let (name, version) = (fact("token_name")?.clone(), fact("token_version")?.clone());
    let chain_id: u64 = fact("chain_id")?.parse()?;

    let mut cmd = Command::new(py);
    cmd.arg(&args.py_facilitator)
        .args(["--rpc-url", &rpc_url, "--network", &network, "--port", "0"])
        .env("X402_PEER_PRIVATE_KEY", PY_FACILITATOR_KEY)
        .env("PYTHONUNBUFFERED", "1");
    let (py_fac, py_port) = Proc::start("python py_facilitator.py", cmd, Duration::from_secs(60))?;
    let py_url = format!("http://127.0.0.1:{py_port}");

    let requirements = PaymentRequirements {
        scheme: "exact".into(),
        network: network.clone(),
        amount: PRICE.to_string(),
        asset: token.to_checksum(None),
        pay_to: recipient.to_checksum(None),
        max_timeout_seconds: MAX_TIMEOUT_SECS,
        extra: Some(Extra::eip712(&name, &version)),
    };
    let domain = TokenDomain {
        name,
        version,
        chain_id,
        verifying_contract: token,
    };
    let warm_n = args.concurrency.max(8) * 2;
    let t = Instant::now();
    let mut all = signed_bodies(count + warm_n, &key, &requirements, &domain)?;
    let bodies = Arc::new(all.split_off(warm_n));
    let warm = Arc::new(all);
    println!(
        "compare-verify: POST /verify (x402 v2 exact, EIP-3009) on {network} (anvil {rpc_url}, token {token}); \
         {count} distinct valid payments from the demo agent (+{warm_n} warm-up), signed in {:.2}s (not timed), \
         each verified once per peer by {} keep-alive clients, at most {}s per peer, one peer at a time; the load \
         generator shares the machine",
        t.elapsed().as_secs_f64(),
        args.concurrency,
        duration.as_secs()
    );
    let anvil = host
        .processes()
        .into_iter()
        .find(|(n, _)| n.starts_with("anvil"))
        .map(|(_, p)| p);
    let with_anvil = |server: u32| {
        let mut v = vec![("server".to_owned(), server)];
        if let Some(a) = anvil {
            v.push(("anvil".to_owned(), a));
        }
        v
    };
    let ours = rt.block_on(measure_verify(
        "esim402 host POST /verify",
        &url,
        &with_anvil(host.pid()),
        (warm.clone(), bodies.clone()),
        args.concurrency,
        duration,
    ))?;
    let theirs = rt
        .block_on(measure_verify(
            "python x402 2.25 x402FacilitatorSync",
            &py_url,
            &with_anvil(py_fac.pid()),
            (warm, bodies),
            args.concurrency,
            duration,
        ))
        .with_context(|| format!("its stderr:\n{}", py_fac.stderr_tail()))?;
    drop(py_fac);
    drop(host);
    let rows = [ours, theirs];
    print_rows("verify", &rows);
    let ratio = rows[0].rate() / rows[1].rate();
    println!(
        "ratio ours/python = {ratio:.2}x verifies/s (target >= 10x: {})",
        target(ratio >= 10.0)
    );
    println!(
        "server CPU per verify (robust on a shared machine): python / ours = {:.2}x",
        rows[1].server_cpu() / rows[0].server_cpu()
    );
    let failed: usize = rows.iter().map(|r| r.failed).sum();
    if failed > 0 {
        bail!("{failed} verifies did not answer isValid: true");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::min_median_max;

    #[test]
    fn spread_over_rounds() {
        assert_eq!(min_median_max(vec![10.2]), (10.2, 10.2, 10.2));
        assert_eq!(min_median_max(vec![9.5, 11.0, 10.0]), (9.5, 10.0, 11.0));
        assert_eq!(
            min_median_max(vec![12.0, 9.0, 10.0, 11.0]),
            (9.0, 10.5, 12.0)
        );
        let (lo, med, hi) = min_median_max(Vec::new());
        assert!(lo.is_nan() && med.is_nan() && hi.is_nan());
    }
}
