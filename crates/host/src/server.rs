//! The HTTP trigger: accepts connections (HTTP/1.1 keep-alive), routes each request with Spin's rules, adds
//! the `spin-*` headers Spin sets, and hands it to the component's `ProxyHandler`. Shuts down gracefully: on
//! the shutdown signal it stops accepting and lets in-flight requests finish.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderName, HeaderValue};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use wasmtime_wasi_http::WasiBody;

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

/// Request bodies up to this size (by `Content-Length`) are read whole before the component sees the request.
pub const BUFFERED_BODY_BYTES: u64 = 64 * 1024;

/// The request body as the component will read it. One with a `Content-Length` of at most
/// [`BUFFERED_BODY_BYTES`] (every API request but large receipt batches) is read here first, on the
/// connection's own task: the guest's reads then complete at once instead of each one suspending the instance's
/// task until the connection task has delivered the bytes (a cross-task round trip per read, ~30% of a 402's
/// host CPU; BENCHMARKS.md, "The 402 path"). A client that has not sent it
/// within `timeout` gets 408 without having held an instance. Larger or chunked bodies stream, under the same
/// deadline ([`Deadline`]): a client trickling one never holds an instance past it.
async fn buffered<B>(
    headers: &http::HeaderMap,
    body: B,
    timeout: Duration,
) -> Result<WasiBody, http::Response<WasiBody>>
where
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<wasmtime_wasi_http::Error> + std::fmt::Display,
{
    let small = headers
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
        .is_some_and(|n| n <= BUFFERED_BODY_BYTES);
    if !small {
        return Ok(Deadline {
            inner: Box::pin(body),
            expires: Box::pin(tokio::time::sleep(timeout)),
        }
        .boxed_unsync());
    }
    match tokio::time::timeout(timeout, body.collect()).await {
        Ok(Ok(collected)) => {
            let trailers = collected.trailers().cloned();
            let data = collected.to_bytes();
            let full = Full::new(data).map_err(|e| match e {});
            Ok(match trailers {
                None => full.boxed_unsync(),
                Some(t) => full
                    .with_trailers(std::future::ready(Some(Ok(t))))
                    .boxed_unsync(),
            })
        }
        Ok(Err(e)) => Err(json_response(
            400,
            "invalid_input",
            &format!("could not read the request body: {e}"),
        )),
        Err(_) => Err(json_response(
            408,
            "request_timeout",
            &format!(
                "the request body was not received within {} s",
                timeout.as_secs()
            ),
        )),
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

/// Route and run one request.
pub async fn handle(
    app: Arc<App>,
    local: SocketAddr,
    client: SocketAddr,
    req: http::Request<hyper::body::Incoming>,
) -> http::Response<WasiBody> {
    let path = req.uri().path().to_owned();
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
    set(&mut parts.headers, "spin-path-info", &m.path_info);
    set(&mut parts.headers, "spin-matched-route", &m.route.pattern);
    set(
        &mut parts.headers,
        "spin-raw-component-route",
        &m.route.pattern,
    );
    set(&mut parts.headers, "spin-component-route", &m.route.base());
    set(&mut parts.headers, "spin-base-path", "/");
    set(&mut parts.headers, "spin-client-addr", &client.to_string());
    for (name, value) in &m.params {
        set(
            &mut parts.headers,
            &format!("spin-path-match-{name}"),
            value,
        );
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
        Err(e) => {
            tracing::error!(component = %component, error = %format!("{e:#}"), "request failed in the component");
            json_response(
                500,
                "internal",
                "the component failed to handle the request",
            )
        }
    }
}

/// Connections served at once; the next waits to be accepted until one closes (file descriptors are finite,
/// and every connection holds one).
pub const MAX_CONNECTIONS: usize = 4096;

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
        .header_read_timeout(app.header_timeout);
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
        let app = app.clone();
        let service = hyper::service::service_fn(move |req| {
            let app = app.clone();
            async move { Ok::<_, Infallible>(handle(app, local, client, req).await) }
        });
        let conn = builder
            .serve_connection(TokioIo::new(stream), service)
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

    #[tokio::test]
    async fn large_or_unsized_bodies_stream_unread() {
        for headers in [length(BUFFERED_BODY_BYTES + 1), http::HeaderMap::new()] {
            let client = frames(vec![Ok(Frame::data(Bytes::from_static(b"xy")))]);
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
