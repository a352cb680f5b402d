use alloy_primitives::keccak256;
use proptest::prelude::*;

use super::*;
use crate::x402::exact::address_of;

const NOW: u64 = 1_790_000_000;

fn carrier(id: &str) -> CarrierId {
    CarrierId::parse(id).unwrap()
}

fn unsigned() -> Receipt {
    Receipt {
        carrier: carrier("tmobile"),
        iccid: Iccid::with_check_digit("890126000000000001").unwrap(),
        plmn: Plmn::parse("310-260").unwrap(),
        session_id: "sess-1".into(),
        seq: 1,
        window_start: NOW - 900,
        window_end: NOW - 1,
        bytes_up: 1_200,
        bytes_down: 800,
        signature: vec![],
        page: None,
    }
}

fn signed() -> Receipt {
    unsigned()
        .sign(&dev_signing_key(&carrier("tmobile")))
        .unwrap()
}

fn registry(c: &CarrierId) -> Option<Address> {
    (c.as_str() != "nobody").then(|| address_of(dev_signing_key(c).verifying_key()))
}

fn us_only() -> RoamingPolicy {
    RoamingPolicy {
        countries: vec!["US".into()],
        ..RoamingPolicy::default()
    }
}

fn check(r: &Receipt, sim_carrier: &str, roaming: &RoamingPolicy) -> Result<(), ReceiptError> {
    let c = carrier(sim_carrier);
    verify(
        r,
        registry,
        Some(SimTerms {
            carrier: &c,
            roaming,
            opened_at: None,
            retired_at: None,
        }),
        NOW,
    )
}

/// The type string is the scheme's contract with agents and contracts: it must not drift.
#[test]
fn type_hash_is_the_documented_one() {
    use alloy_sol_types::SolStruct;
    let expected = keccak256(
        "UsageReceipt(string carrier,string iccid,string plmn,string sessionId,uint64 seq,uint64 windowStart,uint64 windowEnd,uint64 bytesUp,uint64 bytesDown)",
    );
    assert_eq!(unsigned().sol().eip712_type_hash(), expected);
    assert_eq!(crate::usage::hashes::receipt_type_hash(), expected);
}

/// Test vector (`usage_receipt_vector.json` beside this file): the receipt, its EIP-712 digest and the dev
/// key's signature. Anyone implementing the scheme (an agent, a contract) checks against these bytes.
#[test]
fn vector() {
    let v: serde_json::Value =
        serde_json::from_str(include_str!("usage_receipt_vector.json")).unwrap();
    let wire: WireReceipt = serde_json::from_value(v["receipt"].clone()).unwrap();
    let r = wire.parse().unwrap();
    assert_eq!(
        format!("{}", r.signing_hash()),
        v["signing_hash"].as_str().unwrap()
    );
    assert_eq!(
        format!("{}", r.signer().unwrap()),
        v["signer"].as_str().unwrap()
    );
    assert_eq!(
        format!("{}", domain().separator()),
        v["domain_separator"].as_str().unwrap()
    );
    // Re-signing the same fields with the dev key gives the same bytes (RFC 6979 is deterministic).
    let again = r.clone().sign(&dev_signing_key(&r.carrier)).unwrap();
    assert_eq!(again.to_wire().signature, wire.signature);
}

#[test]
fn a_signed_receipt_verifies() {
    assert_eq!(check(&signed(), "tmobile", &us_only()), Ok(()));
}

#[test]
fn forged_fields_break_the_signature() {
    let mut r = signed();
    r.bytes_down = 1;
    assert!(matches!(
        check(&r, "tmobile", &us_only()),
        Err(ReceiptError::BadSignature(_))
    ));
}

#[test]
fn another_carriers_key_is_refused() {
    let r = unsigned().sign(&dev_signing_key(&carrier("att"))).unwrap();
    let e = check(&r, "tmobile", &us_only()).unwrap_err();
    assert_eq!(e.reason(), "bad_signature");
    assert!(e.is_dispute());
    assert!(e.is_unsigned(), "anyone can produce it: capped per SIM");
}

#[test]
fn unknown_carrier() {
    let mut r = unsigned();
    r.carrier = carrier("nobody");
    let r = r.sign(&dev_signing_key(&carrier("nobody"))).unwrap();
    assert_eq!(
        check(&r, "tmobile", &us_only()).unwrap_err().reason(),
        "unknown_carrier"
    );
}

#[test]
fn iccid_on_another_carrier() {
    // Signed correctly by AT&T, but the SIM is T-Mobile's.
    let mut r = unsigned();
    r.carrier = carrier("att");
    let r = r.sign(&dev_signing_key(&carrier("att"))).unwrap();
    assert_eq!(
        check(&r, "tmobile", &us_only()).unwrap_err().reason(),
        "iccid_not_on_carrier"
    );
}

#[test]
fn disallowed_plmn() {
    let mut r = unsigned();
    r.plmn = Plmn::parse("262-01").unwrap();
    let r = r.sign(&dev_signing_key(&carrier("tmobile"))).unwrap();
    let e = check(&r, "tmobile", &us_only()).unwrap_err();
    assert_eq!(e, ReceiptError::PlmnNotAllowed("262-01".into()));
    assert_eq!(check(&r, "tmobile", &RoamingPolicy::default()), Ok(()));
}

#[test]
fn windows() {
    let mut r = unsigned();
    (r.window_start, r.window_end) = (NOW - 10, NOW - 20);
    let r1 = r.sign(&dev_signing_key(&carrier("tmobile"))).unwrap();
    assert_eq!(
        check(&r1, "tmobile", &us_only()).unwrap_err().reason(),
        "window_inverted"
    );
    let mut r = unsigned();
    r.window_end = NOW + CLOCK_SKEW_SECS + 1;
    r.window_start = NOW;
    assert_eq!(
        check(&r, "tmobile", &us_only()).unwrap_err().reason(),
        "window_in_future",
        "cheap checks run before the signature"
    );
    let mut r = unsigned();
    r.window_end = NOW + CLOCK_SKEW_SECS;
    r.window_start = NOW;
    let r = r.sign(&dev_signing_key(&carrier("tmobile"))).unwrap();
    assert_eq!(check(&r, "tmobile", &us_only()), Ok(()), "skew tolerated");
    let mut r = unsigned();
    r.window_start = 0;
    assert_eq!(
        check(&r, "tmobile", &us_only()).unwrap_err().reason(),
        "window_too_long"
    );
}

#[test]
fn zero_seq_and_huge_counts() {
    let mut r = unsigned();
    r.seq = 0;
    assert_eq!(check(&r, "tmobile", &us_only()), Err(ReceiptError::ZeroSeq));
    let mut r = unsigned();
    r.bytes_up = u64::MAX;
    r.bytes_down = u64::MAX;
    assert!(matches!(
        check(&r, "tmobile", &us_only()),
        Err(ReceiptError::TooManyBytes(_))
    ));
}

/// A refusal of a receipt's own fields is the carrier's when its carrier signed it (for a SIM metered here): kept
/// as its signed dispute, in the ledger. Before, a carrier's own 1 TB receipt was classed with anyone's forgeries
/// (a review, thirty-first session). A forged one, one for an unmetered SIM and a refusal raised after the
/// signature keep their classes.
#[test]
fn a_carrier_signed_receipt_refused_for_its_fields_is_a_signed_refusal() {
    let key = dev_signing_key(&carrier("tmobile"));
    let forger = SigningKey::from_slice(&[7u8; 32]).unwrap();
    let mut r = unsigned();
    r.window_start = r.window_end - 60;
    (r.bytes_up, r.bytes_down) = (1_000_000_000_000, 0);
    let signed = r.clone().sign(&key).unwrap();
    let e = check(&signed, "tmobile", &us_only()).unwrap_err();
    assert!(e.is_unsigned(), "raised before the signature: {e:?}");
    let mut rec = Recoveries::default();
    assert!(refusal_signed(&e, &signed, registry, true, &mut rec));
    assert!(
        !refusal_signed(&e, &signed, registry, false, &mut rec),
        "not metered here"
    );
    let forged = r.clone().sign(&forger).unwrap();
    assert!(!refusal_signed(&e, &forged, registry, true, &mut rec));
    let unknown = |_: &CarrierId| None;
    assert!(!refusal_signed(&e, &signed, unknown, true, &mut rec));
    let bad = ReceiptError::BadSignature("x".into());
    assert!(
        !refusal_signed(&bad, &signed, registry, true, &mut rec),
        "not of its fields"
    );
    // A window in the future is the clock's (the same receipt later is charged): never the carrier's dispute.
    let mut ahead = unsigned();
    (ahead.window_start, ahead.window_end) = (NOW + 3_600, NOW + 3_700);
    let ahead = ahead.sign(&key).unwrap();
    let early = check(&ahead, "tmobile", &us_only()).unwrap_err();
    assert!(
        matches!(early, ReceiptError::WindowInFuture { .. }),
        "{early:?}"
    );
    assert!(!refusal_signed(&early, &ahead, registry, true, &mut rec));
    let roaming = ReceiptError::PlmnNotAllowed("262-01".into());
    assert!(
        refusal_signed(&roaming, &forged, registry, true, &mut rec),
        "raised after the signature"
    );
}

/// A window that counts more than a link could carry (1 TB in a minute) is refused, with the same reason as an
/// oversized count; the most a window may count is accepted. Before, such a receipt was charged and overdrew
/// the SIM by a terabyte, swallowing every later top-up.
#[test]
fn a_window_counting_more_than_a_link_carries_is_refused() {
    let mut r = unsigned();
    r.window_start = r.window_end - 60;
    r.bytes_up = 60 * MAX_BYTES_PER_SEC;
    r.bytes_down = 0;
    let key = dev_signing_key(&carrier("tmobile"));
    assert_eq!(
        check(&r.clone().sign(&key).unwrap(), "tmobile", &us_only()),
        Ok(())
    );
    r.bytes_down = 1;
    let e = check(&r, "tmobile", &us_only()).unwrap_err();
    assert!(matches!(e, ReceiptError::TooFast { .. }), "{e:?}");
    assert_eq!(e.reason(), "too_many_bytes");
    // A window of no length counts as a second.
    r.window_end = r.window_start;
    (r.bytes_up, r.bytes_down) = (MAX_BYTES_PER_SEC, 0);
    assert_eq!(
        check(&r.clone().sign(&key).unwrap(), "tmobile", &us_only()),
        Ok(())
    );
}

#[test]
fn unknown_sim_is_not_a_dispute() {
    let e = verify(&signed(), registry, None, NOW).unwrap_err();
    assert_eq!(e.reason(), "unknown_sim");
    assert!(!e.is_dispute(), "nobody owns it: nothing to keep");
}

/// Only refusals of the SIM's own terms carry the carrier's signature; every other dispute is one anyone can
/// produce (so it is capped per SIM), and none is kept for a SIM not metered here.
#[test]
fn only_refusals_of_the_sims_terms_are_signed_disputes() {
    let mut zero = signed();
    zero.seq = 0;
    let mut inverted = signed();
    inverted.window_start = NOW;
    inverted.window_end = NOW - 10;
    let mut future = signed();
    future.window_end = NOW + 3_600;
    let mut long = signed();
    long.window_start = NOW - 10 * MAX_WINDOW_SECS;
    let mut huge = signed();
    huge.bytes_down = u64::MAX;
    let mut forged = signed();
    forged.bytes_down += 1;
    let mut nobody = unsigned();
    nobody.carrier = carrier("nobody");
    let anyones = [zero, inverted, future, long, huge, forged, nobody];
    for r in &anyones {
        let e = check(r, "tmobile", &us_only()).unwrap_err();
        assert!(e.is_dispute(), "{e}");
        assert!(
            e.is_unsigned(),
            "{e}: raised before the signature is known good"
        );
        assert!(e.is_dispute_for(true), "{e}");
        assert!(
            !e.is_dispute_for(false),
            "{e}: not for a SIM not metered here"
        );
    }
    let mut roaming = unsigned();
    roaming.plmn = Plmn::parse("262-01").unwrap();
    let roaming = roaming.sign(&dev_signing_key(&carrier("tmobile"))).unwrap();
    for e in [
        check(&roaming, "tmobile", &us_only()).unwrap_err(),
        check(&signed(), "att", &us_only()).unwrap_err(),
    ] {
        assert!(
            e.is_dispute() && !e.is_unsigned(),
            "{e}: the carrier signed it"
        );
        assert!(e.is_dispute_for(true), "{e}");
    }
}

/// A SIM's time here bounds its receipts: a window that ended over an hour before it was ordered (an ICCID
/// the carrier recycled), or that starts after a switch retired it (its data moved to a SIM on another
/// carrier, which this carrier may no longer charge) by more than a day, is refused, as a signed dispute.
/// Within those margins it is charged.
#[test]
fn a_window_outside_the_sims_time_here_is_refused() {
    let roaming = us_only();
    let c = carrier("tmobile");
    let at = |r: &Receipt, opened_at, retired_at| {
        verify(
            r,
            registry,
            Some(SimTerms {
                carrier: &c,
                roaming: &roaming,
                opened_at,
                retired_at,
            }),
            NOW,
        )
    };
    // The window is [NOW - 900, NOW - 1].
    let r = signed();
    assert_eq!(at(&r, Some(NOW - 1 + OPEN_GRACE_SECS), None), Ok(()));
    let e = at(&r, Some(NOW + OPEN_GRACE_SECS), None).unwrap_err();
    assert_eq!(e.reason(), "before_activation");
    assert!(
        e.is_dispute() && !e.is_unsigned(),
        "{e}: the carrier signed it"
    );
    assert_eq!(
        at(&r, None, Some(NOW - 900 - RETIREMENT_GRACE_SECS)),
        Ok(())
    );
    let retired = NOW - 901 - RETIREMENT_GRACE_SECS;
    let e = at(&r, Some(NOW - 2 * 86_400), Some(retired)).unwrap_err();
    assert!(
        matches!(&e, ReceiptError::AfterRetirement { start, retired: at, .. }
            if *start == NOW - 900 && *at == retired),
        "{e}"
    );
    assert_eq!(e.reason(), "after_retirement");
    assert!(e.is_dispute() && !e.is_unsigned(), "{e}");
    // A forged receipt is refused for its signature first, whatever the SIM's dates.
    let mut forged = signed();
    forged.bytes_up += 1;
    assert_eq!(
        at(&forged, Some(NOW + OPEN_GRACE_SECS), None).map_err(|e| e.reason()),
        Err("bad_signature")
    );
}

#[test]
fn wire_parse_refusals() {
    let good = signed().to_wire();
    type Edit = fn(&mut WireReceipt);
    let cases: [(&str, Edit); 5] = [
        ("iccid", |w| w.iccid = "8901260000000000019".into()), // bad Luhn
        ("plmn", |w| w.plmn = "31-260".into()),
        ("session_id", |w| w.session_id = String::new()),
        ("session_id", |w| w.session_id = "a b".into()),
        ("signature", |w| w.signature = "0x1234".into()),
    ];
    for (field, edit) in cases {
        let mut w = good.clone();
        edit(&mut w);
        match w.parse() {
            Err(ReceiptError::Malformed { field: f, .. }) => assert_eq!(f, field),
            other => panic!("{field}: {other:?}"),
        }
    }
    let json = serde_json::json!({"carrier":"tmobile","extra":1});
    assert!(serde_json::from_value::<WireReceipt>(json).is_err());
}

#[test]
fn shipped_catalog_signers_are_the_dev_keys() {
    for c in crate::esim::catalog::Catalog::builtin().carriers() {
        assert_eq!(
            c.receipt_signer,
            Some(address_of(dev_signing_key(&c.id).verifying_key())),
            "{}: carriers.toml receipt_signer must be the dev key's address",
            c.id
        );
    }
}

proptest! {
    /// Wire form ↔ parsed form round-trips, and the signature survives it.
    #[test]
    fn codec_round_trips(
        seq in 1u64..u64::MAX,
        start in 0u64..NOW,
        span in 0u64..MAX_WINDOW_SECS,
        up in 0u64..MAX_RECEIPT_BYTES / 2,
        down in 0u64..MAX_RECEIPT_BYTES / 2,
        session in "[A-Za-z0-9_.:-]{1,64}",
    ) {
        let mut r = unsigned();
        let end = (start + span).min(NOW);
        // At most what the window may count (`MAX_BYTES_PER_SEC`).
        let half = (end - start).max(1).saturating_mul(MAX_BYTES_PER_SEC) / 2;
        (r.seq, r.window_start, r.window_end, r.bytes_up, r.bytes_down, r.session_id) =
            (seq, start, end, up.min(half), down.min(half), session);
        let r = r.sign(&dev_signing_key(&carrier("tmobile"))).unwrap();
        let json = serde_json::to_string(&r.to_wire()).unwrap();
        let back: WireReceipt = serde_json::from_str(&json).unwrap();
        let parsed = back.parse().unwrap();
        prop_assert_eq!(&parsed, &r);
        prop_assert_eq!(check(&parsed, "tmobile", &RoamingPolicy::default()), Ok(()));
    }

    /// The spelled-out hashes (`usage::hashes`, plain and memoised) are alloy's EIP-712 encoding of the type.
    #[test]
    fn hashes_match_the_sol_encoding(
        seq in 1u64..u64::MAX,
        start in 0u64..u64::MAX,
        up in 0u64..u64::MAX,
        down in 0u64..u64::MAX,
        session in "[A-Za-z0-9_.:-]{1,64}",
    ) {
        use alloy_sol_types::SolStruct;
        let mut r = unsigned();
        (r.seq, r.window_start, r.window_end, r.bytes_up, r.bytes_down, r.session_id) =
            (seq, start, start / 2, up, down, session);
        prop_assert_eq!(r.leaf(), r.sol().eip712_hash_struct());
        prop_assert_eq!(r.id_hash(), r.sol().eip712_signing_hash(&domain()));
        let mut memo = crate::usage::hashes::Memo::default();
        for _ in 0..2 {
            prop_assert_eq!(r.signing_hash_memo(&mut memo), r.signing_hash());
        }
    }

    /// Any change of any signed number is detected.
    #[test]
    fn any_edit_is_detected(delta in 1u64..1_000, which in 0usize..5) {
        let mut r = signed();
        match which {
            0 => r.seq += delta,
            1 => r.window_start -= delta,
            2 => r.window_end -= delta.min(r.window_end - r.window_start),
            3 => r.bytes_up += delta,
            _ => r.bytes_down += delta,
        }
        prop_assume!(r.signing_hash() != signed().signing_hash());
        prop_assert_eq!(
            check(&r, "tmobile", &RoamingPolicy::default()).map_err(|e| e.reason()),
            Err("bad_signature")
        );
    }
}
