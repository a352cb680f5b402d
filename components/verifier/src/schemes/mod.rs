//! Payment schemes behind one interface: each proves a payment against an invoice ([`Scheme::verify`]) and
//! settles it at most once ([`Scheme::settle`], given what `verify` established, so the chain is not asked
//! the same questions twice). A new proof type is a new module implementing [`Scheme`], not a branch in
//! several files.
//!
//! - [`exact`]: x402 `exact` (EIP-3009 `transferWithAuthorization`), settled by our broadcast;
//! - [`txhash`]: the seed flow, a USDC transfer the payer already sent, proved by its hash.

pub mod exact;
pub mod payment;
pub mod txhash;
pub mod used_first;

use esim402_core::InvoiceId;
use esim402_core::invoice::{Invoice, InvoiceStatus};
use esim402_guest::convert::{self, internal, invalid};
use esim402_guest::wit;

pub use exact::Exact;
pub use txhash::TxHash;

/// One way to pay an invoice.
pub trait Scheme {
    /// What the payment arrives as (the payload JSON, a signed transaction hash).
    type Proof: ?Sized;
    /// Check `proof` pays `invoice`, on chain, without moving money.
    async fn verify(
        &self,
        invoice: &wit::Invoice,
        proof: &Self::Proof,
    ) -> Result<wit::Verified, wit::Error>;
    /// Settle a proof `verify` accepted, at most once.
    async fn settle(
        &self,
        invoice: &wit::Invoice,
        proof: &Self::Proof,
        verified: &wit::Verified,
    ) -> Result<wit::Settlement, wit::Error>;
}

/// The kernel's invoice from the WIT value the gateway passed (it came from the invoices component).
pub fn invoice(inv: &wit::Invoice) -> Result<(InvoiceId, Invoice), wit::Error> {
    let id = InvoiceId::parse(&inv.id).map_err(|e| invalid("invoice_id", e.0))?;
    let invoice =
        convert::invoice(inv).ok_or_else(|| internal(format!("invoice {id} is malformed")))?;
    Ok((id, invoice))
}

/// Only an open invoice takes a new payment.
pub fn check_open(invoice: &Invoice, now: u64) -> Result<(), wit::Error> {
    let id = &invoice.invoice_id;
    match invoice.status_at(now) {
        InvoiceStatus::Open | InvoiceStatus::Pending => Ok(()),
        InvoiceStatus::Expired => Err(wit::Error::Expired(format!("invoice {id} has expired"))),
        other => Err(wit::Error::Conflict(
            format!("invoice {id} is {other:?}").to_lowercase(),
        )),
    }
}

/// Only an invoice not yet paid (or owed back) takes a payment already made; its deadline is judged by when
/// the money moved (a tx-hash proof's block, kernel `evm::receipt::mined`), not here.
pub fn check_not_ended(invoice: &Invoice) -> Result<(), wit::Error> {
    match invoice.status {
        InvoiceStatus::Paid | InvoiceStatus::Refunded | InvoiceStatus::Failed => {
            Err(wit::Error::Conflict(
                format!("invoice {} is {:?}", invoice.invoice_id, invoice.status).to_lowercase(),
            ))
        }
        InvoiceStatus::Open | InvoiceStatus::Pending | InvoiceStatus::Expired => Ok(()),
    }
}

/// `already settled` (409).
pub fn already_settled() -> wit::Error {
    wit::Error::Conflict("already settled".into())
}
