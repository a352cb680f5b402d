//! A facilitator API settle for an authorization that is already claimed (reference §5): the stored outcome,
//! a reconciliation of a pending one against its recorded hash, or a takeover of an abandoned claim; never a
//! second transaction, never a second success.
//!
//! A claim another call holds and has sent nothing for yet is followed ([`follow`]): this call waits for it to
//! record its transaction, then answers as for any recorded one (`settlement_pending` only ever with that
//! hash: the reference resource servers retry it only with one). One that sends nothing in time is
//! `duplicate_settlement` (kernel `SettleResponse::in_progress`).

use std::time::{Duration, Instant};

use esim402_core::settlement::{Outcome, Record, Status};
use esim402_core::x402::{InvalidReason, SettleResponse};
use esim402_guest::{util, wit};

use super::{Request, answer, drive_unless_held};
use crate::claims;
use crate::schemes::payment;
use crate::sender::receipts::{self, Claim};

/// How often [`follow`] reads a claim it waits for.
const FOLLOW_POLL: Duration = Duration::from_millis(250);

/// A settle for an authorization that is already claimed. Waits for a live claim, and reconciles a sent
/// transaction, for the configured settlement timeout at most (each).
pub(super) async fn replay(
    r: &Request,
    record: Record,
    now: u64,
) -> Result<SettleResponse, wit::Error> {
    let deadline = Instant::now() + r.cfg.settlement_timeout;
    match record.status {
        // Claimed by an invoice settlement: never ours to follow or take over.
        Status::Claimed if record.invoice.is_some() => recorded(r, record, now, None).await,
        Status::Claimed if record.is_abandoned(now) => {
            take_over(r, &record.claim, now, deadline).await
        }
        // Another call drives it (its claim is live): its transaction is still to come.
        Status::Claimed => follow(r, &record.claim, deadline).await,
        _ => recorded(r, record, now, None).await,
    }
}

/// Follow the claim at `key`, another call's: read it every [`FOLLOW_POLL`] until it records its transaction
/// or outcome (then answered as any recorded one is, a sent transaction reconciled until `deadline`), or until
/// `deadline` or the end of its lease, whichever comes first (then `duplicate_settlement`: a later repeat finds
/// it sent, or takes it over). A claim given back meanwhile sent nothing, and is `duplicate_settlement` too (a
/// repeat settles it afresh).
pub(super) async fn follow(
    r: &Request,
    key: &str,
    deadline: Instant,
) -> Result<SettleResponse, wit::Error> {
    loop {
        let now = util::now_secs();
        let Some(record) = claims::load(key).await? else {
            return Ok(r.in_progress());
        };
        if record.status != Status::Claimed {
            return recorded(r, record, now, Some(deadline)).await;
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() || record.is_abandoned(now) {
            return Ok(r.in_progress());
        }
        spin_sdk::time::sleep(left.min(FOLLOW_POLL)).await;
    }
}

/// Take over the abandoned claim `key` and settle it; one that another call took first is followed.
async fn take_over(
    r: &Request,
    key: &str,
    now: u64,
    deadline: Instant,
) -> Result<SettleResponse, wit::Error> {
    let signer = r.cfg.signer()?;
    let Some(claim) = Claim::take_over(key, key, vec![key.to_owned()], now).await? else {
        return follow(r, key, deadline).await;
    };
    let verified = payment::verify(
        &r.chain,
        Some(signer.address()),
        &r.request.payment_payload,
        &r.requirements,
        now,
    )
    .await;
    match verified {
        Ok(Ok(checked)) => drive_unless_held(r, &checked, &claim, now).await,
        Ok(Err(reason)) => {
            claim.release().await;
            Ok(r.failure(reason, None))
        }
        Err(e) => {
            claim.release().await;
            Err(e)
        }
    }
}

/// The answer for a record whose settlement was sent or ended (or that an invoice's settlement claimed),
/// reconciling a sent one until `deadline` (by default, the settlement timeout from when it starts).
async fn recorded(
    r: &Request,
    record: Record,
    now: u64,
    deadline: Option<Instant>,
) -> Result<SettleResponse, wit::Error> {
    let tx = record.settled_hash();
    if record.invoice.is_some() {
        // Claimed by an invoice settlement: never a second broadcast, never a second success. One that failed
        // moved nothing: its failure, not a nonce said to be used.
        return Ok(r.failure(
            failed_reason(&record).unwrap_or(InvalidReason::NonceAlreadyUsed),
            tx,
        ));
    }
    // Only the payment this record settles may have its outcome: checked as of the claim (a repeat after the
    // window closed still is that payment) and executed by the recorded transaction.
    let same = || {
        payment::check(
            &r.chain,
            &r.request.payment_payload,
            &r.requirements,
            record.claimed_at,
            None,
        )
        .ok()
        .filter(|checked| record.settles(&checked.signed.authorization))
        .map(|checked| checked.payer)
    };
    match record.status {
        // Its success not reported yet (the call that saw it confirmed could not claim it): this one may. A
        // record from before successes were claimed apart reported its own when it was confirmed.
        Status::Confirmed => Ok(match (tx, same()) {
            (Some(hash), Some(payer)) if record.success_claimed_apart => {
                answer(r, payer, Outcome::Confirmed(hash), &record.claim)
            }
            _ => r.failure(InvalidReason::NonceAlreadyUsed, tx),
        }),
        Status::Failed => Ok(r.failure(
            failed_reason(&record).unwrap_or(InvalidReason::TransactionFailed),
            tx,
        )),
        Status::Submitted => {
            let Some(hash) = tx else {
                return Ok(r.failure(InvalidReason::InvalidTransactionState, None));
            };
            let Some(payer) = same() else {
                return Ok(r.failure(InvalidReason::NonceAlreadyUsed, Some(hash)));
            };
            let record_claimed_apart = record.success_claimed_apart;
            let claim = Claim::reconciling(&r.chain, r.cfg.signer().ok(), record, now).await;
            let deadline = deadline.unwrap_or_else(|| Instant::now() + r.cfg.settlement_timeout);
            let (outcome, first) = receipts::reconcile(&r.chain, &claim, hash, deadline).await;
            // A record from before successes were claimed apart: its other callers (an earlier build) report
            // the one that records the receipt first, so this one does too.
            if !record_claimed_apart && matches!(outcome, Outcome::Confirmed(_)) && !first {
                return Ok(r.failure(InvalidReason::NonceAlreadyUsed, Some(hash)));
            }
            Ok(answer(r, payer, outcome, &claim.record_key))
        }
        // A claim that sent nothing (not reached for a facilitator API claim, which is followed).
        Status::Claimed => Ok(r.in_progress()),
    }
}

/// The reason a `failed` record stored (`transaction_failed` if it names none); `None` unless failed.
fn failed_reason(record: &Record) -> Option<InvalidReason> {
    (record.status == Status::Failed).then(|| {
        record
            .reason
            .as_deref()
            .and_then(|s| s.parse().ok())
            .unwrap_or(InvalidReason::TransactionFailed)
    })
}
