//! Reading a device's request: refused if a device would not send it ([`super::checks`]), its device named (the
//! configured header or its source address), its body read within [`MAX_BODY`] and the connection's time for
//! it, then handed to [`Shared::handle`] as the [`Parts`] that are forwarded.

use std::net::SocketAddr;
use std::time::Duration;

use http_body_util::{BodyExt, Limited};
use hyper::Request;

use super::checks::{
    forwarded_headers, refuse_non_device, refuse_payments, refuse_public_paid_get,
    refuse_unusual_paid_path,
};
use super::devices::device_id;
use super::forward::Parts;
use super::reply::{Reply, error_reply};
use super::shared::Shared;

/// Largest request body forwarded.
const MAX_BODY: usize = 64 * 1024;

pub(super) async fn respond(
    shared: &Shared,
    req: Request<hyper::body::Incoming>,
    peer: SocketAddr,
    body_read: Duration,
) -> Reply {
    let has_body = !hyper::body::Body::is_end_stream(req.body());
    if let Some(refusal) = refuse_non_device(req.headers(), has_body, shared.listen)
        .or_else(|| refuse_payments(req.headers()))
    {
        return refusal;
    }
    let headers = match forwarded_headers(req.headers()) {
        Ok(h) => h,
        Err(why) => return error_reply(400, "invalid_input", &why),
    };
    let raw = match &shared.settings.device_header {
        // One value: with two, whoever reads the first (a log, another proxy) would see another device than
        // the one charged.
        Some(h) if req.headers().get_all(h.as_str()).iter().nth(1).is_some() => {
            return error_reply(
                400,
                "invalid_input",
                &format!("the {h} header is sent twice"),
            );
        }
        Some(h) => match req.headers().get(h.as_str()).and_then(|v| v.to_str().ok()) {
            Some(v) => v.to_owned(),
            None => return error_reply(400, "invalid_input", &format!("missing {h} header")),
        },
        None => peer.ip().to_string().replace(':', "-"),
    };
    let Some(device) = device_id(&raw) else {
        return error_reply(
            400,
            "invalid_input",
            "the device id must be 1-64 letters, digits and . _ : -",
        );
    };
    let Ok(method) = reqwest::Method::from_bytes(req.method().as_str().as_bytes()) else {
        return error_reply(405, "method_not_allowed", "unsupported method");
    };
    let path = req
        .uri()
        .path_and_query()
        .map_or("/", |p| p.as_str())
        .to_owned();
    if let Some(refusal) = refuse_public_paid_get(
        method.as_str(),
        &path,
        shared.listen,
        shared.settings.device_header.is_some(),
    )
    .or_else(|| refuse_unusual_paid_path(method.as_str(), &path))
    {
        return refusal;
    }
    let content_type = req
        .headers()
        .get(hyper::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let mut keys = req.headers().get_all("idempotency-key").iter();
    let idempotency_key = match (keys.next().map(|v| v.to_str()), keys.next()) {
        (None, _) => None,
        (Some(Ok(k)), None) => Some(k.to_owned()),
        _ => {
            return error_reply(
                400,
                "invalid_input",
                "the Idempotency-Key header must be sent once, as text",
            );
        }
    };
    // A body declared larger than the proxy forwards is refused before it is read (not after the read's time).
    if hyper::body::Body::size_hint(req.body())
        .exact()
        .is_some_and(|n| n > MAX_BODY as u64)
    {
        return error_reply(413, "payload_too_large", "body over 64 KiB");
    }
    let body = Limited::new(req.into_body(), MAX_BODY).collect();
    let body = match tokio::time::timeout(body_read, body).await {
        Ok(Ok(b)) => b.to_bytes(),
        Ok(Err(_)) => return error_reply(413, "payload_too_large", "body over 64 KiB"),
        Err(_) => return error_reply(408, "timeout", "the request body took too long"),
    };
    shared
        .handle(
            Parts {
                method,
                path,
                content_type,
                headers,
                body,
                idempotency_key,
            },
            device,
        )
        .await
}
