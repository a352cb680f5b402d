//! Owing a settled payment back: the refund recorded with the verifier (once per invoice), its `refund_owed`
//! queued for the ledger, and the answer that says so (`charged: true`, the refund).

use esim402_core::ApiError;
use esim402_core::paid::StoredResponse;
use esim402_guest::wit;
use serde_json::{Value, json};

use super::super::answers::stored;
use super::Attempt;
use crate::{from_wit, invoices, now, verifier};

impl Attempt<'_> {
    /// The payment (settled in `tx`) is owed back to `payer` because of `err`: owe it and answer with the error,
    /// `charged: true` and the refund. Done once the refund is recorded (and queued); if it could not be, the
    /// payment stays open, so the same payment sent again owes it again (owing is once per invoice, and a
    /// recorded refund missing from the queue is queued then).
    pub(super) async fn owed_back(
        &self,
        tx: &str,
        err: ApiError,
        payer: &str,
    ) -> (wit::PaymentEnd, StoredResponse) {
        let (refund, end) = self.owe_refund(tx, &err.message).await;
        let mut body = json!({ "error": err, "charged": true, "refund": refund });
        body["error"]["message"] = Value::String(format!(
            "{}; the payment is owed back to {payer}",
            err.message
        ));
        (end, stored(err.status(), vec![], body.to_string()))
    }

    /// Owe the payment back (idempotent per invoice): the refund as the verifier recorded it and `Done`, or
    /// `{"status": "unrecorded", ...}` and `Resume`.
    async fn owe_refund(&self, tx: &str, reason: &str) -> (Value, wit::PaymentEnd) {
        match self.record_refund(tx, reason).await {
            Ok(refund) => {
                if let Err(e) =
                    invoices::mark_refunded(self.invoice.id.clone(), reason.to_owned()).await
                {
                    eprintln!(
                        "gateway: marking {} refunded failed: {e:?}",
                        self.invoice.id
                    );
                }
                (refund, wit::PaymentEnd::Done)
            }
            // The invoice's one refund returns another payment of it, or the transaction took nothing: no
            // resend changes that, an operator's case (as `crate::owing` treats it).
            Err(wit::Error::Conflict(why) | wit::Error::NotFound(why)) => {
                eprintln!(
                    "gateway: OPERATOR: REFUND NOT RECORDED for {}: {why}",
                    self.invoice.id
                );
                let refund = json!({ "status": "not_recorded", "error": why });
                (refund, wit::PaymentEnd::Done)
            }
            Err(e) => {
                eprintln!(
                    "gateway: REFUND NOT RECORDED for {}: {e:?}",
                    self.invoice.id
                );
                let refund = json!({ "status": "unrecorded", "error": from_wit(e).message });
                (refund, wit::PaymentEnd::Resume)
            }
        }
    }

    /// Owe the payment made in `tx` back (verifier `owe-refund`, idempotent per invoice) and queue its
    /// `refund_owed` for the ledger when this call recorded it: the refund as recorded.
    pub(super) async fn record_refund(&self, tx: &str, reason: &str) -> Result<Value, wit::Error> {
        let owed = verifier::owe_refund(
            self.invoice.clone(),
            tx.to_owned(),
            None,
            reason.to_owned(),
            now(),
        )
        .await?;
        if self.logs(owed.new) {
            self.pending.borrow_mut().push(owed.event);
        } else if owed.relog {
            // Recorded by an earlier call whose event may never have landed (its append and its parking
            // failed): logged again as a repeat, which the ledger keeps once.
            crate::pay::log_events(vec![owed.event], true).await;
        }
        Ok(serde_json::from_str(&owed.refund).unwrap_or(Value::String(owed.refund)))
    }
}
