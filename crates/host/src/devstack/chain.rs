//! The dev chain: anvil (the project-local binary from npm `@foundry-rs/anvil`, installed by `scripts/setup.sh`
//! into `tools/node_modules`) on a loopback port, with the project's EIP-3009 test token
//! (`contracts/EIP3009Token.sol`, its compiled artifact embedded in this binary) deployed by anvil account #0 and
//! 1,000 USDC minted to the demo agent.
//!
//! Accounts come from anvil's public test mnemonic (`test test … junk`); their keys are published test keys,
//! worthless anywhere but a local chain:
//! - #0 deploys the token and owns it (may mint);
//! - #1 is the facilitator: its key goes to the app as `facilitator_private_key` (never logged, never written
//!   to `.spin/devstack.json`);
//! - #2 is the recipient (`payTo`) and the treasury that pays refunds (`treasury_private_key`, env only);
//! - #9 is the demo agent: its key is written to `.spin/devstack.json` so demos can sign payments with it.
//!
//! [`watch_pool`] works around an anvil 1.7.1 pool race: when a sender's transactions arrive out of nonce order
//! while automine is mining their predecessor, anvil can keep the one at the sender's next nonce in its *queued*
//! pool for good (and every later one behind it); mining does not release it (foundry-rs/foundry#10122). The
//! facilitator's settlements would then stay `settlement_pending` until the chain restarts. The watch takes
//! such a sender's queued transactions out of the pool and sends them again, in nonce order.

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use alloy_primitives::{Address, U256, address};
use alloy_sol_types::{SolCall, SolValue, sol};
use anyhow::{Context, bail};
use serde_json::{Value, json};

/// anvil's default chain id.
pub const CHAIN_ID: u64 = 31337;
/// The mnemonic the accounts below derive from (anvil's default, passed explicitly so it cannot drift).
const MNEMONIC: &str = "test test test test test test test test test test test junk";
/// Account #0: deploys and owns the token.
pub const DEPLOYER: Address = address!("0xf39Fd6e51aad88F6F4ce6aB8827279cffFb92266");
/// Account #1: the facilitator (pays gas, submits `transferWithAuthorization`).
pub const FACILITATOR: Address = address!("0x70997970C51812dc3A010C7d01b50e0d17dc79C8");
/// Account #1's key: a published anvil test key, handed to the app only through its environment.
const FACILITATOR_KEY: &str = "0x59c6995e998f97a5a0044966f0945389dc9e86dae88c7a8412f4603b6b78690d";
/// Account #2: receives payments.
pub const RECIPIENT: Address = address!("0x3C44CdDdB6a900fa2b585dd299e03d12FA4293BC");
/// Account #2's key: the dev treasury that pays refunds (it holds the payments), app environment only.
const RECIPIENT_KEY: &str = "0x5de4111afa1a4b94908f83103eb1f1706367c2e68ca870fc3fb9a804cdab365a";
/// Account #9: the demo agent, funded with test USDC.
pub const DEMO_AGENT: Address = address!("0xa0Ee7A142d267C1f36714E4a8F75612F20a79720");
/// Account #9's key: a published anvil test key; the demo's wallet, written to `.spin/devstack.json`.
pub const DEMO_AGENT_KEY: &str =
    "0x2a871d0798f97d79848a013d4936a73bf4cc922c825d33c1cf7073dff6d409c6";
/// What the demo agent is funded with: 1,000 USDC in atomic units (6 decimals).
pub const DEMO_AGENT_FUNDS: u64 = 1_000_000_000;

/// The compiled test token (`scripts/compile-token.sh` writes it from the Solidity source).
const ARTIFACT: &str = include_str!("../../../../contracts/EIP3009Token.json");

sol! {
    function mint(address to, uint256 value);
    function balanceOf(address owner) external view returns (uint256);
}

/// The token's EIP-712 domain and symbol.
#[derive(Debug, Clone)]
pub struct TokenDomain {
    /// EIP-712 name, e.g. "USD Coin".
    pub name: String,
    /// EIP-712 version, e.g. "2".
    pub version: String,
    /// ERC-20 symbol.
    pub symbol: String,
}

/// A running, funded dev chain.
#[derive(Debug, Clone)]
pub struct DevChain {
    /// `http://127.0.0.1:<port>`.
    pub rpc_url: String,
    /// Where the token was deployed.
    pub token: Address,
}

/// The `ESIM402_ANVIL` environment variable, read from the process (not the app's variables, which
/// `esim402 devstack` narrows to `SPIN_VARIABLE_*`, nor a `.env` file: it picks a binary to run).
pub fn anvil_override() -> Option<std::ffi::OsString> {
    std::env::var_os("ESIM402_ANVIL")
}

/// The anvil binary: `chosen` (the `ESIM402_ANVIL` environment variable: [`anvil_override`]) if set, else the
/// platform binary of the npm package under `<app_dir>/tools/node_modules` (not the `.bin/anvil` node wrapper,
/// so the child's PID is anvil's own).
pub fn find_anvil(app_dir: &Path, chosen: Option<&std::ffi::OsStr>) -> anyhow::Result<PathBuf> {
    if let Some(path) = chosen {
        let path = PathBuf::from(path);
        if path.is_file() {
            return Ok(path);
        }
        bail!(
            "ESIM402_ANVIL points to {}, which is not a file",
            path.display()
        );
    }
    let os = match std::env::consts::OS {
        "macos" => "darwin",
        "windows" => "win32",
        other => other,
    };
    let arch = match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    };
    let exe = if os == "win32" { "anvil.exe" } else { "anvil" };
    let path = app_dir
        .join("tools/node_modules/@foundry-rs")
        .join(format!("anvil-{os}-{arch}"))
        .join("bin")
        .join(exe);
    if path.is_file() {
        Ok(path)
    } else {
        bail!(
            "anvil, the dev chain, is not installed: run scripts/setup.sh (it installs anvil into \
             tools/node_modules; expected {}), or set SPIN_VARIABLE_RPC_URL to use another chain, or pass \
             --no-dev-stack",
            path.display()
        )
    }
}

/// How many loopback ports [`start`] tries: a port picked free can be taken by another process before anvil
/// binds it, and anvil then exits.
const PORT_TRIES: usize = 3;

/// Start anvil on a free loopback port, deploy the token and fund the demo agent.
///
/// anvil runs with `--quiet`: it would otherwise print a line per RPC call, which the host had to read and throw
/// away for as long as the chain runs (a thread woken per line; about 2% of the host's CPU under paid load).
/// So the port is picked here (bound and released) rather than read from anvil's banner.
/// `on_spawn` receives the child as soon as it answers, so the caller can stop it if a later step fails; it is
/// on `record` from its spawn on (struck off again if this start stops it), so that it is stopped by the next
/// stack should this process be killed meanwhile ([`super::children`]).
pub async fn start(
    anvil: &Path,
    domain: &TokenDomain,
    record: Option<&super::children::Record>,
    on_spawn: impl FnOnce(Child),
) -> anyhow::Result<DevChain> {
    let started = Instant::now();
    let (child, rpc) = spawn_quiet(anvil, record).await?;
    on_spawn(child);
    let token = deploy(&rpc, domain).await?;
    mint(&rpc, token, DEMO_AGENT, U256::from(DEMO_AGENT_FUNDS))
        .await
        .context("minting test USDC to the demo agent")?;
    tracing::info!(
        rpc_url = %rpc.url,
        %token,
        facilitator = %FACILITATOR,
        elapsed_ms = started.elapsed().as_millis() as u64,
        "dev stack: anvil running, test token deployed and the demo agent funded"
    );
    Ok(DevChain {
        rpc_url: rpc.url,
        token,
    })
}

/// The block gas limit anvil gets when none is asked for; [`spawn_quiet`] adds up to [`MARKER_SPAN`] - 1 to it.
const BASE_GAS_LIMIT: u64 = 30_000_000;
/// How many marker values there are: two chains started together pick the same one with odds of 1 in this.
const MARKER_SPAN: u64 = 1 << 20;

/// A per-spawn identity for anvil: its block gas limit, 30M plus a random offset (no transaction here comes near
/// 30M gas, so it changes nothing else). The port is picked by binding and releasing it, so another process can
/// take it before our anvil binds; if that process is another dev stack's anvil, it answers `eth_chainId` with the
/// same id while ours is still on its way to exiting, and the chain id alone would accept it.
fn gas_limit_marker() -> anyhow::Result<u64> {
    let mut b = [0u8; 8];
    getrandom::fill(&mut b).map_err(|e| anyhow::anyhow!("no randomness: {e}"))?;
    Ok(BASE_GAS_LIMIT + u64::from_le_bytes(b) % MARKER_SPAN)
}

/// Spawn anvil quietly on a free loopback port and wait until *it* answers (the dev chain's id and this spawn's
/// gas-limit marker); another port if anvil exits first or another chain answers there (the port picked was
/// taken meanwhile). Each anvil spawned is on `record` until this stops it.
async fn spawn_quiet(
    anvil: &Path,
    record: Option<&super::children::Record>,
) -> anyhow::Result<(Child, Rpc)> {
    let mut last = None;
    for _ in 0..PORT_TRIES {
        let marker = gas_limit_marker()?;
        let port = std::net::TcpListener::bind(("127.0.0.1", 0))
            .and_then(|l| l.local_addr())
            .context("picking a loopback port for anvil")?
            .port();
        let child = Command::new(anvil)
            .args(["--quiet", "--host", "127.0.0.1", "--port"])
            .arg(port.to_string())
            .args(["--chain-id", &CHAIN_ID.to_string(), "--mnemonic", MNEMONIC])
            .args(["--accounts", "10", "--gas-limit"])
            .arg(marker.to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .spawn()
            .with_context(|| format!("cannot start {}", anvil.display()))?;
        // Stopped if this start is abandoned while anvil comes up: an error, or the caller's future dropped
        // (`esim402 up` stopped during start-up).
        let mut starting = Starting(Some(child), record.cloned());
        if let (Some(record), Some(child)) = (record, starting.0.as_ref()) {
            record.add("anvil", child.id(), anvil.as_os_str())?;
        }
        let rpc = Rpc::new(format!("http://127.0.0.1:{port}"))?;
        let ready = match starting.0.as_mut() {
            Some(child) => rpc.wait_ready(child, marker).await,
            None => Err(anyhow::anyhow!("anvil was not started")),
        };
        match (ready, starting.0.take()) {
            (Ok(()), Some(child)) => return Ok((child, rpc)),
            (Ok(()), None) => last = Some(anyhow::anyhow!("anvil was not started")),
            (Err(e), child) => {
                if let Some(mut child) = child {
                    super::stop_child(&mut child, "TERM", Duration::from_secs(5));
                    if let Some(record) = record {
                        record.remove(child.id());
                    }
                }
                last = Some(e);
            }
        }
    }
    Err(last.unwrap_or_else(|| anyhow::anyhow!("anvil did not start")))
}

/// A child process on its way up, stopped by its PID (and struck off the record) if dropped before it is
/// handed on.
struct Starting(Option<Child>, Option<super::children::Record>);

impl Drop for Starting {
    fn drop(&mut self) {
        if let Some(child) = self.0.as_mut() {
            super::stop_child(child, "TERM", Duration::from_secs(5));
            if let Some(record) = &self.1 {
                record.remove(child.id());
            }
        }
    }
}

/// How often [`watch_pool`] reads anvil's pool counts (`txpool_status`, a few bytes); the pool's content is read
/// only while something is queued, and a transaction must be seen stuck twice in a row (a transaction at its
/// sender's nonce is otherwise mined within milliseconds under automine). A stuck settlement so waits 50–100
/// ms plus the re-send (at 250 ms, paid runs on SQLite showed ~0.6 s stalls in 2 of 12 runs of 400).
const WATCH_EVERY: Duration = Duration::from_millis(50);

/// Watch the dev chain's pool for the anvil race described in the module docs and release what it holds; runs
/// until the task is aborted (the dev stack does when it stops).
pub fn watch_pool(rpc_url: String) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let Ok(rpc) = Rpc::new(rpc_url) else {
            return;
        };
        let mut seen = HashSet::new();
        loop {
            tokio::time::sleep(WATCH_EVERY).await;
            match release_stuck(&rpc, &mut seen).await {
                Ok(0) => {}
                Ok(n) => tracing::warn!(
                    resent = n,
                    "dev chain: anvil held transactions queued at their sender's next nonce (an anvil pool race); \
                     sent them again"
                ),
                Err(e) => {
                    tracing::debug!(error = %format!("{e:#}"), "dev chain: pool check failed")
                }
            }
        }
    })
}

/// Senders with queued transactions and none pending, each with its queued transactions (nonce → hash), from
/// a `txpool_content` answer. Only these can be stuck: a sender with a pending transaction is being mined.
fn queued_only(content: &Value) -> Vec<(String, BTreeMap<u64, String>)> {
    let pending = |sender: &str| {
        content["pending"]
            .as_object()
            .is_some_and(|p| p.keys().any(|k| k.eq_ignore_ascii_case(sender)))
    };
    let Some(queued) = content["queued"].as_object() else {
        return Vec::new();
    };
    queued
        .iter()
        .filter(|(sender, _)| !pending(sender))
        .map(|(sender, txs)| {
            let txs = txs
                .as_object()
                .into_iter()
                .flatten()
                .filter_map(|(nonce, tx)| {
                    Some((nonce.parse().ok()?, tx["hash"].as_str()?.to_owned()))
                })
                .collect();
            (sender.clone(), txs)
        })
        .filter(|(_, txs): &(String, BTreeMap<u64, String>)| !txs.is_empty())
        .collect()
}

/// One check: a sender whose queued transactions include the one at its account nonce, seen so at the previous
/// check too (`seen`), has them taken out of the pool and sent again in nonce order. The number sent again.
/// (A transaction that reaches the pool between the read and the removal is removed unsent; the facilitator
/// re-sends a transaction the node no longer knows.)
async fn release_stuck(rpc: &Rpc, seen: &mut HashSet<(String, u64)>) -> anyhow::Result<usize> {
    let status = rpc.call("txpool_status", json!([])).await?;
    let queued =
        quantity(&status["queued"]).with_context(|| format!("txpool_status answered {status}"))?;
    if queued == 0 {
        seen.clear();
        return Ok(0);
    }
    let content = rpc.call("txpool_content", json!([])).await?;
    let mut stuck_now = HashSet::new();
    let mut resent = 0;
    for (sender, queued) in queued_only(&content) {
        let nonce = rpc
            .call("eth_getTransactionCount", json!([sender, "latest"]))
            .await?;
        let nonce = quantity(&nonce)
            .with_context(|| format!("eth_getTransactionCount answered {nonce}"))?;
        if !queued.contains_key(&nonce) {
            continue;
        }
        let key = (sender.to_ascii_lowercase(), nonce);
        if !seen.contains(&key) {
            stuck_now.insert(key);
            continue;
        }
        let mut raws = Vec::with_capacity(queued.len());
        for hash in queued.values() {
            let raw = rpc
                .call("eth_getRawTransactionByHash", json!([hash]))
                .await?;
            if raw.is_string() {
                raws.push(raw);
            }
        }
        rpc.call("anvil_removePoolTransactions", json!([sender]))
            .await?;
        for raw in raws {
            match rpc.call("eth_sendRawTransaction", json!([raw])).await {
                Ok(_) => resent += 1,
                Err(e) => {
                    tracing::debug!(error = %format!("{e:#}"), "dev chain: a queued transaction was not accepted again")
                }
            }
        }
    }
    *seen = stuck_now;
    Ok(resent)
}

/// A JSON-RPC quantity (`"0x…"`) as a `u64`.
fn quantity(v: &Value) -> Option<u64> {
    Some(
        v.as_str()?
            .parse::<alloy_primitives::U64>()
            .ok()?
            .to::<u64>(),
    )
}

/// The facilitator's key for the app's environment (never log it).
pub fn facilitator_key() -> &'static str {
    FACILITATOR_KEY
}

/// The treasury's key (refunds) for the app's environment (never log it).
pub fn treasury_key() -> &'static str {
    RECIPIENT_KEY
}

/// Mint `value` of the test token at `token` to `to` (the deployer, account #0, may).
async fn mint(rpc: &Rpc, token: Address, to: Address, value: U256) -> anyhow::Result<()> {
    rpc.transact(DEPLOYER, Some(token), &mintCall { to, value }.abi_encode())
        .await
        .map(drop)
}

/// Make `owner` hold at least `at_least` of the test token on a dev chain this module started (`rpc_url` and
/// `token` as `.spin/devstack.json` has them): mints the shortfall. For load runs that spend more than the
/// demo agent's [`DEMO_AGENT_FUNDS`]. Returns what was minted.
pub async fn fund(
    rpc_url: &str,
    token: Address,
    owner: Address,
    at_least: U256,
) -> anyhow::Result<U256> {
    let rpc = Rpc::new(rpc_url.to_owned())?;
    let call = json!({"to": token, "data": format!("0x{}", hex::encode(balanceOfCall { owner }.abi_encode()))});
    let result = rpc.call("eth_call", json!([call, "latest"])).await?;
    let bytes: alloy_primitives::Bytes =
        serde_json::from_value(result).context("eth_call balanceOf: no hex result")?;
    let balance = balanceOfCall::abi_decode_returns(&bytes).context("eth_call balanceOf")?;
    if balance >= at_least {
        return Ok(U256::ZERO);
    }
    let shortfall = at_least - balance;
    mint(&rpc, token, owner, shortfall)
        .await
        .context("minting test USDC")?;
    Ok(shortfall)
}

/// Deploy the token from account #0; returns its address.
async fn deploy(rpc: &Rpc, domain: &TokenDomain) -> anyhow::Result<Address> {
    let artifact: Value =
        serde_json::from_str(ARTIFACT).context("contracts/EIP3009Token.json is not JSON")?;
    let bytecode = artifact["bytecode"]
        .as_str()
        .and_then(|b| b.strip_prefix("0x"))
        .and_then(|b| hex::decode(b).ok())
        .context("contracts/EIP3009Token.json has no hex `bytecode`")?;
    let args = (
        domain.name.clone(),
        domain.version.clone(),
        domain.symbol.clone(),
    )
        .abi_encode_params();
    let receipt = rpc
        .transact(DEPLOYER, None, &[bytecode, args].concat())
        .await
        .context("deploying the test token")?;
    receipt["contractAddress"]
        .as_str()
        .and_then(|a| a.parse().ok())
        .context("deployment receipt has no contractAddress")
}

/// A minimal JSON-RPC client for anvil.
struct Rpc {
    http: reqwest::Client,
    url: String,
}

impl Rpc {
    fn new(url: String) -> anyhow::Result<Self> {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .build()?;
        Ok(Self { http, url })
    }

    async fn call(&self, method: &str, params: Value) -> anyhow::Result<Value> {
        let body = json!({"jsonrpc": "2.0", "id": 1, "method": method, "params": params});
        let mut reply: Value = self
            .http
            .post(&self.url)
            .json(&body)
            .send()
            .await?
            .error_for_status()?
            .json()
            .await?;
        if let Some(err) = reply.get("error") {
            bail!("{method}: {err}");
        }
        Ok(reply["result"].take())
    }

    /// Poll `eth_chainId` until the anvil `child` answers here (it opens its port in about 0.1 s; up to 10 s),
    /// then check that the chain answering is the child's: the dev chain's id and the genesis block's gas limit
    /// `marker` (see [`gas_limit_marker`]). An error at once if the child exits.
    async fn wait_ready(&self, child: &mut Child, marker: u64) -> anyhow::Result<()> {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(status) = child.try_wait()? {
                bail!(
                    "anvil exited with {status} before answering at {}",
                    self.url
                );
            }
            match self.call("eth_chainId", json!([])).await {
                Ok(id) => {
                    let want = format!("{CHAIN_ID:#x}");
                    if id.as_str() != Some(want.as_str()) {
                        bail!(
                            "anvil at {} reports chain id {id}, expected {want}",
                            self.url
                        );
                    }
                    return self.check_marker(marker).await;
                }
                Err(e) if Instant::now() > deadline => {
                    return Err(
                        e.context(format!("anvil at {} did not answer within 10 s", self.url))
                    );
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
            }
        }
    }

    /// Whether the chain here is the one started with `marker` as its gas limit.
    async fn check_marker(&self, marker: u64) -> anyhow::Result<()> {
        let genesis = self
            .call("eth_getBlockByNumber", json!(["0x0", false]))
            .await?;
        let want = format!("{marker:#x}");
        let got = genesis["gasLimit"].as_str().unwrap_or_default();
        if got != want {
            bail!(
                "another chain answers at {} (genesis gas limit {got}, ours is {want}): its port was taken",
                self.url
            );
        }
        Ok(())
    }

    /// Send a transaction from an unlocked dev account and wait for a successful receipt.
    async fn transact(
        &self,
        from: Address,
        to: Option<Address>,
        data: &[u8],
    ) -> anyhow::Result<Value> {
        let mut tx = json!({"from": from, "data": format!("0x{}", hex::encode(data))});
        if let Some(to) = to {
            tx["to"] = json!(to);
        }
        let hash = self.call("eth_sendTransaction", json!([tx])).await?;
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let receipt = self
                .call("eth_getTransactionReceipt", json!([hash]))
                .await?;
            if !receipt.is_null() {
                if receipt["status"].as_str() != Some("0x1") {
                    bail!("transaction {hash} reverted");
                }
                return Ok(receipt);
            }
            if Instant::now() > deadline {
                bail!("no receipt for {hash} within 10 s");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A child that exits before answering (an anvil whose port was taken) fails the wait by its exit, not by
    /// the 10 s deadline (whose error says "did not answer").
    #[tokio::test]
    async fn a_chain_that_exits_fails_the_wait_at_once() {
        let port = std::net::TcpListener::bind(("127.0.0.1", 0))
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let rpc = Rpc::new(format!("http://127.0.0.1:{port}")).unwrap();
        let mut child = Command::new("false").spawn().unwrap();
        let err = rpc
            .wait_ready(&mut child, BASE_GAS_LIMIT)
            .await
            .unwrap_err()
            .to_string();
        assert!(err.contains("anvil exited with"), "{err}");
    }

    /// `ESIM402_ANVIL` names the binary whatever the app directory holds; one that is not a file is refused
    /// naming it.
    #[test]
    fn a_chosen_anvil_is_taken_or_refused_by_name() {
        let app_dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
        let here = std::env::current_exe().unwrap();
        assert_eq!(find_anvil(&app_dir, Some(here.as_os_str())).unwrap(), here);
        let e = find_anvil(&app_dir, Some(std::ffi::OsStr::new("/nonexistent/anvil"))).unwrap_err();
        assert!(e.to_string().contains("/nonexistent/anvil"), "{e}");
    }

    /// Another stack's anvil answering on the port our child was meant to bind is refused: same chain id, but
    /// not our marker. (Before, the chain id alone accepted it, and the stack ran against a chain that went away
    /// when the other stack stopped.)
    #[tokio::test]
    async fn another_chain_on_our_port_is_not_taken_for_ours() {
        let app_dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
        let anvil = find_anvil(&app_dir, anvil_override().as_deref()).expect("anvil installed");
        let (mut theirs, rpc) = spawn_quiet(&anvil, None)
            .await
            .expect("another stack's anvil");
        let their_marker = {
            let genesis = rpc
                .call("eth_getBlockByNumber", json!(["0x0", false]))
                .await
                .unwrap();
            u64::from_str_radix(
                genesis["gasLimit"]
                    .as_str()
                    .unwrap()
                    .trim_start_matches("0x"),
                16,
            )
            .unwrap()
        };
        assert!((BASE_GAS_LIMIT..BASE_GAS_LIMIT + MARKER_SPAN).contains(&their_marker));
        // Our child: still alive (on its way to exiting after failing to bind), with another marker.
        let mut ours = Command::new("sleep").arg("5").spawn().unwrap();
        let other = if their_marker == BASE_GAS_LIMIT {
            BASE_GAS_LIMIT + 1
        } else {
            BASE_GAS_LIMIT
        };
        let err = rpc
            .wait_ready(&mut ours, other)
            .await
            .unwrap_err()
            .to_string();
        assert!(err.contains("another chain answers"), "{err}");
        rpc.wait_ready(&mut ours, their_marker)
            .await
            .expect("the marker it was started with is accepted");
        super::super::stop_child(&mut ours, "KILL", Duration::from_secs(5));
        super::super::stop_child(&mut theirs, "TERM", Duration::from_secs(5));
    }

    #[test]
    fn only_senders_with_nothing_pending_are_candidates() {
        let content = json!({
            "pending": {"0xAAAA": {"7": {"hash": "0xp7"}}},
            "queued": {
                "0xaaaa": {"9": {"hash": "0xa9"}},
                "0xbbbb": {"53": {"hash": "0xb53"}, "54": {"hash": "0xb54"}, "x": {"hash": "0xbad"}},
                "0xcccc": {},
            }
        });
        let got = queued_only(&content);
        assert_eq!(got.len(), 1, "{got:?}");
        let (sender, txs) = &got[0];
        assert_eq!(sender, "0xbbbb");
        assert_eq!(
            txs.iter()
                .map(|(n, h)| (*n, h.as_str()))
                .collect::<Vec<_>>(),
            [(53, "0xb53"), (54, "0xb54")],
            "in nonce order, unparseable nonces skipped"
        );
        assert!(queued_only(&json!({"pending": {}, "queued": {}})).is_empty());
        assert!(queued_only(&json!(null)).is_empty());
    }
}
