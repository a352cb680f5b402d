//! EIDs (SGP.02 §2.2.2, SGP.29 §10): exactly 32 decimal digits whose last two are ISO/IEC 7064 MOD 97-10 check
//! digits, so that the whole number mod 97 is 1. [`Eid::with_check_digits`] mints valid EIDs for tests and the
//! simulator.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// A validated EID.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Eid(String);

/// Why an EID was refused. The messages are the API's client-facing texts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum EidError {
    /// Not exactly 32 decimal digits.
    #[error("eid must be exactly 32 decimal digits")]
    Format,
    /// The number mod 97 is not 1.
    #[error("eid check digits are wrong (ISO 7064 mod 97-10)")]
    CheckDigits,
    /// The body given to [`Eid::with_check_digits`] is not 30 decimal digits.
    #[error("eid body must be exactly 30 decimal digits")]
    Body,
}

impl Eid {
    /// Parse and verify the check digits.
    pub fn parse(s: &str) -> Result<Self, EidError> {
        if s.len() != 32 || !all_digits(s) {
            return Err(EidError::Format);
        }
        if mod97(s) != 1 {
            return Err(EidError::CheckDigits);
        }
        Ok(Self(s.to_owned()))
    }

    /// Append the two check digits to a 30-digit body: `98 − (body·100 mod 97)`, zero-padded.
    pub fn with_check_digits(first30: &str) -> Result<Self, EidError> {
        if first30.len() != 30 || !all_digits(first30) {
            return Err(EidError::Body);
        }
        let check = 98 - mod97(first30) * 100 % 97;
        Ok(Self(format!("{first30}{check:02}")))
    }

    /// The 32 digits.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

fn all_digits(s: &str) -> bool {
    s.bytes().all(|b| b.is_ascii_digit())
}

fn mod97(digits: &str) -> u32 {
    digits
        .bytes()
        .fold(0, |acc, b| (acc * 10 + u32::from(b - b'0')) % 97)
}

impl FromStr for Eid {
    type Err = EidError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

impl TryFrom<String> for Eid {
    type Error = EidError;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        Self::parse(&s)
    }
}

impl From<Eid> for String {
    fn from(v: Eid) -> Self {
        v.0
    }
}

impl fmt::Display for Eid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const EXAMPLE: &str = "89049032123451234512345678901235";

    #[test]
    fn parses_the_reference_example() {
        assert_eq!(Eid::parse(EXAMPLE).unwrap().as_str(), EXAMPLE);
        assert_eq!(
            Eid::with_check_digits(&EXAMPLE[..30]).unwrap().as_str(),
            EXAMPLE
        );
    }

    #[test]
    fn rejections_name_the_problem() {
        assert_eq!(
            Eid::parse("89049032123451234512345678901234"),
            Err(EidError::CheckDigits)
        );
        for bad in [
            "",
            "8904903212345123451234567890123",
            "890490321234512345123456789012350",
            "8904903212345123451234567890123a",
        ] {
            assert_eq!(Eid::parse(bad), Err(EidError::Format), "{bad}");
        }
        assert_eq!(Eid::with_check_digits("123"), Err(EidError::Body));
    }

    #[test]
    fn serde_is_a_validated_string() {
        let eid: Eid = serde_json::from_str(&format!("\"{EXAMPLE}\"")).unwrap();
        assert_eq!(
            serde_json::to_string(&eid).unwrap(),
            format!("\"{EXAMPLE}\"")
        );
        assert!(serde_json::from_str::<Eid>("\"89049032123451234512345678901234\"").is_err());
    }

    proptest! {
        #[test]
        fn minted_eids_round_trip(body in "[0-9]{30}") {
            let eid = Eid::with_check_digits(&body).unwrap();
            prop_assert!(eid.as_str().starts_with(&body));
            prop_assert_eq!(Eid::parse(eid.as_str()).unwrap(), eid);
        }

        #[test]
        fn any_single_digit_change_is_caught(body in "[0-9]{30}", pos in 0usize..32, delta in 1u8..10) {
            let mut bytes = Eid::with_check_digits(&body).unwrap().0.into_bytes();
            bytes[pos] = b'0' + (bytes[pos] - b'0' + delta) % 10;
            let bad = String::from_utf8(bytes).unwrap();
            prop_assert_eq!(Eid::parse(&bad), Err(EidError::CheckDigits));
        }
    }
}
