//! The outbound connection pool: every component's `wasi:http` requests go through one [`Pool`] per host, so
//! a JSON-RPC or ES2+ call reuses a kept-alive connection to its origin instead of opening (and for `https`,
//! handshaking) a new one. `allowed_outbound_hosts` is checked before a request reaches the pool
//! ([`crate::outbound::OutboundPolicy`]); the pool only ever sees allowed destinations.
//!
//! Bounds, per origin (`scheme://host:port`): at most [`PoolLimits::max_in_flight`] requests at once (more wait
//! for a slot within the request's connect timeout, then fail with `connection-limit-reached`), at most
//! [`PoolLimits::max_idle`] idle connections kept, each closed after [`PoolLimits::idle_timeout`].
//!
//! The guest's `request-options` timeouts do not apply as they would to a fresh connection, because a pooled
//! request may get a live connection (no connect at all) or open one, and the pool cannot tell which phase a
//! request is in: the wait for a slot is bounded by the connect timeout (then `connection-limit-reached`); once
//! it has a slot, connecting (if needed) and the response head together are bounded by connect + first-byte
//! (then `connection-read-timeout`, also when it was the connect that was slow); each body frame by the
//! between-bytes timeout. So a request can wait up to 2 × connect + first-byte for its response head, and a
//! slow connect is not reported as `connection-timeout`.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::BodyExt;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use wasmtime_wasi_http::{Error, RequestOptions, WasiBody};

/// How big the pool may grow.
#[derive(Debug, Clone, Copy)]
pub struct PoolLimits {
    /// Requests in flight to one origin at once.
    pub max_in_flight: usize,
    /// Idle connections kept per origin.
    pub max_idle: usize,
    /// How long an idle connection is kept.
    pub idle_timeout: Duration,
}

impl Default for PoolLimits {
    fn default() -> Self {
        Self {
            max_in_flight: 64,
            max_idle: 32,
            idle_timeout: Duration::from_secs(30),
        }
    }
}

/// Origins whose bounds are kept before those not in use are forgotten.
const MAX_ORIGINS: usize = 1024;

/// The origin `uri` is bounded under: `scheme://host:port`, lower-cased, the scheme's default port filled in
/// and any userinfo left out, so every spelling of one origin shares its bounds.
fn origin(uri: &http::Uri) -> Option<String> {
    let scheme = uri.scheme_str()?.to_ascii_lowercase();
    let host = uri.host()?.to_ascii_lowercase();
    let port = uri
        .port_u16()
        .unwrap_or(if scheme == "https" { 443 } else { 80 });
    Some(format!("{scheme}://{host}:{port}"))
}

/// Wasmtime's defaults when the guest sets no `request-options`.
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(600);

type Https = hyper_rustls::HttpsConnector<HttpConnector>;

/// Kept-alive connections to every origin the host's components call.
pub struct Pool {
    client: Client<Https, WasiBody>,
    limits: PoolLimits,
    slots: Mutex<HashMap<String, Arc<Semaphore>>>,
}

impl std::fmt::Debug for Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pool")
            .field("limits", &self.limits)
            .finish()
    }
}

impl Pool {
    /// A pool with `limits`; TLS trusts the webpki roots, as wasmtime's default sender does.
    pub fn new(limits: PoolLimits) -> Self {
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_nodelay(true);
        let tls = hyper_rustls::HttpsConnectorBuilder::new()
            .with_webpki_roots()
            .https_or_http()
            .enable_http1()
            .wrap_connector(http);
        let client = Client::builder(TokioExecutor::new())
            .pool_max_idle_per_host(limits.max_idle)
            .pool_idle_timeout(limits.idle_timeout)
            .pool_timer(hyper_util::rt::TokioTimer::new())
            .build(tls);
        Self {
            client,
            limits,
            slots: Mutex::new(HashMap::new()),
        }
    }

    fn slots_for(&self, origin: &str) -> Arc<Semaphore> {
        let mut slots = self
            .slots
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        // Origins nobody is using are forgotten once there are many (a wildcard in `allowed_outbound_hosts`
        // lets a component reach any number of hosts); a slot in use stays, so no bound is ever reset early.
        if slots.len() >= MAX_ORIGINS && !slots.contains_key(origin) {
            slots.retain(|_, s| Arc::strong_count(s) > 1);
        }
        slots
            .entry(origin.to_owned())
            .or_insert_with(|| Arc::new(Semaphore::new(self.limits.max_in_flight)))
            .clone()
    }

    /// Send `request` on a pooled connection. The response body holds the origin's slot until it is dropped.
    /// Timeouts (module docs): the slot wait is bounded by `options`' connect timeout, then connecting and the
    /// response head together by connect + first-byte, then each body frame by between-bytes.
    pub async fn send(
        &self,
        request: http::Request<WasiBody>,
        options: Option<RequestOptions>,
    ) -> Result<http::Response<WasiBody>, Error> {
        let origin = origin(request.uri()).ok_or(Error::HttpRequestUriInvalid)?;
        let connect = options
            .and_then(|o| o.connect_timeout)
            .unwrap_or(DEFAULT_TIMEOUT);
        let first_byte = options
            .and_then(|o| o.first_byte_timeout)
            .unwrap_or(DEFAULT_TIMEOUT);
        let between = options
            .and_then(|o| o.between_bytes_timeout)
            .unwrap_or(DEFAULT_TIMEOUT)
            .max(Duration::from_nanos(1));

        let slots = self.slots_for(&origin);
        let permit = match tokio::time::timeout(connect, slots.acquire_owned()).await {
            Ok(Ok(p)) => p,
            Ok(Err(_)) => return Err(Error::InternalError(Some("pool closed".into()))),
            Err(_) => return Err(Error::ConnectionLimitReached),
        };
        // Connecting and the first byte share one deadline here (after the slot wait above, which has its own):
        // the pool may hand out a live connection (no connect at all) or open one, and does not say which.
        let response = tokio::time::timeout(connect + first_byte, self.client.request(request))
            .await
            .map_err(|_| Error::ConnectionReadTimeout)?
            .map_err(map_error)?;
        Ok(response.map(|incoming| {
            TimedBody {
                incoming,
                between,
                timer: Box::pin(tokio::time::sleep(between)),
                _permit: permit,
            }
            .boxed_unsync()
        }))
    }
}

fn map_error(e: hyper_util::client::legacy::Error) -> Error {
    use std::error::Error as _;
    let connect = e.is_connect();
    let mut source = e.source();
    while let Some(s) = source {
        if let Some(io) = s.downcast_ref::<std::io::Error>() {
            return match io.kind() {
                std::io::ErrorKind::ConnectionRefused => Error::ConnectionRefused,
                std::io::ErrorKind::TimedOut => Error::ConnectionTimeout,
                _ if connect => Error::Connect(std::io::Error::new(io.kind(), io.to_string())),
                _ => Error::ConnectionTerminated,
            };
        }
        if let Some(h) = s.downcast_ref::<hyper::Error>() {
            return if h.is_incomplete_message() || h.is_canceled() {
                Error::HttpResponseIncomplete
            } else {
                Error::HttpProtocolError
            };
        }
        source = s.source();
    }
    if connect {
        return Error::Connect(std::io::Error::other(e.to_string()));
    }
    Error::InternalError(Some(e.to_string()))
}

/// A pooled response body: the guest's between-bytes timeout, and the origin slot released on drop.
struct TimedBody {
    incoming: hyper::body::Incoming,
    between: Duration,
    timer: Pin<Box<tokio::time::Sleep>>,
    _permit: OwnedSemaphorePermit,
}

impl http_body::Body for TimedBody {
    type Data = Bytes;
    type Error = Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, Error>>> {
        match Pin::new(&mut self.incoming).poll_frame(cx) {
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(Error::from(e)))),
            Poll::Ready(Some(Ok(frame))) => {
                let next = tokio::time::Instant::now() + self.between;
                self.timer.as_mut().reset(next);
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Pending => {
                ready!(self.timer.as_mut().poll(cx));
                Poll::Ready(Some(Err(Error::ConnectionReadTimeout)))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.incoming.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.incoming.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// A loopback HTTP/1.1 server that counts accepted connections and answers every request with "ok".
    async fn server() -> (String, Arc<AtomicUsize>, tokio::task::JoinHandle<()>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let accepted = Arc::new(AtomicUsize::new(0));
        let count = accepted.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                count.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(
                        |req: http::Request<hyper::body::Incoming>| async move {
                            let delay = req
                                .uri()
                                .query()
                                .and_then(|q| q.strip_prefix("sleep_ms="))
                                .and_then(|v| v.parse().ok())
                                .unwrap_or(0);
                            tokio::time::sleep(Duration::from_millis(delay)).await;
                            Ok::<_, std::convert::Infallible>(http::Response::new(
                                http_body_util::Full::new(Bytes::from_static(b"ok")),
                            ))
                        },
                    );
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        (url, accepted, task)
    }

    fn get(url: &str) -> http::Request<WasiBody> {
        http::Request::get(url)
            .body(
                http_body_util::Empty::<Bytes>::new()
                    .map_err(|never| match never {})
                    .boxed_unsync(),
            )
            .unwrap()
    }

    async fn text(r: http::Response<WasiBody>) -> String {
        let body = r.into_body().collect().await.unwrap().to_bytes();
        String::from_utf8(body.to_vec()).unwrap()
    }

    #[tokio::test]
    async fn sequential_requests_reuse_one_connection() {
        let (url, accepted, task) = server().await;
        let pool = Pool::new(PoolLimits::default());
        for _ in 0..20 {
            let r = pool.send(get(&format!("{url}/x")), None).await.unwrap();
            assert_eq!(text(r).await, "ok");
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 1);
        task.abort();
    }

    #[tokio::test]
    async fn in_flight_requests_per_origin_are_bounded() {
        let (url, accepted, task) = server().await;
        let pool = Arc::new(Pool::new(PoolLimits {
            max_in_flight: 3,
            ..PoolLimits::default()
        }));
        let mut tasks = Vec::new();
        for _ in 0..12 {
            let (pool, url) = (pool.clone(), url.clone());
            tasks.push(tokio::spawn(async move {
                let r = pool
                    .send(get(&format!("{url}/?sleep_ms=20")), None)
                    .await
                    .unwrap();
                text(r).await
            }));
        }
        for t in tasks {
            assert_eq!(t.await.unwrap(), "ok");
        }
        let opened = accepted.load(Ordering::SeqCst);
        assert!(
            (1..=3).contains(&opened),
            "{opened} connections for 3 slots"
        );
        task.abort();
    }

    #[tokio::test]
    async fn waiting_for_a_slot_is_bounded_by_the_connect_timeout() {
        let (url, _, task) = server().await;
        let pool = Arc::new(Pool::new(PoolLimits {
            max_in_flight: 1,
            ..PoolLimits::default()
        }));
        let slow = {
            let (pool, url) = (pool.clone(), url.clone());
            tokio::spawn(async move {
                let r = pool.send(get(&format!("{url}/?sleep_ms=300")), None).await;
                text(r.unwrap()).await
            })
        };
        tokio::time::sleep(Duration::from_millis(50)).await;
        let options = RequestOptions {
            connect_timeout: Some(Duration::from_millis(20)),
            ..RequestOptions::default()
        };
        let refused = pool.send(get(&format!("{url}/")), Some(options)).await;
        assert!(
            matches!(refused, Err(Error::ConnectionLimitReached)),
            "{refused:?}"
        );
        assert_eq!(slow.await.unwrap(), "ok");
        task.abort();
    }

    #[tokio::test]
    async fn a_closed_port_is_connection_refused() {
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let pool = Pool::new(PoolLimits::default());
        let r = pool
            .send(get(&format!("http://127.0.0.1:{port}/")), None)
            .await;
        assert!(matches!(r, Err(Error::ConnectionRefused)), "{r:?}");
    }

    /// Every spelling of one origin shares its bounds: case, the default port and userinfo change nothing.
    #[test]
    fn origins_are_normalised() {
        let key = |u: &str| origin(&u.parse().unwrap()).unwrap();
        let same = [
            "https://rpc.example.com/a",
            "https://RPC.Example.COM/b",
            "https://rpc.example.com:443/c",
            "HTTPS://user:secret@rpc.example.com/d",
        ];
        for u in same {
            assert_eq!(key(u), "https://rpc.example.com:443", "{u}");
        }
        assert_eq!(key("http://h/x"), "http://h:80");
        assert_ne!(key("http://h:8545/"), key("http://h/"));
        assert_ne!(key("http://h/"), key("https://h/"));
    }

    /// The bounds of origins nobody uses are forgotten once there are many; one in use keeps its slots.
    #[tokio::test]
    async fn unused_origins_are_forgotten() {
        let pool = Pool::new(PoolLimits::default());
        let held = pool.slots_for("http://kept:80");
        for i in 0..(MAX_ORIGINS * 2) {
            pool.slots_for(&format!("http://h{i}:80"));
        }
        let slots = pool.slots.lock().unwrap();
        assert!(slots.len() <= MAX_ORIGINS, "{}", slots.len());
        assert!(Arc::ptr_eq(&slots["http://kept:80"], &held));
    }
}
