//! A settlement whose transaction the base fee outgrew while it waited in anvil's pool (kernel `evm::bump`,
//! verifier `sender::bump`): the payment's replay a minute later replaces it with higher fees (same nonce, same
//! call), the replacement is mined, and the payment is delivered by it once, its money moved once. Slow: it
//! waits the real minute a transaction must wait in the pool before it is replaced.

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
