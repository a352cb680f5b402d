//! Dispatch settings, read once per instance: the carrier catalog (the whole catalog as the `carrier_catalog`
//! variable, else the built-in one, which only a development deployment may use: kernel
//! `deployment::catalog`), the SM-DP+ base URL (`smdp_url`), the budget of one order across carriers
//! (`dispatch_budget_secs`, 60), one ES2+ call's timeout (`es2_timeout_ms`, 10 000) and how long a paid order
//! may stay pending before the operator's cleanup run withdraws it and owes it back (`paid_order_pending_secs`,
//! 86 400: kernel `order::parked::PAID_PENDING_SECS`, at most 30 days); the access-token key
//! (`access_token_secret`, secret; else, in development only, a random key kept at `secret/sim-token-key`:
//! kernel `auth::token::key_source`) and the carriers' callback credentials (`carrier_callback_credentials`,
//! secret; empty refuses every callback). Without the token key outside development the configuration still
//! loads (prices are quoted), but readiness, every order and every token use fail naming the variable.

use std::cell::OnceCell;
use std::rc::Rc;
use std::time::Duration;

use esim402_core::CarrierId;
use esim402_core::auth::callback::CallbackCredentials;
use esim402_core::esim::{Carrier, Catalog};
use esim402_core::order;
use esim402_core::pricing::PriceBook;
use esim402_core::store::keys;
use esim402_guest::config::optional_var;
use esim402_guest::convert::{internal, kv_fault};
use esim402_guest::{instance_cache, wit};

pub struct Config {
    pub catalog: Catalog,
    /// A development deployment (kernel `deployment::is_development`).
    development: bool,
    /// Whether no carrier signs receipts with a key derived from a catalog carrier id: worked out by the first
    /// order of the instance ([`Config::signers_usable`]), not on the 402 path.
    signers: OnceCell<Result<(), String>>,
    /// The catalog's price book (built once).
    pub price_book: PriceBook,
    pub smdp_base: String,
    /// Total time one order may spend trying carriers.
    pub budget: Duration,
    /// One ES2+ call's timeout.
    pub call_timeout: Duration,
    /// Seconds a paid order (a tx-hash payment's) may stay pending before the operator's run withdraws it.
    pub paid_pending_secs: u64,
    /// Derives the SIMs' access tokens (a secret), or why there is none ([`Config::token_key`]).
    token_key: Result<[u8; 32], String>,
    /// Who may send download-progress callbacks.
    pub callbacks: CallbackCredentials,
}

impl Config {
    /// Outside development, refuse to order when a carrier signs receipts with a key derived from a catalog
    /// carrier id (the traffic simulator's): metering would refuse every receipt batch, so a SIM sold would
    /// never be charged. Checked before the order, so no payment is taken (key derivations: once per
    /// instance, on the paid path only). Also refused without the access-token key ([`Config::token_key`]):
    /// the SIM would be stored without the token its answer carries.
    pub fn signers_usable(&self) -> Result<(), wit::Error> {
        self.signers
            .get_or_init(|| {
                esim402_guest::config::derived_dev_signers(&self.catalog, self.development)
                    .map_err(|e| e.to_string())
            })
            .clone()
            .map_err(internal)?;
        self.token_key().map(|_| ())
    }

    /// The key the SIMs' access tokens are derived from; outside development without `access_token_secret`,
    /// an internal error naming the variable (never a value).
    pub fn token_key(&self) -> Result<&[u8; 32], wit::Error> {
        self.token_key.as_ref().map_err(|e| internal(e.clone()))
    }
}

instance_cache!(CONFIG: Config);

fn config_error(name: &str, msg: impl std::fmt::Display) -> wit::Error {
    internal(format!("variable {name} is invalid: {msg}"))
}

async fn int_var(name: &str, default: u64, max: u64) -> Result<u64, wit::Error> {
    match optional_var(name).await {
        None => Ok(default),
        Some(v) => match v.parse::<u64>() {
            Ok(n) if (1..=max).contains(&n) => Ok(n),
            _ => Err(config_error(
                name,
                format!("expected an integer in 1..={max}"),
            )),
        },
    }
}

/// The configuration (parsed on the instance's first call).
pub async fn get() -> Result<Rc<Config>, wit::Error> {
    CONFIG.get_or_load(load).await
}

/// The configuration if this instance has parsed it already (for the synchronous exports).
pub fn loaded() -> Option<Rc<Config>> {
    CONFIG.loaded()
}

async fn load() -> Result<Config, wit::Error> {
    let (catalog, development) = esim402_guest::config::carrier_catalog()
        .await
        .map_err(internal)?;
    let smdp_base = optional_var("smdp_url")
        .await
        .ok_or_else(|| internal("variable smdp_url is not set"))?;
    let budget = int_var(
        "dispatch_budget_secs",
        60,
        esim402_core::paid::MAX_DISPATCH_BUDGET_SECS,
    )
    .await?;
    let call_timeout_ms = int_var("es2_timeout_ms", 10_000, 120_000).await?;
    // Bounded so a payment's whole drive fits its lease (kernel `paid::LEASE_SECS`): lowered, not refused.
    let (fit_budget, fit_call_ms) = order::fit_to_payment_lease(budget, call_timeout_ms);
    if (fit_budget, fit_call_ms) != (budget, call_timeout_ms) {
        eprintln!(
            "dispatch: dispatch_budget_secs {budget} and es2_timeout_ms {call_timeout_ms} lowered to {fit_budget} and \
             {fit_call_ms}: an order with its cleanup sweep and a last cancel (three ES2+ calls) must fit in {} s of a \
             payment's lease",
            esim402_core::paid::MAX_DISPATCH_BUDGET_SECS
        );
    }
    let (budget, call_timeout_ms) = (fit_budget, fit_call_ms);
    Ok(Config {
        price_book: catalog.price_book(),
        catalog,
        development,
        signers: OnceCell::new(),
        smdp_base,
        budget: Duration::from_secs(budget),
        call_timeout: Duration::from_millis(call_timeout_ms),
        paid_pending_secs: int_var(
            "paid_order_pending_secs",
            order::parked::PAID_PENDING_SECS,
            30 * 86_400,
        )
        .await?,
        token_key: token_key(development).await?,
        callbacks: CallbackCredentials::parse(
            &optional_var("carrier_callback_credentials")
                .await
                .unwrap_or_default(),
        )
        .map_err(|e| config_error("carrier_callback_credentials", e))?,
    })
}

/// The token key (kernel `auth::token::key_source`): a secret too short fails the configuration; a missing one
/// outside development is kept as the error every token use answers.
async fn token_key(development: bool) -> Result<Result<[u8; 32], String>, wit::Error> {
    use esim402_core::auth::token::{KeyError, KeySource, key_source};
    match key_source(
        optional_var("access_token_secret").await.as_deref(),
        development,
    ) {
        Ok(KeySource::Secret(key)) => Ok(Ok(key)),
        Ok(KeySource::Stored) => esim402_guest::kv::shared_random_key(keys::SIM_TOKEN_KEY)
            .await
            .map(Ok)
            .map_err(|e| kv_fault("access-token key", e)),
        Err(e @ KeyError::Missing) => Ok(Err(e.to_string())),
        Err(e @ KeyError::TooShort) => Err(internal(e.to_string())),
    }
}

impl Config {
    /// A catalog carrier by id (a journal naming one that left the catalog is an internal error).
    pub fn carrier(&self, id: &str) -> Result<&Carrier, wit::Error> {
        CarrierId::parse(id)
            .ok()
            .and_then(|c| self.catalog.carrier(&c))
            .ok_or_else(|| internal(format!("carrier {id} is not in the catalog")))
    }
}
