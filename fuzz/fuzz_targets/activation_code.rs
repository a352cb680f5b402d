//! LPA activation codes (`LPA:1$<SM-DP+ address>$<MatchingID>[$<OID>[$<CC flag>[$...]]]`), as scanned from a
//! QR code or returned by a carrier, and their parts. A parsed code prints in canonical form, which must parse
//! back equal, with and without the `LPA:` prefix.
#![no_main]

use esim402_core::esim::{ActivationCode, Fqdn, MatchingId};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(code) = ActivationCode::parse(text) {
        let bare = code.to_string();
        assert_eq!(ActivationCode::parse(&bare).as_ref(), Ok(&code), "{bare}");
        let qr = code.to_qr_string();
        assert_eq!(ActivationCode::parse(&qr).as_ref(), Ok(&code), "{qr}");
        if let Ok(built) = ActivationCode::new(
            code.smdp_address().clone(),
            code.matching_id().clone(),
            code.oid(),
            code.cc_required(),
        ) && code.v3_fields().is_empty()
        {
            assert_eq!(built, code);
        }
    }
    if let Ok(fqdn) = Fqdn::parse(text) {
        assert_eq!(Fqdn::parse(fqdn.as_str()).as_ref(), Ok(&fqdn));
    }
    if let Ok(id) = MatchingId::parse(text) {
        assert_eq!(MatchingId::parse(id.as_str()).as_ref(), Ok(&id));
    }
});
