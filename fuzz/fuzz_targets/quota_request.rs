//! The quota request body (`POST /v1/esim/{iccid}/data`).
#![no_main]

use esim402_core::usage::quota::QuotaRequest;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = QuotaRequest::parse(data);
});
