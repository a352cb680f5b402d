//! Finding our transactions again when the node lost them (rules in the kernel's `evm::rebroadcast`).
//!
//! Every transaction we sign is recorded with its signed bytes before it is sent (the settlement record or
//! the refund record; [`OurTx`] reads it back). Two ways it can still go missing, and where each is handled:
//!
//! - **No receipt ever comes** (the node restarted or evicted it, or it never arrived): whoever reconciles the
//!   record (`receipts::reconcile`, the refund run) calls [`look`] first. Known to the node: wait. Unknown and
//!   its nonce still free: the identical bytes go out again. Unknown and its nonce used by another
//!   transaction: [`Look::Unmineable`], and the caller decides from the chain whether money moved.
//! - **A reserved nonce never reached the node** (the request was cancelled between recording and sending):
//!   every later transaction of that key waits behind the gap. [`fill_gaps`] runs in every send, after the
//!   pending count is read and before the new nonce is reserved, and offers the node each recorded
//!   transaction at or above that count that it does not know (at most `MAX_RESENDS_PER_SEND`).
//! - **A reserved nonce never got a transaction** (the request was cancelled between reserving and recording):
//!   [`fill_gaps`] also releases every nonce reserved more than `ORPHAN_AFTER_SECS` ago whose owner's record
//!   names no transaction for it, in any status (kernel `NonceState::orphans`, `rebroadcast::names_nonce`), so
//!   the next reservation fills the hole. A replay of a settlement or a refund run's follow-up, which sends
//!   nothing new, fills such a hole below a later nonce with the key's no-op transaction instead
//!   (`heal::heal_gaps`).
//!
//! Sending the same bytes again is never a second transaction (same hash, same nonce), and no answer to a
//! re-send changes any state: "already known" or "nonce too low" mean the node has, or used, the nonce;
//! "underpriced" that it refused the bytes (a fee bump decides, `super::bump`). Only bytes that a live
//! `submitted` record still names are ever re-sent, and only once the record is older than
//! `RESEND_AFTER_SECS` (its own send may still be under way, and may yet be refused and released). [`offer`]
//! is also the first send of a fee replacement, once `super::bump` has recorded it.

use alloy_primitives::{Address, B256};
use esim402_core::evm::NonceState;
use esim402_core::evm::rebroadcast::{
    EthGetTransactionByHash, Fate, MAX_RESENDS_PER_SEND, fate, may_resend, names_nonce,
};
use esim402_core::evm::rpc::{
    BlockTag, EthBlockNumber, EthGetTransactionCount, EthSendRawTransaction,
};
use esim402_core::refund::Refund;
use esim402_core::settlement::{OurTx, Record};
use esim402_core::store::keys;
use esim402_guest::kv;

use crate::chain::Chain;

/// A reservation this old without a recorded transaction belongs to a request that died: signing and recording
/// take milliseconds.
pub(super) const ORPHAN_AFTER_SECS: u64 = 120;
use crate::rpc::CallError;

/// What [`look`] found out about a transaction without a receipt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Look {
    /// The node knows it, or one of the earlier hashes it replaced (in its pool or mined).
    Known,
    /// The node did not know it and its nonce is free: the identical bytes were offered again.
    Resent,
    /// Unknown but recorded moments ago, or the chain could not be read: nothing done.
    Waiting,
    /// Unknown, and the signer's mined count at block `at` is past its nonce: it can never be mined.
    Unmineable {
        /// The block the count was read at; read the contract at the same block.
        at: u64,
    },
}

/// Ask the node about `tx` (which has no receipt) and act as the kernel's `fate` says. `what` names it in logs.
/// Every hash of its nonce is asked about (it may have replaced earlier ones with higher fees: `super::bump`):
/// one of ours known or mined is never "another transaction" that used the nonce.
pub async fn look(chain: &Chain, tx: &OurTx, what: &str, now: u64) -> Look {
    for hash in tx.hashes() {
        match chain.rpc.call(&EthGetTransactionByHash { hash }).await {
            Ok(Some(_)) => return Look::Known,
            Ok(None) => {}
            Err(e) => {
                eprintln!("verifier: cannot ask for {what} {hash}: {e}");
                return Look::Waiting;
            }
        }
    }
    let counted = match chain.rpc.call(&EthBlockNumber).await {
        Ok(head) => chain
            .rpc
            .call(&EthGetTransactionCount {
                address: tx.signer,
                block: BlockTag::Number(head),
            })
            .await
            .map(|count| (head, count)),
        Err(e) => Err(e),
    };
    let (head, mined) = match counted {
        Ok(c) => c,
        Err(e) => {
            eprintln!(
                "verifier: {what} {} is unknown to the node and its signer's count is unreadable: {e}",
                tx.hash
            );
            return Look::Waiting;
        }
    };
    match fate(mined, tx.nonce, tx.recorded_at, now) {
        Fate::Wait => Look::Waiting,
        Fate::Resend => {
            eprintln!(
                "verifier: the node does not know {what} {} (nonce {}); sending the same bytes again",
                tx.hash, tx.nonce
            );
            offer(chain, &tx.raw, tx.hash, what).await;
            Look::Resent
        }
        Fate::Unmineable => Look::Unmineable { at: head },
    }
}

/// Offer recorded bytes `raw` (hashing to `hash`) to the node: a transaction it lost, or a replacement
/// (`super::bump`). Whatever it answers changes nothing here: logged, and the node's error answer, if any,
/// returned (`super::bump::replace` outbids a replacement refused for its fees).
pub(super) async fn offer(
    chain: &Chain,
    raw: &alloy_primitives::Bytes,
    hash: B256,
    what: &str,
) -> Option<(i64, String)> {
    let sent = chain
        .rpc
        .call(&EthSendRawTransaction { raw: raw.clone() })
        .await;
    match sent {
        Ok(answered) if answered == hash => None,
        Ok(answered) => {
            eprintln!("verifier: the node answered {answered} to the sent {what} {hash}");
            None
        }
        // "already known", "nonce too low": the node has, or has used, the nonce; "underpriced": refused.
        Err(e) => {
            eprintln!("verifier: offering {what} {hash} to the node: {e}");
            match e {
                CallError::Node { code, message } => Some((code, message)),
                CallError::Transport(_) => None,
            }
        }
    }
}

/// Before reserving a new nonce for `signer`: offer the node every recorded transaction of ours at or above
/// its pending count that it does not know, lowest nonce first (see the module docs). Best effort: nothing
/// here changes any state, so a failure (or a cancelled request) only leaves the gap for the next send.
/// Returns the key's nonce bookkeeping as read (`None`: none, unreadable, or the node stopped answering), for
/// the send's look at the transaction blocking the key (`super::bump::blocking`).
pub async fn fill_gaps(
    chain: &Chain,
    signer: Address,
    pending_count: u64,
    now: u64,
) -> Option<NonceState> {
    let key = super::nonces::key(chain, signer);
    let state = match kv::get_json::<NonceState, ()>(&key).await {
        Ok(Some(s)) => s,
        Ok(None) => return None,
        Err(e) => {
            eprintln!("verifier: cannot read the nonces of {signer}: {e}");
            return None;
        }
    };
    for (nonce, owner) in state.orphans(pending_count, now, ORPHAN_AFTER_SECS) {
        if names(&owner, signer, nonce).await {
            continue;
        }
        eprintln!(
            "verifier: nonce {nonce} of {signer} was reserved for {owner} but no transaction was ever recorded for it (a cancelled request); releasing it"
        );
        let reserved_at = state.reserved_at.get(&nonce).copied();
        super::nonces::release_orphan(chain, signer, nonce, &owner, reserved_at).await;
    }
    for (nonce, owner) in state.unsent(pending_count, MAX_RESENDS_PER_SEND) {
        // Released, settled, or not recorded yet: nothing of ours to offer.
        let Some(tx) = live_tx(&owner).await else {
            continue;
        };
        if tx.signer != signer || tx.nonce != nonce || !may_resend(tx.recorded_at, now) {
            continue;
        }
        let what = if keys::is_refund(&owner) {
            "refund"
        } else {
            "settlement"
        };
        match chain
            .rpc
            .call(&EthGetTransactionByHash { hash: tx.hash })
            .await
        {
            Ok(Some(_)) => {}
            Ok(None) => {
                eprintln!(
                    "verifier: nonce {nonce} of {signer} ({what} {}) never reached the node; sending it before the next transaction",
                    tx.hash
                );
                offer(chain, &tx.raw, tx.hash, what).await;
            }
            // The node is not answering; the send that follows will say so.
            Err(CallError::Transport(_)) => return None,
            Err(e) => eprintln!("verifier: cannot ask for {what} {}: {e}", tx.hash),
        }
    }
    Some(state)
}

/// Whether the record at `owner` (a settlement or a refund) names `signer`'s transaction at `nonce`, in any
/// status (kernel `rebroadcast::names_nonce`): a confirmed one's nonce is used, not orphaned, even while a
/// lagging node's pending count is at or below it. A record that cannot be read counts as naming it (the nonce
/// stays held; a later send looks again).
pub(super) async fn names(owner: &str, signer: Address, nonce: u64) -> bool {
    let sent = if keys::is_refund(owner) {
        kv::get_json::<Refund, ()>(owner)
            .await
            .map(|r| r.map(|r| r.sent))
    } else {
        kv::get_json::<Record, ()>(owner)
            .await
            .map(|r| r.map(|r| r.sent))
    };
    match sent {
        Ok(Some(sent)) => names_nonce(&sent, signer, nonce),
        Ok(None) => false,
        Err(e) => {
            eprintln!("verifier: cannot read {owner}, which holds nonce {nonce} of {signer}: {e}");
            true
        }
    }
}

/// The transaction a live `submitted` record at `owner` (a settlement or a refund) still names, if any.
async fn live_tx(owner: &str) -> Option<OurTx> {
    if keys::is_refund(owner) {
        return kv::get_json::<Refund, ()>(owner)
            .await
            .ok()
            .flatten()?
            .submitted_tx();
    }
    kv::get_json::<Record, ()>(owner)
        .await
        .ok()
        .flatten()?
        .submitted_tx()
}
