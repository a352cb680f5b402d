//! One end-to-end scenario against every way a user serves the app: `esim402 up` and the real `spin up`
//! (`esim402_tests::spin_binary`: `SPIN_BIN`, `spin` on `PATH`, or the archive in `../shared/tools/`), each on
//! Spin's SQLite store and on Redis — the stores whose compare-and-swap the app must not trust. The scenario:
//! a 402 with a sealed invoice, an activation paid by the official x402 Python client, its payment replayed
//! (409), a tx-hash proof (and its reuse: 409), carrier-signed usage charged once (the metering component's
//! `wasi:keyvalue` batch calls on that runtime and store), the SIM's lifecycle, and a verifying ledger. On Spin + Redis,
//! 100 racing replays of one payment settle once. Without a Spin CLI the Spin cases are skipped with a line
//! saying so.

use std::time::Duration;

use base64::Engine as _;
use esim402_host::devstack::chain;
use esim402_tests::{Runner, StopOnDrop, free_port, repo_root, running_with, spin_binary};
use serde_json::{Value, json};

use crate::metering::receipt;
use crate::payments::{PayStack, Store, activation, agent, hundred_replays, pay_directly, price};
use crate::python_client::{pay, python};

/// The real Spin CLI, or `None` after printing why the test is skipped.
fn spin(test: &str) -> Option<Runner> {
    match spin_binary() {
        Ok(bin) => Some(Runner::Spin(bin)),
        Err(why) => {
            eprintln!("skipped {test}: {why}");
            None
        }
    }
}

/// Send `requests` (method, path, JSON body) one after another on one keep-alive connection to `url` and
/// return each answer's status and headers (names lower-cased), reading each body by its `Content-Length`:
/// an answer without one (chunked, or closed-delimited) fails here.
async fn framed_answers(
    url: &str,
    requests: &[(&str, &str, &str)],
) -> Vec<(u16, Vec<(String, String)>)> {
    use tokio::io::AsyncWriteExt as _;
    let addr = url.trim_start_matches("http://");
    let mut conn = tokio::net::TcpStream::connect(addr).await.unwrap();
    let mut answers = Vec::new();
    let mut buf = Vec::new();
    for (method, path, body) in requests {
        let req = format!(
            "{method} {path} HTTP/1.1\r\nhost: {addr}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
            body.len()
        );
        conn.write_all(req.as_bytes()).await.unwrap();
        let head_end = loop {
            if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            read_more(&mut conn, &mut buf, &format!("{method} {path}: the answer")).await;
        };
        let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
        let mut lines = head.split("\r\n");
        let status = lines
            .next()
            .and_then(|l| l.split(' ').nth(1))
            .and_then(|c| c.parse().ok())
            .unwrap_or(0);
        let headers: Vec<(String, String)> = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
            .collect();
        let length: usize = headers
            .iter()
            .find(|(k, _)| k == "content-length")
            .and_then(|(_, v)| v.parse().ok())
            .unwrap_or_else(|| panic!("{method} {path}: no Content-Length in\n{head}"));
        while buf.len() < head_end + length {
            read_more(&mut conn, &mut buf, &format!("{method} {path}: the body")).await;
        }
        buf.drain(..head_end + length);
        answers.push((status, headers));
    }
    answers
}

/// Read what `conn` has next (within 30 s) onto `buf`; `what` is being read (a closed connection fails).
async fn read_more(conn: &mut tokio::net::TcpStream, buf: &mut Vec<u8>, what: &str) {
    use tokio::io::AsyncReadExt as _;
    let mut chunk = [0u8; 4096];
    let n = tokio::time::timeout(Duration::from_secs(30), conn.read(&mut chunk))
        .await
        .unwrap_or_else(|_| panic!("{what}: nothing within 30 s"))
        .unwrap();
    assert!(n > 0, "{what}: the connection closed before its end");
    buf.extend_from_slice(&chunk[..n]);
}

async fn scenario(runner: Runner, store: Store) {
    let s = PayStack::start_with(Some((&runner, store)), &[]).await;
    let what = format!("{runner:?} on {store:?}");

    // Every answer is framed by its length, not chunked: a chunked answer ends with a separate terminator
    // write, which `spin up` (no TCP_NODELAY) held for the client's delayed ACK, ~40 ms on every other
    // answer of a keep-alive connection.
    let unpaid = activation().to_string();
    let answers = framed_answers(
        &s.url,
        &[
            ("POST", "/v1/esim/activate", &unpaid),
            ("POST", "/v1/esim/activate", &unpaid),
            ("GET", "/health", ""),
            ("GET", "/v1/no-such-route", ""),
        ],
    )
    .await;
    let statuses: Vec<u16> = answers.iter().map(|(status, _)| *status).collect();
    assert_eq!(statuses, [402, 402, 200, 404], "{what}");
    for (status, headers) in &answers {
        assert!(
            !headers.iter().any(|(k, _)| k == "transfer-encoding"),
            "{what}: a {status} is chunked: {headers:?}"
        );
    }

    // HEAD as GET without the body, under either server.
    let head = s
        .http
        .head(format!("{}/v1/catalog", s.url))
        .send()
        .await
        .unwrap();
    assert_eq!(head.status(), 200, "{what}");
    assert!(head.headers().contains_key("content-length"), "{what}");
    assert!(head.bytes().await.unwrap().is_empty(), "{what}");

    // 402: an invoice, persisted, readable back.
    let (invoice, req) = s.invoice(&activation()).await;
    let id = invoice["invoice_id"].as_str().unwrap();
    let (status, read) = s.get(&format!("/v1/invoices/{id}")).await;
    assert_eq!(
        (status, read["status"].as_str()),
        (200, Some("open")),
        "{what}: {read}"
    );

    // The official Python client pays an activation.
    let start = s.balance(agent()).await;
    let url = format!("{}/v1/esim/activate", s.url);
    let body = activation().to_string();
    let out = pay(url.clone(), vec!["--body".into(), body.clone()]).await;
    assert_eq!(out["status"], 200, "{what}: {out}");
    let code = out["body"]["activation_code"].as_str().unwrap_or_default();
    assert!(code.starts_with("LPA:1$"), "{what}: {out}");
    assert_eq!(out["payment_response"]["success"], true, "{what}: {out}");
    assert_eq!(
        s.balance(agent()).await,
        start - price(&req),
        "{what}: paid once"
    );
    let iccid = out["body"]["iccid"].as_str().unwrap().to_owned();
    assert!(
        out["body"]["access_token"]
            .as_str()
            .is_some_and(|t| t.starts_with("sim_")),
        "{what}: the paid answer carries the SIM's access token: {out}"
    );
    s.remember(&out["body"]);

    // The same payment again: a terminal 409, nothing moves.
    let replay = base64::engine::general_purpose::STANDARD.encode(out["sent"].to_string());
    let (status, _, replayed) = s
        .post(
            "/v1/esim/activate",
            &activation(),
            &[("payment-signature", replay)],
        )
        .await;
    assert_eq!(status, 409, "{what}: {replayed}");
    assert_eq!(
        s.balance(agent()).await,
        start - price(&req),
        "{what}: no second payment"
    );

    // Usage: receipts are charged once; a receipt whose predecessor came in an earlier batch is no gap, one
    // whose predecessor never came is; the SIMs' log chunks are written by one `wasi:keyvalue` `set-many`.
    let batches = [
        json!({"receipts": [receipt(&iccid, "rt", 1, 10_000, "310-260"), receipt(&iccid, "rt", 2, 20_000, "310-260")]}),
        json!({"receipts": [receipt(&iccid, "rt", 3, 30_000, "310-260"), receipt(&iccid, "rt", 5, 50_000, "310-260")]}),
    ];
    for (batch, gaps) in batches.iter().zip([0, 1]) {
        let (status, _, r) = s.post("/v1/usage", batch, &[]).await;
        assert_eq!(status, 200, "{what}: {r}");
        assert_eq!(
            (&r["totals"]["accepted"], &r["totals"]["gaps"]),
            (&json!(2), &json!(gaps)),
            "{what}: {r}"
        );
    }
    let (status, _, again) = s.post("/v1/usage", &batches[1], &[]).await;
    assert_eq!(
        (status, &again["totals"]["duplicate"]),
        (200, &json!(2)),
        "{what}: {again}"
    );
    let (status, balance) = s.get(&format!("/v1/esim/{iccid}/balance")).await;
    assert_eq!(
        (status, &balance["used_bytes"]),
        (200, &json!(110_000)),
        "{what}: {balance}"
    );
    let (status, log) = s.get(&format!("/v1/esim/{iccid}/receipts")).await;
    assert_eq!(status, 200, "{what}: {log}");
    let flagged: Vec<u64> = log["receipts"]
        .as_array()
        .unwrap_or(&Vec::new())
        .iter()
        .filter(|e| e["gap"] == true)
        .filter_map(|e| e["receipt"]["seq"].as_u64())
        .collect();
    assert_eq!(flagged, vec![5], "{what}: {log}");

    // A tx-hash proof pays an invoice once; the same transaction cannot pay another.
    let body = json!({"region": "us-west", "data_mb": 100, "payer": agent().to_string()});
    let (first, req) = s.invoice(&body).await;
    let tx = pay_directly(&s, chain::RECIPIENT, price(&req)).await;
    let (status, _, paid) = s.prove(&body, tx.clone(), &first).await;
    assert_eq!(status, 200, "{what}: {paid}");
    assert_eq!(paid["transaction"], tx.as_str());
    let (second, _) = s.invoice(&body).await;
    let (status, _, reused) = s.prove(&body, tx, &second).await;
    assert_eq!(status, 409, "{what}: {reused}");

    // Only the payer manages the SIM: nobody without a credential, no other wallet; the payer's wallet
    // sign-in (single-use nonce) and the access token do.
    let suspend = format!("{}/v1/esim/{iccid}/suspend", s.url);
    let r = s.http.post(&suspend).send().await.unwrap();
    assert_eq!(r.status(), 401, "{what}: anonymous suspend");
    let stranger = esim402_tests::sign_in(
        "8b3a350cf5c34c9194ca85829a2df0ec3153be0318b5e2d3348e872092edffba",
        &s.url,
        &format!("/v1/esim/{iccid}/suspend"),
    );
    let r = s
        .http
        .post(&suspend)
        .header("sign-in-with-x", stranger)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404, "{what}: another wallet's suspend");
    let path = format!("/v1/esim/{iccid}");
    let signed = s.sign_in(&path);
    let read = |h: String| {
        s.http
            .get(format!("{}{path}", s.url))
            .header("sign-in-with-x", h)
            .send()
    };
    assert_eq!(read(signed.clone()).await.unwrap().status(), 200, "{what}");
    assert_eq!(
        read(signed).await.unwrap().status(),
        401,
        "{what}: a sign-in nonce is single-use"
    );
    // The payer lists its SIMs, oldest first, a page at a time (the owner index: slots reserved by
    // `increment` in this runtime's store).
    let list = |query: &str| {
        let path = format!("/v1/esim{query}");
        let h = s.sign_in(&path);
        let req = s
            .http
            .get(format!("{}{path}", s.url))
            .header("sign-in-with-x", h);
        async move { req.send().await.unwrap().json::<Value>().await.unwrap() }
    };
    let first = list("?limit=1").await;
    assert_eq!(first["sims"][0]["iccid"], iccid.as_str(), "{what}: {first}");
    assert_eq!(first["next"], 1, "{what}: {first}");
    let rest = list("?after=1").await;
    assert!(
        rest["sims"]
            .as_array()
            .is_some_and(|l| l.iter().any(|sim| sim["iccid"] == paid["iccid"])),
        "{what}: the SIM paid by transaction hash: {rest}"
    );
    assert_eq!(rest["next"], Value::Null, "{what}: {rest}");

    // The SIM's lifecycle: every transition once, invalid ones refused.
    let (status, sim) = s.get(&format!("/v1/esim/{iccid}")).await;
    assert_eq!(
        (status, sim["state"].as_str()),
        (200, Some("active")),
        "{what}: {sim}"
    );
    for (action, want, state) in [
        ("suspend", 200, Some("suspended")),
        ("suspend", 409, None),
        ("resume", 200, Some("active")),
        ("terminate", 200, Some("terminated")),
    ] {
        let (status, _, body) = s
            .post(&format!("/v1/esim/{iccid}/{action}"), &json!({}), &[])
            .await;
        assert_eq!(status, want, "{what}: {action}: {body}");
        if let Some(state) = state {
            assert_eq!(body["state"], state, "{what}: {action}");
        }
    }
    // Terminating revoked the token; the owner's wallet still acts, and a terminated SIM stays terminated.
    let resume = format!("/v1/esim/{iccid}/resume");
    let (status, _, _) = s.post(&resume, &json!({}), &[]).await;
    assert_eq!(status, 404, "{what}: the revoked token opens nothing");
    let (status, _, body) = s
        .post(
            &resume,
            &json!({}),
            &[("sign-in-with-x", s.sign_in(&resume))],
        )
        .await;
    assert_eq!(status, 409, "{what}: resume a terminated SIM: {body}");

    // Every money event is in a ledger that verifies.
    let (kinds, verify) = s.ledger().await;
    assert_eq!(verify["ok"], true, "{what}: {verify}");
    for kind in [
        "invoice_issued",
        "payment_verified",
        "settlement_confirmed",
        "activation_completed",
        "data_credited",
        "usage_charged",
    ] {
        assert!(
            kinds.iter().any(|k| k == kind),
            "{what}: no {kind} in {kinds:?}"
        );
    }
    assert_eq!(verify["count"], kinds.len(), "{what}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn esim402_up_on_sqlite() {
    scenario(Runner::Host, Store::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn esim402_up_on_redis() {
    scenario(Runner::Host, Store::Redis).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn spin_up_on_sqlite() {
    if let Some(spin) = spin("spin_up_on_sqlite") {
        scenario(spin, Store::Sqlite).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn spin_up_on_redis() {
    if let Some(spin) = spin("spin_up_on_redis") {
        scenario(spin, Store::Redis).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_hundred_racing_replays_through_spin_and_redis_settle_once() {
    if let Some(spin) = spin("a_hundred_racing_replays_through_spin_and_redis_settle_once") {
        hundred_replays(&PayStack::start_with(Some((&spin, Store::Redis)), &[]).await).await;
    }
}

/// `esim402 up` and the real `spin up` take turns on one SQLite file, as the README says they can: a SIM paid for
/// and metered under one is read, metered further (a replayed receipt still a duplicate) and terminated under
/// the other, and the ledger verifies at each turn with every entry kept. The host leaves the file in WAL mode
/// with its own checkpoint schedule; Spin opens it as it finds it.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn esim402_up_and_spin_up_take_turns_on_one_sqlite_file() {
    let Some(spin) = spin("esim402_up_and_spin_up_take_turns_on_one_sqlite_file") else {
        return;
    };
    let Runner::Spin(spin_bin) = spin.clone() else {
        return;
    };
    let mut s = PayStack::start_with(Some((&Runner::Host, Store::Sqlite)), &[]).await;
    let act = s.activate_paid(&activation(), &[]).await;
    let iccid = act["iccid"].as_str().unwrap().to_owned();
    let ingest = |seqs: &[(u64, u64)]| json!({"receipts": seqs.iter().map(|(seq, bytes)| receipt(&iccid, "turns", *seq, *bytes, "310-260")).collect::<Vec<_>>()});
    let (status, _, r) = s.post("/v1/usage", &ingest(&[(1, 10_000)]), &[]).await;
    assert_eq!((status, &r["totals"]["accepted"]), (200, &json!(1)), "{r}");
    let (_, first) = s.ledger().await;
    assert_eq!(first["ok"], true, "{first}");

    // Spin's turn, on the same file.
    s.restart_on(spin).await;
    let (status, balance) = s.get(&format!("/v1/esim/{iccid}/balance")).await;
    assert_eq!(
        (status, &balance["used_bytes"]),
        (200, &json!(10_000)),
        "spin up reads what esim402 up wrote: {balance}"
    );
    let (status, _, r) = s
        .post("/v1/usage", &ingest(&[(1, 10_000), (2, 20_000)]), &[])
        .await;
    assert_eq!(status, 200, "{r}");
    assert_eq!(
        (&r["totals"]["accepted"], &r["totals"]["duplicate"]),
        (&json!(1), &json!(1)),
        "{r}"
    );
    let second = ledger_grown(&s, &first).await;

    // esim402's turn again.
    s.restart_on(Runner::Host).await;
    let (_, balance) = s.get(&format!("/v1/esim/{iccid}/balance")).await;
    assert_eq!(balance["used_bytes"], 30_000, "{balance}");
    let (status, _, body) = s
        .post(&format!("/v1/esim/{iccid}/terminate"), &json!({}), &[])
        .await;
    assert_eq!(
        (status, &body["state"]),
        (200, &json!("terminated")),
        "{body}"
    );
    ledger_grown(&s, &second).await;
    // Spin's turn ended with a crash of `spin up` and its `spin trigger http` child: neither is left.
    let listen = s.url.trim_start_matches("http://").to_owned();
    assert!(
        !running_with(&[&spin_bin.to_string_lossy(), &listen]),
        "a Spin process of this stack outlived its turn"
    );
}

/// The ledger after a turn: it verifies and holds more entries than `before` did.
async fn ledger_grown(s: &PayStack, before: &Value) -> Value {
    let (_, after) = s.ledger().await;
    assert_eq!(after["ok"], true, "{after}");
    assert!(
        after["count"].as_u64() > before["count"].as_u64(),
        "{before} then {after}"
    );
    after
}

/// The README's Spin recipe as written: `esim402 devstack -- spin up`, then the demo with the official client.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn esim402_devstack_serves_the_demo_through_spin_up() {
    let Some(Runner::Spin(spin)) = spin("esim402_devstack_serves_the_demo_through_spin_up") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let app_url = format!("http://127.0.0.1:{port}");
    let rc = dir.path().join("rc.toml");
    std::fs::write(
        &rc,
        "[key_value_store.default]\ntype = \"spin\"\npath = \"kv.db\"\n",
    )
    .unwrap();
    let log = std::fs::File::create(dir.path().join("log")).unwrap();
    let child = esim402_tests::devstack_spin_up(
        &esim402_tests::bin_dir().join("esim402"),
        &spin,
        &repo_root().join("spin.toml"),
        port,
        dir.path(),
        &rc,
    )
    .env("RUST_BACKTRACE", "0")
    .stdout(log.try_clone().unwrap())
    .stderr(log)
    .spawn()
    .unwrap();
    let mut child = StopOnDrop(child);
    let http = reqwest::Client::new();
    let mut up = false;
    for _ in 0..1800 {
        if http
            .get(format!("{app_url}/health"))
            .send()
            .await
            .is_ok_and(|r| r.status().is_success())
        {
            up = true;
            break;
        }
        if let Ok(Some(_)) = child.0.try_wait() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let log_text = || std::fs::read_to_string(dir.path().join("log")).unwrap_or_default();
    if !up {
        child.stop();
        panic!(
            "spin up under esim402 devstack did not serve:\n{}",
            log_text()
        );
    }
    let env_file = std::fs::read_to_string(dir.path().join("devstack.env")).unwrap();
    assert!(
        env_file.contains("SPIN_VARIABLE_RPC_URL='http://127.0.0.1:"),
        "{env_file}"
    );
    let facts: Value =
        serde_json::from_slice(&std::fs::read(dir.path().join("devstack.json")).unwrap()).unwrap();
    let rpc = facts["rpc_url"].as_str().unwrap().to_owned();
    let (url, devstack) = (app_url.clone(), dir.path().join("devstack.json"));
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new(python())
            .arg(repo_root().join("scripts/demo.py"))
            .arg("--url")
            .arg(&url)
            .arg("--devstack")
            .arg(&devstack)
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let status = child.stop();
    assert!(
        out.status.success() && stdout.contains("LPA:1$"),
        "demo: {stdout}\n{}\n{}",
        String::from_utf8_lossy(&out.stderr),
        log_text()
    );
    assert!(stdout.contains("\"ok\":true"), "{stdout}");
    // SIGTERM stopped spin up and then the stack: the dev chain is gone.
    assert!(
        status.is_some(),
        "esim402 devstack did not stop:\n{}",
        log_text()
    );
    assert!(
        http.post(&rpc)
            .json(&json!({"jsonrpc": "2.0", "id": 1, "method": "eth_chainId", "params": []}))
            .send()
            .await
            .is_err(),
        "anvil outlived the dev stack"
    );
    // The console never showed a key.
    let log = log_text();
    assert!(
        !log.contains(chain::DEMO_AGENT_KEY.trim_start_matches("0x")),
        "{log}"
    );
}

/// 24 activations paid at once on real Spin, each with its own invoice and payment: all 200, every payment
/// settled on chain once, and the sharded ledger holds each money event exactly once and verifies — on both
/// of Spin's stores.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_paid_activations_chain_cleanly_on_spin() {
    let Some(spin) = spin("concurrent_paid_activations_chain_cleanly_on_spin") else {
        return;
    };
    for store in [Store::Sqlite, Store::Redis] {
        let s = std::sync::Arc::new(PayStack::start_with(Some((&spin, store)), &[]).await);
        let start = s.balance(agent()).await;
        let mut tasks = Vec::new();
        for i in 0..24 {
            let s = s.clone();
            tasks.push(tokio::spawn(async move {
                let body = json!({"region": "us-central", "data_mb": i + 1});
                let (invoice, req) = s.invoice(&body).await;
                let pay = crate::payments::Payment::for_requirement(&req);
                let (status, paid) = s
                    .post_paid(
                        "/v1/esim/activate",
                        &body,
                        &[("payment-signature", pay.header())],
                    )
                    .await;
                (status, paid, invoice, price(&req))
            }));
        }
        let mut ids = std::collections::HashSet::new();
        let mut total = alloy_primitives::U256::ZERO;
        for t in tasks {
            let (status, paid, invoice, amount) = t.await.unwrap();
            assert_eq!(status, 200, "{store:?}: {paid}");
            assert!(
                paid["activation_code"]
                    .as_str()
                    .unwrap()
                    .starts_with("LPA:1$")
            );
            ids.insert(invoice["invoice_id"].as_str().unwrap().to_owned());
            total += amount;
        }
        assert_eq!(ids.len(), 24, "{store:?}");
        assert_eq!(s.balance(agent()).await, start - total, "{store:?}");
        let (kinds, verify) = s.ledger().await;
        assert_eq!(verify["ok"], true, "{store:?}: {verify}");
        assert_eq!(verify["count"], 24 * 5, "{store:?}: {kinds:?}");
        for kind in [
            "invoice_issued",
            "payment_verified",
            "settlement_confirmed",
            "activation_completed",
            "data_credited",
        ] {
            assert_eq!(
                kinds.iter().filter(|k| *k == kind).count(),
                24,
                "{store:?}: {kind} in {kinds:?}"
            );
        }
    }
}

/// Spin's instance-reuse flags mean the same on both runners: with one request per instance at a time and two
/// per instance in all, concurrent requests are spread over fresh instances and every one is answered; a
/// count of 0 is refused by name.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn both_runners_take_spins_instance_reuse_flags() {
    let mut runners = vec![Runner::Host];
    runners.extend(spin(
        "both_runners_take_spins_instance_reuse_flags (Spin part)",
    ));
    let rc = "[key_value_store.default]\ntype = \"spin\"\npath = \"kv.db\"\n";
    let flags = [
        "--max-instance-concurrent-reuse-count",
        "1",
        "--max-instance-reuse-count",
        "2",
    ];
    for runner in &runners {
        let app = esim402_tests::AppProcess::start_with_args(runner, free_port(), rc, &[], &flags)
            .await
            .unwrap();
        let http = reqwest::Client::new();
        let sends: Vec<_> = (0..24)
            .map(|_| {
                let (http, url) = (http.clone(), format!("{}/health", app.url));
                tokio::spawn(async move { http.get(url).send().await.map(|r| r.status().as_u16()) })
            })
            .collect();
        for s in sends {
            let status = s.await.unwrap().ok();
            assert_eq!(status, Some(200), "{runner:?}:\n{}", app.log_text());
        }
    }
    let out = std::process::Command::new(esim402_tests::host_binary())
        .args(["up", "--no-dev-stack", "--listen", "127.0.0.1:0"])
        .args(["--max-instance-concurrent-reuse-count", "0"])
        .env("RUST_BACKTRACE", "0")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("max-instance-concurrent-reuse-count"), "{err}");
}

/// The host holds its SQLite file for as long as it runs (SQLite's `unix-excl`: no file-lock system call per
/// transaction): a second `esim402 up` on the same file is refused by name, with the way to share it; with
/// `ESIM402_SQLITE_LOCKING=shared` in both, two hosts open the same file and serve from it at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_second_host_on_one_sqlite_file_is_refused_unless_both_share_it() {
    let dir = tempfile::tempdir().unwrap();
    let rc = format!(
        "[key_value_store.default]\ntype = \"spin\"\npath = \"{}\"\n",
        dir.path().join("kv.db").display()
    );
    let first = esim402_tests::AppProcess::start(&Runner::Host, free_port(), &rc, &[])
        .await
        .unwrap();
    let second = esim402_tests::AppProcess::start(&Runner::Host, free_port(), &rc, &[]).await;
    let err = format!("{:#}", second.err().expect("a second host on a held file"));
    assert!(
        err.contains("is locked") && err.contains("ESIM402_SQLITE_LOCKING=shared"),
        "{err}"
    );
    drop(first);

    let shared = [("ESIM402_SQLITE_LOCKING".to_owned(), "shared".to_owned())];
    let a = esim402_tests::AppProcess::start(&Runner::Host, free_port(), &rc, &shared)
        .await
        .unwrap();
    let b = esim402_tests::AppProcess::start(&Runner::Host, free_port(), &rc, &shared)
        .await
        .unwrap();
    // Both opened the file at start (a held lock fails the start, as above) and read it: the ledger verifies.
    for app in [&a, &b] {
        let verify = reqwest::get(format!("{}/v1/ledger/verify", app.url)).await;
        let r: Value = verify.unwrap().json().await.unwrap();
        assert_eq!(r["ok"], true, "{r}");
    }
    let bad = [("ESIM402_SQLITE_LOCKING".to_owned(), "maybe".to_owned())];
    let err = esim402_tests::AppProcess::start(&Runner::Host, free_port(), &rc, &bad)
        .await
        .err()
        .expect("an unknown locking mode");
    assert!(
        format!("{err:#}").contains("ESIM402_SQLITE_LOCKING"),
        "{err:#}"
    );
}
