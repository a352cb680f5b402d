//! `allowed_outbound_hosts`: parsed once per component (after `{{ var }}` expansion) and enforced on every
//! outgoing `wasi:http` request. Syntax as in Spin: `scheme://host[:port]`, where scheme, host and port may be
//! `*`, a host may be `*.example.com`, and an omitted port means the scheme's default. A denied request fails in
//! the guest with `HttpRequestDenied` and is logged by the host (without query strings).
//!
//! Spin also gives some hosts a meaning of its own, routed in-process rather than over the network: `self` and
//! `self.alt` (requests to the app itself) and `*.spin.internal` (service chaining to a component). This host
//! would send those to DNS, so an entry naming one is refused when the app loads ([`AllowedHost::parse`]).

use std::future::Future;
use std::sync::Arc;

use anyhow::{Context, bail, ensure};
use http_body_util::BodyExt;
use wasmtime_wasi_http::{RequestOptions, WasiBody, WasiHttpHooks};

use crate::pool::Pool;

/// One allowed destination.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AllowedHost {
    scheme: Option<String>,
    host: HostPattern,
    port: Option<u16>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum HostPattern {
    Any,
    Exact(String),
    Subdomains(String),
}

fn default_port(scheme: &str) -> Option<u16> {
    match scheme {
        "http" => Some(80),
        "https" => Some(443),
        "redis" => Some(6379),
        "postgres" => Some(5432),
        "mysql" => Some(3306),
        _ => None,
    }
}

impl AllowedHost {
    /// Parse one entry.
    pub fn parse(entry: &str) -> anyhow::Result<Self> {
        let (scheme, rest) = entry
            .split_once("://")
            .with_context(|| format!("allowed host {entry:?} needs a scheme (http://…)"))?;
        ensure!(
            !rest.contains('/') || rest.ends_with('/') && rest.matches('/').count() == 1,
            "allowed host {entry:?} must not have a path"
        );
        ensure!(
            !rest.contains('@'),
            "allowed host {entry:?} must not have user info (credentials go in a header)"
        );
        let rest = rest.trim_end_matches('/');
        // An IPv6 host is bracketed (`[::1]`, `[::1]:8545`): its colons are not the port's.
        let (host, port) = match rest.strip_prefix('[').and_then(|r| r.split_once(']')) {
            Some((v6, "")) => (&rest[..v6.len() + 2], None),
            Some((v6, tail)) => match tail.strip_prefix(':') {
                Some(p) => (&rest[..v6.len() + 2], Some(p)),
                None => bail!("allowed host {entry:?} has an invalid port"),
            },
            None => match rest.rsplit_once(':') {
                Some((h, p)) => (h, Some(p)),
                None => (rest, None),
            },
        };
        ensure!(!host.is_empty(), "allowed host {entry:?} has no host");
        // First: whatever else is wrong with such an entry, the feature it asks for is the news.
        refuse_in_process(entry, &host.to_ascii_lowercase())?;
        let scheme = (scheme != "*").then(|| scheme.to_ascii_lowercase());
        let port = match port {
            Some("*") => None,
            Some(p) => Some(
                p.parse::<u16>()
                    .with_context(|| format!("allowed host {entry:?} has an invalid port"))?,
            ),
            None => match scheme.as_deref().and_then(default_port) {
                Some(p) => Some(p),
                None => bail!("allowed host {entry:?} needs an explicit port for its scheme"),
            },
        };
        let host = host.to_ascii_lowercase();
        let host = if host == "*" {
            HostPattern::Any
        } else if let Some(suffix) = host.strip_prefix("*.") {
            HostPattern::Subdomains(suffix.to_owned())
        } else {
            ensure!(
                !host.contains('*'),
                "allowed host {entry:?}: '*' is only allowed as a whole host or a leading '*.'"
            );
            HostPattern::Exact(host)
        };
        Ok(Self { scheme, host, port })
    }

    /// Whether a request to `scheme://host:port` is allowed by this entry.
    pub fn allows(&self, scheme: &str, host: &str, port: u16) -> bool {
        let host = host.to_ascii_lowercase();
        let host = host.trim_start_matches('[').trim_end_matches(']');
        self.scheme.as_deref().is_none_or(|s| s == scheme)
            && self.port.is_none_or(|p| p == port)
            && match &self.host {
                HostPattern::Any => true,
                HostPattern::Exact(h) => h.trim_start_matches('[').trim_end_matches(']') == host,
                HostPattern::Subdomains(suffix) => host.ends_with(&format!(".{suffix}")),
            }
    }
}

/// Check `entry`, the value of the manifest's `template` once its `{{ variables }}` are filled in. An error
/// names the template, never the value: a variable may hold a secret (an RPC provider's key in its URL's path
/// or user info), and start-up errors land in logs.
pub fn check_templated(template: &str, entry: &str) -> anyhow::Result<()> {
    match AllowedHost::parse(entry) {
        Ok(_) => Ok(()),
        Err(_) if template == entry => AllowedHost::parse(entry).map(drop),
        Err(e) => {
            let mut why = format!("{e:#}").replace(&format!("{entry:?}"), &format!("{template:?}"));
            // Any other trace of the value: a plain message instead (replacing it where it appears would mangle
            // the message when the value is short or empty: `"ab".replace("", x)` puts x between every letter).
            if !entry.is_empty() && why.contains(entry) {
                why = format!("allowed host {template:?} is not a valid entry");
            }
            bail!(
                "{why} (its value, not shown, comes from the variables it names: use scheme://host[:port] only)"
            )
        }
    }
}

/// Refuse the hosts Spin routes inside the app instead of over the network: served here, a request to them would
/// go to DNS and fail (or, worse, reach whoever answers for that name).
fn refuse_in_process(entry: &str, host: &str) -> anyhow::Result<()> {
    if host == "self" || host == "self.alt" {
        bail!(
            "allowed host {entry:?}: self requests are not supported by esim402 (Spin routes `{host}` to the app \
             itself, in-process); allow the address the app is served at instead (e.g. http://127.0.0.1:3000)"
        );
    }
    if host.ends_with(".spin.internal") {
        bail!(
            "allowed host {entry:?}: service chaining is not supported by esim402 (Spin routes `*.spin.internal` \
             to a component of the app, in-process); use a component dependency or the component's public route"
        );
    }
    Ok(())
}

/// A component's outbound policy; also the `WasiHttpHooks` the store uses for every send: an allowed request
/// goes out on the host's connection pool ([`crate::pool`]) when it has one, else on a fresh connection.
#[derive(Debug, Clone, Default)]
pub struct OutboundPolicy {
    /// Component id, for logs.
    pub component: Arc<str>,
    /// Allowed destinations; empty denies everything.
    pub allowed: Arc<[AllowedHost]>,
    /// The host's connection pool.
    pub pool: Option<Arc<Pool>>,
    /// Waited on before a request leaves: the destination must not see what a power loss could undo.
    pub durability: crate::kv::Durability,
}

impl OutboundPolicy {
    /// Parse a component's (already expanded) entries.
    pub fn new(component: &str, entries: &[String]) -> anyhow::Result<Self> {
        let allowed = entries
            .iter()
            .map(|e| AllowedHost::parse(e))
            .collect::<anyhow::Result<Vec<_>>>()?;
        Ok(Self {
            component: component.into(),
            allowed: allowed.into(),
            pool: None,
            durability: crate::kv::Durability::default(),
        })
    }

    /// Send allowed requests through `pool` (`None`: a fresh connection each).
    pub fn pooled(mut self, pool: Option<Arc<Pool>>) -> Self {
        self.pool = pool;
        self
    }

    /// Make the stores' writes durable before each request leaves.
    pub fn durable(mut self, durability: crate::kv::Durability) -> Self {
        self.durability = durability;
        self
    }

    /// Whether `uri` may be requested.
    pub fn allows_uri(&self, uri: &http::Uri) -> bool {
        let scheme = uri.scheme_str().unwrap_or("https").to_ascii_lowercase();
        let Some(host) = uri.host() else { return false };
        let Some(port) = uri.port_u16().or_else(|| default_port(&scheme)) else {
            return false;
        };
        self.allowed.iter().any(|a| a.allows(&scheme, host, port))
    }
}

type IoFuture = Box<dyn Future<Output = Result<(), wasmtime_wasi_http::Error>> + Send>;

impl WasiHttpHooks for OutboundPolicy {
    fn send_request(
        &mut self,
        request: http::Request<WasiBody>,
        options: Option<RequestOptions>,
        _response_result: IoFuture,
    ) -> Box<
        dyn Future<Output = Result<(http::Response<WasiBody>, IoFuture), wasmtime_wasi_http::Error>>
            + Send,
    > {
        // User info in a URL would go out in the `Host` header (wasmtime sets it from the whole authority), into
        // the server's and any proxy's logs, and authenticate nothing: refused.
        let userinfo = request
            .uri()
            .authority()
            .is_some_and(|a| a.as_str().contains('@'));
        let allowed = !userinfo && self.allows_uri(request.uri());
        let component = self.component.clone();
        let pool = self.pool.clone();
        let durability = self.durability.clone();
        Box::new(async move {
            if userinfo {
                tracing::warn!(component = %component, "outbound request denied: its URL carries user info (send credentials in a header)");
                return Err(wasmtime_wasi_http::Error::HttpRequestUriInvalid);
            }
            if !allowed {
                let uri = request.uri();
                tracing::warn!(
                    component = %component,
                    // Host and port only: a URL's userinfo may hold a credential.
                    destination = %format!("{}://{}{}", uri.scheme_str().unwrap_or("https"), uri.host().unwrap_or(""), uri.port().map_or(String::new(), |p| format!(":{p}"))),
                    "outbound request denied: destination is not in allowed_outbound_hosts"
                );
                return Err(wasmtime_wasi_http::Error::HttpRequestDenied);
            }
            // A chain or a carrier acting on this request must not act on writes a power loss could undo.
            if let Err(e) = durability.wait().await {
                tracing::error!(component = %component, error = %e, "outbound request not sent: the store could not sync");
                return Err(wasmtime_wasi_http::Error::InternalError(Some(
                    "the key-value store could not sync its writes to disk".into(),
                )));
            }
            if let Some(pool) = pool {
                // The pool drives its connections itself: nothing for the caller to await.
                let response = pool.send(request, options).await?;
                return Ok((response, Box::new(async { Ok(()) }) as IoFuture));
            }
            let (response, io) = wasmtime_wasi_http::default_send_request(request, options).await?;
            Ok((response.map(|b| b.boxed_unsync()), Box::new(io) as IoFuture))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn allows(entry: &str, url: &str) -> bool {
        OutboundPolicy::new("t", &[entry.to_owned()])
            .unwrap()
            .allows_uri(&url.parse().unwrap())
    }

    #[test]
    fn spin_syntax() {
        assert!(allows("http://127.0.0.1:8545", "http://127.0.0.1:8545/rpc"));
        assert!(!allows("http://127.0.0.1:8545", "http://127.0.0.1:8546/"));
        assert!(!allows("http://127.0.0.1:8545", "https://127.0.0.1:8545/"));
        assert!(allows("https://example.com", "https://example.com/x"));
        assert!(!allows("https://example.com", "https://example.com:8443/x"));
        assert!(allows("https://*.example.com", "https://api.example.com/"));
        assert!(!allows("https://*.example.com", "https://example.com/"));
        assert!(!allows("https://*.example.com", "https://evilexample.com/"));
        assert!(allows("*://localhost:*", "http://localhost:9/"));
        assert!(allows("http://*:8080", "http://anything:8080/"));
        // IPv6 hosts, with and without a port (the default port of the scheme); before, `http://[::1]` read its
        // last group as the port.
        assert!(allows("http://[::1]", "http://[::1]/"));
        assert!(allows("http://[::1]:8545", "http://[::1]:8545/rpc"));
        assert!(!allows("http://[::1]:8545", "http://[::1]:8546/"));
        assert!(AllowedHost::parse("http://[::1]x").is_err());
        assert!(
            !OutboundPolicy::default().allows_uri(&"http://127.0.0.1/".parse().unwrap()),
            "no entries deny all"
        );
    }

    #[test]
    fn spin_in_process_hosts_are_refused_naming_the_feature() {
        for (entry, feature) in [
            ("http://self", "self requests"),
            ("https://self", "self requests"),
            ("*://self.alt", "self requests"),
            ("http://SELF.alt:8080", "self requests"),
            ("http://*.spin.internal", "service chaining"),
            ("http://gateway.spin.internal", "service chaining"),
            ("https://Gateway.Spin.Internal:443", "service chaining"),
        ] {
            let err = format!("{:#}", AllowedHost::parse(entry).unwrap_err());
            assert!(
                err.contains(feature) && err.contains("not supported by esim402"),
                "{entry}: {err}"
            );
        }
        // Names that merely look alike are ordinary hosts.
        for entry in [
            "https://self.example.com",
            "https://myself",
            "https://spin.internal",
            "https://spin.internal.example.com",
        ] {
            AllowedHost::parse(entry).unwrap();
        }
    }

    #[test]
    fn bad_entries() {
        for bad in [
            "127.0.0.1:80",
            "http://",
            "http://host:notaport",
            "*://host",
            "http://a*b.com",
            "http://host/path",
            "https://user@rpc.example.com",
        ] {
            assert!(AllowedHost::parse(bad).is_err(), "{bad}");
        }
    }

    /// A templated entry whose value holds a secret (an RPC provider's key in its path or user info) is
    /// refused naming the template; before, the error printed the value.
    #[test]
    fn a_bad_templated_entry_is_named_by_its_template() {
        for value in [
            "https://rpc.example.com/v2/sEcReT-kEy",
            "https://user:sEcReT-kEy@rpc.example.com",
            "https://rpc.example.com:sEcReT-kEy",
        ] {
            let e = check_templated("{{ rpc_url }}", value).unwrap_err();
            let text = format!("{e:#}");
            assert!(
                !text.contains("sEcReT") && text.contains("{{ rpc_url }}"),
                "{text}"
            );
        }
        check_templated("{{ rpc_url }}", "https://rpc.example.com").unwrap();
        // An empty or one-letter value: a readable message naming the template (before, the template was put
        // between every letter of it).
        for value in ["", "h"] {
            let text = format!("{:#}", check_templated("{{ v }}", value).unwrap_err());
            assert!(
                text.starts_with("allowed host \"{{ v }}\"") && text.len() < 200,
                "{value:?}: {text}"
            );
        }
        let e = check_templated("http://host/path", "http://host/path").unwrap_err();
        assert!(format!("{e:#}").contains("http://host/path"));
    }
}
