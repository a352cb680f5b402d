use super::*;
use proptest::prelude::*;

const NOW: u64 = 1_790_000_000;

fn key() -> SigningKey {
    SigningKey::from_slice(&[0x11; 32]).unwrap()
}

fn expect() -> Expect<'static> {
    Expect {
        domain: "127.0.0.1:3000",
        origin: "http://127.0.0.1:3000",
        path: None,
        now: NOW,
    }
}

fn challenge(nonce: &str) -> Challenge<'_> {
    Challenge {
        domain: "127.0.0.1:3000",
        uri: "http://127.0.0.1:3000/v1/esim/8901260000000000019",
        chain_id: 8453,
        nonce,
        issued_at: NOW - 10,
        expires_in: 120,
        statement: Some("Manage my SIM"),
    }
}

fn signed() -> SiwxProof {
    sign(&key(), &challenge("a1b2c3d4e5f67890")).unwrap()
}

#[test]
fn a_signed_proof_round_trips_the_header_and_verifies_to_its_signer() {
    let p = signed();
    let back = SiwxProof::from_header(&p.to_header()).unwrap();
    assert_eq!(back, p);
    let v = back.verify(&expect()).unwrap();
    assert_eq!(v.address, address_of(key().verifying_key()));
    assert_eq!(v.nonce, "a1b2c3d4e5f67890");
    assert_eq!(v.expires_at, NOW - 10 + 120);
}

#[test]
fn the_message_is_eip_4361() {
    let p = signed();
    let m = p.message().unwrap();
    let expected = format!(
        "127.0.0.1:3000 wants you to sign in with your Ethereum account:\n{}\n\nManage my SIM\n\n\
         URI: http://127.0.0.1:3000/v1/esim/8901260000000000019\nVersion: 1\nChain ID: 8453\n\
         Nonce: a1b2c3d4e5f67890\nIssued At: {}\nExpiration Time: {}",
        p.address,
        p.issued_at,
        p.expiration_time.as_deref().unwrap()
    );
    assert_eq!(m, expected);
    assert!(p.issued_at.ends_with(".000Z"), "{}", p.issued_at);
    let mut bare = p.clone();
    bare.statement = None;
    assert!(
        bare.message()
            .unwrap()
            .contains(&format!("{}\n\n\nURI:", p.address))
    );
}

#[test]
fn the_spec_example_header_decodes() {
    // The extension spec's example (its signature is not over our domain, so only the form is checked).
    let json = r#"{"domain":"api.example.com","address":"0x857b06519E91e3A54538791bDbb0E22373e36b66","uri":"https://api.example.com/premium-data","version":"1","chainId":"eip155:8453","type":"eip191","nonce":"a1b2c3d4e5f67890a1b2c3d4e5f67890","issuedAt":"2024-01-15T10:30:00.000Z","expirationTime":"2024-01-15T10:35:00.000Z","statement":"Sign in to access premium data","resources":["https://api.example.com/premium-data"],"signatureScheme":"eip191","signature":"0x2d"}"#;
    let p = SiwxProof::from_header(&STANDARD.encode(json)).unwrap();
    assert_eq!(p.chain_id, "eip155:8453");
    assert_eq!(parse_time("issuedAt", &p.issued_at).unwrap(), 1_705_314_600);
    assert!(
        p.message()
            .unwrap()
            .ends_with("Resources:\n- https://api.example.com/premium-data")
    );
}

fn refused(p: &SiwxProof, e: &Expect<'_>, needle: &str) {
    match p.verify(e) {
        Err(AuthError::Invalid(m)) => assert!(m.contains(needle), "{m} lacks {needle}"),
        other => panic!("expected a refusal naming {needle}, got {other:?}"),
    }
}

#[test]
fn every_binding_and_time_rule_refuses() {
    let p = signed();
    refused(
        &p,
        &Expect {
            domain: "evil.test",
            ..expect()
        },
        "domain",
    );
    refused(
        &p,
        &Expect {
            origin: "http://127.0.0.1:30001",
            ..expect()
        },
        "uri",
    );
    refused(
        &p,
        &Expect {
            now: NOW - 100,
            ..expect()
        },
        "future",
    );
    refused(
        &p,
        &Expect {
            now: NOW + 111,
            ..expect()
        },
        "expired",
    );
    // A far expirationTime is capped at MAX_AGE_SECS after issuedAt.
    let long = sign(
        &key(),
        &Challenge {
            expires_in: 86_400,
            ..challenge("a1b2c3d4e5f67890")
        },
    )
    .unwrap();
    assert_eq!(
        long.verify(&expect()).unwrap().expires_at,
        NOW - 10 + MAX_AGE_SECS
    );
    refused(
        &long,
        &Expect {
            now: NOW + MAX_AGE_SECS,
            ..expect()
        },
        "expired",
    );
}

#[test]
fn every_form_rule_refuses() {
    let p = signed();
    let edit = |f: &dyn Fn(&mut SiwxProof)| {
        let mut q = p.clone();
        f(&mut q);
        q
    };
    refused(&edit(&|q| q.version = "2".into()), &expect(), "version");
    refused(&edit(&|q| q.kind = "ed25519".into()), &expect(), "type");
    refused(
        &edit(&|q| q.chain_id = "solana:5eyk".into()),
        &expect(),
        "chainId",
    );
    refused(&edit(&|q| q.nonce = "short".into()), &expect(), "nonce");
    refused(
        &edit(&|q| q.nonce = "abcd-efgh-ijkl".into()),
        &expect(),
        "nonce",
    );
    refused(&edit(&|q| q.address = "0x12".into()), &expect(), "address");
    refused(
        &edit(&|q| q.statement = Some("a\nURI: x".into())),
        &expect(),
        "single lines",
    );
    refused(
        &edit(&|q| q.issued_at = "yesterday".into()),
        &expect(),
        "RFC 3339",
    );
    refused(&edit(&|q| q.signature = "0xzz".into()), &expect(), "hex");
    refused(
        &edit(&|q| q.signature = "0x1234".into()),
        &expect(),
        "signature",
    );
    refused(
        &edit(&|q| q.not_before = Some(format_time(NOW + 60))),
        &expect(),
        "notBefore",
    );
    assert!(SiwxProof::from_header("***").is_err());
    assert!(SiwxProof::from_header(&STANDARD.encode("{}")).is_err());
    assert!(SiwxProof::from_header(&"A".repeat(MAX_HEADER_BYTES + 1)).is_err());
    // Told in the proof's words, not serde's (a fresh-user trial: `expected struct SiwxProof with 15
    // elements` for an array); a missing field is named.
    for (json, says) in [
        ("[]", "expected a JSON object"),
        ("7", "expected a JSON object"),
        ("{not json", "not JSON"),
        ("{}", "missing field"),
    ] {
        let e = SiwxProof::from_header(&STANDARD.encode(json))
            .unwrap_err()
            .to_string();
        assert!(e.contains(says) && !e.contains("SiwxProof"), "{json}: {e}");
    }
}

/// `p` edited by `f` and signed again by its key, as a client that sends those fields would.
fn resigned(p: &SiwxProof, f: &dyn Fn(&mut SiwxProof)) -> SiwxProof {
    let mut q = p.clone();
    f(&mut q);
    let sig = sign_prehash(&key(), eip191_hash_message(q.message().unwrap())).unwrap();
    q.signature = format!("0x{}", hex::encode(sig));
    q
}

#[test]
fn an_address_without_0x_is_refused_naming_it() {
    let p = signed();
    let bare = resigned(&p, &|q| q.address = q.address[2..].to_lowercase());
    assert_eq!(bare.address, "19e7e376e7c213b7e7e7e46cc70a5dd086daff2a");
    refused(&bare, &expect(), "address must be a 0x-prefixed");
    // The same signer with its 0x verifies.
    let lower = resigned(&p, &|q| q.address = q.address.to_lowercase());
    assert!(lower.verify(&expect()).is_ok());
}

#[test]
fn a_chain_id_has_one_spelling() {
    let p = signed();
    // Other spellings of 8453 keep the signed message's `Chain ID: 8453`, so the signature still matches: only
    // the spelling rule refuses them.
    for odd in [
        "eip155:+8453",
        "eip155:08453",
        "eip155:008453",
        "eip155:0",
        "eip155:",
    ] {
        let mut q = p.clone();
        q.chain_id = odd.into();
        refused(&q, &expect(), "chainId");
        assert!(q.message().is_err(), "{odd}");
    }
    let one = resigned(&p, &|q| q.chain_id = "eip155:1".into());
    assert!(one.verify(&expect()).is_ok());
}

#[test]
fn a_signature_by_another_key_or_over_other_fields_is_refused() {
    let p = signed();
    let mut other = sign(
        &SigningKey::from_slice(&[0x22; 32]).unwrap(),
        &challenge("a1b2c3d4e5f67890"),
    )
    .unwrap();
    other.address = p.address.clone();
    refused(&other, &expect(), "not the address's");
    let mut moved = p.clone();
    moved.uri = "http://127.0.0.1:3000/v1/esim/8901260000000000027".into();
    refused(&moved, &expect(), "not the address's");
}

proptest! {
    #[test]
    fn any_header_parses_or_refuses_without_panicking(s in ".{0,300}") {
        if let Ok(p) = SiwxProof::from_header(&s) {
            let _ = p.verify(&expect());
        }
    }

    #[test]
    fn any_edit_of_a_signed_field_is_refused(nonce in "[a-zA-Z0-9]{8,64}", stmt in "[ -~]{0,40}") {
        let p = signed();
        let mut q = p.clone();
        q.nonce = nonce.clone();
        q.statement = Some(stmt.clone());
        if q.nonce != p.nonce || q.statement != p.statement {
            prop_assert!(q.verify(&expect()).is_err());
        }
    }
}

#[test]
fn origin_and_host_of_a_url() {
    assert_eq!(
        origin_of("http://127.0.0.1:3000/v1/esim/1?x=1"),
        Some(("http://127.0.0.1:3000", "127.0.0.1:3000"))
    );
    assert_eq!(
        origin_of("https://api.example.com"),
        Some(("https://api.example.com", "api.example.com"))
    );
    assert_eq!(origin_of("/v1/esim/1"), None);
    assert_eq!(origin_of("http:///x"), None);
}

#[test]
fn extreme_clocks_refuse_without_overflow() {
    // Found by the `auth_credentials` fuzz target: `now + skew` overflowed at the end of time.
    let p = signed();
    refused(
        &p,
        &Expect {
            now: u64::MAX,
            ..expect()
        },
        "expired",
    );
    refused(&p, &Expect { now: 0, ..expect() }, "future");
}

#[test]
fn sign_ins_name_the_configured_origins_or_a_loopback_request_s_own() {
    assert_eq!(
        expected_origins(
            Ok(Some("https://esim.example.com, http://10.0.0.5:3000")),
            "http://evil.com/v1/esim",
            Some("203.0.113.9:5000"),
        ),
        Ok(vec![
            ("https://esim.example.com", "esim.example.com"),
            ("http://10.0.0.5:3000", "10.0.0.5:3000")
        ]),
        "the configured origins, whatever the request's Host says"
    );
    assert!(expected_origins(Ok(Some(" , ")), "http://127.0.0.1/", Some("127.0.0.1:1")).is_err());
    for local in [
        "http://127.0.0.1:3000/v1/esim",
        "http://localhost/x",
        "http://[::1]:8080/",
        // IPv4 loopback mapped into IPv6, which the agent takes for loopback (a fresh-user trial).
        "http://[::ffff:127.0.0.1]:3000/",
    ] {
        let (origin, _) = origin_of(local).unwrap();
        for client in ["127.0.0.1:40000", "[::1]:40000", "[::ffff:127.0.0.1]:40000"] {
            assert_eq!(
                expected_origins(Ok(None), local, Some(client)).unwrap()[0].0,
                origin,
                "{local}"
            );
        }
        // A loopback Host from a remote peer, or from a peer nobody named: the Host header is the client's.
        for client in [Some("203.0.113.9:5000"), Some("not an address"), None] {
            let e = expected_origins(Ok(None), local, client).unwrap_err();
            assert!(
                e.to_string().contains("public_origins"),
                "{local} {client:?}: {e}"
            );
        }
    }
    for remote in [
        "http://evil.com/v1/esim",
        "http://10.0.0.5:3000/",
        "http://127.0.0.1.evil.com/",
        "http://[::ffff:10.0.0.5]:3000/",
    ] {
        let e = expected_origins(Ok(None), remote, Some("127.0.0.1:40000")).unwrap_err();
        assert!(e.to_string().contains("public_origins"), "{remote}: {e}");
    }
}

/// A variable provider that fails is not an unset variable: a loopback request from a loopback address (a
/// reverse proxy on the same machine) is refused with a 503, not checked against its own origin (before, it
/// was: the failure read as "unset").
#[test]
fn sign_ins_are_unavailable_while_the_origins_cannot_be_read() {
    let e = expected_origins(
        Err("the variable public_origins could not be read from its provider".into()),
        "http://127.0.0.1:3000/v1/esim",
        Some("127.0.0.1:40000"),
    )
    .unwrap_err();
    assert_eq!(e.status(), 503, "{e}");
    assert!(e.to_string().contains("public_origins"), "{e}");
}

#[test]
fn a_proof_verifies_for_any_of_the_service_s_origins_else_names_the_first_refusal() {
    let p = signed();
    let ours = ("http://127.0.0.1:3000", "127.0.0.1:3000");
    let other = ("https://esim.example.com", "esim.example.com");
    let path = "/v1/esim/8901260000000000019";
    assert_eq!(p.verify_for(&[other, ours], path, NOW), p.verify(&expect()));
    let refused = p.verify_for(&[other], path, NOW).unwrap_err();
    assert!(refused.to_string().contains("domain"), "{refused}");
    assert_eq!(p.verify_for(&[], path, NOW), Err(AuthError::Missing));
    // Made for the SIM's page: it does not open the SIM's other routes.
    let other_route = p
        .verify_for(&[ours], "/v1/esim/8901260000000000019/terminate", NOW)
        .unwrap_err();
    assert!(other_route.to_string().contains("route"), "{other_route}");
    assert!(p.verify_for(&[ours], "/v1/esim", NOW).is_err());
    // The request's query is not part of the route.
    assert_eq!(path_of("http://h:1/v1/esim?limit=5#x"), "/v1/esim");
    assert_eq!(path_of("http://h:1"), "/");
    assert_eq!(path_of("http://h:1/?a=b"), "/");
}

#[test]
fn public_origins_problems_name_every_entry_that_is_not_a_bare_origin() {
    assert!(origin_problems("https://esim402.example, http://127.0.0.1:3000").is_empty());
    // A path (its origin is still taken) and a bare host (skipped): both named.
    let p = origin_problems("https://esim402.example/v1, esim402.example");
    assert_eq!(p.len(), 2, "{p:?}");
    assert!(p[0].contains("https://esim402.example/v1"), "{p:?}");
    assert!(p[1].contains("\"esim402.example\""), "{p:?}");
    // Nothing usable: every sign-in refused, said once more.
    let p = origin_problems("esim402.example");
    assert_eq!(p.len(), 2, "{p:?}");
    assert!(p[1].contains("names no origin"), "{p:?}");
    // Two bad entries beside a good one: both named, the list still names an origin.
    let p = origin_problems("https://ok.example, ftp:/x, https://x.example/p");
    assert_eq!(p.len(), 2, "{p:?}");
    assert_eq!(
        origin_problems(" , "),
        ["public_origins names no origin: every wallet sign-in is refused"]
    );
}

/// A 402's `resource` is named on the deployment's public origin, whatever Host the client sent (a fresh-user
/// trial, thirty-first session: `Host: evil.example:666` came back in the challenge); unset, or the request's
/// own origin listed, the request URL as it came.
#[test]
fn the_resource_url_is_on_a_public_origin() {
    let url = "http://evil.example:666/v1/esim/activate?region=us-west";
    let public = Some("https://api.example.com, https://alt.example.com");
    assert_eq!(
        public_url(public, url),
        "https://api.example.com/v1/esim/activate?region=us-west"
    );
    assert_eq!(
        public_url(public, "https://alt.example.com/v1/esim/1/data"),
        "https://alt.example.com/v1/esim/1/data"
    );
    assert_eq!(public_url(None, url), url);
    assert_eq!(
        public_url(Some(" , "), url),
        url,
        "names no origin: as it came"
    );
    assert_eq!(public_url(public, "not a url"), "not a url");
}
