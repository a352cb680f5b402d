//! Usage queries over a SIM's receipt log (kernel `usage::report`).

use esim402_core::join::join_all;
use esim402_core::store::keys;
use esim402_core::usage::ingest::{LogEntry, chunk_of};
use esim402_core::usage::report::{Granularity, aggregate};
use esim402_guest::convert::{internal, invalid, kv_err, store_err};
use esim402_guest::kv;
use esim402_guest::wit;

use crate::accounts::parse_iccid;

/// The most log entries one usage query reads: the SIM's newest.
const MAX_SCAN: u64 = 10_000;

/// Chunks read at once.
const READ_AHEAD: u64 = 16;

/// How many chunks the SIM's receipt log has (`not-found` for a SIM not metered here).
async fn log_chunks(iccid: &str) -> Result<u64, wit::Error> {
    if crate::accounts::load(iccid)
        .await?
        .is_none_or(|a| a.is_unopened())
    {
        return Err(wit::Error::NotFound(format!("no metered SIM {iccid}")));
    }
    let chunks = kv::increment::<wit::Error>(&keys::meter_chunks(iccid), 0).map_err(kv_err)?;
    Ok(u64::try_from(chunks).unwrap_or(0))
}

/// The entries of chunks `first..=last` (at most [`READ_AHEAD`]), read at once, in chunk order. A reserved
/// chunk whose write has not landed yet (or never will, after a crash) is skipped.
async fn read_chunks(iccid: &str, first: u64, last: u64) -> Result<Vec<LogEntry>, wit::Error> {
    let store = kv::default_store().await.map_err(kv_err)?;
    let read = join_all((first..=last).map(|c| store.get(keys::meter_chunk(iccid, c)))).await;
    let mut out = Vec::new();
    for bytes in read {
        let Some(bytes) = bytes.map_err(store_err)? else {
            continue;
        };
        out.extend(serde_json::from_slice::<Vec<LogEntry>>(&bytes).map_err(internal)?);
    }
    Ok(out)
}

/// The SIM's log entries at positions `from` and later, at most `limit`, in order.
async fn read_log(iccid: &str, from: u64, limit: u64) -> Result<Vec<LogEntry>, wit::Error> {
    let chunks = log_chunks(iccid).await?;
    let mut out = Vec::new();
    let mut next = chunk_of(from);
    while next <= chunks && (out.len() as u64) < limit {
        let last = chunks.min(next.saturating_add(READ_AHEAD - 1));
        let read = read_chunks(iccid, next, last).await?;
        out.extend(read.into_iter().filter(|e| e.n >= from));
        next = last + 1;
    }
    out.truncate(usize::try_from(limit).unwrap_or(usize::MAX));
    Ok(out)
}

/// The SIM's newest log entries, at most `limit`, in order: chunks read from the last one back.
async fn read_newest(iccid: &str, limit: u64) -> Result<Vec<LogEntry>, wit::Error> {
    let mut last = log_chunks(iccid).await?;
    let mut out = Vec::new();
    while last >= 1 && (out.len() as u64) < limit {
        let first = last.saturating_sub(READ_AHEAD - 1).max(1);
        out.extend(read_chunks(iccid, first, last).await?);
        last = first - 1;
    }
    out.sort_by_key(|e| e.n);
    let extra = out
        .len()
        .saturating_sub(usize::try_from(limit).unwrap_or(usize::MAX));
    out.drain(..extra);
    Ok(out)
}

pub async fn usage(iccid: &str, granularity: &str, by_plmn: bool) -> Result<String, wit::Error> {
    let iccid = parse_iccid(iccid)?;
    let g = Granularity::parse(granularity)
        .ok_or_else(|| invalid("granularity", "granularity must be hour or day"))?;
    let log = read_newest(iccid.as_str(), MAX_SCAN).await?;
    serde_json::to_string(&aggregate(&log, g, by_plmn)).map_err(internal)
}

pub async fn receipts(iccid: &str, from: u64, limit: u32) -> Result<String, wit::Error> {
    let iccid = parse_iccid(iccid)?;
    let log = read_log(iccid.as_str(), from, u64::from(limit.clamp(1, 1_000))).await?;
    serde_json::to_string(&log).map_err(internal)
}
