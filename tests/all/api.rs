//! The OpenAPI description against the running app: every operation it lists is served (never a 405 or "no
//! route"), and `GET /openapi.json` serves it. (That it lists exactly the gateway's route table is the
//! kernel's test, `esim402_core::routes`.)

use esim402_host::runtime_config::StoreConfig;
use esim402_tests::{options, spawn_app};
use serde_json::Value;

#[tokio::test(flavor = "multi_thread")]
async fn every_described_operation_is_served() {
    let app = spawn_app(options(StoreConfig::Memory)).await.unwrap();
    let http = reqwest::Client::new();
    let doc: Value = http
        .get(format!("{}/openapi.json", app.url))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(doc["openapi"], "3.1.0");
    let mut operations = 0;
    for (path, item) in doc["paths"].as_object().unwrap() {
        let concrete = path
            .replace("{iccid}", "8901260000000000019")
            .replace("{id}", "inv_unknown");
        for method in item.as_object().unwrap().keys() {
            let method = reqwest::Method::from_bytes(method.to_uppercase().as_bytes()).unwrap();
            let r = http
                .request(method.clone(), format!("{}{concrete}", app.url))
                .header("content-type", "application/json")
                .body("{}")
                .send()
                .await
                .unwrap();
            let status = r.status().as_u16();
            let body = r.text().await.unwrap_or_default();
            assert_ne!(status, 405, "{method} {path}: {body}");
            assert!(
                !(status == 404 && body.contains("no route")),
                "{method} {path} is described but not served: {body}"
            );
            assert!(status < 500, "{method} {path}: {status} {body}");
            operations += 1;
        }
    }
    assert_eq!(operations, 26, "every operation was tried");
    app.stop().await;
}
