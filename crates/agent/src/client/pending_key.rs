//! Which pending payment a paid request has: its key in [`State::pending`] (`<METHOD> <origin><path>[ <body>]`,
//! the body as its parsed JSON writes it), found under any spelling of the facilitator's origin, and an earlier
//! agent's key without one. A payment pending with another facilitator is never sent here, and holds back a new
//! one (see [`pending_for`]).

use esim402_core::auth::siwx;
use esim402_core::x402::header::decode_payment_signature_header;
use esim402_core::x402::wire::PaymentPayload;
use serde_json::Value;

use super::facilitator::Facilitator;
use crate::error::AgentError;
use crate::state::{PendingPayment, State};

/// The pending-payment key of `POST <path> <body>` (or, `body` `None`, `GET <path>`, its query included) on the
/// facilitator `origin` (normalised, [`crate::Config::origin`]), and the payment pending for it.
///
/// The same request may be pending under another origin: one that normalises to this one (an earlier agent
/// kept the origin as `--url` spelled it: `https://h:443`, `127.1`) is this facilitator's, and collected. Any
/// other is an error: the payment is not sent to this facilitator (it could use the authorization without
/// delivering anything), and no new one is signed either: the first may have been charged, and `localhost`
/// and `127.0.0.1` are one facilitator under two origins (a new payment would pay twice). Running the command
/// with `--url` of the origin it names collects it.
///
/// A key written before keys named the facilitator (`POST <path> <body>`) has no origin of its own; its signed
/// payment does name the resource it pays for (the URL the facilitator saw). It is sent again only to that
/// resource's host; to any other facilitator it is refused the same way.
pub(super) fn pending_for(
    state: &State,
    origin: &str,
    path: &str,
    body: Option<&Value>,
) -> Result<(String, Option<PendingPayment>), AgentError> {
    // Paid GETs came with the proxy's query form, after keys named the facilitator: no legacy key for them.
    let (method, request) = match body {
        Some(body) => ("POST", format!("{path} {body}")),
        None => ("GET", path.to_owned()),
    };
    let key = format!("{method} {origin}{request}");
    if let Some(p) = state.pending.get(&key) {
        return Ok((key, Some(p.clone())));
    }
    let mut elsewhere = None;
    for (k, p) in &state.pending {
        // `<method> <origin><request>` with another spelling of the origin, or another origin.
        let Some(other) = k
            .strip_prefix(method)
            .and_then(|k| k.strip_prefix(' '))
            .and_then(|k| k.strip_suffix(request.as_str()))
            .filter(|o| !o.is_empty())
        else {
            continue;
        };
        match crate::config::bare_origin(other) {
            Some(o) if o == origin => return Ok((k.clone(), Some(p.clone()))),
            Some(_) => {
                elsewhere.get_or_insert((other, p));
            }
            // Not an origin: another request whose key ends like this one's.
            None => {}
        }
    }
    if let Some((other, p)) = elsewhere {
        return Err(AgentError::Local(format!(
            "the payment {id} for this request is still pending with the facilitator {other}; it is not sent to \
             {origin}, and no new one is signed (the first may have been charged: it could pay twice): {}",
            Facilitator::Origin(other.to_owned()).advice(&p.payment_id),
            id = p.payment_id
        )));
    }
    let Some(body) = body else {
        return Ok((key, None));
    };
    let legacy = format!("POST {path} {body}");
    let Some(p) = state.pending.get(&legacy) else {
        return Ok((key, None));
    };
    match legacy_host(p) {
        Some(h) if Some(&h) == host_of(origin).as_ref() => Ok((legacy, Some(p.clone()))),
        other => {
            let other = other.map_or(Facilitator::Unknown, Facilitator::Host);
            Err(AgentError::Local(format!(
                "the payment {id} for this request is still pending with {other}; it is not sent to {origin}, and \
                 no new one is signed (it could pay twice): {}",
                other.advice(&p.payment_id),
                id = p.payment_id
            )))
        }
    }
}

/// `host[:port]` of `url`, lower case.
pub(super) fn host_of(url: &str) -> Option<String> {
    siwx::origin_of(url).map(|(_, host)| host.to_ascii_lowercase())
}

/// The host (`host[:port]`, lower case) a payment of an earlier agent, kept under a key without an origin, was
/// signed for: the resource its signature names. `None` if it names none.
pub(super) fn legacy_host(p: &PendingPayment) -> Option<String> {
    let signed_for = decode_payment_signature_header(&p.header)
        .ok()
        .and_then(|payload| match payload {
            PaymentPayload::V2(v2) => v2.resource.map(|r| r.url),
            PaymentPayload::V1(_) => None,
        });
    signed_for.as_deref().and_then(host_of)
}
