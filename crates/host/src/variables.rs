//! Application variables: resolved once at start-up from `SPIN_VARIABLE_<NAME>` in the environment, then the
//! `.env` file beside the manifest (same names), then `[variables]` defaults. A required variable without a
//! value fails start-up naming the variable (never a value). Secret values are never printed: `Debug` of the
//! resolved set redacts them.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::path::Path;
use std::sync::Arc;

use anyhow::{Context, bail};

use crate::manifest::{Manifest, expand};

/// Resolved values of every component variable, per component.
#[derive(Clone, Default)]
pub struct Resolved {
    /// Component id → variable name → value.
    pub per_component: BTreeMap<String, Arc<HashMap<String, String>>>,
    /// Application variable name → value (used for templated outbound hosts).
    pub app: BTreeMap<String, String>,
    secret_names: Vec<String>,
}

impl fmt::Debug for Resolved {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let shown: BTreeMap<&str, &str> = self
            .app
            .iter()
            .map(|(k, v)| {
                (
                    k.as_str(),
                    if self.secret_names.contains(k) {
                        "<redacted>"
                    } else {
                        v.as_str()
                    },
                )
            })
            .collect();
        f.debug_struct("Resolved")
            .field("app", &shown)
            .finish_non_exhaustive()
    }
}

/// The environment variable Spin reads for `name`.
pub fn env_name(name: &str) -> String {
    format!("SPIN_VARIABLE_{}", name.to_ascii_uppercase())
}

/// Resolve every variable of `manifest` from `env` (the process environment in production).
pub fn resolve(manifest: &Manifest, env: &HashMap<String, String>) -> anyhow::Result<Resolved> {
    let dotenv = read_dotenv(&manifest.dir.join(".env"))?;
    let mut app = BTreeMap::new();
    let mut secret_names = Vec::new();
    for (name, decl) in &manifest.variables {
        let key = env_name(name);
        let value = env
            .get(&key)
            .or_else(|| dotenv.get(&key))
            .cloned()
            .or_else(|| decl.default.clone());
        match value {
            Some(v) => {
                app.insert(name.clone(), v);
            }
            None if decl.required => bail!(
                "required variable {name:?} has no value: set {key} in the environment or .env"
            ),
            None => {}
        }
        if decl.secret {
            secret_names.push(name.clone());
        }
    }
    let mut per_component = BTreeMap::new();
    for (id, comp) in &manifest.components {
        let mut vars = HashMap::new();
        for (name, template) in &comp.variables {
            let value = expand(template, |v| app.get(v).cloned())
                .with_context(|| format!("component {id} variable {name}"))?;
            vars.insert(name.clone(), value);
        }
        per_component.insert(id.clone(), Arc::new(vars));
    }
    Ok(Resolved {
        per_component,
        app,
        secret_names,
    })
}

fn read_dotenv(path: &Path) -> anyhow::Result<HashMap<String, String>> {
    if !path.exists() {
        return Ok(HashMap::new());
    }
    dotenvy::from_path_iter(path)
        .with_context(|| format!("cannot read {}", path.display()))?
        .map(|item| item.with_context(|| format!("malformed line in {}", path.display())))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn manifest(dir: &Path) -> Manifest {
        Manifest::parse(
            r#"spin_manifest_version = 2
[application]
name = "t"
[variables]
token = { required = true, secret = true }
region = { default = "us-west" }
[component.a]
source = "a.wasm"
variables = { token = "{{ token }}", where = "in {{ region }}" }
"#,
            dir.to_path_buf(),
        )
        .unwrap()
    }

    #[test]
    fn env_then_dotenv_then_default() {
        let dir = tempfile::tempdir().unwrap();
        let m = manifest(dir.path());
        let env = HashMap::from([("SPIN_VARIABLE_TOKEN".to_string(), "s3cret".to_string())]);
        let r = resolve(&m, &env).unwrap();
        assert_eq!(r.per_component["a"]["token"], "s3cret");
        assert_eq!(r.per_component["a"]["where"], "in us-west");
        assert!(
            !format!("{r:?}").contains("s3cret"),
            "secrets are redacted in Debug"
        );

        std::fs::write(
            dir.path().join(".env"),
            "SPIN_VARIABLE_TOKEN=fromfile\nSPIN_VARIABLE_REGION=eu-central\n",
        )
        .unwrap();
        let r = resolve(&m, &HashMap::new()).unwrap();
        assert_eq!(r.per_component["a"]["token"], "fromfile");
        assert_eq!(r.per_component["a"]["where"], "in eu-central");
    }

    #[test]
    fn missing_required_names_the_variable_not_a_value() {
        let dir = tempfile::tempdir().unwrap();
        let err = format!(
            "{:#}",
            resolve(&manifest(dir.path()), &HashMap::new()).unwrap_err()
        );
        assert!(
            err.contains("\"token\"") && err.contains("SPIN_VARIABLE_TOKEN"),
            "{err}"
        );
    }
}
