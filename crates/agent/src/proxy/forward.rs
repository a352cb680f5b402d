//! Forwarding: a device's request as the proxy sends it on ([`Parts`]: method, path and query, body,
//! `Content-Type` and the device's own forwarded headers, nothing else), and the facilitator's answer read within
//! [`crate::client::MAX_ANSWER`]: an answer over it is not held nor copied to the device.

use bytes::Bytes;

use super::shared::Shared;

/// A request as the proxy forwards it.
pub(super) struct Parts {
    pub(super) method: reqwest::Method,
    pub(super) path: String,
    pub(super) content_type: Option<String>,
    /// The device's [`FORWARDED`](super::checks::FORWARDED) headers it sent.
    pub(super) headers: Vec<(&'static str, String)>,
    pub(super) body: Bytes,
    /// The device's `Idempotency-Key`, if any: not forwarded, it names the request for [`crate::replay`].
    pub(super) idempotency_key: Option<String>,
}

impl Shared {
    pub(super) async fn forward(
        &self,
        req: &Parts,
    ) -> Result<(u16, reqwest::header::HeaderMap, Bytes), crate::client::SendError> {
        let mut r = self
            .http
            .request(
                req.method.clone(),
                format!("{}{}", self.config.url, req.path),
            )
            .body(req.body.clone());
        if let Some(ct) = &req.content_type {
            r = r.header(reqwest::header::CONTENT_TYPE, ct);
        }
        for (name, value) in &req.headers {
            r = r.header(*name, value);
        }
        let r = r
            .send()
            .await
            .map_err(crate::client::SendError::Transport)?;
        let status = r.status().as_u16();
        let headers = r.headers().clone();
        // Never more than an answer may hold: the device gets a 502 instead of the proxy holding (and copying)
        // whatever the facilitator sends.
        let body = crate::client::read_limited(r, crate::client::MAX_ANSWER).await?;
        Ok((status, headers, body))
    }
}
