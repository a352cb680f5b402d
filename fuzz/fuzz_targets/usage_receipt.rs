//! One carrier usage receipt (JSON): its fields parsed (carrier, ICCID, PLMN, session id, 65-byte signature),
//! the wire form round-tripped, and the EIP-712 digest and signer recovered.
#![no_main]

use esim402_core::usage::receipt::WireReceipt;
use esim402_fuzz::json_roundtrip;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some(wire) = json_roundtrip::<WireReceipt>(data) else {
        return;
    };
    let Ok(receipt) = wire.parse() else {
        return;
    };
    let again = receipt
        .to_wire()
        .parse()
        .expect("a parsed receipt's wire form parses");
    assert_eq!(again, receipt);
    let _ = (receipt.total_bytes(), receipt.claim_id(), receipt.signer());
});
