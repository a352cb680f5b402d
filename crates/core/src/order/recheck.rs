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
//! one never executed ends as "nothing charged"; one without a final answer is taken again after a doubling
//! wait ([`take`] sets it), at most [`MAX_TRIES`] times ([`settle`]). A request kept for an order that was delivered, or parked as paid, is dropped
//! when its parked entry leaves; one whose order moved to another profile (a failover) stays for that one's.
//!
//! The kept request holds the signed authorization (the payment header): only ever settled to `payTo`, and
//! useless once its `validBefore` passed, which every recheck is after.

use serde::{Deserialize, Serialize};

/// The most bytes a kept request may take (its JSON); a larger one is not kept.
pub const MAX_RESEND_BYTES: usize = 16 * 1024;

/// The most invoices listed for a recheck at once; beyond, a withdrawn order is not listed (logged for an
/// operator).
pub const MAX_RECHECK: usize = 4_096;

/// How often a listed request is sent again without a final answer before it is left to an operator (logged
/// `OPERATOR:`, dropped from the list): its executing transaction may lie beyond the verifier's log search, or
/// its settlement never confirm.
pub const MAX_TRIES: u32 = 8;

/// The wait after a request is first taken to be sent again (seconds), before it may be taken again; it doubles
/// with each further take (capped at a day).
pub const RETRY_SECS: u64 = 300;

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

/// One invoice listed for a recheck.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Listed {
    /// The invoice.
    pub invoice: String,
    /// Tries without a final answer so far.
    #[serde(default)]
    pub tries: u32,
    /// Not sent again before (unix seconds).
    #[serde(default)]
    pub next: u64,
}

/// What listing an invoice comes to ([`push`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Push {
    /// Listed: write this.
    Listed(Vec<Listed>),
    /// Listed already: nothing to write.
    Already,
    /// The list is full ([`MAX_RECHECK`]): not listed (an operator must look).
    Full,
}

/// `list` with `invoice` listed for a recheck.
pub fn push(mut list: Vec<Listed>, invoice: &str) -> Push {
    if list.iter().any(|l| l.invoice == invoice) {
        return Push::Already;
    }
    if list.len() >= MAX_RECHECK {
        return Push::Full;
    }
    list.push(Listed {
        invoice: invoice.to_owned(),
        tries: 0,
        next: 0,
    });
    Push::Listed(list)
}

/// What [`take`] took.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Taken {
    /// The list to write.
    pub list: Vec<Listed>,
    /// The invoices to send again now.
    pub due: Vec<String>,
    /// Invoices tried [`MAX_TRIES`] times without a final answer: left to an operator, out of the list.
    pub given_up: Vec<String>,
}

/// The wait before a try after `tries` tries (seconds): [`RETRY_SECS`], doubling, at most a day.
fn wait(tries: u32) -> u64 {
    RETRY_SECS
        .saturating_mul(1 << tries.saturating_sub(1).min(16))
        .min(86_400)
}

/// Take up to `max` listed invoices due at `now`, those due longest first (so entries that keep failing do not
/// hold up the rest): each taken counts a try and is not due again before its next wait, whether or not the run
/// that took it ever settles it (a run cut short, or two at once, neither holds the list up nor sends one twice).
pub fn take(mut list: Vec<Listed>, now: u64, max: usize) -> Taken {
    // By `next`, then list order (oldest listed first): a stable sort.
    let mut due: Vec<(u64, String)> = list
        .iter()
        .filter(|l| l.next <= now)
        .map(|l| (l.next, l.invoice.clone()))
        .collect();
    due.sort_by_key(|(next, _)| *next);
    due.truncate(max);
    let mut taken = Taken {
        list: Vec::new(),
        due: Vec::new(),
        given_up: Vec::new(),
    };
    for (_, invoice) in due {
        let Some(at) = list.iter().position(|l| l.invoice == invoice) else {
            continue;
        };
        if list[at].tries >= MAX_TRIES {
            list.remove(at);
            taken.given_up.push(invoice);
            continue;
        }
        let entry = &mut list[at];
        entry.tries = entry.tries.saturating_add(1);
        entry.next = now.saturating_add(wait(entry.tries));
        taken.due.push(invoice);
    }
    taken.list = list;
    taken
}

/// How a recheck of one invoice ended ([`settle`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tried {
    /// A final answer: it leaves the list.
    Done,
    /// No final answer: due again after the wait [`take`] set, or left to an operator after [`MAX_TRIES`].
    Again,
}

/// `list` after `invoice`'s recheck ended as `tried`: the list to write (`None`: nothing to write) and whether
/// the invoice left it after its last try ([`MAX_TRIES`]: an operator must look).
pub fn settle(mut list: Vec<Listed>, invoice: &str, tried: Tried) -> (Option<Vec<Listed>>, bool) {
    let Some(at) = list.iter().position(|l| l.invoice == invoice) else {
        return (None, false);
    };
    match tried {
        Tried::Done => {
            list.remove(at);
            (Some(list), false)
        }
        Tried::Again if list[at].tries >= MAX_TRIES => {
            list.remove(at);
            (Some(list), true)
        }
        Tried::Again => (None, false),
    }
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

    fn listed(list: Push) -> Vec<Listed> {
        match list {
            Push::Listed(l) => l,
            other => panic!("not listed: {other:?}"),
        }
    }

    #[test]
    fn the_recheck_list_holds_each_invoice_once_and_is_bounded() {
        let list = listed(push(Vec::new(), "inv_a"));
        assert_eq!(push(list.clone(), "inv_a"), Push::Already, "listed once");
        let list = listed(push(list, "inv_b"));
        assert_eq!(take(list.clone(), 0, 10).due, vec!["inv_a", "inv_b"]);
        let (left, gave_up) = settle(list.clone(), "inv_a", Tried::Done);
        assert_eq!((left.unwrap().len(), gave_up), (1, false));
        assert_eq!(settle(list, "inv_c", Tried::Done), (None, false));
        let full: Vec<Listed> = (0..MAX_RECHECK)
            .map(|i| Listed {
                invoice: format!("inv_{i}"),
                tries: 0,
                next: 0,
            })
            .collect();
        assert_eq!(push(full, "inv_new"), Push::Full);
    }

    /// One that keeps failing waits longer each time and does not hold up the others; a run that takes one and
    /// never settles it (cut short) counts the try all the same; after [`MAX_TRIES`] it is left to an operator.
    #[test]
    fn a_recheck_without_a_final_answer_backs_off_and_is_given_up_at_last() {
        let list = listed(push(listed(push(Vec::new(), "inv_a")), "inv_b"));
        let t = take(list, 1_000, 1);
        assert_eq!(t.due, vec!["inv_a"]);
        assert_eq!((t.list[0].tries, t.list[0].next), (1, 1_000 + RETRY_SECS));
        assert_eq!(settle(t.list.clone(), "inv_a", Tried::Again), (None, false));
        // Taken and never settled: the next run takes the other one first, and this one only after its wait.
        let t = take(t.list, 1_000, 10);
        assert_eq!(t.due, vec!["inv_b"]);
        let t = take(t.list, 1_000 + RETRY_SECS, 1);
        assert_eq!(t.due, vec!["inv_a"]);
        assert_eq!(t.list[0].next, 1_000 + 3 * RETRY_SECS, "doubled");
        let mut list = t.list;
        for round in 2..MAX_TRIES {
            let t = take(list, u64::from(round) * 1_000_000, 10);
            assert!(t.due.contains(&"inv_a".to_owned()), "round {round}");
            list = t.list;
        }
        let (left, gave_up) = settle(list.clone(), "inv_a", Tried::Again);
        assert!(gave_up);
        assert!(left.unwrap().iter().all(|l| l.invoice != "inv_a"));
        // Never settled either: the next take gives it up.
        let t = take(list, u64::MAX, 10);
        assert_eq!(t.given_up, vec!["inv_a"]);
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
