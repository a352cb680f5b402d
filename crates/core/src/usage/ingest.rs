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
    /// Verified and claimed, and counted on its SIM's used counter, but reported after the SIM's terminate
    /// beyond what the close counted as used (its used counter then, with the grants still outstanding: kernel
    /// `Account::payer_share`; for a switched-away SIM, the close of the SIM its usage draws on). It is real
    /// carrier usage, but its payer was refunded the rest and pays no more: `absorbed` bytes are the
    /// facilitator's loss, not a charge; `bytes` (any part within what the close counted) is charged. The
    /// ledger's `usage_charged` names the absorbed bytes apart ([`charge_entry`]).
    AfterClose {
        /// Bytes charged to the payer.
        bytes: u64,
        /// Bytes absorbed (charged to nobody).
        absorbed: u64,
        /// As for [`Outcome::Accepted`].
        gap: bool,
    },
    /// Verified and claimed, but the store failed its SIM's charge without saying whether it was applied (a
    /// lost reply or a timeout: the `increment` may have landed). Neither "charged" nor "not charged" would be
    /// true: the ledger names it apart (`charge_unknown`, [`charge_entry`]) and the operator is told. Sent
    /// again it is a duplicate (its claim stays).
    ChargeUnknown {
        /// The receipt's bytes, which the SIM's counter may or may not hold.
        bytes: u64,
    },
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

/// The `reason` of a receipt verified and claimed whose SIM's charge was never tried ([`mark_uncharged`]).
pub const NOT_CHARGED: &str = "not_charged";

/// A batch whose charges stopped at a store failure, and whose ledger events the answer itself carries (they
/// could not be held either): the accepted receipts of `unknown`, the SIM whose charge failed, are
/// [`Outcome::ChargeUnknown`] (a failed `increment` may have been applied: its reply lost, or timed out), and
/// those of the SIMs after it, whose charge was never tried (`charged` says which were charged), are refused
/// with reason [`NOT_CHARGED`]; so the report and its totals say what was charged, and what may have been.
/// Their claims stay (a claim is never given back: that could charge a receipt twice), so sending them again is
/// a duplicate: at most once, in the payer's favour, as after a crash between a claim and its charge.
pub fn mark_uncharged(
    lines: &mut [ReportLine],
    charged: impl Fn(&str) -> bool,
    unknown: Option<&str>,
) {
    for l in lines {
        let Outcome::Accepted { bytes, .. } = l.outcome else {
            continue;
        };
        let iccid = l.iccid.as_deref();
        if iccid.is_some_and(&charged) {
            continue;
        }
        l.outcome = if iccid.is_some() && iccid == unknown {
            Outcome::ChargeUnknown { bytes }
        } else {
            Outcome::Rejected {
                reason: NOT_CHARGED.to_owned(),
                message: "the batch stopped at a store failure before this SIM's charge: the receipt is claimed \
                          and was not charged (sent again, it is a duplicate)"
                    .to_owned(),
                disputed: false,
            }
        };
    }
}

/// Of the bytes a batch counted for SIM `iccid`, `absorbed` were reported after its close beyond what the close
/// counted (kernel `Account::payer_share`): its accepted receipts, the batch's last first (their bytes are the
/// top of the batch's range on the counter), become [`Outcome::AfterClose`] until they hold those bytes.
pub fn absorb(lines: &mut [ReportLine], iccid: &str, absorbed: u64) {
    let mut left = absorbed;
    for l in lines.iter_mut().rev() {
        if left == 0 {
            return;
        }
        let Outcome::Accepted { bytes, gap } = l.outcome else {
            continue;
        };
        if l.iccid.as_deref() != Some(iccid) {
            continue;
        }
        let take = bytes.min(left);
        left -= take;
        l.outcome = Outcome::AfterClose {
            bytes: bytes - take,
            absorbed: take,
            gap,
        };
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
    /// Bytes charged to payers.
    pub bytes_charged: u64,
    /// Receipts reported after their SIM's close ([`Outcome::AfterClose`]).
    pub after_close: usize,
    /// Their bytes absorbed (charged to nobody).
    pub bytes_absorbed: u64,
    /// Receipts whose charge is unknown ([`Outcome::ChargeUnknown`]).
    pub charge_unknown: usize,
    /// Their bytes.
    pub bytes_unknown: u64,
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
            Outcome::AfterClose {
                bytes,
                absorbed,
                gap,
            } => {
                t.after_close += 1;
                t.gaps += usize::from(*gap);
                t.bytes_charged = t.bytes_charged.saturating_add(*bytes);
                t.bytes_absorbed = t.bytes_absorbed.saturating_add(*absorbed);
            }
            Outcome::ChargeUnknown { bytes } => {
                t.charge_unknown += 1;
                t.bytes_unknown = t.bytes_unknown.saturating_add(*bytes);
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
    /// Bytes charged to the payer (with `unknown`: the bytes whose charge is unknown).
    pub bytes: u64,
    /// Receipts accepted.
    pub receipts: u64,
    /// Bytes counted but absorbed, reported after the close ([`Outcome::AfterClose`]).
    pub absorbed: u64,
    /// The store failed the charge without saying whether it landed ([`Outcome::ChargeUnknown`]).
    pub unknown: bool,
}

/// The batch's one `usage_charged` ledger entry (the ledger takes debits per batch): its id, the totals charged
/// to payers, and every SIM's charge as `iccid:bytes:receipts` in `charges`, comma-separated in ICCID order;
/// beside them, never in them, the bytes counted but absorbed after a close (`absorbed`: `iccid:bytes`, with
/// `bytes_absorbed`) and a charge the store failed without saying whether it landed (`charge_unknown`:
/// `iccid:bytes:receipts`, with `bytes_unknown`), so the ledger holds every debit the counters may hold, each
/// as what it is. One entry per batch rather than one per SIM: a feed's batch names up to [`MAX_BATCH`] SIMs,
/// and every ledger entry is a chained write. `None` when nothing was counted.
pub fn charge_entry(batch: &str, charges: &[SimCharge<'_>]) -> Option<crate::ledger::EntryFields> {
    let mut counted: Vec<&SimCharge<'_>> = charges.iter().filter(|c| c.receipts > 0).collect();
    if counted.is_empty() {
        return None;
    }
    counted.sort_by_key(|c| c.iccid);
    let charged: Vec<&&SimCharge<'_>> = counted
        .iter()
        .filter(|c| !c.unknown && (c.bytes > 0 || c.absorbed == 0))
        .collect();
    let bytes = charged.iter().fold(0u64, |t, c| t.saturating_add(c.bytes));
    let receipts: u64 = charged.iter().map(|c| c.receipts).sum();
    let mut fields = crate::ledger::EntryFields::default()
        .detail("batch", batch)
        .detail("bytes", bytes.to_string())
        .detail("receipts", receipts.to_string())
        .detail("sims", charged.len().to_string());
    if !charged.is_empty() {
        let list = charged
            .iter()
            .map(|c| format!("{}:{}:{}", c.iccid, c.bytes, c.receipts))
            .collect::<Vec<_>>()
            .join(",");
        fields = fields.detail("charges", list);
    }
    if let [one] = charged.as_slice() {
        fields = fields.detail("iccid", one.iccid);
    }
    let absorbed: Vec<_> = counted
        .iter()
        .filter(|c| !c.unknown && c.absorbed > 0)
        .collect();
    if !absorbed.is_empty() {
        let total = absorbed
            .iter()
            .fold(0u64, |t, c| t.saturating_add(c.absorbed));
        let list = absorbed
            .iter()
            .map(|c| format!("{}:{}", c.iccid, c.absorbed))
            .collect::<Vec<_>>()
            .join(",");
        fields = fields
            .detail("absorbed", list)
            .detail("bytes_absorbed", total.to_string());
    }
    let unknown: Vec<_> = counted.iter().filter(|c| c.unknown).collect();
    if !unknown.is_empty() {
        let total = unknown.iter().fold(0u64, |t, c| t.saturating_add(c.bytes));
        let list = unknown
            .iter()
            .map(|c| format!("{}:{}:{}", c.iccid, c.bytes, c.receipts))
            .collect::<Vec<_>>()
            .join(",");
        fields = fields
            .detail("charge_unknown", list)
            .detail("bytes_unknown", total.to_string());
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
            absorbed: 0,
            unknown: false,
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
        assert_eq!(d("absorbed"), None);
        assert_eq!(d("charge_unknown"), None);
    }

    /// A charge the store failed without saying whether it landed, and bytes absorbed after a close, are in
    /// the batch's entry beside the charges, never in them (before, the unknown charge was left out of the
    /// ledger although the SIM's counter may hold it, and usage after a close was listed as charged).
    #[test]
    fn a_charge_entry_names_unknown_and_absorbed_bytes_apart() {
        let c = |iccid, bytes, receipts, absorbed, unknown| SimCharge {
            iccid,
            bytes,
            receipts,
            absorbed,
            unknown,
        };
        let f = charge_entry(
            "b1",
            &[
                c("8901", 100, 1, 0, false),
                c("8902", 300, 2, 0, true),
                c("8903", 200, 2, 500, false),
                c("8904", 0, 1, 700, false),
            ],
        )
        .unwrap();
        let d = |k: &str| f.details.get(k).map(String::as_str);
        assert_eq!(d("charges"), Some("8901:100:1,8903:200:2"));
        assert_eq!(
            (d("bytes"), d("receipts"), d("sims")),
            (Some("300"), Some("3"), Some("2"))
        );
        assert_eq!(d("absorbed"), Some("8903:500,8904:700"));
        assert_eq!(d("bytes_absorbed"), Some("1200"));
        assert_eq!(d("charge_unknown"), Some("8902:300:2"));
        assert_eq!(d("bytes_unknown"), Some("300"));
        // Nothing charged to a payer: still an entry, with no charges listed.
        let f = charge_entry("b2", &[c("8904", 0, 1, 700, false)]).unwrap();
        let d = |k: &str| f.details.get(k).map(String::as_str);
        assert_eq!(
            (d("bytes"), d("charges"), d("iccid")),
            (Some("0"), None, None)
        );
        assert_eq!(d("absorbed"), Some("8904:700"));
        let f = charge_entry("b3", &[c("8902", 300, 2, 0, true)]).unwrap();
        assert_eq!(
            f.details.get("charge_unknown").map(String::as_str),
            Some("8902:300:2")
        );
    }

    /// A SIM's receipts in a batch whose bytes partly came after its close: the last ones absorb those bytes,
    /// the earlier stay charged; the totals tell them apart.
    #[test]
    fn receipts_after_a_close_are_absorbed_last_first() {
        let line = |iccid: &str, bytes| ReportLine {
            index: 0,
            iccid: Some(iccid.into()),
            session_id: Some("s".into()),
            seq: Some(1),
            outcome: Outcome::Accepted { bytes, gap: false },
        };
        let mut lines = vec![
            line("a", 300),
            line("b", 50),
            line("a", 400),
            line("a", 100),
        ];
        absorb(&mut lines, "a", 450);
        assert_eq!(
            lines[0].outcome,
            Outcome::Accepted {
                bytes: 300,
                gap: false
            }
        );
        assert_eq!(
            lines[1].outcome,
            Outcome::Accepted {
                bytes: 50,
                gap: false
            }
        );
        assert_eq!(
            lines[2].outcome,
            Outcome::AfterClose {
                bytes: 50,
                absorbed: 350,
                gap: false
            }
        );
        assert_eq!(
            lines[3].outcome,
            Outcome::AfterClose {
                bytes: 0,
                absorbed: 100,
                gap: false
            }
        );
        let t = totals(&lines);
        assert_eq!(
            (t.accepted, t.after_close, t.bytes_charged, t.bytes_absorbed),
            (2, 2, 400, 450)
        );
        let v = serde_json::to_value(&lines[3]).unwrap();
        assert_eq!(
            (&v["status"], &v["absorbed"]),
            (&serde_json::json!("after_close"), &serde_json::json!(100))
        );
        absorb(&mut lines, "b", 0);
        assert_eq!(
            lines[1].outcome,
            Outcome::Accepted {
                bytes: 50,
                gap: false
            }
        );
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
                bytes_charged: 15,
                ..Totals::default()
            }
        );
    }

    #[test]
    fn a_failed_charge_is_unknown_and_the_sims_after_it_not_charged() {
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
            line("c", accepted.clone()),
        ];
        // "a" charged, "b"'s charge failed at the store (it may have landed), "c" never tried.
        mark_uncharged(&mut lines, |iccid| iccid == "a", Some("b"));
        assert_eq!(lines[0].outcome, accepted);
        assert_eq!(lines[1].outcome, Outcome::ChargeUnknown { bytes: 7 });
        assert_eq!(lines[2].outcome, Outcome::Duplicate);
        assert!(
            matches!(&lines[3].outcome, Outcome::Rejected { reason, disputed: false, .. } if reason == NOT_CHARGED)
        );
        let t = totals(&lines);
        assert_eq!(
            (
                t.accepted,
                t.rejected,
                t.bytes_charged,
                t.charge_unknown,
                t.bytes_unknown
            ),
            (1, 1, 7, 1, 7)
        );
        assert_eq!(
            serde_json::to_value(&lines[1]).unwrap()["status"],
            "charge_unknown"
        );
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
