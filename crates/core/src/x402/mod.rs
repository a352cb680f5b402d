//! x402 wire messages built from invoices: the v2 `PAYMENT-REQUIRED` challenge (standard padded base64 over
//! JSON, carried in a header) and the v1 JSON body. Field names and rules follow `reference/x402.md` §1–2.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use serde_json::{Value, json};

use crate::invoice::Invoice;

/// Seconds a client's authorization may stay valid (`maxTimeoutSeconds`).
pub const MAX_TIMEOUT_SECONDS: u64 = 300;

/// The v2 `PaymentRequired` object for an invoice: one `exact` entry per payment option.
pub fn payment_required_v2(invoice: &Invoice, resource_url: &str) -> Value {
    let accepts: Vec<Value> = invoice
        .accepts
        .iter()
        .map(|o| {
            json!({
                "scheme": "exact",
                "network": o.network.to_string(),
                "amount": o.amount_atomic,
                "asset": o.asset,
                "payTo": o.pay_to,
                "maxTimeoutSeconds": MAX_TIMEOUT_SECONDS,
                "extra": { "name": o.eip712_name, "version": o.eip712_version },
            })
        })
        .collect();
    json!({
        "x402Version": 2,
        "error": "PAYMENT-SIGNATURE header is required",
        "resource": { "url": resource_url, "description": "eSIM activation", "mimeType": "application/json" },
        "accepts": accepts,
        "extensions": {},
    })
}

/// The `PAYMENT-REQUIRED` header value: standard base64 (with padding) of the v2 JSON.
pub fn payment_required_header(invoice: &Invoice, resource_url: &str) -> String {
    STANDARD.encode(payment_required_v2(invoice, resource_url).to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::invoice::{PaymentOption, Purchase};
    use crate::{InvoiceId, Network, UsdcAmount};

    #[test]
    fn header_decodes_to_exact_entries_with_domain() {
        let opt = PaymentOption {
            network: Network::parse("eip155:31337").unwrap(),
            asset: "0x5FbDB2315678afecb367f032d93F642f64180aa3".into(),
            pay_to: "0x3C44CdDdB6a900fa2b585dd299e03d12FA4293BC".into(),
            amount_atomic: "420000".into(),
            eip712_name: "USD Coin".into(),
            eip712_version: "2".into(),
        };
        let purchase = Purchase::Activation {
            region: "us-west".into(),
            data_mb: 100,
            carrier: None,
            eid: None,
            payer: None,
            allow_failover: false,
        };
        let inv = Invoice::new(
            InvoiceId::from_random([2; 16]),
            UsdcAmount::from_micros(420_000),
            vec![opt],
            purchase,
            0,
            60,
        )
        .unwrap();
        let header = payment_required_header(&inv, "http://127.0.0.1:3000/v1/esim/activate");
        let v: Value = serde_json::from_slice(&STANDARD.decode(header).unwrap()).unwrap();
        assert_eq!(v["x402Version"], 2);
        let a = &v["accepts"][0];
        assert_eq!(
            (
                a["scheme"].as_str(),
                a["network"].as_str(),
                a["amount"].as_str()
            ),
            (Some("exact"), Some("eip155:31337"), Some("420000"))
        );
        assert_eq!(a["extra"]["name"], "USD Coin");
        assert_eq!(a["extra"]["version"], "2");
        assert_eq!(a["maxTimeoutSeconds"], 300);
        assert_eq!(
            v["resource"]["url"],
            "http://127.0.0.1:3000/v1/esim/activate"
        );
    }
}
