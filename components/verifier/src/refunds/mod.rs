//! Refunds (rules and record: kernel `refund`): a confirmed payment whose purchase then failed goes back to its
//! payer as one USDC `transfer` from the treasury key (`treasury_private_key`), sent at most once.
//!
//! - [`owe`] (`owe-refund`) records `refund/<invoice>` with insert-if-absent, only for a payment whose
//!   settlement is `confirmed` (found through its transaction's `txhash/` claim; a `submitted` one is
//!   reconciled against its receipt first, and answers `unavailable` while unsure: [`settled`]), and queues the id in
//!   `refund/queue`. A repeat answers the stored record. The gateway logs `refund_owed` for a new one, and
//!   again (a repeat, kept once) for a repeat that answers `relog`: late, or at once when the repeat had to
//!   queue the refund (its first call stopped between the record and the queue, before answering).
//! - [`run`] (`run-refunds`) pays up to `limit` queued refunds through the one send path
//!   (`crate::sender::send`), all of the batch at once, within `settlement_timeout_ms` ([`pay`]); the refunds
//!   it paid come back as ledger events, and stay queued until the caller, having logged them, acknowledges
//!   them ([`ack`], `ack-refunds`). A paid refund still queued at a later run (its run stopped before the
//!   acknowledgement) comes back as a repeat of its event, for the ledger to keep once: no `refund_paid` is lost
//!   to a crash between the transfer and the ledger.

mod pay;
mod settled;
mod transfer;
mod unmineable;

use std::time::Instant;

use esim402_core::ledger::EntryKind;
use esim402_core::refund::{self, Refund, RefundStatus, SettlementPaid};
use esim402_core::store::keys;
use esim402_core::{InvoiceId, UsdcAmount};
use esim402_guest::convert::{event_to_wit, internal, invalid, kv_err};
use esim402_guest::kv::{self, KvError};
use esim402_guest::wit;
use serde_json::json;

use crate::claims;
use crate::rpc::join_all;

fn to_json(value: &impl serde::Serialize) -> Result<String, wit::Error> {
    serde_json::to_string(value).map_err(internal)
}

async fn load(key: &str) -> Result<Option<Refund>, wit::Error> {
    kv::get_json::<Refund, wit::Error>(key)
        .await
        .map_err(kv_err)
}

/// Put `id` on the queue unless it is there: whether this call put it there.
async fn enqueue(id: &str) -> Result<bool, wit::Error> {
    let queue = kv::get_json::<Vec<String>, wit::Error>(keys::REFUND_QUEUE)
        .await
        .map_err(kv_err)?;
    if queue.is_some_and(|q| q.iter().any(|i| i == id)) {
        return Ok(false);
    }
    let (_, added) =
        kv::update_json_with::<Vec<String>, bool, wit::Error>(keys::REFUND_QUEUE, |q| {
            let q = q.unwrap_or_default();
            let added = !q.iter().any(|i| i == id);
            Ok((refund::enqueue(q, id), added))
        })
        .await
        .map_err(kv_err)?;
    Ok(added)
}

/// The answer for `refund`: `new` if this call recorded it, else a repeat, which relogs its event as the
/// kernel says (`Refund::relog_on_repeat`; `requeued`: this repeat found it off the queue and queued it).
fn owed(
    refund: &Refund,
    new: bool,
    requeued: bool,
    now: u64,
) -> Result<wit::RefundOwed, wit::Error> {
    let fields = refund.ledger_fields().detail("reason", &refund.reason);
    Ok(wit::RefundOwed {
        refund: to_json(refund)?,
        new,
        event: event_to_wit(EntryKind::RefundOwed, &fields),
        relog: !new && refund.relog_on_repeat(now, requeued),
    })
}

/// `owe-refund`: record that `amount` (default: the whole payment, kernel `refund::amount_owed`, which for a
/// tx-hash transfer above the invoice's amount is the transfer's) of the confirmed payment `transaction` of
/// `invoice` is owed back; idempotent per invoice.
pub async fn owe(
    invoice: &wit::Invoice,
    transaction: &str,
    amount: Option<u64>,
    reason: &str,
    now: u64,
) -> Result<wit::RefundOwed, wit::Error> {
    let id = InvoiceId::parse(&invoice.id).map_err(|e| invalid("invoice_id", e.0))?;
    let reason = refund::clean_reason(reason);
    if reason.is_empty() {
        return Err(invalid("reason", "say why the refund is owed"));
    }
    let hash = transaction
        .trim()
        .parse::<alloy_primitives::B256>()
        .map_err(|_| invalid("transaction", "not a transaction hash"))?;
    let key = keys::refund(&id);
    // Once per invoice: an invoice paid twice (a late transfer, then one in time) owes one of them. Another
    // payment's refund is refused below, once this payment is known to have paid (else: nothing was paid).
    let existing = load(&key).await?;
    if let Some(existing) = existing.as_ref().filter(|r| !r.returns_other(hash)) {
        // A repeat; also heals a first call that stopped between the record and the queue, whose event it
        // then relogs (that call never answered with it).
        let requeued = existing.status != RefundStatus::Paid && enqueue(id.as_str()).await?;
        return owed(existing, false, requeued, now);
    }
    let nothing = || wit::Error::Conflict(format!("nothing was paid for invoice {id}"));
    // Not claimed at all: nothing was taken (a transfer refused without a claim, such as a tx-hash transfer
    // too small to be worth a refund's gas), which is not a conflict for an operator.
    let claim = claims::load(&keys::txhash(hash)).await?.ok_or_else(|| {
        wit::Error::NotFound(format!(
            "transaction {hash:#x} is not claimed for invoice {id}: nothing was taken with it"
        ))
    })?;
    if claim.invoice.as_deref() != Some(id.as_str()) {
        return Err(nothing());
    }
    // A tx-hash proof's claim is its settlement; our settlement's names the authorization's record.
    let settlement = if claim.claim == keys::txhash(hash) {
        claim
    } else {
        claims::load(&claim.claim).await?.ok_or_else(nothing)?
    };
    let cfg = crate::config::get().await?;
    let settlement = match refund::settlement_paid(&settlement) {
        SettlementPaid::Yes => settlement,
        // Its confirmation may have been mined with its record left behind: the chain decides.
        SettlementPaid::Unsure(sent) => {
            settled::reconcile(&cfg, settlement, sent, &id, now).await?
        }
        SettlementPaid::No => {
            let status = format!("{:?}", settlement.status).to_lowercase();
            return Err(wit::Error::Conflict(format!(
                "nothing was paid for invoice {id}: its settlement is {status}, not confirmed"
            )));
        }
    };
    if let Some(other) = existing {
        return Err(returns_other(&id, &other, hash));
    }
    // Retryable, not refused, on a network since disabled: the caller keeps what it owes (a terminate lists its
    // SIM for the cleanup run, a failed order keeps its payment open, a callback is sent again).
    let network = settled::chain_of(&cfg, &settlement, &id)?.network;
    let amount = refund::amount_of(
        amount,
        settlement.paid_amount,
        UsdcAmount::from_micros(invoice.amount),
    )
    .map_err(|e| invalid("amount", e))?;
    let refund = Refund::owed(
        id.as_str(),
        &settlement.payer,
        amount,
        &settlement.network,
        &network.usdc.to_checksum(None),
        &reason,
        now,
    )
    .for_payment(hash)
    .settled_by(settlement.settled_hash(), settlement.claimed_at);
    let bytes = serde_json::to_vec(&refund).map_err(internal)?;
    match kv::insert_if_absent::<wit::Error>(&key, &bytes).await {
        Ok(()) => {}
        // A concurrent first call won: its record is the answer, and it is the one logged.
        Err(KvError::Exists) => {
            let existing = load(&key)
                .await?
                .ok_or_else(|| internal(format!("refund record {key} vanished")))?;
            if existing.returns_other(hash) {
                return Err(returns_other(&id, &existing, hash));
            }
            return owed(&existing, false, false, now);
        }
        Err(e) => return Err(kv_err(e)),
    }
    enqueue(id.as_str()).await?;
    owed(&refund, true, false, now)
}

/// `conflict`: the invoice's one refund returns another payment than `hash`, which is not refunded.
fn returns_other(id: &InvoiceId, refund: &Refund, hash: alloy_primitives::B256) -> wit::Error {
    wit::Error::Conflict(format!(
        "invoice {id} already owes back transaction {}; {hash:#x} is not refunded: ask the operator",
        refund.payment.as_deref().unwrap_or_default()
    ))
}

/// What one run did with one queued refund.
pub enum Step {
    /// This run saw its transfer confirmed; its ledger event. It stays queued until acknowledged.
    Paid(alloy_primitives::B256, wit::LedgerEvent),
    /// Paid by an earlier run that was never acknowledged (stopped before its events were logged): its event
    /// again, for the ledger to keep once. It stays queued until acknowledged.
    Unacked(wit::LedgerEvent),
    /// In flight: its transaction (if recorded) is not mined yet, or another run is sending it.
    Pending(Option<alloy_primitives::B256>),
    /// Not paid this time; it stays owed (or could not be tried).
    Failed(String),
    /// Nothing to do and nothing to report (another run holds the result).
    Quiet,
    /// Paid before, or no longer there: it leaves the queue.
    Gone,
}

/// `run-refunds`: pay up to `limit` queued refunds from the treasury.
pub async fn run(now: u64, limit: u32) -> Result<wit::RefundRun, wit::Error> {
    let cfg = crate::config::get().await?;
    let treasury = cfg.treasury()?;
    let queue = kv::get_json::<Vec<String>, wit::Error>(keys::REFUND_QUEUE)
        .await
        .map_err(kv_err)?
        .unwrap_or_default();
    let batch = refund::batch(&queue, usize::try_from(limit).unwrap_or(usize::MAX));
    if batch.is_empty() {
        return Ok(wit::RefundRun {
            summary: to_json(&summary(&[], queue.len()))?,
            events: Vec::new(),
            repeats: Vec::new(),
            settled: Vec::new(),
        });
    }
    let deadline = Instant::now() + cfg.settlement_timeout;
    let healed = pay::Healed::default();
    let steps = join_all(
        batch
            .iter()
            .map(|id| pay::pay_one(&cfg, treasury, id, now, deadline, &healed)),
    )
    .await;
    let results: Vec<(String, Step)> = batch.into_iter().zip(steps).collect();
    let remaining = requeue(&results).await.unwrap_or_else(|e| {
        eprintln!("verifier: cannot update the refund queue: {e:?}");
        queue.len()
    });
    let mut events = Vec::new();
    let mut repeats = Vec::new();
    let mut settled = Vec::new();
    for (id, step) in &results {
        match step {
            Step::Paid(_, e) => events.push(e.clone()),
            Step::Unacked(e) => repeats.push(e.clone()),
            _ => continue,
        }
        settled.push(id.clone());
    }
    // What the caller acknowledges leaves the queue: not counted as remaining.
    let remaining = remaining.saturating_sub(settled.len());
    Ok(wit::RefundRun {
        summary: to_json(&summary(&results, remaining))?,
        events,
        repeats,
        settled,
    })
}

/// `ack-refunds`: the events of these paid refunds are logged; they leave the queue (an id whose refund is not
/// paid stays). The queue's length after.
pub async fn ack(ids: &[String]) -> Result<u32, wit::Error> {
    let mut gone = Vec::new();
    for id in ids {
        let Ok(invoice) = InvoiceId::parse(id) else {
            continue;
        };
        let refund = kv::get_json::<Refund, wit::Error>(&keys::refund(&invoice))
            .await
            .map_err(kv_err)?;
        if refund.is_some_and(|r| r.status == RefundStatus::Paid) {
            gone.push(id.clone());
        }
    }
    let queue = kv::update_json::<Vec<String>, wit::Error>(keys::REFUND_QUEUE, |q| {
        Ok(refund::requeue(&q.unwrap_or_default(), &[], &gone))
    })
    .await
    .map_err(kv_err)?;
    Ok(u32::try_from(queue.len()).unwrap_or(u32::MAX))
}

/// Drop the refunds that left the queue and move the rest of the batch to its tail (kernel
/// `refund::requeue`). Returns the queue's length.
async fn requeue(results: &[(String, Step)]) -> Result<usize, wit::Error> {
    let gone: Vec<String> = results
        .iter()
        .filter(|(_, s)| matches!(s, Step::Gone))
        .map(|(id, _)| id.clone())
        .collect();
    let tried: Vec<String> = results.iter().map(|(id, _)| id.clone()).collect();
    let queue = kv::update_json::<Vec<String>, wit::Error>(keys::REFUND_QUEUE, |q| {
        Ok(refund::requeue(&q.unwrap_or_default(), &tried, &gone))
    })
    .await
    .map_err(kv_err)?;
    Ok(queue.len())
}

fn summary(results: &[(String, Step)], remaining: usize) -> serde_json::Value {
    let mut paid = Vec::new();
    let mut pending = Vec::new();
    let mut failed = Vec::new();
    for (invoice, step) in results {
        match step {
            Step::Paid(tx, _) => {
                paid.push(json!({"invoice": invoice, "transaction": tx.to_string()}))
            }
            Step::Pending(tx) => {
                pending.push(json!({"invoice": invoice, "transaction": tx.map(|t| t.to_string())}))
            }
            Step::Failed(error) => failed.push(json!({"invoice": invoice, "error": error})),
            Step::Unacked(_) | Step::Quiet | Step::Gone => {}
        }
    }
    json!({"paid": paid, "pending": pending, "failed": failed, "remaining": remaining})
}
