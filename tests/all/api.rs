//! The OpenAPI description against the running app: every operation it lists is served (never a 405 or "no
//! route"), and `GET /openapi.json` serves it; every operation answers hostile input with a typed 4xx. (That it lists exactly the gateway's route table is the
//! kernel's test, `esim402_core::routes`.)

use esim402_host::runtime_config::StoreConfig;
use esim402_tests::{options, spawn_app};
use serde_json::Value;

/// `GET /openapi.json` of the app at `url`.
async fn served_description(http: &reqwest::Client, url: &str) -> Value {
    http.get(format!("{url}/openapi.json"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn every_described_operation_is_served() {
    let app = spawn_app(options(StoreConfig::Memory)).await.unwrap();
    let http = reqwest::Client::new();
    let doc = served_description(&http, &app.url).await;
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

/// Hostile input on every described operation: bodies that are not JSON, not UTF-8, nested thousands deep,
/// with numbers past `u64` or a lone surrogate, or over the size limit; path parameters that are not ICCIDs
/// or invoice ids; garbage credentials and payment headers; nonsense query values. Every answer is below 500,
/// and every 4xx carries the typed error body (`{"error": {"code": …}}`; a 402, the payment challenge for a
/// valid request, its `accepts`). The operations come from the
/// served description, so a new route is covered without touching this test.
#[tokio::test(flavor = "multi_thread")]
async fn hostile_input_gets_a_typed_4xx_on_every_operation() {
    let app = spawn_app(options(StoreConfig::Memory)).await.unwrap();
    let http = reqwest::Client::new();
    let doc = served_description(&http, &app.url).await;
    let bodies: Vec<Vec<u8>> = vec![
        b"".to_vec(),
        b"null".to_vec(),
        b"[]".to_vec(),
        b"\xff\xfe{".to_vec(),
        format!("{}{}", "[".repeat(3000), "]".repeat(3000)).into_bytes(),
        format!("{}1{}", r#"{"a":"#.repeat(3000), "}".repeat(3000)).into_bytes(),
        br#"{"region":"us-west","data_mb":1e400,"eid":7}"#.to_vec(),
        br#"{"region":"us-west","data_mb":18446744073709551616}"#.to_vec(),
        br#"{"region":"\ud800","data_mb":-1,"carrier":"\u0000"}"#.to_vec(),
        br#"{"receipts":[null,1,"x",{}],"paymentPayload":{},"paymentRequirements":[]}"#.to_vec(),
        vec![b'x'; 70_000],
    ];
    let headers = [
        ("authorization", format!("Bearer {}", "z".repeat(5_000))),
        ("authorization", "SIWX !!!".to_owned()),
        ("payment-signature", "!!!".to_owned()),
        ("x-payment", "e30=".to_owned()),
        (
            "x-payment-proof",
            r#"{"tx_hash":"0x00","invoice_id":"x"}"#.to_owned(),
        ),
        ("x-agent-id", "é".repeat(300)),
    ];
    let query = "?limit=-1&after=%ff&from=-1&granularity=x&group_by=y&shard=99999&region=%00\
                 &data_mb=99999999999999999999";
    let mut checked = 0;
    let mut check = async |method: &reqwest::Method,
                           url: String,
                           body: Option<Vec<u8>>,
                           header: Option<&(&str, String)>| {
        let mut req = http.request(method.clone(), &url);
        if let Some(body) = body {
            req = req.header("content-type", "application/json").body(body);
        }
        if let Some((name, value)) = header {
            req = req.header(*name, value);
        }
        let r = req.send().await.unwrap();
        let status = r.status().as_u16();
        let text = r.text().await.unwrap_or_default();
        assert!(status < 500, "{method} {url}: {status} {text}");
        if status >= 400 {
            let v: Value = serde_json::from_str(&text)
                .unwrap_or_else(|e| panic!("{method} {url}: {status} not JSON ({e}): {text}"));
            // A 402 is the payment challenge (a valid request without payment), not an error.
            let typed = if status == 402 {
                v["accepts"].is_array()
            } else {
                v["error"]["code"].is_string()
            };
            assert!(typed, "{method} {url}: {status} {text}");
        }
        checked += 1;
    };
    for (path, item) in doc["paths"].as_object().unwrap() {
        let params: &[&str] = if path.contains("{iccid}") {
            &["8901260000000000018", "%F0%9F%98%80", &"9".repeat(300)]
        } else if path.contains("{id}") {
            &["inv_unknown", "%00"]
        } else {
            &[""]
        };
        for param in params {
            let concrete = path.replace("{iccid}", param).replace("{id}", param);
            for method in item.as_object().unwrap().keys() {
                let method = reqwest::Method::from_bytes(method.to_uppercase().as_bytes()).unwrap();
                let url = format!("{}{concrete}", app.url);
                if method == reqwest::Method::GET {
                    check(&method, format!("{url}{query}"), None, None).await;
                    for header in &headers {
                        check(&method, url.clone(), None, Some(header)).await;
                    }
                    continue;
                }
                for body in &bodies {
                    check(&method, url.clone(), Some(body.clone()), None).await;
                }
                for header in &headers {
                    let body = br#"{"region":"us-west","data_mb":1}"#.to_vec();
                    check(&method, url.clone(), Some(body), Some(header)).await;
                }
            }
        }
    }
    assert!(checked > 400, "{checked} requests");
    app.stop().await;
}
