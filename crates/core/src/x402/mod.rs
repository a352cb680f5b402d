//! x402 (`reference/x402.md`): the pure kernel of our facilitator and resource server.
//!
//! - [`networks`]: the chains we take USDC on, as configuration (`crates/core/catalog/networks.toml`).
//! - [`wire`]: the v1/v2 JSON messages; [`header`]: the base64 header codecs, whose errors are typed 400s.
//! - [`requirements`]: challenges built from an invoice, and matching a payload against them.
//! - [`exact`]: EIP-3009 `exact` verification in the reference's check order, EIP-712 hashing, signature
//!   recovery and token calldata; [`reason`]: the wire reason strings; [`revert`]: the reason a settlement's
//!   revert text gives.
//!
//! Nothing here does I/O or reads a clock: callers pass `now` and what the chain said.

pub mod domain;
pub mod exact;
pub mod header;
pub mod networks;
pub mod payment_id;
pub mod reason;
pub mod requirements;
pub mod revert;
pub mod wire;

use serde_json::Value;

pub use exact::{
    ChainFacts, ExactChecked, TokenDomain, TransferAuthorization, check_exact, verify_exact,
    verify_request,
};
pub use header::{
    HeaderError, decode_payment_signature_header, decode_x_payment_header,
    encode_payment_response_header,
};
pub use networks::{NetworkConfig, Networks};
pub use reason::InvalidReason;
pub use requirements::MAX_TIMEOUT_SECONDS;
pub use wire::{
    PaymentPayload, PaymentRequired, PaymentRequirements, SettleResponse, SupportedResponse,
    VerifyRequest, VerifyResponse,
};

use crate::invoice::Invoice;

/// The v2 `PaymentRequired` object for an invoice, as JSON: one `exact` entry per payment option.
pub fn payment_required_v2(invoice: &Invoice, resource_url: &str) -> Value {
    serde_json::to_value(requirements::payment_required(invoice, resource_url))
        .expect("x402 wire types serialise infallibly")
}

/// The `PAYMENT-REQUIRED` header value: standard base64 (with padding) of the v2 JSON.
pub fn payment_required_header(invoice: &Invoice, resource_url: &str) -> String {
    header::encode_payment_required_header(&requirements::payment_required(invoice, resource_url))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::invoice::{PaymentOption, Purchase};
    use crate::{InvoiceId, Network, UsdcAmount};
    use base64::Engine as _;
    use base64::engine::general_purpose::STANDARD;

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
            InvoiceId::parse("inv_test.2").unwrap(),
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
