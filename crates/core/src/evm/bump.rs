//! Replacing (fee-bumping) a transaction of ours that the base fee outgrew: whether to, and with what fees.
//!
//! Every transaction we sign caps its fee when it is signed (twice the base fee plus the tip, `rpc::fees`). If
//! the base fee then rises past that cap, the transaction waits in the node's pool, and every later transaction
//! of the same key waits behind it. The caller (a replay or refund run reconciling a recorded transaction
//! without receipt, or a send of the key for the transaction at its lowest unmined nonce, [`blocking`]) asks
//! [`decide`]; on [`Bump::Replace`] it signs the same transaction again with the new fees
//! ([`replacement`]) and sends it. Rules a reader must not break:
//!
//! - **Same transaction, new fees.** A replacement keeps the nonce, signer, chain, recipient, value, calldata
//!   and gas limit; only the fees change (so the signature and the hash do). At most one transaction per nonce
//!   is ever mined, and whichever is carries the same call: every hash of the nonce is ours and final.
//! - **Recorded before sent.** The replacement goes on the record (its hash and bytes, with every earlier hash
//!   of the nonce kept: `settlement::SentTx::replaced`) with a compare-and-swap on the hash it replaces before
//!   it is sent, like any transaction of ours. Any of the hashes may be the one mined: every reader of a
//!   receipt for the record accepts any of them.
//! - **Only a transaction that needs it.** Unmined for at least [`BUMP_AFTER_SECS`] since its hash was
//!   recorded, its nonce still free, and its fee cap below what the next block may charge (the latest base fee
//!   × 1.125, rounded up: EIP-1559 lets the base fee grow by at most 1/8 per block). Unmined means waiting in
//!   the node's pool, or dropped from it: a node may evict a transaction the base fee outgrew and refuse its
//!   bytes when they are sent again (anvil does: "max fee per gas less than block base fee"), so re-sending
//!   the identical bytes, as for a transaction the node merely lost, cannot help.
//! - **Accepted by the pool.** geth, reth and anvil replace a pooled transaction only if both its fee cap and
//!   its tip rise by at least 10 % ([`REPLACEMENT_PERCENT`]; geth `txpool.pricebump`) and strictly: each new fee
//!   is at least 110 % of the old, rounded up, and more than the old; and at least what a new transaction
//!   would be given now (`rpc::fees`: its tip and its cap of twice the base fee plus the tip).
//! - **One look per send.** A send of the key ([`blocking`]) looks at one transaction only: the one at the
//!   key's lowest unmined nonce, which every later one waits behind, and reads nothing more for it unless its
//!   nonce was reserved at least [`BUMP_AFTER_SECS`] ago (its transaction is recorded after the reservation,
//!   so a younger one cannot be due).
//! - **Bounded.** No fee cap above [`MAX_FEE_PER_GAS`] and no more than [`MAX_REPLACEMENTS`] replacements per
//!   nonce, so a runaway base fee cannot drain the key: at either bound [`decide`] answers [`Bump::Ceiling`] or
//!   [`Bump::Exhausted`] and nothing is replaced any more; the transaction then waits in the pool as it did
//!   before this rule (until fees fall, or an operator acts), and the caller says so in its log.

use super::nonce::NonceState;
use super::tx::Eip1559Tx;
use crate::chain::ChainId;

/// How long a transaction must have been recorded (and, the node says, waiting in its pool) before it is
/// replaced: a few blocks on every chain we serve, and longer than one settlement's own wait for its receipt.
pub const BUMP_AFTER_SECS: u64 = 60;

/// The least rise of each fee a node's pool accepts for a replacement, in percent of the old fee.
pub const REPLACEMENT_PERCENT: u128 = 110;

/// The highest fee cap per gas a replacement may have: 500 gwei. At our gas limit's cap (500 000) that is at
/// most 0.25 of the chain's coin per transaction, and far above any base fee our networks have seen outside a
/// spike that would stop every payment anyway.
pub const MAX_FEE_PER_GAS: u128 = 500_000_000_000;

/// The most replacements of one nonce: each costs at least 10 % more, and the ceiling bounds them anyway; this
/// bounds the records' lists of earlier hashes and the receipt reads that follow them.
pub const MAX_REPLACEMENTS: usize = 8;

/// Per-gas fees of an EIP-1559 transaction, in wei.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fees {
    /// `maxPriorityFeePerGas`.
    pub tip: u128,
    /// `maxFeePerGas`.
    pub max_fee: u128,
}

/// What to do about a pooled transaction of ours ([`decide`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Bump {
    /// Leave it: recorded too recently, or its fee cap covers the next block's base fee (or the chain shows no
    /// base fee).
    Wait,
    /// Replace it with these fees.
    Replace(Fees),
    /// It needs a fee cap above [`MAX_FEE_PER_GAS`]: left as it is.
    Ceiling {
        /// The fee cap a replacement would have needed.
        needed: u128,
    },
    /// It was replaced [`MAX_REPLACEMENTS`] times already: left as it is.
    Exhausted,
}

/// `ceil(fee × 110 / 100)`, and at least one more than `fee` (saturating).
pub fn min_replacement_fee(fee: u128) -> u128 {
    // Past `u128::MAX / 110` the product saturates; the old fee plus one still bounds it from below.
    fee.saturating_mul(REPLACEMENT_PERCENT)
        .div_ceil(100)
        .max(fee.saturating_add(1))
}

/// The most the next block's base fee can be after a block with `base_fee`: × 1.125, rounded up.
pub fn next_base_fee(base_fee: u128) -> u128 {
    base_fee.saturating_add(base_fee.div_ceil(8))
}

/// Whether a transaction recorded at `recorded_at` has waited long enough to be replaced at `now`
/// ([`BUMP_AFTER_SECS`]): callers ask this before reading anything from the chain.
pub fn due(recorded_at: u64, now: u64) -> bool {
    recorded_at.saturating_add(BUMP_AFTER_SECS) <= now
}

/// The record (its key) holding the reservation of `state`'s key at its lowest unmined nonce `mined_count`
/// (`eth_getTransactionCount(latest)`), if that nonce was handed out at least [`BUMP_AFTER_SECS`] before `now`
/// (a reservation without a time counts as old): the one transaction a send of the key looks at for a
/// replacement. A younger reservation's transaction, recorded after it, cannot be [`due`]: nothing to read.
pub fn blocking(state: &NonceState, mined_count: u64, now: u64) -> Option<&str> {
    let owner = state.owners.get(&mined_count)?;
    let reserved_at = state.reserved_at.get(&mined_count).copied().unwrap_or(0);
    due(reserved_at, now).then_some(owner.as_str())
}

/// What to do about our transaction with fees `pooled`, recorded at `recorded_at`, unmined at `now` (in the
/// node's pool, or dropped from it with its nonce still free), after `replaced` earlier replacements of its nonce, when the latest block's base
/// fee is `base_fee` (`None`: the chain shows none) and a new transaction would get `current` (`rpc::fees`).
/// See the module docs for the rules.
pub fn decide(
    pooled: Fees,
    recorded_at: u64,
    now: u64,
    replaced: usize,
    base_fee: Option<u128>,
    current: Fees,
) -> Bump {
    let Some(base_fee) = base_fee else {
        return Bump::Wait;
    };
    if !due(recorded_at, now) || pooled.max_fee >= next_base_fee(base_fee) {
        return Bump::Wait;
    }
    raise(pooled, replaced, current)
}

/// What to do about our latest replacement with fees `latest`, unknown to the node while an earlier hash of
/// its nonce waits in its pool, whose bytes the node refused for their fees (`rpc::outbid_unreached`; after
/// `replaced` replacements; a new transaction would get `current`): another replacement rising at least 10 %
/// over it (not over the pooled one, which it already outbid), whether or not its fee cap covers the base fee,
/// within the bounds.
pub fn decide_unreached(latest: Fees, replaced: usize, current: Fees) -> Bump {
    raise(latest, replaced, current)
}

/// A replacement of a transaction with fees `pooled` after `replaced` replacements, within the bounds.
fn raise(pooled: Fees, replaced: usize, current: Fees) -> Bump {
    if replaced >= MAX_REPLACEMENTS {
        return Bump::Exhausted;
    }
    let max_fee = min_replacement_fee(pooled.max_fee).max(current.max_fee);
    // A tip above the cap is invalid; the current answer keeps tip ≤ cap, and so does 110 % of a valid pair.
    let tip = min_replacement_fee(pooled.tip)
        .max(current.tip)
        .min(max_fee);
    if max_fee > MAX_FEE_PER_GAS {
        return Bump::Ceiling { needed: max_fee };
    }
    Bump::Replace(Fees { tip, max_fee })
}

/// `tx` with `fees`: the transaction a replacement signs (see the module docs: nothing else changes).
pub fn replacement(tx: &Eip1559Tx, fees: Fees) -> Eip1559Tx {
    Eip1559Tx {
        max_priority_fee_per_gas: fees.tip,
        max_fee_per_gas: fees.max_fee,
        ..tx.clone()
    }
}

/// The unsigned transaction inside the signed EIP-1559 bytes `raw` (ours: contract calls with an empty access
/// list), to sign again with other fees; `None` for anything else.
pub fn unsigned(raw: &[u8]) -> Option<Eip1559Tx> {
    use alloy_consensus::{Signed, TxEip1559};
    use alloy_primitives::TxKind;
    let mut buf = raw;
    let signed = Signed::<TxEip1559>::eip2718_decode(&mut buf).ok()?;
    let tx = signed.tx();
    let TxKind::Call(to) = tx.to else {
        return None;
    };
    if !buf.is_empty() || !tx.access_list.is_empty() {
        return None;
    }
    Some(Eip1559Tx {
        chain_id: ChainId(tx.chain_id),
        nonce: tx.nonce,
        max_priority_fee_per_gas: tx.max_priority_fee_per_gas,
        max_fee_per_gas: tx.max_fee_per_gas,
        gas_limit: tx.gas_limit,
        to,
        value: tx.value,
        input: tx.input.clone(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::evm::{SigningKey, sign_eip1559};
    use alloy_primitives::{Address, U256};

    const GWEI: u128 = 1_000_000_000;
    const KEY: &str = "0x59c6995e998f97a5a0044966f0945389dc9e86dae88c7a8412f4603b6b78690d";

    /// Signed at a base fee of 1 gwei with a 0.1 gwei tip (`rpc::fees`: cap 2.1 gwei).
    const POOLED: Fees = Fees {
        tip: GWEI / 10,
        max_fee: 21 * GWEI / 10,
    };

    fn now_fees(base: u128) -> Fees {
        Fees {
            tip: GWEI / 10,
            max_fee: 2 * base + GWEI / 10,
        }
    }

    #[test]
    fn replacement_fees_rise_by_ten_percent_rounded_up_and_strictly() {
        assert_eq!(min_replacement_fee(100), 110);
        assert_eq!(min_replacement_fee(101), 112, "111.1 rounds up");
        assert_eq!(min_replacement_fee(9), 10, "9.9 rounds up");
        assert_eq!(min_replacement_fee(1), 2, "1.1 rounds up");
        assert_eq!(min_replacement_fee(0), 1, "a zero tip must still rise");
        assert_eq!(min_replacement_fee(u128::MAX), u128::MAX);
        assert_eq!(next_base_fee(8), 9);
        assert_eq!(next_base_fee(9), 11, "9 × 1.125 = 10.125 rounds up");
        assert_eq!(next_base_fee(0), 0);
    }

    #[test]
    fn a_transaction_recorded_less_than_a_minute_ago_waits() {
        let spike = Some(10 * GWEI);
        let at = 1_000;
        assert_eq!(
            decide(
                POOLED,
                at,
                at + BUMP_AFTER_SECS - 1,
                0,
                spike,
                now_fees(10 * GWEI)
            ),
            Bump::Wait
        );
        assert!(!due(at, at + BUMP_AFTER_SECS - 1));
        assert!(due(at, at + BUMP_AFTER_SECS));
        assert!(matches!(
            decide(
                POOLED,
                at,
                at + BUMP_AFTER_SECS,
                0,
                spike,
                now_fees(10 * GWEI)
            ),
            Bump::Replace(_)
        ));
    }

    #[test]
    fn a_send_looks_at_the_lowest_unmined_nonce_once_its_reservation_is_a_minute_old() {
        let mut state = NonceState::new(5);
        let at = 1_000;
        assert_eq!(state.reserve_for(5, "x402/nonce/a", at), 5);
        assert_eq!(state.reserve_for(5, "refund/b", at), 6);
        assert_eq!(blocking(&state, 5, at + BUMP_AFTER_SECS - 1), None);
        assert_eq!(
            blocking(&state, 5, at + BUMP_AFTER_SECS),
            Some("x402/nonce/a")
        );
        // The nonce asked about is the lowest unmined one: 5 mined, 6 is; past every reservation, nothing.
        assert_eq!(blocking(&state, 6, at + BUMP_AFTER_SECS), Some("refund/b"));
        assert_eq!(blocking(&state, 7, at + BUMP_AFTER_SECS), None);
        // Mined past (the bookkeeping forgot it): nothing.
        state.observe_mined(6);
        assert_eq!(blocking(&state, 5, at + BUMP_AFTER_SECS), None);
        // A reservation kept from before times were: old.
        state.reserved_at.clear();
        assert_eq!(blocking(&state, 6, at), Some("refund/b"));
    }

    #[test]
    fn a_fee_cap_that_covers_the_next_block_waits() {
        // 2.1 gwei covers a base fee up to 1.866… gwei (× 1.125 ≤ 2.1).
        let base = 21 * GWEI / 10 * 8 / 9;
        assert!(next_base_fee(base) <= POOLED.max_fee);
        assert_eq!(
            decide(POOLED, 0, 1_000, 0, Some(base), now_fees(base)),
            Bump::Wait
        );
        // One wei more and the next block may need more than the cap.
        let base = base + 1;
        assert!(next_base_fee(base) > POOLED.max_fee);
        assert!(matches!(
            decide(POOLED, 0, 1_000, 0, Some(base), now_fees(base)),
            Bump::Replace(_)
        ));
        // A chain without a base fee: nothing to outgrow.
        assert_eq!(decide(POOLED, 0, 1_000, 0, None, now_fees(0)), Bump::Wait);
    }

    #[test]
    fn a_replacement_pays_what_a_new_transaction_would_and_at_least_ten_percent_more() {
        // The base fee went to 10 gwei: a new transaction would get 20.1 gwei, far above 110 %.
        let base = 10 * GWEI;
        assert_eq!(
            decide(POOLED, 0, 1_000, 0, Some(base), now_fees(base)),
            Bump::Replace(Fees {
                tip: 11 * GWEI / 100,
                max_fee: 201 * GWEI / 10
            }),
            "the tip rises by 10 % even when the node suggests the same"
        );
        // The base fee barely outgrew the cap and the node suggests a lower tip: 110 % of each.
        let base = 2 * GWEI;
        let low = Fees {
            tip: GWEI / 100,
            max_fee: GWEI,
        };
        assert_eq!(
            decide(POOLED, 0, 1_000, 3, Some(base), low),
            Bump::Replace(Fees {
                tip: 11 * GWEI / 100,
                max_fee: 231 * GWEI / 100
            })
        );
        // A suggested tip above 110 % is taken.
        let high_tip = Fees {
            tip: GWEI,
            max_fee: GWEI,
        };
        let Bump::Replace(f) = decide(POOLED, 0, 1_000, 0, Some(base), high_tip) else {
            panic!("replaced")
        };
        assert_eq!(f.tip, GWEI);
        assert!(f.tip <= f.max_fee);
        // Odd wei round up.
        let odd = Fees {
            tip: 7,
            max_fee: 11,
        };
        assert_eq!(
            decide(odd, 0, 1_000, 0, Some(11), Fees { tip: 0, max_fee: 0 }),
            Bump::Replace(Fees {
                tip: 8,
                max_fee: 13
            })
        );
    }

    #[test]
    fn the_ceiling_and_the_count_stop_replacing() {
        let base = 300 * GWEI;
        assert_eq!(
            decide(POOLED, 0, 1_000, 0, Some(base), now_fees(base)),
            Bump::Ceiling {
                needed: 600 * GWEI + GWEI / 10
            }
        );
        // Just at the ceiling is still allowed.
        let at_ceiling = Fees {
            tip: GWEI / 10,
            max_fee: MAX_FEE_PER_GAS,
        };
        assert_eq!(
            decide(POOLED, 0, 1_000, 0, Some(200 * GWEI), at_ceiling),
            Bump::Replace(Fees {
                tip: 11 * GWEI / 100,
                max_fee: MAX_FEE_PER_GAS
            })
        );
        // A pooled cap whose 110 % crosses the ceiling.
        let near = Fees {
            tip: GWEI,
            max_fee: 460 * GWEI,
        };
        assert_eq!(
            decide(near, 0, 1_000, 0, Some(460 * GWEI), now_fees(GWEI)),
            Bump::Ceiling { needed: 506 * GWEI }
        );
        let base = 10 * GWEI;
        assert_eq!(
            decide(
                POOLED,
                0,
                1_000,
                MAX_REPLACEMENTS,
                Some(base),
                now_fees(base)
            ),
            Bump::Exhausted
        );
        assert!(matches!(
            decide(
                POOLED,
                0,
                1_000,
                MAX_REPLACEMENTS - 1,
                Some(base),
                now_fees(base)
            ),
            Bump::Replace(_)
        ));
    }

    #[test]
    fn a_replacement_is_the_same_transaction_with_other_fees() {
        let key = SigningKey::from_hex(KEY).unwrap();
        let tx = Eip1559Tx {
            chain_id: ChainId(31337),
            nonce: 7,
            max_priority_fee_per_gas: POOLED.tip,
            max_fee_per_gas: POOLED.max_fee,
            gas_limit: 90_000,
            to: Address::repeat_byte(1),
            value: U256::ZERO,
            input: vec![1, 2, 3].into(),
        };
        let signed = sign_eip1559(&tx, &key).unwrap();
        assert_eq!(unsigned(&signed.raw), Some(tx.clone()));
        let fees = Fees {
            tip: GWEI,
            max_fee: 30 * GWEI,
        };
        let again = sign_eip1559(&replacement(&tx, fees), &key).unwrap();
        assert_eq!(again.nonce, signed.nonce);
        assert_ne!(again.hash, signed.hash);
        let back = unsigned(&again.raw).unwrap();
        assert_eq!(
            (back.max_priority_fee_per_gas, back.max_fee_per_gas),
            (GWEI, 30 * GWEI)
        );
        assert_eq!(
            Eip1559Tx {
                max_priority_fee_per_gas: POOLED.tip,
                max_fee_per_gas: POOLED.max_fee,
                ..back
            },
            tx
        );
        assert_eq!(unsigned(&[0x02, 0xc0]), None);
        assert_eq!(unsigned(&[]), None);
        let mut trailing = signed.raw.to_vec();
        trailing.push(0);
        assert_eq!(unsigned(&trailing), None);
    }

    /// A replacement the node does not show while the replaced transaction stays pooled, refused for its fees
    /// (`rpc::outbid_unreached`), is outbid by one at least 10 % above it, although its own cap covers the
    /// base fee.
    #[test]
    fn a_refused_unseen_replacement_is_outbid_by_ten_percent() {
        let at = 1_000;
        // Its cap covers the base fee: `decide` would wait; the refused one is outbid all the same.
        let refused = Fees {
            tip: GWEI / 5,
            max_fee: 42 * GWEI / 10,
        };
        let base = Some(GWEI);
        assert_eq!(
            decide(refused, at, at + BUMP_AFTER_SECS, 1, base, now_fees(GWEI)),
            Bump::Wait
        );
        let Bump::Replace(fees) = decide_unreached(refused, 1, now_fees(GWEI)) else {
            panic!("replaced");
        };
        assert!(fees.max_fee >= min_replacement_fee(refused.max_fee));
        assert!(fees.tip >= min_replacement_fee(refused.tip));
        assert_eq!(
            decide_unreached(refused, MAX_REPLACEMENTS, now_fees(GWEI)),
            Bump::Exhausted
        );
        let high = Fees {
            tip: GWEI,
            max_fee: MAX_FEE_PER_GAS - 1,
        };
        assert!(matches!(
            decide_unreached(high, 1, now_fees(GWEI)),
            Bump::Ceiling { .. }
        ));
    }
}
