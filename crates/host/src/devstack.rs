//! The embedded development stack `esim402 up` starts so the app works on a bare machine: today the SM-DP+
//! simulator (`smdp-sim`, the binary built beside `esim402`), listening on loopback, with its download-progress
//! callbacks pointed at this host. Each piece is skipped when the user configured the real thing (e.g.
//! `SPIN_VARIABLE_SMDP_URL`), and every child process is stopped by its PID when the host exits. What was
//! started is written to `.spin/devstack.json` for scripts and demos.

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

/// Children started for development; stopped on drop.
#[derive(Default)]
pub struct DevStack {
    children: Vec<(String, Child)>,
    /// `SPIN_VARIABLE_*` settings that point the app at the stack.
    pub env: Vec<(String, String)>,
    /// What to print and write to `.spin/devstack.json`.
    pub facts: serde_json::Map<String, serde_json::Value>,
}

/// The simulator binary: beside the running `esim402`.
fn sibling(name: &str) -> Option<PathBuf> {
    let exe = std::env::current_exe().ok()?;
    let path = exe.parent()?.join(name);
    path.is_file().then_some(path)
}

impl DevStack {
    /// Start what the environment does not already provide. `listen` is the host's bound address.
    pub fn start(listen: SocketAddr, env: &HashMap<String, String>) -> anyhow::Result<Self> {
        let mut stack = Self::default();
        if env.contains_key("SPIN_VARIABLE_SMDP_URL") {
            tracing::info!(
                "dev stack: SM-DP+ configured by SPIN_VARIABLE_SMDP_URL; no simulator started"
            );
        } else {
            let Some(bin) = sibling("smdp-sim") else {
                bail!(
                    "the SM-DP+ simulator binary `smdp-sim` is not next to esim402 (build it with \
                     `cargo build -p esim402-smdp-sim`), or set SPIN_VARIABLE_SMDP_URL, or pass --no-dev-stack"
                );
            };
            let callback = format!("http://{listen}/gsma/rsp2/es2plus/handleDownloadProgressInfo");
            let (child, url) = spawn_announcing(
                Command::new(&bin).args(["--listen", "127.0.0.1:0", "--callback-url", &callback]),
                "smdp-sim listening on ",
            )?;
            stack.children.push(("smdp-sim".into(), child));
            stack
                .env
                .push(("SPIN_VARIABLE_SMDP_URL".into(), url.clone()));
            stack.facts.insert("smdp_url".into(), url.into());
            stack
                .facts
                .insert("smdp_callback_url".into(), callback.into());
        }
        Ok(stack)
    }

    /// Write the facts to `<dir>/.spin/devstack.json`.
    pub fn write_facts(&self, app_dir: &Path) -> anyhow::Result<PathBuf> {
        let dir = app_dir.join(".spin");
        std::fs::create_dir_all(&dir)?;
        let path = dir.join("devstack.json");
        std::fs::write(
            &path,
            serde_json::to_string_pretty(&serde_json::Value::Object(self.facts.clone()))?,
        )?;
        Ok(path)
    }
}

/// Spawn `cmd`, wait (up to 10 s) for the stdout line starting with `prefix` and return the rest of it.
fn spawn_announcing(cmd: &mut Command, prefix: &str) -> anyhow::Result<(Child, String)> {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .with_context(|| format!("cannot start {cmd:?}"))?;
    let stdout = child.stdout.take().context("child stdout")?;
    let (tx, rx) = std::sync::mpsc::channel();
    let prefix = prefix.to_owned();
    std::thread::spawn(move || {
        let mut lines = BufReader::new(stdout).lines();
        for line in lines.by_ref().map_while(Result::ok) {
            if let Some(rest) = line.strip_prefix(&prefix) {
                let _ = tx.send(rest.trim().to_owned());
                break;
            }
        }
        // Keep draining so the child never blocks on a full pipe.
        for _ in lines {}
    });
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Ok(v) = rx.recv_timeout(Duration::from_millis(50)) {
            return Ok((child, v));
        }
        if let Ok(Some(status)) = child.try_wait() {
            bail!("{cmd:?} exited with {status} before it was ready");
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            bail!("{cmd:?} did not become ready within 10 s");
        }
    }
}

impl Drop for DevStack {
    fn drop(&mut self) {
        for (name, child) in &mut self.children {
            // SIGTERM first so children shut down cleanly, then make sure.
            let _ = Command::new("kill")
                .args(["-TERM", &child.id().to_string()])
                .status();
            let deadline = Instant::now() + Duration::from_secs(5);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = child.try_wait() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = child.kill();
            let _ = child.wait();
            tracing::debug!(%name, "dev stack: stopped");
        }
    }
}
