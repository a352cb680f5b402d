//! A tx-hash transfer mined after its invoice's deadline: it pays nothing (the verifier claimed it as a late
//! transfer) and is owed back to its payer.

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
}
