//! The x402 HTTP headers: names, and standard base64 (RFC 4648 `+/`) over UTF-8 JSON in both directions.
//!
//! Decoders never panic: bad base64, bad JSON or a wrong shape is a typed [`HeaderError`], which maps to a 400
//! [`ApiError`] (or a fresh 402 challenge, the resource server's choice; reference §7.2: never a 5xx).
//! Padding is optional on input and always written on output.

use base64::Engine as _;
use base64::engine::DecodePaddingMode;
use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig, STANDARD};
use serde::de::DeserializeOwned;

use super::reason::InvalidReason;
use super::wire::{
    PayloadError, PaymentPayload, PaymentRequired, SettleResponse, from_json_slice, to_json,
};
use crate::api_error::{ApiError, ErrorKind};

/// v2 challenge header (server → client, with status 402).
pub const PAYMENT_REQUIRED: &str = "PAYMENT-REQUIRED";
/// v2 payment header (client → server).
pub const PAYMENT_SIGNATURE: &str = "PAYMENT-SIGNATURE";
/// v1 payment header (client → server).
pub const X_PAYMENT: &str = "X-PAYMENT";
/// v2 settlement header (server → client).
pub const PAYMENT_RESPONSE: &str = "PAYMENT-RESPONSE";
/// v1 settlement header (server → client).
pub const X_PAYMENT_RESPONSE: &str = "X-PAYMENT-RESPONSE";
/// `Access-Control-Expose-Headers` value for paid and challenge responses.
pub const EXPOSE_HEADERS: &str = "PAYMENT-REQUIRED, PAYMENT-RESPONSE, X-PAYMENT-RESPONSE";

/// Longest header value we decode (a 65-byte-signature payload is about 1.5 KiB of base64).
pub const MAX_HEADER_LEN: usize = 16 * 1024;

/// Standard alphabet; padding optional on input (some clients strip it).
const LENIENT: GeneralPurpose = GeneralPurpose::new(
    &base64::alphabet::STANDARD,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// Why an x402 header value did not decode.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HeaderError {
    /// Empty (or only whitespace).
    #[error("{header} header is empty")]
    Empty {
        /// The header name.
        header: &'static str,
    },
    /// Longer than [`MAX_HEADER_LEN`].
    #[error("{header} header is {len} bytes, more than {MAX_HEADER_LEN}")]
    TooLong {
        /// The header name.
        header: &'static str,
        /// Its length.
        len: usize,
    },
    /// Not standard base64.
    #[error("{header} header is not standard base64")]
    Base64 {
        /// The header name.
        header: &'static str,
    },
    /// Base64 of something that is not the expected JSON.
    #[error("{header} header: {source}")]
    Payload {
        /// The header name.
        header: &'static str,
        /// Why the JSON was refused.
        source: PayloadError,
    },
}

impl HeaderError {
    /// The header at fault.
    pub const fn header(&self) -> &'static str {
        match self {
            Self::Empty { header }
            | Self::TooLong { header, .. }
            | Self::Base64 { header }
            | Self::Payload { header, .. } => header,
        }
    }

    /// The x402 reason (`invalid_x402_version` for a version problem, else `invalid_payload`).
    pub const fn reason(&self) -> InvalidReason {
        match self {
            Self::Payload { source, .. } => source.reason(),
            _ => InvalidReason::InvalidPayload,
        }
    }
}

/// A malformed payment header is the client's fault: 400, naming the header.
impl From<HeaderError> for ApiError {
    fn from(e: HeaderError) -> Self {
        let mut api = ApiError::new(ErrorKind::InvalidInput, e.to_string());
        api.field = Some(e.header().to_owned());
        api
    }
}

fn decode_bytes(header: &'static str, value: &str) -> Result<Vec<u8>, HeaderError> {
    let value = value.trim();
    if value.is_empty() {
        return Err(HeaderError::Empty { header });
    }
    if value.len() > MAX_HEADER_LEN {
        return Err(HeaderError::TooLong {
            header,
            len: value.len(),
        });
    }
    LENIENT
        .decode(value)
        .map_err(|_| HeaderError::Base64 { header })
}

fn decode_json<T: DeserializeOwned>(header: &'static str, value: &str) -> Result<T, HeaderError> {
    from_json_slice(&decode_bytes(header, value)?)
        .map_err(|source| HeaderError::Payload { header, source })
}

fn decode_payload(header: &'static str, value: &str) -> Result<PaymentPayload, HeaderError> {
    PaymentPayload::from_json(&decode_bytes(header, value)?)
        .map_err(|source| HeaderError::Payload { header, source })
}

/// Standard padded base64 of `json`.
pub fn encode_base64_json(json: &str) -> String {
    STANDARD.encode(json)
}

/// Decode a `PAYMENT-SIGNATURE` value. Payloads of either version are accepted (answer in the version
/// received); the caller checks [`PaymentPayload::version`] if it wants only v2.
pub fn decode_payment_signature_header(value: &str) -> Result<PaymentPayload, HeaderError> {
    decode_payload(PAYMENT_SIGNATURE, value)
}

/// Decode an `X-PAYMENT` value (legacy clients; normally a v1 payload, v2 accepted).
pub fn decode_x_payment_header(value: &str) -> Result<PaymentPayload, HeaderError> {
    decode_payload(X_PAYMENT, value)
}

/// Encode a payment payload as a client sends it (`PAYMENT-SIGNATURE` for v2, `X-PAYMENT` for v1).
pub fn encode_payment_payload_header(payload: &PaymentPayload) -> String {
    encode_base64_json(&payload.to_json())
}

/// Encode the v2 `PAYMENT-REQUIRED` value.
pub fn encode_payment_required_header(required: &PaymentRequired) -> String {
    encode_base64_json(&to_json(required))
}

/// Decode a `PAYMENT-REQUIRED` value (what a v2 client reads).
pub fn decode_payment_required_header(value: &str) -> Result<PaymentRequired, HeaderError> {
    decode_json(PAYMENT_REQUIRED, value)
}

/// Encode a `PAYMENT-RESPONSE` / `X-PAYMENT-RESPONSE` value.
pub fn encode_payment_response_header(response: &SettleResponse) -> String {
    encode_base64_json(&to_json(response))
}

/// Decode a `PAYMENT-RESPONSE` / `X-PAYMENT-RESPONSE` value.
pub fn decode_payment_response_header(value: &str) -> Result<SettleResponse, HeaderError> {
    decode_json(PAYMENT_RESPONSE, value)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::x402::wire::{
        Authorization, ExactEvmPayload, Extra, PaymentPayloadV1, PaymentPayloadV2,
        PaymentRequirements, Resource,
    };
    use proptest::prelude::*;

    fn payload(valid_before: u64, value: u64) -> PaymentPayload {
        PaymentPayload::V2(PaymentPayloadV2 {
            resource: Some(Resource {
                url: "https://api.example.com/v1/esim/activate".into(),
                description: None,
                mime_type: None,
            }),
            accepted: PaymentRequirements {
                scheme: "exact".into(),
                network: "eip155:84532".into(),
                amount: value.to_string(),
                asset: "0x036CbD53842c5426634e7929541eC2318f3dCF7e".into(),
                pay_to: "0x209693Bc6afc0C5328bA36FaF03C514EF312287C".into(),
                max_timeout_seconds: 60,
                extra: Some(Extra::eip712("USDC", "2")),
            },
            payload: ExactEvmPayload {
                signature: format!("0x{}", "1b".repeat(65)),
                authorization: Authorization {
                    from: "0x857b06519E91e3A54538791bDbb0E22373e36b66".into(),
                    to: "0x209693Bc6afc0C5328bA36FaF03C514EF312287C".into(),
                    value: value.to_string(),
                    valid_after: "0".into(),
                    valid_before: valid_before.to_string(),
                    nonce: format!("0x{}", "ab".repeat(32)),
                },
            },
            extensions: None,
        })
    }

    #[test]
    fn payment_headers_round_trip() {
        let p = payload(1_740_672_154, 10_000);
        let header = encode_payment_payload_header(&p);
        assert!(header.ends_with('='), "padded standard base64: {header}");
        assert_eq!(decode_payment_signature_header(&header).unwrap(), p);
        assert_eq!(
            decode_x_payment_header(&format!("  {header}\t")).unwrap(),
            p
        );
        assert_eq!(
            decode_payment_signature_header(header.trim_end_matches('=')).unwrap(),
            p,
            "padding is optional on input"
        );
        let v1 = PaymentPayload::V1(PaymentPayloadV1 {
            scheme: "exact".into(),
            network: "base-sepolia".into(),
            payload: p.exact().clone(),
        });
        assert_eq!(
            decode_x_payment_header(&encode_payment_payload_header(&v1)).unwrap(),
            v1
        );
    }

    #[test]
    fn response_and_required_headers_round_trip() {
        let payer = "0x857b06519E91e3A54538791bDbb0E22373e36b66"
            .parse()
            .unwrap();
        let tx = alloy_primitives::B256::repeat_byte(7);
        let r = SettleResponse::success(payer, tx, "eip155:84532");
        let h = encode_payment_response_header(&r);
        assert_eq!(decode_payment_response_header(&h).unwrap(), r);

        let PaymentPayload::V2(p) = payload(1, 2) else {
            unreachable!()
        };
        let required = PaymentRequired {
            x402_version: 2,
            error: Some("PAYMENT-SIGNATURE header is required".into()),
            resource: p.resource.clone().unwrap(),
            accepts: vec![p.accepted.clone()],
            extensions: Some(Default::default()),
        };
        let h = encode_payment_required_header(&required);
        assert_eq!(decode_payment_required_header(&h).unwrap(), required);
    }

    #[test]
    fn malformed_headers_are_typed_400s() {
        let e = decode_payment_signature_header("").unwrap_err();
        assert_eq!(
            e,
            HeaderError::Empty {
                header: PAYMENT_SIGNATURE
            }
        );
        assert_eq!(
            decode_payment_signature_header("not base64!").unwrap_err(),
            HeaderError::Base64 {
                header: PAYMENT_SIGNATURE
            }
        );
        // URL-safe alphabet is refused ('-' and '_').
        assert!(matches!(
            decode_x_payment_header("eyJ4-_"),
            Err(HeaderError::Base64 { header: X_PAYMENT })
        ));
        let not_json = STANDARD.encode("hello");
        assert!(matches!(
            decode_payment_signature_header(&not_json),
            Err(HeaderError::Payload {
                source: PayloadError::Json(_),
                ..
            })
        ));
        let v3 = STANDARD.encode(r#"{"x402Version":3}"#);
        let e = decode_payment_signature_header(&v3).unwrap_err();
        assert_eq!(e.reason(), InvalidReason::InvalidX402Version);
        let shape = STANDARD.encode(r#"{"x402Version":2,"payload":{}}"#);
        let e = decode_x_payment_header(&shape).unwrap_err();
        assert_eq!(e.reason(), InvalidReason::InvalidPayload);
        let api: ApiError = e.into();
        assert_eq!(api.status(), 400);
        assert_eq!(api.field.as_deref(), Some(X_PAYMENT));
        let long = "A".repeat(MAX_HEADER_LEN + 4);
        assert!(matches!(
            decode_payment_signature_header(&long),
            Err(HeaderError::TooLong { .. })
        ));
        assert!(
            decode_payment_response_header("e30=").is_err(),
            "{{}} lacks `network`"
        );
    }

    proptest! {
        #[test]
        fn decoding_arbitrary_text_never_panics(s in ".{0,200}") {
            let _ = decode_payment_signature_header(&s);
            let _ = decode_x_payment_header(&s);
            let _ = decode_payment_response_header(&s);
            let _ = decode_payment_required_header(&s);
        }

        #[test]
        fn decoding_arbitrary_base64_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
            let _ = decode_payment_signature_header(&STANDARD.encode(&bytes));
        }

        #[test]
        fn payloads_round_trip(valid_before in any::<u64>(), value in any::<u64>()) {
            let p = payload(valid_before, value);
            prop_assert_eq!(decode_payment_signature_header(&encode_payment_payload_header(&p)).unwrap(), p);
        }
    }
}
