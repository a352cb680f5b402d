//! The one x402 reason enum: every `invalidReason` (verify) and `errorReason` (settle) we emit, serialised to
//! the exact wire strings of `reference/x402.md` §4, §5 and §9 (the v2 TS/Go set).
//!
//! Rejections are data, not faults: [`crate::x402::exact::verify_exact`] returns one as its `Err`, and
//! [`crate::x402::wire::VerifyResponse::invalid`] / [`crate::x402::wire::SettleResponse::failure`] carry it.
//! Reasons received from peers stay opaque strings on the wire types; [`InvalidReason::from_str`] recognises ours.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

macro_rules! reasons {
    ($( $(#[$doc:meta])* $variant:ident => $wire:literal, )*) => {
        /// Why a payment was refused (or, for settlement, did not complete). See the module docs.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub enum InvalidReason {
            $( $(#[$doc])* $variant, )*
        }

        impl InvalidReason {
            /// Every reason, in declaration order.
            pub const ALL: &'static [InvalidReason] = &[ $( InvalidReason::$variant, )* ];

            /// The wire string.
            pub const fn as_str(self) -> &'static str {
                match self {
                    $( InvalidReason::$variant => $wire, )*
                }
            }
        }

        impl FromStr for InvalidReason {
            type Err = UnknownReason;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                match s {
                    $( $wire => Ok(InvalidReason::$variant), )*
                    _ => Err(UnknownReason(s.to_owned())),
                }
            }
        }
    };
}

reasons! {
    /// Check 1/7: the body or payload does not parse, or an authorization field is malformed.
    InvalidPayload => "invalid_payload",
    /// Check 1: `x402Version` is not 1 or 2, or the request's and the payload's differ.
    InvalidX402Version => "invalid_x402_version",
    /// Check 2: the requirements name a scheme we do not run.
    UnsupportedScheme => "unsupported_scheme",
    /// Check 2: the requirements name a network we do not serve.
    InvalidNetwork => "invalid_network",
    /// Check 3: the payload's scheme is not `exact`.
    ExactEvmScheme => "invalid_exact_evm_scheme",
    /// Check 4: the payload's network differs from the requirements'.
    NetworkMismatch => "invalid_exact_evm_network_mismatch",
    /// Check 5: v2 `accepted` is not the requirements, or the requirements are not ours (asset, amount, payTo).
    InvalidPaymentRequirements => "invalid_payment_requirements",
    /// Check 6: `extra.name` or `extra.version` is missing.
    MissingEip712Domain => "invalid_exact_evm_missing_eip712_domain",
    /// Check 8: `authorization.to` is not `payTo`.
    RecipientMismatch => "invalid_exact_evm_recipient_mismatch",
    /// Check 9: `validBefore` is earlier than now + 6 s.
    ValidBefore => "invalid_exact_evm_payload_authorization_valid_before",
    /// Check 10: `validAfter` is in the future.
    ValidAfter => "invalid_exact_evm_payload_authorization_valid_after",
    /// Check 11: `value` is not exactly `amount` (the TS and Python references' string; the v2 spec table's
    /// older `invalid_exact_evm_authorization_value` is no longer emitted by either).
    AuthorizationValueMismatch => "invalid_exact_evm_payload_authorization_value_mismatch",
    /// Check 12: the signature does not recover to `from` (or is malformed, high-s, or has a bad `v`).
    Signature => "invalid_exact_evm_signature",
    /// Check 12: a smart-wallet signature for an account without code and without an ERC-6492 wrapper.
    UndeployedSmartWallet => "invalid_exact_evm_payload_undeployed_smart_wallet",
    /// Check 13, first: `eth_getCode(asset)` is empty (the TS and Python references check it before any other
    /// chain read).
    AssetNotDeployedContract => "asset_not_deployed_contract",
    /// Check 13: the asset does not answer `authorizationState`.
    Eip3009NotSupported => "invalid_exact_evm_eip3009_not_supported",
    /// Check 14 (and duplicate settlement): the authorization nonce is already used.
    NonceAlreadyUsed => "invalid_exact_evm_nonce_already_used",
    /// Check 15: `balanceOf(from)` is below `value`.
    InsufficientBalance => "invalid_exact_evm_insufficient_balance",
    /// Check 16: `extra.name` differs from the token's (configured or on-chain) EIP-712 name.
    TokenNameMismatch => "invalid_exact_evm_token_name_mismatch",
    /// Check 16: `extra.version` differs from the token's (configured or on-chain) EIP-712 version.
    TokenVersionMismatch => "invalid_exact_evm_token_version_mismatch",
    /// Check 16: the `eth_call` simulation of `transferWithAuthorization` reverted.
    SimulationFailed => "invalid_exact_evm_transaction_simulation_failed",
    /// Settlement: the transaction was mined with status 0.
    TransactionFailed => "invalid_exact_evm_transaction_failed",
    /// Settlement: mined with status 1, but the receipt has no `Transfer(from, to, value)` log of the asset.
    TransferEventMismatch => "invalid_exact_evm_transfer_event_mismatch",
    /// Settlement: broadcast, receipt not yet seen. Non-terminal: retry `/settle` once; never re-broadcast.
    /// Only ever sent with the broadcast hash (the reference resource servers retry it only with one).
    SettlementPending => "settlement_pending",
    /// Settlement: another settlement of the same authorization holds its claim and has sent nothing yet (the
    /// reference facilitators' reason for a settle that duplicates one in flight; also legacy v1, spec §9).
    DuplicateSettlement => "duplicate_settlement",
    /// Spec §9 generic: insufficient funds.
    InsufficientFunds => "insufficient_funds",
    /// Spec §9 generic: invalid scheme.
    InvalidScheme => "invalid_scheme",
    /// Spec §9 generic: invalid transaction state.
    InvalidTransactionState => "invalid_transaction_state",
    /// Spec §9: an internal fault while verifying.
    UnexpectedVerifyError => "unexpected_verify_error",
    /// Spec §9: an internal fault while settling.
    UnexpectedSettleError => "unexpected_settle_error",
}

impl InvalidReason {
    /// What this refusal of a tx-hash proof (a transfer presented as an invoice's payment) means, in words, for
    /// the reasons that scheme gives; `None` for the others. Before, a proof's refusal named only the code.
    pub const fn tx_hash_cause(self) -> Option<&'static str> {
        Some(match self {
            Self::InvalidTransactionState => {
                "the transfer was mined before the invoice was issued (it pays something else), or is not from the \
                 invoice's payer"
            }
            Self::InsufficientFunds => "the transfer moved less than the invoice's amount",
            Self::RecipientMismatch => "the transfer's recipient is not the invoice's payTo",
            Self::InvalidPayload => {
                "the transaction moves none of the invoice's token to its payTo"
            }
            Self::TransactionFailed => "the transaction reverted",
            Self::Signature => "the proof signature is not the invoice payer's",
            Self::InvalidNetwork => "none of the invoice's networks is enabled here",
            Self::InvalidPaymentRequirements => {
                "the invoice's terms no longer match this deployment's token: request a new invoice"
            }
            _ => return None,
        })
    }

    /// What this refusal of an x402 (`exact`) payment means, in words, for the reasons a client can act on;
    /// `None` for the others. Before, the 402 named only the code (a fresh-user trial, thirty-first session: an
    /// amount or recipient changed in the payment read "invalid_payment_requirements" and nothing else).
    pub const fn exact_cause(self) -> Option<&'static str> {
        Some(match self {
            Self::InvalidPaymentRequirements => {
                "the payment's accepted requirements (scheme, network, asset, amount, payTo, timeout or extra) \
                 are not this invoice's: sign the requirements of its 402 unchanged"
            }
            Self::AuthorizationValueMismatch => {
                "the authorization's value is not exactly the invoice's amount"
            }
            Self::RecipientMismatch => "the authorization's `to` is not the invoice's payTo",
            Self::NetworkMismatch => "the payload's network is not the requirements'",
            Self::InvalidNetwork => "the payment's network is not one this invoice offers",
            Self::Signature => "the authorization's signature does not recover to its `from`",
            Self::ValidBefore => "the authorization expires too soon (validBefore): sign a new one",
            Self::ValidAfter => "the authorization is not valid yet (validAfter is in the future)",
            Self::NonceAlreadyUsed => "this authorization was already used on chain",
            Self::InsufficientBalance => "the payer's token balance is below the amount",
            Self::TokenNameMismatch | Self::TokenVersionMismatch | Self::MissingEip712Domain => {
                "the EIP-712 domain (extra.name / extra.version) is not the token's"
            }
            _ => return None,
        })
    }

    /// Whether a settlement with this reason may still complete (only [`InvalidReason::SettlementPending`]).
    pub const fn is_pending(self) -> bool {
        matches!(self, Self::SettlementPending)
    }
}

/// A reason string that is not one of ours (peers' reasons are opaque: keep the string).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown x402 reason {0:?}")]
pub struct UnknownReason(pub String);

impl fmt::Display for InvalidReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::error::Error for InvalidReason {}

impl Serialize for InvalidReason {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for InvalidReason {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A tx-hash proof's refusals read in words; the `exact` scheme's keep their codes alone.
    #[test]
    fn tx_hash_refusals_say_why() {
        for r in [
            InvalidReason::InvalidTransactionState,
            InvalidReason::InsufficientFunds,
            InvalidReason::RecipientMismatch,
            InvalidReason::Signature,
        ] {
            assert!(r.tx_hash_cause().is_some_and(|c| c.len() > 10), "{r}");
        }
        assert_eq!(InvalidReason::NonceAlreadyUsed.tx_hash_cause(), None);
    }

    #[test]
    fn wire_strings_round_trip_and_are_unique() {
        let mut seen = std::collections::BTreeSet::new();
        for &r in InvalidReason::ALL {
            assert!(seen.insert(r.as_str()), "duplicate {r}");
            assert_eq!(r.as_str().parse::<InvalidReason>(), Ok(r));
            let json = serde_json::to_string(&r).unwrap();
            assert_eq!(json, format!("\"{}\"", r.as_str()));
            assert_eq!(serde_json::from_str::<InvalidReason>(&json).unwrap(), r);
        }
        assert_eq!(seen.len(), 30);
    }

    #[test]
    fn reference_strings_are_exact() {
        assert_eq!(
            InvalidReason::RecipientMismatch.as_str(),
            "invalid_exact_evm_recipient_mismatch"
        );
        assert_eq!(
            InvalidReason::ValidBefore.to_string(),
            "invalid_exact_evm_payload_authorization_valid_before"
        );
        assert_eq!(
            InvalidReason::SimulationFailed.as_str(),
            "invalid_exact_evm_transaction_simulation_failed"
        );
        // Where the TS (2.27) and Python (2.25) facilitators agree (tests/all/conformance.rs checks them live).
        assert_eq!(
            InvalidReason::AuthorizationValueMismatch.as_str(),
            "invalid_exact_evm_payload_authorization_value_mismatch"
        );
        assert_eq!(
            InvalidReason::AssetNotDeployedContract.as_str(),
            "asset_not_deployed_contract"
        );
        assert_eq!(
            InvalidReason::TransferEventMismatch.as_str(),
            "invalid_exact_evm_transfer_event_mismatch"
        );
        assert!(
            "invalid_exact_evm_authorization_value"
                .parse::<InvalidReason>()
                .is_err(),
            "the old value string is gone"
        );
        // The SVM and TVM reference facilitators' reason for a settle of a payment already being settled.
        assert_eq!(
            InvalidReason::DuplicateSettlement.as_str(),
            "duplicate_settlement"
        );
        assert!(!InvalidReason::DuplicateSettlement.is_pending());
        assert!(InvalidReason::SettlementPending.is_pending());
        assert!(!InvalidReason::TransactionFailed.is_pending());
    }

    #[test]
    fn foreign_reasons_are_unknown() {
        // Python's older names are not ours; they stay opaque strings on the wire types.
        assert_eq!(
            "invalid_exact_evm_payload_signature".parse::<InvalidReason>(),
            Err(UnknownReason("invalid_exact_evm_payload_signature".into()))
        );
        assert!(serde_json::from_str::<InvalidReason>("\"nope\"").is_err());
    }
}
