//! An x402 v2 `exact` payment, signed by the wallet: an EIP-3009 `transferWithAuthorization` for exactly the
//! offer's amount to its `payTo`, under the token's EIP-712 domain, carrying a `payment-identifier`.
//!
//! Pure: the caller passes `now`, the random nonce and the identifier, so a payment is reproducible in tests.
//! The kernel does the hashing, signing and header encoding (`esim402_core::x402`).

use alloy_primitives::{Address, B256, U256};
use esim402_core::Network;
use esim402_core::x402::exact::{TokenDomain, TransferAuthorization, sign_authorization};
use esim402_core::x402::header::encode_payment_payload_header;
use esim402_core::x402::payment_id::{self, PaymentId};
use esim402_core::x402::wire::{
    ExactEvmPayload, PaymentPayload, PaymentPayloadV2, PaymentRequirements, Resource,
};
use serde_json::{Map, json};

use crate::config::WalletKey;

/// A signed payment, ready to send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignedPayment {
    /// The `PAYMENT-SIGNATURE` header value.
    pub header: String,
    /// Unix seconds the authorization stays valid until.
    pub valid_before: u64,
}

/// Why an offer could not be signed (the policy check normally refuses these first).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("cannot sign this offer: {0}")]
pub struct SignError(pub String);

/// A fresh payment identifier from 16 random bytes: `pay_` + 32 hex digits.
pub fn new_payment_id(random: [u8; 16]) -> PaymentId {
    #[allow(
        clippy::expect_used,
        reason = "pay_ + 32 hex digits is always a valid id"
    )]
    PaymentId::parse(&format!("pay_{}", hex::encode(random))).expect("valid payment id")
}

/// Sign `req` (one entry of a 402's `accepts`) for `resource`, under `domain`: the one the spend policy approved
/// ([`crate::policy::Approval`]), never the offer's `extra` as such, which a facilitator chooses. It must name
/// the offer's token and chain.
pub fn sign_exact(
    key: &WalletKey,
    req: &PaymentRequirements,
    domain: &TokenDomain,
    resource: Option<&Resource>,
    now: u64,
    nonce: [u8; 32],
    id: &PaymentId,
) -> Result<SignedPayment, SignError> {
    let bad = |what: &str| SignError(what.to_owned());
    let network = Network::parse(&req.network).map_err(|e| SignError(e.0))?;
    let to: Address = req
        .pay_to
        .parse()
        .map_err(|_| bad("payTo is not an address"))?;
    let asset: Address = req
        .asset
        .parse()
        .map_err(|_| bad("asset is not an address"))?;
    if domain.verifying_contract != asset || domain.chain_id != network.chain_id().0 {
        return Err(bad(
            "the approved EIP-712 domain is not the offer's token and chain",
        ));
    }
    let value = esim402_core::x402::exact::parse_decimal_u256(&req.amount)
        .ok_or_else(|| bad("amount is not a decimal integer"))?;
    let timeout = req
        .max_timeout_seconds
        .min(esim402_core::x402::MAX_TIMEOUT_SECONDS);
    let valid_before = now.saturating_add(timeout);
    let auth = TransferAuthorization {
        from: key.address(),
        to,
        value,
        valid_after: U256::ZERO,
        valid_before: U256::from(valid_before),
        nonce: B256::from(nonce),
    };
    let signature = sign_authorization(key.signing_key(), &auth, domain)
        .map_err(|e| SignError(e.to_string()))?;
    let mut extensions = Map::new();
    extensions.insert(
        payment_id::KEY.to_owned(),
        json!({"info": {"required": false, "id": id.as_str()}}),
    );
    let payload = PaymentPayload::V2(PaymentPayloadV2 {
        resource: resource.cloned(),
        accepted: req.clone(),
        payload: ExactEvmPayload {
            signature: format!("0x{}", hex::encode(signature)),
            authorization: auth.to_wire(),
        },
        extensions: Some(extensions),
    });
    Ok(SignedPayment {
        header: encode_payment_payload_header(&payload),
        valid_before,
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "tests")]
    use super::*;
    use esim402_core::x402::exact::{SignedAuthorization, recover_signer};
    use esim402_core::x402::header::decode_payment_signature_header;
    use esim402_core::x402::payment_id::payment_id_of;
    use esim402_core::x402::wire::Extra;

    #[test]
    fn a_signed_payment_recovers_to_the_wallet_and_carries_its_id() {
        let key = WalletKey::parse(
            "2a871d0798f97d79848a013d4936a73bf4cc922c825d33c1cf7073dff6d409c6",
            "test",
        )
        .unwrap();
        let req = PaymentRequirements {
            scheme: "exact".into(),
            network: "eip155:31337".into(),
            amount: "420000".into(),
            asset: "0x5FbDB2315678afecb367f032d93F642f64180aa3".into(),
            pay_to: "0x3C44CdDdB6a900fa2b585dd299e03d12FA4293BC".into(),
            max_timeout_seconds: 3_600,
            extra: Some(Extra::eip712("USD Coin", "2")),
        };
        let domain = TokenDomain {
            name: "USD Coin".into(),
            version: "2".into(),
            chain_id: 31337,
            verifying_contract: req.asset.parse().unwrap(),
        };
        let id = new_payment_id([7; 16]);
        assert_eq!(id.as_str(), format!("pay_{}", "07".repeat(16)));
        let signed = sign_exact(&key, &req, &domain, None, 1_000, [9; 32], &id).unwrap();
        assert_eq!(
            signed.valid_before, 1_300,
            "capped at the x402 maximum timeout"
        );
        let payload = decode_payment_signature_header(&signed.header).unwrap();
        assert_eq!(payment_id_of(&payload).unwrap(), Some(id.clone()));
        let PaymentPayload::V2(v2) = &payload else {
            panic!("v2")
        };
        assert_eq!(v2.accepted, req);
        let signed_auth = SignedAuthorization::parse(&v2.payload).unwrap();
        let hash = signed_auth.authorization.signing_hash(&domain);
        assert_eq!(
            recover_signer(hash, &signed_auth.signature).unwrap(),
            key.address()
        );
        assert_eq!(signed_auth.authorization.value, U256::from(420_000));
        // The same inputs sign the same payment (what a retry relies on is the stored header, but
        // determinism keeps tests honest).
        assert_eq!(
            sign_exact(&key, &req, &domain, None, 1_000, [9; 32], &id).unwrap(),
            signed
        );
    }

    /// The payment is signed under the domain the policy approved, whatever the offer's `extra` says; a domain
    /// of another token or chain is refused. Before, the domain's name and version were the offer's own.
    #[test]
    fn the_approved_domain_is_signed_under_not_the_offers() {
        let key = WalletKey::parse(&"11".repeat(32), "test").unwrap();
        let usdc = esim402_core::x402::networks::Networks::builtin()
            .lookup("base")
            .unwrap();
        let req = PaymentRequirements {
            scheme: "exact".into(),
            network: "eip155:8453".into(),
            amount: "1".into(),
            asset: usdc.usdc.to_string(),
            pay_to: "0x3C44CdDdB6a900fa2b585dd299e03d12FA4293BC".into(),
            max_timeout_seconds: 60,
            extra: Some(Extra::eip712("Not USD Coin", "9")),
        };
        let id = new_payment_id([1; 16]);
        let domain = usdc.token_domain();
        let signed = sign_exact(&key, &req, &domain, None, 0, [2; 32], &id).unwrap();
        let PaymentPayload::V2(v2) = decode_payment_signature_header(&signed.header).unwrap()
        else {
            panic!("v2")
        };
        let auth = SignedAuthorization::parse(&v2.payload).unwrap();
        assert_eq!(
            recover_signer(auth.authorization.signing_hash(&domain), &auth.signature).unwrap(),
            key.address(),
            "signed under the registry's domain"
        );
        for other in [
            TokenDomain {
                verifying_contract: "0x5FbDB2315678afecb367f032d93F642f64180aa3"
                    .parse()
                    .unwrap(),
                ..domain.clone()
            },
            TokenDomain {
                chain_id: 1,
                ..domain.clone()
            },
        ] {
            assert!(sign_exact(&key, &req, &other, None, 0, [2; 32], &id).is_err());
        }
    }
}
