//! SIM identifiers from carriers, devices and clients: ICCID (Luhn, `F` padding, nibble-swapped BCD), EID
//! (ISO 7064 mod 97-10) and PLMN (`MCC-MNC`, and its TS 24.008 BCD octets). The encoders are checked against
//! the parsers both ways.
#![no_main]

use esim402_core::esim::{Eid, Iccid, Plmn};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(octets) = <[u8; 3]>::try_from(data)
        && let Ok(plmn) = Plmn::from_bcd_octets(octets)
    {
        assert_eq!(Plmn::parse(plmn.as_str()).as_ref(), Ok(&plmn));
        assert_eq!(plmn.to_bcd_octets(), octets, "{}", plmn.as_str());
    }
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    for iccid in [Iccid::parse(text), Iccid::parse_unchecked_luhn(text)]
        .into_iter()
        .flatten()
    {
        let bcd = iccid.to_swapped_bcd_hex();
        if Iccid::parse(iccid.as_str()).is_ok() {
            assert_eq!(
                Iccid::from_swapped_bcd_hex(&bcd).as_ref(),
                Ok(&iccid),
                "{bcd}"
            );
        }
        assert_eq!(
            Iccid::parse_unchecked_luhn(iccid.as_str()).as_ref(),
            Ok(&iccid)
        );
    }
    if let Ok(iccid) = Iccid::from_swapped_bcd_hex(text) {
        assert_eq!(Iccid::parse(iccid.as_str()).as_ref(), Ok(&iccid));
    }
    if let Ok(iccid) = Iccid::with_check_digit(text) {
        assert_eq!(Iccid::parse(iccid.as_str()).as_ref(), Ok(&iccid));
    }
    if let Ok(eid) = Eid::parse(text) {
        // The check accepts any `mod 97 == 1` number (as IBANs are checked); only 02..=98 are ever issued.
        let canonical =
            Eid::with_check_digits(&text[..30]).expect("a valid EID's body takes check digits");
        let issued = text[30..]
            .parse::<u8>()
            .is_ok_and(|c| (2..=98).contains(&c));
        assert!(!issued || canonical == eid, "{text}");
    }
    if let Ok(eid) = Eid::with_check_digits(text) {
        assert_eq!(Eid::parse(eid.as_str()).as_ref(), Ok(&eid));
    }
    if let Ok(plmn) = Plmn::parse(text) {
        assert_eq!(
            Plmn::from_bcd_octets(plmn.to_bcd_octets()).as_ref(),
            Ok(&plmn)
        );
    }
});
