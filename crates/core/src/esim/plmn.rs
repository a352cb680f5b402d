//! PLMN identifiers and roaming policy.
//!
//! A [`Plmn`] is written `"MCC-MNC"` and keeps the MNC's length (`"310-26"` ≠ `"310-026"`: the length cannot be
//! derived from the digits). On the wire (TS 24.008 §10.5.1.3; EF.FPLMN, SGP.32 `rPLMN`) it is three BCD octets,
//! see [`Plmn::to_bcd_octets`]. A [`RoamingPolicy`] decides which visited networks a SIM may use.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// A network: 3-digit MCC and 2- or 3-digit MNC, stored as `"MCC-MNC"`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Plmn(String);

/// Why a PLMN or a roaming policy was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlmnError {
    /// Not `"MCC-MNC"` with 3 + 2 or 3 digits.
    #[error(
        "plmn must be \"MCC-MNC\" with a 3-digit MCC and a 2- or 3-digit MNC, like \"310-260\""
    )]
    Format,
    /// The three octets are not BCD digits (with `F` only as the third MNC digit).
    #[error("plmn octets are not valid BCD (TS 24.008 §10.5.1.3)")]
    Bcd,
    /// A `countries` entry that is not an upper-case ISO 3166-1 alpha-2 code.
    #[error("country {0:?} must be an upper-case ISO 3166-1 alpha-2 code like \"US\"")]
    Country(String),
}

impl Plmn {
    /// Parse `"MCC-MNC"`.
    pub fn parse(s: &str) -> Result<Self, PlmnError> {
        let (mcc, mnc) = s.split_once('-').ok_or(PlmnError::Format)?;
        let digits = |p: &str| p.bytes().all(|b| b.is_ascii_digit());
        if mcc.len() != 3 || !(2..=3).contains(&mnc.len()) || !digits(mcc) || !digits(mnc) {
            return Err(PlmnError::Format);
        }
        Ok(Self(s.to_owned()))
    }

    /// The mobile country code (3 digits).
    pub fn mcc(&self) -> &str {
        &self.0[..3]
    }

    /// The mobile network code (2 or 3 digits, as written).
    pub fn mnc(&self) -> &str {
        &self.0[4..]
    }

    /// TS 24.008 §10.5.1.3: octets `MCC2|MCC1`, `MNC3|MCC3`, `MNC2|MNC1` (high|low nibble), `MNC3 = F` for a
    /// 2-digit MNC. `310-260` → `13 00 62`; `262-01` → `62 F2 10`.
    pub fn to_bcd_octets(&self) -> [u8; 3] {
        let d = |s: &str, i: usize| s.as_bytes().get(i).map_or(0xF, |b| b - b'0');
        let (mcc, mnc) = (self.mcc(), self.mnc());
        [
            d(mcc, 1) << 4 | d(mcc, 0),
            d(mnc, 2) << 4 | d(mcc, 2),
            d(mnc, 1) << 4 | d(mnc, 0),
        ]
    }

    /// Inverse of [`Plmn::to_bcd_octets`].
    pub fn from_bcd_octets(octets: [u8; 3]) -> Result<Self, PlmnError> {
        let [a, b, c] = octets;
        let nibbles = [a & 0xF, a >> 4, b & 0xF, c & 0xF, c >> 4];
        if nibbles.iter().any(|&n| n > 9) {
            return Err(PlmnError::Bcd);
        }
        let mnc3 = match b >> 4 {
            0xF => String::new(),
            n @ 0..=9 => n.to_string(),
            _ => return Err(PlmnError::Bcd),
        };
        let [m1, m2, m3, n1, n2] = nibbles;
        Ok(Self(format!("{m1}{m2}{m3}-{n1}{n2}{mnc3}")))
    }

    /// The text form `"MCC-MNC"`.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for Plmn {
    type Err = PlmnError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

impl TryFrom<String> for Plmn {
    type Error = PlmnError;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        Self::parse(&s)
    }
}

impl From<Plmn> for String {
    fn from(v: Plmn) -> Self {
        v.0
    }
}

impl fmt::Display for Plmn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The country code [`mcc_country`] gives MCC 901, the shared international range used by IoT aggregators
/// (`XX` is user-assigned in ISO 3166, so it never collides with a real country). List it in
/// [`RoamingPolicy::countries`] to permit those networks.
pub const INTERNATIONAL: &str = "XX";

/// The ISO 3166-1 alpha-2 country of an MCC, for the MCCs the carrier catalog uses; `None` for the rest.
pub fn mcc_country(mcc: &str) -> Option<&'static str> {
    Some(match mcc {
        "310" | "311" | "312" | "313" | "314" | "315" | "316" => "US",
        "262" => "DE",
        "234" | "235" => "GB",
        "208" => "FR",
        "204" => "NL",
        "901" => INTERNATIONAL,
        _ => return None,
    })
}

/// Which visited networks a SIM may attach to.
///
/// Semantics of [`RoamingPolicy::permits`]: a PLMN in `deny` is always refused (deny wins). Otherwise, when
/// both `allow` and `countries` are empty every network is permitted; when either is non-empty the PLMN must be
/// listed in `allow` **or** belong (by [`mcc_country`]) to one of `countries`: the two lists are a union.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RoamingPolicy {
    /// Networks explicitly permitted.
    #[serde(default)]
    pub allow: Vec<Plmn>,
    /// Networks always refused.
    #[serde(default)]
    pub deny: Vec<Plmn>,
    /// Countries (upper-case ISO 3166-1 alpha-2) whose networks are permitted.
    #[serde(default)]
    pub countries: Vec<String>,
}

impl RoamingPolicy {
    /// Whether `plmn` may be used under this policy (see the type's documentation).
    pub fn permits(&self, plmn: &Plmn) -> bool {
        if self.deny.contains(plmn) {
            return false;
        }
        if self.allow.is_empty() && self.countries.is_empty() {
            return true;
        }
        self.allow.contains(plmn)
            || mcc_country(plmn.mcc()).is_some_and(|c| self.countries.iter().any(|x| x == c))
    }

    /// Check that every `countries` entry is two upper-case ASCII letters.
    pub fn validate(&self) -> Result<(), PlmnError> {
        match self
            .countries
            .iter()
            .find(|c| c.len() != 2 || !c.bytes().all(|b| b.is_ascii_uppercase()))
        {
            Some(bad) => Err(PlmnError::Country(bad.clone())),
            None => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn p(s: &str) -> Plmn {
        Plmn::parse(s).unwrap()
    }

    #[test]
    fn keeps_the_mnc_length() {
        assert_ne!(p("310-26"), p("310-026"));
        assert_eq!(p("310-260").mcc(), "310");
        assert_eq!(p("310-260").mnc(), "260");
        assert_eq!(p("262-01").mnc(), "01");
        assert_eq!(p("262-01").to_string(), "262-01");
        for bad in [
            "", "310", "31026", "310-2", "310-2600", "31-260", "3100-26", "310-2a", "310_26",
            " 310-26",
        ] {
            assert_eq!(Plmn::parse(bad), Err(PlmnError::Format), "{bad:?}");
        }
    }

    #[test]
    fn bcd_matches_ts_24_008() {
        assert_eq!(p("310-260").to_bcd_octets(), [0x13, 0x00, 0x62]);
        assert_eq!(p("262-01").to_bcd_octets(), [0x62, 0xF2, 0x10]);
        assert_eq!(p("310-26").to_bcd_octets(), [0x13, 0xF0, 0x62]);
        assert_eq!(
            Plmn::from_bcd_octets([0x62, 0xF2, 0x10]).unwrap(),
            p("262-01")
        );
        assert_eq!(
            Plmn::from_bcd_octets([0x13, 0x00, 0x62]).unwrap(),
            p("310-260")
        );
        for bad in [
            [0x1A, 0x00, 0x62],
            [0x13, 0xE0, 0x62],
            [0x13, 0x00, 0xF2],
            [0xFF, 0xFF, 0xFF],
        ] {
            assert_eq!(
                Plmn::from_bcd_octets(bad),
                Err(PlmnError::Bcd),
                "{bad:02x?}"
            );
        }
    }

    #[test]
    fn serde_is_a_validated_string() {
        assert_eq!(serde_json::to_string(&p("310-260")).unwrap(), "\"310-260\"");
        assert_eq!(
            serde_json::from_str::<Plmn>("\"262-01\"").unwrap(),
            p("262-01")
        );
        assert!(serde_json::from_str::<Plmn>("\"26201\"").is_err());
    }

    #[test]
    fn mcc_table() {
        assert_eq!(mcc_country("311"), Some("US"));
        assert_eq!(mcc_country("235"), Some("GB"));
        assert_eq!(mcc_country("901"), Some(INTERNATIONAL));
        assert_eq!(mcc_country("999"), None);
    }

    #[test]
    fn roaming_policy_semantics() {
        let open = RoamingPolicy::default();
        assert!(open.permits(&p("999-99")));

        let deny_only = RoamingPolicy {
            deny: vec![p("310-410")],
            ..Default::default()
        };
        assert!(!deny_only.permits(&p("310-410")));
        assert!(deny_only.permits(&p("262-01")));

        let policy = RoamingPolicy {
            allow: vec![p("262-01")],
            deny: vec![p("310-410")],
            countries: vec!["US".into()],
        };
        assert!(policy.permits(&p("262-01")), "listed in allow");
        assert!(policy.permits(&p("311-480")), "in an allowed country");
        assert!(!policy.permits(&p("310-410")), "deny wins over the country");
        assert!(
            !policy.permits(&p("262-02")),
            "neither listed nor in an allowed country"
        );
        assert!(!policy.permits(&p("999-01")), "unknown MCC has no country");
    }

    #[test]
    fn country_codes_are_validated() {
        let ok = RoamingPolicy {
            countries: vec!["US".into(), "XX".into()],
            ..Default::default()
        };
        assert!(ok.validate().is_ok());
        for bad in ["us", "USA", "U", "U1"] {
            let policy = RoamingPolicy {
                countries: vec![bad.into()],
                ..Default::default()
            };
            assert_eq!(policy.validate(), Err(PlmnError::Country(bad.into())));
        }
        assert!(
            serde_json::from_str::<RoamingPolicy>(r#"{"allow":["310-260"],"extra":1}"#).is_err()
        );
    }

    proptest! {
        #[test]
        fn text_and_bcd_round_trip(s in "[0-9]{3}-[0-9]{2,3}") {
            let plmn = Plmn::parse(&s).unwrap();
            prop_assert_eq!(plmn.to_string(), s);
            prop_assert_eq!(Plmn::from_bcd_octets(plmn.to_bcd_octets()).unwrap(), plmn);
        }

        #[test]
        fn bcd_decoding_never_panics(octets in any::<[u8; 3]>()) {
            if let Ok(plmn) = Plmn::from_bcd_octets(octets) {
                prop_assert_eq!(plmn.to_bcd_octets(), octets);
            }
        }
    }
}
