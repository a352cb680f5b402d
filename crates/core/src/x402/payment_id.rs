//! The x402 `payment-identifier` extension (`reference/x402.md` §8): a client-chosen id in
//! `extensions["payment-identifier"].info.id` that makes a paid request idempotent. The same id with the same
//! payment replays the first response; the same id with a different payment is a conflict (409).

use serde_json::{Map, Value, json};

use super::wire::PaymentPayload;

/// The extension's key in `extensions`.
pub const KEY: &str = "payment-identifier";

/// Shortest and longest id.
pub const MIN_LEN: usize = 16;
/// Longest id.
pub const MAX_LEN: usize = 128;

/// A validated payment identifier: 16–128 characters of `[A-Za-z0-9_-]`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PaymentId(String);

impl PaymentId {
    /// Validate an id.
    pub fn parse(s: &str) -> Result<Self, &'static str> {
        if !(MIN_LEN..=MAX_LEN).contains(&s.len()) {
            return Err("payment-identifier id must be 16-128 characters");
        }
        if !s
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
        {
            return Err("payment-identifier id may contain only A-Z, a-z, 0-9, '_' and '-'");
        }
        Ok(Self(s.to_owned()))
    }

    /// The id.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// What the server advertises in its 402 `extensions`: the extension is supported, not required.
pub fn advertise() -> Map<String, Value> {
    let mut m = Map::new();
    m.insert(
        KEY.to_owned(),
        json!({
            "info": {"required": false},
            "schema": {
                "$schema": "https://json-schema.org/draft/2020-12/schema",
                "type": "object",
                "properties": {
                    "required": {"type": "boolean"},
                    "id": {"type": "string", "minLength": MIN_LEN, "maxLength": MAX_LEN,
                           "pattern": "^[a-zA-Z0-9_-]+$"}
                },
                "required": ["required"]
            }
        }),
    );
    m
}

/// The id a payment carries: `Ok(None)` without the extension (or without an id in it), `Err` for a
/// malformed one (answer 400 naming the extension).
pub fn payment_id_of(payload: &PaymentPayload) -> Result<Option<PaymentId>, &'static str> {
    let PaymentPayload::V2(p) = payload else {
        return Ok(None);
    };
    let Some(ext) = p.extensions.as_ref().and_then(|e| e.get(KEY)) else {
        return Ok(None);
    };
    // An extension that is not an object (or whose `info` is not one) is malformed, not absent: taken for
    // absent, its retry would be a new payment where the client meant the same one.
    let info = match ext {
        Value::Null => return Ok(None),
        Value::Object(o) => o.get("info"),
        _ => return Err("payment-identifier must be an object with info.id"),
    };
    let id = match info {
        None | Some(Value::Null) => None,
        Some(Value::Object(i)) => i.get("id"),
        Some(_) => return Err("payment-identifier info must be an object"),
    };
    match id {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(id)) => PaymentId::parse(id).map(Some),
        Some(_) => Err("payment-identifier id must be a string"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::x402::wire::{
        Authorization, ExactEvmPayload, PaymentPayloadV2, PaymentRequirements,
    };

    fn payload(extensions: Option<Value>) -> PaymentPayload {
        PaymentPayload::V2(PaymentPayloadV2 {
            resource: None,
            accepted: PaymentRequirements {
                scheme: "exact".into(),
                network: "eip155:31337".into(),
                amount: "1".into(),
                asset: "0x0".into(),
                pay_to: "0x0".into(),
                max_timeout_seconds: 60,
                extra: None,
            },
            payload: ExactEvmPayload {
                signature: "0x".into(),
                authorization: Authorization {
                    from: String::new(),
                    to: String::new(),
                    value: String::new(),
                    valid_after: String::new(),
                    valid_before: String::new(),
                    nonce: String::new(),
                },
            },
            extensions: extensions.map(|v| v.as_object().unwrap().clone()),
        })
    }

    #[test]
    fn ids_are_read_and_validated() {
        let id = "pay_0123456789abcdef";
        let p = payload(Some(json!({KEY: {"info": {"required": false, "id": id}}})));
        assert_eq!(payment_id_of(&p).unwrap().unwrap().as_str(), id);
        assert_eq!(payment_id_of(&payload(None)), Ok(None));
        assert_eq!(
            payment_id_of(&payload(Some(json!({KEY: {"info": {"required": false}}})))),
            Ok(None)
        );
        for bad in [
            json!("short"),
            json!("x".repeat(129)),
            json!("pay_0123456789abc/ef"),
            json!(7),
        ] {
            let p = payload(Some(json!({KEY: {"info": {"id": bad}}})));
            assert!(payment_id_of(&p).is_err(), "{bad}");
        }
        // The extension, or its `info`, not an object: malformed, not absent (before, read as no id).
        assert_eq!(
            payment_id_of(&payload(Some(json!({ KEY: null })))),
            Ok(None)
        );
        for bad in [json!("nonsense"), json!(["x"]), json!({"info": "nonsense"})] {
            let p = payload(Some(json!({ KEY: bad })));
            assert!(payment_id_of(&p).is_err(), "{bad}");
        }
    }

    #[test]
    fn advertised_as_optional() {
        let a = advertise();
        assert_eq!(a[KEY]["info"]["required"], false);
        assert_eq!(a[KEY]["schema"]["properties"]["id"]["minLength"], 16);
    }
}
