//! What Spin 4.1's manifest accepts beyond what this host runs: read as Spin reads it, then ignored (deployment
//! targets, build profiles), converted as Spin converts it (the deprecated `allowed_http_hosts`), or refused by
//! name (a trigger's `static_response`, an inline component) rather than with serde's "unknown field".

use std::collections::BTreeMap;

use anyhow::bail;
use serde::Deserialize;

use super::{Commands, HttpTrigger, RouteSpec};

/// A deployment target (`targets = ["spin-up:3.3", { url = "…" }, { path = "…" }]`): Spin checks it only in
/// `spin build` and `spin deploy`; `spin up` ignores it, and so does this host.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged, deny_unknown_fields)]
pub enum TargetRef {
    /// A catalogue name.
    Catalogue(String),
    /// An environment document's URL.
    Http {
        /// The URL.
        url: String,
    },
    /// A local environment document.
    File {
        /// The path.
        path: String,
    },
}

/// `[component.<id>.profile.<name>]`: overrides for a named build profile. `spin up` and `spin build` use the
/// default profile unless given `--profile`, which this host has no equivalent of: read, then ignored.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProfileDecl {
    /// The profile's `source`.
    #[serde(default)]
    pub source: Option<toml::Value>,
    /// The profile's `environment`.
    #[serde(default)]
    pub environment: BTreeMap<String, String>,
    /// The profile's `dependencies`.
    #[serde(default)]
    pub dependencies: BTreeMap<String, toml::Value>,
    /// The profile's build command.
    #[serde(default)]
    pub build: Option<ProfileBuild>,
}

/// `[component.<id>.profile.<name>.build]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProfileBuild {
    /// One command or several.
    pub command: Commands,
}

/// One `[[trigger.http]]` entry as Spin reads it: its `id` (the trigger's, not the component's) and the forms of
/// `component` this host does not run.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawHttpTrigger {
    /// Names the trigger (in Spin's logs and its route listing); routing ignores it.
    #[serde(default)]
    id: Option<String>,
    route: RouteSpec,
    #[serde(default)]
    component: Option<toml::Value>,
    #[serde(default)]
    static_response: Option<toml::Value>,
    #[serde(default)]
    executor: Option<toml::Table>,
}

impl RawHttpTrigger {
    /// The trigger this host runs. `n`: its place among the HTTP triggers, from 1, for Spin's name of a trigger
    /// without `id` (`http-trigger<n>`).
    pub(super) fn into_trigger(self, n: usize) -> anyhow::Result<HttpTrigger> {
        let id = self.id.unwrap_or_else(|| format!("http-trigger{n}"));
        let component = match (self.component, self.static_response) {
            (_, Some(_)) => bail!(
                "trigger {id}: `static_response` is not supported by esim402 (Spin answers such a route itself, \
                 without a component); route it to a component"
            ),
            (Some(toml::Value::String(c)), None) => c,
            (Some(toml::Value::Table(_)), None) => bail!(
                "trigger {id}: an inline component (`component = {{ source = … }}`) is not supported by esim402: \
                 declare it as [component.<id>] and give its id in `component`"
            ),
            (Some(_), None) => bail!("trigger {id}: `component` must be a component id"),
            // Spin's words.
            (None, None) => bail!(
                "Triggers must specify either component or static_response - {id} has neither"
            ),
        };
        Ok(HttpTrigger {
            route: self.route,
            component,
            executor: self.executor,
        })
    }
}

/// Spin's `insecure:allow-all` entry.
const ALLOW_ALL: &str = "insecure:allow-all";

/// The deprecated `allowed_http_hosts` as Spin 4.1 converts it to `allowed_outbound_hosts`
/// (`convert_allowed_http_to_allowed_hosts`, without the database schemes a v1 manifest also got): each host
/// for `http` and `https` (a port kept unless it is the scheme's default, as the `url` crate reports it), `self`
/// as `http://self`, and `insecure:allow-all` as every HTTP(S) host plus `self`. Errors are Spin's.
pub fn allowed_http_to_outbound(hosts: &[String]) -> anyhow::Result<Vec<String>> {
    if hosts.iter().any(|h| h == ALLOW_ALL) {
        return Ok(["http://*:*", "https://*:*", "http://self"]
            .map(str::to_owned)
            .to_vec());
    }
    let mut converted = Vec::new();
    let mut errors = Vec::new();
    for text in hosts {
        match http_host(text) {
            Ok((domain, _)) if domain == "self" => converted.push("http://self".to_owned()),
            Ok((domain, port)) => {
                let port = port.map(|p| format!(":{p}")).unwrap_or_default();
                converted.push(format!("http://{domain}{port}"));
                converted.push(format!("https://{domain}{port}"));
            }
            Err(e) => errors.push(e),
        }
    }
    if !errors.is_empty() {
        bail!(
            "One or more allowed_http_hosts entries was invalid:\n{}",
            errors.join("\n")
        );
    }
    Ok(converted)
}

/// Spin's `parse_allowed_http_host`: `host[:port]`, or an `http(s)://` URL without a path; the host lowercased
/// and the port dropped when it is the URL scheme's default, as `url::Url::port` does.
fn http_host(text: &str) -> Result<(String, Option<u16>), String> {
    let uri: http::Uri = if text.contains("//") {
        let uri: http::Uri = text
            .parse()
            .map_err(|e| format!("{text} isn't a valid HTTP host URL: {e}"))?;
        if !matches!(uri.scheme_str(), Some("http" | "https")) {
            return Err(format!("{text} isn't a valid host or host:port string"));
        }
        uri
    } else {
        format!("http://{text}")
            .parse()
            .map_err(|_| format!("{text} isn't a valid host or host:port string"))?
    };
    let Some(authority) = uri.authority().filter(|a| !a.host().is_empty()) else {
        return Err(format!("{text} doesn't contain a host name"));
    };
    if uri.path().len() > 1 {
        return Err(format!(
            "{text} contains a path, should be host and optional port only"
        ));
    }
    let default = if uri.scheme_str() == Some("https") {
        443
    } else {
        80
    };
    let port = authority.port_u16().filter(|p| *p != default);
    Ok((authority.host().to_ascii_lowercase(), port))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn convert(hosts: &[&str]) -> anyhow::Result<Vec<String>> {
        allowed_http_to_outbound(&hosts.iter().map(|h| (*h).to_owned()).collect::<Vec<_>>())
    }

    /// What the Spin 4.1 binary printed for the same list ("replace `allowed_http_hosts` with
    /// `allowed_outbound_hosts = [...]`").
    #[test]
    fn allowed_http_hosts_convert_as_spin_converts_them() {
        assert_eq!(
            convert(&[
                "example.com:80",
                "EXAMPLE.org:8080",
                "https://x.com:443",
                "self"
            ])
            .unwrap(),
            [
                "http://example.com",
                "https://example.com",
                "http://example.org:8080",
                "https://example.org:8080",
                "http://x.com",
                "https://x.com",
                "http://self",
            ]
        );
        // Spin's own cases.
        for (entry, converted) in [
            ("spin.fermyon.dev", "spin.fermyon.dev"),
            ("http://spin.fermyon.dev/", "spin.fermyon.dev"),
            ("http://spin.fermyon.dev:4444", "spin.fermyon.dev:4444"),
            ("localhost:3001", "localhost:3001"),
            ("192.168.1.1:3002", "192.168.1.1:3002"),
            ("[::1]", "[::1]"),
            ("http://[::1]:8001", "[::1]:8001"),
            // The default port of the URL's scheme, not of the one converted to.
            ("example.com:443", "example.com:443"),
        ] {
            assert_eq!(
                convert(&[entry]).unwrap(),
                [
                    format!("http://{converted}"),
                    format!("https://{converted}")
                ],
                "{entry}"
            );
        }
        assert_eq!(
            convert(&["a.com", ALLOW_ALL]).unwrap(),
            ["http://*:*", "https://*:*", "http://self"]
        );
        assert!(convert(&[]).unwrap().is_empty());
    }

    #[test]
    fn invalid_allowed_http_hosts_are_refused_in_spins_words() {
        for (entry, needle) in [
            ("http://spin.fermyon.dev/a", "contains a path"),
            ("http://spin.fermyon.dev:6666/a/b", "contains a path"),
            (
                "ftp://spin.fermyon.dev",
                "isn't a valid host or host:port string",
            ),
            ("a b", "isn't a valid host or host:port string"),
        ] {
            let e = convert(&["ok.com", entry]).unwrap_err().to_string();
            assert!(
                e.starts_with("One or more allowed_http_hosts entries was invalid:")
                    && e.contains(needle),
                "{entry}: {e}"
            );
        }
    }
}
