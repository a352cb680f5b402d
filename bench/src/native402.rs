//! The native baseline of `compare402`: an axum server (HTTP/1.1 on tokio, loopback only) answering
//! `POST /v1/esim/activate` without payment with the same 402 as the host, computed by the same kernel code
//! (`esim402_core`) the components run, but natively and without the component boundaries:
//!
//! 1. the gateway's work: parse the body (`ActivationRequest::parse`), check there is no payment header;
//! 2. `dispatch.price`: the region's first carrier from the built-in catalog, its price from the price book;
//! 3. `invoices.issue`: the enabled networks narrowed to the request's `chain`, the terms sealed into a
//!    stateless invoice id (`invoice::token::seal` under an [`InvoiceKey`]), one payment option per network;
//! 4. the gateway's 402: the x402 v2 `PAYMENT-REQUIRED` header (`payment_required_header`) and the JSON body
//!    (the invoice, its `carrier`, and the x402 v1 challenge fields), with the same response headers.
//!
//! The settings are spin.toml's defaults (`payment_network = eip155:31337` with the dev token's overrides, the
//! same recipient and TTL); the invoice key is random per start (the host's is generated once and kept in its
//! store). The bench runs this as its own subprocess (`esim402-bench --serve-native402`), which prints
//! `listening <port>` and serves until it is stopped by PID, its stdin closes (the bench is gone) or an hour
//! has passed.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderMap, Response, StatusCode, Uri};
use axum::routing::post;
use esim402_core::esim::{Catalog, CatalogError};
use esim402_core::invoice::token::{self, InvoiceKey, Terms};
use esim402_core::invoice::{Invoice, PaymentOption, Purchase};
use esim402_core::pricing::{PriceBook, SealedQuote};
use esim402_core::x402::networks::{TokenOverrides, narrow};
use esim402_core::x402::requirements::challenge_body;
use esim402_core::x402::{NetworkConfig, Networks};
use esim402_core::{ActivationRequest, Address, ApiError, ErrorKind, UsdcAmount};

/// spin.toml's defaults for the settings the 402 depends on.
const PAYMENT_NETWORK: &str = "eip155:31337";
const USDC_ADDRESS: &str = "0x5FbDB2315678afecb367f032d93F642f64180aa3";
const USDC_EIP712_NAME: &str = "USD Coin";
const USDC_EIP712_VERSION: &str = "2";
const RECIPIENT: &str = "0x3C44CdDdB6a900fa2b585dd299e03d12FA4293BC";
const INVOICE_TTL_SECS: u64 = 900;
/// How long the server lives at most.
const LIFETIME: Duration = Duration::from_secs(3600);

/// Everything the components load once per instance (dispatch's catalog + price book, invoices' config).
pub struct Issuer {
    catalog: &'static Catalog,
    price_book: PriceBook,
    networks: Vec<NetworkConfig>,
    pay_to: Address,
    ttl: u64,
    key: InvoiceKey,
}

impl Issuer {
    /// The configuration, as the components build it from spin.toml's defaults.
    pub fn new() -> anyhow::Result<Self> {
        let overrides = TokenOverrides {
            usdc: Some(USDC_ADDRESS.parse()?),
            eip712_name: Some(USDC_EIP712_NAME.into()),
            eip712_version: Some(USDC_EIP712_VERSION.into()),
            confirmations: None,
        };
        let networks = Networks::builtin()
            .enabled(PAYMENT_NETWORK, &overrides)
            .map_err(|e| anyhow::anyhow!("payment_network: {e}"))?;
        let mut key = [0u8; 32];
        getrandom::fill(&mut key).map_err(|e| anyhow::anyhow!("getrandom: {e}"))?;
        let catalog = Catalog::builtin();
        Ok(Self {
            catalog,
            price_book: catalog.price_book(),
            networks,
            pay_to: RECIPIENT.parse()?,
            ttl: INVOICE_TTL_SECS,
            key: InvoiceKey::new(key),
        })
    }

    /// `dispatch.price`: the first candidate carrier, its price (micro-USDC) and the quote an invoice seals.
    fn price(&self, r: &ActivationRequest) -> Result<(String, UsdcAmount, SealedQuote), ApiError> {
        let allow_failover = r.carrier.is_none() || r.allow_failover;
        let candidates = self
            .catalog
            .candidates(&r.region, r.carrier.as_ref(), allow_failover)
            .map_err(|e| match e {
                CatalogError::UnknownRegion(_) => ApiError::invalid("region", e.to_string()),
                CatalogError::CarrierNotInRegion { .. } => {
                    ApiError::invalid("carrier", e.to_string())
                }
                other => ApiError::internal(other.to_string()),
            })?;
        let carrier = candidates
            .first()
            .map(|c| c.id.clone())
            .ok_or_else(|| ApiError::invalid("region", "no carrier serves this region"))?;
        let (amount, sealed) = self
            .price_book
            .priced(&carrier, r.data_mb)
            .ok_or_else(|| ApiError::internal(format!("no rate for carrier {carrier}")))?;
        Ok((carrier.to_string(), amount, sealed))
    }

    /// `invoices.issue`: seal the terms, nothing written.
    fn issue(
        &self,
        r: &ActivationRequest,
        amount: UsdcAmount,
        quoted: SealedQuote,
        now: u64,
    ) -> Result<Invoice, ApiError> {
        if amount == UsdcAmount::ZERO {
            return Err(ApiError::invalid("amount", "must be positive"));
        }
        let offered = narrow(&self.networks, &r.networks);
        if offered.is_empty() {
            return Err(ApiError::invalid(
                "chain",
                "none of the requested networks is enabled",
            ));
        }
        let mut nonce = [0u8; 8];
        getrandom::fill(&mut nonce).map_err(|e| ApiError::internal(e.to_string()))?;
        let terms = Terms {
            purchase: Purchase::Activation {
                region: r.region.to_string(),
                data_mb: r.data_mb.get(),
                carrier: r.carrier.as_ref().map(ToString::to_string),
                eid: r.eid.clone(),
                payer: r.payer.map(|a| a.to_checksum(None)),
                allow_failover: r.allow_failover,
            },
            amount,
            networks: offered.iter().map(|n| n.network).collect(),
            pay_to: self.pay_to,
            created_at: now,
            expires_at: now.saturating_add(self.ttl),
            nonce: u64::from_le_bytes(nonce),
            quoted: Some(quoted),
        };
        let id = token::seal(&terms, &self.key).map_err(|e| ApiError::internal(e.to_string()))?;
        let options = offered
            .iter()
            .map(|n| PaymentOption {
                network: n.network,
                asset: n.usdc.to_checksum(None),
                pay_to: terms.pay_to.to_checksum(None),
                amount_atomic: terms.amount.micros().to_string(),
                eip712_name: n.eip712_name.clone(),
                eip712_version: n.eip712_version.clone(),
            })
            .collect();
        Invoice::from_terms(id, &terms, options)
            .ok_or_else(|| ApiError::internal("no payment option configured"))
    }

    /// The whole unpaid request: `(PAYMENT-REQUIRED header, JSON body)` of the 402.
    pub fn payment_required(
        &self,
        body: &[u8],
        url: &str,
        now: u64,
    ) -> Result<(String, String), ApiError> {
        let request = ActivationRequest::parse(body)?;
        let (carrier, amount, quoted) = self.price(&request)?;
        let invoice = self.issue(&request, amount, quoted, now)?;
        let header = esim402_core::x402::payment_required_header(&invoice, url);
        Ok((header, challenge_body(&invoice, Some(&carrier), url)))
    }
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

const EXPOSE: &str = "PAYMENT-REQUIRED, PAYMENT-RESPONSE, X-PAYMENT-RESPONSE";

fn reply(status: u16, header: Option<String>, body: String) -> Response<Body> {
    let mut b = Response::builder()
        .status(StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR))
        .header("content-type", "application/json");
    if let Some(h) = header {
        b = b
            .header("cache-control", "no-store")
            .header("payment-required", h)
            .header("access-control-expose-headers", EXPOSE);
    }
    b.body(Body::from(body))
        .unwrap_or_else(|_| Response::new(Body::empty()))
}

async fn activate(
    State(issuer): State<Arc<Issuer>>,
    headers: HeaderMap,
    uri: Uri,
    body: Bytes,
) -> Response<Body> {
    if headers.contains_key("payment-signature")
        || headers.contains_key("x-payment")
        || headers.contains_key("x-payment-proof")
    {
        let e = ApiError::new(
            ErrorKind::Internal,
            "the native baseline issues 402s only; it takes no payment",
        );
        return reply(e.status(), None, e.to_json());
    }
    // The resource URL, as Spin's `spin-full-url` gives it to the gateway.
    let host = headers
        .get("host")
        .and_then(|h| h.to_str().ok())
        .unwrap_or("127.0.0.1");
    let url = format!("http://{host}{uri}");
    match issuer.payment_required(&body, &url, now()) {
        Ok((header, body)) => reply(402, Some(header), body),
        Err(e) => reply(e.status(), None, e.to_json()),
    }
}

/// Serve on `127.0.0.1:0`; prints `listening <port>` once bound. Never returns while it serves.
pub fn serve() -> anyhow::Result<()> {
    let issuer = Arc::new(Issuer::new()?);
    // Exit when the bench is gone (stdin closed) or after LIFETIME, whichever comes first.
    std::thread::spawn(|| {
        let _ = std::io::copy(&mut std::io::stdin(), &mut std::io::sink());
        std::process::exit(0);
    });
    std::thread::spawn(|| {
        std::thread::sleep(LIFETIME);
        std::process::exit(0);
    });
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .context("bind 127.0.0.1:0")?;
        let port = listener.local_addr()?.port();
        println!("listening {port}");
        let app = Router::new()
            .route("/v1/esim/activate", post(activate))
            .with_state(issuer);
        axum::serve(listener, app).await?;
        Ok(())
    })
}
