//! A settlement whose transaction the base fee outgrew while it waited in anvil's pool (kernel `evm::bump`,
//! verifier `sender::bump`): the payment's replay a minute later, or another payment's send, replaces it with
//! higher fees (same nonce, same call), the replacement is mined, and the payment is delivered by it once, its
//! money moved once. Slow: it waits the real minute a transaction must wait in the pool before it is replaced.

use std::time::Duration;

use serde_json::{Value, json};

use crate::payments::{PayStack, Payment, activation, agent, price};

fn quantity(v: &Value) -> u128 {
    u128::from_str_radix(v.as_str().unwrap().trim_start_matches("0x"), 16).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_settlement_the_base_fee_outgrew_is_replaced_and_delivered_by_the_replacement() {
    let s = PayStack::start(&[("SPIN_VARIABLE_SETTLEMENT_TIMEOUT_MS", "1500")]).await;
    let start = s.balance(agent()).await;
    let (_, req) = s.invoice(&activation()).await;
    let pay = Payment::for_requirement(&req);
    let headers = [("payment-signature", pay.header())];
    s.rpc("evm_setAutomine", json!([false])).await;
    let (status, _, body) = s.post("/v1/esim/activate", &activation(), &headers).await;
    assert_eq!(status, 402, "{body}");
    assert_eq!(body["error"]["code"], "settlement_pending", "{body}");
    let original = body["transaction"].as_str().unwrap().to_owned();
    let pooled = s.rpc("eth_getTransactionByHash", json!([original])).await;
    let cap = quantity(&pooled["maxFeePerGas"]);

    // A fee spike: the next block's base fee is four times the transaction's cap, so it stays in the pool.
    let spike = 4 * cap.max(1_000_000_000);
    s.rpc(
        "anvil_setNextBlockBaseFeePerGas",
        json!([format!("{spike:#x}")]),
    )
    .await;
    s.rpc("evm_mine", json!([])).await;
    let receipt = s.rpc("eth_getTransactionReceipt", json!([original])).await;
    assert!(receipt.is_null(), "not mined below the base fee: {receipt}");

    // A replay within the minute leaves it as it is.
    let (status, _, body) = s.post("/v1/esim/activate", &activation(), &headers).await;
    assert_eq!(status, 402, "{body}");
    assert_eq!(body["transaction"], original.as_str(), "{body}");

    // A minute later it still waits: replaced, with the same nonce and a cap above the base fee.
    tokio::time::sleep(Duration::from_secs(61)).await;
    let (status, _, body) = s.post("/v1/esim/activate", &activation(), &headers).await;
    assert_eq!(status, 402, "{body}");
    assert_eq!(body["error"]["code"], "settlement_pending", "{body}");
    let replacement = body["transaction"].as_str().unwrap().to_owned();
    assert_ne!(replacement, original, "{body}");
    let bumped = s
        .rpc("eth_getTransactionByHash", json!([replacement]))
        .await;
    assert_eq!(bumped["nonce"], pooled["nonce"], "{bumped}");
    assert_eq!(bumped["input"], pooled["input"], "{bumped}");
    assert!(quantity(&bumped["maxFeePerGas"]) >= 2 * spike, "{bumped}");

    // Mined: the payment is delivered by the replacement, once.
    s.rpc("evm_mine", json!([])).await;
    s.rpc("evm_setAutomine", json!([true])).await;
    let (status, _, body) = s.post("/v1/esim/activate", &activation(), &headers).await;
    assert_eq!(status, 200, "{body}");
    assert!(
        body["activation_code"]
            .as_str()
            .unwrap()
            .starts_with("LPA:1$")
    );
    let receipt = s
        .rpc("eth_getTransactionReceipt", json!([replacement]))
        .await;
    assert_eq!(receipt["status"], "0x1", "{receipt}");
    assert_eq!(s.balance(agent()).await, start - price(&req));
    assert_eq!(
        s.facilitator_transactions().await,
        "0x1",
        "one transaction of the facilitator mined"
    );
}

/// A settlement the base fee outgrew that nobody replays: a minute later another payment's send replaces it
/// first (it holds the facilitator's lowest unmined nonce, and the new transaction would wait behind it), then
/// sends its own at the next nonce; one block mines both, and both payments are delivered, each once.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_stuck_settlement_is_replaced_by_another_payments_send_and_both_are_delivered() {
    let s = PayStack::start(&[("SPIN_VARIABLE_SETTLEMENT_TIMEOUT_MS", "1500")]).await;
    let start = s.balance(agent()).await;
    let (_, stuck_req) = s.invoice(&activation()).await;
    let stuck_headers = [(
        "payment-signature",
        Payment::for_requirement(&stuck_req).header(),
    )];
    s.rpc("evm_setAutomine", json!([false])).await;
    let (status, _, body) = s
        .post("/v1/esim/activate", &activation(), &stuck_headers)
        .await;
    assert_eq!(status, 402, "{body}");
    assert_eq!(body["error"]["code"], "settlement_pending", "{body}");
    let original = body["transaction"].as_str().unwrap().to_owned();
    let pooled = s.rpc("eth_getTransactionByHash", json!([original])).await;
    let (cap, nonce) = (
        quantity(&pooled["maxFeePerGas"]),
        quantity(&pooled["nonce"]),
    );
    let spike = 4 * cap.max(1_000_000_000);
    s.rpc(
        "anvil_setNextBlockBaseFeePerGas",
        json!([format!("{spike:#x}")]),
    )
    .await;
    s.rpc("evm_mine", json!([])).await;
    let receipt = s.rpc("eth_getTransactionReceipt", json!([original])).await;
    assert!(receipt.is_null(), "not mined below the base fee: {receipt}");

    // A minute later, nobody replays it; another payment comes.
    tokio::time::sleep(Duration::from_secs(61)).await;
    let (_, req) = s.invoice(&activation()).await;
    let headers = [("payment-signature", Payment::for_requirement(&req).header())];
    let (status, _, body) = s.post("/v1/esim/activate", &activation(), &headers).await;
    assert_eq!(status, 402, "{body}");
    assert_eq!(body["error"]["code"], "settlement_pending", "{body}");
    let own = body["transaction"].as_str().unwrap().to_owned();
    let own_tx = s.rpc("eth_getTransactionByHash", json!([own])).await;
    assert_eq!(quantity(&own_tx["nonce"]), nonce + 1, "{own_tx}");

    // One block mines the replacement (same nonce and call, a fee cap above the spike) and the new payment.
    s.rpc("evm_mine", json!([])).await;
    s.rpc("evm_setAutomine", json!([true])).await;
    let block = s.rpc("eth_getBlockByNumber", json!(["latest", true])).await;
    let mined: Vec<&Value> = block["transactions"].as_array().unwrap().iter().collect();
    assert_eq!(mined.len(), 2, "{block}");
    let replacement = mined
        .iter()
        .find(|t| quantity(&t["nonce"]) == nonce)
        .unwrap();
    assert_ne!(replacement["hash"], original.as_str(), "{block}");
    assert_eq!(replacement["input"], pooled["input"], "{block}");
    assert!(
        quantity(&replacement["maxFeePerGas"]) >= 2 * spike,
        "{block}"
    );
    assert!(mined.iter().any(|t| t["hash"] == own.as_str()), "{block}");

    for headers in [&stuck_headers, &headers] {
        let (status, _, body) = s.post("/v1/esim/activate", &activation(), headers).await;
        assert_eq!(status, 200, "{body}");
        assert!(
            body["activation_code"]
                .as_str()
                .unwrap()
                .starts_with("LPA:1$")
        );
    }
    assert_eq!(
        s.balance(agent()).await,
        start - price(&stuck_req) - price(&req)
    );
    assert_eq!(
        s.facilitator_transactions().await,
        "0x2",
        "two transactions of the facilitator mined"
    );
}
