//! Query strings: `name=value` pairs, each handed to the route's parser; unknown names are a 400.

use esim402_core::ApiError;

/// The query's `name=value` pairs, each parsed by `set`; any other name is a 400.
pub fn params(
    query: Option<&str>,
    expected: &str,
    mut set: impl FnMut(&str, &str) -> Result<bool, ApiError>,
) -> Result<(), ApiError> {
    for pair in query
        .unwrap_or_default()
        .split('&')
        .filter(|p| !p.is_empty())
    {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        if !set(k, v)? {
            return Err(ApiError::invalid(
                k.to_owned(),
                format!("unknown query parameter {k:?}; expected {expected}"),
            ));
        }
    }
    Ok(())
}
