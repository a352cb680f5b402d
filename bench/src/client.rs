//! One keep-alive HTTP/1.1 connection per simulated client, on hyper's connection API (no pool): the next
//! request goes on the same connection as soon as the previous answer is read, and a new connection is opened
//! only when the server closed the old one (as werkzeug's HTTP/1.0 server does after every answer).
//!
//! Why not a pooled client: reqwest (hyper-util's pool) under this load opened a new connection for about one
//! request in eight — its checkout raced the previous answer's return to the pool, and the surplus connection
//! was then dropped — so every server measured paid for accepts and closes that a keep-alive client does not
//! cause (seen as an `accept4`, a `shutdown` and a `close` per ~8 answers in an `strace -c` of the host).

use std::net::SocketAddr;

use anyhow::{Context, bail};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::{SendRequest, handshake};
use hyper_util::rt::TokioIo;

/// An answer, read in full.
pub struct Reply {
    pub status: u16,
    pub headers: http::HeaderMap,
    pub body: Bytes,
}

/// A client's connection to one server.
pub struct Conn {
    addr: SocketAddr,
    host: String,
    sender: Option<SendRequest<Full<Bytes>>>,
}

impl Conn {
    /// A client of `url` (`http://<ip>:<port>`, loopback in the bench); connects on first use.
    pub fn new(url: &str) -> anyhow::Result<Self> {
        let host = url
            .strip_prefix("http://")
            .with_context(|| format!("not an http:// URL: {url}"))?
            .trim_end_matches('/')
            .to_owned();
        let addr = host
            .parse()
            .with_context(|| format!("not <ip>:<port>: {host}"))?;
        Ok(Self {
            addr,
            host,
            sender: None,
        })
    }

    async fn connect(&self) -> anyhow::Result<SendRequest<Full<Bytes>>> {
        let stream = tokio::net::TcpStream::connect(self.addr).await?;
        stream.set_nodelay(true)?;
        let (sender, conn) = handshake(TokioIo::new(stream)).await?;
        tokio::spawn(async move {
            // Ends when the server closes the connection or this client drops its sender.
            let _ = conn.await;
        });
        Ok(sender)
    }

    /// Send `method path` with `headers` and `body`; the whole answer. After an error the connection is
    /// dropped (the next request opens a new one).
    pub async fn send(
        &mut self,
        method: http::Method,
        path: &str,
        headers: &[(&str, &str)],
        body: Bytes,
    ) -> anyhow::Result<Reply> {
        let mut sender = match self.sender.take() {
            Some(mut s) => match s.ready().await {
                Ok(()) => s,
                Err(_) => self.connect().await?,
            },
            None => self.connect().await?,
        };
        let mut req = http::Request::builder()
            .method(method)
            .uri(path)
            .header(http::header::HOST, &self.host);
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let req = req.body(Full::new(body))?;
        let res = tokio::time::timeout(std::time::Duration::from_secs(30), async {
            let res = sender.send_request(req).await?;
            let (parts, body) = res.into_parts();
            let body = body.collect().await?.to_bytes();
            Ok::<_, hyper::Error>(Reply {
                status: parts.status.as_u16(),
                headers: parts.headers,
                body,
            })
        })
        .await;
        match res {
            Ok(Ok(reply)) => {
                self.sender = Some(sender);
                Ok(reply)
            }
            Ok(Err(e)) => Err(e.into()),
            Err(_) => bail!("no answer within 30 s"),
        }
    }
}
