//! Sending a token call from one of our keys, once a claim is held, and waiting for the receipt (reference §5).
//! [`send`] is the one send path: settlements ([`broadcast`]: `transferWithAuthorization` from the
//! facilitator's key) and refunds (`crate::refund`: ERC-20 `transfer` from the treasury key) both use it.
//!
//! Order: the chain reads first (chain id, `eth_estimateGas` plus a margin, fees from the latest base fee and
//! `eth_maxPriorityFeePerGas`, the account's pending and mined transaction counts), then our recorded
//! transactions the node never got are offered to it again (`rebroadcast::fill_gaps`: a nonce lost to a
//! cancelled send would stall this one), then, without any await, reserve an account nonce (kernel
//! `NonceState` under `signer/…/nonce`, compare-and-swap, naming the record that will hold it), sign in the
//! component and let the caller record the hash and the signed bytes on its claim (`submitted`); then
//! `eth_sendRawTransaction`.
//!
//! Before the broadcast every failure gives the nonce back and tells the caller, which releases its claim, so
//! a retry can work. Once the transaction may have left (sent, or the send's outcome is unknown) nothing is
//! released: the claim keeps its hash, the answer is `pending`, and a later call reconciles against that hash
//! ([`reconcile`]) and never signs another transaction for it. If the node lost the transaction, the
//! reconciliation sends the identical bytes again; if its nonce was used by another transaction, it can
//! never be mined, and the settlement fails if (and only if) the authorization is still unused on chain.
//! The hash is computed locally, so a `submitted` record always carries one.

use std::time::{Duration, Instant};

use alloy_primitives::{Address, B256, U256};
use esim402_core::evm::rpc::{
    BlockTag, CallRequest, EthEstimateGas, EthGetBlockByNumber, EthGetTransactionCount,
    EthMaxPriorityFeePerGas, EthSendRawTransaction,
};
use esim402_core::evm::{Eip1559Tx, NonceState, SignedTx, SigningKey, sign_eip1559};
use esim402_core::x402::InvalidReason;
use esim402_core::x402::exact::{SignedAuthorization, transfer_with_authorization_calldata};
use esim402_guest::kv;

use crate::chain::{Chain, Mined, unavailable};
use crate::rebroadcast::{self, Look, SentTx};
use crate::records::{self, Record, Status, kv_err, signer_nonce_key};
use crate::rpc::{CallError, join_all};
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
    /// Never mined and never will be (another transaction used its account nonce), and the authorization is
    /// unused: no money moved.
    Dropped(B256),
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
    /// The key of the record that will hold the signed transaction (named in the nonce bookkeeping, so a
    /// later send can find it if it never reaches the node).
    pub owner: String,
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
    pub async fn take_over(
        key: &str,
        record: &Record,
        keys: Vec<String>,
        now: u64,
    ) -> Result<Option<Self>, wit::Error> {
        let holder = records::new_holder()?;
        if !records::take_over(key, &record.claim, &holder, now).await? {
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
    pub async fn release(&self) {
        records::release(&self.record_key, &self.holder, &self.keys).await;
    }

    /// Record `tx` on the settlement record (`submitted`) while we still hold it, and mark its hash as used.
    async fn record_submitted(&self, tx: &SignedTx) -> Result<(), wit::Error> {
        let (_, held) = records::advance(&self.record_key, &self.claim, Some(&self.holder), |r| {
            r.status = Status::Submitted;
            r.sent = SentTx::signed(tx);
            r.updated_at = now_secs();
        })
        .await?;
        if !held {
            return Err(wit::Error::Conflict(
                "already settled: the claim was taken over".into(),
            ));
        }
        // Our own settlement transactions can never be presented again as a tx-hash proof.
        if let Ok(Some(r)) = records::load(&self.record_key).await
            && let Err(e) = records::insert_if_absent(&records::txhash_key(tx.hash), &r).await
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
async fn release_nonce(chain: &Chain, signer: &SigningKey, nonce: u64) {
    let key = signer_nonce_key(&chain.network, signer.address());
    let r = kv::update_json::<NonceState, ()>(&key, |s| {
        let mut s = s.unwrap_or_default();
        s.release_on_failure(nonce);
        Ok(s)
    });
    if let Err(e) = r.await {
        eprintln!("verifier: cannot release account nonce {nonce}: {e}");
    }
}

/// Reserve the next account nonce for `signer`'s transaction held by the record `owner`, given the chain's
/// counts.
async fn reserve_nonce(
    chain: &Chain,
    signer: &SigningKey,
    counts: Counts,
    owner: &str,
) -> Result<u64, wit::Error> {
    let key = signer_nonce_key(&chain.network, signer.address());
    let (_, nonce) = kv::update_json_with::<NonceState, u64, wit::Error>(&key, |s| {
        let mut s = s.unwrap_or_default();
        if let Some(mined) = counts.mined {
            s.observe_mined(mined);
        }
        let n = s.reserve_for(counts.pending, owner, now_secs());
        Ok((s, n))
    })
    .await
    .map_err(kv_err)?;
    Ok(nonce)
}

/// The signer's transaction counts.
#[derive(Debug, Clone, Copy)]
struct Counts {
    /// Including the node's pool: the next nonce it expects.
    pending: u64,
    /// Mined (`latest`); only used to forget old bookkeeping, so a failed read is no reason not to send.
    mined: Option<u64>,
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

/// Everything about the transaction except its nonce, plus the signer's counts: all the chain reads.
async fn prepare(
    chain: &Chain,
    signer: &SigningKey,
    call: &Call,
) -> Result<(Eip1559Tx, Counts), Unsent> {
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
    let pending = EthGetTransactionCount::pending(signer.address());
    let mined = EthGetTransactionCount {
        address: signer.address(),
        block: BlockTag::Latest,
    };
    let mut reads = join_all(vec![chain.rpc.call(&pending), chain.rpc.call(&mined)])
        .await
        .into_iter();
    let counts = match (reads.next(), reads.next()) {
        (Some(pending), Some(mined)) => Counts {
            pending: pending.map_err(|e| Unsent::Fault(unavailable(&e)))?,
            mined: mined.ok(),
        },
        _ => {
            return Err(Unsent::Fault(wit::Error::Internal(
                "a chain read went missing".into(),
            )));
        }
    };
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
    Ok((tx, counts))
}

/// Sign `call` with `signer` and broadcast it; `record` stores the signed transaction on the caller's claim
/// (and fails if the claim is no longer the caller's). Returns the hash once the transaction was sent or may
/// have been (the answer was lost): from then on only its receipt tells what happened.
///
/// Every chain read happens first; then the account nonce is reserved, the transaction signed and recorded, and
/// only then broadcast. The host may cancel a request (a client that went away) at any store call:
/// - between the reservation and the record, the nonce is held but no transaction exists for it; the next send
///   of this key finds it orphaned and releases it (`rebroadcast::fill_gaps`, [`NonceState::orphans`]);
/// - between the record and the node, the transaction is recorded but was never sent; the next send offers it
///   to the node first (`rebroadcast::fill_gaps`).
pub async fn send(
    chain: &Chain,
    signer: &SigningKey,
    call: &Call,
    record: impl AsyncFnOnce(&SignedTx) -> Result<(), wit::Error>,
) -> Result<B256, NotBroadcast> {
    let (mut tx, counts) = prepare(chain, signer, call).await?;
    rebroadcast::fill_gaps(chain, signer.address(), counts.pending, now_secs()).await;

    tx.nonce = reserve_nonce(chain, signer, counts, &call.owner)
        .await
        .map_err(Unsent::Fault)?;
    let nonce = tx.nonce;
    let signed = match sign_eip1559(&tx, signer) {
        Ok(tx) => tx,
        Err(e) => {
            release_nonce(chain, signer, nonce).await;
            return Err(Unsent::Fault(wit::Error::Internal(format!("cannot sign: {e}"))).into());
        }
    };
    let hash = signed.hash;
    // Recorded before the broadcast: from here on a lost request leaves a hash to reconcile against, never a
    // transaction nobody knows about.
    if let Err(e) = record(&signed).await {
        release_nonce(chain, signer, nonce).await;
        return Err(Unsent::Fault(e).into());
    }

    match chain
        .rpc
        .call(&EthSendRawTransaction { raw: signed.raw })
        .await
    {
        Ok(_) => {}
        Err(CallError::Node { message, .. }) if already_known(&message) => {}
        Err(CallError::Node { code, message }) => {
            // The node refused it outright: nothing was broadcast, so everything can be given back.
            release_nonce(chain, signer, nonce).await;
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
        owner: claim.record_key.clone(),
    };
    match send(chain, signer, &call, async |tx: &SignedTx| {
        claim.record_submitted(tx).await
    })
    .await
    {
        Ok(hash) => Ok(wait(chain, claim, hash, Instant::now() + timeout).await.0),
        Err(not) => {
            let mut keys = claim.keys.clone();
            keys.extend(not.recorded.map(records::txhash_key));
            records::release(&claim.record_key, &claim.holder, &keys).await;
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
    finish(claim, hash, outcome).await
}

/// A later call for a `submitted` settlement (a replay): first make sure the transaction is still out there
/// ([`rebroadcast::look`]: sent again if the node lost it), then [`wait`]. A transaction that can never be
/// mined fails the settlement only if its authorization is unused as of the block that showed its nonce
/// used: then no money moved. If the authorization was used, another transaction executed it: the money
/// moved but not by the transaction on record, so the settlement stays pending for an operator.
pub async fn reconcile(
    chain: &Chain,
    claim: &Claim,
    hash: B256,
    deadline: Instant,
) -> (Outcome, bool) {
    if lost_for_good(chain, claim, hash).await {
        return finish(claim, hash, Outcome::Dropped(hash)).await;
    }
    wait(chain, claim, hash, deadline).await
}

/// Whether the claim's transaction `hash` can never be mined and moved no money.
async fn lost_for_good(chain: &Chain, claim: &Claim, hash: B256) -> bool {
    let record = match records::load(&claim.record_key).await {
        Ok(Some(r)) if r.claim == claim.claim && r.tx_hash() == Some(hash) => r,
        _ => return false,
    };
    // Records from before the signed bytes were kept cannot be sent again; they only wait.
    let Some(tx) = record.submitted_tx() else {
        return false;
    };
    let Look::Unmineable { at } = rebroadcast::look(chain, &tx, "settlement", now_secs()).await
    else {
        return false;
    };
    let Some((from, nonce)) = records::parse_nonce_key(&record.claim) else {
        eprintln!(
            "verifier: settlement {hash} can never be mined, but its record names no authorization; left pending"
        );
        return false;
    };
    match chain.authorization_used_at(from, nonce, at).await {
        Ok(false) => {
            eprintln!(
                "verifier: settlement {hash} can never be mined (nonce {} of {} was used by another transaction by block {at}) and the authorization is unused: failed, no money moved",
                tx.nonce, tx.signer
            );
            true
        }
        Ok(true) => {
            eprintln!(
                "verifier: OPERATOR: settlement {hash} can never be mined (nonce {} of {} was used by another transaction by block {at}), yet the authorization {nonce} of {from} was executed: the money moved by another transaction. Left pending; find that transaction and settle the record by hand",
                tx.nonce, tx.signer
            );
            false
        }
        Err(e) => {
            eprintln!(
                "verifier: settlement {hash} can never be mined, but authorizationState is unreadable ({e}); left pending"
            );
            false
        }
    }
}

/// Record `outcome` (not pending) on the claim's record; the flag says whether this call recorded it.
async fn finish(claim: &Claim, hash: B256, outcome: Outcome) -> (Outcome, bool) {
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
    match r.await {
        // Someone else recorded the receipt first: never report a drop over it.
        Ok((r, false)) if matches!(outcome, Outcome::Dropped(_)) => match r.status {
            Status::Confirmed => (Outcome::Confirmed(hash), false),
            Status::Failed => (outcome, false),
            _ => (Outcome::Pending(hash), false),
        },
        Ok((_, first)) => (outcome, first),
        Err(e) => {
            // The chain is the truth; a later call reads it again.
            eprintln!("verifier: cannot record the outcome of {hash}: {e:?}");
            (outcome, true)
        }
    }
}
