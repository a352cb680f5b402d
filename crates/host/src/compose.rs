//! Component dependencies, composed at load time with wac-graph as Spin does: each dependency's export is
//! plugged into the matching import of the dependent component, and everything left unsatisfied becomes an
//! import of the composite (served by this host).
//!
//! Least privilege: a dependency may use a host capability (key-value, variables, outbound network, …) only if
//! its `inherit_configuration` grants the corresponding configuration key. Spin enforces this by plugging a
//! deny-all adapter into such imports; this host refuses to load the application instead, naming the
//! dependency, the import and the key to grant — the same guarantee, reported before the first request.

use std::collections::BTreeMap;

use anyhow::{Context, anyhow, bail};
use wac_graph::types::Package;
use wac_graph::{CompositionGraph, EncodeOptions, NodeId};

use crate::manifest::{INHERITABLE, Inherit};

/// One dependency to plug in.
pub struct Dependency<'a> {
    /// Its name as the manifest spells it (the key under `[component.<id>.dependencies]`), e.g.
    /// `esim402:invoices/invoices@0.1.0`, or a whole package (`esim402:invoices`), or a plain name.
    pub name: &'a str,
    /// The dependency's export to use (defaults to the import it satisfies).
    pub export: Option<&'a str>,
    /// Its wasm bytes.
    pub bytes: Vec<u8>,
    /// Where it comes from (a component id or a path), for messages.
    pub source: String,
    /// What it inherits.
    pub inherit: Inherit,
}

/// A dependency name, parsed as Spin parses it (`spin_serde::DependencyName`): a package spec
/// (`ns:pkg[/interface][@version]`) or a plain kebab name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DependencyName {
    /// `foo-bar`.
    Plain(String),
    /// `foo:bar/baz@0.1.0`, `foo:bar/baz`, `foo:bar@0.1.0`, `foo:bar`.
    Package {
        /// `namespace:name`, without version.
        package: String,
        /// The interface, if named.
        interface: Option<String>,
        /// The version, if named.
        version: Option<String>,
    },
}

impl DependencyName {
    /// Parse a manifest key.
    pub fn parse(s: &str) -> anyhow::Result<Self> {
        if !s.contains([':', '/']) {
            return Ok(Self::Plain(s.to_owned()));
        }
        let (name, version) = match s.split_once('@') {
            Some((n, v)) => (n, Some(v.to_owned())),
            None => (s, None),
        };
        let (package, interface) = match name.split_once('/') {
            Some((p, i)) => (p, Some(i.to_owned())),
            None => (name, None),
        };
        if package.split(':').count() != 2 || package.split(':').any(str::is_empty) {
            bail!(
                "invalid dependency name {s:?}: expected `namespace:package[/interface][@version]`"
            );
        }
        if let Some(v) = &version {
            semver::Version::parse(v)
                .with_context(|| format!("invalid version in dependency name {s:?}"))?;
        }
        Ok(Self::Package {
            package: package.to_owned(),
            interface,
            version,
        })
    }

    /// The name Spin registers the dependency under in its composition graph: the package (`ns:pkg`) of a
    /// package spec, else the plain name. Two dependencies with one registration name cannot be composed.
    pub fn registration_name(&self) -> &str {
        match self {
            Self::Plain(n) => n,
            Self::Package { package, .. } => package,
        }
    }

    /// Whether this name satisfies the import `import` (Spin's `matches_import`): plain names match equal plain
    /// imports; a package spec matches every import of its package, narrowed by interface and version when
    /// named.
    pub fn matches(&self, import: &str) -> bool {
        let import_is_package = import.contains([':', '/']);
        match self {
            Self::Plain(n) => !import_is_package && n == import,
            Self::Package {
                package,
                interface,
                version,
            } => {
                if !import_is_package {
                    return false;
                }
                let (path, import_version) = match import.split_once('@') {
                    Some((p, v)) => (p, Some(v)),
                    None => (import, None),
                };
                let Some((import_package, import_interface)) = path.split_once('/') else {
                    return false;
                };
                import_package == package
                    && interface.as_deref().is_none_or(|i| i == import_interface)
                    && version.as_deref().is_none_or(|v| Some(v) == import_version)
            }
        }
    }
}

/// Spin's manifest checks on one component's dependency names (`spin_manifest`'s
/// `ComponentDependencies::validate`, run when the manifest loads, before anything is composed): a package
/// spec without an interface may not pick an export, and two specs of one package must differ in interface or
/// in (semver-compatible) version. `names` pairs each name with whether it sets `export`.
pub fn validate_names<'a>(names: impl IntoIterator<Item = (&'a str, bool)>) -> anyhow::Result<()> {
    let parsed: Vec<(DependencyName, &str)> = names
        .into_iter()
        .map(|(n, export)| {
            let d = DependencyName::parse(n)?;
            if export && matches!(&d, DependencyName::Package { interface: None, .. }) {
                bail!(
                    "using an export to satisfy the package dependency {n:?} is not currently permitted"
                );
            }
            Ok((d, n))
        })
        .collect::<anyhow::Result<_>>()?;
    for (i, (this, this_name)) in parsed.iter().enumerate() {
        for (other, other_name) in &parsed[i + 1..] {
            let (
                DependencyName::Package {
                    package: p1,
                    interface: i1,
                    version: v1,
                },
                DependencyName::Package {
                    package: p2,
                    interface: i2,
                    version: v2,
                },
            ) = (this, other)
            else {
                continue;
            };
            if p1 != p2 {
                continue;
            }
            let versions_differ = match (v1, v2) {
                (Some(a), Some(b)) => compatible(a) != compatible(b),
                _ => false,
            };
            let interfaces_differ = matches!((i1, i2), (Some(a), Some(b)) if a != b);
            if !versions_differ && !interfaces_differ {
                bail!("dependency {this_name:?} conflicts with {other_name:?}");
            }
        }
    }
    Ok(())
}

/// A version reduced to what semver compatibility compares (`1.2.3` → `1.0.0`, `0.2.3` → `0.2.0`).
fn compatible(v: &str) -> Option<semver::Version> {
    let mut v = semver::Version::parse(v).ok()?;
    v.build = semver::BuildMetadata::EMPTY;
    if v.pre.is_empty() {
        if v.major > 0 {
            (v.minor, v.patch) = (0, 0);
        } else if v.minor > 0 {
            v.patch = 0;
        }
    }
    Some(v)
}

/// The configuration key that governs a host import, if any.
pub fn capability_key(import: &str) -> Option<&'static str> {
    INHERITABLE
        .iter()
        .find(|(_, prefixes)| prefixes.iter().any(|p| import.starts_with(p)))
        .map(|(k, _)| *k)
}

/// Spin's wording for a failure while registering dependencies.
const PREPARE_ERROR: &str = "an error occurred when preparing dependencies";

/// Compose `main` (component `main_name`) with its dependencies; returns the composite's bytes. Refuses what
/// Spin refuses, with Spin's messages (`spin_compose::ComposeError`), under Spin's heading:
/// `failed to resolve dependencies for component "<id>"`.
pub fn compose(main_name: &str, main: &[u8], deps: Vec<Dependency<'_>>) -> anyhow::Result<Vec<u8>> {
    compose_inner(main_name, main, deps)
        .with_context(|| format!("failed to resolve dependencies for component {main_name:?}"))
}

struct Registered {
    name: String,
    instance: NodeId,
    world: wac_graph::types::WorldId,
    export: Option<String>,
}

fn compose_inner(
    main_name: &str,
    main: &[u8],
    deps: Vec<Dependency<'_>>,
) -> anyhow::Result<Vec<u8>> {
    let mut graph = CompositionGraph::new();
    let main_pkg = Package::from_bytes(main_name, None, main.to_vec(), graph.types_mut())
        .with_context(|| format!("component {main_name} is not a valid component"))
        .context(PREPARE_ERROR)?;
    let main_world_id = main_pkg.ty();
    let main_world = &graph.types()[main_world_id];
    let main_imports: Vec<String> = main_world.imports.keys().cloned().collect();
    let main_exports: Vec<String> = main_world.exports.keys().cloned().collect();
    let main_id = graph.register_package(main_pkg).context(PREPARE_ERROR)?;
    let main_inst = graph.instantiate(main_id);

    // Match each dependency name to the imports it satisfies, and register it as Spin does: under its
    // package name, so two dependencies from one package collide.
    let mut by_import: BTreeMap<String, Vec<usize>> = BTreeMap::new();
    let mut registered = Vec::new();
    for dep in deps {
        let name = DependencyName::parse(dep.name).context(PREPARE_ERROR)?;
        let matched: Vec<&String> = main_imports.iter().filter(|i| name.matches(i)).collect();
        if matched.is_empty() {
            bail!(
                "dependency '{}' doesn't match any imports of component '{main_name}'",
                dep.name
            );
        }
        let pkg = Package::from_bytes(name.registration_name(), None, dep.bytes, graph.types_mut())
            .with_context(|| {
                format!(
                    "dependency {} ({}) is not a valid component",
                    dep.name, dep.source
                )
            })
            .context(PREPARE_ERROR)?;
        let world = pkg.ty();
        // Least privilege, checked at load: Spin would plug a deny-all adapter into such an import; this host
        // refuses to start instead, naming what to grant.
        for import in graph.types()[world].imports.keys() {
            if let Some(key) = capability_key(import)
                && !dep.inherit.grants(key)
            {
                bail!(
                    "dependency {} ({}) imports {import:?}, which needs `{key}`: add it to inherit_configuration of {:?}",
                    dep.name,
                    dep.source,
                    dep.name
                );
            }
        }
        let id = graph
            .register_package(pkg)
            .map_err(|e| anyhow!(e))
            .context(PREPARE_ERROR)?;
        let instance = graph.instantiate(id);
        for import in matched {
            by_import
                .entry(import.clone())
                .or_default()
                .push(registered.len());
        }
        registered.push(Registered {
            name: dep.name.to_owned(),
            instance,
            world,
            export: dep.export.map(str::to_owned),
        });
    }
    let conflicts: Vec<String> = by_import
        .iter()
        .filter(|(_, deps)| deps.len() > 1)
        .map(|(import, deps)| {
            let names: Vec<&str> = deps.iter().map(|&d| registered[d].name.as_str()).collect();
            format!(
                "import '{import}' satisfied by dependencies: '{}'",
                names.join(", ")
            )
        })
        .collect();
    if !conflicts.is_empty() {
        bail!(
            "component '{main_name}' has dependency conflicts: {}",
            conflicts.join("; ")
        );
    }
    for (import, deps) in &by_import {
        let dep = &registered[deps[0]];
        let export = dep.export.clone().unwrap_or_else(|| import.clone());
        if !graph.types()[dep.world].exports.contains_key(&export) {
            bail!(
                "dependency '{}' doesn't export '{export}' to satisfy import '{import}'",
                dep.name
            );
        }
        let node = graph
            .alias_instance_export(dep.instance, &export)
            .map_err(|e| anyhow!(e))
            .context(PREPARE_ERROR)?;
        graph
            .set_instantiation_argument(main_inst, import, node)
            .with_context(|| {
                format!(
                    "dependency '{}' exports '{export}' which is not compatible with import '{import}'",
                    dep.name
                )
            })
            .context(PREPARE_ERROR)?;
    }
    for export in main_exports {
        let node = graph.alias_instance_export(main_inst, &export)?;
        graph.export(node, &export)?;
    }
    graph
        .encode(EncodeOptions {
            define_components: true,
            validate: true,
            ..Default::default()
        })
        .map_err(|e| anyhow!("failed to encode composition graph: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dependency_names_match_imports_as_in_spin() {
        let ok = [
            ("foo:bar/baz@0.1.0", vec!["foo:bar/baz@0.1.0"]),
            ("foo:bar/baz", vec!["foo:bar/baz@0.1.0", "foo:bar/baz"]),
            ("foo:bar", vec!["foo:bar/baz@0.1.0", "foo:bar/baz"]),
            ("foo:bar@0.1.0", vec!["foo:bar/baz@0.1.0"]),
            ("foo-bar", vec!["foo-bar"]),
        ];
        for (dep, imports) in ok {
            let d = DependencyName::parse(dep).unwrap();
            for i in imports {
                assert!(d.matches(i), "{dep} should match {i}");
            }
        }
        let not = [
            ("foo:bar/baz@0.1.0", vec!["foo:bar/baz"]),
            ("foo:bar/baz", vec!["foo:bar/bub", "foo:bar/bub@0.1.0"]),
            ("foo:bar", vec!["foo:bub/bib"]),
            ("foo:bar@0.1.0", vec!["foo:bar/baz"]),
            ("foo:bar/baz", vec!["foo:bar/baz-bub", "foo-bar"]),
        ];
        for (dep, imports) in not {
            let d = DependencyName::parse(dep).unwrap();
            for i in imports {
                assert!(!d.matches(i), "{dep} should not match {i}");
            }
        }
        // Spin registers dependencies by package: these two collide, these two do not.
        let a = DependencyName::parse("esim402:facilitator/invoices@0.1.0").unwrap();
        let b = DependencyName::parse("esim402:facilitator/verifier@0.1.0").unwrap();
        assert_eq!(a.registration_name(), b.registration_name());
        let c = DependencyName::parse("esim402:invoices/invoices@0.1.0").unwrap();
        let d = DependencyName::parse("esim402:verifier/verifier@0.1.0").unwrap();
        assert_ne!(c.registration_name(), d.registration_name());
        assert!(DependencyName::parse("esim402/x").is_err());
    }

    #[test]
    fn manifest_checks_refuse_overlapping_names_as_spin_does() {
        // Spin's own cases: one package twice with the same interface or compatible versions conflicts.
        for (a, b) in [
            ("esim402:metering/metering@0.1.0", "esim402:metering"),
            ("foo:bar/baz@0.1.0", "foo:bar/baz@0.1.9"),
            ("foo:bar@1.0.0", "foo:bar@1.2.0"),
        ] {
            let e = validate_names([(a, false), (b, false)]).unwrap_err();
            assert!(e.to_string().contains("conflicts with"), "{a} + {b}: {e}");
        }
        // Different interfaces (the old single-package layout passes here and fails at composition) or
        // incompatible versions are disjoint.
        validate_names([
            ("esim402:facilitator/invoices@0.1.0", false),
            ("esim402:facilitator/verifier@0.1.0", false),
        ])
        .unwrap();
        validate_names([("foo:bar@0.1.0", false), ("foo:bar@0.2.0", false)]).unwrap();
        validate_names([("foo:bar/baz", true)]).unwrap();
        let e = validate_names([("foo:bar", true)]).unwrap_err();
        assert!(e.to_string().contains("not currently permitted"), "{e}");
        assert!(validate_names([("foo:bar@one", false)]).is_err());
    }

    #[test]
    fn capability_keys() {
        assert_eq!(
            capability_key("spin:key-value/key-value@3.0.0"),
            Some("key_value_stores")
        );
        assert_eq!(
            capability_key("wasi:keyvalue/atomics@0.2.0-draft2"),
            Some("key_value_stores")
        );
        assert_eq!(
            capability_key("spin:variables/variables@3.0.0"),
            Some("variables")
        );
        assert_eq!(
            capability_key("wasi:http/client@0.3.0"),
            Some("allowed_outbound_hosts")
        );
        assert_eq!(capability_key("wasi:cli/stdout@0.3.0"), None);
        assert_eq!(capability_key("wasi:http/types@0.3.0"), None);
    }
}
