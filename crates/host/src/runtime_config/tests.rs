//! The runtime config as Spin 4.1 reads it (each case tried on the Spin 4.1 binary where it says so).

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

/// Spin's `make_store`: `type = "spin"` without `path` is a store in memory (tried on the Spin 4.1 binary: its
/// count started over after a restart, and no file was written).
#[test]
fn a_spin_store_without_a_path_is_in_memory() {
    let cfg = RuntimeConfig::parse(
        "[key_value_store.cache]\ntype = \"spin\"\n",
        Path::new("/etc/app"),
        Path::new("/app"),
    )
    .unwrap();
    assert_eq!(cfg.key_value_stores["cache"], StoreConfig::Memory);
    // `default` keeps its file.
    assert_eq!(
        cfg.key_value_stores["default"],
        StoreConfig::Sqlite(PathBuf::from("/app/.spin/sqlite_key_value.db"))
    );
}

/// `state_dir` moves the default store to `<state_dir>/sqlite_key_value.db`, relative to the current directory
/// (the Spin 4.1 binary, run with `state_dir = "st"` from another folder than the runtime config's, wrote
/// `<cwd>/st/sqlite_key_value.db`); `""` leaves it in memory. The other keys Spin accepts load.
#[test]
fn state_dir_and_the_keys_spin_accepts() {
    let cwd = std::env::current_dir().unwrap();
    let text = "state_dir = \"st\"\nlog_dir = \"logs\"\n[sqlite_database.default]\ntype = \"spin\"\n\
                [llm_compute]\ntype = \"spin\"\n[[variables_provider]]\ntype = \"env\"\nprefix = \"APP\"\n\
                dotenv_path = \"app.env\"\n[[variables_provider]]\ntype = \"env\"\n";
    let cfg = RuntimeConfig::parse(text, Path::new("/etc/app"), Path::new("/app")).unwrap();
    assert_eq!(
        cfg.key_value_stores["default"],
        StoreConfig::Sqlite(cwd.join("st/sqlite_key_value.db"))
    );
    assert_eq!(
        cfg.variables_providers,
        [
            EnvProvider {
                prefix: Some("APP".into()),
                dotenv_path: Some("app.env".into()),
            },
            EnvProvider::default(),
        ]
    );
    let abs = RuntimeConfig::parse(
        "state_dir = \"/var/lib/app\"\n",
        Path::new("/etc"),
        Path::new("/app"),
    )
    .unwrap();
    assert_eq!(
        abs.key_value_stores["default"],
        StoreConfig::Sqlite(PathBuf::from("/var/lib/app/sqlite_key_value.db"))
    );
    let unset =
        RuntimeConfig::parse("state_dir = \"\"\n", Path::new("/etc"), Path::new("/app")).unwrap();
    assert_eq!(unset.key_value_stores["default"], StoreConfig::Memory);
    // An explicit `default` still wins; the old name of the providers' table is read too.
    let explicit = RuntimeConfig::parse(
        "state_dir = \"st\"\n[key_value_store.default]\ntype = \"spin\"\npath = \"kv.db\"\n[[config_provider]]\ntype = \"env\"\n",
        Path::new("/etc"),
        Path::new("/app"),
    )
    .unwrap();
    assert_eq!(
        explicit.key_value_stores["default"],
        StoreConfig::Sqlite(PathBuf::from("/etc/kv.db"))
    );
    assert_eq!(explicit.variables_providers.len(), 1);
}

/// The URLs this host's Redis client opens: TCP and Unix sockets (Spin's client opens TLS ones too).
#[test]
fn redis_urls_over_tcp_and_unix_sockets() {
    for url in [
        "redis://127.0.0.1:6379",
        "redis://:pw@10.0.0.5:6379/2",
        "redis+unix:///run/redis.sock",
        "unix:///run/redis.sock?db=1",
        "valkey://127.0.0.1",
    ] {
        let text = format!("[key_value_store.default]\ntype = \"redis\"\nurl = \"{url}\"\n");
        let cfg = RuntimeConfig::parse(&text, Path::new("/"), Path::new("/")).unwrap();
        assert_eq!(
            cfg.key_value_stores["default"],
            StoreConfig::Redis(url.into()),
            "{url}"
        );
    }
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
            "[[client_tls]]\ncomponent_ids = [\"a\"]\nhosts = [\"x.com\"]\n",
            "`client_tls` is accepted by Spin but not supported by esim402",
        ),
        (
            "[[variables_provider]]\ntype = \"vault\"\nurl = \"http://v\"\n",
            "\"vault\" is accepted by Spin but not supported by esim402",
        ),
        (
            "[[variables_provider]]\ntype = \"env\"\nbogus = 1\n",
            "unknown field `bogus`",
        ),
        (
            "[[variables_provider]]\ntype = \"env\"\n[[config_provider]]\ntype = \"env\"\n",
            "not both",
        ),
        (
            "[key_value_store.default]\ntype = \"redis\"\nurl = \"rediss://x:6380\"\n",
            "rediss:// (Redis over TLS) is accepted by Spin but not supported by esim402's Redis client",
        ),
        (
            "[key_value_store.default]\ntype = \"aws_dynamo\"\ntable = \"t\"\n",
            "\"aws_dynamo\" is accepted by Spin but not supported by esim402",
        ),
        ("bogus_key = 1\n", "unknown field `bogus_key`"),
    ] {
        let err = format!(
            "{:#}",
            RuntimeConfig::parse(text, Path::new("/"), Path::new("/")).unwrap_err()
        );
        assert!(err.contains(needle), "{needle}: {err}");
    }
}
