//! Spin variables more than one component reads: optional settings, and the enabled payment networks.

use esim402_core::chain::parse_address;
use esim402_core::x402::networks::TokenOverrides;
use esim402_core::x402::{NetworkConfig, Networks};

/// A variable's value, trimmed; `None` when unset, unreadable or blank.
pub async fn optional_var(name: &str) -> Option<String> {
    spin_sdk::variables::get(name)
        .await
        .ok()
        .map(|v| v.trim().to_owned())
        .filter(|v| !v.is_empty())
}

/// A secret variable, trimmed; `None` only when unset (undefined, or blank). A variable provider that fails
/// (a vault unreachable) is an error naming the variable, never taken for "unset": a component that falls back
/// to a store-generated key when a secret is unset must not do so because its provider failed once.
pub async fn secret_var(name: &'static str) -> Result<Option<String>, VarError> {
    match spin_sdk::variables::get(name).await {
        Ok(v) => Ok(Some(v.trim().to_owned()).filter(|v| !v.is_empty())),
        Err(spin_sdk::variables::Error::Undefined(_)) => Ok(None),
        Err(_) => Err(VarError {
            name,
            problem: "could not be read from its provider".to_owned(),
        }),
    }
}

/// A variable that is missing or invalid: its name and why (never its value).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VarError {
    /// The variable.
    pub name: &'static str,
    /// What is wrong with it: `is not set`, or `is invalid: …`.
    pub problem: String,
}

impl std::fmt::Display for VarError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "variable {} {}", self.name, self.problem)
    }
}

fn invalid(name: &'static str, message: impl std::fmt::Display) -> VarError {
    VarError {
        name,
        problem: format!("is invalid: {message}"),
    }
}

/// Whether this is a development deployment (kernel `deployment::is_development`): `public_origins` unset and
/// the local dev chain as the only enabled network.
pub async fn is_development() -> bool {
    not_development().await.is_none()
}

/// Why this is not a development deployment, in words (kernel `deployment::not_development`); `None` if it is.
pub async fn not_development() -> Option<String> {
    let public = optional_var("public_origins").await.is_some();
    let networks = optional_var("payment_network").await;
    esim402_core::deployment::not_development(public, networks.as_deref())
}

/// The carrier catalog this deployment runs with (kernel `deployment::catalog`), and whether this is a
/// development deployment: `carrier_catalog` when set, else the built-in one, which only a development
/// deployment may use; outside development no carrier may sign receipts with a built-in carrier's public
/// development key. The error names the variable.
pub async fn carrier_catalog() -> Result<(esim402_core::esim::Catalog, bool), VarError> {
    let custom = optional_var("carrier_catalog").await;
    let not_development = not_development().await;
    let development = not_development.is_none();
    let catalog =
        esim402_core::deployment::catalog(custom.as_deref(), development).map_err(|e| {
            // Which setting made it "not development": the built-in catalog's refusal is often a typo's first sign.
            match (&e, not_development) {
                (
                    esim402_core::esim::catalog::CatalogError::BuiltinOutsideDevelopment,
                    Some(why),
                ) => invalid("carrier_catalog", format!("{e}: here, {why}")),
                _ => invalid("carrier_catalog", e),
            }
        })?;
    Ok((catalog, development))
}

/// [`carrier_catalog`] for the component that verifies receipts: also refused outside development, a carrier
/// signing with a key derived from one of the catalog's own carrier ids (a key derivation per such id:
/// `deployment::refuse_derived_dev_signers`).
pub async fn receipt_catalog() -> Result<esim402_core::esim::Catalog, VarError> {
    let (catalog, development) = carrier_catalog().await?;
    derived_dev_signers(&catalog, development)?;
    Ok(catalog)
}

/// `deployment::refuse_derived_dev_signers` with the error naming the variable.
pub fn derived_dev_signers(
    catalog: &esim402_core::esim::Catalog,
    development: bool,
) -> Result<(), VarError> {
    esim402_core::deployment::refuse_derived_dev_signers(catalog, development)
        .map_err(|e| invalid("carrier_catalog", e))
}

/// The deployment's enabled networks, preferred first: `payment_network` (comma-separated CAIP-2 ids or
/// registry names) resolved in the kernel's registry, with `usdc_address`, `usdc_eip712_name`,
/// `usdc_eip712_version` and `payment_confirmations` overriding the first network's settings when set.
pub async fn enabled_networks() -> Result<Vec<NetworkConfig>, VarError> {
    let spec = optional_var("payment_network")
        .await
        .ok_or_else(|| VarError {
            name: "payment_network",
            problem: "is not set".into(),
        })?;
    let overrides = TokenOverrides {
        usdc: match optional_var("usdc_address").await {
            Some(a) => Some(parse_address(&a).map_err(|e| invalid("usdc_address", e))?),
            None => None,
        },
        eip712_name: optional_var("usdc_eip712_name").await,
        eip712_version: optional_var("usdc_eip712_version").await,
        confirmations: match optional_var("payment_confirmations").await {
            Some(c) => Some(
                c.parse::<u32>()
                    .ok()
                    .filter(|c| (1..=1000).contains(c))
                    .ok_or_else(|| invalid("payment_confirmations", "expected 1-1000"))?,
            ),
            None => None,
        },
    };
    Networks::builtin()
        .enabled(&spec, &overrides)
        .map_err(|e| invalid("payment_network", e))
}
