//! The invoices component's settings, read once per instance: the enabled networks (`payment_network` and the
//! `usdc_*` overrides), `recipient_address`, `invoice_ttl_secs`, and the invoice keys (kernel
//! `invoice::keyring`): `invoice_secret` (secret) when set, bound to this store by its salt
//! (`secret/invoice-salt`, generated once), else a random key generated on first use and kept in the store
//! (`secret/invoice-key`), so every instance on the same store seals and opens the same invoices. Ids sealed
//! under `invoice_secret_previous` (secret: comma-separated, or a JSON array of strings, the form that lists a
//! secret with a comma in it; `invoice_secret` itself may not contain one) still open; ids sealed under a
//! secret before ids were bound to a store, or under the generated key before `invoice_secret` was set, open
//! only for a payment this store holds (kernel `Opened::ours_at`: the generated key is readable from the store,
//! so once a secret is set it must not make new payable ids). Nothing here ever prints a key, and a refused
//! secret's error names the variable and the rule, never any of its value (kernel `Secrets::parse`).

use std::rc::Rc;

use alloy_primitives::B256;

use esim402_core::chain::{Address, parse_address};
use esim402_core::invoice::keyring::{Keyring, Secrets};
use esim402_core::invoice::token::InvoiceKey;
use esim402_core::store::keys;
use esim402_core::x402::NetworkConfig;
use esim402_guest::config::{optional_var, secret_var};
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
    /// The invoice MAC keys: the current one seals, all open.
    pub keys: Keyring,
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
    let keys = keyring().await?;
    Ok(Config {
        pay_to_checksum: pay_to.to_checksum(None),
        usdc_checksums: networks.iter().map(|n| n.usdc.to_checksum(None)).collect(),
        networks,
        pay_to,
        ttl,
        keys,
    })
}

/// The invoice keys. The store's generated key is created only when it seals (no `invoice_secret`); with a
/// secret set it is read, if it exists, and opens the ids it sealed as legacy (only for payments recorded
/// here: resumes, refunds, reads). The salt is made only with secrets.
async fn keyring() -> Result<Keyring, wit::Error> {
    let unreadable = |e: esim402_guest::config::VarError| config_error(e.name, e.problem);
    let current = secret_var("invoice_secret").await.map_err(unreadable)?;
    let previous = secret_var("invoice_secret_previous")
        .await
        .map_err(unreadable)?;
    let secrets = Secrets::parse(current.as_deref(), previous.as_deref())
        .map_err(|e| config_error(e.variable, e.reason))?;
    let generated = match secrets.current {
        None => Some(shared_key(keys::INVOICE_KEY).await?),
        Some(_) => kv::get_json::<B256, ()>(keys::INVOICE_KEY)
            .await
            .map_err(|e| kv_fault("invoice key", e))?
            .map(|b| b.0),
    };
    let salt = if secrets.is_empty() {
        None
    } else {
        Some(shared_key(keys::INVOICE_SALT).await?)
    };
    Keyring::configured(&secrets, salt.as_ref(), generated.map(InvoiceKey::new)).map_err(internal)
}

/// A random value kept at `key` (shared by every instance on the store).
async fn shared_key(key: &str) -> Result<[u8; 32], wit::Error> {
    kv::shared_random_key(key)
        .await
        .map_err(|e| kv_fault("invoice key", e))
}
