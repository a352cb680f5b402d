//! Refunds in the verifier component (`owe-refund`, `run-refunds`), against the scripted JSON-RPC node of
//! [`crate::verifier`]: invoices are paid by a real `exact` settlement first, then refunded from a treasury key
//! whose transfers the test decodes from the raw transactions the node was sent. The verifier does not write
//! the ledger: it returns each money event (`refund-owed.event` when `new`, `refund-run.events`) for the
//! gateway to log, so "logged once" is checked on those.

use std::sync::Arc;

use alloy_consensus::{Signed, TxEip1559};
use alloy_primitives::{Address, TxKind, U256, keccak256};
use esim402_core::evm::erc20::{TRANSFER_SELECTOR, decode_transfer_calldata};
use esim402_core::invoice::Invoice;
use esim402_testkit::{Kit, types};
use serde_json::{Value, json};

use crate::verifier::{
    BASE_FEE, CHAIN_ID, E, Mining, Node, PRICE, S, TIP, TX_COUNT, USDC, addr, backdate, decode_tx,
    invoice, kit, kv_json, now, paid_invoice, pay, payer, rpc_methods, settle, wit_invoice,
};

/// Anvil dev account #4 as the treasury: another secret that must never leak.
const TREASURY_KEY: &str = "0x47e179ec197488593b187f80a00eb0da91f1b9d0b13f8733639f19c30a34926a";

fn treasury() -> Address {
    esim402_core::evm::SigningKey::from_hex(TREASURY_KEY)
        .unwrap()
        .address()
}

/// A verifier with the treasury key set, plus `vars`.
async fn refund_kit(node: &Arc<Node>, vars: &[(&str, &str)]) -> Kit {
    let mut all = vec![("treasury_private_key", TREASURY_KEY)];
    all.extend_from_slice(vars);
    kit(node, &all).await
}

/// An invoice paid by a confirmed `exact` settlement (as the invoices component shows it once marked paid),
/// with a copy of its id for convenience.
struct Paid {
    inv: Invoice,
    id: String,
    tx: String,
}

async fn paid(kit: &mut Kit, seed: u8) -> Paid {
    let inv = invoice(seed, None);
    let got = settle(kit, &inv, pay(&inv).v2()).await;
    let Ok(S::Settled(tx)) = got else {
        panic!("{got:?}");
    };
    Paid {
        inv: paid_invoice(&inv, &tx),
        id: inv.invoice_id.as_str().to_owned(),
        tx,
    }
}

/// What `owe-refund` answered: the refund record, whether this call created it, and its ledger event.
#[derive(Debug)]
struct Owed {
    refund: Value,
    new: bool,
    event: types::LedgerEvent,
}

async fn owe_raw(
    kit: &mut Kit,
    inv: types::Invoice,
    tx: &str,
    amount: Option<u64>,
    reason: &str,
) -> Result<Owed, E> {
    let (tx, reason) = (tx.to_owned(), reason.to_owned());
    kit.call(async move |a, g| {
        g.verifier()
            .call_owe_refund(a, inv, tx, amount, reason, now())
            .await
    })
    .await
    .unwrap()
    .map(owed)
    .map_err(E::from)
}

fn owed(o: types::RefundOwed) -> Owed {
    Owed {
        refund: serde_json::from_str(&o.refund).unwrap(),
        new: o.new,
        event: o.event,
    }
}

/// `owe-refund` for a paid invoice, of its whole amount.
async fn owe(kit: &mut Kit, p: &Paid, reason: &str) -> Result<Owed, E> {
    owe_raw(kit, wit_invoice(&p.inv), &p.tx, None, reason).await
}

async fn run(kit: &mut Kit, limit: u32) -> Result<Value, E> {
    run_at(kit, now(), limit).await
}

/// A run as of `at` (unix seconds), acknowledged as the gateway does once it logged the events: its summary.
/// The ledger events it returns are checked here against the summary: exactly one `refund_paid` per refund it
/// reports paid, and no repeats (nothing was left unacknowledged).
async fn run_at(kit: &mut Kit, at: u64, limit: u32) -> Result<Value, E> {
    let r = run_unacked(kit, at, limit).await?;
    assert!(r.repeats.is_empty(), "{:?}", r.repeats);
    ack(kit, r.settled.clone()).await;
    Ok(summary(r))
}

/// A run whose caller stops before acknowledging it (the gateway killed before its events were logged).
async fn run_unacked(kit: &mut Kit, at: u64, limit: u32) -> Result<types::RefundRun, E> {
    kit.call(async move |a, g| g.verifier().call_run_refunds(a, at, limit).await)
        .await
        .unwrap()
        .map_err(E::from)
}

async fn ack(kit: &mut Kit, ids: Vec<String>) -> u32 {
    kit.call(async move |a, g| g.verifier().call_ack_refunds(a, ids).await)
        .await
        .unwrap()
        .unwrap()
}

fn summary(r: types::RefundRun) -> Value {
    let summary: Value = serde_json::from_str(&r.summary).unwrap();
    let paid: Vec<(String, String)> = summary["paid"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            (
                p["invoice"].as_str().unwrap().to_owned(),
                p["transaction"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    let logged: Vec<(String, String)> = r
        .events
        .iter()
        .map(|e| {
            assert_eq!(e.kind, "refund_paid", "{e:?}");
            assert_eq!(e.payer.as_deref(), Some(payer().to_checksum(None).as_str()));
            assert_eq!(e.network.as_deref(), Some("eip155:31337"));
            assert_eq!(e.amount, Some(PRICE));
            (e.invoice.clone().unwrap(), e.tx_hash.clone().unwrap())
        })
        .collect();
    assert_eq!(
        logged, paid,
        "one ledger event per refund paid, and only those"
    );
    summary
}

/// The refund transfers among everything the node was sent.
fn refund_txs(node: &Node) -> Vec<Signed<TxEip1559>> {
    node.sent()
        .iter()
        .map(|raw| decode_tx(raw))
        .filter(|tx| tx.tx().input.starts_with(&TRANSFER_SELECTOR))
        .collect()
}

async fn queue(kit: &Kit) -> Value {
    kv_json(kit, "refund/queue").await.unwrap_or(Value::Null)
}

#[tokio::test]
async fn owe_refund_is_refused_unless_the_payment_is_confirmed() {
    let node = Arc::new(Node::default());
    let mut kit = refund_kit(&node, &[("settlement_timeout_ms", "300")]).await;
    let nothing_paid = |r: &Result<Owed, E>| matches!(r, Err(E::Conflict(m)) if m.starts_with("nothing was paid for invoice"));

    // An invoice nobody paid, presented with a transaction that never paid anything.
    let open = invoice(100, None);
    let never = keccak256("a transaction nobody sent").to_string();
    let got = owe_raw(
        &mut kit,
        wit_invoice(&open),
        &never,
        None,
        "activation failed",
    )
    .await;
    // Claimed for nothing: it took nothing, which is not an operator's conflict (a tx-hash transfer too small to
    // be claimed was logged `OPERATOR: REFUND NOT RECORDED` when it was).
    assert!(
        matches!(&got, Err(E::NotFound(m)) if m.contains("is not claimed for invoice")),
        "{got:?}"
    );
    // An invoice presented with a transaction that paid another invoice (what an unknown invoice was: the
    // verifier only knows what a transaction paid).
    let other = paid(&mut kit, 103).await;
    let unknown = invoice(101, None);
    let got = owe_raw(
        &mut kit,
        wit_invoice(&unknown),
        &other.tx,
        None,
        "activation failed",
    )
    .await;
    assert!(nothing_paid(&got), "{got:?}");
    // More than was paid (or nothing) is no refund.
    for amount in [0, PRICE + 1] {
        let got = owe_raw(
            &mut kit,
            wit_invoice(&other.inv),
            &other.tx,
            Some(amount),
            "activation failed",
        )
        .await;
        assert!(
            matches!(&got, Err(E::InvalidInput { field, .. }) if field == "amount"),
            "{got:?}"
        );
    }

    // A settlement broadcast but not confirmed: money may not have moved yet. Reconciled against its receipt
    // and still unsure: asked again (`unavailable`), never refused (its confirmation may be mined with its
    // record left behind: `verifier_refunds::an_owe_refund_reconciles_a_settlement_left_submitted`).
    let inv = invoice(102, None);
    node.set(|c| c.mining = Mining::Never);
    let got = settle(&mut kit, &inv, pay(&inv).v2()).await;
    let Ok(S::Pending(tx)) = got else {
        panic!("{got:?}");
    };
    let got = owe_raw(&mut kit, wit_invoice(&inv), &tx, None, "activation failed").await;
    assert!(
        matches!(&got, Err(E::Unavailable(m)) if m.contains("not confirmed yet")),
        "{got:?}"
    );

    // Malformed input names its field.
    let mut bad = wit_invoice(&inv);
    bad.id = "not-an-invoice".into();
    let got = owe_raw(&mut kit, bad, &tx, None, "activation failed").await;
    assert!(
        matches!(&got, Err(E::InvalidInput { field, .. }) if field == "invoice_id"),
        "{got:?}"
    );
    let got = owe_raw(
        &mut kit,
        wit_invoice(&inv),
        "0x1234",
        None,
        "activation failed",
    )
    .await;
    assert!(
        matches!(&got, Err(E::InvalidInput { field, .. }) if field == "transaction"),
        "{got:?}"
    );
    let got = owe_raw(&mut kit, wit_invoice(&other.inv), &other.tx, None, "  ").await;
    assert!(
        matches!(&got, Err(E::InvalidInput { field, .. }) if field == "reason"),
        "{got:?}"
    );

    // Nothing was recorded, so nothing is owed (and no event exists to log).
    for inv in [&open, &unknown, &inv, &other.inv] {
        assert!(
            kit.kv_get(&format!("refund/{}", inv.invoice_id))
                .await
                .is_none()
        );
    }
    assert_eq!(queue(&kit).await, Value::Null);
}

#[tokio::test]
async fn owe_refund_is_idempotent_and_logs_once() {
    let node = Arc::new(Node::default());
    let mut kit = refund_kit(&node, &[]).await;
    let p = paid(&mut kit, 110).await;
    let id = p.id.clone();

    let first = owe(&mut kit, &p, "activation failed: pool empty")
        .await
        .unwrap();
    let refund = first.refund;
    assert_eq!(refund["invoice"], id.as_str());
    assert_eq!(refund["payer"], payer().to_checksum(None));
    assert_eq!(refund["amount"], PRICE.to_string());
    assert_eq!(refund["network"], "eip155:31337");
    assert_eq!(refund["asset"], addr(USDC).to_checksum(None));
    assert_eq!(refund["reason"], "activation failed: pool empty");
    assert_eq!(refund["status"], "owed");
    assert_eq!(refund["transaction"], Value::Null);
    assert_eq!(refund["attempts"], 0);
    assert_eq!(
        kv_json(&kit, &format!("refund/{id}")).await.unwrap(),
        refund
    );
    // The one `refund_owed` event, for the gateway to log.
    assert!(first.new);
    let event = first.event;
    assert_eq!(event.kind, "refund_owed");
    assert_eq!(event.invoice.as_deref(), Some(id.as_str()));
    assert_eq!(
        event.payer.as_deref(),
        Some(payer().to_checksum(None).as_str())
    );
    assert_eq!(event.network.as_deref(), Some("eip155:31337"));
    assert_eq!(event.amount, Some(PRICE));
    assert!(
        event
            .details
            .contains(&("reason".into(), "activation failed: pool empty".into())),
        "{event:?}"
    );

    // A repeat (even with another reason) answers the stored record and is not new: nothing to log.
    let again = owe(&mut kit, &p, "again").await.unwrap();
    assert_eq!(again.refund, refund);
    assert!(!again.new);
    assert_eq!(queue(&kit).await, json!([id]));
    assert_eq!(refund["payment"], p.tx.to_lowercase(), "{refund}");

    // Another confirmed payment of the same invoice (a tx-hash transfer claimed for it, as a late one is) is
    // not answered with this payment's refund: refused, naming the one owed back; a transaction that paid
    // nothing is still told so.
    let second = keccak256("a second payment of the invoice").to_string();
    let mut claim = kv_json(&kit, &format!("txhash/{}", p.tx)).await.unwrap();
    claim["claim"] = json!(format!("txhash/{second}"));
    claim["transaction"] = json!(second);
    claim["status"] = json!("confirmed");
    kit.kv_put(&format!("txhash/{second}"), claim.to_string().as_bytes())
        .await;
    let got = owe_raw(&mut kit, wit_invoice(&p.inv), &second, None, "late").await;
    assert!(
        matches!(&got, Err(E::Conflict(m)) if m.contains("already owes back") && m.contains(&p.tx.to_lowercase())),
        "{got:?}"
    );
    let never = keccak256("never mined").to_string();
    let got = owe_raw(&mut kit, wit_invoice(&p.inv), &never, None, "late").await;
    assert!(
        matches!(&got, Err(E::NotFound(m)) if m.contains("nothing was taken with it")),
        "{got:?}"
    );
    assert_eq!(
        kv_json(&kit, &format!("refund/{id}")).await.unwrap(),
        refund,
        "the refund is unchanged"
    );

    // Eight first calls at once: one record, one queue entry, one new (logged) answer.
    let p2 = paid(&mut kit, 111).await;
    let id2 = p2.id.clone();
    let (inv2, tx2) = (wit_invoice(&p2.inv), p2.tx.clone());
    let results = kit
        .call(async move |a, g| {
            let calls = (0..8).map(|i| {
                g.verifier().call_owe_refund(
                    a,
                    inv2.clone(),
                    tx2.clone(),
                    None,
                    format!("reason {i}"),
                    now(),
                )
            });
            crate::join_all(calls)
                .await
                .into_iter()
                .collect::<Result<Vec<_>, _>>()
        })
        .await
        .unwrap();
    let stored = kv_json(&kit, &format!("refund/{id2}")).await.unwrap();
    let mut new = 0;
    for r in results {
        let r = owed(r.unwrap());
        assert_eq!(r.refund, stored);
        assert_eq!(r.event.invoice.as_deref(), Some(id2.as_str()));
        new += usize::from(r.new);
    }
    assert_eq!(new, 1, "exactly one caller logs the refund");
    assert_eq!(queue(&kit).await, json!([id, id2]));
}

#[tokio::test]
async fn run_refunds_sends_one_transfer_to_the_payer_and_marks_it_paid() {
    let node = Arc::new(Node::default());
    let mut kit = refund_kit(&node, &[]).await;
    let p = paid(&mut kit, 120).await;
    let id = p.id.clone();
    owe(&mut kit, &p, "activation failed").await.unwrap();

    let summary = run(&mut kit, 10).await.unwrap();
    let txs = refund_txs(&node);
    assert_eq!(txs.len(), 1);
    let tx = &txs[0];
    let hash = tx.hash().to_string();
    assert_eq!(
        summary,
        json!({"paid": [{"invoice": id, "transaction": hash}], "pending": [], "failed": [],
               "remaining": 0})
    );
    // transfer(payer, price) on the USDC contract, signed by the treasury with the settlement machinery.
    assert_eq!(tx.tx().to, TxKind::Call(addr(USDC)));
    assert_eq!(tx.tx().input[..4], [0xa9, 0x05, 0x9c, 0xbb]);
    assert_eq!(
        decode_transfer_calldata(&tx.tx().input),
        Some((payer(), U256::from(PRICE)))
    );
    assert_eq!(tx.tx().value, U256::ZERO);
    assert_eq!(tx.tx().chain_id, CHAIN_ID);
    assert_eq!(tx.tx().nonce, TX_COUNT);
    assert_eq!(tx.recover_signer().unwrap(), treasury());
    assert_eq!(keccak256(&node.sent()[1]).to_string(), hash);

    let record = kv_json(&kit, &format!("refund/{id}")).await.unwrap();
    assert_eq!(record["status"], "paid");
    assert_eq!(record["transaction"], hash);
    assert_eq!(record["signer"], treasury().to_checksum(None));
    assert_eq!(record["attempts"], 0);
    let nonces = kv_json(
        &kit,
        &format!("signer/eip155:31337/{:#x}/nonce", treasury()),
    )
    .await
    .unwrap();
    assert_eq!(nonces["next"], TX_COUNT + 1);
    // Its one `refund_paid` event (invoice, transaction, payer) came back with the run: see `summary`.
    assert_eq!(queue(&kit).await, json!([]));

    // Nothing left to do: a second run sends nothing; owing again answers the paid record.
    let again = run(&mut kit, 10).await.unwrap();
    assert_eq!(
        again,
        json!({"paid": [], "pending": [], "failed": [], "remaining": 0})
    );
    let again = owe(&mut kit, &p, "again").await.unwrap();
    assert_eq!(again.refund, record);
    assert!(!again.new, "nothing new to log");
    assert_eq!(queue(&kit).await, json!([]));
    assert_eq!(refund_txs(&node).len(), 1);
    let sends = rpc_methods(&kit)
        .iter()
        .filter(|m| *m == "eth_sendRawTransaction")
        .count();
    assert_eq!(sends, 2, "the settlement and the one refund");
}

/// A run that paid a refund but was never acknowledged (its caller stopped before logging the event): the
/// refund stays queued, and a run once that one is surely over hands its `refund_paid` back as a repeat (no
/// second transfer) until it is acknowledged. Before, the paid refund left the queue with the run, and its event was lost with the caller.
#[tokio::test]
async fn a_paid_refund_stays_queued_until_its_event_is_acknowledged() {
    let node = Arc::new(Node::default());
    let mut kit = refund_kit(&node, &[]).await;
    let p = paid(&mut kit, 125).await;
    let id = p.id.clone();
    owe(&mut kit, &p, "activation failed").await.unwrap();

    let first = run_unacked(&mut kit, now(), 10).await.unwrap();
    assert_eq!(first.events.len(), 1);
    assert_eq!(first.settled, std::slice::from_ref(&id));
    let summary: Value = serde_json::from_str(&first.summary).unwrap();
    assert_eq!(
        summary["remaining"], 0,
        "acknowledged, it leaves: {summary}"
    );
    assert_eq!(queue(&kit).await, json!([id]), "not acknowledged yet");

    // Right after, the run that paid it may still be logging: left alone, still queued.
    let soon = run_unacked(&mut kit, now(), 10).await.unwrap();
    assert!(soon.events.is_empty() && soon.repeats.is_empty() && soon.settled.is_empty());
    assert_eq!(queue(&kit).await, json!([id]));

    // Once that run is surely done, a run repeats the event.
    let later = now() + esim402_core::refund::RELOG_AFTER_SECS;
    let again = run_unacked(&mut kit, later, 10).await.unwrap();
    assert!(again.events.is_empty(), "{:?}", again.events);
    let key = |e: &types::LedgerEvent| {
        (
            e.kind.clone(),
            e.invoice.clone(),
            e.tx_hash.clone(),
            e.amount,
            e.payer.clone(),
        )
    };
    assert_eq!(
        again.repeats.iter().map(key).collect::<Vec<_>>(),
        first.events.iter().map(key).collect::<Vec<_>>(),
        "the same event, for the ledger to keep once"
    );
    assert_eq!(again.settled, std::slice::from_ref(&id));
    assert_eq!(refund_txs(&node).len(), 1, "no second transfer");

    // An id whose refund is not paid is not acknowledged away.
    assert_eq!(
        ack(&mut kit, vec![id.clone(), "inv_unknown".into()]).await,
        0
    );
    assert_eq!(queue(&kit).await, json!([]));
    let last = run_unacked(&mut kit, later, 10).await.unwrap();
    assert!(last.events.is_empty() && last.repeats.is_empty() && last.settled.is_empty());
}

#[tokio::test]
async fn a_refund_without_a_receipt_stays_submitted_and_is_reconciled_without_a_second_send() {
    let node = Arc::new(Node::default());
    let mut kit = refund_kit(&node, &[("settlement_timeout_ms", "300")]).await;
    let p = paid(&mut kit, 130).await;
    let id = p.id.clone();
    owe(&mut kit, &p, "activation failed").await.unwrap();
    node.set(|c| c.mining = Mining::Never);

    let summary = run(&mut kit, 10).await.unwrap();
    let txs = refund_txs(&node);
    assert_eq!(txs.len(), 1);
    let hash = txs[0].hash().to_string();
    let pending = json!({"paid": [], "pending": [{"invoice": id, "transaction": hash}],
                         "failed": [], "remaining": 1});
    assert_eq!(summary, pending);
    let record = kv_json(&kit, &format!("refund/{id}")).await.unwrap();
    assert_eq!(record["status"], "submitted");
    assert_eq!(record["transaction"], hash);

    // Still not mined: still pending against the same hash, never a second transfer.
    assert_eq!(run(&mut kit, 10).await.unwrap(), pending);
    assert_eq!(refund_txs(&node).len(), 1);

    node.set(|c| c.mining = Mining::Succeed);
    let summary = run(&mut kit, 10).await.unwrap();
    assert_eq!(
        summary,
        json!({"paid": [{"invoice": id, "transaction": hash}], "pending": [], "failed": [],
               "remaining": 0})
    );
    assert_eq!(refund_txs(&node).len(), 1);
    let record = kv_json(&kit, &format!("refund/{id}")).await.unwrap();
    assert_eq!(record["status"], "paid");
}

#[tokio::test]
async fn a_reverted_refund_is_owed_again_and_a_later_run_sends_a_new_transfer() {
    let node = Arc::new(Node::default());
    let mut kit = refund_kit(&node, &[]).await;
    let p = paid(&mut kit, 140).await;
    let id = p.id.clone();
    owe(&mut kit, &p, "activation failed").await.unwrap();

    // The treasury lacks USDC: the transfer is mined and reverts.
    node.set(|c| c.mining = Mining::Revert);
    let summary = run(&mut kit, 10).await.unwrap();
    let reverted = refund_txs(&node)[0].hash().to_string();
    assert_eq!(summary["paid"], json!([]));
    assert_eq!(summary["failed"][0]["invoice"], id.as_str());
    let error = summary["failed"][0]["error"].as_str().unwrap();
    assert!(
        error.contains(&reverted) && error.contains("reverted"),
        "{error}"
    );
    assert_eq!(summary["remaining"], 1);
    let record = kv_json(&kit, &format!("refund/{id}")).await.unwrap();
    assert_eq!(record["status"], "owed");
    assert_eq!(record["attempts"], 1);
    assert_eq!(record["last_error"], error);
    assert_eq!(record["transaction"], Value::Null);

    // The node predicts a revert: nothing is signed or sent, the attempt still counts.
    node.set(|c| c.estimate_fails = true);
    let summary = run(&mut kit, 10).await.unwrap();
    let error = summary["failed"][0]["error"].as_str().unwrap();
    assert!(error.contains("would revert"), "{error}");
    assert_eq!(summary["paid"], json!([]));
    assert_eq!(refund_txs(&node).len(), 1);
    let record = kv_json(&kit, &format!("refund/{id}")).await.unwrap();
    assert_eq!(record["status"], "owed");
    assert_eq!(record["attempts"], 2);

    // Funded again: a new transaction (the reverted one used its nonce), paid.
    node.set(|c| {
        c.estimate_fails = false;
        c.mining = Mining::Succeed;
    });
    let summary = run(&mut kit, 10).await.unwrap();
    let txs = refund_txs(&node);
    assert_eq!(txs.len(), 2);
    assert_eq!(txs[1].tx().nonce, TX_COUNT + 1);
    let hash = txs[1].hash().to_string();
    assert_ne!(hash, reverted);
    assert_eq!(
        summary["paid"],
        json!([{"invoice": id, "transaction": hash}])
    );
    let record = kv_json(&kit, &format!("refund/{id}")).await.unwrap();
    assert_eq!(record["status"], "paid");
    assert_eq!(record["attempts"], 2);
}

#[tokio::test]
async fn a_send_refused_before_broadcast_releases_the_refund_and_its_nonce() {
    let node = Arc::new(Node::default());
    let mut kit = refund_kit(&node, &[]).await;
    let p = paid(&mut kit, 150).await;
    let id = p.id.clone();
    owe(&mut kit, &p, "activation failed").await.unwrap();

    node.set(|c| c.refuse_send = true);
    let summary = run(&mut kit, 10).await.unwrap();
    let error = summary["failed"][0]["error"].as_str().unwrap();
    assert!(error.contains("refused the refund transaction"), "{error}");
    let record = kv_json(&kit, &format!("refund/{id}")).await.unwrap();
    assert_eq!(record["status"], "owed");
    assert_eq!(record["attempts"], 0, "no transaction existed");
    assert_eq!(record["transaction"], Value::Null);
    let nonces = kv_json(
        &kit,
        &format!("signer/eip155:31337/{:#x}/nonce", treasury()),
    )
    .await
    .unwrap();
    // Its transaction was on the record until the release: the nonce is held, an orphan at once, and the
    // next send gives it back (below) now that the record names no transaction.
    assert_eq!(nonces["pending"], json!([TX_COUNT]), "{nonces}");
    assert_eq!(
        nonces["reserved_at"][TX_COUNT.to_string()],
        json!(0),
        "{nonces}"
    );

    node.set(|c| c.refuse_send = false);
    let summary = run(&mut kit, 10).await.unwrap();
    let txs = refund_txs(&node);
    assert_eq!(txs.len(), 1);
    assert_eq!(txs[0].tx().nonce, TX_COUNT);
    assert_eq!(summary["paid"][0]["transaction"], txs[0].hash().to_string());
}

#[tokio::test]
async fn without_a_treasury_key_refunds_are_owed_but_not_paid_and_no_key_leaks() {
    let node = Arc::new(Node::default());
    let mut errors = Vec::new();

    let mut none = kit(&node, &[]).await;
    let p = paid(&mut none, 160).await;
    owe(&mut none, &p, "activation failed").await.unwrap();
    let before = none.requests().len();
    let got = run(&mut none, 10).await;
    assert_eq!(
        got,
        Err(E::Unavailable(
            "refunds are disabled: treasury_private_key is not set".into()
        ))
    );
    assert_eq!(none.requests().len(), before, "the chain is not asked");
    errors.push(format!("{got:?}"));

    let bad_key = "0x47e179ec197488593b187f80a00eb0da91f1b9d0b13f8733639f19c30a3492zz";
    let mut bad = kit(&node, &[("treasury_private_key", bad_key)]).await;
    let got = run(&mut bad, 10).await;
    assert!(
        matches!(&got, Err(E::Internal(m)) if m.contains("treasury_private_key")),
        "{got:?}"
    );
    errors.push(format!("{got:?}"));

    // A working treasury, through every outcome, leaves no trace of either key.
    let mut good = refund_kit(&node, &[("settlement_timeout_ms", "300")]).await;
    for (seed, mining) in [
        (161, Mining::Revert),
        (162, Mining::Never),
        (163, Mining::Succeed),
    ] {
        node.set(|c| c.mining = Mining::Succeed);
        let p = paid(&mut good, seed).await;
        owe(&mut good, &p, "activation failed").await.unwrap();
        node.set(|c| c.mining = mining);
        errors.push(run(&mut good, 10).await.unwrap().to_string());
    }
    let p = paid(&mut good, 164).await;
    owe(&mut good, &p, "activation failed").await.unwrap();
    node.set(|c| c.refuse_send = true);
    errors.push(run(&mut good, 10).await.unwrap().to_string());
    node.set(|c| c.down = true);
    errors.push(format!("{:?}", run(&mut good, 10).await));

    let secrets = [
        TREASURY_KEY[2..].to_owned(),
        bad_key[2..].to_owned(),
        TREASURY_KEY[2..18].to_owned(),
        TREASURY_KEY[50..].to_owned(),
    ];
    let mut haystacks = errors;
    for k in [&none, &bad, &good] {
        for r in k.requests() {
            haystacks.push(format!(
                "{} {} {:?} {}",
                r.method,
                r.uri,
                r.headers,
                String::from_utf8_lossy(&r.body)
            ));
        }
        for key in k.kv().keys().await.unwrap() {
            let value = k.kv().get(&key).await.unwrap().unwrap_or_default();
            haystacks.push(format!("{key} {}", String::from_utf8_lossy(&value)));
        }
    }
    assert!(haystacks.len() > 10);
    for h in &haystacks {
        let h = h.to_lowercase();
        for s in &secrets {
            assert!(!h.contains(s.as_str()), "secret fragment in {h}");
        }
    }
}

#[tokio::test]
async fn concurrent_runs_send_exactly_one_transfer_per_refund() {
    let node = Arc::new(Node::default());
    let mut kit = refund_kit(&node, &[]).await;
    let mut ids = Vec::new();
    for seed in 170..173 {
        let p = paid(&mut kit, seed).await;
        let id = p.id.clone();
        owe(&mut kit, &p, "activation failed").await.unwrap();
        ids.push(id);
    }

    let results = kit
        .call(async move |a, g| {
            let calls = (0..8).map(|_| g.verifier().call_run_refunds(a, now(), 10));
            crate::join_all(calls)
                .await
                .into_iter()
                .collect::<Result<Vec<_>, _>>()
        })
        .await
        .unwrap();

    let txs = refund_txs(&node);
    assert_eq!(txs.len(), ids.len(), "{results:?}");
    let mut nonces: Vec<u64> = txs.iter().map(|t| t.tx().nonce).collect();
    nonces.sort_unstable();
    assert_eq!(nonces, (TX_COUNT..TX_COUNT + 3).collect::<Vec<_>>());
    let mut reported = Vec::new();
    for r in results {
        let r = r.unwrap();
        // Each caller acknowledges what it logged, as the gateway does (a refund another run paid first may
        // come back to a later run as a repeat: the ledger keeps its event once).
        ack(&mut kit, r.settled.clone()).await;
        let summary = summary(r);
        assert_eq!(summary["failed"], json!([]), "{summary}");
        for p in summary["paid"].as_array().unwrap() {
            reported.push(p["invoice"].as_str().unwrap().to_owned());
        }
    }
    reported.sort();
    let mut want = ids.clone();
    want.sort();
    assert_eq!(
        reported, want,
        "each refund reported paid by exactly one run"
    );
    for id in &ids {
        let record = kv_json(&kit, &format!("refund/{id}")).await.unwrap();
        assert_eq!(record["status"], "paid");
        assert!(
            txs.iter()
                .any(|t| t.hash().to_string() == record["transaction"])
        );
    }
    assert_eq!(queue(&kit).await, json!([]));
    assert_eq!(
        run(&mut kit, 10).await.unwrap(),
        json!({"paid": [], "pending": [], "failed": [], "remaining": 0})
    );
    assert_eq!(refund_txs(&node).len(), ids.len());
}

#[tokio::test]
async fn a_refund_the_node_lost_is_sent_again_with_identical_bytes_and_paid() {
    let node = Arc::new(Node::default());
    let mut kit = refund_kit(&node, &[("settlement_timeout_ms", "300")]).await;
    let p = paid(&mut kit, 180).await;
    let id = p.id.clone();
    owe(&mut kit, &p, "activation failed").await.unwrap();
    node.set(|c| c.mining = Mining::Never);
    let summary = run(&mut kit, 10).await.unwrap();
    let first = refund_txs(&node)[0].clone();
    let hash = first.hash().to_string();
    assert_eq!(summary["pending"][0]["transaction"], hash);
    assert_eq!(summary["paid"], json!([]));

    // The node forgets it; a run moments later leaves it to its own send, a later one sends it again.
    node.forget();
    node.set(|c| c.mining = Mining::Succeed);
    let summary = run(&mut kit, 10).await.unwrap();
    assert_eq!(summary["pending"][0]["transaction"], hash);
    assert_eq!(summary["paid"], json!([]));
    assert_eq!(refund_txs(&node).len(), 1);
    backdate(&kit, &format!("refund/{id}"), 60).await;
    let summary = run(&mut kit, 10).await.unwrap();
    assert_eq!(
        summary,
        json!({"paid": [{"invoice": id, "transaction": hash}], "pending": [], "failed": [],
               "remaining": 0})
    );
    let txs = refund_txs(&node);
    assert_eq!(txs.len(), 2);
    assert_eq!(txs[1], first, "the identical transfer, not a second refund");
    let record = kv_json(&kit, &format!("refund/{id}")).await.unwrap();
    assert_eq!(record["status"], "paid");
    assert_eq!(record["attempts"], 0);
}

/// A refund transfer the base fee outgrew while it waited in the pool is replaced with higher fees (same
/// treasury nonce, same transfer), recorded before it is sent; the original, mined after all, pays the refund.
#[tokio::test]
async fn a_refund_below_the_base_fee_is_replaced_and_paid_by_whichever_hash_is_mined() {
    let node = Arc::new(Node::default());
    let mut kit = refund_kit(&node, &[("settlement_timeout_ms", "300")]).await;
    let p = paid(&mut kit, 181).await;
    let id = p.id.clone();
    let key = format!("refund/{id}");
    owe(&mut kit, &p, "activation failed").await.unwrap();
    node.set(|c| c.mining = Mining::Never);
    run(&mut kit, 10).await.unwrap();
    let first = refund_txs(&node)[0].clone();
    let original = first.hash().to_string();

    node.set(|c| c.base_fee = Some(10 * BASE_FEE));
    backdate(&kit, &key, 60).await;
    let summary = run(&mut kit, 10).await.unwrap();
    let txs = refund_txs(&node);
    assert_eq!(txs.len(), 2, "replaced once");
    let replacement = txs[1].hash().to_string();
    assert_ne!(replacement, original);
    assert_eq!(summary["pending"][0]["transaction"], replacement);
    let (old, new) = (first.tx(), txs[1].tx());
    assert_eq!(
        (new.nonce, &new.input, new.to),
        (old.nonce, &old.input, old.to)
    );
    assert_eq!(
        (new.max_fee_per_gas, new.max_priority_fee_per_gas),
        (20 * BASE_FEE + TIP, TIP * 11 / 10)
    );
    let record = kv_json(&kit, &key).await.unwrap();
    assert_eq!(record["transaction"], replacement);
    assert_eq!(record["replaced"], json!([original]));

    // The original is mined (the pool drops the replacement), and the treasury's nonce reads used.
    node.forget_one(txs[1].hash().to_owned());
    node.set(|c| {
        c.mining = Mining::Succeed;
        c.mined_count = Some(TX_COUNT + 1);
    });
    let summary = run(&mut kit, 10).await.unwrap();
    assert_eq!(
        summary,
        json!({"paid": [{"invoice": id, "transaction": original}], "pending": [], "failed": [],
               "remaining": 0})
    );
    let record = kv_json(&kit, &key).await.unwrap();
    assert_eq!(record["status"], "paid");
    assert_eq!(record["transaction"], original);
    assert_eq!(refund_txs(&node).len(), 2, "no third transfer");
}

#[tokio::test]
async fn a_refund_whose_nonce_another_transaction_used_is_owed_again_after_a_second_look() {
    let node = Arc::new(Node::default());
    let mut kit = refund_kit(&node, &[("settlement_timeout_ms", "300")]).await;
    let p = paid(&mut kit, 181).await;
    let id = p.id.clone();
    owe(&mut kit, &p, "activation failed").await.unwrap();
    node.set(|c| c.mining = Mining::Never);
    assert_eq!(run(&mut kit, 10).await.unwrap()["paid"], json!([]));
    let lost = refund_txs(&node)[0].hash().to_string();

    // Forgotten, and the treasury's nonce used by something else.
    node.forget();
    node.set(|c| {
        c.mined_count = Some(TX_COUNT + 1);
        c.pending_count = Some(TX_COUNT + 1);
        c.mining = Mining::Succeed;
    });
    let pending = json!({"paid": [], "pending": [{"invoice": id, "transaction": lost}],
                         "failed": [], "remaining": 1});
    // First sighting: a lagging node could be hiding the transfer, so it stays submitted.
    assert_eq!(run(&mut kit, 10).await.unwrap(), pending);
    let record = kv_json(&kit, &format!("refund/{id}")).await.unwrap();
    assert_eq!(record["status"], "submitted");
    assert!(record["unmineable_since"].is_u64());
    assert_eq!(run(&mut kit, 10).await.unwrap(), pending);

    // Still so two minutes on: no money moved, the refund is owed again.
    let summary = run_at(&mut kit, now() + 600, 10).await.unwrap();
    assert_eq!(summary["paid"], json!([]));
    assert_eq!(summary["failed"][0]["invoice"], id.as_str());
    let error = summary["failed"][0]["error"].as_str().unwrap();
    assert!(
        error.contains("never will be") && error.contains(&lost),
        "{error}"
    );
    let record = kv_json(&kit, &format!("refund/{id}")).await.unwrap();
    assert_eq!(record["status"], "owed");
    assert_eq!(record["attempts"], 1);
    assert_eq!(record["transaction"], Value::Null);
    assert_eq!(record["raw_transaction"], Value::Null);
    assert_eq!(refund_txs(&node).len(), 1);

    // The next run pays it with a new transfer on the next nonce.
    let summary = run(&mut kit, 10).await.unwrap();
    let txs = refund_txs(&node);
    assert_eq!(txs.len(), 2);
    assert_eq!(txs[1].tx().nonce, TX_COUNT + 1);
    assert_eq!(
        summary["paid"],
        json!([{"invoice": id, "transaction": txs[1].hash().to_string()}])
    );
}

#[tokio::test]
async fn a_refund_whose_send_never_reached_the_node_goes_out_before_the_next_refund() {
    let node = Arc::new(Node::default());
    let mut kit = refund_kit(&node, &[("settlement_timeout_ms", "300")]).await;
    let first = paid(&mut kit, 182).await;
    let second = paid(&mut kit, 183).await;
    owe(&mut kit, &first, "activation failed").await.unwrap();

    node.set(|c| c.drop_send = true);
    let summary = run(&mut kit, 10).await.unwrap();
    assert!(refund_txs(&node).is_empty());
    let record = kv_json(&kit, &format!("refund/{}", first.id))
        .await
        .unwrap();
    let lost = record["transaction"].as_str().unwrap().to_owned();
    assert_eq!(summary["pending"][0]["transaction"], lost);
    assert_eq!(summary["paid"], json!([]));
    assert_eq!(record["signer_nonce"], TX_COUNT);

    // A minute later the second refund is paid alone (the first is off the queue): its send gives the node
    // the treasury nonce it is missing first.
    backdate(&kit, &format!("refund/{}", first.id), 60).await;
    node.set(|c| c.drop_send = false);
    owe(&mut kit, &second, "activation failed").await.unwrap();
    kit.kv_put("refund/queue", json!([second.id]).to_string().as_bytes())
        .await;
    let summary = run(&mut kit, 10).await.unwrap();
    let txs = refund_txs(&node);
    assert_eq!(txs.len(), 2);
    assert_eq!(txs[0].hash().to_string(), lost);
    assert_eq!(txs[0].tx().nonce, TX_COUNT);
    assert_eq!(txs[1].tx().nonce, TX_COUNT + 1);
    assert_eq!(
        summary["paid"],
        json!([{"invoice": second.id, "transaction": txs[1].hash().to_string()}])
    );

    // Owing the first again puts it back on the queue; it is paid by the transaction already out there.
    let again = owe(&mut kit, &first, "activation failed").await.unwrap();
    assert!(!again.new);
    let summary = run(&mut kit, 10).await.unwrap();
    assert_eq!(
        summary["paid"],
        json!([{"invoice": first.id, "transaction": lost}])
    );
    assert_eq!(refund_txs(&node).len(), 2);
}

/// A run's transitions are stamped with the time they happen, not the `now` the run was started with (tens of
/// seconds old by the time a refund is claimed, sent and settled behind slow chain calls): a stale stamp
/// makes a live claim look abandoned sooner and a submitted transfer older than it is.
#[tokio::test]
async fn a_runs_transitions_are_stamped_when_they_happen() {
    let node = Arc::new(Node::default());
    let mut kit = refund_kit(&node, &[]).await;
    let p = paid(&mut kit, 121).await;
    owe(&mut kit, &p, "activation failed").await.unwrap();
    let started = now();
    node.set(|c| c.mining = Mining::Never);
    run_unacked(&mut kit, started - 100, 10).await.unwrap();
    let record = kv_json(&kit, &format!("refund/{}", p.id)).await.unwrap();
    assert_eq!(record["status"], "submitted", "{record}");
    assert!(
        record["updated_at"].as_u64().unwrap() >= started,
        "{record}"
    );
}

/// A treasury nonce reserved by a run that died before recording its transfer, below a refund that waits in
/// the pool behind it: a later run that only follows that refund up (it sends no new one, which would have
/// taken the released nonce) fills the hole with the treasury's no-op transaction, as settlement replays do
/// for the facilitator's key (`sender::heal_gaps`).
#[tokio::test]
async fn a_refund_run_fills_a_treasury_nonce_gap_below_a_waiting_refund() {
    let node = Arc::new(Node::default());
    let mut kit = refund_kit(&node, &[("settlement_timeout_ms", "300")]).await;
    let p = paid(&mut kit, 184).await;
    let id = p.id.clone();
    owe(&mut kit, &p, "activation failed").await.unwrap();
    let nonces = format!("signer/eip155:31337/{:#x}/nonce", treasury());
    // TX_COUNT was reserved just now for a refund whose run died (no record names a transaction at it).
    let ghost = "refund/inv_test.ghost";
    let seeded = json!({"next": TX_COUNT + 1, "pending": [TX_COUNT],
                        "owners": {TX_COUNT.to_string(): ghost},
                        "reserved_at": {TX_COUNT.to_string(): now()}});
    kit.kv_put(&nonces, seeded.to_string().as_bytes()).await;
    node.set(|c| c.mining = Mining::Never);
    let summary = run(&mut kit, 10).await.unwrap();
    let txs = refund_txs(&node);
    assert_eq!(txs.len(), 1);
    assert_eq!(txs[0].tx().nonce, TX_COUNT + 1, "behind the reserved nonce");
    let hash = txs[0].hash().to_string();
    let pending = json!({"paid": [], "pending": [{"invoice": id, "transaction": hash}],
                         "failed": [], "remaining": 1});
    assert_eq!(summary, pending);

    // Past the orphan age the refund still waits behind the hole (the node's pending count stops at it).
    let mut state = kv_json(&kit, &nonces).await.unwrap();
    state["reserved_at"][TX_COUNT.to_string()] = json!(now() - 1_000);
    kit.kv_put(&nonces, state.to_string().as_bytes()).await;
    assert_eq!(run(&mut kit, 10).await.unwrap(), pending);
    let no_ops: Vec<_> = node
        .sent()
        .iter()
        .map(|raw| decode_tx(raw))
        .filter(|tx| tx.recover_signer().unwrap() == treasury() && tx.tx().input.is_empty())
        .collect();
    assert_eq!(no_ops.len(), 1, "the hole is filled");
    let tx = no_ops[0].tx();
    assert_eq!(
        (tx.nonce, tx.to, tx.value, tx.gas_limit),
        (TX_COUNT, TxKind::Call(treasury()), U256::ZERO, 21_000)
    );
    assert_eq!(refund_txs(&node).len(), 1, "no second transfer");
    let state = kv_json(&kit, &nonces).await.unwrap();
    assert_eq!(state["pending"], json!([TX_COUNT, TX_COUNT + 1]), "{state}");

    // A run right after fills nothing again (the no-op holds the nonce for another orphan age).
    assert_eq!(run(&mut kit, 10).await.unwrap(), pending);
    assert_eq!(
        node.sent().len(),
        3,
        "the settlement, the refund and the no-op"
    );
}
