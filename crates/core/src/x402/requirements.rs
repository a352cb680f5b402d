//! Payment requirements built from an invoice (the resource server's side, `reference/x402.md` §2 and §7): one
//! `exact` entry per payment option, as v2 (`PAYMENT-REQUIRED` header) or v1 (JSON body), and matching an
//! incoming payload against them. Asset, `payTo` and amount always come from the invoice, never the client.

use super::wire::{
    Extra, PaymentPayload, PaymentRequired, PaymentRequiredV1, PaymentRequirements,
    PaymentRequirementsV1, Resource, SCHEME_EXACT, X402_V1, X402_V2,
};
use crate::chain::Network;
use crate::ids::InvoiceId;
use crate::invoice::{Invoice, PaymentOption, Purchase};

/// Seconds a client's authorization may stay valid (`maxTimeoutSeconds`; the reference default).
pub const MAX_TIMEOUT_SECONDS: u64 = 300;

/// `error` of a v2 challenge sent because no payment header came.
pub const V2_HEADER_REQUIRED: &str = "PAYMENT-SIGNATURE header is required";

/// `error` of a v1 challenge sent because no payment header came.
pub const V1_HEADER_REQUIRED: &str = "X-PAYMENT header is required";

/// `error` of a challenge whose payload matched none of the requirements.
pub const NO_MATCHING_REQUIREMENTS: &str = "No matching payment requirements";

/// The media type of every paid response.
pub const MIME_JSON: &str = "application/json";

/// The `extra` key that binds a requirement to its invoice. Clients copy `accepted` verbatim into their
/// payment, so a payment names the invoice it pays, and deep equality with the freshly rebuilt requirement
/// makes a payment for one invoice useless for any other.
pub const EXTRA_INVOICE_ID: &str = "invoiceId";

/// The v2 requirement for one payment option of invoice `invoice_id` (`extra` always carries the token's
/// EIP-712 domain and the invoice id).
pub fn requirement(option: &PaymentOption, invoice_id: &InvoiceId) -> PaymentRequirements {
    let mut extra = Extra::eip712(option.eip712_name.clone(), option.eip712_version.clone());
    extra.other.insert(
        EXTRA_INVOICE_ID.to_owned(),
        serde_json::Value::String(invoice_id.to_string()),
    );
    PaymentRequirements {
        scheme: SCHEME_EXACT.to_owned(),
        network: option.network.to_string(),
        amount: option.amount_atomic.clone(),
        asset: option.asset.clone(),
        pay_to: option.pay_to.clone(),
        max_timeout_seconds: MAX_TIMEOUT_SECONDS,
        extra: Some(extra),
    }
}

/// The invoice a v2 payment names (`accepted.extra.invoiceId`); `None` for v1 payloads, which carry no copy
/// of the requirement, and for v2 payloads built from someone else's challenge.
pub fn invoice_id_of(payload: &PaymentPayload) -> Option<InvoiceId> {
    match payload {
        PaymentPayload::V2(p) => p
            .accepted
            .extra
            .as_ref()?
            .other
            .get(EXTRA_INVOICE_ID)?
            .as_str()
            .and_then(|s| InvoiceId::parse(s).ok()),
        PaymentPayload::V1(_) => None,
    }
}

/// The v2 requirements of an invoice, in its option order (preferred first).
pub fn requirements_v2(invoice: &Invoice) -> Vec<PaymentRequirements> {
    invoice
        .accepts
        .iter()
        .map(|o| requirement(o, &invoice.invoice_id))
        .collect()
}

/// The resource an invoice pays for, described by what it buys.
pub fn resource(invoice: &Invoice, url: &str) -> Resource {
    let description = match invoice.purchase {
        Purchase::Activation { .. } => "eSIM activation",
        Purchase::TopUp { .. } => "eSIM data top-up",
        Purchase::Switch { .. } => "eSIM carrier switch",
    };
    Resource {
        url: url.to_owned(),
        description: Some(description.to_owned()),
        mime_type: Some(MIME_JSON.to_owned()),
    }
}

/// The v2 challenge for an invoice at `url` (error: the missing header; replace it with a reason on retry).
pub fn payment_required(invoice: &Invoice, url: &str) -> PaymentRequired {
    PaymentRequired {
        x402_version: X402_V2,
        error: Some(V2_HEADER_REQUIRED.to_owned()),
        resource: resource(invoice, url),
        accepts: requirements_v2(invoice),
        extensions: Some(super::payment_id::advertise()),
    }
}

/// The v1 requirements of an invoice (networks by v1 name where known).
pub fn requirements_v1(invoice: &Invoice, resource: &Resource) -> Vec<PaymentRequirementsV1> {
    invoice
        .accepts
        .iter()
        .map(|o| PaymentRequirementsV1::from_v2(&requirement(o, &invoice.invoice_id), resource))
        .collect()
}

/// The v1 challenge body for an invoice at `url`.
pub fn payment_required_v1(invoice: &Invoice, url: &str) -> PaymentRequiredV1 {
    PaymentRequiredV1 {
        x402_version: X402_V1,
        error: V1_HEADER_REQUIRED.to_owned(),
        accepts: requirements_v1(invoice, &resource(invoice, url)),
    }
}

/// The JSON body of a 402 for an invoice at `url`: the invoice's fields, `carrier` when known, and the v1
/// challenge (`x402Version`, `error`, and `accepts` in v1 form, which stands in for the invoice's own options), so
/// that v1 clients, which read only the body, can pay. Serialised in one pass (no intermediate
/// `serde_json::Value`: the 402 is the hottest route).
pub fn challenge_body(invoice: &Invoice, carrier: Option<&str>, url: &str) -> String {
    /// The invoice's fields except `accepts` (a test checks this against `Invoice`'s own serialisation).
    #[derive(serde::Serialize)]
    struct Body<'a> {
        accepts: &'a [PaymentRequirementsV1],
        amount_atomic: &'a str,
        amount_usdc: &'a crate::money::UsdcAmount,
        asset: &'a str,
        #[serde(skip_serializing_if = "Option::is_none")]
        carrier: Option<&'a str>,
        chain: &'a Network,
        created_at: u64,
        error: &'a str,
        expires_at: u64,
        invoice_id: &'a InvoiceId,
        #[serde(skip_serializing_if = "Option::is_none")]
        payer: Option<&'a String>,
        purchase: &'a Purchase,
        recipient: &'a str,
        status: crate::invoice::InvoiceStatus,
        #[serde(skip_serializing_if = "Option::is_none")]
        transaction: Option<&'a String>,
        #[serde(rename = "x402Version")]
        x402_version: u32,
    }
    let v1 = payment_required_v1(invoice, url);
    let body = Body {
        accepts: &v1.accepts,
        amount_atomic: &invoice.amount_atomic,
        amount_usdc: &invoice.amount_usdc,
        asset: &invoice.asset,
        carrier,
        chain: &invoice.chain,
        created_at: invoice.created_at,
        error: &v1.error,
        expires_at: invoice.expires_at,
        invoice_id: &invoice.invoice_id,
        payer: invoice.payer.as_ref(),
        purchase: &invoice.purchase,
        recipient: &invoice.recipient,
        status: invoice.status,
        transaction: invoice.transaction.as_ref(),
        x402_version: v1.x402_version,
    };
    serde_json::to_string(&body).expect("x402 wire types serialise infallibly")
}

/// The requirement a payload pays for, out of freshly built `accepts`: v2 by deep equality of `accepted`
/// (key order irrelevant), v1 by the first entry with the same scheme and network. `None`: answer 402 with
/// [`NO_MATCHING_REQUIREMENTS`].
pub fn select_requirements<'a>(
    accepts: &'a [PaymentRequirements],
    payload: &PaymentPayload,
) -> Option<&'a PaymentRequirements> {
    match payload {
        PaymentPayload::V2(p) => accepts.iter().find(|r| **r == p.accepted),
        PaymentPayload::V1(p) => {
            let network = Network::parse(&p.network).ok()?;
            accepts
                .iter()
                .find(|r| r.scheme == p.scheme && Network::parse(&r.network) == Ok(network))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::UsdcAmount;
    use crate::invoice::PaymentOption;
    use crate::x402::wire::{Authorization, ExactEvmPayload, PaymentPayloadV1, PaymentPayloadV2};

    fn option(network: &str, asset: &str) -> PaymentOption {
        PaymentOption {
            network: Network::parse(network).unwrap(),
            asset: asset.into(),
            pay_to: "0x3C44CdDdB6a900fa2b585dd299e03d12FA4293BC".into(),
            amount_atomic: "420000".into(),
            eip712_name: "USDC".into(),
            eip712_version: "2".into(),
        }
    }

    fn invoice(purchase: Purchase) -> Invoice {
        Invoice::new(
            InvoiceId::parse("inv_test.3").unwrap(),
            UsdcAmount::from_micros(420_000),
            vec![
                option("eip155:84532", "0x036CbD53842c5426634e7929541eC2318f3dCF7e"),
                option("eip155:80002", "0x41E94Eb019C0762f9Bfcf9Fb1E58725BfB0e7582"),
            ],
            purchase,
            0,
            60,
        )
        .unwrap()
    }

    fn activation() -> Invoice {
        invoice(Purchase::Activation {
            region: "us-west".into(),
            data_mb: 100,
            carrier: None,
            eid: None,
            payer: None,
            allow_failover: false,
        })
    }

    /// The 402 body as the gateway built it before `challenge_body`: the invoice as a JSON value, `carrier`
    /// added, the v1 challenge's fields merged over it.
    fn body_by_merging(invoice: &Invoice, carrier: Option<&str>, url: &str) -> serde_json::Value {
        let mut v = serde_json::to_value(invoice).unwrap();
        let map = v.as_object_mut().unwrap();
        if let Some(c) = carrier {
            map.insert("carrier".into(), c.into());
        }
        let serde_json::Value::Object(v1) =
            serde_json::to_value(payment_required_v1(invoice, url)).unwrap()
        else {
            panic!("v1 challenge is not an object");
        };
        map.extend(v1);
        v
    }

    #[test]
    fn the_challenge_body_is_the_invoice_with_the_v1_challenge_merged_in() {
        let url = "http://127.0.0.1:3000/v1/esim/activate";
        let mut paid = activation();
        paid.status = crate::invoice::InvoiceStatus::Paid;
        paid.payer = Some("0xf39Fd6e51aad88F6F4ce6aB8827279cffFb92266".into());
        paid.transaction = Some(format!("0x{}", "ab".repeat(32)));
        for (invoice, carrier) in [
            (activation(), Some("sim")),
            (activation(), None),
            (paid, Some("a\"b")),
        ] {
            let body = challenge_body(&invoice, carrier, url);
            let parsed: serde_json::Value = serde_json::from_str(&body).unwrap();
            // The same object, key for key: a field added to `Invoice` and not to the body fails here.
            assert_eq!(parsed, body_by_merging(&invoice, carrier, url), "{body}");
            assert_eq!(parsed["accepts"].as_array().map(Vec::len), Some(2));
            assert_eq!(parsed["x402Version"], 1);
        }
    }

    fn exact() -> ExactEvmPayload {
        ExactEvmPayload {
            signature: "0x".into(),
            authorization: Authorization {
                from: String::new(),
                to: String::new(),
                value: String::new(),
                valid_after: String::new(),
                valid_before: String::new(),
                nonce: String::new(),
            },
        }
    }

    #[test]
    fn one_exact_entry_per_option_with_the_domain() {
        let inv = activation();
        let reqs = requirements_v2(&inv);
        assert_eq!(reqs.len(), 2);
        assert_eq!(reqs[0].network, "eip155:84532");
        assert_eq!(reqs[1].network, "eip155:80002");
        for r in &reqs {
            assert_eq!(r.scheme, "exact");
            assert_eq!(r.amount, "420000");
            assert_eq!(r.max_timeout_seconds, MAX_TIMEOUT_SECONDS);
            assert_eq!(
                (r.eip712_name(), r.eip712_version()),
                (Some("USDC"), Some("2"))
            );
        }
        let pr = payment_required(&inv, "https://h/v1/esim/activate");
        assert_eq!(pr.x402_version, 2);
        assert_eq!(pr.error.as_deref(), Some(V2_HEADER_REQUIRED));
        assert_eq!(pr.resource.description.as_deref(), Some("eSIM activation"));
        assert_eq!(pr.accepts, reqs);
    }

    #[test]
    fn descriptions_follow_the_purchase() {
        let top_up = invoice(Purchase::TopUp {
            iccid: "8901260000000000001".into(),
            data_mb: 10,
            payer: None,
        });
        assert_eq!(
            resource(&top_up, "u").description.as_deref(),
            Some("eSIM data top-up")
        );
        let switch = invoice(Purchase::Switch {
            iccid: "8901260000000000001".into(),
            target: "carrier:att".into(),
        });
        assert_eq!(
            resource(&switch, "u").description.as_deref(),
            Some("eSIM carrier switch")
        );
    }

    #[test]
    fn v1_challenge_uses_names_and_max_amount() {
        let body = payment_required_v1(&activation(), "https://h/a");
        let v = serde_json::to_value(&body).unwrap();
        assert_eq!(v["x402Version"], 1);
        assert_eq!(v["error"], V1_HEADER_REQUIRED);
        let a = &v["accepts"][0];
        assert_eq!(a["network"], "base-sepolia");
        assert_eq!(a["maxAmountRequired"], "420000");
        assert_eq!(a["resource"], "https://h/a");
        assert_eq!(a["description"], "eSIM activation");
        assert_eq!(a["mimeType"], "application/json");
        assert_eq!(a["extra"]["name"], "USDC");
        assert_eq!(v["accepts"][1]["network"], "polygon-amoy");
    }

    #[test]
    fn payloads_match_by_deep_equality_or_scheme_and_network() {
        let accepts = requirements_v2(&activation());
        let v2 = |accepted: PaymentRequirements| {
            PaymentPayload::V2(PaymentPayloadV2 {
                resource: None,
                accepted,
                payload: exact(),
                extensions: None,
            })
        };
        assert_eq!(
            select_requirements(&accepts, &v2(accepts[1].clone())),
            Some(&accepts[1])
        );
        // Key order does not matter: a re-serialised copy with shuffled keys still matches.
        let shuffled: PaymentRequirements = serde_json::from_str(
            &format!(r#"{{"extra":{{"version":"2","invoiceId":"{}","name":"USDC"}},"payTo":"0x3C44CdDdB6a900fa2b585dd299e03d12FA4293BC",
                "maxTimeoutSeconds":300,"asset":"0x036CbD53842c5426634e7929541eC2318f3dCF7e","amount":"420000",
                "network":"eip155:84532","scheme":"exact"}}"#, accepts[0].extra.as_ref().unwrap().other[EXTRA_INVOICE_ID].as_str().unwrap()),
        )
        .unwrap();
        assert_eq!(
            select_requirements(&accepts, &v2(shuffled)),
            Some(&accepts[0])
        );
        for tamper in [
            |r: &mut PaymentRequirements| r.amount = "1".into(),
            |r: &mut PaymentRequirements| r.pay_to = r.pay_to.to_lowercase(),
            |r: &mut PaymentRequirements| r.max_timeout_seconds = 3600,
            |r: &mut PaymentRequirements| r.extra = None,
        ] {
            let mut r = accepts[0].clone();
            tamper(&mut r);
            assert_eq!(select_requirements(&accepts, &v2(r)), None);
        }
        let v1 = |network: &str| {
            PaymentPayload::V1(PaymentPayloadV1 {
                scheme: "exact".into(),
                network: network.into(),
                payload: exact(),
            })
        };
        assert_eq!(
            select_requirements(&accepts, &v1("polygon-amoy")),
            Some(&accepts[1])
        );
        assert_eq!(select_requirements(&accepts, &v1("base")), None);
        assert_eq!(select_requirements(&accepts, &v1("nowhere")), None);
    }

    #[test]
    fn a_payment_names_its_invoice_through_the_copied_requirement() {
        let inv = activation();
        let accepts = requirements_v2(&inv);
        let v2 = PaymentPayload::V2(PaymentPayloadV2 {
            resource: None,
            accepted: accepts[1].clone(),
            payload: exact(),
            extensions: None,
        });
        assert_eq!(invoice_id_of(&v2), Some(inv.invoice_id.clone()));
        // Another invoice's requirements differ only in the id, and that is enough not to match.
        let mut other = inv.clone();
        other.invoice_id = InvoiceId::parse("inv_test.9").unwrap();
        assert_eq!(select_requirements(&requirements_v2(&other), &v2), None);
        let v1 = PaymentPayload::V1(PaymentPayloadV1 {
            scheme: "exact".into(),
            network: "base-sepolia".into(),
            payload: exact(),
        });
        assert_eq!(invoice_id_of(&v1), None);
        let mut foreign = accepts[0].clone();
        foreign.extra = Some(Extra::eip712("USDC", "2"));
        let foreign = PaymentPayload::V2(PaymentPayloadV2 {
            resource: None,
            accepted: foreign,
            payload: exact(),
            extensions: None,
        });
        assert_eq!(invoice_id_of(&foreign), None);
    }
}
