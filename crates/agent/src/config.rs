//! The agent's configuration: where the facilitator is, and the wallet key that pays.
//!
//! The key comes from `ESIM402_WALLET_KEY` or a key file (hex, with or without `0x`, surrounding whitespace
//! ignored). It is never printed: [`WalletKey`]'s `Debug` shows only its address.

use std::fmt;
use std::path::{Path, PathBuf};

use esim402_core::x402::exact::address_of;
use k256::ecdsa::SigningKey;

/// The environment variable holding the wallet key.
pub const KEY_ENV: &str = "ESIM402_WALLET_KEY";
/// The facilitator's default URL (`esim402 up`).
pub const DEFAULT_URL: &str = "http://127.0.0.1:3000";

/// Why the configuration is unusable. Messages name the source, never the key.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// Neither the variable nor a key file.
    #[error("no wallet key: set {KEY_ENV} or pass --key-file <file> (a hex secp256k1 private key)")]
    MissingKey,
    /// The key file could not be read.
    #[error("cannot read key file {path}: {source}")]
    KeyFile {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// Not a 32-byte hex secp256k1 key.
    #[error("the wallet key from {0} is not a 32-byte hex secp256k1 private key")]
    BadKey(String),
    /// The facilitator URL is not `http(s)://host[:port]`.
    #[error("facilitator URL {0:?} must look like http://host:port")]
    BadUrl(String),
    /// A user name or password in the URL: it would go to the facilitator as a `Basic` credential with every
    /// request. The URL is shown without them.
    #[error(
        "facilitator URL {0:?} must not carry a user name or password (user@host): the agent sends none; drop it"
    )]
    UserInfo(String),
    /// Plain `http://` to a facilitator off this machine, without the opt-in.
    #[error(
        "refusing plain http:// to {0}: anyone on the path could rewrite what a payment pays for and read the SIMs' access tokens; use https://, or pass --insecure-http (ESIM402_INSECURE_HTTP=1) for a network you trust"
    )]
    PlainHttp(String),
}

/// The wallet's signing key. `Debug` shows its address only.
#[derive(Clone)]
pub struct WalletKey(SigningKey);

impl WalletKey {
    /// Parse a hex key; `source` names where it came from (for the error).
    pub fn parse(hex_key: &str, source: &str) -> Result<Self, ConfigError> {
        let bad = || ConfigError::BadKey(source.to_owned());
        let s = hex_key.trim();
        let s = s.strip_prefix("0x").unwrap_or(s);
        let bytes = hex::decode(s).map_err(|_| bad())?;
        if bytes.len() != 32 {
            return Err(bad());
        }
        SigningKey::from_slice(&bytes).map(Self).map_err(|_| bad())
    }

    /// The key from `env_value` (the variable's value, if set) or else `key_file`.
    pub fn load(env_value: Option<&str>, key_file: Option<&Path>) -> Result<Self, ConfigError> {
        if let Some(path) = key_file {
            let text = std::fs::read_to_string(path).map_err(|source| ConfigError::KeyFile {
                path: path.to_owned(),
                source,
            })?;
            return Self::parse(&text, &path.display().to_string());
        }
        match env_value {
            Some(v) if !v.trim().is_empty() => Self::parse(v, KEY_ENV),
            _ => Err(ConfigError::MissingKey),
        }
    }

    /// The signing key.
    pub fn signing_key(&self) -> &SigningKey {
        &self.0
    }

    /// The wallet's address.
    pub fn address(&self) -> alloy_primitives::Address {
        address_of(self.0.verifying_key())
    }
}

impl fmt::Debug for WalletKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "WalletKey({})", self.address())
    }
}

/// Everything the agent needs, read once at start-up.
#[derive(Debug, Clone)]
pub struct Config {
    /// The facilitator's base URL: its origin as [`Config::origin`] spells it (no trailing slash).
    pub url: String,
    /// The wallet that pays and signs in.
    pub key: WalletKey,
}

impl Config {
    /// A config for `url` (checked) and `key`: `https://`, or plain `http://` to this machine only (loopback).
    pub fn new(url: &str, key: WalletKey) -> Result<Self, ConfigError> {
        Self::build(url, key, false)
    }

    /// [`Config::new`], also accepting plain `http://` to another machine (`--insecure-http`: a network the
    /// operator trusts, e.g. a gateway on a private link).
    pub fn new_insecure_http(url: &str, key: WalletKey) -> Result<Self, ConfigError> {
        Self::build(url, key, true)
    }

    fn build(url: &str, key: WalletKey, insecure_http: bool) -> Result<Self, ConfigError> {
        let url = url.trim_end_matches('/');
        let parsed = reqwest::Url::parse(url).ok();
        // Checked first, and the URL shown without it: it may hold a password.
        let authority = esim402_core::auth::siwx::origin_of(url).map(|(_, a)| a);
        if let Some(p) = &parsed
            && (!p.username().is_empty() || p.password().is_some())
        {
            let mut shown = p.clone();
            let cleared = shown.set_username("").is_ok() && shown.set_password(None).is_ok();
            return Err(ConfigError::UserInfo(if cleared {
                shown.to_string()
            } else {
                "…".into()
            }));
        }
        if parsed.is_none()
            && let Some((_, host)) = authority.and_then(|a| a.rsplit_once('@'))
        {
            return Err(ConfigError::UserInfo(format!("…@{host}")));
        }
        let Some((parsed, origin)) = parsed.zip(bare_origin(url)) else {
            return Err(ConfigError::BadUrl(url.to_owned()));
        };
        // In clear text anyone on the path can rewrite a 402's `payTo` and read the bearer tokens; only a
        // connection that never leaves this machine is safe without TLS.
        if parsed.scheme() == "http" && !insecure_http && !is_loopback(&parsed) {
            return Err(ConfigError::PlainHttp(url.to_owned()));
        }
        // The URL as its origin spells it (`HTTP://LocalHost:80` → `http://localhost`): what requests go to and
        // what a wallet sign-in names is then the very origin tokens and pending payments are bound to.
        Ok(Self { url: origin, key })
    }

    /// The facilitator's origin (`scheme://host[:port]` as the URL standard serialises it: lower case, no
    /// default port, IP addresses in their canonical form): what SIM tokens and pending payments are bound to,
    /// so that they are never sent to another facilitator, whatever spelling of `--url` a command was given.
    pub fn origin(&self) -> String {
        // `url` comes normalised from `Config::new`; one built by hand is normalised here.
        bare_origin(&self.url).unwrap_or_else(|| self.url.to_ascii_lowercase())
    }
}

/// `url`'s origin, normalised as [`Config::origin`], if `url` is a bare `http(s)://host[:port]` (no path,
/// query, fragment or user name); else `None`.
pub fn bare_origin(url: &str) -> Option<String> {
    let bare = esim402_core::auth::siwx::origin_of(url).is_some_and(|(origin, _)| origin == url);
    let parsed = reqwest::Url::parse(url).ok().filter(|p| {
        bare && matches!(p.scheme(), "http" | "https")
            && p.username().is_empty()
            && p.password().is_none()
            && p.host().is_some()
    })?;
    Some(parsed.origin().ascii_serialization())
}

/// Whether `url` names this machine: `localhost` (`localhost.` too), 127.0.0.0/8, `::1` or an IPv4-mapped
/// loopback address (`::ffff:127.0.0.1`).
fn is_loopback(url: &reqwest::Url) -> bool {
    // The URL parser has already normalised the host (lower case, `127.1` → `127.0.0.1`, `[::1]`).
    is_loopback_host(url.host_str().unwrap_or_default())
}

/// Whether `host` (an URL's normalised host: lower case, IPv6 in brackets) names this machine, as
/// [`is_loopback`] says.
pub(crate) fn is_loopback_host(host: &str) -> bool {
    let host = host.trim_start_matches('[').trim_end_matches(']');
    matches!(host, "localhost" | "localhost.")
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.to_canonical().is_loopback())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "tests")]
    use super::*;

    const KEY: &str = "0x2a871d0798f97d79848a013d4936a73bf4cc922c825d33c1cf7073dff6d409c6";

    #[test]
    fn keys_load_from_the_variable_or_a_file_and_never_show() {
        let k = WalletKey::load(Some(KEY), None).unwrap();
        assert_eq!(
            k.address().to_string(),
            "0xa0Ee7A142d267C1f36714E4a8F75612F20a79720"
        );
        let dbg = format!("{k:?}");
        assert!(!dbg.contains("2a871d07"), "{dbg}");
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("key");
        std::fs::write(&file, format!("{}\n", KEY.trim_start_matches("0x"))).unwrap();
        assert_eq!(
            WalletKey::load(None, Some(&file)).unwrap().address(),
            k.address()
        );
    }

    #[test]
    fn missing_or_bad_keys_are_clear_errors_without_the_value() {
        let e = WalletKey::load(None, None).unwrap_err();
        assert!(e.to_string().contains(KEY_ENV), "{e}");
        let e = WalletKey::load(Some("0x1234"), None).unwrap_err();
        assert!(e.to_string().contains(KEY_ENV) && !e.to_string().contains("1234"));
        let e = WalletKey::load(None, Some(Path::new("/nonexistent/key"))).unwrap_err();
        assert!(e.to_string().contains("/nonexistent/key"), "{e}");
        let k = WalletKey::load(Some(KEY), None).unwrap();
        assert!(Config::new("http://127.0.0.1:3000/", k.clone()).is_ok());
        assert!(Config::new("127.0.0.1:3000", k.clone()).is_err());
        assert!(Config::new("http://127.0.0.1:3000/v1", k).is_err());
    }

    /// Plain http:// only to this machine, unless opted in: on the path to another machine a 402's `payTo`
    /// could be rewritten and the bearer tokens read.
    #[test]
    fn plain_http_is_refused_off_this_machine_unless_opted_in() {
        let k = WalletKey::load(Some(KEY), None).unwrap();
        for local in [
            "http://127.0.0.1:3000",
            "http://127.0.0.9:3000",
            "http://localhost:3000",
            "http://LocalHost",
            "http://[::1]:3000",
            // Accepted since: an upper-case scheme, the absolute `localhost.`, IPv4-mapped loopback.
            "HTTP://127.0.0.1:3000",
            "http://localhost.:3000",
            "http://[::ffff:127.0.0.1]:3000",
        ] {
            assert!(Config::new(local, k.clone()).is_ok(), "{local}");
        }
        assert!(Config::new("https://esim.example.com", k.clone()).is_ok());
        for remote in [
            "http://esim.example.com",
            "http://10.0.0.5:3000",
            "http://localhost.example.com:3000",
            "http://[::2]:3000",
            "http://[::ffff:10.0.0.5]:3000",
            "http://localhost..:3000",
        ] {
            let e = Config::new(remote, k.clone()).unwrap_err();
            assert!(matches!(e, ConfigError::PlainHttp(_)), "{remote}: {e}");
            assert!(e.to_string().contains("--insecure-http"), "{e}");
            assert!(
                Config::new_insecure_http(remote, k.clone()).is_ok(),
                "{remote}"
            );
        }
        assert!(
            Config::new_insecure_http("ftp://example.com", k).is_err(),
            "the opt-in is for http:// only"
        );
    }

    /// Tokens and pending payments are bound to the origin, whatever its spelling: the origin is the URL
    /// standard's serialisation (before, the lower-cased string: `https://h:443` and `https://h`, `127.1` and
    /// `127.0.0.1` were different facilitators, and a pending payment was signed again under the other one).
    #[test]
    fn the_origin_is_normalised() {
        let k = WalletKey::load(Some(KEY), None).unwrap();
        for (url, origin) in [
            ("https://ESIM.example.com:443/", "https://esim.example.com"),
            ("https://esim.example.com", "https://esim.example.com"),
            ("HTTP://LocalHost:80", "http://localhost"),
            ("http://127.1:3000", "http://127.0.0.1:3000"),
            ("http://[0:0:0:0:0:0:0:1]:3000", "http://[::1]:3000"),
        ] {
            let c = Config::new(url, k.clone()).unwrap();
            assert_eq!(c.origin(), origin, "{url}");
            assert_eq!(c.url, origin, "requests and sign-ins name it too: {url}");
        }
        let by_hand = Config {
            url: "https://ESIM.example.com:443".into(),
            key: k,
        };
        assert_eq!(by_hand.origin(), "https://esim.example.com");
    }

    /// A user name or password in the URL is refused, and the error does not show them (before, it was taken
    /// and sent to the facilitator as a `Basic` credential).
    #[test]
    fn a_url_with_a_user_name_or_password_is_refused_without_showing_them() {
        let k = WalletKey::load(Some(KEY), None).unwrap();
        for url in [
            "http://user@127.0.0.1:3000",
            "https://user:hunter2@esim.example.com",
            "https://:hunter2@esim.example.com/v1",
            "https://user:hunter 2@esim.example.com",
        ] {
            let e = Config::new_insecure_http(url, k.clone()).unwrap_err();
            let ConfigError::UserInfo(shown) = &e else {
                panic!("{url}: {e}");
            };
            assert!(
                !shown.contains("hunter") && !shown.contains("user"),
                "{shown}"
            );
            assert!(!e.to_string().contains("hunter"), "{e}");
            assert!(e.to_string().contains("user name or password"), "{e}");
        }
    }
}
