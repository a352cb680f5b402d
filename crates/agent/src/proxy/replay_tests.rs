//! Kept paid answers as a device meets them through a real proxy ([`crate::replay`]): replayed to the same
//! requester's retry, never to another's (another credential or label, a device id claimed by a header without
//! the request's `Idempotency-Key`, a sign-in), and a top-up sent again bought again.

#![allow(clippy::unwrap_used, reason = "tests")]

use serde_json::Value;

use super::server::LIMITS;
use super::tests::{asks_everywhere, audit_lines, exchange, proxy, proxy_with, request};

/// Fix: a device that lost a paid answer (a reboot, roaming) and sends the same request again is answered with
/// the answer kept in its state when the payment settled, and nothing is forwarded or paid again; an
/// `Idempotency-Key` names a request instead of its content (a new key buys again, a key sent with another
/// request is refused). Before, the proxy kept no copy: the same request drew a new 402 and a second payment.
#[tokio::test]
async fn a_paid_request_sent_again_is_answered_with_its_kept_answer_not_paid_again() {
    let upstream = asks_everywhere().await;
    let dir = tempfile::tempdir().unwrap();
    let addr = proxy(&upstream.url, dir.path(), LIMITS).await;
    let body = r#"{"region":"us-west","data_mb":1}"#;
    let buy = |headers: &str, body: &str| request(addr, "POST", "/v1/esim/activate", headers, body);
    let (status, first) = exchange(addr, &buy("", body)).await;
    assert_eq!(status, 200, "{first}");
    assert_eq!(first["access_token"], "sim_secret_8902");
    let forwarded = upstream.seen().len();
    let (status, again) = exchange(addr, &buy("", body)).await;
    assert_eq!((status, &again), (200, &first), "the very answer");
    assert_eq!(upstream.payments().len(), 1, "paid once");
    assert_eq!(
        upstream.seen().len(),
        forwarded,
        "the repeat was not even forwarded"
    );
    // Another purchase (another body) is paid.
    let (status, _) = exchange(addr, &buy("", r#"{"region":"us-west","data_mb":2}"#)).await;
    assert_eq!(status, 200);
    assert_eq!(upstream.payments().len(), 2);
    // With an Idempotency-Key: a new key buys the same again, the same key is answered, and the key sent with
    // another request is refused, nothing paid.
    let (status, _) = exchange(addr, &buy("idempotency-key: k-1\r\n", body)).await;
    assert_eq!(status, 200);
    assert_eq!(upstream.payments().len(), 3, "a new key: a new purchase");
    let (status, _) = exchange(addr, &buy("idempotency-key: k-1\r\n", body)).await;
    assert_eq!(status, 200);
    let other = r#"{"region":"eu-west","data_mb":1}"#;
    let (status, refused) = exchange(addr, &buy("idempotency-key: k-1\r\n", other)).await;
    assert_eq!(status, 422, "{refused}");
    assert_eq!(upstream.payments().len(), 3);
    // Kept in the device's private state file; the audit log says it was replayed, without the secrets.
    let file = dir.path().join("devices/127.0.0.1/state.json");
    let state: Value = serde_json::from_slice(&std::fs::read(&file).unwrap()).unwrap();
    assert_eq!(state["paid_answers"].as_object().unwrap().len(), 3);
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(&file).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
    }
    let log = audit_lines(dir.path());
    let replayed: Vec<_> = log.iter().filter(|l| l["event"] == "replayed").collect();
    assert_eq!(replayed.len(), 2, "{log:?}");
    assert_eq!(replayed[0]["transaction"], "0xab");
    assert!(
        !log.iter()
            .any(|l| l.to_string().contains("LPA:") || l.to_string().contains("sim_secret"))
    );
}

/// A device's quota or top-up request sent again with the same body is another purchase (a device asks for more
/// data whenever it runs low), never answered with the first one's kept answer; with an `Idempotency-Key` it is
/// (a lost answer, sent again). A first version of the kept answers replayed every paid route by its body, so
/// a device's second top-up within 15 minutes got the first one's stale answer and no data.
#[tokio::test]
async fn a_top_up_sent_again_without_a_key_buys_again() {
    let upstream = asks_everywhere().await;
    let dir = tempfile::tempdir().unwrap();
    let addr = proxy(&upstream.url, dir.path(), LIMITS).await;
    let top_up = |headers: &str| {
        request(
            addr,
            "POST",
            "/v1/esim/8901/data",
            headers,
            r#"{"top_up_mb":100}"#,
        )
    };
    for expected in [1, 2] {
        let (status, answer) = exchange(addr, &top_up("")).await;
        assert_eq!(status, 200, "{answer}");
        assert_eq!(upstream.payments().len(), expected);
    }
    for _ in 0..2 {
        let (status, answer) = exchange(addr, &top_up("idempotency-key: t-1\r\n")).await;
        assert_eq!(status, 200, "{answer}");
        assert_eq!(
            upstream.payments().len(),
            3,
            "the key's retry is not paid again"
        );
    }
}

/// Fix: a kept answer goes back only to the requester that paid it: the same switch with another SIM token (a
/// second module behind the same address), without one, or with another label is forwarded and paid on its own;
/// the same token's retry is answered with the kept answer; a request signing in with `Sign-In-With-X` is
/// never answered with a kept answer. Before, the slot was method, path and body alone: the second module got
/// the first one's activation code and access token, and a switch was answered without the SIM's token.
#[tokio::test]
async fn a_kept_answer_goes_back_only_to_the_requester_that_paid_it() {
    let upstream = asks_everywhere().await;
    let dir = tempfile::tempdir().unwrap();
    let addr = proxy(&upstream.url, dir.path(), LIMITS).await;
    let body = r#"{"region":"eu-west"}"#;
    let switch = |headers: &str| request(addr, "POST", "/v1/esim/8901/switch", headers, body);
    let mine = "authorization: Bearer sim_a\r\n";
    for (headers, paid) in [
        (mine, 1),
        ("authorization: Bearer sim_b\r\n", 2),
        ("", 3),
        (mine, 3),
        ("authorization: Bearer sim_a\r\nx-agent-id: pump-2\r\n", 4),
    ] {
        let (status, answer) = exchange(addr, &switch(headers)).await;
        assert_eq!(status, 200, "{headers}: {answer}");
        assert_eq!(upstream.payments().len(), paid, "{headers}");
    }
    let replayed = audit_lines(dir.path())
        .iter()
        .filter(|l| l["event"] == "replayed")
        .count();
    assert_eq!(replayed, 1, "the same token's retry only");
    let signed_in = "sign-in-with-x: e30=\r\n";
    for paid in [5, 6] {
        let buy = request(addr, "POST", "/v1/esim/activate", signed_in, body);
        let (status, answer) = exchange(addr, &buy).await;
        assert_eq!(status, 200, "{answer}");
        assert_eq!(
            upstream.payments().len(),
            paid,
            "a sign-in is never replayed"
        );
    }
}

/// Fix: a device named by `--device-header` (any client may claim its id) is answered with a kept answer only
/// for the same `Idempotency-Key` from the same requester: without a key its request is paid again (over its
/// budget, refused), and another client claiming its id with its key but not its token is refused (422),
/// nothing paid. Before, anyone naming the device and guessing its body got its activation code and token.
#[tokio::test]
async fn a_device_named_by_a_header_is_answered_again_only_by_its_key() {
    let upstream = asks_everywhere().await;
    let dir = tempfile::tempdir().unwrap();
    let addr = proxy_with(&upstream.url, dir.path(), LIMITS, |s| {
        s.device_header = Some("x-device-id".into());
    })
    .await;
    let body = r#"{"region":"us-west","data_mb":1}"#;
    let buy = |headers: &str| {
        let headers = format!("x-device-id: pump-1\r\n{headers}");
        request(addr, "POST", "/v1/esim/activate", &headers, body)
    };
    for paid in [1, 2] {
        let (status, answer) = exchange(addr, &buy("")).await;
        assert_eq!(status, 200, "{answer}");
        assert_eq!(upstream.payments().len(), paid, "no key: never replayed");
    }
    let keyed = "idempotency-key: k-1\r\nauthorization: Bearer mine\r\n";
    for _ in 0..2 {
        let (status, answer) = exchange(addr, &buy(keyed)).await;
        assert_eq!(status, 200, "{answer}");
        assert_eq!(upstream.payments().len(), 3, "the key's retry: replayed");
    }
    let claimed = "idempotency-key: k-1\r\nauthorization: Bearer theirs\r\n";
    let (status, answer) = exchange(addr, &buy(claimed)).await;
    assert_eq!(status, 422, "{answer}");
    assert!(answer.get("access_token").is_none(), "{answer}");
    assert_eq!(upstream.payments().len(), 3);
}

/// Fix: the same JSON written again (another key order, other spacing) is answered with the kept answer, not
/// paid again. Before, the replay digested the raw bytes while the pending payment's key was the parsed JSON.
#[tokio::test]
async fn the_same_json_written_otherwise_is_answered_with_its_kept_answer() {
    let upstream = asks_everywhere().await;
    let dir = tempfile::tempdir().unwrap();
    let addr = proxy(&upstream.url, dir.path(), LIMITS).await;
    let buy = |body: &str| request(addr, "POST", "/v1/esim/activate", "", body);
    let (status, first) = exchange(addr, &buy(r#"{"region":"us-west","data_mb":1}"#)).await;
    assert_eq!(status, 200, "{first}");
    let (status, again) =
        exchange(addr, &buy("{ \"data_mb\": 1,\n  \"region\": \"us-west\" }")).await;
    assert_eq!((status, &again), (200, &first));
    assert_eq!(upstream.payments().len(), 1, "paid once");
    let query = |q: &str| request(addr, "GET", &format!("/v1/esim/activate?{q}"), "", "");
    let (status, first) = exchange(addr, &query("region=us-west&data_mb=2")).await;
    assert_eq!(status, 200, "{first}");
    let (status, again) = exchange(addr, &query("data_mb=2&region=us-west")).await;
    assert_eq!((status, &again), (200, &first));
    assert_eq!(upstream.payments().len(), 2, "paid once each");
}
