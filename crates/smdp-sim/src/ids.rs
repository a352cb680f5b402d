//! Identifier arithmetic the simulator needs: ICCID Luhn check digits and minting, EID ISO/IEC 7064
//! MOD 97-10 checks, MatchingID generation and validation, and the ES2+ UTC timestamp format.
//!
//! Written here rather than shared with `esim402-core` on purpose: the simulator is an independent peer, so a
//! bug in our client's identifier handling shows up as a disagreement instead of being mirrored.

use std::time::{SystemTime, UNIX_EPOCH};

/// Length of every ICCID the simulator mints (payload of 18 digits plus the Luhn check digit).
pub const MINTED_ICCID_LEN: usize = 19;

/// The Luhn check digit for a string of decimal digits, or `None` if it contains anything else.
pub fn luhn_check_digit(payload: &str) -> Option<u8> {
    let mut sum = 0u32;
    // Double every second digit counting from the rightmost payload digit (which the check digit will follow).
    for (i, c) in payload.bytes().rev().enumerate() {
        if !c.is_ascii_digit() {
            return None;
        }
        let mut d = u32::from(c - b'0');
        if i % 2 == 0 {
            d *= 2;
            if d > 9 {
                d -= 9;
            }
        }
        sum += d;
    }
    // `sum % 10` is below 10, so the cast cannot truncate.
    Some(((10 - sum % 10) % 10) as u8)
}

/// Whether a digit string ends in a correct Luhn check digit.
pub fn luhn_valid(digits: &str) -> bool {
    let Some((payload, check)) = digits.len().checked_sub(1).map(|n| digits.split_at(n)) else {
        return false;
    };
    match (luhn_check_digit(payload), check.bytes().next()) {
        (Some(expected), Some(c)) if c.is_ascii_digit() => expected == c - b'0',
        _ => false,
    }
}

/// Normalises an ES2+ ICCID: 18–20 decimal digits, or 19 digits padded with a trailing `F` to 20 (pre-v2.2
/// peers). Returns the digits, or `None` if the value is not a well-formed ICCID with a valid Luhn digit.
pub fn normalize_iccid(raw: &str) -> Option<String> {
    let digits = match raw.strip_suffix(['F', 'f']) {
        Some(d) if raw.len() == 20 => d,
        Some(_) => return None,
        None => raw,
    };
    let ok = (18..=20).contains(&digits.len())
        && digits.bytes().all(|b| b.is_ascii_digit())
        && luhn_valid(digits);
    ok.then(|| digits.to_owned())
}

/// Whether `prefix` can start minted ICCIDs: decimal digits, starting with `89` (ITU-T E.118 telecom), and
/// short enough to leave at least two serial digits.
pub fn valid_iccid_prefix(prefix: &str) -> bool {
    prefix.starts_with("89")
        && prefix.len() <= MINTED_ICCID_LEN - 3
        && prefix.bytes().all(|b| b.is_ascii_digit())
}

/// How many distinct serials fit after `prefix` (so how many ICCIDs can be minted with it).
pub fn iccid_capacity(prefix: &str) -> u64 {
    let serial_digits = (MINTED_ICCID_LEN - 1).saturating_sub(prefix.len());
    u32::try_from(serial_digits)
        .ok()
        .and_then(|d| 10u64.checked_pow(d))
        .unwrap_or(u64::MAX)
}

/// Mints the 19-digit ICCID `prefix + zero-padded serial + Luhn digit`, or `None` if the serial does not fit
/// or the prefix is not usable.
pub fn mint_iccid(prefix: &str, serial: u64) -> Option<String> {
    if !valid_iccid_prefix(prefix) || serial >= iccid_capacity(prefix) {
        return None;
    }
    let width = MINTED_ICCID_LEN - 1 - prefix.len();
    let payload = format!("{prefix}{serial:0width$}");
    let check = luhn_check_digit(&payload)?;
    Some(format!("{payload}{check}"))
}

/// Whether an EID is exactly 32 decimal digits whose ISO/IEC 7064 MOD 97-10 check holds (`EID mod 97 == 1`).
pub fn eid_valid(eid: &str) -> bool {
    if eid.len() != 32 || !eid.bytes().all(|b| b.is_ascii_digit()) {
        return false;
    }
    let rem = eid
        .bytes()
        .fold(0u32, |acc, b| (acc * 10 + u32::from(b - b'0')) % 97);
    rem == 1
}

/// Longest MatchingID the simulator accepts from a client.
pub const MAX_MATCHING_ID_LEN: usize = 64;

/// Whether a client-supplied MatchingID uses only `[0-9A-Za-z-]` and is 1–64 characters long.
pub fn valid_matching_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= MAX_MATCHING_ID_LEN
        && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
}

const MATCHING_ID_ALPHABET: &[u8; 36] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789";

/// A random MatchingID `XXXX-XXXX-XXXX-XXXX` from the QR alphanumeric set (upper case and digits).
pub fn generate_matching_id() -> Result<String, getrandom::Error> {
    let mut raw = [0u8; 16];
    getrandom::fill(&mut raw)?;
    let mut out = String::with_capacity(19);
    for (i, b) in raw.iter().enumerate() {
        if i > 0 && i % 4 == 0 {
            out.push('-');
        }
        // 256 is not a multiple of 36; the slight bias is irrelevant for a simulator's tokens.
        out.push(char::from(
            MATCHING_ID_ALPHABET[usize::from(*b) % MATCHING_ID_ALPHABET.len()],
        ));
    }
    Ok(out)
}

/// A random lower-case hex string of `bytes * 2` characters (function call identifiers of our callbacks).
pub fn random_hex(bytes: usize) -> Result<String, getrandom::Error> {
    let mut raw = vec![0u8; bytes];
    getrandom::fill(&mut raw)?;
    Ok(raw.iter().map(|b| format!("{b:02x}")).collect())
}

/// `time` as an ES2+ timestamp `YYYY-MM-DDThh:mm:ssZ` (UTC). Times before 1970 clamp to the epoch.
pub fn es2_timestamp(time: SystemTime) -> String {
    let secs = time.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let days = i64::try_from(secs / 86_400).unwrap_or(i64::MAX / 2);
    let rem = secs % 86_400;
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        (rem % 3600) / 60,
        rem % 60
    )
}

/// Days since 1970-01-01 to a proleptic Gregorian (year, month, day); Howard Hinnant's `civil_from_days`.
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    // d ∈ 1..=31 and m ∈ 1..=12 by construction.
    let (m, d) = (u32::try_from(m).unwrap_or(1), u32::try_from(d).unwrap_or(1));
    (if m <= 2 { y + 1 } else { y }, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn luhn_known_iccids() {
        // The reference example from the eSIM notes and a classic Luhn sample.
        assert!(luhn_valid("8944478600003770170"));
        assert!(!luhn_valid("8944478600003770171"));
        assert_eq!(luhn_check_digit("7992739871"), Some(3));
        assert_eq!(luhn_check_digit("12a"), None);
        assert!(!luhn_valid(""));
        assert!(!luhn_valid("5"));
        assert!(luhn_valid("0"));
    }

    #[test]
    fn minted_iccids_are_19_digits_with_valid_luhn() {
        let a = mint_iccid("8901260", 1).unwrap();
        assert_eq!(a.len(), 19);
        assert!(a.starts_with("890126000000000001"));
        assert!(luhn_valid(&a));
        for serial in [0, 7, 42, 99_999, 12_345_678_901] {
            let iccid = mint_iccid("8901260", serial).unwrap();
            assert_eq!(iccid.len(), 19);
            assert!(luhn_valid(&iccid), "{iccid}");
            assert_eq!(normalize_iccid(&iccid).as_deref(), Some(iccid.as_str()));
        }
        // 11 serial digits after a 7-digit prefix.
        assert_eq!(iccid_capacity("8901260"), 100_000_000_000);
        assert!(mint_iccid("8901260", 100_000_000_000).is_none());
        assert!(mint_iccid("9901260", 1).is_none());
        assert!(mint_iccid("89x", 1).is_none());
    }

    #[test]
    fn iccid_normalisation() {
        assert_eq!(
            normalize_iccid("8944478600003770170F").as_deref(),
            Some("8944478600003770170")
        );
        assert_eq!(normalize_iccid("8944478600003770171"), None);
        assert_eq!(normalize_iccid("894447860000377017F"), None);
        assert_eq!(normalize_iccid("12345"), None);
        assert_eq!(normalize_iccid("89444786000037701x0"), None);
    }

    #[test]
    fn eid_mod97() {
        assert!(eid_valid("89049032123451234512345678901235"));
        assert!(!eid_valid("89049032123451234512345678901236"));
        assert!(!eid_valid("8904903212345123451234567890123"));
        assert!(!eid_valid("8904903212345123451234567890123a"));
    }

    #[test]
    fn matching_ids() {
        let id = generate_matching_id().unwrap();
        assert_eq!(id.len(), 19);
        for (i, c) in id.chars().enumerate() {
            if i % 5 == 4 {
                assert_eq!(c, '-');
            } else {
                assert!(c.is_ascii_uppercase() || c.is_ascii_digit(), "{id}");
            }
        }
        assert!(valid_matching_id(&id));
        assert_ne!(id, generate_matching_id().unwrap());
        assert!(!valid_matching_id(""));
        assert!(!valid_matching_id("AB$CD"));
        assert!(!valid_matching_id(&"A".repeat(65)));
    }

    #[test]
    fn timestamps() {
        assert_eq!(es2_timestamp(UNIX_EPOCH), "1970-01-01T00:00:00Z");
        let t = UNIX_EPOCH + Duration::from_secs(1_764_000_000);
        assert_eq!(es2_timestamp(t), "2025-11-24T16:00:00Z");
        // A leap day.
        let t = UNIX_EPOCH + Duration::from_secs(951_782_400 + 3_661);
        assert_eq!(es2_timestamp(t), "2000-02-29T01:01:01Z");
    }
}
