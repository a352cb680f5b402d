//! The money ledger through the host: every invoice issued is appended to the hash chain; concurrent
//! appends lose nothing; `GET /v1/ledger/verify` detects edited, removed and reordered entries.

use esim402_host::runtime_config::StoreConfig;
use esim402_tests::{options, spawn_app};
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

#[tokio::test]
async fn concurrent_invoices_chain_and_tampering_is_detected() {
    let app = spawn_app(options(StoreConfig::Memory)).await.unwrap();
    let http = reqwest::Client::new();
    let empty = verify(&http, &app.url).await;
    assert_eq!(
        (empty["ok"].as_bool(), empty["count"].as_u64()),
        (Some(true), Some(0))
    );

    // 48 concurrent unpaid activations: 48 invoices, 48 ledger entries, one unbroken chain.
    let tasks: Vec<_> = (0..48)
        .map(|i| {
            let (http, url) = (http.clone(), app.url.clone());
            tokio::spawn(async move {
                let r = http
                    .post(format!("{url}/v1/esim/activate"))
                    .body(format!(r#"{{"region":"us-west","data_mb":{}}}"#, i + 1))
                    .send()
                    .await
                    .unwrap();
                assert_eq!(r.status(), 402);
                r.json::<Value>().await.unwrap()["invoice_id"]
                    .as_str()
                    .unwrap()
                    .to_owned()
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

    // The export lists every invoice exactly once, in sequence order.
    let lines = http
        .get(format!("{}/v1/ledger?from=0&limit=100", app.url))
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
    for (i, e) in entries.iter().enumerate() {
        assert_eq!(e["seq"].as_u64(), Some(i as u64));
        assert_eq!(e["kind"], "invoice_issued");
    }
    let mut logged: Vec<String> = entries
        .iter()
        .map(|e| e["invoice_id"].as_str().unwrap().to_owned())
        .collect();
    logged.sort();
    ids.sort();
    assert_eq!(logged, ids);
    let r = http
        .get(format!("{}/v1/ledger?limit=0", app.url))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);

    let store = app.app.stores["default"].clone();
    let key = |seq: u64| format!("ledger/entry/{seq:020}");

    // Edit an amount in place: the hash no longer matches.
    let original = store.get(&key(10)).await.unwrap().unwrap();
    let text = String::from_utf8(original.clone()).unwrap();
    let amount = entries[10]["amount"].as_str().unwrap();
    let edited = text.replace(&format!("\"amount\":\"{amount}\""), "\"amount\":\"0.01\"");
    assert_ne!(edited, text);
    store.set(&key(10), edited.as_bytes()).await.unwrap();
    let bad = verify(&http, &app.url).await;
    assert_eq!(bad["ok"], false);
    assert!(bad["error"].as_str().unwrap().contains("10"), "{bad}");
    store.set(&key(10), &original).await.unwrap();
    assert_eq!(verify(&http, &app.url).await["ok"], true);

    // Remove one entry: a gap.
    store.delete(&key(20)).await.unwrap();
    let bad = verify(&http, &app.url).await;
    assert_eq!(bad["ok"], false, "{bad}");
    assert!(bad["error"].as_str().unwrap().contains("20"), "{bad}");
    let e20 = entries[20].to_string();
    store.set(&key(20), e20.as_bytes()).await.unwrap();
    assert_eq!(verify(&http, &app.url).await["ok"], true);

    // Swap two entries: reordered.
    let (a, b) = (
        store.get(&key(5)).await.unwrap().unwrap(),
        store.get(&key(6)).await.unwrap().unwrap(),
    );
    store.set(&key(5), &b).await.unwrap();
    store.set(&key(6), &a).await.unwrap();
    assert_eq!(verify(&http, &app.url).await["ok"], false);
    store.set(&key(5), &a).await.unwrap();
    store.set(&key(6), &b).await.unwrap();

    // Drop the newest entry (a removed tail): only the separately kept head reveals it.
    store.delete(&key(47)).await.unwrap();
    let bad = verify(&http, &app.url).await;
    assert_eq!(bad["ok"], false, "{bad}");
    app.stop().await;
}
