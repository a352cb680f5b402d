//! Chains and addresses: CAIP-2 network ids (`eip155:137`), their legacy x402 v1 names, and EVM addresses
//! (alloy's `Address`, checksummed on output).

use std::fmt;

use serde::{Deserialize, Serialize};

pub use alloy_primitives::Address;

/// Why a chain or address did not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ChainError(pub String);

/// An EVM chain id.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct ChainId(pub u64);

/// Known network names (x402 v1 names) and their chain ids.
const NAMES: &[(&str, u64)] = &[
    ("ethereum", 1),
    ("polygon", 137),
    ("polygon-amoy", 80002),
    ("base", 8453),
    ("base-sepolia", 84532),
    ("arbitrum", 42161),
    ("arbitrum-sepolia", 421614),
    ("avalanche", 43114),
    ("avalanche-fuji", 43113),
    ("anvil", 31337),
];

/// An EVM network, written as CAIP-2 (`eip155:<chain id>`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Network(ChainId);

impl Network {
    /// The network for a chain id.
    pub const fn new(chain: ChainId) -> Self {
        Self(chain)
    }

    /// Parse `eip155:<id>` or a known name (`polygon`, `base-sepolia`, …).
    pub fn parse(s: &str) -> Result<Self, ChainError> {
        if let Some(id) = s.strip_prefix("eip155:") {
            let valid = !id.is_empty()
                && id.len() <= 20
                && id.bytes().all(|b| b.is_ascii_digit())
                && !id.starts_with('0');
            return id
                .parse::<u64>()
                .ok()
                .filter(|_| valid)
                .map(|n| Self(ChainId(n)))
                .ok_or_else(|| ChainError(format!("invalid CAIP-2 network {s:?}")));
        }
        NAMES
            .iter()
            .find(|(name, _)| *name == s)
            .map(|&(_, id)| Self(ChainId(id)))
            .ok_or_else(|| {
                ChainError(format!(
                    "unknown network {s:?}: use CAIP-2 (eip155:137) or a known name"
                ))
            })
    }

    /// The chain id.
    pub const fn chain_id(self) -> ChainId {
        self.0
    }

    /// The x402 v1 name, where one exists.
    pub fn v1_name(self) -> Option<&'static str> {
        NAMES
            .iter()
            .find(|(_, id)| *id == self.0.0)
            .map(|(n, _)| *n)
    }
}

impl fmt::Display for Network {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "eip155:{}", self.0.0)
    }
}

impl TryFrom<String> for Network {
    type Error = ChainError;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        Self::parse(&s)
    }
}

impl From<Network> for String {
    fn from(n: Network) -> Self {
        n.to_string()
    }
}

/// A payer named in a request: an address ([`parse_address`]) that is not the zero address (no key signs for
/// it, so an invoice sealed to it could never be paid).
pub fn parse_payer(s: &str) -> Result<Address, ChainError> {
    let a = parse_address(s)?;
    if a == Address::ZERO {
        return Err(ChainError(
            "the zero address cannot sign a payment: name the paying wallet".into(),
        ));
    }
    Ok(a)
}

/// Parse a `0x`-prefixed 20-byte hex address (any case; checksums are not enforced on input).
pub fn parse_address(s: &str) -> Result<Address, ChainError> {
    let hex_part = s
        .strip_prefix("0x")
        .ok_or_else(|| ChainError("address must start with 0x".into()))?;
    if hex_part.len() != 40 {
        return Err(ChainError(
            "address must be 0x followed by 40 hex digits".into(),
        ));
    }
    s.parse::<Address>()
        .map_err(|_| ChainError("address must be 0x followed by 40 hex digits".into()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn networks_parse_caip2_and_names() {
        assert_eq!(
            Network::parse("eip155:137").unwrap().chain_id(),
            ChainId(137)
        );
        assert_eq!(Network::parse("polygon").unwrap().to_string(), "eip155:137");
        assert_eq!(
            Network::parse("eip155:31337").unwrap().v1_name(),
            Some("anvil")
        );
        for bad in [
            "",
            "eip155:",
            "eip155:0x1",
            "eip155:-1",
            "eip155:01",
            "solana:mainnet",
            "Polygon",
            "eip155:99999999999999999999999",
        ] {
            assert!(Network::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn addresses() {
        let a = parse_address("0x3c44cdddb6a900fa2b585dd299e03d12fa4293bc").unwrap();
        assert_eq!(
            a.to_checksum(None),
            "0x3C44CdDdB6a900fa2b585dd299e03d12FA4293BC"
        );
        for bad in [
            "",
            "3c44cdddb6a900fa2b585dd299e03d12fa4293bc",
            "0x3c44",
            "0xzz44cdddb6a900fa2b585dd299e03d12fa4293bc",
        ] {
            assert!(parse_address(bad).is_err(), "{bad}");
        }
    }
}
