//! The proxy as a device meets it: a real proxy on a loopback port in front of a scripted facilitator, spoken
//! to in raw HTTP/1.1 (browser refusals, paid routes, forwarded headers, the audit log, device directories and
//! locks, answer and connection limits, private files, a paid answer collected again). Kept answers replayed:
//! `replay_tests.rs`, with this file's helpers.

#![allow(clippy::unwrap_used, reason = "tests")]

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

use super::server::{LIMITS, Limits, serve_with};
use super::{ProxySettings, hold_wallet};
use crate::{AgentError, Config, SpendPolicy, StateDir, WalletKey};

/// A proxy in front of `upstream`, its state in `state_dir`; its address.
pub(super) async fn proxy(
    upstream: &str,
    state_dir: &std::path::Path,
    limits: Limits,
) -> SocketAddr {
    proxy_with(upstream, state_dir, limits, |_| {}).await
}

/// [`proxy`], its settings changed by `change`.
pub(super) async fn proxy_with(
    upstream: &str,
    state_dir: &std::path::Path,
    limits: Limits,
    change: impl FnOnce(&mut ProxySettings),
) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let key = WalletKey::parse(&"11".repeat(32), "test").unwrap();
    let mut settings = ProxySettings {
        device_header: None,
        device_max_per_payment: "1".parse().unwrap(),
        device_max_per_day: "5".parse().unwrap(),
        audit_log: state_dir.join("audit.jsonl"),
        state_dir: state_dir.to_owned(),
    };
    change(&mut settings);
    let config = Config::new(upstream, key).unwrap();
    let held = hold_wallet(state_dir).unwrap();
    tokio::spawn(serve_with(
        listener,
        held,
        config,
        SpendPolicy::default(),
        settings,
        limits,
    ));
    addr
}

/// Send `request` (raw HTTP/1.1) to `addr`; the answer's status (0: closed without one).
async fn raw(addr: SocketAddr, request: &str) -> u16 {
    let mut conn = tokio::net::TcpStream::connect(addr).await.unwrap();
    conn.write_all(request.as_bytes()).await.unwrap();
    let mut head = [0u8; 12];
    match conn.read_exact(&mut head).await {
        Ok(_) => String::from_utf8_lossy(&head[9..12]).parse().unwrap(),
        Err(_) => 0,
    }
}

/// A device whose state directory another esim402-agent holds is told to send again (503), not that the
/// proxy failed (500, before), and nothing is paid.
#[tokio::test]
async fn a_device_whose_state_is_in_use_is_told_to_send_again() {
    let upstream = crate::testing::facilitator(vec![(200, json!({"paid": true}))]).await;
    let dir = tempfile::tempdir().unwrap();
    let addr = proxy(&upstream.url, dir.path(), LIMITS).await;
    let held = StateDir::new(dir.path().join("devices").join("127.0.0.1"))
        .lock()
        .unwrap();
    let buy = request(
        addr,
        "POST",
        "/v1/esim/activate",
        "",
        r#"{"region":"us-west","data_mb":1}"#,
    );
    assert_eq!(raw(addr, &buy).await, 503);
    // Only the unpaid request that drew the 402 went out: nothing was signed or paid.
    let seen = upstream.seen();
    assert_eq!(seen.len(), 1, "{seen:?}");
    assert!(seen[0].header("payment-signature").is_none(), "{seen:?}");
    drop(held);
}

/// A browser on the host (any page: a cross-origin "simple" POST, a DNS-rebound name) must not get this
/// wallet to pay, nor read an answer: what a device would not send is refused before anything is
/// forwarded. Before, all of these were forwarded (and a 402 paid).
#[tokio::test]
async fn browser_requests_rebound_hosts_and_non_json_bodies_are_refused() {
    let upstream = crate::testing::facilitator(vec![(200, json!({"paid": true}))]).await;
    let dir = tempfile::tempdir().unwrap();
    let addr = proxy(&upstream.url, dir.path(), LIMITS).await;
    let port = addr.port();
    let get = |host: &str, extra: &str| {
        format!("GET /health HTTP/1.1\r\nhost: {host}\r\n{extra}connection: close\r\n\r\n")
    };
    let post = |ct: &str| {
        let body = r#"{"region":"us-west","data_mb":1}"#;
        format!(
            "POST /v1/esim/activate HTTP/1.1\r\nhost: 127.0.0.1:{port}\r\n{ct}content-length: {}\r\nconnection: close\r\n\r\n{body}",
            body.len()
        )
    };
    let here = format!("127.0.0.1:{port}");
    for (request, status, why) in [
        (get(&here, "origin: http://evil.example\r\n"), 403, "Origin"),
        (get(&here, "origin: null\r\n"), 403, "an opaque Origin"),
        (
            get(&here, "sec-fetch-site: cross-site\r\n"),
            403,
            "Sec-Fetch-Site",
        ),
        (
            get(&here, "sec-fetch-mode: no-cors\r\n"),
            403,
            "Sec-Fetch-Mode",
        ),
        (
            get(&format!("evil.example:{port}"), ""),
            403,
            "a rebound host name",
        ),
        (get(&format!("[::1]:{port}:1"), ""), 403, "junk"),
        (
            get(&format!("127.0.0.1@evil.example:{port}"), ""),
            403,
            "a user name",
        ),
        (
            get(&format!("[fe80::1%25eth0]:{port}"), ""),
            403,
            "an IPv6 zone",
        ),
        (
            post("content-type: text/plain\r\n"),
            415,
            "a simple cross-origin POST",
        ),
        (post(""), 415, "a body without a type"),
    ] {
        assert_eq!(raw(addr, &request).await, status, "{why}");
    }
    assert!(
        upstream.seen().is_empty(),
        "nothing forwarded: {:?}",
        upstream.seen()
    );

    // What devices send goes through (and is paid): any port (a device behind a port mapping names its own),
    // none, an empty one, `localhost.`, an IPv4-mapped loopback address.
    let hosts = [
        here.clone(),
        format!("localhost:{port}"),
        format!("[::1]:{port}"),
        format!("127.0.0.1:{}", port ^ 1),
        "127.0.0.1".into(),
        "127.0.0.1:".into(),
        format!("localhost.:{port}"),
        format!("[::ffff:127.0.0.1]:{port}"),
    ];
    for host in &hosts {
        assert_eq!(raw(addr, &get(host, "")).await, 200, "{host}");
    }
    assert_eq!(
        raw(
            addr,
            &post("content-type: application/json; charset=utf-8\r\n")
        )
        .await,
        200
    );
    let seen = upstream.seen();
    assert_eq!(
        seen.len(),
        hosts.len() + 3,
        "the GETs; the device's POST, the agent's, the paid one"
    );
    let paid = &seen[hosts.len() + 2];
    assert!(paid.header("payment-signature").is_some());
    assert_eq!(
        serde_json::from_slice::<Value>(&paid.body).unwrap(),
        json!({"region": "us-west", "data_mb": 1})
    );
}

/// Send `request` (raw HTTP/1.1, `connection: close`) to `addr`; the answer's status and body.
pub(super) async fn exchange(addr: SocketAddr, request: &str) -> (u16, Value) {
    let mut conn = tokio::net::TcpStream::connect(addr).await.unwrap();
    conn.write_all(request.as_bytes()).await.unwrap();
    let mut answer = Vec::new();
    conn.read_to_end(&mut answer).await.unwrap();
    let answer = String::from_utf8_lossy(&answer);
    let status = answer[9..12].parse().unwrap();
    let body = answer.split_once("\r\n\r\n").unwrap().1;
    (status, serde_json::from_str(body).unwrap_or(Value::Null))
}

/// `method target` with `headers` (each line ending `\r\n`) and a JSON `body` if any, to the proxy at `addr`.
pub(super) fn request(
    addr: SocketAddr,
    method: &str,
    target: &str,
    headers: &str,
    body: &str,
) -> String {
    let typed = if body.is_empty() {
        String::new()
    } else {
        format!(
            "content-type: application/json\r\ncontent-length: {}\r\n",
            body.len()
        )
    };
    format!(
        "{method} {target} HTTP/1.1\r\nhost: 127.0.0.1:{}\r\n{headers}{typed}connection: close\r\n\r\n{body}",
        addr.port()
    )
}

/// A facilitator asking a payment for every unpaid request, whatever its route, and selling a SIM to every
/// paid one.
pub(super) async fn asks_everywhere() -> crate::testing::Server {
    crate::testing::Server::start(|seen| {
        if seen.header("payment-signature").is_none() {
            return crate::testing::challenge(seen);
        }
        (200, vec![], crate::testing::sim_answer("8902"))
    })
    .await
}

/// The proxy pays only what a device buys connectivity with: an activation (its JSON or its query form), a
/// top-up and a switch. Another route's 402 comes back as the proxy's own 402, nothing paid. Before, every
/// POST's 402 was paid, whatever the route (and the query form was refused).
#[tokio::test]
async fn only_connectivity_routes_are_paid() {
    let upstream = asks_everywhere().await;
    let dir = tempfile::tempdir().unwrap();
    let addr = proxy(&upstream.url, dir.path(), LIMITS).await;
    let buy = r#"{"region":"us-west","data_mb":1}"#;
    for (method, target, body) in [
        ("POST", "/v1/esim/activate", buy),
        ("GET", "/v1/esim/activate?region=us-west&data_mb=1", ""),
        ("POST", "/v1/esim/8901/data", r#"{"top_up_mb":100}"#),
        ("POST", "/v1/esim/8901/switch", r#"{"carrier":"verizon"}"#),
    ] {
        let before = upstream.payments().len();
        let (status, answer) = exchange(addr, &request(addr, method, target, "", body)).await;
        assert_eq!(status, 200, "{method} {target}: {answer}");
        assert_eq!(answer["iccid"], "8902");
        assert_eq!(upstream.payments().len(), before + 1, "{method} {target}");
        let paid = upstream.seen().pop().unwrap();
        assert_eq!(
            (paid.method.as_str(), paid.target.as_str()),
            (method, target)
        );
        let json = |b: &[u8]| serde_json::from_slice::<Value>(b).ok();
        assert_eq!(json(&paid.body), json(body.as_bytes()), "sent as it came");
    }
    for (method, target, body) in [
        ("POST", "/v1/esim/8901/suspend", ""),
        ("POST", "/v1/esim/8901/token", ""),
        ("POST", "/v1/usage", "[]"),
        ("POST", "/settle", "{}"),
        ("GET", "/v1/invoices/inv_1", ""),
        ("GET", "/v1/esim/8901/balance", ""),
        ("POST", "/v1/esim/activate/more", buy),
        ("POST", "/v1/esim//activate", buy),
        ("POST", "/v2/esim/activate", buy),
    ] {
        let (status, answer) = exchange(addr, &request(addr, method, target, "", body)).await;
        assert_eq!(status, 402, "{method} {target}: {answer}");
        let message = answer["error"]["message"].as_str().unwrap();
        assert!(message.contains("nothing was paid"), "{message}");
    }
    assert_eq!(upstream.payments().len(), 4, "only the four purchases");
    let log = audit_lines(dir.path());
    assert_eq!(log.len(), 8, "signed, then settled, for each: {log:?}");
    for pair in log.chunks(2) {
        assert_eq!(
            (pair[0]["event"].as_str(), pair[1]["event"].as_str()),
            (Some("signed"), Some("settled"))
        );
        assert_eq!(pair[0]["payment_id"], pair[1]["payment_id"]);
        assert_eq!(pair[1]["invoice_id"], "inv_1");
        assert_eq!(pair[1]["transaction"], "0xab");
    }
}

/// The audit log's entries.
pub(super) fn audit_lines(state_dir: &std::path::Path) -> Vec<Value> {
    std::fs::read_to_string(state_dir.join("audit.jsonl"))
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// Fix: every payment signed for a device is in the audit log as it is recorded (the agent's own amount,
/// recipient, network and id), and so is how it ended: `pending` (kept, the facilitator failed), then
/// `settled` when the device's same request collects it; `unknown` (a conflict after sending: kept, it may
/// have been charged); `refused` (nothing charged). Before, only a paid 2xx was logged, with the facilitator's
/// figures: a payment ending unknown, still pending or abandoned left no line although its spend was kept.
#[tokio::test]
async fn every_payment_signed_is_in_the_audit_log_and_how_it_ended() {
    let upstream = crate::testing::facilitator(vec![
        (500, json!({"error": {"message": "down"}})),
        (200, crate::testing::sim_answer("8902")),
        (
            409,
            json!({"error": {"message": "invoice held by another payment"}}),
        ),
        (
            402,
            json!({"error": {"code": "invalid_signature", "message": "no"}, "charged": false}),
        ),
    ])
    .await;
    let dir = tempfile::tempdir().unwrap();
    let addr = proxy(&upstream.url, dir.path(), LIMITS).await;
    let buy = |mb: u8| {
        request(
            addr,
            "POST",
            "/v1/esim/activate",
            "",
            &format!(r#"{{"region":"us-west","data_mb":{mb}}}"#),
        )
    };
    assert_eq!(exchange(addr, &buy(1)).await.0, 503);
    assert_eq!(exchange(addr, &buy(1)).await.0, 200, "collected");
    assert_eq!(exchange(addr, &buy(2)).await.0, 409);
    assert_eq!(exchange(addr, &buy(3)).await.0, 402);
    let log = audit_lines(dir.path());
    let events: Vec<&str> = log.iter().map(|l| l["event"].as_str().unwrap()).collect();
    assert_eq!(
        events,
        [
            "signed", "pending", "settled", "signed", "unknown", "signed", "refused"
        ],
        "{log:?}"
    );
    for l in &log {
        assert_eq!(l["device"], "127.0.0.1", "{l}");
        assert_eq!(l["amount_usdc"], "0.42", "the agent's own: {l}");
        assert_eq!(l["network"], "eip155:31337", "{l}");
        assert_eq!(
            l["pay_to"], "0x3C44CdDdB6a900fa2b585dd299e03d12FA4293BC",
            "{l}"
        );
        assert!(l["payment_id"].as_str().unwrap().starts_with("pay_"), "{l}");
    }
    assert_eq!(
        log[0]["payment_id"], log[2]["payment_id"],
        "the same payment"
    );
    assert_eq!(log[2]["transaction"], "0xab");
    assert_eq!(log[2]["invoice_id"], "inv_1");
    assert!(
        !log.iter()
            .any(|l| l.to_string().contains("LPA:") || l.to_string().contains("sim_secret"))
    );
}

/// Fix: a device's directory is made only once a payment is signed for it (a refusal by its budget leaves
/// nothing on disk), so a client naming ever new device ids does not fill the disk. Before, every id whose
/// paid route drew a 402 got `devices/<id>/` and a lock file.
#[tokio::test]
async fn a_device_gets_a_directory_only_once_a_payment_is_signed() {
    let upstream = asks_everywhere().await;
    let dir = tempfile::tempdir().unwrap();
    let addr = proxy_with(&upstream.url, dir.path(), LIMITS, |s| {
        s.device_header = Some("x-device-id".into());
        s.device_max_per_payment = "0.10".parse().unwrap();
    })
    .await;
    let buy = |id: &str| {
        request(
            addr,
            "POST",
            "/v1/esim/activate",
            &format!("x-device-id: {id}\r\n"),
            r#"{"region":"us-west","data_mb":1}"#,
        )
    };
    for n in 0..5 {
        let (status, answer) = exchange(addr, &buy(&format!("pump-{n}"))).await;
        assert_eq!(status, 403, "{answer}");
    }
    // The device header twice: refused before anything else (before, the first was taken).
    let (status, answer) = exchange(addr, &buy("pump-1\r\nx-device-id: pump-2")).await;
    assert_eq!(status, 400, "{answer}");
    assert!(answer.to_string().contains("sent twice"), "{answer}");
    assert!(upstream.payments().is_empty());
    assert!(
        !dir.path().join("devices").exists(),
        "{:?}",
        std::fs::read_dir(dir.path().join("devices")).map(|d| d.count())
    );

    let upstream = asks_everywhere().await;
    let dir = tempfile::tempdir().unwrap();
    let addr = proxy_with(&upstream.url, dir.path(), LIMITS, |s| {
        s.device_header = Some("x-device-id".into());
    })
    .await;
    assert_eq!(exchange(addr, &buy("pump-9")).await.0, 200);
    let state = StateDir::new(dir.path().join("devices/pump-9"))
        .load()
        .unwrap();
    assert_eq!(state.spends.len(), 1, "paid, and recorded where it belongs");
    assert!(
        dir.path().join("devices/pump-9/lock").exists(),
        "locked as it signed"
    );
}

/// Fix: a 403 over budget names the limit that refused the payment (the device's per-payment or per-day limit,
/// the wallet's own per-payment or daily cap, or the daily cap every device shares) and the amounts. Before,
/// every one read "device d1 (or the wallet all devices share): max_per_…", naming neither.
#[tokio::test]
async fn an_over_budget_refusal_names_the_limit_and_the_amounts() {
    let buy = |addr: SocketAddr, id: &str| {
        request(
            addr,
            "POST",
            "/v1/esim/activate",
            &format!("x-device-id: {id}\r\n"),
            r#"{"region":"us-west","data_mb":1}"#,
        )
    };
    let upstream = asks_everywhere().await;
    let dir = tempfile::tempdir().unwrap();
    let addr = proxy_with(&upstream.url, dir.path(), LIMITS, |s| {
        s.device_header = Some("x-device-id".into());
        s.device_max_per_payment = "0.10".parse().unwrap();
    })
    .await;
    let (status, answer) = exchange(addr, &buy(addr, "pump-1")).await;
    assert_eq!(status, 403, "{answer}");
    assert_eq!(
        answer["error"]["message"],
        "device_max_per_payment (--device-max-per-payment): device pump-1 may pay at most 0.10 USDC per payment, \
         and the offer costs 0.42 USDC; nothing was paid"
    );

    let upstream = asks_everywhere().await;
    let dir = tempfile::tempdir().unwrap();
    let addr = proxy_with(&upstream.url, dir.path(), LIMITS, |s| {
        s.device_header = Some("x-device-id".into());
        s.device_max_per_day = "0.50".parse().unwrap();
    })
    .await;
    assert_eq!(exchange(addr, &buy(addr, "pump-2")).await.0, 200);
    let (status, answer) = exchange(addr, &buy(addr, "pump-2")).await;
    assert_eq!(status, 403, "{answer}");
    assert_eq!(
        answer["error"]["message"],
        "device_max_per_day (--device-max-per-day): device pump-2 may pay at most 0.50 USDC a day; it has spent \
         0.42 USDC today, and this payment of 0.42 USDC would take it past that; nothing was paid"
    );

    // The wallet's own limits, as the policy narrowed by the device's limits decides which refused.
    use crate::policy::PolicyRefusal;
    let usdc = |s: &str| s.parse::<esim402_core::UsdcAmount>().unwrap();
    let settings = ProxySettings {
        device_header: None,
        device_max_per_payment: usdc("9"),
        device_max_per_day: usdc("50"),
        audit_log: dir.path().join("audit.jsonl"),
        state_dir: dir.path().to_owned(),
    };
    let policy = SpendPolicy::default();
    let said =
        |refusal: PolicyRefusal| super::shared::over_budget("d1", &refusal, &policy, &settings);
    assert_eq!(
        said(PolicyRefusal::MaxPerPayment {
            price: usdc("6"),
            max: policy.max_per_payment_usdc,
        }),
        "max_per_payment_usdc (the wallet's spend policy): at most 5.00 USDC per payment, and the offer costs \
         6.00 USDC; nothing was paid"
    );
    assert_eq!(
        said(PolicyRefusal::MaxPerDay {
            spent: usdc("19.8"),
            price: usdc("0.42"),
            max: policy.max_per_day_usdc,
        }),
        "max_per_day_usdc (the wallet's spend policy): at most 20.00 USDC a day; device d1 alone has spent 19.80 \
         USDC today, and this payment of 0.42 USDC would take it past that; nothing was paid"
    );
    assert_eq!(
        said(PolicyRefusal::WalletMaxPerDay {
            spent: usdc("19.8"),
            price: usdc("0.42"),
            max: policy.max_per_day_usdc,
        }),
        "max_per_day_usdc (the wallet's spend policy, shared by every device): at most 20.00 USDC a day for all \
         devices together; they have spent 19.80 USDC today, and this payment of 0.42 USDC would take them past \
         that; nothing was paid"
    );
    assert_eq!(
        said(PolicyRefusal::Network("eip155:8453".into())),
        "spend policy refused the payment for device d1: networks: eip155:8453 is not an allowed network; nothing \
         was paid"
    );
}

/// An agent that locks its directory only as it signs refuses the payment when another command holds the
/// directory by then: nothing sent, nothing recorded, the wallet's shared cap given back.
#[tokio::test]
async fn a_lock_taken_at_signing_that_is_held_refuses_the_payment() {
    let upstream = asks_everywhere().await;
    let dir = tempfile::tempdir().unwrap();
    let wallet = tempfile::tempdir().unwrap();
    let budget = Arc::new(crate::budget::Budget::new(
        "5".parse().unwrap(),
        StateDir::new(wallet.path()),
    ));
    let held = StateDir::new(dir.path()).lock().unwrap();
    let agent = crate::testing::agent(&upstream.url, dir.path())
        .with_budget(budget)
        .lock_on_sign();
    let e = agent
        .pay_for_device(
            "/v1/esim/activate?region=us-west&data_mb=1",
            None,
            &[],
            "device d",
            &crate::testing::plain_slot("GET", "/"),
        )
        .await
        .unwrap_err();
    assert!(
        matches!(e, AgentError::Unavailable { pending: false, .. }),
        "{e}"
    );
    assert!(e.to_string().contains("in use"), "{e}");
    assert!(upstream.payments().is_empty());
    assert!(agent.state().load().unwrap().spends.is_empty());
    assert!(
        StateDir::new(wallet.path())
            .load()
            .unwrap()
            .spends
            .is_empty()
    );
    drop(held);
}

/// Fix: a facilitator answer over [`crate::client::MAX_ANSWER`] is not forwarded (502), not read whole and
/// copied to the device.
#[tokio::test]
async fn an_answer_over_the_limit_is_not_forwarded() {
    let huge = "x".repeat(crate::client::MAX_ANSWER + 1);
    let upstream =
        crate::testing::Server::start(move |_| (200, vec![], Value::String(huge.clone()))).await;
    let dir = tempfile::tempdir().unwrap();
    let addr = proxy(&upstream.url, dir.path(), LIMITS).await;
    let get = request(addr, "GET", "/v1/esim/8901", "", "");
    let (status, answer) = exchange(addr, &get).await;
    assert_eq!(status, 502, "{answer}");
    assert!(
        answer["error"]["message"]
            .as_str()
            .unwrap()
            .contains("over 4 MiB"),
        "{answer}"
    );
}

/// A device's own credential, sign-in and label reach the facilitator, on the forwarded request and on the
/// proxy's paid ones; nothing else it sends does (hop-by-hop headers, cookies, those its `Connection` names).
/// A request carrying a payment is refused, nothing forwarded. Before, only `Content-Type` was forwarded and
/// a device's payment headers were silently dropped (and its request paid by the proxy).
#[tokio::test]
async fn a_devices_credentials_are_forwarded_and_its_payments_refused() {
    let upstream = asks_everywhere().await;
    let dir = tempfile::tempdir().unwrap();
    let addr = proxy(&upstream.url, dir.path(), LIMITS).await;
    let own =
        "authorization: Bearer sim_tok\r\nx-agent-id: pump-7\r\nsign-in-with-x: siwx-proof\r\n";
    let others = "proxy-authorization: Basic eA==\r\nkeep-alive: timeout=5\r\nte: trailers\r\n\
                  cookie: a=b\r\nx-custom: 1\r\nx-invoice-id: inv_1\r\n";
    let body = r#"{"carrier":"verizon"}"#;
    let switch = request(
        addr,
        "POST",
        "/v1/esim/8901/switch",
        &format!("{own}{others}"),
        body,
    );
    assert_eq!(exchange(addr, &switch).await.0, 200);
    let seen = upstream.seen();
    assert_eq!(seen.len(), 3, "the device's, the agent's, the paid one");
    for s in &seen {
        assert_eq!(s.header("authorization"), Some("Bearer sim_tok"));
        assert_eq!(s.header("x-agent-id"), Some("pump-7"));
        assert_eq!(s.header("sign-in-with-x"), Some("siwx-proof"));
        for name in [
            "proxy-authorization",
            "keep-alive",
            "te",
            "cookie",
            "x-custom",
            "x-invoice-id",
        ] {
            assert_eq!(s.header(name), None, "{name}");
        }
    }
    assert!(seen[2].header("payment-signature").is_some());

    // A header the device's `Connection` names is hop-by-hop: not forwarded.
    let hop = request(
        addr,
        "GET",
        "/v1/esim/8901",
        "x-agent-id: pump-7\r\nconnection: x-agent-id\r\n",
        "",
    );
    exchange(addr, &hop).await;
    assert_eq!(upstream.seen().pop().unwrap().header("x-agent-id"), None);

    let before = upstream.seen().len();
    for (header, why) in [
        ("payment-signature: eyJ4\r\n", "PAYMENT-SIGNATURE"),
        ("x-payment: eyJ4\r\n", "X-PAYMENT"),
        (
            "x-payment-proof: 0x0000000000000000000000000000000000000000000000000000000000000001\r\n",
            "X-Payment-Proof",
        ),
        (
            "x-payment-proof-signature: 0x01\r\n",
            "X-Payment-Proof-Signature",
        ),
        (
            "payment-identifier: pay_0123456789abcdef\r\n",
            "payment-identifier",
        ),
        (
            "authorization: Bearer a\r\nauthorization: Bearer b\r\n",
            "a credential sent twice",
        ),
    ] {
        let paid = request(addr, "POST", "/v1/esim/8901/switch", header, body);
        let (status, answer) = exchange(addr, &paid).await;
        assert_eq!(status, 400, "{why}: {answer}");
    }
    assert_eq!(upstream.seen().len(), before, "nothing forwarded");
    assert_eq!(upstream.payments().len(), 1);
}

/// A client that never finishes its headers is disconnected, and past the connection cap new connections
/// wait until one ends. Before, the first held its task forever and nothing capped the connections.
#[tokio::test]
async fn slow_clients_are_cut_off_and_connections_are_capped() {
    let upstream = crate::testing::facilitator(vec![]).await;
    let dir = tempfile::tempdir().unwrap();
    let quick = Limits {
        header_read: Duration::from_millis(200),
        ..LIMITS
    };
    let addr = proxy(&upstream.url, dir.path(), quick).await;
    let mut slow = tokio::net::TcpStream::connect(addr).await.unwrap();
    slow.write_all(b"GET /health HTTP/1.1\r\nhost: 127.0.0.1\r\n")
        .await
        .unwrap();
    let mut buf = [0u8; 64];
    let end = tokio::time::timeout(Duration::from_secs(20), slow.read(&mut buf)).await;
    assert!(
        matches!(end, Ok(Ok(0) | Err(_))),
        "disconnected without an answer: {end:?}"
    );

    let dir = tempfile::tempdir().unwrap();
    let one = Limits {
        max_connections: 1,
        header_read: Duration::from_secs(600),
        ..LIMITS
    };
    let addr = proxy(&upstream.url, dir.path(), one).await;
    let idle = tokio::net::TcpStream::connect(addr).await.unwrap();
    // Served at once when alone (refused: no upstream needed)...
    let refused = "GET / HTTP/1.1\r\norigin: x\r\nconnection: close\r\n\r\n";
    let waiting = tokio::spawn(raw(addr, refused));
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!waiting.is_finished(), "served beside the idle connection");
    drop(idle);
    let status = tokio::time::timeout(Duration::from_secs(20), waiting).await;
    assert_eq!(
        status.unwrap().unwrap(),
        403,
        "served once the slot was free"
    );
}

/// Fix (a review): a client that asks for large answers and never reads them is cut off once a write makes no
/// progress for the write limit, and its connection slot serves the next client. Before, only reading a
/// request had a time limit: such clients held every slot for ever.
#[tokio::test]
async fn a_client_that_never_reads_its_answer_does_not_hold_its_slot() {
    let upstream = crate::testing::Server::start(|seen| {
        let big = "x".repeat(1024 * 1024);
        match seen.target.as_str() {
            "/small" => (200, vec![], json!({"ok": true})),
            _ => (200, vec![], json!({ "big": big })),
        }
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let one = Limits {
        max_connections: 1,
        header_read: Duration::from_secs(600),
        write: Duration::from_millis(300),
        ..LIMITS
    };
    let addr = proxy(&upstream.url, dir.path(), one).await;
    // Far more answer than the socket buffers on both ends hold: the proxy's writes stall.
    let mut reader_that_never_reads = tokio::net::TcpStream::connect(addr).await.unwrap();
    let ask = format!(
        "GET /big HTTP/1.1\r\nhost: 127.0.0.1:{}\r\n\r\n",
        addr.port()
    );
    reader_that_never_reads
        .write_all(ask.repeat(48).as_bytes())
        .await
        .unwrap();
    let small = request(addr, "GET", "/small", "", "");
    // A guard only, so that a failure ends the test: the answer comes once the stalled write times out.
    let served = tokio::time::timeout(Duration::from_secs(120), exchange(addr, &small))
        .await
        .expect("the second client served");
    assert_eq!(served, (200, json!({"ok": true})));
    assert!(
        upstream.seen().iter().any(|s| s.target == "/big"),
        "the first client's answers were forwarded"
    );
    drop(reader_that_never_reads);
}

/// A request head past the proxy's limit is refused (431), not buffered: hyper's default let each connection
/// hold ~400 KiB of unfinished headers. Twice the limit, as hyper checks it between reads (one read may
/// overshoot it); the proxy may close the connection on the rest of the head unread, resetting it before the
/// 431 is read: refused either way, nothing forwarded.
#[tokio::test]
async fn a_request_head_over_the_limit_is_refused() {
    let upstream = crate::testing::facilitator(vec![]).await;
    let dir = tempfile::tempdir().unwrap();
    let addr = proxy(&upstream.url, dir.path(), LIMITS).await;
    let padding = format!("x-padding: {}\r\n", "a".repeat(64 * 1024));
    let huge = request(addr, "GET", "/health", &padding, "");
    let mut conn = tokio::net::TcpStream::connect(addr).await.unwrap();
    let _ = conn.write_all(huge.as_bytes()).await;
    let mut answer = Vec::new();
    let _ = conn.read_to_end(&mut answer).await;
    let answer = String::from_utf8_lossy(&answer);
    assert!(
        answer.is_empty() || answer.starts_with("HTTP/1.1 431"),
        "{answer}"
    );
    assert!(upstream.seen().is_empty(), "nothing forwarded");
}

/// The gateway's state directory is private (0700) when the proxy creates it, and so is its audit log
/// (0600). Before, both had the default mode.
#[cfg(unix)]
#[tokio::test]
async fn the_state_directory_and_audit_log_are_private() {
    use std::os::unix::fs::PermissionsExt as _;
    let upstream = crate::testing::facilitator(vec![(200, json!({"paid": true}))]).await;
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("gateway");
    let addr = proxy(&upstream.url, &state, LIMITS).await;
    let paid = request(
        addr,
        "POST",
        "/v1/esim/activate",
        "",
        r#"{"region":"us-west","data_mb":1}"#,
    );
    assert_eq!(raw(addr, &paid).await, 200);
    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&state), 0o700);
    assert_eq!(mode(&state.join("audit.jsonl")), 0o600);
}

/// A state directory and an audit log that existed before the proxy, readable by others, are made private
/// (0700, 0600). Before, only ones the proxy created were.
#[cfg(unix)]
#[tokio::test]
async fn an_existing_state_directory_and_audit_log_are_made_private() {
    use std::os::unix::fs::PermissionsExt as _;
    let upstream = crate::testing::facilitator(vec![(200, json!({"paid": true}))]).await;
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("gateway");
    std::fs::create_dir(&state).unwrap();
    std::fs::set_permissions(&state, std::fs::Permissions::from_mode(0o755)).unwrap();
    let log = state.join("audit.jsonl");
    std::fs::write(&log, "").unwrap();
    std::fs::set_permissions(&log, std::fs::Permissions::from_mode(0o644)).unwrap();
    let addr = proxy(&upstream.url, &state, LIMITS).await;
    let buy = request(
        addr,
        "POST",
        "/v1/esim/activate",
        "",
        r#"{"region":"us-west","data_mb":1}"#,
    );
    assert_eq!(exchange(addr, &buy).await.0, 200);
    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&state), 0o700);
    assert_eq!(mode(&log), 0o600);
}

/// A paid answer the proxy cannot save (the device's state unwritable) keeps the payment pending, and the
/// device is told that it was paid and that the same request collects it: a 503, and the same request
/// sent again sends the very same payment and answers with the SIM. Before, a bare 500 "internal".
#[tokio::test]
async fn a_paid_answer_that_cannot_be_saved_is_collected_by_the_same_request() {
    let dir = tempfile::tempdir().unwrap();
    let (upstream, file, aside) = unsaved_once(dir.path(), "8903", None).await;
    let addr = proxy(&upstream.url, dir.path(), LIMITS).await;
    let buy = request(
        addr,
        "POST",
        "/v1/esim/activate",
        "",
        r#"{"region":"us-west","data_mb":1}"#,
    );
    let (status, answer) = exchange(addr, &buy).await;
    assert_eq!(status, 503, "{answer}");
    let message = answer["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("paid for") && message.contains("send the same request again"),
        "{message}"
    );
    restore(&file, &aside);
    let (status, answer) = exchange(addr, &buy).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["iccid"], "8903");
    let paid = upstream.payments();
    assert_eq!(paid.len(), 2);
    assert_eq!(paid[0], paid[1], "the same payment, collected");
}

/// A payment kept pending is sent again before the request is forwarded unpaid: once paid, the facilitator may
/// no longer answer that request 402 (a switch already made answers 409), and forwarding it unpaid first handed
/// the device that 409 while its paid switch stayed pending for good (a review, thirty-first session).
#[tokio::test]
async fn a_pending_payment_is_sent_again_before_the_request_is_forwarded_unpaid() {
    let dir = tempfile::tempdir().unwrap();
    let refused = json!({"error": {"code": "conflict", "message": "already switched"}});
    let (upstream, file, aside) = unsaved_once(dir.path(), "8904", Some((409, refused))).await;
    let addr = proxy(&upstream.url, dir.path(), LIMITS).await;
    let switch = request(
        addr,
        "POST",
        "/v1/esim/8901/switch",
        "",
        r#"{"carrier":"verizon"}"#,
    );
    let (status, answer) = exchange(addr, &switch).await;
    assert_eq!(status, 503, "{answer}");
    restore(&file, &aside);
    let unpaid_before = unpaid(&upstream);
    let (status, answer) = exchange(addr, &switch).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["iccid"], "8904");
    assert_eq!(
        unpaid(&upstream),
        unpaid_before,
        "not forwarded unpaid first"
    );
    let paid = upstream.payments();
    assert_eq!(paid.len(), 2);
    assert_eq!(paid[0], paid[1], "the same payment, collected");
}

fn unpaid(upstream: &crate::testing::Server) -> usize {
    upstream
        .seen()
        .iter()
        .filter(|s| s.header("payment-signature").is_none())
        .count()
}

/// A body declared larger than the proxy forwards is refused at once (413), before it is read: before, the
/// proxy waited for the 20 MB it would never take until the body's deadline and answered 408 (a fresh-user
/// trial, thirty-first session). Nothing is forwarded.
#[tokio::test]
async fn a_body_declared_too_large_is_refused_before_it_is_read() {
    let upstream = crate::testing::facilitator(vec![(200, json!({"paid": true}))]).await;
    let dir = tempfile::tempdir().unwrap();
    let addr = proxy(&upstream.url, dir.path(), LIMITS).await;
    let head = format!(
        "POST /v1/esim/activate HTTP/1.1\r\nhost: 127.0.0.1:{}\r\ncontent-type: application/json\r\n\
         content-length: 20000000\r\n\r\n{{\"region\":",
        addr.port()
    );
    assert_eq!(raw(addr, &head).await, 413);
    assert!(upstream.seen().is_empty());
}

/// A facilitator that asks a payment of an unpaid request (once paid, answers it with `after_paid` instead,
/// if given) and sells SIM `iccid` to a paid one; the first payment it sees makes the device's state unwritable
/// (a directory where its file goes), so that paid answer cannot be saved and the payment stays pending. With
/// the state file's path and where it was moved ([`restore`]).
async fn unsaved_once(
    dir: &std::path::Path,
    iccid: &'static str,
    after_paid: Option<(u16, Value)>,
) -> (
    crate::testing::Server,
    std::path::PathBuf,
    std::path::PathBuf,
) {
    let file = dir.join("devices/127.0.0.1/state.json");
    let aside = file.with_extension("aside");
    let paid_once = std::sync::atomic::AtomicBool::new(false);
    let (path, moved) = (file.clone(), aside.clone());
    let upstream = crate::testing::Server::start(move |seen| {
        if seen.header("payment-signature").is_none() {
            return match &after_paid {
                Some((status, body)) if paid_once.load(std::sync::atomic::Ordering::SeqCst) => {
                    (*status, vec![], body.clone())
                }
                _ => crate::testing::challenge(seen),
            };
        }
        if !paid_once.swap(true, std::sync::atomic::Ordering::SeqCst) {
            std::fs::rename(&path, &moved).unwrap();
            std::fs::create_dir_all(path.join("x")).unwrap();
        }
        (200, vec![], crate::testing::sim_answer(iccid))
    })
    .await;
    (upstream, file, aside)
}

/// The device's state file back where [`unsaved_once`] moved it from.
fn restore(file: &std::path::Path, aside: &std::path::Path) {
    std::fs::remove_dir_all(file).unwrap();
    std::fs::rename(aside, file).unwrap();
}
