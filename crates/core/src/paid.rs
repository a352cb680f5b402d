//! Paying an invoice: one record per invoice (`invoice/<invoice id>`, kept by the invoices component) is the
//! single truth of whether, by which payment and with which transaction it was paid. It exists only once a
//! payment arrives (an unpaid invoice lives in its id alone). The gateway claims it before any effect
//! (verify → dispatch → settle), so racing duplicates of one payment get a terminal "already settled" while
//! the winner works, and the winner's answer is stored for replay (`payment-identifier`).
//!
//! One lease rule: a driver holds the record for [`LEASE_SECS`] and renews it before an order or a settlement
//! the lease no longer covers ([`lease_covers`], [`PaymentRecord::renew`]); past the lease the *same* payment
//! may take over, and the old driver stops at its next renewal. A different payment never may take over while
//! this one is working or resumable.
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

use crate::invoice::InvoiceStatus;

/// How long a driver may hold a payment before a duplicate may take it over: longer than the dispatch
/// budget (60 s by default, at most [`MAX_DISPATCH_BUDGET_SECS`]) plus the settlement wait (15 s by default,
/// at most [`MAX_SETTLEMENT_WAIT_SECS`]) plus slack. A resumed attempt relies on it: it may log again what an
/// earlier attempt logged, and the ledger's repeat check only sees appends that finished.
pub const LEASE_SECS: u64 = 180;
/// The largest `dispatch_budget_secs` (one order's time across carriers) a payment's lease allows.
pub const MAX_DISPATCH_BUDGET_SECS: u64 = 100;
/// The largest `settlement_timeout_ms`, in seconds (the wait for a settlement's receipt), a lease allows.
pub const MAX_SETTLEMENT_WAIT_SECS: u64 = 60;
const _: () = assert!(MAX_DISPATCH_BUDGET_SECS + MAX_SETTLEMENT_WAIT_SECS + 20 <= LEASE_SECS);
/// The most an order may take once it starts (the dispatch budget, and the calls around it): a driver whose
/// lease would end sooner renews it first ([`lease_covers`], [`PaymentRecord::renew`]).
pub const ORDER_PHASE_SECS: u64 = MAX_DISPATCH_BUDGET_SECS + 10;
/// The most a settlement may take once it starts, as estimated: the chain reads of a tx-hash proof or an
/// `exact` settlement's send (one batch, our lost transactions offered again, the broadcast: 10 s per call)
/// and the wait for its receipt. An estimate, not a deadline: a send that offers many lost transactions
/// again to a slow node can take longer.
pub const SETTLE_PHASE_SECS: u64 = MAX_SETTLEMENT_WAIT_SECS + 40;
/// The most an attempt's append of its ledger events may take (the append, or parking them in the outbox): a
/// driver whose lease would end sooner renews it before appending, so no duplicate of its payment takes over and
/// logs the same events meanwhile ([`logs_as_repeat`]).
pub const LOG_PHASE_SECS: u64 = 30;
const _: () = assert!(
    ORDER_PHASE_SECS < LEASE_SECS && SETTLE_PHASE_SECS < LEASE_SECS && LOG_PHASE_SECS < LEASE_SECS
);

/// Whether an attempt's ledger events go through the ledger's repeat check (`crate::ledger::not_yet_logged`)
/// when appended: it `resumed` an earlier attempt (which may have logged them), or it no longer `holds` its
/// payment record (its lease did not cover the append and could not be renewed, [`PaymentRecord::renew`]): the
/// same payment sent again may have taken it over after the lease ran out and logged the same events, as
/// resumed. An attempt that outlived its lease appending unchecked would log them twice.
pub fn logs_as_repeat(resumed: bool, holds: bool) -> bool {
    resumed || !holds
}

/// Whether a lease ending at `lease_until` still covers a phase of `phase_secs` starting at `now`. Each phase
/// fits a lease, but verification, the order and the settlement together may not (a slow node's calls take
/// 10 s each): a driver renews before a phase its lease no longer covers, so a duplicate of its payment cannot
/// take over while it still works.
pub fn lease_covers(lease_until: u64, now: u64, phase_secs: u64) -> bool {
    now.saturating_add(phase_secs) <= lease_until
}

/// The conflict (409) a payment gets when it is sent again while its first sending is still being driven
/// (within [`LEASE_SECS`]): it may still be settled, so a client keeps it and sends it again later.
pub const IN_PROGRESS: &str = "already settled: this payment is being processed";

/// The record key of an invoice's payment.
pub fn payment_key(invoice: &str) -> String {
    format!("invoice/{invoice}")
}

/// The record key of a `payment-identifier` id.
pub fn payment_id_key(id: &str) -> String {
    format!("payid/{id}")
}

/// Whether a paid activation's answer may carry the SIM's activation code and access token to whoever sent the
/// payment. Not when an earlier attempt had already claimed the payment's settlement (`claimed_before`: its
/// transaction may be out, so its calldata public) and the payload is one anyone can rebuild from that calldata
/// (`public_payload`: an x402 v1 `X-PAYMENT` names no invoice, and every field of it is in the settlement
/// transaction), unless the request itself proved its sender the SIM's owner (`owner_signed_in`: a switch
/// signed in with the owner's wallet, [`switch_hands_over_codes`]; an access token proves nothing of who sends it). Such a resend proves nothing about who sends it, and the code would download
/// the payer's profile; the payer reads it with its wallet sign-in (`GET /v1/esim/{iccid}/activation`). A
/// resend before anything was claimed (an order that outlived its budget) still gets the codes; a v2 payload
/// names its invoice, which no chain data gives, and a tx-hash proof carries the payer's signature.
pub fn hands_over_codes(claimed_before: bool, public_payload: bool, owner_signed_in: bool) -> bool {
    !(claimed_before && public_payload && !owner_signed_in)
}

/// Whether a switch may be paid by `payer` (the wallet its payment names: an x402 authorization's `from`, a
/// tx-hash proof's invoice payer; `None` when it names none): always with the request's wallet sign-in of the
/// owner (`by_wallet`), otherwise (the SIM's access token) only from the owner's wallet (`payer` is `owner`,
/// either spelling of the address). An access token travels with the device (logs, proxies) and the wallet's
/// key does not, which is why `GET /v1/esim/{iccid}/activation` refuses tokens: a token alone, with a switch
/// paid from any wallet, would turn into a new profile holding the owner's balance, and cut the owner's SIM
/// off. Decided before anything is paid, so a refused switch takes nothing.
pub fn switch_payer_allowed(by_wallet: bool, owner: Option<&str>, payer: Option<&str>) -> bool {
    by_wallet
        || owner
            .zip(payer)
            .is_some_and(|(o, p)| o.eq_ignore_ascii_case(p))
}

/// [`hands_over_codes`] for a switch: the new SIM's code and access token go to the request only if it proved
/// its sender the owner — its wallet sign-in (`by_wallet`: an access token travels with the device and proves
/// nothing of who sends it, so a token holder resending the owner's public v1 payload learns nothing) — or the
/// payment came from the owner's wallet ([`switch_payer_allowed`]; a payment a build without that check took
/// from another wallet is delivered without them).
pub fn switch_hands_over_codes(
    claimed_before: bool,
    public_payload: bool,
    by_wallet: bool,
    owner: Option<&str>,
    payer: &str,
) -> bool {
    hands_over_codes(claimed_before, public_payload, by_wallet)
        && switch_payer_allowed(by_wallet, owner, Some(payer))
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
    /// Set once money moved: the transaction and the payer. Never cleared.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub paid: Option<Paid>,
    /// The payment is owed back (the purchase failed after the money moved).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub refunded: bool,
    /// The count of the invoice's ledger shard when the first payment arrived: every ledger entry of the
    /// invoice is at or past it, so a resumed attempt finds what earlier attempts logged by scanning from here
    /// ([`crate::ledger::not_yet_logged`]). Set by the first [`decide`] that drives ([`PaymentRecord::since`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ledger_since: Option<u64>,
}

/// The money of a paid invoice.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Paid {
    /// The transaction that moved it.
    pub transaction: String,
    /// Who paid, checksummed.
    pub payer: String,
}

/// How a payment attempt left the record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum End {
    /// Refused before any effect: the invoice is free for another payment.
    Release,
    /// Interrupted at a repeatable point: the same payment continues it.
    Resume,
    /// Final.
    Done,
}

/// How the invoices component's `mark-paid` refusal ends when the invoice was marked paid before with the same
/// transaction and payer ([`RecordError::AlreadyPaidSame`]): a caller whose own first mark failed on the way
/// back and whose retry reads this knows the first one landed.
pub const PAID_BY_THIS_TRANSACTION: &str = "is paid already by this transaction";

/// Why a record update was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RecordError {
    /// No payment ever claimed the invoice.
    #[error("no payment was made for this invoice")]
    NoRecord,
    /// The caller no longer holds it (a duplicate took it over after the lease).
    #[error("the payment record is held by another driver")]
    NotHolder,
    /// It was marked paid before, by another transaction or payer.
    #[error("invoice is paid already")]
    AlreadyPaid,
    /// It was marked paid before with this very transaction and payer: a repeat, or a retry whose first mark
    /// landed and only its answer was lost ([`PAID_BY_THIS_TRANSACTION`]).
    #[error("invoice is paid already by this transaction")]
    AlreadyPaidSame,
    /// Nothing was paid, so nothing can be owed back.
    #[error("nothing was paid for this invoice")]
    NotPaid,
}

impl PaymentRecord {
    /// Record how `holder`'s attempt ended (with the answer, when `Done`).
    pub fn finish(
        current: Option<Self>,
        holder: &str,
        end: End,
        response: &StoredResponse,
    ) -> Result<Self, RecordError> {
        let mut rec = current.ok_or(RecordError::NoRecord)?;
        if rec.holder != holder {
            return Err(RecordError::NotHolder);
        }
        match end {
            // Money moved for it (the invoice is marked paid): never free for another payment to drive; the
            // same payment sent again decides again.
            End::Release if rec.paid.is_some() => rec.state = PaymentState::Resumable,
            End::Release => rec.state = PaymentState::Released,
            End::Resume => rec.state = PaymentState::Resumable,
            End::Done => {
                rec.state = PaymentState::Done;
                rec.response = Some(response.clone());
            }
        }
        Ok(rec)
    }

    /// Keep `head_count` (the invoice's ledger shard's count, read before this record was claimed) as where
    /// its ledger entries start, unless the record existed before this claim ([`decide`] carries its start:
    /// the one kept, or 0 for a record older than the field). `None`: the head could not be read (a store
    /// fault, a head that does not decode); the entries are then looked for from the shard's start (0), which
    /// costs a longer scan, never a missed repeat, so a payment does not depend on its shard's head.
    pub fn since(mut self, head_count: Option<u64>) -> Self {
        self.ledger_since.get_or_insert(head_count.unwrap_or(0));
        self
    }

    /// Extend `holder`'s lease to `now` + [`LEASE_SECS`] (never shorten it): only while it holds the record
    /// and works. A holder whose lease ran out and whose payment a duplicate has taken over since gets
    /// [`RecordError::NotHolder`], and must stop before its next effect.
    pub fn renew(current: Option<Self>, holder: &str, now: u64) -> Result<Self, RecordError> {
        let mut rec = current.ok_or(RecordError::NoRecord)?;
        if rec.holder != holder || rec.state != PaymentState::Working {
            return Err(RecordError::NotHolder);
        }
        rec.lease_until = rec.lease_until.max(now.saturating_add(LEASE_SECS));
        Ok(rec)
    }

    /// Record that money moved (`transaction` from `payer`); once only.
    pub fn mark_paid(
        current: Option<Self>,
        transaction: &str,
        payer: &str,
    ) -> Result<Self, RecordError> {
        let mut rec = current.ok_or(RecordError::NoRecord)?;
        if let Some(p) = &rec.paid {
            return Err(
                if (p.transaction.as_str(), p.payer.as_str()) == (transaction, payer) {
                    RecordError::AlreadyPaidSame
                } else {
                    RecordError::AlreadyPaid
                },
            );
        }
        rec.paid = Some(Paid {
            transaction: transaction.to_owned(),
            payer: payer.to_owned(),
        });
        Ok(rec)
    }

    /// Record that the payment is owed back (idempotent); only a paid invoice can be.
    pub fn mark_refunded(current: Option<Self>) -> Result<Self, RecordError> {
        let mut rec = current.ok_or(RecordError::NoRecord)?;
        if rec.paid.is_none() {
            return Err(RecordError::NotPaid);
        }
        rec.refunded = true;
        Ok(rec)
    }
}

/// An invoice's status, from its payment record (if any) and its deadline, at `now`. A payment that ended in a
/// failure without moving money ended the invoice: `Failed` (its stored failure answers later attempts, [`decide`]);
/// before, it read `Open` though no payment could pay it any more.
pub fn status(record: Option<&PaymentRecord>, expires_at: u64, now: u64) -> InvoiceStatus {
    match record {
        Some(r) if r.refunded => InvoiceStatus::Refunded,
        Some(r) if r.paid.is_some() => InvoiceStatus::Paid,
        Some(r) if matches!(r.state, PaymentState::Working | PaymentState::Resumable) => {
            InvoiceStatus::Pending
        }
        Some(r)
            if r.state == PaymentState::Done
                && r.response.as_ref().is_some_and(|x| !x.is_success()) =>
        {
            InvoiceStatus::Failed
        }
        _ if now >= expires_at => InvoiceStatus::Expired,
        _ => InvoiceStatus::Open,
    }
}

/// The status of an invoice to the request that just claimed its payment record, from the status it `read`
/// before the claim. A fresh claim (not a resume, [`resumes`]) took an invoice no payment held: a `Pending` read
/// then (another attempt held it, and released it since) is `Open` to it, so the invoice's deadline applies to
/// it; without this, a payment of an expired invoice that read it while a refused attempt held it was taken.
/// A resume continues a payment that held the invoice: `Pending`, whatever it read. Paid or owed back stays.
pub fn held_status(read: InvoiceStatus, resumed: bool) -> InvoiceStatus {
    match read {
        InvoiceStatus::Paid | InvoiceStatus::Refunded | InvoiceStatus::Failed => read,
        _ if resumed => InvoiceStatus::Pending,
        InvoiceStatus::Pending | InvoiceStatus::Open | InvoiceStatus::Expired => {
            InvoiceStatus::Open
        }
    }
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
            paid: current.and_then(|r| r.paid.clone()),
            refunded: current.is_some_and(|r| r.refunded),
            // A record from before `ledger_since` existed: its entries may start anywhere in the shard.
            ledger_since: current.map(|r| r.ledger_since.unwrap_or(0)),
        })
    };
    let Some(rec) = current else {
        return drive();
    };
    let same = rec.fingerprint == fingerprint;
    match rec.state {
        // One released after its money moved (by an earlier build): only the same payment drives it again.
        PaymentState::Released if rec.paid.is_some() && !same => {
            Decision::AlreadySettled("already settled: another payment holds this invoice")
        }
        PaymentState::Released => drive(),
        PaymentState::Done => match &rec.response {
            // A failure that ended the invoice (nothing was paid) is everyone's answer: the payment's own, as
            // stored; another payment's without what the first one's answer says about its payer.
            Some(r) if !r.is_success() && same => Decision::Replay(r.clone()),
            Some(r) if !r.is_success() => Decision::Replay(ended_for_others(r)),
            Some(r) if same && replay_allowed => Decision::Replay(r.clone()),
            _ => Decision::AlreadySettled("already settled"),
        },
        PaymentState::Resumable if same => drive(),
        PaymentState::Working if same && now >= rec.lease_until => drive(),
        PaymentState::Working if same => Decision::AlreadySettled(IN_PROGRESS),
        PaymentState::Resumable | PaymentState::Working => {
            Decision::AlreadySettled("already settled: another payment holds this invoice")
        }
    }
}

/// Whether a payment that `decide`s to drive over `current` continues an attempt that may have had effects
/// (an order placed, a transaction sent): the record was resumable, or its driver's lease ran out. Such an
/// attempt cannot simply be released when its payment no longer verifies (an authorization expired since):
/// what the earlier attempt delivered must be withdrawn first.
pub fn resumes(current: Option<&PaymentRecord>) -> bool {
    current.is_some_and(|r| matches!(r.state, PaymentState::Resumable | PaymentState::Working))
}

/// The answer another payment of an invoice gets after a failure ended it: the same status, error code and
/// reason, but not the failed payment's message or headers (they can name its payer, its transaction, its
/// settlement).
fn ended_for_others(r: &StoredResponse) -> StoredResponse {
    let stored: serde_json::Value = serde_json::from_str(&r.body).unwrap_or_default();
    let error = &stored["error"];
    let mut out = serde_json::json!({
        "error": {
            "code": error["code"].as_str().unwrap_or("conflict"),
            "message": "an earlier payment of this invoice failed and ended it; request a new invoice",
        },
        "invoice_ended": true,
    });
    if let Some(reason) = error["reason"].as_str() {
        out["error"]["reason"] = reason.into();
    }
    StoredResponse {
        status: r.status,
        headers: Vec::new(),
        body: out.to_string(),
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

    #[test]
    fn codes_are_withheld_only_from_a_claimed_payment_anyone_can_rebuild_and_no_owner_sent() {
        for claimed in [false, true] {
            for public in [false, true] {
                for owner in [false, true] {
                    assert_eq!(
                        hands_over_codes(claimed, public, owner),
                        !(claimed && public && !owner),
                        "{claimed} {public} {owner}"
                    );
                }
            }
        }
        assert!(!hands_over_codes(true, true, false));
        // A switch: the owner's sign-in, or paid from the owner's wallet (any case); not a token holder paying
        // from another wallet (before, it got the new SIM's code, and with it the owner's balance).
        let owner = "0xAbC0000000000000000000000000000000000001";
        assert!(switch_payer_allowed(true, Some(owner), Some("0x02")));
        assert!(switch_payer_allowed(true, Some(owner), None));
        assert!(switch_payer_allowed(
            false,
            Some(owner),
            Some(&owner.to_lowercase())
        ));
        assert!(!switch_payer_allowed(false, Some(owner), Some("0x02")));
        assert!(!switch_payer_allowed(false, Some(owner), None));
        assert!(!switch_payer_allowed(false, None, Some("0x02")));
        // Its codes: the owner's sign-in, or the owner's wallet paying and no public resend.
        assert!(switch_hands_over_codes(
            true,
            true,
            true,
            Some(owner),
            "0x02"
        ));
        assert!(switch_hands_over_codes(
            false,
            true,
            false,
            Some(owner),
            owner
        ));
        assert!(
            !switch_hands_over_codes(true, true, false, Some(owner), owner),
            "a token holder resending the owner's public v1 payload after its settlement went out"
        );
        assert!(
            !switch_hands_over_codes(false, false, false, Some(owner), "0x02"),
            "a payment from another wallet (taken by a build without the check)"
        );
        assert!(hands_over_codes(false, true, false));
        assert!(hands_over_codes(true, true, true));
    }

    #[test]
    fn a_fresh_claim_sees_the_invoice_open_and_a_resume_pending() {
        use InvoiceStatus::*;
        // Read while another attempt held it, claimed after that attempt let go: open, its deadline applies.
        assert_eq!(held_status(Pending, false), Open);
        assert_eq!(held_status(Expired, false), Open);
        assert_eq!(held_status(Open, false), Open);
        // Read before the record appeared, claimed as a resume: the payment that held it continues.
        assert_eq!(held_status(Open, true), Pending);
        assert_eq!(held_status(Expired, true), Pending);
        assert_eq!(held_status(Pending, true), Pending);
        for resumed in [false, true] {
            assert_eq!(held_status(Paid, resumed), Paid);
            assert_eq!(held_status(Refunded, resumed), Refunded);
        }
    }

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
            paid: None,
            refunded: false,
            ledger_since: None,
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

    /// A driver renews its lease before a phase the lease no longer covers; one that lost its payment to a
    /// duplicate (its lease ran out, and the same payment was sent again) cannot, and stops.
    #[test]
    fn a_holder_renews_its_lease_and_a_taken_over_one_cannot() {
        assert!(lease_covers(300, 100, 200));
        assert!(!lease_covers(300, 101, 200));
        assert!(!lease_covers(300, u64::MAX, 1));
        let working = rec(PaymentState::Working, "a", 200, None);
        let renewed = PaymentRecord::renew(Some(working.clone()), "h0", 150).unwrap();
        assert_eq!(renewed.lease_until, 150 + LEASE_SECS);
        assert_eq!(
            PaymentRecord {
                lease_until: renewed.lease_until,
                ..working.clone()
            },
            renewed
        );
        // Never shortened.
        let later = PaymentRecord::renew(Some(renewed.clone()), "h0", 10).unwrap();
        assert_eq!(later.lease_until, renewed.lease_until);
        // Renewed after the lease ran out, while nobody took it over: still the holder's.
        assert!(PaymentRecord::renew(Some(working.clone()), "h0", 10_000).is_ok());
        // Taken over by a duplicate after the lease: the old holder stops.
        let Decision::Drive(taken) = decide(Some(&working), "a", "h1", false, 201) else {
            panic!("the same payment takes over a lapsed lease");
        };
        assert_eq!(
            PaymentRecord::renew(Some(taken.clone()), "h0", 202),
            Err(RecordError::NotHolder)
        );
        assert!(PaymentRecord::renew(Some(taken), "h1", 202).is_ok());
        for state in [
            PaymentState::Resumable,
            PaymentState::Done,
            PaymentState::Released,
        ] {
            let ended = rec(state, "a", 200, Some(200));
            assert_eq!(
                PaymentRecord::renew(Some(ended), "h0", 150),
                Err(RecordError::NotHolder),
                "{state:?}"
            );
        }
        assert_eq!(
            PaymentRecord::renew(None, "h0", 150),
            Err(RecordError::NoRecord)
        );
    }

    #[test]
    fn duplicates_of_a_live_payment_are_terminal() {
        let working = rec(PaymentState::Working, "a", 200, None);
        assert_eq!(
            decide(Some(&working), "a", "h1", true, 100),
            Decision::AlreadySettled(IN_PROGRESS)
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

    /// Another payment of an invoice a failure ended learns that it ended and why (code, reason), not who paid
    /// or what was sent: the stored answer's message and headers stay with its own payment.
    #[test]
    fn a_failure_replayed_to_another_payment_names_no_payer() {
        let payer = "0xa0Ee7A142d267C1f36714E4a8F75612F20a79720";
        let mut failed = rec(PaymentState::Done, "a", 0, None);
        failed.response = Some(StoredResponse {
            status: 402,
            headers: vec![("payment-response".into(), format!("{{\"payer\":\"{payer}\"}}"))],
            body: serde_json::json!({"error": {"code": "payment_required", "reason": "invalid_transaction_state",
                "message": format!("settlement failed; {payer} was not charged")}})
            .to_string(),
        });
        let Decision::Replay(own) = decide(Some(&failed), "a", "h1", false, 1) else {
            panic!("the payment's own failure is replayed");
        };
        assert_eq!(
            Some(&own),
            failed.response.as_ref(),
            "its own payment gets it as stored"
        );
        let Decision::Replay(other) = decide(Some(&failed), "b", "h1", false, 1) else {
            panic!("another payment gets the failure too");
        };
        assert_eq!(other.status, 402);
        assert!(other.headers.is_empty(), "{other:?}");
        assert!(!other.body.contains(payer), "{}", other.body);
        let body: serde_json::Value = serde_json::from_str(&other.body).unwrap();
        assert_eq!(body["error"]["code"], "payment_required");
        assert_eq!(body["error"]["reason"], "invalid_transaction_state");
        assert_eq!(body["invoice_ended"], true);
        // A stored body that is not JSON still gives a typed answer.
        failed.response.as_mut().unwrap().body = "oops".into();
        let Decision::Replay(other) = decide(Some(&failed), "b", "h1", false, 1) else {
            panic!("replayed");
        };
        let body: serde_json::Value = serde_json::from_str(&other.body).unwrap();
        assert_eq!(body["error"]["code"], "conflict");
    }

    /// Where an invoice's ledger entries start is read once, at its first claim, and carried by every later
    /// one; a record from before the field scans its whole shard.
    #[test]
    fn the_ledger_start_is_kept_from_the_first_claim() {
        let Decision::Drive(first) = decide(None, "a", "h1", false, 100) else {
            panic!()
        };
        let first = first.since(Some(7));
        assert_eq!(first.ledger_since, Some(7));
        let mut resumable = first.clone();
        resumable.state = PaymentState::Resumable;
        let Decision::Drive(again) = decide(Some(&resumable), "a", "h2", false, 101) else {
            panic!()
        };
        assert_eq!(again.clone().since(None).ledger_since, Some(7));
        assert_eq!(again.since(Some(9)).ledger_since, Some(7));
        resumable.ledger_since = None;
        let Decision::Drive(old) = decide(Some(&resumable), "a", "h3", false, 102) else {
            panic!()
        };
        assert_eq!(old.since(Some(9)).ledger_since, Some(0));
    }

    /// A first claim whose shard head could not be read starts its scan at the shard's start: every entry of
    /// the invoice is at or past 0, so a resumed attempt's repeat check misses none (a review: the claim used to
    /// fail with the head).
    #[test]
    fn a_first_claim_without_a_readable_head_scans_from_the_shards_start() {
        let Decision::Drive(first) = decide(None, "a", "h1", false, 100) else {
            panic!()
        };
        assert_eq!(first.since(None).ledger_since, Some(0));
    }

    /// Only a record an earlier attempt may have acted on (resumable, or a lapsed lease) is a resume.
    #[test]
    fn a_resume_is_a_drive_over_a_resumable_or_lapsed_record() {
        assert!(!resumes(None));
        assert!(!resumes(Some(&rec(PaymentState::Released, "a", 0, None))));
        assert!(!resumes(Some(&rec(PaymentState::Done, "a", 0, Some(402)))));
        assert!(resumes(Some(&rec(PaymentState::Resumable, "a", 0, None))));
        assert!(resumes(Some(&rec(PaymentState::Working, "a", 0, None))));
    }

    #[test]
    fn an_attempt_ends_only_for_its_holder() {
        let rec = rec(PaymentState::Working, "a", 200, None);
        let ok = StoredResponse {
            status: 200,
            headers: vec![],
            body: "{}".into(),
        };
        assert_eq!(
            PaymentRecord::finish(Some(rec.clone()), "intruder", End::Done, &ok),
            Err(RecordError::NotHolder)
        );
        assert_eq!(
            PaymentRecord::finish(None, "h0", End::Done, &ok),
            Err(RecordError::NoRecord)
        );
        let done = PaymentRecord::finish(Some(rec.clone()), "h0", End::Done, &ok).unwrap();
        assert_eq!(
            (done.state, done.response),
            (PaymentState::Done, Some(ok.clone()))
        );
        let resumable = PaymentRecord::finish(Some(rec.clone()), "h0", End::Resume, &ok).unwrap();
        assert_eq!(
            (resumable.state, resumable.response),
            (PaymentState::Resumable, None)
        );
        let released = PaymentRecord::finish(Some(rec), "h0", End::Release, &ok).unwrap();
        assert_eq!(released.state, PaymentState::Released);
    }

    #[test]
    fn a_paid_record_is_never_released_to_another_payment() {
        let r = rec(PaymentState::Working, "a", 200, None);
        let h = r.holder.clone();
        let paid = PaymentRecord::mark_paid(Some(r), "0xtx", "0xpayer").unwrap();
        let answer = StoredResponse {
            status: 402,
            headers: vec![],
            body: "{}".into(),
        };
        // Its attempt ending as "nothing moved" keeps it resumable, for the same payment only.
        let ended = PaymentRecord::finish(Some(paid.clone()), &h, End::Release, &answer).unwrap();
        assert_eq!(ended.state, PaymentState::Resumable);
        assert!(matches!(
            decide(Some(&ended), "b", "h2", false, 10_000),
            Decision::AlreadySettled(_)
        ));
        assert!(matches!(
            decide(Some(&ended), "a", "h2", false, 10_000),
            Decision::Drive(_)
        ));
        // A paid record an earlier build released: the same.
        let released = PaymentRecord {
            state: PaymentState::Released,
            ..paid
        };
        assert!(matches!(
            decide(Some(&released), "b", "h2", false, 10_000),
            Decision::AlreadySettled(_)
        ));
        assert!(matches!(
            decide(Some(&released), "a", "h2", false, 10_000),
            Decision::Drive(_)
        ));
    }

    #[test]
    fn money_is_recorded_once_and_only_paid_invoices_are_refunded() {
        let r = rec(PaymentState::Working, "a", 200, None);
        assert_eq!(
            PaymentRecord::mark_refunded(Some(r.clone())),
            Err(RecordError::NotPaid)
        );
        let paid = PaymentRecord::mark_paid(Some(r), "0xtx", "0xpayer").unwrap();
        assert_eq!(
            PaymentRecord::mark_paid(Some(paid.clone()), "0xother", "0xpayer"),
            Err(RecordError::AlreadyPaid)
        );
        // The same mark again (a retry whose first answer was lost) says so, apart from another payment's.
        assert_eq!(
            PaymentRecord::mark_paid(Some(paid.clone()), "0xtx", "0xpayer"),
            Err(RecordError::AlreadyPaidSame)
        );
        assert_eq!(
            PaymentRecord::mark_paid(Some(paid.clone()), "0xtx", "0xsomeone"),
            Err(RecordError::AlreadyPaid)
        );
        let refunded = PaymentRecord::mark_refunded(Some(paid.clone())).unwrap();
        assert!(refunded.refunded);
        // A later driver of the same payment keeps what the record says about money.
        match decide(Some(&refunded), "a", "h9", false, 10_000) {
            Decision::Drive(next) => {
                assert_eq!((next.paid, next.refunded), (paid.paid.clone(), true))
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn status_comes_from_the_record_and_the_deadline() {
        assert_eq!(status(None, 100, 99), InvoiceStatus::Open);
        assert_eq!(status(None, 100, 100), InvoiceStatus::Expired);
        let working = rec(PaymentState::Working, "a", 200, None);
        assert_eq!(status(Some(&working), 100, 150), InvoiceStatus::Pending);
        // A failure that ended the invoice: no payment can pay it any more, before or after its deadline.
        let failed = rec(PaymentState::Done, "a", 0, Some(503));
        assert_eq!(status(Some(&failed), 100, 50), InvoiceStatus::Failed);
        assert_eq!(status(Some(&failed), 100, 150), InvoiceStatus::Failed);
        let released = rec(PaymentState::Released, "a", 0, None);
        assert_eq!(status(Some(&released), 100, 50), InvoiceStatus::Open);
        let paid = PaymentRecord::mark_paid(Some(working), "0xtx", "0xp").unwrap();
        assert_eq!(
            status(Some(&paid), 100, 500),
            InvoiceStatus::Paid,
            "paid never expires"
        );
        let refunded = PaymentRecord::mark_refunded(Some(paid)).unwrap();
        assert_eq!(status(Some(&refunded), 100, 500), InvoiceStatus::Refunded);
    }

    /// An attempt that outlived its lease while the same payment, sent again, took it over and logged the
    /// settlement (as resumed): its own events go through the repeat check, so the settlement is in the ledger
    /// once. Before, only a resumed attempt's did: the original appended its settlement a second time.
    #[test]
    fn an_attempt_that_lost_its_lease_logs_its_events_as_repeats() {
        use crate::ledger::{ChainHead, EntryFields, EntryKind, not_yet_logged};
        let original = rec(PaymentState::Working, "a", 280, None);
        // Past the lease, the same payment takes it over (a resume) and logs the settlement.
        let Decision::Drive(taken) = decide(Some(&original), "a", "h1", false, 281) else {
            panic!("the same payment takes a lapsed lease over");
        };
        assert!(resumes(Some(&original)));
        let settled = (
            EntryKind::SettlementConfirmed,
            EntryFields::default().invoice("inv_a"),
        );
        let mut head = ChainHead::genesis();
        let found = [head.append(281, settled.0, settled.1.clone())];
        // The original, its lease no longer covering its append, cannot renew: it no longer holds the record.
        assert!(!lease_covers(original.lease_until, 282, LOG_PHASE_SECS));
        let holds = PaymentRecord::renew(Some(taken.clone()), "h0", 282).is_ok();
        assert!(!holds);
        assert!(logs_as_repeat(false, holds));
        let logged = if logs_as_repeat(false, holds) {
            not_yet_logged(vec![settled.clone()], &found, &[])
        } else {
            vec![settled.clone()]
        };
        assert!(logged.is_empty(), "logged twice: {logged:?}");
        // One that still holds its record (nobody took it over) appends as it is; a resumed one checks.
        assert!(PaymentRecord::renew(Some(taken), "h1", 282).is_ok());
        assert!(!logs_as_repeat(false, true));
        assert!(logs_as_repeat(true, true));
    }

    #[test]
    fn fingerprints_are_keccak_hex() {
        let f = fingerprint(b"x");
        assert_eq!(f.len(), 66);
        assert_ne!(f, fingerprint(b"y"));
    }
}
