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

impl ApiError {
    /// An error of `kind` with `message`.
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Self {
            kind,
            message: message.into(),
            field: None,
        }
    }

    /// Bad input in `field`.
    pub fn invalid(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            kind: ErrorKind::InvalidInput,
            message: message.into(),
            field: Some(field.into()),
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
