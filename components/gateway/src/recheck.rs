//! Withdrawn `exact` activations looked at again on chain (kernel `order::recheck`): the paid request of an
//! activation answered "order pending" is kept by dispatch ([`keep`]); once a sweep withdraws that order unpaid,
//! the operator's cleanup run sends it again (`purchase::activate_again`), as the payer would: an authorization
//! executed meanwhile is settled by that transaction and owed back (`pay`'s `executed` path), one never executed
//! ends as "nothing charged".

use esim402_core::order::recheck::{KEPT_HEADERS, Resend};
use spin_sdk::http::HeaderMap;

use crate::dispatch;

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
