//! A usage receipt batch body (`{"receipts": [...]}` or a bare array), parsed receipt by receipt as metering
//! ingests it.
#![no_main]

use esim402_core::usage::ingest::parse_batch;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(body) = std::str::from_utf8(data) else {
        return;
    };
    for receipt in parse_batch(body).into_iter().flatten().flatten() {
        let again = receipt
            .to_wire()
            .parse()
            .expect("a parsed receipt's wire form parses");
        assert_eq!(again, receipt);
    }
});
