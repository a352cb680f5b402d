//! The app served by the real `spin up` (Spin 4.1, `esim402_tests::spin_binary`) under `esim402 devstack`
//! (the SM-DP+ simulator and anvil with the test token), for `--scenario paid --runtime spin`: what a user
//! deploying to Spin gets end to end. Spin's SQLite store in a temporary directory; every process on loopback,
//! stopped through `esim402 devstack` (which stops `spin up`, then its stack) and, should one outlive it, by its
//! own PID.

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

use crate::{Args, Kv, children_of};

/// `esim402 devstack -- spin up …`, running.
pub struct SpinStack {
    child: Child,
    stopped: bool,
    /// Spin's store and the stack's log; removed on drop, and by a start that fails.
    dir: tempfile::TempDir,
    /// `http://127.0.0.1:<port>`.
    pub url: String,
    /// The dev stack's facts, as [`crate::Host::start`] reports them (`devstack_json`, `rpc_url`, …).
    pub printed: HashMap<String, String>,
    /// Every process of the stack once it serves (PID, command line).
    tree: Vec<(u32, String)>,
}

impl SpinStack {
    /// Stop the stack (once): `esim402 devstack` stops `spin up` (which stops its trigger process), then its
    /// stack. Its files stay until it is dropped.
    pub fn stop(&mut self) {
        if !std::mem::replace(&mut self.stopped, true) {
            crate::stop_child(&mut self.child, Duration::from_secs(15), &self.tree);
        }
    }

    /// The SQLite file of Spin's store.
    pub fn store_file(&self) -> PathBuf {
        self.dir.path().join("kv.db")
    }

    /// Start it and wait (at most 180 s: Spin compiles the components on its first start) until it serves.
    pub fn start(args: &Args) -> anyhow::Result<Self> {
        if !matches!(args.kv, Kv::Sqlite) {
            bail!("--runtime spin runs on Spin's SQLite store only (--kv sqlite)");
        }
        let spin =
            esim402_tests::spin_binary().map_err(|e| anyhow::anyhow!("--runtime spin: {e}"))?;
        let port = esim402_tests::free_port();
        let url = format!("http://127.0.0.1:{port}");
        let dir = crate::bench_dir()?;
        let rc = crate::sqlite_runtime_config(dir.path())?;
        let log = std::fs::File::create(dir.path().join("log"))?;
        let child = esim402_tests::devstack_spin_up(
            &args.host_bin,
            &spin,
            &args.manifest,
            port,
            dir.path(),
            &rc,
        )
        .args(&args.host_args)
        .env("ESIM402_LOG", "warn")
        .env_remove("RUST_BACKTRACE")
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .spawn()
        .context("start esim402 devstack -- spin up")?;
        crate::track(child.id(), "INT");
        let mut stack = Self {
            child,
            stopped: false,
            dir,
            url,
            printed: HashMap::new(),
            tree: Vec::new(),
        };
        let deadline = Instant::now() + Duration::from_secs(180);
        loop {
            if let Ok(Some(status)) = stack.child.try_wait() {
                bail!(
                    "esim402 devstack -- spin up exited with {status}:\n{}",
                    stack.log()
                );
            }
            if health(&stack.url) {
                break;
            }
            if Instant::now() > deadline {
                bail!("spin up did not serve within 180 s:\n{}", stack.log());
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        let facts = stack.dir.path().join("devstack.json");
        let file: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(&facts)
                .with_context(|| format!("read {}", facts.display()))?,
        )?;
        stack
            .printed
            .insert("devstack_json".into(), facts.display().to_string());
        for k in ["rpc_url", "smdp_url", "token_address"] {
            let v = file[k]
                .as_str()
                .with_context(|| format!("no {k} in {}", facts.display()))?;
            stack.printed.insert(k.into(), v.to_owned());
        }
        stack.tree = descendants(stack.child.id());
        Ok(stack)
    }

    /// The process that serves the app (`spin trigger http`, else `spin up`).
    pub fn server_pid(&self) -> u32 {
        self.tree
            .iter()
            .find(|(_, cmd)| cmd.contains(" trigger http"))
            .or_else(|| self.tree.iter().find(|(_, cmd)| cmd.contains(" up ")))
            .map_or(self.child.id(), |(pid, _)| *pid)
    }

    /// The processes to account CPU time to, by name: Spin's, the dev stack's, and `esim402 devstack` itself.
    pub fn processes(&self) -> Vec<(String, u32)> {
        let name = |cmd: &str| {
            if cmd.contains(" trigger http") {
                "spin (trigger)".to_owned()
            } else if cmd.contains(" up ") && cmd.contains("spin") {
                "spin up".to_owned()
            } else {
                cmd.split_whitespace()
                    .next()
                    .and_then(|p| p.rsplit('/').next())
                    .unwrap_or("child")
                    .to_owned()
            }
        };
        let mut out = vec![("esim402 devstack".to_owned(), self.child.id())];
        out.extend(self.tree.iter().map(|(pid, cmd)| (name(cmd), *pid)));
        out
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("log")).unwrap_or_default()
    }
}

impl Drop for SpinStack {
    fn drop(&mut self) {
        // Stopped before its directory goes (the field is dropped after this).
        self.stop();
    }
}

/// `GET /health` answers 200.
fn health(url: &str) -> bool {
    use std::io::{Read as _, Write as _};
    let Some(addr) = url.strip_prefix("http://") else {
        return false;
    };
    let Ok(mut conn) = std::net::TcpStream::connect(addr) else {
        return false;
    };
    let _ = conn.set_read_timeout(Some(Duration::from_secs(5)));
    if conn
        .write_all(
            format!("GET /health HTTP/1.1\r\nhost: {addr}\r\nconnection: close\r\n\r\n").as_bytes(),
        )
        .is_err()
    {
        return false;
    }
    let mut answer = String::new();
    let _ = conn.read_to_string(&mut answer);
    answer.starts_with("HTTP/1.1 200")
}

/// `pid`'s children, theirs, and so on (PID, command line).
fn descendants(pid: u32) -> Vec<(u32, String)> {
    let mut out = Vec::new();
    let mut todo = vec![pid];
    while let Some(p) = todo.pop() {
        for (child, cmd) in children_of(p) {
            todo.push(child);
            out.push((child, cmd));
        }
    }
    out
}
