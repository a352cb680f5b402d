//! Appending to and reading the money ledger in the `default` store, from any component.
//!
//! Layout: `ledger/entry/<seq>` (20-digit zero-padded) holds one entry as a JSON line; `ledger/head` holds the
//! [`ChainHead`] (count + last hash) kept apart from the entries, so a removed tail is detected too.
//!
//! Appends are lock-free and never lose or reorder entries: an appender builds entry `n` from the head it read
//! and claims `ledger/entry/<n>` with insert-if-absent; exactly one appender wins each `n`. The head is then
//! advanced with a cell update; an appender that finds entry `n` already written but the head still at `n`
//! advances the head itself before retrying ("helping"), so a crash between the two writes stalls nobody. Both
//! are versioned cells ([`crate::kv`]), so this holds on Spin's SQLite and Redis stores too.

use crate::kv::{self, KvError};
use esim402_core::ledger::{
    ChainHead, EntryFields, EntryKind, LedgerEntry, from_json_line, to_json_line,
};

/// The head key.
pub const HEAD_KEY: &str = "ledger/head";

/// How many times an append retries under contention.
const MAX_ATTEMPTS: usize = 256;

/// The key of entry `seq`.
pub fn entry_key(seq: u64) -> String {
    format!("ledger/entry/{seq:020}")
}

async fn read_entry(seq: u64) -> Result<Option<LedgerEntry>, KvError<()>> {
    let Some(bytes) = kv::get_bytes(&entry_key(seq)).await? else {
        return Ok(None);
    };
    let line = String::from_utf8(bytes).map_err(|e| KvError::Corrupt {
        key: entry_key(seq),
        message: e.to_string(),
    })?;
    from_json_line(&line)
        .map(Some)
        .map_err(|e| KvError::Corrupt {
            key: entry_key(seq),
            message: e.to_string(),
        })
}

/// The stored head (genesis if nothing was ever appended).
pub async fn head() -> Result<ChainHead, KvError<()>> {
    Ok(kv::get_json::<ChainHead, ()>(HEAD_KEY)
        .await?
        .unwrap_or_else(ChainHead::genesis))
}

/// Move the head from `from` to `to` if it still is `from` (someone else may have done it: fine).
async fn advance(from: ChainHead, to: ChainHead) -> Result<(), KvError<()>> {
    match kv::update_json::<ChainHead, ()>(HEAD_KEY, |current| {
        if current.unwrap_or_else(ChainHead::genesis) == from {
            Ok(to)
        } else {
            Err(())
        }
    })
    .await
    {
        Ok(_) | Err(KvError::Refused(())) => Ok(()),
        Err(e) => Err(e),
    }
}

/// A random pause before retrying a lost race, growing with the attempt (capped at ~8 ms), so 32 appenders
/// that collide do not all retry in lock-step against the same head.
async fn back_off(attempt: usize) {
    let mut b = [0u8; 2];
    let jitter = getrandom::fill(&mut b).map_or(0, |()| u64::from(u16::from_le_bytes(b)));
    let cap_us = 250u64 << attempt.min(5);
    spin_sdk::time::sleep(std::time::Duration::from_micros(jitter % cap_us)).await;
}

/// Append one entry; returns it (with its `seq` and `hash`).
pub async fn append(
    at: u64,
    kind: EntryKind,
    fields: EntryFields,
) -> Result<LedgerEntry, KvError<()>> {
    for attempt in 0..MAX_ATTEMPTS {
        if attempt > 0 {
            back_off(attempt).await;
        }
        let head = head().await?;
        if let Some(existing) = read_entry(head.count).await? {
            // Written by an appender that has not advanced the head yet: help it along.
            advance(head, ChainHead::after(&existing)).await?;
            continue;
        }
        let entry = LedgerEntry::new(&head, at, kind, fields.clone());
        match kv::insert_if_absent::<()>(&entry_key(entry.seq), to_json_line(&entry).as_bytes())
            .await
        {
            Ok(()) => {
                advance(head, ChainHead::after(&entry)).await?;
                return Ok(entry);
            }
            Err(KvError::Exists) => continue,
            Err(e) => return Err(e),
        }
    }
    Err(KvError::Contended(HEAD_KEY.into()))
}

/// Entries from `from` (inclusive), at most `limit`, in order; stops at the first missing seq.
pub async fn read_from(from: u64, limit: u64) -> Result<Vec<LedgerEntry>, KvError<()>> {
    let mut out = Vec::new();
    let mut seq = from;
    while (out.len() as u64) < limit {
        match read_entry(seq).await? {
            Some(e) => out.push(e),
            None => break,
        }
        seq += 1;
    }
    Ok(out)
}

/// Every stored entry up to the head (and any written past it), in seq order, for verification. Entries are
/// read by key, so an entry whose key is missing shows up as a gap the verifier reports.
pub async fn read_all() -> Result<(ChainHead, Vec<LedgerEntry>), KvError<()>> {
    let head = head().await?;
    let mut out = Vec::new();
    let mut seq = 0;
    loop {
        match read_entry(seq).await? {
            Some(e) => out.push(e),
            None if seq < head.count => {
                // A hole below the head: keep scanning so the verifier sees the gap, not a short chain.
                let mut next = None;
                for s in seq + 1..head.count {
                    if let Ok(Some(e)) = read_entry(s).await {
                        next = Some(e);
                        break;
                    }
                }
                if let Some(next) = next {
                    seq = next.seq;
                    out.push(next);
                } else {
                    break;
                }
            }
            None => break,
        }
        seq += 1;
    }
    Ok((head, out))
}
