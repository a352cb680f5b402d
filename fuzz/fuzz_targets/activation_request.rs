//! The activation request body (`POST /v1/esim/activate`): region, bundle size, carrier, EID, payer, networks,
//! failover flag and invoice id, each validated.
#![no_main]

use esim402_core::ActivationRequest;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(request) = ActivationRequest::parse(data) {
        let _ = request.failover_allowed();
    }
});
