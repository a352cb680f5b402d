//! A settlement whose transaction the base fee outgrew while it waited in the pool (kernel `evm::bump`,
//! verifier `sender::bump`), against the scripted JSON-RPC node of [`crate::verifier`]: a replay, or another
//! payment's send once it holds the key's lowest unmined nonce, replaces it with higher fees (same nonce and
//! call), recorded before it is sent, and whichever of the two hashes is mined settles the payment. A send
//! with nothing stuck makes no chain call more for it.

use std::sync::Arc;

use alloy_primitives::{B256, TxKind, keccak256};
use esim402_core::invoice::Invoice;
use esim402_testkit::Kit;
use serde_json::json;

use crate::verifier::{
    BASE_FEE, Mining, Node, Pay, S, TIP, TX_COUNT, backdate, decode_tx, facilitator, invoice, kit,
    kv_json, pay, rpc_calls, rpc_methods, settle,
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

/// A settlement sent while nothing is mined, answered pending.
struct Stuck {
    kit: Kit,
    node: Arc<Node>,
    inv: Invoice,
    p: Pay,
    /// Its settlement record.
    key: String,
    /// Its transaction as sent.
    first: Vec<u8>,
    original: B256,
}

/// Settle the payment of invoice `seed` while the node mines nothing: pending on the one transaction it sent.
async fn stuck(seed: u8) -> Stuck {
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
    Stuck {
        kit,
        node,
        inv,
        p,
        key,
        first,
        original,
    }
}

/// The replacement of the transaction `first` that the settlement record at `key` names, checked: recorded with
/// the replaced hash kept, the same transaction (nonce, call, value, gas) at what a new one would pay under a
/// base fee of `spike` (and a tip 10 % above the pooled one's), its hash claimed like every settlement
/// transaction of ours. Its hash, its signed bytes and the record.
async fn recorded_replacement(
    kit: &Kit,
    key: &str,
    first: &[u8],
    spike: u128,
) -> (B256, Vec<u8>, serde_json::Value) {
    let original = keccak256(first);
    let record = kv_json(kit, key).await.unwrap();
    assert_eq!(record["status"], "submitted");
    assert_eq!(record["replaced"], json!([original.to_string()]));
    let replacement: B256 = record["transaction"].as_str().unwrap().parse().unwrap();
    assert_ne!(replacement, original);
    let raw = alloy_primitives::hex::decode(record["raw_transaction"].as_str().unwrap()).unwrap();
    assert_eq!(keccak256(&raw), replacement);
    let (old, new) = (decode_tx(first), decode_tx(&raw));
    assert_eq!(
        (
            new.tx().nonce,
            &new.tx().input,
            new.tx().to,
            new.tx().value,
            new.tx().gas_limit
        ),
        (
            old.tx().nonce,
            &old.tx().input,
            old.tx().to,
            old.tx().value,
            old.tx().gas_limit
        ),
        "the same transaction"
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
    (replacement, raw, record)
}

/// Settle while nothing is mined, let the base fee rise to ten times what the transaction was signed at, and
/// replay until the replacement is recorded and sent.
async fn replaced(seed: u8) -> Replaced {
    let Stuck {
        mut kit,
        node,
        inv,
        p,
        key,
        first,
        original,
    } = stuck(seed).await;
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
    let (replacement, raw, _) = recorded_replacement(&kit, &key, &first, spike).await;
    assert_eq!(got, Ok(S::Pending(replacement.to_string())));
    assert_eq!(decode_tx(&raw).tx().nonce, TX_COUNT, "the same nonce");
    assert_eq!(
        decode_tx(&raw).tx().to,
        TxKind::Call(crate::verifier::USDC.parse().unwrap())
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

/// The facilitator's nonce bookkeeping (kernel `NonceState`).
fn nonce_state() -> String {
    format!("signer/eip155:31337/{:#x}/nonce", facilitator())
}

/// Move the reservation of the facilitator's account `nonce` `secs` into the past: time passing for it.
async fn backdate_reservation(kit: &Kit, nonce: u64, secs: u64) {
    let mut state = kv_json(kit, &nonce_state()).await.unwrap();
    let at = &mut state["reserved_at"][nonce.to_string()];
    *at = json!(at.as_u64().unwrap() - secs);
    kit.kv_put(&nonce_state(), state.to_string().as_bytes())
        .await;
}

/// The hashes of the raw transactions the component offered the node, in order (taken or not).
fn offered(kit: &Kit) -> Vec<B256> {
    rpc_calls(kit)
        .iter()
        .filter(|c| c["method"] == "eth_sendRawTransaction")
        .map(|c| {
            keccak256(alloy_primitives::hex::decode(c["params"][0].as_str().unwrap()).unwrap())
        })
        .collect()
}

/// A settlement the base fee outgrew that nobody replays: it holds the facilitator's lowest unmined nonce, and
/// every later transaction of the key waits behind it. Another payment's send replaces it first (the same
/// rules as a replay: a minute old, its fee cap below the next block's possible base fee), recorded before it
/// is sent, then sends its own transaction at the next nonce. A send moments later replaces nothing more.
#[tokio::test]
async fn a_stuck_settlement_is_replaced_by_another_payments_send() {
    let Stuck {
        mut kit,
        node,
        key,
        first,
        original,
        ..
    } = stuck(73).await;
    assert_eq!(decode_tx(&first).tx().nonce, TX_COUNT);

    // A minute later it waits in the pool (pending, not mined) below a base fee ten times what it was signed
    // at. The replacement's send is lost on its way: only the record can show it.
    let spike = 10 * BASE_FEE;
    node.set(|c| {
        c.pending_count = Some(TX_COUNT + 1);
        c.base_fee = Some(spike);
        c.drop_nonce = Some(TX_COUNT);
    });
    backdate(&kit, &key, 60).await;
    backdate_reservation(&kit, TX_COUNT, 60).await;
    let inv = invoice(74, None);
    let p = pay(&inv);
    let got = settle(&mut kit, &inv, p.v2()).await;

    let (replacement, _, record) = recorded_replacement(&kit, &key, &first, spike).await;

    // The new payment's own transaction went out after the replacement, at the next nonce.
    let sent = node.sent();
    assert_eq!(sent.len(), 2, "the replacement never reached the node");
    let own = keccak256(&sent[1]);
    assert_eq!(got, Ok(S::Pending(own.to_string())));
    assert_eq!(decode_tx(&sent[1]).tx().nonce, TX_COUNT + 1);
    assert_eq!(decode_tx(&sent[1]).tx().max_fee_per_gas, 2 * spike + TIP);
    assert_eq!(offered(&kit), vec![original, replacement, own]);
    assert_eq!(
        kv_json(&kit, &p.nonce_key()).await.unwrap()["signer_nonce"],
        json!(TX_COUNT + 1)
    );

    // A third payment moments later: the replacement was recorded just now, so nothing is replaced again.
    node.set(|c| c.drop_nonce = None);
    let calls = rpc_calls(&kit).len();
    let inv = invoice(75, None);
    settle(&mut kit, &inv, pay(&inv).v2()).await.unwrap();
    assert_eq!(kv_json(&kit, &key).await.unwrap(), record);
    let sent = node.sent();
    assert_eq!(sent.len(), 3);
    assert_eq!(decode_tx(&sent[2]).tx().nonce, TX_COUNT + 2);
    let methods: Vec<String> = rpc_calls(&kit)[calls..]
        .iter()
        .map(|c| c["method"].as_str().unwrap().to_owned())
        .collect();
    assert!(
        !methods.contains(&"eth_getTransactionByHash".to_owned()),
        "{methods:?}"
    );
}

/// The JSON-RPC calls (methods, batches unpacked) a settlement of a new payment makes up to and including its
/// broadcast, and the number of requests that carry them: what the send path costs (the receipt polling that
/// follows depends on the clock).
async fn calls_of_a_send(kit: &mut Kit, seed: u8) -> (Vec<String>, usize) {
    let before = kit.requests().len();
    let inv = invoice(seed, None);
    settle(kit, &inv, pay(&inv).v2()).await.unwrap();
    let mut methods = Vec::new();
    for (n, r) in kit.requests()[before..].iter().enumerate() {
        let calls = match r.json().unwrap() {
            serde_json::Value::Array(calls) => calls,
            call => vec![call],
        };
        for c in calls {
            methods.push(c["method"].as_str().unwrap().to_owned());
            if c["method"] == "eth_sendRawTransaction" {
                return (methods, n + 1);
            }
        }
    }
    panic!("nothing sent: {methods:?}");
}

/// The send path's look for a stuck transaction costs a normal send nothing: the same JSON-RPC calls in the
/// same requests (the ones a send made before it looked) after a mined transaction of the key, and while one
/// has waited in the pool for moments, the base fee above its cap (not old enough to replace: nothing read).
#[tokio::test]
async fn a_send_with_nothing_stuck_makes_the_same_chain_calls() {
    let node = Arc::new(Node::default());
    let mut kit = kit(&node, &[("settlement_timeout_ms", "300")]).await;
    // The first settlement of an instance also reads the chain id and the token's code.
    calls_of_a_send(&mut kit, 76).await;
    // The send's chain reads in one batch, then the broadcast: two requests (as before the look).
    let expected: Vec<String> = [
        "eth_estimateGas",
        "eth_getBlockByNumber",
        "eth_maxPriorityFeePerGas",
        "eth_getTransactionCount",
        "eth_getTransactionCount",
        "eth_sendRawTransaction",
    ]
    .map(str::to_owned)
    .to_vec();
    // Mined: the node counts past it.
    node.set(|c| {
        c.mined_count = Some(TX_COUNT + 1);
        c.pending_count = Some(TX_COUNT + 1);
    });
    let after_mined = calls_of_a_send(&mut kit, 77).await;
    node.set(|c| {
        c.mined_count = Some(TX_COUNT + 2);
        c.pending_count = Some(TX_COUNT + 2);
        c.mining = Mining::Never;
    });
    calls_of_a_send(&mut kit, 78).await;
    // Its transaction waits in the pool, below the base fee, since moments.
    node.set(|c| {
        c.pending_count = Some(TX_COUNT + 3);
        c.base_fee = Some(10 * BASE_FEE);
    });
    let behind_pooled = calls_of_a_send(&mut kit, 79).await;
    assert_eq!(after_mined, (expected, 2));
    assert_eq!(behind_pooled, after_mined);
    let sent = node.sent();
    assert_eq!(decode_tx(&sent[3]).tx().nonce, TX_COUNT + 3);
}
