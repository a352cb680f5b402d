//! The embedded development stack `esim402 up` starts so the app works on a bare machine: the SM-DP+ simulator
//! (`smdp-sim`, the binary built beside `esim402`), listening on loopback, with its download-progress callbacks
//! pointed at this host; and a local chain ([`chain`]: anvil with the project's EIP-3009 test token deployed and
//! a demo agent funded). Each piece is skipped when the user configured the real thing (`SPIN_VARIABLE_SMDP_URL`,
//! `SPIN_VARIABLE_RPC_URL`), and every child process is stopped by its PID when the stack is dropped. What was
//! started is written to `.spin/devstack.json` for scripts and demos. The commands that start a stack for a
//! directory hold [`lock::DirLock`] on it meanwhile, so a second one there is refused instead of emptying the
//! first one's store.
//!
//! If the process is killed before the stack is dropped (SIGKILL, the OOM killer), the simulators end with it
//! on their own (they ask Linux for a parent-death signal when [`PARENT_PID_ENV`] names their parent), and the
//! next stack started for the same directory stops the rest (anvil): each child is on the lock holder's
//! record ([`children`]) from the moment it is spawned. Linux sends that signal when the *thread* that spawned
//! the child ends, so start a stack from a thread that outlives it (the main thread, a `block_on`; not a
//! `spawn_blocking` task).
//!
//! ```no_run
//! # async fn demo() -> anyhow::Result<()> {
//! let env = std::collections::HashMap::new();
//! let stack = esim402_host::devstack::DevStack::start(".".as_ref(), "127.0.0.1:3000".parse()?, &env).await?;
//! // stack.env: SPIN_VARIABLE_* for the app; stack.facts: what to show and write.
//! # Ok(()) }
//! ```

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use serde_json::json;

pub mod chain;
pub mod children;
pub mod lock;

use children::Record;

/// The environment variable through which the dev stack gives its simulators its PID: a simulator that finds
/// it asks to be sent SIGTERM when its parent ends (Linux's parent-death signal), and exits at once if its
/// parent is not that PID any more (it ended before the simulator could ask).
pub const PARENT_PID_ENV: &str = "ESIM402_PARENT_PID";

/// Children started for development; stopped on drop.
#[derive(Default)]
pub struct DevStack {
    children: Vec<(String, Child)>,
    /// Where the children are recorded for the next stack in the directory, if anywhere ([`children`]).
    record: Option<Record>,
    /// The dev chain's pool watch ([`chain::watch_pool`]), aborted on drop.
    pool_watch: Option<tokio::task::JoinHandle<()>>,
    /// `SPIN_VARIABLE_*` settings that point the app at the stack.
    pub env: Vec<(String, String)>,
    /// What to print and write to `.spin/devstack.json`.
    pub facts: serde_json::Map<String, serde_json::Value>,
}

/// The facts entry holding the generated carrier callback credentials (`carrier=token,…`).
pub const CARRIER_CREDENTIALS_FACT: &str = "carrier_callback_credentials";

/// Whether the facts entry `key` holds a secret (a dev key, a token, credentials): kept in the facts file,
/// which only its owner reads, and never printed.
pub fn secret_fact(key: &str) -> bool {
    key.ends_with("private_key") || key == "admin_token" || key == CARRIER_CREDENTIALS_FACT
}

/// The simulator binary: beside the running `esim402`.
fn sibling(name: &str) -> Option<PathBuf> {
    let exe = std::env::current_exe().ok()?;
    let path = exe.parent()?.join(name);
    path.is_file().then_some(path)
}

impl DevStack {
    /// Start what the environment does not already provide. `app_dir` holds the manifest (and `tools/`, where
    /// `scripts/setup.sh` installs anvil); `listen` is the host's bound address; `env` is the app's environment.
    ///
    /// Variables set in `<app_dir>/.env` count as configured too. That is the file the app reads only when it
    /// runs from `app_dir`: the app reads the current directory's `.env`, as Spin does ([`crate::variables`]).
    /// This one stays with `app_dir` because its callers (the integration tests) start a stack for an app folder
    /// they name, `.env` included, without changing the process's directory. A caller whose app runs elsewhere
    /// must name the file the app reads: [`start_with_dotenv`](Self::start_with_dotenv), as `esim402 up` and
    /// `esim402 devstack` do with the current directory.
    pub async fn start(
        app_dir: &Path,
        listen: SocketAddr,
        env: &HashMap<String, String>,
    ) -> anyhow::Result<Self> {
        Self::start_for(app_dir, &format!("http://{listen}"), env).await
    }

    /// [`start`](Self::start) for an app served elsewhere (e.g. by `spin up`) at `app_url`
    /// (`http://host:port`), where the simulator sends its callbacks. Counts `<app_dir>/.env`, as `start` does
    /// (the same caveat applies).
    pub async fn start_for(
        app_dir: &Path,
        app_url: &str,
        env: &HashMap<String, String>,
    ) -> anyhow::Result<Self> {
        Self::start_with_dotenv(app_dir, app_dir, app_url, env, &[], None).await
    }

    /// [`start_for`](Self::start_for), counting as configured the variables of `dotenv_dir`'s `.env`: it must be
    /// the file the app reads, or the stack could start a simulator or chain the app was told not to use, and
    /// its settings, passed in the environment, would outrank the app's `.env`. `esim402 up` and `esim402
    /// devstack` pass the current directory, whose `.env` the app reads under both hosts ([`crate::variables`]).
    /// A variable the runtime config's `env` providers set (`providers`) counts as configured too, as the app
    /// reads it first. Each child is put on `record` as soon as it is spawned (the directory lock's:
    /// [`lock::DirLock::record`]), so a stack killed before it could stop them has them stopped by the next.
    pub async fn start_with_dotenv(
        app_dir: &Path,
        dotenv_dir: &Path,
        app_url: &str,
        env: &HashMap<String, String>,
        providers: &[crate::variables::EnvProvider],
        record: Option<&Record>,
    ) -> anyhow::Result<Self> {
        let configured = configured(dotenv_dir, env, providers)?;
        let env = &configured;
        let mut stack = Self::default();
        stack.record = record.cloned();
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
            let callback = format!(
                "{}/gsma/rsp2/es2plus/handleDownloadProgressInfo",
                app_url.trim_end_matches('/')
            );
            // The simulator's operators authenticate their callbacks; the app checks the same credentials.
            let credentials = match env.get("SPIN_VARIABLE_CARRIER_CALLBACK_CREDENTIALS") {
                Some(configured) => configured.clone(),
                None => {
                    let fresh = dev_callback_credentials()?;
                    stack.env.push((
                        "SPIN_VARIABLE_CARRIER_CALLBACK_CREDENTIALS".into(),
                        fresh.clone(),
                    ));
                    // In the facts file too (a trial: under `esim402 up`, which writes no env file, nothing
                    // said which credential asks for quota as the carrier); never on the console.
                    stack
                        .facts
                        .insert(CARRIER_CREDENTIALS_FACT.into(), fresh.clone().into());
                    fresh
                }
            };
            let (child, url) = spawn_announcing(
                Command::new(&bin)
                    .args(["--listen", "127.0.0.1:0", "--callback-url", &callback])
                    .env("SMDP_SIM_CALLBACK_CREDENTIALS", &credentials)
                    .env(PARENT_PID_ENV, std::process::id().to_string()),
                "smdp-sim listening on ",
            )?;
            stack.adopt("smdp-sim", &bin, child)?;
            stack
                .env
                .push(("SPIN_VARIABLE_SMDP_URL".into(), url.clone()));
            stack.facts.insert("smdp_url".into(), url.clone().into());
            stack
                .facts
                .insert("smdp_callback_url".into(), callback.into());
            stack.start_traffic(app_url, &url, &credentials)?;
        }
        if env.contains_key("SPIN_VARIABLE_RPC_URL") {
            tracing::info!(
                "dev stack: chain configured by SPIN_VARIABLE_RPC_URL; no anvil started"
            );
        } else {
            stack.start_chain(app_dir, env).await?;
        }
        Ok(stack)
    }

    /// The traffic simulator (`traffic-sim`, beside `esim402`): data sessions for the SIMs the SM-DP+
    /// simulator issued, signed receipts to the app's `/v1/usage`. Optional: without the binary, the stack
    /// runs without it (and says so).
    fn start_traffic(
        &mut self,
        app_url: &str,
        smdp_url: &str,
        credentials: &str,
    ) -> anyhow::Result<()> {
        let Some(bin) = sibling("traffic-sim") else {
            tracing::warn!(
                "dev stack: no traffic-sim beside esim402 (cargo build -p esim402-traffic-sim): no simulated usage"
            );
            return Ok(());
        };
        let (child, url) = spawn_announcing(
            Command::new(&bin)
                .args([
                    "--listen",
                    "127.0.0.1:0",
                    "--facilitator",
                    app_url,
                    "--smdp",
                    smdp_url,
                ])
                .env("TRAFFIC_SIM_CARRIER_CREDENTIALS", credentials)
                .env(PARENT_PID_ENV, std::process::id().to_string()),
            "traffic-sim listening on ",
        )?;
        self.adopt("traffic-sim", &bin, child)?;
        self.facts.insert("traffic_url".into(), url.into());
        Ok(())
    }

    /// anvil + the test token; points the app's payment variables at them.
    async fn start_chain(
        &mut self,
        app_dir: &Path,
        env: &HashMap<String, String>,
    ) -> anyhow::Result<()> {
        let anvil = chain::find_anvil(app_dir, chain::anvil_override().as_deref())?;
        let var = |name: &str, default: &str| {
            env.get(&format!("SPIN_VARIABLE_{name}"))
                .cloned()
                .unwrap_or_else(|| default.to_owned())
        };
        let domain = chain::TokenDomain {
            name: var("USDC_EIP712_NAME", "USD Coin"),
            version: var("USDC_EIP712_VERSION", "2"),
            symbol: "USDC".into(),
        };
        // anvil is recorded as soon as it is spawned, before it answers (`chain::start`).
        let children = &mut self.children;
        let dev = chain::start(&anvil, &domain, self.record.as_ref(), |child| {
            children.push(("anvil".into(), child));
        })
        .await?;
        self.pool_watch = Some(chain::watch_pool(dev.rpc_url.clone()));
        let network = format!("eip155:{}", chain::CHAIN_ID);
        let settings = [
            ("RPC_URL", dev.rpc_url.clone()),
            ("PAYMENT_NETWORK", network.clone()),
            ("USDC_ADDRESS", dev.token.to_string()),
            ("USDC_EIP712_NAME", domain.name.clone()),
            ("USDC_EIP712_VERSION", domain.version.clone()),
            ("RECIPIENT_ADDRESS", chain::RECIPIENT.to_string()),
            (
                "FACILITATOR_PRIVATE_KEY",
                chain::facilitator_key().to_owned(),
            ),
            ("TREASURY_PRIVATE_KEY", chain::treasury_key().to_owned()),
        ];
        for (name, value) in settings {
            let key = format!("SPIN_VARIABLE_{name}");
            if env.get(&key).is_some_and(|v| *v != value) {
                // Name only: the value may be a secret.
                tracing::warn!(
                    "dev stack: {key} is replaced by the dev chain's (set SPIN_VARIABLE_RPC_URL to use your own chain)"
                );
            }
            self.env.push((key, value));
        }
        let facts = [
            ("rpc_url", json!(dev.rpc_url)),
            ("chain_id", json!(chain::CHAIN_ID)),
            ("network", json!(network)),
            ("token_address", json!(dev.token.to_string())),
            ("token_name", json!(domain.name)),
            ("token_version", json!(domain.version)),
            ("token_symbol", json!(domain.symbol)),
            ("token_decimals", json!(6)),
            ("token_owner_address", json!(chain::DEPLOYER.to_string())),
            ("facilitator_address", json!(chain::FACILITATOR.to_string())),
            ("recipient_address", json!(chain::RECIPIENT.to_string())),
            ("demo_agent_address", json!(chain::DEMO_AGENT.to_string())),
            ("demo_agent_private_key", json!(chain::DEMO_AGENT_KEY)),
            (
                "demo_agent_balance",
                json!(chain::DEMO_AGENT_FUNDS.to_string()),
            ),
        ];
        for (k, v) in facts {
            self.facts.insert(k.into(), v);
        }
        // The admin endpoints (refund runs) get a fresh token per start unless one is configured; it is a
        // dev-stack fact so scripts can call them.
        let admin = match env.get("SPIN_VARIABLE_ADMIN_TOKEN") {
            Some(t) => t.clone(),
            None => {
                let token = dev_token()?;
                self.env
                    .push(("SPIN_VARIABLE_ADMIN_TOKEN".into(), token.clone()));
                token
            }
        };
        self.facts.insert("admin_token".into(), json!(admin));
        Ok(())
    }

    /// Keep `child` (spawned from `program`) to stop on drop, and put it on the record.
    fn adopt(&mut self, name: &str, program: &Path, child: Child) -> anyhow::Result<()> {
        let pid = child.id();
        self.children.push((name.to_owned(), child));
        if let Some(record) = &self.record {
            record.add(name, pid, program.as_os_str())?;
        }
        Ok(())
    }

    /// The PID of a started child (`"smdp-sim"`, `"anvil"`).
    pub fn pid(&self, name: &str) -> Option<u32> {
        self.children
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, child)| child.id())
    }

    /// Write the facts to `<dir>/.spin/devstack.json`.
    pub fn write_facts(&self, app_dir: &Path) -> anyhow::Result<PathBuf> {
        self.write_facts_to(&app_dir.join(".spin"))
    }

    /// Write the facts to `<dir>/devstack.json` (readable by its owner only: it holds dev keys).
    pub fn write_facts_to(&self, dir: &Path) -> anyhow::Result<PathBuf> {
        let path = dir.join("devstack.json");
        let json = serde_json::to_string_pretty(&serde_json::Value::Object(self.facts.clone()))?;
        write_private(&path, json.as_bytes())?;
        Ok(path)
    }

    /// Write the `SPIN_VARIABLE_*` settings to `<dir>/devstack.env`, one `NAME=value` per line (for `spin up`:
    /// `set -a; . .spin/devstack.env; set +a`, or `esim402 devstack -- spin up`). Readable by its owner only:
    /// it holds the dev keys and the admin token.
    pub fn write_env(&self, dir: &Path) -> anyhow::Result<PathBuf> {
        let path = dir.join("devstack.env");
        let mut out = String::from(
            "# SPIN_VARIABLE_* settings of the esim402 dev stack (dev keys: never use them for real money).\n",
        );
        for (k, v) in &self.env {
            // Single-quoted: read the same by `sh` and by dotenv parsers (no value of ours holds a quote).
            anyhow::ensure!(
                !v.contains(['\'', '\n']),
                "dev stack value of {k} cannot be written to an env file"
            );
            out.push_str(&format!("{k}='{v}'\n"));
        }
        write_private(&path, out.as_bytes())?;
        Ok(path)
    }
}

/// Write `bytes` to `path` (creating its directory), readable and writable by the owner only.
fn write_private(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .with_context(|| format!("cannot write {}", tmp.display()))?;
    f.write_all(bytes)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path).with_context(|| format!("cannot write {}", path.display()))?;
    Ok(())
}

/// A random dev admin token (`dev_` + 32 hex digits) from the OS's random source (as the callback credentials:
/// hash keys are not documented as cryptographic randomness).
fn dev_token() -> anyhow::Result<String> {
    let mut secret = [0u8; 16];
    getrandom::fill(&mut secret).map_err(|e| anyhow::anyhow!("no randomness: {e}"))?;
    Ok(format!("dev_{}", hex::encode(secret)))
}

/// What the app is configured with, as `SPIN_VARIABLE_<NAME>` keys, in the app's own order
/// ([`crate::variables::resolve`]): the runtime config's `providers` first (the first that sets a variable, each
/// from the environment before its `dotenv_path`), then `env` over the `.env` of `dotenv_dir`.
fn configured(
    dotenv_dir: &Path,
    env: &HashMap<String, String>,
    providers: &[crate::variables::EnvProvider],
) -> anyhow::Result<HashMap<String, String>> {
    let mut configured = crate::variables::dotenv_in(dotenv_dir)?;
    configured.extend(env.iter().map(|(k, v)| (k.clone(), v.clone())));
    // Last inserted wins: the providers in reverse, each one's file before its environment.
    for p in providers.iter().rev() {
        let file = match &p.dotenv_path {
            Some(path) => crate::variables::dotenv_file(path)?,
            None => HashMap::new(),
        };
        let prefix = format!("{}_", p.prefix.as_deref().unwrap_or("SPIN_VARIABLE"));
        for (k, v) in file.iter().chain(env.iter()) {
            if let Some(name) = k.strip_prefix(&prefix) {
                configured.insert(format!("SPIN_VARIABLE_{name}"), v.clone());
            }
        }
    }
    Ok(configured)
}

/// The key-value file `esim402 up` uses while its dev stack runs a fresh chain: emptied at every start, because
/// the state the app keeps (signer nonces, settlements, claims) belongs to the chain it was made on, and a
/// fresh anvil is a new chain with the same id (re-using it would sign with nonces that chain never saw).
pub const FRESH_CHAIN_STORE: &str = ".spin/devstack-kv.db";

impl DevStack {
    /// Whether this stack started its own (fresh, in-memory) chain.
    pub fn started_chain(&self) -> bool {
        self.facts.contains_key("chain_id")
    }

    /// Empty [`FRESH_CHAIN_STORE`] under `app_dir` (the file and SQLite's journal files) and return its path.
    pub fn fresh_store(app_dir: &Path) -> anyhow::Result<std::path::PathBuf> {
        let path = app_dir.join(FRESH_CHAIN_STORE);
        for suffix in ["", "-wal", "-shm", "-journal"] {
            let p = std::path::PathBuf::from(format!("{}{suffix}", path.display()));
            match std::fs::remove_file(&p) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(e).with_context(|| format!("cannot empty {}", p.display())),
            }
        }
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        Ok(path)
    }
}

/// The operators of the simulator's default configuration (its `DEFAULT_OPERATORS`), which are the built-in
/// catalog's carriers.
const DEV_OPERATORS: [&str; 5] = ["tmobile", "verizon", "att", "telekom-de", "vodafone-de"];

/// Fresh random callback credentials for the dev stack's operators (`operator=secret,…`), never printed.
fn dev_callback_credentials() -> anyhow::Result<String> {
    let mut items = Vec::with_capacity(DEV_OPERATORS.len());
    for op in DEV_OPERATORS {
        let mut secret = [0u8; 24];
        getrandom::fill(&mut secret).map_err(|e| anyhow::anyhow!("no randomness: {e}"))?;
        items.push(format!("{op}={}", hex::encode(secret)));
    }
    Ok(items.join(","))
}

/// Stop `child`: `signal` (`"TERM"`, `"INT"`) to its PID, up to `grace` for it to exit, then SIGKILL; reaped
/// either way. `true` if it exited within the grace. A child already reaped is left alone: its PID may belong
/// to another process by now. Also used by the benchmarks to stop the servers they start.
pub fn stop_child(child: &mut Child, signal: &str, grace: Duration) -> bool {
    if let Ok(Some(_)) = child.try_wait() {
        return true;
    }
    send_signal(child.id(), signal);
    let deadline = Instant::now() + grace;
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
    false
}

/// Send `signal` (`"TERM"`, `"INT"`, `"KILL"`; anything else is TERM) to process `pid` through the kill system
/// call, not a `kill` binary (a minimal image may lack procps, and then no stop was ever sent). A process that is
/// gone already is no error. Also used by the tests and benchmarks to stop what they start.
pub fn send_signal(pid: u32, signal: &str) {
    use rustix::process::{Pid, Signal, kill_process};
    let signal = match signal {
        "INT" => Signal::INT,
        "KILL" => Signal::KILL,
        _ => Signal::TERM,
    };
    if let Some(pid) = i32::try_from(pid).ok().and_then(Pid::from_raw) {
        let _ = kill_process(pid, signal);
    }
}

/// Spawn `cmd`, wait (up to 10 s) for the stdout line starting with `prefix` and return the rest of it (e.g.
/// the address a server bound on port 0). Stdout keeps being drained so the child never blocks on a full pipe;
/// stderr is whatever `cmd` sets (inherited by default). Also used by the tests and benchmarks to start peers.
pub fn spawn_announcing(cmd: &mut Command, prefix: &str) -> anyhow::Result<(Child, String)> {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()
        .with_context(|| format!("cannot start {}", described(cmd)))?;
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
            bail!(
                "{} exited with {status} before it was ready",
                described(cmd)
            );
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            bail!("{} did not become ready within 10 s", described(cmd));
        }
    }
}

/// `cmd` for an error message: its program and arguments, never its environment (a `Command`'s `Debug` shows
/// the variables set on it, and the dev stack hands the simulators their callback credentials that way).
fn described(cmd: &Command) -> String {
    let mut out = cmd.get_program().to_string_lossy().into_owned();
    for arg in cmd.get_args() {
        out.push(' ');
        out.push_str(&arg.to_string_lossy());
    }
    out
}

impl Drop for DevStack {
    fn drop(&mut self) {
        if let Some(watch) = self.pool_watch.take() {
            watch.abort();
        }
        for (name, child) in &mut self.children {
            // SIGTERM first so children shut down cleanly, then make sure.
            stop_child(child, "TERM", Duration::from_secs(5));
            if let Some(record) = &self.record {
                record.remove(child.id());
            }
            tracing::debug!(%name, "dev stack: stopped");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A child that fails to start is named by its program and arguments, never its environment, where the
    /// dev stack hands the simulators their callback credentials (a `Command`'s `Debug` shows it).
    #[test]
    fn dev_admin_tokens_are_random_and_of_one_shape() {
        let (a, b) = (dev_token().unwrap(), dev_token().unwrap());
        assert_ne!(a, b);
        for t in [a, b] {
            assert!(t.starts_with("dev_") && t.len() == 36, "{t}");
            assert!(t[4..].bytes().all(|c| c.is_ascii_hexdigit()), "{t}");
        }
    }

    #[test]
    fn a_child_that_fails_is_named_without_its_environment() {
        let mut cmd = Command::new("sh");
        cmd.args(["-c", "exit 3"])
            .env("SMDP_SIM_CALLBACK_CREDENTIALS", "tmobile=supersecretvalue");
        let e = format!("{:#}", spawn_announcing(&mut cmd, "ready ").unwrap_err());
        assert!(!e.contains("supersecretvalue"), "{e}");
        assert!(
            e.contains("sh -c exit 3") && e.contains("before it was ready"),
            "{e}"
        );
        let mut missing = Command::new("/nonexistent/esim402-peer");
        missing.env("KEY", "supersecretvalue");
        let e = format!(
            "{:#}",
            spawn_announcing(&mut missing, "ready ").unwrap_err()
        );
        assert!(!e.contains("supersecretvalue"), "{e}");
    }

    #[test]
    fn the_stack_counts_the_dotenv_it_is_given_under_the_environment() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join(".env"),
            "SPIN_VARIABLE_RPC_URL=http://from-dotenv:1\nSPIN_VARIABLE_SMDP_URL=http://from-dotenv:2\n",
        )
        .unwrap();
        let env = HashMap::from([(
            "SPIN_VARIABLE_SMDP_URL".to_owned(),
            "http://from-env:3".to_owned(),
        )]);
        let c = configured(dir.path(), &env, &[]).unwrap();
        assert_eq!(c["SPIN_VARIABLE_RPC_URL"], "http://from-dotenv:1");
        assert_eq!(c["SPIN_VARIABLE_SMDP_URL"], "http://from-env:3");
        let empty = tempfile::tempdir().unwrap();
        assert_eq!(configured(empty.path(), &env, &[]).unwrap(), env);
    }

    /// A variable the runtime config's `env` providers set counts as configured, in the app's order (the first
    /// provider, its environment before its file): a review found the stack filling in (and so overriding, for
    /// the simulator) callback credentials the app read from a provider.
    #[test]
    fn the_stack_counts_what_the_runtime_configs_providers_set() {
        use crate::variables::EnvProvider;
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("app.env");
        std::fs::write(
            &file,
            "MYAPP_SMDP_URL=http://from-file:1\nMYAPP_CARRIER_CALLBACK_CREDENTIALS=tmobile=file\n",
        )
        .unwrap();
        let env = HashMap::from([
            (
                "MYAPP_CARRIER_CALLBACK_CREDENTIALS".to_owned(),
                "tmobile=env".to_owned(),
            ),
            ("OTHER_SMDP_URL".to_owned(), "http://other:2".to_owned()),
            (
                "SPIN_VARIABLE_RPC_URL".to_owned(),
                "http://default:3".to_owned(),
            ),
        ]);
        let providers = [
            EnvProvider {
                prefix: Some("MYAPP".into()),
                dotenv_path: Some(file),
            },
            EnvProvider {
                prefix: Some("OTHER".into()),
                dotenv_path: None,
            },
        ];
        let c = configured(dir.path(), &env, &providers).unwrap();
        assert_eq!(
            c["SPIN_VARIABLE_SMDP_URL"], "http://from-file:1",
            "the first provider"
        );
        assert_eq!(
            c["SPIN_VARIABLE_CARRIER_CALLBACK_CREDENTIALS"],
            "tmobile=env"
        );
        assert_eq!(c["SPIN_VARIABLE_RPC_URL"], "http://default:3");
    }

    #[test]
    fn a_fresh_chain_store_starts_empty_every_time() {
        let dir = tempfile::tempdir().unwrap();
        let first = DevStack::fresh_store(dir.path()).unwrap();
        assert_eq!(first, dir.path().join(FRESH_CHAIN_STORE));
        assert!(first.parent().unwrap().is_dir());
        // What a previous run left: the database and SQLite's side files.
        for suffix in ["", "-wal", "-shm"] {
            std::fs::write(format!("{}{suffix}", first.display()), b"old chain state").unwrap();
        }
        let again = DevStack::fresh_store(dir.path()).unwrap();
        assert_eq!(again, first);
        for suffix in ["", "-wal", "-shm"] {
            assert!(!std::path::Path::new(&format!("{}{suffix}", first.display())).exists());
        }
        let stack = DevStack::default();
        assert!(!stack.started_chain());
    }
}
