//! Query strings of the read routes: `name=value` pairs, percent-decoded (and `+` as a space) as clients
//! encode them, each handed to the route's parser; an unknown name, or a name given twice, is a 400.

use crate::ApiError;

/// The query's `name=value` pairs, each parsed by `set`; any other name is a 400, and so is a name given twice
/// (which one counts would be a guess: a proxy or a cache may read the first).
pub fn params(
    query: Option<&str>,
    expected: &str,
    mut set: impl FnMut(&str, &str) -> Result<bool, ApiError>,
) -> Result<(), ApiError> {
    let mut seen: Vec<String> = Vec::new();
    for (k, v) in form_urlencoded::parse(query.unwrap_or_default().as_bytes()) {
        if seen.iter().any(|s| *s == k) {
            return Err(ApiError::invalid(
                k.to_string(),
                format!("{k} is given twice"),
            ));
        }
        seen.push(k.to_string());
        if !set(&k, &v)? {
            return Err(ApiError::invalid(
                k.to_string(),
                format!("unknown query parameter {k:?}; expected {expected}"),
            ));
        }
    }
    Ok(())
}

/// The value of parameter `k` as a non-negative integer.
pub fn uint(k: &str, v: &str) -> Result<u64, ApiError> {
    v.parse::<u64>().map_err(|_| {
        // Digits alone that do not fit are a number too large, not "not an integer".
        let message = if !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()) {
            format!("{k} must be at most {}", u64::MAX)
        } else {
            format!("{k} must be a non-negative integer")
        };
        ApiError::invalid(k.to_owned(), message)
    })
}

/// A `limit` parameter: an integer from 1 to `max` (any other, however large, is told the range).
pub fn limit(v: &str, max: u32) -> Result<u32, ApiError> {
    let out_of_range = || ApiError::invalid("limit", format!("limit must be 1-{max}"));
    let digits = !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit());
    let n = if digits {
        v.parse::<u64>().unwrap_or(u64::MAX)
    } else {
        uint("limit", v)?
    };
    u32::try_from(n)
        .ok()
        .filter(|l| (1..=max).contains(l))
        .ok_or_else(out_of_range)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parsed(query: &str) -> Result<Vec<(String, u64)>, ApiError> {
        let mut out = Vec::new();
        params(Some(query), "from or limit", |k, v| {
            Ok(match k {
                "from" | "limit" => {
                    out.push((k.to_owned(), uint(k, v)?));
                    true
                }
                _ => false,
            })
        })?;
        Ok(out)
    }

    /// A name given twice is refused, not read as its last value (a fresh-user trial, thirty-first session:
    /// `granularity=hour&granularity=day` answered by day).
    #[test]
    fn names_are_known_given_once_and_decoded() {
        assert_eq!(
            parsed("from=1&limit=%32").unwrap(),
            [("from".to_owned(), 1), ("limit".to_owned(), 2)]
        );
        let twice = parsed("from=1&from=2").unwrap_err();
        assert_eq!(twice.field.as_deref(), Some("from"));
        assert!(twice.message.contains("given twice"), "{}", twice.message);
        let unknown = parsed("form=1").unwrap_err();
        assert!(
            unknown.message.contains("expected from or limit"),
            "{}",
            unknown.message
        );
        assert_eq!(
            parsed("limit=x").unwrap_err().field.as_deref(),
            Some("limit")
        );
        assert_eq!(limit("0", 10).unwrap_err().field.as_deref(), Some("limit"));
        assert_eq!(limit("10", 10).unwrap(), 10);
        // Too large is told the range, however large (a fresh-user trial: 20 digits read "not an integer").
        for v in ["11", "99999999999999999999"] {
            assert_eq!(limit(v, 10).unwrap_err().message, "limit must be 1-10");
        }
        assert_eq!(
            limit("-1", 10).unwrap_err().message,
            "limit must be a non-negative integer"
        );
        assert_eq!(
            uint("from", "99999999999999999999").unwrap_err().message,
            format!("from must be at most {}", u64::MAX)
        );
    }
}
