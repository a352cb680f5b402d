//! x402 wire types (v1 and v2), with the exact JSON field names of `reference/x402.md` §2, §3 and §6.
//!
//! These mirror the JSON faithfully: amounts, addresses and networks stay strings here, because verification
//! must answer a malformed field with a specific reason in a specific order ([`super::exact`] parses them).
//! Build outgoing messages with [`super::requirements`]; parse incoming ones with [`PaymentPayload::from_json`],
//! [`VerifyRequest::from_json`] or the header decoders in [`super::header`], whose errors are typed.

use std::collections::BTreeMap;

use serde::de::Error as _;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::{Map, Value};

use super::networks::Networks;
use super::reason::InvalidReason;
use crate::chain::{Address, Network};

/// x402 protocol version 1 (body challenge, `X-PAYMENT`, v1 network names).
pub const X402_V1: u32 = 1;
/// x402 protocol version 2 (header challenge, `PAYMENT-SIGNATURE`, CAIP-2 networks).
pub const X402_V2: u32 = 2;
/// The only scheme we run.
pub const SCHEME_EXACT: &str = "exact";

/// The resource a v2 challenge is for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Resource {
    /// The URL.
    pub url: String,
    /// What it is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// The response's media type.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mime_type: Option<String>,
}

/// `extra` of a requirement: for EVM `exact`, the token's EIP-712 domain; other keys are kept verbatim.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Extra {
    /// EIP-712 domain name of the token.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// EIP-712 domain version of the token.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    /// Anything else (`assetTransferMethod`, …).
    #[serde(flatten)]
    pub other: Map<String, Value>,
}

impl Extra {
    /// `{name, version}`.
    pub fn eip712(name: impl Into<String>, version: impl Into<String>) -> Self {
        Self {
            name: Some(name.into()),
            version: Some(version.into()),
            other: Map::new(),
        }
    }
}

/// A v2 `PaymentRequirements`: one accepted way to pay.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PaymentRequirements {
    /// `exact`.
    pub scheme: String,
    /// CAIP-2 network.
    pub network: String,
    /// Atomic units, a decimal integer string.
    pub amount: String,
    /// Token contract.
    pub asset: String,
    /// Recipient.
    pub pay_to: String,
    /// How long an authorization may stay valid.
    pub max_timeout_seconds: u64,
    /// The token's EIP-712 domain and other scheme data.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub extra: Option<Extra>,
}

impl PaymentRequirements {
    /// `extra.name`, if present.
    pub fn eip712_name(&self) -> Option<&str> {
        self.extra.as_ref()?.name.as_deref()
    }

    /// `extra.version`, if present.
    pub fn eip712_version(&self) -> Option<&str> {
        self.extra.as_ref()?.version.as_deref()
    }
}

/// The v2 402 challenge, carried base64-encoded in the `PAYMENT-REQUIRED` header.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PaymentRequired {
    /// Always 2.
    pub x402_version: u32,
    /// Why payment is (still) required.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// What is being paid for.
    pub resource: Resource,
    /// The accepted ways to pay.
    pub accepts: Vec<PaymentRequirements>,
    /// Extensions: key → `{info, schema}`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub extensions: Option<Map<String, Value>>,
}

/// A v1 requirement (inside the v1 JSON body): the resource is described per entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PaymentRequirementsV1 {
    /// `exact`.
    pub scheme: String,
    /// v1 network name (`base-sepolia`).
    pub network: String,
    /// Atomic units, a decimal integer string.
    pub max_amount_required: String,
    /// Token contract.
    pub asset: String,
    /// Recipient.
    pub pay_to: String,
    /// The resource URL.
    pub resource: String,
    /// What it is.
    #[serde(default)]
    pub description: String,
    /// The response's media type.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mime_type: Option<String>,
    /// JSON schema of the response.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output_schema: Option<Value>,
    /// How long an authorization may stay valid.
    pub max_timeout_seconds: u64,
    /// The token's EIP-712 domain.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub extra: Option<Extra>,
}

impl PaymentRequirementsV1 {
    /// The v1 form of a v2 requirement for `resource`: the network becomes its v1 name where one is known.
    pub fn from_v2(req: &PaymentRequirements, resource: &Resource) -> Self {
        let network = Network::parse(&req.network)
            .ok()
            .and_then(Network::v1_name)
            .map_or_else(|| req.network.clone(), str::to_owned);
        Self {
            scheme: req.scheme.clone(),
            network,
            max_amount_required: req.amount.clone(),
            asset: req.asset.clone(),
            pay_to: req.pay_to.clone(),
            resource: resource.url.clone(),
            description: resource.description.clone().unwrap_or_default(),
            mime_type: resource.mime_type.clone(),
            output_schema: None,
            max_timeout_seconds: req.max_timeout_seconds,
            extra: req.extra.clone(),
        }
    }

    /// The v2 shape, as verification consumes it (`maxAmountRequired` → `amount`; the network is kept).
    pub fn to_v2(&self) -> PaymentRequirements {
        PaymentRequirements {
            scheme: self.scheme.clone(),
            network: self.network.clone(),
            amount: self.max_amount_required.clone(),
            asset: self.asset.clone(),
            pay_to: self.pay_to.clone(),
            max_timeout_seconds: self.max_timeout_seconds,
            extra: self.extra.clone(),
        }
    }
}

/// The v1 402 challenge (`PaymentRequirementsResponse`), sent as the JSON body.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PaymentRequiredV1 {
    /// Always 1.
    pub x402_version: u32,
    /// Why payment is (still) required.
    #[serde(default)]
    pub error: String,
    /// The accepted ways to pay.
    pub accepts: Vec<PaymentRequirementsV1>,
}

/// An EIP-3009 authorization as sent: every number a decimal string, addresses and nonce hex. A missing field,
/// or one that is `null`, reads as `""` (as the Python reference reads a missing one, and its `None`
/// signature): verification refuses it at the check that needs it, with that check's reason, rather than
/// refusing the whole body.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct Authorization {
    /// Payer.
    #[serde(deserialize_with = "null_as_default")]
    pub from: String,
    /// Recipient (= `payTo`).
    #[serde(deserialize_with = "null_as_default")]
    pub to: String,
    /// Atomic units.
    #[serde(deserialize_with = "null_as_default")]
    pub value: String,
    /// Unix seconds; valid strictly after.
    #[serde(deserialize_with = "null_as_default")]
    pub valid_after: String,
    /// Unix seconds; valid strictly before.
    #[serde(deserialize_with = "null_as_default")]
    pub valid_before: String,
    /// 32 random bytes, hex.
    #[serde(deserialize_with = "null_as_default")]
    pub nonce: String,
}

/// `payload` of an `exact` EVM payment. Missing or `null` fields read as empty (see [`Authorization`]).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct ExactEvmPayload {
    /// `0x` + r‖s‖v (65 bytes for an EOA).
    #[serde(deserialize_with = "null_as_default")]
    pub signature: String,
    /// What was signed.
    #[serde(deserialize_with = "null_as_default")]
    pub authorization: Authorization,
}

/// A field that is `null` reads as its default, as a missing one does (`#[serde(default)]` alone covers only
/// a missing one: `null` was a shape error, refused as `invalid_payload` where a missing field got its check's
/// reason).
fn null_as_default<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de> + Default,
{
    Ok(Option::<T>::deserialize(d)?.unwrap_or_default())
}

/// A v2 payment payload (`PAYMENT-SIGNATURE`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PaymentPayloadV2 {
    /// The resource, echoed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resource: Option<Resource>,
    /// A verbatim copy of the chosen requirement.
    pub accepted: PaymentRequirements,
    /// The signed authorization.
    pub payload: ExactEvmPayload,
    /// Extensions, echoed and possibly extended.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub extensions: Option<Map<String, Value>>,
}

/// A v1 payment payload (`X-PAYMENT`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PaymentPayloadV1 {
    /// `exact`.
    pub scheme: String,
    /// v1 network name.
    pub network: String,
    /// The signed authorization.
    pub payload: ExactEvmPayload,
}

/// A payment payload of either version; serialised with its `x402Version`.
#[derive(Debug, Clone, PartialEq, Eq)]
#[allow(
    clippy::large_enum_variant,
    reason = "one payload per request, matched often: boxing buys nothing"
)]
pub enum PaymentPayload {
    /// `x402Version: 1`.
    V1(PaymentPayloadV1),
    /// `x402Version: 2`.
    V2(PaymentPayloadV2),
}

/// Why a payload or request body did not parse. [`PayloadError::reason`] maps it to `invalid_x402_version` or
/// `invalid_payload`; at the HTTP boundary it is a 400-class error ([`super::header::HeaderError`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PayloadError {
    /// Not JSON at all (or not UTF-8).
    #[error("not valid JSON: {0}")]
    Json(String),
    /// JSON of the wrong shape.
    #[error("unexpected JSON shape: {0}")]
    Shape(String),
    /// No numeric `x402Version`.
    #[error("x402Version is missing or not a number")]
    MissingVersion,
    /// An `x402Version` other than 1 or 2.
    #[error("unsupported x402Version {0}")]
    UnsupportedVersion(u64),
    /// The request's `x402Version` differs from its payload's.
    #[error("x402Version {request} does not match the payload's {payload}")]
    VersionMismatch {
        /// The request's.
        request: u64,
        /// The payload's.
        payload: u64,
    },
}

impl PayloadError {
    /// The x402 reason for this failure.
    pub const fn reason(&self) -> InvalidReason {
        match self {
            Self::UnsupportedVersion(_) | Self::VersionMismatch { .. } => {
                InvalidReason::InvalidX402Version
            }
            Self::Json(_) | Self::Shape(_) | Self::MissingVersion => InvalidReason::InvalidPayload,
        }
    }

    fn from_serde(e: &serde_json::Error) -> Self {
        match e.classify() {
            serde_json::error::Category::Data => Self::Shape(e.to_string()),
            _ => Self::Json(e.to_string()),
        }
    }
}

/// Parse JSON bytes into `T`, classifying the error.
pub(crate) fn from_json_slice<T: serde::de::DeserializeOwned>(
    bytes: &[u8],
) -> Result<T, PayloadError> {
    serde_json::from_slice(bytes).map_err(|e| PayloadError::from_serde(&e))
}

/// Our own types serialise infallibly (string keys, no maps with non-string keys, no failing impls).
pub(crate) fn to_json<T: Serialize>(value: &T) -> String {
    serde_json::to_string(value).expect("x402 wire types serialise infallibly")
}

fn version_of(v: &Value) -> Result<u64, PayloadError> {
    v.get("x402Version")
        .and_then(Value::as_u64)
        .ok_or(PayloadError::MissingVersion)
}

impl PaymentPayload {
    /// Parse a payload, dispatching on `x402Version`.
    pub fn from_json(bytes: &[u8]) -> Result<Self, PayloadError> {
        Self::from_value(from_json_slice(bytes)?)
    }

    /// Parse a payload from a JSON value, dispatching on `x402Version`.
    pub fn from_value(v: Value) -> Result<Self, PayloadError> {
        let shape = |e: serde_json::Error| PayloadError::from_serde(&e);
        match version_of(&v)? {
            1 => serde_json::from_value(v).map(Self::V1).map_err(shape),
            2 => serde_json::from_value(v).map(Self::V2).map_err(shape),
            n => Err(PayloadError::UnsupportedVersion(n)),
        }
    }

    /// Its `x402Version`.
    pub const fn version(&self) -> u32 {
        match self {
            Self::V1(_) => X402_V1,
            Self::V2(_) => X402_V2,
        }
    }

    /// The payload's scheme (v2: `accepted.scheme`).
    pub fn scheme(&self) -> &str {
        match self {
            Self::V1(p) => &p.scheme,
            Self::V2(p) => &p.accepted.scheme,
        }
    }

    /// The payload's network (v2: `accepted.network`, CAIP-2; v1: a v1 name).
    pub fn network(&self) -> &str {
        match self {
            Self::V1(p) => &p.network,
            Self::V2(p) => &p.accepted.network,
        }
    }

    /// The signed authorization.
    pub const fn exact(&self) -> &ExactEvmPayload {
        match self {
            Self::V1(p) => &p.payload,
            Self::V2(p) => &p.payload,
        }
    }

    /// v2's `accepted`.
    pub const fn accepted(&self) -> Option<&PaymentRequirements> {
        match self {
            Self::V1(_) => None,
            Self::V2(p) => Some(&p.accepted),
        }
    }

    /// The JSON text.
    pub fn to_json(&self) -> String {
        to_json(self)
    }

    /// What identifies this payment (the input of `paid::fingerprint`): its JSON text ([`Self::to_json`]) with
    /// the signed authorization written in one canonical spelling ([`ExactEvmPayload::canonical`]), so that
    /// re-spelling an authorization (address case, leading zeros, hex case, `v` 0/1 or 27/28), which
    /// verification accepts as the same payment, does not make it another payment. The canonical spelling is
    /// what the reference clients send, so their payloads keep the identity of their plain JSON text.
    pub fn fingerprint_json(&self) -> String {
        let mut canonical = self.clone();
        let exact = match &mut canonical {
            Self::V1(p) => {
                // A v1 network is accepted by its v1 name and as CAIP-2: one spelling, the v1 name reference
                // clients send (a network without one is kept as sent).
                if let Some(name) = crate::chain::Network::parse(&p.network)
                    .ok()
                    .and_then(crate::chain::Network::v1_name)
                {
                    p.network = name.to_owned();
                }
                &mut p.payload
            }
            Self::V2(p) => &mut p.payload,
        };
        *exact = exact.canonical();
        canonical.to_json()
    }
}

#[derive(Serialize)]
struct Versioned<'a, T> {
    #[serde(rename = "x402Version")]
    version: u32,
    #[serde(flatten)]
    inner: &'a T,
}

impl Serialize for PaymentPayload {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Self::V1(p) => Versioned {
                version: X402_V1,
                inner: p,
            }
            .serialize(s),
            Self::V2(p) => Versioned {
                version: X402_V2,
                inner: p,
            }
            .serialize(s),
        }
    }
}

impl<'de> Deserialize<'de> for PaymentPayload {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        // A shape error's own words: the outer parse labels it again (before: "unexpected JSON shape:
        // unexpected JSON shape: …").
        Self::from_value(Value::deserialize(d)?).map_err(|e| match e {
            PayloadError::Shape(inner) => D::Error::custom(inner),
            other => D::Error::custom(other),
        })
    }
}

/// `paymentRequirements` in a facilitator request: v2 shape (`amount`) or v1 shape (`maxAmountRequired`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum AnyPaymentRequirements {
    /// v2 shape.
    V2(PaymentRequirements),
    /// v1 shape.
    V1(PaymentRequirementsV1),
}

impl AnyPaymentRequirements {
    /// The v2 shape, as verification consumes it.
    pub fn to_v2(&self) -> PaymentRequirements {
        match self {
            Self::V2(r) => r.clone(),
            Self::V1(r) => r.to_v2(),
        }
    }
}

/// Body of facilitator `POST /verify` and `POST /settle`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct VerifyRequest {
    /// The payload's version.
    pub x402_version: u32,
    /// What the client sent.
    pub payment_payload: PaymentPayload,
    /// What the resource server asks for.
    pub payment_requirements: AnyPaymentRequirements,
}

/// A facilitator `/verify` or `/settle` body, as the facilitator API answers it (reference §6): a request to
/// verify, or a verdict already. Only a body that is not a JSON object with `paymentPayload` and
/// `paymentRequirements` objects is the caller's malformed input (HTTP 400); anything wrong inside them is a
/// payment the references refuse with HTTP 200 and a reason, and so do we.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FacilitatorRequest {
    /// Parsed: run the checks.
    Request(Box<VerifyRequest>),
    /// Refused as it stands: `invalid_x402_version` (a version other than 1 or 2, or the request's and the
    /// payload's differ) or `invalid_payload` (a field of the wrong shape; `message` names it).
    Refused {
        /// The reason.
        reason: InvalidReason,
        /// What was wrong.
        message: String,
        /// `paymentRequirements.network`, if it is a string.
        network: String,
        /// `paymentPayload.payload.authorization.from`, if it is an address.
        payer: Option<Address>,
    },
}

impl FacilitatorRequest {
    /// Parse a `/verify` or `/settle` body. `Err` only for a body that is not JSON, not an object, or lacks
    /// the `paymentPayload` or `paymentRequirements` object. A missing top-level `x402Version` is taken from
    /// the payload (the references route by the payload's).
    pub fn parse(bytes: &[u8]) -> Result<Self, PayloadError> {
        let mut v: Value = from_json_slice(bytes)?;
        let body = v
            .as_object_mut()
            .ok_or_else(|| PayloadError::Shape("the body is not a JSON object".into()))?;
        for field in ["paymentPayload", "paymentRequirements"] {
            match body.get(field) {
                Some(Value::Object(_)) => {}
                None => {
                    return Err(PayloadError::Shape(format!(
                        "missing field `{field}` (an object)"
                    )));
                }
                // Present but of another type: said so (it was reported missing).
                Some(other) => {
                    return Err(PayloadError::Shape(format!(
                        "field `{field}` must be an object, not {}",
                        json_kind(other)
                    )));
                }
            }
        }
        if !body.contains_key("x402Version")
            && let Some(version) = body["paymentPayload"].get("x402Version").cloned()
        {
            body.insert("x402Version".into(), version);
        }
        let network = body["paymentRequirements"]["network"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        let payer = body["paymentPayload"]
            .pointer("/payload/authorization/from")
            .and_then(Value::as_str)
            .and_then(|s| crate::chain::parse_address(s).ok());
        let request = VerifyRequest::from_json(v.to_string().as_bytes());
        Ok(match request {
            Ok(r) => Self::Request(Box::new(r)),
            Err(e) => Self::Refused {
                reason: e.reason(),
                message: e.to_string(),
                network,
                payer,
            },
        })
    }
}

/// Body of facilitator `POST /settle` (same shape as `/verify`).
pub type SettleRequest = VerifyRequest;

impl VerifyRequest {
    /// Parse a request body: `x402Version` must be 1 or 2 and equal the payload's (else
    /// [`PayloadError::UnsupportedVersion`] / [`PayloadError::VersionMismatch`], i.e. `invalid_x402_version`).
    pub fn from_json(bytes: &[u8]) -> Result<Self, PayloadError> {
        let v: Value = from_json_slice(bytes)?;
        let request = version_of(&v)?;
        if !(1..=2).contains(&request) {
            return Err(PayloadError::UnsupportedVersion(request));
        }
        let payload = v
            .get("paymentPayload")
            .ok_or_else(|| PayloadError::Shape("missing field `paymentPayload`".into()))
            .and_then(version_of)?;
        if payload != request {
            return Err(PayloadError::VersionMismatch { request, payload });
        }
        serde_json::from_value(v).map_err(|e| PayloadError::from_serde(&e))
    }

    /// The JSON text.
    pub fn to_json(&self) -> String {
        to_json(self)
    }
}

/// What kind of JSON value `v` is, for a message naming a field of the wrong type.
fn json_kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

fn checksummed(a: Address) -> String {
    a.to_checksum(None)
}

/// Answer of `POST /verify`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct VerifyResponse {
    /// Whether the payment verified.
    pub is_valid: bool,
    /// Why not (opaque when it comes from a peer).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub invalid_reason: Option<String>,
    /// Human-readable detail.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub invalid_message: Option<String>,
    /// The payer, whenever known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub payer: Option<String>,
    /// Extensions.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub extensions: Option<Map<String, Value>>,
}

impl VerifyResponse {
    /// `{isValid: true, payer}`.
    pub fn valid(payer: Address) -> Self {
        Self {
            is_valid: true,
            invalid_reason: None,
            invalid_message: None,
            payer: Some(checksummed(payer)),
            extensions: None,
        }
    }

    /// `{isValid: false, invalidReason, payer?}`.
    pub fn invalid(reason: InvalidReason, payer: Option<Address>) -> Self {
        Self {
            is_valid: false,
            invalid_reason: Some(reason.as_str().to_owned()),
            invalid_message: None,
            payer: payer.map(checksummed),
            extensions: None,
        }
    }

    /// With a human-readable `invalidMessage`.
    pub fn with_message(mut self, message: impl Into<String>) -> Self {
        self.invalid_message = Some(message.into());
        self
    }

    /// From a verification outcome; `claimed_payer` fills `payer` on rejection (see
    /// [`super::exact::claimed_payer`]).
    pub fn from_result(
        result: Result<Address, InvalidReason>,
        claimed_payer: Option<Address>,
    ) -> Self {
        match result {
            Ok(payer) => Self::valid(payer),
            Err(reason) => Self::invalid(reason, claimed_payer),
        }
    }

    /// The reason, if it is one of ours.
    pub fn reason(&self) -> Option<InvalidReason> {
        self.invalid_reason.as_deref()?.parse().ok()
    }
}

/// Answer of `POST /settle`, and (base64) the `PAYMENT-RESPONSE` / `X-PAYMENT-RESPONSE` header.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SettleResponse {
    /// Whether the transfer is final.
    pub success: bool,
    /// Why not (opaque when it comes from a peer).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error_reason: Option<String>,
    /// Human-readable detail.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error_message: Option<String>,
    /// The payer, whenever known (required in v1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub payer: Option<String>,
    /// Transaction hash, `""` if nothing was broadcast.
    #[serde(default)]
    pub transaction: String,
    /// The requirements' network.
    pub network: String,
    /// Settled amount (required for `upto`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub amount: Option<String>,
    /// Extensions.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub extensions: Option<Map<String, Value>>,
}

fn tx_string(tx: Option<alloy_primitives::B256>) -> String {
    tx.map(|h| h.to_string()).unwrap_or_default()
}

impl SettleResponse {
    /// `{success: true, payer, transaction, network}`.
    pub fn success(
        payer: Address,
        transaction: alloy_primitives::B256,
        network: impl Into<String>,
    ) -> Self {
        Self {
            success: true,
            error_reason: None,
            error_message: None,
            payer: Some(checksummed(payer)),
            transaction: tx_string(Some(transaction)),
            network: network.into(),
            amount: None,
            extensions: None,
        }
    }

    /// `{success: false, errorReason, payer?, transaction: hash or "", network}`. For a receipt that did not
    /// arrive in time use [`InvalidReason::SettlementPending`] with the broadcast hash.
    pub fn failure(
        reason: InvalidReason,
        payer: Option<Address>,
        transaction: Option<alloy_primitives::B256>,
        network: impl Into<String>,
    ) -> Self {
        Self {
            success: false,
            error_reason: Some(reason.as_str().to_owned()),
            error_message: None,
            payer: payer.map(checksummed),
            transaction: tx_string(transaction),
            network: network.into(),
            amount: None,
            extensions: None,
        }
    }

    /// A settle of an authorization whose claim another settlement holds and has sent nothing for (not in the
    /// time this one waited): [`InvalidReason::DuplicateSettlement`], with an `errorMessage` saying so and
    /// `transaction: ""`. Never `settlement_pending`, which the reference resource servers retry only with a
    /// transaction hash to reconcile.
    pub fn in_progress(payer: Option<Address>, network: impl Into<String>) -> Self {
        Self::failure(InvalidReason::DuplicateSettlement, payer, None, network)
            .with_message(SETTLEMENT_IN_PROGRESS)
    }

    /// With a human-readable `errorMessage`.
    pub fn with_message(mut self, message: impl Into<String>) -> Self {
        self.error_message = Some(message.into());
        self
    }

    /// The reason, if it is one of ours.
    pub fn reason(&self) -> Option<InvalidReason> {
        self.error_reason.as_deref()?.parse().ok()
    }

    /// Whether this is the non-terminal `settlement_pending`.
    pub fn is_pending(&self) -> bool {
        !self.success && self.reason() == Some(InvalidReason::SettlementPending)
    }
}

/// The `errorMessage` of [`SettleResponse::in_progress`].
pub const SETTLEMENT_IN_PROGRESS: &str = "another settlement of this authorization is in progress and has not \
     been sent yet: send the same payment again later";

/// One `(x402Version, scheme, network)` a facilitator serves.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SupportedKind {
    /// Protocol version.
    pub x402_version: u32,
    /// Scheme.
    pub scheme: String,
    /// CAIP-2 (v2) or v1 name (v1).
    pub network: String,
    /// Scheme data merged into offers by resource servers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub extra: Option<Map<String, Value>>,
}

/// Answer of `GET /supported`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SupportedResponse {
    /// What we serve.
    pub kinds: Vec<SupportedKind>,
    /// Supported extension keys.
    #[serde(default)]
    pub extensions: Vec<String>,
    /// Signer addresses by CAIP-2 pattern (`eip155:*`).
    #[serde(default)]
    pub signers: BTreeMap<String, Vec<String>>,
}

impl SupportedResponse {
    /// `exact` on every network of `networks`, as v2 (CAIP-2) and v1 (name) kinds, signed by `signers`.
    pub fn exact_evm(networks: &Networks, signers: &[Address]) -> Self {
        let kind = |version, network: String| SupportedKind {
            x402_version: version,
            scheme: SCHEME_EXACT.to_owned(),
            network,
            extra: None,
        };
        let mut kinds: Vec<SupportedKind> =
            networks.iter().map(|n| kind(X402_V2, n.caip2())).collect();
        kinds.extend(networks.iter().map(|n| kind(X402_V1, n.name.clone())));
        let mut map = BTreeMap::new();
        if !signers.is_empty() {
            map.insert(
                "eip155:*".to_owned(),
                signers.iter().copied().map(checksummed).collect(),
            );
        }
        Self {
            kinds,
            extensions: Vec::new(),
            signers: map,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn requirements() -> PaymentRequirements {
        PaymentRequirements {
            scheme: "exact".into(),
            network: "eip155:84532".into(),
            amount: "10000".into(),
            asset: "0x036CbD53842c5426634e7929541eC2318f3dCF7e".into(),
            pay_to: "0x209693Bc6afc0C5328bA36FaF03C514EF312287C".into(),
            max_timeout_seconds: 60,
            extra: Some(Extra::eip712("USDC", "2")),
        }
    }

    fn exact_payload() -> ExactEvmPayload {
        ExactEvmPayload {
            signature: format!("0x{}", "11".repeat(65)),
            authorization: Authorization {
                from: "0x857b06519E91e3A54538791bDbb0E22373e36b66".into(),
                to: "0x209693Bc6afc0C5328bA36FaF03C514EF312287C".into(),
                value: "10000".into(),
                valid_after: "0".into(),
                valid_before: "1740672154".into(),
                nonce: format!("0x{}", "ab".repeat(32)),
            },
        }
    }

    #[test]
    fn payment_required_matches_the_reference_example() {
        let reference = json!({"x402Version": 2, "error": "PAYMENT-SIGNATURE header is required",
            "resource": {"url": "https://api.example.com/v1/esim/activate", "description": "eSIM activation", "mimeType": "application/json"},
            "accepts": [{"scheme": "exact", "network": "eip155:84532", "amount": "10000",
                "asset": "0x036CbD53842c5426634e7929541eC2318f3dCF7e", "payTo": "0x209693Bc6afc0C5328bA36FaF03C514EF312287C",
                "maxTimeoutSeconds": 60, "extra": {"name": "USDC", "version": "2"}}],
            "extensions": {}});
        let parsed: PaymentRequired = serde_json::from_value(reference.clone()).unwrap();
        assert_eq!(parsed.accepts[0], requirements());
        assert_eq!(parsed.accepts[0].eip712_name(), Some("USDC"));
        assert_eq!(parsed.accepts[0].eip712_version(), Some("2"));
        assert_eq!(serde_json::to_value(&parsed).unwrap(), reference);
    }

    #[test]
    fn extra_keeps_unknown_keys_and_compares_order_insensitively() {
        let a: Extra = serde_json::from_str(
            r#"{"name":"USDC","version":"2","assetTransferMethod":"eip3009"}"#,
        )
        .unwrap();
        let b: Extra = serde_json::from_str(
            r#"{"assetTransferMethod":"eip3009","version":"2","name":"USDC"}"#,
        )
        .unwrap();
        assert_eq!(a, b);
        assert_eq!(a.other["assetTransferMethod"], "eip3009");
        let back = serde_json::to_value(&a).unwrap();
        assert_eq!(back["assetTransferMethod"], "eip3009");
        let no_domain: Extra = serde_json::from_str("{}").unwrap();
        assert_eq!(no_domain, Extra::default());
    }

    #[test]
    fn payloads_serialise_with_their_version() {
        let v2 = PaymentPayload::V2(PaymentPayloadV2 {
            resource: None,
            accepted: requirements(),
            payload: exact_payload(),
            extensions: None,
        });
        let v: Value = serde_json::from_str(&v2.to_json()).unwrap();
        assert_eq!(v["x402Version"], 2);
        assert_eq!(
            v["accepted"]["payTo"],
            "0x209693Bc6afc0C5328bA36FaF03C514EF312287C"
        );
        assert_eq!(v["payload"]["authorization"]["validBefore"], "1740672154");
        assert_eq!(
            PaymentPayload::from_json(v2.to_json().as_bytes()).unwrap(),
            v2
        );
        assert_eq!(v2.scheme(), "exact");
        assert_eq!(v2.network(), "eip155:84532");

        let v1 = PaymentPayload::V1(PaymentPayloadV1 {
            scheme: "exact".into(),
            network: "base-sepolia".into(),
            payload: exact_payload(),
        });
        let v: Value = serde_json::to_value(&v1).unwrap();
        assert_eq!(v["x402Version"], 1);
        assert_eq!(v["network"], "base-sepolia");
        assert!(v.get("accepted").is_none());
        assert_eq!(serde_json::from_value::<PaymentPayload>(v).unwrap(), v1);
        assert_eq!((v1.version(), v1.accepted()), (1, None));
    }

    /// A payload as the reference clients send it: the payer's account address and `payTo` EIP-55
    /// checksummed (viem `account.address`/`getAddress`, eth_account), the challenge's decimal amount,
    /// `String(n)`/`str(n)` times, lower-case hex from viem `toHex`/`signTypedData` and Python
    /// `"0x" + bytes.hex()`, `v` = 27/28.
    fn reference_payload() -> PaymentPayload {
        let mut exact = exact_payload();
        exact.signature = format!("0x{}{}1c", "3a".repeat(32), "0f".repeat(32));
        exact.authorization.nonce = format!("0x{}", "0b87a875".repeat(8));
        PaymentPayload::V2(PaymentPayloadV2 {
            resource: None,
            accepted: requirements(),
            payload: exact,
            extensions: None,
        })
    }

    fn respelled(edit: impl Fn(&mut ExactEvmPayload)) -> PaymentPayload {
        let mut p = reference_payload();
        let PaymentPayload::V2(v2) = &mut p else {
            unreachable!()
        };
        edit(&mut v2.payload);
        p
    }

    #[test]
    fn reference_payloads_keep_their_plain_json_as_identity() {
        let p = reference_payload();
        assert_eq!(p.fingerprint_json(), p.to_json());
        let v1 = PaymentPayload::V1(PaymentPayloadV1 {
            scheme: "exact".into(),
            network: "base-sepolia".into(),
            payload: p.exact().clone(),
        });
        assert_eq!(v1.fingerprint_json(), v1.to_json());
        // Its network as CAIP-2 is the same payment.
        let caip2 = PaymentPayload::V1(PaymentPayloadV1 {
            scheme: "exact".into(),
            network: "eip155:84532".into(),
            payload: p.exact().clone(),
        });
        assert_eq!(caip2.fingerprint_json(), v1.to_json());
        // A signed one, as our own client helpers write it; its re-spelling recovers the same signer.
        use crate::x402::exact::{
            SignedAuthorization, TokenDomain, TransferAuthorization, address_of, recover_signer,
            sign_authorization,
        };
        let key = k256::ecdsa::SigningKey::from_slice(&[0x42; 32]).unwrap();
        let wire = exact_payload().authorization;
        let auth = TransferAuthorization::parse(&Authorization {
            from: address_of(key.verifying_key()).to_checksum(None),
            ..wire
        })
        .unwrap();
        let domain = TokenDomain {
            name: "USDC".into(),
            version: "2".into(),
            chain_id: 84532,
            verifying_contract: "0x036CbD53842c5426634e7929541eC2318f3dCF7e"
                .parse()
                .unwrap(),
        };
        let sig = sign_authorization(&key, &auth, &domain).unwrap();
        let signed = ExactEvmPayload {
            signature: format!("0x{}", hex::encode(sig)),
            authorization: auth.to_wire(),
        };
        assert_eq!(signed.canonical(), signed);
        let mut odd = signed.clone();
        odd.authorization.from = odd.authorization.from.to_lowercase();
        odd.authorization.value = format!("00{}", odd.authorization.value);
        odd.signature = format!("{}{:02x}", &odd.signature[..130], sig[64] - 27)
            .to_uppercase()
            .replace("0X", "0x");
        assert_eq!(odd.canonical(), signed);
        let recovered = |p: &ExactEvmPayload| {
            let s = SignedAuthorization::parse(p).unwrap();
            recover_signer(s.authorization.signing_hash(&domain), &s.signature).unwrap()
        };
        assert_eq!(recovered(&odd), recovered(&signed));
        assert_eq!(recovered(&signed), auth.from);
    }

    #[test]
    fn respelled_authorizations_have_one_fingerprint_input() {
        let reference = reference_payload().fingerprint_json();
        let sig = |v: &str| format!("0x{}{}{v}", "3a".repeat(32), "0f".repeat(32));
        let hex_upper = |s: &str| s.to_uppercase().replace("0X", "0x");
        type Edit = fn(&mut ExactEvmPayload);
        let edits: [(&str, Edit); 9] = [
            ("value", |e| e.authorization.value = "010000".into()),
            ("validAfter", |e| e.authorization.valid_after = "000".into()),
            ("validBefore", |e| {
                e.authorization.valid_before = "01740672154".into();
            }),
            ("from", |e| {
                e.authorization.from = e.authorization.from.to_lowercase();
            }),
            ("to", |e| {
                e.authorization.to = e.authorization.to.to_uppercase().replace("0X", "0x");
            }),
            ("nonce", |e| {
                e.authorization.nonce = e.authorization.nonce.to_uppercase().replace("0X", "0x");
            }),
            ("signature case", |e| {
                e.signature = e.signature.to_uppercase().replace("0X", "0x");
            }),
            ("v = 1", |e| {
                e.signature = format!("{}01", &e.signature[..e.signature.len() - 2]);
            }),
            ("v = 0", |e| {
                e.signature = format!("{}00", &e.signature[..e.signature.len() - 2]);
            }),
        ];
        for (what, edit) in edits {
            let p = respelled(edit);
            assert_ne!(p.to_json(), reference_payload().to_json(), "{what}");
            let want = if what == "v = 0" {
                // v = 0 is v = 27: the reference spelling of the other parity.
                respelled(|e| e.signature = sig("1b")).to_json()
            } else {
                reference.clone()
            };
            assert_eq!(p.fingerprint_json(), want, "{what}");
        }
        assert_eq!(
            respelled(|e| e.signature = hex_upper(&sig("1C"))).fingerprint_json(),
            reference
        );
        // "420000" and "0420000" are one payment.
        assert_eq!(
            respelled(|e| e.authorization.value = "420000".into()).fingerprint_json(),
            respelled(|e| e.authorization.value = "0420000".into()).fingerprint_json()
        );
        // Different values, nonces or signatures stay different payments.
        for edit in [
            |e: &mut ExactEvmPayload| e.authorization.value = "10001".into(),
            |e: &mut ExactEvmPayload| e.authorization.nonce = format!("0x{}", "cd".repeat(32)),
            |e: &mut ExactEvmPayload| {
                e.signature = format!("0x{}{}1b", "3a".repeat(32), "0f".repeat(32))
            },
        ] {
            assert_ne!(respelled(edit).fingerprint_json(), reference);
        }
        // What does not parse stays as sent: no 0x, out of range, not 32 bytes, v of a longer signature.
        for edit in [
            |e: &mut ExactEvmPayload| e.authorization.from = e.authorization.from[2..].into(),
            |e: &mut ExactEvmPayload| e.authorization.value = "+10000".into(),
            |e: &mut ExactEvmPayload| e.authorization.value = "1".repeat(79),
            |e: &mut ExactEvmPayload| e.authorization.nonce = "0xABCD".into(),
            |e: &mut ExactEvmPayload| e.authorization.nonce = "AB".repeat(32),
            |e: &mut ExactEvmPayload| e.signature = "0xZZ".into(),
            |e: &mut ExactEvmPayload| e.signature = "0x".into(),
        ] {
            let p = respelled(edit);
            assert_eq!(p.fingerprint_json(), p.to_json());
        }
        let long = respelled(|e| e.signature = format!("0x{}00", "AB".repeat(65)));
        assert_eq!(
            long.exact().canonical().signature,
            format!("0x{}00", "ab".repeat(65))
        );
    }

    #[test]
    fn payload_errors_are_typed() {
        assert!(matches!(
            PaymentPayload::from_json(b"{nope"),
            Err(PayloadError::Json(_))
        ));
        assert!(matches!(
            PaymentPayload::from_json(b"\xff\xfe"),
            Err(PayloadError::Json(_))
        ));
        assert_eq!(
            PaymentPayload::from_json(b"{}"),
            Err(PayloadError::MissingVersion)
        );
        assert_eq!(
            PaymentPayload::from_json(br#"{"x402Version":"2"}"#),
            Err(PayloadError::MissingVersion)
        );
        assert_eq!(
            PaymentPayload::from_json(br#"{"x402Version":3}"#),
            Err(PayloadError::UnsupportedVersion(3))
        );
        // Nested in a request, a payload's shape error is labelled once (it was twice).
        let nested =
            serde_json::from_value::<PaymentPayload>(serde_json::json!({"x402Version": 2}))
                .unwrap_err()
                .to_string();
        assert!(
            !nested.contains("unexpected JSON shape") && nested.contains("accepted"),
            "{nested}"
        );
        let shape = PaymentPayload::from_json(br#"{"x402Version":2,"accepted":{}}"#).unwrap_err();
        assert!(matches!(shape, PayloadError::Shape(_)), "{shape:?}");
        assert_eq!(shape.reason(), InvalidReason::InvalidPayload);
        assert_eq!(
            PayloadError::UnsupportedVersion(3).reason(),
            InvalidReason::InvalidX402Version
        );
        assert!(serde_json::from_str::<PaymentPayload>(r#"{"x402Version":7}"#).is_err());
    }

    #[test]
    fn v1_requirements_convert_both_ways() {
        let resource = Resource {
            url: "https://api.example.com/x".into(),
            description: Some("eSIM activation".into()),
            mime_type: Some("application/json".into()),
        };
        let v1 = PaymentRequirementsV1::from_v2(&requirements(), &resource);
        let v = serde_json::to_value(&v1).unwrap();
        assert_eq!(v["network"], "base-sepolia");
        assert_eq!(v["maxAmountRequired"], "10000");
        assert_eq!(v["resource"], "https://api.example.com/x");
        assert_eq!(v["description"], "eSIM activation");
        assert!(v.get("amount").is_none());
        let back = v1.to_v2();
        assert_eq!(back.amount, "10000");
        assert_eq!(back.network, "base-sepolia");
        // A chain without a v1 name keeps its CAIP-2 id.
        let mut odd = requirements();
        odd.network = "eip155:999".into();
        assert_eq!(
            PaymentRequirementsV1::from_v2(&odd, &resource).network,
            "eip155:999"
        );
    }

    #[test]
    fn verify_requests_check_versions_and_accept_both_requirement_shapes() {
        let req = VerifyRequest {
            x402_version: 2,
            payment_payload: PaymentPayload::V2(PaymentPayloadV2 {
                resource: None,
                accepted: requirements(),
                payload: exact_payload(),
                extensions: None,
            }),
            payment_requirements: AnyPaymentRequirements::V2(requirements()),
        };
        let text = req.to_json();
        assert_eq!(VerifyRequest::from_json(text.as_bytes()).unwrap(), req);

        let mut v: Value = serde_json::from_str(&text).unwrap();
        v["x402Version"] = json!(1);
        assert_eq!(
            VerifyRequest::from_json(v.to_string().as_bytes()),
            Err(PayloadError::VersionMismatch {
                request: 1,
                payload: 2
            })
        );
        v["x402Version"] = json!(5);
        assert_eq!(
            VerifyRequest::from_json(v.to_string().as_bytes())
                .unwrap_err()
                .reason(),
            InvalidReason::InvalidX402Version
        );
        assert!(matches!(
            VerifyRequest::from_json(br#"{"x402Version":2}"#),
            Err(PayloadError::Shape(_))
        ));

        let resource = Resource {
            url: "u".into(),
            description: None,
            mime_type: None,
        };
        let v1 = VerifyRequest {
            x402_version: 1,
            payment_payload: PaymentPayload::V1(PaymentPayloadV1 {
                scheme: "exact".into(),
                network: "base-sepolia".into(),
                payload: exact_payload(),
            }),
            payment_requirements: AnyPaymentRequirements::V1(PaymentRequirementsV1::from_v2(
                &requirements(),
                &resource,
            )),
        };
        let back = VerifyRequest::from_json(v1.to_json().as_bytes()).unwrap();
        assert_eq!(back, v1);
        assert_eq!(back.payment_requirements.to_v2().amount, "10000");
    }

    /// A scheme-payload field that is `null` reads as a missing one (Python's `None`): the request parses and
    /// the check that reads the field refuses it with its own reason. Before, `null` was a shape error, refused
    /// as `invalid_payload` where the missing field got, say, the signature's reason.
    #[test]
    fn null_payload_fields_read_as_missing_ones() {
        let body = |exact: Value| {
            json!({"x402Version": 2, "paymentRequirements": serde_json::to_value(requirements()).unwrap(),
                   "paymentPayload": {"x402Version": 2, "payload": exact,
                                      "accepted": serde_json::to_value(requirements()).unwrap()}})
            .to_string()
        };
        let parsed = |exact: Value| match FacilitatorRequest::parse(body(exact).as_bytes()) {
            Ok(FacilitatorRequest::Request(r)) => r,
            other => panic!("not a request: {other:?}"),
        };
        let full = serde_json::to_value(exact_payload()).unwrap();
        for path in [
            "/signature",
            "/authorization",
            "/authorization/from",
            "/authorization/to",
            "/authorization/value",
            "/authorization/validAfter",
            "/authorization/validBefore",
            "/authorization/nonce",
        ] {
            let mut null = full.clone();
            *null.pointer_mut(path).unwrap() = Value::Null;
            let mut missing = full.clone();
            let (parent, field) = path.rsplit_once('/').unwrap();
            let parent = if parent.is_empty() {
                &mut missing
            } else {
                missing.pointer_mut(parent).unwrap()
            };
            parent.as_object_mut().unwrap().remove(field);
            assert_eq!(parsed(null), parsed(missing), "{path}");
        }
        // `"signature": null` is refused for its signature, as a missing one is.
        let mut null_signature = full;
        null_signature["signature"] = Value::Null;
        let request = parsed(null_signature);
        assert_eq!(request.payment_payload.exact().signature, "");
        assert_eq!(
            crate::x402::verify_request(&request, Networks::builtin(), 1_740_672_000, None),
            Err(InvalidReason::Signature)
        );
    }

    #[test]
    fn in_progress_is_a_terminal_duplicate_without_a_transaction() {
        let r = SettleResponse::in_progress(None, "eip155:84532");
        assert!(!r.success);
        assert!(!r.is_pending());
        assert_eq!(r.reason(), Some(InvalidReason::DuplicateSettlement));
        assert_eq!(r.transaction, "");
        assert_eq!(r.error_message.as_deref(), Some(SETTLEMENT_IN_PROGRESS));
    }

    #[test]
    fn facilitator_bodies_are_400_only_without_their_two_objects() {
        let body = |payload: Value| {
            json!({"x402Version": 2, "paymentPayload": payload,
                   "paymentRequirements": serde_json::to_value(requirements()).unwrap()})
            .to_string()
        };
        let payload = |exact: Value| {
            json!({"x402Version": 2, "accepted": serde_json::to_value(requirements()).unwrap(),
                   "payload": exact})
        };
        let full = serde_json::to_value(exact_payload()).unwrap();
        // Well formed: a request.
        let Ok(FacilitatorRequest::Request(r)) =
            FacilitatorRequest::parse(body(payload(full.clone())).as_bytes())
        else {
            panic!("a well-formed body is a request")
        };
        assert_eq!(r.payment_payload.exact(), &exact_payload());
        // Missing scheme-payload fields read as empty: still a request, refused later by the check that needs them.
        let mut no_sig = full.clone();
        no_sig.as_object_mut().unwrap().remove("signature");
        no_sig["authorization"]
            .as_object_mut()
            .unwrap()
            .remove("value");
        let Ok(FacilitatorRequest::Request(r)) =
            FacilitatorRequest::parse(body(payload(no_sig)).as_bytes())
        else {
            panic!("missing payload fields are not a malformed body")
        };
        assert_eq!(r.payment_payload.exact().signature, "");
        assert_eq!(r.payment_payload.exact().authorization.value, "");
        assert_eq!(
            r.payment_payload.exact().authorization.from,
            exact_payload().authorization.from
        );
        let Ok(FacilitatorRequest::Request(r)) =
            FacilitatorRequest::parse(body(payload(json!({}))).as_bytes())
        else {
            panic!("an empty scheme payload is a request")
        };
        assert_eq!(r.payment_payload.exact(), &ExactEvmPayload::default());
        // A field of the wrong shape inside the objects: a verdict naming it, with the payer and network known.
        let mut no_accepted = payload(full.clone());
        no_accepted.as_object_mut().unwrap().remove("accepted");
        match FacilitatorRequest::parse(body(no_accepted).as_bytes()) {
            Ok(FacilitatorRequest::Refused {
                reason,
                message,
                network,
                payer,
            }) => {
                assert_eq!(reason, InvalidReason::InvalidPayload);
                assert!(message.contains("accepted"), "{message}");
                assert_eq!(network, "eip155:84532");
                assert_eq!(
                    payer.map(|p| p.to_checksum(None)),
                    Some(exact_payload().authorization.from)
                );
            }
            other => panic!("{other:?}"),
        }
        let mut numeric = full.clone();
        numeric["authorization"]["value"] = json!(10000);
        assert!(matches!(
            FacilitatorRequest::parse(body(payload(numeric)).as_bytes()),
            Ok(FacilitatorRequest::Refused {
                reason: InvalidReason::InvalidPayload,
                ..
            })
        ));
        // Versions: unknown or different from the payload's is `invalid_x402_version`; absent at the top, the
        // payload's counts.
        let mut v: Value = serde_json::from_str(&body(payload(full.clone()))).unwrap();
        v["x402Version"] = json!(7);
        assert!(matches!(
            FacilitatorRequest::parse(v.to_string().as_bytes()),
            Ok(FacilitatorRequest::Refused {
                reason: InvalidReason::InvalidX402Version,
                ..
            })
        ));
        v["x402Version"] = json!(1);
        assert!(matches!(
            FacilitatorRequest::parse(v.to_string().as_bytes()),
            Ok(FacilitatorRequest::Refused {
                reason: InvalidReason::InvalidX402Version,
                ..
            })
        ));
        v.as_object_mut().unwrap().remove("x402Version");
        assert!(matches!(
            FacilitatorRequest::parse(v.to_string().as_bytes()),
            Ok(FacilitatorRequest::Request(_))
        ));
        // 400: not JSON, not an object, or without either object.
        for bad in [
            "not json",
            "[1,2]",
            "{}",
            r#"{"x402Version":2}"#,
            r#"{"x402Version":2,"paymentPayload":{},"paymentRequirements":"x"}"#,
            r#"{"paymentRequirements":{}}"#,
        ] {
            assert!(FacilitatorRequest::parse(bad.as_bytes()).is_err(), "{bad}");
        }
        // A field present with another type is named as such, not as missing (a fresh-user trial).
        let Err(e) = FacilitatorRequest::parse(br#"{"paymentPayload":1,"paymentRequirements":{}}"#)
        else {
            panic!("a number is no payload");
        };
        assert_eq!(
            e.to_string(),
            PayloadError::Shape("field `paymentPayload` must be an object, not a number".into())
                .to_string()
        );
    }

    #[test]
    fn facilitator_responses_have_reference_shapes() {
        let payer: Address = "0x857b06519e91e3a54538791bdbb0e22373e36b66"
            .parse()
            .unwrap();
        assert_eq!(
            serde_json::to_value(VerifyResponse::valid(payer)).unwrap(),
            json!({"isValid": true, "payer": "0x857b06519E91e3A54538791bDbb0E22373e36b66"})
        );
        let bad = VerifyResponse::from_result(Err(InvalidReason::RecipientMismatch), Some(payer));
        assert_eq!(
            serde_json::to_value(&bad).unwrap(),
            json!({"isValid": false, "invalidReason": "invalid_exact_evm_recipient_mismatch",
                   "payer": "0x857b06519E91e3A54538791bDbb0E22373e36b66"})
        );
        assert_eq!(bad.reason(), Some(InvalidReason::RecipientMismatch));
        let foreign: VerifyResponse =
            serde_json::from_str(r#"{"isValid":false,"invalidReason":"something_new"}"#).unwrap();
        assert_eq!(
            (foreign.reason(), foreign.invalid_reason.as_deref()),
            (None, Some("something_new"))
        );

        let tx = alloy_primitives::B256::repeat_byte(0xab);
        let ok = SettleResponse::success(payer, tx, "eip155:84532");
        assert_eq!(
            serde_json::to_value(&ok).unwrap(),
            json!({"success": true, "payer": "0x857b06519E91e3A54538791bDbb0E22373e36b66",
                   "transaction": format!("0x{}", "ab".repeat(32)), "network": "eip155:84532"})
        );
        let none =
            SettleResponse::failure(InvalidReason::NonceAlreadyUsed, Some(payer), None, "base");
        let v = serde_json::to_value(&none).unwrap();
        assert_eq!(v["transaction"], "");
        assert_eq!(v["errorReason"], "invalid_exact_evm_nonce_already_used");
        assert!(!none.is_pending());
        let pending = SettleResponse::failure(
            InvalidReason::SettlementPending,
            Some(payer),
            Some(tx),
            "base",
        );
        assert!(pending.is_pending());
    }

    #[test]
    fn supported_lists_v2_and_v1_kinds() {
        let nets = Networks::builtin()
            .clone()
            .retain(|n| n.name == "base-sepolia");
        let signer: Address = "0x857b06519e91e3a54538791bdbb0e22373e36b66"
            .parse()
            .unwrap();
        let s = SupportedResponse::exact_evm(&nets, &[signer]);
        assert_eq!(
            serde_json::to_value(&s).unwrap(),
            json!({"kinds": [{"x402Version": 2, "scheme": "exact", "network": "eip155:84532"},
                             {"x402Version": 1, "scheme": "exact", "network": "base-sepolia"}],
                   "extensions": [], "signers": {"eip155:*": ["0x857b06519E91e3A54538791bDbb0E22373e36b66"]}})
        );
        let back: SupportedResponse =
            serde_json::from_value(serde_json::to_value(&s).unwrap()).unwrap();
        assert_eq!(back, s);
    }
}
