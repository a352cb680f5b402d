//! The one error type every HTTP answer is built from: a kind (which decides the status code, in one place),
//! a human message and, for bad input, the offending field. Serialised as
//! `{"error": {"code": "invalid_input", "message": "…", "field": "data_mb"}}`.

use serde::Serialize;

/// What went wrong, as a client should branch on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorKind {
    /// Malformed or out-of-range input (400).
    InvalidInput,
    /// Missing or wrong credentials (401).
    Unauthorized,
    /// Disabled or not permitted (403).
    Forbidden,
    /// Unknown resource (404).
    NotFound,
    /// Method not allowed on this route (405).
    MethodNotAllowed,
    /// Conflicts with current state (409).
    Conflict,
    /// Past its deadline (410).
    Expired,
    /// Body too large (413).
    PayloadTooLarge,
    /// Wrong content type (415).
    UnsupportedMediaType,
    /// Payment required or rejected (402).
    PaymentRequired,
    /// An upstream is unavailable (503).
    Unavailable,
    /// Internal fault (500); never carries secrets.
    Internal,
}

impl ErrorKind {
    /// The HTTP status for this kind: the single place this mapping lives.
    pub const fn status(self) -> u16 {
        match self {
            Self::InvalidInput => 400,
            Self::PaymentRequired => 402,
            Self::Unauthorized => 401,
            Self::Forbidden => 403,
            Self::NotFound => 404,
            Self::MethodNotAllowed => 405,
            Self::Conflict => 409,
            Self::Expired => 410,
            Self::PayloadTooLarge => 413,
            Self::UnsupportedMediaType => 415,
            Self::Internal => 500,
            Self::Unavailable => 503,
        }
    }
}

/// A typed API error.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, thiserror::Error)]
#[error("{kind:?}: {message}")]
pub struct ApiError {
    /// Machine-readable kind.
    #[serde(rename = "code")]
    pub kind: ErrorKind,
    /// Human-readable explanation.
    pub message: String,
    /// The request field at fault, for `InvalidInput`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
}

/// The longest `message` an error carries, in characters: messages may quote what the client sent (a path, a
/// parameter's name), which must not make an error answer as large as the request.
pub const MAX_MESSAGE_CHARS: usize = 1_000;
/// The longest `field`, in characters (an unknown parameter's name is the client's).
pub const MAX_FIELD_CHARS: usize = 100;

/// `s` cut to `max` characters, marked with `…` when cut (error texts here; any text kept from another party).
pub fn bounded(s: String, max: usize) -> String {
    match s.char_indices().nth(max) {
        Some((at, _)) => format!("{}…", &s[..at]),
        None => s,
    }
}

impl ApiError {
    /// An error of `kind` with `message` (at most [`MAX_MESSAGE_CHARS`]).
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Self {
            kind,
            message: bounded(message.into(), MAX_MESSAGE_CHARS),
            field: None,
        }
    }

    /// Bad input in `field` (at most [`MAX_FIELD_CHARS`]), with `message`.
    pub fn invalid(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            kind: ErrorKind::InvalidInput,
            message: bounded(message.into(), MAX_MESSAGE_CHARS),
            field: Some(bounded(field.into(), MAX_FIELD_CHARS)),
        }
    }

    /// Unknown resource.
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::NotFound, message)
    }

    /// Internal fault.
    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Internal, message)
    }

    /// The HTTP status code.
    pub const fn status(&self) -> u16 {
        self.kind.status()
    }

    /// The JSON body: `{"error": {...}}`.
    pub fn to_json(&self) -> String {
        serde_json::json!({ "error": self }).to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A message or field quoting the client (a 60 KB path, an unknown parameter's name) is cut: before, the
    /// error answer was as large as the request.
    #[test]
    fn messages_and_fields_are_bounded() {
        let long = "é".repeat(5_000);
        let e = ApiError::new(ErrorKind::NotFound, format!("no route for {long}"));
        assert_eq!(e.message.chars().count(), MAX_MESSAGE_CHARS + 1);
        assert!(e.message.ends_with('…') && e.message.starts_with("no route for é"));
        let e = ApiError::invalid(long.clone(), "unknown parameter");
        assert_eq!(e.field.unwrap().chars().count(), MAX_FIELD_CHARS + 1);
        let short = ApiError::invalid("data_mb", "data_mb is required");
        assert_eq!(
            (short.field.as_deref(), short.message.as_str()),
            (Some("data_mb"), "data_mb is required")
        );
    }

    #[test]
    fn json_names_code_message_and_field() {
        let e = ApiError::invalid("data_mb", "must be between 1 and 100000");
        let v: serde_json::Value = serde_json::from_str(&e.to_json()).unwrap();
        assert_eq!(v["error"]["code"], "invalid_input");
        assert_eq!(v["error"]["field"], "data_mb");
        assert_eq!(v["error"]["message"], "must be between 1 and 100000");
        assert_eq!(e.status(), 400);
        let nf = ApiError::not_found("no invoice inv_x");
        assert!(!nf.to_json().contains("field"));
        assert_eq!(nf.status(), 404);
    }
}
