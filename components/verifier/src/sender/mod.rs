//! Sending a token call from one of our keys, once a claim is held (reference §5). [`send`] is the one send
//! path: settlements ([`receipts::broadcast`]: `transferWithAuthorization` from the facilitator's key) and
//! refunds (`crate::refunds`: ERC-20 `transfer` from the treasury key) both use it.
//!
//! Order: the chain reads first, in one JSON-RPC batch (chain id once per instance, then `eth_estimateGas`
//! plus a margin, fees from the latest base fee and `eth_maxPriorityFeePerGas` kept within the replacement
//! ceiling (the base fee unreadable, or the next block's above the ceiling: no send), the account's pending and
//! mined transaction counts); then our recorded transactions the node never got are offered to it again and
//! orphaned reservations released ([`rebroadcast::fill_gaps`]), and the one at the key's lowest unmined nonce
//! replaced with higher fees if the base fee outgrew it ([`bump::blocking`]); then an account nonce is reserved
//! ([`nonces`], kernel `NonceState`), the transaction signed in the component and recorded on the caller's
//! claim (a settlement claims the transaction's `txhash/` key first: [`receipts`]); then
//! `eth_sendRawTransaction`.
//!
//! Before the broadcast every failure gives the nonce back and tells the caller, which releases its claim, so
//! a retry can work; if later nonces of the key are already out, the nonce is filled with a no-op transaction
//! instead ([`give_back`]; after the caller's release, [`NotBroadcast::fill_hole`], if the transaction was on
//! its record), so their transactions do not wait behind a hole until some later send. Once the
//! signed transaction is on the caller's record, the nonce goes to no other transaction before that record
//! is released: the next send releases it if the record by then names no transaction at it
//! ([`give_back_recorded`]). Once the transaction may have left (sent, or the send's outcome is unknown)
//! nothing is released: the claim keeps its hash, the answer is `pending`, and a later call reconciles against
//! that hash and never signs another transaction for it. The host may cancel a request at any store call:
//! - between the reservation and the record, the nonce is held but no transaction exists for it; the next
//!   send of this key finds it orphaned and releases it (`NonceState::orphans`). A settlement's `txhash/` claim
//!   made in this window names a transaction that never leaves (its bytes were never stored): harmless;
//! - between the record and the node, the transaction is recorded (a settlement's with its `txhash/` claim
//!   already made) but was never sent; the next send offers it to the node first.
//!
//! A recorded transaction that waits in the pool below the base fee is replaced with higher fees (same nonce
//! and call, recorded before it is sent, every earlier hash kept) by the replays that reconcile it, and by the
//! next send of its key once it holds the key's lowest unmined nonce ([`bump`]).

pub mod bump;
pub mod front_run;
mod heal;
pub mod nonces;
pub mod rebroadcast;
pub mod receipts;
mod unexecuted;

use alloy_primitives::{Address, B256, U256};
use esim402_core::evm::rpc::{
    self, BlockSummary, BlockTag, CallRequest, EthEstimateGas, EthGetBlockByNumber,
    EthGetTransactionCount, EthMaxPriorityFeePerGas, EthSendRawTransaction, NoFees, SendRefusal,
    send_refusal,
};
use esim402_core::evm::{Eip1559Tx, GiveBack, SignedTx, SigningKey, sign_eip1559};
use esim402_guest::{util, wit};

use crate::chain::{Chain, unavailable};
use crate::rpc::{Batch, CallError};

pub use heal::heal_gaps;

/// Headroom over `eth_estimateGas` (25 %): state can change between estimate and inclusion.
const GAS_MARGIN_DIVISOR: u64 = 4;
/// No transaction of ours may burn more gas than this (`transferWithAuthorization` needs ~60–100k, an ERC-20
/// `transfer` ~35–65k).
const MAX_GAS_LIMIT: u64 = 500_000;
/// Gas of the no-op transaction that fills a nonce given back below later ones (a plain transfer).
const PLUG_GAS: u64 = 21_000;

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
    /// The node's gas estimate reverted (kernel `rpc::is_revert`): the call would revert. Carries the node's
    /// message. Any other node error is a [`Unsent::Fault`].
    WouldRevert(String),
    /// Anything else.
    Fault(wit::Error),
}

/// A [`send`] that certainly broadcast nothing. The account nonce is already given back (one whose transaction
/// was `recorded` is left for the next send to release once the caller's record names it no more:
/// [`give_back_recorded`]); the caller's claim is not: the caller releases it, then calls
/// [`NotBroadcast::fill_hole`].
pub struct NotBroadcast {
    /// Why.
    pub why: Unsent,
    /// The hash the caller recorded on its claim before the send was refused, if it got that far.
    pub recorded: Option<B256>,
    /// A nonce whose transaction was on the caller's record, held below later nonces of the key: for the
    /// no-op, once that record is released ([`give_back_recorded`]).
    hole: Option<Eip1559Tx>,
}

impl From<Unsent> for NotBroadcast {
    fn from(why: Unsent) -> Self {
        Self {
            why,
            recorded: None,
            hole: None,
        }
    }
}

impl NotBroadcast {
    /// Once the caller released its record (or tried to): fill the nonce its transaction held below later
    /// nonces of the key with the key's no-op, if there is such a hole ([`give_back_recorded`]). Slow (a
    /// broadcast), which is why it waits for the release.
    pub async fn fill_hole(&self, chain: &Chain, signer: &SigningKey) {
        if let Some(tx) = &self.hole {
            plug(chain, signer, tx, false).await;
        }
    }
}

/// The signer's transaction counts.
#[derive(Debug, Clone, Copy)]
pub struct Counts {
    /// Including the node's pool: the next nonce it expects.
    pub pending: u64,
    /// Mined (`latest`); only used to forget old bookkeeping, so a failed read is no reason not to send.
    pub mined: Option<u64>,
    /// The head block the gas estimate ran at (`latest`), if the node said.
    pub head: Option<u64>,
}

/// `(tip, fee cap)` in wei, from the latest block's base fee and the node's suggested tip (kernel
/// `rpc::fees`, which keeps both within the replacement ceiling): a transport failure, a block that could not
/// be read (its base fee unknown) or a base fee at the ceiling is a fault; a node error on the tip only means
/// the node suggests none.
fn fees(
    block: Result<Option<BlockSummary>, CallError>,
    tip: Result<u128, CallError>,
) -> Result<(u128, u128), wit::Error> {
    let block = match block {
        Ok(b) => b,
        Err(e) if e.is_node() => {
            return Err(wit::Error::Unavailable(format!(
                "the latest block's base fee is unreadable ({e})"
            )));
        }
        Err(e) => return Err(unavailable(&e)),
    };
    let tip = match tip {
        Ok(t) => Some(t),
        Err(e) if e.is_node() => None,
        Err(e) => return Err(unavailable(&e)),
    };
    rpc::fees(block.as_ref(), tip).map_err(|e| match e {
        NoFees::NoBlock => {
            wit::Error::Unavailable("the node has no latest block to read the base fee of".into())
        }
        NoFees::AboveCeiling { .. } => {
            wit::Error::Unavailable(format!("fees above the ceiling: {e}"))
        }
    })
}

/// Everything about the transaction except its nonce, plus the signer's counts: all the chain reads, in one
/// batch (one round trip to the node, not five).
async fn prepare(
    chain: &Chain,
    signer: &SigningKey,
    call: &Call,
) -> Result<(Eip1559Tx, Counts), Unsent> {
    // The chain id guards the signature too (EIP-155), but a wrong endpoint must not get this far.
    chain.check_chain_id().await.map_err(Unsent::Fault)?;
    let estimate = EthEstimateGas {
        call: CallRequest::new(call.to, call.input.clone().into()).from(signer.address()),
    };
    let block = EthGetBlockByNumber::latest();
    let pending = EthGetTransactionCount::pending(signer.address());
    let mined = EthGetTransactionCount {
        address: signer.address(),
        block: BlockTag::Latest,
    };
    let mut batch = Batch::new();
    let slots = (
        batch.add(&estimate),
        batch.add(&block),
        batch.add(&EthMaxPriorityFeePerGas),
        batch.add(&pending),
        batch.add(&mined),
    );
    let mut answers = chain.rpc.batch(batch).await;
    let estimate = match answers.take(slots.0, &estimate) {
        Ok(g) => g,
        // Only a revert is a verdict on the payment; a rate limit or an internal error of the node is not.
        Err(CallError::Node { code, message }) if rpc::is_revert(code, &message) => {
            return Err(Unsent::WouldRevert(message));
        }
        Err(e) => return Err(Unsent::Fault(unavailable(&e))),
    };
    let gas_limit = estimate.saturating_add(estimate / GAS_MARGIN_DIVISOR);
    if gas_limit > MAX_GAS_LIMIT {
        return Err(Unsent::Fault(wit::Error::Unavailable(format!(
            "{} gas estimate {estimate} is above the cap of {MAX_GAS_LIMIT}",
            call.what
        ))));
    }
    let block = answers.take(slots.1, &block);
    let head = block
        .as_ref()
        .ok()
        .and_then(|b| b.as_ref())
        .map(|b| b.number);
    let (tip, max_fee) =
        fees(block, answers.take(slots.2, &EthMaxPriorityFeePerGas)).map_err(Unsent::Fault)?;
    let counts = Counts {
        pending: answers
            .take(slots.3, &pending)
            .map_err(|e| Unsent::Fault(unavailable(&e)))?,
        mined: answers.take(slots.4, &mined).ok(),
        head,
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
pub async fn send(
    chain: &Chain,
    signer: &SigningKey,
    call: &Call,
    record: impl AsyncFnOnce(&SignedTx, Option<u64>) -> Result<(), wit::Error>,
) -> Result<B256, NotBroadcast> {
    let (mut tx, counts) = prepare(chain, signer, call).await?;
    let now = util::now_secs();
    let state = rebroadcast::fill_gaps(chain, signer.address(), counts.pending, now).await;
    if let (Some(state), Some(mined)) = (state, counts.mined) {
        bump::blocking(chain, signer, &state, mined, now).await;
    }
    let (nonce, holder) = nonces::reserve(chain, signer, counts, &call.owner)
        .await
        .map_err(Unsent::Fault)?;
    tx.nonce = nonce;
    let held = (call.owner.as_str(), holder.as_str());
    let signed = match sign_eip1559(&tx, signer) {
        Ok(tx) => tx,
        Err(e) => {
            give_back(chain, signer, &tx, held).await;
            return Err(Unsent::Fault(wit::Error::Internal(format!("cannot sign: {e}"))).into());
        }
    };
    let hash = signed.hash;
    // Recorded before the broadcast: from here on a lost request leaves a hash to reconcile against, never a
    // transaction nobody knows about.
    if let Err(e) = record(&signed, counts.head).await {
        // The record may hold the transaction already (a later write failed): see [`give_back_recorded`].
        let hole = give_back_recorded(chain, signer, &tx, held).await;
        return Err(NotBroadcast {
            why: Unsent::Fault(e),
            recorded: None,
            hole,
        });
    }
    match chain
        .rpc
        .call(&EthSendRawTransaction { raw: signed.raw })
        .await
    {
        Ok(_) => {}
        Err(CallError::Node { code, message }) => match send_refusal(code, &message) {
            SendRefusal::Known => {}
            SendRefusal::Refused => {
                // The node refused it, naming why: nothing was broadcast, so everything can be given back, the
                // nonce once the caller's record no longer names the transaction ([`give_back_recorded`]).
                let hole = give_back_recorded(chain, signer, &tx, held).await;
                return Err(NotBroadcast {
                    why: Unsent::Fault(wit::Error::Unavailable(format!(
                        "the node refused the {} transaction ({code}: {message})",
                        call.what
                    ))),
                    recorded: Some(hash),
                    hole,
                });
            }
            SendRefusal::Unknown => {
                // An error that names no refusal (a provider may have forwarded the transaction before
                // failing): kept like a lost answer.
                eprintln!(
                    "verifier: broadcast of {} {hash} answered {code}: {message}; outcome unknown, reconciling",
                    call.what
                );
            }
        },
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

/// Hand back `tx`'s nonce (`held`: reserved for the record `owner` by the reservation `holder`) after a
/// failure before broadcast, never leaving a hole: if later nonces of this key are out (their transactions
/// may wait in the node's pool behind this one, and nothing else would fill it until the next send), the
/// key's no-op transaction (nothing, to itself, 21 000 gas, `tx`'s fees) takes the nonce instead. If the node refuses that too, the nonce is given back for
/// the next send to reuse; if its fate is unknown, it stays held (a reservation whose owner's record names no
/// transaction for it is released by a later send after `rebroadcast::ORPHAN_AFTER_SECS`).
async fn give_back(chain: &Chain, signer: &SigningKey, tx: &Eip1559Tx, held: (&str, &str)) {
    let (owner, holder) = held;
    if nonces::give_back(chain, signer, tx.nonce, owner, holder, false).await == GiveBack::Plug {
        plug(chain, signer, tx, true).await;
    }
}

/// [`give_back`] once `tx` may be on `owner`'s record (recorded, then refused, or a later write of the record
/// failed). The caller releases that record after this returns, and its release may fail; until it is gone a
/// recorded transaction may be sent again, so its nonce must not go to another (kernel
/// `NonceState::give_back_recorded`): it stays held, an orphan at once, and the next send of this key releases
/// it if the record names no transaction at it by then (`rebroadcast::fill_gaps`). Below later nonces it is to
/// be filled with the no-op (which moves nothing, whatever the record says; a refused no-op leaves it held):
/// returned as the hole, which the caller fills only after its release ([`NotBroadcast::fill_hole`]). Not
/// before: while the record names the transaction, a concurrent send's `fill_gaps` may offer its bytes to the
/// node once they are `RESEND_AFTER_SECS` old, and a release that waited behind a slow no-op broadcast would
/// then clear the record of a transaction that went out (a refund owed again and paid twice).
async fn give_back_recorded(
    chain: &Chain,
    signer: &SigningKey,
    tx: &Eip1559Tx,
    held: (&str, &str),
) -> Option<Eip1559Tx> {
    let (owner, holder) = held;
    let g = nonces::give_back(chain, signer, tx.nonce, owner, holder, true).await;
    (g == GiveBack::Plug).then(|| tx.clone())
}

/// Fill `tx`'s nonce, held, with the key's no-op transaction; if that is certainly not broadcast either, give
/// the nonce back when `release` (else it stays held, for a later send's orphan check).
async fn plug(chain: &Chain, signer: &SigningKey, tx: &Eip1559Tx, release: bool) {
    let nonce = tx.nonce;
    let plug = Eip1559Tx {
        to: signer.address(),
        value: U256::ZERO,
        input: Default::default(),
        gas_limit: PLUG_GAS,
        ..tx.clone()
    };
    let signed = match sign_eip1559(&plug, signer) {
        Ok(signed) => signed,
        Err(e) => {
            eprintln!("verifier: cannot sign a no-op at nonce {nonce} ({e})");
            if release {
                nonces::release(chain, signer, nonce).await;
            }
            return;
        }
    };
    let hash = signed.hash;
    match chain
        .rpc
        .call(&EthSendRawTransaction { raw: signed.raw })
        .await
    {
        Ok(_) => eprintln!("verifier: nonce {nonce} filled with the no-op {hash}"),
        Err(CallError::Node { code, message }) => match send_refusal(code, &message) {
            SendRefusal::Known => {}
            SendRefusal::Refused => {
                eprintln!("verifier: no-op at nonce {nonce} refused ({code}: {message})");
                if release {
                    nonces::release(chain, signer, nonce).await;
                }
            }
            SendRefusal::Unknown => eprintln!(
                "verifier: no-op {hash} at nonce {nonce} answered {code}: {message}; outcome unknown, kept"
            ),
        },
        Err(CallError::Transport(m)) => {
            eprintln!(
                "verifier: no-op {hash} at nonce {nonce} ended without an answer ({m}); kept"
            );
        }
    }
}
