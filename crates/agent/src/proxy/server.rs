//! The accept loop, and what a connection may hold of the proxy ([`Limits`]): the time to send a request's
//! headers and body and to take its answer, the bytes of its headers, and the connections served at once (past
//! the cap, new ones wait in the listen backlog, not in this process). A failed `accept` is passing: the loop
//! waits a moment and goes on serving every device.

use std::sync::Arc;
use std::time::Duration;

use hyper::Request;
use hyper::service::service_fn;
use tokio::sync::Mutex;

use super::audit::AuditLog;
use super::request::respond;
use super::shared::{ProxySettings, Shared};
use crate::{Config, SpendPolicy, StateDir};

/// What a connection may hold of the proxy.
#[derive(Debug, Clone, Copy)]
pub(super) struct Limits {
    /// The longest a client may take to send a request's headers, and to stay idle between two requests (a
    /// connection that sends nothing holds a slot until then).
    pub(super) header_read: Duration,
    /// The longest a client may take to send a request's body.
    pub(super) body_read: Duration,
    /// The longest a write of an answer may wait on a client that reads nothing of it: past it, the connection
    /// ends (hyper times out reading a request, never writing its answer).
    pub(super) write: Duration,
    /// Connections served at once; past it, new ones wait in the listen backlog.
    pub(super) max_connections: usize,
}

pub(super) const LIMITS: Limits = Limits {
    header_read: Duration::from_secs(30),
    body_read: Duration::from_secs(30),
    write: Duration::from_secs(30),
    max_connections: 256,
};

/// The most a connection buffers of a request's head (request line and headers), in bytes: a head still
/// unfinished past it is answered 431. The largest a device sends carry its SIM's token or a wallet sign-in (a
/// few KiB); hyper's default (~400 KiB) would let the connection cap's half-sent heads hold 100 MiB.
const MAX_HEAD_BYTES: usize = 32 * 1024;

/// The pause after a failed `accept` (e.g. out of file descriptors) before the next one, so the loop does not
/// spin while the condition lasts.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

pub(super) async fn serve_with(
    listener: tokio::net::TcpListener,
    _held: crate::state::StateLock,
    config: Config,
    policy: SpendPolicy,
    settings: ProxySettings,
    limits: Limits,
) -> std::io::Result<()> {
    let wallet = StateDir::new(settings.state_dir.join("wallet"));
    let audit = Arc::new(AuditLog {
        path: settings.audit_log.clone(),
        lock: std::sync::Mutex::new(()),
    });
    let shared = Arc::new(Shared {
        http: crate::client::http_client().map_err(std::io::Error::other)?,
        budget: Arc::new(crate::budget::Budget::new(policy.max_per_day_usdc, wallet)),
        config,
        policy,
        settings,
        devices: Mutex::default(),
        audit,
        listen: listener.local_addr()?,
    });
    let slots = Arc::new(tokio::sync::Semaphore::new(limits.max_connections));
    loop {
        // At the cap, stop accepting: further connections wait in the listen backlog, not in this process.
        let slot = slots
            .clone()
            .acquire_owned()
            .await
            .map_err(std::io::Error::other)?;
        let (stream, peer) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                // Out of file descriptors, a connection reset before it was accepted, …: passing, and no reason
                // to stop serving every device.
                eprintln!("esim402-agent proxy: accepting a connection failed ({e}); going on");
                tokio::time::sleep(ACCEPT_BACKOFF).await;
                continue;
            }
        };
        // A client that stops reading would otherwise hold its slot for ever once the socket buffers are
        // full of an answer (up to 4 MiB, forwarded): a write that makes no progress for the write limit ends
        // the connection.
        let mut stream = tokio_io_timeout::TimeoutStream::new(stream);
        stream.set_write_timeout(Some(limits.write));
        let shared = shared.clone();
        tokio::spawn(async move {
            let _slot = slot;
            let service = service_fn(move |req: Request<hyper::body::Incoming>| {
                let shared = shared.clone();
                async move {
                    Ok::<_, std::convert::Infallible>(
                        respond(&shared, req, peer, limits.body_read).await,
                    )
                }
            });
            let io = hyper_util::rt::TokioIo::new(Box::pin(stream));
            let _ = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(limits.header_read)
                .max_buf_size(MAX_HEAD_BYTES)
                .serve_connection(io, service)
                .await;
        });
    }
}
