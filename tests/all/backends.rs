//! The Redis backend against a real redis-server, through the host and directly.

use std::sync::Arc;

use esim402_core::store::cell::Stored;
use esim402_host::kv::{Backend, RedisStore};
use esim402_host::runtime_config::StoreConfig;
use esim402_tests::{RedisServer, options, spawn_app};
use serde_json::Value;

use crate::metering::receipt;

/// The id of a fresh invoice: an activation asked for without payment (402).
async fn invoice_id(url: &str) -> String {
    let resp = reqwest::Client::new()
        .post(format!("{url}/v1/esim/activate"))
        .body(r#"{"region":"us-west","data_mb":1}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 402);
    let body: Value = resp.json().await.unwrap();
    body["invoice_id"].as_str().unwrap().to_owned()
}

#[tokio::test(flavor = "multi_thread")]
async fn instances_sharing_redis_share_the_invoice_key() {
    // Two hosts on one Redis: an invoice sealed by one opens on the other, because the generated invoice key
    // lives once in Redis (`secret/invoice-key`, inserted by whichever instance got there first).
    let redis = RedisServer::start().unwrap();
    let first = spawn_app(options(StoreConfig::Redis(redis.url.clone())))
        .await
        .unwrap();
    let second = spawn_app(options(StoreConfig::Redis(redis.url.clone())))
        .await
        .unwrap();
    let id = invoice_id(&first.url).await;
    let got = reqwest::get(format!("{}/v1/invoices/{id}", second.url))
        .await
        .unwrap();
    assert_eq!(got.status(), 200);
    let got: Value = got.json().await.unwrap();
    assert_eq!(got["status"], "open");
    assert_eq!(got["invoice_id"], id.as_str());

    let mut conn = redis::Client::open(redis.url.as_str())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let stored: Option<Vec<u8>> = redis::cmd("GET")
        .arg("secret/invoice-key")
        .query_async(&mut conn)
        .await
        .unwrap();
    let cell = Stored::decode(&stored.expect("invoice key in redis")).unwrap();
    assert_eq!(cell.version, 1, "the key is written once, never replaced");
    let invoices: Vec<String> = redis::cmd("KEYS")
        .arg("invoice/*")
        .query_async(&mut conn)
        .await
        .unwrap();
    assert!(
        invoices.is_empty(),
        "an unpaid 402 writes nothing: {invoices:?}"
    );
    first.stop().await;
    second.stop().await;
}

/// The checks every backend passes (reads, writes, batches, counters, compare-and-swap), on a real Redis.
#[tokio::test(flavor = "multi_thread")]
async fn redis_passes_the_backend_conformance_checks() {
    let redis = RedisServer::start().unwrap();
    let store: Arc<dyn Backend> = Arc::new(RedisStore::connect(&redis.url).await.unwrap());
    esim402_host::kv::conformance::check(store).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn redis_atomics_have_exactly_one_winner() {
    let redis = RedisServer::start().unwrap();
    let store: Arc<dyn Backend> = Arc::new(RedisStore::connect(&redis.url).await.unwrap());
    store.set("slot", b"v0").await.unwrap();
    let mut tasks = Vec::new();
    for i in 0..64u8 {
        let s = store.clone();
        tasks.push(tokio::spawn(async move {
            s.increment("n", 1).await.unwrap();
            let absent = s.compare_and_swap("claim", None, &[i]).await.unwrap();
            // Everyone also races a present-value CAS from "v0" to their own value: one winner.
            let present = s
                .compare_and_swap("slot", Some(b"v0"), format!("v{}", i + 1).as_bytes())
                .await
                .unwrap();
            (absent, present)
        }));
    }
    let mut absent_winners = 0;
    let mut present_winners = 0;
    for t in tasks {
        let (a, p) = t.await.unwrap();
        absent_winners += usize::from(a);
        present_winners += usize::from(p);
    }
    assert_eq!(absent_winners, 1);
    assert_eq!(present_winners, 1, "exactly one CAS from v0 succeeds");
    assert_eq!(store.increment("n", 0).await.unwrap(), 64);
    assert!(
        !store
            .compare_and_swap("claim", None, b"late")
            .await
            .unwrap()
    );
    store.set("s", b"a").await.unwrap();
    assert!(!store.compare_and_swap("s", Some(b"b"), b"c").await.unwrap());
    assert!(store.compare_and_swap("s", Some(b"a"), b"c").await.unwrap());
    assert_eq!(store.get("s").await.unwrap().as_deref(), Some(&b"c"[..]));
}

/// A store that stops answering is `503 unavailable` with a JSON body naming the store, never a 500: the
/// redis-server under a host that has served is stopped, then an invoice read, the ledger check and a receipt
/// batch are asked for. Once Redis is back (restarted on its port), the host serves again without a restart.
#[tokio::test(flavor = "multi_thread")]
async fn a_store_that_went_away_is_503_unavailable_not_500_and_served_again_when_back() {
    let redis = RedisServer::start().unwrap();
    let port = redis.port();
    let app = spawn_app(options(StoreConfig::Redis(redis.url.clone())))
        .await
        .unwrap();
    let http = reqwest::Client::new();
    let id = invoice_id(&app.url).await;
    let ledger = format!("{}/v1/ledger/verify", app.url);
    assert_eq!(http.get(&ledger).send().await.unwrap().status(), 200);
    let ready = format!("{}/health/ready", app.url);
    assert_eq!(http.get(&ready).send().await.unwrap().status(), 200);

    drop(redis);
    // Readiness asks the store too (a fresh-user trial: every configuration was cached, so it stayed ready).
    let resp = http.get(&ready).send().await.unwrap();
    let status = resp.status();
    let body = resp.text().await.unwrap();
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("key-value store"), "{body}");
    let asks = [
        http.get(format!("{}/v1/invoices/{id}", app.url)),
        http.get(&ledger),
        http.post(format!("{}/v1/usage", app.url))
            .json(&serde_json::json!({
                "receipts": [receipt("8901260000000000006", "s1", 1, 100, "310-260")]
            })),
    ];
    for ask in asks {
        let resp = ask.send().await.unwrap();
        let status = resp.status();
        let body: Value = resp.json().await.unwrap();
        assert_eq!(status, 503, "{body}");
        assert_eq!(body["error"]["code"], "unavailable", "{body}");
        assert!(
            body["error"]["message"]
                .as_str()
                .unwrap()
                .contains("key-value store error"),
            "{body}"
        );
    }

    let _back = RedisServer::start_on(port).unwrap();
    let mut status = 0;
    for _ in 0..50 {
        status = http.get(&ledger).send().await.unwrap().status().as_u16();
        if status == 200 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert_eq!(status, 200, "the store reconnected");
    assert_eq!(
        http.get(format!("{}/v1/invoices/{id}", app.url))
            .send()
            .await
            .unwrap()
            .status(),
        200,
        "a sealed invoice reads back from its id"
    );
    app.stop().await;
}
