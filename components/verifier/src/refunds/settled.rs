//! The settlement `owe-refund` gives back, as the chain shows it: a `submitted` one (kernel
//! `refund::SettlementPaid::Unsure`) is reconciled against its receipt before a refund is owed or refused.
//! A confirmation whose record could not be written leaves its settlement `submitted` with the purchase
//! delivered; a refusal there would be final for the caller (`REFUND NOT RECORDED`), so whatever stays unsure
//! is `unavailable`, which the caller asks again, until `refund::UNSURE_SETTLEMENT_SECS` after its claim: a
//! settlement pending that long waits for an operator, not the chain, so it is logged `OPERATOR:` and refused.

use std::time::Instant;

use alloy_primitives::B256;
use esim402_core::InvoiceId;
use esim402_core::refund;
use esim402_core::settlement::{Outcome, Record, Status};
use esim402_guest::wit;

use crate::chain::Chain;
use crate::claims;
use crate::config::Config;
use crate::sender::receipts::{self, Claim};

/// The chain `settlement` was paid on: retryable, not refused, while its network is disabled (the caller
/// keeps what it owes, so the refund is recorded once it is enabled again; a refusal was logged once and the
/// refund dropped).
pub(super) fn chain_of(
    cfg: &Config,
    settlement: &Record,
    id: &InvoiceId,
) -> Result<Chain, wit::Error> {
    match cfg.chain(&settlement.network) {
        Ok(chain) => Ok(chain),
        Err(wit::Error::PaymentRequired(_)) => Err(wit::Error::Unavailable(format!(
            "invoice {id} was paid on {}, which is no longer enabled: its refund is recorded once it is \
             enabled again",
            settlement.network
        ))),
        Err(e) => Err(e),
    }
}

/// The `submitted` `settlement` of invoice `id` (its transaction `hash`), reconciled now against its receipt
/// as a replay would (`receipts::reconcile`, without waiting): the confirmed record, or why not. Still unsure
/// (not mined, or its outcome not recorded) is `unavailable`, but pending for good (kernel
/// `refund::unsure_for_good`) a conflict for an operator; failed is a conflict, as nothing was paid.
pub(super) async fn reconcile(
    cfg: &Config,
    settlement: Record,
    hash: B256,
    id: &InvoiceId,
    now: u64,
) -> Result<Record, wit::Error> {
    let chain = chain_of(cfg, &settlement, id)?;
    let key = settlement.claim.clone();
    let for_good = refund::unsure_for_good(&settlement, now);
    let claim = Claim::reconciling(&chain, None, settlement, now).await;
    let unsure = || {
        wit::Error::Unavailable(format!(
            "invoice {id}'s settlement {hash:#x} is not confirmed yet: its refund is recorded once it is"
        ))
    };
    match receipts::reconcile(&chain, &claim, hash, Instant::now())
        .await
        .0
    {
        Outcome::Confirmed(_) => {}
        Outcome::Pending(_) if for_good => {
            eprintln!(
                "verifier: OPERATOR: owe-refund for invoice {id}: its settlement {key} (transaction {hash:#x}) is \
                 still pending {} h or more after its claim; the refund is refused: settle the record by hand, then owe it",
                refund::UNSURE_SETTLEMENT_SECS / 3600
            );
            return Err(wit::Error::Conflict(format!(
                "nothing was paid for invoice {id}: its settlement {hash:#x} is submitted, not confirmed"
            )));
        }
        Outcome::Pending(_) => return Err(unsure()),
        _ => {
            return Err(wit::Error::Conflict(format!(
                "nothing was paid for invoice {id}: its settlement failed"
            )));
        }
    }
    match claims::load(&key).await? {
        Some(r) if r.status == Status::Confirmed => Ok(r),
        // Confirmed on chain, its record not written this time either: asked again.
        _ => Err(unsure()),
    }
}
