//! `POST /v1/esim/activate` request body, parsed at the boundary into validated types. Every rejection names
//! the field at fault; unknown fields are refused so typos (`data_MB`) do not silently buy the default.

use serde_json::{Map, Value};

use crate::api_error::ApiError;
use crate::chain::{Address, Network, parse_payer};
use crate::esim::eid::Eid;
use crate::ids::{CarrierId, DataMb, InvoiceId, Region};

/// A validated activation request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ActivationRequest {
    /// Where the SIM will be used.
    pub region: Region,
    /// Bundle size.
    pub data_mb: DataMb,
    /// A specific carrier, or the region's default.
    pub carrier: Option<CarrierId>,
    /// 32-digit EID of the target eUICC (checked by ISO 7064 mod 97-10).
    pub eid: Option<String>,
    /// The paying wallet (binds tx-hash proofs to their sender).
    pub payer: Option<Address>,
    /// Preferred networks; empty = every enabled network.
    pub networks: Vec<Network>,
    /// With an explicit `carrier`: may dispatch fall back to the region's other carriers (default false)?
    /// Without one, dispatch always fails over within the region.
    pub allow_failover: bool,
    /// The invoice a tx-hash proof (`X-Payment-Proof`) pays; x402 payments name theirs inside the payment.
    pub invoice_id: Option<InvoiceId>,
}

impl ActivationRequest {
    /// Whether dispatch may use carriers other than the requested one.
    pub fn failover_allowed(&self) -> bool {
        self.carrier.is_none() || self.allow_failover
    }
}

const FIELDS: &[&str] = &[
    "region",
    "data_mb",
    "carrier",
    "eid",
    "payer",
    "chain",
    "allow_failover",
    "invoice_id",
];

/// Largest body accepted on this route.
pub const MAX_BODY_BYTES: usize = 16 * 1024;
/// The most networks a request may prefer (`chain`): each becomes a payment option of the 402, and the
/// invoice id seals them all. More than the built-in registry holds (a test holds it to that), so a client may
/// name every network an invoice offers by default.
pub const MAX_CHAINS: usize = 12;

impl ActivationRequest {
    /// Parse a query string (`region=us-west&data_mb=100&chain=base&chain=polygon`), as the `GET` form of the
    /// route takes it: the same fields and rules as the JSON body (a repeated `chain` is a list).
    pub fn from_query(query: &str) -> Result<Self, ApiError> {
        if query.len() > MAX_BODY_BYTES {
            return Err(ApiError::invalid(
                "query",
                format!("query exceeds {MAX_BODY_BYTES} bytes"),
            ));
        }
        let mut obj = Map::new();
        for (k, v) in form_urlencoded::parse(query.as_bytes()) {
            let value = match k.as_ref() {
                "data_mb" => v
                    .parse::<u64>()
                    .map(Value::from)
                    .unwrap_or_else(|_| Value::String(v.to_string())),
                "allow_failover" => match v.as_ref() {
                    "true" => Value::Bool(true),
                    "false" => Value::Bool(false),
                    _ => Value::String(v.to_string()),
                },
                _ => Value::String(v.to_string()),
            };
            match (k.as_ref(), obj.get_mut(k.as_ref())) {
                ("chain", Some(Value::Array(list))) => list.push(value),
                ("chain", Some(first)) => *first = Value::Array(vec![first.take(), value]),
                (_, Some(_)) => {
                    return Err(ApiError::invalid(
                        k.to_string(),
                        format!("{k} is given twice"),
                    ));
                }
                (_, None) => {
                    obj.insert(k.to_string(), value);
                }
            }
        }
        Self::parse(Value::Object(obj).to_string().as_bytes())
    }

    /// Parse a JSON body.
    pub fn parse(body: &[u8]) -> Result<Self, ApiError> {
        if body.len() > MAX_BODY_BYTES {
            return Err(ApiError::invalid(
                "body",
                format!("body exceeds {MAX_BODY_BYTES} bytes"),
            ));
        }
        let value = crate::json_body::parse(body)
            .map_err(|e| ApiError::invalid("body", format!("body is not valid JSON: {e}")))?;
        let Value::Object(obj) = value else {
            return Err(ApiError::invalid("body", "body must be a JSON object"));
        };
        if let Some(unknown) = obj.keys().find(|k| !FIELDS.contains(&k.as_str())) {
            return Err(ApiError::invalid(
                unknown.as_str(),
                format!("unknown field {unknown:?}; expected one of {FIELDS:?}"),
            ));
        }
        let region = Region::parse(required_str(&obj, "region")?)
            .map_err(|e| ApiError::invalid("region", e.0))?;
        let data_mb = match obj.get("data_mb") {
            None | Some(Value::Null) => {
                return Err(ApiError::invalid("data_mb", "data_mb is required"));
            }
            Some(Value::Number(n)) => n.as_u64().ok_or_else(|| {
                ApiError::invalid("data_mb", "data_mb must be an integer between 1 and 100000")
            })?,
            Some(_) => {
                return Err(ApiError::invalid(
                    "data_mb",
                    "data_mb must be an integer between 1 and 100000",
                ));
            }
        };
        let data_mb = DataMb::new(data_mb).map_err(|e| ApiError::invalid("data_mb", e.0))?;
        let carrier = optional_str(&obj, "carrier")?
            .map(|c| CarrierId::parse(c).map_err(|e| ApiError::invalid("carrier", e.0)))
            .transpose()?;
        let eid = optional_str(&obj, "eid")?.map(parse_eid).transpose()?;
        let payer = optional_str(&obj, "payer")?
            .map(|p| parse_payer(p).map_err(|e| ApiError::invalid("payer", e.0)))
            .transpose()?;
        let networks = match obj.get("chain") {
            None | Some(Value::Null) => Vec::new(),
            Some(Value::String(s)) => vec![parse_network(s)?],
            Some(Value::Array(items)) => items
                .iter()
                .map(|v| {
                    v.as_str()
                        .ok_or_else(|| ApiError::invalid("chain", "chain entries must be strings"))
                        .and_then(parse_network)
                })
                .collect::<Result<_, _>>()?,
            Some(_) => {
                return Err(ApiError::invalid(
                    "chain",
                    "chain must be a string or a list of strings",
                ));
            }
        };
        if matches!(obj.get("chain"), Some(Value::Array(items)) if items.is_empty()) {
            return Err(ApiError::invalid(
                "chain",
                "chain must name at least one network (leave it out for every network)",
            ));
        }
        if networks.len() > MAX_CHAINS {
            return Err(ApiError::invalid(
                "chain",
                format!("at most {MAX_CHAINS} chains may be preferred"),
            ));
        }
        if let Some(twice) = networks
            .iter()
            .enumerate()
            .find_map(|(i, n)| networks[..i].contains(n).then_some(n))
        {
            return Err(ApiError::invalid(
                "chain",
                format!("chain {twice} is given twice"),
            ));
        }
        let allow_failover = match obj.get("allow_failover") {
            None | Some(Value::Null) => false,
            Some(Value::Bool(b)) => *b,
            Some(_) => {
                return Err(ApiError::invalid(
                    "allow_failover",
                    "allow_failover must be true or false",
                ));
            }
        };
        let invoice_id = optional_str(&obj, "invoice_id")?
            .map(|id| InvoiceId::parse(id).map_err(|e| ApiError::invalid("invoice_id", e.0)))
            .transpose()?;
        Ok(Self {
            region,
            data_mb,
            carrier,
            eid,
            payer,
            networks,
            allow_failover,
            invoice_id,
        })
    }
}

fn parse_network(s: &str) -> Result<Network, ApiError> {
    Network::parse(s).map_err(|e| ApiError::invalid("chain", e.0))
}

fn required_str<'a>(obj: &'a Map<String, Value>, field: &str) -> Result<&'a str, ApiError> {
    optional_str(obj, field)?
        .ok_or_else(|| ApiError::invalid(field, format!("{field} is required")))
}

fn optional_str<'a>(obj: &'a Map<String, Value>, field: &str) -> Result<Option<&'a str>, ApiError> {
    match obj.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(_) => Err(ApiError::invalid(
            field,
            format!("{field} must be a string"),
        )),
    }
}

/// An EID: exactly 32 decimal digits whose ISO/IEC 7064 MOD 97-10 check holds (`EID mod 97 == 1`).
pub fn parse_eid(s: &str) -> Result<String, ApiError> {
    Eid::parse(s)
        .map(String::from)
        .map_err(|e| ApiError::invalid("eid", e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_query_form_is_the_body_form() {
        let q =
            ActivationRequest::from_query("region=us-west&data_mb=100&carrier=verizon").unwrap();
        let b =
            ActivationRequest::parse(br#"{"region":"us-west","data_mb":100,"carrier":"verizon"}"#)
                .unwrap();
        assert_eq!(q, b);
        let chains = ActivationRequest::from_query(
            "region=us-west&data_mb=5&chain=eip155%3A31337&chain=base",
        )
        .unwrap();
        assert_eq!(chains.networks.len(), 2);
        let e = ActivationRequest::from_query("region=us-west&data_mb=ten").unwrap_err();
        assert_eq!(e.field.as_deref(), Some("data_mb"));
        let e = ActivationRequest::from_query("region=us-west&region=eu&data_mb=1").unwrap_err();
        assert_eq!(e.field.as_deref(), Some("region"));
        let e = ActivationRequest::from_query("data_mb=1").unwrap_err();
        assert_eq!(e.field.as_deref(), Some("region"));
        assert!(
            ActivationRequest::from_query("region=us-west&data_mb=1&allow_failover=true")
                .unwrap()
                .allow_failover
        );
        assert!(ActivationRequest::from_query("region=us-west&data_mb=1&bogus=1").is_err());
    }

    /// A chain given twice (by any of its names), or too many chains, is a 400: before, each repeat became
    /// another payment option and grew the sealed invoice id until it no longer parsed (a 500).
    #[test]
    fn chains_are_given_once_each_and_a_few_at_most() {
        let twice = ActivationRequest::parse(
            br#"{"region":"us-west","data_mb":1,"chain":["base","eip155:31337","base"]}"#,
        )
        .unwrap_err();
        assert_eq!(twice.field.as_deref(), Some("chain"));
        assert!(twice.message.contains("given twice"), "{}", twice.message);
        let q = ActivationRequest::from_query("region=us-west&data_mb=1&chain=base&chain=base")
            .unwrap_err();
        assert_eq!(q.field.as_deref(), Some("chain"));
        // A key given twice is ambiguous, not "the last one wins" (before, this bought 100 000 MB).
        let e = ActivationRequest::parse(br#"{"region":"us-west","data_mb":1,"data_mb":100000}"#)
            .unwrap_err();
        assert_eq!(e.field.as_deref(), Some("body"));
        assert!(e.message.contains("given twice"), "{}", e.message);
        let many: Vec<String> = (1..=MAX_CHAINS + 1)
            .map(|i| format!("eip155:{i}"))
            .collect();
        let body = serde_json::json!({"region": "us-west", "data_mb": 1, "chain": many});
        let e = ActivationRequest::parse(body.to_string().as_bytes()).unwrap_err();
        assert_eq!(e.field.as_deref(), Some("chain"));
        assert!(e.message.contains("at most"), "{}", e.message);
        let body =
            serde_json::json!({"region": "us-west", "data_mb": 1, "chain": many[..MAX_CHAINS]});
        assert_eq!(
            ActivationRequest::parse(body.to_string().as_bytes())
                .unwrap()
                .networks
                .len(),
            MAX_CHAINS
        );
    }

    #[test]
    fn parses_the_seed_body() {
        let r = ActivationRequest::parse(br#"{"region":"us-west","data_mb":100}"#).unwrap();
        assert_eq!(r.region.as_str(), "us-west");
        assert_eq!(r.data_mb.get(), 100);
        assert!(r.carrier.is_none() && r.networks.is_empty());
    }

    #[test]
    fn parses_every_optional_field() {
        let r = ActivationRequest::parse(
            br#"{"region":"eu-central","data_mb":5,"carrier":"tmobile","eid":"89049032123451234512345678901235",
                "payer":"0x70997970C51812dc3A010C7d01b50e0d17dc79C8","chain":["polygon","eip155:8453"]}"#,
        )
        .unwrap();
        assert_eq!(r.carrier.as_ref().unwrap().as_str(), "tmobile");
        assert_eq!(r.networks.len(), 2);
        assert!(r.payer.is_some() && r.eid.is_some());
        assert!(
            !r.failover_allowed(),
            "a named carrier pins dispatch unless failover is allowed"
        );
    }

    #[test]
    fn failover_is_on_without_a_carrier_and_opt_in_with_one() {
        let p = |b: &[u8]| ActivationRequest::parse(b).unwrap().failover_allowed();
        assert!(p(br#"{"region":"us-west","data_mb":1}"#));
        assert!(p(
            br#"{"region":"us-west","data_mb":1,"carrier":"att","allow_failover":true}"#
        ));
        assert!(!p(
            br#"{"region":"us-west","data_mb":1,"carrier":"att","allow_failover":false}"#
        ));
    }

    #[test]
    fn each_rejection_names_its_field() {
        let cases: &[(&[u8], &str)] = &[
            (b"not json", "body"),
            (b"[1]", "body"),
            (br#"{"data_mb":1}"#, "region"),
            (br#"{"region":"us-west"}"#, "data_mb"),
            (br#"{"region":"us-west","data_mb":"100"}"#, "data_mb"),
            (br#"{"region":"us-west","data_mb":1.5}"#, "data_mb"),
            (br#"{"region":"us-west","data_mb":-1}"#, "data_mb"),
            (br#"{"region":"us-west","data_mb":0}"#, "data_mb"),
            (br#"{"region":"US WEST","data_mb":1}"#, "region"),
            (br#"{"region":7,"data_mb":1}"#, "region"),
            (
                br#"{"region":"us-west","data_mb":1,"carrier":"T-Mobile"}"#,
                "carrier",
            ),
            (
                br#"{"region":"us-west","data_mb":1,"eid":"89049032123451234512345678901234"}"#,
                "eid",
            ),
            (
                br#"{"region":"us-west","data_mb":1,"payer":"0x12"}"#,
                "payer",
            ),
            // The zero address signs nothing; an empty chain list prefers nothing (before: accepted, and every
            // network offered).
            (
                br#"{"region":"us-west","data_mb":1,"payer":"0x0000000000000000000000000000000000000000"}"#,
                "payer",
            ),
            (br#"{"region":"us-west","data_mb":1,"chain":[]}"#, "chain"),
            (
                br#"{"region":"us-west","data_mb":1,"chain":"dogecoin"}"#,
                "chain",
            ),
            (
                br#"{"region":"us-west","data_mb":1,"data_MB":2}"#,
                "data_MB",
            ),
            (
                br#"{"region":"us-west","data_mb":1,"allow_failover":"yes"}"#,
                "allow_failover",
            ),
        ];
        for (body, field) in cases {
            let err = ActivationRequest::parse(body).unwrap_err();
            assert_eq!(err.status(), 400);
            assert_eq!(
                err.field.as_deref(),
                Some(*field),
                "{}",
                String::from_utf8_lossy(body)
            );
        }
    }

    #[test]
    fn eid_messages_are_unchanged() {
        assert_eq!(
            parse_eid("123").unwrap_err().message,
            "eid must be exactly 32 decimal digits"
        );
        assert_eq!(
            parse_eid("89049032123451234512345678901234")
                .unwrap_err()
                .message,
            "eid check digits are wrong (ISO 7064 mod 97-10)"
        );
        assert_eq!(
            parse_eid("89049032123451234512345678901235").unwrap(),
            "89049032123451234512345678901235"
        );
    }

    #[test]
    fn oversized_body_is_refused() {
        let big = format!(
            r#"{{"region":"us-west","data_mb":1,"carrier":"{}"}}"#,
            "a".repeat(MAX_BODY_BYTES)
        );
        assert_eq!(
            ActivationRequest::parse(big.as_bytes())
                .unwrap_err()
                .field
                .as_deref(),
            Some("body")
        );
    }
}
