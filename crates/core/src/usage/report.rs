//! Usage queries over a SIM's receipt log, shaped like the IoT platforms' usage records (Twilio Super SIM
//! `UsageRecords`): bytes up/down per hour or day, optionally per serving network. Only accepted receipts
//! count; a receipt is placed in the period its window starts in.

use std::collections::BTreeMap;

use serde::Serialize;

use super::ingest::{LogEntry, LogState};

/// Period length.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Granularity {
    /// 3 600 s.
    Hour,
    /// 86 400 s.
    Day,
}

impl Granularity {
    /// Parse `hour` / `day`.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "hour" => Some(Self::Hour),
            "day" => Some(Self::Day),
            _ => None,
        }
    }

    fn secs(self) -> u64 {
        match self {
            Self::Hour => 3_600,
            Self::Day => 86_400,
        }
    }
}

/// One usage row.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct UsageRow {
    /// Period start (unix seconds).
    pub period_start: u64,
    /// Period end (exclusive).
    pub period_end: u64,
    /// The serving network, when grouped by it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub plmn: Option<String>,
    /// Bytes sent.
    pub data_upload: u64,
    /// Bytes received.
    pub data_download: u64,
    /// Both.
    pub data_total: u64,
    /// Receipts counted.
    pub receipts: u64,
}

/// Aggregate accepted entries by period (and network, with `by_plmn`), oldest period first.
pub fn aggregate<'a>(
    entries: impl IntoIterator<Item = &'a LogEntry>,
    granularity: Granularity,
    by_plmn: bool,
) -> Vec<UsageRow> {
    let mut rows: BTreeMap<(u64, Option<String>), UsageRow> = BTreeMap::new();
    for e in entries {
        if e.state != LogState::Accepted {
            continue;
        }
        let r = &e.receipt;
        let start = r.window_start - r.window_start % granularity.secs();
        let plmn = by_plmn.then(|| r.plmn.clone());
        let row = rows
            .entry((start, plmn.clone()))
            .or_insert_with(|| UsageRow {
                period_start: start,
                period_end: start + granularity.secs(),
                plmn,
                data_upload: 0,
                data_download: 0,
                data_total: 0,
                receipts: 0,
            });
        row.data_upload = row.data_upload.saturating_add(r.bytes_up);
        row.data_download = row.data_download.saturating_add(r.bytes_down);
        row.data_total = row.data_upload.saturating_add(row.data_download);
        row.receipts += 1;
    }
    rows.into_values().collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::usage::receipt::WireReceipt;

    fn entry(start: u64, plmn: &str, up: u64, down: u64, state: LogState) -> LogEntry {
        LogEntry {
            n: 1,
            at: start,
            state,
            reason: None,
            gap: false,
            receipt: WireReceipt {
                carrier: "tmobile".into(),
                iccid: "1".into(),
                plmn: plmn.into(),
                session_id: "s".into(),
                seq: 1,
                window_start: start,
                window_end: start + 60,
                bytes_up: up,
                bytes_down: down,
                signature: String::new(),
                page: None,
            },
        }
    }

    #[test]
    fn hours_and_networks() {
        let log = [
            entry(7_200, "310-260", 1, 2, LogState::Accepted),
            entry(7_300, "310-410", 10, 20, LogState::Accepted),
            entry(10_800, "310-260", 100, 200, LogState::Accepted),
            entry(7_250, "310-260", 999, 999, LogState::Disputed),
        ];
        let hourly = aggregate(&log, Granularity::Hour, false);
        assert_eq!(hourly.len(), 2);
        assert_eq!((hourly[0].period_start, hourly[0].data_total), (7_200, 33));
        assert_eq!(hourly[0].receipts, 2, "the disputed receipt does not count");
        assert_eq!((hourly[1].data_upload, hourly[1].data_download), (100, 200));
        let by_net = aggregate(&log, Granularity::Hour, true);
        assert_eq!(by_net.len(), 3);
        assert_eq!(by_net[0].plmn.as_deref(), Some("310-260"));
        let daily = aggregate(&log, Granularity::Day, false);
        assert_eq!(daily.len(), 1);
        assert_eq!(daily[0].data_total, 333);
        assert_eq!(Granularity::parse("week"), None);
    }
}
