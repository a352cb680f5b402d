//! Who may manage a SIM, and with what. The owner of a SIM is the wallet that paid for its activation; a request
//! proves it is the owner with one of two credentials:
//!
//! - a **wallet signature** ([`siwx`]): an x402 `sign-in-with-x` proof (CAIP-122 / EIP-4361 message signed
//!   with EIP-191 by the payer's key) in the `SIGN-IN-WITH-X` header; short-lived, its nonce single-use;
//! - a **per-SIM access token** ([`token`]): `Authorization: Bearer sim_…`, returned with the paid activation;
//!   only its hash is stored; rotated by the owner, revoked when the SIM is terminated.
//!
//! Carriers authenticate their ES2+ callbacks with their own credential ([`callback`]).
//!
//! The rule a reader must not break: a credential that is missing or not well-formed is **401**, whatever the
//! ICCID; a well-formed credential that does not open this SIM is answered exactly like a SIM that does not
//! exist (**404**), so ICCIDs (sequential in practice) cannot be probed. [`decide`] is that rule.

pub mod callback;
pub mod siwx;
pub mod token;

use alloy_primitives::{Address, B256};
use serde::{Deserialize, Serialize};

pub use token::SimToken;

/// Whether a `presented` credential is the `secret` (the admin token, a carrier's callback credential), in
/// time that tells nothing about the secret: the keccak-256 digests of both are compared in constant time, so
/// neither how many leading bytes matched nor the secret's length shows (a length check first would).
pub fn secret_eq(presented: &[u8], secret: &[u8]) -> bool {
    use subtle::ConstantTimeEq as _;
    let (a, b) = (
        alloy_primitives::keccak256(presented),
        alloy_primitives::keccak256(secret),
    );
    a.as_slice().ct_eq(b.as_slice()).into()
}

/// What a stored SIM says about who may manage it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SimAccess {
    /// The payer of its activation (`None` only for SIMs stored before ownership existed: nobody manages
    /// those but the operator).
    pub owner: Option<Address>,
    /// The current access token's hash and generation; `None` once revoked.
    pub token: Option<TokenState>,
}

/// The stored half of an access token.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenState {
    /// How many times it was rotated (0: the token returned with the activation).
    pub generation: u32,
    /// [`SimToken::hash`] of the current token.
    pub hash: B256,
}

/// A credential as presented, already checked for form (a SIWx proof is verified before it gets here).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Presented<'a> {
    /// A bearer token.
    Token(&'a str),
    /// A wallet whose signature was verified.
    Wallet(Address),
}

/// Why a request may not manage a SIM.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// No credential at all.
    #[error(
        "this route needs the SIM owner's credential: `Authorization: Bearer <access token>` or a `SIGN-IN-WITH-X` wallet signature"
    )]
    Missing,
    /// A credential that is not well-formed, out of date or wrongly signed (what is wrong is named).
    #[error("{0}")]
    Invalid(String),
    /// A SIWx nonce seen before.
    #[error("the sign-in nonce was already used; sign a new message")]
    NonceReused,
    /// The credential is fine but does not open this SIM (answered as "no such SIM").
    #[error("no SIM {0}")]
    NotYours(String),
    /// Nothing can be checked now (what the service needs to check a credential could not be read): 503.
    #[error("{0}")]
    Unavailable(String),
}

impl AuthError {
    /// 401, or 404 for [`AuthError::NotYours`], 503 for [`AuthError::Unavailable`].
    pub fn status(&self) -> u16 {
        match self {
            Self::NotYours(_) => 404,
            Self::Unavailable(_) => 503,
            _ => 401,
        }
    }
}

/// Whether `presented` opens the SIM `iccid` described by `access`.
pub fn decide(iccid: &str, access: &SimAccess, presented: &Presented<'_>) -> Result<(), AuthError> {
    let opens = match presented {
        Presented::Token(t) => access.token.is_some_and(|s| token::matches(&s.hash, t)),
        Presented::Wallet(a) => access.owner == Some(*a),
    };
    if opens {
        Ok(())
    } else {
        Err(AuthError::NotYours(iccid.to_owned()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_secret_matches_itself_only() {
        assert!(secret_eq(b"s3cret-token-0123", b"s3cret-token-0123"));
        assert!(!secret_eq(b"s3cret-token-0124", b"s3cret-token-0123"));
        assert!(!secret_eq(b"s3cret-token-012", b"s3cret-token-0123"));
        assert!(!secret_eq(b"", b"s3cret-token-0123"));
        assert!(!secret_eq(b"s3cret-token-0123\0", b"s3cret-token-0123"));
    }

    fn access(owner: Address, token: &SimToken) -> SimAccess {
        SimAccess {
            owner: Some(owner),
            token: Some(TokenState {
                generation: 0,
                hash: token.hash(),
            }),
        }
    }

    #[test]
    fn the_owner_and_the_current_token_open_the_sim_nothing_else_does() {
        let key = [7u8; 32];
        let owner = Address::repeat_byte(1);
        let t = SimToken::derive(&key, "8901260000000000019", "inv", 0);
        let a = access(owner, &t);
        assert_eq!(decide("x", &a, &Presented::Wallet(owner)), Ok(()));
        assert_eq!(decide("x", &a, &Presented::Token(t.as_str())), Ok(()));
        let other = Address::repeat_byte(2);
        assert_eq!(
            decide("x", &a, &Presented::Wallet(other)),
            Err(AuthError::NotYours("x".into()))
        );
        let other_sim = SimToken::derive(&key, "8901260000000000027", "inv", 0);
        assert!(decide("x", &a, &Presented::Token(other_sim.as_str())).is_err());
        let rotated = SimToken::derive(&key, "8901260000000000019", "inv", 1);
        assert!(decide("x", &a, &Presented::Token(rotated.as_str())).is_err());
        assert!(decide("x", &a, &Presented::Token("")).is_err());
    }

    #[test]
    fn a_revoked_token_and_an_ownerless_sim_open_nothing() {
        let key = [7u8; 32];
        let t = SimToken::derive(&key, "8901260000000000019", "inv", 0);
        let revoked = SimAccess {
            owner: None,
            token: None,
        };
        assert!(decide("x", &revoked, &Presented::Token(t.as_str())).is_err());
        assert!(decide("x", &revoked, &Presented::Wallet(Address::ZERO)).is_err());
    }

    #[test]
    fn statuses_hide_whether_a_sim_exists() {
        assert_eq!(AuthError::Missing.status(), 401);
        assert_eq!(AuthError::Invalid("x".into()).status(), 401);
        assert_eq!(AuthError::NonceReused.status(), 401);
        assert_eq!(AuthError::NotYours("x".into()).status(), 404);
    }
}
