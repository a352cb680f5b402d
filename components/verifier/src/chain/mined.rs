//! Receipts of our transactions: read once ([`Chain::receipt_and_head`]) or polled until a deadline
//! ([`Chain::wait_for`]).
//!
//! A transaction of ours may have been replaced with higher fees (kernel `evm::bump`): its record keeps every
//! hash of the nonce, and any one of them may be the one mined. So both take all of them, ask for their
//! receipts in one batch, and say which was mined; at most one can be (they share a nonce).

use std::time::{Duration, Instant};

use alloy_primitives::B256;
use esim402_core::evm::TransactionReceipt;
use esim402_core::evm::rpc::{EthBlockNumber, EthGetTransactionReceipt};

use super::Chain;
use crate::rpc::{Batch, CALL_TIMEOUT, CallError};

/// How soon a settlement asks again for a receipt that was not there yet: nodes often answer the broadcast
/// before the transaction's block is visible (anvil's automine does, by a few milliseconds), so the first
/// retry is quick; the interval then doubles up to [`POLL_INTERVAL`]. From 5 ms rather than 25 ms: the paid
/// request's p90 and p99 fall by 10–30 ms on anvil (BENCHMARKS.md), for about three more receipt calls in a
/// slow chain's first two seconds.
const FIRST_POLL_INTERVAL: Duration = Duration::from_millis(5);
/// How often a settlement asks for its receipt once it is waiting for a block.
const POLL_INTERVAL: Duration = Duration::from_millis(250);

/// A mined transaction, as far as settlement cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mined {
    /// Status 1, buried deeply enough.
    Succeeded,
    /// Status 0, in this block.
    Reverted {
        /// The receipt's block.
        block: u64,
    },
    /// Status 1, but the receipt does not show what the transaction was for (see [`Chain::wait_for`]).
    Unproven,
}

/// What one read of a transaction's receipts found: the receipt of one of them, or none (an error when no
/// receipt was found and a read failed), and the head block if asked for.
type Read = (
    Result<Option<TransactionReceipt>, CallError>,
    Option<Result<u64, CallError>>,
);

impl Chain {
    /// The receipt of `hash`, if mined, and with `with_head` the chain's head block number, in one batch. The
    /// node may answer the head from before the receipt's block: a receipt then counts fewer confirmations
    /// than it has, never more.
    pub async fn receipt_and_head(&self, hash: B256, with_head: bool, timeout: Duration) -> Read {
        self.receipts_and_head(&[hash], with_head, timeout).await
    }

    /// [`Chain::receipt_and_head`] for the first of `hashes` (one nonce's transactions) that has a receipt.
    pub async fn receipts_and_head(
        &self,
        hashes: &[B256],
        with_head: bool,
        timeout: Duration,
    ) -> Read {
        let reads: Vec<_> = hashes
            .iter()
            .map(|&hash| EthGetTransactionReceipt { hash })
            .collect();
        let mut batch = Batch::new();
        let slots: Vec<_> = reads.iter().map(|r| batch.add(r)).collect();
        let head_slot = with_head.then(|| batch.add(&EthBlockNumber));
        let mut answers = self.rpc.batch_within(batch, timeout).await;
        let head = head_slot.map(|slot| answers.take(slot, &EthBlockNumber));
        let mut found = Ok(None);
        for (slot, read) in slots.into_iter().zip(&reads) {
            match answers.take(slot, read) {
                Ok(Some(receipt)) => return (Ok(Some(receipt)), head),
                Ok(None) => {}
                Err(e) => found = Err(e),
            }
        }
        (found, head)
    }

    /// Poll for a receipt of any of `hashes` (one nonce's transactions, the latest first) until `deadline` (at
    /// least once): the mined one and how, or `None` if none is mined (or buried under the network's
    /// confirmations, whatever its outcome) by then. RPC failures while polling only mean "not yet". A receipt
    /// with status 1 that `shows` refuses is [`Mined::Unproven`].
    pub async fn wait_for(
        &self,
        hashes: &[B256],
        deadline: Instant,
        shows: impl Fn(&TransactionReceipt) -> bool,
    ) -> Option<(B256, Mined)> {
        let need = u64::from(self.network.confirmations);
        let mut interval = FIRST_POLL_INTERVAL;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let timeout = left.clamp(Duration::from_millis(500), CALL_TIMEOUT);
            let (receipt, head) = self.receipts_and_head(hashes, need > 1, timeout).await;
            if let Ok(Some(receipt)) = receipt {
                // Any outcome counts only once buried: a revert at depth 0 can be reorganised into a success
                // (after which a refund, say, owed again would be paid twice).
                let buried = need <= 1
                    || matches!(head, Some(Ok(head)) if receipt.confirmations(head) >= need);
                if buried {
                    let mined = if !receipt.status {
                        Mined::Reverted {
                            block: receipt.block_number,
                        }
                    } else if !shows(&receipt) {
                        Mined::Unproven
                    } else {
                        Mined::Succeeded
                    };
                    return Some((receipt.transaction_hash, mined));
                }
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return None;
            }
            spin_sdk::time::sleep(left.min(interval)).await;
            interval = (interval * 2).min(POLL_INTERVAL);
        }
    }
}
