//! The money ledger through the host: an invoice becomes a ledger entry when its first payment arrives, in its
//! invoice's shard; concurrent appends lose nothing; `GET /v1/ledger/verify` detects edited, removed,
//! reordered and truncated entries in any shard.

use esim402_core::store::cell::Stored;
use esim402_host::runtime_config::StoreConfig;
use esim402_tests::{free_port, options, spawn_app};
use serde_json::Value;

async fn verify(http: &reqwest::Client, url: &str) -> Value {
    let r = http
        .get(format!("{url}/v1/ledger/verify"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    r.json().await.unwrap()
}

/// A stored ledger entry's JSON line (entries are versioned cells).
fn line(bytes: &[u8]) -> String {
    String::from_utf8(Stored::decode(bytes).unwrap().data.unwrap()).unwrap()
}

/// `line` stored back as the cell that held `original`.
fn cell(original: &[u8], line: &str) -> Vec<u8> {
    let mut c = Stored::decode(original).unwrap();
    c.data = Some(line.as_bytes().to_vec());
    c.encode()
}

const ADMIN: &str = "ledger-test-admin-token";

#[tokio::test(flavor = "multi_thread")]
async fn concurrent_payments_chain_per_shard_and_tampering_is_detected() {
    let mut opts = options(StoreConfig::Memory);
    // No chain behind the RPC URL: every tx-hash proof fails verification, after its invoice was recorded.
    opts.env.insert(
        "SPIN_VARIABLE_RPC_URL".into(),
        format!("http://127.0.0.1:{}", free_port()),
    );
    opts.env
        .insert("SPIN_VARIABLE_ADMIN_TOKEN".into(), ADMIN.into());
    let app = spawn_app(opts).await.unwrap();
    let http = reqwest::Client::new();
    let empty = verify(&http, &app.url).await;
    assert_eq!(
        (empty["ok"].as_bool(), empty["count"].as_u64()),
        (Some(true), Some(0))
    );

    // 48 invoices, each met by one payment attempt (signed by its payer, so it is taken up: a proof that is
    // not is refused before anything is recorded), all at once: 48 entries across the shards, every chain
    // unbroken.
    let payer = esim402_host::devstack::chain::DEMO_AGENT;
    let tasks: Vec<_> = (0..48)
        .map(|i| {
            let (http, url) = (http.clone(), app.url.clone());
            tokio::spawn(async move {
                let body = format!(
                    r#"{{"region":"us-west","data_mb":{},"payer":"{payer}"}}"#,
                    i + 1
                );
                let r = http
                    .post(format!("{url}/v1/esim/activate"))
                    .body(body.clone())
                    .send()
                    .await
                    .unwrap();
                assert_eq!(r.status(), 402);
                let id = r.json::<Value>().await.unwrap()["invoice_id"]
                    .as_str()
                    .unwrap()
                    .to_owned();
                let tx = format!("0x{:064x}", i + 1);
                let signature = esim402_tests::sign_proof(
                    esim402_host::devstack::chain::DEMO_AGENT_KEY,
                    &id,
                    &tx,
                );
                let paid = http
                    .post(format!("{url}/v1/esim/activate"))
                    .header("x-invoice-id", &id)
                    .header("x-payment-proof", tx)
                    .header("x-payment-proof-signature", signature)
                    .body(body)
                    .send()
                    .await
                    .unwrap();
                assert!(
                    paid.status().is_client_error() || paid.status().is_server_error(),
                    "{}",
                    paid.status()
                );
                id
            })
        })
        .collect();
    let mut ids = Vec::new();
    for t in tasks {
        ids.push(t.await.unwrap());
    }
    let ok = verify(&http, &app.url).await;
    assert_eq!(
        (ok["ok"].as_bool(), ok["count"].as_u64()),
        (Some(true), Some(48)),
        "{ok}"
    );

    // The export names payers and amounts: the operator's only.
    let export = format!("{}/v1/ledger?from=0&limit=100", app.url);
    assert_eq!(http.get(&export).send().await.unwrap().status(), 401);
    let wrong = http
        .get(&export)
        .bearer_auth("not-the-admin-token")
        .send()
        .await
        .unwrap();
    assert_eq!(wrong.status(), 401);
    // The merged export lists every invoice exactly once; within a shard, seqs run 0, 1, 2, ...
    let lines = http
        .get(&export)
        .bearer_auth(ADMIN)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let entries: Vec<Value> = lines
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(entries.len(), 48);
    let mut per_shard: std::collections::BTreeMap<u64, Vec<&Value>> = Default::default();
    for e in &entries {
        assert_eq!(e["kind"], "invoice_issued");
        per_shard
            .entry(e["shard"].as_u64().unwrap())
            .or_default()
            .push(e);
    }
    assert!(per_shard.len() > 4, "48 invoices spread over the shards");
    for list in per_shard.values_mut() {
        list.sort_by_key(|e| e["seq"].as_u64());
        for (i, e) in list.iter().enumerate() {
            assert_eq!(e["seq"].as_u64(), Some(i as u64));
        }
    }
    let mut logged: Vec<String> = entries
        .iter()
        .map(|e| e["invoice_id"].as_str().unwrap().to_owned())
        .collect();
    logged.sort();
    ids.sort();
    assert_eq!(logged, ids);
    // One shard's page reads back the same entries.
    let (&busiest, list) = per_shard.iter().max_by_key(|(_, l)| l.len()).unwrap();
    assert!(list.len() >= 3, "some shard holds three entries");
    let page = http
        .get(format!(
            "{}/v1/ledger?shard={busiest}&from=1&limit=2",
            app.url
        ))
        .bearer_auth(ADMIN)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let page: Vec<Value> = page
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(page, vec![list[1].clone(), list[2].clone()]);
    for bad in ["limit=0", "shard=16", "shard=x", "from=-1"] {
        let r = http
            .get(format!("{}/v1/ledger?{bad}", app.url))
            .bearer_auth(ADMIN)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 400, "{bad}");
    }

    let store = app.app.stores["default"].clone();
    let n = list.len() as u64;
    let key = |seq: u64| format!("ledger/{busiest:02}/entry/{seq:020}");

    // Edit an amount in place: the hash no longer matches.
    let original = store.get(&key(1)).await.unwrap().unwrap();
    let text = line(&original);
    let amount = list[1]["amount"].as_str().unwrap();
    let edited = text.replace(&format!("\"amount\":\"{amount}\""), "\"amount\":\"0.01\"");
    assert_ne!(edited, text);
    store.set(&key(1), &cell(&original, &edited)).await.unwrap();
    let bad = verify(&http, &app.url).await;
    assert_eq!(bad["ok"], false);
    let error = bad["error"].as_str().unwrap();
    assert!(error.contains(&format!("shard {busiest}")), "{bad}");
    store.set(&key(1), &original).await.unwrap();
    assert_eq!(verify(&http, &app.url).await["ok"], true);

    // Remove one entry: a gap.
    store.delete(&key(1)).await.unwrap();
    let bad = verify(&http, &app.url).await;
    assert_eq!(bad["ok"], false, "{bad}");
    store.set(&key(1), &original).await.unwrap();
    assert_eq!(verify(&http, &app.url).await["ok"], true);

    // Swap two entries: reordered.
    let (a, b) = (
        store.get(&key(0)).await.unwrap().unwrap(),
        store.get(&key(1)).await.unwrap().unwrap(),
    );
    store.set(&key(0), &b).await.unwrap();
    store.set(&key(1), &a).await.unwrap();
    assert_eq!(verify(&http, &app.url).await["ok"], false);
    store.set(&key(0), &a).await.unwrap();
    store.set(&key(1), &b).await.unwrap();
    assert_eq!(verify(&http, &app.url).await["ok"], true);

    // Move an entry to another shard's chain: its shard field gives it away.
    let other = (busiest + 1) % 16;
    let other_head = store.get(&format!("ledger/{other:02}/head")).await.unwrap();
    let moved_to = format!(
        "ledger/{other:02}/entry/{:020}",
        per_shard.get(&other).map_or(0, |l| l.len())
    );
    store.set(&moved_to, &original).await.unwrap();
    let bad = verify(&http, &app.url).await;
    assert_eq!(bad["ok"], false, "{bad}");
    store.delete(&moved_to).await.unwrap();
    assert_eq!(other_head.is_some(), per_shard.contains_key(&other));
    assert_eq!(verify(&http, &app.url).await["ok"], true);

    // An append in flight (its entry written past the head, the head not advanced yet) is not tampering: the
    // entry continues the chain, and is reported as pending.
    let head_cell = store
        .get(&format!("ledger/{busiest:02}/head"))
        .await
        .unwrap()
        .unwrap();
    let mut head: esim402_core::ledger::ChainHead =
        serde_json::from_str(&line(&head_cell)).unwrap();
    let in_flight = head.append(
        1_800_000_000,
        esim402_core::ledger::EntryKind::RefundOwed,
        esim402_core::ledger::EntryFields::default(),
    );
    let next = esim402_core::ledger::to_json_line(&in_flight);
    store.set(&key(n), &cell(&original, &next)).await.unwrap();
    let ok = verify(&http, &app.url).await;
    assert_eq!(
        (ok["ok"].as_bool(), ok["pending"].as_u64()),
        (Some(true), Some(1)),
        "{ok}"
    );
    store.delete(&key(n)).await.unwrap();
    // An entry edited into something that is not an entry at all: a verdict, not a failure of the check.
    store
        .set(&key(1), &cell(&original, "not a ledger line"))
        .await
        .unwrap();
    let bad = verify(&http, &app.url).await;
    assert_eq!(bad["ok"], false, "{bad}");
    store.set(&key(1), &original).await.unwrap();
    assert_eq!(verify(&http, &app.url).await["ok"], true);

    // Drop the newest entry (a removed tail): only the separately kept head reveals it.
    store.delete(&key(n - 1)).await.unwrap();
    let bad = verify(&http, &app.url).await;
    assert_eq!(bad["ok"], false, "{bad}");
    app.stop().await;
}
