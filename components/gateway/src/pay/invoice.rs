//! Which invoice a paid request pays: the one its payment or the request names ([`named_invoice`], refused
//! before the payment is looked up when they disagree: [`refused_unpaid`]), else one sealed for the request
//! ([`invoice_for`]).

use esim402_core::paid::StoredResponse;
use esim402_core::{ApiError, InvoiceId};
use esim402_guest::wit;

use super::answers;
use super::proof::{Kind, Proof};
use crate::{from_wit, invoices, now};

/// The invoice `proof` pays. One it names (`named`: the request's invoice id, for tx-hash proofs) is opened.
/// A v1 payment names none: the first request that presented it sealed one with `issue`, and every replay of
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
        None if proof.kind == Kind::V1 => {
            let candidate = issue().await?;
            let bound = invoices::v1_invoice(proof.fingerprint.clone(), candidate.id.clone())
                .await
                .map_err(from_wit)?;
            if bound == candidate.id {
                Ok(candidate)
            } else {
                load_invoice(&bound).await
            }
        }
        None => issue().await,
    }
}

/// An invoice by id, with its status; 404 if it was not issued here.
pub async fn load_invoice(id: &str) -> Result<wit::Invoice, ApiError> {
    invoices::get(id.to_owned(), now())
        .await
        .map_err(from_wit)?
        .ok_or_else(|| ApiError::not_found(format!("no invoice {id}")))
}

/// The invoice a paid request names: its body's `invoice_id` or its `X-Invoice-Id` header. Both naming different
/// invoices, or either naming another than the one `proof` (an x402 v2 payment) pays, is 400 (before, the body's
/// won silently, and a v2 payment's invoice won over both).
pub fn named_invoice(
    proof: &Proof,
    body: Option<InvoiceId>,
    header: Option<InvoiceId>,
) -> Result<Option<InvoiceId>, ApiError> {
    let named = match (body, header) {
        (Some(b), Some(h)) if b != h => {
            return Err(ApiError::invalid(
                "X-Invoice-Id",
                format!("the body names invoice {b} and X-Invoice-Id names {h}: name one"),
            ));
        }
        (b, h) => b.or(h),
    };
    proof.invoice_id(named.as_ref())?;
    Ok(named)
}

/// A paid request refused by a check made before its payment is looked up. Its answer says `charged: false`
/// (an agent frees its spend) only for an x402 v2 payment whose invoice no payment has touched (open, expired
/// or unknown here): one sent again after a build without the check had taken it would otherwise be told
/// "not charged", and paid again. Any other (a v1 payload names no invoice; a tx-hash proof's transfer was made
/// before it came; a store fault reading the invoice) gets the error alone, which decides nothing.
pub async fn refused_unpaid(proof: &Proof, e: ApiError) -> Result<StoredResponse, ApiError> {
    let invoice = match proof.invoice_id(None) {
        Ok(Some(id)) if proof.kind == Kind::V2 => {
            match invoices::get(id.as_str().to_owned(), now()).await {
                Ok(invoice) => invoice,
                Err(_) => return Err(e),
            }
        }
        _ => return Err(e),
    };
    refused_unpaid_for(proof, invoice.as_ref(), e)
}

/// [`refused_unpaid`] of a payment whose invoice the caller has read already (`None`: not issued here).
pub fn refused_unpaid_for(
    proof: &Proof,
    invoice: Option<&wit::Invoice>,
    e: ApiError,
) -> Result<StoredResponse, ApiError> {
    if proof.kind == Kind::V2 && invoice.is_none_or(untouched) {
        Ok(answers::uncharged(&e))
    } else {
        Err(e)
    }
}

/// Whether no payment has touched `invoice`: open, or expired without one.
pub fn untouched(invoice: &wit::Invoice) -> bool {
    matches!(
        invoice.status,
        wit::InvoiceStatus::Open | wit::InvoiceStatus::Expired
    )
}

/// A `X-Invoice-Id` header value, parsed.
pub fn invoice_header(headers: &spin_sdk::http::HeaderMap) -> Result<Option<InvoiceId>, ApiError> {
    headers
        .get("x-invoice-id")
        .map(|v| {
            v.to_str()
                .ok()
                .and_then(|s| InvoiceId::parse(s.trim()).ok())
                .ok_or_else(|| ApiError::invalid("X-Invoice-Id", "not an invoice id (inv_…)"))
        })
        .transpose()
}
