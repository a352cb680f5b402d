//! A refund whose transaction the node does not know while the treasury nonce it holds was used by another
//! (`sender::rebroadcast::Look::Unmineable`): owed again only once a run [`CONFIRM_UNMINEABLE_SECS`] after the
//! first sighting still sees it so, and only if the token's logs show no transfer of the refund's amount from
//! the treasury to the payer since it was prepared (kernel `Refund::mark_unmineable`). A node with a pruned
//! transaction index answers "unknown" for a mined transfer too: the logs are read before any money goes out
//! again: a transfer found there by one of the refund's own transactions pays it; one by another transaction,
//! or a search that cannot be made (or answered by a node that lacks blocks of the range), leaves the refund
//! `submitted`.

use esim402_core::evm::receipt::TRANSFER_TOPIC;
use esim402_core::evm::rpc::{EthBlockNumber, EthGetLogs};
use esim402_core::ledger::EntryKind;
use esim402_core::refund::{
    CONFIRM_UNMINEABLE_SECS, Refund, RefundStatus, TransferLogged, Unmineable, logged_verdict,
    transfer_logged,
};
use esim402_core::settlement::OurTx;
use esim402_guest::convert::event_to_wit;

use super::Step;
use super::transfer::{transfer_of, update};
use crate::chain::Chain;
use crate::rpc::Batch;

/// The refund at `key` (as read: `refund`), whose transaction `tx` can never be mined (its nonce was used by
/// block `at`).
pub async fn unmineable(
    chain: &Chain,
    key: &str,
    refund: &Refund,
    tx: &OurTx,
    at: u64,
    now: u64,
) -> Step {
    let hash = tx.hash.to_string();
    let logged = if refund.confirms_unmineable(&hash, now) {
        search(chain, key, refund, tx, at).await
    } else {
        TransferLogged::NotSearched
    };
    let error = format!(
        "refund transaction {hash} was never mined and never will be (treasury nonce {} was used by another transaction by block {at}, and the token logged no transfer of the refund); no money moved",
        tx.nonce
    );
    let verdict = std::cell::Cell::new(Unmineable::NotOurs);
    let r = update(key, |r| {
        let v = r.mark_unmineable(&hash, &error, now, logged);
        verdict.set(v);
        matches!(
            v,
            Unmineable::Noted | Unmineable::OwedAgain | Unmineable::Paid
        )
    })
    .await;
    match (r, verdict.get()) {
        // Mined after all, by one of its own transactions (the node's index was pruned): paid by it.
        (Ok(Some((r, true))), Unmineable::Paid) => match logged {
            TransferLogged::Found(by) => {
                eprintln!(
                    "verifier: refund {key}: the node does not know transaction {by}, but the token logged its transfer: paid"
                );
                let fields = r.ledger_fields().tx_hash(by.to_string());
                Step::Paid(by, event_to_wit(EntryKind::RefundPaid, &fields))
            }
            _ => Step::Quiet,
        },
        (Ok(Some((r, _))), _) if r.status == RefundStatus::Paid => Step::Quiet,
        (Ok(Some((r, true))), Unmineable::OwedAgain) if r.status == RefundStatus::Owed => {
            eprintln!("verifier: {error}: refund {key} is owed again");
            Step::Failed(error)
        }
        (Ok(Some(_)), Unmineable::Held) => {
            if let TransferLogged::Found(by) = logged {
                eprintln!(
                    "verifier: OPERATOR: refund {key}: the node does not know its transaction {hash} (treasury nonce {} used by block {at}), but the token logged a transfer of its amount from the treasury to the payer in {by}: it may be paid; left submitted, settle it by hand",
                    tx.nonce
                );
            }
            Step::Pending(Some(tx.hash))
        }
        (Ok(Some((r, _))), _) if r.status == RefundStatus::Submitted => {
            eprintln!(
                "verifier: refund {key}: transaction {hash} looks unmineable (treasury nonce {} used by block {at}); it stays submitted until a run {CONFIRM_UNMINEABLE_SECS} s after the first sighting still sees it so",
                tx.nonce
            );
            Step::Pending(Some(tx.hash))
        }
        (Ok(Some(_)), _) => Step::Quiet,
        (Ok(None), _) => Step::Gone,
        (Err(e), _) => {
            eprintln!("verifier: cannot update refund {key}: {e:?}");
            Step::Pending(Some(tx.hash))
        }
    }
}

/// Search the token's logs for the refund's transfer (`tx`'s signer to the payer, the refund's amount) over
/// the kernel's `Refund::transfer_search` blocks up to `at`.
async fn search(chain: &Chain, key: &str, refund: &Refund, tx: &OurTx, at: u64) -> TransferLogged {
    let range = transfer_of(refund, chain).and_then(|t| Ok((t, refund.transfer_search(at)?)));
    let (transfer, (from_block, to_block)) = match range {
        Ok(r) => r,
        Err(why) => {
            eprintln!(
                "verifier: OPERATOR: refund {key}: transaction {} looks unmineable, but the token's logs cannot be searched for its transfer ({why}): left submitted, settle it by hand",
                tx.hash
            );
            return TransferLogged::Unknown;
        }
    };
    let query = EthGetLogs {
        address: transfer.token,
        topics: vec![
            Some(vec![TRANSFER_TOPIC]),
            Some(vec![tx.signer.into_word()]),
            Some(vec![transfer.to.into_word()]),
        ],
        from_block,
        to_block,
    };
    // The head in the same batch (one request, so one node behind a load balancer): "no transfer" counts only
    // from a node that has every block searched (kernel `refund::logged_verdict`).
    let mut batch = Batch::new();
    let head_slot = batch.add(&EthBlockNumber);
    let logs_slot = batch.add(&query);
    let mut answers = chain.rpc.batch(batch).await;
    let head = answers.take(head_slot, &EthBlockNumber);
    match (answers.take(logs_slot, &query), head) {
        (Ok(logs), Ok(head)) => {
            let found = transfer_logged(
                &logs,
                transfer.token,
                tx.signer,
                transfer.to,
                transfer.amount,
            );
            let verdict = logged_verdict(found, head, to_block);
            if verdict == TransferLogged::Unknown {
                eprintln!(
                    "verifier: refund {key}: the node searched for the transfer of {} is at block {head}, behind {to_block}: a later run searches again",
                    tx.hash
                );
            }
            verdict
        }
        (Err(e), _) | (_, Err(e)) => {
            eprintln!(
                "verifier: refund {key}: cannot search the token's logs for the transfer of {} (blocks {from_block} to {to_block}: {e}); left submitted, a later run searches again",
                tx.hash
            );
            TransferLogged::Unknown
        }
    }
}
