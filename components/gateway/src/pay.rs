//! Paid requests: an invoice paid with an x402 `exact` payment (`PAYMENT-SIGNATURE` v2, `X-PAYMENT` v1) or a
//! tx-hash proof (`X-Payment-Proof`), and the purchase it buys delivered.
//!
//! Order of effects (`reference/x402.md` §7, settle-before-execution is not used):
//! - `exact`: verify → claim → order the profile → settle → 200 with the activation code and
//!   `PAYMENT-RESPONSE`. If the order fails, the authorization is never settled: no money moves. If the
//!   settlement fails, the profile is terminated.
//! - tx-hash: the money already moved, so verify → claim the transaction (settle) → order → 200; if the order
//!   fails, a refund is owed (`verifier.owe-refund`, paid by `POST /admin/refunds/run`).
//!
//! At most once: the invoice's payment record (kernel `paid`) is claimed before any effect, so racing
//! duplicates get a terminal 409 "already settled" while one request works; the verifier's own claims on
//! the authorization nonce, the invoice and the transaction hash stand behind it. Every step that has an
//! effect is idempotent per invoice (dispatch journals the order, the verifier replays its settlement), so
//! an interrupted payment (pending settlement, pending order, an upstream fault) is continued by the same
//! payment sent again. `payment-identifier`: same id and same request → the stored answer; same id and a
//! different request → 409.

use esim402_core::ledger::{EntryFields, EntryKind};
use esim402_core::paid::{
    self, Decision, PaymentIdBinding, PaymentRecord, PaymentState, StoredResponse,
};
use esim402_core::x402::payment_id::{PaymentId, payment_id_of};
use esim402_core::x402::requirements::{
    NO_MATCHING_REQUIREMENTS, invoice_id_of, payment_required, payment_required_v1,
};
use esim402_core::x402::{
    InvalidReason, PaymentPayload, SettleResponse, decode_payment_signature_header,
    decode_x_payment_header, encode_payment_response_header,
};
use esim402_core::{ApiError, ErrorKind, InvoiceId, UsdcAmount};
use esim402_guest::kv::{self, KvError};
use serde_json::{Value, json};

use crate::{convert, dispatch, from_wit, invoices, now, verifier, wit};

/// How a payment came.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// `PAYMENT-SIGNATURE`.
    V2,
    /// `X-PAYMENT`.
    V1,
    /// `X-Payment-Proof`.
    TxHash,
}

/// A payment presented with a request.
pub struct Proof {
    kind: Kind,
    /// The header value as sent.
    value: String,
    /// The decoded x402 payload (`None` for tx-hash proofs).
    payload: Option<PaymentPayload>,
    /// Its identity (kernel [`paid::fingerprint`]).
    fingerprint: String,
}

const HEADERS: [(&str, Kind); 3] = [
    ("payment-signature", Kind::V2),
    ("x-payment", Kind::V1),
    ("x-payment-proof", Kind::TxHash),
];

impl Proof {
    /// The payment on a request: `None` without one; 400 naming the header when it is malformed or when
    /// more than one kind is sent.
    pub fn from_headers(headers: &spin_sdk::http::HeaderMap) -> Result<Option<Self>, ApiError> {
        let mut found = HEADERS.iter().filter(|(h, _)| headers.contains_key(*h));
        let Some(&(name, kind)) = found.next() else {
            return Ok(None);
        };
        if let Some((other, _)) = found.next() {
            return Err(ApiError::invalid(
                *other,
                format!("send one payment: both {name} and {other} are present"),
            ));
        }
        let value = headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .ok_or_else(|| ApiError::invalid(name, format!("{name} is not ASCII")))?
            .trim()
            .to_owned();
        let (payload, fingerprint) = match kind {
            Kind::V2 | Kind::V1 => {
                let payload = if kind == Kind::V2 {
                    decode_payment_signature_header(&value)?
                } else {
                    decode_x_payment_header(&value)?
                };
                let fp = paid::fingerprint(payload.to_json().as_bytes());
                (Some(payload), fp)
            }
            Kind::TxHash => {
                let ok = value.len() == 66
                    && value.starts_with("0x")
                    && value[2..].bytes().all(|b| b.is_ascii_hexdigit());
                if !ok {
                    return Err(ApiError::invalid(
                        "X-Payment-Proof",
                        "X-Payment-Proof must be a 0x-prefixed 32-byte transaction hash",
                    ));
                }
                let fp = paid::fingerprint(value.to_ascii_lowercase().as_bytes());
                (None, fp)
            }
        };
        Ok(Some(Self {
            kind,
            value,
            payload,
            fingerprint,
        }))
    }

    /// The payment's identity (kernel [`paid::fingerprint`]).
    pub fn fingerprint(&self) -> &str {
        &self.fingerprint
    }

    fn wit(&self) -> wit::PaymentProof {
        match self.kind {
            Kind::V2 => wit::PaymentProof::X402V2(self.value.clone()),
            Kind::V1 => wit::PaymentProof::X402V1(self.value.clone()),
            Kind::TxHash => wit::PaymentProof::TxHash(self.value.clone()),
        }
    }

    /// The invoice the payment names (v2: inside `accepted`; tx-hash: the body's `invoice_id` or the
    /// `X-Invoice-Id` header). v1 payments name none: see [`invoice_for`].
    fn invoice_id(&self, named: Option<&InvoiceId>) -> Result<Option<InvoiceId>, ApiError> {
        match (self.kind, &self.payload) {
            (Kind::TxHash, _) => named.cloned().map(Some).ok_or_else(|| {
                ApiError::invalid(
                    "invoice_id",
                    "a tx-hash proof must name its invoice: body field invoice_id or header X-Invoice-Id",
                )
            }),
            (_, Some(payload)) => Ok(invoice_id_of(payload)),
            (_, None) => Ok(None),
        }
    }

    fn payment_id(&self) -> Result<Option<PaymentId>, ApiError> {
        match &self.payload {
            Some(p) => payment_id_of(p).map_err(|m| ApiError::invalid("payment-identifier", m)),
            None => Ok(None),
        }
    }

    /// The network the payment names, as the client spelled it (v1 names stay v1 names).
    fn network(&self, invoice: &wit::Invoice) -> String {
        match &self.payload {
            Some(p) => p.network().to_owned(),
            None => invoice
                .options
                .first()
                .map(|o| o.network.clone())
                .unwrap_or_default(),
        }
    }
}

/// The invoice `proof` pays. One it names (`named`: the request's invoice id, for tx-hash proofs) is loaded.
/// A v1 payment names none: the first request that presented it issued one with `issue`, and every replay of
/// the same payment finds that one (so replays race on one invoice, like v2). A v2 payment built from someone
/// else's challenge is priced afresh with `issue`, and will match nothing (402).
pub async fn invoice_for<F, Fut>(
    proof: &Proof,
    named: Option<&InvoiceId>,
    issue: F,
) -> Result<wit::Invoice, ApiError>
where
    F: FnOnce() -> Fut,
    Fut: std::future::Future<Output = Result<wit::Invoice, ApiError>>,
{
    match proof.invoice_id(named)? {
        Some(id) => load_invoice(id.as_str()).await,
        None if proof.kind == Kind::V1 => v1_invoice(proof, issue).await,
        None => issue().await,
    }
}

async fn v1_invoice<F, Fut>(proof: &Proof, issue: F) -> Result<wit::Invoice, ApiError>
where
    F: FnOnce() -> Fut,
    Fut: std::future::Future<Output = Result<wit::Invoice, ApiError>>,
{
    let key = format!("x402/v1/{}", proof.fingerprint);
    if let Some(id) = kv::get_json::<String, ()>(&key)
        .await
        .map_err(|e| ApiError::internal(e.to_string()))?
    {
        return load_invoice(&id).await;
    }
    let invoice = issue().await?;
    let bytes = serde_json::to_vec(&invoice.id).map_err(|e| ApiError::internal(e.to_string()))?;
    match kv::insert_if_absent::<()>(&key, &bytes).await {
        Ok(()) => Ok(invoice),
        Err(KvError::Exists) => {
            let id: String = kv::get_json::<String, ()>(&key)
                .await
                .map_err(|e| ApiError::internal(e.to_string()))?
                .ok_or_else(|| ApiError::internal("v1 payment binding vanished"))?;
            load_invoice(&id).await
        }
        Err(e) => Err(ApiError::internal(format!("v1 payment binding: {e}"))),
    }
}

/// An invoice by id; 404 if unknown.
pub async fn load_invoice(id: &str) -> Result<wit::Invoice, ApiError> {
    invoices::get(id.to_owned(), now())
        .await
        .map_err(from_wit)?
        .ok_or_else(|| ApiError::not_found(format!("no invoice {id}")))
}

/// A `X-Invoice-Id` header value, parsed.
pub fn invoice_header(headers: &spin_sdk::http::HeaderMap) -> Result<Option<InvoiceId>, ApiError> {
    headers
        .get("x-invoice-id")
        .map(|v| {
            v.to_str()
                .ok()
                .and_then(|s| InvoiceId::parse(s.trim()).ok())
                .ok_or_else(|| {
                    ApiError::invalid("X-Invoice-Id", "not an invoice id (inv_<32 hex>)")
                })
        })
        .transpose()
}

/// What a paid request buys, as the route understood it; the invoice must be for exactly this.
pub enum Order {
    Activation(wit::ActivationRequest),
    Switch {
        iccid: String,
        target: wit::SwitchTarget,
    },
}

impl Order {
    fn matches(&self, purchase: &wit::Purchase) -> bool {
        let ours = match self {
            Order::Activation(a) => convert::purchase(&wit::Purchase::Activation(a.clone())),
            Order::Switch { iccid, target } => {
                convert::purchase(&wit::Purchase::Switch(wit::SwitchRequest {
                    iccid: iccid.clone(),
                    target: target.clone(),
                }))
            }
        };
        ours == convert::purchase(purchase)
    }

    async fn deliver(&self, invoice_id: &str) -> Result<wit::Sim, wit::Error> {
        match self {
            Order::Activation(a) => {
                dispatch::order_profile(a.clone(), invoice_id.to_owned(), now()).await
            }
            Order::Switch { iccid, target } => {
                dispatch::perform_switch(
                    iccid.clone(),
                    target.clone(),
                    invoice_id.to_owned(),
                    now(),
                )
                .await
            }
        }
    }
}

/// How a payment attempt left the invoice's payment record.
enum End {
    /// Refused before any effect: the invoice is free for another payment.
    Release,
    /// Interrupted at a repeatable point: the same payment continues it.
    Resume,
    /// Final.
    Done,
}

/// Pay `invoice` (already matched to the request by the caller) with `proof` and deliver `order`.
pub async fn pay(
    invoice: wit::Invoice,
    order: Order,
    proof: Proof,
    resource_url: &str,
    request_fingerprint: String,
) -> Result<StoredResponse, ApiError> {
    if !order.matches(&invoice.purchase) {
        return Err(ApiError::new(
            ErrorKind::Conflict,
            format!(
                "invoice {} pays for a different request; send the request it was issued for",
                invoice.id
            ),
        ));
    }
    let payment_id = proof.payment_id()?;
    let replay_allowed = match &payment_id {
        Some(id) => bind_payment_id(id, &request_fingerprint, &invoice.id).await?,
        None => false,
    };
    let holder = new_holder()?;
    let key = paid::payment_key(&invoice.id);
    let decision =
        kv::update_json_with(&key, |current: Option<PaymentRecord>| {
            match paid::decide(
                current.as_ref(),
                &proof.fingerprint,
                &holder,
                replay_allowed,
                now(),
            ) {
                Decision::Drive(next) => Ok((next, ())),
                other => Err(other),
            }
        });
    match decision.await {
        Ok(_) => {}
        Err(KvError::Refused(Decision::Replay(stored))) => return Ok(stored),
        Err(KvError::Refused(Decision::AlreadySettled(msg))) => {
            return Err(ApiError::new(ErrorKind::Conflict, msg));
        }
        Err(KvError::Refused(Decision::Drive(_))) => {
            return Err(ApiError::internal("payment claim refused itself"));
        }
        Err(e) => return Err(ApiError::internal(format!("payment record: {e}"))),
    }
    let attempt = Attempt {
        invoice: &invoice,
        proof: &proof,
        url: resource_url,
    };
    let (end, response) = match proof.kind {
        Kind::TxHash => attempt.prepaid(&order).await,
        Kind::V2 | Kind::V1 => attempt.exact(&order).await,
    };
    finish(&key, &holder, end, &response).await;
    Ok(response)
}

/// Write the attempt's end into the record, if we still hold it.
async fn finish(key: &str, holder: &str, end: End, response: &StoredResponse) {
    let result = kv::update_json(key, |current: Option<PaymentRecord>| {
        let mut rec = current.ok_or(())?;
        if rec.holder != holder {
            return Err(());
        }
        match end {
            End::Release => rec.state = PaymentState::Released,
            End::Resume => rec.state = PaymentState::Resumable,
            End::Done => {
                rec.state = PaymentState::Done;
                rec.response = Some(response.clone());
            }
        }
        Ok(rec)
    });
    if let Err(e) = result.await {
        eprintln!("gateway: payment record {key} not updated ({e}); a duplicate took it over");
    }
}

/// Bind a `payment-identifier` id to this request: `true` when it was already bound to exactly this
/// request (so a stored answer may be replayed); 409 when it was bound to another.
async fn bind_payment_id(
    id: &PaymentId,
    fingerprint: &str,
    invoice: &str,
) -> Result<bool, ApiError> {
    let key = paid::payment_id_key(id.as_str());
    let binding = PaymentIdBinding {
        request_fingerprint: fingerprint.to_owned(),
        invoice: invoice.to_owned(),
    };
    let bytes = serde_json::to_vec(&binding).map_err(|e| ApiError::internal(e.to_string()))?;
    match kv::insert_if_absent::<()>(&key, &bytes).await {
        Ok(()) => Ok(true),
        Err(KvError::Exists) => {
            let existing: Option<PaymentIdBinding> = kv::get_json::<_, ()>(&key)
                .await
                .map_err(|e| ApiError::internal(e.to_string()))?;
            match existing {
                Some(b) if b == binding => Ok(true),
                _ => Err(ApiError::new(
                    ErrorKind::Conflict,
                    "payment-identifier id was already used for a different payment",
                )),
            }
        }
        Err(e) => Err(ApiError::internal(format!("payment-identifier: {e}"))),
    }
}

fn new_holder() -> Result<String, ApiError> {
    let mut b = [0u8; 16];
    getrandom::fill(&mut b).map_err(|e| ApiError::internal(format!("no randomness: {e}")))?;
    Ok(b.iter().map(|x| format!("{x:02x}")).collect())
}

/// Append to the ledger. Money already moved must not be un-answered because a log write failed, so a
/// failure is logged loudly, not returned.
async fn log(kind: EntryKind, fields: EntryFields) {
    if let Err(e) = esim402_guest::ledger::append(now(), kind, fields).await {
        eprintln!("gateway: LEDGER APPEND FAILED ({kind:?}): {e}");
    }
}

struct Attempt<'a> {
    invoice: &'a wit::Invoice,
    proof: &'a Proof,
    url: &'a str,
}

impl Attempt<'_> {
    fn fields(&self) -> EntryFields {
        EntryFields::default()
            .invoice(self.invoice.id.clone())
            .amount(UsdcAmount::from_micros(self.invoice.amount))
            .network(self.proof.network(self.invoice))
    }

    /// `exact`: verify, order, settle.
    async fn exact(&self, order: &Order) -> (End, StoredResponse) {
        let payer = match self.verify().await {
            Ok(p) => p,
            Err(r) => return r,
        };
        let sim = match self.deliver(order, &payer).await {
            Ok(sim) => sim,
            Err((end, response)) => return (end, response),
        };
        match verifier::settle(self.invoice.id.clone(), self.proof.wit()).await {
            Ok(wit::Settlement::Settled(tx)) => {
                // Logged once: a repeat that finds the invoice paid already logged nothing new.
                if self.paid(&tx, &payer).await {
                    self.activated(&sim).await;
                }
                (End::Done, self.success(&sim, &tx, &payer))
            }
            Ok(wit::Settlement::Pending(tx)) => (End::Resume, self.pending(&tx, &payer)),
            Err(wit::Error::PaymentRequired(reason)) => {
                self.withdraw(&sim, &payer, &reason).await;
                (End::Done, self.settle_failed(&reason, &payer))
            }
            // The authorization settled something else meanwhile (a v1 payment replayed with another
            // request): this invoice gets nothing, and neither does its profile.
            Err(wit::Error::Conflict(msg)) => {
                self.withdraw(&sim, &payer, &msg).await;
                let e = ApiError::new(ErrorKind::Conflict, msg);
                (End::Done, stored_error(&e))
            }
            Err(e) => (End::Resume, unsettled(from_wit(e))),
        }
    }

    /// Settlement failed after the order: no money moved, so the profile must not stay with the payer.
    async fn withdraw(&self, sim: &wit::Sim, payer: &str, reason: &str) {
        if let Err(e) =
            dispatch::lifecycle(sim.iccid.clone(), wit::LifecycleAction::Terminate).await
        {
            eprintln!(
                "gateway: settlement failed and terminating {} failed: {e:?}",
                sim.iccid
            );
        }
        log(
            EntryKind::SettlementFailed,
            self.fields()
                .payer(payer.to_owned())
                .detail("reason", reason),
        )
        .await;
        log(
            EntryKind::ActivationFailed,
            self.fields()
                .detail("iccid", &sim.iccid)
                .detail("reason", "settlement failed; profile terminated"),
        )
        .await;
    }

    /// tx-hash proofs: verify, claim the transaction, order; a failed order owes a refund.
    async fn prepaid(&self, order: &Order) -> (End, StoredResponse) {
        let payer = match self.verify().await {
            Ok(p) => p,
            Err(r) => return r,
        };
        let tx = match verifier::settle(self.invoice.id.clone(), self.proof.wit()).await {
            Ok(wit::Settlement::Settled(tx)) => tx,
            Ok(wit::Settlement::Pending(tx)) => return (End::Resume, self.pending(&tx, &payer)),
            Err(wit::Error::PaymentRequired(reason)) => {
                return (End::Release, self.challenge(&reason));
            }
            Err(e @ (wit::Error::Conflict(_) | wit::Error::InvalidInput(_))) => {
                return (End::Release, stored_error(&from_wit(e)));
            }
            Err(e) => return (End::Resume, unsettled(from_wit(e))),
        };
        self.paid(&tx, &payer).await;
        match order.deliver(&self.invoice.id).await {
            Ok(sim) if sim.activation_code.is_some() => {
                self.activated(&sim).await;
                (End::Done, self.success(&sim, &tx, &payer))
            }
            Ok(_) => (End::Resume, order_pending()),
            Err(e) => {
                let err = from_wit(e);
                log(
                    EntryKind::ActivationFailed,
                    self.fields().detail("reason", &err.message),
                )
                .await;
                let refund = self.owe_refund(&err.message).await;
                let mut body = json!({ "error": err, "charged": true, "refund": refund });
                body["error"]["message"] = Value::String(format!(
                    "{}; the payment is owed back to {payer}",
                    err.message
                ));
                (End::Done, stored(err.status(), vec![], body.to_string()))
            }
        }
    }

    async fn owe_refund(&self, reason: &str) -> Value {
        let owed = verifier::owe_refund(self.invoice.id.clone(), reason.to_owned(), now()).await;
        if let Err(e) = invoices::mark_refunded(self.invoice.id.clone(), reason.to_owned()).await {
            eprintln!(
                "gateway: marking {} refunded failed: {e:?}",
                self.invoice.id
            );
        }
        match owed {
            Ok(json) => serde_json::from_str(&json).unwrap_or(Value::String(json)),
            Err(e) => {
                eprintln!(
                    "gateway: REFUND NOT RECORDED for {}: {e:?}",
                    self.invoice.id
                );
                json!({ "status": "unrecorded", "error": from_wit(e).message })
            }
        }
    }

    /// Verify; on refusal the attempt ends here with the answer to send.
    async fn verify(&self) -> Result<String, (End, StoredResponse)> {
        match verifier::verify(self.invoice.id.clone(), self.proof.wit()).await {
            Ok(payer) => {
                log(
                    EntryKind::PaymentVerified,
                    self.fields().payer(payer.clone()),
                )
                .await;
                Ok(payer)
            }
            Err(wit::Error::PaymentRequired(reason)) => {
                Err((End::Release, self.challenge(&reason)))
            }
            Err(e) => Err((End::Release, stored_error(&from_wit(e)))),
        }
    }

    /// Order the profile for an `exact` payment; a failure ends the invoice (the order journal replays it)
    /// with nothing charged.
    async fn deliver(&self, order: &Order, payer: &str) -> Result<wit::Sim, (End, StoredResponse)> {
        match order.deliver(&self.invoice.id).await {
            Ok(sim) if sim.activation_code.is_some() => Ok(sim),
            Ok(_) => Err((End::Resume, order_pending())),
            Err(e) => {
                let err = from_wit(e);
                log(
                    EntryKind::ActivationFailed,
                    self.fields()
                        .payer(payer.to_owned())
                        .detail("reason", &err.message),
                )
                .await;
                let mut body = json!({ "error": err, "charged": false });
                body["error"]["message"] = Value::String(format!(
                    "{}; no payment was taken (the authorization was not settled); request a new invoice",
                    err.message
                ));
                Err((End::Done, stored(err.status(), vec![], body.to_string())))
            }
        }
    }

    /// Mark the invoice paid and log the settlement; `false` if it was already paid (a repeat).
    async fn paid(&self, tx: &str, payer: &str) -> bool {
        if let Err(e) =
            invoices::mark_paid(self.invoice.id.clone(), tx.to_owned(), payer.to_owned()).await
        {
            // A repeat after an interruption finds it paid already.
            if !matches!(e, wit::Error::Conflict(_)) {
                eprintln!("gateway: marking {} paid failed: {e:?}", self.invoice.id);
            }
            return false;
        }
        log(
            EntryKind::SettlementConfirmed,
            self.fields().payer(payer.to_owned()).tx_hash(tx.to_owned()),
        )
        .await;
        true
    }

    async fn activated(&self, sim: &wit::Sim) {
        log(
            EntryKind::ActivationCompleted,
            self.fields()
                .detail("iccid", &sim.iccid)
                .detail("carrier", &sim.carrier),
        )
        .await;
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
            network: self.proof.network(self.invoice),
            amount: None,
            extensions: None,
        };
        (
            self.response_header().to_owned(),
            encode_payment_response_header(&r),
        )
    }

    fn success(&self, sim: &wit::Sim, tx: &str, payer: &str) -> StoredResponse {
        let network = self.proof.network(self.invoice);
        let mut body = convert::sim_value(sim);
        body["activation_code"] = json!(sim.activation_code);
        body["transaction"] = json!(tx);
        body["payer"] = json!(payer);
        body["network"] = json!(network);
        body["amount_usdc"] = json!(UsdcAmount::from_micros(self.invoice.amount));
        stored(
            200,
            vec![self.settle_response(None, tx, payer)],
            body.to_string(),
        )
    }

    /// Broadcast, not yet confirmed: 402 with the non-terminal `settlement_pending`; the same payment sent
    /// again reconciles it (nothing is broadcast twice).
    fn pending(&self, tx: &str, payer: &str) -> StoredResponse {
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

    fn settle_failed(&self, reason: &str, payer: &str) -> StoredResponse {
        let settle = self.settle_response(Some((reason, None)), "", payer);
        let body = json!({
            "error": {"code": "payment_required", "reason": reason,
                      "message": format!("settlement failed ({reason}); no payment was taken and the profile was withdrawn; request a new invoice")},
            "invoice_id": self.invoice.id, "charged": false,
        });
        stored(402, vec![settle], body.to_string())
    }

    /// 402 for a refused payment: the invoice's challenge again, with the reason as its `error`.
    fn challenge(&self, reason: &str) -> StoredResponse {
        let body = json!({
            "error": {"code": "payment_required", "reason": reason,
                      "message": format!("payment refused: {reason}")},
            "invoice_id": self.invoice.id,
        });
        let mut body = body;
        if let (Kind::V1, Some(inv)) = (self.proof.kind, convert::invoice_core(self.invoice)) {
            let mut v1 = payment_required_v1(&inv, self.url);
            v1.error = reason.to_owned();
            if let (Value::Object(b), Ok(Value::Object(v))) = (&mut body, serde_json::to_value(v1))
            {
                b.extend(v);
            }
        }
        stored(402, self.challenge_headers(reason), body.to_string())
    }

    fn challenge_headers(&self, reason: &str) -> Vec<(String, String)> {
        let Some(inv) = convert::invoice_core(self.invoice) else {
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

fn retry_after() -> (String, String) {
    ("retry-after".to_owned(), "2".to_owned())
}

fn stored(status: u16, headers: Vec<(String, String)>, body: String) -> StoredResponse {
    StoredResponse {
        status,
        headers,
        body,
    }
}

fn stored_error(e: &ApiError) -> StoredResponse {
    stored(e.status(), vec![], e.to_json())
}

/// The order is still running at the carrier (it outlived the dispatch budget): nothing is settled yet.
fn order_pending() -> StoredResponse {
    let body = json!({"error": {"code": "unavailable",
        "message": "the carrier has not confirmed the profile yet; nothing was charged for it yet; send the same payment again shortly"}});
    stored(503, vec![retry_after()], body.to_string())
}

/// An upstream fault after the order: the same payment sent again continues where this one stopped.
fn unsettled(e: ApiError) -> StoredResponse {
    let mut body = json!({ "error": e });
    body["error"]["message"] = Value::String(format!(
        "{}; the payment was not completed; send the same payment again to continue",
        e.message
    ));
    stored(e.status().max(500), vec![retry_after()], body.to_string())
}
