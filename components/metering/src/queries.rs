//! Usage queries over a SIM's receipt log (kernel `usage::report`).

use esim402_core::store::keys;
use esim402_core::usage::ingest::LogEntry;
use esim402_core::usage::report::{Granularity, aggregate};
use esim402_guest::convert::{internal, invalid, kv_err};
use esim402_guest::kv;
use esim402_guest::wit;
use spin_sdk::key_value::Store;

use crate::accounts::parse_iccid;

/// The most log entries one usage query reads.
const MAX_SCAN: u64 = 10_000;

async fn read_log(iccid: &str, from: u64, limit: u64) -> Result<Vec<LogEntry>, wit::Error> {
    if crate::accounts::load(iccid).await?.is_none() {
        return Err(wit::Error::NotFound(format!("no metered SIM {iccid}")));
    }
    let count = kv::increment::<wit::Error>(&keys::meter_count(iccid), 0).map_err(kv_err)?;
    let count = u64::try_from(count).unwrap_or(0);
    let store = Store::open_default().await.map_err(internal)?;
    let mut out = Vec::new();
    let from = from.max(1);
    for n in from..=count.min(from.saturating_add(limit).saturating_sub(1)) {
        // A reserved position whose write has not landed yet (or never will, after a crash) is skipped.
        if let Some(bytes) = store
            .get(keys::meter_entry(iccid, n))
            .await
            .map_err(internal)?
        {
            out.push(serde_json::from_slice(&bytes).map_err(internal)?);
        }
    }
    Ok(out)
}

pub async fn usage(iccid: &str, granularity: &str, by_plmn: bool) -> Result<String, wit::Error> {
    let iccid = parse_iccid(iccid)?;
    let g = Granularity::parse(granularity)
        .ok_or_else(|| invalid("granularity", "granularity must be hour or day"))?;
    let log = read_log(iccid.as_str(), 1, MAX_SCAN).await?;
    serde_json::to_string(&aggregate(&log, g, by_plmn)).map_err(internal)
}

pub async fn receipts(iccid: &str, from: u64, limit: u32) -> Result<String, wit::Error> {
    let iccid = parse_iccid(iccid)?;
    let log = read_log(iccid.as_str(), from, u64::from(limit.clamp(1, 1_000))).await?;
    serde_json::to_string(&log).map_err(internal)
}
