//! x402 payment headers as a resource server receives them (`PAYMENT-SIGNATURE`, `X-PAYMENT`) and as a client
//! receives them (`PAYMENT-REQUIRED`, `PAYMENT-RESPONSE`): the input is tried as the header value itself and,
//! to reach the JSON inside quickly, as the bytes the base64 wraps. A decoded header must re-encode to one that
//! decodes equal.
#![no_main]

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use esim402_core::x402::exact::SignedAuthorization;
use esim402_core::x402::header::{
    decode_payment_required_header, decode_payment_response_header,
    decode_payment_signature_header, decode_x_payment_header, encode_payment_payload_header,
    encode_payment_required_header, encode_payment_response_header,
};
use esim402_core::x402::payment_id::payment_id_of;
use esim402_core::x402::requirements::invoice_id_of;
use libfuzzer_sys::fuzz_target;

fn headers(value: &str) {
    for decode in [decode_payment_signature_header, decode_x_payment_header] {
        if let Ok(payload) = decode(value) {
            let again = decode(&encode_payment_payload_header(&payload))
                .expect("a re-encoded payment header decodes");
            assert_eq!(again, payload);
            let _ = payment_id_of(&payload);
            let _ = invoice_id_of(&payload);
            if let Ok(signed) = SignedAuthorization::parse(payload.exact()) {
                let wire = signed.authorization.to_wire();
                let back = SignedAuthorization::parse(&esim402_core::x402::wire::ExactEvmPayload {
                    signature: payload.exact().signature.clone(),
                    authorization: wire,
                })
                .expect("an authorization's wire form parses");
                assert_eq!(back, signed);
            }
        }
    }
    if let Ok(required) = decode_payment_required_header(value) {
        let again = decode_payment_required_header(&encode_payment_required_header(&required))
            .expect("a re-encoded PAYMENT-REQUIRED decodes");
        assert_eq!(again, required);
    }
    if let Ok(response) = decode_payment_response_header(value) {
        let again = decode_payment_response_header(&encode_payment_response_header(&response))
            .expect("a re-encoded PAYMENT-RESPONSE decodes");
        assert_eq!(again, response);
    }
}

fuzz_target!(|data: &[u8]| {
    if let Ok(value) = std::str::from_utf8(data) {
        headers(value);
    }
    headers(&STANDARD.encode(data));
});
