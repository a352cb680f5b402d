//! `spin.toml` (manifest v2): the subset this host runs, read with the same field names and rules as Spin.
//!
//! Unknown keys are refused (Spin refuses them too), and known Spin features this host does not implement
//! (`files`, `sqlite_databases`, `ai_models`, non-HTTP triggers, the Wagi executor, registry/URL dependencies,
//! a trigger's `static_response`, inline components, …) fail with an error naming the key, rather than being
//! silently ignored. What `spin up` itself ignores is read and ignored here too (`targets`, `tool`, build
//! `profile`s, `exclude_files`, a trigger's `id`; [`compat`]), and the deprecated `allowed_http_hosts` is
//! converted as Spin converts it. Names follow Spin's rules ([`crate::ids`]), so a manifest this host accepts is
//! one `spin up` accepts too.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail, ensure};
use serde::Deserialize;

use crate::deps::INHERITABLE;
pub use crate::deps::Inherit;

pub mod compat;

use compat::{ProfileDecl, RawHttpTrigger, TargetRef};

/// A parsed manifest plus the folder it came from (sources and build commands are relative to it).
#[derive(Debug, Clone)]
pub struct Manifest {
    /// Folder holding spin.toml.
    pub dir: PathBuf,
    /// Application name.
    pub name: String,
    /// Application version, if spin.toml gives a non-empty one (`/.well-known/spin/info` shows it).
    pub version: Option<String>,
    /// `[variables]`.
    pub variables: BTreeMap<String, VariableDecl>,
    /// `[[trigger.http]]`.
    pub http_triggers: Vec<HttpTrigger>,
    /// `[component.<id>]`.
    pub components: BTreeMap<String, ComponentDecl>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawManifest {
    spin_manifest_version: u32,
    application: RawApplication,
    #[serde(default)]
    variables: BTreeMap<String, VariableDecl>,
    // Required, as in Spin: a manifest without it fails with "missing field `trigger`".
    trigger: BTreeMap<String, Vec<toml::Table>>,
    #[serde(default)]
    component: BTreeMap<String, ComponentDecl>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawApplication {
    name: String,
    #[serde(default)]
    version: Option<String>,
    #[serde(default)]
    description: Option<String>,
    #[serde(default)]
    authors: Vec<String>,
    /// Deployment targets: ignored by `spin up`, and here.
    #[serde(default)]
    targets: Vec<TargetRef>,
    /// Trigger-wide settings (`[application.trigger.http]`).
    #[serde(default)]
    trigger: BTreeMap<String, toml::Table>,
    /// Settings for other tools: ignored by Spin, and here.
    #[serde(default)]
    tool: BTreeMap<String, toml::Table>,
}

/// An application variable.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VariableDecl {
    /// Default value.
    #[serde(default)]
    pub default: Option<String>,
    /// Start-up fails if no value is provided.
    #[serde(default)]
    pub required: bool,
    /// Never logged.
    #[serde(default)]
    pub secret: bool,
    /// Free text.
    #[serde(default)]
    pub description: Option<String>,
}

/// One `[[trigger.http]]` entry (read from spin.toml as [`compat::RawHttpTrigger`]).
#[derive(Debug, Clone)]
pub struct HttpTrigger {
    /// `"/path"`, `"/prefix/..."`, `"/users/:id"` or `{ private = true }`.
    pub route: RouteSpec,
    /// Component id.
    pub component: String,
    /// `{ type = "spin" }` (or Spin's newer name, `"http"`) or absent: the component exports `wasi:http`. Spin's
    /// other executor, `wagi`, is refused ([`check_executor`]).
    pub executor: Option<toml::Table>,
}

/// A trigger route.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum RouteSpec {
    /// A public route pattern.
    Path(String),
    /// `{ private = true }`: reachable only from other components.
    Private {
        /// Must be true.
        private: bool,
    },
}

/// One `[component.<id>]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ComponentDecl {
    /// Path to the .wasm, relative to the manifest.
    pub source: String,
    #[serde(default)]
    /// Free text.
    pub description: Option<String>,
    /// Component variables, may template app variables.
    #[serde(default)]
    pub variables: BTreeMap<String, String>,
    /// WASI environment variables.
    #[serde(default)]
    pub environment: BTreeMap<String, String>,
    /// Key-value store labels.
    #[serde(default)]
    pub key_value_stores: Vec<String>,
    /// `scheme://host[:port]` patterns (after loading, with `allowed_http_hosts` converted and appended).
    #[serde(default)]
    pub allowed_outbound_hosts: Vec<String>,
    /// Deprecated: converted into `allowed_outbound_hosts` when the manifest loads, as Spin does
    /// ([`compat::allowed_http_to_outbound`]); empty afterwards.
    #[serde(default)]
    pub allowed_http_hosts: Vec<String>,
    /// `spin build` settings.
    #[serde(default)]
    pub build: Option<BuildDecl>,
    /// Spin 3's all-or-nothing flag.
    #[serde(default)]
    pub dependencies_inherit_configuration: Option<bool>,
    /// Imports satisfied by other components.
    #[serde(default)]
    pub dependencies: BTreeMap<String, DependencyDecl>,
    /// Unsupported by this host: refused if non-empty.
    #[serde(default)]
    pub files: Vec<toml::Value>,
    /// Exceptions to `files`: meaningless without it, ignored.
    #[serde(default)]
    pub exclude_files: Vec<String>,
    /// Unsupported by this host: refused if non-empty.
    #[serde(default)]
    pub sqlite_databases: Vec<String>,
    /// Unsupported by this host: refused if non-empty.
    #[serde(default)]
    pub ai_models: Vec<String>,
    /// Ignored by Spin and by us.
    #[serde(default)]
    pub tool: Option<toml::Table>,
    /// Deployment targets (overriding the application's): ignored by `spin up`, and here.
    #[serde(default)]
    pub targets: Option<Vec<TargetRef>>,
    /// Named build profiles' overrides: `spin up` and `spin build` use the default profile unless told
    /// otherwise, and this host has no way to tell it otherwise. Ignored.
    #[serde(default)]
    pub profile: BTreeMap<String, ProfileDecl>,
}

/// `[component.<id>.build]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BuildDecl {
    /// One command or several, run in order through `sh -c`.
    pub command: Commands,
    /// Working directory relative to the manifest.
    #[serde(default)]
    pub workdir: Option<String>,
    /// Globs for `spin watch`.
    #[serde(default)]
    pub watch: Vec<String>,
}

/// One or many commands.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum Commands {
    /// A single command.
    One(String),
    /// Several, in order.
    Many(Vec<String>),
}

impl Commands {
    /// As a list.
    pub fn as_vec(&self) -> Vec<String> {
        match self {
            Self::One(c) => vec![c.clone()],
            Self::Many(cs) => cs.clone(),
        }
    }
}

/// How a dependency import is satisfied (only the local forms are supported here).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DependencyDecl {
    /// Another component of this app.
    #[serde(default)]
    pub component: Option<String>,
    /// A local .wasm file.
    #[serde(default)]
    pub path: Option<String>,
    /// Registry version (unsupported here).
    #[serde(default)]
    pub version: Option<String>,
    /// Registry (unsupported here).
    #[serde(default)]
    pub registry: Option<String>,
    /// Package (unsupported here).
    #[serde(default)]
    pub package: Option<String>,
    /// URL (unsupported here).
    #[serde(default)]
    pub url: Option<String>,
    /// Digest for URL dependencies.
    #[serde(default)]
    pub digest: Option<String>,
    /// Export of the dependency to plug in (defaults to the import name).
    #[serde(default)]
    pub export: Option<String>,
    /// What the dependency may use of the parent's configuration.
    #[serde(default)]
    pub inherit_configuration: Option<Inherit>,
}

/// A route is checked with the router's own parser, so a manifest that loads is one the router serves as written.
fn check_route(route: &str, component: &str) -> anyhow::Result<()> {
    crate::router::Route::parse(route, component).map(drop)
}

/// An HTTP trigger's `executor`, read as Spin reads it (`spin_http::config::HttpExecutorType`: a table tagged by
/// `type`, `"http"` with the alias `"spin"`, or `"wagi"`). Only the `wasi:http` one is served here; serving a Wagi
/// (CGI) component as `wasi:http` would fail on its first request, so it is refused when the manifest loads.
/// Spin 3's `"wasip3-unstable"` (its executor for `wasi:http` 0.3 components) is refused as the Spin 4.1 binary
/// refuses it (tried on it: "unknown variant `wasip3-unstable`"), but naming the fix, since a manifest written
/// for Spin 3 is the likeliest to carry it.
fn check_executor(component: &str, executor: &toml::Table) -> anyhow::Result<()> {
    match executor.get("type") {
        // Spin reads this variant as a unit: any other key in the table is ignored there, and so here.
        Some(toml::Value::String(t)) if t == "spin" || t == "http" => Ok(()),
        Some(toml::Value::String(t)) if t == "wagi" => bail!(
            "the trigger for component {component} has executor \"wagi\" (CGI), which is not supported by \
             esim402: it serves components exporting wasi:http (leave `executor` out, or {{ type = \"spin\" }})"
        ),
        Some(toml::Value::String(t)) if t == "wasip3-unstable" => bail!(
            "the trigger for component {component} has executor \"wasip3-unstable\", Spin 3's for wasi:http 0.3, \
             which Spin 4.1 refuses as unknown; Spin 4.1 serves wasi:http 0.3 components without it: leave \
             `executor` out (or {{ type = \"spin\" }})"
        ),
        Some(toml::Value::String(t)) => bail!(
            "the trigger for component {component} has unknown executor type {t:?} (Spin knows \"spin\", \
             \"http\" and \"wagi\")"
        ),
        _ => bail!(
            "the trigger for component {component} has an executor without a string `type` (e.g. {{ type = \"spin\" }})"
        ),
    }
}

impl Manifest {
    /// Read and validate a manifest file.
    pub fn load(path: &Path) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read {}", path.display()))?;
        let parent = path
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        let dir = parent
            .canonicalize()
            .with_context(|| format!("cannot resolve {}", parent.display()))?;
        Self::parse(&text, dir).with_context(|| format!("invalid manifest {}", path.display()))
    }

    /// Parse and validate manifest text.
    pub fn parse(text: &str, dir: PathBuf) -> anyhow::Result<Self> {
        let mut raw: RawManifest = toml::from_str(text)?;
        ensure!(
            raw.spin_manifest_version == 2,
            "spin_manifest_version must be 2"
        );
        let _ = (
            &raw.application.description,
            &raw.application.authors,
            &raw.application.targets,
            &raw.application.trigger,
            &raw.application.tool,
        );
        // Spin's manifest types refuse these names as it reads them; here they are checked before anything
        // refers to them, naming the rule broken.
        for id in raw.component.keys() {
            crate::ids::kebab(id)
                .with_context(|| format!("component id {id:?} is not kebab-case"))?;
        }
        for name in raw.variables.keys() {
            crate::ids::lower_snake(name)
                .with_context(|| format!("variable name {name:?} is not lower_snake_case"))?;
        }
        let mut http_triggers = Vec::new();
        for (kind, entries) in raw.trigger {
            ensure!(
                kind == "http",
                "trigger type {kind:?} is not supported by this host (only http)"
            );
            for (n, entry) in entries.into_iter().enumerate() {
                let t: RawHttpTrigger =
                    entry.try_into().context("invalid [[trigger.http]] entry")?;
                let t = t.into_trigger(n + 1)?;
                if let RouteSpec::Path(r) = &t.route {
                    check_route(r, &t.component)?;
                }
                if let RouteSpec::Private { private } = &t.route {
                    ensure!(
                        *private,
                        "route = {{ private = false }} is not meaningful; give a path"
                    );
                }
                ensure!(
                    raw.component.contains_key(&t.component),
                    "trigger names unknown component {:?}",
                    t.component
                );
                if let Some(executor) = &t.executor {
                    check_executor(&t.component, executor)?;
                }
                http_triggers.push(t);
            }
        }
        // Spin's words, for `trigger = {}` or `http = []`: otherwise the app would load with nothing to serve.
        ensure!(!http_triggers.is_empty(), "No triggers in app");
        for (id, c) in &mut raw.component {
            if !c.allowed_http_hosts.is_empty() {
                let mut converted = compat::allowed_http_to_outbound(&c.allowed_http_hosts)
                    .with_context(|| format!("component {id}: allowed_http_hosts"))?;
                // `self` (the app calling itself) is refused by this host as an `allowed_outbound_hosts` entry;
                // a legacy manifest naming it (or `insecure:allow-all`) still loads, as under Spin, and its
                // self requests fail when made.
                if converted.iter().any(|e| e == "http://self") {
                    converted.retain(|e| e != "http://self");
                    tracing::warn!(
                        "component {id}: allowed_http_hosts allows `self`, which esim402 does not serve: the \
                         component's requests to its own app will fail"
                    );
                }
                for entry in &converted {
                    crate::outbound::AllowedHost::parse(entry).with_context(|| {
                        format!("component {id}: allowed_http_hosts (converted to {entry:?} as Spin converts it)")
                    })?;
                }
                // Spin's warning (naming the component: Spin prints it without).
                tracing::warn!(
                    "Use of the deprecated field `allowed_http_hosts` - to fix, replace `allowed_http_hosts` with \
                     `allowed_outbound_hosts = {converted:?}` (component {id})"
                );
                c.allowed_outbound_hosts.extend(converted);
                c.allowed_http_hosts.clear();
            }
        }
        for (id, c) in &raw.component {
            ensure!(
                c.files.is_empty(),
                "component {id}: `files` is not supported by this host"
            );
            ensure!(
                c.sqlite_databases.is_empty(),
                "component {id}: `sqlite_databases` is not supported by this host"
            );
            ensure!(
                c.ai_models.is_empty(),
                "component {id}: `ai_models` is not supported by this host"
            );
            // Entries without `{{ variables }}` are checked now (templated ones once their values are known, when
            // the app loads): a Spin-only host such as `self` or `*.spin.internal` fails before anything runs.
            for entry in c
                .allowed_outbound_hosts
                .iter()
                .filter(|e| !e.contains("{{"))
            {
                crate::outbound::AllowedHost::parse(entry)
                    .with_context(|| format!("component {id}: allowed_outbound_hosts"))?;
            }
            for label in &c.key_value_stores {
                // Spin's `key_value_stores` takes either kind of id.
                if crate::ids::kebab(label).is_err() && crate::ids::snake(label).is_err() {
                    bail!(
                        "component {id}: key-value store label {label:?} must be kebab-case or snake_case \
                         (ASCII letters and digits, words joined by '-' or '_')"
                    );
                }
            }
            for (name, template) in &c.variables {
                crate::ids::lower_snake(name).with_context(|| {
                    format!("component {id}: variable name {name:?} is not lower_snake_case")
                })?;
                for var in template_vars(template)? {
                    ensure!(
                        raw.variables.contains_key(&var),
                        "component {id} variable {name} uses undeclared variable {var:?}"
                    );
                }
            }
            crate::deps::validate_names(
                c.dependencies
                    .iter()
                    .map(|(name, dep)| (name.as_str(), dep.export.is_some())),
            )
            .with_context(|| format!("component {id:?} has invalid dependencies"))?;
            for (import, dep) in &c.dependencies {
                ensure!(
                    dep.version.is_none()
                        && dep.registry.is_none()
                        && dep.package.is_none()
                        && dep.url.is_none(),
                    "component {id}: dependency {import:?} must be local ({{ component = \"…\" }} or {{ path = \"…\" }}); registry and URL dependencies need the Spin CLI"
                );
                match (&dep.component, &dep.path) {
                    (Some(other), None) => ensure!(
                        raw.component.contains_key(other),
                        "component {id}: dependency {import:?} names unknown component {other:?}"
                    ),
                    (None, Some(_)) => {}
                    _ => bail!(
                        "component {id}: dependency {import:?} needs exactly one of `component` or `path`"
                    ),
                }
                if let Some(Inherit::Some(keys)) = &dep.inherit_configuration {
                    for k in keys {
                        ensure!(
                            INHERITABLE.iter().any(|(name, _)| name == k),
                            "component {id}: dependency {import:?} inherits unknown configuration key {k:?}"
                        );
                    }
                }
            }
        }
        // Spin's loader refuses a variable with both, and one with neither (even if nothing uses it).
        for (name, v) in &raw.variables {
            ensure!(
                v.required ^ v.default.is_some(),
                "variable {name}: must be `required` OR have a `default`"
            );
        }
        Ok(Self {
            dir,
            name: raw.application.name,
            version: raw.application.version.filter(|v| !v.is_empty()),
            variables: raw.variables,
            http_triggers,
            components: raw.component,
        })
    }

    /// A path in the manifest, resolved against its folder.
    pub fn resolve(&self, rel: &str) -> PathBuf {
        self.dir.join(rel)
    }
}

/// A name a guest may ask `spin:variables` for, or a `{{ name }}` reference, by Spin's rule for variable keys
/// (`spin_expressions::Key::validate`): lowercase ASCII letters, digits and `_`, starting with a letter, ending
/// with a letter or digit, no `__`. (Declared names are held to Spin's stricter manifest rule,
/// [`crate::ids::lower_snake`].)
pub fn is_variable_name(s: &str) -> bool {
    s.starts_with(|c: char| c.is_ascii_lowercase())
        && s.ends_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit())
        && !s.contains("__")
        && s.bytes()
            .all(|b| matches!(b, b'a'..=b'z' | b'0'..=b'9' | b'_'))
}

/// The variable names a `{{ name }}` template refers to.
pub fn template_vars(template: &str) -> anyhow::Result<Vec<String>> {
    let mut out = Vec::new();
    let mut rest = template;
    while let Some(start) = rest.find("{{") {
        let after = &rest[start + 2..];
        let end = after
            .find("}}")
            .with_context(|| format!("unclosed '{{{{' in {template:?}"))?;
        let name = after[..end].trim();
        ensure!(
            is_variable_name(name),
            "invalid variable reference {name:?} in {template:?}"
        );
        out.push(name.to_owned());
        rest = &after[end + 2..];
    }
    Ok(out)
}

/// Expand `{{ name }}` references with `lookup`.
pub fn expand(template: &str, lookup: impl Fn(&str) -> Option<String>) -> anyhow::Result<String> {
    let mut out = String::new();
    let mut rest = template;
    while let Some(start) = rest.find("{{") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let end = after
            .find("}}")
            .with_context(|| format!("unclosed '{{{{' in {template:?}"))?;
        let name = after[..end].trim();
        out.push_str(&lookup(name).with_context(|| format!("variable {name:?} has no value"))?);
        rest = &after[end + 2..];
    }
    out.push_str(rest);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const APP: &str = r#"
spin_manifest_version = 2
[application]
name = "t"
[variables]
host = { default = "127.0.0.1:1" }
key = { required = true, secret = true }
[[trigger.http]]
route = "/a/..."
component = "a"
[[trigger.http]]
route = { private = true }
component = "b"
[component.a]
source = "a.wasm"
allowed_outbound_hosts = ["http://{{ host }}"]
variables = { k = "{{ key }}" }
[component.a.dependencies]
"x:y/z@0.1.0" = { component = "b", inherit_configuration = ["key_value_stores"] }
[component.b]
source = "b.wasm"
"#;

    #[test]
    fn parses_a_spin_manifest() {
        let m = Manifest::parse(APP, PathBuf::from("/app")).unwrap();
        assert_eq!(m.http_triggers.len(), 2);
        assert!(m.variables["key"].secret);
        assert_eq!(m.resolve("a.wasm"), PathBuf::from("/app/a.wasm"));
        let dep = &m.components["a"].dependencies["x:y/z@0.1.0"];
        assert!(
            dep.inherit_configuration
                .as_ref()
                .unwrap()
                .grants("key_value_stores")
        );
        assert!(
            !dep.inherit_configuration
                .as_ref()
                .unwrap()
                .grants("allowed_outbound_hosts")
        );
    }

    #[test]
    fn refuses_what_it_cannot_run() {
        let cases = [
            (
                APP.replace(
                    "source = \"b.wasm\"",
                    "source = \"b.wasm\"\nfiles = [\"x\"]",
                ),
                "files",
            ),
            (
                APP.replace("[component.b]", "[component.b]\nbogus = 1"),
                "bogus",
            ),
            (
                APP.replace("route = \"/a/...\"", "route = \"/a/*/b\""),
                "'*' (a wildcard) may only be the last segment",
            ),
            (
                APP.replace(
                    "component = \"b\", inherit",
                    "component = \"nope\", inherit",
                ),
                "unknown component",
            ),
            (
                APP.replace("[\"key_value_stores\"]", "[\"kv\"]"),
                "unknown configuration key",
            ),
            (
                APP.replace("{{ key }}", "{{ nokey }}"),
                "undeclared variable",
            ),
            (
                APP.replace(
                    "[[trigger.http]]\nroute = \"/a/...\"",
                    "[[trigger.redis]]\nroute = \"/a/...\"",
                ),
                "not supported",
            ),
            (
                APP.replace(
                    "{ required = true, secret = true }",
                    "{ required = true, default = \"x\" }",
                ),
                "must be `required` OR have a `default`",
            ),
        ];
        for (text, needle) in cases {
            let err = format!("{:#}", Manifest::parse(&text, PathBuf::new()).unwrap_err());
            assert!(err.contains(needle), "{needle}: {err}");
        }
    }

    /// What Spin 4.1 accepts but this host does not run is refused naming it, and a manifest Spin refuses is
    /// refused in Spin's words (each tried on the Spin 4.1 binary).
    #[test]
    fn refuses_spin_features_by_name() {
        let first = "route = \"/a/...\"\ncomponent = \"a\"";
        let cases = [
            (
                APP.replace(first, "route = \"/s\"\nstatic_response = { body = \"hi\" }"),
                "trigger http-trigger1: `static_response` is not supported by esim402",
            ),
            (
                APP.replace(
                    first,
                    "id = \"t\"\nroute = \"/x\"\ncomponent = { source = \"x.wasm\" }",
                ),
                "trigger t: an inline component (`component = { source = … }`) is not supported by esim402",
            ),
            (
                APP.replace(first, "route = \"/x\""),
                "Triggers must specify either component or static_response - http-trigger1 has neither",
            ),
            (
                APP.replace(first, &format!("{first}\nbogus = 1")),
                "unknown field `bogus`",
            ),
        ];
        for (text, needle) in cases {
            let err = refusal(&text);
            assert!(err.contains(needle), "{needle}: {err}");
        }
        // No `trigger` at all: serde's error, as Spin's (not, later, an instance pool sized for nothing).
        let none = "spin_manifest_version = 2\n[application]\nname = \"t\"\n[component.a]\nsource = \"a.wasm\"\n";
        assert!(
            refusal(none).contains("missing field `trigger`"),
            "{}",
            refusal(none)
        );
        for empty in ["trigger = {}", "trigger = { http = [] }"] {
            let text = none.replace("[application]", &format!("{empty}\n[application]"));
            assert!(
                refusal(&text).contains("No triggers in app"),
                "{empty}: {}",
                refusal(&text)
            );
        }
    }

    /// What Spin 4.1 accepts and `spin up` ignores loads here too (the manifest below ran under the Spin 4.1
    /// binary); `allowed_http_hosts` is converted as Spin converts it.
    #[test]
    fn accepts_what_spin_accepts_and_ignores() {
        let text = APP
            .replace(
                "[application]\nname = \"t\"",
                "[application]\nname = \"t\"\nversion = \"1.2.3\"\ntargets = [\"spin-up:3.3\", { path = \"env.toml\" }]\n\
                 [application.tool.foo]\nx = 1\n[application.trigger.http]\nbase = \"/\"",
            )
            .replace(
                "route = \"/a/...\"\ncomponent = \"a\"",
                "id = \"my-trigger\"\nroute = \"a/...\"\ncomponent = \"a\"\n\
                 [[trigger.http]]\nroute = \"/dup\"\ncomponent = \"a\"\n[[trigger.http]]\nroute = \"/dup\"\ncomponent = \"b\"",
            )
            .replace(
                "source = \"b.wasm\"",
                "source = \"b.wasm\"\nexclude_files = [\"secrets/*\"]\ntargets = [\"spin-up:3.3\"]\n\
                 allowed_outbound_hosts = [\"https://api.example.com\"]\n\
                 allowed_http_hosts = [\"example.com:80\", \"EXAMPLE.org:8080\"]\n\
                 [component.b.profile.debug]\nsource = \"debug.wasm\"\nenvironment = { A = \"1\" }\n\
                 [component.b.profile.debug.build]\ncommand = \"echo hi\"\n[component.b.tool.bar]\ny = 2",
            );
        let m = Manifest::parse(&text, PathBuf::from("/app")).unwrap();
        assert_eq!(m.version.as_deref(), Some("1.2.3"));
        assert_eq!(m.http_triggers.len(), 4);
        // A route without its leading `/` is Spin's `/a/...`; the duplicate goes to the router, which warns.
        let routes: Vec<(String, String)> = m
            .http_triggers
            .iter()
            .filter_map(|t| match &t.route {
                RouteSpec::Path(p) => Some((p.clone(), t.component.clone())),
                RouteSpec::Private { .. } => None,
            })
            .collect();
        let router = crate::router::Router::new(routes).unwrap();
        assert_eq!(router.find("/a/x").unwrap().route.component, "a");
        assert_eq!(router.find("/dup").unwrap().route.component, "b");
        let b = &m.components["b"];
        assert_eq!(
            b.allowed_outbound_hosts,
            [
                "https://api.example.com",
                "http://example.com",
                "https://example.com",
                "http://example.org:8080",
                "https://example.org:8080",
            ]
        );
        assert!(b.allowed_http_hosts.is_empty());
        // `version = ""` is no version.
        let m = Manifest::parse(
            &APP.replace("name = \"t\"", "name = \"t\"\nversion = \"\""),
            PathBuf::new(),
        )
        .unwrap();
        assert_eq!(m.version, None);
        // `insecure:allow-all` (or `self`) loads as under Spin (a review: it was refused), without the `self`
        // this host does not serve (a warning says so).
        let m = Manifest::parse(
            &APP.replace(
                "source = \"b.wasm\"",
                "source = \"b.wasm\"\nallowed_http_hosts = [\"insecure:allow-all\"]",
            ),
            PathBuf::new(),
        )
        .unwrap();
        assert_eq!(
            m.components["b"].allowed_outbound_hosts,
            ["http://*:*", "https://*:*"]
        );
    }

    /// Spin's `Key::validate` (`keys_good`, `keys_bad`).
    #[test]
    fn variable_names_by_spins_rule() {
        for good in ["a", "abc", "a1b2c3", "a_1", "a_1_b_3"] {
            assert!(is_variable_name(good), "{good}");
        }
        for bad in ["", "aX", "1bc", "_x", "x.y", "x_", "a__b", "x-y"] {
            assert!(!is_variable_name(bad), "{bad}");
        }
    }

    fn refusal(text: &str) -> String {
        format!("{:#}", Manifest::parse(text, PathBuf::new()).unwrap_err())
    }

    #[test]
    fn refuses_names_spin_refuses() {
        let cases = [
            // Component ids: Spin's KebabId (the trigger's reference renamed with it).
            (
                APP.replace("component.b", "component.b_c")
                    .replace("component = \"b\"", "component = \"b_c\""),
                "component id \"b_c\" is not kebab-case",
            ),
            (
                APP.replace("component.b", "component.b-1")
                    .replace("component = \"b\"", "component = \"b-1\""),
                "must start with an ASCII letter",
            ),
            (
                APP.replace("component.b", "component.Bee")
                    .replace("component = \"b\"", "component = \"Bee\""),
                "all lowercase or all UPPERCASE",
            ),
            // Application variables: LowerSnakeId.
            (
                APP.replace("[variables]", "[variables]\na__b = { default = \"x\" }"),
                "variable name \"a__b\" is not lower_snake_case",
            ),
            (
                APP.replace("[variables]", "[variables]\na_ = { default = \"x\" }"),
                "must not be empty",
            ),
            // Neither required nor defaulted (Spin refuses it too, used or not).
            (
                APP.replace("[variables]", "[variables]\nspare = { secret = true }"),
                "must be `required` OR have a `default`",
            ),
            (
                APP.replace("[variables]", "[variables]\na_1 = { default = \"x\" }"),
                "must start with an ASCII letter",
            ),
            // Component variables: LowerSnakeId too.
            (
                APP.replace("variables = { k =", "variables = { k__v ="),
                "component a: variable name \"k__v\" is not lower_snake_case",
            ),
            // Key-value store labels: kebab or snake.
            (
                APP.replace(
                    "source = \"b.wasm\"",
                    "source = \"b.wasm\"\nkey_value_stores = [\"my store\"]",
                ),
                "key-value store label \"my store\" must be kebab-case or snake_case",
            ),
            (
                APP.replace(
                    "source = \"b.wasm\"",
                    "source = \"b.wasm\"\nkey_value_stores = [\"a-1\"]",
                ),
                "must be kebab-case or snake_case",
            ),
        ];
        for (text, needle) in cases {
            let err = refusal(&text);
            assert!(err.contains(needle), "{needle}: {err}");
        }
        // What Spin accepts still loads.
        let fine = APP
            .replace("[variables]", "[variables]\nes2_timeout_ms = { default = \"x\" }")
            .replace(
                "source = \"b.wasm\"",
                "source = \"b.wasm\"\nkey_value_stores = [\"default\", \"my-store\", \"my_store\", \"MY-STORE\"]",
            );
        Manifest::parse(&fine, PathBuf::new()).unwrap();
    }

    #[test]
    fn executors_as_spin_reads_them() {
        let with = |executor: &str| {
            APP.replace(
                "route = \"/a/...\"\ncomponent = \"a\"",
                &format!("route = \"/a/...\"\ncomponent = \"a\"\nexecutor = {executor}"),
            )
        };
        for ok in [
            "{ type = \"spin\" }",
            "{ type = \"http\" }",
            // Spin reads this variant as a unit and ignores the rest of the table.
            "{ type = \"spin\", note = 1 }",
        ] {
            let m = Manifest::parse(&with(ok), PathBuf::new()).unwrap();
            assert!(m.http_triggers[0].executor.is_some(), "{ok}");
        }
        for (bad, needle) in [
            (
                "{ type = \"wagi\" }",
                "executor \"wagi\" (CGI), which is not supported by esim402",
            ),
            ("{ type = \"wagi\", argv = \"${SCRIPT_NAME}\" }", "\"wagi\""),
            ("{ type = \"wasm\" }", "unknown executor type \"wasm\""),
            // Spin 3's for wasi:http 0.3: the Spin 4.1 binary refuses it too (tried: "unknown variant
            // `wasip3-unstable`, expected one of `http`, `spin`, `wagi`"), so it is refused, naming the fix.
            (
                "{ type = \"wasip3-unstable\" }",
                "Spin 4.1 serves wasi:http 0.3 components without it: leave `executor` out",
            ),
            ("{ entrypoint = \"x\" }", "without a string `type`"),
        ] {
            let err = refusal(&with(bad));
            assert!(err.contains(needle), "{bad}: {err}");
        }
    }

    #[test]
    fn refuses_spin_in_process_hosts_before_loading() {
        for (entry, needle) in [
            ("http://self", "self requests are not supported by esim402"),
            (
                "http://self.alt",
                "self requests are not supported by esim402",
            ),
            (
                "http://*.spin.internal",
                "service chaining is not supported by esim402",
            ),
            (
                "http://a.spin.internal",
                "service chaining is not supported by esim402",
            ),
        ] {
            // Refused from the manifest alone, before any component is read or composed.
            let text = APP.replace(
                "source = \"b.wasm\"",
                &format!("source = \"b.wasm\"\nallowed_outbound_hosts = [\"{entry}\"]"),
            );
            let err = refusal(&text);
            assert!(
                err.contains("component b: allowed_outbound_hosts") && err.contains(needle),
                "{entry}: {err}"
            );
        }
    }

    #[test]
    fn the_shipped_manifest_loads() {
        // The rules above must not refuse the app this repository ships.
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../spin.toml");
        let m = Manifest::load(&path).unwrap();
        assert!(m.components.contains_key("gateway"));
    }

    #[test]
    fn templates_expand() {
        assert_eq!(
            template_vars("http://{{ a }}:{{b}}").unwrap(),
            vec!["a", "b"]
        );
        assert_eq!(expand("x{{ a }}y", |_| Some("1".into())).unwrap(), "x1y");
        assert!(expand("{{ a }}", |_| None).is_err());
        assert!(template_vars("{{ A }}").is_err());
        assert!(template_vars("{{ a").is_err());
    }
}
