//! Paying an invoice over HTTP, as the resource server sees it: one record per invoice
//! (`payment/<invoice id>` in the key-value store) says which payment is being worked on, by whom, and what
//! was answered. The gateway claims it before any effect (verify → dispatch → settle), so racing duplicates of
//! one payment get a terminal "already settled" while the winner works, and the winner's answer is stored for
//! replay (`payment-identifier`).
//!
//! A payment is identified by its [`fingerprint`]: keccak-256 over the decoded payload's canonical JSON (or
//! the lower-case transaction hash of a tx-hash proof), so two encodings of one payment are the same payment.
//!
//! States: `working` (a lease: someone drives it now) → `resumable` (interrupted after an effect that is
//! safe to repeat: a pending settlement, a pending order, a fault; the same payment may drive it again at
//! once) → `done` (the answer is final and stored). `released` is a record that no longer holds the invoice
//! (the payment was refused before any effect), equivalent to no record.

use alloy_primitives::{B256, keccak256};
use serde::{Deserialize, Serialize};

/// How long a driver may hold a payment before a duplicate may take it over: longer than the dispatch
/// budget (60 s) plus the settlement wait (15 s) plus slack.
pub const LEASE_SECS: u64 = 180;

/// The record key of an invoice's payment.
pub fn payment_key(invoice: &str) -> String {
    format!("payment/{invoice}")
}

/// The record key of a `payment-identifier` id.
pub fn payment_id_key(id: &str) -> String {
    format!("payid/{id}")
}

/// The identity of one payment: keccak-256 of `bytes` (a payload's canonical JSON, a tx hash).
pub fn fingerprint(bytes: &[u8]) -> String {
    let h: B256 = keccak256(bytes);
    h.to_string()
}

/// Where a payment is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PaymentState {
    /// Held by `holder` until `lease_until`.
    Working,
    /// Interrupted at a repeatable point; the same payment may continue at once.
    Resumable,
    /// Final: `response` is the answer.
    Done,
    /// Refused before any effect: the invoice is free for another payment.
    Released,
}

/// A stored HTTP answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredResponse {
    /// Status code.
    pub status: u16,
    /// Headers beyond the JSON content type.
    pub headers: Vec<(String, String)>,
    /// JSON body.
    pub body: String,
}

impl StoredResponse {
    /// Whether the payment succeeded (2xx).
    pub fn is_success(&self) -> bool {
        (200..300).contains(&self.status)
    }
}

/// The payment record of one invoice.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PaymentRecord {
    /// State.
    pub state: PaymentState,
    /// The payment's [`fingerprint`].
    pub fingerprint: String,
    /// The current driver's random token.
    pub holder: String,
    /// Until when the driver holds it (unix seconds; `Working` only).
    pub lease_until: u64,
    /// The final answer (`Done` only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub response: Option<StoredResponse>,
}

/// What a request holding payment `fingerprint` may do, given the invoice's record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Write this record (compare-and-swap against what was read) and drive the payment.
    Drive(PaymentRecord),
    /// Answer with the stored response: this payment's own final answer (only with a matching
    /// `payment-identifier`), or a failure that ended the invoice.
    Replay(StoredResponse),
    /// 409: the invoice is settled or being settled (by this payment or another).
    AlreadySettled(&'static str),
}

/// Decide, at `now`, for payment `fingerprint` (new driver token `holder`); `replay_allowed` when the request
/// carries a `payment-identifier` bound to this very payment.
pub fn decide(
    current: Option<&PaymentRecord>,
    fingerprint: &str,
    holder: &str,
    replay_allowed: bool,
    now: u64,
) -> Decision {
    let drive = || {
        Decision::Drive(PaymentRecord {
            state: PaymentState::Working,
            fingerprint: fingerprint.to_owned(),
            holder: holder.to_owned(),
            lease_until: now.saturating_add(LEASE_SECS),
            response: None,
        })
    };
    let Some(rec) = current else {
        return drive();
    };
    let same = rec.fingerprint == fingerprint;
    match rec.state {
        PaymentState::Released => drive(),
        PaymentState::Done => match &rec.response {
            // A failure that ended the invoice (nothing was paid) is everyone's answer.
            Some(r) if !r.is_success() => Decision::Replay(r.clone()),
            Some(r) if same && replay_allowed => Decision::Replay(r.clone()),
            _ => Decision::AlreadySettled("already settled"),
        },
        PaymentState::Resumable if same => drive(),
        PaymentState::Working if same && now >= rec.lease_until => drive(),
        PaymentState::Working if same => {
            Decision::AlreadySettled("already settled: this payment is being processed")
        }
        PaymentState::Resumable | PaymentState::Working => {
            Decision::AlreadySettled("already settled: another payment holds this invoice")
        }
    }
}

/// A `payment-identifier` binding: the id was first used for this payment of this request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PaymentIdBinding {
    /// keccak-256 over method, route, body and payment.
    pub request_fingerprint: String,
    /// The invoice it paid.
    pub invoice: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(state: PaymentState, fp: &str, lease_until: u64, status: Option<u16>) -> PaymentRecord {
        PaymentRecord {
            state,
            fingerprint: fp.into(),
            holder: "h0".into(),
            lease_until,
            response: status.map(|status| StoredResponse {
                status,
                headers: vec![],
                body: "{}".into(),
            }),
        }
    }

    #[test]
    fn first_payment_drives_with_a_lease() {
        match decide(None, "a", "h1", false, 100) {
            Decision::Drive(r) => {
                assert_eq!(r.state, PaymentState::Working);
                assert_eq!((r.holder.as_str(), r.lease_until), ("h1", 100 + LEASE_SECS));
            }
            other => panic!("{other:?}"),
        }
        let released = rec(PaymentState::Released, "b", 0, None);
        assert!(matches!(
            decide(Some(&released), "a", "h1", false, 100),
            Decision::Drive(_)
        ));
    }

    #[test]
    fn duplicates_of_a_live_payment_are_terminal() {
        let working = rec(PaymentState::Working, "a", 200, None);
        assert_eq!(
            decide(Some(&working), "a", "h1", true, 100),
            Decision::AlreadySettled("already settled: this payment is being processed")
        );
        assert!(matches!(
            decide(Some(&working), "b", "h1", false, 100),
            Decision::AlreadySettled(_)
        ));
        // An abandoned lease is taken over by the same payment only.
        assert!(matches!(
            decide(Some(&working), "a", "h1", false, 200),
            Decision::Drive(_)
        ));
        assert!(matches!(
            decide(Some(&working), "b", "h1", false, 500),
            Decision::AlreadySettled(_)
        ));
    }

    #[test]
    fn resumable_payments_continue_only_for_the_same_payment() {
        let r = rec(PaymentState::Resumable, "a", 0, None);
        assert!(matches!(
            decide(Some(&r), "a", "h1", false, 100),
            Decision::Drive(_)
        ));
        assert!(matches!(
            decide(Some(&r), "b", "h1", false, 100),
            Decision::AlreadySettled(_)
        ));
    }

    #[test]
    fn done_replays_only_with_a_payment_identifier_or_a_failure() {
        let ok = rec(PaymentState::Done, "a", 0, Some(200));
        assert!(
            matches!(decide(Some(&ok), "a", "h1", true, 1), Decision::Replay(r) if r.status == 200)
        );
        assert_eq!(
            decide(Some(&ok), "a", "h1", false, 1),
            Decision::AlreadySettled("already settled")
        );
        assert!(matches!(
            decide(Some(&ok), "b", "h1", true, 1),
            Decision::AlreadySettled(_)
        ));
        let failed = rec(PaymentState::Done, "a", 0, Some(503));
        assert!(
            matches!(decide(Some(&failed), "b", "h1", false, 1), Decision::Replay(r) if r.status == 503)
        );
    }

    #[test]
    fn fingerprints_are_keccak_hex() {
        let f = fingerprint(b"x");
        assert_eq!(f.len(), 66);
        assert_ne!(f, fingerprint(b"y"));
    }
}
