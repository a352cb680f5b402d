//! The EVM network registry as configuration: per CAIP-2 chain, its x402 v1 name, USDC contract and EIP-712
//! domain, confirmations and the Spin variable holding its RPC URL.
//!
//! [`Networks::builtin`] is the shipped `crates/core/catalog/networks.toml`; [`Networks::from_toml`] loads
//! another. Look a chain up with [`Networks::lookup`] (CAIP-2, v1 name or alias) or [`Networks::get`]; narrow
//! the registry to the chains a deployment can reach with [`Networks::retain`].

use std::collections::BTreeMap;
use std::sync::OnceLock;

use serde::Deserialize;

use super::domain::TokenDomain;
use crate::chain::{Address, ChainId, Network, parse_address};

/// The shipped registry's TOML text.
pub const BUILTIN_TOML: &str = include_str!("../../catalog/networks.toml");

/// Token decimals the money model supports (one atomic unit is one micro-USDC).
pub const USDC_DECIMALS: u8 = 6;

/// Why a registry did not load.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NetworksError {
    /// Not TOML of the expected shape (unknown keys, wrong types), with the position.
    #[error("network registry is not valid: {0}")]
    Syntax(String),
    /// A table key that is not a canonical CAIP-2 `eip155:<chain id>`.
    #[error("network key {0:?} must be a canonical CAIP-2 id like \"eip155:137\"")]
    Key(String),
    /// A required text field is empty.
    #[error("network {network}: {field} must not be empty")]
    Empty {
        /// The network.
        network: Network,
        /// The key.
        field: &'static str,
    },
    /// A name that contradicts the chain module's v1 name for the chain, or is not a lower-case slug.
    #[error("network {network}: name {name:?} {reason}")]
    Name {
        /// The network.
        network: Network,
        /// The refused name.
        name: String,
        /// What is wrong.
        reason: &'static str,
    },
    /// The same name or alias on two networks.
    #[error("network name {0:?} is used twice")]
    DuplicateName(String),
    /// `usdc` is not an address (or fails its EIP-55 checksum).
    #[error("network {network}: usdc {value:?} is not a valid (checksummed) address")]
    Usdc {
        /// The network.
        network: Network,
        /// The refused text.
        value: String,
    },
    /// Decimals other than 6.
    #[error("network {network}: decimals must be 6 (money is integer micro-USDC), not {decimals}")]
    Decimals {
        /// The network.
        network: Network,
        /// The refused value.
        decimals: u8,
    },
    /// Zero confirmations.
    #[error("network {0}: confirmations must be at least 1")]
    Confirmations(Network),
    /// Not a valid Spin variable name.
    #[error(
        "network {network}: rpc_variable {value:?} must be a Spin variable name (a-z, 0-9, single '_', starting with a letter)"
    )]
    RpcVariable {
        /// The network.
        network: Network,
        /// The refused text.
        value: String,
    },
}

/// One chain we accept payments on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetworkConfig {
    /// The chain.
    pub network: Network,
    /// x402 v1 name (`base-sepolia`).
    pub name: String,
    /// Extra names accepted on lookup.
    pub aliases: Vec<String>,
    /// The USDC contract (`asset`, EIP-712 `verifyingContract`).
    pub usdc: Address,
    /// EIP-712 domain name of the token (`extra.name`).
    pub eip712_name: String,
    /// EIP-712 domain version of the token (`extra.version`).
    pub eip712_version: String,
    /// Token decimals (always [`USDC_DECIMALS`]).
    pub decimals: u8,
    /// Confirmations before a settlement counts as final.
    pub confirmations: u32,
    /// The Spin variable holding the chain's JSON-RPC URL.
    pub rpc_variable: String,
}

impl NetworkConfig {
    /// The chain id.
    pub const fn chain_id(&self) -> ChainId {
        self.network.chain_id()
    }

    /// The CAIP-2 id (`eip155:84532`), as x402 v2 writes `network`.
    pub fn caip2(&self) -> String {
        self.network.to_string()
    }

    /// Whether `id` names this chain: its CAIP-2 id, v1 name or an alias (exact, case-sensitive).
    pub fn matches(&self, id: &str) -> bool {
        id == self.name
            || self.aliases.iter().any(|a| a == id)
            || (id.starts_with("eip155:") && Network::parse(id) == Ok(self.network))
    }

    /// The token's EIP-712 domain on this chain.
    pub fn token_domain(&self) -> TokenDomain {
        TokenDomain {
            name: self.eip712_name.clone(),
            version: self.eip712_version.clone(),
            chain_id: self.network.chain_id().0,
            verifying_contract: self.usdc,
        }
    }
}

/// A validated registry, ordered by chain id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Networks {
    networks: Vec<NetworkConfig>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRegistry {
    networks: BTreeMap<String, RawNetwork>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawNetwork {
    name: String,
    #[serde(default)]
    aliases: Vec<String>,
    usdc: String,
    eip712_name: String,
    eip712_version: String,
    decimals: u8,
    confirmations: u32,
    rpc_variable: String,
}

impl Networks {
    /// Parse and validate a registry (see `crates/core/catalog/networks.toml` for the documented shape).
    pub fn from_toml(text: &str) -> Result<Self, NetworksError> {
        let raw: RawRegistry = toml::from_str(text)
            .map_err(|e| NetworksError::Syntax(crate::toml_text::syntax_error(text, &e)))?;
        let mut networks = Vec::with_capacity(raw.networks.len());
        for (key, n) in raw.networks {
            networks.push(network(&key, n)?);
        }
        networks.sort_by_key(|n| n.network);
        let mut names = std::collections::BTreeSet::new();
        for n in &networks {
            for name in std::iter::once(&n.name).chain(&n.aliases) {
                if !names.insert(name.as_str()) {
                    return Err(NetworksError::DuplicateName(name.clone()));
                }
            }
        }
        Ok(Self { networks })
    }

    /// The shipped registry, parsed once.
    pub fn builtin() -> &'static Networks {
        static BUILTIN: OnceLock<Networks> = OnceLock::new();
        BUILTIN.get_or_init(|| {
            // Compile-time constant text, parsed by this module's tests: a failure here is a build defect.
            Self::from_toml(BUILTIN_TOML)
                .expect("the builtin network registry is validated by its unit test")
        })
    }

    /// All networks, ordered by chain id.
    pub fn iter(&self) -> impl Iterator<Item = &NetworkConfig> {
        self.networks.iter()
    }

    /// How many networks.
    pub fn len(&self) -> usize {
        self.networks.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.networks.is_empty()
    }

    /// A network by chain.
    pub fn get(&self, network: Network) -> Option<&NetworkConfig> {
        self.networks.iter().find(|n| n.network == network)
    }

    /// A network by CAIP-2 id (`eip155:137`), v1 name (`polygon`) or alias (`localhost`).
    pub fn lookup(&self, id: &str) -> Option<&NetworkConfig> {
        self.networks.iter().find(|n| n.matches(id))
    }

    /// Only the networks `keep` accepts (e.g. those whose RPC variable is set).
    pub fn retain(mut self, keep: impl FnMut(&NetworkConfig) -> bool) -> Self {
        self.networks.retain(keep);
        self
    }
}

fn network(key: &str, n: RawNetwork) -> Result<NetworkConfig, NetworksError> {
    let network = Network::parse(key)
        .ok()
        .filter(|net| key.starts_with("eip155:") && net.to_string() == key)
        .ok_or_else(|| NetworksError::Key(key.to_owned()))?;
    for (field, value) in [
        ("name", &n.name),
        ("eip712_name", &n.eip712_name),
        ("eip712_version", &n.eip712_version),
    ] {
        if value.trim().is_empty() {
            return Err(NetworksError::Empty { network, field });
        }
    }
    let name_error = |name: &str, reason| NetworksError::Name {
        network,
        name: name.to_owned(),
        reason,
    };
    for name in std::iter::once(&n.name).chain(&n.aliases) {
        let slug = name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
        if name.is_empty() || !slug || name.starts_with("eip155") {
            return Err(name_error(
                name,
                "must be a lower-case slug (a-z, 0-9, '-')",
            ));
        }
    }
    // One vocabulary: the chain module's v1 names (`Network::parse("polygon")`) and ours must agree.
    if let Some(known) = network.v1_name()
        && known != n.name
    {
        return Err(name_error(
            &n.name,
            "differs from the chain's known v1 name",
        ));
    }
    let usdc = parse_usdc(&n.usdc).ok_or_else(|| NetworksError::Usdc {
        network,
        value: n.usdc.clone(),
    })?;
    if n.decimals != USDC_DECIMALS {
        return Err(NetworksError::Decimals {
            network,
            decimals: n.decimals,
        });
    }
    if n.confirmations == 0 {
        return Err(NetworksError::Confirmations(network));
    }
    if !is_spin_variable_name(&n.rpc_variable) {
        return Err(NetworksError::RpcVariable {
            network,
            value: n.rpc_variable,
        });
    }
    Ok(NetworkConfig {
        network,
        name: n.name,
        aliases: n.aliases,
        usdc,
        eip712_name: n.eip712_name,
        eip712_version: n.eip712_version,
        decimals: n.decimals,
        confirmations: n.confirmations,
        rpc_variable: n.rpc_variable,
    })
}

/// An address; a mixed-case one must carry a valid EIP-55 checksum (catches typos in the table).
fn parse_usdc(s: &str) -> Option<Address> {
    let addr = parse_address(s).ok()?;
    let hex_part = s.get(2..)?;
    let mixed = hex_part.bytes().any(|b| b.is_ascii_uppercase())
        && hex_part.bytes().any(|b| b.is_ascii_lowercase());
    (!mixed || addr.to_checksum(None) == s).then_some(addr)
}

/// Spin variable names: lower-case letters, digits and single underscores, starting with a letter.
fn is_spin_variable_name(s: &str) -> bool {
    s.starts_with(|c: char| c.is_ascii_lowercase())
        && !s.ends_with('_')
        && !s.contains("__")
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
}

/// Token settings that replace the registry's for the **first** enabled network (the dev chain deploys its
/// own token; production leaves them empty).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TokenOverrides {
    /// Token contract.
    pub usdc: Option<Address>,
    /// EIP-712 domain name.
    pub eip712_name: Option<String>,
    /// EIP-712 domain version.
    pub eip712_version: Option<String>,
    /// Confirmations required.
    pub confirmations: Option<u32>,
}

impl Networks {
    /// The deployment's enabled networks from `spec` (the `payment_network` variable: a comma-separated list
    /// of CAIP-2 ids or names, preferred first), with `overrides` applied to the first. Errors name the
    /// entry at fault.
    pub fn enabled(
        &self,
        spec: &str,
        overrides: &TokenOverrides,
    ) -> Result<Vec<NetworkConfig>, String> {
        let mut out: Vec<NetworkConfig> = Vec::new();
        for id in spec.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            let n = self
                .lookup(id)
                .ok_or_else(|| format!("{id:?} is not in the network registry"))?;
            if out.iter().any(|o| o.network == n.network) {
                return Err(format!("{id:?} is listed twice"));
            }
            out.push(n.clone());
        }
        let first = out
            .first_mut()
            .ok_or_else(|| "no network is enabled".to_owned())?;
        if let Some(usdc) = overrides.usdc {
            first.usdc = usdc;
        }
        if let Some(name) = &overrides.eip712_name {
            first.eip712_name = name.clone();
        }
        if let Some(version) = &overrides.eip712_version {
            first.eip712_version = version.clone();
        }
        if let Some(c) = overrides.confirmations {
            first.confirmations = c.max(1);
        }
        Ok(out)
    }
}

/// The networks to offer a payer who prefers `preference` (empty: all of `enabled`, in their order;
/// otherwise the enabled ones among them, in the payer's order, each once). Empty result: nothing the payer
/// wants is enabled.
pub fn narrow(enabled: &[NetworkConfig], preference: &[Network]) -> Vec<NetworkConfig> {
    if preference.is_empty() {
        return enabled.to_vec();
    }
    let mut offered: Vec<NetworkConfig> = Vec::with_capacity(preference.len());
    for p in preference {
        if offered.iter().any(|n| n.network == *p) {
            continue;
        }
        if let Some(n) = enabled.iter().find(|n| n.network == *p) {
            offered.push(n.clone());
        }
    }
    offered
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = r#"
        [networks."eip155:84532"]
        name = "base-sepolia"
        usdc = "0x036CbD53842c5426634e7929541eC2318f3dCF7e"
        eip712_name = "USDC"
        eip712_version = "2"
        decimals = 6
        confirmations = 1
        rpc_variable = "rpc_url_base_sepolia"
    "#;

    fn broken(from: &str, to: &str) -> NetworksError {
        assert!(MINIMAL.contains(from), "{from}");
        Networks::from_toml(&MINIMAL.replace(from, to)).unwrap_err()
    }

    #[test]
    fn the_builtin_registry_is_valid_and_matches_the_reference_table() {
        let nets = Networks::from_toml(BUILTIN_TOML).unwrap();
        assert_eq!(&nets, Networks::builtin());
        let expect = [
            (
                "base",
                8453,
                "0x833589fCD6eDb6E08f4c7C32D4f71b54bdA02913",
                "USD Coin",
            ),
            (
                "base-sepolia",
                84532,
                "0x036CbD53842c5426634e7929541eC2318f3dCF7e",
                "USDC",
            ),
            (
                "polygon",
                137,
                "0x3c499c542cEF5E3811e1192ce70d8cC03d5c3359",
                "USD Coin",
            ),
            (
                "polygon-amoy",
                80002,
                "0x41E94Eb019C0762f9Bfcf9Fb1E58725BfB0e7582",
                "USDC",
            ),
            (
                "arbitrum",
                42161,
                "0xaf88d065e77c8cC2239327C5EDb3A432268e5831",
                "USD Coin",
            ),
            (
                "arbitrum-sepolia",
                421614,
                "0x75faf114eafb1BDbe2F0316DF893fd58CE46AA4d",
                "USD Coin",
            ),
            (
                "anvil",
                31337,
                "0x5FbDB2315678afecb367f032d93F642f64180aa3",
                "USD Coin",
            ),
        ];
        for (name, id, usdc, domain_name) in expect {
            let n = nets.lookup(name).unwrap();
            assert_eq!(n.chain_id(), ChainId(id), "{name}");
            assert_eq!(n.usdc.to_checksum(None), usdc, "{name}");
            assert_eq!(
                (n.eip712_name.as_str(), n.eip712_version.as_str()),
                (domain_name, "2")
            );
            assert_eq!(n.decimals, 6);
            assert!(n.confirmations >= 1);
            assert_eq!(nets.lookup(&n.caip2()), Some(n));
            assert_eq!(nets.get(n.network), Some(n));
        }
        // Every chain the chain module names has a registry entry under the same name.
        for n in nets.iter() {
            assert_eq!(n.network.v1_name(), Some(n.name.as_str()));
        }
        assert_eq!(
            nets.lookup("polygon").unwrap().rpc_variable,
            "rpc_url_polygon"
        );
        assert_eq!(nets.lookup("localhost").unwrap().rpc_variable, "rpc_url");
        assert_eq!(nets.lookup("eip155:31337").unwrap().name, "anvil");
        let ids: Vec<u64> = nets.iter().map(|n| n.chain_id().0).collect();
        assert!(ids.is_sorted(), "ordered by chain id: {ids:?}");
    }

    #[test]
    fn lookups_are_exact() {
        let nets = Networks::builtin();
        for unknown in [
            "",
            "Base",
            "eip155:999",
            "eip155:08453",
            "solana:mainnet",
            "BASE-SEPOLIA",
        ] {
            assert!(nets.lookup(unknown).is_none(), "{unknown:?}");
        }
        let live = nets.clone().retain(|n| n.name == "anvil");
        assert_eq!(live.len(), 1);
        assert!(live.lookup("base").is_none());
        assert!(!live.is_empty());
    }

    #[test]
    fn token_domain_comes_from_the_entry() {
        let n = Networks::builtin().lookup("base-sepolia").unwrap();
        let d = n.token_domain();
        assert_eq!(
            (d.name.as_str(), d.version.as_str(), d.chain_id),
            ("USDC", "2", 84532)
        );
        assert_eq!(d.verifying_contract, n.usdc);
    }

    #[test]
    fn validation_names_the_problem() {
        assert_eq!(Networks::from_toml(MINIMAL).unwrap().len(), 1);
        assert!(matches!(
            broken("decimals = 6", "decimals = \"6\""),
            NetworksError::Syntax(_)
        ));
        assert!(matches!(
            broken("decimals = 6", "decimals = 6\nextra = 1"),
            NetworksError::Syntax(_)
        ));
        assert_eq!(
            broken("\"eip155:84532\"", "\"base-sepolia\""),
            NetworksError::Key("base-sepolia".into())
        );
        assert_eq!(
            broken("\"eip155:84532\"", "\"eip155:084532\""),
            NetworksError::Key("eip155:084532".into())
        );
        let net = Network::parse("eip155:84532").unwrap();
        assert!(matches!(
            broken("\"base-sepolia\"", "\"base\""),
            NetworksError::Name { .. }
        ));
        assert!(matches!(
            broken("\"base-sepolia\"", "\"Base\""),
            NetworksError::Name { .. }
        ));
        assert_eq!(
            broken("eip712_name = \"USDC\"", "eip712_name = \" \""),
            NetworksError::Empty {
                network: net,
                field: "eip712_name"
            }
        );
        assert!(matches!(
            broken(
                "0x036CbD53842c5426634e7929541eC2318f3dCF7e",
                "0x036CbD53842c5426634e7929541eC2318f3dCF7E"
            ),
            NetworksError::Usdc { .. }
        ));
        assert!(matches!(
            broken("0x036CbD53842c5426634e7929541eC2318f3dCF7e", "0x036C"),
            NetworksError::Usdc { .. }
        ));
        assert_eq!(
            broken("decimals = 6", "decimals = 18"),
            NetworksError::Decimals {
                network: net,
                decimals: 18
            }
        );
        assert_eq!(
            broken("confirmations = 1", "confirmations = 0"),
            NetworksError::Confirmations(net)
        );
        for bad in ["RPC_URL", "rpc-url", "rpc__url", "_rpc", "rpc_", "1rpc", ""] {
            assert!(
                matches!(
                    broken("\"rpc_url_base_sepolia\"", &format!("{bad:?}")),
                    NetworksError::RpcVariable { .. }
                ),
                "{bad}"
            );
        }
        let twice = format!(
            "{MINIMAL}\n[networks.\"eip155:999999\"]\nname = \"devnet\"\naliases = [\"base-sepolia\"]\n\
             usdc = \"0x5FbDB2315678afecb367f032d93F642f64180aa3\"\neip712_name = \"USDC\"\n\
             eip712_version = \"2\"\ndecimals = 6\nconfirmations = 1\nrpc_variable = \"rpc_url_devnet\"\n"
        );
        assert_eq!(
            Networks::from_toml(&twice).unwrap_err(),
            NetworksError::DuplicateName("base-sepolia".into())
        );
    }

    #[test]
    fn lowercase_addresses_need_no_checksum() {
        let text = MINIMAL.replace(
            "0x036CbD53842c5426634e7929541eC2318f3dCF7e",
            "0x036cbd53842c5426634e7929541ec2318f3dcf7e",
        );
        let nets = Networks::from_toml(&text).unwrap();
        assert_eq!(
            nets.lookup("base-sepolia").unwrap().usdc.to_checksum(None),
            "0x036CbD53842c5426634e7929541eC2318f3dCF7e"
        );
    }

    #[test]
    fn enabled_networks_keep_their_order_and_take_overrides_on_the_first() {
        let reg = Networks::builtin();
        let token: Address = "0x00000000000000000000000000000000000000aa"
            .parse()
            .unwrap();
        let overrides = TokenOverrides {
            usdc: Some(token),
            eip712_name: Some("Test".into()),
            eip712_version: None,
            confirmations: Some(3),
        };
        let en = reg.enabled("polygon, eip155:8453", &overrides).unwrap();
        assert_eq!(
            en.iter().map(NetworkConfig::caip2).collect::<Vec<_>>(),
            ["eip155:137", "eip155:8453"]
        );
        assert_eq!(
            (en[0].usdc, en[0].eip712_name.as_str(), en[0].confirmations),
            (token, "Test", 3)
        );
        assert_eq!(
            en[1],
            *reg.lookup("base").unwrap(),
            "overrides touch only the first"
        );
        assert!(reg.enabled("", &overrides).is_err());
        assert!(
            reg.enabled("polygon,eip155:137", &overrides)
                .unwrap_err()
                .contains("twice")
        );
        assert!(
            reg.enabled("dogecoin", &overrides)
                .unwrap_err()
                .contains("dogecoin")
        );
        let base = Network::parse("eip155:8453").unwrap();
        let eth = Network::parse("eip155:1").unwrap();
        let picked = narrow(&en, &[eth, base]);
        assert_eq!(picked.len(), 1);
        assert_eq!(picked[0].network, base);
        assert_eq!(narrow(&en, &[]), en);
        assert!(narrow(&en, &[eth]).is_empty());
        // Each network is offered once, whatever the preference repeats.
        assert_eq!(narrow(&en, &[base, eth, base]), picked);
    }
}
