//! Issuing and opening invoices. `issue` seals the terms (with an activation's quote) into the id (kernel
//! `invoice::token`, under the current key of `invoice::keyring`) and writes nothing; `get` opens an id under
//! any key of the ring, rebuilds its payment options from the enabled networks and reads the status from the
//! payment record (one `get`, if a payment ever arrived).
//!
//! An id only a legacy key opens (a configured secret's before ids were bound to the store, or the store's
//! generated key once `invoice_secret` is set) opens only for a payment this store holds (pending, paid or
//! refunded) (kernel `invoice::keyring`, `Opened::ours_at`): for a new payment it is not ours.
//!
//! Only a new payment needs a network that is still enabled: an invoice a payment already arrived for
//! (pending, paid or refunded: resumes, refunds, the activation-code route, status reads) opens even when
//! none of its networks is enabled any more, its options then the networks it was sealed with as the
//! built-in registry knows them. An invoice still open (or expired unpaid) on such networks is a 409.

use esim402_core::invoice::keyring::Opened;
use esim402_core::invoice::token::Terms;
use esim402_core::invoice::{Invoice, InvoiceStatus, PaymentOption};
use esim402_core::paid::{self, PaymentRecord};
use esim402_core::store::keys;
use esim402_core::x402::networks::narrow;
use esim402_core::x402::{NetworkConfig, Networks};
use esim402_core::{InvoiceId, Network, UsdcAmount};
use esim402_guest::convert::{self, internal, invalid, kv_err};
use esim402_guest::{kv, util, wit};

use crate::config::{self, Config};

/// The networks to offer: the enabled ones, narrowed to the payer's `preference` in its order. A preference
/// naming no enabled network is a 400 on `chain` listing what is enabled.
fn offered(cfg: &Config, preference: &[String]) -> Result<Vec<NetworkConfig>, wit::Error> {
    let preference = preference
        .iter()
        .map(|p| {
            Networks::builtin()
                .lookup(p)
                .map(|n| n.network)
                .or_else(|| Network::parse(p).ok())
                .ok_or_else(|| invalid("chain", format!("unknown network {p:?}")))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let offered = narrow(&cfg.networks, &preference);
    if offered.is_empty() {
        let names: Vec<String> = cfg
            .networks
            .iter()
            .map(|n| format!("{} ({})", n.caip2(), n.name))
            .collect();
        return Err(invalid(
            "chain",
            format!(
                "none of the requested networks is enabled; enabled: {}",
                names.join(", ")
            ),
        ));
    }
    Ok(offered)
}

/// One payment option per network of the terms that is still enabled (in the terms' order).
fn options(cfg: &Config, terms: &Terms) -> Vec<PaymentOption> {
    let pay_to = if terms.pay_to == cfg.pay_to {
        cfg.pay_to_checksum.clone()
    } else {
        terms.pay_to.to_checksum(None)
    };
    terms
        .networks
        .iter()
        .filter_map(|n| {
            cfg.networks
                .iter()
                .zip(&cfg.usdc_checksums)
                .find(|(e, _)| e.network == *n)
        })
        .map(|(n, usdc)| PaymentOption {
            network: n.network,
            asset: usdc.clone(),
            pay_to: pay_to.clone(),
            amount_atomic: terms.amount.micros().to_string(),
            eip712_name: n.eip712_name.clone(),
            eip712_version: n.eip712_version.clone(),
        })
        .collect()
}

/// An invoice's amount: positive (`invalid-input` on `amount`).
pub fn parse_amount(amount: u64) -> Result<UsdcAmount, wit::Error> {
    let amount = UsdcAmount::from_micros(amount);
    if amount == UsdcAmount::ZERO {
        return Err(invalid("amount", "must be positive"));
    }
    Ok(amount)
}

/// `issue`: seal a new invoice; nothing is written. A bad amount is refused before the configuration is loaded.
pub async fn issue(
    purchase: &wit::Purchase,
    amount: u64,
    quoted: Option<&wit::SealedQuote>,
    networks: &[String],
    now: u64,
) -> Result<wit::Invoice, wit::Error> {
    let amount = parse_amount(amount)?;
    let cfg = config::get().await?;
    issue_with(&cfg, purchase, amount, quoted, networks, now)
}

/// `issue` with the configuration at hand (`try-issue` when the instance has it, `issue` after loading it).
pub fn issue_with(
    cfg: &Config,
    purchase: &wit::Purchase,
    amount: UsdcAmount,
    quoted: Option<&wit::SealedQuote>,
    networks: &[String],
    now: u64,
) -> Result<wit::Invoice, wit::Error> {
    let quoted = quoted
        .map(|q| convert::quote(q).ok_or_else(|| invalid("quoted", "not a carrier id")))
        .transpose()?;
    let preference = match purchase {
        wit::Purchase::Activation(a) if networks.is_empty() => a.networks.as_slice(),
        _ => networks,
    };
    let offered = offered(cfg, preference)?;
    let terms = Terms {
        purchase: convert::purchase(purchase),
        amount,
        networks: offered.iter().map(|n| n.network).collect(),
        pay_to: cfg.pay_to,
        created_at: now,
        expires_at: now.saturating_add(cfg.ttl),
        nonce: util::random_u64().map_err(internal)?,
        quoted,
    };
    let id = cfg.keys.seal(&terms).map_err(internal)?;
    let invoice = Invoice::from_terms(id, &terms, options(cfg, &terms))
        .ok_or_else(|| internal("no payment option configured"))?;
    Ok(convert::invoice_to_wit(&invoice))
}

/// Parse an invoice id (`invalid-input` on `invoice_id`).
pub fn parse_id(id: &str) -> Result<InvoiceId, wit::Error> {
    InvoiceId::parse(id).map_err(|e| invalid("invoice_id", e.0))
}

/// Every network the terms were sealed with, as the built-in registry knows it (no token where it does not):
/// the options of an invoice whose networks are none of them enabled any more, shown, not payable.
fn sealed_options(terms: &Terms) -> Vec<PaymentOption> {
    let pay_to = terms.pay_to.to_checksum(None);
    let amount_atomic = terms.amount.micros().to_string();
    terms
        .networks
        .iter()
        .map(|n| {
            let known = Networks::builtin().get(*n);
            PaymentOption {
                network: *n,
                asset: known.map(|k| k.usdc.to_checksum(None)).unwrap_or_default(),
                pay_to: pay_to.clone(),
                amount_atomic: amount_atomic.clone(),
                eip712_name: known.map(|k| k.eip712_name.clone()).unwrap_or_default(),
                eip712_version: known.map(|k| k.eip712_version.clone()).unwrap_or_default(),
            }
        })
        .collect()
}

/// The invoice `id` with `terms`, without its status. `paid_for`: a payment already arrived for it, so only
/// a read, which networks no longer enabled do not refuse (module docs).
fn invoice_of(
    cfg: &Config,
    id: InvoiceId,
    terms: &Terms,
    paid_for: bool,
) -> Result<Invoice, wit::Error> {
    let mut options = options(cfg, terms);
    if options.is_empty() {
        if !paid_for {
            return Err(wit::Error::Conflict(format!(
                "invoice {id} is payable only on networks that are no longer enabled"
            )));
        }
        options = sealed_options(terms);
    }
    Invoice::from_terms(id, terms, options).ok_or_else(|| internal("invoice without a network"))
}

/// Whether a payment arrived for an invoice in `status` (what it is paid with is then settled): one that failed
/// too (its stored answer is the payment's to read, on whatever networks are enabled now).
fn paid_for(status: InvoiceStatus) -> bool {
    matches!(
        status,
        InvoiceStatus::Pending
            | InvoiceStatus::Paid
            | InvoiceStatus::Refunded
            | InvoiceStatus::Failed
    )
}

/// The id opened under any key of the ring; `None` if it was not issued here (no key opens it).
pub async fn open(id: &InvoiceId) -> Result<Option<Opened>, wit::Error> {
    let cfg = config::get().await?;
    Ok(cfg.keys.open(id).ok())
}

/// An invoice a payment arrived for (its record just written), without its status; `None` if it was not
/// issued here.
pub async fn open_paid(id: &str) -> Result<Option<Invoice>, wit::Error> {
    let id = parse_id(id)?;
    let cfg = config::get().await?;
    let Ok(opened) = cfg.keys.open(&id) else {
        return Ok(None);
    };
    invoice_of(&cfg, id, &opened.terms, true).map(Some)
}

/// `get`: the invoice with its status at `now`.
pub async fn get(id: &str, now: u64) -> Result<Option<wit::Invoice>, wit::Error> {
    let parsed = parse_id(id)?;
    let cfg = config::get().await?;
    let Ok(opened) = cfg.keys.open(&parsed) else {
        return Ok(None);
    };
    let record = kv::get_json::<PaymentRecord, wit::Error>(&keys::invoice(id))
        .await
        .map_err(kv_err)?;
    let status = paid::status(record.as_ref(), opened.terms.expires_at, now);
    // An id only a legacy key opens (sealed before ids were bound to a store, or under the store's generated key
    // before `invoice_secret` was set) is ours only for a payment this store holds (pending, paid or refunded:
    // not an attempt released with nothing taken): another deployment sharing the secret opens it too, or
    // whoever read the generated key from the store sealed it (kernel `invoice::keyring`). `begin` asks again
    // inside its claim: this read may be stale by then.
    if !opened.ours_at(status) {
        return Ok(None);
    }
    let mut invoice = invoice_of(&cfg, parsed, &opened.terms, paid_for(status))?;
    with_record(&mut invoice, record.as_ref(), now);
    Ok(Some(convert::invoice_to_wit(&invoice)))
}

/// Fill the invoice's status, transaction and payer from its payment record.
pub fn with_record(invoice: &mut Invoice, record: Option<&PaymentRecord>, now: u64) {
    invoice.status = paid::status(record, invoice.expires_at, now);
    if let Some(p) = record.and_then(|r| r.paid.as_ref()) {
        invoice.transaction = Some(p.transaction.clone());
        invoice.payer = Some(p.payer.clone());
    }
}
