//! Tests of `keyring.rs`: rotation, store binding, the generated key, and the secrets' checks.

use super::*;
use crate::chain::Network;
use crate::invoice::{InvoiceStatus, Purchase};
use crate::money::UsdcAmount;

const A: &str = "secret A and long enough";
const B: &str = "secret B and long enough";
const C: &str = "secret C and long enough";
const SALT: [u8; 32] = [1; 32];

fn terms() -> Terms {
    Terms {
        purchase: Purchase::TopUp {
            iccid: "8901260000000000014".into(),
            data_mb: 50,
            payer: None,
        },
        amount: UsdcAmount::from_micros(210_000),
        networks: vec![Network::parse("eip155:8453").unwrap()],
        pay_to: "0x3C44CdDdB6a900fa2b585dd299e03d12FA4293BC"
            .parse()
            .unwrap(),
        created_at: 1_700_000_000,
        expires_at: 1_700_000_900,
        nonce: 42,
        quoted: None,
    }
}

fn ring(current: Option<&str>, previous: Option<&str>, generated: Option<InvoiceKey>) -> Keyring {
    let secrets = Secrets::parse(current, previous).unwrap();
    Keyring::configured(&secrets, Some(&SALT), generated).unwrap()
}

/// Rotating `invoice_secret` from A to B with A listed as previous: ids sealed under A still open, new ids
/// are sealed under B only (A alone does not open them), and an id sealed under a key not listed does not.
#[test]
fn a_rotated_secret_still_opens_its_ids_and_seals_nothing_new() {
    let old = ring(Some(A), None, None);
    let paid = old.seal(&terms()).unwrap();
    let rotated = ring(Some(B), Some(A), None);
    assert_eq!(rotated.open(&paid).unwrap().terms, terms());

    let fresh = rotated.seal(&terms()).unwrap();
    assert_eq!(token::open(&fresh, rotated.current()).unwrap(), terms());
    assert_eq!(old.open(&fresh), Err(TokenError::BadMac));
    assert_eq!(
        ring(Some(B), None, None).open(&fresh).unwrap().terms,
        terms()
    );

    // Without A listed, the old id is not ours; nor is one under a secret never configured here.
    assert_eq!(
        ring(Some(B), None, None).open(&paid),
        Err(TokenError::BadMac)
    );
    let foreign = ring(Some(C), None, None).seal(&terms()).unwrap();
    assert_eq!(rotated.open(&foreign), Err(TokenError::BadMac));
    // Several previous secrets, blanks and spaces around them ignored.
    let many = ring(Some(C), Some(&format!(" {B} ,, {A} ,")), None);
    assert_eq!(many.open(&paid).unwrap().terms, terms());
    assert_eq!(many.open(&fresh).unwrap().terms, terms());
}

/// One secret, two stores: an id sealed by one does not open at the other (a payment proved there is
/// claimed in that store only); two instances on one store (one salt) agree.
#[test]
fn ids_are_bound_to_the_store_that_sealed_them() {
    let secrets = Secrets::parse(Some(A), None).unwrap();
    let here = Keyring::configured(&secrets, Some(&SALT), None).unwrap();
    let there = Keyring::configured(&secrets, Some(&[2; 32]), None).unwrap();
    let id = here.seal(&terms()).unwrap();
    assert_eq!(there.open(&id), Err(TokenError::BadMac));
    let peer = Keyring::configured(&secrets, Some(&SALT), None).unwrap();
    assert_eq!(peer.open(&id).unwrap().terms, terms());
    // Not the un-salted key, and neither is a previous secret's salted one.
    assert_ne!(here.current(), &InvoiceKey::derive(A.as_bytes()));
    let rotated = ring(Some(B), Some(A), None);
    assert!(rotated.opens_with(here.current()));
    assert!(!rotated.opens_with(there.current()));
}

/// Ids sealed before ids were bound to a store (the secret's un-salted key) still open, for the current
/// secret and for previous ones; none is sealed that way any more.
#[test]
fn ids_sealed_before_the_salt_still_open() {
    let legacy_a = token::seal(&terms(), &InvoiceKey::derive(A.as_bytes())).unwrap();
    let legacy_b = token::seal(&terms(), &InvoiceKey::derive(B.as_bytes())).unwrap();
    let rotated = ring(Some(B), Some(A), None);
    assert_eq!(rotated.open(&legacy_a).unwrap().terms, terms());
    assert_eq!(rotated.open(&legacy_b).unwrap().terms, terms());
    assert_ne!(rotated.seal(&terms()).unwrap(), legacy_b);
    // Such ids are not bound to this store: the caller takes them only for payments it holds a record of.
    assert!(rotated.open(&legacy_a).unwrap().legacy);
    assert!(rotated.open(&legacy_b).unwrap().legacy);
    let fresh = rotated.seal(&terms()).unwrap();
    assert!(!rotated.open(&fresh).unwrap().legacy);
}

/// Without a secret the store's generated key seals (its ids are this store's, not legacy). Once a secret is
/// set it only opens, and only as legacy: the switch orphans no payment already recorded (resumes, refunds,
/// reads), but an id under it takes no new payment. The key is kept in the store in plain form, so whoever
/// read the store (a backup) could seal ids under it with any terms and `pay_to`; before, those stayed payable
/// for ever after a secret was set.
#[test]
fn the_generated_key_seals_without_a_secret_and_only_opens_as_legacy_after_one_is_set() {
    let generated = InvoiceKey::new([7; 32]);
    let before = Keyring::configured(&Secrets::default(), None, Some(generated.clone())).unwrap();
    assert_eq!(before.current(), &generated);
    let id = before.seal(&terms()).unwrap();
    assert!(!before.open(&id).unwrap().legacy);

    let after = ring(Some(A), None, Some(generated.clone()));
    assert_ne!(after.current(), &generated);
    let opened = after.open(&id).unwrap();
    assert_eq!(opened.terms, terms());
    assert!(opened.legacy);
    assert!(!opened.ours_at(InvoiceStatus::Open));
    assert!(opened.ours_at(InvoiceStatus::Paid));
    // Also with previous secrets listed; what the secret seals is not legacy.
    let rotated = ring(Some(B), Some(A), Some(generated.clone()));
    assert!(rotated.open(&id).unwrap().legacy);
    assert!(!after.open(&after.seal(&terms()).unwrap()).unwrap().legacy);
    assert_eq!(
        before.open(&after.seal(&terms()).unwrap()),
        Err(TokenError::BadMac)
    );
    // A previous secret alone (back to the generated key): the generated key seals, the secret opens.
    let back = ring(None, Some(A), Some(generated.clone()));
    assert_eq!(back.current(), &generated);
    assert!(back.opens_with(after.current()));
    assert!(!back.open(&id).unwrap().legacy);
}

/// An id a legacy key opened is this store's only for a payment it holds (pending, paid, refunded); one a
/// bound key opened, whatever its status.
#[test]
fn a_legacy_id_is_ours_only_for_a_payment_the_store_holds() {
    let legacy = Opened {
        terms: terms(),
        legacy: true,
    };
    let bound = Opened {
        terms: terms(),
        legacy: false,
    };
    for status in [
        InvoiceStatus::Open,
        InvoiceStatus::Pending,
        InvoiceStatus::Paid,
        InvoiceStatus::Expired,
        InvoiceStatus::Refunded,
        InvoiceStatus::Failed,
    ] {
        let held = !matches!(
            status,
            InvoiceStatus::Open | InvoiceStatus::Expired | InvoiceStatus::Failed
        );
        assert_eq!(legacy.ours_at(status), held, "{status:?}");
        assert!(bound.ours_at(status), "{status:?}");
    }
}

#[test]
fn a_keyring_needs_a_key_to_seal_with_and_the_salt_with_secrets() {
    assert_eq!(
        Keyring::configured(&Secrets::default(), None, None).unwrap_err(),
        KeyringError::NoKey
    );
    let secrets = Secrets::parse(None, Some(A)).unwrap();
    assert_eq!(
        Keyring::configured(&secrets, Some(&SALT), None).unwrap_err(),
        KeyringError::NoKey
    );
    let secrets = Secrets::parse(Some(A), None).unwrap();
    assert_eq!(
        Keyring::configured(&secrets, None, None).unwrap_err(),
        KeyringError::NoSalt
    );
    // The same key twice is held once.
    let twice = ring(Some(A), Some(A), None);
    assert_eq!(format!("{twice:?}"), "Keyring(2 keys)");
}

/// A key held as legacy and then accepted again stays legacy and is held once (no key is in both lists): its
/// ids still open only as legacy, and a bound key accepted again stays bound.
#[test]
fn a_key_is_held_once_in_the_list_it_came_in_by() {
    let bound = InvoiceKey::derive_for_store(A.as_bytes(), &SALT);
    let legacy = InvoiceKey::derive(B.as_bytes());
    let mut ring = Keyring::new(bound.clone());
    ring.accept_legacy(legacy.clone());
    ring.accept(legacy.clone());
    ring.accept(bound.clone());
    ring.accept_legacy(bound.clone());
    assert_eq!(format!("{ring:?}"), "Keyring(2 keys)");
    let old = token::seal(&terms(), &legacy).unwrap();
    assert!(ring.open(&old).unwrap().legacy);
    let new = token::seal(&terms(), &bound).unwrap();
    assert!(!ring.open(&new).unwrap().legacy);
    assert_eq!(ring.current(), &bound);
}

/// Secrets shorter than the minimum are refused naming the variable (and the entry), never showing a value.
#[test]
fn short_secrets_are_refused_without_showing_them() {
    let e = Secrets::parse(Some("short-secret"), None).unwrap_err();
    assert_eq!(e.variable, "invoice_secret");
    assert!(!e.to_string().contains("short-secret"), "{e}");
    let e = Secrets::parse(Some(A), Some(&format!("{B},tiny-secret"))).unwrap_err();
    assert_eq!(e.variable, "invoice_secret_previous");
    assert!(e.reason.contains("entry 2"), "{e}");
    assert!(!e.to_string().contains("tiny") && !e.to_string().contains(B));
    assert!(Secrets::parse(None, Some(" , ")).unwrap().is_empty());
    let shown = format!("{:?}", Secrets::parse(Some(A), Some(B)).unwrap());
    assert!(!shown.contains(A) && !shown.contains(B), "{shown}");
}

/// A comma in `invoice_secret`: moved into `invoice_secret_previous` (a comma-separated list) on rotation it
/// would split into two keys, neither the one its ids were sealed under, and every id it sealed would stop
/// opening. Refused when read, naming the variable and the rule, never the value. Before, it was taken whole.
#[test]
fn a_comma_in_the_current_secret_is_refused_without_showing_it() {
    let e = Secrets::parse(Some("first-half-k3y,second-half-k3y"), None).unwrap_err();
    assert_eq!(e.variable, "invoice_secret");
    assert!(e.reason.contains("comma"), "{e}");
    assert!(!e.to_string().contains("k3y"), "{e}");
    let e = Secrets::parse(Some(&format!("{A},")), Some(B)).unwrap_err();
    assert_eq!(e.variable, "invoice_secret");
    assert!(!e.to_string().contains(A), "{e}");
    // Rotated to B, a secret without a comma listed as previous opens what it sealed.
    let id = ring(Some(A), None, None).seal(&terms()).unwrap();
    assert_eq!(
        ring(Some(B), Some(A), None).open(&id).unwrap().terms,
        terms()
    );
}

/// A secret with a comma, set before commas were refused, is rotated out by listing it in
/// `invoice_secret_previous` as a JSON array: the ids it sealed (bound to the store, and un-salted ones as
/// legacy) still open, as do those of the array's other entries, while the comma-separated form splits it into
/// two keys that open nothing of it. The refusal of such a current secret says how. Before, the JSON form did
/// not exist: the secret could only be kept (refused at start-up) or dropped with every id it sealed.
#[test]
fn a_secret_with_a_comma_is_rotated_out_through_the_json_form() {
    const COMMA: &str = "first-half-of-the-old,second-half-of-the-old";
    let bound = InvoiceKey::derive_for_store(COMMA.as_bytes(), &SALT);
    let id = token::seal(&terms(), &bound).unwrap();
    let unsalted = token::seal(&terms(), &InvoiceKey::derive(COMMA.as_bytes())).unwrap();
    let other = ring(Some(C), None, None).seal(&terms()).unwrap();

    let listed = format!(r#" ["{COMMA}", "{C}"] "#);
    let rotated = ring(Some(B), Some(&listed), None);
    assert_eq!(
        rotated.open(&id).unwrap(),
        Opened {
            terms: terms(),
            legacy: false
        }
    );
    assert!(rotated.open(&unsalted).unwrap().legacy);
    assert!(!rotated.open(&other).unwrap().legacy);
    assert_eq!(rotated.current(), ring(Some(B), None, None).current());
    // Escapes and blanks around an entry as JSON allows; an empty array lists nothing.
    let escaped = ring(
        Some(B),
        Some(r#"["  first-half-of-the-old\u002csecond-half-of-the-old "]"#),
        None,
    );
    assert!(!escaped.open(&id).unwrap().legacy);
    assert!(Secrets::parse(None, Some("[]")).unwrap().is_empty());
    // The comma-separated form splits it: two other keys.
    let split = ring(Some(B), Some(COMMA), None);
    assert_eq!(split.open(&id), Err(TokenError::BadMac));

    // The refusal of it as the current secret says how to rotate it out.
    let e = Secrets::parse(Some(COMMA), None).unwrap_err();
    assert!(
        e.reason.contains("invoice_secret_previous") && e.reason.contains("JSON array"),
        "{e}"
    );
    assert!(!e.to_string().contains("half-of"), "{e}");
}

/// A malformed JSON form is refused naming the variable and the rule, never a fragment of the value (a JSON
/// parser's message may quote one); a short entry is refused by its position, as in the comma form.
#[test]
fn a_malformed_json_list_is_refused_without_showing_any_of_it() {
    for bad in [
        r#"["first-half-of-the-old,second-half", 4242424242]"#,
        r#"["first-half-of-the-old,second-half"#,
        r#"[first-half-of-the-old-unquoted]"#,
        r#"["first-half-of-the-old,second-half"] trailing-words"#,
        r#"[["first-half-of-the-old"]]"#,
    ] {
        let e = Secrets::parse(Some(A), Some(bad)).unwrap_err();
        assert_eq!(e.variable, "invoice_secret_previous", "{bad}");
        let shown = e.to_string();
        for fragment in ["first-half", "half-of", "4242", "trailing", "unquoted"] {
            assert!(!shown.contains(fragment), "{bad}: {shown}");
        }
    }
    let e = Secrets::parse(Some(A), Some(&format!(r#"["{B}", "tiny-secret"]"#))).unwrap_err();
    assert_eq!(e.variable, "invoice_secret_previous");
    assert!(e.reason.contains("entry 2"), "{e}");
    assert!(!e.to_string().contains("tiny") && !e.to_string().contains(B));
}
