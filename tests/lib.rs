//! Test harness: `spawn_app` loads the repository's own `spin.toml` (components prebuilt by `esim402 build`)
//! into the host and serves it on 127.0.0.1 port 0; `RedisServer` runs a private `redis-server` on a loopback
//! port and stops it by its PID when dropped.
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

/// Load options for the repository's app with a given key-value backend.
pub fn options(kv: StoreConfig) -> LoadOptions {
    let mut opts = LoadOptions::new(repo_root().join("spin.toml"));
    opts.kv_override = Some(kv);
    opts.env = std::collections::HashMap::new();
    // One cache for every test binary run, outside the repo's .spin/.
    opts.cache_dir = Some(std::env::temp_dir().join("esim402-test-cache"));
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
        cmd.args(["--listen", "127.0.0.1:0"]);
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

/// A private redis-server on a loopback port, stopped by PID on drop.
pub struct RedisServer {
    child: Child,
    /// `redis://127.0.0.1:<port>`.
    pub url: String,
}

impl RedisServer {
    /// Start one; fails with a clear message if `redis-server` is not installed.
    pub fn start() -> anyhow::Result<Self> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
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
        let server = Self {
            child,
            url: format!("redis://127.0.0.1:{port}"),
        };
        for _ in 0..100 {
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return Ok(server);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        anyhow::bail!("redis-server did not open port {port}")
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
