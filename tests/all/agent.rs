//! The agent CLI (`crates/agent`) end to end: the real binary, run as a child process with the demo agent's
//! key and a temporary state directory, against the app served in this process on anvil. Every payment is
//! checked on chain: a lost reply, a policy refusal and a top-up each move the agent's USDC exactly as they
//! should.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use alloy_primitives::U256;
use esim402_core::esim::ActivationCode;
use esim402_host::devstack::chain::DEMO_AGENT_KEY;
use esim402_tests::{bin_dir, repo_root};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};

use crate::payments::{PayStack, agent};

/// The CLI, built once per test run by `cargo build -p esim402-agent` (into this run's target directory).
pub(crate) fn agent_bin() -> PathBuf {
    static BUILT: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    BUILT
        .get_or_init(|| {
            let status = std::process::Command::new(env!("CARGO"))
                .args(["build", "-p", "esim402-agent", "--bin", "esim402-agent"])
                .current_dir(repo_root())
                .status()
                .unwrap();
            assert!(status.success(), "cargo build -p esim402-agent");
            bin_dir().join("esim402-agent")
        })
        .clone()
}

pub(crate) struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

/// Run the CLI against `url` with the demo agent's key and the state in `dir`.
pub(crate) async fn cli(url: &str, dir: &Path, args: &[&str]) -> Run {
    cli_with_key(url, dir, args, Some(DEMO_AGENT_KEY)).await
}

async fn cli_with_key(url: &str, dir: &Path, args: &[&str], key: Option<&str>) -> Run {
    cli_with_env(url, dir, args, key, &[]).await
}

/// [`cli_with_key`], with `env` set for the CLI (its process only).
async fn cli_with_env(
    url: &str,
    dir: &Path,
    args: &[&str],
    key: Option<&str>,
    env: &[(&str, &str)],
) -> Run {
    let mut cmd = tokio::process::Command::new(agent_bin());
    cmd.envs(env.iter().copied());
    cmd.arg("--url")
        .arg(url)
        .arg("--state-dir")
        .arg(dir)
        .args(args)
        .env_remove("ESIM402_URL")
        .env_remove("ESIM402_STATE_DIR")
        .env_remove("ESIM402_WALLET_KEY");
    if let Some(k) = key {
        cmd.env("ESIM402_WALLET_KEY", k);
    }
    let out = tokio::time::timeout(std::time::Duration::from_secs(120), cmd.output())
        .await
        .expect("the CLI finished within 2 minutes")
        .unwrap();
    let run = Run {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    };
    let secret = DEMO_AGENT_KEY.trim_start_matches("0x");
    assert!(
        !run.stdout.contains(secret) && !run.stderr.contains(secret),
        "the wallet key is never printed"
    );
    run
}

pub(crate) fn state(dir: &Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(dir.join("state.json")).unwrap()).unwrap()
}

/// One request the CLI sent: method, target (path and query), header names, body.
#[derive(Debug, Clone)]
pub(crate) struct Sent {
    method: String,
    target: String,
    headers: Vec<String>,
    body: Vec<u8>,
}

/// A loopback HTTP/1.1 proxy to the app that records every request, and (if told) loses the reply to the next
/// paid request: the app gets the request and answers it, the client sees the connection close (a lost reply).
/// With `abandon_next_paid` set, the client sees the connection close at once, while the app still works on the
/// request.
pub(crate) struct LossyProxy {
    pub url: String,
    lose_next_paid: Arc<AtomicBool>,
    abandon_next_paid: Arc<AtomicBool>,
    sent: Arc<std::sync::Mutex<Vec<Sent>>>,
}

impl LossyProxy {
    pub async fn start(upstream: &str, lose_first_paid: bool) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let lose_next_paid = Arc::new(AtomicBool::new(lose_first_paid));
        let abandon_next_paid = Arc::new(AtomicBool::new(false));
        let sent = Arc::new(std::sync::Mutex::new(Vec::new()));
        let upstream = upstream.to_owned();
        let (lose, abandon, log) = (
            lose_next_paid.clone(),
            abandon_next_paid.clone(),
            sent.clone(),
        );
        tokio::spawn(async move {
            let http = reqwest::Client::new();
            while let Ok((conn, _)) = listener.accept().await {
                tokio::spawn(Self::serve(
                    conn,
                    http.clone(),
                    upstream.clone(),
                    (lose.clone(), abandon.clone()),
                    log.clone(),
                ));
            }
        });
        Self {
            url,
            lose_next_paid,
            abandon_next_paid,
            sent,
        }
    }

    /// Every request so far.
    pub fn sent(&self) -> Vec<Sent> {
        self.sent.lock().unwrap().clone()
    }

    async fn serve(
        mut conn: TcpStream,
        http: reqwest::Client,
        upstream: String,
        (lose, abandon): (Arc<AtomicBool>, Arc<AtomicBool>),
        log: Arc<std::sync::Mutex<Vec<Sent>>>,
    ) {
        let mut buf = Vec::new();
        loop {
            // One request: head, then `content-length` bytes of body.
            let head_end = loop {
                if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                    break i + 4;
                }
                let mut chunk = [0u8; 4096];
                match conn.read(&mut chunk).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => buf.extend_from_slice(&chunk[..n]),
                }
            };
            let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
            let mut lines = head.split("\r\n");
            let mut start = lines.next().unwrap().split(' ');
            let (method, target) = (
                start.next().unwrap().to_owned(),
                start.next().unwrap().to_owned(),
            );
            let headers: Vec<(String, String)> = lines
                .filter_map(|l| l.split_once(':'))
                .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
                .collect();
            let len: usize = headers
                .iter()
                .find(|(k, _)| k == "content-length")
                .map_or(0, |(_, v)| v.parse().unwrap());
            while buf.len() < head_end + len {
                let mut chunk = [0u8; 4096];
                match conn.read(&mut chunk).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => buf.extend_from_slice(&chunk[..n]),
                }
            }
            let body = buf[head_end..head_end + len].to_vec();
            buf.drain(..head_end + len);
            log.lock().unwrap().push(Sent {
                method: method.clone(),
                target: target.clone(),
                headers: headers.iter().map(|(k, _)| k.clone()).collect(),
                body: body.clone(),
            });
            let mut req = http.request(method.parse().unwrap(), format!("{upstream}{target}"));
            for (k, v) in &headers {
                if !matches!(k.as_str(), "content-length" | "connection") {
                    req = req.header(k, v);
                }
            }
            let req = req.body(body);
            let paid = headers.iter().any(|(k, _)| k == "payment-signature");
            if paid && abandon.swap(false, Ordering::SeqCst) {
                tokio::spawn(req.send()); // The app works on it; the client's connection closes now.
                return;
            }
            let r = req.send().await.unwrap();
            let status = r.status();
            let answer_headers = r.headers().clone();
            let answer = r.bytes().await.unwrap();
            if paid && lose.swap(false, Ordering::SeqCst) {
                return; // The app answered; the client never hears it.
            }
            let mut out = format!("HTTP/1.1 {status}\r\n");
            for (k, v) in &answer_headers {
                if !matches!(
                    k.as_str(),
                    "content-length" | "transfer-encoding" | "connection"
                ) {
                    out.push_str(&format!("{k}: {}\r\n", v.to_str().unwrap()));
                }
            }
            out.push_str(&format!("content-length: {}\r\n\r\n", answer.len()));
            let mut bytes = out.into_bytes();
            bytes.extend_from_slice(&answer);
            if conn.write_all(&bytes).await.is_err() {
                return;
            }
        }
    }
}

const ACTIVATE: [&str; 5] = ["activate", "--region", "us-west", "--data-mb", "100"];

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_cli_activates_collects_a_lost_reply_without_paying_twice_and_tops_up_once() {
    let s = PayStack::start(&[]).await;
    let proxy = LossyProxy::start(&s.url, true).await;
    let dir = tempfile::tempdir().unwrap();
    let start = s.balance(agent()).await;

    // The paid reply is lost: the app settled, the CLI exits 5 and keeps the signed payment.
    let lost = cli(&proxy.url, dir.path(), &ACTIVATE).await;
    assert_eq!(lost.code, 5, "{}", lost.stderr);
    assert!(
        !proxy.lose_next_paid.load(Ordering::SeqCst),
        "the paid request reached the proxy"
    );
    assert!(
        lost.stderr.contains("run the same command again"),
        "{}",
        lost.stderr
    );
    let kept = state(dir.path());
    assert_eq!(kept["pending"].as_object().unwrap().len(), 1, "{kept}");
    assert_eq!(kept["spends"][0]["status"], "pending");
    let price = U256::from(420_000);
    assert_eq!(
        s.balance(agent()).await,
        start - price,
        "the app settled it"
    );

    // The same command again sends the same payment: the app replays its answer, nothing moves.
    let again = cli(&proxy.url, dir.path(), &ACTIVATE).await;
    assert_eq!(again.code, 0, "{}", again.stderr);
    assert!(
        again.stderr.contains("sending again the payment"),
        "{}",
        again.stderr
    );
    let code = again.stdout.trim();
    assert!(code.starts_with("LPA:1$"), "{code}");
    ActivationCode::parse(code).unwrap();
    assert_eq!(s.balance(agent()).await, start - price, "paid once");
    let st = state(dir.path());
    assert!(st["pending"].as_object().unwrap().is_empty(), "{st}");
    assert_eq!(st["spends"].as_array().unwrap().len(), 1, "{st}");
    assert_eq!(st["spends"][0]["status"], "settled");
    let (iccid, sim) = st["sims"].as_object().unwrap().iter().next().unwrap();
    assert!(
        sim["access_token"].as_str().unwrap().starts_with("sim_"),
        "{sim}"
    );
    assert_eq!(sim["activation_code"], code);

    // The stored token opens the SIM's routes.
    let status = cli(&proxy.url, dir.path(), &["status", "--json"]).await;
    assert_eq!(status.code, 0, "{}", status.stderr);
    let status: Value = serde_json::from_str(&status.stdout).unwrap();
    assert_eq!(status["iccid"], iccid.as_str());
    let balance = cli(&proxy.url, dir.path(), &["balance", "--json"]).await;
    assert_eq!(balance.code, 0, "{}", balance.stderr);
    let balance: Value = serde_json::from_str(&balance.stdout).unwrap();
    assert_eq!(balance["credited_bytes"], 100_000_000, "{balance}");

    // A top-up credits once and pays once.
    let before = s.balance(agent()).await;
    let top = cli(
        &proxy.url,
        dir.path(),
        &["top-up", "--data-mb", "10", "--json"],
    )
    .await;
    assert_eq!(top.code, 0, "{}", top.stderr);
    let top: Value = serde_json::from_str(&top.stdout).unwrap();
    assert_eq!(top["topped_up_mb"], 10, "{top}");
    let paid = U256::from(
        esim402_core::UsdcAmount::parse_usdc(top["amount_usdc"].as_str().unwrap())
            .unwrap()
            .micros(),
    );
    assert_eq!(s.balance(agent()).await, before - paid);
    let balance = cli(&proxy.url, dir.path(), &["balance", "--json"]).await;
    let balance: Value = serde_json::from_str(&balance.stdout).unwrap();
    assert_eq!(balance["credited_bytes"], 110_000_000, "{balance}");
    let st = state(dir.path());
    assert_eq!(st["spends"].as_array().unwrap().len(), 2, "{st}");
    assert_eq!(st["spends"][1]["status"], "settled");

    // Usage and receipts with the stored token; suspend, resume, terminate.
    for args in [&["usage", "--json"][..], &["receipts", "--json"]] {
        let r = cli(&proxy.url, dir.path(), args).await;
        assert_eq!(r.code, 0, "{args:?}: {}", r.stderr);
        serde_json::from_str::<Value>(&r.stdout).unwrap();
    }
    let state_of = |out: &Run| serde_json::from_str::<Value>(&out.stdout).unwrap()["state"].clone();
    let suspended = cli(&proxy.url, dir.path(), &["suspend", "--json"]).await;
    assert_eq!(suspended.code, 0, "{}", suspended.stderr);
    let status = cli(&proxy.url, dir.path(), &["status", "--json"]).await;
    assert_eq!(state_of(&status), "suspended", "{}", status.stdout);
    let again = cli(&proxy.url, dir.path(), &["suspend"]).await;
    assert_eq!(
        again.code, 4,
        "an invalid transition is the facilitator's refusal: {}",
        again.stderr
    );
    assert_eq!(cli(&proxy.url, dir.path(), &["resume"]).await.code, 0);

    // Without a stored token the wallet signs in (SIGN-IN-WITH-X) instead.
    let mut st = state(dir.path());
    st["sims"][iccid.as_str()]["access_token"] = Value::Null;
    std::fs::write(dir.path().join("state.json"), st.to_string()).unwrap();
    let status = cli(&proxy.url, dir.path(), &["status", "--json"]).await;
    assert_eq!(status.code, 0, "{}", status.stderr);
    assert_eq!(state_of(&status), "active", "{}", status.stdout);

    // The wallet lists every SIM it paid for (a sign-in, page after page); a malformed agent id is a usage
    // error, refused before anything is sent.
    let sims = cli(&proxy.url, dir.path(), &["sims", "--json"]).await;
    assert_eq!(sims.code, 0, "{}", sims.stderr);
    let sims: Value = serde_json::from_str(&sims.stdout).unwrap();
    let listed: Vec<&str> = sims["sims"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|x| x["iccid"].as_str())
        .collect();
    assert_eq!(listed, [iccid.as_str()], "{sims}");
    let bad = cli(&proxy.url, dir.path(), &["sims", "--agent-id", "no spaces"]).await;
    assert_eq!(bad.code, 2, "{}", bad.stderr);

    let ended = cli(&proxy.url, dir.path(), &["terminate", "--json"]).await;
    assert_eq!(ended.code, 0, "{}", ended.stderr);
    assert_eq!(
        state(dir.path())["sims"][iccid.as_str()]["terminated"],
        true
    );
    let none = cli(&proxy.url, dir.path(), &["status"]).await;
    assert_eq!(none.code, 2, "no live SIM left: {}", none.stderr);

    // Every request the CLI sent is one the OpenAPI description allows.
    let covered = check_against_openapi(&proxy.sent());
    for op in [
        "POST /v1/esim/activate",
        "GET /v1/esim",
        "GET /v1/esim/{iccid}",
        "GET /v1/esim/{iccid}/balance",
        "POST /v1/esim/{iccid}/data",
        "GET /v1/esim/{iccid}/usage",
        "GET /v1/esim/{iccid}/receipts",
        "POST /v1/esim/{iccid}/suspend",
        "POST /v1/esim/{iccid}/resume",
        "POST /v1/esim/{iccid}/terminate",
    ] {
        assert!(covered.contains(op), "{op} not exercised: {covered:?}");
    }
}

/// `activate --agent-id` labels the SIM (`sims --agent-id` lists it; before, the CLI could not set the label it
/// filters on: a fresh-user trial), and the label goes with every sending of the payment: the one that lost its
/// reply, and the next command's that collects it. A malformed label is refused before anything is signed.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn activate_labels_the_sim_on_every_sending() {
    let s = PayStack::start(&[]).await;
    let proxy = LossyProxy::start(&s.url, true).await;
    let dir = tempfile::tempdir().unwrap();
    let activate = |mb: &'static str, extra: &[&'static str]| {
        let mut args = vec!["activate", "--region", "us-west", "--data-mb", mb];
        args.extend_from_slice(extra);
        args
    };
    // The paid sendings so far, and whether every one carried a label.
    let labelled = || {
        let sent = proxy.sent();
        let paid: Vec<&Sent> = sent
            .iter()
            .filter(|r| r.headers.iter().any(|h| h == "payment-signature"))
            .collect();
        let all = paid
            .iter()
            .all(|r| r.headers.iter().any(|h| h == "x-agent-id"));
        (paid.len(), all)
    };
    let listed = async |label: &str| {
        let sims = cli(
            &proxy.url,
            dir.path(),
            &["sims", "--json", "--agent-id", label],
        )
        .await;
        assert_eq!(sims.code, 0, "{}", sims.stderr);
        serde_json::from_str::<Value>(&sims.stdout).unwrap()
    };

    let bad = cli(
        &proxy.url,
        dir.path(),
        &activate("1", &["--agent-id", "no spaces"]),
    )
    .await;
    assert_eq!(bad.code, 2, "{}", bad.stderr);
    assert!(proxy.sent().is_empty(), "nothing sent");
    let lost = cli(
        &proxy.url,
        dir.path(),
        &activate("1", &["--agent-id", "pump-7"]),
    )
    .await;
    assert_eq!(lost.code, 5, "{}", lost.stderr);
    // The same activation run again without --agent-id sends the pending payment again with the label
    // it was first sent with.
    let again = cli(&proxy.url, dir.path(), &activate("1", &["--json"])).await;
    assert_eq!(again.code, 0, "{}", again.stderr);
    assert_eq!(
        labelled(),
        (2, true),
        "sent, then sent again: every sending carries the label"
    );
    let sims = listed("pump-7").await;
    let iccid = serde_json::from_str::<Value>(&again.stdout).unwrap()["iccid"].clone();
    assert_eq!(sims["sims"][0]["iccid"], iccid, "{sims}");
    assert_eq!(sims["sims"].as_array().unwrap().len(), 1, "{sims}");

    // Another command collecting a lost labelled activation sends it with its label too.
    proxy.lose_next_paid.store(true, Ordering::SeqCst);
    let lost = cli(
        &proxy.url,
        dir.path(),
        &activate("2", &["--agent-id", "pump-8"]),
    )
    .await;
    assert_eq!(lost.code, 5, "{}", lost.stderr);
    let collected = cli(&proxy.url, dir.path(), &["balance", "--json"]).await;
    assert!(
        collected.stderr.contains("collected an activation"),
        "{}",
        collected.stderr
    );
    assert_eq!(
        labelled(),
        (4, true),
        "two more, sent then collected: every sending carries the label"
    );
    let sims = listed("pump-8").await;
    assert_eq!(sims["sims"].as_array().unwrap().len(), 1, "{sims}");
}

/// A paid reply lost, then *another* command: `status` first sends the pending payment again (the same payment:
/// paid once on chain), records the SIM and its token, says so on stderr, then answers for that SIM; `balance`
/// likewise collects a top-up whose reply was lost before answering. Before, `status` found no SIM (exit 2), the
/// SIM paid for never reached the state, and a top-up was collected by that very top-up command only. A top-up
/// printed as text shows the balance left (it is sent with the SIM's credential: the facilitator shows the
/// balance to the SIM's owner only; before, it said the answer carried none), never `null KB left`.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn any_command_collects_a_lost_payment_first_and_a_top_up_never_prints_a_null_balance() {
    let s = PayStack::start(&[]).await;
    let proxy = LossyProxy::start(&s.url, true).await;
    let dir = tempfile::tempdir().unwrap();
    let start = s.balance(agent()).await;
    let price = U256::from(420_000);

    let lost = cli(&proxy.url, dir.path(), &ACTIVATE).await;
    assert_eq!(lost.code, 5, "{}", lost.stderr);
    assert_eq!(state(dir.path())["pending"].as_object().unwrap().len(), 1);
    assert_eq!(
        s.balance(agent()).await,
        start - price,
        "the app settled it"
    );

    let status = cli(&proxy.url, dir.path(), &["status", "--json"]).await;
    assert_eq!(status.code, 0, "{}", status.stderr);
    assert!(
        status.stderr.contains("collected an activation"),
        "{}",
        status.stderr
    );
    let status: Value = serde_json::from_str(&status.stdout).unwrap();
    let st = state(dir.path());
    assert!(st["pending"].as_object().unwrap().is_empty(), "{st}");
    assert_eq!(st["spends"].as_array().unwrap().len(), 1, "{st}");
    assert_eq!(st["spends"][0]["status"], "settled", "{st}");
    let (iccid, sim) = st["sims"].as_object().unwrap().iter().next().unwrap();
    assert!(
        sim["access_token"].as_str().unwrap().starts_with("sim_"),
        "{sim}"
    );
    assert_eq!(status["iccid"], iccid.as_str(), "{status}");
    assert_eq!(s.balance(agent()).await, start - price, "paid once");

    // A top-up whose reply is lost is collected by the next command, whatever it is: paid once, credited once.
    proxy.lose_next_paid.store(true, Ordering::SeqCst);
    let before = s.balance(agent()).await;
    let lost = cli(&proxy.url, dir.path(), &["top-up", "--data-mb", "10"]).await;
    assert_eq!(lost.code, 5, "{}", lost.stderr);
    let paid = before - s.balance(agent()).await;
    assert!(paid > U256::ZERO, "the app settled it");
    let balance = cli(&proxy.url, dir.path(), &["balance", "--json"]).await;
    assert_eq!(balance.code, 0, "{}", balance.stderr);
    assert!(
        balance
            .stderr
            .contains(&format!("collected a top-up of SIM {iccid}"))
            && balance.stderr.contains("topped up 10 MB"),
        "{}",
        balance.stderr
    );
    let balance: Value = serde_json::from_str(&balance.stdout).unwrap();
    assert_eq!(balance["credited_bytes"], 110_000_000, "{balance}");
    let st = state(dir.path());
    assert!(st["pending"].as_object().unwrap().is_empty(), "{st}");
    assert_eq!(st["spends"][1]["status"], "settled", "{st}");
    assert_eq!(s.balance(agent()).await, before - paid, "paid once");

    // A top-up printed as text: what was bought, and the balance left (120 MB credited, none used).
    let top = cli(&proxy.url, dir.path(), &["top-up", "--data-mb", "10"]).await;
    assert_eq!(top.code, 0, "{}", top.stderr);
    assert!(!top.stdout.contains("null"), "{}", top.stdout);
    assert!(
        top.stdout.starts_with("topped up 10 MB for ") && top.stdout.contains("120000 KB left"),
        "{}",
        top.stdout
    );
    // Without --data-mb: the smallest top-up the catalog offers for the SIM's carrier (16 MB at T-Mobile's
    // $0.003/MB: what the $0.05 minimum buys), recorded as that size.
    let default = cli(&proxy.url, dir.path(), &["top-up"]).await;
    assert_eq!(default.code, 0, "{}", default.stderr);
    assert!(
        default.stdout.starts_with("topped up 16 MB for 0.05 USDC"),
        "{}",
        default.stdout
    );
    let st = state(dir.path());
    assert!(
        st["spends"][3]["purpose"]
            .as_str()
            .unwrap()
            .ends_with(" 16 MB"),
        "{st}"
    );
}

/// The CLI's wiring of the pass before a command (`main.rs`): a command without `--iccid` acts on the SIM the
/// state held before, not on the one it has just collected (here `suspend`: SIM A is suspended, the SIM B
/// collected stays active; before, B was suspended); with no SIM before, a command that changes or pays stops
/// (exit 2, naming the SIM collected) instead of acting on it. The line announcing a collected SIM does not print
/// its activation code; `status --iccid --activation-code` shows it (a plain `status` does not). `pending` lists
/// a payment still pending (never its signed payment), and `pending --forget` gives up on it only with
/// `--force` while its authorization is valid, saying that this may pay twice: no longer sent, its spend kept,
/// recorded as abandoned without its signed payment, and a new payment for the same purchase is then made when
/// asked for.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_command_acts_on_the_sim_it_had_and_a_pending_payment_can_be_listed_and_forgotten() {
    let s = PayStack::start(&[]).await;
    let proxy = LossyProxy::start(&s.url, false).await;
    let dir = tempfile::tempdir().unwrap();
    let sims = |dir: &Path| -> Vec<String> {
        state(dir)["sims"]
            .as_object()
            .unwrap()
            .keys()
            .cloned()
            .collect()
    };
    let bought = cli(&proxy.url, dir.path(), &ACTIVATE).await;
    assert_eq!(bought.code, 0, "{}", bought.stderr);
    let a = sims(dir.path()).pop().unwrap();

    // Another activation whose reply is lost: pending, listed without its signed payment.
    proxy.lose_next_paid.store(true, Ordering::SeqCst);
    let lost = cli(&proxy.url, dir.path(), &ACTIVATE).await;
    assert_eq!(lost.code, 5, "{}", lost.stderr);
    let st = state(dir.path());
    let (_, held) = st["pending"].as_object().unwrap().iter().next().unwrap();
    let (id, header) = (
        held["payment_id"].as_str().unwrap(),
        held["header"].as_str().unwrap(),
    );
    let listed = cli(&proxy.url, dir.path(), &["pending"]).await;
    assert_eq!(listed.code, 0, "{}", listed.stderr);
    assert!(
        listed.stdout.contains(id)
            && listed.stdout.contains("an activation")
            && listed.stdout.contains(&proxy.url)
            && listed.stdout.contains("0.42 USDC"),
        "{}",
        listed.stdout
    );
    let listed = cli(&proxy.url, dir.path(), &["pending", "--json"]).await;
    assert!(!listed.stdout.contains(header), "{}", listed.stdout);
    let listed: Value = serde_json::from_str(&listed.stdout).unwrap();
    assert_eq!(listed["pending"][0]["payment_id"], id, "{listed}");
    assert_eq!(listed["pending"][0]["amount_usdc"], "0.42", "{listed}");

    // `suspend` without --iccid: B is collected, A (the SIM it had) suspended.
    let suspended = cli(&proxy.url, dir.path(), &["suspend", "--json"]).await;
    assert_eq!(suspended.code, 0, "{}", suspended.stderr);
    assert!(
        suspended.stderr.contains("collected an activation"),
        "{}",
        suspended.stderr
    );
    assert!(!suspended.stderr.contains("LPA:1$"), "{}", suspended.stderr);
    let b = sims(dir.path()).into_iter().find(|i| *i != a).unwrap();
    assert!(
        suspended.stderr.contains(&format!("status --iccid {b}")),
        "{}",
        suspended.stderr
    );
    let status_of = |out: &Run| serde_json::from_str::<Value>(&out.stdout).unwrap();
    let of_a = cli(&proxy.url, dir.path(), &["status", "--iccid", &a, "--json"]).await;
    assert_eq!(status_of(&of_a)["state"], "suspended", "{}", of_a.stdout);
    let of_b = cli(&proxy.url, dir.path(), &["status", "--iccid", &b, "--json"]).await;
    let of_b = status_of(&of_b);
    assert_eq!(of_b["state"], "active", "{of_b}");
    assert!(
        of_b.get("activation_code").is_none(),
        "not asked for: {of_b}"
    );
    let of_b = cli(
        &proxy.url,
        dir.path(),
        &["status", "--iccid", &b, "--activation-code", "--json"],
    )
    .await;
    let of_b = status_of(&of_b);
    assert_eq!(
        of_b["activation_code"],
        state(dir.path())["sims"][b.as_str()]["activation_code"],
        "{of_b}"
    );
    let none = cli(&proxy.url, dir.path(), &["pending"]).await;
    assert_eq!(none.stdout.trim(), "no payment pending", "{}", none.stdout);

    // No SIM before: a top-up without --iccid collects the lost activation and stops, naming its SIM.
    let dir = tempfile::tempdir().unwrap();
    proxy.lose_next_paid.store(true, Ordering::SeqCst);
    assert_eq!(cli(&proxy.url, dir.path(), &ACTIVATE).await.code, 5);
    let before = s.balance(agent()).await;
    let top = cli(&proxy.url, dir.path(), &["top-up", "--data-mb", "10"]).await;
    assert_eq!(top.code, 2, "{}", top.stderr);
    let c = sims(dir.path()).pop().unwrap();
    assert!(
        top.stderr.contains(&format!("--iccid {c}")),
        "{}",
        top.stderr
    );
    let st = state(dir.path());
    assert!(st["pending"].as_object().unwrap().is_empty(), "{st}");
    assert_eq!(st["spends"].as_array().unwrap().len(), 1, "{st}");
    assert_eq!(s.balance(agent()).await, before, "nothing paid");

    // A top-up whose reply is lost, given up on: its spend kept, and a new one paid when asked for.
    proxy.lose_next_paid.store(true, Ordering::SeqCst);
    let args = ["top-up", "--iccid", &c, "--data-mb", "10"];
    assert_eq!(cli(&proxy.url, dir.path(), &args).await.code, 5);
    let paid = before - s.balance(agent()).await;
    let id = state(dir.path())["spends"][1]["payment_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let nope = cli(&proxy.url, dir.path(), &["pending", "--forget", "pay_nope"]).await;
    assert_eq!(nope.code, 2, "{}", nope.stderr);
    let header = state(dir.path())["pending"]
        .as_object()
        .unwrap()
        .values()
        .next()
        .unwrap()["header"]
        .as_str()
        .unwrap()
        .to_owned();
    // Its authorization is still valid: not without --force, and the refusal says why.
    let refused = cli(&proxy.url, dir.path(), &["pending", "--forget", &id]).await;
    assert_eq!(refused.code, 2, "{}", refused.stderr);
    assert!(
        refused.stderr.contains("--force")
            && refused
                .stderr
                .contains("may pay twice for the same purchase"),
        "{}",
        refused.stderr
    );
    assert_eq!(state(dir.path())["pending"].as_object().unwrap().len(), 1);
    let forgot = cli(
        &proxy.url,
        dir.path(),
        &["pending", "--forget", &id, "--force"],
    )
    .await;
    assert_eq!(forgot.code, 0, "{}", forgot.stderr);
    assert!(
        forgot.stdout.contains(&format!("abandoned.{id}"))
            && forgot
                .stdout
                .contains("may pay twice for the same purchase if it was charged"),
        "{}",
        forgot.stdout
    );
    let st = state(dir.path());
    assert!(st["pending"].as_object().unwrap().is_empty(), "{st}");
    assert_eq!(st["spends"][1]["status"], "unknown", "kept: {st}");
    assert!(st["abandoned"][id.as_str()]["request"].is_string(), "{st}");
    assert!(
        !st.to_string().contains(&header),
        "not its signed payment: {st}"
    );
    let again = cli(&proxy.url, dir.path(), &args).await;
    assert_eq!(again.code, 0, "{}", again.stderr);
    assert!(
        !again.stderr.contains(&id),
        "not sent again: {}",
        again.stderr
    );
    assert_eq!(s.balance(agent()).await, before - paid - paid, "paid anew");
    assert_eq!(state(dir.path())["spends"].as_array().unwrap().len(), 3);
}

/// The paid request's connection closes while the app still works on it (the carrier is slow), and the same
/// command run again at once sends the same payment into the app's lease on it: a 409 "being processed". The
/// CLI keeps the payment (exit 5) and, run once more after the app finished, collects the answer: paid once.
/// Before, the 409 made the CLI forget the payment, and the third run paid a second time.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_payment_sent_again_while_the_app_still_works_on_it_is_kept_and_paid_once() {
    let s = PayStack::start(&[]).await;
    s.set_faults("tmobile", json!({"latency_ms": 3000})).await;
    let proxy = LossyProxy::start(&s.url, false).await;
    proxy.abandon_next_paid.store(true, Ordering::SeqCst);
    let dir = tempfile::tempdir().unwrap();
    let start = s.balance(agent()).await;
    let price = U256::from(420_000);

    let abandoned = cli(&proxy.url, dir.path(), &ACTIVATE).await;
    assert_eq!(abandoned.code, 5, "{}", abandoned.stderr);
    let busy = cli(&proxy.url, dir.path(), &ACTIVATE).await;
    assert_eq!(busy.code, 5, "kept for the next run: {}", busy.stderr);
    assert!(
        busy.stderr.contains("still processing this payment"),
        "{}",
        busy.stderr
    );
    let kept = state(dir.path());
    assert_eq!(kept["pending"].as_object().unwrap().len(), 1, "{kept}");

    // Once the app has finished the first sending, the same command collects its answer (until then, it keeps
    // the payment again).
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let collected = loop {
        let run = cli(&proxy.url, dir.path(), &ACTIVATE).await;
        if run.code == 0 {
            break run;
        }
        assert_eq!(run.code, 5, "{}", run.stderr);
        assert!(std::time::Instant::now() < deadline, "{}", run.stderr);
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    };
    assert!(
        collected.stdout.trim().starts_with("LPA:1$"),
        "{}",
        collected.stdout
    );
    assert_eq!(s.balance(agent()).await, start - price, "paid once");
    let st = state(dir.path());
    assert!(st["pending"].as_object().unwrap().is_empty(), "{st}");
    assert_eq!(st["spends"].as_array().unwrap().len(), 1, "{st}");
    assert_eq!(st["spends"][0]["status"], "settled");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_spend_policy_refuses_before_signing_and_a_missing_key_is_named() {
    let s = PayStack::start(&[]).await;
    let dir = tempfile::tempdir().unwrap();
    let start = s.balance(agent()).await;
    let policy = dir.path().join("policy.toml");
    std::fs::write(&policy, "max_per_payment_usdc = \"0.10\"\n").unwrap();
    let refused = cli(&s.url, dir.path(), &ACTIVATE).await;
    assert_eq!(refused.code, 3, "{}", refused.stderr);
    assert!(
        refused.stderr.contains("max_per_payment_usdc"),
        "{}",
        refused.stderr
    );
    assert!(refused.stderr.contains("0.42"), "{}", refused.stderr);
    assert_eq!(s.balance(agent()).await, start, "nothing paid");
    assert!(
        !dir.path().join("state.json").exists(),
        "nothing signed or recorded"
    );

    // A network the policy does not allow is refused by name too (here via --policy).
    let other = dir.path().join("base-only.toml");
    std::fs::write(&other, "networks = [\"base\"]\n").unwrap();
    let policy_arg = other.to_str().unwrap();
    let refused = cli(
        &s.url,
        dir.path(),
        &[
            "--policy",
            policy_arg,
            "activate",
            "--region",
            "us-west",
            "--data-mb",
            "100",
        ],
    )
    .await;
    assert_eq!(refused.code, 3, "{}", refused.stderr);
    assert!(
        refused.stderr.contains("networks: eip155:31337"),
        "{}",
        refused.stderr
    );

    // Scripts get the refusal as JSON too, and nothing was recorded.
    let refused = cli(
        &s.url,
        dir.path(),
        &[
            "--json",
            "activate",
            "--region",
            "us-west",
            "--data-mb",
            "100",
        ],
    )
    .await;
    assert_eq!(refused.code, 3, "{}", refused.stderr);
    let e: Value = serde_json::from_str(&refused.stdout).unwrap();
    assert_eq!(e["exit_code"], 3, "{e}");
    assert!(
        e["error"]
            .as_str()
            .unwrap()
            .contains("max_per_payment_usdc"),
        "{e}"
    );
    assert!(
        !dir.path().join("state.json").exists(),
        "nothing signed or recorded"
    );

    let no_key = cli_with_key(&s.url, dir.path(), &ACTIVATE, None).await;
    assert_eq!(no_key.code, 1, "{}", no_key.stderr);
    assert!(
        no_key.stderr.contains("ESIM402_WALLET_KEY"),
        "{}",
        no_key.stderr
    );
    let help = cli(&s.url, dir.path(), &["--help"]).await;
    assert_eq!(help.code, 0);
    assert!(
        help.stdout.contains("Exit codes:")
            && help.stdout.contains("3  refused by the spend policy"),
        "{}",
        help.stdout
    );
    assert_eq!(s.balance(agent()).await, start);

    // The daily cap counts what this state directory already paid today.
    let capped = tempfile::tempdir().unwrap();
    std::fs::write(
        capped.path().join("policy.toml"),
        "max_per_day_usdc = \"0.50\"\n",
    )
    .unwrap();
    let first = cli(&s.url, capped.path(), &ACTIVATE).await;
    assert_eq!(first.code, 0, "{}", first.stderr);
    let second = cli(&s.url, capped.path(), &ACTIVATE).await;
    assert_eq!(second.code, 3, "{}", second.stderr);
    assert!(
        second
            .stderr
            .contains("max_per_day_usdc: 0.42 USDC already spent today"),
        "{}",
        second.stderr
    );
    assert_eq!(
        s.balance(agent()).await,
        start - U256::from(420_000),
        "one paid"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_cli_honours_settlement_pending_by_sending_the_same_payment_again() {
    let s = PayStack::start(&[("SPIN_VARIABLE_SETTLEMENT_TIMEOUT_MS", "1500")]).await;
    let dir = tempfile::tempdir().unwrap();
    let start = s.balance(agent()).await;
    s.rpc("evm_setAutomine", json!([false])).await;
    // The chain holds the settlement back until the CLI has been told it is pending, then mines it.
    let mine = async {
        for _ in 0..300 {
            let pool = s.rpc("txpool_content", json!([])).await;
            if !pool["pending"].as_object().unwrap().is_empty() {
                tokio::time::sleep(std::time::Duration::from_secs(2)).await;
                s.rpc("anvil_mine", json!([1])).await;
                s.rpc("evm_setAutomine", json!([true])).await;
                return;
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
        panic!("no settlement was broadcast");
    };
    let (run, ()) = tokio::join!(cli(&s.url, dir.path(), &ACTIVATE), mine);
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert!(run.stderr.contains("settlement pending"), "{}", run.stderr);
    assert!(run.stdout.trim().starts_with("LPA:1$"), "{}", run.stdout);
    assert_eq!(s.balance(agent()).await, start - U256::from(420_000));
    let sent = s.facilitator_transactions().await;
    assert_eq!(sent, "0x1", "one settlement transaction");
    assert!(state(dir.path())["pending"].as_object().unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_failed_order_charges_nothing_and_keeps_no_payment() {
    let s = PayStack::start(&[("SPIN_VARIABLE_ES2_TIMEOUT_MS", "2000")]).await;
    let dir = tempfile::tempdir().unwrap();
    let start = s.balance(agent()).await;
    s.break_us_west().await;
    let failed = cli(&s.url, dir.path(), &ACTIVATE).await;
    assert_eq!(failed.code, 5, "{}", failed.stderr);
    assert!(
        failed.stderr.contains("nothing was charged"),
        "{}",
        failed.stderr
    );
    assert!(
        !failed.stderr.contains("run the same command again"),
        "{}",
        failed.stderr
    );
    let st = state(dir.path());
    assert!(st["pending"].as_object().unwrap().is_empty(), "{st}");
    assert!(st["spends"].as_array().unwrap().is_empty(), "{st}");
    assert_eq!(s.balance(agent()).await, start);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_cli_switches_carrier_with_the_owners_credential_and_pays_once() {
    let s = PayStack::start(&[]).await;
    let dir = tempfile::tempdir().unwrap();
    let bought = cli(&s.url, dir.path(), &ACTIVATE).await;
    assert_eq!(bought.code, 0, "{}", bought.stderr);
    let old = state(dir.path())["sims"]
        .as_object()
        .unwrap()
        .keys()
        .next()
        .unwrap()
        .clone();
    let before = s.balance(agent()).await;
    let usage = cli(&s.url, dir.path(), &["switch"]).await;
    assert_eq!(usage.code, 2, "a target is required: {}", usage.stderr);
    let moved = cli(&s.url, dir.path(), &["switch", "--carrier", "verizon"]).await;
    assert_eq!(moved.code, 0, "{}", moved.stderr);
    ActivationCode::parse(moved.stdout.trim()).unwrap();
    let st = state(dir.path());
    assert_eq!(st["sims"][old.as_str()]["terminated"], true, "{st}");
    assert_eq!(st["sims"].as_object().unwrap().len(), 2, "{st}");
    let spent = &st["spends"][1];
    assert_eq!(spent["status"], "settled", "{st}");
    let price = esim402_core::UsdcAmount::parse_usdc(spent["amount_usdc"].as_str().unwrap())
        .unwrap()
        .micros();
    assert_eq!(s.balance(agent()).await, before - U256::from(price));
    // The new SIM is now the one the commands act on, with its own token.
    let status = cli(&s.url, dir.path(), &["status", "--json"]).await;
    assert_eq!(status.code, 0, "{}", status.stderr);
    let status: Value = serde_json::from_str(&status.stdout).unwrap();
    assert_eq!(status["carrier"], "verizon", "{status}");
    assert_ne!(status["iccid"], old.as_str());
    // Terminating the SIM the switch replaced (its wallet signs in) says that the new SIM, which holds the
    // balance, goes on (before, it said nothing: a trial's owner thought the data ended).
    let mut st = state(dir.path());
    st["sims"][old.as_str()]["access_token"] = Value::Null;
    std::fs::write(dir.path().join("state.json"), st.to_string()).unwrap();
    let ended = cli(
        &s.url,
        dir.path(),
        &["terminate", "--iccid", &old, "--json"],
    )
    .await;
    assert_eq!(ended.code, 0, "{}", ended.stderr);
    let new = status["iccid"].as_str().unwrap();
    assert!(
        ended.stderr.contains(&format!(
            "had been switched to SIM {new}, which holds its balance"
        )),
        "{}",
        ended.stderr
    );
    // Another state directory of the same wallet reads the new SIM's code with the wallet's sign-in (before,
    // `status --activation-code` printed none and said nothing for a SIM it did not buy: a trial).
    let elsewhere = tempfile::tempdir().unwrap();
    let read = cli(
        &s.url,
        elsewhere.path(),
        &["status", "--iccid", new, "--activation-code", "--json"],
    )
    .await;
    assert_eq!(read.code, 0, "{}", read.stderr);
    let read: Value = serde_json::from_str(&read.stdout).unwrap();
    ActivationCode::parse(read["activation_code"].as_str().unwrap()).unwrap();
}

#[test]
fn the_cost_command_reproduces_the_seed_fleet_without_a_wallet() {
    let out = std::process::Command::new(agent_bin())
        .args([
            "cost",
            "--devices",
            "12000",
            "--mb-per-device",
            "7.2",
            "--json",
        ])
        .env_remove("ESIM402_WALLET_KEY")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let r: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    // 12 000 × 7.2 MB × $0.003/MB, by hand: $259.20 (the seed's table prints $1 080).
    assert_eq!(r["pay_per_use"]["at_bare_rate_usdc"], "259.20");
    assert_eq!(r["plan_usdc"], "13728.00");
    let bad = std::process::Command::new(agent_bin())
        .args(["cost", "--devices", "1", "--mb-per-device", "much"])
        .output()
        .unwrap();
    assert_eq!(bad.status.code(), Some(2), "bad input is a usage error");
}

/// Output to a reader that went away (`esim402-agent cost | head -1`) ends the CLI quietly: before, `println!`
/// panicked on the broken pipe (exit 101 and a backtrace; a fresh-user trial, thirty-third session).
#[test]
fn output_to_a_closed_pipe_ends_the_cli_quietly() {
    let (reader, writer) = std::io::pipe().unwrap();
    drop(reader);
    let out = std::process::Command::new(agent_bin())
        .args(["cost", "--devices", "10", "--mb-per-device", "1"])
        .env_remove("ESIM402_WALLET_KEY")
        .stdout(writer)
        .stderr(std::process::Stdio::piped())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
}

/// Plain http:// to a facilitator on another machine is refused before anything is sent (a 402's `payTo` and
/// the bearer tokens would cross the network in clear), naming the opt-in; with `--insecure-http` the URL is
/// accepted (here the command then stops at "no SIM yet", before any request).
#[tokio::test]
async fn plain_http_to_another_machine_needs_the_opt_in() {
    let dir = tempfile::tempdir().unwrap();
    let refused = cli("http://esim.example", dir.path(), &["status"]).await;
    assert_eq!(refused.code, 1, "{}", refused.stderr);
    assert!(
        refused.stderr.contains("--insecure-http"),
        "{}",
        refused.stderr
    );
    let opted = cli(
        "http://esim.example",
        dir.path(),
        &["--insecure-http", "status"],
    )
    .await;
    assert_eq!(opted.code, 2, "{}", opted.stderr);
    assert!(opted.stderr.contains("no SIM"), "{}", opted.stderr);
}

/// A system proxy in the environment (`HTTP_PROXY`, `ALL_PROXY`, …) is not used: the CLI talks to the
/// facilitator it is given, directly. Before, a plain-http request meant for this machine (a wallet sign-in
/// here; payments and tokens alike) went to whatever proxy the environment named.
#[tokio::test]
async fn system_proxies_are_not_used() {
    // A facilitator answering any request with an empty SIM list, and a proxy counting its connections.
    let facilitator = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", facilitator.local_addr().unwrap());
    tokio::spawn(async move {
        while let Ok((mut conn, _)) = facilitator.accept().await {
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut byte = [0u8; 1];
                while !head.ends_with(b"\r\n\r\n")
                    && conn.read(&mut byte).await.is_ok_and(|n| n == 1)
                {
                    head.push(byte[0]);
                }
                let body = r#"{"sims":[]}"#;
                let answer = format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = conn.write_all(answer.as_bytes()).await;
            });
        }
    });
    let proxy = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let proxy_url = format!("http://{}", proxy.local_addr().unwrap());
    let proxied = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let count = proxied.clone();
    tokio::spawn(async move {
        while let Ok((mut conn, _)) = proxy.accept().await {
            count.fetch_add(1, Ordering::SeqCst);
            let _ = conn
                .write_all(b"HTTP/1.1 502 Bad Gateway\r\ncontent-length: 0\r\n\r\n")
                .await;
        }
    });
    let dir = tempfile::tempdir().unwrap();
    let env: Vec<(&str, &str)> = ["http_proxy", "HTTP_PROXY", "all_proxy", "ALL_PROXY"]
        .into_iter()
        .map(|name| (name, proxy_url.as_str()))
        .chain([("NO_PROXY", ""), ("no_proxy", "")])
        .collect();
    let run = cli_with_env(&url, dir.path(), &["sims"], Some(DEMO_AGENT_KEY), &env).await;
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_eq!(
        proxied.load(Ordering::SeqCst),
        0,
        "nothing went to the proxy"
    );
}

/// The proxy process, stopped by its PID on drop.
struct Proxy {
    child: std::process::Child,
    url: String,
}

impl Drop for Proxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_proxy_pays_for_plain_devices_within_their_budgets_and_logs_every_payment() {
    let s = PayStack::start(&[]).await;
    let dir = tempfile::tempdir().unwrap();
    let audit = dir.path().join("audit.jsonl");
    // The wallet's own daily cap (the policy file) allows two of these activations in all, whichever devices
    // ask: each device's budget is on top of it, not instead of it.
    let (_, offer) = s
        .invoice(&json!({"region": "us-west", "data_mb": 10}))
        .await;
    let one: u64 = offer.amount.parse().unwrap();
    std::fs::create_dir_all(dir.path().join("state")).unwrap();
    std::fs::write(
        dir.path().join("state").join("policy.toml"),
        format!(
            "max_per_day_usdc = \"{}\"\n",
            esim402_core::UsdcAmount::from_micros(2 * one)
        ),
    )
    .unwrap();
    let mut cmd = std::process::Command::new(agent_bin());
    cmd.args(["--url", &s.url, "--state-dir"])
        .arg(dir.path().join("state"))
        .args([
            "proxy",
            "--listen",
            "127.0.0.1:0",
            "--device-header",
            "x-device-id",
            "--device-max-per-payment",
            "1",
            "--device-max-per-day",
            "0.20",
            "--audit-log",
        ])
        .arg(&audit)
        .env("ESIM402_WALLET_KEY", DEMO_AGENT_KEY)
        .stderr(std::process::Stdio::null());
    let (child, url) =
        esim402_host::devstack::spawn_announcing(&mut cmd, "esim402-agent proxy listening on ")
            .unwrap();
    let proxy = Proxy { child, url };
    // A second proxy on the same state directory would share the wallet's cap record: refused by name.
    let mut second = Proxy {
        child: cmd
            .stderr(std::process::Stdio::piped())
            .stdout(std::process::Stdio::null())
            .spawn()
            .unwrap(),
        url: String::new(),
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let status = loop {
        if let Some(status) = second.child.try_wait().unwrap() {
            break status;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "a second proxy on the same state directory kept serving"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    };
    assert!(!status.success());
    let mut said = String::new();
    std::io::Read::read_to_string(second.child.stderr.as_mut().unwrap(), &mut said).unwrap();
    assert!(
        said.contains("another esim402-agent is using the state directory"),
        "{said}"
    );
    let http = reqwest::Client::new();
    let activate_mb = |device: &'static str, data_mb: u32| {
        http.post(format!("{}/v1/esim/activate", proxy.url))
            .header("x-device-id", device)
            .json(&json!({"region": "us-west", "data_mb": data_mb}))
            .send()
    };
    let activate = |device: &'static str| activate_mb(device, 10);
    // Devices named by a header (which any client may send) are answered with a kept answer only for the same
    // Idempotency-Key.
    let activate_once = |device: &'static str, key: &'static str| {
        http.post(format!("{}/v1/esim/activate", proxy.url))
            .header("x-device-id", device)
            .header("idempotency-key", key)
            .json(&json!({"region": "us-west", "data_mb": 10}))
            .send()
    };
    let start = s.balance(agent()).await;

    // A plain device (no x402, no wallet) gets its activation code; the gateway's wallet paid once.
    let r = activate_once("pump-1", "pump-1-buy-1").await.unwrap();
    assert_eq!(r.status(), 200);
    let paid: Value = r.json().await.unwrap();
    let code = paid["activation_code"].as_str().unwrap();
    ActivationCode::parse(code).unwrap();
    let price: esim402_core::UsdcAmount = paid["amount_usdc"].as_str().unwrap().parse().unwrap();
    assert_eq!(s.balance(agent()).await, start - U256::from(price.micros()));

    // The same request again (its answer lost on the way, say) is answered with the kept answer, nothing paid.
    let r = activate_once("pump-1", "pump-1-buy-1").await.unwrap();
    assert_eq!(r.status(), 200);
    let again: Value = r.json().await.unwrap();
    assert_eq!(again["iccid"], paid["iccid"]);
    assert_eq!(s.balance(agent()).await, start - U256::from(price.micros()));

    // Another purchase by the same device is over its daily budget: 403 naming it, nothing paid.
    let r = activate_mb("pump-1", 11).await.unwrap();
    assert_eq!(r.status(), 403);
    let e: Value = r.json().await.unwrap();
    assert_eq!(e["error"]["code"], "over_budget", "{e}");
    assert!(
        e["error"]["message"]
            .as_str()
            .unwrap()
            .contains("max_per_day"),
        "{e}"
    );
    assert_eq!(s.balance(agent()).await, start - U256::from(price.micros()));
    // Another device has its own budget. It buys with the query form, labelled with its own X-Agent-ID, and
    // reads its SIM back through the proxy with the SIM's own token: the device's headers reach the app.
    let r = http
        .get(format!(
            "{}/v1/esim/activate?region=us-west&data_mb=10",
            proxy.url
        ))
        .header("x-device-id", "pump-2")
        .header("x-agent-id", "pump-2-label")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let bought: Value = r.json().await.unwrap();
    let iccid = bought["iccid"].as_str().unwrap();
    let token = bought["access_token"].as_str().unwrap();
    let sim: Value = http
        .get(format!("{}/v1/esim/{iccid}", proxy.url))
        .header("x-device-id", "pump-2")
        .bearer_auth(token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(sim["agent_id"], "pump-2-label", "{sim}");
    // A device never pays itself through the proxy: its payment header is refused, nothing forwarded or paid.
    let r = http
        .post(format!("{}/v1/esim/activate", proxy.url))
        .header("x-device-id", "pump-4")
        .header("payment-signature", "eyJ4IjoxfQ==")
        .json(&json!({"region": "us-west", "data_mb": 10}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    // A third device is within its own budget, but the wallet's cap is spent: 403, nothing paid.
    let r = activate("pump-3").await.unwrap();
    assert_eq!(r.status(), 403);
    let e: Value = r.json().await.unwrap();
    assert_eq!(e["error"]["code"], "over_budget", "{e}");
    // Requests that need no payment pass through; a device without an id is refused.
    let health = http
        .get(format!("{}/health", proxy.url))
        .header("x-device-id", "pump-1");
    assert_eq!(health.send().await.unwrap().status(), 200);
    let anonymous = http
        .get(format!("{}/health", proxy.url))
        .send()
        .await
        .unwrap();
    assert_eq!(anonymous.status(), 400);

    // The audit log: each payment as it was signed (the agent's amount, recipient, network, id), then how it
    // ended, with device, invoice, amount and tx hash; the repeat answered with the kept answer, as replayed.
    let lines: Vec<Value> = std::fs::read_to_string(&audit)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let events: Vec<(&str, &str)> = lines
        .iter()
        .map(|l| (l["event"].as_str().unwrap(), l["device"].as_str().unwrap()))
        .collect();
    assert_eq!(
        events,
        [
            ("signed", "pump-1"),
            ("settled", "pump-1"),
            ("replayed", "pump-1"),
            ("signed", "pump-2"),
            ("settled", "pump-2")
        ],
        "{lines:?}"
    );
    let replayed = &lines[2];
    assert_eq!(
        replayed["transaction"], lines[1]["transaction"],
        "{replayed}"
    );
    assert!(replayed.get("activation_code").is_none(), "{replayed}");
    let payments: Vec<&Value> = lines.iter().filter(|l| l["event"] != "replayed").collect();
    for pair in payments.chunks(2) {
        assert_eq!(pair[0]["payment_id"], pair[1]["payment_id"]);
        assert_eq!(pair[0]["amount_usdc"], paid["amount_usdc"], "signed");
        let l = &pair[1];
        assert!(l["transaction"].as_str().unwrap().starts_with("0x"), "{l}");
        assert!(l["invoice_id"].as_str().unwrap().starts_with("inv_"), "{l}");
        assert_eq!(l["amount_usdc"], paid["amount_usdc"]);
        assert_eq!(l["facilitator_amount_usdc"], paid["amount_usdc"]);
    }
    assert_eq!(
        s.balance(agent()).await,
        start - U256::from(2 * price.micros()),
        "two devices, two payments"
    );
}

/// Check every request the CLI sent against the OpenAPI description (`GET /openapi.json`): the path and method
/// are described, every query parameter and payment header is declared, a credential matches the operation's
/// security, and the JSON body validates against the operation's request schema. The operations covered.
pub(crate) fn check_against_openapi(sent: &[Sent]) -> std::collections::BTreeSet<String> {
    let doc: Value = serde_json::from_str(esim402_core::routes::OPENAPI_JSON).unwrap();
    let mut covered = std::collections::BTreeSet::new();
    for r in sent {
        let (path, query) = r.target.split_once('?').unwrap_or((&r.target, ""));
        let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
        let (template, item) = doc["paths"]
            .as_object()
            .unwrap()
            .iter()
            .find(|(t, _)| {
                let parts: Vec<&str> = t.trim_matches('/').split('/').collect();
                parts.len() == segments.len()
                    && parts
                        .iter()
                        .zip(&segments)
                        .all(|(p, s)| p.starts_with('{') || p == s)
                    // Literal routes win over templates (`/v1/esim/activate` is not an ICCID).
                    && !(t.contains('{') && segments.contains(&"activate"))
            })
            .unwrap_or_else(|| panic!("{} {}: path not described", r.method, r.target));
        let op = &item[r.method.to_lowercase()];
        assert!(
            op.is_object(),
            "{} {template}: method not described",
            r.method
        );
        let params = op["parameters"].as_array().cloned().unwrap_or_default();
        let declared = |name: &str, place: &str| {
            params
                .iter()
                .any(|p| p["in"] == place && p["name"].as_str().unwrap().eq_ignore_ascii_case(name))
        };
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let name = pair.split('=').next().unwrap();
            assert!(
                declared(name, "query"),
                "{} {template}: query `{name}` not declared",
                r.method
            );
        }
        let security: Vec<String> = op["security"]
            .as_array()
            .map(|s| {
                s.iter()
                    .flat_map(|o| o.as_object().unwrap().keys().cloned())
                    .collect()
            })
            .unwrap_or_default();
        for h in &r.headers {
            match h.as_str() {
                "authorization" => assert!(
                    security
                        .iter()
                        .any(|s| s == "simToken" || s == "carrierCredential"),
                    "{} {template}: a bearer credential is not in its security {security:?}",
                    r.method
                ),
                "sign-in-with-x" => assert!(
                    security.iter().any(|s| s == "signInWithX"),
                    "{} {template}: SIGN-IN-WITH-X is not in its security {security:?}",
                    r.method
                ),
                "payment-signature" | "x-payment" | "x-agent-id" => assert!(
                    declared(h, "header"),
                    "{} {template}: header {h} not declared",
                    r.method
                ),
                _ => {}
            }
        }
        if !r.body.is_empty() {
            let body: Value = serde_json::from_slice(&r.body).unwrap();
            let schema = &op["requestBody"]["content"]["application/json"]["schema"];
            assert!(
                schema.is_object(),
                "{} {template}: a body, but none described",
                r.method
            );
            let mut rooted = serde_json::json!({"components": doc["components"].clone()});
            rooted
                .as_object_mut()
                .unwrap()
                .extend(schema.as_object().unwrap().clone());
            let validator = jsonschema::draft202012::new(&rooted).unwrap();
            let errors: Vec<String> = validator
                .iter_errors(&body)
                .map(|e| e.to_string())
                .collect();
            assert!(
                errors.is_empty(),
                "{} {template}: body {body} does not match: {errors:?}",
                r.method
            );
        }
        covered.insert(format!("{} {template}", r.method));
    }
    covered
}
