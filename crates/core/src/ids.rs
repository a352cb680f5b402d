//! Validated identifiers: invoice ids, region and carrier slugs, bundle sizes.

use std::fmt;

use serde::{Deserialize, Serialize};

/// Why an identifier was refused; the message is safe to show to clients.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct IdError(pub &'static str);

/// An invoice id: `inv_` followed by a sealed token (`crate::invoice::token`): the invoice's terms and a MAC
/// over them, URL-safe base64 (`[A-Za-z0-9_-]`, one `.`). Parsing checks only the shape; whether the id was
/// issued here (and what it says) is decided by `token::open` with the server's key.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct InvoiceId(String);

impl InvoiceId {
    const PREFIX: &'static str = "inv_";
    /// Longest id accepted (a sealed activation is about 110 characters; an EID and a payer add about 80).
    pub const MAX_LEN: usize = 400;

    /// The id of a sealed token (`token::seal`).
    pub(crate) fn from_token(token: String) -> Self {
        Self(format!("{}{token}", Self::PREFIX))
    }

    /// The token after `inv_`.
    pub fn token(&self) -> &str {
        &self.0[Self::PREFIX.len()..]
    }

    /// Parse a client-supplied id.
    pub fn parse(s: &str) -> Result<Self, IdError> {
        let token = s
            .strip_prefix(Self::PREFIX)
            .ok_or(IdError("invoice id must start with inv_"))?;
        if token.is_empty()
            || s.len() > Self::MAX_LEN
            || !token
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
        {
            return Err(IdError(
                "invoice id must be inv_ followed by the id this service issued ([A-Za-z0-9_.-], at most 400 characters)",
            ));
        }
        Ok(Self(s.to_owned()))
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for InvoiceId {
    type Error = IdError;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        Self::parse(&s)
    }
}

impl From<InvoiceId> for String {
    fn from(id: InvoiceId) -> Self {
        id.0
    }
}

impl fmt::Display for InvoiceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Checks a lowercase slug: `[a-z0-9-]`, 2–32 chars, no leading/trailing/double hyphen.
fn check_slug(s: &str, what: &'static str) -> Result<(), IdError> {
    let ok_chars = s
        .bytes()
        .all(|b| matches!(b, b'a'..=b'z' | b'0'..=b'9' | b'-'));
    if !(2..=32).contains(&s.len())
        || !ok_chars
        || s.starts_with('-')
        || s.ends_with('-')
        || s.contains("--")
    {
        return Err(IdError(what));
    }
    Ok(())
}

macro_rules! slug_type {
    ($(#[$doc:meta])* $name:ident, $what:literal) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(try_from = "String", into = "String")]
        pub struct $name(String);

        impl $name {
            /// Parse and validate.
            pub fn parse(s: &str) -> Result<Self, IdError> {
                check_slug(s, $what)?;
                Ok(Self(s.to_owned()))
            }

            /// The slug.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl TryFrom<String> for $name {
            type Error = IdError;
            fn try_from(s: String) -> Result<Self, Self::Error> {
                Self::parse(&s)
            }
        }

        impl From<$name> for String {
            fn from(v: $name) -> Self {
                v.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
    };
}

slug_type!(
    /// A region slug such as `us-west` or `eu-central`.
    Region,
    "region must be a lowercase slug like \"us-west\" (a-z, 0-9, '-', 2-32 chars)"
);
slug_type!(
    /// A carrier id from the catalog, such as `tmobile`.
    CarrierId,
    "carrier must be a lowercase slug like \"tmobile\" (a-z, 0-9, '-', 2-32 chars)"
);

/// A data bundle size in megabytes, 1 to 100 000.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "u64", into = "u32")]
pub struct DataMb(u32);

impl DataMb {
    /// The largest bundle one request may buy.
    pub const MAX: u32 = 100_000;

    /// Validate a megabyte count.
    pub fn new(mb: u64) -> Result<Self, IdError> {
        match u32::try_from(mb) {
            Ok(v) if (1..=Self::MAX).contains(&v) => Ok(Self(v)),
            _ => Err(IdError("data_mb must be an integer between 1 and 100000")),
        }
    }

    /// Megabytes.
    pub const fn get(self) -> u32 {
        self.0
    }
}

impl TryFrom<u64> for DataMb {
    type Error = IdError;
    fn try_from(v: u64) -> Result<Self, Self::Error> {
        Self::new(v)
    }
}

impl From<DataMb> for u32 {
    fn from(v: DataMb) -> Self {
        v.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn invoice_ids_round_trip_and_reject_garbage() {
        let id = InvoiceId::from_token("AQID_-x.AbCd".into());
        assert_eq!(id.as_str(), "inv_AQID_-x.AbCd");
        assert_eq!(id.token(), "AQID_-x.AbCd");
        assert_eq!(InvoiceId::parse(id.as_str()).unwrap(), id);
        let too_long = format!("inv_{}", "a".repeat(InvoiceId::MAX_LEN));
        for bad in [
            "",
            "inv_",
            "abc_abababababababababababababababab",
            "inv_../../etc/passwd",
            "inv_a b",
            "inv_a+b/c=",
            too_long.as_str(),
        ] {
            assert!(InvoiceId::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn slugs() {
        assert!(Region::parse("us-west").is_ok());
        assert!(Region::parse("eu-central").is_ok());
        for bad in [
            "",
            "u",
            "US-WEST",
            "-us",
            "us-",
            "us--west",
            "us west",
            "us_west",
            &"a".repeat(33),
        ] {
            assert!(Region::parse(bad).is_err(), "{bad}");
        }
        assert!(CarrierId::parse("tmobile").is_ok());
    }

    #[test]
    fn data_mb_bounds() {
        assert!(DataMb::new(0).is_err());
        assert_eq!(DataMb::new(1).unwrap().get(), 1);
        assert_eq!(DataMb::new(100_000).unwrap().get(), 100_000);
        assert!(DataMb::new(100_001).is_err());
        assert!(DataMb::new(u64::MAX).is_err());
    }
}
