//! The answers a payment attempt stores and sends: success with the activation code and `PAYMENT-RESPONSE`,
//! `settlement_pending`, a failed settlement, a refused payment's challenge again, and the upstream faults that
//! the same payment sent again continues.

use esim402_core::ApiError;
use esim402_core::UsdcAmount;
use esim402_core::paid::StoredResponse;
use esim402_core::x402::requirements::{
    NO_MATCHING_REQUIREMENTS, payment_required, payment_required_v1,
};
use esim402_core::x402::{InvalidReason, SettleResponse, encode_payment_response_header};
use esim402_guest::{convert, wit};
use serde_json::{Value, json};

use super::{Kind, Proof};

/// What every answer about one payment attempt is built from.
pub struct Answers<'a> {
    pub invoice: &'a wit::Invoice,
    pub proof: &'a Proof,
    /// The resource URL the challenge names.
    pub url: &'a str,
    /// The network a tx-hash proof's transfer was found on, once verified (an `exact` payload names its own).
    pub found_on: std::cell::RefCell<Option<String>>,
    /// What a tx-hash proof's transfer moved, once verified, when more than the invoice's amount.
    pub overpaid: std::cell::Cell<Option<u64>>,
}

pub fn retry_after() -> (String, String) {
    ("retry-after".to_owned(), "2".to_owned())
}

pub fn stored(status: u16, headers: Vec<(String, String)>, body: String) -> StoredResponse {
    StoredResponse {
        status,
        headers,
        body,
    }
}

pub fn stored_error(e: &ApiError) -> StoredResponse {
    stored(e.status(), vec![], e.to_json())
}

/// A refusal before anything moved: the error, and `charged: false` for clients (an agent frees its spend).
pub fn uncharged(e: &ApiError) -> StoredResponse {
    let body = json!({ "error": e, "charged": false });
    stored(e.status(), vec![], body.to_string())
}

/// The order of an `exact` payment is still running at the carrier (it outlived the dispatch budget): nothing
/// is settled yet.
pub fn order_pending() -> StoredResponse {
    let body = json!({"error": {"code": "unavailable",
        "message": "the carrier has not confirmed the profile yet; nothing was charged for it yet; send the same payment again shortly"}});
    stored(503, vec![retry_after()], body.to_string())
}

/// The order of a payment whose money moved (a tx-hash payment's transfer, or an `exact` authorization another
/// transaction executed while the order waited) is still running at the carrier: the money (`tx`) is already
/// ours, so the answer says so (`charged: true`) and names it; the same payment sent again collects the SIM
/// (or, if the order then fails, the refund).
pub fn order_pending_paid(invoice: &str, tx: &str) -> StoredResponse {
    let body = json!({"error": {"code": "unavailable",
        "message": "the carrier has not confirmed the profile yet; the payment was received and is kept for this order; send the same payment again shortly to collect the SIM"},
        "charged": true, "invoice_id": invoice, "transaction": tx});
    stored(503, vec![retry_after()], body.to_string())
}

/// An upstream fault after the order: the same payment sent again continues where this one stopped.
pub fn unsettled(e: ApiError) -> StoredResponse {
    let mut body = json!({ "error": e });
    body["error"]["message"] = Value::String(format!(
        "{}; the payment was not completed; send the same payment again to continue",
        e.message
    ));
    stored(e.status().max(500), vec![retry_after()], body.to_string())
}

impl Answers<'_> {
    /// The payment's network: where a tx-hash proof's transfer was found once verified, else as the payment
    /// names it (for a tx-hash proof before verification, the invoice's preferred one).
    pub fn network(&self) -> String {
        match &*self.found_on.borrow() {
            Some(found) => found.clone(),
            None => self.proof.network(self.invoice),
        }
    }

    fn response_header(&self) -> &'static str {
        match self.proof.kind {
            Kind::V1 => "x-payment-response",
            _ => "payment-response",
        }
    }

    /// The `PAYMENT-RESPONSE` (v1: `X-PAYMENT-RESPONSE`) header: success, or the reason it is not.
    fn settle_response(
        &self,
        failure: Option<(&str, Option<&str>)>,
        tx: &str,
        payer: &str,
    ) -> (String, String) {
        let r = SettleResponse {
            success: failure.is_none(),
            error_reason: failure.map(|(reason, _)| reason.to_owned()),
            error_message: failure.and_then(|(_, message)| message.map(str::to_owned)),
            payer: Some(payer.to_owned()),
            transaction: tx.to_owned(),
            network: self.network(),
            amount: None,
            extensions: None,
        };
        (
            self.response_header().to_owned(),
            encode_payment_response_header(&r),
        )
    }

    /// The delivered SIM, with its activation code; if `withhold` (kernel `paid::hands_over_codes`,
    /// `paid::switch_hands_over_codes`), nothing
    /// about the SIM (its ICCID, EID, carrier, owner) beyond that it is paid: whoever sent the payment again
    /// learns nothing of the payer's device, and the payer finds its SIM with its wallet sign-in (the access
    /// token, added on the way out, needs the code in the answer too).
    pub fn success(&self, sim: &wit::Sim, tx: &str, payer: &str, withhold: bool) -> StoredResponse {
        let network = self.network();
        let mut body = if withhold {
            json!({
                "status": "paid",
                "invoice_id": self.invoice.id,
                "activation_code_note": "this request did not prove its sender the SIM's owner (a payment anyone could rebuild from the chain, sent again after its settlement was sent; or a switch asked with an access token and paid from another wallet than the owner's), so its answer does not name the SIM or carry its activation code or access token: as the payer, find the SIM with a wallet sign-in (SIGN-IN-WITH-X) at GET /v1/esim and read its code at GET /v1/esim/{iccid}/activation",
            })
        } else {
            let mut body = crate::convert::sim_value(sim);
            body["activation_code"] = json!(sim.activation_code);
            // The seed article's field name for the same `LPA:1$…` string (what a QR code encodes).
            body["qr_code"] = json!(sim.activation_code);
            body
        };
        body["network"] = json!(network);
        self.paid(body, tx, payer)
    }

    /// The 200 of a paid `body`: what was paid, by whom, in which transaction; for a transfer above the invoice's
    /// amount, what it moved and that the excess is kept (a trial: it was in the ledger only).
    fn paid(&self, mut body: Value, tx: &str, payer: &str) -> StoredResponse {
        body["transaction"] = json!(tx);
        body["payer"] = json!(payer);
        body["amount_usdc"] = json!(UsdcAmount::from_micros(self.invoice.amount));
        if let Some(moved) = self.overpaid.get() {
            body["transferred_usdc"] = json!(UsdcAmount::from_micros(moved));
            body["overpayment_note"] = json!(format!(
                "the transfer moved {} USDC more than the invoice's amount; the excess is kept unless the purchase \
                 is refunded whole (a failed order or download); a terminate refunds the unused data's value only",
                UsdcAmount::from_micros(moved.saturating_sub(self.invoice.amount))
            ));
        }
        stored(
            200,
            vec![self.settle_response(None, tx, payer)],
            body.to_string(),
        )
    }

    /// A paid top-up: with the SIM's balance and the quota grant the retried request asked for (`granted`: only
    /// given when the owner or carrier asked); without it, only what was bought. Never the SIM's activation
    /// code: anyone may pay for anyone's top-up.
    pub fn topped_up(
        &self,
        granted: Option<&crate::metering::Granted>,
        tx: &str,
        payer: &str,
    ) -> StoredResponse {
        let mut body = match (granted, &self.invoice.purchase) {
            (Some(granted), _) => crate::convert::quota_value(granted),
            (None, wit::Purchase::TopUp(t)) => json!({ "iccid": t.iccid, "status": "topped_up" }),
            (None, _) => json!({ "status": "topped_up" }),
        };
        body["topped_up_mb"] = json!(match &self.invoice.purchase {
            wit::Purchase::TopUp(t) => t.data_mb,
            _ => 0,
        });
        body["network"] = json!(self.network());
        self.paid(body, tx, payer)
    }

    /// Broadcast, not yet confirmed: 402 with the non-terminal `settlement_pending`; the same payment sent
    /// again reconciles it (nothing is broadcast twice).
    pub fn pending(&self, tx: &str, payer: &str) -> StoredResponse {
        let settle = self.settle_response(
            Some((
                InvalidReason::SettlementPending.as_str(),
                Some(
                    "the settlement transaction is not confirmed yet; send the same payment again",
                ),
            )),
            tx,
            payer,
        );
        let body = json!({
            "error": {"code": "settlement_pending",
                      "message": "payment broadcast but not confirmed yet; send the same payment again to collect the activation"},
            "invoice_id": self.invoice.id, "transaction": tx,
        });
        let mut headers = vec![settle, retry_after()];
        headers.extend(self.challenge_headers(InvalidReason::SettlementPending.as_str()));
        stored(402, headers, body.to_string())
    }

    pub fn settle_failed(&self, reason: &str, payer: &str) -> StoredResponse {
        let settle = self.settle_response(Some((reason, None)), "", payer);
        let body = json!({
            "error": {"code": "payment_required", "reason": reason,
                      "message": format!("settlement failed ({reason}); no payment was taken and the profile was withdrawn; request a new invoice")},
            "invoice_id": self.invoice.id, "charged": false,
        });
        stored(402, vec![settle], body.to_string())
    }

    /// 402 for a refused payment: the invoice's challenge again, with the reason as its `error`. A
    /// `settlement_pending` one (a tx-hash proof's transfer not mined or not buried yet) is not final: it says
    /// so, and when to send the same proof again.
    pub fn challenge(&self, reason: &str) -> StoredResponse {
        let pending = reason == InvalidReason::SettlementPending.as_str();
        let cause = match (self.proof.kind, reason.parse::<InvalidReason>()) {
            (Kind::TxHash, Ok(r)) => r.tx_hash_cause(),
            (Kind::V1 | Kind::V2, Ok(r)) => r.exact_cause(),
            _ => None,
        };
        let message = match cause {
            _ if pending => {
                "the transfer is not mined or not confirmed enough yet; send the same proof again \
                 shortly"
                    .to_owned()
            }
            Some(cause) => format!("payment refused: {reason}: {cause}"),
            None => format!("payment refused: {reason}"),
        };
        // The same code as the exact flow's `pending` answer: clients key on it to keep the payment and retry.
        let code = if pending {
            "settlement_pending"
        } else {
            "payment_required"
        };
        let mut body = json!({
            "error": {"code": code, "reason": reason, "message": message},
            "invoice_id": self.invoice.id,
        });
        if let (Kind::V1, Some(inv)) = (self.proof.kind, convert::invoice(self.invoice)) {
            let mut v1 = payment_required_v1(&inv, self.url);
            v1.error = reason.to_owned();
            if let (Value::Object(b), Ok(Value::Object(v))) = (&mut body, serde_json::to_value(v1))
            {
                b.extend(v);
            }
        }
        let mut headers = self.challenge_headers(reason);
        if pending {
            headers.push(retry_after());
        }
        stored(402, headers, body.to_string())
    }

    fn challenge_headers(&self, reason: &str) -> Vec<(String, String)> {
        let Some(inv) = convert::invoice(self.invoice) else {
            return vec![];
        };
        let mut pr = payment_required(&inv, self.url);
        pr.error = Some(
            if reason == InvalidReason::InvalidPaymentRequirements.as_str() {
                NO_MATCHING_REQUIREMENTS.to_owned()
            } else {
                reason.to_owned()
            },
        );
        vec![(
            "payment-required".to_owned(),
            esim402_core::x402::header::encode_payment_required_header(&pr),
        )]
    }
}
