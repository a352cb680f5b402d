//! Zero trust over what the facilitator charges: every receipt a SIM's log says was charged is verified again
//! here, against the carrier signers **this agent pins** (its own copy of the carrier catalog, never the
//! facilitator's word), with the kernel's own receipt rules (`esim402_core::usage::receipt::verify`). A charged
//! receipt that does not verify, names another SIM or is charged twice is a dispute: its bytes are never
//! counted as used by this agent, so they never justify a top-up ([`on_low_balance`]).
//!
//! Pure: the watch loop fetches the log pages and keeps an [`Audit`] per SIM in the state directory.
//!
//! Rules a reader must not break:
//! - only [`Finding::Verified`] bytes count as used; the top-up decision looks at `credited - verified`, not at
//!   the facilitator's remaining balance, and `credited` is never less than what this agent itself paid for
//!   ([`crate::state::State::credit_floor`]: the activation's MB and every settled top-up's, as its state records them): a facilitator
//!   that under-reports its credit cannot make every tick "low" and have the agent pay top-up after top-up;
//! - the cursor only moves forward (`next` is the first log position not audited yet), so a restart never
//!   counts a receipt twice; a position it cannot move past (`u64::MAX`) ends the audit of that log
//!   ([`Audit::log_end`]).

use std::collections::{BTreeMap, BTreeSet};

use esim402_core::CarrierId;
use esim402_core::api_error::bounded;
use esim402_core::esim::{Catalog, Iccid, RoamingPolicy};
use esim402_core::usage::account::{Quota, decide_quota};
use esim402_core::usage::ingest::{LogEntry, LogState};
use esim402_core::usage::receipt::{SimTerms, verify};
use serde::{Deserialize, Serialize};

/// Disputes kept in the state, the newest; older ones are counted in [`Audit::disputes_dropped`] (their bytes
/// stay in [`Audit::disputed_bytes`]). A facilitator answering pages of malformed receipts cannot grow the
/// state file without bound.
pub const KEPT_DISPUTES: usize = 1_000;
/// Longest text of a dispute kept (`reason`, `session_id`, in characters): a facilitator's longer one is cut.
pub const KEPT_TEXT_CHARS: usize = 256;

/// A receipt this agent does not accept.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Dispute {
    /// Its position in the SIM's log.
    pub n: u64,
    /// Whether the facilitator charged it (a receipt the facilitator itself refused costs nothing).
    pub charged: bool,
    /// Why.
    pub reason: String,
    /// The bytes it claims.
    pub bytes: u64,
    /// Its session and record number, as it says.
    pub session_id: String,
    /// Its record number.
    pub seq: u64,
}

/// What one log entry turned out to be.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Finding {
    /// Charged, and it verifies: its bytes count.
    Verified {
        /// Log position.
        n: u64,
        /// Bytes.
        bytes: u64,
    },
    /// Disputed, by this agent (charged) or by the facilitator (not charged).
    Disputed(Dispute),
}

/// The audit of one SIM's log so far (kept in the state directory).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Audit {
    /// The first log position not audited yet (positions start at 1).
    pub next: u64,
    /// Bytes of charged receipts that verified.
    pub verified_bytes: u64,
    /// Bytes of charged receipts this agent disputes.
    pub disputed_bytes: u64,
    /// Every verified receipt's claim (a second charge of one is a dispute), a few ranges per session.
    #[serde(default, skip_serializing_if = "Claims::is_empty")]
    pub claimed: Claims,
    /// The claims as earlier versions kept them, one `carrier/session/seq` per receipt: moved into
    /// [`Audit::claimed`] by the next [`Audit::check`].
    #[serde(default, skip_serializing_if = "BTreeSet::is_empty")]
    pub claims: BTreeSet<String>,
    /// The newest disputes (at most [`KEPT_DISPUTES`]), oldest first.
    #[serde(default)]
    pub disputes: Vec<Dispute>,
    /// Disputes no longer kept in [`Audit::disputes`].
    #[serde(default, skip_serializing_if = "is_zero")]
    pub disputes_dropped: u64,
    /// The log reached position `u64::MAX`: there is no position after it to ask for, so nothing more of this
    /// log is audited (or counted as used).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub log_end: bool,
    /// The last top-up `watch` paid for this SIM, and the credit the facilitator reported before it: the
    /// facilitator's next figure must have risen by the top-up's bytes ([`TopUpCheck::unmet`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_top_up: Option<TopUpCheck>,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// The claims of verified receipts: `carrier/session` → the record numbers seen, as sorted, disjoint,
/// non-adjacent inclusive ranges. A session numbers its receipts in order, so a SIM's claims take a few entries
/// per session, not one per receipt for the SIM's life (only receipts that verified are claimed: a facilitator
/// cannot fragment them).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Claims(BTreeMap<String, Vec<(u64, u64)>>);

impl Claims {
    /// Record `seq` of `session` (`carrier/session`): `false` if it was already.
    pub fn insert(&mut self, session: String, seq: u64) -> bool {
        let ranges = self.0.entry(session).or_default();
        // The first range starting after `seq`; the one before it may hold it.
        let i = ranges.partition_point(|r| r.0 <= seq);
        if i > 0 && ranges[i - 1].1 >= seq {
            return false;
        }
        let joins_before = i > 0 && ranges[i - 1].1.checked_add(1) == Some(seq);
        let joins_after = i < ranges.len() && seq.checked_add(1) == Some(ranges[i].0);
        match (joins_before, joins_after) {
            (true, true) => {
                ranges[i - 1].1 = ranges[i].1;
                ranges.remove(i);
            }
            (true, false) => ranges[i - 1].1 = seq,
            (false, true) => ranges[i].0 = seq,
            (false, false) => ranges.insert(i, (seq, seq)),
        }
        true
    }

    /// Whether nothing is claimed.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The ranges kept, all sessions together.
    pub fn ranges(&self) -> usize {
        self.0.values().map(Vec::len).sum()
    }
}

/// A top-up paid by `watch`, to check the facilitator credited it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct TopUpCheck {
    /// `credited_bytes` as the facilitator reported it before the top-up.
    pub credited_before: u64,
    /// The top-up's bytes.
    pub bytes: u64,
}

impl TopUpCheck {
    /// Whether `credited` (the facilitator's figure now) falls short of the credit before the top-up plus the
    /// top-up: the facilitator took the payment without crediting it (yet).
    pub fn unmet(&self, credited: u64) -> bool {
        credited < self.credited_before.saturating_add(self.bytes)
    }
}

/// What the agent knows of the SIM whose log it audits.
#[derive(Debug, Clone, Copy)]
pub struct SimView<'a> {
    /// The SIM.
    pub iccid: &'a Iccid,
    /// The carrier it was bought on.
    pub carrier: &'a CarrierId,
    /// The roaming policy of its region (the pinned catalog's).
    pub roaming: &'a RoamingPolicy,
}

impl Audit {
    /// Audit one log entry (entries before the cursor are skipped: `None`).
    pub fn check(
        &mut self,
        entry: &LogEntry,
        sim: SimView<'_>,
        pinned: &Catalog,
        now: u64,
    ) -> Option<Finding> {
        if self.log_end || entry.n < self.next.max(1) {
            return None;
        }
        let charged = entry.state != LogState::Disputed;
        let Some(next) = entry.n.checked_add(1) else {
            // No position after it: the log cannot be followed further (a page from `u64::MAX + 1` does not
            // exist). Disputed, not counted; and the audit of this log ends here.
            self.log_end = true;
            self.next = u64::MAX;
            return self.dispute(
                entry,
                charged,
                "at log position u64::MAX, past which the log cannot be followed: not counted, and no later \
                 receipt of this log is audited"
                    .into(),
            );
        };
        self.next = next;
        let wire = &entry.receipt;
        if !charged {
            let why = entry.reason.clone().unwrap_or_else(|| "disputed".into());
            return self.dispute(entry, false, format!("refused by the facilitator: {why}"));
        }
        let receipt = match wire.parse() {
            Ok(r) => r,
            Err(e) => return self.dispute(entry, true, format!("charged, but malformed: {e}")),
        };
        if &receipt.iccid != sim.iccid {
            return self.dispute(
                entry,
                true,
                format!("charged, but the receipt is for SIM {}", receipt.iccid),
            );
        }
        let signer_of = |c: &CarrierId| pinned.carrier(c).and_then(|c| c.receipt_signer);
        let terms = SimTerms {
            carrier: sim.carrier,
            roaming: sim.roaming,
            // What the facilitator checks of the SIM's time on it (its account's opening, a switch's
            // retirement) is not in the agent's records.
            opened_at: None,
            retired_at: None,
        };
        if let Err(e) = verify(&receipt, signer_of, Some(terms), now) {
            return self.dispute(entry, true, format!("charged, but it does not verify: {e}"));
        }
        // Claims kept by an earlier version, one per receipt, join the ranges.
        for legacy in std::mem::take(&mut self.claims) {
            if let Some((session, seq)) = legacy.rsplit_once('/')
                && let Ok(seq) = seq.parse()
            {
                self.claimed.insert(session.to_owned(), seq);
            }
        }
        let (carrier, session, seq) = receipt.claim_id();
        if !self.claimed.insert(format!("{carrier}/{session}"), seq) {
            return self.dispute(entry, true, "charged twice".into());
        }
        let bytes = bytes_of(entry);
        self.verified_bytes = self.verified_bytes.saturating_add(bytes);
        Some(Finding::Verified { n: entry.n, bytes })
    }

    fn dispute(&mut self, entry: &LogEntry, charged: bool, reason: String) -> Option<Finding> {
        let d = Dispute {
            n: entry.n,
            charged,
            reason: bounded(reason, KEPT_TEXT_CHARS),
            bytes: bytes_of(entry),
            session_id: bounded(entry.receipt.session_id.clone(), KEPT_TEXT_CHARS),
            seq: entry.receipt.seq,
        };
        if charged {
            self.disputed_bytes = self.disputed_bytes.saturating_add(d.bytes);
        }
        if self.disputes.len() >= KEPT_DISPUTES {
            let over = self.disputes.len() + 1 - KEPT_DISPUTES;
            self.disputes.drain(..over);
            self.disputes_dropped = self.disputes_dropped.saturating_add(over as u64);
        }
        self.disputes.push(d.clone());
        Some(Finding::Disputed(d))
    }
}

fn bytes_of(entry: &LogEntry) -> u64 {
    entry
        .receipt
        .bytes_up
        .saturating_add(entry.receipt.bytes_down)
}

/// What to do about the facilitator's low-balance 402.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LowBalance {
    /// Verified usage alone brings the SIM to the low-water mark or below: pay a top-up.
    TopUp,
    /// By this agent's count the SIM still has `own_remaining` bytes: the shortfall is usage it could not
    /// verify (disputed, or charged but not listed yet). Nothing is paid.
    Withhold {
        /// Bytes left by this agent's count.
        own_remaining: u64,
    },
}

/// The most reserved bytes [`on_low_balance`] takes the facilitator's word for: a carrier asking for the default
/// grant every 30 s for the half hour a grant is held (kernel `usage::grant`), with room to spare. A carrier
/// holding more (larger grants) leaves a top-up withheld until its grants are reported or lapse.
pub const MAX_RESERVED_COUNTED: u64 = 64 * esim402_core::usage::account::DEFAULT_GRANT_BYTES;

/// Decide the low-balance 402 from what was credited — the facilitator's figure `reported`, never below `floor`
/// ([`crate::state::State::credit_floor`]: what this agent paid for; overstating only hurts the facilitator, understating would make
/// the agent pay again) — what this agent verified as used, and the bytes the carrier's quota grants hold
/// (`reserved`: granted, not reported yet; not charges, but not grantable either, so without a top-up the
/// network is refused quota), with the kernel's own quota rule. The facilitator's `reserved` figure counts up to
/// [`MAX_RESERVED_COUNTED`]: one that overstates it cannot make this agent pay top-ups at will.
pub fn on_low_balance(reported: u64, floor: u64, reserved: u64, audit: &Audit) -> LowBalance {
    let reserved = reserved.min(MAX_RESERVED_COUNTED);
    let credited = reported.max(floor);
    let own = i128::from(credited) - i128::from(audit.verified_bytes) - i128::from(reserved);
    match decide_quota(own, None) {
        Quota::Low { .. } => LowBalance::TopUp,
        Quota::Grant { remaining, .. } => LowBalance::Withhold {
            own_remaining: remaining,
        },
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "tests")]
    use esim402_core::esim::Plmn;
    use esim402_core::usage::account::LOW_WATER_BYTES;
    use esim402_core::usage::receipt::{Receipt, dev_signing_key};

    use super::*;

    const NOW: u64 = 1_800_000_000;

    fn iccid(n: &str) -> Iccid {
        Iccid::with_check_digit(n).unwrap()
    }

    fn receipt(sim: &Iccid, seq: u64, bytes: u64) -> Receipt {
        Receipt {
            carrier: CarrierId::parse("tmobile").unwrap(),
            iccid: sim.clone(),
            plmn: Plmn::parse("310-260").unwrap(),
            session_id: "s1".into(),
            seq,
            window_start: NOW - 600,
            window_end: NOW - 1,
            bytes_up: bytes / 2,
            bytes_down: bytes - bytes / 2,
            signature: vec![],
            page: None,
        }
    }

    fn entry(n: u64, r: &Receipt, key: &k256::ecdsa::SigningKey, state: LogState) -> LogEntry {
        LogEntry {
            n,
            at: NOW,
            state,
            reason: (state == LogState::Disputed).then(|| "bad_signature".into()),
            gap: false,
            receipt: r.clone().sign(key).unwrap().to_wire(),
        }
    }

    fn tmobile_key() -> k256::ecdsa::SigningKey {
        dev_signing_key(&CarrierId::parse("tmobile").unwrap())
    }

    fn run(audit: &mut Audit, sim: &Iccid, entries: &[LogEntry]) -> Vec<Finding> {
        let carrier = CarrierId::parse("tmobile").unwrap();
        let roaming = RoamingPolicy {
            countries: vec!["US".into()],
            ..RoamingPolicy::default()
        };
        let view = SimView {
            iccid: sim,
            carrier: &carrier,
            roaming: &roaming,
        };
        entries
            .iter()
            .filter_map(|e| audit.check(e, view, Catalog::builtin(), NOW))
            .collect()
    }

    #[test]
    fn signed_receipts_count_and_the_cursor_never_counts_twice() {
        let sim = iccid("890126000000000001");
        let mut a = Audit::default();
        let log = [
            entry(
                1,
                &receipt(&sim, 1, 1_000),
                &tmobile_key(),
                LogState::Accepted,
            ),
            entry(
                2,
                &receipt(&sim, 2, 2_000),
                &tmobile_key(),
                LogState::Accepted,
            ),
        ];
        assert_eq!(
            run(&mut a, &sim, &log),
            vec![
                Finding::Verified { n: 1, bytes: 1_000 },
                Finding::Verified { n: 2, bytes: 2_000 }
            ]
        );
        assert_eq!((a.next, a.verified_bytes, a.disputed_bytes), (3, 3_000, 0));
        assert!(run(&mut a, &sim, &log).is_empty(), "the same page again");
        assert_eq!(a.verified_bytes, 3_000);
    }

    #[test]
    fn charged_receipts_that_do_not_verify_are_disputed_and_never_counted() {
        let sim = iccid("890126000000000001");
        let other = iccid("890126000000000002");
        let forger = k256::ecdsa::SigningKey::from_slice(&[7u8; 32]).unwrap();
        let mut roaming_out = receipt(&sim, 5, 400);
        roaming_out.plmn = Plmn::parse("262-01").unwrap();
        let mut future = receipt(&sim, 6, 500);
        future.window_end = NOW + 3_600;
        let log = [
            entry(1, &receipt(&sim, 1, 100), &forger, LogState::Accepted),
            entry(
                2,
                &receipt(&other, 2, 200),
                &tmobile_key(),
                LogState::Accepted,
            ),
            entry(
                3,
                &receipt(&sim, 3, 300),
                &tmobile_key(),
                LogState::Accepted,
            ),
            entry(
                4,
                &receipt(&sim, 3, 300),
                &tmobile_key(),
                LogState::Accepted,
            ),
            entry(5, &roaming_out, &tmobile_key(), LogState::Accepted),
            entry(6, &future, &tmobile_key(), LogState::Accepted),
            entry(7, &receipt(&sim, 7, 700), &forger, LogState::Disputed),
        ];
        let mut a = Audit::default();
        let found = run(&mut a, &sim, &log);
        let reasons: Vec<&str> = found
            .iter()
            .map(|f| match f {
                Finding::Disputed(d) => d.reason.as_str(),
                Finding::Verified { .. } => "verified",
            })
            .collect();
        assert!(reasons[0].contains("does not verify"), "{}", reasons[0]);
        assert!(reasons[1].contains("for SIM"), "{}", reasons[1]);
        assert_eq!(reasons[2], "verified");
        assert_eq!(reasons[3], "charged twice");
        assert!(
            reasons[4].contains("does not verify"),
            "roaming: {}",
            reasons[4]
        );
        assert!(
            reasons[5].contains("does not verify"),
            "future: {}",
            reasons[5]
        );
        assert!(
            reasons[6].starts_with("refused by the facilitator"),
            "{}",
            reasons[6]
        );
        assert_eq!(a.verified_bytes, 300);
        assert_eq!(
            a.disputed_bytes,
            100 + 200 + 300 + 400 + 500,
            "charged disputes"
        );
        assert_eq!(a.disputes.len(), 6);
        assert!(
            !a.disputes[5].charged,
            "the facilitator's own refusal cost nothing"
        );
    }

    /// A SIM's claims take a few ranges per session, not one entry per receipt for its life (a review,
    /// thirty-first session: the state file grew with every receipt and was rewritten each tick); a second
    /// charge is still found anywhere in a range, and claims an earlier version kept join them.
    #[test]
    fn claims_are_ranges_and_still_catch_a_second_charge() {
        let mut c = Claims::default();
        for seq in (1..=500).chain(502..=1_000) {
            assert!(c.insert("tmobile/s1".into(), seq));
        }
        assert_eq!(c.ranges(), 2);
        assert!(c.insert("tmobile/s1".into(), 501), "the gap");
        assert_eq!(c.ranges(), 1, "joined");
        for seq in [1, 500, 501, 1_000] {
            assert!(!c.insert("tmobile/s1".into(), seq), "{seq}");
        }
        assert!(c.insert("tmobile/s2".into(), 1), "another session");
        assert!(c.insert("tmobile/s1".into(), 0) && c.insert("tmobile/s1".into(), u64::MAX));
        assert!(!c.insert("tmobile/s1".into(), u64::MAX));
        assert_eq!(c.ranges(), 3);

        let sim = iccid("890126000000000001");
        let log: Vec<LogEntry> = (1..=300)
            .map(|seq| {
                entry(
                    seq,
                    &receipt(&sim, seq, 10),
                    &tmobile_key(),
                    LogState::Accepted,
                )
            })
            .collect();
        // An earlier version's state: one claim per receipt.
        let mut a: Audit = serde_json::from_value(serde_json::json!({
            "next": 1, "verified_bytes": 0, "disputed_bytes": 0,
            "claims": ["tmobile/s1/7", "tmobile/s1/8"],
        }))
        .unwrap();
        let found = run(&mut a, &sim, &log);
        let twice = found
            .iter()
            .filter(|f| matches!(f, Finding::Disputed(d) if d.reason == "charged twice"))
            .count();
        assert_eq!(twice, 2, "the two claimed before");
        assert_eq!(a.verified_bytes, 298 * 10);
        assert!(a.claims.is_empty());
        assert_eq!(a.claimed.ranges(), 1);
        let saved = serde_json::to_value(&a).unwrap();
        assert_eq!(
            saved["claimed"]["tmobile/s1"],
            serde_json::json!([[1, 300]])
        );
        assert!(saved.get("claims").is_none(), "{saved}");
    }

    /// Disputes are kept up to [`KEPT_DISPUTES`], the newest, their text cut: a facilitator answering pages of
    /// malformed receipts with long session ids cannot grow the state without bound.
    #[test]
    fn disputes_kept_are_bounded() {
        let sim = iccid("890126000000000001");
        let forger = k256::ecdsa::SigningKey::from_slice(&[7u8; 32]).unwrap();
        let mut long = receipt(&sim, 1, 10);
        long.session_id = "x".repeat(4_096);
        let log: Vec<LogEntry> = (1..=(KEPT_DISPUTES as u64 + 5))
            .map(|n| entry(n, &long, &forger, LogState::Accepted))
            .collect();
        let mut a = Audit::default();
        let found = run(&mut a, &sim, &log);
        assert_eq!(found.len(), KEPT_DISPUTES + 5);
        assert_eq!(a.disputes.len(), KEPT_DISPUTES);
        assert_eq!(a.disputes_dropped, 5);
        assert_eq!(a.disputes[0].n, 6, "the oldest dropped");
        assert_eq!(
            a.disputed_bytes,
            10 * (KEPT_DISPUTES as u64 + 5),
            "all counted"
        );
        assert!(a.disputes[0].session_id.chars().count() <= KEPT_TEXT_CHARS + 1);
        assert!(a.disputes[0].reason.chars().count() <= KEPT_TEXT_CHARS + 1);
    }

    #[test]
    fn an_unpinned_carrier_is_disputed() {
        let sim = iccid("890126000000000001");
        let pinned = Catalog::from_toml(&esim402_core::esim::catalog::BUILTIN_TOML.replace(
            "0xA9De341e526Be47F2eB5E47B9a85D26D65538809",
            "0x0000000000000000000000000000000000000001",
        ))
        .unwrap();
        let carrier = CarrierId::parse("tmobile").unwrap();
        let roaming = RoamingPolicy::default();
        let view = SimView {
            iccid: &sim,
            carrier: &carrier,
            roaming: &roaming,
        };
        let mut a = Audit::default();
        let e = entry(
            1,
            &receipt(&sim, 1, 100),
            &tmobile_key(),
            LogState::Accepted,
        );
        assert!(matches!(
            a.check(&e, view, &pinned, NOW),
            Some(Finding::Disputed(Dispute { charged: true, .. }))
        ));
    }

    #[test]
    fn only_verified_usage_justifies_a_top_up() {
        let credited = 1_000_000;
        // At the low-water mark is low (its last bytes are never granted), a byte above it is not.
        let mut a = Audit {
            verified_bytes: credited - LOW_WATER_BYTES,
            ..Audit::default()
        };
        assert_eq!(on_low_balance(credited, 0, 0, &a), LowBalance::TopUp);
        a.verified_bytes = credited - LOW_WATER_BYTES - 1;
        a.disputed_bytes = 500_000;
        assert_eq!(
            on_low_balance(credited, 0, 0, &a),
            LowBalance::Withhold {
                own_remaining: LOW_WATER_BYTES + 1
            },
            "low only because of disputed bytes"
        );
        a.verified_bytes = credited + 5;
        assert_eq!(
            on_low_balance(credited, 0, 0, &a),
            LowBalance::TopUp,
            "overdrawn"
        );
    }

    /// Fix: a log entry at position `u64::MAX` is disputed and ends the audit of that log (nothing after it can be
    /// asked for). Before, `entry.n + 1` overflowed: a panic in a debug build, the cursor wrapped to 0 in release
    /// (every receipt audited, and counted, again).
    #[test]
    fn a_log_position_that_cannot_be_followed_ends_the_audit() {
        let sim = iccid("890126000000000001");
        let mut a = Audit::default();
        let log = [
            entry(
                1,
                &receipt(&sim, 1, 1_000),
                &tmobile_key(),
                LogState::Accepted,
            ),
            entry(
                u64::MAX,
                &receipt(&sim, 2, 2_000),
                &tmobile_key(),
                LogState::Accepted,
            ),
        ];
        let found = run(&mut a, &sim, &log);
        assert_eq!(found.len(), 2, "{found:?}");
        assert!(
            matches!(&found[1], Finding::Disputed(d) if d.n == u64::MAX && d.charged),
            "{found:?}"
        );
        assert!(a.log_end);
        assert_eq!((a.verified_bytes, a.disputed_bytes), (1_000, 2_000));
        let later = entry(
            3,
            &receipt(&sim, 3, 3_000),
            &tmobile_key(),
            LogState::Accepted,
        );
        assert!(run(&mut a, &sim, &[later]).is_empty(), "nothing after it");
        assert!(run(&mut a, &sim, &log).is_empty(), "nor it again");
        assert_eq!(a.verified_bytes, 1_000);
    }

    /// Fix: the credit the top-up decision counts is never below what this agent itself paid for (the floor:
    /// `State::credit_floor`, tested with the state): a facilitator reporting less (a top-up it never credited,
    /// or no credit at all) gets no top-up paid. Before, `credited_bytes` was taken as reported, so an
    /// under-report made every tick "low" and paid a top-up each time.
    #[test]
    fn the_credit_counted_is_never_below_what_the_agent_paid_for() {
        let a = Audit {
            verified_bytes: 950_000,
            ..Audit::default()
        };
        // The facilitator credits the activation only (the paid 10 MB top-up, in the floor, never shows).
        assert_eq!(
            on_low_balance(1_000_000, 11_000_000, 0, &a),
            LowBalance::Withhold {
                own_remaining: 10_050_000
            }
        );
        assert_eq!(
            on_low_balance(0, 0, 0, &a),
            LowBalance::TopUp,
            "nothing known"
        );
        // 10.05 MB verified left, 9.96 MB of it held by the carrier's grants: the network gets no more quota
        // without a top-up, so it is paid (reserved bytes are not charges, but not grantable either).
        assert_eq!(
            on_low_balance(11_000_000, 0, 9_960_000, &a),
            LowBalance::TopUp
        );
        assert!(matches!(
            on_low_balance(11_000_000, 0, 9_900_000, &a),
            LowBalance::Withhold { .. }
        ));
        // A facilitator overstating what is reserved is believed only up to the bound.
        assert!(matches!(
            on_low_balance(200_000_000, 0, 200_000_000, &a),
            LowBalance::Withhold { .. }
        ));
        assert_eq!(
            on_low_balance(1_000_000, 0, 0, &a),
            LowBalance::TopUp,
            "low indeed"
        );
        let check = TopUpCheck {
            credited_before: 1_000_000,
            bytes: 10_000_000,
        };
        assert!(check.unmet(1_000_000));
        assert!(!check.unmet(11_000_000));
    }

    /// A full log page (1 000 entries, the facilitator's most) fits well within the answer limit, even with
    /// long fields and the longest page proof: measured, about 2 MB for 4 MiB allowed.
    #[test]
    fn a_full_receipt_page_fits_the_answer_limit() {
        use esim402_core::usage::page::PageProof;
        let sim = iccid("890126000000000001");
        let mut r = receipt(&sim, 1, 1_000);
        r.session_id = "s".repeat(64);
        let mut e = entry(1, &r, &tmobile_key(), LogState::Disputed);
        e.reason = Some("bad_signature: the receipt's signer is not the carrier's".into());
        e.receipt.page = Some(PageProof {
            count: 1 << 20,
            proof: vec![alloy_primitives::B256::repeat_byte(0xab); 20],
        });
        let page: Vec<LogEntry> = (0..1_000u64)
            .map(|n| LogEntry {
                n: u64::MAX - n,
                at: u64::MAX,
                receipt: esim402_core::usage::receipt::WireReceipt {
                    seq: u64::MAX - n,
                    ..e.receipt.clone()
                },
                ..e.clone()
            })
            .collect();
        let body = serde_json::json!({"receipts": page, "next": u64::MAX}).to_string();
        eprintln!("a full receipt page: {} bytes", body.len());
        assert!(
            body.len() < crate::client::MAX_ANSWER / 2,
            "{} bytes",
            body.len()
        );
        assert!(
            body.len() > 1_000_000,
            "{} bytes: a realistic page",
            body.len()
        );
    }
}
