//! Filling a nonce gap when no send comes to fill it (see `rebroadcast`): a request cancelled between
//! reserving a nonce and recording its transaction leaves a hole that a later transaction of the key waits
//! behind in the node's pool. [`rebroadcast::fill_gaps`] releases such an orphan, but only in a send, and a
//! released nonce is only filled by the next reservation: a payment whose transaction waits behind the hole
//! and is only sent again (reconciled, never re-signed) would wait until some other payment sends, and its
//! authorization may expire meanwhile. The same holds for a refund followed up by a run (the treasury key). So
//! the replays of a `submitted` settlement, and a refund run's follow-ups (`crate::refunds`, once per network
//! and run), call [`heal_gaps`] first: an orphan older than `ORPHAN_AFTER_SECS` below a later nonce of the key
//! is filled with the key's no-op transaction (kernel `NonceState::heal_orphan`), the newest is released.

use alloy_primitives::U256;
use esim402_core::evm::rpc::{
    EthGetBlockByNumber, EthGetTransactionCount, EthMaxPriorityFeePerGas,
};
use esim402_core::evm::{Eip1559Tx, GiveBack, NonceState, SigningKey};
use esim402_guest::{kv, wit};

use super::rebroadcast::{self, ORPHAN_AFTER_SECS};
use super::{fees, nonces, plug};
use crate::chain::Chain;
use crate::rpc::Batch;

/// At most this many of the oldest reservations are looked at per call (one store read each): the old ones
/// whose transactions are recorded (still in the node's pool, below its pending count) are skipped on the way.
const MAX_LOOKED_AT: usize = 32;

/// At most this many orphans are filled per call.
const MAX_FILLED: usize = 8;

/// Fill the orphaned nonces of `signer` at or above the node's pending count (see the module docs). Best
/// effort: nothing is read from the chain unless the store shows an orphan, and a failure only leaves the
/// gap for the next call or send.
pub async fn heal_gaps(chain: &Chain, signer: &SigningKey, now: u64) {
    let address = signer.address();
    let state = match kv::get_json::<NonceState, ()>(&nonces::key(chain, address)).await {
        Ok(Some(s)) => s,
        Ok(None) => return,
        Err(e) => {
            eprintln!("verifier: cannot read the nonces of {address}: {e}");
            return;
        }
    };
    let mut orphans = Vec::new();
    for (nonce, owner) in state
        .orphans(0, now, ORPHAN_AFTER_SECS)
        .into_iter()
        .take(MAX_LOOKED_AT)
    {
        if orphans.len() == MAX_FILLED {
            break;
        }
        if !rebroadcast::names(&owner, address, nonce).await {
            orphans.push((nonce, owner));
        }
    }
    if orphans.is_empty() {
        return;
    }
    let (template, pending) = match no_op_template(chain, signer).await {
        Ok(t) => t,
        Err(e) => {
            eprintln!("verifier: cannot fill the nonce gaps of {address}: {e:?}");
            return;
        }
    };
    for (nonce, owner) in orphans.into_iter().filter(|(n, _)| *n >= pending) {
        let reserved_at = state.reserved_at.get(&nonce).copied();
        let healed = nonces::heal_orphan(chain, address, nonce, &owner, reserved_at, now).await;
        eprintln!(
            "verifier: nonce {nonce} of {address} was reserved for {owner} but no transaction was ever recorded for it (a cancelled request): {healed:?}"
        );
        if healed == GiveBack::Plug {
            plug(
                chain,
                signer,
                &Eip1559Tx {
                    nonce,
                    ..template.clone()
                },
                true,
            )
            .await;
        }
    }
}

/// The fees of a no-op transaction of `signer` (its nonce to be set) and the key's pending count, in one batch.
async fn no_op_template(
    chain: &Chain,
    signer: &SigningKey,
) -> Result<(Eip1559Tx, u64), wit::Error> {
    chain.check_chain_id().await?;
    let block = EthGetBlockByNumber::latest();
    let pending = EthGetTransactionCount::pending(signer.address());
    let mut batch = Batch::new();
    let slots = (
        batch.add(&block),
        batch.add(&EthMaxPriorityFeePerGas),
        batch.add(&pending),
    );
    let mut answers = chain.rpc.batch(batch).await;
    let (tip, max_fee) = fees(
        answers.take(slots.0, &block),
        answers.take(slots.1, &EthMaxPriorityFeePerGas),
    )?;
    let pending = answers
        .take(slots.2, &pending)
        .map_err(|e| crate::chain::unavailable(&e))?;
    let tx = Eip1559Tx {
        chain_id: chain.network.chain_id(),
        nonce: 0,
        max_priority_fee_per_gas: tip,
        max_fee_per_gas: max_fee,
        gas_limit: 0,
        to: signer.address(),
        value: U256::ZERO,
        input: Default::default(),
    };
    Ok((tx, pending))
}
