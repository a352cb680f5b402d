//! A shard head that holds nothing, told apart: never written, or written and gone.
//!
//! A shard's head is a versioned cell (kernel [`crate::store::cell`]), so every version ever written left its
//! claim counter (`<head>@v<n>`, kept for good), and the newest version its proposal. A head that reads absent
//! while its first version's counter is zero was never claimed: nothing was appended past genesis, or the
//! shard's very first appender stopped between its entries and its head advance, and a check may help the head
//! past them ([`super::stranded`]). One whose first version was claimed was written (or is being written); if
//! that first version's proposal is still there and no later version was claimed, its appender stopped between
//! claiming and publishing it, and the proposal is the head it was writing (the next append adopts it). Any
//! other absent head was published and is gone (removed, or lost by its store): helped forward from genesis over
//! what is left, it would seal a removed tail into the chain, so a check reports it ([`LedgerError::HeadMissing`]).
//!
//! [`LedgerError::HeadMissing`]: super::LedgerError::HeadMissing

use crate::store::cell::{Stored, TOKEN_BITS, proposal_key};

use super::ChainHead;

/// What a shard's head cell that holds no head says, by what the cell protocol left around it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AbsentHead {
    /// Never written: the shard's genesis.
    Genesis,
    /// Its first version was claimed and not published (its appender stopped in between): the head it holds.
    Unpublished(ChainHead),
    /// It was written and is gone.
    Missing,
}

/// The key of the first version's proposal of the head cell at `head_key`, by the claimant `first_claim` (the
/// first version's counter) names; `None` while the counter names no single claimant (unclaimed, or a loser's
/// increment in flight).
pub fn first_proposal_key(head_key: &str, first_claim: i64) -> Option<String> {
    let token = u64::try_from(first_claim)
        .ok()
        .filter(|&t| t > 0 && t < (1 << TOKEN_BITS))?;
    Some(proposal_key(head_key, 1, token))
}

/// What the head cell of `shard` holds when it reads absent: `removed` when it reads as a removed version (a
/// tombstone: a head is never removed by the protocol), `first_claim` and `second_claim` the counters of its
/// versions 1 and 2 (read without changing them), `first_proposal` what [`first_proposal_key`] holds (only
/// looked at while `second_claim` is 0).
pub fn absent_head(
    shard: u16,
    removed: bool,
    first_claim: i64,
    second_claim: i64,
    first_proposal: Option<&Stored>,
) -> AbsentHead {
    if removed {
        return AbsentHead::Missing;
    }
    if first_claim == 0 {
        return AbsentHead::Genesis;
    }
    if second_claim != 0 {
        // Version 2 is claimed only by a writer that read version 1 from the head: it was published.
        return AbsentHead::Missing;
    }
    let token = u64::try_from(first_claim).ok();
    let unpublished = first_proposal
        .filter(|p| p.version == 1 && Some(p.token) == token)
        .and_then(|p| p.data.as_deref())
        .and_then(|data| serde_json::from_slice::<ChainHead>(data).ok())
        .filter(|head| head.shard == shard);
    // Version 1's owner deletes its proposal once it has published: without it, the head was published.
    unpublished.map_or(AbsentHead::Missing, AbsentHead::Unpublished)
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloy_primitives::B256;

    const TOKEN: i64 = 0x1234_5678;

    fn proposal(token: i64, head: &ChainHead) -> Stored {
        Stored {
            version: 1,
            token: u64::try_from(token).unwrap(),
            data: Some(serde_json::to_vec(head).unwrap()),
        }
    }

    fn head(shard: u16) -> ChainHead {
        ChainHead {
            shard,
            count: 1,
            hash: B256::repeat_byte(7),
        }
    }

    /// A head never claimed is the shard's genesis (an appender's first advance may be all that is missing).
    #[test]
    fn a_head_never_claimed_is_genesis() {
        assert_eq!(absent_head(3, false, 0, 0, None), AbsentHead::Genesis);
        assert_eq!(first_proposal_key("ledger/03/head", 0), None);
    }

    /// A head whose first version was claimed and never published reads as the head its proposal holds.
    #[test]
    fn a_first_version_claimed_and_unpublished_is_its_proposal() {
        let key = first_proposal_key("ledger/03/head", TOKEN).unwrap();
        assert_eq!(key, format!("ledger/03/head@v1.{TOKEN}"));
        let p = proposal(TOKEN, &head(3));
        assert_eq!(
            absent_head(3, false, TOKEN, 0, Some(&p)),
            AbsentHead::Unpublished(head(3))
        );
    }

    /// A head that was published and is gone is missing: removed (a tombstone), its first version's proposal
    /// tidied away after publication, a later version claimed, or a proposal that is not this shard's head.
    #[test]
    fn a_head_written_and_gone_is_missing() {
        let p = proposal(TOKEN, &head(3));
        assert_eq!(absent_head(3, true, 0, 0, None), AbsentHead::Missing);
        assert_eq!(absent_head(3, false, TOKEN, 0, None), AbsentHead::Missing);
        let absent = Stored::absent();
        assert_eq!(
            absent_head(3, false, TOKEN, 0, Some(&absent)),
            AbsentHead::Missing
        );
        assert_eq!(
            absent_head(3, false, TOKEN, 99, Some(&p)),
            AbsentHead::Missing
        );
        assert_eq!(
            absent_head(3, false, TOKEN + 1, 0, Some(&p)),
            AbsentHead::Missing
        );
        let other = proposal(TOKEN, &head(4));
        assert_eq!(
            absent_head(3, false, TOKEN, 0, Some(&other)),
            AbsentHead::Missing
        );
        // A counter naming no single claimant (a loser's increment in flight) names no proposal.
        assert_eq!(first_proposal_key("ledger/03/head", -5), None);
        assert_eq!(first_proposal_key("ledger/03/head", 1 << 50), None);
    }
}
