//! The x402 facilitator API over HTTP (`POST /verify`, `POST /settle`, `GET /supported`): shapes and the
//! bad-input contract. Payments that pass the structural checks need a chain (the payments issue's anvil tests).

use esim402_host::runtime_config::StoreConfig;
use esim402_tests::{options, spawn_app};
use serde_json::{Value, json};

fn request(network: &str) -> Value {
    let requirements = json!({
        "scheme": "exact", "network": network, "amount": "420000",
        "asset": "0x5FbDB2315678afecb367f032d93F642f64180aa3",
        "payTo": "0x3C44CdDdB6a900fa2b585dd299e03d12FA4293BC", "maxTimeoutSeconds": 300,
        "extra": {"name": "USD Coin", "version": "2"}
    });
    json!({
        "x402Version": 2,
        "paymentRequirements": requirements,
        "paymentPayload": {
            "x402Version": 2,
            "accepted": requirements,
            "payload": {
                "signature": format!("0x{}", "11".repeat(65)),
                "authorization": {
                    "from": "0xa0Ee7A142d267C1f36714E4a8F75612F20a79720",
                    "to": "0x3C44CdDdB6a900fa2b585dd299e03d12FA4293BC",
                    "value": "420000", "validAfter": "0", "validBefore": "99999999999",
                    "nonce": format!("0x{}", "ab".repeat(32))
                }
            }
        }
    })
}

#[tokio::test]
async fn verify_and_settle_answer_shapes_and_reject_bad_input_with_4xx() {
    let app = spawn_app(options(StoreConfig::Memory)).await.unwrap();
    let http = reqwest::Client::new();
    let post = |path: &str, body: String| {
        http.post(format!("{}{path}", app.url))
            .header("content-type", "application/json")
            .body(body)
            .send()
    };

    // An unsupported network is a verdict, not an error: HTTP 200, isValid false, the reference's reason.
    let r = post("/verify", request("eip155:999999").to_string())
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["isValid"], false, "{v}");
    assert_eq!(v["invalidReason"], "invalid_network", "{v}");

    let r = post("/settle", request("eip155:999999").to_string())
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["success"], false, "{v}");
    assert_eq!(v["errorReason"], "invalid_network", "{v}");

    // Malformed bodies are the caller's fault: 400 with a JSON error naming the body, never 5xx.
    for bad in ["not json", "{}", "[1,2]", r#"{"x402Version":2}"#] {
        for path in ["/verify", "/settle"] {
            let r = post(path, bad.to_owned()).await.unwrap();
            assert_eq!(r.status(), 400, "{path} {bad}");
            let v: Value = r.json().await.unwrap();
            assert_eq!(v["error"]["field"], "body", "{path} {bad}: {v}");
        }
    }
    // A well-formed request with an unknown protocol version is a verdict with the reference's reason.
    let unknown = r#"{"x402Version":7,"paymentPayload":{},"paymentRequirements":{}}"#;
    let v: Value = post("/verify", unknown.to_owned())
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        (v["isValid"].as_bool(), v["invalidReason"].as_str()),
        (Some(false), Some("invalid_x402_version"))
    );
    let v: Value = post("/settle", unknown.to_owned())
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        (v["success"].as_bool(), v["errorReason"].as_str()),
        (Some(false), Some("invalid_x402_version"))
    );
    let r = http
        .get(format!("{}/verify", app.url))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 405);

    // /supported lists the exact scheme on the configured network.
    let v: Value = http
        .get(format!("{}/supported", app.url))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let kinds = v["kinds"].as_array().unwrap();
    assert!(
        kinds
            .iter()
            .any(|k| k["scheme"] == "exact" && k["network"] == "eip155:31337"),
        "{v}"
    );
    app.stop().await;
}
