//! A payment presented with a request, decoded once: an x402 `exact` payload (`PAYMENT-SIGNATURE` v2,
//! `X-PAYMENT` v1) or a tx-hash proof (`X-Payment-Proof` with the payer's `X-Payment-Proof-Signature`). The
//! components get the payload JSON or the signed hash; the payment's identity is its fingerprint.

use esim402_core::paid;
use esim402_core::x402::exact::TransferAuthorization;
use esim402_core::x402::payment_id::{PaymentId, payment_id_of};
use esim402_core::x402::requirements::invoice_id_of;
use esim402_core::x402::{
    PaymentPayload, decode_payment_signature_header, decode_x_payment_header,
};
use esim402_core::{ApiError, InvoiceId};
use esim402_guest::wit;

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

/// A payment presented with a request, decoded.
pub struct Proof {
    pub(super) kind: Kind,
    /// The header value as sent (the transaction hash, for tx-hash proofs).
    value: String,
    /// The decoded x402 payload (`None` for tx-hash proofs).
    payload: Option<PaymentPayload>,
    /// A tx-hash proof's `X-Payment-Proof-Signature` (checked by the verifier).
    signature: Option<String>,
    /// Its identity (kernel [`paid::fingerprint`]).
    pub(super) fingerprint: String,
}

/// The payer's signature that goes with `X-Payment-Proof`.
const PROOF_SIGNATURE: &str = "x-payment-proof-signature";

/// The headers that carry a payment, and what each carries.
pub const HEADERS: [(&str, Kind); 3] = [
    ("payment-signature", Kind::V2),
    ("x-payment", Kind::V1),
    ("x-payment-proof", Kind::TxHash),
];

impl Proof {
    /// An x402 `exact` payment (not a tx-hash proof).
    pub fn is_exact(&self) -> bool {
        self.kind != Kind::TxHash
    }

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
                let fp = paid::fingerprint(payload.fingerprint_json().as_bytes());
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
        let signature = match kind {
            Kind::TxHash => Some(
                headers
                    .get(PROOF_SIGNATURE)
                    .and_then(|v| v.to_str().ok())
                    .map(|v| v.trim().to_owned())
                    // An EIP-191 signature, r‖s‖v: checked here so a malformed one is refused before the
                    // payment it names is touched (the verifier checks what it signs).
                    .filter(|v| {
                        v.len() == 132
                            && v.starts_with("0x")
                            && v[2..].bytes().all(|b| b.is_ascii_hexdigit())
                    })
                    .ok_or_else(|| {
                        ApiError::invalid(
                            "X-Payment-Proof-Signature",
                            "a tx-hash proof needs X-Payment-Proof-Signature (0x and 130 hex digits): the payer's personal_sign (EIP-191) of the three lines \"esim402 payment proof\", \"invoice: <invoice id>\", \"transaction: <tx hash>\"",
                        )
                    })?,
            ),
            Kind::V2 | Kind::V1 => None,
        };
        // A v1 payload names no invoice whichever header carried it: it is bound to one as v1 payloads are
        // (`invoice_for`), its codes withheld on a resend as theirs are, and it is answered as v1. Taken for v2
        // (it came in `PAYMENT-SIGNATURE`), every resend got a new invoice and could never collect the first.
        let kind = match &payload {
            Some(PaymentPayload::V1(_)) => Kind::V1,
            _ => kind,
        };
        Ok(Some(Self {
            kind,
            value,
            payload,
            signature,
            fingerprint,
        }))
    }

    /// The payment's identity (kernel [`paid::fingerprint`]).
    pub fn fingerprint(&self) -> &str {
        &self.fingerprint
    }

    /// The payer an x402 payload names (`authorization.from`), unverified: the same for every resend of one
    /// payment, since it is part of its fingerprint. `None` for tx-hash proofs.
    pub(crate) fn claimed_payer(&self) -> Option<String> {
        self.payload
            .as_ref()
            .map(|p| p.exact().authorization.from.clone())
    }

    /// An x402 payload's `validBefore` (unix seconds, unverified; past `u64`: `u64::MAX`): after it, the
    /// authorization can no longer settle. `None` for tx-hash proofs (the money moved) and for a payload
    /// whose authorization does not parse (the verifier refuses it before anything is ordered).
    pub(super) fn valid_before(&self) -> Option<u64> {
        let p = self.payload.as_ref()?;
        let a = TransferAuthorization::parse(&p.exact().authorization).ok()?;
        Some(u64::try_from(a.valid_before).unwrap_or(u64::MAX))
    }

    /// As the components take it: the payload's JSON, or the transaction hash.
    pub(super) fn wit(&self) -> wit::PaymentProof {
        match &self.payload {
            Some(p) => wit::PaymentProof::X402(p.to_json()),
            None => wit::PaymentProof::TxHash(wit::TxHashProof {
                hash: self.value.clone(),
                signature: self.signature.clone().unwrap_or_default(),
            }),
        }
    }

    /// The invoice the payment names (v2: inside `accepted`; tx-hash: the body's `invoice_id` or the
    /// `X-Invoice-Id` header). v1 payments name none: see [`super::invoice_for`].
    pub(super) fn invoice_id(
        &self,
        named: Option<&InvoiceId>,
    ) -> Result<Option<InvoiceId>, ApiError> {
        match (self.kind, &self.payload) {
            (Kind::TxHash, _) => named.cloned().map(Some).ok_or_else(|| {
                ApiError::invalid(
                    "invoice_id",
                    "a tx-hash proof must name its invoice: body field invoice_id or header X-Invoice-Id",
                )
            }),
            (_, Some(payload)) => match (invoice_id_of(payload), named) {
                // A v2 payment pays the invoice it names: a request naming another is refused, not ignored.
                (Some(paid), Some(other)) if paid != *other => Err(ApiError::invalid(
                    "invoice_id",
                    format!("the payment pays invoice {paid}, not {other} which the request names"),
                )),
                (id, _) => Ok(id),
            },
            (_, None) => Ok(None),
        }
    }

    pub(super) fn payment_id(&self) -> Result<Option<PaymentId>, ApiError> {
        match &self.payload {
            Some(p) => payment_id_of(p).map_err(|m| ApiError::invalid("payment-identifier", m)),
            None => Ok(None),
        }
    }

    /// Whether a tx-hash proof is signed by the wallet `invoice` names (kernel `evm::proof_signature`), checked
    /// before the payment is touched: a made-up hash with any signature would otherwise claim the invoice's
    /// payment record and log it, and a record whose attempt stopped before the verifier's check could be ended
    /// by nobody. `true` for x402 payloads (the verifier checks their signature against the chain state). A
    /// signature that is not hex, or an invoice naming no payer, is 400 (as the verifier answers them).
    pub(super) fn signed_by_payer(&self, invoice: &wit::Invoice) -> Result<bool, ApiError> {
        use esim402_core::evm::proof_signature::{self, ProofSignatureError};
        if self.kind != Kind::TxHash {
            return Ok(true);
        }
        let opened = esim402_guest::convert::invoice(invoice)
            .ok_or_else(|| ApiError::internal(format!("invoice {} is malformed", invoice.id)))?;
        let payer = opened.proof_payer().map(str::to_owned).ok_or_else(|| {
            ApiError::invalid(
                "payer",
                "a tx-hash proof needs the invoice to name its payer (the activation's or top-up's `payer`)",
            )
        })?;
        let payer = esim402_core::chain::parse_address(&payer)
            .map_err(|e| ApiError::invalid("payer", e.0))?;
        let hash = esim402_core::evm::quantity::parse_b256(&self.value)
            .map_err(|e| ApiError::invalid("X-Payment-Proof", e.to_string()))?;
        let signature = self.signature.as_deref().unwrap_or_default();
        let id = InvoiceId::parse(&invoice.id).map_err(|e| ApiError::invalid("invoice_id", e.0))?;
        match proof_signature::check(id.as_str(), hash, signature, payer) {
            Ok(()) => Ok(true),
            Err(e @ ProofSignatureError::Hex(_)) => Err(ApiError::invalid(
                "X-Payment-Proof-Signature",
                e.to_string(),
            )),
            Err(_) => Ok(false),
        }
    }

    /// The network the payment names, as the client spelled it (v1 names stay v1 names); for a tx-hash proof,
    /// before the verifier found its transfer, the invoice's preferred one.
    pub(super) fn network(&self, invoice: &wit::Invoice) -> String {
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
