//! Sending a token call from one of our keys, once a claim is held, and waiting for the receipt (reference §5).
//! [`send`] is the one send path: settlements ([`broadcast`]: `transferWithAuthorization` from the
//! facilitator's key) and refunds (`crate::refund`: ERC-20 `transfer` from the treasury key) both use it.
//!
//! Order: the chain reads first (chain id, `eth_estimateGas` plus a margin, fees from the latest base fee and
//! `eth_maxPriorityFeePerGas`, the account's pending transaction count), then, without any await, reserve an
//! account nonce (kernel `NonceState` under `signer/…/nonce`, compare-and-swap), sign in the component and
//! let the caller record the hash on its claim (`submitted`); then `eth_sendRawTransaction`.
//!
//! Before the broadcast every failure gives the nonce back and tells the caller, which releases its claim, so
//! a retry can work. Once the transaction may have left (sent, or the send's outcome is unknown) nothing is
//! released: the claim keeps its hash, the answer is `pending`, and a later call reconciles against that hash
//! and never re-broadcasts. The hash is computed locally, so a `submitted` record always carries one.

use std::time::{Duration, Instant};

use alloy_primitives::{Address, B256, U256};
use esim402_core::evm::rpc::{
    CallRequest, EthEstimateGas, EthGetBlockByNumber, EthGetTransactionCount,
    EthMaxPriorityFeePerGas, EthSendRawTransaction,
};
use esim402_core::evm::{Eip1559Tx, NonceState, SignedTx, SigningKey, sign_eip1559};
use esim402_core::x402::InvalidReason;
use esim402_core::x402::exact::{SignedAuthorization, transfer_with_authorization_calldata};
use esim402_guest::kv;

use crate::chain::{Chain, Mined, unavailable};
use crate::records::{self, Record, Status, kv_err, signer_nonce_key};
use crate::rpc::CallError;
use crate::{now_secs, wit};

/// Headroom over `eth_estimateGas` (25 %): state can change between estimate and inclusion.
const GAS_MARGIN_DIVISOR: u64 = 4;
/// No transaction of ours may burn more gas than this (`transferWithAuthorization` needs ~60–100k, an ERC-20
/// `transfer` ~35–65k).
const MAX_GAS_LIMIT: u64 = 500_000;
/// Reference fallbacks when the node gives no fee data: fee cap 1 gwei, tip 0.1 gwei.
const FALLBACK_MAX_FEE: u128 = 1_000_000_000;
const FALLBACK_TIP: u128 = 100_000_000;

/// How a settlement ended, as far as this call knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Mined with status 1.
    Confirmed(B256),
    /// Mined with status 0: no money moved.
    Reverted(B256),
    /// Broadcast (or possibly broadcast); no receipt yet.
    Pending(B256),
}

/// Why a settlement did not broadcast: a verdict on the payment or a fault. Claims are already released.
pub enum NotSent {
    /// The transfer would revert (gas estimation failed with a node answer).
    Rejected(InvalidReason),
    /// Anything else.
    Fault(wit::Error),
}

/// One contract call to send from one of our keys.
pub struct Call {
    /// The contract (the network's USDC).
    pub to: Address,
    /// Calldata.
    pub input: Vec<u8>,
    /// What the transaction is, for messages (`settlement`, `refund`).
    pub what: &'static str,
}

/// Why [`send`] did not broadcast.
pub enum Unsent {
    /// The node's gas estimate failed with an answer: the call would revert. Carries the node's message.
    WouldRevert(String),
    /// Anything else.
    Fault(wit::Error),
}

/// A [`send`] that certainly broadcast nothing. The account nonce is already given back; the caller's claim
/// is not (the caller releases it).
pub struct NotBroadcast {
    /// Why.
    pub why: Unsent,
    /// The hash the caller recorded on its claim before the send was refused, if it got that far.
    pub recorded: Option<B256>,
}

impl From<Unsent> for NotBroadcast {
    fn from(why: Unsent) -> Self {
        Self {
            why,
            recorded: None,
        }
    }
}

/// What a settlement holds: where its record is and which keys to delete if it never broadcasts.
pub struct Claim {
    /// The record to advance (`settlement/<invoice>` or the authorization's nonce key).
    pub record_key: String,
    /// The record's `claim` (guards every update).
    pub claim: String,
    /// Our holder token (guards the updates before the broadcast).
    pub holder: String,
    /// Every key this settlement inserted, released if nothing was broadcast.
    pub keys: Vec<String>,
}

impl Claim {
    /// Take over the abandoned claim `record` (at `key`; see [`records::CLAIM_LEASE_SECS`]): `None` if it is
    /// live or someone else took it first. An abandoned claim never reserved an account nonce (see
    /// [`send`]), so there is nothing to give back.
    pub fn take_over(
        key: &str,
        record: &Record,
        keys: Vec<String>,
        now: u64,
    ) -> Result<Option<Self>, wit::Error> {
        let holder = records::new_holder()?;
        if !records::take_over(key, &record.claim, &holder, now)? {
            return Ok(None);
        }
        Ok(Some(Self {
            record_key: key.to_owned(),
            claim: record.claim.clone(),
            holder,
            keys,
        }))
    }

    /// Give the claims back (the payment was refused before anything was signed).
    pub fn release(&self) {
        records::release(&self.record_key, &self.holder, &self.keys);
    }

    /// Record `tx` on the settlement record (`submitted`) while we still hold it, and mark its hash as used.
    fn record_submitted(&self, tx: &SignedTx) -> Result<(), wit::Error> {
        let (_, held) = records::advance(&self.record_key, &self.claim, Some(&self.holder), |r| {
            r.status = Status::Submitted;
            r.transaction = Some(tx.hash.to_string());
            r.signer = Some(tx.from.to_checksum(None));
            r.signer_nonce = Some(tx.nonce);
            r.updated_at = now_secs();
        })?;
        if !held {
            return Err(wit::Error::Conflict(
                "already settled: the claim was taken over".into(),
            ));
        }
        // Our own settlement transactions can never be presented again as a tx-hash proof.
        if let Ok(Some(r)) = records::load(&self.record_key)
            && let Err(e) = records::insert_if_absent(&records::txhash_key(tx.hash), &r)
        {
            eprintln!(
                "verifier: cannot mark transaction {} as used: {e:?}",
                tx.hash
            );
        }
        Ok(())
    }
}

/// Whether a node's refusal of `eth_sendRawTransaction` means our transaction is in its pool anyway.
fn already_known(message: &str) -> bool {
    let m = message.to_ascii_lowercase();
    m.contains("already known") || m.contains("known transaction") || m.contains("alreadyknown")
}

/// Give back an account nonce whose transaction was certainly not broadcast.
fn release_nonce(chain: &Chain, signer: &SigningKey, nonce: u64) {
    let key = signer_nonce_key(&chain.network, signer.address());
    let r = kv::update_json::<NonceState, ()>(&key, |s| {
        let mut s = s.unwrap_or_default();
        s.release_on_failure(nonce);
        Ok(s)
    });
    if let Err(e) = r {
        eprintln!("verifier: cannot release account nonce {nonce}: {e}");
    }
}

/// Reserve the next account nonce for `signer`, given the chain's pending count. Synchronous on purpose: see
/// [`send`].
fn reserve_nonce(chain: &Chain, signer: &SigningKey, chain_count: u64) -> Result<u64, wit::Error> {
    let key = signer_nonce_key(&chain.network, signer.address());
    let (_, nonce) = kv::update_json_with::<NonceState, u64, wit::Error>(&key, |s| {
        let mut s = s.unwrap_or_default();
        let n = s.reserve(chain_count);
        Ok((s, n))
    })
    .map_err(kv_err)?;
    Ok(nonce)
}

/// `(tip, fee cap)` in wei.
async fn fees(chain: &Chain) -> Result<(u128, u128), wit::Error> {
    let block = match chain.rpc.call(&EthGetBlockByNumber::latest()).await {
        Ok(b) => b,
        Err(e) if e.is_node() => None,
        Err(e) => return Err(unavailable(&e)),
    };
    let tip = match chain.rpc.call(&EthMaxPriorityFeePerGas).await {
        Ok(t) => t,
        Err(e) if e.is_node() => FALLBACK_TIP,
        Err(e) => return Err(unavailable(&e)),
    };
    Ok(match block.and_then(|b| b.base_fee_per_gas) {
        // Twice the base fee survives several full blocks of base-fee growth.
        Some(base) => (tip, base.saturating_mul(2).saturating_add(tip)),
        None => (tip.min(FALLBACK_MAX_FEE), FALLBACK_MAX_FEE.max(tip)),
    })
}

/// Everything about the transaction except its nonce, plus the signer's pending count: all the chain reads.
async fn prepare(
    chain: &Chain,
    signer: &SigningKey,
    call: &Call,
) -> Result<(Eip1559Tx, u64), Unsent> {
    // The chain id guards the signature too (EIP-155), but a wrong endpoint must not get this far.
    chain.check_chain_id().await.map_err(Unsent::Fault)?;
    let request = CallRequest::new(call.to, call.input.clone().into()).from(signer.address());
    let estimate = match chain.rpc.call(&EthEstimateGas { call: request }).await {
        Ok(g) => g,
        Err(CallError::Node { message, .. }) => return Err(Unsent::WouldRevert(message)),
        Err(e) => return Err(Unsent::Fault(unavailable(&e))),
    };
    let gas_limit = estimate.saturating_add(estimate / GAS_MARGIN_DIVISOR);
    if gas_limit > MAX_GAS_LIMIT {
        return Err(Unsent::Fault(wit::Error::Unavailable(format!(
            "{} gas estimate {estimate} is above the cap of {MAX_GAS_LIMIT}",
            call.what
        ))));
    }
    let (tip, max_fee) = fees(chain).await.map_err(Unsent::Fault)?;
    let count = chain
        .rpc
        .call(&EthGetTransactionCount::pending(signer.address()))
        .await
        .map_err(|e| Unsent::Fault(unavailable(&e)))?;
    let tx = Eip1559Tx {
        chain_id: chain.network.chain_id(),
        nonce: 0,
        max_priority_fee_per_gas: tip,
        max_fee_per_gas: max_fee,
        gas_limit,
        to: call.to,
        value: U256::ZERO,
        input: call.input.clone().into(),
    };
    Ok((tx, count))
}

/// Sign `call` with `signer` and broadcast it; `record` stores the signed transaction on the caller's claim
/// (and fails if the claim is no longer the caller's). Returns the hash once the transaction was sent or may
/// have been (the answer was lost): from then on only its receipt tells what happened.
///
/// Every chain read happens first; from reserving the account nonce to `record` nothing awaits, so a request
/// cancelled by the host (a client that went away) can never leave a reserved nonce without a transaction on
/// record. The only await between the reservation and the node is the send itself.
pub async fn send(
    chain: &Chain,
    signer: &SigningKey,
    call: &Call,
    record: impl FnOnce(&SignedTx) -> Result<(), wit::Error>,
) -> Result<B256, NotBroadcast> {
    let (mut tx, count) = prepare(chain, signer, call).await?;

    // ---- no await from here to the recorded hash ----
    tx.nonce = reserve_nonce(chain, signer, count).map_err(Unsent::Fault)?;
    let nonce = tx.nonce;
    let signed = match sign_eip1559(&tx, signer) {
        Ok(tx) => tx,
        Err(e) => {
            release_nonce(chain, signer, nonce);
            return Err(Unsent::Fault(wit::Error::Internal(format!("cannot sign: {e}"))).into());
        }
    };
    let hash = signed.hash;
    // Recorded before the broadcast: from here on a lost request leaves a hash to reconcile against, never a
    // transaction nobody knows about.
    if let Err(e) = record(&signed) {
        release_nonce(chain, signer, nonce);
        return Err(Unsent::Fault(e).into());
    }
    // ---- end of the await-free section ----

    match chain
        .rpc
        .call(&EthSendRawTransaction { raw: signed.raw })
        .await
    {
        Ok(_) => {}
        Err(CallError::Node { message, .. }) if already_known(&message) => {}
        Err(CallError::Node { code, message }) => {
            // The node refused it outright: nothing was broadcast, so everything can be given back.
            release_nonce(chain, signer, nonce);
            return Err(NotBroadcast {
                why: Unsent::Fault(wit::Error::Unavailable(format!(
                    "the node refused the {} transaction ({code}: {message})",
                    call.what
                ))),
                recorded: Some(hash),
            });
        }
        Err(CallError::Transport(m)) => {
            // Outcome unknown: the transaction may be out there. Keep every claim; poll like a sent one.
            eprintln!(
                "verifier: broadcast of {} {hash} ended without an answer ({m}); reconciling",
                call.what
            );
        }
    }
    Ok(hash)
}

/// Broadcast the settlement of `signed` for the holder of `claim`, then wait up to `timeout` for the receipt.
/// Whatever did not broadcast releases the claims.
pub async fn broadcast(
    chain: &Chain,
    signer: &SigningKey,
    signed: &SignedAuthorization,
    claim: &Claim,
    timeout: Duration,
) -> Result<Outcome, NotSent> {
    let call = Call {
        to: chain.network.usdc,
        input: transfer_with_authorization_calldata(&signed.authorization, &signed.signature),
        what: "settlement",
    };
    match send(chain, signer, &call, |tx| claim.record_submitted(tx)).await {
        Ok(hash) => Ok(wait(chain, claim, hash, Instant::now() + timeout).await.0),
        Err(not) => {
            let mut keys = claim.keys.clone();
            keys.extend(not.recorded.map(records::txhash_key));
            records::release(&claim.record_key, &claim.holder, &keys);
            Err(match not.why {
                Unsent::WouldRevert(_) => NotSent::Rejected(InvalidReason::SimulationFailed),
                Unsent::Fault(e) => NotSent::Fault(e),
            })
        }
    }
}

/// Poll for `hash` until `deadline` and record the result on the claim's record. The flag says whether this
/// call recorded it (the first to see a receipt), which the facilitator API needs: a success is reported once.
pub async fn wait(chain: &Chain, claim: &Claim, hash: B256, deadline: Instant) -> (Outcome, bool) {
    let outcome = match chain.wait_for(hash, deadline).await {
        Some(Mined::Succeeded) => Outcome::Confirmed(hash),
        Some(Mined::Reverted) => Outcome::Reverted(hash),
        None => return (Outcome::Pending(hash), true),
    };
    let r = records::advance(&claim.record_key, &claim.claim, None, |r| {
        r.updated_at = now_secs();
        match outcome {
            Outcome::Confirmed(_) => r.status = Status::Confirmed,
            _ => {
                r.status = Status::Failed;
                r.reason = Some(InvalidReason::TransactionFailed.as_str().to_owned());
            }
        }
    });
    match r {
        Ok((_, first)) => (outcome, first),
        Err(e) => {
            // The chain is the truth; a later call reads it again.
            eprintln!("verifier: cannot record the outcome of {hash}: {e:?}");
            (outcome, true)
        }
    }
}
