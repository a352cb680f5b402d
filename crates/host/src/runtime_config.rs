//! `runtime-config.toml`: which backend serves each key-value store label, in Spin's format.
//!
//! `type = "spin"` is a SQLite file (`path`, default `.spin/sqlite_key_value.db`, relative to the runtime
//! config's folder, as in Spin); `type = "redis"` takes `url`. Without a runtime config, `default` is the
//! SQLite file, as with `spin up`. Unknown sections and store types are errors.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use serde::Deserialize;

/// Where one store lives. Its `Debug` hides a Redis URL's user info (a password).
#[derive(Clone, PartialEq, Eq)]
pub enum StoreConfig {
    /// SQLite file (Spin's `type = "spin"`).
    Sqlite(PathBuf),
    /// Redis server URL.
    Redis(String),
    /// Process memory (tests and `--kv memory`); not a Spin store type.
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
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Raw {
    #[serde(default)]
    key_value_store: BTreeMap<String, RawStore>,
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

impl RuntimeConfig {
    /// Spin's default when no file is given: `default` is SQLite under `<app>/.spin/`.
    pub fn spin_default(app_dir: &Path) -> Self {
        let mut key_value_stores = BTreeMap::new();
        key_value_stores.insert(
            "default".to_owned(),
            StoreConfig::Sqlite(app_dir.join(DEFAULT_SQLITE)),
        );
        Self { key_value_stores }
    }

    /// Read a runtime config file; stores it does not name keep Spin's defaults.
    pub fn load(path: &Path, app_dir: &Path) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read {}", path.display()))?;
        let base = path.parent().unwrap_or(Path::new("."));
        Self::parse(&text, base, app_dir)
            .with_context(|| format!("invalid runtime config {}", path.display()))
    }

    /// Parse runtime config text; relative paths resolve against `base`.
    pub fn parse(text: &str, base: &Path, app_dir: &Path) -> anyhow::Result<Self> {
        let raw: Raw = toml::from_str(text)?;
        let mut cfg = Self::spin_default(app_dir);
        for (label, store) in raw.key_value_store {
            let parsed = match store.kind.as_str() {
                "spin" => {
                    if store.url.is_some() {
                        bail!("key_value_store.{label}: `url` is not valid for type \"spin\"");
                    }
                    StoreConfig::Sqlite(base.join(store.path.as_deref().unwrap_or(DEFAULT_SQLITE)))
                }
                "redis" => {
                    let url = store.url.with_context(|| {
                        format!("key_value_store.{label}: type \"redis\" needs `url`")
                    })?;
                    if !url.starts_with("redis://") && !url.starts_with("rediss://") {
                        bail!("key_value_store.{label}: url must start with redis:// or rediss://");
                    }
                    StoreConfig::Redis(url)
                }
                other => bail!(
                    "key_value_store.{label}: store type {other:?} is not supported (use \"spin\" or \"redis\")"
                ),
            };
            cfg.key_value_stores.insert(label, parsed);
        }
        Ok(cfg)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spin_and_redis_stores() {
        let cfg = RuntimeConfig::parse(
            "[key_value_store.default]\ntype = \"spin\"\npath = \"data/kv.db\"\n[key_value_store.cache]\ntype = \"redis\"\nurl = \"redis://127.0.0.1:6379\"\n",
            Path::new("/etc/app"),
            Path::new("/app"),
        )
        .unwrap();
        assert_eq!(
            cfg.key_value_stores["default"],
            StoreConfig::Sqlite(PathBuf::from("/etc/app/data/kv.db"))
        );
        assert_eq!(
            cfg.key_value_stores["cache"],
            StoreConfig::Redis("redis://127.0.0.1:6379".into())
        );
        let empty = RuntimeConfig::parse("", Path::new("/x"), Path::new("/app")).unwrap();
        assert_eq!(
            empty.key_value_stores["default"],
            StoreConfig::Sqlite(PathBuf::from("/app/.spin/sqlite_key_value.db"))
        );
    }

    /// A Redis URL's password never shows in `Debug` (of the store, or of the load options holding it).
    #[test]
    fn a_redis_password_is_not_shown() {
        let shown = format!(
            "{:?}",
            StoreConfig::Redis("redis://:pAsSwOrD@10.0.0.5:6379/0".into())
        );
        assert_eq!(shown, r#"Redis("redis://…@10.0.0.5:6379/0")"#);
    }

    #[test]
    fn errors_name_the_problem() {
        for (text, needle) in [
            (
                "[key_value_store.default]\ntype = \"azure_cosmos\"\n",
                "not supported",
            ),
            (
                "[key_value_store.default]\ntype = \"redis\"\n",
                "needs `url`",
            ),
            (
                "[key_value_store.default]\ntype = \"redis\"\nurl = \"http://x\"\n",
                "redis://",
            ),
            (
                "[sqlite_database.default]\ntype = \"spin\"\n",
                "unknown field",
            ),
        ] {
            let err = format!(
                "{:#}",
                RuntimeConfig::parse(text, Path::new("/"), Path::new("/")).unwrap_err()
            );
            assert!(err.contains(needle), "{needle}: {err}");
        }
    }
}
