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
