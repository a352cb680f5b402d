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
    assert_eq!(operations, 30, "every operation was tried");
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

/// Raw HTTP/1.1 on a fresh connection: what the server answers (its bytes up to `limit`), or `None` if it
/// closed the connection without answering.
async fn raw(url: &str, request: &[u8], limit: std::time::Duration) -> Option<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let addr = url.trim_start_matches("http://");
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream.write_all(request).await.unwrap();
    let mut buf = vec![0u8; 4096];
    let n = tokio::time::timeout(limit, stream.read(&mut buf))
        .await
        .expect("the server neither answered nor closed the connection")
        .unwrap_or(0);
    (n > 0).then(|| String::from_utf8_lossy(&buf[..n]).into_owned())
}

/// A Host header that is not `host[:port]` is refused (spliced into the URL the component sees, a `/` or `?` in
/// it would rewrite the path it routes on); a connection that sends nothing, or idles after a request, is
/// closed after the header timeout instead of holding a descriptor for ever.
#[tokio::test(flavor = "multi_thread")]
async fn hostile_hosts_are_refused_and_silent_connections_are_closed() {
    use std::time::Duration;
    let mut opts = options(StoreConfig::Memory);
    opts.header_timeout = Duration::from_millis(300);
    let app = spawn_app(opts).await.unwrap();
    for host in ["x/v1/ledger?", "x?y", "user@x", "x y"] {
        let req = format!("GET /health HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
        let answer = raw(&app.url, req.as_bytes(), Duration::from_secs(5))
            .await
            .unwrap();
        assert!(answer.starts_with("HTTP/1.1 400"), "{host}: {answer}");
    }
    // Both framings at once (request smuggling's shape): read by Transfer-Encoding alone, and the connection
    // closed after the answer (RFC 9112, 6.3), so nothing after it on the connection is read as a request.
    let both = raw(
        &app.url,
        b"POST /v1/usage HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n\
          Transfer-Encoding: chunked\r\nContent-Length: 4\r\n\r\n2\r\n{}\r\n0\r\n\r\n",
        Duration::from_secs(5),
    )
    .await
    .unwrap();
    assert!(both.contains("connection: close"), "{both}");
    assert!(
        both.contains("no \\\"receipts\\\" array"),
        "read as the chunked `{{}}`: {both}"
    );
    let ok = raw(
        &app.url,
        b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n",
        Duration::from_secs(5),
    )
    .await
    .unwrap();
    assert!(ok.starts_with("HTTP/1.1 200"), "{ok}");
    // A keep-alive connection left idle after its request is closed too.
    {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut stream = tokio::net::TcpStream::connect(app.url.trim_start_matches("http://"))
            .await
            .unwrap();
        stream
            .write_all(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
            .await
            .unwrap();
        let mut buf = vec![0u8; 4096];
        let n = stream.read(&mut buf).await.unwrap();
        assert!(buf[..n].starts_with(b"HTTP/1.1 200"));
        let eof = tokio::time::timeout(Duration::from_secs(10), stream.read(&mut buf)).await;
        assert!(matches!(eof, Ok(Ok(0)) | Ok(Err(_))), "{eof:?}");
    }
    // Nothing sent, or half a request line: closed well within the 10 s the test waits.
    for partial in [&b"GET /health HTT"[..], b""] {
        let answer = raw(&app.url, partial, Duration::from_secs(10)).await;
        assert!(
            answer
                .as_deref()
                .is_none_or(|a| a.starts_with("HTTP/1.1 408")),
            "{answer:?}"
        );
    }
}

/// A client that stops reading is cut off at the write deadline: pipelined requests whose answers fill every
/// socket buffer between it and the server, then nothing read for longer than the deadline, and the rest of
/// the answers never come (before, the server waited for ever, its connection slot taken). A request head
/// still unfinished past what the server buffers is answered 431 (before, hyper buffered ~400 KiB of head per
/// connection until the header deadline).
#[tokio::test(flavor = "multi_thread")]
async fn a_client_that_stops_reading_is_cut_off_and_long_heads_are_refused() {
    use std::time::Duration;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut opts = options(StoreConfig::Memory);
    opts.write_timeout = Duration::from_millis(500);
    let app = spawn_app(opts).await.unwrap();
    let addr = app.url.trim_start_matches("http://").to_owned();

    let one = "GET /openapi.json HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n";
    let first = raw(
        &app.url,
        one.replace("\r\n\r\n", "\r\nConnection: close\r\n\r\n")
            .as_bytes(),
        Duration::from_secs(5),
    )
    .await
    .unwrap();
    assert!(first.starts_with("HTTP/1.1 200"), "{first}");
    let requests = 400;
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let mut stream = socket.connect(addr.parse().unwrap()).await.unwrap();
    stream
        .write_all(one.repeat(requests).as_bytes())
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let mut got = Vec::new();
    let ended = tokio::time::timeout(Duration::from_secs(20), async {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    assert!(ended.is_ok(), "the connection stayed open");
    let answers = got.windows(9).filter(|w| *w == b"HTTP/1.1 ").count();
    // What the socket buffers held may arrive, or be lost to the reset; never every answer.
    assert!(answers < requests, "{answers} of {requests} answered");

    // A head still unfinished at 40 KiB: refused at once, not held until the 30 s header deadline.
    let long = format!(
        "GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Long: {}",
        "a".repeat(40 * 1024)
    );
    let answer = raw(&app.url, long.as_bytes(), Duration::from_secs(5)).await;
    assert!(
        answer
            .as_deref()
            .is_none_or(|a| a.starts_with("HTTP/1.1 431")),
        "{answer:?}"
    );
    app.stop().await;
}

/// A body without a length (chunked) or above the buffered size is read under the same deadline as a small
/// one: a client that trickles it is answered once the deadline passes, instead of holding the instance
/// reading it until the request timeout.
#[tokio::test(flavor = "multi_thread")]
async fn a_trickled_chunked_body_is_cut_off_at_the_body_deadline() {
    use std::time::{Duration, Instant};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut opts = options(StoreConfig::Memory);
    opts.body_timeout = Duration::from_millis(500);
    let app = spawn_app(opts).await.unwrap();
    let mut stream = tokio::net::TcpStream::connect(app.url.trim_start_matches("http://"))
        .await
        .unwrap();
    stream
        .write_all(
            b"POST /v1/usage HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n\
              Transfer-Encoding: chunked\r\n\r\n1\r\n{\r\n",
        )
        .await
        .unwrap();
    let started = Instant::now();
    let mut buf = vec![0u8; 4096];
    let n = tokio::time::timeout(Duration::from_secs(20), stream.read(&mut buf))
        .await
        .expect("answered, or closed, at the body deadline")
        .unwrap_or(0);
    let answer = String::from_utf8_lossy(&buf[..n]);
    assert!(
        n == 0 || answer.starts_with("HTTP/1.1 4"),
        "{answer} after {:?}",
        started.elapsed()
    );
}

/// `GET /v1/catalog` lets an agent choose and price before asking for a 402: the activation 402 for a region's
/// default carrier costs the catalog's fee plus its rate times the data, and an unknown region's refusal points
/// at the catalog.
#[tokio::test(flavor = "multi_thread")]
async fn the_catalog_prices_what_the_402_charges() {
    let app = spawn_app(options(StoreConfig::Memory)).await.unwrap();
    let http = reqwest::Client::new();
    let catalog: Value = http
        .get(format!("{}/v1/catalog", app.url))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let west = catalog["regions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["region"] == "us-west")
        .unwrap_or_else(|| panic!("{catalog}"));
    let carrier = west["carriers"][0].as_str().unwrap();
    let rate = catalog["carriers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["id"] == carrier)
        .unwrap()["price_per_mb_usdc"]
        .as_str()
        .unwrap()
        .to_owned();
    let micros = |usdc: &str| -> u64 {
        let (whole, frac) = usdc.split_once('.').unwrap_or((usdc, ""));
        let frac = format!("{frac:0<6}");
        whole.parse::<u64>().unwrap() * 1_000_000 + frac[..6].parse::<u64>().unwrap()
    };
    let fee = micros(catalog["activation_fee_usdc"].as_str().unwrap());
    let r = http
        .post(format!("{}/v1/esim/activate", app.url))
        .json(&serde_json::json!({"region": "us-west", "data_mb": 100}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 402);
    let offer: Value = r.json().await.unwrap();
    assert_eq!(
        micros(offer["amount_usdc"].as_str().unwrap()),
        fee + 100 * micros(&rate),
        "{offer} {catalog}"
    );
    let r = http
        .post(format!("{}/v1/esim/activate", app.url))
        .json(&serde_json::json!({"region": "mars-north", "data_mb": 100}))
        .send()
        .await
        .unwrap();
    let e: Value = r.json().await.unwrap();
    assert!(
        e["error"]["message"]
            .as_str()
            .unwrap_or_default()
            .contains("/v1/catalog"),
        "{e}"
    );
    app.stop().await;
}

/// A browser paying a 402 from a page: the preflight answers 204 with the route's methods and the headers a
/// payment needs, and answers carry `Access-Control-Allow-Origin` with the x402 headers exposed. Before, the
/// preflight was 405 and a page could not send a payment.
#[tokio::test(flavor = "multi_thread")]
async fn browsers_may_pay_cross_origin() {
    let app = spawn_app(options(StoreConfig::Memory)).await.unwrap();
    let http = reqwest::Client::new();
    let pre = http
        .request(
            reqwest::Method::OPTIONS,
            format!("{}/v1/esim/activate", app.url),
        )
        .header("origin", "https://shop.example")
        .header("access-control-request-method", "POST")
        .header(
            "access-control-request-headers",
            "payment-signature, content-type",
        )
        .send()
        .await
        .unwrap();
    assert_eq!(pre.status(), 204);
    let h = pre.headers();
    assert_eq!(h["access-control-allow-origin"], "*");
    assert_eq!(h["access-control-allow-methods"], "GET, POST");
    let allowed = h["access-control-allow-headers"].to_str().unwrap();
    assert!(allowed.contains("payment-signature") && allowed.contains("content-type"));
    let r = http
        .post(format!("{}/v1/esim/activate", app.url))
        .header("origin", "https://shop.example")
        .json(&serde_json::json!({"region": "us-west", "data_mb": 10}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 402);
    assert_eq!(r.headers()["access-control-allow-origin"], "*");
    let exposed = r.headers()["access-control-expose-headers"]
        .to_str()
        .unwrap();
    assert!(exposed.contains("PAYMENT-REQUIRED"), "{exposed}");
    // A path that is no route is not answered as one.
    let none = http
        .request(reqwest::Method::OPTIONS, format!("{}/v1/nothing", app.url))
        .send()
        .await
        .unwrap();
    assert_eq!(none.status(), 404);
    app.stop().await;
}

/// A header read as one value and sent twice is refused on every route, whatever the order of its copies: the
/// admin token's route answered 401 or 200 by which copy came first, and a payment sent twice used the first.
/// (A fresh-user trial, thirty-first session.)
#[tokio::test(flavor = "multi_thread")]
async fn a_single_valued_header_sent_twice_is_refused_everywhere() {
    const ADMIN: &str = "api-test-admin-token";
    let mut opts = options(StoreConfig::Memory);
    opts.env
        .insert("SPIN_VARIABLE_ADMIN_TOKEN".into(), ADMIN.into());
    let app = spawn_app(opts).await.unwrap();
    let http = reqwest::Client::new();
    let send = |method: reqwest::Method, path: &str, name: &str, values: [&str; 2]| {
        let mut headers = reqwest::header::HeaderMap::new();
        for v in values {
            headers.append(
                reqwest::header::HeaderName::from_bytes(name.as_bytes()).unwrap(),
                v.parse().unwrap(),
            );
        }
        http.request(method, format!("{}{path}", app.url))
            .headers(headers)
            .json(&serde_json::json!({"region": "us-west", "data_mb": 10}))
            .send()
    };
    let bearer = format!("Bearer {ADMIN}");
    for values in [
        ["Bearer wrong", bearer.as_str()],
        [bearer.as_str(), "Bearer wrong"],
    ] {
        let r = send(
            reqwest::Method::GET,
            "/v1/ledger?from=0&limit=1",
            "authorization",
            values,
        )
        .await
        .unwrap();
        assert_eq!(r.status(), 400, "{values:?}");
        let body: Value = r.json().await.unwrap();
        assert_eq!(body["error"]["field"], "authorization", "{body}");
    }
    for name in [
        "payment-signature",
        "x-payment",
        "x-invoice-id",
        "sign-in-with-x",
    ] {
        let r = send(reqwest::Method::POST, "/v1/esim/activate", name, ["a", "b"])
            .await
            .unwrap();
        assert_eq!(r.status(), 400, "{name}");
        let body: Value = r.json().await.unwrap();
        assert_eq!(body["error"]["field"], name, "{body}");
        let message = body["error"]["message"].as_str().unwrap();
        assert!(message.contains("more than once"), "{message}");
    }
    // A query parameter given twice is refused too (it was read as its last value).
    let twice = http
        .get(format!("{}/v1/ledger?from=0&limit=1&from=5", app.url))
        .header("authorization", bearer.as_str())
        .send()
        .await
        .unwrap();
    assert_eq!(twice.status(), 400);
    let body: Value = twice.json().await.unwrap();
    assert_eq!(body["error"]["field"], "from", "{body}");
    // Once each, the same requests are answered as before.
    let one = http
        .get(format!("{}/v1/ledger?from=0&limit=1", app.url))
        .header("authorization", bearer.as_str())
        .send()
        .await
        .unwrap();
    assert_eq!(one.status(), 200);
    app.stop().await;
}

/// HEAD is answered wherever GET is, as the GET without its body (a fresh-user trial, thirty-first session:
/// `HEAD /v1/catalog` was 405); a route without GET still refuses it.
#[tokio::test(flavor = "multi_thread")]
async fn head_is_answered_wherever_get_is() {
    let app = spawn_app(options(StoreConfig::Memory)).await.unwrap();
    let http = reqwest::Client::new();
    let get = http
        .get(format!("{}/v1/catalog", app.url))
        .send()
        .await
        .unwrap();
    assert_eq!(get.status(), 200);
    let length = get.headers()["content-length"].clone();
    assert!(!get.bytes().await.unwrap().is_empty());
    let head = http
        .head(format!("{}/v1/catalog", app.url))
        .send()
        .await
        .unwrap();
    assert_eq!(head.status(), 200);
    assert_eq!(head.headers()["content-length"], length);
    assert!(head.bytes().await.unwrap().is_empty());
    let post_only = http
        .head(format!("{}/v1/usage", app.url))
        .send()
        .await
        .unwrap();
    assert_eq!(post_only.status(), 405);
    // Not a paid one: its answer (the activation code and access token) would be dropped (before, the order
    // was made and paid, and the answer lost).
    for header in ["payment-signature", "x-payment", "x-payment-proof"] {
        let paid = http
            .head(format!(
                "{}/v1/esim/activate?region=us-west&data_mb=1",
                app.url
            ))
            .header(header, "e30=")
            .send()
            .await
            .unwrap();
        assert_eq!(paid.status(), 400, "{header}");
    }
    app.stop().await;
}

/// With `public_origins` set, a 402 names its resource on that origin whatever Host the client sent (a
/// fresh-user trial, thirty-first session: `Host: evil.example:666` came back in the challenge).
#[tokio::test(flavor = "multi_thread")]
async fn the_402_names_its_resource_on_the_public_origin() {
    let mut opts = options(StoreConfig::Memory);
    opts.env.insert(
        "SPIN_VARIABLE_PUBLIC_ORIGINS".into(),
        "https://api.example.com".into(),
    );
    // A public deployment names its carriers (the built-in catalog's development signers are refused).
    opts.env.insert(
        "SPIN_VARIABLE_CARRIER_CATALOG".into(),
        esim402_testkit::catalog_without_signers(),
    );
    let app = spawn_app(opts).await.unwrap();
    let r = reqwest::Client::new()
        .post(format!("{}/v1/esim/activate", app.url))
        .header("host", "evil.example:666")
        .json(&serde_json::json!({"region": "us-west", "data_mb": 10}))
        .send()
        .await
        .unwrap();
    if r.status() != 402 {
        panic!("{}: {}", r.status(), r.text().await.unwrap());
    }
    let required = esim402_core::x402::header::decode_payment_required_header(
        r.headers()["payment-required"].to_str().unwrap(),
    )
    .unwrap();
    let text = serde_json::to_string(&required).unwrap();
    assert!(!text.contains("evil.example"), "{text}");
    assert!(
        text.contains("https://api.example.com/v1/esim/activate"),
        "{text}"
    );
    let body: Value = r.json().await.unwrap();
    assert!(!body.to_string().contains("evil.example"), "{body}");
    app.stop().await;
}
