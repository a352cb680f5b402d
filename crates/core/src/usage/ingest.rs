//! Receipt ingest, the pure part: a batch body parsed receipt by receipt (one bad receipt does not sink the
//! batch), each receipt's outcome, the per-SIM receipt log entry, and the report the feed gets back.
//!
//! The metering component runs the I/O around it, in this order per batch: load the accounts the batch
//! names → [`super::receipt::verify`] each → claim `(carrier, iccid, session_id, seq)` with an atomic
//! `increment` (exactly one claimant ever, on every backend: a replayed receipt is a duplicate, also across
//! concurrent batches and instances; one the older per-session claims may have charged is first looked up
//! under its legacy key: [`super::claim`]) → append the SIM's log entries → add the batch's bytes to the
//! SIM's `used` counter. A crash between a claim and the charge leaves that receipt claimed but uncharged: a receipt is
//! charged **at most** once, never twice.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::receipt::{Receipt, ReceiptError, WireReceipt};

/// The most receipts in one batch.
pub const MAX_BATCH: usize = 1_000;
/// The largest batch body accepted: [`MAX_BATCH`] receipts of up to ~2 KB each (a signed receipt with the
/// longest ids is about 450 bytes of JSON; a page-signed one adds its proof, 68 bytes per level: ~1.1 KB in
/// a page of 1 000, ~1.9 KB at the deepest page).
pub const MAX_BATCH_BODY_BYTES: usize = 2 << 20;

/// Why a batch body was refused as a whole (HTTP 400).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BatchError {
    /// Not JSON, or not `{"receipts": [...]}` / a bare array.
    #[error("body must be {{\"receipts\": [...]}} or a JSON array of receipts: {0}")]
    Shape(String),
    /// Empty.
    #[error("the batch is empty")]
    Empty,
    /// More than [`MAX_BATCH`].
    #[error("the batch has {0} receipts; at most {MAX_BATCH} per request")]
    TooLarge(usize),
}

/// Parse a batch body: the receipts, each parsed on its own (`Err` for one that does not parse).
pub fn parse_batch(body: &str) -> Result<Vec<Result<Receipt, ReceiptError>>, BatchError> {
    let value: Value = serde_json::from_str(body).map_err(|e| BatchError::Shape(e.to_string()))?;
    let items = match value {
        Value::Array(a) => a,
        Value::Object(mut o) => match o.remove("receipts") {
            Some(Value::Array(a)) => a,
            _ => return Err(BatchError::Shape("no \"receipts\" array".into())),
        },
        _ => return Err(BatchError::Shape("not an object or array".into())),
    };
    if items.is_empty() {
        return Err(BatchError::Empty);
    }
    if items.len() > MAX_BATCH {
        return Err(BatchError::TooLarge(items.len()));
    }
    Ok(items
        .into_iter()
        .map(|v| {
            serde_json::from_value::<WireReceipt>(v)
                .map_err(|e| ReceiptError::Malformed {
                    field: "receipt",
                    message: e.to_string(),
                })
                .and_then(|w| w.parse())
        })
        .collect())
}

/// What became of one receipt.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum Outcome {
    /// Verified, claimed and charged.
    Accepted {
        /// Bytes charged.
        bytes: u64,
        /// The previous record of the session was never seen (a gap in `seq`; flagged, still charged).
        gap: bool,
    },
    /// Already charged (same carrier, SIM, session and seq; or under its legacy claim, [`super::claim`]): not
    /// charged again.
    Duplicate,
    /// Refused: never charged. `disputed`: kept in the SIM's receipt log for its owner, as told to whoever
    /// posted the batch ([`Outcome::rejected`]).
    Rejected {
        /// Stable reason ([`ReceiptError::reason`]).
        reason: String,
        /// Human-readable detail.
        message: String,
        /// Kept as a dispute the carrier signed.
        disputed: bool,
    },
}

impl Outcome {
    /// The outcome of a refused receipt; `kept`: whether it was kept as disputed (a dispute for a SIM metered
    /// here, within the per-SIM cap if unsigned: [`ReceiptError::is_dispute_for`]). The answer says `disputed`
    /// only for a refusal the carrier signed: an unsigned one (anyone can post it) is kept for a SIM metered
    /// here and not for another, so telling its poster would tell which ICCIDs are metered here. The owner
    /// still sees every kept one in the SIM's receipt log.
    pub fn rejected(e: &ReceiptError, kept: bool) -> Self {
        Self::rejected_signed(e, kept, !e.is_unsigned())
    }

    /// [`Outcome::rejected`] where whether the carrier signed the refused receipt is known beyond the refusal's
    /// kind (`signed`, kernel `receipt::refusal_signed`).
    pub fn rejected_signed(e: &ReceiptError, kept: bool, signed: bool) -> Self {
        Self::Rejected {
            reason: e.reason().to_owned(),
            message: e.to_string(),
            disputed: kept && signed,
        }
    }
}

/// The `reason` of a receipt verified and claimed whose charge the store refused ([`mark_uncharged`]).
pub const NOT_CHARGED: &str = "not_charged";

/// A batch whose charges stopped at a store failure, and whose ledger events the answer itself carries (they
/// could not be held either): its accepted receipts of the SIMs not charged (`charged` says which were), turned
/// into refusals with reason [`NOT_CHARGED`], so the report and its totals say what was charged. Their claims
/// stay (a claim is never given back: that could charge a receipt twice), so sending them again is a
/// duplicate: at most once, in the payer's favour, as after a crash between a claim and its charge.
pub fn mark_uncharged(lines: &mut [ReportLine], charged: impl Fn(&str) -> bool) {
    for l in lines {
        let uncharged = matches!(l.outcome, Outcome::Accepted { .. })
            && !l.iccid.as_deref().is_some_and(&charged);
        if uncharged {
            l.outcome = Outcome::Rejected {
                reason: NOT_CHARGED.to_owned(),
                message: "the store refused this SIM's charge: the receipt is claimed and was not charged \
                          (sent again, it is a duplicate)"
                    .to_owned(),
                disputed: false,
            };
        }
    }
}

/// One line of the batch report.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReportLine {
    /// Position in the batch.
    pub index: usize,
    /// The receipt's SIM, when it parsed that far.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub iccid: Option<String>,
    /// `session_id`/`seq`, when parsed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub session_id: Option<String>,
    /// Record number.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub seq: Option<u64>,
    /// What happened.
    #[serde(flatten)]
    pub outcome: Outcome,
}

/// The counts of a batch report.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Totals {
    /// Accepted receipts.
    pub accepted: usize,
    /// Duplicates.
    pub duplicate: usize,
    /// Rejected receipts.
    pub rejected: usize,
    /// Of those, kept as disputes the carrier signed (unsigned ones kept are not counted: [`Outcome::rejected`]).
    pub disputed: usize,
    /// Accepted with a gap before them.
    pub gaps: usize,
    /// Bytes charged.
    pub bytes_charged: u64,
}

/// Sum up a report.
pub fn totals(lines: &[ReportLine]) -> Totals {
    let mut t = Totals::default();
    for l in lines {
        match &l.outcome {
            Outcome::Accepted { bytes, gap } => {
                t.accepted += 1;
                t.gaps += usize::from(*gap);
                t.bytes_charged = t.bytes_charged.saturating_add(*bytes);
            }
            Outcome::Duplicate => t.duplicate += 1,
            Outcome::Rejected { disputed, .. } => {
                t.rejected += 1;
                t.disputed += usize::from(*disputed);
            }
        }
    }
    t
}

/// Whether an accepted receipt follows a gap: its session's previous record (`seq - 1`, the same SIM's) was
/// neither in this batch nor claimed before. The first record of a session (`seq == 1`) never does.
pub fn is_gap(seq: u64, previous_in_batch: bool, previous_claimed: bool) -> bool {
    seq > 1 && !previous_in_batch && !previous_claimed
}

/// What one batch charged one SIM.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SimCharge<'a> {
    /// The SIM.
    pub iccid: &'a str,
    /// Bytes charged.
    pub bytes: u64,
    /// Receipts accepted.
    pub receipts: u64,
}

/// The batch's one `usage_charged` ledger entry (the ledger takes debits per batch): its id, the totals, and
/// every SIM's charge as `iccid:bytes:receipts`, comma-separated in ICCID order. One entry per batch rather
/// than one per SIM: a feed's batch names up to [`MAX_BATCH`] SIMs, and every ledger entry is a chained
/// write. `None` when nothing was charged.
pub fn charge_entry(batch: &str, charges: &[SimCharge<'_>]) -> Option<crate::ledger::EntryFields> {
    let mut charged: Vec<&SimCharge<'_>> = charges.iter().filter(|c| c.receipts > 0).collect();
    if charged.is_empty() {
        return None;
    }
    charged.sort_by_key(|c| c.iccid);
    let bytes = charged.iter().fold(0u64, |t, c| t.saturating_add(c.bytes));
    let receipts: u64 = charged.iter().map(|c| c.receipts).sum();
    let list = charged
        .iter()
        .map(|c| format!("{}:{}:{}", c.iccid, c.bytes, c.receipts))
        .collect::<Vec<_>>()
        .join(",");
    let mut fields = crate::ledger::EntryFields::default()
        .detail("batch", batch)
        .detail("bytes", bytes.to_string())
        .detail("receipts", receipts.to_string())
        .detail("sims", charged.len().to_string())
        .detail("charges", list);
    if let [one] = charged.as_slice() {
        fields = fields.detail("iccid", one.iccid);
    }
    Some(fields)
}

/// The per-SIM charges of a `usage_charged` entry's `charges` detail ([`charge_entry`]): `(iccid, bytes,
/// receipts)`, or `None` if it is not in that form.
pub fn parse_charges(list: &str) -> Option<Vec<(String, u64, u64)>> {
    list.split(',')
        .map(|item| {
            let mut parts = item.split(':');
            let iccid = parts.next()?.to_owned();
            let bytes = parts.next()?.parse().ok()?;
            let receipts = parts.next()?.parse().ok()?;
            parts.next().is_none().then_some((iccid, bytes, receipts))
        })
        .collect()
}

/// The state of a receipt in a SIM's log.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LogState {
    /// Charged.
    Accepted,
    /// Refused and kept for the owner: never charged.
    Disputed,
}

/// Positions one chunk of a SIM's receipt log spans: a batch adds at most [`MAX_BATCH`] entries for a SIM.
pub const CHUNK_SPAN: u64 = MAX_BATCH as u64;

/// The log position of entry `index` of chunk `chunk` (both reserved by the SIM's chunk counter, chunks from
/// 1): chunk 1 holds positions 1..=1000, chunk 2 1001..=2000, and so on. A SIM's receipt log is written one
/// chunk per batch (one key, one store write, not one per receipt), so positions increase but have holes
/// after a chunk that is not full; `from` in a log query is a position.
pub fn log_position(chunk: u64, index: usize) -> u64 {
    (chunk.saturating_sub(1))
        .saturating_mul(CHUNK_SPAN)
        .saturating_add(index as u64 + 1)
}

/// The chunk that holds position `n` (positions below 1 are in chunk 1).
pub fn chunk_of(n: u64) -> u64 {
    n.saturating_sub(1) / CHUNK_SPAN + 1
}

/// One entry of a SIM's receipt log (in a chunk, `meter/<iccid>/c/<chunk>`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogEntry {
    /// Position in the log ([`log_position`]: increasing, from 1, not dense).
    pub n: u64,
    /// When it was ingested (unix seconds).
    pub at: u64,
    /// Accepted or disputed.
    pub state: LogState,
    /// Why it is disputed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// A gap in `seq` before it.
    #[serde(default)]
    pub gap: bool,
    /// The receipt as signed.
    pub receipt: WireReceipt,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batch_shapes() {
        assert!(matches!(parse_batch("nope"), Err(BatchError::Shape(_))));
        assert!(matches!(parse_batch("{}"), Err(BatchError::Shape(_))));
        assert_eq!(parse_batch("[]"), Err(BatchError::Empty));
        let many = format!("[{}]", vec!["{}"; MAX_BATCH + 1].join(","));
        assert_eq!(parse_batch(&many), Err(BatchError::TooLarge(MAX_BATCH + 1)));
        let one_bad = parse_batch(r#"{"receipts":[{"carrier":"x"}]}"#).unwrap();
        assert_eq!(one_bad.len(), 1);
        assert!(matches!(&one_bad[0], Err(ReceiptError::Malformed { .. })));
    }

    #[test]
    fn one_charge_entry_per_batch() {
        let c = |iccid, bytes, receipts| SimCharge {
            iccid,
            bytes,
            receipts,
        };
        assert_eq!(charge_entry("b1", &[]), None);
        assert_eq!(
            charge_entry("b1", &[c("8901", 0, 0)]),
            None,
            "nothing charged"
        );
        let f = charge_entry(
            "b1",
            &[c("8902", 300, 2), c("8901", 100, 1), c("8903", 0, 0)],
        )
        .unwrap();
        let d = |k: &str| f.details.get(k).map(String::as_str);
        assert_eq!(d("batch"), Some("b1"));
        assert_eq!(d("bytes"), Some("400"));
        assert_eq!(d("receipts"), Some("3"));
        assert_eq!(d("sims"), Some("2"));
        assert_eq!(d("charges"), Some("8901:100:1,8902:300:2"));
        assert_eq!(d("iccid"), None, "two SIMs: no single iccid");
        assert_eq!(
            parse_charges(d("charges").unwrap()),
            Some(vec![("8901".into(), 100, 1), ("8902".into(), 300, 2)])
        );
        let one = charge_entry("b2", &[c("8901", 7, 1)]).unwrap();
        assert_eq!(one.details.get("iccid").map(String::as_str), Some("8901"));
        assert_eq!(parse_charges("8901:x:1"), None);
        assert_eq!(parse_charges("8901:1:1:9"), None);
    }

    #[test]
    fn log_positions_and_chunks_agree() {
        assert_eq!(log_position(1, 0), 1);
        assert_eq!(log_position(1, 999), 1_000);
        assert_eq!(log_position(2, 0), 1_001);
        assert_eq!(log_position(3, 4), 2_005);
        assert_eq!(chunk_of(0), 1);
        assert_eq!(chunk_of(1), 1);
        assert_eq!(chunk_of(1_000), 1);
        assert_eq!(chunk_of(1_001), 2);
        for chunk in [1, 2, 17, 1 << 40] {
            for index in [0, 1, MAX_BATCH - 1] {
                let n = log_position(chunk, index);
                assert_eq!(chunk_of(n), chunk, "{chunk} {index}");
                assert!(n > log_position(chunk - 1, MAX_BATCH - 1) || chunk == 1);
            }
        }
    }

    #[test]
    fn gaps() {
        assert!(!is_gap(1, false, false), "a session starts at 1");
        assert!(is_gap(5, false, false));
        assert!(!is_gap(5, true, false));
        assert!(!is_gap(5, false, true));
    }

    #[test]
    fn totals_count_each_outcome() {
        let line = |outcome| ReportLine {
            index: 0,
            iccid: None,
            session_id: None,
            seq: None,
            outcome,
        };
        let t = totals(&[
            line(Outcome::Accepted {
                bytes: 10,
                gap: true,
            }),
            line(Outcome::Accepted {
                bytes: 5,
                gap: false,
            }),
            line(Outcome::Duplicate),
            line(Outcome::rejected(
                &ReceiptError::PlmnNotAllowed("262-01".into()),
                true,
            )),
            // Kept, but unsigned: not told (it would tell a stranger the SIM is metered here).
            line(Outcome::rejected(&ReceiptError::ZeroSeq, true)),
            line(Outcome::rejected(
                &ReceiptError::UnknownSim("1".into()),
                false,
            )),
        ]);
        assert_eq!(
            t,
            Totals {
                accepted: 2,
                duplicate: 1,
                rejected: 3,
                disputed: 1,
                gaps: 1,
                bytes_charged: 15
            }
        );
    }

    #[test]
    fn uncharged_sims_receipts_are_reported_refused() {
        let line = |iccid: &str, outcome| ReportLine {
            index: 0,
            iccid: Some(iccid.into()),
            session_id: Some("s".into()),
            seq: Some(1),
            outcome,
        };
        let accepted = Outcome::Accepted {
            bytes: 7,
            gap: false,
        };
        let mut lines = vec![
            line("a", accepted.clone()),
            line("b", accepted.clone()),
            line("b", Outcome::Duplicate),
        ];
        mark_uncharged(&mut lines, |iccid| iccid == "a");
        assert_eq!(lines[0].outcome, accepted);
        assert!(
            matches!(&lines[1].outcome, Outcome::Rejected { reason, disputed: false, .. } if reason == NOT_CHARGED)
        );
        assert_eq!(lines[2].outcome, Outcome::Duplicate);
        let t = totals(&lines);
        assert_eq!((t.accepted, t.rejected, t.bytes_charged), (1, 1, 7));
    }

    #[test]
    fn report_lines_serialise_flat() {
        let l = ReportLine {
            index: 3,
            iccid: Some("8901".into()),
            session_id: Some("s".into()),
            seq: Some(2),
            outcome: Outcome::Duplicate,
        };
        let v = serde_json::to_value(&l).unwrap();
        assert_eq!(v["status"], "duplicate");
        assert_eq!(v["index"], 3);
    }
}
