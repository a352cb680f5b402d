//! ICCIDs (ITU-T E.118): `89` + country calling code + issuer + account + Luhn check digit, 18–20 digits.
//!
//! Parse with [`Iccid::parse`] (Luhn checked; a 19-digit ICCID's trailing `F` pad is normalised away); convert the
//! raw 10-byte nibble-swapped BCD form with [`Iccid::from_swapped_bcd_hex`] / [`Iccid::to_swapped_bcd_hex`].
//! [`Iccid::with_check_digit`] mints valid ICCIDs for the SM-DP+ simulator and tests.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// A validated ICCID: 18–20 decimal digits starting with `89`, stored without any `F` pad.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Iccid(String);

/// Why an ICCID was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum IccidError {
    /// Wrong length or a non-digit character.
    #[error("iccid must be 18 to 20 decimal digits (a 19-digit iccid may carry a trailing F pad)")]
    Format,
    /// Does not start with the telecom industry identifier `89`.
    #[error("iccid must start with 89")]
    Prefix,
    /// The Luhn check digit does not match.
    #[error("iccid check digit is wrong (Luhn)")]
    CheckDigit,
    /// The body given to [`Iccid::with_check_digit`] is not 17–19 digits starting with `89`.
    #[error("iccid body must be 17 to 19 decimal digits starting with 89")]
    Body,
    /// Not 20 hex digits of nibble-swapped BCD with only trailing `F` padding.
    #[error("swapped-BCD iccid must be 20 hex digits of BCD, padded with trailing F only")]
    Bcd,
}

impl Iccid {
    /// Parse an ICCID and verify its Luhn check digit. `F`/`f` after exactly 19 digits is accepted and dropped.
    pub fn parse(s: &str) -> Result<Self, IccidError> {
        let digits = normalise(s)?;
        if !luhn_sum(digits, false).is_multiple_of(10) {
            return Err(IccidError::CheckDigit);
        }
        Ok(Self(digits.to_owned()))
    }

    /// Parse without the Luhn check, for legacy inventories whose ICCIDs carry no check digit. Length, digits
    /// and the `89` prefix are still enforced. Use only for data imported from such systems, never for input
    /// from clients (a typo would go unnoticed).
    pub fn parse_unchecked_luhn(s: &str) -> Result<Self, IccidError> {
        normalise(s).map(|d| Self(d.to_owned()))
    }

    /// Append the Luhn check digit to `body` (17–19 digits starting with `89`).
    pub fn with_check_digit(body: &str) -> Result<Self, IccidError> {
        if !(17..=19).contains(&body.len()) || !all_digits(body) || !body.starts_with("89") {
            return Err(IccidError::Body);
        }
        let check = (10 - luhn_sum(body, true) % 10) % 10;
        Ok(Self(format!("{body}{check}")))
    }

    /// Decode the raw EF.ICCID form: 10 bytes as 20 hex digits, each byte's nibbles swapped, `F`-padded
    /// (`984474680000730771F0` → `8944478600003770170`). The result is Luhn-checked.
    pub fn from_swapped_bcd_hex(hex: &str) -> Result<Self, IccidError> {
        let bytes = hex.as_bytes();
        if bytes.len() != 20 {
            return Err(IccidError::Bcd);
        }
        let mut nibbles = String::with_capacity(20);
        for pair in bytes.chunks_exact(2) {
            for &b in pair.iter().rev() {
                nibbles.push(char::from(b).to_ascii_uppercase());
            }
        }
        let digits = nibbles.trim_end_matches('F');
        if nibbles.len() - digits.len() > 2 || !all_digits(digits) {
            return Err(IccidError::Bcd);
        }
        Self::parse(digits)
    }

    /// Encode as 10 bytes of nibble-swapped BCD (upper-case hex), `F`-padded to 20 nibbles.
    pub fn to_swapped_bcd_hex(&self) -> String {
        let mut padded = self.0.clone();
        while padded.len() < 20 {
            padded.push('F');
        }
        padded
            .as_bytes()
            .chunks_exact(2)
            .flat_map(|pair| [char::from(pair[1]), char::from(pair[0])])
            .collect()
    }

    /// The digits, without padding.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

fn all_digits(s: &str) -> bool {
    s.bytes().all(|b| b.is_ascii_digit())
}

/// Strips a valid `F` pad and checks length, charset and prefix.
fn normalise(s: &str) -> Result<&str, IccidError> {
    let digits = match s.strip_suffix(['F', 'f']) {
        Some(d) if d.len() == 19 => d,
        Some(_) => return Err(IccidError::Format),
        None => s,
    };
    if !(18..=20).contains(&digits.len()) || !all_digits(digits) {
        return Err(IccidError::Format);
    }
    if !digits.starts_with("89") {
        return Err(IccidError::Prefix);
    }
    Ok(digits)
}

/// Luhn sum of ASCII `digits`, doubling every second digit from the right; `double_rightmost` is true when
/// computing the check digit for a body (the body's last digit sits in a doubled position once appended).
fn luhn_sum(digits: &str, double_rightmost: bool) -> u32 {
    digits
        .bytes()
        .rev()
        .enumerate()
        .map(|(i, b)| {
            let d = u32::from(b - b'0');
            if (i % 2 == 0) == double_rightmost {
                let x = d * 2;
                if x > 9 { x - 9 } else { x }
            } else {
                d
            }
        })
        .sum()
}

impl FromStr for Iccid {
    type Err = IccidError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

impl TryFrom<String> for Iccid {
    type Error = IccidError;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        Self::parse(&s)
    }
}

impl From<Iccid> for String {
    fn from(v: Iccid) -> Self {
        v.0
    }
}

impl fmt::Display for Iccid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const EXAMPLE: &str = "8944478600003770170";

    #[test]
    fn parses_and_normalises_the_f_pad() {
        assert_eq!(Iccid::parse(EXAMPLE).unwrap().as_str(), EXAMPLE);
        assert_eq!(
            Iccid::parse("8944478600003770170F").unwrap().as_str(),
            EXAMPLE
        );
        assert_eq!(
            Iccid::parse("8944478600003770170f").unwrap().as_str(),
            EXAMPLE
        );
    }

    #[test]
    fn rejections_name_the_problem() {
        for (bad, err) in [
            ("", IccidError::Format),
            ("89444786000037701", IccidError::Format),
            ("894447860000377017012", IccidError::Format),
            ("894447860000377017F", IccidError::Format),
            ("8944478600003770170FF", IccidError::Format),
            ("89444786000037701 0", IccidError::Format),
            ("7944478600003770170", IccidError::Prefix),
            ("8944478600003770171", IccidError::CheckDigit),
        ] {
            assert_eq!(Iccid::parse(bad), Err(err), "{bad:?}");
        }
    }

    #[test]
    fn swapped_bcd_matches_the_reference_example() {
        let iccid = Iccid::from_swapped_bcd_hex("984474680000730771F0").unwrap();
        assert_eq!(iccid.as_str(), EXAMPLE);
        assert_eq!(iccid.to_swapped_bcd_hex(), "984474680000730771F0");
        assert_eq!(
            Iccid::from_swapped_bcd_hex("984474680000730771f0").unwrap(),
            iccid
        );
        for bad in [
            "984474680000730771F",
            "98447468000073077F10",
            "9844746800007307710G",
            "FFFFFFFFFFFFFFFFFFFF",
        ] {
            assert!(Iccid::from_swapped_bcd_hex(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn legacy_bypass_skips_only_the_luhn_check() {
        assert!(Iccid::parse_unchecked_luhn("8944478600003770171").is_ok());
        assert_eq!(
            Iccid::parse_unchecked_luhn("1944478600003770171"),
            Err(IccidError::Prefix)
        );
    }

    #[test]
    fn mints_valid_iccids() {
        assert_eq!(
            Iccid::with_check_digit("894447860000377017")
                .unwrap()
                .as_str(),
            EXAMPLE
        );
        assert_eq!(
            Iccid::with_check_digit("12345678901234567"),
            Err(IccidError::Body)
        );
        assert_eq!(Iccid::with_check_digit("8912"), Err(IccidError::Body));
    }

    #[test]
    fn serde_is_a_validated_string() {
        let iccid: Iccid = serde_json::from_str("\"8944478600003770170F\"").unwrap();
        assert_eq!(
            serde_json::to_string(&iccid).unwrap(),
            format!("\"{EXAMPLE}\"")
        );
        assert!(serde_json::from_str::<Iccid>("\"8944478600003770171\"").is_err());
    }

    proptest! {
        #[test]
        fn minted_iccids_round_trip(body in "89[0-9]{15,17}") {
            let iccid = Iccid::with_check_digit(&body).unwrap();
            prop_assert_eq!(Iccid::parse(iccid.as_str()).unwrap(), iccid.clone());
            prop_assert_eq!(Iccid::from_swapped_bcd_hex(&iccid.to_swapped_bcd_hex()).unwrap(), iccid);
        }

        #[test]
        fn any_single_digit_change_is_caught(body in "89[0-9]{15,17}", pos in 2usize..20, delta in 1u8..10) {
            let good = Iccid::with_check_digit(&body).unwrap().0;
            let pos = pos % good.len();
            prop_assume!(pos >= 2);
            let mut bytes = good.into_bytes();
            bytes[pos] = b'0' + (bytes[pos] - b'0' + delta) % 10;
            let bad = String::from_utf8(bytes).unwrap();
            prop_assert_eq!(Iccid::parse(&bad), Err(IccidError::CheckDigit));
        }
    }
}
