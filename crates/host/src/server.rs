//! The HTTP trigger: accepts connections (HTTP/1.1 keep-alive), routes each request with Spin's rules, adds
//! the `spin-*` headers Spin sets, and hands it to the component's `ProxyHandler`. Shuts down gracefully: on
//! the shutdown signal it stops accepting and lets in-flight requests finish. A request that finds no room in
//! the instance pool within its wait, or too many waiting for room already ([`crate::admission`]), is answered
//! 503 with `Retry-After`: the server is saturated, not broken, and a client should come back rather than give
//! up.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http::{HeaderName, HeaderValue};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use wasmtime_wasi_http::WasiBody;
use wasmtime_wasi_http::handler::InstantiationError;

use crate::admission::Busy;
use crate::app::App;

fn json_response(status: u16, code: &str, message: &str) -> http::Response<WasiBody> {
    let body = serde_json::json!({ "error": { "code": code, "message": message } }).to_string();
    http::Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .body(
            Full::new(Bytes::from(body))
                .map_err(|e| match e {})
                .boxed_unsync(),
        )
        .unwrap_or_else(|_| {
            http::Response::new(
                Full::new(Bytes::new())
                    .map_err(|e| match e {})
                    .boxed_unsync(),
            )
        })
}

fn set(headers: &mut http::HeaderMap, name: &str, value: &str) {
    if let (Ok(n), Ok(v)) = (HeaderName::try_from(name), HeaderValue::try_from(value)) {
        headers.insert(n, v);
    }
}

/// Request bodies up to this size are read whole before the component sees the request: by `Content-Length`,
/// or, for a chunked one, by reading it until it ends or proves larger.
pub const BUFFERED_BODY_BYTES: u64 = 64 * 1024;

/// The request body as the component will read it. One of at most [`BUFFERED_BODY_BYTES`] (every API request
/// but large receipt batches) is read here first, on the connection's own task: the guest's reads then complete
/// at once instead of each one suspending the instance's task until the connection task has delivered the bytes
/// (a cross-task round trip per read, ~30% of a 402's host CPU; BENCHMARKS.md, "The 402 path"), and a client
/// trickling it holds no instance (nor a slot of the instance pool) meanwhile. A client that has not sent it
/// within `timeout` gets 408; meanwhile it holds what it sent, not a read buffer per frame ([`Head`]). A chunked
/// body is read the same way until it passes [`BUFFERED_BODY_BYTES`]: a small one never reaches an instance
/// before it is complete. Larger bodies stream (a chunked one after the
/// bytes already read), under the same deadline ([`Deadline`]): a client trickling one never holds an instance
/// past it.
async fn buffered<B>(
    headers: &http::HeaderMap,
    body: B,
    timeout: Duration,
) -> Result<WasiBody, http::Response<WasiBody>>
where
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<wasmtime_wasi_http::Error> + std::fmt::Display,
{
    let expires = tokio::time::Instant::now() + timeout;
    let mut body = Box::pin(body);
    let length = headers
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if length.is_some_and(|n| n > BUFFERED_BODY_BYTES) {
        return Ok(Deadline {
            inner: body,
            expires: Box::pin(tokio::time::sleep_until(expires)),
        }
        .boxed_unsync());
    }
    let mut head = Head::new(length);
    let mut trailers: Option<http::HeaderMap> = None;
    loop {
        let frame = match tokio::time::timeout_at(expires, body.frame()).await {
            Ok(Some(Ok(frame))) => frame,
            Ok(None) => break,
            Ok(Some(Err(e))) => {
                return Err(json_response(
                    400,
                    "invalid_input",
                    &format!("could not read the request body: {e}"),
                ));
            }
            Err(_) => {
                return Err(json_response(
                    408,
                    "request_timeout",
                    &format!(
                        "the request body was not received within {} s",
                        timeout.as_secs()
                    ),
                ));
            }
        };
        match frame.into_data() {
            Ok(data) => {
                // Only a chunked body can pass the buffered size: hyper ends a sized one at its length.
                if let Err(beyond) = head.push(data) {
                    return Ok(ReadAhead {
                        head: Some(head.into_bytes()),
                        beyond: Some(beyond),
                        rest: Deadline {
                            inner: body,
                            expires: Box::pin(tokio::time::sleep_until(expires)),
                        },
                    }
                    .boxed_unsync());
                }
            }
            Err(frame) => {
                if let Ok(t) = frame.into_trailers() {
                    trailers.get_or_insert_default().extend(t);
                }
            }
        }
    }
    let full = Full::new(head.into_bytes()).map_err(|e| match e {});
    Ok(match trailers {
        None => full.boxed_unsync(),
        Some(t) => full
            .with_trailers(std::future::ready(Some(Ok(t))))
            .boxed_unsync(),
    })
}

/// [`BUFFERED_BODY_BYTES`] as a buffer size.
const BUFFERED_BODY_LEN: usize = BUFFERED_BODY_BYTES as usize;

/// The bytes of a request body read before the component runs, at most [`BUFFERED_BODY_BYTES`], held so that
/// their memory follows their count. A frame from hyper is a slice of its connection's read buffer and keeps
/// that whole buffer alive: kept frame by frame, a body trickled one byte per chunk would hold tens of thousands
/// of them (a buffer per read, many MiB per connection) for the whole body timeout. So frames are copied into one
/// buffer as they arrive, and dropped.
#[derive(Debug)]
struct Head {
    /// The `Content-Length`, if the body has one.
    length: Option<u64>,
    /// The body's one frame as received, when it is all of the body by its `Content-Length` (the usual small
    /// request: it goes to the component at once, so nothing is held waiting, and is not copied).
    whole: Option<Bytes>,
    /// Otherwise every frame's bytes. Never larger than [`BUFFERED_BODY_BYTES`] (see [`Head::push`]).
    copied: BytesMut,
}

impl Head {
    /// The smallest buffer allocated: most trickled bodies are small, and growth by doubling starts here.
    const MIN_CAPACITY: usize = 1024;

    fn new(length: Option<u64>) -> Self {
        Self {
            length,
            whole: None,
            copied: BytesMut::new(),
        }
    }

    /// Add a frame's bytes, or give them back if they would take the head past [`BUFFERED_BODY_BYTES`] (the
    /// body then streams, beginning with what was read, then those bytes).
    fn push(&mut self, data: Bytes) -> Result<(), Bytes> {
        let read = self.whole.as_ref().map_or(0, Bytes::len) + self.copied.len();
        let total = read.saturating_add(data.len());
        if total > BUFFERED_BODY_LEN {
            return Err(data);
        }
        if read == 0 && self.length == Some(data.len() as u64) {
            self.whole = Some(data);
            return Ok(());
        }
        if total > self.copied.capacity() {
            // Doubling, as a `Vec` grows, but never past what a head may hold: a fresh buffer of exactly that
            // size, as `BytesMut::reserve` may double past it.
            let capacity = total
                .max(self.copied.capacity().saturating_mul(2))
                .clamp(Self::MIN_CAPACITY, BUFFERED_BODY_LEN);
            let mut grown = BytesMut::with_capacity(capacity);
            if let Some(whole) = self.whole.take() {
                // A sized body sends nothing past its length; kept in order should it ever.
                grown.extend_from_slice(&whole);
            }
            grown.extend_from_slice(&self.copied);
            self.copied = grown;
        }
        self.copied.extend_from_slice(&data);
        Ok(())
    }

    /// Every byte read, as one buffer.
    fn into_bytes(self) -> Bytes {
        match self.whole {
            Some(whole) => whole,
            None => self.copied.freeze(),
        }
    }
}

/// A chunked body that proved larger than [`BUFFERED_BODY_BYTES`]: the bytes read to find that out, then the rest
/// as it arrives.
struct ReadAhead<B> {
    /// The bytes read before.
    head: Option<Bytes>,
    /// The frame that took the body past the buffered size, as received (it is passed on at once, so copying it
    /// into the head would save no memory).
    beyond: Option<Bytes>,
    rest: Deadline<B>,
}

impl<B> http_body::Body for ReadAhead<B>
where
    B: http_body::Body<Data = Bytes>,
    B::Error: Into<wasmtime_wasi_http::Error>,
{
    type Data = Bytes;
    type Error = wasmtime_wasi_http::Error;

    fn poll_frame(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, Self::Error>>> {
        let this = self.get_mut();
        if let Some(read) = this.head.take().or_else(|| this.beyond.take()) {
            return std::task::Poll::Ready(Some(Ok(http_body::Frame::data(read))));
        }
        std::pin::Pin::new(&mut this.rest).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.head.is_none() && self.beyond.is_none() && self.rest.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        let read = [&self.head, &self.beyond]
            .into_iter()
            .flatten()
            .map(|b| b.len() as u64)
            .sum::<u64>();
        let rest = self.rest.size_hint();
        let mut hint = http_body::SizeHint::new();
        hint.set_lower(rest.lower().saturating_add(read));
        if let Some(upper) = rest.upper() {
            hint.set_upper(upper.saturating_add(read));
        }
        hint
    }
}

/// A streamed request body that fails with a read timeout once its deadline passes, so a client trickling
/// a large or chunked body cannot hold the instance reading it for longer than a buffered one may take.
struct Deadline<B> {
    inner: std::pin::Pin<Box<B>>,
    expires: std::pin::Pin<Box<tokio::time::Sleep>>,
}

impl<B> http_body::Body for Deadline<B>
where
    B: http_body::Body<Data = Bytes>,
    B::Error: Into<wasmtime_wasi_http::Error>,
{
    type Data = Bytes;
    type Error = wasmtime_wasi_http::Error;

    fn poll_frame(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, Self::Error>>> {
        let this = self.get_mut();
        if let std::task::Poll::Ready(frame) = this.inner.as_mut().poll_frame(cx) {
            return std::task::Poll::Ready(frame.map(|f| f.map_err(Into::into)));
        }
        if this.expires.as_mut().poll(cx).is_ready() {
            return std::task::Poll::Ready(Some(Err(
                wasmtime_wasi_http::Error::ConnectionReadTimeout,
            )));
        }
        std::task::Poll::Pending
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

/// `Retry-After` when the instance pool is full: the request already waited [`crate::app::INSTANCE_WAIT`] for
/// room, or found so many waiting that it could not expect any within that wait, so room is not coming at once;
/// a few seconds spreads the retries of a burst without making a client
/// wait for the slowest request (up to the body timeout) to end.
pub const BUSY_RETRY_AFTER_SECS: u64 = 5;

/// The answer for a request the component did not answer. No room in the instance pool is 503: the gate
/// refused it ([`Busy`]), or, should the gate ever admit more than the pool holds, the pool did.
fn failed(component: &str, e: &wasmtime::Error) -> http::Response<WasiBody> {
    let pool_full = e.downcast_ref::<InstantiationError<()>>().is_some_and(|i| {
        i.error.downcast_ref::<Busy>().is_some()
            || i.error
                .downcast_ref::<wasmtime::PoolConcurrencyLimitError>()
                .is_some()
    });
    if pool_full {
        tracing::warn!(component = %component, error = %format!("{e:#}"), "request refused: the instance pool is full");
        let mut resp = json_response(
            503,
            "unavailable",
            &format!(
                "the server is busy: no room for this request now; retry in {BUSY_RETRY_AFTER_SECS} s"
            ),
        );
        set(
            resp.headers_mut(),
            "retry-after",
            &BUSY_RETRY_AFTER_SECS.to_string(),
        );
        return resp;
    }
    tracing::error!(component = %component, error = %format!("{e:#}"), "request failed in the component");
    json_response(
        500,
        "internal",
        "the component failed to handle the request",
    )
}

/// Route and run one request.
pub async fn handle(
    app: Arc<App>,
    local: SocketAddr,
    client: SocketAddr,
    req: http::Request<hyper::body::Incoming>,
) -> http::Response<WasiBody> {
    let path = req.uri().path().to_owned();
    // Spin answers these itself, before routing: no app route under the prefix is ever reached.
    if let Some(resp) =
        crate::well_known::answer(&path, &app.manifest.name, app.manifest.version.as_deref())
    {
        return resp;
    }
    let Some(m) = app.router.find(&path) else {
        return json_response(404, "not_found", &format!("no route for {path}"));
    };
    let Some(handler) = app.handlers.get(&m.route.component) else {
        return json_response(500, "internal", "route has no loaded component");
    };
    let (mut parts, body) = req.into_parts();
    // The Host header must be an authority (host[:port]), as Spin requires: spliced raw into the URL, a `/` or
    // `?` in it would rewrite the path the component sees.
    let host = match parts.headers.get(http::header::HOST) {
        None => local.to_string(),
        Some(h) => match h
            .to_str()
            .ok()
            .and_then(|h| http::uri::Authority::try_from(h).ok())
            .filter(|a| !a.as_str().contains('@'))
        {
            Some(authority) => authority.as_str().to_owned(),
            None => {
                return json_response(400, "invalid_input", "the Host header is not a host[:port]");
            }
        },
    };
    let full_url = format!(
        "http://{host}{}",
        parts.uri.path_and_query().map_or("/", |p| p.as_str())
    );
    // Spin's request headers; clients cannot forge them.
    let forged: Vec<HeaderName> = parts
        .headers
        .keys()
        .filter(|n| n.as_str().starts_with("spin-"))
        .cloned()
        .collect();
    for name in forged {
        parts.headers.remove(name);
    }
    set(&mut parts.headers, "spin-full-url", &full_url);
    set(&mut parts.headers, "spin-base-path", "/");
    set(&mut parts.headers, "spin-client-addr", &client.to_string());
    // The route's: path info, matched and component routes, `spin-path-match-<name>` ([`crate::router::Match::spin_headers`]).
    for (name, value) in m.spin_headers() {
        set(&mut parts.headers, &name, &value);
    }
    // The guest sees an absolute URI, as under Spin.
    if let Ok(uri) = full_url.parse() {
        parts.uri = uri;
    }
    let component = m.route.component.clone();
    let body = match buffered(&parts.headers, body, app.body_timeout).await {
        Ok(body) => body,
        Err(refusal) => return refusal,
    };
    let req = http::Request::from_parts(parts, body);
    let handled = handler.handle((), req).await;
    // Whatever the component wrote is durable before the client can learn of it ([`crate::kv::Durability`]).
    // Written before it returned its response, that is: the barrier is taken once, here, and body frames stream
    // after it. Our components write nothing after returning (no spawned work, no streamed bodies); a guest that
    // did could show a client a write a power loss would undo.
    if let Err(e) = app.durability.wait().await {
        tracing::error!(component = %component, error = %e, "answer withheld: the store could not sync");
        return json_response(
            503,
            "storage_unavailable",
            "the key-value store could not sync this request's writes to disk; retry",
        );
    }
    match handled {
        Ok(resp) => resp,
        Err(e) => failed(&component, &e),
    }
}

/// Connections served at once; the next waits to be accepted until one closes (file descriptors are finite,
/// and every connection holds one).
pub const MAX_CONNECTIONS: usize = 4096;

/// The most a connection buffers of a request's head (request line and headers) or of its output, in bytes: a
/// head still unfinished past it is answered 431 (hyper checks between reads, so one read may overshoot it). The largest heads this app reads carry a payment and a wallet sign-in (a few
/// KiB each); hyper's default (~400 KiB) would let [`MAX_CONNECTIONS`] half-sent heads hold 1.6 GiB.
pub const MAX_HEAD_BYTES: usize = 32 * 1024;

/// Serve `app` on `listener` until `shutdown` resolves, then drain in-flight connections.
pub async fn serve(
    app: Arc<App>,
    listener: TcpListener,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    let local = listener.local_addr()?;
    let graceful = GracefulShutdown::new();
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    // HTTP/1.1 only (the host serves no HTTP/2): no protocol sniffing, which would wait for bytes with no
    // timeout before hyper's own timers run.
    let mut builder =
        hyper_util::server::conn::auto::Builder::new(TokioExecutor::new()).http1_only();
    // Without a timer hyper drops its header timeout: a client that sends nothing would hold its connection
    // (and descriptor) forever.
    builder
        .http1()
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(app.header_timeout)
        .max_buf_size(MAX_HEAD_BYTES);
    tokio::pin!(shutdown);
    loop {
        let slot = tokio::select! {
            slot = slots.clone().acquire_owned() => slot?,
            () = &mut shutdown => break,
        };
        let (stream, client) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(e) => {
                    // E.g. out of descriptors: retrying at once would spin a core and flood the log.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let _ = stream.set_nodelay(true);
        // hyper times out reading a request's head, never writing its answer: a client that stops reading
        // would hold the connection for ever once its socket buffers are full. A write that makes no
        // progress for the write timeout ends the connection.
        let mut stream = tokio_io_timeout::TimeoutStream::new(stream);
        stream.set_write_timeout(Some(app.write_timeout));
        let app = app.clone();
        let service = hyper::service::service_fn(move |req| {
            let app = app.clone();
            async move { Ok::<_, Infallible>(handle(app, local, client, req).await) }
        });
        let conn = builder
            .serve_connection(TokioIo::new(Box::pin(stream)), service)
            .into_owned();
        let conn = graceful.watch(conn);
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "connection ended with an error");
            }
            drop(slot);
        });
    }
    tracing::info!("shutting down: waiting for in-flight requests");
    tokio::select! {
        () = graceful.shutdown() => {}
        () = tokio::time::sleep(std::time::Duration::from_secs(30)) => tracing::warn!("in-flight requests did not finish within 30 s"),
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::collections::VecDeque;
    use std::pin::Pin;
    use std::task::{Context, Poll};

    use super::*;
    use crate::admission::testing;
    use http_body::{Body as _, Frame};

    #[derive(Debug)]
    struct Broken;

    impl std::fmt::Display for Broken {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("connection reset")
        }
    }

    impl From<Broken> for wasmtime_wasi_http::Error {
        fn from(_: Broken) -> Self {
            Self::ConnectionTerminated
        }
    }

    /// A client's body: these frames, then the end (or nothing more, ever, when `stalls`).
    struct Frames {
        frames: VecDeque<Result<Frame<Bytes>, Broken>>,
        stalls: bool,
    }

    impl http_body::Body for Frames {
        type Data = Bytes;
        type Error = Broken;
        fn poll_frame(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, Broken>>> {
            match self.frames.pop_front() {
                Some(f) => Poll::Ready(Some(f)),
                None if self.stalls => Poll::Pending,
                None => Poll::Ready(None),
            }
        }
    }

    fn frames(frames: Vec<Result<Frame<Bytes>, Broken>>) -> Frames {
        Frames {
            frames: frames.into(),
            stalls: false,
        }
    }

    fn length(n: u64) -> http::HeaderMap {
        let mut h = http::HeaderMap::new();
        h.insert(http::header::CONTENT_LENGTH, HeaderValue::from(n));
        h
    }

    async fn refusal(r: Result<WasiBody, http::Response<WasiBody>>) -> (u16, String) {
        let Err(r) = r else {
            panic!("the body was accepted");
        };
        let status = r.status().as_u16();
        let bytes = r
            .into_body()
            .collect()
            .await
            .map(|c| c.to_bytes())
            .unwrap_or_default();
        (status, String::from_utf8_lossy(&bytes).into_owned())
    }

    #[tokio::test]
    async fn a_small_body_is_read_whole_with_its_trailers() {
        let mut trailers = http::HeaderMap::new();
        trailers.insert("x-sum", HeaderValue::from_static("7"));
        let client = frames(vec![
            Ok(Frame::data(Bytes::from_static(b"{\"a\":"))),
            Ok(Frame::data(Bytes::from_static(b"1}"))),
            Ok(Frame::trailers(trailers)),
        ]);
        let Ok(body) = buffered(&length(7), client, Duration::from_secs(5)).await else {
            panic!("a small body was refused");
        };
        // Read already: its size is known, and the guest's first read gets all of it.
        assert_eq!(body.size_hint().exact(), Some(7));
        let Ok(collected) = body.collect().await else {
            panic!("the buffered body failed");
        };
        assert_eq!(
            collected.trailers().and_then(|t| t.get("x-sum")),
            Some(&HeaderValue::from_static("7"))
        );
        assert_eq!(collected.to_bytes(), Bytes::from_static(b"{\"a\":1}"));
    }

    /// A frame whose bytes belong to `token`: while the frame (or any slice of it) lives, `token` has one more
    /// owner, as a frame from hyper keeps its connection's read buffer.
    fn pinning(token: &Arc<()>, bytes: &'static [u8]) -> Bytes {
        struct Owner {
            _token: Arc<()>,
            bytes: &'static [u8],
        }
        impl AsRef<[u8]> for Owner {
            fn as_ref(&self) -> &[u8] {
                self.bytes
            }
        }
        Bytes::from_owner(Owner {
            _token: token.clone(),
            bytes,
        })
    }

    #[test]
    fn the_read_ahead_buffer_grows_with_the_bytes_and_never_past_the_buffered_size() {
        let mut head = Head::new(None);
        for read in 1..=BUFFERED_BODY_LEN {
            assert!(head.push(Bytes::from_static(b"x")).is_ok());
            // At most twice what was read (or the smallest buffer), and never more than a head may hold.
            let capacity = head.copied.capacity();
            assert!(
                capacity <= (2 * read).max(Head::MIN_CAPACITY),
                "{capacity} for {read}"
            );
            assert!(capacity <= BUFFERED_BODY_LEN, "{capacity}");
        }
        // One byte more streams instead, handed back as it came.
        assert_eq!(
            head.push(Bytes::from_static(b"y")),
            Err(Bytes::from_static(b"y"))
        );
        assert_eq!(head.into_bytes().len(), BUFFERED_BODY_LEN);
        // The usual small request, all of it in one frame: passed on as received.
        let frame = Bytes::from(vec![b'z'; 300]);
        let mut head = Head::new(Some(300));
        assert!(head.push(frame.clone()).is_ok());
        assert_eq!(head.copied.capacity(), 0);
        assert_eq!(head.into_bytes().as_ptr(), frame.as_ptr());
    }

    #[tokio::test]
    async fn a_trickled_body_is_copied_as_it_arrives_not_kept_frame_by_frame() {
        let n = usize::try_from(BUFFERED_BODY_BYTES).unwrap();
        // Chunked, and sized: both are read here while they are at most the buffered size.
        for headers in [http::HeaderMap::new(), length(BUFFERED_BODY_BYTES)] {
            let token = Arc::new(());
            let client = Frames {
                frames: (0..n)
                    .map(|_| Ok(Frame::data(pinning(&token, b"x"))))
                    .collect(),
                stalls: true,
            };
            let reading = buffered(&headers, client, Duration::from_secs(60));
            tokio::pin!(reading);
            // Every one-byte frame read, the end not yet come: still reading.
            assert!(
                tokio::time::timeout(Duration::from_millis(100), &mut reading)
                    .await
                    .is_err()
            );
            assert_eq!(
                Arc::strong_count(&token) - 1,
                0,
                "frames kept while the body is read (each would pin a read buffer)"
            );
        }
        // Ended: one buffer, of every byte.
        let client = frames(
            (0..n)
                .map(|_| Ok(Frame::data(Bytes::from_static(b"x"))))
                .collect(),
        );
        let Ok(mut body) = buffered(&http::HeaderMap::new(), client, Duration::from_secs(5)).await
        else {
            panic!("a small trickled body was refused");
        };
        let Some(Ok(frame)) = body.frame().await else {
            panic!("the buffered body is empty");
        };
        assert_eq!(frame.into_data().map(|d| d.len()).ok(), Some(n));
        assert!(body.frame().await.is_none());
    }

    #[tokio::test]
    async fn a_large_body_streams_unread() {
        let client = frames(vec![Ok(Frame::data(Bytes::from_static(b"xy")))]);
        let headers = length(BUFFERED_BODY_BYTES + 1);
        let Ok(body) = buffered(&headers, client, Duration::from_secs(5)).await else {
            panic!("a streamed body was refused");
        };
        // Not read here: its size is unknown until the guest reads it.
        assert_eq!(body.size_hint().exact(), None);
        let Ok(collected) = body.collect().await else {
            panic!("the streamed body failed");
        };
        assert_eq!(collected.to_bytes(), Bytes::from_static(b"xy"));
    }

    #[tokio::test]
    async fn a_small_chunked_body_is_read_whole_before_the_component_sees_it() {
        let client = frames(vec![
            Ok(Frame::data(Bytes::from_static(b"x"))),
            Ok(Frame::data(Bytes::from_static(b"y"))),
        ]);
        let Ok(body) = buffered(&http::HeaderMap::new(), client, Duration::from_secs(5)).await
        else {
            panic!("a small chunked body was refused");
        };
        assert_eq!(body.size_hint().exact(), Some(2));
        // Trickled and never finished: refused here, having held no instance.
        let stalled = Frames {
            frames: VecDeque::from([Ok(Frame::data(Bytes::from_static(b"{")))]),
            stalls: true,
        };
        let (status, _) =
            refusal(buffered(&http::HeaderMap::new(), stalled, Duration::from_millis(50)).await)
                .await;
        assert_eq!(status, 408);
    }

    #[tokio::test]
    async fn a_large_chunked_body_streams_on_from_what_was_read() {
        let half = usize::try_from(BUFFERED_BODY_BYTES / 2 + 1).unwrap();
        let client = Frames {
            frames: VecDeque::from([
                Ok(Frame::data(Bytes::from(vec![b'a'; half]))),
                Ok(Frame::data(Bytes::from(vec![b'b'; half]))),
            ]),
            stalls: true,
        };
        let timeout = Duration::from_millis(200);
        let start = tokio::time::Instant::now();
        let Ok(mut body) = buffered(&http::HeaderMap::new(), client, timeout).await else {
            panic!("a large chunked body was refused");
        };
        // Handed on without waiting for the rest, the bytes read so far first.
        assert!(start.elapsed() < timeout);
        let mut read = Vec::new();
        for _ in 0..2 {
            let Some(Ok(frame)) = body.frame().await else {
                panic!("the bytes read ahead were lost");
            };
            read.extend_from_slice(&frame.into_data().unwrap_or_default());
        }
        assert_eq!(read.len(), 2 * half);
        assert!(read.starts_with(b"aa") && read.ends_with(b"bb"));
        // The rest never comes: the deadline, counted from the start, still holds.
        assert!(matches!(
            body.frame().await,
            Some(Err(wasmtime_wasi_http::Error::ConnectionReadTimeout))
        ));
        assert!(start.elapsed() < timeout * 2);
    }

    fn instantiation_failed(error: wasmtime::Error) -> wasmtime::Error {
        InstantiationError {
            request_data: (),
            request: std::sync::Mutex::new(http::Request::new(
                Full::new(Bytes::new())
                    .map_err(|e| match e {})
                    .boxed_unsync(),
            )),
            error: Arc::new(error),
        }
        .into()
    }

    async fn answer(resp: http::Response<WasiBody>) -> (u16, Option<String>, serde_json::Value) {
        let status = resp.status().as_u16();
        let retry = resp
            .headers()
            .get(http::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let bytes = resp
            .into_body()
            .collect()
            .await
            .map(|c| c.to_bytes())
            .unwrap_or_default();
        (
            status,
            retry,
            serde_json::from_slice(&bytes).unwrap_or_default(),
        )
    }

    #[tokio::test]
    async fn no_room_in_the_instance_pool_is_503_with_retry_after() {
        let busy = [
            Busy::Waited {
                capacity: 204,
                waited: Duration::from_secs(10),
            },
            Busy::Crowded {
                capacity: 204,
                waiting: 816,
            },
        ];
        // The pool itself refusing (were the gate ever to admit too many): an instantiation past a tiny pool.
        let (engine, component) = crate::admission::testing::tiny();
        let _full = [
            testing::instance(&engine, &component).await.unwrap(),
            testing::instance(&engine, &component).await.unwrap(),
        ];
        let Err(refused) = testing::instance(&engine, &component).await else {
            panic!("the tiny pool held a third instance");
        };
        let [waited, crowded] = busy.map(wasmtime::Error::new);
        for cause in [waited, crowded, refused] {
            let (status, retry, body) = answer(failed("c", &instantiation_failed(cause))).await;
            assert_eq!(status, 503);
            assert_eq!(retry.as_deref(), Some("5"));
            assert_eq!(body["error"]["code"], "unavailable", "{body}");
            let message = body["error"]["message"].as_str().unwrap_or_default();
            assert!(message.contains("busy"), "{message}");
        }
        // Anything else stays a failure of the component.
        for other in [
            instantiation_failed(wasmtime::format_err!("bad import")),
            wasmtime::format_err!("trap"),
        ] {
            let (status, retry, body) = answer(failed("c", &other)).await;
            assert_eq!((status, retry), (500, None));
            assert_eq!(body["error"]["code"], "internal", "{body}");
        }
    }

    #[tokio::test]
    async fn a_body_that_does_not_arrive_is_408_and_a_broken_one_400() {
        let stalled = Frames {
            frames: VecDeque::from([Ok(Frame::data(Bytes::from_static(b"ab")))]),
            stalls: true,
        };
        let (status, body) =
            refusal(buffered(&length(10), stalled, Duration::from_millis(50)).await).await;
        assert_eq!(status, 408);
        assert!(body.contains("request_timeout"), "{body}");

        let broken = frames(vec![
            Ok(Frame::data(Bytes::from_static(b"ab"))),
            Err(Broken),
        ]);
        let (status, body) =
            refusal(buffered(&length(10), broken, Duration::from_secs(5)).await).await;
        assert_eq!(status, 400);
        assert!(body.contains("connection reset"), "{body}");
    }
}
