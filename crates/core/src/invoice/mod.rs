//! Invoices as shown over HTTP (the seed's shape: `invoice_id`, `amount_usdc`, `recipient`, `chain`,
//! `expires_at`, plus every accepted payment option). An invoice is not stored: its terms travel sealed in its
//! id ([`token`]), and only a payment creates state (the payment record, `crate::paid`).

pub mod keyring;
pub mod token;

use serde::{Deserialize, Serialize};

use crate::chain::Network;
use crate::ids::InvoiceId;
use crate::money::UsdcAmount;

/// Lifecycle of an invoice.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum InvoiceStatus {
    /// Awaiting payment.
    Open,
    /// A payment was accepted and is settling.
    Pending,
    /// Settled.
    Paid,
    /// Past `expires_at` unpaid.
    Expired,
    /// Paid, but the purchase failed: the money is owed back.
    Refunded,
    /// A payment's purchase failed without moving money, which ended the invoice: it takes no other payment
    /// (request a new invoice).
    Failed,
}

/// One way to pay.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PaymentOption {
    /// CAIP-2 network.
    pub network: Network,
    /// USDC contract, checksummed.
    pub asset: String,
    /// Recipient, checksummed.
    pub pay_to: String,
    /// Atomic units, as a decimal string.
    pub amount_atomic: String,
    /// EIP-712 domain name of the token.
    pub eip712_name: String,
    /// EIP-712 domain version of the token.
    pub eip712_version: String,
}

/// What the invoice buys, as shown to clients.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Purchase {
    /// A new eSIM.
    Activation {
        /// Region slug.
        region: String,
        /// Bundle.
        data_mb: u32,
        /// Requested carrier.
        #[serde(skip_serializing_if = "Option::is_none", default)]
        carrier: Option<String>,
        /// Target EID.
        #[serde(skip_serializing_if = "Option::is_none", default)]
        eid: Option<String>,
        /// Paying wallet.
        #[serde(skip_serializing_if = "Option::is_none", default)]
        payer: Option<String>,
        /// With `carrier`: may dispatch fall back to the region's other carriers?
        #[serde(skip_serializing_if = "std::ops::Not::not", default)]
        allow_failover: bool,
    },
    /// More data for a SIM.
    TopUp {
        /// SIM.
        iccid: String,
        /// Bundle.
        data_mb: u32,
        /// Paying wallet (needed only by tx-hash proofs, which must come from it).
        #[serde(skip_serializing_if = "Option::is_none", default)]
        payer: Option<String>,
    },
    /// Move a SIM to another carrier or region.
    Switch {
        /// SIM.
        iccid: String,
        /// `carrier:<id>` or `region:<slug>`.
        target: String,
    },
}

/// An invoice.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Invoice {
    /// Id.
    pub invoice_id: InvoiceId,
    /// Price in USDC (decimal string).
    pub amount_usdc: UsdcAmount,
    /// Price in atomic units (decimal string), as x402 carries it.
    pub amount_atomic: String,
    /// Recipient of the first (preferred) option.
    pub recipient: String,
    /// Network of the first (preferred) option.
    pub chain: Network,
    /// Token of the first option.
    pub asset: String,
    /// Every accepted way to pay.
    pub accepts: Vec<PaymentOption>,
    /// What it buys.
    pub purchase: Purchase,
    /// Status.
    pub status: InvoiceStatus,
    /// Issued at (unix seconds).
    pub created_at: u64,
    /// Deadline (unix seconds).
    pub expires_at: u64,
    /// Settlement transaction.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub transaction: Option<String>,
    /// Who paid.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub payer: Option<String>,
    /// An activation's sealed quote (token [`token::Terms::quoted`]): what its data was bought at. Internal:
    /// not part of the invoice's JSON.
    #[serde(skip)]
    pub quoted: Option<crate::pricing::SealedQuote>,
}

impl Invoice {
    /// A new open invoice; `accepts` must not be empty (the first option is the headline one).
    pub fn new(
        id: InvoiceId,
        amount: UsdcAmount,
        accepts: Vec<PaymentOption>,
        purchase: Purchase,
        now: u64,
        ttl_secs: u64,
    ) -> Option<Self> {
        let first = accepts.first()?.clone();
        Some(Self {
            invoice_id: id,
            amount_usdc: amount,
            amount_atomic: amount.micros().to_string(),
            recipient: first.pay_to,
            chain: first.network,
            asset: first.asset,
            accepts,
            purchase,
            status: InvoiceStatus::Open,
            created_at: now,
            expires_at: now.saturating_add(ttl_secs),
            transaction: None,
            payer: None,
            quoted: None,
        })
    }

    /// The invoice `id` offers: `terms`, payable by `accepts` (built from the terms' networks by the caller,
    /// which knows each network's token), open until a payment record says otherwise. `None` without an option.
    pub fn from_terms(
        id: InvoiceId,
        terms: &token::Terms,
        accepts: Vec<PaymentOption>,
    ) -> Option<Self> {
        let mut inv = Self::new(
            id,
            terms.amount,
            accepts,
            terms.purchase.clone(),
            terms.created_at,
            terms.expires_at.saturating_sub(terms.created_at),
        )?;
        inv.quoted = terms.quoted.clone();
        // The options spell the same address checksummed already (a checksum costs a keccak): reuse it.
        let lower = format!("{:#x}", terms.pay_to);
        inv.recipient = inv
            .accepts
            .iter()
            .find(|o| o.pay_to.eq_ignore_ascii_case(&lower))
            .map_or_else(|| terms.pay_to.to_checksum(None), |o| o.pay_to.clone());
        Some(inv)
    }

    /// The wallet a tx-hash proof of this invoice must come from and be signed by (kernel
    /// `evm::proof_signature`): the activation's or top-up's `payer`, else the invoice's. `None`: it names
    /// none, and takes no tx-hash proof.
    pub fn proof_payer(&self) -> Option<&str> {
        match &self.purchase {
            Purchase::Activation { payer, .. } | Purchase::TopUp { payer, .. } => payer.as_deref(),
            Purchase::Switch { .. } => None,
        }
        .or(self.payer.as_deref())
    }

    /// The status as seen at `now`: an open invoice past its deadline reads as expired.
    pub fn status_at(&self, now: u64) -> InvoiceStatus {
        if self.status == InvoiceStatus::Open && now >= self.expires_at {
            InvoiceStatus::Expired
        } else {
            self.status
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Invoice {
        let opt = PaymentOption {
            network: Network::parse("eip155:31337").unwrap(),
            asset: "0x5FbDB2315678afecb367f032d93F642f64180aa3".into(),
            pay_to: "0x3C44CdDdB6a900fa2b585dd299e03d12FA4293BC".into(),
            amount_atomic: "420000".into(),
            eip712_name: "USD Coin".into(),
            eip712_version: "2".into(),
        };
        let purchase = Purchase::Activation {
            region: "us-west".into(),
            data_mb: 100,
            carrier: None,
            eid: None,
            payer: None,
            allow_failover: false,
        };
        Invoice::new(
            InvoiceId::parse("inv_test.1").unwrap(),
            UsdcAmount::from_micros(420_000),
            vec![opt],
            purchase,
            1000,
            900,
        )
        .unwrap()
    }

    #[test]
    fn seed_shape_fields_are_present() {
        let v = serde_json::to_value(sample()).unwrap();
        assert_eq!(v["invoice_id"], "inv_test.1");
        assert_eq!(v["amount_usdc"], "0.42");
        assert_eq!(v["amount_atomic"], "420000");
        assert_eq!(v["recipient"], "0x3C44CdDdB6a900fa2b585dd299e03d12FA4293BC");
        assert_eq!(v["chain"], "eip155:31337");
        assert_eq!(v["expires_at"], 1900);
        assert_eq!(v["status"], "open");
        assert_eq!(v["purchase"]["kind"], "activation");
        let back: Invoice = serde_json::from_value(v).unwrap();
        assert_eq!(back, sample());
    }

    #[test]
    fn expiry_is_derived_from_time() {
        let inv = sample();
        assert_eq!(inv.status_at(1899), InvoiceStatus::Open);
        assert_eq!(inv.status_at(1900), InvoiceStatus::Expired);
        assert!(
            Invoice::new(
                inv.invoice_id.clone(),
                inv.amount_usdc,
                vec![],
                inv.purchase.clone(),
                0,
                1
            )
            .is_none()
        );
    }
}
