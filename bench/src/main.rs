//! `esim402-bench`: starts the host binary (`esim402 up --listen 127.0.0.1:0`) as a child process, drives one
//! scenario over loopback with a fixed number of keep-alive clients for a bounded time (and at most
//! `--max-requests` requests), then stops the host by its PID and prints throughput, latency percentiles and the
//! host's resident memory (from `/proc/<pid>/status`).
//!
//! ```text
//! cargo build --release -p esim402-host -p esim402-bench
//! target/release/esim402-bench --host-bin target/release/esim402 --scenario issue402 --duration 10
//! target/release/esim402-bench --scenario dispatch --sim-bin target/release/smdp-sim --concurrency 8
//! target/release/esim402-bench --scenario verify --count 2000 --concurrency 4
//! target/release/esim402-bench --scenario paid --kv memory --count 200 --concurrency 4 --duration 60
//! target/release/esim402-bench --scenario paid --runtime spin --count 200 --concurrency 4 --duration 60
//! target/release/esim402-bench --host-bin target/release/esim402 --scenario compare402 --duration 10
//! target/release/esim402-bench --host-bin target/release/esim402 --scenario compare-verify --count 2000 --duration 30
//! ```
//!
//! The two `compare*` scenarios measure several peers in one run, one after the other under the same load, and
//! print a table and the ratios ([`compare`]): `compare402` the host's 402 issuance against the official x402
//! Python resource server (Flask middleware, `bench/peers/flask_402.py`) and a native axum server running the same
//! kernel code ([`native402`]), and with `--spin-peer` the same app under the real `spin up`; `compare-verify` the host's facilitator `/verify` against the official Python
//! facilitator (`tests/peers/py_facilitator.py`) on the host's dev-stack anvil. The Python peers run with
//! `--python` (default `tools/.venv/bin/python`, installed by `scripts/setup.sh`).

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::{Parser, ValueEnum};

#[derive(Debug, Clone, Copy, ValueEnum)]
enum Scenario {
    /// `POST /v1/esim/activate` without payment: price, seal a stateless invoice (no key-value write), answer 402
    /// with the x402 header.
    Issue402,
    /// `GET /health`: the host's routing + instance reuse floor, no key-value work.
    Health,
    /// Profile orders against the SM-DP+ simulator: native ES2+ calls vs the dispatch component.
    Dispatch,
    /// x402 `exact` verifications/s: the kernel natively vs `facilitator-verify` in the verifier component.
    Verify,
    /// Paid activations end to end (402 → sign → PAYMENT-SIGNATURE → 200) on the host's dev stack (anvil);
    /// `--runtime spin`: the app under the real `spin up` with `esim402 devstack`.
    Paid,
    /// 402 issuance through the host (SQLite), the official x402 Python Flask middleware and a native axum server
    /// with the same kernel code: one table, ratios ours/python and ours/native.
    Compare402,
    /// Facilitator `/verify` of valid x402 `exact` payments: the host vs the official Python facilitator, both on
    /// the host's dev-stack anvil; ratio ours/python.
    CompareVerify,
    /// Receipt ingest (`POST /v1/usage`) in batches, signature verification included, vs the kernel's native
    /// verification; `--instances 2 --kv redis` for two hosts sharing one Redis.
    Usage,
    /// The host stores' `increment` latency (SQLite, Redis), alone and with `--concurrency` writers: how long a
    /// guest's synchronous claim holds its instance.
    Kv,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum Kv {
    /// Spin's default SQLite file store (a fresh temp dir per run).
    Sqlite,
    /// In-memory store.
    Memory,
    /// A private `redis-server` the bench starts on loopback (Spin's `type = "redis"`).
    Redis,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum Runtime {
    /// `esim402 up` (the host this repository builds).
    Esim402,
    /// The real `spin up` (Spin 4.1) under `esim402 devstack`, on Spin's SQLite store.
    Spin,
}

#[derive(Parser, Debug)]
#[command(
    about = "Load generator for the esim402 host and its peers (loopback only, bounded in time)"
)]
struct Args {
    /// The host binary to start.
    #[arg(long, default_value = "target/release/esim402")]
    host_bin: PathBuf,
    /// The app manifest.
    #[arg(long, default_value = "spin.toml")]
    manifest: PathBuf,
    #[arg(long, value_enum, default_value = "issue402")]
    scenario: Scenario,
    #[arg(long, value_enum, default_value = "sqlite")]
    kv: Kv,
    /// Concurrent keep-alive clients.
    #[arg(long, default_value_t = 32)]
    concurrency: usize,
    /// Measured seconds (after warm-up). Hard-capped at 120.
    #[arg(long, default_value_t = 10)]
    duration: u64,
    /// Warm-up seconds, not measured.
    #[arg(long, default_value_t = 2)]
    warmup: u64,
    /// The SM-DP+ simulator binary (dispatch scenario).
    #[arg(long, default_value = "target/release/smdp-sim")]
    sim_bin: PathBuf,
    /// Stop after this many measured requests even if time remains.
    #[arg(long, default_value_t = 2_000_000)]
    max_requests: u64,
    /// verify, compare-verify: distinct signed payloads (default 2000); paid: activations (default 200), after a
    /// warm-up of one per worker. `--duration` bounds the paid run, and each peer of compare-verify, in time.
    #[arg(long)]
    count: Option<u64>,
    /// compare402: measure the three peers this many times in turn (ours, Python, native, ours, …) against the
    /// same processes, and summarise the ratios over the rounds (min, median, max).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=10))]
    rounds: u32,
    /// paid: what serves the app.
    #[arg(long, value_enum, default_value = "esim402")]
    runtime: Runtime,
    /// compare402: also measure the same app under the real `spin up` (Spin 4.1: `SPIN_BIN`, `spin` on `PATH`, or
    /// the archive in `../shared/tools/`, unpacked beside this binary) on Spin's SQLite store.
    #[arg(long)]
    spin_peer: bool,
    /// compare402, compare-verify: the Python with the official x402 SDK (`x402[evm,requests,flask]==2.25.0`).
    #[arg(long, default_value = "tools/.venv/bin/python")]
    python: PathBuf,
    /// compare-verify: the Python facilitator peer (prints `listening <port>`).
    #[arg(long, default_value = "tests/peers/py_facilitator.py")]
    py_facilitator: PathBuf,
    /// usage: receipts per batch.
    #[arg(long, default_value_t = 100)]
    batch: usize,
    /// usage: sign each batch as one page (one signature over the Merkle root of its receipts, kernel
    /// `usage::page`) instead of one signature per receipt.
    #[arg(long)]
    paged: bool,
    /// usage: SIMs activated (paid) to spread the receipts over.
    #[arg(long, default_value_t = 8)]
    sims: usize,
    /// usage: host processes sharing the store (needs `--kv redis` for more than one).
    #[arg(long, default_value_t = 1)]
    instances: usize,
    /// Extra arguments for the host's `up` (e.g. `--host-arg=--max-instance-concurrent-reuse-count=2`).
    #[arg(long = "host-arg", allow_hyphen_values = true)]
    host_args: Vec<String>,
    /// Internal (compare402): serve the native 402 baseline on 127.0.0.1:0 and print `listening <port>`.
    #[arg(long, hide = true)]
    serve_native402: bool,
}

/// The host process; stopped (SIGINT, then SIGKILL) by its PID on drop. With its dev stack, the host stops
/// anvil and the simulator itself on SIGINT; any of them still running after the host is gone is stopped by the
/// PID recorded at start.
struct Host {
    child: Child,
    stopped: bool,
    /// The store's directory (runtime config, SQLite file), removed when the host is dropped, and by a start
    /// that fails.
    dir: Option<tempfile::TempDir>,
    /// The host's own children (dev stack) at start: PID and command line.
    dev_children: Vec<(u32, String)>,
}

/// Children of `pid` (from `/proc/<pid>/task/*/children`) with their command lines.
fn children_of(pid: u32) -> Vec<(u32, String)> {
    let mut out = Vec::new();
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return out;
    };
    for task in tasks.flatten() {
        let list = std::fs::read_to_string(task.path().join("children")).unwrap_or_default();
        for child in list
            .split_whitespace()
            .filter_map(|c| c.parse::<u32>().ok())
        {
            out.push((child, cmdline(child)));
        }
    }
    out
}

fn cmdline(pid: u32) -> String {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|b| String::from_utf8_lossy(&b).replace('\0', " "))
        .unwrap_or_default()
}

impl Host {
    /// Stop the host and its dev stack (once); its files stay until it is dropped.
    fn stop(&mut self) {
        if !std::mem::replace(&mut self.stopped, true) {
            stop_child(&mut self.child, Duration::from_secs(5), &self.dev_children);
        }
    }

    /// The SQLite file of the host's store (`--kv sqlite`).
    fn store_file(&self) -> Option<PathBuf> {
        self.dir
            .as_ref()
            .map(|d| d.path().join("kv.db"))
            .filter(|f| f.exists())
    }

    /// Start the host; returns it, its URL and what it printed about its dev stack (`key: value` lines, and
    /// `devstack_json`: the facts file's path).
    fn start(
        args: &Args,
        dev_stack: bool,
    ) -> anyhow::Result<(Self, String, HashMap<String, String>)> {
        Self::start_on(args, dev_stack, None)
    }

    /// [`Host::start`], on the Redis at `redis_url` with `--kv redis`.
    fn start_on(
        args: &Args,
        dev_stack: bool,
        redis_url: Option<&str>,
    ) -> anyhow::Result<(Self, String, HashMap<String, String>)> {
        let mut cmd = Command::new(&args.host_bin);
        cmd.arg("--from")
            .arg(&args.manifest)
            .args(["up", "--listen", "127.0.0.1:0"])
            .args(&args.host_args)
            .env("ESIM402_LOG", "warn")
            // As deployed: with RUST_BACKTRACE set (a developer shell, CI), every error value the runtime
            // creates on its normal paths captures a backtrace, ~1% of the host's CPU.
            .env_remove("RUST_BACKTRACE")
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        if !dev_stack {
            cmd.arg("--no-dev-stack");
        }
        let mut dir = None;
        match args.kv {
            Kv::Memory => {
                cmd.arg("--memory-kv");
            }
            Kv::Redis => {
                let d = bench_dir()?;
                let rc = d.path().join("runtime-config.toml");
                let url = redis_url.context("--kv redis needs the bench's redis-server")?;
                std::fs::write(
                    &rc,
                    format!("[key_value_store.default]\ntype = \"redis\"\nurl = \"{url}\"\n"),
                )?;
                cmd.arg("--runtime-config-file").arg(&rc);
                dir = Some(d);
            }
            Kv::Sqlite => {
                let d = bench_dir()?;
                let rc = sqlite_runtime_config(d.path())?;
                cmd.arg("--runtime-config-file").arg(&rc);
                dir = Some(d);
            }
        }
        let mut child = cmd
            .spawn()
            .with_context(|| format!("start {}", args.host_bin.display()))?;
        // SIGINT: the host stops its dev stack too.
        track(child.id(), "INT");
        let stderr = child.stderr.take().context("host stderr")?;
        let mut lines = BufReader::new(stderr).lines();
        let mut printed = HashMap::new();
        let mut last = String::new();
        let url = loop {
            let Some(line) = lines.next() else {
                let _ = child.kill();
                let _ = child.wait();
                bail!("host exited before serving: {last}");
            };
            let line = line?;
            if let Some(url) = line.strip_prefix("Serving ") {
                break url.trim().to_owned();
            }
            if let Some(path) = line
                .strip_prefix("Dev stack (")
                .and_then(|l| l.strip_suffix("):"))
            {
                printed.insert("devstack_json".to_owned(), path.to_owned());
            } else if let Some((k, v)) = line.strip_prefix("  ").and_then(|l| l.split_once(": ")) {
                printed.insert(k.to_owned(), v.to_owned());
            }
            last = line;
        };
        // Keep draining stderr so the host never blocks on a full pipe (into `ESIM402_BENCH_HOST_LOG`, if set).
        let keep = std::env::var_os("ESIM402_BENCH_HOST_LOG")
            .and_then(|path| std::fs::File::create(path).ok());
        std::thread::spawn(move || {
            use std::io::Write as _;
            let mut keep = keep;
            for line in lines.map_while(Result::ok) {
                if let Some(f) = keep.as_mut() {
                    let _ = writeln!(f, "{line}");
                }
            }
        });
        let dev_children = children_of(child.id());
        Ok((
            Self {
                child,
                stopped: false,
                dir,
                dev_children,
            },
            url,
            printed,
        ))
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The processes to account CPU time to: the host, then its dev-stack children by name.
    fn processes(&self) -> Vec<(String, u32)> {
        let mut out = vec![("esim402".to_owned(), self.pid())];
        for (pid, cmd) in &self.dev_children {
            let name = cmd
                .split_whitespace()
                .next()
                .and_then(|p| p.rsplit('/').next())
                .unwrap_or("child");
            out.push((name.to_owned(), *pid));
        }
        out
    }
}

impl Drop for Host {
    fn drop(&mut self) {
        // Stopped before its directory goes (the field is dropped after this).
        self.stop();
    }
}

/// A fresh `esim402-bench-*` directory under the system's temp dir.
fn bench_dir() -> anyhow::Result<tempfile::TempDir> {
    Ok(tempfile::Builder::new()
        .prefix("esim402-bench-")
        .tempdir()?)
}

/// A runtime config in `dir` (created) whose `default` store is Spin's SQLite file `dir/kv.db`; its path.
fn sqlite_runtime_config(dir: &std::path::Path) -> anyhow::Result<PathBuf> {
    std::fs::create_dir_all(dir)?;
    let rc = dir.join("runtime-config.toml");
    std::fs::write(
        &rc,
        format!(
            "[key_value_store.default]\ntype = \"spin\"\npath = \"{}\"\n",
            dir.join("kv.db").display()
        ),
    )?;
    Ok(rc)
}

/// Stop a server this bench started (and untrack it): SIGINT to its PID (a host stops its dev stack, `esim402
/// devstack` its command, then its stack), up to `grace` for it to exit, else SIGKILL; then any of `leftovers`
/// (PID, command line, read while it ran) still running as it was is killed by its PID.
fn stop_child(child: &mut Child, grace: Duration, leftovers: &[(u32, String)]) {
    untrack(child.id());
    esim402_host::devstack::stop_child(child, "INT", grace);
    for (pid, cmd) in leftovers {
        if !cmd.is_empty() && cmdline(*pid) == *cmd {
            eprintln!("stopping leftover process {pid} ({cmd})");
            esim402_host::devstack::send_signal(*pid, "KILL");
        }
    }
}

/// The servers this bench started and has not stopped yet, with the signal that stops each: stopped by
/// [`stop_children_on_signal`] if the bench itself is interrupted (drop guards do not run then).
static LIVE: std::sync::Mutex<Vec<(u32, &'static str)>> = std::sync::Mutex::new(Vec::new());

fn track(pid: u32, signal: &'static str) {
    if let Ok(mut live) = LIVE.lock() {
        live.push((pid, signal));
    }
}

fn untrack(pid: u32) {
    if let Ok(mut live) = LIVE.lock() {
        live.retain(|(p, _)| *p != pid);
    }
}

/// Whether `pid` is still running (not gone, not a zombie).
fn running(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            s.rsplit_once(')')
                .and_then(|(_, r)| r.split_whitespace().next().map(|st| st != "Z"))
        })
        .unwrap_or(false)
}

/// On SIGINT or SIGTERM: signal every tracked child by its PID, wait up to 5 s for them (the host stops its dev
/// stack), then exit with status 130.
fn stop_children_on_signal() {
    std::thread::spawn(|| {
        use tokio::signal::unix::{SignalKind, signal};
        let Ok(rt) = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        else {
            return;
        };
        let got = rt.block_on(async {
            let (Ok(mut int), Ok(mut term)) = (
                signal(SignalKind::interrupt()),
                signal(SignalKind::terminate()),
            ) else {
                return false;
            };
            tokio::select! {
                _ = int.recv() => true,
                _ = term.recv() => true,
            }
        });
        if !got {
            return;
        }
        let live = LIVE.lock().map(|l| l.clone()).unwrap_or_default();
        for (pid, sig) in &live {
            eprintln!("interrupted: stopping child {pid} (SIG{sig})");
            esim402_host::devstack::send_signal(*pid, sig);
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline && live.iter().any(|(p, _)| running(*p)) {
            std::thread::sleep(Duration::from_millis(50));
        }
        for (pid, _) in live.iter().filter(|(p, _)| running(*p)) {
            esim402_host::devstack::send_signal(*pid, "KILL");
        }
        std::process::exit(130);
    });
}

/// `VmRSS` and `VmHWM` of a process in KiB.
fn rss_kib(pid: u32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .unwrap_or(0)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

/// CPU time (user + system) a process has used so far ("self" for this one), assuming 100 clock ticks a
/// second (Linux's USER_HZ).
fn cpu_time(pid: Option<u32>) -> Duration {
    let path = pid.map_or_else(
        || "/proc/self/stat".to_owned(),
        |p| format!("/proc/{p}/stat"),
    );
    let stat = std::fs::read_to_string(path).unwrap_or_default();
    // Fields after the command name (which may contain spaces): state is field 3, utime 14, stime 15.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let fields: Vec<u64> = rest
        .split_whitespace()
        .skip(11)
        .take(2)
        .filter_map(|f| f.parse().ok())
        .collect();
    Duration::from_millis(fields.iter().sum::<u64>() * 10)
}

struct Outcome {
    latencies: Vec<Duration>,
    errors: u64,
}

mod client;
mod compare;
mod dispatch;
mod kvstore;
mod native402;
mod paid;
mod spin;
mod usage;
mod verify;

async fn one(conn: &mut client::Conn, scenario: Scenario, i: u64) -> anyhow::Result<()> {
    match scenario {
        Scenario::Issue402 => {
            let mb = 1 + i % 500;
            let res = conn
                .send(
                    http::Method::POST,
                    "/v1/esim/activate",
                    &[("content-type", "application/json")],
                    format!(r#"{{"region":"us-west","data_mb":{mb}}}"#).into(),
                )
                .await?;
            if res.status != 402
                || res.headers.get("payment-required").is_none()
                || res.body.is_empty()
            {
                bail!("unexpected {}", res.status);
            }
        }
        Scenario::Dispatch
        | Scenario::Verify
        | Scenario::Paid
        | Scenario::Compare402
        | Scenario::CompareVerify
        | Scenario::Usage
        | Scenario::Kv => {
            unreachable!("this scenario has its own driver")
        }
        Scenario::Health => {
            let res = conn
                .send(http::Method::GET, "/health", &[], bytes::Bytes::new())
                .await?;
            if !(200..300).contains(&res.status) {
                bail!("unexpected {}", res.status);
            }
        }
    }
    Ok(())
}

async fn drive(
    url: &str,
    scenario: Scenario,
    concurrency: usize,
    run_for: Duration,
    max: u64,
) -> Outcome {
    let counter = Arc::new(AtomicU64::new(0));
    let deadline = Instant::now() + run_for;
    let mut tasks = Vec::new();
    for _ in 0..concurrency {
        let url = url.to_owned();
        let counter = counter.clone();
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            let mut errors = 0;
            let Ok(mut conn) = client::Conn::new(&url) else {
                return (lat, 1);
            };
            while Instant::now() < deadline {
                let i = counter.fetch_add(1, Ordering::Relaxed);
                if i >= max {
                    break;
                }
                let t = Instant::now();
                match one(&mut conn, scenario, i).await {
                    Ok(()) => lat.push(t.elapsed()),
                    Err(_) => errors += 1,
                }
            }
            (lat, errors)
        }));
    }
    let mut out = Outcome {
        latencies: Vec::new(),
        errors: 0,
    };
    for t in tasks {
        if let Ok((lat, errors)) = t.await {
            out.latencies.extend(lat);
            out.errors += errors;
        }
    }
    out
}

fn pct(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[idx.min(sorted.len() - 1)]
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if args.serve_native402 {
        return native402::serve();
    }
    stop_children_on_signal();
    let duration = Duration::from_secs(args.duration.clamp(1, 120));
    match args.scenario {
        Scenario::Compare402 => return compare::compare402(&args, duration),
        Scenario::CompareVerify => return compare::compare_verify(&args, duration),
        _ => {}
    }
    if let Scenario::Dispatch = args.scenario {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()?;
        return rt.block_on(dispatch::run(
            &args.sim_bin,
            args.concurrency,
            duration.as_secs(),
        ));
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .worker_threads(1)
        .build()?;
    if let Scenario::Kv = args.scenario {
        let count = usize::try_from(args.count.unwrap_or(2000))?;
        return rt.block_on(kvstore::run(count, args.concurrency));
    }
    if let Scenario::Usage = args.scenario {
        let redis = match args.kv {
            Kv::Redis => Some(esim402_tests::RedisServer::start()?),
            _ if args.instances > 1 => bail!("--instances > 1 needs --kv redis"),
            _ => None,
        };
        let url = redis.as_ref().map(|r| r.url.clone());
        let (first, first_url, printed) = Host::start_on(&args, true, url.as_deref())?;
        let mut hosts = vec![first];
        let mut urls = vec![first_url];
        for _ in 1..args.instances.max(1) {
            let (h, u, _) = Host::start_on(&args, false, url.as_deref())?;
            hosts.push(h);
            urls.push(u);
        }
        let mut procs: Vec<(&str, u32)> = hosts.iter().map(|h| ("host", h.pid())).collect();
        procs.extend(redis.as_ref().map(|r| ("redis", r.pid())));
        let result = rt.block_on(usage::run(
            &urls,
            &procs,
            &printed,
            usize::try_from(args.count.unwrap_or(10_000))?,
            args.batch.clamp(1, 1000),
            args.paged,
            args.sims,
            args.concurrency,
            &format!("{:?}", args.kv),
        ));
        drop(hosts);
        drop(redis);
        return result;
    }
    if let Scenario::Verify = args.scenario {
        let count = usize::try_from(args.count.unwrap_or(2000))?;
        return rt.block_on(verify::run(count, args.concurrency));
    }
    if let Scenario::Paid = args.scenario {
        let kv = format!("{:?}", args.kv);
        if let Runtime::Spin = args.runtime {
            let stack = spin::SpinStack::start(&args)?;
            let result = rt.block_on(paid::run(
                stack.server_pid(),
                &stack.processes(),
                &stack.url,
                &stack.printed,
                args.count.unwrap_or(200),
                args.concurrency,
                duration,
                &format!("{kv}, under spin up"),
            ));
            let mut stack = stack;
            stack.stop();
            if let Ok(n) = result {
                paid::report_store(&stack.store_file(), n);
            }
            drop(stack);
            return result.map(drop);
        }
        let (host, url, printed) = Host::start(&args, true)?;
        let result = rt.block_on(paid::run(
            host.pid(),
            &host.processes(),
            &url,
            &printed,
            args.count.unwrap_or(200),
            args.concurrency,
            duration,
            &kv,
        ));
        let mut host = host;
        host.stop();
        if let (Ok(n), Some(db)) = (&result, host.store_file()) {
            paid::report_store(&db, *n);
        }
        drop(host);
        return result.map(drop);
    }
    let (host, url, _) = Host::start(&args, false)?;
    let (rss_idle, _) = rss_kib(host.pid());
    rt.block_on(async {
        let warm = drive(
            &url,
            args.scenario,
            args.concurrency,
            Duration::from_secs(args.warmup),
            u64::MAX,
        )
        .await;
        if warm.latencies.is_empty() && args.warmup > 0 {
            bail!(
                "warm-up produced no successful request ({} errors)",
                warm.errors
            );
        }
        let start = Instant::now();
        let (host_cpu, bench_cpu) = (cpu_time(Some(host.pid())), cpu_time(None));
        let mut run = drive(
            &url,
            args.scenario,
            args.concurrency,
            duration,
            args.max_requests,
        )
        .await;
        let elapsed = start.elapsed();
        let host_cpu = cpu_time(Some(host.pid())).saturating_sub(host_cpu);
        let bench_cpu = cpu_time(None).saturating_sub(bench_cpu);
        let (rss, hwm) = rss_kib(host.pid());
        run.latencies.sort_unstable();
        let n = run.latencies.len();
        let rps = n as f64 / elapsed.as_secs_f64();
        println!(
            "scenario={:?} kv={:?} concurrency={} duration={:.1}s",
            args.scenario,
            args.kv,
            args.concurrency,
            elapsed.as_secs_f64()
        );
        println!("requests={n} errors={} req/s={rps:.0}", run.errors);
        // CPU per request: steadier than req/s on a shared machine whose speed drifts between runs.
        let per_request = |d: Duration| d.as_secs_f64() * 1e6 / n.max(1) as f64;
        println!(
            "cpu per request: host {:.0} us, load generator {:.0} us",
            per_request(host_cpu),
            per_request(bench_cpu)
        );
        println!(
            "latency p50={:.2}ms p90={:.2}ms p99={:.2}ms max={:.2}ms",
            pct(&run.latencies, 0.50).as_secs_f64() * 1e3,
            pct(&run.latencies, 0.90).as_secs_f64() * 1e3,
            pct(&run.latencies, 0.99).as_secs_f64() * 1e3,
            pct(&run.latencies, 1.0).as_secs_f64() * 1e3,
        );
        println!(
            "host rss idle={:.1}MiB after={:.1}MiB peak={:.1}MiB",
            rss_idle as f64 / 1024.0,
            rss as f64 / 1024.0,
            hwm as f64 / 1024.0
        );
        if run.errors > 0 {
            bail!("{} requests failed", run.errors);
        }
        Ok(())
    })?;
    drop(host);
    Ok(())
}
