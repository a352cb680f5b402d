//! JSON-RPC over outbound `wasi:http`: one POST per call, or one per [`Batch`] of calls needed together,
//! bounded by a timeout. The kernel's [`Method`] impls build the request bodies and decode the answers; this
//! file only moves bytes.
//!
//! A call fails in one of two ways, and callers must tell them apart: [`CallError::Node`] is an answer (the node
//! said no: a revert, "nonce too low"), [`CallError::Transport`] is the absence of one (timeout, refused
//! connection, HTTP error, unparseable body). Messages never carry the endpoint URL, which may embed an API key.

use std::cell::RefCell;
use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use esim402_core::evm::rpc::{BatchReply, batch_body, read_batch_reply};
use esim402_core::evm::{Method, RpcError, RpcRequest};
use http_body_util::{BodyExt, Limited};
use serde_json::Value;

/// One call's timeout unless the caller's deadline is nearer.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(10);

/// The largest JSON-RPC answer read (receipts with many logs stay well below).
const MAX_RESPONSE_BYTES: usize = 1024 * 1024;

/// Longest node message carried into an error (nodes sometimes echo whole payloads).
const MAX_MESSAGE_CHARS: usize = 200;

static NEXT_ID: AtomicU64 = AtomicU64::new(1);

std::thread_local! {
    /// Endpoints this instance has seen refuse batches: their batches go out as single calls.
    static NO_BATCH: RefCell<HashSet<String>> = RefCell::new(HashSet::new());
}

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

    /// Whether the node said the call reverts (kernel `rpc::is_revert`): an answer about the call, unlike every
    /// other error (a rate limit, an internal error).
    pub fn is_revert(&self) -> bool {
        matches!(self, Self::Node { code, message } if esim402_core::evm::rpc::is_revert(*code, message))
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
    /// Whether [`Rpc::batch`] may send a JSON-RPC batch (else one POST per call).
    batching: bool,
}

impl Rpc {
    /// A client for `url`; `batching`: whether [`Rpc::batch`] sends JSON-RPC batches.
    pub fn new(url: &str, batching: bool) -> Self {
        Self {
            url: url.to_owned(),
            batching,
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
        method.parse_response(id, &bytes).map_err(call_error)
    }

    /// Send `batch`'s calls in one POST (a JSON-RPC batch), giving up after [`CALL_TIMEOUT`]. With batching
    /// off, or if the endpoint does not take batches (kernel [`read_batch_reply`]), the calls go out one POST
    /// each, concurrently, and so do this instance's later batches to it. Only for calls that may be repeated: a fallback sends again what
    /// the refused batch held.
    pub async fn batch(&self, batch: Batch) -> Answers {
        self.batch_within(batch, CALL_TIMEOUT).await
    }

    /// [`Self::batch`], giving up after `timeout`.
    pub async fn batch_within(&self, batch: Batch, timeout: Duration) -> Answers {
        let ids: Vec<u64> = batch.requests.iter().map(|r| r.id).collect();
        let answers = race(self.batch_answers(&batch.requests, &ids), timeout)
            .await
            .unwrap_or_else(|e| vec![Err(e); ids.len()]);
        Answers { ids, answers }
    }

    async fn batch_answers(
        &self,
        requests: &[RpcRequest],
        ids: &[u64],
    ) -> Result<Vec<Result<Value, String>>, String> {
        if self.batching && requests.len() > 1 && !NO_BATCH.with(|n| n.borrow().contains(&self.url))
        {
            let (status, bytes) = self.exchange(batch_body(requests)).await?;
            match read_batch_reply(status, &bytes, ids) {
                BatchReply::Answers(answers) => {
                    return Ok(answers
                        .into_iter()
                        .map(|a| a.ok_or_else(|| "no answer in the batch".to_owned()))
                        .collect());
                }
                BatchReply::Failed(e) => return Err(truncate(&e)),
                BatchReply::Refused => {
                    NO_BATCH.with(|n| n.borrow_mut().insert(self.url.clone()));
                }
            }
        }
        let singles = requests.iter().map(|r| async move {
            let bytes = self.post(r.to_body()).await?;
            serde_json::from_slice::<Value>(&bytes)
                .map_err(|e| truncate(&format!("malformed JSON-RPC response: {e}")))
        });
        Ok(join_all(singles.collect::<Vec<_>>()).await)
    }

    async fn post(&self, body: String) -> Result<Bytes, String> {
        match self.exchange(body).await? {
            (200, bytes) => Ok(bytes),
            (status, _) => Err(format!("HTTP {status}")),
        }
    }

    /// POST `body`: the status and, for a 200, the answer.
    async fn exchange(&self, body: String) -> Result<(u16, Bytes), String> {
        let response = esim402_guest::outbound::post(
            &self.url,
            &[
                ("content-type", "application/json"),
                ("accept", "application/json"),
            ],
            body.into_bytes(),
        )
        .await
        .map_err(|e| match e {
            esim402_guest::outbound::PostError::Invalid(_) => {
                "the RPC endpoint is not a valid URI".to_owned()
            }
            e => format!("unreachable ({})", truncate(&e.to_string())),
        })?;
        let status = response.status().as_u16();
        if status != 200 {
            return Ok((status, Bytes::new()));
        }
        Limited::new(response.into_body(), MAX_RESPONSE_BYTES)
            .collect()
            .await
            .map(|b| (status, b.to_bytes()))
            .map_err(|e| format!("reading the answer failed ({})", truncate(&e.to_string())))
    }
}

/// A node's answer as a [`CallError`]: its error object, or anything else that made the answer unusable.
fn call_error(e: RpcError) -> CallError {
    match e {
        RpcError::Node { code, message, .. } => CallError::Node {
            code,
            message: truncate(&message),
        },
        other => CallError::Transport(truncate(&other.to_string())),
    }
}

/// Calls that go out together ([`Rpc::batch`]).
#[derive(Default)]
pub struct Batch {
    requests: Vec<RpcRequest>,
}

/// Where one call's answer is among a batch's [`Answers`].
pub struct Slot(usize);

impl Batch {
    /// An empty batch.
    pub fn new() -> Self {
        Self::default()
    }

    /// Add `method`; its answer is taken from the [`Answers`] with the returned slot and the same method.
    pub fn add<M: Method>(&mut self, method: &M) -> Slot {
        let id = NEXT_ID.fetch_add(1, Ordering::Relaxed);
        self.requests.push(method.request(id));
        Slot(self.requests.len() - 1)
    }
}

/// A batch's answers.
pub struct Answers {
    ids: Vec<u64>,
    answers: Vec<Result<Value, String>>,
}

impl Answers {
    /// The answer in `slot`, decoded as `method`'s (the method the slot was added with), with the errors of
    /// [`Rpc::call`].
    pub fn take<M: Method>(&mut self, slot: Slot, method: &M) -> Result<M::Output, CallError> {
        let (Some(&id), Some(answer)) = (self.ids.get(slot.0), self.answers.get_mut(slot.0)) else {
            return Err(CallError::Transport(format!(
                "{}: not in the batch",
                M::NAME
            )));
        };
        match std::mem::replace(answer, Err("answer already taken".to_owned())) {
            Ok(value) => method.parse_value(id, value).map_err(call_error),
            Err(e) => Err(CallError::Transport(format!("{}: {e}", M::NAME))),
        }
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

pub use esim402_core::join::join_all;
