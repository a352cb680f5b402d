//! Tests of `exact.rs`: EIP-712 known answers, signature recovery and every verification reason in order.

use alloy_primitives::{address, b256};
use k256::ecdsa::SigningKey;
use proptest::prelude::*;

use super::*;
use crate::x402::networks::Networks;
use crate::x402::wire::{
    AnyPaymentRequirements, Extra, PaymentPayloadV1, PaymentPayloadV2, PaymentRequirementsV1,
    Resource,
};

const NOW: u64 = 1_740_000_000;
const PAY_TO: Address = address!("0x209693Bc6afc0C5328bA36FaF03C514EF312287C");
const OTHER: Address = address!("0x3C44CdDdB6a900fa2b585dd299e03d12FA4293BC");

fn base_sepolia() -> &'static NetworkConfig {
    Networks::builtin().lookup("base-sepolia").unwrap()
}

fn key() -> SigningKey {
    SigningKey::from_slice(&[0x42; 32]).unwrap()
}

fn payer() -> Address {
    address_of(key().verifying_key())
}

fn requirements() -> PaymentRequirements {
    let n = base_sepolia();
    PaymentRequirements {
        scheme: "exact".into(),
        network: n.caip2(),
        amount: "10000".into(),
        asset: n.usdc.to_checksum(None),
        pay_to: PAY_TO.to_checksum(None),
        max_timeout_seconds: 60,
        extra: Some(Extra::eip712("USDC", "2")),
    }
}

fn authorization() -> TransferAuthorization {
    TransferAuthorization {
        from: payer(),
        to: PAY_TO,
        value: U256::from(10_000),
        valid_after: U256::ZERO,
        valid_before: U256::from(NOW + 60),
        nonce: B256::repeat_byte(0x5a),
    }
}

fn hex0x(bytes: &[u8]) -> String {
    format!("0x{}", hex::encode(bytes))
}

fn signed(auth: &TransferAuthorization, domain: &TokenDomain) -> ExactEvmPayload {
    ExactEvmPayload {
        signature: hex0x(&sign_authorization(&key(), auth, domain).unwrap()),
        authorization: auth.to_wire(),
    }
}

fn v2(payload: ExactEvmPayload) -> PaymentPayload {
    PaymentPayload::V2(PaymentPayloadV2 {
        resource: None,
        accepted: requirements(),
        payload,
        extensions: None,
    })
}

fn good() -> PaymentPayload {
    v2(signed(&authorization(), &base_sepolia().token_domain()))
}

fn facts() -> ChainFacts {
    ChainFacts::new(false, U256::from(10_000), true)
}

fn verify(p: &PaymentPayload, r: &PaymentRequirements) -> Result<Address, InvalidReason> {
    verify_exact(p, r, base_sepolia(), NOW, None)
}

/// Apply `f` to the payload's authorization (wire form), keeping the old signature.
fn with_auth(f: impl FnOnce(&mut Authorization)) -> PaymentPayload {
    let mut p = good();
    let PaymentPayload::V2(v) = &mut p else {
        unreachable!()
    };
    f(&mut v.payload.authorization);
    p
}

fn with_signature(sig: &[u8]) -> PaymentPayload {
    let mut p = good();
    let PaymentPayload::V2(v) = &mut p else {
        unreachable!()
    };
    v.payload.signature = hex0x(sig);
    p
}

fn good_signature() -> [u8; 65] {
    sign_authorization(&key(), &authorization(), &base_sepolia().token_domain()).unwrap()
}

/// Change the requirements and `accepted` alike (what a consistent client and server would send).
fn both(f: impl Fn(&mut PaymentRequirements)) -> (PaymentPayload, PaymentRequirements) {
    let mut r = requirements();
    f(&mut r);
    let mut p = good();
    let PaymentPayload::V2(v) = &mut p else {
        unreachable!()
    };
    v.accepted = r.clone();
    (p, r)
}

fn word(a: Address) -> [u8; 32] {
    let mut w = [0u8; 32];
    w[12..].copy_from_slice(a.as_slice());
    w
}

#[test]
fn type_hashes_equal_the_reference_constants() {
    assert_eq!(
        keccak256(
            "EIP712Domain(string name,string version,uint256 chainId,address verifyingContract)"
        ),
        b256!("0x8b73c3c69bb8fe3d512ecc4cf759cc79239f7b179b0ffacaa9a75d522b39400f")
    );
    let type_hash = b256!("0x7c7c6cdb67a18743f49ec6fa9b35f50d52ed05cbed4cc592e13b44501c1a2267");
    assert_eq!(
        keccak256(
            "TransferWithAuthorization(address from,address to,uint256 value,uint256 validAfter,uint256 validBefore,bytes32 nonce)"
        ),
        type_hash
    );
    assert_eq!(authorization().sol().eip712_type_hash(), type_hash);
}

#[test]
fn mainnet_usdc_domain_separator_is_the_on_chain_one() {
    // `DOMAIN_SEPARATOR()` of Ethereum mainnet USDC (FiatToken v2, "USD Coin" / "2", chain 1).
    let n = Networks::builtin().lookup("ethereum").unwrap();
    assert_eq!(
        n.token_domain().separator(),
        b256!("0x06c37168a7db5138defc7866392bb87a741f9b3d104deb5094588ce041cae335")
    );
}

#[test]
fn signing_hash_matches_a_hand_built_eip712_encoding() {
    let auth = authorization();
    let d = base_sepolia().token_domain();
    // Independent encoding: keccak256 over the ABI words, as EIP-712 spells it out.
    let mut domain = Vec::new();
    domain.extend(keccak256(
        "EIP712Domain(string name,string version,uint256 chainId,address verifyingContract)",
    ));
    domain.extend(keccak256("USDC"));
    domain.extend(keccak256("2"));
    domain.extend(U256::from(84532u64).to_be_bytes::<32>());
    domain.extend(word(address!("0x036CbD53842c5426634e7929541eC2318f3dCF7e")));
    let separator = keccak256(&domain);
    assert_eq!(d.separator(), separator);

    let mut st = Vec::new();
    st.extend(keccak256(
        "TransferWithAuthorization(address from,address to,uint256 value,uint256 validAfter,uint256 validBefore,bytes32 nonce)",
    ));
    st.extend(word(auth.from));
    st.extend(word(auth.to));
    st.extend(auth.value.to_be_bytes::<32>());
    st.extend(auth.valid_after.to_be_bytes::<32>());
    st.extend(auth.valid_before.to_be_bytes::<32>());
    st.extend(auth.nonce);
    let struct_hash = keccak256(&st);

    let mut digest = vec![0x19, 0x01];
    digest.extend(separator);
    digest.extend(struct_hash);
    assert_eq!(eip712_signing_hash(&auth, &d), keccak256(&digest));
}

#[test]
fn key_to_address_matches_anvil_account_zero() {
    let k = SigningKey::from_slice(
        &hex::decode("ac0974bec39a17e36ba4a6b4d238ff944bacb478cbed5efcae784d7bf4f2ff80").unwrap(),
    )
    .unwrap();
    assert_eq!(
        address_of(k.verifying_key()),
        address!("0xf39Fd6e51aad88F6F4ce6aB8827279cffFb92266")
    );
}

#[test]
fn a_signed_payload_verifies_with_and_without_chain_facts() {
    assert_eq!(verify(&good(), &requirements()), Ok(payer()));
    assert_eq!(
        verify_exact(
            &good(),
            &requirements(),
            base_sepolia(),
            NOW,
            Some(&facts())
        ),
        Ok(payer())
    );
    assert_eq!(claimed_payer(&good()), Some(payer()));
    // Addresses compare case-insensitively.
    let lower = with_auth(|a| {
        a.to = a.to.to_lowercase();
        a.from = a.from.to_lowercase();
    });
    assert_eq!(verify(&lower, &requirements()), Ok(payer()));
}

#[test]
fn v1_payloads_verify_against_v1_requirements() {
    let p = PaymentPayload::V1(PaymentPayloadV1 {
        scheme: "exact".into(),
        network: "base-sepolia".into(),
        payload: good().exact().clone(),
    });
    let resource = Resource {
        url: "https://x.example/a".into(),
        description: None,
        mime_type: None,
    };
    let r1 = PaymentRequirementsV1::from_v2(&requirements(), &resource);
    assert_eq!(r1.network, "base-sepolia");
    assert_eq!(verify(&p, &r1.to_v2()), Ok(payer()));
    let request = VerifyRequest {
        x402_version: 1,
        payment_payload: p.clone(),
        payment_requirements: AnyPaymentRequirements::V1(r1),
    };
    assert_eq!(
        verify_request(&request, Networks::builtin(), NOW, None),
        Ok(payer())
    );
    let PaymentPayload::V1(mut wrong) = p else {
        unreachable!()
    };
    wrong.network = "base".into();
    assert_eq!(
        verify(&PaymentPayload::V1(wrong), &requirements()),
        Err(InvalidReason::NetworkMismatch)
    );
}

/// A v1 facilitator request's payload names the requirements' network by their very string, as the
/// references require (`payload.network !== requirements.network` → `…_network_mismatch`): another name of
/// the same chain is a mismatch. Before, any name of the chain passed. An invoice's v1 payment, checked
/// against its CAIP-2 requirements, still verifies by any name.
#[test]
fn v1_requests_need_the_requirements_network_string() {
    let nets = Networks::builtin();
    let resource = Resource {
        url: "https://x.example/a".into(),
        description: None,
        mime_type: None,
    };
    let request = |scheme: &str, payload_network: &str, required_network: &str| {
        let mut r1 = PaymentRequirementsV1::from_v2(&requirements(), &resource);
        r1.network = required_network.into();
        VerifyRequest {
            x402_version: 1,
            payment_payload: PaymentPayload::V1(PaymentPayloadV1 {
                scheme: scheme.into(),
                network: payload_network.into(),
                payload: good().exact().clone(),
            }),
            payment_requirements: AnyPaymentRequirements::V1(r1),
        }
    };
    let cases = [
        ("exact", "base-sepolia", "base-sepolia", Ok(payer())),
        ("exact", "eip155:84532", "eip155:84532", Ok(payer())),
        (
            "exact",
            "eip155:84532",
            "base-sepolia",
            Err(InvalidReason::NetworkMismatch),
        ),
        (
            "exact",
            "base-sepolia",
            "eip155:84532",
            Err(InvalidReason::NetworkMismatch),
        ),
        (
            "exact",
            "Base-Sepolia",
            "base-sepolia",
            Err(InvalidReason::NetworkMismatch),
        ),
        (
            "exact",
            "base",
            "base-sepolia",
            Err(InvalidReason::NetworkMismatch),
        ),
        // The payload's scheme is checked first (check 3 before check 4).
        (
            "upto",
            "eip155:84532",
            "base-sepolia",
            Err(InvalidReason::ExactEvmScheme),
        ),
    ];
    for (scheme, sent, required, want) in cases {
        let r = request(scheme, sent, required);
        assert_eq!(
            verify_request(&r, nets, NOW, None),
            want,
            "{scheme} {sent} for {required}"
        );
        let resolved = resolve_network(&r, nets).map(|n| n.name.as_str());
        match want {
            Err(InvalidReason::NetworkMismatch) => {
                assert_eq!(resolved, Err(InvalidReason::NetworkMismatch))
            }
            _ => assert_eq!(
                resolved,
                Ok("base-sepolia"),
                "{scheme} {sent} for {required}"
            ),
        }
    }
    // The invoice path: a v1 payment by either name against the invoice's CAIP-2 requirements.
    for name in ["base-sepolia", "eip155:84532"] {
        let p = PaymentPayload::V1(PaymentPayloadV1 {
            scheme: "exact".into(),
            network: name.into(),
            payload: good().exact().clone(),
        });
        assert_eq!(verify(&p, &requirements()), Ok(payer()), "{name}");
    }
}

#[test]
fn requests_resolve_version_scheme_and_network_first() {
    let nets = Networks::builtin();
    let request = |version, f: &dyn Fn(&mut PaymentRequirements)| {
        let mut r = requirements();
        f(&mut r);
        VerifyRequest {
            x402_version: version,
            payment_payload: good(),
            payment_requirements: AnyPaymentRequirements::V2(r),
        }
    };
    assert_eq!(
        verify_request(&request(2, &|_| {}), nets, NOW, None),
        Ok(payer())
    );
    assert_eq!(
        resolve_network(&request(2, &|_| {}), nets).map(|n| n.name.as_str()),
        Ok("base-sepolia")
    );
    assert_eq!(
        verify_request(&request(1, &|_| {}), nets, NOW, None),
        Err(InvalidReason::InvalidX402Version)
    );
    assert_eq!(
        verify_request(&request(2, &|r| r.scheme = "upto".into()), nets, NOW, None),
        Err(InvalidReason::UnsupportedScheme)
    );
    assert_eq!(
        verify_request(
            &request(2, &|r| r.network = "eip155:999".into()),
            nets,
            NOW,
            None
        ),
        Err(InvalidReason::InvalidNetwork)
    );
    let only_anvil = nets.clone().retain(|n| n.name == "anvil");
    assert_eq!(
        verify_request(&request(2, &|_| {}), &only_anvil, NOW, None),
        Err(InvalidReason::InvalidNetwork)
    );
}

#[test]
fn structural_checks_give_their_reasons_in_order() {
    use InvalidReason as R;
    let cases: Vec<(&str, (PaymentPayload, PaymentRequirements), R)> = vec![
        (
            "scheme served",
            both(|r| r.scheme = "upto".into()),
            R::UnsupportedScheme,
        ),
        (
            "network served",
            both(|r| r.network = "eip155:8453".into()),
            R::InvalidNetwork,
        ),
        (
            "payload scheme",
            {
                let mut p = good();
                let PaymentPayload::V2(v) = &mut p else {
                    unreachable!()
                };
                v.accepted.scheme = "upto".into();
                (p, requirements())
            },
            R::ExactEvmScheme,
        ),
        (
            "payload network",
            {
                let mut p = good();
                let PaymentPayload::V2(v) = &mut p else {
                    unreachable!()
                };
                v.accepted.network = "eip155:8453".into();
                (p, requirements())
            },
            R::NetworkMismatch,
        ),
        (
            "accepted differs",
            {
                let mut p = good();
                let PaymentPayload::V2(v) = &mut p else {
                    unreachable!()
                };
                v.accepted.max_timeout_seconds = 61;
                (p, requirements())
            },
            R::InvalidPaymentRequirements,
        ),
        (
            "malformed asset",
            both(|r| r.asset = "0x1234".into()),
            R::InvalidPaymentRequirements,
        ),
        (
            "bad payTo",
            both(|r| r.pay_to = "0x1234".into()),
            R::InvalidPaymentRequirements,
        ),
        (
            "fractional amount",
            both(|r| r.amount = "0.01".into()),
            R::InvalidPaymentRequirements,
        ),
        ("no extra", both(|r| r.extra = None), R::MissingEip712Domain),
        (
            "no version",
            both(|r| r.extra.as_mut().unwrap().version = None),
            R::MissingEip712Domain,
        ),
    ];
    for (what, (p, r), reason) in cases {
        assert_eq!(verify(&p, &r), Err(reason), "{what}");
    }
    // The accepted copy is compared key-order-insensitively, unknown `extra` keys included.
    let (p, r) = both(|r| {
        r.extra
            .as_mut()
            .unwrap()
            .other
            .insert("assetTransferMethod".into(), "eip3009".into());
    });
    assert_eq!(verify(&p, &r), Ok(payer()));
}

/// A payload signed (consistently) for requirements changed by `f`, as a client that got them would send it.
fn signed_for(f: impl Fn(&mut PaymentRequirements)) -> (PaymentPayload, PaymentRequirements) {
    let (mut p, r) = both(f);
    let domain = TokenDomain {
        name: r.eip712_name().unwrap().into(),
        version: r.eip712_version().unwrap().into(),
        chain_id: base_sepolia().chain_id().0,
        verifying_contract: r.asset.parse().unwrap(),
    };
    let PaymentPayload::V2(v) = &mut p else {
        unreachable!()
    };
    v.payload = signed(&authorization(), &domain);
    (p, r)
}

#[test]
fn a_domain_other_than_our_tokens_is_named_after_the_signature() {
    use InvalidReason as R;
    let (p, r) = signed_for(|r| r.extra = Some(Extra::eip712("USD Coin", "2")));
    assert_eq!(verify(&p, &r), Err(R::TokenNameMismatch));
    let (p, r) = signed_for(|r| r.extra = Some(Extra::eip712("USDC", "1")));
    assert_eq!(verify(&p, &r), Err(R::TokenVersionMismatch));
    // Signed for our domain while `extra` names another: the signature fails first (as in the references).
    let (p, r) = both(|r| r.extra = Some(Extra::eip712("USD Coin", "2")));
    assert_eq!(verify(&p, &r), Err(R::Signature));
    // And a recipient mismatch is found before the domain (the references find the domain last).
    let (mut p, r) = signed_for(|r| r.extra = Some(Extra::eip712("USD Coin", "2")));
    let PaymentPayload::V2(v) = &mut p else {
        unreachable!()
    };
    v.payload.authorization.to = OTHER.to_checksum(None);
    assert_eq!(verify(&p, &r), Err(R::RecipientMismatch));
}

#[test]
fn another_asset_passes_the_chain_free_checks_and_is_refused_by_the_chain_stage() {
    use InvalidReason as R;
    let (p, r) = signed_for(|r| r.asset = OTHER.to_checksum(None));
    // Structure, window, value and signature hold (the references check the asset's code after them)…
    assert_eq!(verify(&p, &r), Ok(payer()));
    let with_chain = |facts: &ChainFacts| verify_exact(&p, &r, base_sepolia(), NOW, Some(facts));
    // … then: no code is the references' `asset_not_deployed_contract`; a contract that is not our USDC is
    // refused without simulating anything.
    assert_eq!(
        with_chain(&ChainFacts::foreign_asset(false)),
        Err(R::AssetNotDeployedContract)
    );
    assert_eq!(
        with_chain(&ChainFacts::foreign_asset(true)),
        Err(R::InvalidPaymentRequirements)
    );
    // Whatever else the facts claim.
    assert_eq!(with_chain(&facts()), Err(R::InvalidPaymentRequirements));
    // An earlier failure still wins: a bad signature over the foreign domain is a signature failure.
    let (mut bad, r) = signed_for(|r| r.asset = OTHER.to_checksum(None));
    let PaymentPayload::V2(v) = &mut bad else {
        unreachable!()
    };
    v.payload.signature = hex0x(&good_signature());
    assert_eq!(verify(&bad, &r), Err(R::Signature));
}

#[test]
fn malformed_authorization_fields_fail_the_check_that_reads_them() {
    use InvalidReason as R;
    type Mutation = fn(&mut Authorization);
    let cases: [(&str, Mutation, R); 13] = [
        ("malformed from", |a| a.from = "0x1234".into(), R::Signature),
        (
            "unprefixed to",
            |a| a.to = "209693Bc6afc0C5328bA36FaF03C514EF312287C".into(),
            R::RecipientMismatch,
        ),
        (
            "fractional value",
            |a| a.value = "0.016".into(),
            R::InvalidPayload,
        ),
        (
            "negative validAfter",
            |a| a.valid_after = "-1".into(),
            R::InvalidPayload,
        ),
        (
            "hex validBefore",
            |a| a.valid_before = "0x10".into(),
            R::InvalidPayload,
        ),
        (
            "huge value",
            |a| a.value = "1".repeat(79),
            R::InvalidPayload,
        ),
        ("short nonce", |a| a.nonce = "0xabcd".into(), R::Signature),
        (
            "unprefixed nonce",
            |a| a.nonce = "ab".repeat(32),
            R::Signature,
        ),
        (
            "non-hex nonce",
            |a| a.nonce = format!("0x{}", "zz".repeat(32)),
            R::Signature,
        ),
        // Missing fields read as "" (the wire type's default) and fail the same checks.
        ("no from", |a| a.from = String::new(), R::Signature),
        ("no to", |a| a.to = String::new(), R::RecipientMismatch),
        ("no value", |a| a.value = String::new(), R::InvalidPayload),
        ("no nonce", |a| a.nonce = String::new(), R::Signature),
    ];
    for (what, f, reason) in cases {
        assert_eq!(
            verify(&with_auth(f), &requirements()),
            Err(reason),
            "{what}"
        );
    }
    // A whole authorization missing fails the first check that reads it: the recipient.
    assert_eq!(
        verify(
            &with_auth(|a| *a = Authorization::default()),
            &requirements()
        ),
        Err(R::RecipientMismatch)
    );
    for sig in [
        "",
        "0x",
        "zz",
        "0xzz",
        "0x123",
        &hex::encode(good_signature()),
    ] {
        let mut p = good();
        let PaymentPayload::V2(v) = &mut p else {
            unreachable!()
        };
        v.payload.signature = sig.into();
        assert_eq!(verify(&p, &requirements()), Err(R::Signature), "{sig:?}");
    }
    // A malformed number is found at its own check: a recipient mismatch comes first.
    let p = with_auth(|a| {
        a.to = OTHER.to_checksum(None);
        a.value = "0.016".into();
    });
    assert_eq!(verify(&p, &requirements()), Err(R::RecipientMismatch));
}

#[test]
fn recipient_time_and_value_checks_come_before_the_signature() {
    use InvalidReason as R;
    let to_other = with_auth(|a| a.to = OTHER.to_checksum(None));
    assert_eq!(
        verify(&to_other, &requirements()),
        Err(R::RecipientMismatch)
    );
    // A recipient mismatch wins over an expired window (check 8 before 9).
    let both_bad = with_auth(|a| {
        a.to = OTHER.to_checksum(None);
        a.valid_before = NOW.to_string();
    });
    assert_eq!(
        verify(&both_bad, &requirements()),
        Err(R::RecipientMismatch)
    );
    let expiring = with_auth(|a| a.valid_before = (NOW + 5).to_string());
    assert_eq!(verify(&expiring, &requirements()), Err(R::ValidBefore));
    let future = with_auth(|a| a.valid_after = (NOW + 1).to_string());
    assert_eq!(verify(&future, &requirements()), Err(R::ValidAfter));
    // Check 9 before 10.
    let both_times = with_auth(|a| {
        a.valid_after = (NOW + 1).to_string();
        a.valid_before = NOW.to_string();
    });
    assert_eq!(verify(&both_times, &requirements()), Err(R::ValidBefore));
    for value in ["9999", "10001", "0"] {
        let p = with_auth(|a| a.value = value.into());
        assert_eq!(
            verify(&p, &requirements()),
            Err(R::AuthorizationValueMismatch),
            "{value}"
        );
    }
    // Changed but well-formed fields that pass checks 8–11 fail the signature.
    let p = with_auth(|a| a.nonce = format!("0x{}", "00".repeat(32)));
    assert_eq!(verify(&p, &requirements()), Err(R::Signature));
    let p = with_auth(|a| a.valid_before = (NOW + 61).to_string());
    assert_eq!(verify(&p, &requirements()), Err(R::Signature));
}

#[test]
fn window_boundaries_are_inclusive() {
    let d = base_sepolia().token_domain();
    let edge = TransferAuthorization {
        valid_after: U256::from(NOW),
        valid_before: U256::from(NOW + VALID_BEFORE_BUFFER_SECS),
        ..authorization()
    };
    assert_eq!(verify(&v2(signed(&edge, &d)), &requirements()), Ok(payer()));
    // The v1-era window (validAfter = now − 600) verifies too.
    let legacy = TransferAuthorization {
        valid_after: U256::from(NOW - 600),
        ..authorization()
    };
    assert_eq!(
        verify(&v2(signed(&legacy, &d)), &requirements()),
        Ok(payer())
    );
}

#[test]
fn signatures_must_recover_to_from_with_low_s_and_a_known_v() {
    use InvalidReason as R;
    let sig = good_signature();
    assert!(sig[64] == 27 || sig[64] == 28);
    // v as 0/1 is accepted.
    let mut v01 = sig;
    v01[64] -= 27;
    assert_eq!(verify(&with_signature(&v01), &requirements()), Ok(payer()));
    for v in [2u8, 26, 29, 35, 255] {
        let mut bad = sig;
        bad[64] = v;
        assert_eq!(
            verify(&with_signature(&bad), &requirements()),
            Err(R::Signature),
            "v={v}"
        );
    }
    // High-s twin (n − s, v flipped): valid for bare ecrecover, refused here as USDC refuses it.
    let n = U256::from_be_bytes(
        b256!("0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141").0,
    );
    let s = U256::from_be_slice(&sig[32..64]);
    let mut high = sig;
    high[32..64].copy_from_slice(&(n - s).to_be_bytes::<32>());
    high[64] = if sig[64] == 27 { 28 } else { 27 };
    let hash = eip712_signing_hash(&authorization(), &base_sepolia().token_domain());
    assert_eq!(recover_signer(hash, &high), Err(SignatureError::HighS));
    assert_eq!(
        verify(&with_signature(&high), &requirements()),
        Err(R::Signature)
    );
    // Wrong lengths (smart-wallet signatures are not accepted), zero r, flipped bits.
    assert_eq!(
        recover_signer(hash, &sig[..64]),
        Err(SignatureError::Length(64))
    );
    let mut long = sig.to_vec();
    long.push(0);
    assert_eq!(
        verify(&with_signature(&long), &requirements()),
        Err(R::Signature)
    );
    let mut zero_r = sig;
    zero_r[..32].fill(0);
    assert_eq!(
        recover_signer(hash, &zero_r),
        Err(SignatureError::Malformed)
    );
    let mut flipped = sig;
    flipped[5] ^= 1;
    assert_eq!(
        verify(&with_signature(&flipped), &requirements()),
        Err(R::Signature)
    );
}

#[test]
fn signatures_over_another_domain_or_by_another_key_are_mismatches() {
    let auth = authorization();
    let d = base_sepolia().token_domain();
    let wrong_domains = [
        TokenDomain {
            chain_id: 8453,
            ..d.clone()
        },
        TokenDomain {
            verifying_contract: OTHER,
            ..d.clone()
        },
        TokenDomain {
            name: "USD Coin".into(),
            ..d.clone()
        },
        TokenDomain {
            version: "1".into(),
            ..d.clone()
        },
    ];
    for wrong in wrong_domains {
        assert_eq!(
            verify(&v2(signed(&auth, &wrong)), &requirements()),
            Err(InvalidReason::Signature),
            "{wrong:?}"
        );
    }
    let other_key = SigningKey::from_slice(&[7; 32]).unwrap();
    let sig = sign_authorization(&other_key, &auth, &d).unwrap();
    assert_eq!(
        verify(&with_signature(&sig), &requirements()),
        Err(InvalidReason::Signature)
    );
}

#[test]
fn chain_facts_are_checked_in_order() {
    use InvalidReason as R;
    let check =
        |f: ChainFacts| verify_exact(&good(), &requirements(), base_sepolia(), NOW, Some(&f));
    // An asset without code comes first, whatever else the chain said.
    assert_eq!(
        check(ChainFacts {
            asset_deployed: false,
            nonce_used: Some(true),
            balance: U256::ZERO,
            ..facts()
        }),
        Err(R::AssetNotDeployedContract)
    );
    assert_eq!(
        check(ChainFacts {
            nonce_used: None,
            ..facts()
        }),
        Err(R::Eip3009NotSupported)
    );
    assert_eq!(
        check(ChainFacts {
            nonce_used: Some(true),
            balance: U256::ZERO,
            ..facts()
        }),
        Err(R::NonceAlreadyUsed)
    );
    assert_eq!(
        check(ChainFacts {
            balance: U256::from(9_999),
            simulation_ok: false,
            ..facts()
        }),
        Err(R::InsufficientBalance)
    );
    assert_eq!(
        check(ChainFacts {
            balance: U256::from(10_000),
            ..facts()
        }),
        Ok(payer())
    );
    assert_eq!(
        check(ChainFacts {
            simulation_ok: false,
            ..facts()
        }),
        Err(R::SimulationFailed)
    );
    let failed = ChainFacts {
        simulation_ok: false,
        token_name: Some("USDC".into()),
        token_version: Some("2".into()),
        ..facts()
    };
    assert_eq!(check(failed.clone()), Err(R::SimulationFailed));
    assert_eq!(
        check(ChainFacts {
            token_name: Some("USD Coin".into()),
            ..failed.clone()
        }),
        Err(R::TokenNameMismatch)
    );
    assert_eq!(
        check(ChainFacts {
            token_version: Some("1".into()),
            ..failed
        }),
        Err(R::TokenVersionMismatch)
    );
    // Structural failures win over chain facts.
    let expired = with_auth(|a| a.valid_before = NOW.to_string());
    assert_eq!(
        verify_exact(
            &expired,
            &requirements(),
            base_sepolia(),
            NOW,
            Some(&ChainFacts {
                nonce_used: Some(true),
                ..facts()
            })
        ),
        Err(R::ValidBefore)
    );
}

#[test]
fn a_failed_simulation_explains_the_chain_stage_verdicts_only() {
    use InvalidReason as R;
    let failed = ChainFacts {
        simulation_ok: false,
        revert: Some("execution reverted: invalid signature".into()),
        ..facts()
    };
    for r in [
        R::SimulationFailed,
        R::TokenNameMismatch,
        R::NonceAlreadyUsed,
        R::InsufficientBalance,
    ] {
        assert_eq!(
            failed.message_for(r),
            Some("execution reverted: invalid signature"),
            "{r}"
        );
    }
    assert_eq!(failed.message_for(R::Signature), None);
    assert_eq!(failed.message_for(R::AssetNotDeployedContract), None);
    let passed = ChainFacts {
        revert: Some("stale".into()),
        ..facts()
    };
    assert_eq!(passed.message_for(R::NonceAlreadyUsed), None);
    assert_eq!(facts().message_for(R::SimulationFailed), None);
}

#[test]
fn get_code_asks_for_the_asset_and_reads_empty_code_as_none() {
    let call = EthGetCode {
        address: OTHER,
        block: BlockTag::Latest,
    };
    assert_eq!(EthGetCode::NAME, "eth_getCode");
    assert_eq!(
        call.params(),
        serde_json::json!([format!("{OTHER:#x}"), "latest"])
    );
    assert_eq!(call.decode(serde_json::json!("0x")).unwrap().len(), 0);
    assert_eq!(
        call.decode(serde_json::json!("0x6080")).unwrap().as_ref(),
        &[0x60, 0x80]
    );
    assert!(call.decode(serde_json::json!("0xzz")).is_err());
    assert!(call.decode(serde_json::json!(null)).is_err());
}

#[test]
fn a_settlement_receipt_must_show_the_authorized_transfer_from_the_asset() {
    let auth = authorization();
    let asset = base_sepolia().usdc;
    let log = |token: Address, from: Address, to: Address, value: u64| {
        serde_json::json!({"address": token.to_string(),
            "topics": [crate::evm::receipt::TRANSFER_TOPIC.to_string(), from.into_word().to_string(),
                       to.into_word().to_string()],
            "data": B256::from(U256::from(value)).to_string(), "removed": false})
    };
    let receipt = |logs: Vec<Value>| {
        TransactionReceipt::from_json(serde_json::json!({"status": "0x1", "blockNumber": "0x10",
            "transactionHash": B256::repeat_byte(1).to_string(), "from": OTHER.to_string(),
            "to": asset.to_string(), "logs": logs}))
        .unwrap()
    };
    let right = log(asset, auth.from, auth.to, 10_000);
    assert!(transfer_event_matches(
        &receipt(vec![right.clone()]),
        asset,
        &auth
    ));
    // Among other logs too.
    let noise = log(OTHER, auth.from, auth.to, 10_000);
    assert!(transfer_event_matches(
        &receipt(vec![noise.clone(), right]),
        asset,
        &auth
    ));
    for (what, logs) in [
        ("no logs", vec![]),
        ("another token's", vec![noise]),
        ("other amount", vec![log(asset, auth.from, auth.to, 9_999)]),
        (
            "other recipient",
            vec![log(asset, auth.from, OTHER, 10_000)],
        ),
        ("other sender", vec![log(asset, OTHER, auth.to, 10_000)]),
    ] {
        assert!(
            !transfer_event_matches(&receipt(logs), asset, &auth),
            "{what}"
        );
    }
}

#[test]
fn a_settlement_transaction_names_the_authorization_it_executes() {
    use crate::evm::{Eip1559Tx, SigningKey as TxKey, sign_eip1559};
    let auth = authorization();
    let tx = |input: Vec<u8>| {
        let tx = Eip1559Tx {
            chain_id: crate::chain::ChainId(84532),
            nonce: 3,
            max_priority_fee_per_gas: 1,
            max_fee_per_gas: 2,
            gas_limit: 100_000,
            to: base_sepolia().usdc,
            value: U256::ZERO,
            input: input.into(),
        };
        let key =
            TxKey::from_hex("0x59c6995e998f97a5a0044966f0945389dc9e86dae88c7a8412f4603b6b78690d")
                .unwrap();
        sign_eip1559(&tx, &key).unwrap().raw
    };
    let sig = good_signature();
    let raw = tx(transfer_with_authorization_calldata(&auth, &sig));
    assert_eq!(settled_authorization(&raw), Some(auth));
    // The `bytes` overload too.
    let raw = tx(transfer_with_authorization_calldata(&auth, &[7u8; 70]));
    assert_eq!(settled_authorization(&raw), Some(auth));
    // Anything else is none.
    assert_eq!(
        settled_authorization(&tx(balance_of_calldata(auth.from))),
        None
    );
    assert_eq!(settled_authorization(&[0x02, 0xc0]), None);
    assert_eq!(settled_authorization(&[]), None);
}

#[test]
fn calldata_uses_the_reference_selectors() {
    let auth = authorization();
    let a = authorization_state_calldata(auth.from, auth.nonce);
    assert_eq!((&a[..4], a.len()), (&[0xe9, 0x4a, 0x01, 0x02][..], 4 + 64));
    assert_eq!(&a[4..36], &word(auth.from));
    assert_eq!(&a[36..], auth.nonce.as_slice());
    let b = balance_of_calldata(auth.from);
    assert_eq!(
        (&b[..4], &b[4..]),
        (&[0x70, 0xa0, 0x82, 0x31][..], &word(auth.from)[..])
    );
    assert_eq!(name_calldata(), [0x06, 0xfd, 0xde, 0x03]);
    assert_eq!(version_calldata(), [0x54, 0xfd, 0x4d, 0x50]);

    let sig = good_signature();
    let t = transfer_with_authorization_calldata(&auth, &sig);
    assert_eq!(&t[..4], &[0xe3, 0xee, 0x16, 0x0e]);
    assert_eq!(t.len(), 4 + 9 * 32);
    assert_eq!(
        &t[4 + 6 * 32..4 + 7 * 32],
        &U256::from(sig[64]).to_be_bytes::<32>()
    );
    assert_eq!(&t[4 + 7 * 32..4 + 8 * 32], &sig[..32]);
    assert_eq!(&t[4 + 8 * 32..], &sig[32..64]);
    let mut v01 = sig;
    v01[64] -= 27;
    assert_eq!(
        transfer_with_authorization_calldata(&auth, &v01),
        t,
        "v 0/1 is raised to 27/28"
    );

    let long = [0xaa; 100];
    let t = transfer_with_authorization_calldata(&auth, &long);
    assert_eq!(&t[..4], &[0xcf, 0x09, 0x29, 0x95]);
    assert_eq!(
        &t[4 + 6 * 32..4 + 7 * 32],
        &U256::from(7 * 32).to_be_bytes::<32>()
    );
    assert_eq!(
        &t[4 + 7 * 32..4 + 8 * 32],
        &U256::from(100).to_be_bytes::<32>()
    );
}

#[test]
fn return_data_decodes() {
    let mut t = [0u8; 32];
    t[31] = 1;
    assert_eq!(decode_authorization_state_return(&t), Ok(true));
    assert_eq!(decode_authorization_state_return(&[0; 32]), Ok(false));
    assert_eq!(
        decode_balance_of_return(&U256::from(1234).to_be_bytes::<32>()),
        Ok(U256::from(1234))
    );
    assert!(decode_balance_of_return(&[1, 2]).is_err());
    let mut s = Vec::new();
    s.extend(U256::from(32).to_be_bytes::<32>());
    s.extend(U256::from(8).to_be_bytes::<32>());
    let mut text = [0u8; 32];
    text[..8].copy_from_slice(b"USD Coin");
    s.extend(text);
    assert_eq!(decode_string_return(&s).as_deref(), Ok("USD Coin"));
    assert!(decode_string_return(&[]).is_err());
}

#[test]
fn authorizations_round_trip_through_the_wire_form() {
    let a = authorization();
    let wire = a.to_wire();
    assert_eq!(wire.nonce, format!("0x{}", "5a".repeat(32)));
    assert_eq!(wire.valid_before, (NOW + 60).to_string());
    assert_eq!(TransferAuthorization::parse(&wire), Ok(a));
    assert_eq!(
        TransferAuthorization::parse(&Authorization {
            value: "1.5".into(),
            ..wire.clone()
        }),
        Err(AuthorizationError::Number("value"))
    );
    assert_eq!(
        TransferAuthorization::parse(&Authorization {
            to: "x".into(),
            ..wire
        }),
        Err(AuthorizationError::Address("to"))
    );
}

proptest! {
    #[test]
    fn decimal_u256_round_trips(limbs in any::<[u64; 4]>()) {
        let n = U256::from_limbs(limbs);
        prop_assert_eq!(parse_decimal_u256(&n.to_string()), Some(n));
    }

    #[test]
    fn decimal_parsing_rejects_non_digits(s in "[0-9]{0,5}[^0-9][0-9]{0,5}") {
        prop_assert_eq!(parse_decimal_u256(&s), None);
    }

    #[test]
    fn any_key_and_nonce_sign_and_verify(seed in any::<[u8; 32]>(), nonce in any::<[u8; 32]>(), value in 1u64..) {
        prop_assume!(SigningKey::from_slice(&seed).is_ok());
        let key = SigningKey::from_slice(&seed).unwrap();
        let auth = TransferAuthorization {
            from: address_of(key.verifying_key()),
            value: U256::from(value),
            nonce: B256::from(nonce),
            ..authorization()
        };
        let d = base_sepolia().token_domain();
        let sig = sign_authorization(&key, &auth, &d).unwrap();
        prop_assert_eq!(recover_signer(auth.signing_hash(&d), &sig), Ok(auth.from));
        let (p, r) = {
            let mut r = requirements();
            r.amount = value.to_string();
            let p = PaymentPayload::V2(PaymentPayloadV2 {
                resource: None,
                accepted: r.clone(),
                payload: ExactEvmPayload { signature: hex0x(&sig), authorization: auth.to_wire() },
                extensions: None,
            });
            (p, r)
        };
        prop_assert_eq!(verify(&p, &r), Ok(auth.from));
    }

    /// `recover_key` against ecdsa's `recover_from_prehash` (which re-verifies what it recovers): the same key
    /// for real signatures with either parity, and the same answer, key or none, for forged low-s `(r, s)`.
    /// (k256's verification refuses high `s`, so ecdsa recovers nothing from one; `recover_signer` refuses it
    /// before recovering.)
    #[test]
    fn recovers_what_ecdsa_recovers(
        seed in any::<[u8; 32]>(),
        digest in any::<[u8; 32]>(),
        forged in any::<[u8; 64]>(),
        odd in any::<bool>(),
    ) {
        use k256::ecdsa::RecoveryId;
        let hash = B256::from(digest);
        let reference = |sig: &EcdsaSignature, odd: bool| {
            VerifyingKey::recover_from_prehash(hash.as_slice(), sig, RecoveryId::new(odd, false)).ok()
        };
        if let Ok(key) = SigningKey::from_slice(&seed) {
            let (sig, id) = key.sign_prehash_recoverable(hash.as_slice()).unwrap();
            prop_assert_eq!(recover_key(hash, &sig, id.is_y_odd()), Some(*key.verifying_key()));
            prop_assert_eq!(recover_key(hash, &sig, odd), reference(&sig, odd));
        }
        if let Ok(sig) = EcdsaSignature::from_slice(&forged) {
            match sig.normalize_s() {
                None => prop_assert_eq!(recover_key(hash, &sig, odd), reference(&sig, odd)),
                Some(low) => {
                    prop_assert_eq!(reference(&sig, odd), None);
                    prop_assert_eq!(recover_key(hash, &low, odd), reference(&low, odd));
                }
            }
        }
    }
}

#[test]
fn a_known_signer_skips_only_the_recovery() {
    let r = requirements();
    // A forged signature passes only when the caller vouches for this payload's signer (it checked this very
    // payload before): the recovery is what is skipped, nothing else.
    let forged = with_signature(&[7u8; 65]);
    assert_eq!(
        check_exact(&forged, &r, base_sepolia(), NOW, None).map(|c| c.payer),
        Err(InvalidReason::Signature)
    );
    assert_eq!(
        check_exact(&forged, &r, base_sepolia(), NOW, Some(OTHER)).map(|c| c.payer),
        Err(InvalidReason::Signature),
        "a vouched signer that is not `from` does not count"
    );
    let vouched = check_exact(&forged, &r, base_sepolia(), NOW, Some(payer())).unwrap();
    assert_eq!(vouched.payer, payer());
    // The time window is checked again even for a known signer.
    let late = NOW + 86_400 * 365;
    assert_eq!(
        check_exact(&good(), &r, base_sepolia(), late, Some(payer())).map(|c| c.payer),
        Err(InvalidReason::ValidBefore)
    );
    // Split checks give what verify_exact gives, with and without facts.
    let checked = check_exact(&good(), &r, base_sepolia(), NOW, None).unwrap();
    assert_eq!(checked.check_chain(&facts()), Ok(()));
    let used = ChainFacts {
        nonce_used: Some(true),
        ..facts()
    };
    assert_eq!(
        checked.check_chain(&used),
        Err(InvalidReason::NonceAlreadyUsed)
    );
    assert_eq!(
        verify_exact(&good(), &r, base_sepolia(), NOW, Some(&used)),
        Err(InvalidReason::NonceAlreadyUsed)
    );
}

/// Payments that move no money are refused before anything reaches the chain, however well signed: a zero
/// amount, and a payer paying itself (each settlement would only spend the facilitator's gas; before, both
/// verified and settled).
#[test]
fn payments_that_move_no_money_are_refused() {
    let domain = base_sepolia().token_domain();
    let zero = TransferAuthorization {
        value: U256::ZERO,
        ..authorization()
    };
    let mut r = requirements();
    r.amount = "0".into();
    let mut p = v2(signed(&zero, &domain));
    if let PaymentPayload::V2(v) = &mut p {
        v.accepted = r.clone();
    }
    assert_eq!(
        verify(&p, &r),
        Err(InvalidReason::InvalidPaymentRequirements)
    );

    let to_self = TransferAuthorization {
        to: payer(),
        ..authorization()
    };
    let mut r = requirements();
    r.pay_to = payer().to_checksum(None);
    let mut p = v2(signed(&to_self, &domain));
    if let PaymentPayload::V2(v) = &mut p {
        v.accepted = r.clone();
    }
    assert_eq!(
        verify(&p, &r),
        Err(InvalidReason::InvalidPaymentRequirements)
    );
    // The same payment to someone else verifies.
    assert_eq!(verify(&good(), &requirements()), Ok(payer()));
}

#[test]
fn valid_before_in_reach_bounds_an_invoice_payments_window() {
    // `now + maxTimeoutSeconds` (what the reference clients sign) and up to a minute of skew beyond it pass.
    assert!(valid_before_in_reach(U256::from(NOW + 300), 300, NOW));
    assert!(valid_before_in_reach(U256::from(NOW + 360), 300, NOW));
    assert!(valid_before_in_reach(U256::from(NOW), 300, NOW));
    // One second more, or an authorization that never expires, does not.
    assert!(!valid_before_in_reach(U256::from(NOW + 361), 300, NOW));
    assert!(!valid_before_in_reach(U256::MAX, 300, NOW));
    // No overflow at the ends of the ranges.
    assert!(!valid_before_in_reach(U256::MAX, u64::MAX, u64::MAX));
    assert!(valid_before_in_reach(
        U256::from(u64::MAX),
        u64::MAX,
        u64::MAX
    ));
}
