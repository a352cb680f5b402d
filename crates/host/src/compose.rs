//! Component dependencies, composed at load time with wac-graph as Spin does: each dependency's export is
//! plugged into the matching import of the dependent component, and everything left unsatisfied becomes an
//! import of the composite (served by this host).
//!
//! Least privilege: a dependency may use a host capability (key-value, variables, outbound network, …) only if
//! its `inherit_configuration` grants the corresponding configuration key. Spin enforces this by plugging a
//! deny-all adapter into such imports; this host refuses to load the application instead, naming the
//! dependency, the import and the key to grant — the same guarantee, reported before the first request.
//!
//! `environment` is the one key whose interface (`wasi:cli/environment`) nearly every component imports, and
//! Spin withholds the variables rather than the interface. Here a composite has one WASI environment, the
//! dependent's: a dependency that does not inherit `environment` is refused only when that environment is not
//! empty, since otherwise it sees no variables anyway.

use std::collections::BTreeMap;

use anyhow::{Context, anyhow, bail};
use wac_graph::types::Package;
use wac_graph::{CompositionGraph, EncodeOptions, NodeId};

use crate::deps::{DependencyName, Inherit, capability_key};

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

/// Spin's wording for a failure while registering dependencies.
const PREPARE_ERROR: &str = "an error occurred when preparing dependencies";

/// The component whose imports the dependencies satisfy.
pub struct Dependent<'a> {
    /// Its component id.
    pub name: &'a str,
    /// Its wasm bytes.
    pub bytes: &'a [u8],
    /// Whether its manifest entry sets `environment` variables (which a dependency sees only if it inherits
    /// `environment`).
    pub sets_environment: bool,
}

/// Compose `main` with its dependencies; returns the composite's bytes. Refuses what Spin refuses, with Spin's
/// messages (`spin_compose::ComposeError`), under Spin's heading: `failed to resolve dependencies for component
/// "<id>"`.
pub fn compose(main: Dependent<'_>, deps: Vec<Dependency<'_>>) -> anyhow::Result<Vec<u8>> {
    let name = main.name;
    compose_inner(main, deps)
        .with_context(|| format!("failed to resolve dependencies for component {name:?}"))
}

struct Registered {
    name: String,
    instance: NodeId,
    world: wac_graph::types::WorldId,
    export: Option<String>,
}

fn compose_inner(main: Dependent<'_>, deps: Vec<Dependency<'_>>) -> anyhow::Result<Vec<u8>> {
    let main_name = main.name;
    let mut graph = CompositionGraph::new();
    let main_pkg = Package::from_bytes(main_name, None, main.bytes.to_vec(), graph.types_mut())
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
            let Some(key) = capability_key(import) else {
                continue;
            };
            if dep.inherit.grants(key) {
                continue;
            }
            if key == "environment" {
                // Nothing to withhold from an empty environment.
                if main.sets_environment {
                    bail!(
                        "dependency {} ({}) imports {import:?} but does not inherit `environment`: Spin hides \
                         component {main_name:?}'s environment variables from it, which esim402 cannot (a composed \
                         instance has one environment); add \"environment\" to inherit_configuration of {:?}, or \
                         remove the component's `environment`",
                        dep.name,
                        dep.source,
                        dep.name
                    );
                }
            } else {
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
    use wit_component::{ComponentEncoder, StringEncoding, dummy_module, embed_component_metadata};
    use wit_parser::{ManglingAndAbi, Resolve};

    use super::*;

    /// A dependency that reads its environment, and a component that imports the dependency's interface.
    const WIT: &str = r#"
package demo:app@0.1.0;

interface api { f: func() -> u32; }

world dep {
    import wasi:cli/environment@0.2.0;
    export api;
}
world main { import api; }
"#;
    const CLI: &str = r#"
package wasi:cli@0.2.0;

interface environment { get-environment: func() -> list<tuple<string, string>>; }
"#;

    fn component(world: &str) -> Vec<u8> {
        let mut resolve = Resolve::default();
        resolve.push_str("cli.wit", CLI).unwrap();
        let pkg = resolve.push_str("app.wit", WIT).unwrap();
        let world = resolve.select_world(&[pkg], Some(world)).unwrap();
        let mut module = dummy_module(&resolve, world, ManglingAndAbi::Standard32);
        embed_component_metadata(&mut module, &resolve, world, StringEncoding::UTF8).unwrap();
        ComponentEncoder::default()
            .module(&module)
            .unwrap()
            .validate(true)
            .encode()
            .unwrap()
    }

    fn compose_with(sets_environment: bool, inherit: Inherit) -> anyhow::Result<Vec<u8>> {
        let main = component("main");
        compose(
            Dependent {
                name: "main",
                bytes: &main,
                sets_environment,
            },
            vec![Dependency {
                name: "demo:app/api@0.1.0",
                export: None,
                bytes: component("dep"),
                source: "dep".into(),
                inherit,
            }],
        )
    }

    #[test]
    fn a_dependency_sees_the_environment_only_if_it_inherits_it() {
        let some = |keys: &[&str]| Inherit::Some(keys.iter().map(|k| (*k).to_owned()).collect());
        // The dependent sets variables the dependency may not see: refused, naming the key.
        for withheld in [some(&[]), some(&["key_value_stores"]), Inherit::All(false)] {
            let err = format!("{:#}", compose_with(true, withheld).unwrap_err());
            assert!(
                err.contains("does not inherit `environment`")
                    && err.contains("wasi:cli/environment@0.2.0"),
                "{err}"
            );
        }
        // Inherited, or nothing to withhold: composed.
        compose_with(true, some(&["environment"])).unwrap();
        compose_with(true, Inherit::All(true)).unwrap();
        compose_with(false, some(&[])).unwrap();
    }
}
