//! A settlement whose own transaction can no longer execute its authorization (it reverted, or it can never be
//! mined) while the chain reads the authorization as used: another transaction used it first (the payer's own,
//! another facilitator's). Which one did, and what it moved, decides the settlement (kernel
//! `settlement::front_run`): the token's `AuthorizationUsed` / `AuthorizationCanceled` logs name the
//! transaction, whose own receipt must show the same event, buried as deeply as the network asks of any
//! outcome, and whether it moved this payment's money.
//!
//! Rule a reader must not break: an invoice's settlement is confirmed by another transaction only once that
//! transaction's `txhash/` key is claimed for it (insert-if-absent), so a transfer never pays two invoices:
//! a tx-hash proof that claimed it first keeps it, and this settlement stays pending for an operator.

use alloy_primitives::{Address, B256};
use esim402_core::evm::receipt::{
    AUTHORIZATION_CANCELED_TOPIC, AUTHORIZATION_USED_TOPIC, AuthorizationFate, authorization_fate,
    authorization_fate_in,
};
use esim402_core::evm::rpc::EthGetLogs;
use esim402_core::settlement::{
    Outcome, Record, Status, UsedElsewhere, front_run, front_run_search,
};
use esim402_core::store::keys;
use esim402_core::x402::exact::{TransferAuthorization, transfer_event_matches};

use crate::chain::Chain;
use crate::claims;
use crate::rpc::CALL_TIMEOUT;

/// The authorization a settlement carries, and what its own transaction came to.
pub struct Used<'a> {
    /// Its authorizer.
    pub from: Address,
    /// Its nonce.
    pub nonce: B256,
    /// The authorization as our transaction carries it, if known (records from before the signed bytes were
    /// kept do not say; their front-runs stay with an operator).
    pub executes: Option<&'a TransferAuthorization>,
    /// A block by which the chain showed the authorization used.
    pub by_block: u64,
    /// The blocks to search for the transaction that used it, if not the kernel's `front_run_search` from the
    /// record's own transaction (a claim made after the authorization was used: `used_claim_search`).
    pub window: Option<(u64, u64)>,
}

/// What the `failed` settlement of the record at `record_key` (claim `claim`; reverted or dropped, its
/// authorization used by then) becomes: confirmed by the transaction that executed it, or failed; `None` while
/// it stays pending (see the module docs). A record someone else finished meanwhile is left as it is (`failed`
/// goes to the caller's finish, which then reports what was recorded).
pub async fn settle(
    chain: &Chain,
    record_key: &str,
    claim: &str,
    failed: Outcome,
    used: &Used<'_>,
) -> Option<Outcome> {
    let ours = match failed {
        Outcome::Reverted(h) | Outcome::Dropped(h) => h,
        other => return Some(other),
    };
    let record = match claims::load(record_key).await {
        Ok(Some(r)) if r.claim == claim => r,
        _ => return None,
    };
    if record.is_terminal() {
        return Some(failed);
    }
    if record.status != Status::Submitted || !record.sent.is_ours(ours) {
        return None;
    }
    let found = used_by(chain, &record, used).await;
    let outcome = front_run(&record, failed, found);
    match outcome {
        Outcome::Confirmed(by) => match claims::insert(&keys::txhash(by), &record).await {
            Ok(None) => {
                eprintln!(
                    "verifier: settlement {ours} was front-run: the authorization {} of {} was executed by {by}, which moved this payment's money; confirmed by it",
                    used.nonce, used.from
                );
                Some(outcome)
            }
            Ok(Some(existing)) if existing.claim == record.claim => Some(outcome),
            Ok(Some(existing)) => {
                eprintln!(
                    "verifier: OPERATOR: settlement {ours} was front-run by {by}, which moved this payment's money but already pays {}; left pending",
                    existing
                        .invoice
                        .as_deref()
                        .unwrap_or("a facilitator API settlement")
                );
                None
            }
            Err(e) => {
                eprintln!(
                    "verifier: settlement {ours} was front-run by {by}; cannot claim it ({e:?}); left pending"
                );
                None
            }
        },
        Outcome::Pending(_) => {
            eprintln!(
                "verifier: OPERATOR: settlement {ours} can no longer execute the authorization {} of {}, which was used by another transaction ({found:?}); left pending: settle the record by hand",
                used.nonce, used.from
            );
            None
        }
        _ => {
            eprintln!(
                "verifier: settlement {ours}: the authorization {} of {} was used by another transaction that moved none of this payment's money ({found:?}): failed",
                used.nonce, used.from
            );
            Some(outcome)
        }
    }
}

/// What used `record`'s authorization, from the token's logs over the kernel's `front_run_search` blocks and
/// the using transaction's receipt. Whatever cannot be read or does not agree is `Unknown`.
pub(crate) async fn used_by(chain: &Chain, record: &Record, used: &Used<'_>) -> UsedElsewhere {
    let token = chain.network.usdc;
    let (from_block, to_block) = used
        .window
        .unwrap_or_else(|| front_run_search(record, used.by_block));
    let query = EthGetLogs {
        address: token,
        topics: vec![
            Some(vec![AUTHORIZATION_USED_TOPIC, AUTHORIZATION_CANCELED_TOPIC]),
            Some(vec![used.from.into_word()]),
            Some(vec![used.nonce]),
        ],
        from_block,
        to_block,
    };
    let logs = match chain.rpc.call(&query).await {
        Ok(logs) => logs,
        Err(e) => {
            eprintln!("verifier: cannot read the authorization's logs: {e}");
            return UsedElsewhere::Unknown;
        }
    };
    let fate = authorization_fate(&logs, token, used.from, used.nonce);
    let tx = match fate {
        AuthorizationFate::Executed(tx) | AuthorizationFate::Canceled(tx) => tx,
        AuthorizationFate::Unknown => return UsedElsewhere::Unknown,
    };
    // The transaction itself must show the same event, buried as deeply as the network asks of any outcome.
    let need = u64::from(chain.network.confirmations);
    let receipt = match chain.receipt_and_head(tx, need > 1, CALL_TIMEOUT).await {
        (Ok(Some(receipt)), head)
            if receipt.status
                && (need <= 1
                    || matches!(head, Some(Ok(h)) if receipt.confirmations(h) >= need)) =>
        {
            receipt
        }
        _ => return UsedElsewhere::Unknown,
    };
    if authorization_fate_in(&receipt, token, used.from, used.nonce) != fate {
        eprintln!(
            "verifier: the token's logs name {tx} for the authorization {} of {}, but its receipt does not show it",
            used.nonce, used.from
        );
        return UsedElsewhere::Unknown;
    }
    match (fate, used.executes) {
        (AuthorizationFate::Canceled(_), _) => UsedElsewhere::Canceled,
        (_, Some(auth)) => UsedElsewhere::Executed {
            tx,
            pays: transfer_event_matches(&receipt, token, auth),
        },
        (_, None) => UsedElsewhere::Unknown,
    }
}
