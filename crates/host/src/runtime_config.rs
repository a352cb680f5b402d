//! `runtime-config.toml`, in Spin's format: which backend serves each key-value store label, where the default
//! store lives, and where variables come from.
//!
//! Read as Spin 4.1 reads it (`spin_runtime_config`, `spin_key_value_spin`):
//! - `[key_value_store.<label>]` `type = "spin"` is a SQLite file at `path` (relative to the runtime config's
//!   folder), or, without `path`, a store in memory that starts empty on every start; `type = "redis"` takes
//!   `url` (`redis://`, `redis+unix://`, `unix://`, and the `valkey` spellings; not `rediss://`, TLS, which this
//!   host's Redis client lacks).
//! - `default`, unless configured, is `<state_dir>/sqlite_key_value.db`: `state_dir` relative to the current
//!   directory, `.spin` in the app's folder when not given (also without a runtime config), and the store in
//!   memory when `state_dir = ""`.
//! - `[[variables_provider]]` (or its old name `[[config_provider]]`) of `type = "env"`
//!   ([`EnvProvider`], which `crate::variables` asks first).
//! - Ignored, as nothing this host runs could use them: `log_dir` (component output goes to the host's own
//!   stdout and stderr), `[sqlite_database.*]` and `[llm_compute]` (spin.toml's `sqlite_databases` and
//!   `ai_models` are refused).
//! - Refused by name: `[[client_tls]]`, other variables providers (`static`, `vault`, `azure_key_vault`) and
//!   store types; any other key is refused as unknown, as Spin refuses an unused one.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, anyhow, bail, ensure};
use serde::Deserialize;

/// A runtime config's `[[variables_provider]]` of `type = "env"` (Spin's `EnvVariablesConfig`): variable
/// `name` is `<prefix>_<NAME>` in the environment, then in the `dotenv_path` file if it gives one (relative
/// to the current directory; a missing file holds nothing).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EnvProvider {
    /// Default `SPIN_VARIABLE`.
    pub prefix: Option<String>,
    /// No file when absent (unlike the default provider's `.env`).
    pub dotenv_path: Option<PathBuf>,
}

impl EnvProvider {
    /// Spin's `get_sync`: `{prefix}_{NAME}`, the prefix joined with `_` whatever it is.
    pub(crate) fn key(&self, name: &str) -> String {
        let prefix = self.prefix.as_deref().unwrap_or("SPIN_VARIABLE");
        format!("{prefix}_{}", name.to_ascii_uppercase())
    }
}

/// Where one store lives. Its `Debug` hides a Redis URL's user info (a password).
#[derive(Clone, PartialEq, Eq)]
pub enum StoreConfig {
    /// SQLite file (Spin's `type = "spin"`).
    Sqlite(PathBuf),
    /// Redis server URL.
    Redis(String),
    /// Process memory: Spin's `type = "spin"` without a `path` (an in-memory SQLite database in Spin; the
    /// memory store keeps counters as it does), `state_dir = ""`, or `--memory-kv`.
    Memory,
}

impl std::fmt::Debug for StoreConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Sqlite(p) => f.debug_tuple("Sqlite").field(p).finish(),
            Self::Redis(url) => {
                let shown = match (url.split_once("://"), url.rfind('@')) {
                    (Some((scheme, _)), Some(at)) => format!("{scheme}://…@{}", &url[at + 1..]),
                    _ => url.clone(),
                };
                f.debug_tuple("Redis").field(&shown).finish()
            }
            Self::Memory => f.write_str("Memory"),
        }
    }
}

/// Parsed runtime configuration.
#[derive(Debug, Clone, Default)]
pub struct RuntimeConfig {
    /// Label → backend.
    pub key_value_stores: BTreeMap<String, StoreConfig>,
    /// `[[variables_provider]]`s, asked in order before the default one.
    pub variables_providers: Vec<EnvProvider>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Raw {
    #[serde(default)]
    state_dir: Option<String>,
    #[serde(default)]
    log_dir: Option<String>,
    #[serde(default)]
    key_value_store: BTreeMap<String, toml::Table>,
    #[serde(default)]
    variables_provider: Option<Vec<toml::Table>>,
    #[serde(default)]
    config_provider: Option<Vec<toml::Table>>,
    #[serde(default)]
    sqlite_database: Option<toml::Value>,
    #[serde(default)]
    llm_compute: Option<toml::Value>,
    #[serde(default)]
    client_tls: Option<toml::Value>,
}

/// Spin's `EnvVariablesConfig`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawEnvProvider {
    #[serde(default)]
    prefix: Option<String>,
    #[serde(default)]
    dotenv_path: Option<PathBuf>,
}

/// One `[[variables_provider]]`: `env` is served, Spin's other types are refused by name.
fn variables_provider(mut table: toml::Table) -> anyhow::Result<EnvProvider> {
    let kind = match table.remove("type") {
        Some(toml::Value::String(kind)) => kind,
        _ => bail!("a variables provider needs a string `type` (e.g. \"env\")"),
    };
    match kind.as_str() {
        "env" => {
            let raw: RawEnvProvider = toml::Value::Table(table)
                .try_into()
                .context("variables provider of type \"env\"")?;
            Ok(EnvProvider {
                prefix: raw.prefix,
                dotenv_path: raw.dotenv_path,
            })
        }
        "static" | "vault" | "open_bao" | "azure_key_vault" => bail!(
            "variables provider type {kind:?} is accepted by Spin but not supported by esim402 (it serves \"env\")"
        ),
        other => bail!("unknown variables provider type {other:?}"),
    }
}

/// Why a store type other than `spin` and `redis` is refused.
fn store_type_refused(label: &str, kind: &str) -> anyhow::Error {
    match kind {
        "" => anyhow!("key_value_store.{label}: needs a string `type` (\"spin\" or \"redis\")"),
        "azure_cosmos" | "aws_dynamo" => anyhow!(
            "key_value_store.{label}: store type {kind:?} is accepted by Spin but not supported by esim402 (use \
             \"spin\" or \"redis\")"
        ),
        _ => anyhow!(
            "key_value_store.{label}: store type {kind:?} is not supported (use \"spin\" or \"redis\")"
        ),
    }
}

/// A Redis URL this host's client can use, checked as it will be read (the client's own errors quote no URL,
/// so no password reaches a log).
fn check_redis_url(label: &str, url: &str) -> anyhow::Result<()> {
    let scheme = url.split_once("://").map_or("", |(s, _)| s);
    if matches!(scheme, "rediss" | "valkeys") {
        bail!(
            "key_value_store.{label}: {scheme}:// (Redis over TLS) is accepted by Spin but not supported by \
             esim402's Redis client; use redis:// (or redis+unix://)"
        );
    }
    ensure!(
        matches!(
            scheme,
            "redis" | "valkey" | "redis+unix" | "valkey+unix" | "unix"
        ),
        "key_value_store.{label}: url must start with redis://, redis+unix:// or unix://"
    );
    redis::IntoConnectionInfo::into_connection_info(url)
        .map(drop)
        .map_err(|e| anyhow::anyhow!("key_value_store.{label}: invalid Redis url: {e}"))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawStore {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    path: Option<String>,
    #[serde(default)]
    url: Option<String>,
}

/// Spin's default location of the default store, relative to the app folder.
pub const DEFAULT_SQLITE: &str = ".spin/sqlite_key_value.db";

/// The default store's file name in the state directory.
const DEFAULT_STORE_FILE: &str = "sqlite_key_value.db";

impl RuntimeConfig {
    /// Spin's default when no file is given: `default` is SQLite under `<app>/.spin/`.
    pub fn spin_default(app_dir: &Path) -> Self {
        let mut key_value_stores = BTreeMap::new();
        key_value_stores.insert(
            "default".to_owned(),
            StoreConfig::Sqlite(app_dir.join(DEFAULT_SQLITE)),
        );
        Self {
            key_value_stores,
            variables_providers: Vec::new(),
        }
    }

    /// Read a runtime config file; stores it does not name keep Spin's defaults.
    pub fn load(path: &Path, app_dir: &Path) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read {}", path.display()))?;
        let base = path.parent().unwrap_or(Path::new("."));
        Self::parse(&text, base, app_dir)
            .with_context(|| format!("invalid runtime config {}", path.display()))
    }

    /// Parse runtime config text; relative store paths resolve against `base` (the runtime config's folder),
    /// a relative `state_dir` against the current directory (as Spin's `std::path::absolute`).
    pub fn parse(text: &str, base: &Path, app_dir: &Path) -> anyhow::Result<Self> {
        let raw: Raw = toml::from_str(text)?;
        let mut cfg = Self::spin_default(app_dir);
        match raw.state_dir.as_deref() {
            None => {}
            // Spin's "unset" state directory: the default store has no file.
            Some("") => {
                cfg.key_value_stores
                    .insert("default".to_owned(), StoreConfig::Memory);
            }
            Some(dir) => {
                let dir = std::path::absolute(dir)
                    .with_context(|| format!("state_dir {dir:?} cannot be resolved"))?;
                cfg.key_value_stores.insert(
                    "default".to_owned(),
                    StoreConfig::Sqlite(dir.join(DEFAULT_STORE_FILE)),
                );
            }
        }
        if raw.log_dir.is_some() {
            tracing::info!(
                "runtime config: log_dir ignored (component output goes to esim402's stdout and stderr)"
            );
        }
        for (key, present) in [
            ("sqlite_database", raw.sqlite_database.is_some()),
            ("llm_compute", raw.llm_compute.is_some()),
        ] {
            if present {
                tracing::warn!(
                    "runtime config: {key} ignored (no component esim402 runs can use it: spin.toml's \
                     sqlite_databases and ai_models are not supported)"
                );
            }
        }
        if raw.client_tls.is_some() {
            bail!(
                "`client_tls` is accepted by Spin but not supported by esim402 (its outbound HTTPS has no \
                 per-host client certificates or CA roots)"
            );
        }
        let providers = match (raw.variables_provider, raw.config_provider) {
            (Some(_), Some(_)) => bail!(
                "give `variables_provider` or its old name `config_provider`, not both (Spin reads only the first)"
            ),
            (Some(p), None) | (None, Some(p)) => p,
            (None, None) => Vec::new(),
        };
        cfg.variables_providers = providers
            .into_iter()
            .map(variables_provider)
            .collect::<anyhow::Result<_>>()?;
        for (label, table) in raw.key_value_store {
            // The type first: another store type's settings are not this host's to check.
            let kind = table
                .get("type")
                .and_then(toml::Value::as_str)
                .unwrap_or("");
            if !matches!(kind, "spin" | "redis") {
                return Err(store_type_refused(&label, kind));
            }
            let store: RawStore = toml::Value::Table(table)
                .try_into()
                .with_context(|| format!("key_value_store.{label}"))?;
            let parsed = match store.kind.as_str() {
                "spin" => {
                    if store.url.is_some() {
                        bail!("key_value_store.{label}: `url` is not valid for type \"spin\"");
                    }
                    // Spin's `make_store`: no path, no file (`DatabaseLocation::InMemory`, SQLite in memory: the
                    // memory store encodes counters as SQLite does).
                    match store.path {
                        Some(path) => StoreConfig::Sqlite(base.join(path)),
                        None => StoreConfig::Memory,
                    }
                }
                "redis" => {
                    let url = store.url.with_context(|| {
                        format!("key_value_store.{label}: type \"redis\" needs `url`")
                    })?;
                    check_redis_url(&label, &url)?;
                    StoreConfig::Redis(url)
                }
                other => return Err(store_type_refused(&label, other)),
            };
            cfg.key_value_stores.insert(label, parsed);
        }
        Ok(cfg)
    }
}

#[cfg(test)]
mod tests;
