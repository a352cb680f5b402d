//! The simulator's configuration: which operators (SM-DP+ tenants) exist, their profile pools, callbacks and
//! injected faults. Read once at start-up from TOML ([`SimConfig::load`]) or built in ([`SimConfig::default`]);
//! the shape is documented at the crate root and in `sim.example.toml`.

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::ids;

/// Default delay before a released profile is "downloaded" by the simulated device.
pub const DEFAULT_DOWNLOAD_DELAY_MS: u64 = 200;
/// Default delay between download and installation on the simulated device.
pub const DEFAULT_INSTALL_DELAY_MS: u64 = 200;
/// Largest pool (per profile type) accepted from the config or the admin API, to keep memory bounded.
pub const MAX_POOL: u64 = 1_000_000;
/// Longest delay accepted for latencies and device steps (one hour).
pub const MAX_DELAY_MS: u64 = 3_600_000;
/// A `requester_ids` entry that accepts any function requester.
pub const ANY_REQUESTER: &str = "*";

/// The whole simulator configuration.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SimConfig {
    /// Callback URL for operators that set none themselves (`--callback-url` takes precedence over this).
    #[serde(default)]
    pub callback_url: Option<String>,
    /// Operators by name; the name is the first path segment of their ES2+ URLs.
    pub operators: BTreeMap<String, OperatorConfig>,
}

/// One operator's account on the simulated SM-DP+.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OperatorConfig {
    /// The SM-DP+ FQDN returned as `smdpAddress` by ConfirmOrder and used as requester id of callbacks.
    pub smdp_address: String,
    /// Accepted `functionRequesterIdentifier`s (`"*"` accepts any); default `["esim402-<operator>"]`.
    #[serde(default)]
    pub requester_ids: Option<Vec<String>>,
    /// Leading digits of minted ICCIDs (`89…`, at most 16 digits).
    pub iccid_prefix: String,
    /// Profile type → number of Available profiles minted at start-up.
    #[serde(default)]
    pub pools: BTreeMap<String, u64>,
    /// Where to POST `handleDownloadProgressInfo` (a full `http://` URL); overrides `--callback-url`.
    #[serde(default)]
    pub callback_url: Option<String>,
    /// Simulate a device downloading and installing every released profile (default true).
    #[serde(default = "yes")]
    pub auto_download: bool,
    /// Milliseconds from Released to Downloaded.
    #[serde(default = "default_download_delay")]
    pub download_delay_ms: u64,
    /// Milliseconds from Downloaded to Installed.
    #[serde(default = "default_install_delay")]
    pub install_delay_ms: u64,
    /// Faults injected from start-up.
    #[serde(default)]
    pub faults: Faults,
}

fn yes() -> bool {
    true
}
fn default_download_delay() -> u64 {
    DEFAULT_DOWNLOAD_DELAY_MS
}
fn default_install_delay() -> u64 {
    DEFAULT_INSTALL_DELAY_MS
}

/// Faults injected into an operator's ES2+ endpoints (also the body of `PUT /admin/operators/<op>/faults`,
/// where omitted fields reset to their defaults).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Faults {
    /// Extra milliseconds before every answer.
    pub latency_ms: u64,
    /// Answer HTTP 503 to every ES2+ call.
    pub http_503: bool,
    /// Never answer ES2+ calls (the connection is held until the client gives up or the simulator stops).
    pub hang: bool,
    /// Answer HTTP 503 to the next N ES2+ calls, then behave normally.
    pub fail_next: u64,
    /// Execute the call, then hold the reply this many milliseconds: with a shorter client timeout this is a
    /// lost reply (the profile is allocated but the client never learns its ICCID).
    pub reply_delay_ms: u64,
    /// The simulated device stays away: profiles released while set are not downloaded by themselves (as with
    /// `auto_download = false`; the admin `download` and `fail` triggers still act on them).
    pub no_device: bool,
}

impl Faults {
    /// Checks the bounds.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.latency_ms > MAX_DELAY_MS || self.reply_delay_ms > MAX_DELAY_MS {
            return Err(ConfigError::Invalid(format!(
                "latency_ms and reply_delay_ms must be at most {MAX_DELAY_MS}"
            )));
        }
        Ok(())
    }
}

/// Why a configuration was rejected.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The TOML did not match the expected shape.
    #[error("invalid config TOML: {0}")]
    Toml(#[from] toml::de::Error),
    /// A value is out of range or malformed.
    #[error("invalid config: {0}")]
    Invalid(String),
}

/// The built-in operators: name, profile type, ICCID prefix (E.118 `89` + country code + issuer).
const DEFAULT_OPERATORS: [(&str, &str, &str); 5] = [
    ("tmobile", "tmo-iot-data", "8901260"),
    ("verizon", "vzw-iot-data", "8914800"),
    ("att", "att-iot-data", "8901410"),
    ("telekom-de", "tde-iot-data", "8949020"),
    ("vodafone-de", "vfde-iot-data", "8949222"),
];

impl Default for SimConfig {
    /// Five operators (`tmobile`, `verizon`, `att`, `telekom-de`, `vodafone-de`), 1000 profiles each.
    fn default() -> Self {
        let operators = DEFAULT_OPERATORS
            .iter()
            .map(|(name, profile_type, prefix)| {
                let cfg = OperatorConfig {
                    smdp_address: format!("smdp.{name}.esim402.test"),
                    requester_ids: None,
                    iccid_prefix: (*prefix).to_owned(),
                    pools: BTreeMap::from([((*profile_type).to_owned(), 1000)]),
                    callback_url: None,
                    auto_download: true,
                    download_delay_ms: DEFAULT_DOWNLOAD_DELAY_MS,
                    install_delay_ms: DEFAULT_INSTALL_DELAY_MS,
                    faults: Faults::default(),
                };
                ((*name).to_owned(), cfg)
            })
            .collect();
        SimConfig {
            callback_url: None,
            operators,
        }
    }
}

impl SimConfig {
    /// Parses and validates TOML.
    pub fn from_toml_str(text: &str) -> Result<Self, ConfigError> {
        let cfg: SimConfig = toml::from_str(text)?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// Reads, parses and validates a TOML file.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Self::from_toml_str(&text)
    }

    /// Checks every operator; names the offending operator and field.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if let Some(url) = &self.callback_url {
            validate_callback_url(url).map_err(ConfigError::Invalid)?;
        }
        if self.operators.is_empty() {
            return Err(ConfigError::Invalid("no operators configured".into()));
        }
        for (name, op) in &self.operators {
            op.validate(name)
                .map_err(|e| ConfigError::Invalid(format!("operator {name:?}: {e}")))?;
        }
        Ok(())
    }
}

impl OperatorConfig {
    /// The accepted requester ids, applying the `esim402-<operator>` default.
    pub fn effective_requester_ids(&self, name: &str) -> Vec<String> {
        self.requester_ids
            .clone()
            .unwrap_or_else(|| vec![format!("esim402-{name}")])
    }

    fn validate(&self, name: &str) -> Result<(), String> {
        if !valid_operator_name(name) {
            return Err(
                "names are 1-64 of [a-z0-9_-] and must not be \"admin\" or \"health\"".into(),
            );
        }
        if !valid_fqdn(&self.smdp_address) {
            return Err(format!(
                "smdp_address {:?} is not an FQDN (no scheme, port, path or IP literal)",
                self.smdp_address
            ));
        }
        if self.requester_ids.as_ref().is_some_and(Vec::is_empty) {
            return Err("requester_ids is empty (use [\"*\"] to accept any requester)".into());
        }
        if !ids::valid_iccid_prefix(&self.iccid_prefix) {
            return Err(format!(
                "iccid_prefix {:?} must be 2-16 digits starting with 89",
                self.iccid_prefix
            ));
        }
        let capacity = ids::iccid_capacity(&self.iccid_prefix);
        let mut total = 0u64;
        for (profile_type, count) in &self.pools {
            if !valid_profile_type(profile_type) {
                return Err(format!(
                    "profile type {profile_type:?} must be 1-64 of [A-Za-z0-9._-]"
                ));
            }
            if *count > MAX_POOL {
                return Err(format!("pool {profile_type:?} exceeds {MAX_POOL} profiles"));
            }
            total = total.saturating_add(*count);
        }
        if total >= capacity {
            return Err(format!(
                "pools need {total} ICCIDs but prefix {:?} leaves room for {}",
                self.iccid_prefix,
                capacity.saturating_sub(1)
            ));
        }
        if let Some(url) = &self.callback_url {
            validate_callback_url(url)?;
        }
        if self.download_delay_ms > MAX_DELAY_MS || self.install_delay_ms > MAX_DELAY_MS {
            return Err(format!("delays must be at most {MAX_DELAY_MS} ms"));
        }
        self.faults.validate().map_err(|e| e.to_string())
    }
}

/// Operator names become URL path segments.
pub fn valid_operator_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
        && name != "admin"
        && name != "health"
}

/// Profile types appear in admin URL paths.
pub fn valid_profile_type(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

/// An SM-DP+ address as in an activation code: a dotted host name, no IP literal.
pub fn valid_fqdn(host: &str) -> bool {
    let labels: Vec<&str> = host.split('.').collect();
    host.len() <= 253
        && labels.len() >= 2
        && labels.iter().all(|l| {
            (1..=63).contains(&l.len())
                && !l.starts_with('-')
                && !l.ends_with('-')
                && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        })
        // The top-level label of a name is never all digits; this rejects IPv4 literals.
        && labels
            .last()
            .is_some_and(|tld| !tld.bytes().all(|b| b.is_ascii_digit()))
}

/// Callback URLs must be plain `http://` (the simulator has no TLS client; callbacks go to loopback).
pub fn validate_callback_url(url: &str) -> Result<(), String> {
    match url.strip_prefix("http://") {
        Some(rest) if !rest.is_empty() && reqwest::Url::parse(url).is_ok() => Ok(()),
        _ => Err(format!(
            "callback_url {url:?} must be an absolute http:// URL"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_config_is_valid() {
        let cfg = SimConfig::default();
        cfg.validate().unwrap();
        assert_eq!(cfg.operators.len(), 5);
        let tmo = &cfg.operators["tmobile"];
        assert_eq!(tmo.smdp_address, "smdp.tmobile.esim402.test");
        assert_eq!(tmo.effective_requester_ids("tmobile"), ["esim402-tmobile"]);
        assert_eq!(tmo.pools["tmo-iot-data"], 1000);
        assert_eq!(cfg.operators["vodafone-de"].pools["vfde-iot-data"], 1000);
    }

    #[test]
    fn example_file_parses() {
        let cfg = SimConfig::from_toml_str(include_str!("../sim.example.toml")).unwrap();
        assert!(cfg.operators.contains_key("tmobile"));
        assert!(!cfg.operators["tmobile"].faults.hang);
    }

    #[test]
    fn minimal_operator_gets_defaults() {
        let cfg = SimConfig::from_toml_str(
            r#"
            [operators.acme]
            smdp_address = "smdp.acme.example"
            iccid_prefix = "8988200"
            pools = { "acme-data" = 3 }
            "#,
        )
        .unwrap();
        let op = &cfg.operators["acme"];
        assert!(op.auto_download);
        assert_eq!(op.download_delay_ms, DEFAULT_DOWNLOAD_DELAY_MS);
        assert_eq!(op.faults, Faults::default());
        assert_eq!(op.effective_requester_ids("acme"), ["esim402-acme"]);
    }

    #[test]
    fn rejects_bad_values() {
        let base = |extra: &str| {
            format!(
                "[operators.acme]\nsmdp_address = \"smdp.acme.example\"\niccid_prefix = \"8988200\"\n{extra}"
            )
        };
        for (extra, needle) in [
            ("requester_ids = []", "requester_ids"),
            ("callback_url = \"https://x.example/cb\"", "http://"),
            ("pools = { \"a b\" = 1 }", "profile type"),
            ("download_delay_ms = 99999999", "delays"),
            ("unknown = 1", "unknown"),
        ] {
            let err = SimConfig::from_toml_str(&base(extra))
                .unwrap_err()
                .to_string();
            assert!(err.contains(needle), "{extra}: {err}");
        }
        let err = SimConfig::from_toml_str(
            "[operators.acme]\nsmdp_address = \"10.0.0.1\"\niccid_prefix = \"8988200\"\n",
        )
        .unwrap_err();
        assert!(err.to_string().contains("FQDN"), "{err}");
        let err = SimConfig::from_toml_str(
            "[operators.admin]\nsmdp_address = \"a.example\"\niccid_prefix = \"8988200\"\n",
        )
        .unwrap_err();
        assert!(err.to_string().contains("admin"), "{err}");
        let err = SimConfig::from_toml_str(
            "[operators.acme]\nsmdp_address = \"a.example\"\niccid_prefix = \"8912345678901234\"\npools = { p = 500 }\n",
        )
        .unwrap_err();
        assert!(err.to_string().contains("room"), "{err}");
    }

    #[test]
    fn fqdns() {
        assert!(valid_fqdn("smdp.tmobile.esim402.test"));
        assert!(!valid_fqdn("localhost"));
        assert!(!valid_fqdn("127.0.0.1"));
        assert!(!valid_fqdn("smdp.example:443"));
        assert!(!valid_fqdn("https://smdp.example"));
        assert!(!valid_fqdn("-a.example"));
    }
}
