//! Replacing a recorded transaction of ours that waits in the node's pool because the base fee outgrew its fee
//! cap (rules and bounds: kernel `evm::bump`). Without it every later transaction of the key waits behind it.
//!
//! Rules a reader must not break:
//! - **Recorded before sent.** [`replace`] signs the same transaction (nonce, call, gas) with the kernel's
//!   fees, hands it to the caller's `record` (a compare-and-swap on the hash it replaces, keeping every
//!   earlier hash: `Record::record_replacement`, `Refund::record_replacement`) and sends it only if that
//!   succeeded. A settlement's replacement also claims its `txhash/` key first ([`settlement`]), as every
//!   settlement transaction of ours does, so no tx-hash proof can present it.
//! - **Pooled or dropped.** A transaction unknown to the node whose nonce is still free is replaced like a
//!   pooled one (a node such as anvil drops one the base fee outgrew and refuses its bytes again); one whose
//!   nonce is used is left to `rebroadcast::look` and the receipts.
//! - **From a replay, or the next send.** It runs where a recorded transaction without receipt is reconciled (a
//!   settlement's replay, `receipts::Claim::reconciling`; a refund run's follow-up), and in every send of the
//!   key for the one transaction at its lowest unmined nonce, which every later one waits behind ([`blocking`]:
//!   a settlement nobody replays would wait for ever), never in a background job. It reads the chain only once
//!   the transaction is old enough (kernel `bump::due`); a send reads nothing more for it, not even its record,
//!   unless that nonce was reserved that long ago (kernel `bump::blocking`), and replaces at most that one.
//! - **Any hash may be mined.** The earlier hashes stay on the record; every reader of a receipt for it
//!   (receipts, refunds, `rebroadcast::look`, front-run checks) takes any of them. Whatever a replacement's
//!   send answers changes nothing else: refused ("underpriced", "nonce too low"), the pooled one or a mined
//!   one of ours stays the one to wait for; lost, it is re-sent like any recorded transaction. One the node
//!   does not show while the replaced one stays pooled is offered again, same bytes, and outbid by at least
//!   10 % over it only when the node refuses those bytes for their fees (kernel `rpc::outbid_unreached`,
//!   `bump::decide_unreached`): a node asking more than 10 % refuses them every time, while a load-balanced
//!   provider may show no transaction pooled through another of its backends, which must not raise the fees.

use alloy_primitives::B256;
use esim402_core::evm::bump::{self, Bump, Fees};
use esim402_core::evm::rebroadcast::{EthGetTransactionByHash, may_resend};
use esim402_core::evm::rpc::{
    BlockTag, EthGetBlockByNumber, EthGetTransactionCount, EthMaxPriorityFeePerGas,
};
use esim402_core::evm::{NonceState, SignedTx, SigningKey, sign_eip1559};
use esim402_core::refund::Refund;
use esim402_core::settlement::{OurTx, Record};
use esim402_core::store::keys;
use esim402_guest::convert::kv_err;
use esim402_guest::{kv, util, wit};

use super::rebroadcast;
use crate::chain::Chain;
use crate::claims;
use crate::rpc::Batch;

/// Replace the transaction of the `submitted` settlement `record` if the kernel says so (see [`replace`]):
/// its `txhash/` key claimed, then the record swapped over from the replaced hash, then the send.
pub async fn settlement(chain: &Chain, signer: &SigningKey, record: &Record, now: u64) {
    let Some(tx) = record.submitted_tx() else {
        return;
    };
    let key = record.claim.as_str();
    let save = async |new: &SignedTx| {
        // A claim on a hash that then is not recorded (someone replaced it first) names a transaction that
        // never leaves: harmless.
        if let Some(other) = claims::claim_txhash(record, new.hash).await? {
            return Err(claims::pays_another(new.hash, &other));
        }
        let at = util::now_secs();
        match claims::record_replacement(key, &record.holder, tx.hash, new, at).await? {
            true => Ok(()),
            false => Err(wit::Error::Conflict(format!(
                "settlement {key} no longer names {}",
                tx.hash
            ))),
        }
    };
    replace(chain, signer, &tx, "settlement", now, save).await;
}

/// Replace the transaction of the `submitted` refund at `key` (`refund`, as read) if the kernel says so (see
/// [`replace`]): the refund swapped over from the replaced hash while its holder still holds it, then the send.
/// The replacement's hash once it was recorded.
pub async fn refund(
    chain: &Chain,
    signer: &SigningKey,
    key: &str,
    refund: &Refund,
    now: u64,
) -> Option<B256> {
    let tx = refund.submitted_tx()?;
    let holder = refund.holder.as_deref();
    let save = async |new: &SignedTx| {
        let at = util::now_secs();
        let swapped = kv::transition_json::<Refund, wit::Error>(key, |r| {
            r.record_replacement(holder, tx.hash, new, at)
        })
        .await
        .map_err(kv_err)?;
        match swapped {
            Some((_, true)) => Ok(()),
            _ => Err(wit::Error::Conflict(format!(
                "refund {key} no longer names {}",
                tx.hash
            ))),
        }
    };
    replace(chain, signer, &tx, "refund", now, save).await
}

/// In a send of `signer`, before its nonce is reserved: replace the recorded transaction at the key's lowest
/// unmined nonce `mined_count` (a settlement's or a refund's) if the kernel says so, as a replay would
/// ([`settlement`], [`refund`]). `state` is the key's nonce bookkeeping as the send read it: nothing more is
/// read unless that nonce was reserved long enough ago (kernel `bump::blocking`); then its record, and the
/// chain only once its transaction is due. Best effort, like every replacement.
pub async fn blocking(
    chain: &Chain,
    signer: &SigningKey,
    state: &NonceState,
    mined_count: u64,
    now: u64,
) {
    let Some(owner) = bump::blocking(state, mined_count, now) else {
        return;
    };
    let at_nonce = |tx: Option<OurTx>| tx.is_some_and(|tx| tx.nonce == mined_count);
    if keys::is_refund(owner) {
        match kv::get_json::<Refund, ()>(owner).await {
            Ok(Some(r)) if at_nonce(r.submitted_tx()) => {
                refund(chain, signer, owner, &r, now).await;
            }
            Ok(_) => {}
            Err(e) => eprintln!("verifier: cannot read {owner}: {e}"),
        }
        return;
    }
    match kv::get_json::<Record, ()>(owner).await {
        Ok(Some(r)) if at_nonce(r.submitted_tx()) => settlement(chain, signer, &r, now).await,
        Ok(_) => {}
        Err(e) => eprintln!("verifier: cannot read {owner}: {e}"),
    }
}

/// Replace `tx` (recorded with its earlier hashes, signed by `signer`) with higher fees if it waits unmined,
/// in the node's pool or dropped from it with its nonce still free, and the kernel's `bump::decide` says so;
/// `record` stores the replacement (see the module docs). Returns the replacement's hash once it was recorded,
/// whatever its send answered. A replacement the node does not show (its send failed, the node refused it, or
/// another backend holds it) while an earlier hash waits in the pool is sent again, same bytes, once
/// `rebroadcast::may_resend` allows, and outbid only if the node refuses them for their fees (kernel
/// `rpc::outbid_unreached`, `bump::decide_unreached`). Best effort: a failed read leaves things as they are.
pub async fn replace(
    chain: &Chain,
    signer: &SigningKey,
    tx: &OurTx,
    what: &str,
    now: u64,
    record: impl AsyncFnOnce(&SignedTx) -> Result<(), wit::Error>,
) -> Option<B256> {
    // A replacement whose own send was lost is sent again sooner than a replacement is due.
    let resend_due = !tx.earlier.is_empty() && may_resend(tx.recorded_at, now);
    if !(bump::due(tx.recorded_at, now) || resend_due) || tx.signer != signer.address() {
        return None;
    }
    let unsigned = bump::unsigned(&tx.raw)?;
    let hashes = tx.hashes();
    let asks: Vec<_> = hashes
        .iter()
        .map(|&hash| EthGetTransactionByHash { hash })
        .collect();
    let block = EthGetBlockByNumber::latest();
    let mined = EthGetTransactionCount {
        address: tx.signer,
        block: BlockTag::Latest,
    };
    let mut batch = Batch::new();
    let slots: Vec<_> = asks.iter().map(|a| batch.add(a)).collect();
    let (block_slot, tip_slot) = (batch.add(&block), batch.add(&EthMaxPriorityFeePerGas));
    let mined_slot = batch.add(&mined);
    let mut answers = chain.rpc.batch(batch).await;
    let mut seen = Vec::new();
    for (slot, ask) in slots.into_iter().zip(&asks) {
        match answers.take(slot, ask) {
            Ok(found) => seen.push(found),
            Err(e) => {
                eprintln!("verifier: cannot ask for {what} {}: {e}", ask.hash);
                return None;
            }
        }
    }
    // One of them mined, or the nonce used (unknown or not: `rebroadcast::look` and the receipts decide), or
    // the count unreadable: nothing to replace. Unknown to the node with the nonce still free is replaced like
    // a pooled one: a node may drop a transaction below the base fee from its pool and refuse its bytes again
    // (anvil does), so sending the identical bytes cannot help.
    let free = answers
        .take(mined_slot, &mined)
        .is_ok_and(|count| count <= tx.nonce);
    if !free || seen.iter().flatten().any(|s| s.block_number.is_some()) {
        return None;
    }
    let earlier_pooled = seen.iter().skip(1).flatten().next().is_some();
    let unreached = seen.first().is_some_and(Option::is_none) && earlier_pooled;
    if unreached {
        // Our latest is unknown to the node while an earlier one waits: send it again, not yet another, unless
        // the node refuses it for its fees (then it is outbid below). (None of them known: the fee rule below
        // decides, and `rebroadcast::look` re-sends bytes that are enough.)
        eprintln!(
            "verifier: the node does not show the replacement {what} {}; sending it again",
            tx.hash
        );
        let refusal =
            rebroadcast::offer(chain, &tx.raw, tx.hash, &format!("replacement {what}")).await;
        if !esim402_core::evm::rpc::outbid_unreached(
            refusal.as_ref().map(|(c, m)| (*c, m.as_str())),
        ) {
            return None;
        }
    }
    let block = answers.take(block_slot, &block);
    let base_fee = block
        .as_ref()
        .ok()
        .and_then(Option::as_ref)
        .and_then(|b| b.base_fee_per_gas);
    let (tip, max_fee) = match super::fees(block, answers.take(tip_slot, &EthMaxPriorityFeePerGas))
    {
        Ok(fees) => fees,
        Err(e) => {
            // A base fee at the ceiling (kernel `rpc::fees`) is an operator's case, as `Bump::Ceiling` is.
            let ceiling = base_fee.is_some_and(|b| bump::next_base_fee(b) > bump::MAX_FEE_PER_GAS);
            let operator = if ceiling { "OPERATOR: " } else { "" };
            eprintln!(
                "verifier: {operator}no fees to replace {what} {} (nonce {} of {}) with: {e:?}; left waiting",
                tx.hash, tx.nonce, tx.signer
            );
            return None;
        }
    };
    let pooled = Fees {
        tip: unsigned.max_priority_fee_per_gas,
        max_fee: unsigned.max_fee_per_gas,
    };
    let current = Fees { tip, max_fee };
    let decided = if unreached {
        bump::decide_unreached(pooled, tx.earlier.len(), current)
    } else {
        bump::decide(
            pooled,
            tx.recorded_at,
            now,
            tx.earlier.len(),
            base_fee,
            current,
        )
    };
    let fees = match decided {
        Bump::Wait => return None,
        Bump::Replace(fees) => fees,
        Bump::Ceiling { needed } => {
            eprintln!(
                "verifier: OPERATOR: {what} {} (nonce {} of {}) waits in the pool below the base fee ({base_fee:?} wei); a replacement would need a fee cap of {needed} wei, above the ceiling of {} wei: left waiting",
                tx.hash,
                tx.nonce,
                tx.signer,
                bump::MAX_FEE_PER_GAS
            );
            return None;
        }
        Bump::Exhausted => {
            eprintln!(
                "verifier: OPERATOR: {what} {} (nonce {} of {}) waits in the pool below the base fee ({base_fee:?} wei) after {} replacements: left waiting",
                tx.hash,
                tx.nonce,
                tx.signer,
                bump::MAX_REPLACEMENTS
            );
            return None;
        }
    };
    let signed = sign_eip1559(&bump::replacement(&unsigned, fees), signer)
        .inspect_err(|e| {
            eprintln!(
                "verifier: cannot sign a replacement of {what} {}: {e}",
                tx.hash
            )
        })
        .ok()?;
    if let Err(e) = record(&signed).await {
        eprintln!(
            "verifier: replacement of {what} {} not recorded, not sent: {e:?}",
            tx.hash
        );
        return None;
    }
    eprintln!(
        "verifier: {what} {} (nonce {} of {}) waits below the base fee ({base_fee:?} wei): replaced by {} (fee cap {} → {} wei, tip {} → {} wei)",
        tx.hash,
        tx.nonce,
        tx.signer,
        signed.hash,
        pooled.max_fee,
        fees.max_fee,
        pooled.tip,
        fees.tip
    );
    rebroadcast::offer(
        chain,
        &signed.raw,
        signed.hash,
        &format!("replacement {what}"),
    )
    .await;
    Some(signed.hash)
}
