//! Activation codes (SGP.22 §4.1): `1$<SM-DP+ FQDN>$<MatchingID>[$<OID>[$<CC flag>]]`, prefixed `LPA:` only
//! inside a QR code.
//!
//! [`ActivationCode::parse`] accepts the optional `LPA:` prefix; `Display` writes the bare code and
//! [`ActivationCode::to_qr_string`] the QR payload. SGP.22 v3's two extra optional trailing fields (eSIM CA
//! RootCA public-key indicator, Delete Notification for Device Change) are **kept verbatim**, not interpreted:
//! a v3 SM-DP+ may hand them out and a device that understands them needs them. The MatchingID is a secret:
//! `Debug` redacts it, and error messages never echo any part of the input.

use std::fmt;
use std::net::Ipv6Addr;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// Longest activation code, without the `LPA:` prefix (SGP.32 `activationCode UTF8String (SIZE(0..255))`).
pub const MAX_LEN: usize = 255;

/// The prefix that marks an activation code inside a QR code.
pub const QR_PREFIX: &str = "LPA:";

/// Why an activation code was refused. Messages never contain the input (it carries a secret).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ActivationCodeError {
    /// Longer than [`MAX_LEN`].
    #[error("activation code is {len} characters long; at most 255 are allowed")]
    TooLong {
        /// The length found.
        len: usize,
    },
    /// The first field is not `1`.
    #[error("activation code format must be 1")]
    UnsupportedFormat,
    /// Fewer than three `$`-separated fields.
    #[error("activation code needs format, SM-DP+ address and MatchingID fields")]
    MissingFields,
    /// More than seven `$`-separated fields.
    #[error("activation code has more than 7 $-separated fields")]
    TooManyFields,
    /// An optional field is present but empty with nothing after it (`1$host$MID$`).
    #[error("activation code ends with an empty optional field")]
    EmptyTrailingField,
    /// The SM-DP+ address is not a plain FQDN.
    #[error("SM-DP+ address: {0}")]
    Address(#[from] FqdnError),
    /// The MatchingID has a character outside `[0-9A-Za-z-]`.
    #[error("MatchingID may contain only 0-9, A-Z, a-z and '-'")]
    MatchingId,
    /// The SM-DP+ OID is not dotted numeric.
    #[error("SM-DP+ OID must be dotted numeric, like 1.3.6.1.4.1.31746")]
    Oid,
    /// The confirmation-code-required flag is something other than `1`.
    #[error("confirmation code required flag must be 1")]
    CcFlag,
    /// An SGP.22 v3 trailing field is not printable ASCII.
    #[error("SGP.22 v3 trailing fields must be printable ASCII")]
    Extension,
}

/// Why a server address was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum FqdnError {
    /// Empty.
    #[error("address is empty")]
    Empty,
    /// Longer than 253 characters.
    #[error("address is longer than 253 characters")]
    TooLong,
    /// Has a URL scheme (`https://`).
    #[error("address must be a bare host name, without a scheme")]
    Scheme,
    /// Has a port.
    #[error("address must be a bare host name, without a port")]
    Port,
    /// Has a path, query or fragment.
    #[error("address must be a bare host name, without a path")]
    Path,
    /// Is an IPv4 or IPv6 literal.
    #[error("address must be a host name, not an IP address")]
    IpLiteral,
    /// A single label (`localhost`).
    #[error("address must be fully qualified (contain a dot)")]
    NotQualified,
    /// A label that is not 1–63 of `[a-z0-9-]` without a leading or trailing hyphen.
    #[error("address has an invalid DNS label")]
    Label,
}

/// A fully qualified domain name, stored lower-case (DNS is case-insensitive).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Fqdn(String);

impl Fqdn {
    /// Parse a bare host name: no scheme, port, path or IP literal; at least two valid DNS labels.
    pub fn parse(s: &str) -> Result<Self, FqdnError> {
        if s.is_empty() {
            return Err(FqdnError::Empty);
        }
        if s.len() > 253 {
            return Err(FqdnError::TooLong);
        }
        if s.contains("://") {
            return Err(FqdnError::Scheme);
        }
        if s.contains(['/', '?', '#']) {
            return Err(FqdnError::Path);
        }
        if s.contains('[') || s.parse::<Ipv6Addr>().is_ok() {
            return Err(FqdnError::IpLiteral);
        }
        if s.contains(':') {
            return Err(FqdnError::Port);
        }
        let lower = s.to_ascii_lowercase();
        let labels: Vec<&str> = lower.split('.').collect();
        // A numeric top label means an IPv4 literal in some notation (RFC 3696 §2: TLDs are not all-numeric).
        if labels
            .last()
            .is_some_and(|l| !l.is_empty() && l.bytes().all(|b| b.is_ascii_digit()))
        {
            return Err(FqdnError::IpLiteral);
        }
        let valid_label = |l: &&str| {
            (1..=63).contains(&l.len())
                && l.bytes()
                    .all(|b| matches!(b, b'a'..=b'z' | b'0'..=b'9' | b'-'))
                && !l.starts_with('-')
                && !l.ends_with('-')
        };
        if !labels.iter().all(valid_label) {
            return Err(FqdnError::Label);
        }
        if labels.len() < 2 {
            return Err(FqdnError::NotQualified);
        }
        Ok(Self(lower))
    }

    /// The lower-case host name.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for Fqdn {
    type Error = FqdnError;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        Self::parse(&s)
    }
}

impl From<Fqdn> for String {
    fn from(v: Fqdn) -> Self {
        v.0
    }
}

impl fmt::Display for Fqdn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A MatchingID (the AC_Token): `[0-9A-Za-z-]`, possibly empty. A secret: `Debug` prints only its length and
/// there is deliberately no `Display`; use [`MatchingId::as_str`] where the value itself is needed.
#[derive(Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct MatchingId(String);

/// Crockford base32: no `I`, `L`, `O`, `U`, so codes survive being read aloud or retyped.
const CROCKFORD: &[u8; 32] = b"0123456789ABCDEFGHJKMNPQRSTVWXYZ";

impl MatchingId {
    /// Validate a MatchingID (at most [`MAX_LEN`] characters of `[0-9A-Za-z-]`).
    pub fn parse(s: &str) -> Result<Self, ActivationCodeError> {
        if s.len() > MAX_LEN {
            return Err(ActivationCodeError::TooLong { len: s.len() });
        }
        if !s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-') {
            return Err(ActivationCodeError::MatchingId);
        }
        Ok(Self(s.to_owned()))
    }

    /// A fresh MatchingID from caller-supplied random bytes: Crockford base32, upper case, in groups of four
    /// joined by `-`. Ten bytes (80 bits) give `XXXX-XXXX-XXXX-XXXX`. `N` must be 5 to 60 (checked at compile
    /// time).
    pub fn from_random<const N: usize>(bytes: &[u8; N]) -> Self {
        const {
            assert!(
                N >= 5 && N <= 60,
                "MatchingId::from_random takes 5 to 60 bytes"
            )
        };
        let mut symbols = Vec::with_capacity(N * 8 / 5 + 1);
        let (mut acc, mut bits) = (0u32, 0u32);
        for &b in bytes {
            acc = (acc << 8) | u32::from(b);
            bits += 8;
            while bits >= 5 {
                bits -= 5;
                symbols.push(CROCKFORD[((acc >> bits) & 31) as usize]);
            }
            acc &= (1 << bits) - 1;
        }
        if bits > 0 {
            symbols.push(CROCKFORD[((acc << (5 - bits)) & 31) as usize]);
        }
        let groups: Vec<String> = symbols
            .chunks(4)
            .map(|g| g.iter().map(|&c| char::from(c)).collect())
            .collect();
        Self(groups.join("-"))
    }

    /// The secret value. Do not log it.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Whether the MatchingID is empty (SM-DS and default-SM-DP+ flows).
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Debug for MatchingId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "MatchingId(<redacted, {} chars>)", self.0.len())
    }
}

impl TryFrom<String> for MatchingId {
    type Error = ActivationCodeError;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        Self::parse(&s)
    }
}

impl From<MatchingId> for String {
    fn from(v: MatchingId) -> Self {
        v.0
    }
}

/// A validated activation code. Serialised as its bare string form.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct ActivationCode {
    smdp_address: Fqdn,
    matching_id: MatchingId,
    oid: Option<String>,
    cc_required: bool,
    /// SGP.22 v3 fields 6 and 7, verbatim; the last one is never empty.
    v3_fields: Vec<String>,
}

impl ActivationCode {
    /// Build a code from its parts; fails on a bad OID or if the result would exceed [`MAX_LEN`].
    pub fn new(
        smdp_address: Fqdn,
        matching_id: MatchingId,
        oid: Option<&str>,
        cc_required: bool,
    ) -> Result<Self, ActivationCodeError> {
        let oid = oid.map(check_oid).transpose()?;
        let code = Self {
            smdp_address,
            matching_id,
            oid,
            cc_required,
            v3_fields: Vec::new(),
        };
        let len = code.to_string().len();
        if len > MAX_LEN {
            return Err(ActivationCodeError::TooLong { len });
        }
        Ok(code)
    }

    /// Parse a code, with or without the `LPA:` prefix (case-insensitive).
    pub fn parse(s: &str) -> Result<Self, ActivationCodeError> {
        let code = match s.get(..QR_PREFIX.len()) {
            Some(p) if p.eq_ignore_ascii_case(QR_PREFIX) => &s[QR_PREFIX.len()..],
            _ => s,
        };
        if code.len() > MAX_LEN {
            return Err(ActivationCodeError::TooLong { len: code.len() });
        }
        let fields: Vec<&str> = code.split('$').collect();
        if fields.first() != Some(&"1") {
            return Err(ActivationCodeError::UnsupportedFormat);
        }
        if fields.len() < 3 {
            return Err(ActivationCodeError::MissingFields);
        }
        if fields.len() > 7 {
            return Err(ActivationCodeError::TooManyFields);
        }
        if fields.len() > 3 && fields.last() == Some(&"") {
            return Err(ActivationCodeError::EmptyTrailingField);
        }
        let smdp_address = Fqdn::parse(fields[1])?;
        let matching_id = MatchingId::parse(fields[2])?;
        let oid = match fields.get(3) {
            None | Some(&"") => None,
            Some(o) => Some(check_oid(o)?),
        };
        let cc_required = match fields.get(4) {
            None | Some(&"") => false,
            Some(&"1") => true,
            Some(_) => return Err(ActivationCodeError::CcFlag),
        };
        let v3_fields = fields
            .get(5..)
            .unwrap_or_default()
            .iter()
            .map(|f| {
                if f.bytes().all(|b| b.is_ascii_graphic()) {
                    Ok((*f).to_owned())
                } else {
                    Err(ActivationCodeError::Extension)
                }
            })
            .collect::<Result<_, _>>()?;
        Ok(Self {
            smdp_address,
            matching_id,
            oid,
            cc_required,
            v3_fields,
        })
    }

    /// The SM-DP+ address (lower-case).
    pub fn smdp_address(&self) -> &Fqdn {
        &self.smdp_address
    }

    /// The MatchingID (secret).
    pub fn matching_id(&self) -> &MatchingId {
        &self.matching_id
    }

    /// The SM-DP+ OID, if given.
    pub fn oid(&self) -> Option<&str> {
        self.oid.as_deref()
    }

    /// Whether the device must ask the user for a confirmation code.
    pub fn cc_required(&self) -> bool {
        self.cc_required
    }

    /// SGP.22 v3 trailing fields, verbatim (empty for v2 codes).
    pub fn v3_fields(&self) -> &[String] {
        &self.v3_fields
    }

    /// The QR-code payload: `LPA:` followed by the code.
    pub fn to_qr_string(&self) -> String {
        format!("{QR_PREFIX}{self}")
    }
}

/// Dotted numeric with at least two arcs.
fn check_oid(s: &str) -> Result<String, ActivationCodeError> {
    let arcs: Vec<&str> = s.split('.').collect();
    if arcs.len() < 2
        || !arcs
            .iter()
            .all(|a| !a.is_empty() && a.bytes().all(|b| b.is_ascii_digit()))
    {
        return Err(ActivationCodeError::Oid);
    }
    Ok(s.to_owned())
}

/// The bare code (no `LPA:`), in canonical form: optional fields appear only as far as needed.
impl fmt::Display for ActivationCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "1${}${}", self.smdp_address, self.matching_id.0)?;
        let has_v3 = !self.v3_fields.is_empty();
        if self.oid.is_some() || self.cc_required || has_v3 {
            write!(f, "${}", self.oid.as_deref().unwrap_or(""))?;
        }
        if self.cc_required || has_v3 {
            write!(f, "${}", if self.cc_required { "1" } else { "" })?;
        }
        for field in &self.v3_fields {
            write!(f, "${field}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for ActivationCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ActivationCode")
            .field("smdp_address", &self.smdp_address.as_str())
            .field("matching_id", &self.matching_id)
            .field("oid", &self.oid)
            .field("cc_required", &self.cc_required)
            .field("v3_fields", &self.v3_fields)
            .finish()
    }
}

impl FromStr for ActivationCode {
    type Err = ActivationCodeError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

impl TryFrom<String> for ActivationCode {
    type Error = ActivationCodeError;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        Self::parse(&s)
    }
}

impl From<ActivationCode> for String {
    fn from(v: ActivationCode) -> Self {
        v.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const EXAMPLE: &str = "LPA:1$testsmdpplus1.example.com$TEST-MATCHING-ID-1";

    fn err(s: &str) -> ActivationCodeError {
        ActivationCode::parse(s).unwrap_err()
    }

    #[test]
    fn parses_the_sgp26_example() {
        let ac = ActivationCode::parse(EXAMPLE).unwrap();
        assert_eq!(ac.smdp_address().as_str(), "testsmdpplus1.example.com");
        assert_eq!(ac.matching_id().as_str(), "TEST-MATCHING-ID-1");
        assert_eq!((ac.oid(), ac.cc_required()), (None, false));
        assert_eq!(ac.to_string(), &EXAMPLE[4..]);
        assert_eq!(ac.to_qr_string(), EXAMPLE);
        assert_eq!(ActivationCode::parse(&EXAMPLE[4..]).unwrap(), ac);
        assert_eq!(
            ActivationCode::parse(&EXAMPLE.replace("LPA:", "lpa:")).unwrap(),
            ac
        );
    }

    #[test]
    fn optional_fields() {
        let ac = ActivationCode::parse("1$SMDP.Example.COM$MID$$1").unwrap();
        assert_eq!(ac.smdp_address().as_str(), "smdp.example.com");
        assert!(ac.cc_required() && ac.oid().is_none());
        assert_eq!(ac.to_string(), "1$smdp.example.com$MID$$1");

        let ac = ActivationCode::parse("1$smdp.example.com$MID$1.3.6.1.4.1.31746").unwrap();
        assert_eq!(ac.oid(), Some("1.3.6.1.4.1.31746"));

        let ac = ActivationCode::parse("1$smdp.example.com$").unwrap();
        assert!(ac.matching_id().is_empty());

        let v3 = "1$smdp.example.com$MID$$$F54172BDF98A95D65CBEB88A38A1C11D800A85C3$1";
        let ac = ActivationCode::parse(v3).unwrap();
        assert_eq!(ac.v3_fields().len(), 2);
        assert_eq!(ac.to_string(), v3, "v3 fields are kept verbatim");

        let built = ActivationCode::new(
            Fqdn::parse("smdp.example.com").unwrap(),
            MatchingId::parse("MID").unwrap(),
            Some("1.2.3"),
            true,
        )
        .unwrap();
        assert_eq!(built.to_string(), "1$smdp.example.com$MID$1.2.3$1");
    }

    #[test]
    fn rejections_name_the_problem() {
        use ActivationCodeError as E;
        for (bad, expected) in [
            ("2$smdp.example.com$MID", E::UnsupportedFormat),
            ("$smdp.example.com$MID", E::UnsupportedFormat),
            ("", E::UnsupportedFormat),
            ("1$smdp.example.com", E::MissingFields),
            ("1$smdp.example.com$MID$", E::EmptyTrailingField),
            ("1$smdp.example.com$MID$$", E::EmptyTrailingField),
            ("1$smdp.example.com$M$1.2$$a$b$c", E::TooManyFields),
            ("1$smdp.example.com$MID_1", E::MatchingId),
            ("1$smdp.example.com$MID$abc", E::Oid),
            ("1$smdp.example.com$MID$1", E::Oid),
            ("1$smdp.example.com$MID$1..2", E::Oid),
            ("1$smdp.example.com$MID$$0", E::CcFlag),
            ("1$smdp.example.com$MID$$yes", E::CcFlag),
            ("1$smdp.example.com$MID$$$a b", E::Extension),
            (
                "1$https://smdp.example.com$MID",
                E::Address(FqdnError::Scheme),
            ),
            ("1$smdp.example.com:443$MID", E::Address(FqdnError::Port)),
            ("1$smdp.example.com/x$MID", E::Address(FqdnError::Path)),
            ("1$10.0.0.1$MID", E::Address(FqdnError::IpLiteral)),
            ("1$[::1]$MID", E::Address(FqdnError::IpLiteral)),
            ("1$::1$MID", E::Address(FqdnError::IpLiteral)),
            ("1$localhost$MID", E::Address(FqdnError::NotQualified)),
            ("1$$MID", E::Address(FqdnError::Empty)),
            ("1$smdp_1.example.com$MID", E::Address(FqdnError::Label)),
            ("1$-smdp.example.com$MID", E::Address(FqdnError::Label)),
            ("1$smdp..example.com$MID", E::Address(FqdnError::Label)),
            ("1$smdp.example.com.$MID", E::Address(FqdnError::Label)),
        ] {
            assert_eq!(err(bad), expected, "{bad:?}");
        }
        let long = format!("1$smdp.example.com${}", "A".repeat(240));
        assert_eq!(err(&long), E::TooLong { len: long.len() });
    }

    #[test]
    fn debug_and_errors_never_show_the_matching_id() {
        let ac = ActivationCode::parse("1$smdp.example.com$SECRET-TOKEN-42").unwrap();
        let debug = format!("{ac:?}");
        assert!(!debug.contains("SECRET"), "{debug}");
        assert!(debug.contains("smdp.example.com"));
        assert!(!format!("{:?}", ac.matching_id()).contains("SECRET"));
        let e = err("1$smdp.example.com$SECRET_TOKEN");
        assert!(!e.to_string().contains("SECRET") && !format!("{e:?}").contains("SECRET"));
    }

    #[test]
    fn generated_matching_ids() {
        let mid = MatchingId::from_random(&[0u8; 10]);
        assert_eq!(mid.as_str(), "0000-0000-0000-0000");
        let mid = MatchingId::from_random(&[0xff; 10]);
        assert_eq!(mid.as_str(), "ZZZZ-ZZZZ-ZZZZ-ZZZZ");
        let mid = MatchingId::from_random(&[0x12, 0x34, 0x56, 0x78, 0x9a, 0xbc]);
        assert_eq!(mid.as_str(), "28T5-CY4T-QG");
        assert!(MatchingId::parse(mid.as_str()).is_ok());
    }

    #[test]
    fn serde_is_the_bare_string() {
        let ac = ActivationCode::parse(EXAMPLE).unwrap();
        let json = serde_json::to_string(&ac).unwrap();
        assert_eq!(json, format!("\"{}\"", &EXAMPLE[4..]));
        assert_eq!(serde_json::from_str::<ActivationCode>(&json).unwrap(), ac);
        assert!(serde_json::from_str::<ActivationCode>("\"2$a.b$c\"").is_err());
    }

    fn host() -> impl Strategy<Value = String> {
        "[a-z][a-z0-9]{0,10}(\\.[a-z0-9][a-z0-9-]{0,8}[a-z0-9])?\\.[a-z]{2,6}"
    }

    proptest! {
        #[test]
        fn round_trips(
            host in host(),
            mid in "[0-9A-Za-z-]{0,40}",
            oid in proptest::option::of("[0-9]{1,3}(\\.[0-9]{1,5}){1,6}"),
            cc in any::<bool>(),
            v3 in proptest::collection::vec("[!-#%-~]{0,8}", 0..=2),
            upper in any::<bool>(),
        ) {
            prop_assume!(v3.last().is_none_or(|f| !f.is_empty()));
            let mut parts = vec!["1".to_owned(), host.clone(), mid.clone()];
            if oid.is_some() || cc || !v3.is_empty() {
                parts.push(oid.clone().unwrap_or_default());
            }
            if cc || !v3.is_empty() {
                parts.push(if cc { "1" } else { "" }.to_owned());
            }
            parts.extend(v3.iter().cloned());
            let canonical = parts.join("$");
            let input = if upper { canonical.replacen(&host, &host.to_ascii_uppercase(), 1) } else { canonical.clone() };
            let ac = ActivationCode::parse(&input).unwrap();
            prop_assert_eq!(ac.to_string(), canonical.clone());
            prop_assert_eq!(ac.matching_id().as_str(), mid.as_str());
            prop_assert_eq!(ActivationCode::parse(&ac.to_qr_string()).unwrap(), ac.clone());
            let rebuilt = ActivationCode::new(ac.smdp_address().clone(), ac.matching_id().clone(), ac.oid(), ac.cc_required());
            prop_assert_eq!(rebuilt.is_ok(), true);
        }

        #[test]
        fn a_dollar_inside_a_field_never_yields_the_same_code(host in host(), mid in "[0-9A-Za-z-]{1,30}", at in 0usize..30) {
            let mid_with_dollar = format!("{mid}$");
            let host_with_dollar = format!("{host}$");
            prop_assert_eq!(MatchingId::parse(&mid_with_dollar), Err(ActivationCodeError::MatchingId));
            prop_assert_eq!(Fqdn::parse(&host_with_dollar), Err(FqdnError::Label));
            let original = ActivationCode::parse(&format!("1${host}${mid}")).unwrap();
            let at = at % (mid.len() + 1);
            let tampered = format!("1${host}${}${}", &mid[..at], &mid[at..]);
            prop_assert_ne!(ActivationCode::parse(&tampered).ok(), Some(original));
            let at = 1 + at % host.len();
            let tampered = format!("1${}${}${mid}", &host[..at], &host[at..]);
            prop_assert!(ActivationCode::parse(&tampered).is_err());
        }

        #[test]
        fn ip_literals_are_rejected(v4 in any::<[u8; 4]>(), v6 in any::<[u16; 8]>()) {
            let v4 = std::net::Ipv4Addr::from(v4);
            prop_assert_eq!(err(&format!("1${v4}$MID")), ActivationCodeError::Address(FqdnError::IpLiteral));
            let v6 = Ipv6Addr::from(v6);
            prop_assert_eq!(err(&format!("1${v6}$MID")), ActivationCodeError::Address(FqdnError::IpLiteral));
            prop_assert_eq!(err(&format!("1$[{v6}]$MID")), ActivationCodeError::Address(FqdnError::IpLiteral));
        }

        #[test]
        fn over_length_is_rejected(host in host(), mid in "[0-9A-Z-]{250,300}") {
            let code = format!("1${host}${mid}");
            prop_assert_eq!(err(&code), ActivationCodeError::TooLong { len: code.len() });
            let short = MatchingId::parse(&mid[..250]).unwrap();
            let built = ActivationCode::new(Fqdn::parse(&host).unwrap(), short, None, false);
            let too_long = matches!(built, Err(ActivationCodeError::TooLong { .. }));
            prop_assert!(too_long);
        }

        #[test]
        fn other_formats_are_rejected(format in "[0-9A-Za-z]{1,3}", host in host()) {
            prop_assume!(format != "1");
            prop_assert_eq!(err(&format!("{format}${host}$MID")), ActivationCodeError::UnsupportedFormat);
        }

        #[test]
        fn generated_matching_ids_are_valid(bytes in any::<[u8; 10]>()) {
            let mid = MatchingId::from_random(&bytes);
            prop_assert_eq!(mid.as_str().len(), 19);
            prop_assert!(mid.as_str().bytes().all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'-'));
            prop_assert!(MatchingId::parse(mid.as_str()).is_ok());
        }
    }
}
