//! WIT records → kernel types → JSON, for responses.

use esim402_core::invoice::{Invoice, InvoiceStatus, PaymentOption, Purchase};
use esim402_core::{ActivationRequest, InvoiceId, Network, UsdcAmount};
use serde_json::Value;

use crate::wit;

pub fn activation_to_wit(r: &ActivationRequest) -> wit::ActivationRequest {
    wit::ActivationRequest {
        region: r.region.to_string(),
        data_mb: r.data_mb.get(),
        carrier: r.carrier.as_ref().map(ToString::to_string),
        eid: r.eid.clone(),
        payer: r.payer.map(|a| a.to_checksum(None)),
        networks: r.networks.iter().map(ToString::to_string).collect(),
    }
}

fn purchase(p: &wit::Purchase) -> Purchase {
    match p {
        wit::Purchase::Activation(a) => Purchase::Activation {
            region: a.region.clone(),
            data_mb: a.data_mb,
            carrier: a.carrier.clone(),
            eid: a.eid.clone(),
            payer: a.payer.clone(),
        },
        wit::Purchase::TopUp(t) => Purchase::TopUp {
            iccid: t.iccid.clone(),
            data_mb: t.data_mb,
        },
        wit::Purchase::Switch(s) => Purchase::Switch {
            iccid: s.iccid.clone(),
            target: match &s.target {
                wit::SwitchTarget::Carrier(c) => format!("carrier:{c}"),
                wit::SwitchTarget::Region(r) => format!("region:{r}"),
            },
        },
    }
}

fn status(s: wit::InvoiceStatus) -> InvoiceStatus {
    match s {
        wit::InvoiceStatus::Open => InvoiceStatus::Open,
        wit::InvoiceStatus::Pending => InvoiceStatus::Pending,
        wit::InvoiceStatus::Paid => InvoiceStatus::Paid,
        wit::InvoiceStatus::Expired => InvoiceStatus::Expired,
        wit::InvoiceStatus::Refunded => InvoiceStatus::Refunded,
    }
}

/// The invoice as the seed's JSON; with a quote, the carrier that priced it is included.
pub fn invoice_json(inv: &wit::Invoice, quote: Option<&wit::Quote>) -> String {
    let accepts: Vec<PaymentOption> = inv
        .options
        .iter()
        .filter_map(|o| {
            Some(PaymentOption {
                network: Network::parse(&o.network).ok()?,
                asset: o.asset.clone(),
                pay_to: o.pay_to.clone(),
                amount_atomic: o.amount.to_string(),
                eip712_name: o.eip712_name.clone(),
                eip712_version: o.eip712_version.clone(),
            })
        })
        .collect();
    let Ok(id) = InvoiceId::parse(&inv.id) else {
        return "{}".into();
    };
    let Some(mut core) = Invoice::new(
        id,
        UsdcAmount::from_micros(inv.amount),
        accepts,
        purchase(&inv.purchase),
        inv.created_at,
        0,
    ) else {
        return "{}".into();
    };
    core.expires_at = inv.expires_at;
    core.status = status(inv.status);
    core.transaction = inv.transaction.clone();
    core.payer = inv.payer.clone();
    let mut v = serde_json::to_value(&core).unwrap_or(Value::Null);
    if let (Some(q), Value::Object(map)) = (quote, &mut v) {
        map.insert("carrier".into(), Value::String(q.carrier.clone()));
    }
    v.to_string()
}

pub fn sim_json(s: &wit::Sim) -> String {
    let state = match s.state {
        wit::SimState::Pending => "pending",
        wit::SimState::Active => "active",
        wit::SimState::Suspended => "suspended",
        wit::SimState::Terminated => "terminated",
        wit::SimState::Failed => "failed",
    };
    let profile = match s.profile_state {
        wit::ProfileState::Released => "released",
        wit::ProfileState::Downloaded => "downloaded",
        wit::ProfileState::Installed => "installed",
        wit::ProfileState::Error => "error",
    };
    serde_json::json!({
        "iccid": s.iccid, "carrier": s.carrier, "region": s.region, "state": state, "profile_state": profile,
        "eid": s.eid, "data_mb": s.data_mb,
        "roaming": { "allow": s.roaming.allow, "deny": s.roaming.deny },
    })
    .to_string()
}
