//! Refund paths of the verifier found by a review (`owe-refund` repeats, refused sends, unmineable transfers),
//! against the scripted node of [`super`]: each test fails on the code before its fix.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use alloy_primitives::{Address, B256, TxKind, hex};
use esim402_host::kv::Backend;
use esim402_host::kv::wrapped::{Hook, Wrapped};
use esim402_testkit::{Kit, types};
use serde_json::{Value, json};

use super::{
    E, Mining, Node, PRICE, S, TX_COUNT, builder, decode_tx, invoice, kv_json, now, paid_invoice,
    pay, payer, settle, transfer_log, wit_invoice,
};

/// Anvil dev account #4 as the treasury (as in `crate::refunds`).
const TREASURY_KEY: &str = "0x47e179ec197488593b187f80a00eb0da91f1b9d0b13f8733639f19c30a34926a";

fn treasury() -> Address {
    esim402_core::evm::SigningKey::from_hex(TREASURY_KEY)
        .unwrap()
        .address()
}

/// An invoice paid by a confirmed `exact` settlement, and the settlement's transaction.
async fn paid(kit: &mut Kit, seed: u8) -> (types::Invoice, String, String) {
    let inv = invoice(seed, None);
    let got = settle(kit, &inv, pay(&inv).v2()).await;
    let Ok(S::Settled(tx)) = got else {
        panic!("{got:?}");
    };
    let id = inv.invoice_id.as_str().to_owned();
    (wit_invoice(&paid_invoice(&inv, &tx)), id, tx)
}

async fn owe(kit: &mut Kit, inv: &types::Invoice, tx: &str) -> Result<types::RefundOwed, E> {
    owe_at(kit, inv, tx, now()).await
}

/// [`owe`] at `at`.
async fn owe_at(
    kit: &mut Kit,
    inv: &types::Invoice,
    tx: &str,
    at: u64,
) -> Result<types::RefundOwed, E> {
    let (inv, tx) = (inv.clone(), tx.to_owned());
    kit.call(async move |a, g| {
        g.verifier()
            .call_owe_refund(a, inv, tx, None, "activation failed".into(), at)
            .await
    })
    .await
    .unwrap()
    .map_err(E::from)
}

/// A run as of `at`, acknowledged: its summary.
async fn run_at(kit: &mut Kit, at: u64) -> Value {
    let r = kit
        .call(async move |a, g| g.verifier().call_run_refunds(a, at, 10).await)
        .await
        .unwrap()
        .unwrap();
    let ids = r.settled.clone();
    kit.call(async move |a, g| g.verifier().call_ack_refunds(a, ids).await)
        .await
        .unwrap()
        .unwrap();
    serde_json::from_str(&r.summary).unwrap()
}

/// Finding 1: a first `owe-refund` that recorded the refund but failed to queue it (the hot queue cell
/// contended) never answered with its `refund_owed`; the caller's retry, seconds later, must relog it (before,
/// it answered `relog: false` until three minutes after the record, and the event was lost for good).
#[tokio::test]
async fn a_retry_of_an_owe_refund_that_failed_to_queue_it_relogs_its_event_at_once() {
    let node = Arc::new(Node::default());
    let failing = Arc::new(AtomicBool::new(false));
    let store = Arc::new(crate::failing_writes("refund/queue", &failing));
    let mut kit = builder(&node)
        .var("treasury_private_key", TREASURY_KEY)
        .store(store)
        .build()
        .await
        .unwrap();
    let (inv, id, tx) = paid(&mut kit, 190).await;

    failing.store(true, Ordering::SeqCst);
    let first = owe(&mut kit, &inv, &tx).await;
    assert!(first.is_err(), "{first:?}");
    let record = kv_json(&kit, &format!("refund/{id}")).await.unwrap();
    assert_eq!(record["status"], "owed", "recorded before the queue failed");
    assert_eq!(kv_json(&kit, "refund/queue").await, None);

    failing.store(false, Ordering::SeqCst);
    // Seconds later (within RELOG_REQUEUED_AFTER_SECS its first call may still be on its way to queue it and log
    // it itself: a repeat then would land beside that append, which a race of two instances showed).
    let again = owe_at(&mut kit, &inv, &tx, now() + 5).await.unwrap();
    assert!(!again.new);
    assert!(again.relog, "the event its first call never answered");
    assert_eq!(again.event.kind, "refund_owed");
    assert_eq!(again.event.invoice.as_deref(), Some(id.as_str()));
    assert_eq!(again.event.amount, Some(PRICE));
    assert_eq!(kv_json(&kit, "refund/queue").await, Some(json!([id])));

    // Queued now: a further repeat waits as before (the one above relogged it).
    let third = owe(&mut kit, &inv, &tx).await.unwrap();
    assert!(!third.new && !third.relog, "{third:?}");
}

/// What a refund record's published writes were, in order, with the no-op transactions the node was sent.
#[derive(Clone, Default)]
struct Timeline(Arc<Mutex<Vec<String>>>);

impl Timeline {
    fn push(&self, entry: String) {
        self.0.lock().unwrap().push(entry);
    }

    fn entries(&self) -> Vec<String> {
        self.0.lock().unwrap().clone()
    }
}

#[async_trait::async_trait]
impl Hook for Timeline {
    async fn after_write(&self, inner: &dyn Backend, key: &str) {
        if !key.starts_with("refund/inv") || key.contains('@') {
            return;
        }
        let raw = inner.get(key).await.ok().flatten().unwrap();
        let data = esim402_core::store::cell::Stored::decode(&raw)
            .unwrap()
            .data
            .unwrap();
        let record: Value = serde_json::from_slice(&data).unwrap();
        self.push(format!("refund {}", record["status"].as_str().unwrap()));
    }
}

/// Whether the request is the treasury's no-op transaction (nothing, to itself).
fn is_no_op(call: &Value, treasury: Address) -> bool {
    if call["method"] != "eth_sendRawTransaction" {
        return false;
    }
    let tx = decode_tx(&hex::decode(call["params"][0].as_str().unwrap()).unwrap());
    tx.tx().input.is_empty() && tx.tx().to == TxKind::Call(treasury)
}

/// Finding 2: a refund transfer the node refused, below a treasury nonce already out, leaves a hole the
/// treasury's no-op fills; the refund's record is released (owed again, naming no transaction) before that
/// no-op goes out. Before, the release waited behind the no-op's broadcast (up to 10 s), while the record
/// still named the refused transfer, which a concurrent send's `fill_gaps` offers the node again once it is
/// `RESEND_AFTER_SECS` old: accepted, then released, the refund was owed again and paid twice.
#[tokio::test]
async fn a_refused_refund_is_released_before_its_nonce_is_filled_with_a_no_op() {
    let node = Arc::new(Node::default());
    let timeline = Timeline::default();
    let store = Arc::new(Wrapped::new(
        Arc::new(esim402_host::kv::MemoryStore::default()),
        timeline.clone(),
    ));
    let (n, seen) = (node.clone(), timeline.clone());
    let mut kit = builder(&node)
        .var("treasury_private_key", TREASURY_KEY)
        .store(store)
        .respond(move |r| {
            let calls = match r.json().unwrap() {
                Value::Array(calls) => calls,
                call => vec![call],
            };
            for call in calls.iter().filter(|c| is_no_op(c, treasury())) {
                let nonce = decode_tx(&hex::decode(call["params"][0].as_str().unwrap()).unwrap())
                    .tx()
                    .nonce;
                seen.push(format!("no-op {nonce}"));
            }
            n.answer(r)
        })
        .build()
        .await
        .unwrap();
    let (inv, id, tx) = paid(&mut kit, 191).await;
    owe(&mut kit, &inv, &tx).await.unwrap();
    // Another refund holds TX_COUNT + 1 (reserved just now, out); TX_COUNT was given back earlier, so this
    // refund reserves it.
    let other = TX_COUNT + 1;
    let seeded = json!({
        "next": TX_COUNT + 2,
        "pending": [other],
        "released": [TX_COUNT],
        "owners": {other.to_string(): "refund/inv_other"},
        "reserved_at": {other.to_string(): now()},
    });
    let nonces = format!("signer/eip155:31337/{:#x}/nonce", treasury());
    kit.kv_put(&nonces, seeded.to_string().as_bytes()).await;
    node.set(|c| c.refuse_token_calls = true);

    let summary = run_at(&mut kit, now()).await;
    let error = summary["failed"][0]["error"].as_str().unwrap();
    assert!(error.contains("refused the refund transaction"), "{error}");
    let record = kv_json(&kit, &format!("refund/{id}")).await.unwrap();
    assert_eq!(record["status"], "owed");
    assert_eq!(record["transaction"], Value::Null);
    assert_eq!(
        timeline.entries(),
        [
            "refund owed",
            "refund submitted",
            "refund submitted",
            "refund owed",
            &format!("no-op {TX_COUNT}"),
        ],
        "claimed, recorded, released, then the hole filled"
    );
    let state = kv_json(&kit, &nonces).await.unwrap();
    assert_eq!(state["pending"], json!([TX_COUNT, other]), "{state}");
}

/// The refund transfers among everything the node was sent.
fn refund_hashes(node: &Node) -> Vec<String> {
    node.sent()
        .iter()
        .map(|raw| decode_tx(raw))
        .filter(|tx| {
            tx.tx()
                .input
                .starts_with(&esim402_core::evm::erc20::TRANSFER_SELECTOR)
        })
        .map(|tx| tx.hash().to_string())
        .collect()
}

/// A payment (`seed`) owed back, and its refund sent by a run on a node that never mines it: the node, the kit,
/// the invoice id and the refund's transaction hashes.
async fn refund_sent_never_mined(seed: u8) -> (Arc<Node>, Kit, String, Vec<String>) {
    let node = Arc::new(Node::default());
    let mut kit = builder(&node)
        .var("treasury_private_key", TREASURY_KEY)
        .var("settlement_timeout_ms", "300")
        .build()
        .await
        .unwrap();
    let (inv, id, tx) = paid(&mut kit, seed).await;
    owe(&mut kit, &inv, &tx).await.unwrap();
    node.set(|c| c.mining = Mining::Never);
    assert_eq!(run_at(&mut kit, now()).await["paid"], json!([]));
    let sent = refund_hashes(&node);
    (node, kit, id, sent)
}

/// Finding 3: a refund transfer asked about on a node whose transaction index was pruned (it knows neither the
/// transaction nor its receipt) while the treasury's count is past its nonce looks exactly like a lost one.
/// Before, two sightings two minutes apart owed it again and a second transfer paid it twice; now the token's
/// logs are searched for the transfer first: a transfer of its amount by another transaction, a search
/// refused, or one answered by a node behind the searched blocks leaves it submitted; only a search that
/// finds nothing on a node that has every block owes it again.
#[tokio::test]
async fn an_unmineable_refund_whose_transfer_the_token_logged_is_not_owed_again() {
    let (node, mut kit, id, sent) = refund_sent_never_mined(192).await;
    let mined = sent[0].clone();
    let record = kv_json(&kit, &format!("refund/{id}")).await.unwrap();
    assert_eq!(record["sent_at_block"], 0x11, "the head it was prepared at");

    // The node's index was pruned: it knows neither the transaction nor its receipt; a transfer of the same
    // amount to the same payer, by another transaction, is in block 0x12.
    node.forget();
    let mut logged = transfer_log(treasury(), payer(), PRICE);
    logged["blockNumber"] = json!("0x12");
    logged["transactionHash"] = json!(B256::repeat_byte(0xab));
    node.set(|c| {
        c.mined_count = Some(TX_COUNT + 1);
        c.pending_count = Some(TX_COUNT + 1);
        c.mining = Mining::Succeed;
        c.logs.push(logged);
    });
    let pending = json!({"paid": [], "pending": [{"invoice": id, "transaction": mined}],
                         "failed": [], "remaining": 1});
    assert_eq!(run_at(&mut kit, now()).await, pending, "first sighting");
    // Two minutes on, still unknown: its transfer is in the token's logs, so it is not owed again.
    assert_eq!(run_at(&mut kit, now() + 600).await, pending);
    let record = kv_json(&kit, &format!("refund/{id}")).await.unwrap();
    assert_eq!(record["status"], "submitted", "{record}");
    assert_eq!(record["transaction"], mined.as_str());
    assert_eq!(refund_hashes(&node), sent, "no second transfer");

    // A node that refuses the search decides nothing either.
    node.set(|c| {
        c.logs.clear();
        c.refuse_logs = true;
    });
    assert_eq!(run_at(&mut kit, now() + 600).await, pending);
    assert_eq!(
        kv_json(&kit, &format!("refund/{id}")).await.unwrap()["status"],
        "submitted"
    );

    // A node lagging behind the searched blocks (a second review found its empty answer paid twice).
    node.set(|c| {
        c.refuse_logs = false;
        c.log_node_head = Some(c.head - 1);
    });
    assert_eq!(run_at(&mut kit, now() + 600).await, pending);
    assert_eq!(
        kv_json(&kit, &format!("refund/{id}")).await.unwrap()["status"],
        "submitted"
    );

    // Searched, and no transfer: it really never moved; owed again, and paid by a new transfer.
    node.set(|c| c.log_node_head = None);
    let summary = run_at(&mut kit, now() + 600).await;
    let error = summary["failed"][0]["error"].as_str().unwrap();
    assert!(error.contains("never will be"), "{error}");
    let record = kv_json(&kit, &format!("refund/{id}")).await.unwrap();
    assert_eq!(record["status"], "owed", "{record}");
    let summary = run_at(&mut kit, now()).await;
    let sent = refund_hashes(&node);
    assert_eq!(sent.len(), 2);
    assert_eq!(
        summary["paid"],
        json!([{"invoice": id, "transaction": sent[1]}])
    );
}

/// A refund transfer mined but asked about on a node with a pruned index: the token's logs show the transfer by
/// its own transaction, so it is paid by it (before, left for an operator for ever: the node reads no receipt
/// either, and the refund never left the queue).
#[tokio::test]
async fn an_unmineable_looking_refund_whose_own_transfer_is_logged_is_paid() {
    let (node, mut kit, id, sent) = refund_sent_never_mined(193).await;
    let mined = sent[0].clone();
    node.forget();
    let mut logged = transfer_log(treasury(), payer(), PRICE);
    logged["blockNumber"] = json!("0x12");
    logged["transactionHash"] = json!(mined);
    node.set(|c| {
        c.mined_count = Some(TX_COUNT + 1);
        c.pending_count = Some(TX_COUNT + 1);
        c.mining = Mining::Succeed;
        c.logs.push(logged);
    });
    let first = run_at(&mut kit, now()).await;
    assert_eq!(first["paid"], json!([]), "first sighting: {first}");
    let summary = run_at(&mut kit, now() + 600).await;
    assert_eq!(
        summary["paid"],
        json!([{"invoice": id, "transaction": mined}]),
        "{summary}"
    );
    let record = kv_json(&kit, &format!("refund/{id}")).await.unwrap();
    assert_eq!(record["status"], "paid", "{record}");
    assert_eq!(refund_hashes(&node), sent, "no second transfer");
}

/// A refund owed for an invoice paid on a network since disabled is unavailable (retryable), not refused: the
/// gateway keeps what it owes (a terminate lists its SIM for the cleanup run) and it is recorded once the
/// network is enabled again. Before, a conflict was logged once and the refund dropped (a review, thirty-first
/// session).
#[tokio::test]
async fn a_refund_on_a_network_since_disabled_waits_for_it_to_be_enabled_again() {
    let node = Arc::new(Node::default());
    let mut kit = builder(&node)
        .var("treasury_private_key", TREASURY_KEY)
        .build()
        .await
        .unwrap();
    let (inv, id, tx) = paid(&mut kit, 191).await;
    let store = kit.kv().clone();
    let mut off = builder(&node)
        .var("treasury_private_key", TREASURY_KEY)
        .var("payment_network", "base-sepolia")
        .store(store.clone())
        .build()
        .await
        .unwrap();
    let e = owe(&mut off, &inv, &tx).await.unwrap_err();
    assert!(
        matches!(&e, E::Unavailable(m) if m.contains("no longer enabled")),
        "{e:?}"
    );
    assert_eq!(kv_json(&off, &format!("refund/{id}")).await, None);
    let mut on = builder(&node)
        .var("treasury_private_key", TREASURY_KEY)
        .store(store)
        .build()
        .await
        .unwrap();
    let owed = owe(&mut on, &inv, &tx).await.unwrap();
    assert!(owed.new, "recorded once enabled again");
}

/// Remove the cell at `key` as a release does (a tombstone): what a request cancelled before writing it left.
async fn remove(kit: &Kit, key: &str) {
    let raw = kit.kv().get(key).await.unwrap().unwrap();
    let mut cell = esim402_core::store::cell::Stored::decode(&raw).unwrap();
    cell.data = None;
    kit.kv().set(key, &cell.encode()).await.unwrap();
}

/// Every published write of a settlement record or a `txhash/` claim, in order (a record with its status).
#[derive(Clone, Default)]
struct Writes(Arc<Mutex<Vec<String>>>);

#[async_trait::async_trait]
impl Hook for Writes {
    async fn after_write(&self, inner: &dyn Backend, key: &str) {
        if key.contains('@') || !(key.starts_with("x402/nonce/") || key.starts_with("txhash/")) {
            return;
        }
        let raw = inner.get(key).await.ok().flatten().unwrap();
        let cell = esim402_core::store::cell::Stored::decode(&raw).unwrap();
        let Some(data) = cell.data else {
            return;
        };
        let record: Value = serde_json::from_slice(&data).unwrap();
        let entry = match key.split_once('/') {
            Some(("txhash", _)) => "txhash".to_owned(),
            _ => format!("record {}", record["status"].as_str().unwrap()),
        };
        self.0.lock().unwrap().push(entry);
    }
}

/// Finding 1: a settlement's `txhash/` claim is written before its transaction is recorded (before, after: a
/// request cancelled between the two left a recorded transaction that a replay sent and confirmed unclaimed,
/// and its refund then found "nothing taken"); and a confirmation claims the hash it is confirmed by, so a
/// record left so by an older build gets its claim, and its refund is recorded.
#[tokio::test]
async fn a_settlement_claims_its_transaction_before_recording_it_and_again_when_confirmed() {
    let node = Arc::new(Node::default());
    let writes = Writes::default();
    let store = Wrapped::new(
        Arc::new(esim402_host::kv::MemoryStore::default()),
        writes.clone(),
    );
    let mut kit = builder(&node)
        .var("treasury_private_key", TREASURY_KEY)
        .var("settlement_timeout_ms", "300")
        .store(Arc::new(store))
        .build()
        .await
        .unwrap();
    let inv = invoice(200, None);
    let p = pay(&inv);
    node.set(|c| c.drop_send = true);
    let got = settle(&mut kit, &inv, p.v2()).await;
    let Ok(S::Pending(tx)) = got else {
        panic!("{got:?}");
    };
    assert_eq!(
        writes.0.lock().unwrap().clone(),
        ["record claimed", "txhash", "record submitted"],
        "the claim before the record"
    );

    // What a request cancelled between its record and its claim left (the order before): no claim.
    remove(&kit, &format!("txhash/{tx}")).await;
    node.set(|c| c.drop_send = false);
    // Old enough to be sent again (`RESEND_AFTER_SECS`), too young to be replaced (`BUMP_AFTER_SECS`).
    super::backdate(&kit, &p.nonce_key(), 40).await;
    assert_eq!(
        settle(&mut kit, &inv, p.v2()).await,
        Ok(S::Settled(tx.clone()))
    );
    let claim = kv_json(&kit, &format!("txhash/{tx}")).await.unwrap();
    assert_eq!(claim["claim"], p.nonce_key());

    let owed = owe(&mut kit, &wit_invoice(&paid_invoice(&inv, &tx)), &tx)
        .await
        .unwrap();
    assert!(owed.new, "{owed:?}");
    let refund: Value = serde_json::from_str(&owed.refund).unwrap();
    assert_eq!(refund["status"], "owed");
}

/// Review: a record left unclaimed by an older build whose hash a tx-hash proof of another invoice claimed
/// first is not confirmed by it when a replay finds it mined: left pending for an operator (before, the
/// confirmation ignored whose claim held the hash, and one transfer paid two invoices).
#[tokio::test]
async fn a_confirmation_whose_hash_pays_another_invoice_is_left_pending() {
    let node = Arc::new(Node::default());
    let mut kit = builder(&node)
        .var("settlement_timeout_ms", "300")
        .build()
        .await
        .unwrap();
    let inv = invoice(202, None);
    let p = pay(&inv);
    node.set(|c| c.drop_send = true);
    let got = settle(&mut kit, &inv, p.v2()).await;
    let Ok(S::Pending(tx)) = got else {
        panic!("{got:?}");
    };
    // What the older build left (no claim), then claimed by a proof presenting the hash for another invoice.
    let key = format!("txhash/{tx}");
    let mut proof = kv_json(&kit, &key).await.unwrap();
    proof["claim"] = json!(key);
    proof["holder"] = json!("proof");
    proof["invoice"] = json!("inv_another");
    kit.kv_put(&key, proof.to_string().as_bytes()).await;

    node.set(|c| c.drop_send = false);
    super::backdate(&kit, &p.nonce_key(), 40).await;
    assert_eq!(
        settle(&mut kit, &inv, p.v2()).await,
        Ok(S::Pending(tx.clone())),
        "mined, but it pays another invoice"
    );
    assert_eq!(node.sent().len(), 1, "sent again, and mined");
    let record = kv_json(&kit, &p.nonce_key()).await.unwrap();
    assert_eq!(record["status"], "submitted", "{record}");
    assert_eq!(
        kv_json(&kit, &key).await,
        Some(proof),
        "the proof's claim kept"
    );
}

/// Finding 3: a settlement confirmed on chain whose record was left `submitted` (the confirmation's write
/// failed, the purchase delivered) is reconciled by `owe-refund`: unsure, it is `unavailable` (asked again);
/// mined, the refund is recorded (before, a conflict, which the gateway takes as final: REFUND NOT RECORDED);
/// still pending hours after its claim, a conflict for an operator.
#[tokio::test]
async fn an_owe_refund_reconciles_a_settlement_left_submitted() {
    let node = Arc::new(Node::default());
    let mut kit = builder(&node)
        .var("treasury_private_key", TREASURY_KEY)
        .var("settlement_timeout_ms", "300")
        .build()
        .await
        .unwrap();
    let inv = invoice(201, None);
    let p = pay(&inv);
    node.set(|c| c.mining = Mining::Never);
    let got = settle(&mut kit, &inv, p.v2()).await;
    let Ok(S::Pending(tx)) = got else {
        panic!("{got:?}");
    };
    let paid = wit_invoice(&paid_invoice(&inv, &tx));
    let got = owe(&mut kit, &paid, &tx).await;
    assert!(matches!(&got, Err(E::Unavailable(_))), "{got:?}");
    assert_eq!(
        kv_json(&kit, &format!("refund/{}", inv.invoice_id)).await,
        None
    );
    // Still pending hours after its claim: no longer asked again, refused for an operator (before, `unavailable`
    // for ever: a terminate answered 503 each time and its SIM never left the cleanup list).
    let claimed_at = kv_json(&kit, &p.nonce_key()).await.unwrap()["claimed_at"]
        .as_u64()
        .unwrap();
    let late = claimed_at + esim402_core::refund::UNSURE_SETTLEMENT_SECS;
    let got = owe_at(&mut kit, &paid, &tx, late - 1).await;
    assert!(matches!(&got, Err(E::Unavailable(_))), "{got:?}");
    let got = owe_at(&mut kit, &paid, &tx, late).await;
    assert!(
        matches!(&got, Err(E::Conflict(m)) if m.contains("submitted")),
        "{got:?}"
    );

    node.set(|c| c.mining = Mining::Succeed);
    let owed = owe(&mut kit, &paid, &tx).await.unwrap();
    assert!(owed.new, "{owed:?}");
    let record = kv_json(&kit, &p.nonce_key()).await.unwrap();
    assert_eq!(record["status"], "confirmed");
    assert_eq!(
        kv_json(&kit, "refund/queue").await,
        Some(json!([inv.invoice_id]))
    );
}
