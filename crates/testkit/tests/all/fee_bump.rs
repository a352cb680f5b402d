//! A settlement whose transaction the base fee outgrew while it waited in the pool (kernel `evm::bump`,
//! verifier `sender::bump`), against the scripted JSON-RPC node of [`crate::verifier`]: a replay replaces it
//! with higher fees (same nonce and call), recorded before it is sent, and whichever of the two hashes is
//! mined settles the payment.

use std::sync::Arc;

use alloy_primitives::{B256, TxKind, keccak256};
use esim402_core::invoice::Invoice;
use esim402_testkit::Kit;
use serde_json::json;

use crate::verifier::{
    BASE_FEE, Mining, Node, Pay, S, TIP, TX_COUNT, backdate, decode_tx, invoice, kit, kv_json, pay,
    rpc_methods, settle,
};

/// A pending settlement, replaced once: `(original, replacement)`.
struct Replaced {
    kit: Kit,
    node: Arc<Node>,
    inv: Invoice,
    p: Pay,
    original: B256,
    replacement: B256,
}

/// Settle while nothing is mined, let the base fee rise to ten times what the transaction was signed at, and
/// replay until the replacement is recorded and sent.
async fn replaced(seed: u8) -> Replaced {
    let node = Arc::new(Node::default());
    let mut kit = kit(&node, &[("settlement_timeout_ms", "300")]).await;
    let inv = invoice(seed, None);
    let p = pay(&inv);
    let key = p.nonce_key();
    node.set(|c| c.mining = Mining::Never);
    let got = settle(&mut kit, &inv, p.v2()).await;
    let first = node.sent()[0].clone();
    let original = keccak256(&first);
    assert_eq!(got, Ok(S::Pending(original.to_string())));
    assert_eq!(
        decode_tx(&first).tx().max_fee_per_gas,
        2 * BASE_FEE + TIP,
        "signed at twice the base fee plus the tip"
    );

    // The base fee outgrows its cap. A replay moments later leaves it: it has not waited long enough.
    let spike = 10 * BASE_FEE;
    node.set(|c| c.base_fee = Some(spike));
    assert_eq!(
        settle(&mut kit, &inv, p.v2()).await,
        Ok(S::Pending(original.to_string()))
    );
    assert_eq!(node.sent().len(), 1);

    // A minute later it still waits in the pool: replaced. Its send is lost on the way (nothing reaches the
    // node), yet the record already names it: recorded before it was sent.
    backdate(&kit, &key, 60).await;
    node.set(|c| c.drop_send = true);
    let got = settle(&mut kit, &inv, p.v2()).await;
    assert_eq!(
        node.sent().len(),
        1,
        "the replacement never reached the node"
    );
    let record = kv_json(&kit, &key).await.unwrap();
    assert_eq!(record["status"], "submitted");
    assert_eq!(record["replaced"], json!([original.to_string()]));
    let replacement: B256 = record["transaction"].as_str().unwrap().parse().unwrap();
    assert_ne!(replacement, original);
    assert_eq!(got, Ok(S::Pending(replacement.to_string())));
    let raw = alloy_primitives::hex::decode(record["raw_transaction"].as_str().unwrap()).unwrap();
    assert_eq!(keccak256(&raw), replacement);
    let (old, new) = (decode_tx(&first), decode_tx(&raw));
    assert_eq!(new.tx().nonce, TX_COUNT, "the same nonce");
    assert_eq!(new.tx().nonce, old.tx().nonce);
    assert_eq!(
        (
            &new.tx().input,
            new.tx().to,
            new.tx().value,
            new.tx().gas_limit
        ),
        (
            &old.tx().input,
            old.tx().to,
            old.tx().value,
            old.tx().gas_limit
        ),
        "the same call"
    );
    assert_eq!(
        new.tx().to,
        TxKind::Call(crate::verifier::USDC.parse().unwrap())
    );
    assert_eq!(
        (new.tx().max_fee_per_gas, new.tx().max_priority_fee_per_gas),
        (2 * spike + TIP, TIP * 11 / 10),
        "what a new transaction would pay now, and a tip 10 % above the pooled one's"
    );
    assert!(
        kit.kv_get(&format!("txhash/{replacement:#x}"))
            .await
            .is_some(),
        "claimed like every settlement transaction of ours"
    );

    // Half a minute later the replacement, still unknown to the node, is sent again: the same bytes.
    backdate(&kit, &key, 30).await;
    node.set(|c| c.drop_send = false);
    assert_eq!(
        settle(&mut kit, &inv, p.v2()).await,
        Ok(S::Pending(replacement.to_string()))
    );
    assert_eq!(node.sent(), vec![first, raw]);
    Replaced {
        kit,
        node,
        inv,
        p,
        original,
        replacement,
    }
}

#[tokio::test]
async fn a_settlement_below_the_base_fee_is_replaced_and_confirmed_by_the_replacement() {
    let Replaced {
        mut kit,
        node,
        inv,
        p,
        original,
        replacement,
    } = replaced(71).await;
    // The replacement is mined; the pool drops the original.
    node.forget_one(original);
    node.set(|c| c.mining = Mining::Succeed);
    assert_eq!(
        settle(&mut kit, &inv, p.v2()).await,
        Ok(S::Settled(replacement.to_string()))
    );
    let record = kv_json(&kit, &p.nonce_key()).await.unwrap();
    assert_eq!(record["status"], "confirmed");
    assert_eq!(record["transaction"], replacement.to_string());
    assert!(record.get("executed_by").is_none());
    assert_eq!(node.sent().len(), 2, "nothing else sent");
}

/// The original is mined after all (the base fee fell before the replacement got in): its receipt settles the
/// payment, though the record names the replacement and the signer's nonce reads used. It is ours, not a
/// front-run: no log search, no failure.
#[tokio::test]
async fn a_replaced_settlement_is_confirmed_by_its_original_transaction_too() {
    let Replaced {
        mut kit,
        node,
        inv,
        p,
        original,
        replacement,
    } = replaced(72).await;
    node.forget_one(replacement);
    node.set(|c| {
        c.mining = Mining::Succeed;
        c.mined_count = Some(TX_COUNT + 1);
        c.pending_count = Some(TX_COUNT + 1);
    });
    assert_eq!(
        settle(&mut kit, &inv, p.v2()).await,
        Ok(S::Settled(original.to_string()))
    );
    let record = kv_json(&kit, &p.nonce_key()).await.unwrap();
    assert_eq!(record["status"], "confirmed");
    assert_eq!(record["executed_by"], original.to_string());
    assert!(
        !rpc_methods(&kit).contains(&"eth_getLogs".to_owned()),
        "not searched for as a front-run"
    );
    // A repeat reports the same transaction.
    assert_eq!(
        settle(&mut kit, &inv, p.v2()).await,
        Ok(S::Settled(original.to_string()))
    );
    assert_eq!(node.sent().len(), 2);
}
