//! A token's EIP-712 domain, the part of a network's configuration that signatures are made over. Its own
//! module so the network registry and the `exact` scheme can both use it without needing each other.

use alloy_primitives::{Address, B256, U256};
use alloy_sol_types::Eip712Domain;

/// A token's EIP-712 domain: `{name, version, chainId, verifyingContract}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenDomain {
    /// Domain name (`extra.name`).
    pub name: String,
    /// Domain version (`extra.version`).
    pub version: String,
    /// Chain id.
    pub chain_id: u64,
    /// The token contract.
    pub verifying_contract: Address,
}

impl TokenDomain {
    /// As alloy's [`Eip712Domain`].
    pub fn eip712_domain(&self) -> Eip712Domain {
        Eip712Domain::new(
            Some(self.name.clone().into()),
            Some(self.version.clone().into()),
            Some(U256::from(self.chain_id)),
            Some(self.verifying_contract),
            None,
        )
    }

    /// The domain separator (`DOMAIN_SEPARATOR()` of the token).
    pub fn separator(&self) -> B256 {
        self.eip712_domain().separator()
    }
}
