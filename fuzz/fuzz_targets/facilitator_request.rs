//! Facilitator `POST /verify` and `POST /settle` bodies: parsed as the facilitator answers them, re-encoded and
//! parsed again, then run through `exact` verification against the built-in networks (signature recovery,
//! EIP-712 hashing, amount and time checks) with no chain facts.
#![no_main]

use esim402_core::x402::exact::verify_request;
use esim402_core::x402::networks::Networks;
use esim402_core::x402::wire::{FacilitatorRequest, VerifyRequest};
use esim402_fuzz::NOW;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(FacilitatorRequest::Request(request)) = FacilitatorRequest::parse(data) {
        let again = VerifyRequest::from_json(request.to_json().as_bytes())
            .expect("a re-encoded facilitator request parses");
        assert_eq!(again, *request);
        let _ = verify_request(&request, Networks::builtin(), NOW, None);
    }
    let _ = VerifyRequest::from_json(data);
});
