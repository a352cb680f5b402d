//! Component dependencies, composed at load time with wac-graph as Spin does: each dependency's export is
//! plugged into the matching import of the dependent component, and everything left unsatisfied becomes an
//! import of the composite (served by this host).
//!
//! Least privilege: a dependency may use a host capability (key-value, variables, outbound network, …) only if
//! its `inherit_configuration` grants the corresponding configuration key. Spin enforces this by plugging a
//! deny-all adapter into such imports; this host refuses to load the application instead, naming the
//! dependency, the import and the key to grant — the same guarantee, reported before the first request.

use std::collections::BTreeMap;

use anyhow::{Context, bail};
use wac_graph::types::Package;
use wac_graph::{CompositionGraph, EncodeOptions};

use crate::manifest::{INHERITABLE, Inherit};

/// One dependency to plug in.
pub struct Dependency<'a> {
    /// The dependent's import name, e.g. `esim402:facilitator/invoices@0.1.0`.
    pub import: &'a str,
    /// The dependency's export to use (defaults to `import`).
    pub export: Option<&'a str>,
    /// Its wasm bytes.
    pub bytes: Vec<u8>,
    /// A name for messages.
    pub name: String,
    /// What it inherits.
    pub inherit: Inherit,
}

/// The configuration key that governs a host import, if any.
pub fn capability_key(import: &str) -> Option<&'static str> {
    INHERITABLE
        .iter()
        .find(|(_, prefixes)| prefixes.iter().any(|p| import.starts_with(p)))
        .map(|(k, _)| *k)
}

/// Compose `main` with its dependencies; returns the composite's bytes.
pub fn compose(main_name: &str, main: &[u8], deps: Vec<Dependency<'_>>) -> anyhow::Result<Vec<u8>> {
    let mut graph = CompositionGraph::new();
    let main_pkg = Package::from_bytes(main_name, None, main.to_vec(), graph.types_mut())
        .with_context(|| format!("component {main_name} is not a valid component"))?;
    let main_world = &graph.types()[main_pkg.ty()];
    let main_imports: Vec<String> = main_world.imports.keys().cloned().collect();
    let main_exports: Vec<String> = main_world.exports.keys().cloned().collect();
    let main_id = graph.register_package(main_pkg)?;
    let main_inst = graph.instantiate(main_id);

    let mut plugged = BTreeMap::new();
    for dep in deps {
        if !main_imports.iter().any(|i| i == dep.import) {
            // Like Spin: a declared dependency the component does not import is a configuration mistake.
            bail!(
                "component {main_name} does not import {:?}, but it is listed as a dependency",
                dep.import
            );
        }
        let pkg = Package::from_bytes(&dep.name, None, dep.bytes, graph.types_mut())
            .with_context(|| format!("dependency {} is not a valid component", dep.name))?;
        let world = &graph.types()[pkg.ty()];
        for import in world.imports.keys() {
            let key = capability_key(import);
            if let Some(key) = key
                && !dep.inherit.grants(key)
            {
                bail!(
                    "dependency {} imports {import:?}, which needs `{key}`: add it to inherit_configuration of {:?}",
                    dep.name,
                    dep.import
                );
            }
        }
        let export = dep.export.unwrap_or(dep.import).to_owned();
        if !world.exports.contains_key(&export) {
            bail!("dependency {} does not export {export:?}", dep.name);
        }
        let id = graph.register_package(pkg)?;
        let inst = graph.instantiate(id);
        let node = graph
            .alias_instance_export(inst, &export)
            .with_context(|| format!("dependency {}: export {export:?}", dep.name))?;
        graph
            .set_instantiation_argument(main_inst, dep.import, node)
            .with_context(|| {
                format!("plugging {} into {main_name} as {:?}", dep.name, dep.import)
            })?;
        plugged.insert(dep.import.to_owned(), dep.name);
    }
    for export in main_exports {
        let node = graph.alias_instance_export(main_inst, &export)?;
        graph.export(node, &export)?;
    }
    let bytes = graph
        .encode(EncodeOptions {
            define_components: true,
            validate: true,
            ..Default::default()
        })
        .with_context(|| {
            format!(
                "composing {main_name} with {:?}",
                plugged.values().collect::<Vec<_>>()
            )
        })?;
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

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
