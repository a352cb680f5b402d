//! The verifier's settings, parsed once per component instance (variables do not change while the app runs):
//!
//! - `payment_network`: the enabled networks, comma-separated CAIP-2 ids or names, preferred first; their USDC,
//!   EIP-712 domain and confirmations come from the kernel's registry (`Networks::builtin()`), except that for
//!   the **first** network non-empty `usdc_address`, `usdc_eip712_name`, `usdc_eip712_version` and
//!   `payment_confirmations` override it (the dev chain deploys its own token).
//! - `rpc_url`: the first network's JSON-RPC endpoint (falls back to its registry variable when empty); every
//!   other network's comes from its registry variable (`rpc_url_polygon`, `rpc_url_base`, …).
//! - `facilitator_private_key`: **secret**. Empty disables settlement. Parsed once (a secp256k1 key parse is
//!   not free), its value never reaches a log, an error or a response; a malformed key is reported by the
//!   variable's name only.
//! - `treasury_private_key`: **secret**, handled like `facilitator_private_key`. Empty disables paying refunds.
//! - `settlement_timeout_ms`: how long `settle` (and `run-refunds`) waits for a receipt before answering
//!   `pending` (15000).
//! - `rpc_batch`: `true` (default) sends the chain reads a step needs together as one JSON-RPC batch; `false`
//!   sends each call on its own (for providers that refuse or bill batches; a refused batch is also detected
//!   and retried singly, but only once per instance).

use std::rc::Rc;
use std::time::Duration;

use esim402_core::evm::SigningKey;
use esim402_core::x402::{InvalidReason, NetworkConfig, Networks};
use esim402_guest::config::optional_var;
use esim402_guest::convert::internal;
use esim402_guest::{instance_cache, wit};

use crate::chain::Chain;
use crate::rejected;

/// Default of `settlement_timeout_ms`.
const DEFAULT_SETTLEMENT_TIMEOUT_MS: u64 = 15_000;
/// Largest accepted `settlement_timeout_ms`: a payment's whole drive must fit its lease (kernel
/// `paid::LEASE_SECS`), and a refund run must be over before its events may be repeated
/// (`refund::RELOG_AFTER_SECS`).
const MAX_SETTLEMENT_TIMEOUT_MS: u64 = esim402_core::paid::MAX_SETTLEMENT_WAIT_SECS * 1_000;

/// The deployment's verifier configuration.
pub struct Config {
    /// Every enabled network, preferred first (the first with the token overrides applied), with its
    /// JSON-RPC endpoint if configured (it may carry an API key: never put it in messages).
    enabled: Vec<(NetworkConfig, Option<String>)>,
    /// How long a settlement waits for its receipt.
    pub settlement_timeout: Duration,
    /// Whether reads needed together go as one JSON-RPC batch (`rpc_batch`).
    rpc_batch: bool,
    /// The facilitator key: `None` when settlement is disabled, `Err` (with a safe message) when malformed.
    signer: Option<Result<SigningKey, String>>,
    /// The treasury key that pays refunds, the same way.
    treasury: Option<Result<SigningKey, String>>,
}

instance_cache!(CONFIG: Config);

fn config_error(name: &str, msg: impl std::fmt::Display) -> wit::Error {
    internal(format!("variable {name} is invalid: {msg}"))
}

/// A secret key variable: `None` if empty. `KeyError`'s messages never contain key material, and the value
/// itself goes nowhere but the parser.
async fn key_var(name: &str) -> Option<Result<SigningKey, String>> {
    optional_var(name).await.map(|hex| {
        SigningKey::from_hex(&hex).map_err(|e| format!("variable {name} is invalid: {e}"))
    })
}

/// The key, `unavailable` (saying what is disabled) when unset, `internal` (naming the variable) when malformed.
fn key_or_error<'a>(
    key: &'a Option<Result<SigningKey, String>>,
    disabled: &str,
) -> Result<&'a SigningKey, wit::Error> {
    match key {
        None => Err(wit::Error::Unavailable(disabled.to_owned())),
        Some(Ok(key)) => Ok(key),
        Some(Err(msg)) => Err(wit::Error::Internal(msg.clone())),
    }
}

/// The configuration (parsed on the instance's first call).
pub async fn get() -> Result<Rc<Config>, wit::Error> {
    CONFIG.get_or_load(load).await
}

/// Read every variable; a missing or invalid one is an `internal` error naming it (never its value).
async fn load() -> Result<Config, wit::Error> {
    let networks = esim402_guest::config::enabled_networks()
        .await
        .map_err(internal)?;
    let mut enabled = Vec::with_capacity(networks.len());
    for (i, n) in networks.into_iter().enumerate() {
        let url = match (i, optional_var("rpc_url").await) {
            (0, Some(url)) => Some(url),
            _ => optional_var(&n.rpc_variable).await,
        };
        enabled.push((n, url));
    }
    // The preferred network must be reachable; the others are checked when a payment names them.
    match enabled.first() {
        Some((_, Some(_))) => {}
        Some((network, None)) => {
            return Err(internal(format!(
                "variable rpc_url (or {}) is not set",
                network.rpc_variable
            )));
        }
        None => return Err(config_error("payment_network", "no network is enabled")),
    }
    let settlement_timeout = match optional_var("settlement_timeout_ms").await {
        None => Duration::from_millis(DEFAULT_SETTLEMENT_TIMEOUT_MS),
        Some(v) => match v.parse::<u64>() {
            Ok(ms) if ms <= MAX_SETTLEMENT_TIMEOUT_MS => Duration::from_millis(ms),
            _ => {
                return Err(config_error(
                    "settlement_timeout_ms",
                    format!("expected milliseconds in 0..={MAX_SETTLEMENT_TIMEOUT_MS}"),
                ));
            }
        },
    };
    let rpc_batch = match optional_var("rpc_batch").await.as_deref() {
        None | Some("true") => true,
        Some("false") => false,
        Some(_) => return Err(config_error("rpc_batch", "expected true or false")),
    };
    Ok(Config {
        enabled,
        settlement_timeout,
        rpc_batch,
        signer: key_var("facilitator_private_key").await,
        treasury: key_var("treasury_private_key").await,
    })
}

impl Config {
    /// What readiness reports beyond a configuration that loads (`ready`): a signing key that is set but
    /// malformed (every settlement or refund run would answer 500; an unset key is a feature turned off, not a
    /// fault), and an enabled network without its JSON-RPC endpoint (payments on it would answer 500). The
    /// messages name the variable, never its value.
    pub fn problems(&self) -> Vec<String> {
        let keys = [&self.signer, &self.treasury]
            .into_iter()
            .filter_map(|k| k.as_ref()?.as_ref().err().cloned());
        let endpoints = self
            .enabled
            .iter()
            .filter(|(_, url)| url.is_none())
            .map(|(n, _)| {
                format!(
                    "variable {} is not set (network {} is enabled)",
                    n.rpc_variable,
                    n.caip2()
                )
            });
        keys.chain(endpoints).collect()
    }

    /// The enabled networks as a registry, for `/supported` and request resolution.
    pub fn networks(&self) -> Networks {
        Networks::builtin()
            .clone()
            .retain(|n| self.enabled.iter().any(|(e, _)| e.network == n.network))
    }

    /// The chain of an enabled network (`id`: CAIP-2 or name): `payment-required(invalid_network)` when it is
    /// not enabled, `internal` when its RPC variable is not set.
    pub fn chain(&self, id: &str) -> Result<Chain, wit::Error> {
        let (network, url) = self
            .enabled
            .iter()
            .find(|(n, _)| n.matches(id))
            .ok_or_else(|| rejected(InvalidReason::InvalidNetwork))?;
        let url = url.as_deref().ok_or_else(|| {
            internal(format!(
                "variable {} (the JSON-RPC endpoint of {}) is not set",
                network.rpc_variable,
                network.caip2()
            ))
        })?;
        Ok(Chain::new(network.clone(), url, self.rpc_batch))
    }

    /// The settlement key; `unavailable` when settlement is disabled, `internal` when the key is malformed.
    pub fn signer(&self) -> Result<&SigningKey, wit::Error> {
        key_or_error(
            &self.signer,
            "settlement is disabled: facilitator_private_key is not set",
        )
    }

    /// The refund key; `unavailable` when refunds are disabled, `internal` when the key is malformed.
    pub fn treasury(&self) -> Result<&SigningKey, wit::Error> {
        key_or_error(
            &self.treasury,
            "refunds are disabled: treasury_private_key is not set",
        )
    }

    /// The facilitator's address, when a valid key is configured (the sender of simulations).
    pub fn signer_address(&self) -> Option<alloy_primitives::Address> {
        match &self.signer {
            Some(Ok(key)) => Some(key.address()),
            _ => None,
        }
    }
}
