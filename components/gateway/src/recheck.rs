//! Withdrawn `exact` activations looked at again on chain (kernel `order::recheck`): the paid request of an
//! activation answered "order pending" is kept by dispatch ([`keep`]); once a sweep withdraws that order unpaid,
//! the operator's cleanup run sends it again ([`send_again`]), as the payer would: an authorization executed
//! meanwhile is settled by that transaction and owed back (`pay`'s `executed` path), one never executed ends as
//! "nothing charged".

use esim402_core::ApiError;
use esim402_core::order::recheck::{KEPT_HEADERS, Resend};
use esim402_core::paid::StoredResponse;
use spin_sdk::http::{HeaderMap, HeaderName, HeaderValue};

use crate::dispatch;
use crate::pay::{self, Proof};
use crate::purchase::{Paid, label_of};

/// The kept headers of a request (names and values), read before its body is.
pub fn headers(map: &HeaderMap) -> Vec<(String, String)> {
    KEPT_HEADERS
        .iter()
        .filter_map(|name| {
            let value = map.get(*name)?.to_str().ok()?;
            Some(((*name).to_owned(), value.to_owned()))
        })
        .collect()
}

/// Keep the request of `invoice`'s activation, answered "order pending" (best effort: logged if it fails; the
/// payer's own resend still settles an executed authorization).
pub async fn keep(invoice: &str, get: bool, url: &str, body: &[u8], headers: &[(String, String)]) {
    let pairs = headers.iter().map(|(k, v)| (k.as_str(), v.as_str()));
    let Some(kept) = Resend::keep(get, url, body, pairs) else {
        eprintln!(
            "gateway: the paid request of invoice {invoice} is too large to keep for its chain check"
        );
        return;
    };
    if let Err(e) = dispatch::keep_resend(invoice.to_owned(), kept).await {
        eprintln!(
            "gateway: the paid request of invoice {invoice} was not kept for its chain check: {e:?}"
        );
    }
}

/// Send a kept request again: the answer, or the error it met. A kept request that no longer parses is an
/// internal error (never a final answer: it is tried again and then left to an operator, who must look on chain).
pub async fn send_again(kept: &str) -> Result<StoredResponse, ApiError> {
    let unreadable = |what: &str| ApiError::internal(format!("a kept request {what}"));
    let resend = Resend::parse(kept).ok_or_else(|| unreadable("does not parse"))?;
    let mut map = HeaderMap::new();
    for (name, value) in &resend.headers {
        let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(name.as_bytes()),
            HeaderValue::from_str(value),
        ) else {
            return Err(unreadable("has a header that does not parse"));
        };
        map.append(name, value);
    }
    let proof = Proof::from_headers(&map)?.ok_or_else(|| unreadable("has no payment"))?;
    let request = if resend.get {
        esim402_core::ActivationRequest::from_query(&resend.body)?
    } else {
        esim402_core::ActivationRequest::parse(resend.body.as_bytes())?
    };
    let paid = Paid {
        proof,
        invoice_header: pay::invoice_header(&map)?,
        label: label_of(&map)?,
        url: &resend.url,
        request,
        body: resend.body.as_bytes(),
    };
    Ok(paid.pay().await?.1)
}
