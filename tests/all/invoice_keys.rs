//! Rotating `invoice_secret` orphans nothing: a payment made under the old secret is still read and refunded
//! after the host restarts with a new one and the old one in `invoice_secret_previous`, an invoice issued
//! before the rotation can still be paid, new invoices are sealed with the new secret, and an id sealed under
//! a secret not listed is not ours (404).

use esim402_tests::Runner;
use serde_json::{Value, json};

use crate::payments::{PayStack, Payment, Store};

const A: &str = "the first invoice secret of this app";
const B: &str = "the second invoice secret of this app";

/// Restart the host on its store with `invoice_secret` = `current` and `invoice_secret_previous` = `previous`.
async fn restart_with(s: &mut PayStack, current: &str, previous: &str) {
    let env = s.env_with(
        &[
            ("SPIN_VARIABLE_INVOICE_SECRET", current),
            ("SPIN_VARIABLE_INVOICE_SECRET_PREVIOUS", previous),
        ],
        &[],
    );
    s.restart(&env).await;
}

async fn invoice_status(s: &PayStack, id: &str) -> (u16, Value) {
    s.get(&format!("/v1/invoices/{id}")).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_rotated_invoice_secret_keeps_payments_made_under_the_old_one() {
    let mut s = PayStack::start_with(
        Some((&Runner::Host, Store::Sqlite)),
        &[("SPIN_VARIABLE_INVOICE_SECRET", A)],
    )
    .await;
    let body = json!({"region": "us-west", "data_mb": 100});
    let act = s.activate_paid(&body, &[]).await;
    let iccid = act["iccid"].as_str().unwrap().to_owned();
    let paid = act["invoice_id"].as_str().unwrap().to_owned();
    let (pending, req) = s.invoice(&body).await;
    let pending = pending["invoice_id"].as_str().unwrap().to_owned();

    restart_with(&mut s, B, A).await;
    let (status, inv) = invoice_status(&s, &paid).await;
    assert_eq!((status, &inv["status"]), (200, &json!("paid")), "{inv}");
    // The refund of the paid activation is recorded (before: `REFUND NOT RECORDED`, the id did not open).
    let (status, _, term) = s
        .post(&format!("/v1/esim/{iccid}/terminate"), &json!({}), &[])
        .await;
    assert_eq!(status, 200, "{term}");
    assert_eq!(term["refunds"].as_array().map(Vec::len), Some(1), "{term}");
    // The invoice issued under A before the rotation is still payable.
    let header = Payment::for_requirement(&req).header();
    let (status, paid_later) = s
        .post_paid("/v1/esim/activate", &body, &[("payment-signature", header)])
        .await;
    assert_eq!(status, 200, "{paid_later}");
    let (status, inv) = invoice_status(&s, &pending).await;
    assert_eq!((status, &inv["status"]), (200, &json!("paid")), "{inv}");
    let (fresh, _) = s.invoice(&body).await;
    let fresh = fresh["invoice_id"].as_str().unwrap().to_owned();
    assert_eq!(invoice_status(&s, &fresh).await.0, 200);

    // Back on A alone: B is not listed, so what B sealed is not ours; what A sealed still is.
    restart_with(&mut s, A, "").await;
    let (status, inv) = invoice_status(&s, &fresh).await;
    assert_eq!(status, 404, "{inv}");
    assert_eq!(invoice_status(&s, &paid).await.0, 200);
}
