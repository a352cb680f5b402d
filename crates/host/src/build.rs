//! `esim402 build`: runs every component's `[component.<id>.build] command` from the manifest's folder (or its
//! `workdir`), in order, through `sh -c`, exactly as `spin build` does.

use std::process::Command;

use anyhow::{Context, bail};

use crate::manifest::Manifest;

/// Build the named components, or all of them.
pub fn build(manifest: &Manifest, only: &[String]) -> anyhow::Result<()> {
    for id in only {
        if !manifest.components.contains_key(id) {
            bail!("no component {id:?} in the manifest");
        }
    }
    for (id, c) in &manifest.components {
        if !only.is_empty() && !only.contains(id) {
            continue;
        }
        let Some(build) = &c.build else {
            tracing::info!(component = %id, "no build command; using {}", c.source);
            continue;
        };
        let dir = build
            .workdir
            .as_deref()
            .map_or_else(|| manifest.dir.clone(), |w| manifest.resolve(w));
        for command in build.command.as_vec() {
            eprintln!("Building component {id} with `{command}`");
            let status = Command::new("sh")
                .arg("-c")
                .arg(&command)
                .current_dir(&dir)
                .status()
                .with_context(|| format!("cannot run build command of {id}"))?;
            if !status.success() {
                bail!("build command of component {id} failed ({status})");
            }
        }
    }
    Ok(())
}
