//! The two routes that sell something: `POST /v1/esim/activate` (also `GET` with the fields as a query, for
//! x402 tools and crawlers that only GET) and `POST /v1/esim/{iccid}/switch` (the owner's). Without a payment
//! they price the request and answer 402 with a sealed invoice (nothing is stored: the invoice id carries its
//! terms); with one they pay the invoice it names and deliver ([`crate::pay`]). A paid activation or switch
//! answers with the new SIM's access token (derived, not stored: the same payment answered again carries the
//! same token, until the owner rotates it).

use esim402_core::paid::StoredResponse;
use esim402_core::x402::requirements::challenge_body;
use esim402_core::{ActivationRequest, ApiError};
use esim402_guest::convert;
use esim402_guest::wit;
use serde_json::Value;
use spin_sdk::http::{Method, Request, Response};

use crate::pay::{self, Order, Proof};
use crate::{Reply, dispatch, from_wit, public_resource_url, read_body};

/// `POST /v1/esim/activate` (JSON body) or `GET /v1/esim/activate?region=…&data_mb=…`.
pub async fn activate(req: Request) -> Result<Reply, ApiError> {
    let proof = Proof::from_headers(req.headers())?;
    let invoice_header = pay::invoice_header(req.headers())?;
    let url = public_resource_url(&req).await;
    let label = label_of(req.headers())?;
    // An `exact` payment's request, kept if its order is left pending (`crate::recheck`).
    let kept = proof
        .as_ref()
        .filter(|p| p.is_exact())
        .map(|_| crate::recheck::headers(req.headers()));
    let get = req.method() == Method::GET;
    let (request, body) = if get {
        let query = req.uri().query().unwrap_or_default().to_owned();
        (ActivationRequest::from_query(&query)?, query.into_bytes())
    } else {
        // A POST reads its body only (one with a query was refused before routing: kernel
        // `routes::ignored_query`).
        let body = read_body(req).await?;
        (ActivationRequest::parse(&body)?, body.to_vec())
    };
    let wit_request = crate::convert::activation_to_wit(&request);
    let Some(proof) = proof else {
        let (invoice, quote) = issue_activation(&wit_request).await?;
        return payment_required(&invoice, &quote, &url, None);
    };
    // Refused before anything is paid (`Paid::pay` checks it again for a kept request sent again).
    if let Err(e) = pay::named_invoice(&proof, request.invoice_id.clone(), invoice_header.clone()) {
        return pay::refused_unpaid(&proof, e).await.map(|r| render(&r));
    }
    let paid = Paid {
        proof,
        invoice_header,
        label,
        url: &url,
        request,
        body: &body,
    };
    let (invoice, stored) = paid.pay().await?;
    if let Some(headers) = kept
        && pay::is_order_pending(&stored)
    {
        crate::recheck::keep(&invoice, get, &url, &body, &headers).await;
    }
    Ok(render(&with_token(stored).await))
}

/// The `X-Agent-ID` label of a request, if any (400 if malformed).
pub fn label_of(headers: &spin_sdk::http::HeaderMap) -> Result<Option<String>, ApiError> {
    let Some(value) = headers.get("x-agent-id") else {
        return Ok(None);
    };
    // A value that is not ASCII is refused as an empty one is (before, it was dropped: the SIM was bought
    // without its label).
    let label = value.to_str().unwrap_or_default();
    esim402_core::order::parse_agent_label(label)
        .map(Some)
        .map_err(|e| ApiError::invalid("X-Agent-ID", e))
}

/// Send a kept activation request again (the operator's cleanup run, `crate::admin`; kept by
/// `crate::recheck`): the answer, or the error it met. A kept request that no longer parses, or that this build
/// reads otherwise than the one that kept it (a renamed field, a tighter limit), is an internal error: never a
/// final answer, so it is tried again and then left to an operator, who must look on chain.
pub async fn activate_again(kept: &str) -> Result<StoredResponse, ApiError> {
    use esim402_core::order::recheck::Resend;
    use spin_sdk::http::{HeaderMap, HeaderName, HeaderValue};
    let unreadable = |what: String| ApiError::internal(format!("a kept request {what}"));
    let fails =
        |what: &'static str| move |e: ApiError| unreadable(format!("{what}: {}", e.message));
    let resend = Resend::parse(kept).ok_or_else(|| unreadable("does not parse".into()))?;
    let mut map = HeaderMap::new();
    for (name, value) in &resend.headers {
        let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(name.as_bytes()),
            HeaderValue::from_str(value),
        ) else {
            return Err(unreadable("has a header that does not parse".into()));
        };
        map.append(name, value);
    }
    let proof = Proof::from_headers(&map)
        .map_err(fails("has a payment that does not parse"))?
        .ok_or_else(|| unreadable("has no payment".into()))?;
    let request = if resend.get {
        ActivationRequest::from_query(&resend.body)
    } else {
        ActivationRequest::parse(resend.body.as_bytes())
    }
    .map_err(fails("is not an activation request to this build"))?;
    let paid = Paid {
        proof,
        invoice_header: pay::invoice_header(&map).map_err(fails("names no invoice"))?,
        label: label_of(&map).map_err(fails("has a bad label"))?,
        url: &resend.url,
        request,
        body: resend.body.as_bytes(),
    };
    Ok(paid.pay().await?.1)
}

/// A paid activation request, parsed ([`activate`], or a kept one sent again: [`activate_again`]).
pub struct Paid<'a> {
    pub proof: Proof,
    pub invoice_header: Option<esim402_core::InvoiceId>,
    pub label: Option<String>,
    pub url: &'a str,
    pub request: ActivationRequest,
    /// The body (or the query of a `GET`) as sent: the payment's request fingerprint.
    pub body: &'a [u8],
}

impl Paid<'_> {
    /// Pay the invoice the payment names (or one issued for the request) and deliver: the invoice's id and the
    /// answer.
    pub async fn pay(self) -> Result<(String, StoredResponse), ApiError> {
        let wit_request = crate::convert::activation_to_wit(&self.request);
        let named = pay::named_invoice(
            &self.proof,
            self.request.invoice_id.clone(),
            self.invoice_header,
        )?;
        let invoice = pay::invoice_for(&self.proof, named.as_ref(), || async {
            Ok(issue_activation(&wit_request).await?.0)
        })
        .await?;
        let id = invoice.id.clone();
        let fingerprint = request_fingerprint("activate", self.body, &self.proof);
        let order = Order::Activation {
            request: wit_request,
            label: self.label,
        };
        let stored = pay::pay(invoice, order, self.proof, self.url, fingerprint).await?;
        Ok((id, stored))
    }
}

/// A paid activation's (or switch's) answer with the SIM's access token added (never stored in the answer).
async fn with_token(mut stored: StoredResponse) -> StoredResponse {
    if stored.status != 200 {
        return stored;
    }
    let Ok(mut body) = serde_json::from_str::<Value>(&stored.body) else {
        return stored;
    };
    // The SIM the answer delivered, by its record's invoice: the same ICCID may be another payer's record now
    // (a profile handed out again), whose token this answer must not carry.
    let (Some(iccid), Some(invoice)) = (
        body["iccid"].as_str().map(str::to_owned),
        body["invoice_id"].as_str().map(str::to_owned),
    ) else {
        return stored;
    };
    // An answer that withholds the activation code withholds the token too (kernel `paid::hands_over_codes`).
    if body.get("activation_code").is_none() {
        return stored;
    }
    match dispatch::initial_token(iccid.clone(), invoice).await {
        Ok(Some(token)) => body["access_token"] = Value::String(token),
        Ok(None) => {
            body["access_token_note"] = Value::String(
                "the access token was rotated or revoked since; use the current one or a wallet sign-in".into(),
            );
        }
        Err(e) => eprintln!("gateway: access token of {iccid} not available: {e:?}"),
    }
    stored.body = body.to_string();
    stored
}

async fn issue_activation(
    request: &wit::ActivationRequest,
) -> Result<(wit::Invoice, wit::Quote), ApiError> {
    let quote = crate::price(request).await?;
    let purchase = wit::Purchase::Activation(request.clone());
    let invoice = crate::issue(purchase, quote.amount, quote.sealed.clone()).await?;
    Ok((invoice, quote))
}

/// `POST /v1/esim/{iccid}/switch` with `{"carrier": …}` or `{"region": …}`.
pub async fn switch(iccid: &str, req: Request) -> Result<Reply, ApiError> {
    // The credential is checked for form first (401 whatever the body), but used (a sign-in's nonce claimed)
    // only once the body is known good.
    let credential = crate::auth::credential(&req, false).await?;
    let proof = Proof::from_headers(req.headers())?;
    let invoice_header = pay::invoice_header(req.headers())?;
    let url = public_resource_url(&req).await;
    let body = read_body(req).await?;
    let target = crate::convert::switch_target(&body)?;
    let by_wallet = matches!(credential, wit::Credential::Wallet(_));
    let sim = crate::auth::open(iccid, credential).await?;
    let issue = || async {
        let quote = dispatch::quote_switch(iccid.to_owned(), target.clone())
            .await
            .map_err(from_wit)?;
        let purchase = wit::Purchase::Switch(wit::SwitchRequest {
            iccid: iccid.to_owned(),
            target: target.clone(),
        });
        let invoice = crate::issue(purchase, quote.amount, None).await?;
        Ok::<_, ApiError>((invoice, quote))
    };
    // A switch moves the SIM's balance: none yet is a 409 after the request's own checks (its target, its
    // invoice), before anything is paid.
    let Some(proof) = proof else {
        let (invoice, quote) = issue().await?;
        require_balance(&sim).await?;
        return payment_required(&invoice, &quote, &url, None);
    };
    let named = match pay::named_invoice(&proof, None, invoice_header) {
        Ok(named) => named,
        Err(e) => return pay::refused_unpaid(&proof, e).await.map(|r| render(&r)),
    };
    let invoice =
        pay::invoice_for(&proof, named.as_ref(), || async { Ok(issue().await?.0) }).await?;
    // Paid only by the owner (kernel `paid::switch_payer_allowed`), decided before anything is paid: for an
    // invoice no payment has touched (one already being paid goes on to its own answer or conflict, as a
    // payment a build without this check took must).
    let payer = proof.claimed_payer().or_else(|| {
        esim402_guest::convert::invoice(&invoice).and_then(|i| i.proof_payer().map(str::to_owned))
    });
    if pay::untouched(&invoice)
        && !esim402_core::paid::switch_payer_allowed(
            by_wallet,
            sim.owner.as_deref(),
            payer.as_deref(),
        )
    {
        let e = ApiError::new(
            esim402_core::ErrorKind::Forbidden,
            format!(
                "a switch asked with the SIM's access token is paid from the wallet that owns the SIM ({}), not \
                 {}: sign in with the owner's wallet (SIGN-IN-WITH-X) to pay it from another; nothing was taken",
                sim.owner.as_deref().unwrap_or("unknown"),
                payer.as_deref().unwrap_or("a payment naming no payer"),
            ),
        );
        return pay::refused_unpaid_for(&proof, Some(&invoice), e).map(|r| render(&r));
    }
    require_balance(&sim).await.map_err(|mut e| {
        e.message.push_str(
            "; nothing was taken for this switch: send the same payment again once the balance is credited",
        );
        e
    })?;
    let fingerprint = request_fingerprint(&format!("switch/{iccid}"), &body, &proof);
    let order = Order::Switch {
        iccid: iccid.to_owned(),
        target,
        by_wallet,
        owner: sim.owner.clone(),
    };
    let stored = pay::pay(invoice, order, proof, &url, fingerprint).await?;
    Ok(render(&with_token(stored).await))
}

/// A switch moves `sim`'s balance: refused (409, naming why) while it has none yet, before anything is paid
/// (before, the switch was paid and moved nothing, and the data credited later stayed with the old SIM, retired
/// with no refund). `sim` is opened by the caller.
async fn require_balance(sim: &wit::Sim) -> Result<(), ApiError> {
    crate::metering::get_balance(sim.iccid.clone())
        .await
        .map(drop)
        .map_err(|e| crate::convert::unmetered(sim, e))
}

/// Identity of a paid request for `payment-identifier`: route, body and payment.
pub fn request_fingerprint(route: &str, body: &[u8], proof: &Proof) -> String {
    let mut bytes = Vec::with_capacity(route.len() + body.len() + 80);
    bytes.extend_from_slice(route.as_bytes());
    bytes.push(0);
    bytes.extend_from_slice(body);
    bytes.push(0);
    bytes.extend_from_slice(proof.fingerprint().as_bytes());
    esim402_core::paid::fingerprint(&bytes)
}

/// A stored paid answer as an HTTP response (always `no-store`; `crate::handle` exposes the x402 headers to
/// browsers).
pub fn render(r: &StoredResponse) -> Reply {
    let mut b = Response::builder()
        .status(r.status)
        .header("content-type", "application/json")
        .header("cache-control", "no-store");
    for (k, v) in &r.headers {
        b = b.header(k.as_str(), v.as_str());
    }
    b.body(r.body.clone())
        .unwrap_or_else(|_| crate::unbuildable())
}

/// HTTP 402 with the seed's invoice body and the x402 v2 `PAYMENT-REQUIRED` header (built here, by the
/// kernel, from the invoice). The body also carries the x402 v1 challenge fields (`x402Version: 1`, `error`,
/// `accepts`), so v1 clients (which read only the body) can pay too.
pub fn payment_required(
    invoice: &wit::Invoice,
    quote: &wit::Quote,
    url: &str,
    extra: Option<Value>,
) -> Result<Reply, ApiError> {
    let core =
        convert::invoice(invoice).ok_or_else(|| ApiError::internal("invoice is malformed"))?;
    let header = esim402_core::x402::payment_required_header(&core, url);
    let mut body = challenge_body(&core, Some(&quote.carrier), url);
    if let Some(Value::Object(extra)) = extra
        && let Ok(Value::Object(mut b)) = serde_json::from_str::<Value>(&body)
    {
        b.extend(extra);
        body = Value::Object(b).to_string();
    }
    Response::builder()
        .status(402)
        .header("content-type", "application/json")
        .header("cache-control", "no-store")
        .header("payment-required", header)
        .body(body)
        .map_err(|e| ApiError::internal(e.to_string()))
}
