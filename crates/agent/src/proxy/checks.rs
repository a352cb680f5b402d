//! What the proxy accepts, and what it pays for: the checks a request passes before anything is forwarded or
//! paid, and the routes whose 402 the proxy pays ([`PAID_ROUTES`]).
//!
//! Devices are not browsers: a request a browser sent (it carries `Origin` or `Sec-Fetch-*`), one with a body
//! that is not `application/json`, or one naming a host other than this proxy's address (DNS rebinding: a web
//! page whose name now points at this machine) is refused before anything is forwarded or paid. Otherwise any
//! page open on the host could have this wallet pay, and read the answer (activation code, access token).
//! Devices therefore address the proxy by IP address (or `localhost`), never by a host name. The proxy pays, not
//! the device: a request carrying a payment of its own is refused too, and only the device's [`FORWARDED`]
//! headers are sent on.

use std::net::SocketAddr;

use super::reply::{Reply, error_reply};

/// The routes whose 402 the proxy pays, as the kernel's route table (`esim402_core::routes`) names them: what a
/// device buys connectivity with. Any other 402 is not the proxy's to pay.
pub const PAID_ROUTES: &[(&str, &str)] = &[
    ("POST", "/v1/esim/activate"),
    ("GET", "/v1/esim/activate"),
    ("POST", "/v1/esim/{iccid}/data"),
    ("POST", "/v1/esim/{iccid}/switch"),
];

/// The device's headers forwarded (and sent with the proxy's paid requests): its SIM's access token or wallet
/// sign-in, and its label. Lower case, as `http` names headers.
pub(super) const FORWARDED: &[&str] = &["authorization", "x-agent-id", "sign-in-with-x"];

/// Whether `method` on `path` (with its query) is one of [`PAID_ROUTES`], matched as the gateway matches its
/// routes (the kernel's table, on the path split at `/` without empty ends).
pub(super) fn is_paid_route(method: &str, path: &str) -> bool {
    let path = path.split_once('?').map_or(path, |(p, _)| p);
    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
    esim402_core::routes::route(&segments).is_some_and(|route| {
        PAID_ROUTES
            .iter()
            .any(|&(m, p)| m == method && p == route.path)
    })
}

/// The refusal of a paid route ([`PAID_ROUTES`]) whose path is not spelled as the proxy takes it: no slash
/// before or after it, and an ICCID as [`Iccid`](esim402_core::esim::Iccid) writes it (no `F` pad). The gateway
/// routes every such spelling as the same purchase (it trims the slashes and reads the ICCID), while a
/// device's pending payments, and its kept answers, are found by the path: `/v1/esim/activate/` sent after a
/// pending `/v1/esim/activate` would have missed that payment and had a second one signed. Refused, naming the
/// path to send, rather than rewritten: the device then knows the one path its purchase goes by (its pending
/// payment, its kept answer), and what is forwarded is what it sent. An ICCID that does not parse is left as
/// it is: it names no SIM, and the gateway refuses it. Dot segments count as spelled otherwise.
pub(super) fn refuse_unusual_paid_path(method: &str, path: &str) -> Option<Reply> {
    let path = path.split_once('?').map_or(path, |(p, _)| p);
    // `.` and `..` resolved as an HTTP client resolves them before sending (a trial: `/v1/./esim/…/data` was
    // forwarded, normalised, as the paid route, and its 402 then refused as a route the proxy does not pay).
    let mut segments: Vec<&str> = Vec::new();
    for segment in path.trim_matches('/').split('/') {
        match segment {
            "." => {}
            ".." => {
                segments.pop();
            }
            other => segments.push(other),
        }
    }
    let route = esim402_core::routes::route(&segments)?;
    if !PAID_ROUTES
        .iter()
        .any(|&(m, p)| m == method && p == route.path)
    {
        return None;
    }
    let canonical: Vec<String> = route
        .path
        .trim_matches('/')
        .split('/')
        .zip(&segments)
        .map(|(part, segment)| match part {
            "{iccid}" => esim402_core::esim::Iccid::parse(segment)
                .map_or_else(|_| (*segment).to_owned(), |i| i.as_str().to_owned()),
            _ => (*segment).to_owned(),
        })
        .collect();
    let canonical = format!("/{}", canonical.join("/"));
    (canonical != path).then(|| {
        error_reply(
            400,
            "invalid_input",
            &format!(
                "`{path}` is `{canonical}` spelled otherwise: send the request to `{canonical}` (its query \
                 unchanged); the proxy takes a paid route in that spelling only, so that a payment still \
                 pending for the purchase is never missed; nothing was forwarded or paid"
            ),
        )
    })
}

/// The refusal of a paid route's query form (`GET /v1/esim/activate?…`) on a proxy that listens beyond
/// loopback and names devices by their address. A web page can make a browser GET any address with no `Origin`
/// (an image), and browsers send `Sec-Fetch-*` only to trustworthy origins (loopback, https), not to plain http
/// on a network address: such a GET passes [`refuse_non_device`] and would be paid from that address's budget.
/// Devices there POST the JSON form, or are named by `--device-header` (a header no page can set).
pub(super) fn refuse_public_paid_get(
    method: &str,
    path: &str,
    listen: SocketAddr,
    named_by_header: bool,
) -> Option<Reply> {
    if method != "GET"
        || listen.ip().is_loopback()
        || named_by_header
        || !is_paid_route(method, path)
    {
        return None;
    }
    Some(error_reply(
        403,
        "forbidden",
        "a paid GET (the query form) is served on a loopback proxy or with --device-header only: a web page can \
         make a browser send a GET to this address; POST the fields as JSON instead",
    ))
}

/// The refusal of a request that carries a payment of its own: the proxy pays, and a device's payment (or
/// payment id) sent on would be another payer's, or make the proxy's own payment ambiguous.
pub(super) fn refuse_payments(headers: &hyper::HeaderMap) -> Option<Reply> {
    let payment = headers.keys().find(|k| {
        let k = k.as_str();
        k == "payment-signature" || k == "payment-identifier" || k.starts_with("x-payment")
    })?;
    Some(error_reply(
        400,
        "invalid_input",
        &format!(
            "the proxy pays for the device: a request must not carry a payment ({payment}); send it without"
        ),
    ))
}

/// The device's [`FORWARDED`] headers, or why one is refused (sent twice, not text). One the `Connection`
/// header names is hop-by-hop (RFC 9110, 7.6.1) and stays here.
pub(super) fn forwarded_headers(
    headers: &hyper::HeaderMap,
) -> Result<Vec<(&'static str, String)>, String> {
    let hop_by_hop: Vec<String> = headers
        .get_all(hyper::header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|t| t.trim().to_ascii_lowercase())
        .collect();
    let mut out = Vec::new();
    for &name in FORWARDED {
        if hop_by_hop.iter().any(|h| h == name) {
            continue;
        }
        let mut values = headers.get_all(name).iter();
        let Some(value) = values.next() else {
            continue;
        };
        if values.next().is_some() {
            return Err(format!("the {name} header is sent twice"));
        }
        let Ok(value) = value.to_str() else {
            return Err(format!("the {name} header is not text"));
        };
        out.push((name, value.to_owned()));
    }
    Ok(out)
}

/// The refusal of a request a device would not send (see the module docs): a browser's (`Origin`,
/// `Sec-Fetch-*`), one naming another host than the proxy's address (DNS rebinding), a body that is not JSON
/// (a browser's "simple" cross-origin POST is `text/plain`). `None`: it may go on.
pub(super) fn refuse_non_device(
    headers: &hyper::HeaderMap,
    has_body: bool,
    listen: SocketAddr,
) -> Option<Reply> {
    let browser = headers.contains_key(hyper::header::ORIGIN)
        || headers.keys().any(|k| k.as_str().starts_with("sec-fetch-"));
    if browser {
        return Some(error_reply(
            403,
            "forbidden",
            "requests from a web browser are refused (Origin or Sec-Fetch-* header): the proxy pays for devices",
        ));
    }
    // A browser always names the host; a device speaking HTTP/1.0 may not, and cannot be rebound.
    if let Some(host) = headers.get(hyper::header::HOST)
        && !host.to_str().is_ok_and(|h| host_is_this_proxy(h, listen))
    {
        return Some(error_reply(
            403,
            "forbidden",
            &format!(
                "the Host header must name this proxy by address (e.g. 127.0.0.1:{}) or localhost",
                listen.port()
            ),
        ));
    }
    let json = headers
        .get(hyper::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|m| m.trim().eq_ignore_ascii_case("application/json"));
    if has_body && !json {
        return Some(error_reply(
            415,
            "unsupported_media_type",
            "a request body must be JSON, sent as Content-Type: application/json",
        ));
    }
    None
}

/// Whether `host` (a `Host` header: `name[:port]`, `[v6][:port]`) names the proxy listening on `listen`:
/// `localhost` (`localhost.`), a loopback address (an IPv4-mapped one too), the listen address itself or, when
/// listening on every address (`--allow-public` on `0.0.0.0`), any IP address. An IP address cannot be rebound
/// to another machine; a host name can (DNS rebinding), so no other name is accepted. The port is not compared:
/// a device reaching the proxy through a port mapping (docker, ssh, NAT) names another one, and a rebinding
/// page needs a host name whatever the port. Parsed as the URL standard parses a host (`127.1`, an empty port);
/// an IPv6 zone (`[fe80::1%eth0]`) does not parse and is refused.
pub(super) fn host_is_this_proxy(host: &str, listen: SocketAddr) -> bool {
    let Ok(url) = reqwest::Url::parse(&format!("http://{host}/")) else {
        return false;
    };
    // Nothing but a host and a port: not `user@host`, nor `host/path` (the URL's host would be another part).
    let bare = url.username().is_empty()
        && url.password().is_none()
        && url.path() == "/"
        && url.query().is_none()
        && url.fragment().is_none();
    let name = url.host_str().unwrap_or_default();
    if !bare || name.is_empty() {
        return false;
    }
    if crate::config::is_loopback_host(name) {
        return true;
    }
    name.trim_start_matches('[')
        .trim_end_matches(']')
        .parse::<std::net::IpAddr>()
        .is_ok_and(|ip| {
            ip.to_canonical() == listen.ip().to_canonical() || listen.ip().is_unspecified()
        })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "tests")]
    use super::*;

    /// The Host names this proxy by address or `localhost`, whatever the port. Before, the port had to be the
    /// listening one (a device behind a port mapping was refused, an empty port too), and `localhost.` and an
    /// IPv4-mapped loopback address were refused.
    #[test]
    fn the_host_must_be_this_proxys_address() {
        let lo: SocketAddr = "127.0.0.1:8480".parse().unwrap();
        for host in [
            "127.0.0.1:8480",
            "LOCALHOST:8480",
            "[::1]:8480",
            "127.0.0.1",
            "127.0.0.1:",
            "127.0.0.1:9000",
            "localhost.:8480",
            "[::ffff:127.0.0.1]:8480",
            "127.1:8480",
        ] {
            assert!(host_is_this_proxy(host, lo), "{host}");
        }
        for host in [
            "192.168.1.5:8480",
            "rebind.example:8480",
            "localhost.example:8480",
            "localhost..",
            "[fe80::1%25eth0]:8480",
            "[fe80::1%eth0]:8480",
            "user@127.0.0.1:8480",
            "127.0.0.1/x",
            "127.0.0.1?x",
            "127.0.0.1#x",
            "[::1]:8480:1",
            "",
        ] {
            assert!(!host_is_this_proxy(host, lo), "{host}");
        }
        let public: SocketAddr = "192.168.1.5:80".parse().unwrap();
        assert!(host_is_this_proxy("192.168.1.5", public));
        assert!(
            host_is_this_proxy("192.168.1.5:8080", public),
            "a mapped port"
        );
        assert!(host_is_this_proxy("[::ffff:192.168.1.5]", public));
        assert!(!host_is_this_proxy("192.168.1.6", public));
        assert!(!host_is_this_proxy("gateway.lan", public));
        let any: SocketAddr = "0.0.0.0:8480".parse().unwrap();
        assert!(
            host_is_this_proxy("10.1.2.3:8480", any),
            "any address, not a name"
        );
        assert!(host_is_this_proxy("[fe80::1]:8480", any));
        assert!(!host_is_this_proxy("gateway.lan:8480", any));
    }

    /// A page's image is a GET with no `Origin`, and no `Sec-Fetch-*` reaches plain http on a network address:
    /// the paid query form is refused there unless devices are named by a header (a review, thirty-first
    /// session). Loopback, POSTs, and routes the proxy does not pay are unaffected.
    #[test]
    fn a_public_proxy_refuses_the_paid_get_form_of_address_named_devices() {
        let public: SocketAddr = "192.168.1.5:8480".parse().unwrap();
        let any: SocketAddr = "[::]:8480".parse().unwrap();
        let lo: SocketAddr = "127.0.0.1:8480".parse().unwrap();
        let buy = "/v1/esim/activate?region=us-west&data_mb=1";
        for listen in [public, any] {
            let refused = refuse_public_paid_get("GET", buy, listen, false).expect("refused");
            assert_eq!(refused.status(), 403);
            assert!(refuse_public_paid_get("GET", buy, listen, true).is_none());
            assert!(refuse_public_paid_get("POST", "/v1/esim/activate", listen, false).is_none());
            assert!(
                refuse_public_paid_get("GET", "/v1/esim/8901/balance", listen, false).is_none()
            );
        }
        assert!(refuse_public_paid_get("GET", buy, lo, false).is_none());
    }
}
