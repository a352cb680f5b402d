//! x402 JSON messages from peers: payment payloads (v1 and v2, dispatched on `x402Version`), requirements and
//! challenges of both versions, and the facilitator's verify / settle / supported answers. Whatever parses must
//! survive a JSON round trip.
#![no_main]

use esim402_core::x402::wire::{
    PaymentPayload, PaymentRequired, PaymentRequiredV1, PaymentRequirements, PaymentRequirementsV1,
    SettleResponse, SupportedResponse, VerifyResponse,
};
use esim402_fuzz::json_roundtrip;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(payload) = PaymentPayload::from_json(data) {
        let again = PaymentPayload::from_json(payload.to_json().as_bytes())
            .expect("a re-encoded payload parses");
        assert_eq!(again, payload);
    }
    json_roundtrip::<PaymentPayload>(data);
    json_roundtrip::<PaymentRequirements>(data);
    json_roundtrip::<PaymentRequired>(data);
    if let Some(v1) = json_roundtrip::<PaymentRequirementsV1>(data) {
        let _ = v1.to_v2();
    }
    json_roundtrip::<PaymentRequiredV1>(data);
    if let Some(r) = json_roundtrip::<VerifyResponse>(data) {
        let _ = r.reason();
    }
    if let Some(r) = json_roundtrip::<SettleResponse>(data) {
        let _ = (r.reason(), r.is_pending());
    }
    json_roundtrip::<SupportedResponse>(data);
});
