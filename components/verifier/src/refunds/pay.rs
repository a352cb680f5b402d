//! Driving one queued refund as far as one run can (transitions: kernel `refund::Refund`). A refund that was
//! broadcast before is followed up: its transaction offered to the node again if it lost it
//! (`sender::rebroadcast::look`), owed again if it can never be mined (twice seen, apart, and its transfer not
//! in the token's logs: [`super::unmineable`]), replaced with higher
//! fees if it waits in the pool below the base fee (`sender::bump`), reconciled against the receipt of any of
//! its hashes; first, since a follow-up sends nothing new that would fill it, a treasury nonce gap it may wait
//! behind is filled (`sender::heal_gaps`, as a settlement's replay does; once per network and run: [`Healed`]).
//! One that is owed is claimed, sent through the one send path and reconciled.

use std::time::Instant;

use alloy_primitives::B256;
use esim402_core::InvoiceId;
use esim402_core::evm::erc20::transfer_calldata;
use esim402_core::evm::{SignedTx, SigningKey};
use esim402_core::ledger::EntryKind;
use esim402_core::refund::{Next, PaymentShows, Refund, RefundStatus};
use esim402_core::store::keys;
use esim402_guest::convert::{event_to_wit, kv_err, message};
use esim402_guest::kv;
use esim402_guest::{util, wit};

use super::Step;
use super::transfer::{Transfer, transfer_of, update};
use crate::chain::{Chain, Mined, unavailable};
use crate::config::Config;
use crate::rpc::CALL_TIMEOUT;
use crate::sender::rebroadcast::{self, Look};
use crate::sender::{self, Call, Unsent};

/// Whether the payment `refund` returns still stands on `chain` (kernel `refund::payment_stands`): read again
/// before every send of a refund owed while a reorganisation could still take it (kernel `Refund::to_check`),
/// so one since the refund was owed cannot have it pay back money that never stayed.
async fn payment_stands(chain: &Chain, refund: &Refund, transfer: &Transfer) -> Result<(), String> {
    let Some(hash) = refund.to_check() else {
        return Ok(());
    };
    let (receipt, head) = chain.receipt_and_head(hash, true, CALL_TIMEOUT).await;
    let receipt = receipt.map_err(|e| message(&unavailable(&e)))?;
    let head = match head {
        Some(Ok(head)) => head,
        Some(Err(e)) => return Err(message(&unavailable(&e))),
        None => return Err("the node did not say its head block".to_owned()),
    };
    esim402_core::refund::payment_stands(
        hash,
        receipt.as_ref(),
        head,
        u64::from(chain.network.confirmations),
        &PaymentShows {
            token: transfer.token,
            payer: transfer.to,
            amount: transfer.amount,
        },
    )
}

/// The networks (CAIP-2) whose treasury nonce gaps a run has healed already: one heal per network and run,
/// however many of its refunds are followed up.
pub type Healed = std::cell::RefCell<std::collections::BTreeSet<String>>;

/// Drive one queued refund as far as this run can.
pub async fn pay_one(
    cfg: &Config,
    treasury: &SigningKey,
    id: &str,
    now: u64,
    deadline: Instant,
    healed: &Healed,
) -> Step {
    let Ok(id) = InvoiceId::parse(id) else {
        eprintln!("verifier: dropping a malformed id from the refund queue");
        return Step::Gone;
    };
    let key = keys::refund(&id);
    let refund = match kv::get_json::<Refund, wit::Error>(&key)
        .await
        .map_err(kv_err)
    {
        Ok(Some(r)) => r,
        Ok(None) => return Step::Gone,
        Err(e) => return Step::Failed(message(&e)),
    };
    // Paid by an earlier run whose acknowledgement (the gateway logged its event) never came: its event again,
    // for the ledger to keep once, once that run is surely done (kernel `Refund::relog_due`); until then it
    // stays queued for that run to acknowledge.
    if refund.status == RefundStatus::Paid && !refund.relog_due(now) {
        return Step::Quiet;
    }
    if refund.status == RefundStatus::Paid {
        let mut fields = refund.ledger_fields();
        if let Some(hash) = refund.tx_hash() {
            fields = fields.tx_hash(hash.to_string());
        }
        return Step::Unacked(event_to_wit(EntryKind::RefundPaid, &fields));
    }
    // The refund is paid on the network that was paid; a wrong endpoint must not change its state.
    let chain = match cfg.chain(&refund.network) {
        Ok(chain) => chain,
        Err(e) => return Step::Failed(message(&e)),
    };
    if let Err(e) = chain.check_chain_id().await {
        return Step::Failed(message(&e));
    }
    let chain = &chain;
    match refund.next(now) {
        Next::Gone => return Step::Gone,
        Next::FollowUp(hash) => {
            let first = healed.borrow_mut().insert(refund.network.clone());
            if first {
                sender::heal_gaps(chain, treasury, now).await;
            }
            return follow_up(chain, treasury, &key, &refund, hash, now, deadline).await;
        }
        Next::InFlight => return Step::Pending(None),
        Next::Send => {}
    }
    let transfer = match transfer_of(&refund, chain) {
        Ok(t) => t,
        Err(e) => return Step::Failed(e),
    };
    if let Err(e) = payment_stands(chain, &refund, &transfer).await {
        return Step::Failed(e);
    }
    let holder = match util::holder_token() {
        Ok(h) => h,
        Err(e) => return Step::Failed(e),
    };
    // Each transition stamped with the time it happens (this run's `now` may be tens of seconds old by now).
    match update(&key, |r| r.claim(&holder, util::now_secs())).await {
        Ok(Some((_, true))) => {}
        // Someone else claimed it first (or it vanished): theirs to report.
        Ok(Some((r, false))) => {
            return match (r.status, r.tx_hash()) {
                // Paid by the run that claimed it, which reports it and acknowledges it.
                (RefundStatus::Paid, _) => Step::Quiet,
                (RefundStatus::Submitted, tx) => Step::Pending(tx),
                (RefundStatus::Owed, _) => Step::Quiet,
            };
        }
        Ok(None) => return Step::Gone,
        Err(e) => return Step::Failed(message(&e)),
    }
    let call = Call {
        to: chain.network.usdc,
        input: transfer_calldata(transfer.to, transfer.amount),
        what: "refund",
        owner: key.clone(),
    };
    let record = async |tx: &SignedTx, at_block: Option<u64>| {
        record_submitted(&key, &holder, tx, at_block, util::now_secs()).await
    };
    match sender::send(chain, treasury, &call, record).await {
        Ok(hash) => reconcile(chain, &key, &[hash], deadline).await,
        Err(not) => {
            let (error, attempted) = match &not.why {
                Unsent::WouldRevert(m) => (format!("the refund transfer would revert: {m}"), true),
                Unsent::Fault(e) => (message(e), false),
            };
            // Held by us and not broadcast: back to owed for a later run, before anything slow (the no-op
            // below): while the record names the refused transfer, another send may offer it again.
            let now = util::now_secs();
            if let Err(e) = update(&key, |r| r.release(&holder, &error, attempted, now)).await {
                eprintln!("verifier: cannot release refund {key}: {e:?}");
            }
            not.fill_hole(chain, treasury).await;
            Step::Failed(error)
        }
    }
}

/// Record the signed refund, prepared at head block `at_block`, on its record while `holder` still holds it;
/// before the broadcast.
async fn record_submitted(
    key: &str,
    holder: &str,
    tx: &SignedTx,
    at_block: Option<u64>,
    now: u64,
) -> Result<(), wit::Error> {
    match update(key, |r| r.record_submitted(holder, tx, at_block, now)).await? {
        Some((_, true)) => Ok(()),
        _ => Err(wit::Error::Conflict(format!(
            "refund {key} was taken over before it was sent"
        ))),
    }
}

/// A refund already `submitted` with `hash`, seen again by a later run: make sure the node still has its
/// transaction, replace it with higher fees if the base fee outgrew it, then [`reconcile`] any of its hashes.
async fn follow_up(
    chain: &Chain,
    treasury: &SigningKey,
    key: &str,
    refund: &Refund,
    hash: B256,
    now: u64,
    deadline: Instant,
) -> Step {
    if let Some(tx) = refund.submitted_tx() {
        match rebroadcast::look(chain, &tx, "refund", now).await {
            Look::Unmineable { at } => {
                return super::unmineable::unmineable(chain, key, refund, &tx, at, now).await;
            }
            Look::Known if refund.unmineable_since.is_some() => {
                // A node that had not caught up: the transaction is there after all.
                let recorded = hash.to_string();
                if let Err(e) = update(key, |r| r.seen_again(&recorded)).await {
                    eprintln!("verifier: cannot update refund {key}: {e:?}");
                }
            }
            Look::Known | Look::Resent | Look::Waiting => {}
        }
        if let Some(new) = sender::bump::refund(chain, treasury, key, refund, now).await {
            let mut hashes = tx.hashes();
            hashes.insert(0, new);
            return reconcile(chain, key, &hashes, deadline).await;
        }
    }
    reconcile(chain, key, &refund.sent.hashes(), deadline).await
}

/// Wait for the receipt of any of the refund's transactions `hashes` (one nonce's, the latest first) until
/// `deadline` and record what the chain says of the mined one; only the run that records the outcome reports
/// it.
async fn reconcile(chain: &Chain, key: &str, hashes: &[B256], deadline: Instant) -> Step {
    let (hash, mined) = match chain.wait_for(hashes, deadline, |_| true).await {
        Some(mined) => mined,
        None => return Step::Pending(hashes.first().copied()),
    };
    let tx = hash.to_string();
    let error =
        format!("refund transaction {tx} reverted (does the treasury hold enough USDC and gas?)");
    let succeeded = mined == Mined::Succeeded;
    let now = util::now_secs();
    let refund = match update(key, |r| r.settle(&tx, succeeded, &error, now)).await {
        Ok(Some((r, true))) => r,
        Ok(_) => return Step::Quiet,
        Err(e) => {
            // The chain is the truth; a later run reads it again.
            eprintln!("verifier: cannot record the outcome of refund {tx}: {e:?}");
            return Step::Pending(Some(hash));
        }
    };
    if !succeeded {
        return Step::Failed(error);
    }
    let fields = refund.ledger_fields().tx_hash(tx);
    Step::Paid(hash, event_to_wit(EntryKind::RefundPaid, &fields))
}
