//! Withdrawn `exact` activations looked at again on chain. An `exact` payment's order left pending is withdrawn
//! unpaid once its authorization can no longer settle (kernel `order::parked`), by a sweep that cannot read the
//! chain. If the payer (or another facilitator) executed the signed authorization meanwhile, its money is at
//! `payTo` while nothing was delivered; sent again, the payment is owed back (gateway `executed`), but a payer
//! that never sends it again would leave the money with us.
//!
//! So the gateway keeps the paid request of an activation it answered "order pending" ([`Resend`], dispatch
//! `keep-resend`, `cleanup/resend/<invoice>`); when a sweep withdraws that order unpaid, its invoice is listed
//! for a recheck (`cleanup/recheck`, a [`crate::store::retry`] list); the operator's cleanup run sends each
//! such request again, as the payer would ([`is_final`]): an authorization executed meanwhile is settled by that
//! transaction and owed back, one never executed ends as "nothing charged"; one without a final answer is taken
//! again after a doubling wait, at most [`crate::store::retry::MAX_TRIES`] times. A request kept for an order
//! that was delivered, or parked as paid, is dropped when its parked entry leaves; one whose order moved to
//! another profile (a failover) stays for that one's.
//!
//! The kept request holds the signed authorization (the payment header): only ever settled to `payTo`, and
//! useless once its `validBefore` passed, which every recheck is after.

use serde::{Deserialize, Serialize};

/// The most bytes a kept request may take (its JSON); a larger one is not kept.
pub const MAX_RESEND_BYTES: usize = 16 * 1024;

/// The most invoices listed for a recheck at once; beyond, a withdrawn order is not listed (logged for an
/// operator).
pub const MAX_RECHECK: usize = 4_096;

/// The request headers a kept request keeps (lower case): the payment, its invoice, the agent's label, and the
/// body's media type. No credential: an activation needs none.
pub const KEPT_HEADERS: [&str; 5] = [
    "payment-signature",
    "x-payment",
    "x-invoice-id",
    "x-agent-id",
    "content-type",
];

/// A paid activation request, kept to be sent again by the cleanup run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Resend {
    /// `GET` (the body is the query) rather than `POST`.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub get: bool,
    /// The URL the client used (the x402 `resource`).
    pub url: String,
    /// The body (JSON), or the query of a `GET`.
    pub body: String,
    /// The [`KEPT_HEADERS`] it carried, in order, with their values.
    pub headers: Vec<(String, String)>,
}

impl Resend {
    /// Keep a request: its kept headers from `headers` (name, value; the others dropped), as JSON; `None` if
    /// the body is not UTF-8 or the whole exceeds [`MAX_RESEND_BYTES`].
    pub fn keep<'a>(
        get: bool,
        url: &str,
        body: &[u8],
        headers: impl IntoIterator<Item = (&'a str, &'a str)>,
    ) -> Option<String> {
        let body = std::str::from_utf8(body).ok()?.to_owned();
        let headers = headers
            .into_iter()
            .filter_map(|(name, value)| {
                let name = name.to_ascii_lowercase();
                KEPT_HEADERS
                    .contains(&name.as_str())
                    .then(|| (name, value.to_owned()))
            })
            .collect();
        let kept = Self {
            get,
            url: url.to_owned(),
            body,
            headers,
        };
        serde_json::to_string(&kept)
            .ok()
            .filter(|s| s.len() <= MAX_RESEND_BYTES)
    }

    /// A kept request back (`None` if it does not parse or is too large).
    pub fn parse(kept: &str) -> Option<Self> {
        if kept.len() > MAX_RESEND_BYTES {
            return None;
        }
        serde_json::from_str(kept).ok()
    }
}

/// Whether the answer (its HTTP status and body: an error's as `{"error": …}`) to a request the cleanup run sent
/// again ends its recheck: anything but a 5xx (a fault, or an order still pending), a `settlement_pending` 402 (a
/// settlement on its way) or a 409 saying another attempt of the same payment is in progress (the payer's own
/// resend, which may yet die): those are sent again later.
pub fn is_final(status: u16, body: &str) -> bool {
    if status >= 500 {
        return false;
    }
    let b = serde_json::from_str::<serde_json::Value>(body).unwrap_or_default();
    let pending = status == 402 && b["error"]["code"] == "settlement_pending";
    let busy = status == 409
        && [crate::paid::IN_PROGRESS, crate::settlement::IN_PROGRESS]
            .iter()
            .any(|m| b["error"]["message"] == *m);
    !pending && !busy
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_kept_request_keeps_its_payment_and_drops_credentials() {
        let kept = Resend::keep(
            false,
            "http://127.0.0.1:3000/v1/esim/activate",
            br#"{"region":"us-west","data_mb":100}"#,
            [
                ("Payment-Signature", "eyJ4"),
                ("authorization", "Bearer sim_secret"),
                ("content-type", "application/json"),
                ("cookie", "a=b"),
                ("X-Agent-ID", "meter-7"),
            ],
        )
        .unwrap();
        assert!(
            !kept.contains("sim_secret") && !kept.contains("a=b"),
            "{kept}"
        );
        let back = Resend::parse(&kept).unwrap();
        assert_eq!(
            back.headers,
            vec![
                ("payment-signature".to_owned(), "eyJ4".to_owned()),
                ("content-type".to_owned(), "application/json".to_owned()),
                ("x-agent-id".to_owned(), "meter-7".to_owned()),
            ]
        );
        assert_eq!(
            (back.get, back.body.as_str()),
            (false, r#"{"region":"us-west","data_mb":100}"#)
        );
    }

    #[test]
    fn oversized_or_binary_requests_are_not_kept() {
        let big = vec![b'a'; MAX_RESEND_BYTES];
        assert_eq!(Resend::keep(true, "u", &big, []), None);
        assert_eq!(Resend::keep(false, "u", &[0xff, 0xfe], []), None);
        assert_eq!(Resend::parse(&"x".repeat(MAX_RESEND_BYTES + 1)), None);
        assert_eq!(Resend::parse("{"), None);
    }

    #[test]
    fn only_faults_and_pending_answers_are_sent_again() {
        let owed = r#"{"error":{"code":"conflict"},"charged":true}"#;
        let busy = format!(
            r#"{{"error":{{"code":"conflict","message":"{}"}}}}"#,
            crate::paid::IN_PROGRESS
        );
        assert!(!is_final(409, &busy), "the payer's own resend in progress");
        assert!(is_final(409, owed) && is_final(200, "{}") && is_final(410, ""));
        assert!(is_final(402, r#"{"error":{"code":"payment_required"}}"#));
        assert!(!is_final(402, r#"{"error":{"code":"settlement_pending"}}"#));
        assert!(!is_final(503, "") && !is_final(500, "{}") && !is_final(502, owed));
    }
}
