//! The Kubernetes example in `deploy/` against the app it deploys: the SpinKube `SpinApp` mirrors every variable
//! of `spin.toml` (secrets only from a Kubernetes Secret, never inline), runs at least two replicas on the Spin
//! shim, and loads a runtime config whose `default` store — the only store the components use — is Redis, in
//! the same text as `deploy/runtime-config.toml`, which this host accepts.

use std::collections::BTreeSet;

use esim402_host::manifest::{Manifest, RouteSpec};
use esim402_host::runtime_config::{RuntimeConfig, StoreConfig};
use esim402_tests::repo_root;
use serde::Deserialize as _;
use serde_json::Value;

/// Every document of `deploy/spinapp.yaml`, as JSON values.
fn documents() -> Vec<Value> {
    let text = std::fs::read_to_string(repo_root().join("deploy/spinapp.yaml")).unwrap();
    serde_yaml_ng::Deserializer::from_str(&text)
        .map(|doc| Value::deserialize(doc).unwrap())
        .collect()
}

fn one<'a>(docs: &'a [Value], kind: &str, name: &str) -> &'a Value {
    let found: Vec<&Value> = docs
        .iter()
        .filter(|d| d["kind"] == kind && d["metadata"]["name"] == name)
        .collect();
    assert_eq!(found.len(), 1, "one {kind} {name} in deploy/spinapp.yaml");
    found[0]
}

#[test]
fn the_spinapp_runs_replicas_on_the_spin_shim() {
    let docs = documents();
    let app = one(&docs, "SpinApp", "esim402");
    assert_eq!(app["apiVersion"], "core.spinkube.dev/v1alpha1");
    let spec = &app["spec"];
    assert_eq!(spec["executor"], "containerd-shim-spin");
    assert!(spec["replicas"].as_u64().unwrap() >= 2, "{spec}");
    let image = spec["image"].as_str().unwrap();
    assert!(
        image.rsplit('/').next().unwrap().contains(':'),
        "a tagged image: {image}"
    );
    // Liveness: the app answers; readiness: every component loads its configuration.
    for (check, path) in [("liveness", "/health"), ("readiness", "/health/ready")] {
        assert_eq!(spec["checks"][check]["httpGet"]["path"], path);
        // A route the app serves.
        let manifest = Manifest::load(&repo_root().join("spin.toml")).unwrap();
        assert!(
            manifest
                .http_triggers
                .iter()
                .any(|t| matches!(&t.route, RouteSpec::Path(p) if p == path)),
            "{path}"
        );
    }
}

#[test]
fn every_variable_is_provided_and_every_secret_comes_from_the_secret() {
    let docs = documents();
    let spec = &one(&docs, "SpinApp", "esim402")["spec"];
    let manifest = Manifest::load(&repo_root().join("spin.toml")).unwrap();
    let mut seen = BTreeSet::new();
    for v in spec["variables"].as_array().unwrap() {
        let name = v["name"].as_str().unwrap();
        assert!(seen.insert(name), "{name} listed twice");
        let decl = manifest
            .variables
            .get(name)
            .unwrap_or_else(|| panic!("{name} is not a variable of spin.toml"));
        let inline = v.get("value");
        let from = &v["valueFrom"]["secretKeyRef"];
        assert!(
            inline.is_some() != from.is_object(),
            "{name}: exactly one of value and valueFrom: {v}"
        );
        if decl.secret {
            assert!(inline.is_none(), "secret {name} is inline");
            assert_eq!(from["name"], "esim402-secrets", "{v}");
            assert_eq!(from["key"], name, "{v}");
        } else {
            assert!(
                inline.unwrap().is_string(),
                "{name}: values are strings: {v}"
            );
        }
    }
    let declared: BTreeSet<&str> = manifest.variables.keys().map(String::as_str).collect();
    assert_eq!(
        seen, declared,
        "the SpinApp mirrors spin.toml's [variables]"
    );
    assert!(
        manifest.variables.values().any(|d| d.secret),
        "spin.toml has secrets to check"
    );
    // The README tells how to create that Secret with every key the SpinApp reads from it.
    let readme = std::fs::read_to_string(repo_root().join("deploy/README.md")).unwrap();
    assert!(readme.contains("create secret generic esim402-secrets"));
    for (name, decl) in &manifest.variables {
        if decl.secret {
            assert!(
                readme.contains(&format!("--from-literal={name}=")),
                "{name}"
            );
        }
    }
}

#[test]
fn the_runtime_config_puts_the_default_store_on_redis() {
    let docs = documents();
    let spec = &one(&docs, "SpinApp", "esim402")["spec"];
    let secret_name = spec["runtimeConfig"]["loadFromSecret"].as_str().unwrap();
    let secret = one(&docs, "Secret", secret_name);
    let embedded = secret["stringData"]["runtime-config.toml"]
        .as_str()
        .unwrap();
    let file = std::fs::read_to_string(repo_root().join("deploy/runtime-config.toml")).unwrap();
    assert_eq!(
        embedded, file,
        "the Secret holds deploy/runtime-config.toml as it is"
    );
    // This host reads it as Spin does: the `default` store on Redis, and nothing else.
    let path = repo_root().join("deploy/runtime-config.toml");
    let rc = RuntimeConfig::load(&path, &repo_root()).unwrap();
    assert_eq!(
        rc.key_value_stores.keys().collect::<Vec<_>>(),
        ["default"],
        "{rc:?}"
    );
    match &rc.key_value_stores["default"] {
        StoreConfig::Redis(url) => assert!(url.starts_with("redis://"), "{url}"),
        other => panic!("the default store must be Redis: {other:?}"),
    }
    // Every store a component uses is defined there.
    let manifest = Manifest::load(&repo_root().join("spin.toml")).unwrap();
    for (id, c) in &manifest.components {
        for label in &c.key_value_stores {
            assert!(rc.key_value_stores.contains_key(label), "{id} uses {label}");
        }
    }
}
