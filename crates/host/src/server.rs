//! The HTTP trigger: accepts connections (HTTP/1.1 keep-alive), routes each request with Spin's rules, adds
//! the `spin-*` headers Spin sets, and hands it to the component's `ProxyHandler`. Shuts down gracefully: on
//! the shutdown signal it stops accepting and lets in-flight requests finish.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

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
    let host = parts
        .headers
        .get(http::header::HOST)
        .and_then(|h| h.to_str().ok())
        .map_or_else(|| local.to_string(), str::to_owned);
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
    let req = http::Request::from_parts(parts, body.map_err(Into::into).boxed_unsync());
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

/// Serve `app` on `listener` until `shutdown` resolves, then drain in-flight connections.
pub async fn serve(
    app: Arc<App>,
    listener: TcpListener,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    let local = listener.local_addr()?;
    let graceful = GracefulShutdown::new();
    tokio::pin!(shutdown);
    loop {
        let (stream, client) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
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
        let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
        let conn = builder
            .serve_connection(TokioIo::new(stream), service)
            .into_owned();
        let conn = graceful.watch(conn);
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "connection ended with an error");
            }
        });
    }
    tracing::info!("shutting down: waiting for in-flight requests");
    tokio::select! {
        () = graceful.shutdown() => {}
        () = tokio::time::sleep(std::time::Duration::from_secs(30)) => tracing::warn!("in-flight requests did not finish within 30 s"),
    }
    Ok(())
}
