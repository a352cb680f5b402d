//! The official x402 Python client (`x402[evm,requests]==2.25.0`, installed by `scripts/setup.sh` into
//! `tools/.venv`) pays the facilitator's `POST /v1/esim/activate` on the dev chain, unmodified: it reads our
//! `PAYMENT-REQUIRED`, signs the EIP-3009 authorization itself and retries with `PAYMENT-SIGNATURE`. The README's
//! demo script (`scripts/demo.py`) runs the same way. Both are real processes, finished before the test ends.

use std::process::Command;

use alloy_primitives::U256;
use esim402_host::devstack::chain;
use esim402_tests::repo_root;
use serde_json::{Value, json};

use crate::payments::{PayStack, agent};

pub(crate) fn python() -> std::path::PathBuf {
    let py = repo_root().join("tools/.venv/bin/python");
    assert!(
        py.exists(),
        "{} is missing: run scripts/setup.sh (it installs the official x402 client)",
        py.display()
    );
    py
}

/// Run `tests/python/pay.py` (one paid request with the official client); its one JSON line.
pub(crate) async fn pay(url: String, extra: Vec<String>) -> Value {
    tokio::task::spawn_blocking(move || {
        let out = Command::new(python())
            .arg(repo_root().join("tests/python/pay.py"))
            .args(["--url", &url, "--key", chain::DEMO_AGENT_KEY])
            .args(extra)
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "pay.py failed: {stdout}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_str(stdout.lines().last().unwrap_or_default()).unwrap()
    })
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_official_python_client_pays_for_an_activation() {
    let s = PayStack::start(&[]).await;
    let url = format!("{}/v1/esim/activate", s.url);
    let body = json!({"region": "us-west", "data_mb": 100}).to_string();
    let start = s.balance(agent()).await;
    let out = pay(url.clone(), vec!["--body".into(), body.clone()]).await;
    assert_eq!(out["status"], 200, "{out}");
    assert!(
        out["body"]["activation_code"]
            .as_str()
            .unwrap()
            .starts_with("LPA:1$"),
        "{out}"
    );
    let settle = &out["payment_response"];
    assert_eq!(settle["success"], true, "{out}");
    assert_eq!(settle["network"], "eip155:31337");
    let tx = settle["transaction"].as_str().unwrap();
    let receipt = s.rpc("eth_getTransactionReceipt", json!([tx])).await;
    assert_eq!(receipt["status"], "0x1");
    // USDC moved exactly once, by the invoice's amount (0.42 USDC).
    assert_eq!(s.balance(agent()).await, start - U256::from(420_000u64));

    // payment-identifier through the package's own helper: a second, different payment under the same id is
    // refused (409) and not settled.
    let id = "pay_python_client_0000000001".to_owned();
    let first = pay(
        url.clone(),
        vec![
            "--body".into(),
            body.clone(),
            "--payment-id".into(),
            id.clone(),
        ],
    )
    .await;
    assert_eq!(first["status"], 200, "{first}");
    let sent = &first["sent"];
    assert_eq!(
        sent["extensions"]["payment-identifier"]["info"]["id"],
        id.as_str()
    );
    let after = s.balance(agent()).await;
    let second = pay(
        url.clone(),
        vec!["--body".into(), body.clone(), "--payment-id".into(), id],
    )
    .await;
    assert_eq!(second["status"], 409, "{second}");
    assert_eq!(s.balance(agent()).await, after);

    let (_, verify) = s.get("/v1/ledger/verify").await;
    assert_eq!(verify["ok"], true, "{verify}");
}

/// Run a README demo script (`scripts/…`) against the app at `url` with the dev-stack facts file `facts`; its
/// stdout, once it exited 0.
pub(crate) async fn run_demo(script: &str, url: &str, facts: std::path::PathBuf) -> String {
    let (script, url) = (repo_root().join(script), url.to_owned());
    let out = tokio::task::spawn_blocking(move || {
        Command::new(python())
            .arg(script)
            .arg("--url")
            .arg(&url)
            .arg("--devstack")
            .arg(&facts)
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "demo failed: {stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_readme_demo_prints_an_activation_code() {
    let s = PayStack::start(&[]).await;
    let dir = tempfile::tempdir().unwrap();
    let facts = s.chain.write_facts(dir.path()).unwrap();
    let stdout = run_demo("scripts/demo.py", &s.url, facts).await;
    assert!(stdout.contains("LPA:1$"), "{stdout}");
    let ledger = stdout.lines().find(|l| l.starts_with("ledger: ")).unwrap();
    assert!(ledger.starts_with("ledger: 200 {"), "{ledger}");
    assert!(ledger.contains("\"ok\":true"), "{ledger}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_python_quickstart_activates_reads_the_balance_and_tops_up() {
    let s = PayStack::start(&[]).await;
    let start = s.balance(agent()).await;
    let (script, url) = (repo_root().join("examples/quickstart.py"), s.url.clone());
    let lines = std::fs::read_to_string(&script).unwrap().lines().count();
    assert!(lines <= 50, "the quickstart is {lines} lines");
    let out = tokio::task::spawn_blocking(move || {
        Command::new(python())
            .arg(script)
            .args(["--url", &url])
            .env("ESIM402_WALLET_KEY", chain::DEMO_AGENT_KEY)
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "quickstart failed: {stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("scan or install: LPA:1$"), "{stdout}");
    assert!(stdout.contains("balance: 10000 KB"), "{stdout}");
    assert!(
        stdout.contains("topped up 16 MB for 0.05 USDC: 26000 KB left"),
        "{stdout}"
    );
    // The activation's price (as printed) + a 16 MB top-up ($0.05): each paid once.
    let paid: esim402_core::UsdcAmount = stdout
        .split("paid ")
        .nth(1)
        .and_then(|r| r.split(' ').next())
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(
        s.balance(agent()).await,
        start - U256::from(paid.micros() + 50_000)
    );
}
