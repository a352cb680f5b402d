use alloy_primitives::{Address, B256, keccak256};
use k256::ecdsa::SigningKey;
use proptest::prelude::*;

use super::*;
use crate::esim::iccid::Iccid;
use crate::esim::plmn::{Plmn, RoamingPolicy};
use crate::ids::CarrierId;
use crate::usage::receipt::{
    Receipt, ReceiptError, Recoveries, SimTerms, WireReceipt, dev_signing_key, domain, sign_page,
    verify, verify_cached,
};
use crate::x402::exact::address_of;

const NOW: u64 = 1_790_000_000;

fn tmobile() -> CarrierId {
    CarrierId::parse("tmobile").unwrap()
}

fn receipt(seq: u64) -> Receipt {
    Receipt {
        carrier: tmobile(),
        iccid: Iccid::with_check_digit("890126000000000001").unwrap(),
        plmn: Plmn::parse("310-260").unwrap(),
        session_id: "sess-1".into(),
        seq,
        window_start: NOW - 900,
        window_end: NOW - 1,
        bytes_up: 100 * seq,
        bytes_down: 1_000,
        signature: vec![],
        page: None,
    }
}

fn page(n: u64) -> Vec<Receipt> {
    sign_page((1..=n).map(receipt).collect(), &dev_signing_key(&tmobile())).unwrap()
}

fn registry(c: &CarrierId) -> Option<Address> {
    Some(address_of(dev_signing_key(c).verifying_key()))
}

fn check(r: &Receipt) -> Result<(), ReceiptError> {
    let c = tmobile();
    let roaming = RoamingPolicy::default();
    verify(
        r,
        registry,
        Some(SimTerms {
            carrier: &c,
            roaming: &roaming,
            opened_at: None,
            retired_at: None,
        }),
        NOW,
    )
}

/// The page type string is part of the scheme's contract with agents and contracts.
#[test]
fn page_type_is_the_documented_one() {
    assert_eq!(
        crate::usage::hashes::PAGE_TYPE,
        "UsagePage(bytes32 root,uint32 count)"
    );
    assert_eq!(
        crate::usage::hashes::page_type_hash(),
        keccak256("UsagePage(bytes32 root,uint32 count)")
    );
}

#[test]
fn depth_is_the_height_of_the_page() {
    for (count, d) in [
        (1, 0),
        (2, 1),
        (3, 2),
        (4, 2),
        (5, 3),
        (8, 3),
        (9, 4),
        (1000, 10),
    ] {
        assert_eq!(depth(count), d, "count {count}");
    }
    assert_eq!(depth(MAX_PAGE), MAX_PROOF);
}

#[test]
fn every_proof_leads_to_the_root_for_every_size() {
    for n in 1..=33u8 {
        let leaves: Vec<B256> = (0..n).map(|i| keccak256([i])).collect();
        let (root, proofs) = tree(&leaves).unwrap();
        assert_eq!(proofs.len(), leaves.len());
        for (leaf, proof) in leaves.iter().zip(&proofs) {
            assert_eq!(root_from_proof(*leaf, proof), root, "n {n}");
            assert!(proof.len() <= depth(u32::from(n)), "n {n}");
        }
        // Another leaf does not lead to this root with any of the proofs.
        let stranger = keccak256(b"stranger");
        assert!(proofs.iter().all(|p| root_from_proof(stranger, p) != root));
    }
    assert!(tree(&[]).is_none());
}

/// A fixed page pins the scheme: leaves, node order, odd promotion and the EIP-712 digest.
#[test]
fn vector_three_receipt_page() {
    let leaves = [keccak256([1u8]), keccak256([2u8]), keccak256([3u8])];
    let (root, proofs) = tree(&leaves).unwrap();
    assert_eq!(root, node(node(leaves[0], leaves[1]), leaves[2]));
    assert_eq!(proofs[2], vec![node(leaves[0], leaves[1])]);
    assert_eq!(proofs[0], vec![leaves[1], leaves[2]]);
    // The digest is the EIP-712 one: 0x1901 ‖ domainSeparator ‖ hashStruct(UsagePage).
    let type_hash = keccak256("UsagePage(bytes32 root,uint32 count)");
    let mut enc = Vec::new();
    enc.extend_from_slice(type_hash.as_slice());
    enc.extend_from_slice(root.as_slice());
    enc.extend_from_slice(&B256::left_padding_from(&3u32.to_be_bytes()).0);
    let mut msg = vec![0x19, 0x01];
    msg.extend_from_slice(domain().hash_struct().as_slice());
    msg.extend_from_slice(keccak256(&enc).as_slice());
    assert_eq!(signing_hash(root, 3), keccak256(&msg));
    // And alloy's EIP-712 encoding of the same type agrees.
    alloy_sol_types::sol! { struct UsagePage { bytes32 root; uint32 count; } }
    use alloy_sol_types::SolStruct;
    assert_eq!(
        signing_hash(root, 3),
        UsagePage { root, count: 3 }.eip712_signing_hash(&domain())
    );
}

#[test]
fn every_receipt_of_a_signed_page_verifies_on_its_own() {
    let signed = page(10);
    assert!(signed.iter().all(|r| r.signature == signed[0].signature));
    for r in &signed {
        assert_eq!(r.page.as_ref().unwrap().count, 10);
        check(r).unwrap();
        // Through the wire and back, still valid.
        let wire = serde_json::to_string(&r.to_wire()).unwrap();
        let back: WireReceipt = serde_json::from_str(&wire).unwrap();
        check(&back.parse().unwrap()).unwrap();
    }
}

#[test]
fn a_page_of_one_is_not_a_single_receipt() {
    let p = page(1);
    check(&p[0]).unwrap();
    assert!(p[0].page.as_ref().unwrap().proof.is_empty());
    assert_ne!(p[0].signing_hash(), p[0].id_hash());
    // Its signature moved onto the receipt alone does not verify.
    let mut single = p[0].clone();
    single.page = None;
    assert!(matches!(check(&single), Err(ReceiptError::BadSignature(_))));
}

#[test]
fn edits_break_the_signature() {
    let signed = page(7);
    type Edit = fn(&mut Receipt);
    let edits: [(&str, Edit); 6] = [
        ("bytes", |r| r.bytes_down += 1),
        ("seq", |r| r.seq += 100),
        ("count", |r| r.page.as_mut().unwrap().count = 8),
        ("proof order", |r| r.page.as_mut().unwrap().proof.reverse()),
        ("proof truncated", |r| {
            r.page.as_mut().unwrap().proof.pop();
        }),
        ("no proof", |r| r.page = None),
    ];
    for (name, edit) in edits {
        let mut r = signed[2].clone();
        edit(&mut r);
        assert!(
            matches!(check(&r), Err(ReceiptError::BadSignature(_))),
            "{name}: {:?}",
            check(&r)
        );
    }
    // Another receipt's proof does not fit this one.
    let mut r = signed[2].clone();
    r.page = signed[5].page.clone();
    assert!(matches!(check(&r), Err(ReceiptError::BadSignature(_))));
    // A page signed by another key is not the carrier's.
    let other = sign_page(
        vec![receipt(1)],
        &SigningKey::from_slice(&[7u8; 32]).unwrap(),
    )
    .unwrap();
    assert!(matches!(
        check(&other[0]),
        Err(ReceiptError::BadSignature(_))
    ));
}

#[test]
fn malformed_page_proofs_are_refused_at_parse() {
    let mut wire = page(4)[0].to_wire();
    wire.page.as_mut().unwrap().proof.extend([B256::ZERO; 3]);
    let err = wire.parse().unwrap_err();
    assert_eq!(err.reason(), "malformed_receipt");
    assert!(err.to_string().starts_with("page:"), "{err}");
    wire.page = Some(PageProof {
        count: 0,
        proof: vec![],
    });
    assert!(wire.parse().is_err());
    wire.page = Some(PageProof {
        count: MAX_PAGE + 1,
        proof: vec![],
    });
    assert!(wire.parse().is_err());
    // Unknown fields inside `page` are refused like everywhere in a receipt.
    let mut v = serde_json::to_value(page(2)[0].to_wire()).unwrap();
    v["page"]["index"] = 0.into();
    assert!(serde_json::from_value::<WireReceipt>(v).is_err());
}

/// A batch of page-signed receipts recovers the page signature once; outcomes match uncached verification.
#[test]
fn recoveries_are_shared_within_a_page() {
    let mut signed = page(50);
    signed[10].bytes_up += 1; // forged: must still fail with the cache
    let c = tmobile();
    let roaming = RoamingPolicy::default();
    let terms = || {
        Some(SimTerms {
            carrier: &c,
            roaming: &roaming,
            opened_at: None,
            retired_at: None,
        })
    };
    let mut cache = Recoveries::default();
    for r in &signed {
        let cached = verify_cached(r, registry, terms(), NOW, &mut cache);
        assert_eq!(cached, verify(r, registry, terms(), NOW));
    }
    assert!(verify_cached(&signed[10], registry, terms(), NOW, &mut cache).is_err());
    // 49 receipts share one digest; the forged one recovers on its own digest.
    assert_eq!(cache.len(), 2);
}

proptest! {
    #[test]
    fn proofs_hold_for_any_leaves(seeds in proptest::collection::vec(any::<[u8; 32]>(), 1..120)) {
        let leaves: Vec<B256> = seeds.iter().map(|s| B256::from(*s)).collect();
        let (root, proofs) = tree(&leaves).unwrap();
        for (leaf, proof) in leaves.iter().zip(&proofs) {
            prop_assert_eq!(root_from_proof(*leaf, proof), root);
            let count = u32::try_from(leaves.len()).unwrap();
            let shape = PageProof { count, proof: proof.clone() }.check();
            prop_assert!(shape.is_ok(), "{:?}", shape);
        }
    }
}
