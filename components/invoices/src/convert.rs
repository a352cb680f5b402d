//! Conversions between the WIT records and the kernel's types.

use esim402_core::invoice::{Invoice, InvoiceStatus, Purchase};

use crate::wit;

pub fn purchase_from_wit(p: wit::Purchase) -> Purchase {
    match p {
        wit::Purchase::Activation(a) => Purchase::Activation {
            region: a.region,
            data_mb: a.data_mb,
            carrier: a.carrier,
            eid: a.eid,
            payer: a.payer,
            allow_failover: a.allow_failover,
        },
        wit::Purchase::TopUp(t) => Purchase::TopUp {
            iccid: t.iccid,
            data_mb: t.data_mb,
        },
        wit::Purchase::Switch(s) => Purchase::Switch {
            iccid: s.iccid,
            target: match s.target {
                wit::SwitchTarget::Carrier(c) => format!("carrier:{c}"),
                wit::SwitchTarget::Region(r) => format!("region:{r}"),
            },
        },
    }
}

fn purchase_to_wit(p: &Purchase) -> wit::Purchase {
    match p {
        Purchase::Activation {
            region,
            data_mb,
            carrier,
            eid,
            payer,
            allow_failover,
        } => wit::Purchase::Activation(wit::ActivationRequest {
            region: region.clone(),
            data_mb: *data_mb,
            carrier: carrier.clone(),
            eid: eid.clone(),
            payer: payer.clone(),
            networks: Vec::new(),
            allow_failover: *allow_failover,
        }),
        Purchase::TopUp { iccid, data_mb } => wit::Purchase::TopUp(wit::TopUpRequest {
            iccid: iccid.clone(),
            data_mb: *data_mb,
        }),
        Purchase::Switch { iccid, target } => {
            let target = match target.split_once(':') {
                Some(("region", r)) => wit::SwitchTarget::Region(r.to_owned()),
                Some((_, c)) => wit::SwitchTarget::Carrier(c.to_owned()),
                None => wit::SwitchTarget::Carrier(target.clone()),
            };
            wit::Purchase::Switch(wit::SwitchRequest {
                iccid: iccid.clone(),
                target,
            })
        }
    }
}

fn status_to_wit(s: InvoiceStatus) -> wit::InvoiceStatus {
    match s {
        InvoiceStatus::Open => wit::InvoiceStatus::Open,
        InvoiceStatus::Pending => wit::InvoiceStatus::Pending,
        InvoiceStatus::Paid => wit::InvoiceStatus::Paid,
        InvoiceStatus::Expired => wit::InvoiceStatus::Expired,
        InvoiceStatus::Refunded => wit::InvoiceStatus::Refunded,
    }
}

/// The WIT view of an invoice as seen at `now` (an overdue open invoice reads as expired).
pub fn invoice_to_wit(inv: &Invoice, now: u64) -> wit::Invoice {
    wit::Invoice {
        id: inv.invoice_id.to_string(),
        purchase: purchase_to_wit(&inv.purchase),
        amount: inv.amount_usdc.micros(),
        options: inv
            .accepts
            .iter()
            .map(|o| wit::PaymentOption {
                network: o.network.to_string(),
                asset: o.asset.clone(),
                pay_to: o.pay_to.clone(),
                amount: o.amount_atomic.parse().unwrap_or(inv.amount_usdc.micros()),
                eip712_name: o.eip712_name.clone(),
                eip712_version: o.eip712_version.clone(),
            })
            .collect(),
        created_at: inv.created_at,
        expires_at: inv.expires_at,
        status: status_to_wit(inv.status_at(now)),
        transaction: inv.transaction.clone(),
        payer: inv.payer.clone(),
    }
}
