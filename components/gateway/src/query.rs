//! Query strings: `name=value` pairs, percent-decoded (and `+` as a space) as clients encode them, each
//! handed to the route's parser; unknown names are a 400.

use esim402_core::ApiError;

/// The query's `name=value` pairs, each parsed by `set`; any other name is a 400.
pub fn params(
    query: Option<&str>,
    expected: &str,
    mut set: impl FnMut(&str, &str) -> Result<bool, ApiError>,
) -> Result<(), ApiError> {
    for (k, v) in form_urlencoded::parse(query.unwrap_or_default().as_bytes()) {
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
    v.parse::<u64>()
        .map_err(|_| ApiError::invalid(k.to_owned(), format!("{k} must be a non-negative integer")))
}

/// A `limit` parameter: an integer from 1 to `max`.
pub fn limit(v: &str, max: u32) -> Result<u32, ApiError> {
    u32::try_from(uint("limit", v)?)
        .ok()
        .filter(|l| (1..=max).contains(l))
        .ok_or_else(|| ApiError::invalid("limit", format!("limit must be 1-{max}")))
}
