//! `esim402-agent watch` end to end: the real CLI as a child process, watching a SIM it bought, against the app
//! on anvil with the traffic simulator (a real process) moving data. Every payment is checked on chain:
//! top-ups happen within the spend policy and stop at its daily cap; a forged receipt injected into the feed
//! is disputed and costs nothing; charges the agent cannot verify with the carrier signers it pins never
//! justify a top-up; a weak signal switches carrier and a refused attach abroad switches region, each paid
//! once.

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use alloy_primitives::U256;
use esim402_core::UsdcAmount;
use esim402_core::usage::receipt::Receipt;
use esim402_host::devstack::chain::DEMO_AGENT_KEY;
use esim402_tests::TrafficSim;
use serde_json::{Value, json};
use tokio::io::AsyncBufReadExt as _;

use crate::agent::{LossyProxy, agent_bin, check_against_openapi, cli, state};
use crate::metering::receipt;
use crate::payments::{PayStack, agent};

/// A running `watch`: its JSON events as they come; killed (by its PID) on drop.
struct Watch {
    child: tokio::process::Child,
    events: tokio::sync::mpsc::UnboundedReceiver<Value>,
    seen: Vec<Value>,
}

impl Watch {
    fn start(url: &str, dir: &Path, args: &[&str]) -> Self {
        let mut child = tokio::process::Command::new(agent_bin())
            .args(["--url", url, "--state-dir"])
            .arg(dir)
            .args(["--json", "watch", "--interval", "0.3"])
            .args(args)
            .env("ESIM402_WALLET_KEY", DEMO_AGENT_KEY)
            .env_remove("ESIM402_URL")
            .env_remove("ESIM402_STATE_DIR")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let mut lines = tokio::io::BufReader::new(child.stdout.take().unwrap()).lines();
        let (tx, events) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(async move {
            while let Ok(Some(line)) = lines.next_line().await {
                let secret = DEMO_AGENT_KEY.trim_start_matches("0x");
                assert!(!line.contains(secret), "the wallet key is never printed");
                let _ = tx.send(serde_json::from_str::<Value>(&line).unwrap());
            }
        });
        Self {
            child,
            events,
            seen: Vec::new(),
        }
    }

    /// The next `kind` event (others seen on the way are kept); fails after 60 s.
    async fn next(&mut self, kind: &str) -> Value {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        loop {
            let e = tokio::time::timeout_at(deadline, self.events.recv())
                .await
                .unwrap_or_else(|_| panic!("no {kind} event within 60 s; seen {:#?}", self.seen))
                .unwrap_or_else(|| {
                    panic!("watch ended before a {kind} event; seen {:#?}", self.seen)
                });
            self.seen.push(e.clone());
            if e["event"] == kind {
                return e;
            }
            assert_ne!(e["event"], "stopped", "stopped early: {:#?}", self.seen);
        }
    }

    /// Wait for the process to exit; its code.
    async fn exit_code(&mut self) -> i32 {
        tokio::time::timeout(Duration::from_secs(60), self.child.wait())
            .await
            .expect("watch exits within 60 s")
            .unwrap()
            .code()
            .unwrap_or(-1)
    }

    fn events(&self, kind: &str) -> Vec<&Value> {
        self.seen.iter().filter(|e| e["event"] == kind).collect()
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
    }
}

async fn traffic(t: &TrafficSim, s: &PayStack, iccid: &str, bytes: u64) -> Value {
    let r = s
        .http
        .post(format!("{}/admin/usage", t.url))
        .json(&json!({"iccid": iccid, "bytes": bytes}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    r.json().await.unwrap()
}

async fn facilitator_balance(s: &PayStack, iccid: &str) -> Value {
    let (status, b) = s.get(&format!("/v1/esim/{iccid}/balance")).await;
    assert_eq!(status, 200, "{b}");
    b
}

fn micros(v: &Value) -> U256 {
    U256::from(
        UsdcAmount::parse_usdc(v.as_str().unwrap())
            .unwrap()
            .micros(),
    )
}

/// Buy a 1 MB SIM with the CLI in `dir`; its ICCID and price.
async fn bought(s: &PayStack, dir: &Path) -> (String, U256) {
    let run = cli(
        &s.url,
        dir,
        &[
            "--json",
            "activate",
            "--region",
            "us-west",
            "--data-mb",
            "1",
        ],
    )
    .await;
    assert_eq!(run.code, 0, "{}", run.stderr);
    let a: Value = serde_json::from_str(&run.stdout).unwrap();
    let iccid = a["iccid"].as_str().unwrap().to_owned();
    know_token(s, dir, &iccid);
    (iccid, micros(&a["amount_usdc"]))
}

/// Let the test's own requests use the access token the CLI keeps for `iccid`.
fn know_token(s: &PayStack, dir: &Path, iccid: &str) {
    let token = state(dir)["sims"][iccid]["access_token"].clone();
    s.remember(&json!({"iccid": iccid, "access_token": token}));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn watch_tops_up_within_policy_disputes_a_forged_receipt_and_stops_at_the_daily_cap() {
    let s = PayStack::start(&[]).await;
    let t = TrafficSim::start(&s.url, &s.sim.url).unwrap();
    let dir = tempfile::tempdir().unwrap();
    // Room for the activation (0.123) and one top-up (16 MB, the first offer, at the $0.05 minimum), not two.
    std::fs::write(
        dir.path().join("policy.toml"),
        "max_per_day_usdc = \"0.20\"\n",
    )
    .unwrap();
    let start = s.balance(agent()).await;
    let (iccid, price) = bought(&s, dir.path()).await;
    assert_eq!(price, U256::from(123_000));

    // The network drains it below the low-water mark before the watch starts (a watch running during the
    // drain may see the carrier's grant, reserved bytes, before its receipts: a legitimate reason to top up,
    // but not the one this checks): the first tick verifies the receipts, then tops up once.
    traffic(&t, &s, &iccid, 900_000).await;
    let mut w = Watch::start(&s.url, dir.path(), &[]);
    let top = w.next("topped_up").await;
    assert_eq!(
        (top["data_mb"].as_u64(), top["amount_usdc"].as_str()),
        (Some(16), Some("0.05")),
        "{top}"
    );
    let verified: u64 = w
        .events("verified")
        .iter()
        .map(|e| e["bytes"].as_u64().unwrap())
        .sum();
    assert!(
        verified >= 1_000_000 - esim402_core::usage::account::LOW_WATER_BYTES,
        "verified usage alone brought it low before paying: {verified}"
    );
    let g = w.next("granted").await;
    assert!(
        g["remaining_kb"].as_u64().unwrap() > 10_000,
        "the top-up's 16 MB is there to grant: {g}"
    );
    assert_eq!(s.balance(agent()).await, start - price - U256::from(50_000));

    // A forged receipt injected into the feed: the facilitator refuses it, the watch reports it, nobody pays.
    let mut forged: Receipt = serde_json::from_value::<esim402_core::usage::receipt::WireReceipt>(
        receipt(&iccid, "forged", 1, 5_000_000, "310-260"),
    )
    .unwrap()
    .parse()
    .unwrap();
    forged = forged
        .sign(&k256::ecdsa::SigningKey::from_slice(&[9u8; 32]).unwrap())
        .unwrap();
    let (status, _, r) = s
        .post("/v1/usage", &json!({"receipts": [forged.to_wire()]}), &[])
        .await;
    assert_eq!((status, &r["totals"]["accepted"]), (200, &json!(0)), "{r}");
    let d = w.next("disputed").await;
    assert_eq!(
        (d["charged"].as_bool(), d["bytes"].as_u64()),
        (Some(false), Some(5_000_000)),
        "{d}"
    );
    assert_eq!(d["session_id"], "forged");

    // Drained again: the second top-up would pass the daily cap, so the watch stops (exit 3), nothing paid.
    traffic(&t, &s, &iccid, 16_000_000).await;
    let stopped = w.next("stopped").await;
    assert_eq!(stopped["exit_code"], 3, "{stopped}");
    assert!(
        stopped["reason"]
            .as_str()
            .unwrap()
            .contains("max_per_day_usdc"),
        "{stopped}"
    );
    assert_eq!(w.exit_code().await, 3);
    assert_eq!(w.events("topped_up").len(), 1);
    // It may have stopped while the last receipts were still being posted (the carrier's grant held their
    // bytes as reserved, which count): one more tick audits them all, and stops at the cap again.
    let mut again = Watch::start(&s.url, dir.path(), &["--ticks", "1"]);
    let stopped = again.next("stopped").await;
    assert_eq!(stopped["exit_code"], 3, "{stopped}");
    assert_eq!(again.exit_code().await, 3);
    assert!(again.events("topped_up").is_empty(), "{:#?}", again.seen);
    assert_eq!(
        s.balance(agent()).await,
        start - price - U256::from(50_000),
        "paid twice, no more"
    );

    // The facilitator and the agent agree on every byte; the forged one is only in the disputes.
    let b = facilitator_balance(&s, &iccid).await;
    assert_eq!(b["credited_bytes"], 17_000_000, "{b}");
    let audit = &state(dir.path())["audits"][iccid.as_str()];
    assert_eq!(audit["verified_bytes"], b["used_bytes"], "{audit} vs {b}");
    assert_eq!(audit["verified_bytes"], 16_900_000);
    assert_eq!(
        audit["disputed_bytes"], 0,
        "nothing charged was disputed: {audit}"
    );
    assert_eq!(audit["disputes"].as_array().unwrap().len(), 1, "{audit}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn charges_the_agent_cannot_verify_never_justify_a_top_up() {
    let s = PayStack::start(&[]).await;
    let t = TrafficSim::start(&s.url, &s.sim.url).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let start = s.balance(agent()).await;
    let (iccid, price) = bought(&s, dir.path()).await;
    // The facilitator charges receipts signed by T-Mobile's dev key; this agent pins another signer for
    // T-Mobile, so to it those charges are unproven.
    let pinned = dir.path().join("catalog.toml");
    std::fs::write(
        &pinned,
        esim402_core::esim::catalog::BUILTIN_TOML.replace(
            "0xA9De341e526Be47F2eB5E47B9a85D26D65538809",
            "0x00000000000000000000000000000000000000aa",
        ),
    )
    .unwrap();
    traffic(&t, &s, &iccid, 900_000).await;
    let b = facilitator_balance(&s, &iccid).await;
    assert_eq!(b["low"], true, "{b}");

    let mut w = Watch::start(
        &s.url,
        dir.path(),
        &["--catalog", pinned.to_str().unwrap(), "--ticks", "3"],
    );
    let d = w.next("disputed").await;
    assert_eq!(d["charged"], true, "{d}");
    assert!(
        d["reason"].as_str().unwrap().contains("does not verify"),
        "{d}"
    );
    let held = w.next("top_up_withheld").await;
    assert_eq!(held["own_remaining_kb"], 1_000, "{held}");
    assert_eq!(held["disputed_bytes"], 900_000, "{held}");
    let stopped = w.next("stopped").await;
    assert_eq!(stopped["exit_code"], 0, "{stopped}");
    assert_eq!(w.exit_code().await, 0);
    assert!(w.events("topped_up").is_empty(), "{:#?}", w.seen);
    assert_eq!(
        s.balance(agent()).await,
        start - price,
        "nothing paid for unproven usage"
    );
    assert_eq!(
        facilitator_balance(&s, &iccid).await["credited_bytes"],
        1_000_000
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_weak_signal_switches_carrier_and_a_refused_attach_abroad_switches_region() {
    let s = PayStack::start(&[]).await;
    let dir = tempfile::tempdir().unwrap();
    let (first, _) = bought(&s, dir.path()).await;
    let radio = dir.path().join("modem.txt");
    std::fs::write(&radio, "+CSQ: 20,99\nOK\n").unwrap();
    let radio_arg = radio.to_str().unwrap();
    // Through a recording proxy: every request the watch sends is checked against the OpenAPI description.
    let proxy = LossyProxy::start(&s.url, false).await;
    let mut w = Watch::start(
        &proxy.url,
        dir.path(),
        &[
            "--signal-file",
            radio_arg,
            "--switch-below-dbm",
            "-105",
            "--switch-after",
            "2",
        ],
    );
    w.next("granted").await;
    let before = s.balance(agent()).await;

    // The level drops to -107 dBm and stays there: one paid switch to the region's next carrier.
    std::fs::write(&radio, "+CSQ: 3,99\nOK\n").unwrap();
    let moving = w.next("moving").await;
    assert_eq!(moving["to"], json!({"carrier": "verizon"}), "{moving}");
    let switched = w.next("switched").await;
    assert_eq!(
        (switched["from"].as_str(), switched["carrier"].as_str()),
        (Some(first.as_str()), Some("verizon"))
    );
    std::fs::write(&radio, "+CSQ: 25,99\nOK\n").unwrap();
    let second = switched["iccid"].as_str().unwrap().to_owned();
    let st = state(dir.path());
    assert_eq!(st["sims"][first.as_str()]["terminated"], true, "{st}");
    let spends = st["spends"].as_array().unwrap();
    assert_eq!(spends.len(), 2, "{st}");
    assert!(
        spends[1]["purpose"].as_str().unwrap().starts_with("switch"),
        "{st}"
    );
    let paid = micros(&spends[1]["amount_usdc"]);
    assert_eq!(s.balance(agent()).await, before - paid, "paid once");
    let g = w.next("granted").await;
    assert_eq!(g["iccid"], second.as_str(), "the watch follows the new SIM");

    // Across a border: the modem sees Telekom Deutschland and the attach is refused: a region switch.
    std::fs::write(&radio, "+COPS: 0,2,\"26201\",7\n+CEREG: 0,3\nOK\n").unwrap();
    let moving = w.next("moving").await;
    assert_eq!(moving["to"], json!({"region": "eu-central"}), "{moving}");
    let switched = w.next("switched").await;
    assert_eq!(switched["from"], second.as_str());
    assert_eq!(
        (switched["region"].as_str(), switched["carrier"].as_str()),
        (Some("eu-central"), Some("telekom-de"))
    );
    let third = switched["iccid"].as_str().unwrap().to_owned();
    // The modem has not rewritten its status yet: the same refused attach, tick after tick, moves nothing more
    // (before, each tick paid for another switch).
    for _ in 0..2 {
        while w.next("granted").await["iccid"] != third.as_str() {}
    }
    assert_eq!(w.events("moving").len(), 2, "{:#?}", w.seen);
    std::fs::write(&radio, "+CEREG: 0,1\n").unwrap();
    know_token(&s, dir.path(), &third);
    let (status, sim) = s.get(&format!("/v1/esim/{third}")).await;
    assert_eq!(status, 200, "{sim}");
    assert_eq!(
        (sim["carrier"].as_str(), sim["region"].as_str()),
        (Some("telekom-de"), Some("eu-central")),
        "{sim}"
    );
    let spends = state(dir.path())["spends"].as_array().unwrap().clone();
    assert_eq!(spends.len(), 3);
    assert_eq!(
        s.balance(agent()).await,
        before - paid - micros(&spends[2]["amount_usdc"])
    );
    assert_eq!(w.events("switched").len(), 2, "{:#?}", w.seen);
    let covered = check_against_openapi(&proxy.sent());
    for op in [
        "POST /v1/esim/{iccid}/switch",
        "POST /v1/esim/{iccid}/data",
        "GET /v1/esim/{iccid}/receipts",
    ] {
        assert!(covered.contains(op), "{op} not exercised: {covered:?}");
    }
}
