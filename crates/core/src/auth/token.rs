//! Per-SIM access tokens: `sim_` + 43 characters of URL-safe base64 (32 bytes). A token is derived from a server
//! key, the ICCID and a generation (`keccak256("esim402/sim-token/v1" ‖ key ‖ iccid ‖ ":" ‖ generation)`), so
//! the same paid activation answered again carries the same token while nothing but its hash is stored.
//! Rotating bumps the generation (the old token stops matching); terminating drops the hash (nothing matches).

use alloy_primitives::{B256, keccak256};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;

/// The prefix every token carries (so a leaked one is recognisable in logs and secret scanners).
pub const PREFIX: &str = "sim_";

/// An access token (a secret: never logged).
#[derive(Clone, PartialEq, Eq)]
pub struct SimToken(String);

impl std::fmt::Debug for SimToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SimToken(..)")
    }
}

impl SimToken {
    /// The token of `iccid` at `generation` under `key`.
    pub fn derive(key: &[u8; 32], iccid: &str, generation: u32) -> Self {
        let mut input = b"esim402/sim-token/v1".to_vec();
        input.extend_from_slice(key);
        input.extend_from_slice(iccid.as_bytes());
        input.push(b':');
        input.extend_from_slice(&generation.to_be_bytes());
        Self(format!(
            "{PREFIX}{}",
            URL_SAFE_NO_PAD.encode(keccak256(input))
        ))
    }

    /// The token text.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// What is stored instead of the token.
    pub fn hash(&self) -> B256 {
        hash(&self.0)
    }
}

fn hash(token: &str) -> B256 {
    let mut input = b"esim402/sim-token-hash/v1".to_vec();
    input.extend_from_slice(token.as_bytes());
    keccak256(input)
}

/// Whether `presented` is the token whose hash is `stored` (compared in constant time).
pub fn matches(stored: &B256, presented: &str) -> bool {
    use subtle::ConstantTimeEq as _;
    hash(presented).as_slice().ct_eq(stored.as_slice()).into()
}

/// Whether `s` has a token's form (prefix and length); the cheap check before any lookup.
pub fn looks_like_token(s: &str) -> bool {
    s.len() == PREFIX.len() + 43
        && s.starts_with(PREFIX)
        && s[PREFIX.len()..]
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_stable_per_generation_and_distinct_across_sims_keys_and_generations() {
        let k = [1u8; 32];
        let a = SimToken::derive(&k, "8901260000000000019", 0);
        assert_eq!(a, SimToken::derive(&k, "8901260000000000019", 0));
        assert!(looks_like_token(a.as_str()), "{}", a.as_str());
        assert_ne!(a, SimToken::derive(&k, "8901260000000000019", 1));
        assert_ne!(a, SimToken::derive(&k, "8901260000000000027", 0));
        assert_ne!(a, SimToken::derive(&[2u8; 32], "8901260000000000019", 0));
        assert!(matches(&a.hash(), a.as_str()));
        assert!(!matches(&a.hash(), "sim_x"));
        assert_eq!(format!("{a:?}"), "SimToken(..)");
    }

    #[test]
    fn form_check() {
        assert!(!looks_like_token(""));
        assert!(!looks_like_token("sim_short"));
        assert!(!looks_like_token(&format!("tok_{}", "a".repeat(43))));
        assert!(!looks_like_token(&format!("sim_{}", "+".repeat(43))));
        assert!(looks_like_token(&format!("sim_{}", "a".repeat(43))));
    }
}
