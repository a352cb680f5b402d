//! Page-signed receipts: one carrier signature over the Merkle root of a page of receipts, each receipt still
//! verifiable on its own with its proof. Recovering a secp256k1 signature is the dominant cost of checking a
//! receipt (~250 µs native, ~600 µs in a component); a page of `n` receipts costs one recovery plus `n` hashes
//! and `n·log2(n)` proof steps, so ingest verifies a page ~`n`× cheaper while an agent or a contract still
//! checks any single receipt it is charged for.
//!
//! The scheme (same EIP-712 domain as single receipts, `receipt::domain`):
//!
//! ```text
//! leaf  = hashStruct(UsageReceipt{…})                 (EIP-712 struct hash of the receipt's fields)
//! node  = keccak256(min(a, b) ‖ max(a, b))            (sorted pairs: no left/right flags in a proof)
//! root  = the node above every leaf (an odd last node moves up unchanged)
//! signed: UsagePage(bytes32 root,uint32 count)        (count: the number of leaves in the page)
//! ```
//!
//! A paged receipt carries `page: {count, proof}` beside its `signature` (the page's). Leaves are 32-byte
//! struct hashes (themselves keccak of ≥ 10 words behind a type hash) and nodes keccak of 64 bytes, so a node
//! cannot be passed off as a receipt without a keccak preimage.
//!
//! This module knows hashes only; the receipt's side (its leaf, signing a page of receipts) is in
//! `usage::receipt`, which builds on it.

use alloy_primitives::B256;
use serde::{Deserialize, Serialize};

pub use super::hashes::node;

/// At most this many receipts under one page signature (2^20: a proof is at most 20 hashes).
pub const MAX_PAGE: u32 = 1 << 20;
/// The longest proof accepted (`log2(MAX_PAGE)`).
pub const MAX_PROOF: usize = 20;

/// Where a paged receipt sits: the page's size and the sibling hashes from its leaf up to the root.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PageProof {
    /// Receipts under the page signature (1..=[`MAX_PAGE`]).
    pub count: u32,
    /// Sibling hashes, leaf level first (at most `ceil(log2(count))`).
    pub proof: Vec<B256>,
}

impl PageProof {
    /// The proof's shape: `count` in range and no longer a proof than a page of `count` leaves has.
    pub fn check(&self) -> Result<(), String> {
        if self.count == 0 || self.count > MAX_PAGE {
            return Err(format!("count must be 1..={MAX_PAGE}"));
        }
        let depth = depth(self.count);
        if self.proof.len() > depth {
            return Err(format!(
                "a page of {} receipts has proofs of at most {depth} hashes, not {}",
                self.count,
                self.proof.len()
            ));
        }
        Ok(())
    }
}

/// `ceil(log2(count))`: the height of a page of `count` leaves.
fn depth(count: u32) -> usize {
    (u32::BITS - count.saturating_sub(1).leading_zeros()) as usize
}

/// The root a leaf and its proof lead to.
pub fn root_from_proof(leaf: B256, proof: &[B256]) -> B256 {
    proof.iter().fold(leaf, |acc, sibling| node(acc, *sibling))
}

/// The EIP-712 digest a carrier signs for a page (`UsagePage{root, count}` under the receipts' domain).
pub fn signing_hash(root: B256, count: u32) -> B256 {
    super::hashes::page_digest(root, count)
}

/// The root of `leaves` and each leaf's proof (in order). Empty input has no root.
pub fn tree(leaves: &[B256]) -> Option<(B256, Vec<Vec<B256>>)> {
    if leaves.is_empty() {
        return None;
    }
    let mut proofs = vec![Vec::new(); leaves.len()];
    // For each leaf, its position in the current level.
    let mut pos: Vec<usize> = (0..leaves.len()).collect();
    let mut level = leaves.to_vec();
    while level.len() > 1 {
        for (i, p) in pos.iter_mut().enumerate() {
            let sibling = *p ^ 1;
            if let Some(s) = level.get(sibling) {
                proofs[i].push(*s);
            }
            *p /= 2;
        }
        level = level
            .chunks(2)
            .map(|c| match c {
                [a, b] => node(*a, *b),
                [a] => *a,
                _ => unreachable!("chunks(2) yields one or two"),
            })
            .collect();
    }
    Some((level[0], proofs))
}

#[cfg(test)]
#[path = "page_tests.rs"]
mod tests;
