//! Helpers the fuzz targets share: the round-trip checks.
//!
//! A target fails only on a real bug: a panic inside a parser, or a value that parsed but does not come back
//! equal after encoding and parsing again. Parse errors are the expected answer to most inputs and are ignored.

use std::fmt::Debug;

use serde::Serialize;
use serde::de::DeserializeOwned;

/// Unix time the targets pass as `now` (2026-12-02).
pub const NOW: u64 = 1_796_169_600;

/// Parse `bytes` as JSON into `T`; if that works, serialise it and check the text parses back to an equal value.
pub fn json_roundtrip<T>(bytes: &[u8]) -> Option<T>
where
    T: Serialize + DeserializeOwned + PartialEq + Debug,
{
    let value: T = serde_json::from_slice(bytes).ok()?;
    assert_json_roundtrip(&value);
    Some(value)
}

/// Check that `value` serialises to JSON that parses back to an equal value.
pub fn assert_json_roundtrip<T>(value: &T)
where
    T: Serialize + DeserializeOwned + PartialEq + Debug,
{
    let text = serde_json::to_string(value).expect("a parsed value serialises");
    let again: T = serde_json::from_str(&text)
        .unwrap_or_else(|e| panic!("re-encoded value does not parse: {e}\n{text}"));
    assert_eq!(&again, value, "round trip changed the value:\n{text}");
}
