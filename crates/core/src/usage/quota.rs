//! The quota request (`POST /v1/esim/{iccid}/data`) body, parsed at the boundary: optional `quota_kb` (the
//! grant wanted), `top_up_mb` (the top-up to offer or pay) and `invoice_id` (a tx-hash proof's invoice). An
//! empty body is all defaults; an unknown field or a bad value is a 400 naming it.

use serde_json::Value;

use super::account::BYTES_PER_KB;
use crate::ApiError;
use crate::ids::DataMb;

/// A parsed quota request.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct QuotaRequest {
    /// The grant wanted, in bytes (`quota_kb` × 1 000).
    pub quota: Option<u64>,
    /// The top-up size to offer (or pay).
    pub top_up_mb: Option<u32>,
    /// The invoice a tx-hash proof pays.
    pub invoice_id: Option<String>,
    /// The wallet that will pay the top-up (checksummed); required by tx-hash proofs, which must come from it.
    pub payer: Option<String>,
}

impl QuotaRequest {
    /// Parse a body.
    pub fn parse(body: &[u8]) -> Result<Self, ApiError> {
        if body.iter().all(u8::is_ascii_whitespace) {
            return Ok(Self::default());
        }
        let value = crate::json_body::parse(body)
            .map_err(|e| ApiError::invalid("body", format!("body is not valid JSON: {e}")))?;
        let Value::Object(obj) = value else {
            return Err(ApiError::invalid("body", "body must be a JSON object"));
        };
        let mut out = Self::default();
        for (k, v) in obj {
            match k.as_str() {
                "quota_kb" => {
                    let kb = v
                        .as_u64()
                        .filter(|n| (1..=100_000_000).contains(n))
                        .ok_or_else(|| {
                            ApiError::invalid("quota_kb", "quota_kb must be an integer 1-100000000")
                        })?;
                    out.quota = Some(kb * BYTES_PER_KB);
                }
                "top_up_mb" => {
                    let mb = v
                        .as_u64()
                        .and_then(|n| DataMb::new(n).ok())
                        .ok_or_else(|| {
                            ApiError::invalid("top_up_mb", "top_up_mb must be an integer 1-100000")
                        })?;
                    out.top_up_mb = Some(mb.get());
                }
                "payer" => {
                    let a = v
                        .as_str()
                        .and_then(|s| crate::chain::parse_payer(s).ok())
                        .ok_or_else(|| {
                            ApiError::invalid(
                                "payer",
                                "payer must be a 0x-prefixed 20-byte address, not the zero address",
                            )
                        })?;
                    out.payer = Some(a.to_checksum(None));
                }
                "invoice_id" => {
                    out.invoice_id = Some(v.as_str().map(str::to_owned).ok_or_else(|| {
                        ApiError::invalid("invoice_id", "invoice_id must be a string")
                    })?);
                }
                other => {
                    return Err(ApiError::invalid(
                        other,
                        format!(
                            "unknown field {other:?}; expected quota_kb, top_up_mb, payer, invoice_id"
                        ),
                    ));
                }
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn field(body: &str) -> Option<String> {
        QuotaRequest::parse(body.as_bytes())
            .err()
            .and_then(|e| e.field)
    }

    #[test]
    fn bodies() {
        assert_eq!(QuotaRequest::parse(b"").unwrap(), QuotaRequest::default());
        assert_eq!(
            QuotaRequest::parse(b" {} ").unwrap(),
            QuotaRequest::default()
        );
        let q = QuotaRequest::parse(br#"{"quota_kb": 5, "top_up_mb": 50}"#).unwrap();
        assert_eq!((q.quota, q.top_up_mb), (Some(5_000), Some(50)));
        assert_eq!(field(r#"{"quota_kb": 0}"#).as_deref(), Some("quota_kb"));
        assert_eq!(field(r#"{"quota_kb": 1.5}"#).as_deref(), Some("quota_kb"));
        assert_eq!(
            field(r#"{"top_up_mb": 100001}"#).as_deref(),
            Some("top_up_mb")
        );
        assert_eq!(field(r#"{"invoice_id": 3}"#).as_deref(), Some("invoice_id"));
        assert_eq!(field(r#"{"x": 1}"#).as_deref(), Some("x"));
        assert_eq!(field(r#"{"payer": "0x12"}"#).as_deref(), Some("payer"));
        assert_eq!(
            field(r#"{"payer": "0x0000000000000000000000000000000000000000"}"#).as_deref(),
            Some("payer")
        );
        let q = QuotaRequest::parse(br#"{"payer": "0xa0ee7a142d267c1f36714e4a8f75612f20a79720"}"#)
            .unwrap();
        assert_eq!(
            q.payer.as_deref(),
            Some("0xa0Ee7A142d267C1f36714E4a8F75612F20a79720")
        );
        assert_eq!(field("[1]").as_deref(), Some("body"));
        assert_eq!(field("{").as_deref(), Some("body"));
    }

    #[test]
    fn a_payer_without_0x_is_refused_naming_it() {
        let err = QuotaRequest::parse(br#"{"payer": "a0ee7a142d267c1f36714e4a8f75612f20a79720"}"#)
            .unwrap_err();
        assert_eq!(err.field.as_deref(), Some("payer"));
        assert!(err.message.contains("0x"), "{}", err.message);
    }
}
