//! Sealed invoice ids (`inv_<terms>.<mac>`), which clients hand back with their payment. The input is tried as
//! an id, opened under a fixed key (a forgery must fail, never panic), and as the sealed terms themselves with
//! a correct MAC computed the way the module documents it, which reaches the postcard decoding behind the MAC:
//! terms that open must seal and open again to equal terms, and a correct MAC is never refused as a bad one.
#![no_main]

use alloy_primitives::keccak256;
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use esim402_core::InvoiceId;
use esim402_core::invoice::token::{InvoiceKey, TokenError, open, seal};
use libfuzzer_sys::fuzz_target;

const KEY: [u8; 32] = [7; 32];

/// `keccak256("esim402/invoice/v1" ‖ key ‖ terms)[..16]` (`invoice::token` module docs).
fn mac(payload: &[u8]) -> [u8; 16] {
    let mut input = b"esim402/invoice/v1".to_vec();
    input.extend_from_slice(&KEY);
    input.extend_from_slice(payload);
    let mut out = [0; 16];
    out.copy_from_slice(&keccak256(&input)[..16]);
    out
}

fuzz_target!(|data: &[u8]| {
    let key = InvoiceKey::new(KEY);
    if let Ok(text) = std::str::from_utf8(data)
        && let Ok(id) = InvoiceId::parse(text)
    {
        let _ = open(&id, &key);
    }
    let token = format!(
        "inv_{}.{}",
        URL_SAFE_NO_PAD.encode(data),
        URL_SAFE_NO_PAD.encode(mac(data))
    );
    let Ok(id) = InvoiceId::parse(&token) else {
        return; // longer than an id may be
    };
    match open(&id, &key) {
        Ok(terms) => {
            let resealed = seal(&terms, &key).expect("opened terms seal");
            assert_eq!(open(&resealed, &key).as_ref(), Ok(&terms));
        }
        Err(e) => assert_ne!(e, TokenError::BadMac, "a correct MAC was refused"),
    }
});
