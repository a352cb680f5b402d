//! JSON-RPC hex encodings: quantities (`"0x1a"`, big-endian, no padding) and data (`"0x…"`, whole bytes).
//!
//! Parsing is strict about shape (a `0x` prefix, hex digits only, whole bytes for data, exact lengths for hashes
//! and addresses) and about range (a quantity that does not fit the target type is an error, never truncated).
//! Leading zeros in quantities are tolerated: some nodes send them, and they change no value.

use alloy_primitives::{Address, B256, Bytes, U256};

/// Why a hex string from a node was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum HexError {
    /// No `0x` prefix.
    #[error("hex value must start with 0x")]
    MissingPrefix,
    /// A quantity with no digits (`"0x"`).
    #[error("hex quantity has no digits")]
    Empty,
    /// A character that is not a hex digit.
    #[error("invalid hex digit")]
    InvalidDigit,
    /// Data with an odd number of digits.
    #[error("hex data has an odd number of digits")]
    OddLength,
    /// A fixed-size value of the wrong length.
    #[error("hex value must be {expected} bytes, found {found}")]
    WrongLength {
        /// Bytes required.
        expected: usize,
        /// Bytes found.
        found: usize,
    },
    /// A quantity too large for its type.
    #[error("hex quantity does not fit in {bits} bits")]
    Overflow {
        /// Width of the target type.
        bits: u32,
    },
}

fn strip_prefix(s: &str) -> Result<&str, HexError> {
    let digits = s.strip_prefix("0x").ok_or(HexError::MissingPrefix)?;
    if !digits.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(HexError::InvalidDigit);
    }
    Ok(digits)
}

/// Parse a quantity as a `U256`.
pub fn parse_u256(s: &str) -> Result<U256, HexError> {
    let digits = strip_prefix(s)?;
    if digits.is_empty() {
        return Err(HexError::Empty);
    }
    let significant = digits.trim_start_matches('0');
    if significant.len() > 64 {
        return Err(HexError::Overflow { bits: 256 });
    }
    if significant.is_empty() {
        return Ok(U256::ZERO);
    }
    U256::from_str_radix(significant, 16).map_err(|_| HexError::Overflow { bits: 256 })
}

/// Parse a quantity as a `u64` (block numbers, nonces, gas).
pub fn parse_u64(s: &str) -> Result<u64, HexError> {
    u64::try_from(parse_u256(s)?).map_err(|_| HexError::Overflow { bits: 64 })
}

/// Parse a quantity as a `u128` (fees per gas in wei).
pub fn parse_u128(s: &str) -> Result<u128, HexError> {
    u128::try_from(parse_u256(s)?).map_err(|_| HexError::Overflow { bits: 128 })
}

/// Parse data of any whole number of bytes (`"0x"` is empty data).
pub fn parse_data(s: &str) -> Result<Bytes, HexError> {
    let digits = strip_prefix(s)?;
    if digits.len() % 2 != 0 {
        return Err(HexError::OddLength);
    }
    hex::decode(digits)
        .map(Bytes::from)
        .map_err(|_| HexError::InvalidDigit)
}

fn parse_fixed<const N: usize>(s: &str) -> Result<[u8; N], HexError> {
    let data = parse_data(s)?;
    <[u8; N]>::try_from(data.as_ref()).map_err(|_| HexError::WrongLength {
        expected: N,
        found: data.len(),
    })
}

/// Parse a 32-byte hash (transaction hash, log topic).
pub fn parse_b256(s: &str) -> Result<B256, HexError> {
    parse_fixed::<32>(s).map(B256::from)
}

/// Parse a 20-byte address (any case; checksums are not enforced on input).
pub fn parse_address(s: &str) -> Result<Address, HexError> {
    parse_fixed::<20>(s).map(Address::from)
}

/// Encode a quantity: `0x` and lowercase hex without leading zeros (`"0x0"` for zero).
pub fn encode_quantity(v: U256) -> String {
    format!("0x{v:x}")
}

/// [`encode_quantity`] for a `u64`.
pub fn encode_u64(v: u64) -> String {
    format!("0x{v:x}")
}

/// Encode data: `0x` and lowercase hex.
pub fn encode_data(bytes: &[u8]) -> String {
    format!("0x{}", hex::encode(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantities_parse_and_range_check() {
        assert_eq!(parse_u64("0x0"), Ok(0));
        assert_eq!(parse_u64("0x1a"), Ok(26));
        assert_eq!(parse_u64("0x001A"), Ok(26));
        assert_eq!(parse_u64("0xffffffffffffffff"), Ok(u64::MAX));
        assert_eq!(
            parse_u64("0x10000000000000000"),
            Err(HexError::Overflow { bits: 64 })
        );
        assert_eq!(parse_u128(&format!("0x{}", "f".repeat(32))), Ok(u128::MAX));
        assert_eq!(
            parse_u128(&format!("0x1{}", "0".repeat(32))),
            Err(HexError::Overflow { bits: 128 })
        );
        assert_eq!(parse_u256(&format!("0x{}", "f".repeat(64))), Ok(U256::MAX));
        assert_eq!(
            parse_u256(&format!("0x1{}", "0".repeat(64))),
            Err(HexError::Overflow { bits: 256 })
        );
        assert_eq!(
            parse_u256(&format!("0x{}1", "0".repeat(80))),
            Ok(U256::from(1))
        );
    }

    #[test]
    fn malformed_quantities_are_typed_errors() {
        assert_eq!(parse_u64("26"), Err(HexError::MissingPrefix));
        assert_eq!(parse_u64("0X1a"), Err(HexError::MissingPrefix));
        assert_eq!(parse_u64(""), Err(HexError::MissingPrefix));
        assert_eq!(parse_u64("0x"), Err(HexError::Empty));
        assert_eq!(parse_u64("0xg1"), Err(HexError::InvalidDigit));
        assert_eq!(parse_u64("0x-1"), Err(HexError::InvalidDigit));
        assert_eq!(parse_u64("0x 1"), Err(HexError::InvalidDigit));
        assert_eq!(parse_u64("0x+1"), Err(HexError::InvalidDigit));
    }

    #[test]
    fn data_hashes_and_addresses() {
        assert_eq!(parse_data("0x"), Ok(Bytes::new()));
        assert_eq!(parse_data("0x00ff").unwrap().as_ref(), &[0u8, 0xff]);
        assert_eq!(parse_data("0x0"), Err(HexError::OddLength));
        assert_eq!(parse_data("00"), Err(HexError::MissingPrefix));
        assert_eq!(
            parse_b256(&format!("0x{}", "ab".repeat(32))),
            Ok(B256::repeat_byte(0xab))
        );
        assert_eq!(
            parse_b256("0xabcd"),
            Err(HexError::WrongLength {
                expected: 32,
                found: 2
            })
        );
        assert_eq!(
            parse_address("0xF39FD6E51AAD88F6F4CE6AB8827279CFFFB92266")
                .unwrap()
                .to_checksum(None),
            "0xf39Fd6e51aad88F6F4ce6aB8827279cffFb92266"
        );
        assert!(matches!(
            parse_address("0xf39f"),
            Err(HexError::WrongLength { expected: 20, .. })
        ));
    }

    #[test]
    fn encodings_are_compact() {
        assert_eq!(encode_u64(0), "0x0");
        assert_eq!(encode_u64(26), "0x1a");
        assert_eq!(encode_quantity(U256::ZERO), "0x0");
        assert_eq!(encode_quantity(U256::from(26)), "0x1a");
        assert_eq!(encode_quantity(U256::MAX), format!("0x{}", "f".repeat(64)));
        assert_eq!(encode_data(&[]), "0x");
        assert_eq!(encode_data(&[0, 0xab]), "0x00ab");
    }
}
