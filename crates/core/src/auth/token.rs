//! Per-SIM access tokens: `sim_` + 43 characters of URL-safe base64 (32 bytes). A token is derived from a server
//! key, the SIM record it opens (its ICCID and the invoice that paid for it) and a generation
//! (`keccak256("esim402/sim-token/v2" ‖ key ‖ len ‖ iccid ‖ len ‖ invoice ‖ generation)`), so the same paid
//! activation answered again carries the same token while nothing but its hash is stored. Rotating bumps the
//! generation (the old token stops matching); terminating drops the hash (nothing matches).
//!
//! The invoice is in the derivation because an ICCID is not one SIM for ever: a profile given back to the pool
//! (its confirm refused, or its download failed for good) may be handed out again and recorded for another
//! payer at generation 0. Tokens derived from the ICCID alone ([`SimToken::derive_legacy`], `…/v1`, what
//! records stored before carried) were the same for both records, so the first payer's tokens opened the next
//! payer's SIM. A legacy record still verifies (only the hash is compared, whatever derived it), still hands
//! out its first token ([`initial_token`] recognises either derivation by the stored hash), and its next
//! rotation moves it to the bound derivation. The stored state needs no version flag: the hash says which.

use alloy_primitives::{B256, keccak256};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;

use super::TokenState;
use crate::esim::SimState;

/// The prefix every token carries (so a leaked one is recognisable in logs and secret scanners).
pub const PREFIX: &str = "sim_";

/// The variable holding the secret the token key is derived from.
pub const SECRET_VAR: &str = "access_token_secret";

/// An access token (a secret: never logged).
#[derive(Clone, PartialEq, Eq)]
pub struct SimToken(String);

impl std::fmt::Debug for SimToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SimToken(..)")
    }
}

impl SimToken {
    /// The token of the SIM record of `iccid` paid by `invoice_id`, at `generation`, under `key`.
    pub fn derive(key: &[u8; 32], iccid: &str, invoice_id: &str, generation: u32) -> Self {
        let mut input = b"esim402/sim-token/v2".to_vec();
        input.extend_from_slice(key);
        for part in [iccid, invoice_id] {
            // Length-prefixed: no two (iccid, invoice) pairs give the same input.
            input.extend_from_slice(&u32::try_from(part.len()).unwrap_or(u32::MAX).to_be_bytes());
            input.extend_from_slice(part.as_bytes());
        }
        input.extend_from_slice(&generation.to_be_bytes());
        Self::from_digest(keccak256(input))
    }

    /// The token records stored before tokens were bound to their invoice carry: `iccid` at `generation` only
    /// (the same for every record of that ICCID). Only recognised ([`initial_token`]), never issued.
    pub fn derive_legacy(key: &[u8; 32], iccid: &str, generation: u32) -> Self {
        let mut input = b"esim402/sim-token/v1".to_vec();
        input.extend_from_slice(key);
        input.extend_from_slice(iccid.as_bytes());
        input.push(b':');
        input.extend_from_slice(&generation.to_be_bytes());
        Self::from_digest(keccak256(input))
    }

    fn from_digest(digest: B256) -> Self {
        Self(format!("{PREFIX}{}", URL_SAFE_NO_PAD.encode(digest)))
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

/// The stored half of the first token (generation 0) of a new SIM record of `iccid` paid by `invoice_id`.
pub fn initial_state(key: &[u8; 32], iccid: &str, invoice_id: &str) -> TokenState {
    TokenState {
        generation: 0,
        hash: SimToken::derive(key, iccid, invoice_id, 0).hash(),
    }
}

/// The first token of the record of `iccid` paid by `invoice_id` whose stored state is `state`, while it is
/// still that record's token (not rotated, not revoked): the bound derivation, or the legacy one for a record
/// stored before tokens were bound (recognised by its hash). `None` for a record of another invoice: a
/// profile handed out again is another payer's SIM, whatever its generation.
pub fn initial_token(
    key: &[u8; 32],
    iccid: &str,
    invoice_id: &str,
    state: Option<&TokenState>,
) -> Option<SimToken> {
    let state = state.filter(|s| s.generation == 0)?;
    [
        SimToken::derive(key, iccid, invoice_id, 0),
        SimToken::derive_legacy(key, iccid, 0),
    ]
    .into_iter()
    .find(|t| t.hash() == state.hash)
}

/// The next token of the record of `iccid` paid by `invoice_id` whose current state is `current`, and its
/// stored half: always the bound derivation (a legacy record leaves the legacy one on its first rotation).
pub fn rotated(
    key: &[u8; 32],
    iccid: &str,
    invoice_id: &str,
    current: Option<&TokenState>,
) -> (SimToken, TokenState) {
    let generation = current.map_or(1, |t| t.generation.saturating_add(1));
    let token = SimToken::derive(key, iccid, invoice_id, generation);
    let state = TokenState {
        generation,
        hash: token.hash(),
    };
    (token, state)
}

/// Why a SIM in `state` takes no new token, or `None` when it may rotate. Terminated: its tokens are revoked.
/// Failed: out of service for good, its profile back at the carrier (possibly another payer's SIM soon); its
/// owner reads it with the token it has or a wallet sign-in. Pending: its order is still running and the
/// confirm writes the record it started with (generation 0) back, so a rotation now would be undone.
pub fn rotation_refused(state: SimState) -> Option<&'static str> {
    match state {
        SimState::Terminated => Some("is terminated: its access tokens are revoked"),
        SimState::Failed => Some("failed: it takes no new access token"),
        SimState::Pending => {
            Some("is still being ordered: rotate its access token once it is active")
        }
        SimState::Active | SimState::Suspended => None,
    }
}

/// Where the token key comes from (kernel rule; the component reads the variable and the store).
#[derive(Clone, PartialEq, Eq)]
pub enum KeySource {
    /// Derived from the configured `access_token_secret`.
    Secret([u8; 32]),
    /// A random key generated once and kept in the store (`secret/sim-token-key`): development only.
    Stored,
}

impl std::fmt::Debug for KeySource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Secret(_) => "Secret(..)",
            Self::Stored => "Stored",
        })
    }
}

/// Why no token key may be used. Names the variable, never its value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    /// Set, but too short to be a secret.
    #[error("variable {SECRET_VAR} is invalid: use at least 16 characters")]
    TooShort,
    /// Not set outside development.
    #[error(
        "variable {SECRET_VAR} is not set: outside development (public_origins set, or a payment network other than the local dev chain) SIM access tokens must be derived from a configured secret, not from a key kept in the store, where anyone who reads the store could derive every SIM's token"
    )]
    Missing,
}

/// The token key's source: the `secret` (the `access_token_secret` variable, trimmed, `None` if unset or
/// empty), at least 16 characters; without one, a key kept in the store, which only a development
/// deployment (kernel `deployment::is_development`) may use.
pub fn key_source(secret: Option<&str>, development: bool) -> Result<KeySource, KeyError> {
    match secret {
        Some(s) if s.len() < 16 => Err(KeyError::TooShort),
        Some(s) => {
            let mut input = b"esim402/sim-token-key/v1".to_vec();
            input.extend_from_slice(s.as_bytes());
            Ok(KeySource::Secret(keccak256(input).0))
        }
        None if development => Ok(KeySource::Stored),
        None => Err(KeyError::Missing),
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

    const ICCID: &str = "8901260000000000019";

    #[test]
    fn tokens_are_stable_per_generation_and_distinct_across_sims_keys_and_generations() {
        let k = [1u8; 32];
        let a = SimToken::derive(&k, ICCID, "inv-a", 0);
        assert_eq!(a, SimToken::derive(&k, ICCID, "inv-a", 0));
        assert!(looks_like_token(a.as_str()), "{}", a.as_str());
        assert_ne!(a, SimToken::derive(&k, ICCID, "inv-a", 1));
        assert_ne!(a, SimToken::derive(&k, "8901260000000000027", "inv-a", 0));
        assert_ne!(a, SimToken::derive(&[2u8; 32], ICCID, "inv-a", 0));
        assert!(matches(&a.hash(), a.as_str()));
        assert!(!matches(&a.hash(), "sim_x"));
        assert_eq!(format!("{a:?}"), "SimToken(..)");
        assert!(looks_like_token(
            SimToken::derive_legacy(&k, ICCID, 0).as_str()
        ));
    }

    /// The same ICCID recorded again for another invoice (a profile given back to the pool and handed out
    /// again) has tokens of its own at every generation: none of the first record's opens it. Before, tokens
    /// were derived from the ICCID alone, so the first payer's generation-k token was the next payer's.
    #[test]
    fn a_record_of_the_same_iccid_for_another_invoice_shares_no_token() {
        let k = [1u8; 32];
        let first: Vec<SimToken> = (0..8)
            .map(|g| SimToken::derive(&k, ICCID, "inv-a", g))
            .collect();
        for g in 0..8 {
            let next = SimToken::derive(&k, ICCID, "inv-b", g);
            assert!(!first.contains(&next), "generation {g}");
            assert!(first.iter().all(|t| !matches(&next.hash(), t.as_str())));
        }
        // Length-prefixed parts: moving characters between the ICCID and the invoice changes the token.
        assert_ne!(
            SimToken::derive(&k, "89012600000000000191", "2", 0),
            SimToken::derive(&k, "8901260000000000019", "12", 0)
        );
        // Not the legacy derivation either.
        assert_ne!(
            SimToken::derive(&k, ICCID, "inv-a", 0),
            SimToken::derive_legacy(&k, ICCID, 0)
        );
    }

    #[test]
    fn the_first_token_is_handed_out_only_to_its_own_record_until_rotated() {
        let k = [3u8; 32];
        let state = initial_state(&k, ICCID, "inv-a");
        let token = initial_token(&k, ICCID, "inv-a", Some(&state)).unwrap();
        assert_eq!(token, SimToken::derive(&k, ICCID, "inv-a", 0));
        assert!(matches(&state.hash, token.as_str()));
        // Another invoice's record of the ICCID, a revoked token, a rotated one: nothing.
        assert_eq!(initial_token(&k, ICCID, "inv-b", Some(&state)), None);
        assert_eq!(initial_token(&k, ICCID, "inv-a", None), None);
        let (next, rotated_state) = rotated(&k, ICCID, "inv-a", Some(&state));
        assert_eq!(rotated_state.generation, 1);
        assert!(matches(&rotated_state.hash, next.as_str()));
        assert!(!matches(&rotated_state.hash, token.as_str()));
        assert_eq!(
            initial_token(&k, ICCID, "inv-a", Some(&rotated_state)),
            None
        );
        // Rotation without a token (revoked before tokens were kept) starts at generation 1.
        assert_eq!(rotated(&k, ICCID, "inv-a", None).1.generation, 1);
    }

    /// A record stored before tokens were bound (its hash of the legacy derivation, no flag) still hands out
    /// its first token, and its first rotation moves it to the bound derivation.
    #[test]
    fn a_legacy_record_keeps_its_first_token_and_rotates_to_a_bound_one() {
        let k = [4u8; 32];
        let legacy = SimToken::derive_legacy(&k, ICCID, 0);
        let state = TokenState {
            generation: 0,
            hash: legacy.hash(),
        };
        assert_eq!(
            initial_token(&k, ICCID, "inv-a", Some(&state)),
            Some(legacy.clone())
        );
        let (next, after) = rotated(&k, ICCID, "inv-a", Some(&state));
        assert_eq!(next, SimToken::derive(&k, ICCID, "inv-a", 1));
        assert_ne!(next, SimToken::derive_legacy(&k, ICCID, 1));
        assert!(!matches(&after.hash, legacy.as_str()));
        // A legacy state at a later generation is never handed out.
        let later = TokenState {
            generation: 2,
            hash: SimToken::derive_legacy(&k, ICCID, 2).hash(),
        };
        assert_eq!(initial_token(&k, ICCID, "inv-a", Some(&later)), None);
    }

    #[test]
    fn only_live_sims_rotate() {
        for s in [SimState::Active, SimState::Suspended] {
            assert_eq!(rotation_refused(s), None, "{s:?}");
        }
        for s in [SimState::Pending, SimState::Failed, SimState::Terminated] {
            assert!(rotation_refused(s).is_some(), "{s:?}");
        }
    }

    #[test]
    fn the_stored_key_is_for_development_only() {
        assert_eq!(key_source(None, true), Ok(KeySource::Stored));
        let missing = key_source(None, false).unwrap_err();
        assert_eq!(missing, KeyError::Missing);
        assert!(missing.to_string().contains(SECRET_VAR), "{missing}");
        let short = "fifteen-chars!!";
        for development in [true, false] {
            let e = key_source(Some(short), development).unwrap_err();
            assert_eq!(e, KeyError::TooShort);
            assert!(e.to_string().contains(SECRET_VAR) && !e.to_string().contains(short));
        }
        let secret = "a deployment secret, 16+";
        let Ok(KeySource::Secret(a)) = key_source(Some(secret), false) else {
            panic!("a secret is a key outside development");
        };
        assert_eq!(key_source(Some(secret), true), Ok(KeySource::Secret(a)));
        assert_ne!(
            key_source(Some("another secret, 16+"), false),
            Ok(KeySource::Secret(a))
        );
        assert_eq!(format!("{:?}", KeySource::Secret(a)), "Secret(..)");
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
