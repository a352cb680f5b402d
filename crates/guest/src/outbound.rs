//! Outbound `wasi:http` POSTs of a body held whole in memory (JSON-RPC, ES2+), sent with its `Content-Length`
//! and with the body on offer before the request leaves.
//!
//! Why not `spin_sdk::http::send`: it hands the body to a task of its own that writes it into the request's
//! stream only after the host has started sending, so the host's HTTP client often writes the head alone and
//! the body in a second write. Under `spin up` (its client sets no `TCP_NODELAY`) that second write waited for
//! the peer's delayed ACK: ~40 ms per call (README, "Running it with Spin"). Here the stream write is issued
//! first, so when the host reads the body it is there, and head and body leave together.

use spin_sdk::http::{FromResponse as _, Method, Response, Uri};
use spin_sdk::wasip3::http::client;
use spin_sdk::wasip3::http::types::{ErrorCode, Fields, Request, Scheme};
use spin_sdk::wasip3::{wit_future, wit_stream};

/// Why a POST got no response.
#[derive(Debug, Clone, thiserror::Error)]
pub enum PostError {
    /// The URL or a header could not make a request.
    #[error("invalid request: {0}")]
    Invalid(String),
    /// The host refused or failed the request (`allowed_outbound_hosts`, connection, protocol).
    #[error("{0:?}")]
    Http(ErrorCode),
}

impl PostError {
    /// Whether the request certainly never reached the peer: refused before sending (an invalid request, a
    /// host not in `allowed_outbound_hosts`), or failed while resolving or connecting (DNS, connection refused,
    /// the peer's certificate refused at the handshake). Every other failure may come after the request was
    /// sent (a connection lost or timed out after sending, a broken response), so the peer may have acted on it.
    pub fn never_sent(&self) -> bool {
        matches!(
            self,
            Self::Invalid(_)
                | Self::Http(
                    ErrorCode::HttpRequestDenied
                        | ErrorCode::HttpRequestMethodInvalid
                        | ErrorCode::HttpRequestUriInvalid
                        | ErrorCode::HttpRequestUriTooLong
                        | ErrorCode::DnsTimeout
                        | ErrorCode::DnsError(_)
                        | ErrorCode::DestinationNotFound
                        | ErrorCode::DestinationUnavailable
                        | ErrorCode::DestinationIpProhibited
                        | ErrorCode::DestinationIpUnroutable
                        | ErrorCode::ConnectionRefused
                        | ErrorCode::ConnectionLimitReached
                        | ErrorCode::TlsCertificateError
                )
        )
    }
}

/// POST `body` to `url` with `headers` (and its `Content-Length`); the response as it arrives (its body still
/// to be read).
pub async fn post(
    url: &str,
    headers: &[(&str, &str)],
    body: Vec<u8>,
) -> Result<Response, PostError> {
    let uri: Uri = url
        .parse()
        .map_err(|_| PostError::Invalid("not a valid URI".into()))?;
    let length = body.len().to_string();
    let list: Vec<(String, Vec<u8>)> = headers
        .iter()
        .map(|(k, v)| ((*k).to_owned(), v.as_bytes().to_vec()))
        .chain(std::iter::once((
            "content-length".to_owned(),
            length.into_bytes(),
        )))
        .collect();
    let fields = Fields::from_list(&list).map_err(|e| PostError::Invalid(format!("{e:?}")))?;
    let (mut contents, contents_rx) = wit_stream::new::<u8>();
    let (trailers, trailers_rx) = wit_future::new(|| Ok(None));
    let (request, _) = Request::new(fields, Some(contents_rx), trailers_rx, None);
    // The URL is not repeated in errors: an RPC URL can carry an API key.
    let invalid = |what: &str| PostError::Invalid(format!("invalid {what} in the URL"));
    request
        .set_method(&(&Method::POST).into())
        .map_err(|()| invalid("method"))?;
    let scheme: Option<Scheme> = uri.scheme().map(Into::into);
    request
        .set_scheme(scheme.as_ref())
        .map_err(|()| invalid("scheme"))?;
    request
        .set_authority(uri.authority().map(|a| a.as_str()))
        .map_err(|()| invalid("authority"))?;
    request
        .set_path_with_query(uri.path_and_query().map(|p| p.as_str()))
        .map_err(|()| invalid("path"))?;
    // The write first: `join2` polls it before the send, so the stream write is pending when the host starts
    // reading the body. A host that never reads it (the request failed) drops the reader, which ends the write.
    let write = async move {
        let _ = contents.write_all(body).await;
        drop(contents);
        let _ = trailers.write(Ok(None)).await;
    };
    let ((), response) = esim402_core::join::join2(write, client::send(request)).await;
    let response = response.map_err(PostError::Http)?;
    Response::from_response(response).map_err(PostError::Http)
}
