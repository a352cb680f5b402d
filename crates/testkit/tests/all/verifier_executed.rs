//! `executed`: a resumed `exact` payment that `verify` now refuses, because its authorization was executed by
//! another transaction while its order waited (or simply expired), against the scripted node of [`super`].
//! Executed with this payment's money: settled by that transaction; anything else: nothing is claimed.

use std::sync::Arc;

use alloy_primitives::{B256, U256};
use esim402_testkit::{Kit, types};

use super::{
    E, Invoice, Node, PRICE, S, invoice, kit, kv_json, now, pay, payer, settle, transfer_log,
    used_by, verify, wit_invoice,
};

/// `executed`: the payer it vouches for and whether it says the settlement was claimed, if anything moved.
async fn executed(
    kit: &mut Kit,
    inv: &Invoice,
    proof: types::PaymentProof,
) -> Result<Option<(String, bool)>, E> {
    let inv = wit_invoice(inv);
    kit.call(async move |a, g| g.verifier().call_executed(a, inv, proof).await)
        .await
        .unwrap()
        .map(|v| v.map(|v| (v.payer, v.claimed)))
        .map_err(E::from)
}

/// The payer's own transaction `0x<byte>…` executed `p`'s authorization, moving its money (the token's log
/// and its receipt on `node`); its hash.
fn paid_by(node: &Node, p: &super::Pay, byte: u8) -> B256 {
    let theirs = B256::repeat_byte(byte);
    let moved = transfer_log(p.auth.from, p.auth.to, PRICE);
    used_by(node, p, theirs, "AuthorizationUsed", Some(moved));
    theirs
}

/// Verified and held, then executed by the payer's own transaction moving this payment's money: refused by
/// `verify` (its nonce is used), yet `executed` settles the invoice by that transaction (its `txhash/` key
/// claimed for this record, dated inside the authorization's window) and nothing of ours is sent; `settle`
/// then replays it, and so does `executed` again.
#[tokio::test]
async fn an_authorization_its_payer_executed_settles_the_invoice_by_that_transaction() {
    let node = Arc::new(Node::default());
    let mut kit = kit(&node, &[]).await;
    let inv = invoice(61, None);
    let p = pay(&inv);
    assert!(verify(&mut kit, &inv, p.v2()).await.is_ok());

    let theirs = paid_by(&node, &p, 0xe1);
    // Found 5 000 blocks back (the log is at 0x11): past the 1 000 searched for records of before
    // `sent_at_block`, within the widest window a claim made after the use searches.
    node.set(|c| {
        c.nonce_used = true;
        c.head = 0x11 + 5_000;
    });
    assert!(matches!(
        verify(&mut kit, &inv, p.v2()).await,
        Err(E::PaymentRequired(_))
    ));
    let payer = payer().to_checksum(None);
    assert_eq!(
        executed(&mut kit, &inv, p.v2()).await,
        Ok(Some((payer.clone(), true)))
    );
    let record = kv_json(&kit, &p.nonce_key()).await.unwrap();
    assert_eq!(record["status"], "confirmed", "{record}");
    assert_eq!(record["executed_by"], theirs.to_string(), "{record}");
    assert_eq!(record["invoice"], inv.invoice_id.to_string(), "{record}");
    assert!(record["claimed_at"].as_u64().unwrap() <= now());
    let claim = kv_json(&kit, &format!("txhash/{theirs}")).await.unwrap();
    assert_eq!(claim["claim"], p.nonce_key());
    assert_eq!(
        settle(&mut kit, &inv, p.v2()).await,
        Ok(S::Settled(theirs.to_string()))
    );
    assert_eq!(
        executed(&mut kit, &inv, p.v2()).await,
        Ok(Some((payer, true)))
    );
    assert!(node.sent().is_empty(), "nothing of ours was sent");
}

/// Executed after its `validBefore` passed on our clock (the resend came late): the claim is dated inside the
/// window, so the same payment's repeats still replay the settlement rather than refuse it as expired.
#[tokio::test]
async fn a_late_resend_of_an_executed_authorization_still_replays_its_settlement() {
    let node = Arc::new(Node::default());
    let mut kit = kit(&node, &[]).await;
    let inv = invoice(62, None);
    let mut p = pay(&inv);
    let valid_before = now() - 300;
    p.auth.valid_before = U256::from(valid_before);
    let theirs = paid_by(&node, &p, 0xe2);
    node.set(|c| c.nonce_used = true);
    assert_eq!(
        executed(&mut kit, &inv, p.v2()).await,
        Ok(Some((payer().to_checksum(None), true)))
    );
    let record = kv_json(&kit, &p.nonce_key()).await.unwrap();
    assert_eq!(record["claimed_at"], valid_before - 6, "{record}");
    assert_eq!(
        settle(&mut kit, &inv, p.v2()).await,
        Ok(S::Settled(theirs.to_string()))
    );
}

/// Nothing of the payment moved: an authorization that simply expired unused, one the payer canceled, and one
/// whose nonce carried other money. Each is `none` (the gateway withdraws the order as before) and leaves no
/// claim behind, so nothing is recorded as settled.
#[tokio::test]
async fn an_unused_canceled_or_otherwise_used_authorization_claims_nothing() {
    let node = Arc::new(Node::default());
    let mut kit = kit(&node, &[]).await;

    // Expired, unused.
    let inv = invoice(63, None);
    let mut p = pay(&inv);
    p.auth.valid_before = U256::from(now() - 30);
    assert_eq!(executed(&mut kit, &inv, p.v2()).await, Ok(None));
    assert_eq!(kv_json(&kit, &p.nonce_key()).await, None);

    // Canceled by the payer.
    let inv = invoice(64, None);
    let p = pay(&inv);
    used_by(
        &node,
        &p,
        B256::repeat_byte(0xe4),
        "AuthorizationCanceled",
        None,
    );
    node.set(|c| {
        c.used.insert(p.auth.nonce);
    });
    assert_eq!(executed(&mut kit, &inv, p.v2()).await, Ok(None));
    assert_eq!(kv_json(&kit, &p.nonce_key()).await, None);

    // Executed by a transaction that moved other money under the same nonce.
    let inv = invoice(65, None);
    let p = pay(&inv);
    used_by(
        &node,
        &p,
        B256::repeat_byte(0xe5),
        "AuthorizationUsed",
        Some(transfer_log(p.auth.from, p.auth.to, PRICE - 1)),
    );
    node.set(|c| {
        c.used.insert(p.auth.nonce);
    });
    assert_eq!(executed(&mut kit, &inv, p.v2()).await, Ok(None));
    assert_eq!(kv_json(&kit, &p.nonce_key()).await, None);
    assert!(node.sent().is_empty());
}

/// A chain that cannot say whether the authorization was used decides nothing and claims nothing (before, a
/// claim made first stayed held, and the payment's next resend was taken for one whose settlement was
/// claimed); once the chain answers, the executed authorization settles the invoice.
#[tokio::test]
async fn an_unreadable_chain_claims_nothing() {
    let node = Arc::new(Node::default());
    let mut kit = kit(&node, &[]).await;
    let inv = invoice(66, None);
    let p = pay(&inv);
    paid_by(&node, &p, 0xe6);
    node.set(|c| {
        c.nonce_used = true;
        c.errors
            .push(("eth_call e94a0102", -32603, "internal error"));
    });
    assert!(matches!(
        executed(&mut kit, &inv, p.v2()).await,
        Err(E::Unavailable(_))
    ));
    assert_eq!(kv_json(&kit, &p.nonce_key()).await, None);
    node.set(|c| c.errors.clear());
    assert_eq!(
        executed(&mut kit, &inv, p.v2()).await,
        Ok(Some((payer().to_checksum(None), true)))
    );
}
