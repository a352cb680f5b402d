//! The invoices component's settings, read once per instance: the enabled networks (`payment_network` and the
//! `usdc_*` overrides), `recipient_address`, `invoice_ttl_secs`, and the invoice key: `invoice_secret`
//! (secret) when set, else a random key generated on first use and kept in the store (`secret/invoice-key`),
//! so every instance on the same store seals and opens the same invoices. Nothing here ever prints a key.

use std::rc::Rc;

use esim402_core::chain::{Address, parse_address};
use esim402_core::invoice::token::InvoiceKey;
use esim402_core::store::keys;
use esim402_core::x402::NetworkConfig;
use esim402_guest::config::optional_var;
use esim402_guest::convert::{internal, kv_fault};
use esim402_guest::kv;
use esim402_guest::{instance_cache, wit};

/// Default of `invoice_ttl_secs`.
const DEFAULT_TTL_SECS: u64 = 900;

pub struct Config {
    /// Enabled networks, preferred first (the first with the token overrides applied).
    pub networks: Vec<NetworkConfig>,
    /// Who is paid.
    pub pay_to: Address,
    /// `pay_to` checksummed, and each network's USDC (same order as `networks`): spelled once per instance.
    pub pay_to_checksum: String,
    pub usdc_checksums: Vec<String>,
    /// How long an invoice may be paid.
    pub ttl: u64,
    /// The invoice MAC key.
    pub key: InvoiceKey,
}

instance_cache!(CONFIG: Config);

fn config_error(name: &str, msg: impl std::fmt::Display) -> wit::Error {
    internal(format!("variable {name} is invalid: {msg}"))
}

/// The configuration (parsed on the instance's first call).
pub async fn get() -> Result<Rc<Config>, wit::Error> {
    CONFIG.get_or_load(load).await
}

/// The configuration if this instance has loaded it already (for the synchronous exports).
pub fn loaded() -> Option<Rc<Config>> {
    CONFIG.loaded()
}

async fn load() -> Result<Config, wit::Error> {
    let networks = esim402_guest::config::enabled_networks()
        .await
        .map_err(internal)?;
    let pay_to = optional_var("recipient_address")
        .await
        .ok_or_else(|| internal("variable recipient_address is not set"))?;
    let pay_to = parse_address(&pay_to).map_err(|e| config_error("recipient_address", e))?;
    let ttl = match optional_var("invoice_ttl_secs").await {
        None => DEFAULT_TTL_SECS,
        Some(v) => v
            .parse::<u64>()
            .ok()
            .filter(|t| (1..=86_400 * 30).contains(t))
            .ok_or_else(|| config_error("invoice_ttl_secs", "expected seconds in 1..=2592000"))?,
    };
    let key = match optional_var("invoice_secret").await {
        Some(secret) if secret.len() < 16 => {
            return Err(config_error("invoice_secret", "use at least 16 characters"));
        }
        Some(secret) => InvoiceKey::derive(secret.as_bytes()),
        None => stored_key().await?,
    };
    Ok(Config {
        pay_to_checksum: pay_to.to_checksum(None),
        usdc_checksums: networks.iter().map(|n| n.usdc.to_checksum(None)).collect(),
        networks,
        pay_to,
        ttl,
        key,
    })
}

/// The generated key (shared by every instance on the store).
async fn stored_key() -> Result<InvoiceKey, wit::Error> {
    kv::shared_random_key(keys::INVOICE_KEY)
        .await
        .map(InvoiceKey::new)
        .map_err(|e| kv_fault("invoice key", e))
}
