//! The walking skeleton: unpaid activation → 402 with a sealed (stateless) invoice; read-back; bad input.

use base64::Engine as _;
use esim402_host::runtime_config::StoreConfig;
use esim402_tests::{options, spawn_app};
use serde_json::Value;

async fn activate(url: &str, body: &str) -> reqwest::Response {
    reqwest::Client::new()
        .post(format!("{url}/v1/esim/activate"))
        .body(body.to_owned())
        .send()
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn unpaid_activation_answers_402_with_invoice_and_x402_header() {
    let app = spawn_app(options(StoreConfig::Memory)).await.unwrap();
    let resp = activate(&app.url, r#"{"region":"us-west","data_mb":100}"#).await;
    assert_eq!(resp.status(), 402);
    assert_eq!(resp.headers()["cache-control"], "no-store");
    let header = resp.headers()["payment-required"]
        .to_str()
        .unwrap()
        .to_owned();
    let body: Value = resp.json().await.unwrap();
    assert_eq!(
        body["amount_usdc"], "0.42",
        "100 MB on T-Mobile is the seed's $0.42"
    );
    assert_eq!(body["carrier"], "tmobile");
    assert_eq!(body["chain"], "eip155:31337");
    assert_eq!(
        body["recipient"],
        "0x3C44CdDdB6a900fa2b585dd299e03d12FA4293BC"
    );
    assert!(body["expires_at"].as_u64().unwrap() > body["created_at"].as_u64().unwrap());
    let id = body["invoice_id"].as_str().unwrap();
    assert!(id.starts_with("inv_") && id.len() <= 400);
    assert!(
        id.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b)),
        "{id}"
    );

    let required: Value = serde_json::from_slice(
        &base64::engine::general_purpose::STANDARD
            .decode(header)
            .unwrap(),
    )
    .unwrap();
    assert_eq!(required["x402Version"], 2);
    assert_eq!(required["accepts"][0]["amount"], "420000");
    assert_eq!(required["accepts"][0]["extra"]["name"], "USD Coin");
    assert!(
        required["resource"]["url"]
            .as_str()
            .unwrap()
            .ends_with("/v1/esim/activate")
    );

    // An unpaid 402 writes nothing: the terms are sealed into the id (see README, "Stateless invoices"),
    // and the API reads them back from it.
    let keys = app.app.stores["default"].keys().await.unwrap();
    assert!(
        keys.iter()
            .all(|k| !k.starts_with("invoice/") && !k.starts_with("ledger/")),
        "{keys:?}"
    );
    let got: Value = reqwest::get(format!("{}/v1/invoices/{id}", app.url))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(got["invoice_id"], id);
    assert_eq!(got["status"], "open");
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_input_gets_a_typed_4xx_naming_the_problem() {
    let app = spawn_app(options(StoreConfig::Memory)).await.unwrap();
    for (body, field) in [
        ("{", "body"),
        (r#"{"region":"us-west"}"#, "data_mb"),
        (r#"{"region":"us-west","data_mb":0}"#, "data_mb"),
        (r#"{"region":"mars-north","data_mb":1}"#, "region"),
        (
            r#"{"region":"eu-central","data_mb":1,"carrier":"tmobile"}"#,
            "carrier",
        ),
        (
            r#"{"region":"us-west","data_mb":1,"chain":"dogecoin"}"#,
            "chain",
        ),
    ] {
        let resp = activate(&app.url, body).await;
        assert_eq!(resp.status(), 400, "{body}");
        let v: Value = resp.json().await.unwrap();
        assert_eq!(v["error"]["code"], "invalid_input", "{body}");
        assert_eq!(v["error"]["field"], field, "{body}");
    }
    let big = format!(
        r#"{{"region":"us-west","data_mb":1,"x":"{}"}}"#,
        "a".repeat(20_000)
    );
    assert_eq!(activate(&app.url, &big).await.status(), 413);

    // A body declared as something other than JSON is a 415 naming the header (on the facilitator API too);
    // JSON with parameters, and no declaration at all, are read.
    let client = reqwest::Client::new();
    let body = r#"{"region":"us-west","data_mb":1}"#;
    for (route, content_type, status) in [
        (
            "/v1/esim/activate",
            "application/x-www-form-urlencoded",
            415,
        ),
        ("/v1/esim/activate", "text/plain", 415),
        ("/verify", "text/plain; charset=utf-8", 415),
        ("/v1/esim/activate", "Application/JSON; charset=UTF-8", 402),
    ] {
        let resp = client
            .post(format!("{}{route}", app.url))
            .header("content-type", content_type)
            .body(body)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), status, "{route} {content_type}");
        if status == 415 {
            let v: Value = resp.json().await.unwrap();
            assert_eq!(v["error"]["code"], "unsupported_media_type", "{v}");
            assert_eq!(v["error"]["field"], "Content-Type", "{v}");
        }
    }
    // Declared twice (even both JSON): which one a proxy reads is anybody's guess.
    let twice = client
        .post(format!("{}/v1/esim/activate", app.url))
        .header("content-type", "application/json")
        .header("content-type", "text/plain")
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(twice.status(), 415);

    let unknown = reqwest::get(format!(
        "{}/v1/invoices/inv_00000000000000000000000000000000",
        app.url
    ))
    .await
    .unwrap();
    assert_eq!(unknown.status(), 404);
    assert_eq!(
        reqwest::get(format!("{}/v1/invoices/bogus", app.url))
            .await
            .unwrap()
            .status(),
        400
    );
    assert_eq!(
        reqwest::get(format!("{}/nowhere", app.url))
            .await
            .unwrap()
            .status(),
        404,
        "no route outside spin.toml's"
    );
    assert_eq!(
        reqwest::get(format!("{}/v1/nowhere", app.url))
            .await
            .unwrap()
            .status(),
        404,
        "the gateway's own 404"
    );
    assert_eq!(
        client
            .delete(format!("{}/v1/esim/activate", app.url))
            .send()
            .await
            .unwrap()
            .status(),
        405
    );
    let paid = client
        .post(format!("{}/v1/esim/activate", app.url))
        .header("x-payment-proof", "0x12")
        .body(r#"{"region":"us-west","data_mb":100}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(
        paid.status(),
        400,
        "a malformed proof is the client's fault"
    );
    let paid: Value = paid.json().await.unwrap();
    assert_eq!(paid["error"]["field"], "X-Payment-Proof");
    let health: Value = reqwest::get(format!("{}/health", app.url))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(health["status"], "ok");
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn invoice_survives_a_restart_with_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("kv.db");
    let app = spawn_app(options(StoreConfig::Sqlite(db.clone())))
        .await
        .unwrap();
    let body: Value = activate(&app.url, r#"{"region":"us-east","data_mb":50}"#)
        .await
        .json()
        .await
        .unwrap();
    let id = body["invoice_id"].as_str().unwrap().to_owned();
    app.stop().await;

    let again = spawn_app(options(StoreConfig::Sqlite(db))).await.unwrap();
    let resp = reqwest::get(format!("{}/v1/invoices/{id}", again.url))
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let got: Value = resp.json().await.unwrap();
    assert_eq!(got["amount_usdc"], body["amount_usdc"]);
    again.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn concurrent_activations_each_get_their_own_invoice() {
    let app = spawn_app(options(StoreConfig::Memory)).await.unwrap();
    let mut tasks = Vec::new();
    for i in 0..64 {
        let url = app.url.clone();
        tasks.push(tokio::spawn(async move {
            let body = format!(r#"{{"region":"us-central","data_mb":{}}}"#, i + 1);
            let resp = activate(&url, &body).await;
            assert_eq!(resp.status(), 402);
            resp.json::<Value>().await.unwrap()["invoice_id"]
                .as_str()
                .unwrap()
                .to_owned()
        }));
    }
    let mut ids = std::collections::HashSet::new();
    for t in tasks {
        ids.insert(t.await.unwrap());
    }
    assert_eq!(ids.len(), 64);
    // Each id reads back as its own open invoice, yet issuing them wrote nothing (no shared key to serialize on).
    let keys = app.app.stores["default"].keys().await.unwrap();
    assert!(
        keys.iter()
            .all(|k| !k.starts_with("invoice/") && !k.starts_with("ledger/")),
        "{keys:?}"
    );
    for id in ids.iter().take(8) {
        let got: Value = reqwest::get(format!("{}/v1/invoices/{id}", app.url))
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(got["invoice_id"], id.as_str());
        assert_eq!(got["status"], "open");
    }
    app.stop().await;
}

/// The `PAYMENT-REQUIRED` header's `accepts[].network`s.
async fn offered(resp: reqwest::Response) -> (u16, Vec<String>, Value) {
    let status = resp.status().as_u16();
    let networks = resp
        .headers()
        .get("payment-required")
        .map(|h| {
            let json = base64::engine::general_purpose::STANDARD
                .decode(h.to_str().unwrap())
                .unwrap();
            let v: Value = serde_json::from_slice(&json).unwrap();
            v["accepts"]
                .as_array()
                .unwrap()
                .iter()
                .map(|a| a["network"].as_str().unwrap().to_owned())
                .collect()
        })
        .unwrap_or_default();
    (status, networks, resp.json().await.unwrap_or(Value::Null))
}

/// `GET /health/ready` of an app started with `env` set: its status and body (liveness, `GET /health`, answers
/// 200 whatever readiness says).
async fn readiness(env: &[(&str, &str)]) -> (u16, Value) {
    let mut opts = options(StoreConfig::Memory);
    for (k, v) in env {
        opts.env.insert((*k).into(), (*v).into());
    }
    let app = spawn_app(opts).await.unwrap();
    let r = reqwest::get(format!("{}/health/ready", app.url))
        .await
        .unwrap();
    let status = r.status().as_u16();
    let body: Value = r.json().await.unwrap();
    let live = reqwest::get(format!("{}/health", app.url)).await.unwrap();
    assert_eq!(live.status(), 200);
    (status, body)
}

/// The problems a readiness answer names, as `(component, message)`.
fn problems(body: &Value) -> Vec<(&str, &str)> {
    body["problems"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            (
                p["component"].as_str().unwrap(),
                p["message"].as_str().unwrap(),
            )
        })
        .collect()
}

/// `GET /health/ready` loads every component's configuration: ready on the dev stack's defaults; outside
/// development without a carrier catalog, 503 naming the components that cannot load theirs and the variable,
/// while `GET /health` (liveness) still answers; the gateway names a `public_origins` entry that is not an
/// origin (its sign-ins would be refused).
#[tokio::test(flavor = "multi_thread")]
async fn readiness_names_the_components_whose_configuration_does_not_load() {
    let (status, body) = readiness(&[]).await;
    assert_eq!(status, 200);
    assert_eq!(body["status"], "ready", "{body}");

    let (status, body) =
        readiness(&[("SPIN_VARIABLE_PAYMENT_NETWORK", "eip155:31337, base")]).await;
    assert_eq!(status, 503);
    assert_eq!(body["status"], "not_ready", "{body}");
    let failing = problems(&body);
    for (_, message) in &failing {
        assert!(message.contains("carrier_catalog"), "{body}");
    }
    let components: Vec<&str> = failing.iter().map(|(c, _)| *c).collect();
    assert_eq!(components, ["dispatch", "metering"], "{body}");

    let origins = "http://127.0.0.1, esim402.example";
    let (status, body) = readiness(&[("SPIN_VARIABLE_PUBLIC_ORIGINS", origins)]).await;
    assert_eq!(status, 503);
    let gateway: Vec<&str> = problems(&body)
        .into_iter()
        .filter(|(c, _)| *c == "gateway")
        .map(|(_, m)| m)
        .collect();
    assert_eq!(gateway.len(), 1, "{body}");
    assert!(gateway[0].contains("esim402.example"), "{body}");

    // An admin token too short to be a secret is named (never shown), and the admin routes refuse to run on it
    // (503, not a 401 a guessed token could turn into a 200).
    let (status, body) = readiness(&[("SPIN_VARIABLE_ADMIN_TOKEN", "short-tok")]).await;
    assert_eq!(status, 503, "{body}");
    let gateway: Vec<&str> = problems(&body)
        .into_iter()
        .filter(|(c, _)| *c == "gateway")
        .map(|(_, m)| m)
        .collect();
    assert_eq!(gateway.len(), 1, "{body}");
    assert!(
        gateway[0].contains("admin_token") && !gateway[0].contains("short-tok"),
        "{body}"
    );
    let mut opts = options(StoreConfig::Memory);
    opts.env
        .insert("SPIN_VARIABLE_ADMIN_TOKEN".into(), "short-tok".into());
    let app = spawn_app(opts).await.unwrap();
    let run = reqwest::Client::new()
        .post(format!("{}/admin/cleanup/run", app.url))
        .bearer_auth("short-tok")
        .send()
        .await
        .unwrap();
    assert_eq!(run.status(), 503);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn every_enabled_network_is_offered_and_the_chain_preference_narrows_them() {
    let mut opts = options(StoreConfig::Memory);
    opts.env.insert(
        "SPIN_VARIABLE_PAYMENT_NETWORK".into(),
        "eip155:31337, base, polygon".into(),
    );
    // Mainnets enabled: the built-in catalog's development receipt signers are refused (kernel `deployment`),
    // so the deployment names its carriers, here the built-in ones signing no receipts.
    let unsigned = esim402_testkit::catalog_without_signers();
    opts.env
        .insert("SPIN_VARIABLE_CARRIER_CATALOG".into(), unsigned);
    let app = spawn_app(opts).await.unwrap();
    let (status, all, body) =
        offered(activate(&app.url, r#"{"region":"us-west","data_mb":100}"#).await).await;
    assert_eq!(status, 402);
    assert_eq!(all, ["eip155:31337", "eip155:8453", "eip155:137"]);
    // The registry's token and domain for the mainnets; the dev token only for the first network.
    assert_eq!(body["accepts"].as_array().unwrap().len(), 3, "{body}");
    assert_eq!(
        body["accepts"][1]["asset"],
        "0x833589fCD6eDb6E08f4c7C32D4f71b54bdA02913"
    );
    let (_, narrowed, _) = offered(
        activate(
            &app.url,
            r#"{"region":"us-west","data_mb":100,"chain":["polygon","base"]}"#,
        )
        .await,
    )
    .await;
    assert_eq!(narrowed, ["eip155:137", "eip155:8453"]);
    let (status, none, body) = offered(
        activate(
            &app.url,
            r#"{"region":"us-west","data_mb":100,"chain":"arbitrum"}"#,
        )
        .await,
    )
    .await;
    assert_eq!(status, 400, "{body}");
    assert!(none.is_empty());
    assert_eq!(body["error"]["field"], "chain");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("eip155:8453 (base)"),
        "{body}"
    );
    app.stop().await;
}
