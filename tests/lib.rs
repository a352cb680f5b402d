//! Test harness: `spawn_app` loads the repository's own `spin.toml` (components prebuilt by `esim402 build`)
//! into the host and serves it on 127.0.0.1 port 0; [`AppProcess`] serves it from a child process instead —
//! `esim402 up` or the real `spin up` ([`spin_binary`]) — on a loopback port, stopped by its PID;
//! `RedisServer` runs a private `redis-server` on a loopback port and stops it by its PID when dropped.
#![allow(clippy::unwrap_used, reason = "test harness")]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use esim402_host::app::{App, LoadOptions};
use esim402_host::devstack::spawn_announcing;
use esim402_host::runtime_config::StoreConfig;
use tokio::sync::oneshot;

/// The repository root (holds spin.toml).
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// A running app.
pub struct TestApp {
    /// Base URL, e.g. `http://127.0.0.1:41234`.
    pub url: String,
    /// The loaded app (stores are inspectable).
    pub app: Arc<App>,
    stop: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
}

impl TestApp {
    /// Stop the server and wait for it to drain.
    pub async fn stop(mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.task.take() {
            t.await.unwrap().unwrap();
        }
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        if let Some(t) = self.task.take() {
            t.abort();
        }
    }
}

/// The callback credentials every test app and SM-DP+ simulator share (`operator=secret,…`).
pub const TEST_CALLBACK_CREDENTIALS: &str = "tmobile=test-callback-tmobile,verizon=test-callback-verizon,\
att=test-callback-att-0001,telekom-de=test-callback-telekom-de,vodafone-de=test-callback-vodafone-de";

/// The facilitator variable that carries [`TEST_CALLBACK_CREDENTIALS`].
pub const CALLBACK_CREDENTIALS_VAR: &str = "SPIN_VARIABLE_CARRIER_CALLBACK_CREDENTIALS";

/// Load options for the repository's app with a given key-value backend.
pub fn options(kv: StoreConfig) -> LoadOptions {
    let mut opts = LoadOptions::new(repo_root().join("spin.toml"));
    opts.kv_override = Some(kv);
    opts.env = std::collections::HashMap::from([(
        CALLBACK_CREDENTIALS_VAR.to_owned(),
        TEST_CALLBACK_CREDENTIALS.to_owned(),
    )]);
    // One cache for every test binary run, outside the repo's .spin/: in the target directory, which is ours
    // (a fixed name under a shared /tmp could be made first by another user, and it holds compiled code).
    opts.cache_dir = Some(bin_dir().join("esim402-test-cache"));
    opts
}

/// Serve the app on 127.0.0.1:0.
pub async fn spawn_app(opts: LoadOptions) -> anyhow::Result<TestApp> {
    let listener = tokio::net::TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], 0))).await?;
    spawn_app_on(opts, listener).await
}

/// Serve the app on an already bound loopback listener (so peers can be told its address first).
pub async fn spawn_app_on(
    opts: LoadOptions,
    listener: tokio::net::TcpListener,
) -> anyhow::Result<TestApp> {
    if std::env::var_os("TEST_LOG").is_some() {
        let _ = tracing_subscriber::fmt()
            .with_env_filter("esim402_host=debug,info")
            .try_init();
    }
    let app = Arc::new(App::load(&opts).await?);
    let url = format!("http://{}", listener.local_addr()?);
    let (tx, rx) = oneshot::channel();
    let task = tokio::spawn(esim402_host::server::serve(app.clone(), listener, async {
        let _ = rx.await;
    }));
    Ok(TestApp {
        url,
        app,
        stop: Some(tx),
        task: Some(task),
    })
}

/// The workspace's built binaries (`target/debug`): the test binary lives in `target/debug/deps`.
pub fn bin_dir() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    exe.parent().unwrap().parent().unwrap().to_path_buf()
}

/// The `esim402` host binary: `ESIM402_BIN` if set (a copy of one build, for a checkout whose target directory
/// other checkouts build into too), else the one built beside the tests.
pub fn host_binary() -> PathBuf {
    std::env::var_os("ESIM402_BIN").map_or_else(|| bin_dir().join("esim402"), PathBuf::from)
}

/// The Spin release the compatibility tests were written against (`spin --version`).
pub const SPIN_VERSION: &str = "spin 4.1.0-pre0";

/// sha256 of the unpacked binary in `../shared/tools/` (its README).
const SPIN_SHA256: &str = "e086785a9b000561318ffe530917f1c6dec259d538fa918d565869b8949c5e80";

/// The real Spin CLI: `SPIN_BIN`, else `spin` on `PATH`, else the archive in `../shared/tools/` (beside the
/// checkout) unpacked once into the target directory. `Err` says why there is none: the caller skips its test
/// with that line, so a checkout without Spin stays testable.
pub fn spin_binary() -> Result<PathBuf, String> {
    static FOUND: std::sync::OnceLock<Result<PathBuf, String>> = std::sync::OnceLock::new();
    FOUND
        .get_or_init(|| {
            if let Some(bin) = std::env::var_os("SPIN_BIN") {
                return Ok(PathBuf::from(bin));
            }
            if let Some(path) = std::env::var_os("PATH") {
                for dir in std::env::split_paths(&path) {
                    let bin = dir.join("spin");
                    if bin.is_file() {
                        return Ok(bin);
                    }
                }
            }
            let archive = repo_root().join("../shared/tools/spin-4.1.0-pre0-linux-x86_64.gz");
            if !archive.is_file() {
                return Err(format!(
                    "no Spin CLI: SPIN_BIN is unset, `spin` is not on PATH and {} does not exist",
                    archive.display()
                ));
            }
            unpack_spin(&archive).map_err(|e| format!("cannot unpack {}: {e:#}", archive.display()))
        })
        .clone()
}

/// Unpack the Spin archive beside the test binaries (never beside the archive: `shared/` is read-only),
/// checking the binary's sha256.
fn unpack_spin(archive: &Path) -> anyhow::Result<PathBuf> {
    use sha2::Digest as _;
    use std::os::unix::fs::PermissionsExt as _;
    let bin = bin_dir().join("spin-4.1.0-pre0");
    let digest = |p: &Path| -> anyhow::Result<String> {
        Ok(hex::encode(sha2::Sha256::digest(std::fs::read(p)?)))
    };
    if bin.is_file() && digest(&bin)? == SPIN_SHA256 {
        return Ok(bin);
    }
    let tmp = bin.with_extension(format!("tmp{}", std::process::id()));
    let out = std::fs::File::create(&tmp)?;
    let status = Command::new("gzip")
        .arg("-dc")
        .arg(archive)
        .stdout(out)
        .status()
        .context("gzip")?;
    anyhow::ensure!(status.success(), "gzip -dc failed: {status}");
    let got = digest(&tmp)?;
    anyhow::ensure!(
        got == SPIN_SHA256,
        "unpacked Spin has sha256 {got}, expected {SPIN_SHA256}"
    );
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o755))?;
    std::fs::rename(&tmp, &bin)?;
    Ok(bin)
}

/// A free loopback port for a child server that must be told its address before it starts.
///
/// Not one from `bind(":0")`: the kernel hands the same ephemeral ports to every `--listen 127.0.0.1:0` server
/// the other tests start, so a port bound and released here could go to another test's simulator before our
/// child binds it, and the child's readiness probe would be answered by the wrong server. These ports come from
/// below the kernel's ephemeral range, one after another from a start that depends on this process's id, so no
/// two calls in one test process return the same port and no `:0` server can take it; each is checked free by
/// binding it.
pub fn free_port() -> u16 {
    static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(u32::MAX);
    const LOW: u32 = 10_000;
    let high = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|r| r.split_whitespace().next()?.parse::<u32>().ok())
        .filter(|&h| h > LOW + 1_000)
        .unwrap_or(32_768);
    let span = high - LOW;
    let _ = NEXT.compare_exchange(
        u32::MAX,
        std::process::id().wrapping_mul(7_919) % span,
        std::sync::atomic::Ordering::Relaxed,
        std::sync::atomic::Ordering::Relaxed,
    );
    for _ in 0..span {
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let port = u16::try_from(LOW + n % span).expect("below the ephemeral range");
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free loopback port in {LOW}..{high}");
}

/// `esim402 devstack -- spin up` as the README writes it: `<host> devstack -f <manifest> --app-url
/// http://127.0.0.1:<port> --out-dir <dir> -- <spin> up -f <manifest> --listen 127.0.0.1:<port>
/// --runtime-config-file <rc> --state-dir <dir>/state`. Arguments added to the command go to `spin up`.
pub fn devstack_spin_up(
    host: &Path,
    spin: &Path,
    manifest: &Path,
    port: u16,
    dir: &Path,
    rc: &Path,
) -> Command {
    let mut cmd = Command::new(host);
    cmd.arg("devstack")
        .arg("-f")
        .arg(manifest)
        .args([
            "--app-url",
            &format!("http://127.0.0.1:{port}"),
            "--out-dir",
        ])
        .arg(dir)
        .arg("--")
        .arg(spin)
        .arg("up")
        .arg("-f")
        .arg(manifest)
        .args([
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--runtime-config-file",
        ])
        .arg(rc)
        .arg("--state-dir")
        .arg(dir.join("state"));
    cmd
}

/// Which server runs the app in a child process.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Runner {
    /// `esim402 up --no-dev-stack`.
    Host,
    /// The real `spin up`, this binary.
    Spin(PathBuf),
}

/// The app served by a child process on `127.0.0.1:<port>`, with a runtime config file of the test's own and
/// `SPIN_VARIABLE_*` settings; stopped by its PID on drop (SIGTERM, then SIGKILL). Its output goes to a log
/// file in its temporary directory, shown when it fails to start.
pub struct AppProcess {
    child: Child,
    /// `http://127.0.0.1:<port>`.
    pub url: String,
    /// The log of the child's stdout and stderr.
    pub log: PathBuf,
    dir: tempfile::TempDir,
}

impl AppProcess {
    /// Start `runner` on `port` with `runtime_config` (the text of a Spin runtime config file; relative paths in
    /// it resolve in a fresh temporary directory) and `env`; wait (up to 180 s: Spin compiles the components on
    /// its first start) until `/health` answers.
    pub async fn start(
        runner: &Runner,
        port: u16,
        runtime_config: &str,
        env: &[(String, String)],
    ) -> anyhow::Result<Self> {
        Self::start_with_args(runner, port, runtime_config, env, &[]).await
    }

    /// [`Self::start`] with more arguments for `up` (flags both runners take).
    pub async fn start_with_args(
        runner: &Runner,
        port: u16,
        runtime_config: &str,
        env: &[(String, String)],
        args: &[&str],
    ) -> anyhow::Result<Self> {
        let dir = tempfile::tempdir()?;
        let rc = dir.path().join("runtime-config.toml");
        std::fs::write(&rc, runtime_config)?;
        let log = dir.path().join("app.log");
        let out = std::fs::File::create(&log)?;
        let listen = format!("127.0.0.1:{port}");
        let manifest = repo_root().join("spin.toml");
        let mut cmd = match runner {
            Runner::Host => {
                let mut c = Command::new(host_binary());
                c.arg("up").arg("-f").arg(&manifest).arg("--no-dev-stack");
                c
            }
            Runner::Spin(bin) => {
                let mut c = Command::new(bin);
                c.arg("up")
                    .arg("-f")
                    .arg(&manifest)
                    .arg("--state-dir")
                    .arg(dir.path().join("state"));
                c
            }
        };
        cmd.args(args)
            .arg("--listen")
            .arg(&listen)
            .arg("--runtime-config-file")
            .arg(&rc)
            .current_dir(dir.path())
            .env(CALLBACK_CREDENTIALS_VAR, TEST_CALLBACK_CREDENTIALS)
            .envs(env.iter().cloned())
            .env("RUST_BACKTRACE", "0")
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out);
        let child = cmd
            .spawn()
            .with_context(|| format!("cannot start {runner:?}"))?;
        let mut app = Self {
            child,
            url: format!("http://{listen}"),
            log,
            dir,
        };
        let http = reqwest::Client::new();
        let deadline = std::time::Instant::now() + Duration::from_secs(180);
        loop {
            if let Ok(Some(status)) = app.child.try_wait() {
                anyhow::bail!("{runner:?} exited with {status}:\n{}", app.log_text());
            }
            if let Ok(r) = http.get(format!("{}/health", app.url)).send().await
                && r.status().is_success()
            {
                return Ok(app);
            }
            if std::time::Instant::now() > deadline {
                anyhow::bail!("{runner:?} did not serve within 180 s:\n{}", app.log_text());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// What the child printed so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Its temporary directory (holds the runtime config and any SQLite file it names).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Its process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Wait (up to `within`) until its log has a line containing `marker`; `Err` with the log if it does not
    /// come or the process exits first.
    pub async fn wait_for_log(&mut self, marker: &str, within: Duration) -> anyhow::Result<()> {
        let deadline = std::time::Instant::now() + within;
        loop {
            if self.log_text().lines().any(|l| l.contains(marker)) {
                return Ok(());
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                anyhow::bail!(
                    "exited with {status} before {marker:?}:\n{}",
                    self.log_text()
                );
            }
            if std::time::Instant::now() > deadline {
                anyhow::bail!("no {marker:?} within {within:?}:\n{}", self.log_text());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// A real crash: SIGKILL to its PID (no shutdown of any kind) and to its own children, then reap it.
    /// `spin up` serves the app from a child process (`spin trigger http`), which a SIGKILL to `spin up` alone
    /// would leave running, still holding the port and the store.
    pub fn kill(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            // Its children first, while they are still its children (so their PIDs are theirs); then wait (up
            // to 5 s) until it has reaped them, so their sockets are closed and no zombie is left behind.
            let children = children_of(self.child.id());
            for pid in &children {
                esim402_host::devstack::send_signal(*pid, "KILL");
            }
            for _ in 0..100 {
                if !children.iter().any(|pid| process_exists(*pid)) {
                    break;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            // `Child::kill` is SIGKILL on Unix, sent to this child's PID only.
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
    }
}

/// A child (`esim402 up`, `esim402 devstack -- spin up`) stopped when dropped, also when an assertion panics
/// first: SIGTERM (which stops `spin up` and then the dev stack's servers), up to 15 s, then SIGKILL. Before, a
/// failing assertion left the whole stack running after the test binary exited.
pub struct StopOnDrop(pub Child);

impl StopOnDrop {
    /// Stop it now: its exit status, `None` if it had to be killed.
    pub fn stop(&mut self) -> Option<std::process::ExitStatus> {
        if let Ok(Some(status)) = self.0.try_wait() {
            return Some(status);
        }
        esim402_host::devstack::send_signal(self.0.id(), "TERM");
        for _ in 0..300 {
            if let Ok(Some(status)) = self.0.try_wait() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
        None
    }
}

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Whether a process `pid` exists (Linux: `/proc/<pid>`; a zombie not yet reaped counts).
pub fn process_exists(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

/// Whether a process runs whose command line holds every one of `parts` (Linux: `/proc/<pid>/cmdline`).
pub fn running_with(parts: &[&str]) -> bool {
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| std::fs::read(e.path().join("cmdline")).ok())
        .map(|cmd| String::from_utf8_lossy(&cmd).into_owned())
        .any(|cmd| parts.iter().all(|p| cmd.contains(p)))
}

/// The PIDs of `pid`'s children (Linux: `/proc/<pid>/task/<tid>/children`; none if it cannot be read).
pub fn children_of(pid: u32) -> Vec<u32> {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return Vec::new();
    };
    tasks
        .flatten()
        .filter_map(|t| std::fs::read_to_string(t.path().join("children")).ok())
        .flat_map(|list| {
            list.split_whitespace()
                .filter_map(|p| p.parse().ok())
                .collect::<Vec<u32>>()
        })
        .collect()
}

impl Drop for AppProcess {
    fn drop(&mut self) {
        if let Ok(Some(_)) = self.child.try_wait() {
            // Already reaped: its PID may belong to someone else by now.
            return;
        }
        esim402_host::devstack::send_signal(self.child.id(), "TERM");
        for _ in 0..100 {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        // Still running after 5 s: SIGKILL, its children included.
        self.kill();
    }
}

/// The SM-DP+ simulator (`smdp-sim`) on a loopback port, stopped by its PID on drop.
pub struct SmdpSim {
    child: Child,
    /// `http://127.0.0.1:<port>`.
    pub url: String,
}

impl SmdpSim {
    /// Start it with the default operators, callbacks to `callback` (if any) after `delay_ms`.
    pub fn start(callback: Option<&str>, config: Option<&Path>) -> anyhow::Result<Self> {
        let bin = bin_dir().join("smdp-sim");
        let mut cmd = Command::new(&bin);
        cmd.args(["--listen", "127.0.0.1:0"])
            .env("SMDP_SIM_CALLBACK_CREDENTIALS", TEST_CALLBACK_CREDENTIALS);
        if let Some(cb) = callback {
            cmd.args(["--callback-url", cb]);
        }
        if let Some(c) = config {
            cmd.arg("--config").arg(c);
        }
        let (child, url) = spawn_announcing(cmd.stderr(Stdio::null()), "smdp-sim listening on ")
            .with_context(|| {
                format!(
                    "start {} (cargo builds it with the workspace)",
                    bin.display()
                )
            })?;
        Ok(Self { url, child })
    }
}

impl Drop for SmdpSim {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The traffic simulator (`traffic-sim`) on a loopback port, stopped by its PID on drop.
pub struct TrafficSim {
    child: Child,
    /// `http://127.0.0.1:<port>`.
    pub url: String,
}

impl TrafficSim {
    /// Start it against the app at `facilitator` and the SM-DP+ simulator at `smdp`.
    pub fn start(facilitator: &str, smdp: &str) -> anyhow::Result<Self> {
        Self::start_compressed(facilitator, smdp, 60)
    }

    /// [`TrafficSim::start`] with scheduled traffic `compression` times faster than real time.
    pub fn start_compressed(
        facilitator: &str,
        smdp: &str,
        compression: u64,
    ) -> anyhow::Result<Self> {
        let bin = bin_dir().join("traffic-sim");
        let mut cmd = Command::new(&bin);
        cmd.args([
            "--listen",
            "127.0.0.1:0",
            "--facilitator",
            facilitator,
            "--smdp",
            smdp,
        ])
        .args(["--compression", &compression.to_string()])
        .env("TRAFFIC_SIM_CARRIER_CREDENTIALS", TEST_CALLBACK_CREDENTIALS);
        let (child, url) = spawn_announcing(cmd.stderr(Stdio::null()), "traffic-sim listening on ")
            .with_context(|| {
                format!(
                    "start {} (cargo builds it with the workspace)",
                    bin.display()
                )
            })?;
        Ok(Self { url, child })
    }
}

impl Drop for TrafficSim {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A private redis-server on a loopback port, stopped by PID on drop.
pub struct RedisServer {
    child: Child,
    /// `redis://127.0.0.1:<port>`.
    pub url: String,
}

impl RedisServer {
    /// Its process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Start one; fails with a clear message if `redis-server` is not installed. Ready once it answers `PING`
    /// on its port while still running: a port that another process took between [`free_port`]'s check and
    /// Redis binding it (Redis then exits) is not mistaken for Redis, and the next port is tried.
    pub fn start() -> anyhow::Result<Self> {
        for _ in 0..5 {
            if let Some(server) = Self::try_on(free_port())? {
                return Ok(server);
            }
        }
        anyhow::bail!("redis-server did not answer PING on any of 5 ports")
    }

    /// Start one on `port` (a restart of a server stopped there): `None` if it did not come up there.
    pub fn start_on(port: u16) -> anyhow::Result<Self> {
        Self::try_on(port)?
            .ok_or_else(|| anyhow::anyhow!("redis-server did not answer PING on port {port}"))
    }

    /// Its port.
    pub fn port(&self) -> u16 {
        self.url
            .rsplit(':')
            .next()
            .and_then(|p| p.parse().ok())
            .unwrap_or(0)
    }

    fn try_on(port: u16) -> anyhow::Result<Option<Self>> {
        {
            let child = Command::new("redis-server")
                .args([
                    "--bind",
                    "127.0.0.1",
                    "--port",
                    &port.to_string(),
                    "--save",
                    "",
                    "--appendonly",
                    "no",
                    "--daemonize",
                    "no",
                ])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .map_err(|e| {
                    anyhow::anyhow!("cannot start redis-server (scripts/setup.sh installs it): {e}")
                })?;
            let mut server = Self {
                child,
                url: format!("redis://127.0.0.1:{port}"),
            };
            for _ in 0..250 {
                if let Ok(Some(_)) = server.child.try_wait() {
                    break;
                }
                if pong(port) {
                    return Ok(Some(server));
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            // Dropped: stopped by its PID if it still runs.
        }
        Ok(None)
    }
}

/// Whether a Redis answers `PING` on `port`.
fn pong(port: u16) -> bool {
    use std::io::{Read as _, Write as _};
    let Ok(mut conn) = std::net::TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    let _ = conn.set_read_timeout(Some(Duration::from_secs(1)));
    let mut answer = [0u8; 7];
    conn.write_all(b"PING\r\n").is_ok()
        && conn.read_exact(&mut answer).is_ok()
        && &answer == b"+PONG\r\n"
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Anvil's account #1: the payer (and so the SIM owner) in tests that order profiles directly.
pub const OWNER_KEY: &str = "59c6995e998f97a5a0044966f0945389dc9e86dae88c7a8412f4603b6b78690d";
/// Its address.
pub const OWNER_ADDRESS: &str = "0x70997970C51812dc3A010C7d01b50e0d17dc79C8";

/// A `SIGN-IN-WITH-X` header value for a request to `base` + `path`, signed by `key` (hex) now, with a fresh
/// nonce (as an agent signs each request).
/// The `X-Payment-Proof-Signature` of a tx-hash proof of `tx` for `invoice_id`, signed with the hex `key`.
pub fn sign_proof(key: &str, invoice_id: &str, tx: &str) -> String {
    let key =
        k256::ecdsa::SigningKey::from_slice(&hex::decode(key.trim_start_matches("0x")).unwrap())
            .unwrap();
    let digest = esim402_core::evm::proof_signature::digest(invoice_id, tx.parse().unwrap());
    let sig = esim402_core::x402::exact::sign_prehash(&key, digest).unwrap();
    format!("0x{}", hex::encode(sig))
}

pub fn sign_in(key: &str, base: &str, path: &str) -> String {
    sign_in_ahead(key, base, path, 0)
}

/// [`sign_in`], issued `ahead` seconds in the future: for a host whose clock runs ahead
/// (`ESIM402_CLOCK_SKEW_SECS`).
pub fn sign_in_ahead(key: &str, base: &str, path: &str, ahead: u64) -> String {
    use esim402_core::auth::siwx;
    static COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let key = k256::ecdsa::SigningKey::from_slice(&hex::decode(key).unwrap()).unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap();
    let n = COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let nonce = format!("t{}x{}x{n}", std::process::id(), now.as_nanos());
    let (_, domain) = siwx::origin_of(base).unwrap();
    let uri = format!("{}{}", base.trim_end_matches('/'), path);
    siwx::sign(
        &key,
        &siwx::Challenge {
            domain,
            uri: &uri,
            chain_id: 31337,
            nonce: &nonce,
            issued_at: now.as_secs() + ahead,
            expires_in: 120,
            statement: Some("Manage my SIM"),
        },
    )
    .unwrap()
    .to_header()
}
