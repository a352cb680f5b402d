//! A tx-hash transfer that pays nothing, owed back to its payer: mined after its invoice's deadline, or moving
//! less than its amount (the verifier claimed it for the invoice as such a transfer).

use esim402_core::paid::StoredResponse;
use esim402_core::{ApiError, ErrorKind};
use esim402_guest::wit;
use serde_json::{Value, json};

use super::super::answers::{stored, stored_error, unsettled};
use super::Attempt;
use crate::from_wit;

impl Attempt<'_> {
    /// A tx-hash proof refused as late (410, `msg`). A transfer the verifier claimed as mined after the deadline
    /// is owed back (the refund job returns it; `refund_owed` is logged once) and the answer says so, `charged:
    /// true` with the refund. A `conflict` from owing (nothing claimed: not mined in time at all; the invoice
    /// already owes back another payment; its network disabled since) is added to the 410. The payment is
    /// released either way, so another payment of the invoice (a transfer mined in time) may still pay it, and
    /// the same proof sent again gets the same answer (owing is idempotent). A refund that could not be
    /// recorded leaves the payment open: the same proof sent again owes it.
    pub(super) async fn late_transfer(&self, msg: String) -> (wit::PaymentEnd, StoredResponse) {
        let err = ApiError::new(ErrorKind::Expired, msg);
        let wit::PaymentProof::TxHash(proof) = self.proof.wit() else {
            return (wit::PaymentEnd::Release, stored_error(&err));
        };
        let hash = proof.hash.trim().to_lowercase();
        let reason = format!("transfer {hash} mined after the invoice's deadline");
        let refund = match self.record_refund(&hash, &reason).await {
            Ok(refund) => refund,
            Err(wit::Error::Conflict(why) | wit::Error::NotFound(why)) => {
                let err = ApiError::new(ErrorKind::Expired, format!("{}; {why}", err.message));
                return (wit::PaymentEnd::Release, stored_error(&err));
            }
            Err(e) => {
                eprintln!(
                    "gateway: REFUND NOT RECORDED for the late transfer {hash} of {}: {e:?}",
                    self.invoice.id
                );
                return (wit::PaymentEnd::Resume, unsettled(from_wit(e)));
            }
        };
        let mut body = json!({ "error": err, "charged": true, "refund": refund });
        body["error"]["message"] = Value::String(format!(
            "{}; the transfer is owed back to its payer",
            err.message
        ));
        (
            wit::PaymentEnd::Release,
            stored(err.status(), vec![], body.to_string()),
        )
    }

    /// A payment refused with `reason` (x402). For a tx-hash proof refused as `insufficient_funds` the verifier
    /// claimed the transfer, mined in time and final, as one that pays nothing: it is owed back like a late
    /// transfer, and the 402 says so (`charged: true`, the refund, `invoice_ended`). Before, the money stayed at
    /// `payTo` with no refund. The answer ends the invoice (request a new one): refunds are once per invoice,
    /// so a later payment of it could not have been owed back, and a second short transfer would have been
    /// claimed with nowhere to record its refund. A transfer the verifier did not claim (it also executes
    /// authorizations, or moved less than `MIN_SHORT_REFUND`) gets the plain 402.
    pub(in crate::pay) async fn refused(&self, reason: &str) -> (wit::PaymentEnd, StoredResponse) {
        let challenge = self.challenge(reason);
        let wit::PaymentProof::TxHash(proof) = self.proof.wit() else {
            return (wit::PaymentEnd::Release, challenge);
        };
        if reason != esim402_core::x402::InvalidReason::InsufficientFunds.as_str() {
            return (wit::PaymentEnd::Release, challenge);
        }
        let hash = proof.hash.trim().to_lowercase();
        let why = format!("transfer {hash} moved less than the invoice's amount");
        let refund = match self.record_refund(&hash, &why).await {
            Ok(refund) => refund,
            Err(wit::Error::NotFound(_)) => return (wit::PaymentEnd::Release, challenge),
            Err(e @ (wit::Error::Conflict(_) | wit::Error::InvalidInput(_))) => {
                eprintln!(
                    "gateway: OPERATOR: REFUND NOT RECORDED for the short transfer {hash} of {}: {e:?}",
                    self.invoice.id
                );
                return (wit::PaymentEnd::Release, challenge);
            }
            Err(e) => {
                eprintln!(
                    "gateway: REFUND NOT RECORDED for the short transfer {hash} of {}: {e:?}",
                    self.invoice.id
                );
                return (wit::PaymentEnd::Resume, unsettled(from_wit(e)));
            }
        };
        let mut body: Value = serde_json::from_str(&challenge.body).unwrap_or_else(|_| json!({}));
        body["error"]["message"] = Value::String(format!(
            "payment refused: {reason}: {why}; it is owed back to its payer, and this invoice is ended: request \
             a new one and pay its amount in one transfer"
        ));
        body["charged"] = Value::Bool(true);
        body["refund"] = refund;
        body["invoice_ended"] = Value::Bool(true);
        // No challenge headers: the invoice takes no other payment.
        (
            wit::PaymentEnd::Done,
            stored(challenge.status, vec![], body.to_string()),
        )
    }
}
