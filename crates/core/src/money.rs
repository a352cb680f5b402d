//! Money: integer micro-USDC. USDC has 6 decimals on every network we support, so one atomic token unit is one
//! micro-USDC. Parsing accepts decimal strings (`"0.42"`) and rejects anything that would need rounding.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Micro-USDC per USDC.
pub const MICROS_PER_USDC: u64 = 1_000_000;

/// An amount of USDC in integer micro-units (6 decimals).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct UsdcAmount(u64);

/// Why a USDC amount did not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AmountError {
    /// Not a plain decimal number.
    #[error("amount must be a decimal number like \"0.42\"")]
    Malformed,
    /// More than six decimals.
    #[error("amount has more than 6 decimals")]
    TooPrecise,
    /// Does not fit in 64 bits of micro-USDC.
    #[error("amount is too large")]
    Overflow,
}

impl UsdcAmount {
    /// Zero USDC.
    pub const ZERO: Self = Self(0);

    /// From integer micro-USDC.
    pub const fn from_micros(micros: u64) -> Self {
        Self(micros)
    }

    /// The amount in micro-USDC (= atomic token units).
    pub const fn micros(self) -> u64 {
        self.0
    }

    /// Checked addition.
    pub fn checked_add(self, other: Self) -> Option<Self> {
        self.0.checked_add(other.0).map(Self)
    }

    /// Checked subtraction (`None` if `other` is larger).
    pub fn checked_sub(self, other: Self) -> Option<Self> {
        self.0.checked_sub(other.0).map(Self)
    }

    /// Checked multiplication by a count (e.g. megabytes).
    pub fn checked_mul(self, n: u64) -> Option<Self> {
        self.0.checked_mul(n).map(Self)
    }

    /// Parse a decimal USDC string (`"0.42"`, `"12"`, `"0.000001"`).
    pub fn parse_usdc(s: &str) -> Result<Self, AmountError> {
        let (int, frac) = match s.split_once('.') {
            Some((i, f)) => (i, f),
            None => (s, ""),
        };
        let all_digits = |p: &str| p.bytes().all(|b| b.is_ascii_digit());
        if int.is_empty()
            || !all_digits(int)
            || !all_digits(frac)
            || (s.contains('.') && frac.is_empty())
        {
            return Err(AmountError::Malformed);
        }
        if frac.len() > 6 {
            return Err(AmountError::TooPrecise);
        }
        let int: u64 = int.parse().map_err(|_| AmountError::Overflow)?;
        let mut frac_micros: u64 = 0;
        for (i, b) in frac.bytes().enumerate() {
            frac_micros += u64::from(b - b'0') * 10u64.pow(5 - i as u32);
        }
        int.checked_mul(MICROS_PER_USDC)
            .and_then(|m| m.checked_add(frac_micros))
            .map(Self)
            .ok_or(AmountError::Overflow)
    }

    /// Parse an atomic-unit integer string (`"420000"`), as x402 carries amounts.
    pub fn parse_atomic(s: &str) -> Result<Self, AmountError> {
        if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
            return Err(AmountError::Malformed);
        }
        s.parse().map(Self).map_err(|_| AmountError::Overflow)
    }
}

impl fmt::Display for UsdcAmount {
    /// Decimal USDC with trailing zeros trimmed but at least two decimals: `0.42`, `1.00`, `0.000001`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let int = self.0 / MICROS_PER_USDC;
        let frac = format!("{:06}", self.0 % MICROS_PER_USDC);
        let trimmed = frac.trim_end_matches('0');
        let shown = if trimmed.len() < 2 {
            &frac[..2]
        } else {
            trimmed
        };
        write!(f, "{int}.{shown}")
    }
}

impl FromStr for UsdcAmount {
    type Err = AmountError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse_usdc(s)
    }
}

/// Serialised as a decimal USDC string, never a float.
impl Serialize for UsdcAmount {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for UsdcAmount {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Self::parse_usdc(&s).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn parses_decimal_strings() {
        assert_eq!(UsdcAmount::parse_usdc("0.42").unwrap().micros(), 420_000);
        assert_eq!(UsdcAmount::parse_usdc("12").unwrap().micros(), 12_000_000);
        assert_eq!(UsdcAmount::parse_usdc("0.000001").unwrap().micros(), 1);
    }

    #[test]
    fn rejects_malformed_and_imprecise() {
        for bad in ["", ".5", "1.", "-1", "1e3", "0,5", " 1", "NaN", "1.2.3"] {
            assert_eq!(
                UsdcAmount::parse_usdc(bad),
                Err(AmountError::Malformed),
                "{bad:?}"
            );
        }
        assert_eq!(
            UsdcAmount::parse_usdc("0.0000001"),
            Err(AmountError::TooPrecise)
        );
        assert_eq!(
            UsdcAmount::parse_usdc("18446744073710"),
            Err(AmountError::Overflow)
        );
        assert_eq!(
            UsdcAmount::parse_atomic("0.016"),
            Err(AmountError::Malformed)
        );
    }

    #[test]
    fn displays_with_at_least_two_decimals() {
        assert_eq!(UsdcAmount::from_micros(420_000).to_string(), "0.42");
        assert_eq!(UsdcAmount::from_micros(1_000_000).to_string(), "1.00");
        assert_eq!(UsdcAmount::from_micros(1).to_string(), "0.000001");
        assert_eq!(UsdcAmount::from_micros(50_000).to_string(), "0.05");
    }

    #[test]
    fn serialises_as_string() {
        let json = serde_json::to_string(&UsdcAmount::from_micros(420_000)).unwrap();
        assert_eq!(json, "\"0.42\"");
        let back: UsdcAmount = serde_json::from_str(&json).unwrap();
        assert_eq!(back.micros(), 420_000);
        assert!(
            serde_json::from_str::<UsdcAmount>("0.42").is_err(),
            "floats are refused"
        );
    }

    proptest! {
        #[test]
        fn display_parse_round_trip(m in 0u64..=u64::MAX / 2) {
            let a = UsdcAmount::from_micros(m);
            prop_assert_eq!(UsdcAmount::parse_usdc(&a.to_string()).unwrap(), a);
        }
    }
}
