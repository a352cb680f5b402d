//! The ledger as a check reads it: every shard's stored head and entries. A head that reads absent is told
//! apart (kernel `ledger::absent_head`): never written (the shard's genesis), or written and gone, which the
//! check reports instead of taking what is left of the chain for the whole shard.

use esim402_core::ledger::{self, AbsentHead, ChainHead, LedgerEntry, SHARDS};
use esim402_core::store::cell::{ADOPT_AFTER_US, claim_key};
use esim402_core::store::keys;

use super::read_entry;
use crate::kv::{self, KvError};

/// How many absent keys in a row a scan of a shard crosses below its head before it gives up there: past
/// that, the shard reads as ending at the hole (the verifier reports it short of its head). Bounded, so a head
/// whose count was inflated (edited, corrupted) costs this many reads, not one per count.
pub const MAX_HOLE: u64 = 256;

/// Every shard as a check reads it.
#[derive(Debug, Default)]
pub struct Shards {
    /// Per shard, its stored head and entries ([`read_shard`]); a shard in `gone` as its genesis, no entries.
    pub read: Vec<(ChainHead, Vec<LedgerEntry>)>,
    /// The shards whose head was written and is gone (kernel `AbsentHead::Missing`), in order.
    pub gone: Vec<u16>,
}

/// The stored head of `shard` for a check: `None` if it was written and is gone (a shard wholly removed, its
/// entries with its head, too: its counters stay). A head that reads absent costs one counter read more (its
/// first version's claim), and only one that was claimed costs two or three: while its first version is claimed
/// and not yet published (an append in flight, or one that stopped in between), the head it is publishing. Read
/// twice, [`ADOPT_AFTER_US`] apart, before it is called gone: an append in flight may publish meanwhile, and two
/// first appends racing leave the counter naming nobody while the loser takes its claim back (a review: read
/// back to back, a contended first append of a shard read as a removed head).
async fn stored_head(shard: u16) -> Result<Option<ChainHead>, KvError<()>> {
    let key = keys::ledger_head(shard);
    for attempt in 0..2 {
        if attempt > 0 {
            spin_sdk::time::sleep(std::time::Duration::from_micros(ADOPT_AFTER_US)).await;
        }
        let (head, read) = kv::read_json::<ChainHead, ()>(&key).await?;
        if let Some(head) = head {
            return Ok(Some(head));
        }
        let first = match kv::increment::<()>(&claim_key(&key, 1), 0) {
            Ok(first) => first,
            // A store taking no writes (a counter is read by adding 0) on a shard with no first entry: nothing
            // to tell apart, the shard reads as empty. With a first entry, what the head was decides whether the
            // entries may be helped into the chain: the check fails instead (503).
            Err(e) => match read_entry(shard, 0).await? {
                None => return Ok(Some(ChainHead::genesis_of(shard))),
                Some(_) => return Err(e),
            },
        };
        let (second, proposal) = match ledger::first_proposal_key(&key, first) {
            Some(proposal) => {
                let second = kv::increment::<()>(&claim_key(&key, 2), 0)?;
                let held = match second {
                    0 => Some(kv::read_version::<()>(&proposal).await?),
                    _ => None,
                };
                (second, held)
            }
            None => (0, None),
        };
        match ledger::absent_head(shard, read.version >= 1, first, second, proposal.as_ref()) {
            AbsentHead::Genesis => return Ok(Some(ChainHead::genesis_of(shard))),
            AbsentHead::Unpublished(head) => return Ok(Some(head)),
            AbsentHead::Missing => {}
        }
    }
    Ok(None)
}

/// `shard`'s stored head (`None`: written and gone, kernel `ledger::AbsentHead::Missing`) and every stored
/// entry of it up to its head (and any written past it), in seq order, for verification; no entries for a head
/// that is gone. Entries are read by key, so an entry whose key is missing shows up as a gap the verifier reports
/// (a gap of up to [`MAX_HOLE`] keys; a longer one ends the scan, and the verifier reports the shard short of its
/// head). A read that fails is an error, never skipped.
pub async fn read_shard(shard: u16) -> Result<(Option<ChainHead>, Vec<LedgerEntry>), KvError<()>> {
    let Some(head) = stored_head(shard).await? else {
        return Ok((None, Vec::new()));
    };
    let mut out = Vec::new();
    let mut seq = 0;
    loop {
        match read_entry(shard, seq).await? {
            Some(e) => out.push(e),
            None if seq < head.count => {
                // A hole below the head: keep scanning so the verifier sees the gap, not a short chain.
                let end = head
                    .count
                    .min(seq.saturating_add(1).saturating_add(MAX_HOLE));
                let mut next = None;
                for s in seq + 1..end {
                    if let Some(e) = read_entry(shard, s).await? {
                        next = Some((s, e));
                        break;
                    }
                }
                match next {
                    // Continue from the key found, never from the seq the entry claims: a tampered one
                    // claiming an earlier seq would send the scan back for ever.
                    Some((s, next)) => {
                        seq = s;
                        out.push(next);
                    }
                    None => break,
                }
            }
            None => break,
        }
        seq += 1;
    }
    Ok((Some(head), out))
}

/// Every shard, for [`esim402_core::ledger::verify_read`].
pub async fn read_all() -> Result<Shards, KvError<()>> {
    let mut shards = Shards {
        read: Vec::with_capacity(usize::from(SHARDS)),
        gone: Vec::new(),
    };
    for shard in 0..SHARDS {
        let (head, entries) = read_shard(shard).await?;
        if head.is_none() {
            shards.gone.push(shard);
        }
        shards
            .read
            .push((head.unwrap_or(ChainHead::genesis_of(shard)), entries));
    }
    Ok(shards)
}
