//! Conversions between the shared WIT types ([`crate::wit`]) and the kernel's, written once for every
//! component.

use esim402_core::invoice::{Invoice, InvoiceStatus, PaymentOption, Purchase};
use esim402_core::ledger::{EntryFields, EntryKind};
use esim402_core::order::StoredSim;
use esim402_core::paid::StoredResponse;
use esim402_core::pricing::SealedQuote;
use esim402_core::{ApiError, CarrierId, ErrorKind, Network, UsdcAmount};

use crate::kv::KvError;
use crate::wit;

/// An input error naming `field`.
pub fn invalid(field: &str, message: impl Into<String>) -> wit::Error {
    wit::Error::InvalidInput(wit::FieldError {
        field: field.into(),
        message: message.into(),
    })
}

/// An internal error.
pub fn internal(message: impl std::fmt::Display) -> wit::Error {
    wit::Error::Internal(message.to_string())
}

/// A key-value failure: the update function's own refusal passes through; a store that failed or a key that
/// stayed contended is `unavailable` (503: the same request may succeed later); anything else (a value that
/// does not decode) is internal.
pub fn kv_err(e: KvError<wit::Error>) -> wit::Error {
    match e {
        KvError::Refused(e) => e,
        other => kv_fault("", other),
    }
}

/// A key-value failure with nothing of the caller's own in it, `context` before the message (e.g. `"ledger"`):
/// as [`kv_err`].
pub fn kv_fault<E>(context: &str, e: KvError<E>) -> wit::Error {
    let message = if context.is_empty() {
        e.to_string()
    } else {
        format!("{context}: {e}")
    };
    match e {
        KvError::Store(_) | KvError::Contended(_) => wit::Error::Unavailable(message),
        KvError::Exists | KvError::Corrupt { .. } | KvError::Refused(_) => internal(message),
    }
}

/// A failed call of `spin:key-value` itself (opening the store, a read): the store failed, as [`kv_fault`]
/// maps it.
pub fn store_err(e: spin_sdk::key_value::Error) -> wit::Error {
    kv_fault("", KvError::<()>::Store(format!("{e:?}")))
}

/// The one mapping from the WIT error to the kernel's API error (and so to an HTTP status).
pub fn api_error(e: wit::Error) -> ApiError {
    match e {
        wit::Error::InvalidInput(f) => ApiError::invalid(f.field, f.message),
        wit::Error::NotFound(m) => ApiError::not_found(m),
        wit::Error::Conflict(m) => ApiError::new(ErrorKind::Conflict, m),
        wit::Error::Expired(m) => ApiError::new(ErrorKind::Expired, m),
        wit::Error::PaymentRequired(m) => ApiError::new(ErrorKind::PaymentRequired, m),
        wit::Error::Unavailable(m) => ApiError::new(ErrorKind::Unavailable, m),
        wit::Error::Internal(m) => ApiError::internal(m),
        wit::Error::Unauthorized(m) => ApiError::new(ErrorKind::Unauthorized, m),
        wit::Error::Forbidden(m) => ApiError::new(ErrorKind::Forbidden, m),
    }
}

/// A WIT error as one line of text.
pub fn message(e: &wit::Error) -> String {
    match e {
        wit::Error::InvalidInput(f) => format!("{}: {}", f.field, f.message),
        wit::Error::NotFound(m)
        | wit::Error::Conflict(m)
        | wit::Error::Expired(m)
        | wit::Error::PaymentRequired(m)
        | wit::Error::Unavailable(m)
        | wit::Error::Internal(m)
        | wit::Error::Unauthorized(m)
        | wit::Error::Forbidden(m) => m.clone(),
    }
}

/// The kernel's purchase.
pub fn purchase(p: &wit::Purchase) -> Purchase {
    match p {
        wit::Purchase::Activation(a) => Purchase::Activation {
            region: a.region.clone(),
            data_mb: a.data_mb,
            carrier: a.carrier.clone(),
            eid: a.eid.clone(),
            payer: a.payer.clone(),
            allow_failover: a.allow_failover,
        },
        wit::Purchase::TopUp(t) => Purchase::TopUp {
            iccid: t.iccid.clone(),
            data_mb: t.data_mb,
            payer: t.payer.clone(),
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

/// The WIT purchase.
pub fn purchase_to_wit(p: &Purchase) -> wit::Purchase {
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
        Purchase::TopUp {
            iccid,
            data_mb,
            payer,
        } => wit::Purchase::TopUp(wit::TopUpRequest {
            iccid: iccid.clone(),
            data_mb: *data_mb,
            payer: payer.clone(),
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
        InvoiceStatus::Failed => wit::InvoiceStatus::Failed,
    }
}

fn status_from_wit(s: wit::InvoiceStatus) -> InvoiceStatus {
    match s {
        wit::InvoiceStatus::Open => InvoiceStatus::Open,
        wit::InvoiceStatus::Pending => InvoiceStatus::Pending,
        wit::InvoiceStatus::Paid => InvoiceStatus::Paid,
        wit::InvoiceStatus::Expired => InvoiceStatus::Expired,
        wit::InvoiceStatus::Refunded => InvoiceStatus::Refunded,
        wit::InvoiceStatus::Failed => InvoiceStatus::Failed,
    }
}

/// `invoice` as the request that just claimed its payment record sees it (kernel `paid::held_status`).
pub fn held_by_driver(invoice: &mut wit::Invoice, resumed: bool) {
    invoice.status = status_to_wit(esim402_core::paid::held_status(
        status_from_wit(invoice.status),
        resumed,
    ));
}

/// The WIT view of an invoice (its status as the caller decided it).
pub fn invoice_to_wit(inv: &Invoice) -> wit::Invoice {
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
        status: status_to_wit(inv.status),
        transaction: inv.transaction.clone(),
        payer: inv.payer.clone(),
        quoted: inv.quoted.as_ref().map(quote_to_wit),
    }
}

/// The WIT view of a sealed quote.
pub fn quote_to_wit(q: &SealedQuote) -> wit::SealedQuote {
    wit::SealedQuote {
        carrier: q.carrier.to_string(),
        data_value: q.data_value.micros(),
    }
}

/// A sealed quote from its WIT view; `None` if its carrier is not a carrier id.
pub fn quote(q: &wit::SealedQuote) -> Option<SealedQuote> {
    Some(SealedQuote {
        carrier: CarrierId::parse(&q.carrier).ok()?,
        data_value: UsdcAmount::from_micros(q.data_value),
    })
}

/// The kernel's invoice from its WIT view; `None` if a field does not parse (it came from the invoices
/// component, so that is a bug, not bad input).
pub fn invoice(inv: &wit::Invoice) -> Option<Invoice> {
    let id = esim402_core::InvoiceId::parse(&inv.id).ok()?;
    let accepts = inv
        .options
        .iter()
        .map(|o| {
            Some(PaymentOption {
                network: Network::parse(&o.network).ok()?,
                asset: o.asset.clone(),
                pay_to: o.pay_to.clone(),
                amount_atomic: o.amount.to_string(),
                eip712_name: o.eip712_name.clone(),
                eip712_version: o.eip712_version.clone(),
            })
        })
        .collect::<Option<Vec<_>>>()?;
    let mut out = Invoice::new(
        id,
        UsdcAmount::from_micros(inv.amount),
        accepts,
        purchase(&inv.purchase),
        inv.created_at,
        inv.expires_at.saturating_sub(inv.created_at),
    )?;
    out.status = status_from_wit(inv.status);
    out.transaction = inv.transaction.clone();
    out.payer = inv.payer.clone();
    out.quoted = match &inv.quoted {
        Some(q) => Some(quote(q)?),
        None => None,
    };
    Some(out)
}

/// A stored HTTP answer from WIT.
pub fn response(r: &wit::StoredResponse) -> StoredResponse {
    StoredResponse {
        status: r.status,
        headers: r.headers.clone(),
        body: r.body.clone(),
    }
}

/// A stored HTTP answer as WIT.
pub fn response_to_wit(r: &StoredResponse) -> wit::StoredResponse {
    wit::StoredResponse {
        status: r.status,
        headers: r.headers.clone(),
        body: r.body.clone(),
    }
}

/// A ledger event as WIT.
pub fn event_to_wit(kind: EntryKind, f: &EntryFields) -> wit::LedgerEvent {
    wit::LedgerEvent {
        kind: kind.as_str().to_owned(),
        invoice: f.invoice_id.clone(),
        amount: f.amount.map(|a| a.micros()),
        network: f.network.clone(),
        tx_hash: f.tx_hash.clone(),
        payer: f.payer.clone(),
        details: f
            .details
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
    }
}

/// A ledger event from WIT; `None` for an unknown kind.
pub fn event(e: &wit::LedgerEvent) -> Option<(EntryKind, EntryFields)> {
    let kind = EntryKind::ALL.into_iter().find(|k| k.as_str() == e.kind)?;
    let mut f = EntryFields {
        invoice_id: e.invoice.clone(),
        amount: e.amount.map(UsdcAmount::from_micros),
        network: e.network.clone(),
        tx_hash: e.tx_hash.clone(),
        payer: e.payer.clone(),
        ..EntryFields::default()
    };
    for (k, v) in &e.details {
        f.details.insert(k.clone(), v.clone());
    }
    Some((kind, f))
}

/// A WIT SIM state as the kernel's.
pub fn sim_state(state: wit::SimState) -> esim402_core::esim::SimState {
    use esim402_core::esim::SimState;
    match state {
        wit::SimState::Pending => SimState::Pending,
        wit::SimState::Active => SimState::Active,
        wit::SimState::Suspended => SimState::Suspended,
        wit::SimState::Terminated => SimState::Terminated,
        wit::SimState::Failed => SimState::Failed,
    }
}

/// A SIM as WIT.
pub fn sim_to_wit(s: &StoredSim) -> wit::Sim {
    use esim402_core::esim::{ProfileState, SimState};
    wit::Sim {
        iccid: s.iccid.clone(),
        carrier: s.carrier.clone(),
        region: s.region.clone(),
        state: match s.state {
            SimState::Pending => wit::SimState::Pending,
            SimState::Active => wit::SimState::Active,
            SimState::Suspended => wit::SimState::Suspended,
            SimState::Terminated => wit::SimState::Terminated,
            SimState::Failed => wit::SimState::Failed,
        },
        profile_state: match s.profile_state {
            None => wit::ProfileState::Ordered,
            Some(ProfileState::Released) => wit::ProfileState::Released,
            Some(ProfileState::Downloaded) => wit::ProfileState::Downloaded,
            Some(ProfileState::Installed) => wit::ProfileState::Installed,
            Some(ProfileState::Enabled) => wit::ProfileState::Enabled,
            Some(ProfileState::Deleted) => wit::ProfileState::Deleted,
            Some(ProfileState::Error) => wit::ProfileState::Error,
        },
        activation_code: s
            .activation_code
            .as_ref()
            .map(|c| format!("{}{c}", esim402_core::esim::activation_code::QR_PREFIX)),
        eid: s.eid.clone(),
        roaming: wit::RoamingPolicy {
            allow: s.roaming.allow.iter().map(ToString::to_string).collect(),
            deny: s.roaming.deny.iter().map(ToString::to_string).collect(),
            countries: s.roaming.countries.clone(),
        },
        data_mb: s.data_mb,
        invoice_id: s.invoice_id.clone(),
        created_at: s.created_at,
        failovers: s.failovers.clone(),
        replaces: s.replaces.clone(),
        replaced_by: s.replaced_by.clone(),
        owner: s.access.owner.map(|a| a.to_checksum(None)),
        label: s.label.clone(),
        held_by_owner: s.holds.by_owner(s.state),
        held_for_balance: s.holds.for_balance(s.state),
    }
}
