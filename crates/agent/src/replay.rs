//! Paid answers kept for the paying proxy's devices, so a device that lost a paid answer (a reboot, roaming)
//! and sends the same request again gets that answer back instead of paying a second time.
//!
//! Invariants:
//! - An answer is kept in the device's `state.json` in the very save that settles its payment (the `keep` of
//!   [`crate::Agent::pay_for_device`], or of [`crate::Agent::collect_for_device`] when another request of the
//!   device collects it): a payment of a request whose answers are kept ([`Slot::kept`]) never settles without
//!   its answer kept, and the file is
//!   private (0600 in a 0700 directory) as it is for the SIMs' tokens, which the answer holds too.
//! - Kept [`KEEP_SECS`] at most, [`MAX_KEPT`] per device at most (the oldest goes first); expired entries
//!   are dropped when the next answer is kept, and never answered with. An answer another request of the device
//!   collected ([`keep_collected`]) waits for its own request at any age ([`MAX_COLLECTED`] at most), and is
//!   handed over to the kept answers the first time that request comes ([`hand_over`]).
//! - An answer goes back only to the requester it answered: the request ([`Slot::request`]) is its method, the
//!   facilitator's origin, its path (query parameters sorted), a digest of its body (canonical JSON: keys sorted,
//!   no spaces; other bodies as sent) and digests of the device's forwarded `Authorization` and `X-Agent-ID`
//!   (a SIM's token, a label: another module's, or none, is another requester). So a kept answer (activation
//!   code, access token) never answers a request without the credential that bought it, nor one sent to
//!   another facilitator.
//! - A request carrying `Sign-In-With-X` is never kept nor answered with a kept answer: a sign-in is
//!   single-use, and what it bought must not go to a request that does not sign in.
//! - A request is keyed by its `Idempotency-Key` header when it has one, else by the request itself
//!   ([`Slot::of`]). A key sent again with another request (another body, path, credential or facilitator) is
//!   refused, never answered with another request's answer, nor paid.
//! - Without a key, a request is kept only when its device is named by its source address: one named by the
//!   `--device-header` (which any client may claim, with a body easily guessed) is kept by its key only. A
//!   source address is one device: modules behind one NAT that send the same request with the same (or no)
//!   credentials are told apart only by an `Idempotency-Key` (or a `--device-header` and keys).
//! - Without a key, only requests a device does not repeat on purpose are kept (activations, switches): a quota
//!   or top-up request (`…/data`) sent again with the same body is another purchase (or a grant of data paid
//!   for before), so it is matched by its `Idempotency-Key` only ([`Slot::kept`]).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// How long a paid answer is kept for a device's retry.
pub const KEEP_SECS: u64 = 15 * 60;
/// The most paid answers kept per device.
pub const MAX_KEPT: usize = 16;
/// The longest `Idempotency-Key` accepted.
pub const MAX_KEY_LEN: usize = 255;

/// A paid answer kept for a device.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeptAnswer {
    /// The request it answered ([`Slot::request`]).
    pub request: String,
    /// Unix seconds when it was kept.
    pub at: u64,
    /// The facilitator's status.
    pub status: u16,
    /// The facilitator's JSON body, whole (what the device is answered with).
    pub body: Value,
}

/// Who sends a request, as far as the proxy can tell: what a kept answer is tied to besides the request.
#[derive(Debug, Clone, Copy)]
pub struct Requester<'a> {
    /// The facilitator the request goes to (its origin, [`crate::Config::origin`]).
    pub origin: &'a str,
    /// The device's forwarded headers (lower-case names): `authorization`, `x-agent-id`, `sign-in-with-x`.
    pub headers: &'a [(&'static str, String)],
    /// Whether the device is named by a header any client may send (`--device-header`), not by its source
    /// address.
    pub claimed: bool,
}

impl Requester<'_> {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// Where a device's request is kept: its key in [`crate::State::paid_answers`], and the request itself. A
/// payment the proxy signs for the request is recorded with it ([`crate::state::PendingPayment::slot`]), so it
/// is sent again for that requester only, and its answer, collected by another request, kept where its own
/// request finds it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Slot {
    /// `idempotency-key <key>`, or [`Slot::request`].
    pub key: String,
    /// `<METHOD> <origin><path> body:keccak256:<hex> authorization:<digest> x-agent-id:<digest>` (a digest is
    /// `keccak256:<hex>`, or `none`), the path's query parameters sorted, the body's JSON canonical.
    pub request: String,
    /// Whether its answer is kept and recalled (see the module's invariants): never with a `Sign-In-With-X`;
    /// with an `Idempotency-Key` always; else only for a device named by its source address, off the routes a
    /// device repeats on purpose ([`repeated_on_purpose`]).
    pub kept: bool,
    /// Who sends it: `authorization:<digest> x-agent-id:<digest>` (the end of [`Slot::request`]).
    #[serde(default)]
    pub who: String,
}

/// Whether a device sends the same request to `path` (query included) again on purpose: its quota and
/// top-up requests (`/v1/esim/{iccid}/data`), each a grant of more data.
pub fn repeated_on_purpose(path: &str) -> bool {
    let path = path.split('?').next().unwrap_or_default();
    path.trim_end_matches('/').ends_with("/data")
}

impl Slot {
    /// Whether `other` is this request's requester: the same key (`Idempotency-Key`, or the request itself) sent
    /// with the same credential and label. A key alone is not: two modules may pick the same one.
    pub fn same_requester(&self, other: &Slot) -> bool {
        self.key == other.key && self.who == other.who
    }

    /// The slot of `method path` with `body` (raw bytes, as the device sent them) and the device's
    /// `Idempotency-Key`, if any, sent by `from`; an error says why that key is refused (not printable ASCII,
    /// too long).
    pub fn of(
        method: &str,
        path: &str,
        body: &[u8],
        idempotency_key: Option<&str>,
        from: &Requester<'_>,
    ) -> Result<Self, String> {
        let who = format!(
            "authorization:{} x-agent-id:{}",
            from.header("authorization")
                .map_or_else(|| "none".to_owned(), |v| digest(v.as_bytes())),
            from.header("x-agent-id")
                .map_or_else(|| "none".to_owned(), |v| digest(v.as_bytes())),
        );
        let request = format!(
            "{method} {}{} body:{} {who}",
            from.origin,
            sorted_query(path),
            digest(&canonical_body(body)),
        );
        let key = match idempotency_key {
            None => request.clone(),
            Some(k) if k.is_empty() || k.len() > MAX_KEY_LEN => {
                return Err(format!(
                    "the Idempotency-Key must be 1-{MAX_KEY_LEN} characters"
                ));
            }
            Some(k) if !k.bytes().all(|b| b.is_ascii_graphic() || b == b' ') => {
                return Err("the Idempotency-Key must be printable ASCII".into());
            }
            Some(k) => format!("idempotency-key {k}"),
        };
        let kept = from.header("sign-in-with-x").is_none()
            && (idempotency_key.is_some() || !from.claimed && !repeated_on_purpose(path));
        Ok(Self {
            key,
            request,
            kept,
            who,
        })
    }
}

/// `keccak256:<hex>` of `bytes`.
fn digest(bytes: &[u8]) -> String {
    format!(
        "keccak256:{}",
        hex::encode(alloy_primitives::keccak256(bytes))
    )
}

/// `path` with its query parameters sorted (`?b=2&a=1` is `?a=1&b=2`): the same fields in another order are the
/// same request.
fn sorted_query(path: &str) -> String {
    let Some((path, query)) = path.split_once('?') else {
        return path.to_owned();
    };
    let mut fields: Vec<&str> = query.split('&').filter(|f| !f.is_empty()).collect();
    fields.sort_unstable();
    format!("{path}?{}", fields.join("&"))
}

/// `body` as digested: a JSON body canonical (its value written again, object keys sorted, no spaces), so the
/// same JSON in another key order or spacing is the same request; any other body as sent.
fn canonical_body(body: &[u8]) -> Vec<u8> {
    match serde_json::from_slice::<Value>(body) {
        Ok(v) => {
            let mut out = String::new();
            canonical_json(&v, &mut out);
            out.into_bytes()
        }
        Err(_) => body.to_vec(),
    }
}

/// `v` written to `out` with every object's keys sorted, whatever order `serde_json::Map` keeps (its
/// `preserve_order` feature keeps insertion order).
fn canonical_json(v: &Value, out: &mut String) {
    match v {
        Value::Object(map) => {
            let mut entries: Vec<(&String, &Value)> = map.iter().collect();
            entries.sort_unstable_by(|a, b| a.0.cmp(b.0));
            out.push('{');
            for (i, (k, v)) in entries.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str(&Value::String(k.clone()).to_string());
                out.push(':');
                canonical_json(v, out);
            }
            out.push('}');
        }
        Value::Array(items) => {
            out.push('[');
            for (i, v) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                canonical_json(v, out);
            }
            out.push(']');
        }
        scalar => out.push_str(&scalar.to_string()),
    }
}

/// What a device's request finds kept.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Recall {
    /// The paid answer to this very request, kept less than [`KEEP_SECS`] ago.
    Answer(KeptAnswer),
    /// Its `Idempotency-Key` was used for another request (a refusal: nothing is paid).
    OtherRequest,
    /// Nothing: forward it (and pay it if asked to).
    Nothing,
}

/// What `slot` finds in `kept` at `now`.
pub fn recall(kept: &BTreeMap<String, KeptAnswer>, slot: &Slot, now: u64) -> Recall {
    if !slot.kept {
        return Recall::Nothing;
    }
    match kept.get(&slot.key) {
        Some(k) if !fresh(k, now) => Recall::Nothing,
        Some(k) if k.request != slot.request => Recall::OtherRequest,
        Some(k) => Recall::Answer(k.clone()),
        None => Recall::Nothing,
    }
}

/// Keep the paid answer `status`/`body` for `slot` at `now`, dropping what expired and, over
/// [`MAX_KEPT`], the oldest.
pub fn remember(
    kept: &mut BTreeMap<String, KeptAnswer>,
    slot: &Slot,
    status: u16,
    body: &Value,
    now: u64,
) {
    if !slot.kept {
        return;
    }
    kept.retain(|_, k| fresh(k, now));
    keep(kept, slot, status, body, now, MAX_KEPT);
}

/// `status`/`body` kept in `kept` for `slot` at `now`, the oldest dropped until it holds `max`.
fn keep(
    kept: &mut BTreeMap<String, KeptAnswer>,
    slot: &Slot,
    status: u16,
    body: &Value,
    now: u64,
    max: usize,
) {
    kept.insert(
        slot.key.clone(),
        KeptAnswer {
            request: slot.request.clone(),
            at: now,
            status,
            body: body.clone(),
        },
    );
    while kept.len() > max {
        let oldest = kept
            .iter()
            .min_by_key(|(_, k)| k.at)
            .map(|(key, _)| key.clone());
        match oldest {
            Some(key) => kept.remove(&key),
            None => break,
        };
    }
}

/// The most answers collected for another request ([`keep_collected`]) kept per device.
pub const MAX_COLLECTED: usize = 64;

/// Keep the paid answer `status`/`body` of a payment another request of the device collected (`slot`: the
/// request it was signed for, which was told it is never paid twice) until that request reads it: without
/// [`KEEP_SECS`]' expiry (its payment no longer pends, so it may come back any time and would pay again), the
/// oldest dropped over [`MAX_COLLECTED`].
pub fn keep_collected(
    collected: &mut BTreeMap<String, KeptAnswer>,
    slot: &Slot,
    status: u16,
    body: &Value,
    now: u64,
) {
    if slot.kept {
        keep(collected, slot, status, body, now, MAX_COLLECTED);
    }
}

/// What `slot` finds among the answers [`keep_collected`] kept, handed over once: an answer found moves to
/// `kept` (kept [`KEEP_SECS`] from `now` for the request's retries, as any paid answer) and leaves `collected`,
/// so it is not answered with at any age for ever (nor its key refused for ever).
pub fn hand_over(
    collected: &mut BTreeMap<String, KeptAnswer>,
    kept: &mut BTreeMap<String, KeptAnswer>,
    slot: &Slot,
    now: u64,
) -> Recall {
    let found = recall_collected(collected, slot);
    if let Recall::Answer(k) = &found {
        collected.remove(&slot.key);
        remember(kept, slot, k.status, &k.body, now);
    }
    found
}

/// What `slot` finds among the answers [`keep_collected`] kept (as [`recall`], at any age).
fn recall_collected(collected: &BTreeMap<String, KeptAnswer>, slot: &Slot) -> Recall {
    match collected.get(&slot.key) {
        _ if !slot.kept => Recall::Nothing,
        Some(k) if k.request != slot.request => Recall::OtherRequest,
        Some(k) => Recall::Answer(k.clone()),
        None => Recall::Nothing,
    }
}

/// Kept less than [`KEEP_SECS`] ago (one kept "in the future", a clock set back since, counts as fresh only
/// within the same window).
fn fresh(k: &KeptAnswer, now: u64) -> bool {
    now.abs_diff(k.at) < KEEP_SECS
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "tests")]
    use super::*;
    use serde_json::json;

    /// An answer collected for a request waits for it at any age, goes only to that request (its requester
    /// included), and is handed over once: then it is a kept answer like any other, 15 minutes from then.
    #[test]
    fn a_collected_answer_waits_for_its_request_and_is_handed_over_once() {
        let mine = Slot::of("POST", "/v1/esim/activate", b"{}", Some("k"), &PLAIN).unwrap();
        let other = Requester {
            headers: &[("x-agent-id", "b".to_owned())],
            ..PLAIN
        };
        let theirs = Slot::of("POST", "/v1/esim/activate", b"{}", Some("k"), &other).unwrap();
        let (mut collected, mut kept) = (BTreeMap::new(), BTreeMap::new());
        keep_collected(&mut collected, &mine, 200, &json!({"iccid": "1"}), 1_000);
        let later = 1_000 + 30 * 86_400;
        assert_eq!(
            hand_over(&mut collected, &mut kept, &theirs, later),
            Recall::OtherRequest
        );
        let Recall::Answer(a) = hand_over(&mut collected, &mut kept, &mine, later) else {
            panic!("its own request gets it, however late");
        };
        assert_eq!(a.body["iccid"], "1");
        assert!(collected.is_empty(), "handed over once");
        assert!(matches!(
            recall(&kept, &mine, later + 60),
            Recall::Answer(_)
        ));
        assert_eq!(recall(&kept, &mine, later + KEEP_SECS), Recall::Nothing);
        for n in 0..=MAX_COLLECTED as u64 {
            let s = Slot::of(
                "POST",
                "/v1/esim/activate",
                b"{}",
                Some(&n.to_string()),
                &PLAIN,
            )
            .unwrap();
            keep_collected(&mut collected, &s, 200, &json!({}), n);
        }
        assert_eq!(collected.len(), MAX_COLLECTED);
        assert!(
            !collected.contains_key("idempotency-key 0"),
            "the oldest dropped"
        );
    }

    /// A device named by its source address, without credentials, to `http://f.example`.
    const PLAIN: Requester<'static> = Requester {
        origin: "http://f.example",
        headers: &[],
        claimed: false,
    };

    /// [`PLAIN`] with the device's forwarded `headers`.
    fn from<'a>(headers: &'a [(&'static str, String)]) -> Requester<'a> {
        Requester { headers, ..PLAIN }
    }

    fn of(method: &str, path: &str, body: &[u8], key: Option<&str>) -> Result<Slot, String> {
        Slot::of(method, path, body, key, &PLAIN)
    }

    #[test]
    fn a_request_is_keyed_by_its_idempotency_key_or_its_content() {
        let a = of("POST", "/v1/esim/activate", b"{\"data_mb\":1}", None).unwrap();
        let b = of("POST", "/v1/esim/activate", b"{\"data_mb\":2}", None).unwrap();
        assert_eq!(a.key, a.request);
        assert_ne!(a.key, b.key, "another body");
        let c = of("POST", "/v1/esim/8901/data", b"{\"data_mb\":1}", None).unwrap();
        assert_ne!(a.key, c.key, "another path");
        let k = of("POST", "/v1/esim/activate", b"{\"data_mb\":1}", Some("k-1")).unwrap();
        assert_eq!(k.key, "idempotency-key k-1");
        assert_eq!(k.request, a.request);
        // A quota or top-up request is kept by its key only: sent again with the same body it buys again.
        assert!(a.kept && k.kept);
        assert!(!c.kept);
        let keyed = of("POST", "/v1/esim/8901/data?x=1", b"{}", Some("q-1")).unwrap();
        assert!(keyed.kept);
        let mut kept = BTreeMap::new();
        remember(&mut kept, &c, 200, &serde_json::json!({}), 1_000);
        assert!(kept.is_empty());
        assert_eq!(recall(&kept, &c, 1_000), Recall::Nothing);
        assert!(of("POST", "/", b"", Some("")).is_err());
        assert!(of("POST", "/", b"", Some("é")).is_err());
        assert!(of("POST", "/", b"", Some(&"k".repeat(MAX_KEY_LEN + 1))).is_err());
    }

    #[test]
    fn answers_are_kept_for_a_while_and_a_few_only() {
        let mut kept = BTreeMap::new();
        let a = of("POST", "/a", b"{}", None).unwrap();
        assert_eq!(recall(&kept, &a, 1_000), Recall::Nothing);
        remember(&mut kept, &a, 200, &json!({"iccid": "1"}), 1_000);
        let Recall::Answer(got) = recall(&kept, &a, 1_000 + KEEP_SECS - 1) else {
            panic!("kept")
        };
        assert_eq!((got.status, got.body), (200, json!({"iccid": "1"})));
        assert_eq!(recall(&kept, &a, 1_000 + KEEP_SECS), Recall::Nothing);
        // A key used again for another request is refused.
        let k1 = of("POST", "/a", b"{}", Some("k")).unwrap();
        remember(&mut kept, &k1, 200, &json!({}), 1_000);
        let k2 = of("POST", "/a", b"{\"x\":1}", Some("k")).unwrap();
        assert_eq!(recall(&kept, &k2, 1_001), Recall::OtherRequest);
        // Expired ones go when the next is kept; never more than MAX_KEPT.
        for i in 0..(MAX_KEPT as u64 + 5) {
            let s = of("POST", &format!("/{i}"), b"{}", None).unwrap();
            remember(&mut kept, &s, 200, &json!({}), 5_000 + i);
        }
        assert_eq!(kept.len(), MAX_KEPT);
        assert!(!kept.contains_key(&a.key) && !kept.contains_key(&k1.key));
        let newest = of("POST", &format!("/{}", MAX_KEPT + 4), b"{}", None).unwrap();
        assert!(kept.contains_key(&newest.key));
        let oldest = of("POST", "/0", b"{}", None).unwrap();
        assert!(!kept.contains_key(&oldest.key), "the oldest went first");
    }

    /// Fix: a kept answer goes back only to its own requester: another `Authorization` or `X-Agent-ID` (another
    /// module behind the same address, a client claiming another's device id), or another facilitator, is
    /// another request (no answer; with the same key, refused); a sign-in is never kept; a device named by a
    /// header is kept by its `Idempotency-Key` only. Before, the slot was method, path and body alone, and the
    /// activation code and token went to whoever sent the same body.
    #[test]
    fn an_answer_goes_back_only_to_its_own_requester() {
        let body = br#"{"region":"us-west","data_mb":1}"#;
        let path = "/v1/esim/8901/switch";
        let headers = |auth: &str, label: &str| {
            vec![
                ("authorization", format!("Bearer {auth}")),
                ("x-agent-id", label.to_owned()),
            ]
        };
        let (mine, theirs) = (headers("sim_a", "pump-1"), headers("sim_b", "pump-1"));
        let labelled = headers("sim_a", "pump-2");
        let slot = |from: &Requester<'_>, key| Slot::of("POST", path, body, key, from).unwrap();
        let mut kept = BTreeMap::new();
        let paid = slot(&from(&mine), None);
        remember(&mut kept, &paid, 200, &json!({"access_token": "t"}), 1_000);
        assert!(matches!(recall(&kept, &paid, 1_001), Recall::Answer(_)));
        let bare = slot(&PLAIN, None);
        let elsewhere = Requester {
            origin: "http://other.example",
            ..from(&mine)
        };
        for other in [from(&theirs), from(&labelled), PLAIN, elsewhere] {
            let s = slot(&other, None);
            assert_ne!(s.request, paid.request, "{other:?}");
            assert_eq!(recall(&kept, &s, 1_001), Recall::Nothing, "{other:?}");
        }
        assert!(bare.request.contains("authorization:none x-agent-id:none"));
        // With the same key, another requester is refused, never answered.
        let keyed = slot(&from(&mine), Some("k-1"));
        remember(&mut kept, &keyed, 200, &json!({"access_token": "t"}), 1_000);
        let stolen = slot(&from(&theirs), Some("k-1"));
        assert_eq!(recall(&kept, &stolen, 1_001), Recall::OtherRequest);
        // A sign-in is single-use: never kept nor recalled, key or not.
        let signed_in = [("sign-in-with-x", "e30=".to_owned())];
        for key in [None, Some("k-2")] {
            let s = slot(&from(&signed_in), key);
            assert!(!s.kept, "{key:?}");
        }
        // A device named by a header anyone may send: kept by its key only.
        let claimed = Requester {
            claimed: true,
            ..from(&mine)
        };
        assert!(!slot(&claimed, None).kept);
        let keyed = slot(&claimed, Some("k-3"));
        assert!(keyed.kept);
        assert_eq!(keyed.request, paid.request);
    }

    /// Fix: the same JSON in another key order or spacing, or the same query fields in another order, is the
    /// same request (as its pending payment's key already was). Before, the raw bytes were digested: a device
    /// writing its JSON again missed its kept answer and paid again (or got a 422 with its key).
    #[test]
    fn the_same_json_or_query_written_otherwise_is_the_same_request() {
        let a = of(
            "POST",
            "/v1/esim/activate",
            br#"{"region":"us-west","data_mb":1,"x":{"b":[1,{"d":2,"c":3}],"a":null}}"#,
            None,
        )
        .unwrap();
        let b = of(
            "POST",
            "/v1/esim/activate",
            b"{ \"x\": {\"a\": null, \"b\": [1, {\"c\": 3, \"d\": 2}]},\n \"data_mb\": 1, \"region\": \"us-west\" }",
            None,
        )
        .unwrap();
        assert_eq!(a, b);
        let other = of(
            "POST",
            "/v1/esim/activate",
            br#"{"region":"us-west","data_mb":2}"#,
            None,
        )
        .unwrap();
        assert_ne!(a.request, other.request);
        let g1 = of(
            "GET",
            "/v1/esim/activate?region=us-west&data_mb=1",
            b"",
            None,
        )
        .unwrap();
        let g2 = of(
            "GET",
            "/v1/esim/activate?data_mb=1&region=us-west",
            b"",
            None,
        )
        .unwrap();
        assert_eq!(g1, g2);
        let g3 = of(
            "GET",
            "/v1/esim/activate?data_mb=2&region=us-west",
            b"",
            None,
        )
        .unwrap();
        assert_ne!(g1.request, g3.request);
        // The canonical text is the one `serde_json` writes for a sorted map.
        let mut out = String::new();
        canonical_json(&json!({"b": "é\"", "a": [1.5, true]}), &mut out);
        assert_eq!(out, r#"{"a":[1.5,true],"b":"é\""}"#);
    }
}
