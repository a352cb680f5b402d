//! A facilitator API settle for an authorization that is already claimed (reference §5): the stored outcome,
//! a reconciliation of a pending one against its recorded hash, or a takeover of an abandoned claim; never a
//! second transaction, never a second success.

use std::time::Instant;

use esim402_core::settlement::{Outcome, Record, Status};
use esim402_core::x402::{InvalidReason, SettleResponse};
use esim402_guest::wit;

use super::{Request, answer, drive_unless_held};
use crate::schemes::payment;
use crate::sender::receipts::{self, Claim};

/// A settle for an authorization that is already claimed.
pub(super) async fn replay(
    r: &Request,
    record: Record,
    now: u64,
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
            let deadline = Instant::now() + r.cfg.settlement_timeout;
            let (outcome, first) = receipts::reconcile(&r.chain, &claim, hash, deadline).await;
            // A record from before successes were claimed apart: its other callers (an earlier build) report
            // the one that records the receipt first, so this one does too.
            if !record_claimed_apart && matches!(outcome, Outcome::Confirmed(_)) && !first {
                return Ok(r.failure(InvalidReason::NonceAlreadyUsed, Some(hash)));
            }
            Ok(answer(r, payer, outcome, &claim.record_key))
        }
        Status::Claimed if record.is_abandoned(now) => {
            let signer = r.cfg.signer()?;
            let key = record.claim.clone();
            let Some(claim) = Claim::take_over(&key, &key, vec![key.clone()], now).await? else {
                return Ok(r.failure(InvalidReason::SettlementPending, None));
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
        // Another call drives it (its claim is live): its outcome is still to come.
        Status::Claimed => Ok(r.failure(InvalidReason::SettlementPending, None)),
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
