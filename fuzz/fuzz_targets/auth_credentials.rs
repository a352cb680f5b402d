//! The ownership credentials: the `SIGN-IN-WITH-X` header (base64 JSON proof, EIP-4361 message, every check and
//! the EIP-191 recovery), access-token form and matching, the carriers' callback credentials, and the `GET`
//! form of the activation request (its query string).
#![no_main]

use esim402_core::ActivationRequest;
use esim402_core::auth::callback::CallbackCredentials;
use esim402_core::auth::siwx::{Expect, SiwxProof, origin_of};
use esim402_core::auth::token;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(proof) = SiwxProof::from_header(text) {
        // Round trip: a proof that decodes encodes to a header that decodes to the same proof.
        let again = SiwxProof::from_header(&proof.to_header()).expect("re-encoded proof decodes");
        assert_eq!(again, proof);
        let _ = proof.message();
        for now in [0, 1_790_000_000, u64::MAX] {
            for path in [None, Some("/v1/esim/8901260000000000014")] {
                let _ = proof.verify(&Expect {
                    domain: "127.0.0.1:3000",
                    origin: "http://127.0.0.1:3000",
                    path,
                    now,
                });
            }
        }
    }
    let _ = origin_of(text);
    if token::looks_like_token(text) {
        let _ = token::matches(&Default::default(), text);
    }
    if let Ok(c) = CallbackCredentials::parse(text) {
        let _ = c.carrier_of(Some(text));
        let _ = format!("{c:?}");
    }
    let _ = ActivationRequest::from_query(text);
});
