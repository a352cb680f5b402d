//! ES2+ over outbound `wasi:http`: one JSON POST per function, with the GSMA headers, bounded by a timeout.
//! Every functional outcome arrives as HTTP 200 with the result in `header.functionExecutionStatus`; anything
//! else (5xx, timeouts, refused connections, unparseable bodies) is a [`Transport`] failure.

use std::time::Duration;

use esim402_core::esim::es2::{
    self, ADMIN_PROTOCOL, ADMIN_PROTOCOL_HEADER, is_supported_admin_protocol,
};
use http_body_util::{BodyExt, Limited};
use serde::Serialize;
use serde::de::DeserializeOwned;

/// The largest ES2+ response read.
const MAX_RESPONSE_BYTES: usize = 64 * 1024;

/// Why a call produced no ES2+ answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Transport {
    /// No answer within the deadline.
    Timeout,
    /// A connection failure that may come after the request was sent (lost or reset connection, a broken
    /// response, an HTTP protocol error).
    Unreachable(String),
    /// Refused before sending (`allowed_outbound_hosts`), or failed resolving or connecting: the SM-DP+ never
    /// saw the request (`PostError::never_sent`).
    NotSent(String),
    /// An HTTP status other than 200.
    Status(u16),
    /// A 200 whose body is not the function's response.
    Malformed(String),
}

impl std::fmt::Display for Transport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Timeout => f.write_str("timeout"),
            Self::Unreachable(m) | Self::NotSent(m) => write!(f, "unreachable ({m})"),
            Self::Status(s) => write!(f, "HTTP {s}"),
            Self::Malformed(m) => write!(f, "malformed response ({m})"),
        }
    }
}

impl Transport {
    /// Whether the SM-DP+ may have executed the call: all but [`Transport::NotSent`] and an HTTP status that
    /// refuses the request itself (kernel `es2::may_have_executed`: a 5xx may come from a proxy in front of the
    /// SM-DP+ after it forwarded the request, so it does not prove that nothing was executed; a 401 or 404
    /// does).
    pub fn may_have_executed(&self) -> bool {
        match self {
            Self::NotSent(_) => false,
            Self::Status(status) => es2::may_have_executed(*status),
            Self::Timeout | Self::Unreachable(_) | Self::Malformed(_) => true,
        }
    }
}

/// POST `body` to `<base><path>` and decode the reply, giving up after `timeout`.
pub async fn call<Req: Serialize, Resp: DeserializeOwned>(
    base: &str,
    path: &str,
    body: &Req,
    timeout: Duration,
) -> Result<Resp, Transport> {
    let json = serde_json::to_vec(body).map_err(|e| Transport::Malformed(e.to_string()))?;
    let url = format!("{}{path}", base.trim_end_matches('/'));
    let exchange = async {
        let response = esim402_guest::outbound::post(
            &url,
            &[
                ("content-type", "application/json"),
                ("accept", "application/json"),
                (ADMIN_PROTOCOL_HEADER, ADMIN_PROTOCOL),
            ],
            json,
        )
        .await
        .map_err(|e| match e.never_sent() {
            true => Transport::NotSent(e.to_string()),
            false => Transport::Unreachable(e.to_string()),
        })?;
        let status = response.status().as_u16();
        if status != 200 {
            return Err(Transport::Status(status));
        }
        if let Some(p) = response.headers().get(ADMIN_PROTOCOL_HEADER)
            && !p.to_str().is_ok_and(is_supported_admin_protocol)
        {
            return Err(Transport::Malformed(format!(
                "unsupported {ADMIN_PROTOCOL_HEADER}"
            )));
        }
        let bytes = Limited::new(response.into_body(), MAX_RESPONSE_BYTES)
            .collect()
            .await
            .map_err(|e| Transport::Malformed(e.to_string()))?
            .to_bytes();
        serde_json::from_slice(&bytes).map_err(|e| Transport::Malformed(e.to_string()))
    };
    race(exchange, timeout).await
}

/// `fut`, or `Transport::Timeout` once `timeout` has passed (dropping `fut` cancels the request).
async fn race<T>(
    fut: impl Future<Output = Result<T, Transport>>,
    timeout: Duration,
) -> Result<T, Transport> {
    esim402_guest::util::within(fut, timeout)
        .await
        .unwrap_or(Err(Transport::Timeout))
}
