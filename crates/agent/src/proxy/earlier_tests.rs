//! A device's earlier payment still pending for the same purchase, as a device meets it through a real proxy
//! (`client/device.rs`): sent again before a new one is signed, holding the new one back while it stays
//! pending, and never sent again for another requester's same request.

#![allow(clippy::unwrap_used, reason = "tests")]

use serde_json::json;

use super::server::LIMITS;
use super::tests::{exchange, proxy, proxy_with, request};

fn down() -> (u16, serde_json::Value) {
    (
        503,
        json!({"error": {"code": "unavailable", "message": "down"}}),
    )
}

/// Fix (a review, thirty-third session): a device whose paid activation was left pending and which then asks
/// for another activation (another `data_mb`) gets no second payment signed while the first stays pending (503);
/// once the facilitator answers, the first is collected and kept for its own request, and only then is the new
/// one paid. Before, the second request was paid at once: two SIMs for one device's one need.
#[tokio::test]
async fn an_earlier_payment_for_the_same_purchase_is_collected_before_a_new_one_is_signed() {
    let upstream = crate::testing::facilitator(vec![
        down(),
        down(),
        down(),
        (200, crate::testing::sim_answer("8901")),
        (200, crate::testing::sim_answer("8902")),
    ])
    .await;
    let dir = tempfile::tempdir().unwrap();
    let addr = proxy(&upstream.url, dir.path(), LIMITS).await;
    let buy = |body: &str| request(addr, "POST", "/v1/esim/activate", "", body);
    let first = r#"{"region":"us-west","data_mb":1}"#;
    let second = r#"{"region":"us-west","data_mb":2}"#;
    let (status, answer) = exchange(addr, &buy(first)).await;
    assert_eq!(status, 503, "{answer}");
    let (status, answer) = exchange(addr, &buy(second)).await;
    assert_eq!(status, 503, "{answer}");
    let message = answer["error"]["message"].as_str().unwrap();
    assert!(message.contains("still pending"), "{message}");
    let paid = upstream.payments();
    assert_eq!(
        paid.len(),
        2,
        "the first payment sent again, nothing new signed"
    );
    assert_eq!(paid[0], paid[1]);
    // A request of the same purchase that draws no 402 (this facilitator answers a GET for free) is answered:
    // only a payment waits.
    let free = request(
        addr,
        "GET",
        "/v1/esim/activate?region=us-west&data_mb=3",
        "",
        "",
    );
    let (status, answer) = exchange(addr, &free).await;
    assert_eq!((status, &answer), (200, &json!({"ok": true})));
    assert_eq!(
        upstream.payments().len(),
        3,
        "the first sent again before it"
    );

    let (status, answer) = exchange(addr, &buy(second)).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["iccid"], "8902");
    let paid = upstream.payments();
    assert_eq!(paid.len(), 5);
    assert_eq!(paid[3], paid[0], "the first collected first");
    assert_ne!(paid[4], paid[0], "then the new one paid");
    // The first request, sent again, gets the SIM its payment bought, kept when it was collected until that
    // request comes back (not only the 15 minutes of a kept answer: it was told it is never paid twice).
    let file = dir.path().join("devices/127.0.0.1/state.json");
    let state: serde_json::Value = serde_json::from_slice(&std::fs::read(&file).unwrap()).unwrap();
    assert_eq!(
        state["collected_answers"].as_object().unwrap().len(),
        1,
        "{state}"
    );
    let (status, answer) = exchange(addr, &buy(first)).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["iccid"], "8901");
    assert_eq!(upstream.payments().len(), 5, "nothing more sent");
    let state: serde_json::Value = serde_json::from_slice(&std::fs::read(&file).unwrap()).unwrap();
    assert!(
        state.get("collected_answers").is_none(),
        "handed over once: {state}"
    );
    let log = super::tests::audit_lines(dir.path());
    let collected: Vec<_> = log
        .iter()
        .filter(|l| l["event"] == "settled" && l["collected_before"] == true)
        .collect();
    assert_eq!(collected.len(), 1, "{log:?}");
    assert_eq!(
        (
            &collected[0]["path"],
            &collected[0]["status"],
            &collected[0]["invoice_id"]
        ),
        (&json!("/v1/esim/activate"), &json!(200), &json!("inv_1"))
    );
}

/// Fix (a review): a purchase spelled another way (a trailing slash, a doubled one, an ICCID with its `F` pad),
/// which the gateway routes as the same purchase, is refused (400, naming the path as the proxy takes it)
/// before anything is forwarded or signed. Before, `/v1/esim/activate/` after a pending `/v1/esim/activate`
/// was another purchase to the proxy: it missed the pending payment and a second one was signed.
#[tokio::test]
async fn a_paid_route_spelled_otherwise_is_refused_before_anything_is_signed() {
    let upstream =
        crate::testing::facilitator(vec![down(), (200, crate::testing::sim_answer("8902"))]).await;
    let dir = tempfile::tempdir().unwrap();
    let addr = proxy(&upstream.url, dir.path(), LIMITS).await;
    let first = r#"{"region":"us-west","data_mb":1}"#;
    let (status, answer) =
        exchange(addr, &request(addr, "POST", "/v1/esim/activate", "", first)).await;
    assert_eq!(status, 503, "{answer}");
    assert_eq!(upstream.payments().len(), 1);
    let seen = upstream.seen().len();
    let second = r#"{"region":"us-west","data_mb":2}"#;
    for (path, canonical) in [
        ("/v1/esim/activate/", "/v1/esim/activate"),
        ("//v1/esim/activate", "/v1/esim/activate"),
        ("/v1/esim/activate/?", "/v1/esim/activate"),
        (
            "/v1/esim/8944478600003770170F/data",
            "/v1/esim/8944478600003770170/data",
        ),
        (
            "/v1/esim/8944478600003770170f/switch/",
            "/v1/esim/8944478600003770170/switch",
        ),
        // Dot segments, which the proxy's own client would resolve before forwarding (a trial).
        ("/v1/./esim/activate", "/v1/esim/activate"),
        (
            "/v1/esim/x/../8944478600003770170/data",
            "/v1/esim/8944478600003770170/data",
        ),
    ] {
        let (status, answer) = exchange(addr, &request(addr, "POST", path, "", second)).await;
        let message = answer["error"]["message"].as_str().unwrap_or_default();
        assert_eq!(status, 400, "{path}: {answer}");
        assert!(
            message.contains(&format!("to `{canonical}`")),
            "{path}: {message}"
        );
    }
    assert_eq!(
        upstream.payments().len(),
        1,
        "nothing signed, nor sent again"
    );
    assert_eq!(upstream.seen().len(), seen, "nothing forwarded");
    // The canonical spelling is served as before: the pending payment sent again, nothing new signed.
    let (status, answer) = exchange(
        addr,
        &request(addr, "POST", "/v1/esim/activate", "", second),
    )
    .await;
    assert_eq!(status, 200, "{answer}");
    let paid = upstream.payments();
    assert_eq!(paid.len(), 3);
    assert_eq!(paid[1], paid[0], "the first collected first");
}

/// A device named by a header and sending no key: its pending activation's answer could not be read back by
/// its own request if another collected it, so it holds the device's other activations back (503, not sent
/// again) while its authorization can still be settled; after that it is sent again for the operator (its
/// answer kept whole in the device's state) and the new activation is paid: nothing held back for ever.
#[tokio::test]
async fn an_unreadable_earlier_payment_holds_back_only_while_it_can_be_settled() {
    let upstream = crate::testing::facilitator(vec![
        down(),
        (200, crate::testing::sim_answer("8901")),
        (200, crate::testing::sim_answer("8902")),
    ])
    .await;
    let dir = tempfile::tempdir().unwrap();
    let addr = proxy_with(&upstream.url, dir.path(), LIMITS, |s| {
        s.device_header = Some("x-device-id".into());
    })
    .await;
    let buy = |body: &str| {
        request(
            addr,
            "POST",
            "/v1/esim/activate",
            "x-device-id: pump-1\r\n",
            body,
        )
    };
    let (status, answer) = exchange(addr, &buy(r#"{"region":"us-west","data_mb":1}"#)).await;
    assert_eq!(status, 503, "{answer}");
    let second = r#"{"region":"us-west","data_mb":2}"#;
    let (status, answer) = exchange(addr, &buy(second)).await;
    assert_eq!(status, 503, "{answer}");
    let message = answer["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("collects it") && message.contains("pending --forget"),
        "{message}"
    );
    assert!(
        !message.contains(&*dir.path().to_string_lossy()),
        "no path of the proxy's: {message}"
    );
    assert_eq!(
        upstream.payments().len(),
        1,
        "not sent again, nothing signed"
    );

    // Its authorization can no longer be settled: sent again once, for the operator, then the new one paid.
    let state_dir = crate::StateDir::new(dir.path().join("devices/pump-1"));
    state_dir
        .update(|s| s.pending.values_mut().for_each(|p| p.valid_before = 1))
        .unwrap();
    let (status, answer) = exchange(addr, &buy(second)).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["iccid"], "8902");
    let paid = upstream.payments();
    assert_eq!(paid.len(), 3);
    assert_eq!(paid[1], paid[0], "the first sent again before the new one");
    let state = state_dir.load().unwrap();
    assert!(state.pending.is_empty(), "{state:?}");
    assert_eq!(
        state.unrecorded_answers.values().next().unwrap()["iccid"],
        "8901",
        "kept for the operator"
    );
}

/// Fix (a review, thirty-third session): modules behind one address told apart by their label. A payment
/// pending for module A's activation is never sent again for module B's same request (it would hand B A's SIM,
/// and A would pay again): under A's `Idempotency-Key` B is refused (422), under its own told to send again
/// later (503), nothing signed either way; A's own resend collects it.
#[tokio::test]
async fn a_pending_payment_is_never_sent_again_for_another_requesters_same_request() {
    let upstream =
        crate::testing::facilitator(vec![down(), (200, crate::testing::sim_answer("8901"))]).await;
    let dir = tempfile::tempdir().unwrap();
    let addr = proxy(&upstream.url, dir.path(), LIMITS).await;
    let body = r#"{"region":"us-west","data_mb":1}"#;
    let a = "x-agent-id: a\r\nidempotency-key: K-1\r\n";
    let b_under_a_key = "x-agent-id: b\r\nidempotency-key: K-1\r\n";
    let b = "x-agent-id: b\r\nidempotency-key: K-2\r\n";
    let buy = |headers: &str| request(addr, "POST", "/v1/esim/activate", headers, body);
    let (status, answer) = exchange(addr, &buy(a)).await;
    assert_eq!(status, 503, "{answer}");
    let (status, answer) = exchange(addr, &buy(b_under_a_key)).await;
    assert_eq!(status, 422, "{answer}");
    let (status, answer) = exchange(addr, &buy(b)).await;
    assert_eq!(status, 503, "{answer}");
    assert!(answer.get("iccid").is_none(), "{answer}");
    assert!(
        answer["error"]["message"]
            .as_str()
            .unwrap()
            .contains("another requester"),
        "{answer}"
    );
    assert_eq!(
        upstream.payments().len(),
        1,
        "not sent for B, nothing signed"
    );
    let (status, answer) = exchange(addr, &buy(a)).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["iccid"], "8901");
    let paid = upstream.payments();
    assert_eq!((paid.len(), &paid[0]), (2, &paid[1]), "A's own, collected");
}

/// Fix (a fresh-user trial, thirty-third session): an `Idempotency-Key` whose payment is pending, sent with
/// another body, is refused (422) and nothing is paid; the first request under the key still collects its SIM.
/// Before, the pending payment was collected first and the new body paid too, its answer overwriting the first
/// one's under the key (two SIMs, the first one's code reaching nobody).
#[tokio::test]
async fn a_key_whose_payment_is_pending_is_refused_with_another_body() {
    let upstream =
        crate::testing::facilitator(vec![down(), (200, crate::testing::sim_answer("8901"))]).await;
    let dir = tempfile::tempdir().unwrap();
    let addr = proxy(&upstream.url, dir.path(), LIMITS).await;
    let key = "idempotency-key: k-dev4-a1\r\n";
    let buy = |body: &str| request(addr, "POST", "/v1/esim/activate", key, body);
    let (status, answer) = exchange(addr, &buy(r#"{"region":"us-west","data_mb":20}"#)).await;
    assert_eq!(status, 503, "{answer}");
    let (status, answer) = exchange(addr, &buy(r#"{"region":"us-west","data_mb":5}"#)).await;
    assert_eq!(status, 422, "{answer}");
    assert_eq!(upstream.payments().len(), 1, "nothing sent, nothing signed");
    let (status, answer) = exchange(addr, &buy(r#"{"region":"us-west","data_mb":20}"#)).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["iccid"], "8901");
    let paid = upstream.payments();
    assert_eq!((paid.len(), &paid[0]), (2, &paid[1]));
}
