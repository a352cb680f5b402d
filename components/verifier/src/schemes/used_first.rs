//! An invoice's `exact` settlement whose own transaction was never sent, because the transfer would revert
//! (its gas estimate failed) or, for a claim taken over, because the authorization no longer verifies. If the
//! chain reads the authorization as used, another transaction executed it before ours was prepared (the
//! payer's own wallet, anyone holding the payload): its money may have reached `payTo`, so the settlement is
//! decided like a front-run (kernel `settlement::used_before_sent`, the transaction found by
//! `sender::front_run::used_by`) while the claim is still held, never refused as if nothing moved.
//!
//! Rule a reader must not break (as for a front-run): the invoice is settled by that transaction only once its
//! `txhash/` key is claimed for this record, so a transfer never pays two invoices.

use alloy_primitives::B256;
use esim402_core::evm::rpc::EthBlockNumber;
use esim402_core::settlement::{self, Outcome, Record, Status, UsedBeforeSent};
use esim402_core::store::keys;
use esim402_core::x402::InvalidReason;
use esim402_core::x402::exact::TransferAuthorization;
use esim402_guest::convert::internal;
use esim402_guest::{util, wit};

use crate::chain::{Chain, unavailable};
use crate::claims::{self, Finished};
use crate::rejected;
use crate::schemes::payment::Checked;
use crate::sender::front_run::{self, Used};
use crate::sender::receipts::Claim;

/// Decide the settlement held by `claim` of `authorization`, which could not be sent (`refused`: the reason it
/// gets if the authorization is unused, as before). Released and refused only when no money of this payment
/// moved; held (an error that asks the caller to send the payment again) while the chain cannot say.
pub async fn decide(
    chain: &Chain,
    claim: &Claim,
    authorization: &TransferAuthorization,
    refused: InvalidReason,
) -> Result<wit::Settlement, wit::Error> {
    let (from, nonce) = (authorization.from, authorization.nonce);
    let record = match claims::load(&claim.record_key).await? {
        Some(r) if r.claim == claim.claim && r.holder == claim.holder => r,
        // Taken over meanwhile: its new holder decides.
        _ => return Err(wit::Error::Conflict(settlement::IN_PROGRESS.into())),
    };
    if record.status != Status::Claimed {
        return Err(wit::Error::Conflict(settlement::IN_PROGRESS.into()));
    }
    let (head, used) = used_at_head(chain, from, nonce).await?;
    if !used {
        claim.release().await;
        return Err(rejected(refused));
    }
    let used = Used {
        from,
        nonce,
        executes: Some(authorization),
        by_block: head,
        // Nothing of ours was prepared to search from (a claim made once the authorization was used, or one
        // taken over before it sent anything): the widest window back from the head.
        window: record
            .sent_at_block
            .is_none()
            .then(|| settlement::used_claim_search(head)),
    };
    let found = front_run::used_by(chain, &record, &used).await;
    match settlement::used_before_sent(&record, found) {
        UsedBeforeSent::Confirmed(by) => confirm(claim, &record, by, nonce).await,
        UsedBeforeSent::Refused => {
            eprintln!(
                "verifier: the authorization {nonce} of {from} was used by another transaction that moved none of this payment's money ({found:?}): refused"
            );
            claim.release().await;
            Err(rejected(InvalidReason::NonceAlreadyUsed))
        }
        UsedBeforeSent::Pending => Err(left(format!(
            "OPERATOR: the authorization {nonce} of {from} was used on chain before this settlement was sent, by a transaction not found ({found:?}); its claim {} is held: settle it by hand",
            claim.record_key
        ))),
    }
}

/// Claim this invoice's settlement of `checked`'s authorization, already used on chain when a resumed payment
/// came back (the order an earlier attempt placed waited meanwhile), and [`decide`] it: `true` when the
/// transaction that used it moved this payment's money (the record confirmed by it, its `txhash/` key claimed);
/// `false` when nothing of it moved (unused, or used by a cancel or other money). Nothing is claimed unless the
/// chain shows it used (an unreadable chain is an error, an unused one `false`), and a claim made is released
/// unless the authorization's fate stays unknown (no log found yet, or the chain stops answering between the
/// claim and the decision: held, as [`decide`] holds it). The record is dated `at`, inside the authorization's window
/// (kernel `settlement::used_claimed_at`), so the same payment sent again replays it; its `updated_at` is now.
/// Someone else's claim found first, or a verdict the chain cannot give yet, is an error that decides nothing
/// (the gateway keeps the payment open).
pub async fn claim_used(
    chain: &Chain,
    checked: &Checked,
    invoice: &str,
    at: u64,
) -> Result<bool, wit::Error> {
    let auth = &checked.signed.authorization;
    if !used_at_head(chain, auth.from, auth.nonce).await?.1 {
        return Ok(false);
    }
    let key = checked.nonce_key(chain);
    let holder = util::holder_token().map_err(internal)?;
    let mut record = Record::claimed(
        chain.network.caip2(),
        checked.payer,
        key.clone(),
        holder.clone(),
        Some(invoice),
        at,
    );
    record.updated_at = util::now_secs();
    let Ok(version) = claims::claim(&key, &record).await? else {
        return Err(wit::Error::Conflict(settlement::IN_PROGRESS.into()));
    };
    let claim = Claim::made(key, holder, version);
    match decide(chain, &claim, auth, InvalidReason::NonceAlreadyUsed).await {
        Ok(wit::Settlement::Settled(_)) => Ok(true),
        Ok(wit::Settlement::Pending(_)) => {
            Err(wit::Error::Conflict(settlement::IN_PROGRESS.into()))
        }
        Err(wit::Error::PaymentRequired(_)) => Ok(false),
        Err(e) => Err(e),
    }
}

/// The chain's head, and whether the authorization `nonce` of `from` reads as used at it.
async fn used_at_head(
    chain: &Chain,
    from: alloy_primitives::Address,
    nonce: B256,
) -> Result<(u64, bool), wit::Error> {
    let head = chain
        .rpc
        .call(&EthBlockNumber)
        .await
        .map_err(|e| unavailable(&e))?;
    let used = chain
        .authorization_used_at(from, nonce, head)
        .await
        .map_err(|e| unavailable(&e))?;
    Ok((head, used))
}

/// Confirm the record by `by`, the transaction that moved its money, once `by`'s `txhash/` key is claimed for
/// it.
async fn confirm(
    claim: &Claim,
    record: &esim402_core::settlement::Record,
    by: B256,
    nonce: B256,
) -> Result<wit::Settlement, wit::Error> {
    match claims::insert(&keys::txhash(by), record).await? {
        None => {}
        Some(existing) if existing.claim == record.claim => {}
        Some(existing) => {
            return Err(left(format!(
                "OPERATOR: the authorization {nonce} was executed by {by} before this settlement was sent, which moved its money but already pays {}; its claim {} is held",
                existing
                    .invoice
                    .as_deref()
                    .unwrap_or("a facilitator API settlement"),
                claim.record_key
            )));
        }
    }
    let finished = claims::finish(
        &claim.record_key,
        claim.version.take(),
        &claim.claim,
        Outcome::Confirmed(by),
        Some(by),
        util::now_secs(),
    )
    .await?;
    match finished {
        Finished::Record(r, _) if r.status == Status::Confirmed => {
            eprintln!(
                "verifier: the authorization {nonce} was executed by {by} before our settlement was sent, moving this payment's money: settled by it"
            );
            Ok(wit::Settlement::Settled(
                r.settled_hash().unwrap_or(by).to_string(),
            ))
        }
        Finished::Record(r, _) if r.status == Status::Failed => {
            Err(wit::Error::PaymentRequired(r.reason.unwrap_or_else(|| {
                InvalidReason::TransactionFailed.as_str().to_owned()
            })))
        }
        _ => Err(wit::Error::Conflict(settlement::IN_PROGRESS.into())),
    }
}

/// Left held for a later attempt or an operator: logged, and answered as a fault (the gateway keeps the
/// payment open and withdraws nothing).
fn left(message: String) -> wit::Error {
    eprintln!("verifier: {message}");
    wit::Error::Unavailable(
        "the payment's authorization was used on chain by another transaction; its settlement is pending"
            .into(),
    )
}
