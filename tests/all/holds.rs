//! Holds on a payer's balance (kernel `hold`): the profile is ordered before the authorization settles, so
//! while a payment is being driven its authorization pays that invoice only, and the payer's balance must
//! cover it on top of the others in flight. Without holds, each of these second payments verified and ordered
//! a profile that was then withdrawn (the README's former known gap).

use std::time::Duration;

use alloy_sol_types::SolCall;
use esim402_host::devstack::chain;
use serde_json::{Value, json};

use super::payments::{PayStack, Payment, activation, agent, price, transferCall};

/// The payer's balance down to `keep`: the rest sent to the dev chain's deployer (an unlocked account).
async fn leave_payer(s: &PayStack, keep: alloy_primitives::U256) {
    let rest = s.balance(agent()).await - keep;
    let data = transferCall {
        to: chain::DEPLOYER,
        value: rest,
    }
    .abi_encode();
    let tx = s.send_token(agent(), data).await;
    s.mined(&tx).await;
    assert_eq!(s.balance(agent()).await, keep);
}

/// `first` is sent at once and `second` once the simulator has handed out the first's profile, while the
/// first's order is still held up by the carrier's 1.5 s latency per call (its settlement not begun): both
/// answers.
async fn overlapping(
    s: &PayStack,
    first: &Payment,
    second: &Payment,
) -> ((u16, Value), (u16, Value)) {
    let before = s.handed_out().await.len();
    s.set_faults("tmobile", json!({"latency_ms": 1500})).await;
    let a = async {
        let (status, _, body) = s
            .post(
                "/v1/esim/activate",
                &activation(),
                &[("payment-signature", first.header())],
            )
            .await;
        (status, body)
    };
    let b = async {
        for _ in 0..200 {
            if s.handed_out().await.len() > before {
                break;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        let (status, _, body) = s
            .post(
                "/v1/esim/activate",
                &activation(),
                &[("payment-signature", second.header())],
            )
            .await;
        (status, body)
    };
    let answers = tokio::join!(a, b);
    s.set_faults("tmobile", json!({})).await;
    answers
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_balance_that_covers_one_payment_orders_one_profile_at_a_time() {
    let s = PayStack::start(&[]).await;
    let (_, req_a) = s.invoice(&activation()).await;
    let (_, req_b) = s.invoice(&activation()).await;
    leave_payer(&s, price(&req_a)).await;
    let before = s.handed_out().await.len();
    // Two authorizations, each valid, that one balance covers once.
    let (pay_a, pay_b) = (
        Payment::for_requirement(&req_a),
        Payment::for_requirement(&req_b),
    );
    let ((status_a, body_a), (status_b, body_b)) = overlapping(&s, &pay_a, &pay_b).await;
    assert_eq!(status_a, 200, "{body_a}");
    assert_eq!(status_b, 402, "{body_b}");
    assert_eq!(body_b["error"]["reason"], "insufficient_funds", "{body_b}");
    // One profile ordered, not two (the second one used to be ordered, then withdrawn).
    assert_eq!(s.handed_out().await.len(), before + 1);
    assert!(!s.nonce_used(agent(), pay_b.auth.nonce).await);

    // Funded again, the payer pays at once: the settled payment's hold (not released on success) is dropped
    // once the chain shows its nonce used.
    let top_up = transferCall {
        to: agent(),
        value: price(&req_a),
    }
    .abi_encode();
    let tx = s.send_token(chain::DEPLOYER, top_up).await;
    s.mined(&tx).await;
    let (_, req_c) = s.invoice(&activation()).await;
    let pay_c = Payment::for_requirement(&req_c);
    let (status, _, body) = s
        .post(
            "/v1/esim/activate",
            &activation(),
            &[("payment-signature", pay_c.header())],
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(s.balance(agent()).await, alloy_primitives::U256::ZERO);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn one_authorization_pays_one_invoice_at_a_time() {
    let s = PayStack::start(&[]).await;
    let (_, req_a) = s.invoice(&activation()).await;
    let (_, req_b) = s.invoice(&activation()).await;
    let before = s.handed_out().await.len();
    let pay_a = Payment::for_requirement(&req_a);
    // The same signed authorization, presented for another invoice of the same price.
    let mut pay_b = Payment::for_requirement(&req_b);
    pay_b.auth = pay_a.auth;
    let ((status_a, body_a), (status_b, body_b)) = overlapping(&s, &pay_a, &pay_b).await;
    assert_eq!(status_a, 200, "{body_a}");
    assert_eq!(status_b, 409, "{body_b}");
    assert!(
        body_b["error"]["message"]
            .as_str()
            .unwrap()
            .contains("another invoice"),
        "{body_b}"
    );
    assert_eq!(s.handed_out().await.len(), before + 1);
    assert_eq!(s.facilitator_transactions().await, "0x1");
}

/// A payment whose order failed moved no money: its hold ends with it, so the same authorization pays another
/// invoice at once (it would otherwise wait for the hold to lapse, minutes later).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_failed_order_releases_its_hold() {
    let s = PayStack::start(&[("SPIN_VARIABLE_ES2_TIMEOUT_MS", "2000")]).await;
    let (_, req_a) = s.invoice(&activation()).await;
    let (_, req_b) = s.invoice(&activation()).await;
    leave_payer(&s, price(&req_a)).await;
    s.break_us_west().await;
    let pay_a = Payment::for_requirement(&req_a);
    let (status, _, body) = s
        .post(
            "/v1/esim/activate",
            &activation(),
            &[("payment-signature", pay_a.header())],
        )
        .await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["charged"], false, "{body}");
    for op in ["tmobile", "verizon", "att"] {
        s.set_faults(op, json!({})).await;
    }
    let mut pay_b = Payment::for_requirement(&req_b);
    pay_b.auth = pay_a.auth;
    let (status, _, body) = s
        .post(
            "/v1/esim/activate",
            &activation(),
            &[("payment-signature", pay_b.header())],
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert!(s.nonce_used(agent(), pay_a.auth.nonce).await);
    assert_eq!(s.balance(agent()).await, alloy_primitives::U256::ZERO);
}
