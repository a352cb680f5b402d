//! Withdrawn `exact` activations looked at again on chain. An `exact` payment's order left pending is withdrawn
//! unpaid once its authorization can no longer settle (kernel `order::parked`), by a sweep that cannot read the
//! chain. If the payer (or another facilitator) executed the signed authorization meanwhile, its money is at
//! `payTo` while nothing was delivered; sent again, the payment is owed back (gateway `executed`), but a payer
//! that never sends it again would leave the money with us.
//!
//! So the gateway keeps the paid request of an activation it answered "order pending" ([`Resend`], dispatch
//! `keep-resend`, `cleanup/resend/<invoice>`); when a sweep withdraws that order unpaid, its invoice is listed
//! for a recheck (`cleanup/recheck`, [`push`]); the operator's cleanup run sends each such request again, as the
//! payer would ([`is_final`]): an authorization executed meanwhile is settled by that transaction and owed back,
//! one never executed ends as "nothing charged". A request kept for an order that was delivered, or parked as
//! paid, is dropped when its parked entry leaves.
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

/// Whether the answer (its HTTP status and body) to a request the cleanup run sent again ends its recheck:
/// anything but a 5xx (a fault, or an order still pending) or a `settlement_pending` 402 (a settlement on its
/// way): those are sent again by the next run.
pub fn is_final(status: u16, body: &str) -> bool {
    if status >= 500 {
        return false;
    }
    let pending = status == 402
        && serde_json::from_str::<serde_json::Value>(body)
            .is_ok_and(|b| b["error"]["code"] == "settlement_pending");
    !pending
}

/// `list` with `invoice` listed for a recheck (`None`: nothing to write, listed already or the list is full).
pub fn push(mut list: Vec<String>, invoice: &str) -> Option<Vec<String>> {
    if list.iter().any(|i| i == invoice) || list.len() >= MAX_RECHECK {
        return None;
    }
    list.push(invoice.to_owned());
    Some(list)
}

/// `list` without the invoices in `done` (`None`: none of them was listed).
pub fn remove(list: Vec<String>, done: &[String]) -> Option<Vec<String>> {
    let before = list.len();
    let left: Vec<String> = list.into_iter().filter(|i| !done.contains(i)).collect();
    (left.len() != before).then_some(left)
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
    fn the_recheck_list_holds_each_invoice_once_and_is_bounded() {
        let list = push(Vec::new(), "inv_a").unwrap();
        assert_eq!(push(list.clone(), "inv_a"), None, "listed once");
        let list = push(list, "inv_b").unwrap();
        assert_eq!(
            remove(list.clone(), &["inv_a".to_owned()]),
            Some(vec!["inv_b".to_owned()])
        );
        assert_eq!(remove(list, &["inv_c".to_owned()]), None);
        let full = vec!["x".to_owned(); MAX_RECHECK];
        assert_eq!(push(full, "inv_a"), None);
    }

    #[test]
    fn only_faults_and_pending_answers_are_sent_again() {
        let owed = r#"{"error":{"code":"conflict"},"charged":true}"#;
        assert!(is_final(409, owed) && is_final(200, "{}") && is_final(410, ""));
        assert!(is_final(402, r#"{"error":{"code":"payment_required"}}"#));
        assert!(!is_final(402, r#"{"error":{"code":"settlement_pending"}}"#));
        assert!(!is_final(503, "") && !is_final(500, "{}") && !is_final(502, owed));
    }
}
