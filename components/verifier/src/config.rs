//! The verifier's settings, read from Spin variables on every call (they are cheap host calls):
//!
//! - `payment_network`: CAIP-2 id of the one enabled network; its USDC, EIP-712 domain and confirmations come
//!   from the kernel's registry (`Networks::builtin()`), except that non-empty `usdc_address`,
//!   `usdc_eip712_name` and `usdc_eip712_version` override the registry (the dev chain deploys its own token).
//! - `rpc_url`: the JSON-RPC endpoint (falls back to the registry's per-network variable when empty).
//! - `facilitator_private_key`: **secret**. Empty disables settlement. Its value never reaches a log, an error
//!   or a response; a malformed key is reported by the variable's name only.
//! - `treasury_private_key`: **secret**, handled like `facilitator_private_key`. Empty disables paying refunds
//!   (`run-refunds`); recording them (`owe-refund`) works without it.
//! - `settlement_timeout_ms`: how long `settle` (and `run-refunds`) waits for a receipt before answering
//!   `pending` (15000).

use std::time::Duration;

use esim402_core::Network;
use esim402_core::chain::parse_address;
use esim402_core::evm::SigningKey;
use esim402_core::x402::{NetworkConfig, Networks};

use crate::wit;

/// Default of `settlement_timeout_ms`.
const DEFAULT_SETTLEMENT_TIMEOUT_MS: u64 = 15_000;
/// Largest accepted `settlement_timeout_ms` (a request should not outlive ten minutes).
const MAX_SETTLEMENT_TIMEOUT_MS: u64 = 600_000;

/// The deployment's verifier configuration.
pub struct Config {
    /// The enabled network, registry entry with the token overrides applied.
    pub network: NetworkConfig,
    /// The JSON-RPC endpoint (may carry an API key: never put it in messages).
    pub rpc_url: String,
    /// How long a settlement waits for its receipt.
    pub settlement_timeout: Duration,
    /// The facilitator key: `None` when settlement is disabled, `Err` (with a safe message) when malformed.
    signer: Option<Result<SigningKey, String>>,
    /// The treasury key that pays refunds, the same way.
    treasury: Option<Result<SigningKey, String>>,
}

async fn optional_var(name: &str) -> Option<String> {
    spin_sdk::variables::get(name)
        .await
        .ok()
        .map(|v| v.trim().to_owned())
        .filter(|v| !v.is_empty())
}

fn config_error(name: &str, msg: impl std::fmt::Display) -> wit::Error {
    wit::Error::Internal(format!("variable {name} is invalid: {msg}"))
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

impl Config {
    /// Read every variable; a missing or invalid one is an `internal` error naming it (never its value).
    pub async fn load() -> Result<Self, wit::Error> {
        let network = Self::network().await?;
        let rpc_url = match optional_var("rpc_url").await {
            Some(url) => url,
            None => optional_var(&network.rpc_variable).await.ok_or_else(|| {
                wit::Error::Internal(format!(
                    "variable rpc_url (or {}) is not set",
                    network.rpc_variable
                ))
            })?,
        };
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
        Ok(Self {
            network,
            rpc_url,
            settlement_timeout,
            signer: key_var("facilitator_private_key").await,
            treasury: key_var("treasury_private_key").await,
        })
    }

    async fn network() -> Result<NetworkConfig, wit::Error> {
        let id = optional_var("payment_network")
            .await
            .ok_or_else(|| wit::Error::Internal("variable payment_network is not set".into()))?;
        let chain = Network::parse(&id).map_err(|e| config_error("payment_network", e))?;
        let mut network = Networks::builtin().get(chain).cloned().ok_or_else(|| {
            config_error(
                "payment_network",
                format!("{chain} is not in the network registry"),
            )
        })?;
        if let Some(usdc) = optional_var("usdc_address").await {
            network.usdc = parse_address(&usdc).map_err(|e| config_error("usdc_address", e))?;
        }
        if let Some(name) = optional_var("usdc_eip712_name").await {
            network.eip712_name = name;
        }
        if let Some(version) = optional_var("usdc_eip712_version").await {
            network.eip712_version = version;
        }
        Ok(network)
    }

    /// The enabled networks as a registry (one entry), for `/supported` and request resolution.
    pub fn networks(&self) -> Networks {
        let chain = self.network.network;
        Networks::builtin().clone().retain(|n| n.network == chain)
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
