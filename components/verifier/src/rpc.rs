//! JSON-RPC over outbound `wasi:http`: one POST per call, bounded by a timeout. The kernel's [`Method`] impls
//! build the request bodies and decode the answers; this file only moves bytes.
//!
//! A call fails in one of two ways, and callers must tell them apart: [`CallError::Node`] is an answer (the node
//! said no: a revert, "nonce too low"), [`CallError::Transport`] is the absence of one (timeout, refused
//! connection, HTTP error, unparseable body). Messages never carry the endpoint URL, which may embed an API key.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use esim402_core::evm::{Method, RpcError};
use http_body_util::{BodyExt, Full, Limited};

/// One call's timeout unless the caller's deadline is nearer.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(10);

/// The largest JSON-RPC answer read (receipts with many logs stay well below).
const MAX_RESPONSE_BYTES: usize = 1024 * 1024;

/// Longest node message carried into an error (nodes sometimes echo whole payloads).
const MAX_MESSAGE_CHARS: usize = 200;

static NEXT_ID: AtomicU64 = AtomicU64::new(1);

/// Why a call produced no result.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CallError {
    /// The node answered with a JSON-RPC error object.
    Node {
        /// Error code.
        code: i64,
        /// Message, truncated.
        message: String,
    },
    /// No usable answer: the outcome of the call is unknown.
    Transport(String),
}

impl CallError {
    /// Whether this is the node's answer rather than a transport failure.
    pub fn is_node(&self) -> bool {
        matches!(self, Self::Node { .. })
    }
}

impl std::fmt::Display for CallError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Node { code, message } => write!(f, "node error {code}: {message}"),
            Self::Transport(m) => f.write_str(m),
        }
    }
}

fn truncate(s: &str) -> String {
    s.chars().take(MAX_MESSAGE_CHARS).collect()
}

/// A JSON-RPC endpoint.
pub struct Rpc {
    url: String,
}

impl Rpc {
    /// A client for `url`.
    pub fn new(url: &str) -> Self {
        Self {
            url: url.to_owned(),
        }
    }

    /// Call `method` with the default timeout.
    pub async fn call<M: Method>(&self, method: &M) -> Result<M::Output, CallError> {
        self.call_within(method, CALL_TIMEOUT).await
    }

    /// Call `method`, giving up after `timeout`.
    pub async fn call_within<M: Method>(
        &self,
        method: &M,
        timeout: Duration,
    ) -> Result<M::Output, CallError> {
        let id = NEXT_ID.fetch_add(1, Ordering::Relaxed);
        let body = method.request(id).to_body();
        let bytes = race(self.post(body), timeout)
            .await
            .map_err(|e| CallError::Transport(format!("{}: {e}", M::NAME)))?;
        method.parse_response(id, &bytes).map_err(|e| match e {
            RpcError::Node { code, message, .. } => CallError::Node {
                code,
                message: truncate(&message),
            },
            other => CallError::Transport(truncate(&other.to_string())),
        })
    }

    async fn post(&self, body: String) -> Result<Bytes, String> {
        let request = spin_sdk::http::Request::builder()
            .method("POST")
            .uri(&self.url)
            .header("content-type", "application/json")
            .header("accept", "application/json")
            .body(Full::new(Bytes::from(body)))
            .map_err(|_| "the RPC endpoint is not a valid URI".to_owned())?;
        let response = spin_sdk::http::send(request)
            .await
            .map_err(|e| format!("unreachable ({})", truncate(&format!("{e:?}"))))?;
        let status = response.status().as_u16();
        if status != 200 {
            return Err(format!("HTTP {status}"));
        }
        Limited::new(response.into_body(), MAX_RESPONSE_BYTES)
            .collect()
            .await
            .map(|b| b.to_bytes())
            .map_err(|e| format!("reading the answer failed ({})", truncate(&e.to_string())))
    }
}

/// `fut`, or a timeout error once `timeout` has passed (dropping `fut` cancels the request).
async fn race<T>(
    fut: impl Future<Output = Result<T, String>>,
    timeout: Duration,
) -> Result<T, String> {
    let mut fut = std::pin::pin!(fut);
    let mut sleep = std::pin::pin!(spin_sdk::time::sleep(timeout));
    std::future::poll_fn(|cx| {
        if let std::task::Poll::Ready(r) = fut.as_mut().poll(cx) {
            return std::task::Poll::Ready(r);
        }
        if sleep.as_mut().poll(cx).is_ready() {
            return std::task::Poll::Ready(Err("timeout".to_owned()));
        }
        std::task::Poll::Pending
    })
    .await
}

pub use esim402_core::join::{join_all, join2};
