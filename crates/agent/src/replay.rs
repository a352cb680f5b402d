//! Paid answers kept for the paying proxy's devices, so a device that lost a paid answer (a reboot, roaming)
//! and sends the same request again gets that answer back instead of paying a second time.
//!
//! Invariants:
//! - An answer is kept in the device's `state.json` in the very save that settles its payment (the `keep` of
//!   [`crate::Agent::pay_for_device`]): a payment never settles without its answer kept, and the file is
//!   private (0600 in a 0700 directory) as it is for the SIMs' tokens, which the answer holds too.
//! - Kept [`KEEP_SECS`] at most, [`MAX_KEPT`] per device at most (the oldest goes first); expired entries
//!   are dropped when the next answer is kept, and never answered with.
//! - A request is keyed by its `Idempotency-Key` header when it has one, else by its method, path (query
//!   included) and a digest of its body ([`Slot::of`]). A key sent again with another request is refused,
//!   never answered with another request's answer, nor paid.
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
    /// The request it answered ([`Slot::request`]): method, path and body digest.
    pub request: String,
    /// Unix seconds when it was kept.
    pub at: u64,
    /// The facilitator's status.
    pub status: u16,
    /// The facilitator's JSON body, whole (what the device is answered with).
    pub body: Value,
}

/// Where a device's request is kept: its key in [`crate::State::paid_answers`], and the request itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Slot {
    /// `idempotency-key <key>`, or [`Slot::request`].
    pub key: String,
    /// `<METHOD> <path> keccak256:<hex of the body's digest>`.
    pub request: String,
    /// Whether its answer is kept and recalled: with an `Idempotency-Key` always, else only off the routes a
    /// device repeats on purpose ([`repeated_on_purpose`]).
    pub kept: bool,
}

/// Whether a device sends the same request to `path` (query included) again on purpose: its quota and
/// top-up requests (`/v1/esim/{iccid}/data`), each a grant of more data.
pub fn repeated_on_purpose(path: &str) -> bool {
    let path = path.split('?').next().unwrap_or_default();
    path.trim_end_matches('/').ends_with("/data")
}

impl Slot {
    /// The slot of `method path` with `body` (raw bytes, as the device sent them) and the device's
    /// `Idempotency-Key`, if any; an error says why that key is refused (not printable ASCII, too long).
    pub fn of(
        method: &str,
        path: &str,
        body: &[u8],
        idempotency_key: Option<&str>,
    ) -> Result<Self, String> {
        let digest = alloy_primitives::keccak256(body);
        let request = format!("{method} {path} keccak256:{}", hex::encode(digest));
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
        let kept = idempotency_key.is_some() || !repeated_on_purpose(path);
        Ok(Self { key, request, kept })
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
    kept.insert(
        slot.key.clone(),
        KeptAnswer {
            request: slot.request.clone(),
            at: now,
            status,
            body: body.clone(),
        },
    );
    while kept.len() > MAX_KEPT {
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

    #[test]
    fn a_request_is_keyed_by_its_idempotency_key_or_its_content() {
        let a = Slot::of("POST", "/v1/esim/activate", b"{\"data_mb\":1}", None).unwrap();
        let b = Slot::of("POST", "/v1/esim/activate", b"{\"data_mb\":2}", None).unwrap();
        assert_eq!(a.key, a.request);
        assert_ne!(a.key, b.key, "another body");
        let c = Slot::of("POST", "/v1/esim/8901/data", b"{\"data_mb\":1}", None).unwrap();
        assert_ne!(a.key, c.key, "another path");
        let k = Slot::of("POST", "/v1/esim/activate", b"{\"data_mb\":1}", Some("k-1")).unwrap();
        assert_eq!(k.key, "idempotency-key k-1");
        assert_eq!(k.request, a.request);
        // A quota or top-up request is kept by its key only: sent again with the same body it buys again.
        assert!(a.kept && k.kept);
        assert!(!c.kept);
        let keyed = Slot::of("POST", "/v1/esim/8901/data?x=1", b"{}", Some("q-1")).unwrap();
        assert!(keyed.kept);
        let mut kept = BTreeMap::new();
        remember(&mut kept, &c, 200, &serde_json::json!({}), 1_000);
        assert!(kept.is_empty());
        assert_eq!(recall(&kept, &c, 1_000), Recall::Nothing);
        assert!(Slot::of("POST", "/", b"", Some("")).is_err());
        assert!(Slot::of("POST", "/", b"", Some("é")).is_err());
        assert!(Slot::of("POST", "/", b"", Some(&"k".repeat(MAX_KEY_LEN + 1))).is_err());
    }

    #[test]
    fn answers_are_kept_for_a_while_and_a_few_only() {
        let mut kept = BTreeMap::new();
        let a = Slot::of("POST", "/a", b"{}", None).unwrap();
        assert_eq!(recall(&kept, &a, 1_000), Recall::Nothing);
        remember(&mut kept, &a, 200, &json!({"iccid": "1"}), 1_000);
        let Recall::Answer(got) = recall(&kept, &a, 1_000 + KEEP_SECS - 1) else {
            panic!("kept")
        };
        assert_eq!((got.status, got.body), (200, json!({"iccid": "1"})));
        assert_eq!(recall(&kept, &a, 1_000 + KEEP_SECS), Recall::Nothing);
        // A key used again for another request is refused.
        let k1 = Slot::of("POST", "/a", b"{}", Some("k")).unwrap();
        remember(&mut kept, &k1, 200, &json!({}), 1_000);
        let k2 = Slot::of("POST", "/a", b"{\"x\":1}", Some("k")).unwrap();
        assert_eq!(recall(&kept, &k2, 1_001), Recall::OtherRequest);
        // Expired ones go when the next is kept; never more than MAX_KEPT.
        for i in 0..(MAX_KEPT as u64 + 5) {
            let s = Slot::of("POST", &format!("/{i}"), b"{}", None).unwrap();
            remember(&mut kept, &s, 200, &json!({}), 5_000 + i);
        }
        assert_eq!(kept.len(), MAX_KEPT);
        assert!(!kept.contains_key(&a.key) && !kept.contains_key(&k1.key));
        let newest = Slot::of("POST", &format!("/{}", MAX_KEPT + 4), b"{}", None).unwrap();
        assert!(kept.contains_key(&newest.key));
        let oldest = Slot::of("POST", "/0", b"{}", None).unwrap();
        assert!(!kept.contains_key(&oldest.key), "the oldest went first");
    }
}
