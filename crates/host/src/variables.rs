//! Application variables: resolved once at start-up from `SPIN_VARIABLE_<NAME>` in the environment, then the
//! `.env` file in the current directory (same names), then `[variables]` defaults. A required variable without
//! a value fails start-up naming the variable (never a value). Secret values are never printed: `Debug` of the
//! resolved set redacts them.
//!
//! The `.env` is the current directory's, not the manifest's, because that is the one Spin reads (its default
//! environment provider opens the relative path `.env`): `spin up -f app/spin.toml` and `esim402 up -f
//! app/spin.toml` then see the same values. Run from the app's folder, as usual, the two are one file.
//!
//! A runtime config's `[[variables_provider]]` entries of type `env` ([`EnvProvider`]) are asked first, in
//! order, as Spin asks its configured providers before the default one.

use std::collections::{BTreeMap, HashMap};
use std::ffi::OsString;
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

/// The process environment, as the `env` of [`resolve`] takes it.
pub fn process_env() -> HashMap<String, String> {
    unicode_env(std::env::vars_os())
}

/// The entries of `vars` whose name and value are Unicode. `std::env::vars` panics on any other, and a host
/// must not fail to start over, say, a file name in some unrelated variable; no Spin variable can be read from
/// such an entry, so a `SPIN_VARIABLE_*` one is skipped with a warning (its default, if any, applies instead).
pub fn unicode_env(
    vars: impl IntoIterator<Item = (OsString, OsString)>,
) -> HashMap<String, String> {
    vars.into_iter()
        .filter_map(|(name, value)| match (name.into_string(), value.into_string()) {
            (Ok(name), Ok(value)) => Some((name, value)),
            (name, _) => {
                let name = match &name {
                    Ok(n) => n.clone(),
                    Err(raw) => raw.to_string_lossy().into_owned(),
                };
                if name.starts_with("SPIN_VARIABLE_") {
                    tracing::warn!(%name, "environment variable ignored: it is not valid UTF-8");
                }
                None
            }
        })
        .collect()
}

/// The environment variable Spin reads for `name`.
pub fn env_name(name: &str) -> String {
    format!("SPIN_VARIABLE_{}", name.to_ascii_uppercase())
}

/// The runtime config's `env` providers (defined with the runtime config, which reads them).
pub use crate::runtime_config::EnvProvider;

/// Resolve every variable of `manifest` from the runtime config's `providers`, then `env` (the process
/// environment in production) and `./.env`.
pub fn resolve(
    manifest: &Manifest,
    env: &HashMap<String, String>,
    providers: &[EnvProvider],
) -> anyhow::Result<Resolved> {
    resolve_from(manifest, env, Path::new("."), providers)
}

/// [`resolve`] without providers, with the `.env` of `dotenv_dir` instead of the current directory's.
pub fn resolve_in(
    manifest: &Manifest,
    env: &HashMap<String, String>,
    dotenv_dir: &Path,
) -> anyhow::Result<Resolved> {
    resolve_from(manifest, env, dotenv_dir, &[])
}

fn resolve_from(
    manifest: &Manifest,
    env: &HashMap<String, String>,
    dotenv_dir: &Path,
    providers: &[EnvProvider],
) -> anyhow::Result<Resolved> {
    let dotenv = dotenv_in(dotenv_dir)?;
    let configured = providers
        .iter()
        .map(|p| {
            let file = match &p.dotenv_path {
                Some(path) => dotenv_file(path)?,
                None => HashMap::new(),
            };
            Ok((p, file))
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let mut app = BTreeMap::new();
    let mut secret_names = Vec::new();
    for (name, decl) in &manifest.variables {
        let key = env_name(name);
        let value = configured
            .iter()
            .find_map(|(p, file)| {
                let key = p.key(name);
                env.get(&key).or_else(|| file.get(&key))
            })
            .or_else(|| env.get(&key))
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

/// The `KEY=value` pairs of `dir`'s `.env` file; none if it has none.
pub fn dotenv_in(dir: &Path) -> anyhow::Result<HashMap<String, String>> {
    dotenv_file(&dir.join(".env"))
}

/// The `KEY=value` pairs of a dotenv file; none if there is no such file.
pub fn dotenv_file(path: &Path) -> anyhow::Result<HashMap<String, String>> {
    if !path.exists() {
        return Ok(HashMap::new());
    }
    dotenvy::from_path_iter(path)
        .with_context(|| format!("cannot read {}", path.display()))?
        .map(|item| item.map_err(|e| dotenv_error(path, e)))
        .collect()
}

/// A `.env` error that names the file and the line, never the line's text: dotenvy's own message quotes the
/// whole line, which may hold a secret (`SPIN_VARIABLE_FACILITATOR_PRIVATE_KEY="0x…` without its closing quote).
fn dotenv_error(path: &Path, e: dotenvy::Error) -> anyhow::Error {
    match e {
        dotenvy::Error::LineParse(text, at) => {
            let line = std::fs::read_to_string(path)
                .ok()
                .and_then(|all| {
                    // The longest line the failing text starts with: an earlier `KEY=` is a prefix too.
                    all.lines()
                        .enumerate()
                        .filter(|(_, l)| !l.is_empty() && text.starts_with(l))
                        .max_by_key(|(_, l)| l.len())
                        .map(|(n, _)| n)
                })
                .map_or_else(String::new, |n| format!(" line {},", n + 1));
            anyhow::anyhow!(
                "malformed .env entry in {}:{line} at character {at} (its text is not shown: it may hold a secret)",
                path.display()
            )
        }
        other => anyhow::anyhow!("cannot read {}: {other}", path.display()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn manifest(dir: &Path) -> Manifest {
        Manifest::parse(
            r#"spin_manifest_version = 2
[application]
name = "t"
[[trigger.http]]
route = "/..."
component = "a"
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
        // A `.env` of the test's own, not its current directory's (which may hold one).
        let r = resolve_in(&m, &env, dir.path()).unwrap();
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
        let r = resolve_in(&m, &HashMap::new(), dir.path()).unwrap();
        assert_eq!(r.per_component["a"]["token"], "fromfile");
        assert_eq!(r.per_component["a"]["where"], "in eu-central");
        // The environment still wins over the file.
        let r = resolve_in(&m, &env, dir.path()).unwrap();
        assert_eq!(r.per_component["a"]["token"], "s3cret");
    }

    /// Configured `env` providers first, in order, each its prefix and its own file; then the default one.
    #[test]
    fn configured_env_providers_come_first() {
        let dir = tempfile::tempdir().unwrap();
        let m = manifest(dir.path());
        std::fs::write(dir.path().join("app.env"), "APP_REGION=from-file\n").unwrap();
        let provider = |prefix: &str, file: Option<&str>| EnvProvider {
            prefix: Some(prefix.to_owned()),
            dotenv_path: file.map(|f| dir.path().join(f)),
        };
        let providers = [provider("MINE", None), provider("APP", Some("app.env"))];
        let env = |pairs: &[(&str, &str)]| -> HashMap<String, String> {
            pairs
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect()
        };
        let all = env(&[("MINE_TOKEN", "mine"), ("SPIN_VARIABLE_REGION", "default")]);
        let r = resolve_from(&m, &all, dir.path(), &providers).unwrap();
        assert_eq!(
            (r.app["token"].as_str(), r.app["region"].as_str()),
            ("mine", "from-file")
        );
        // Nothing configured holds it: the default provider, then the default value.
        let r = resolve_from(&m, &all, dir.path(), &providers[..1]).unwrap();
        assert_eq!(r.app["region"], "default");
        let mine = env(&[("MINE_TOKEN", "mine")]);
        let r = resolve_from(&m, &mine, dir.path(), &providers[..1]).unwrap();
        assert_eq!(r.app["region"], "us-west");
        // A prefix-less provider reads SPIN_VARIABLE_*; a dotenv file that is not there holds nothing.
        let plain = EnvProvider {
            prefix: None,
            ..provider("", Some("missing.env"))
        };
        let r = resolve_from(
            &m,
            &env(&[("SPIN_VARIABLE_TOKEN", "t")]),
            dir.path(),
            &[plain],
        );
        assert_eq!(r.unwrap().app["token"], "t");
    }

    /// A malformed `.env` line is named by its number, never quoted: dotenvy's message quotes the whole line,
    /// a secret's value with it.
    #[test]
    fn a_malformed_env_line_is_named_not_quoted() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join(".env"),
            "SPIN_VARIABLE_REGION=eu-central\nSPIN_VARIABLE_FACILITATOR_PRIVATE_KEY=\nSPIN_VARIABLE_FACILITATOR_PRIVATE_KEY=\"0xdeadbeefsecret\n",
        )
        .unwrap();
        let e = format!("{:#}", dotenv_in(dir.path()).unwrap_err());
        assert!(!e.contains("deadbeefsecret"), "{e}");
        assert!(e.contains(".env") && e.contains("line 3"), "{e}");
    }

    /// The half of [`dotenv_is_the_current_directorys_as_in_spin`] run in its child process; inert elsewhere.
    #[test]
    fn resolve_in_a_child_process() {
        let Some(app) = std::env::var_os("ESIM402_TEST_APP_DIR") else {
            return;
        };
        let r = resolve(&manifest(Path::new(&app)), &HashMap::new(), &[]).unwrap();
        assert_eq!(r.per_component["a"]["token"], "from-the-current-dir");
    }

    #[test]
    fn dotenv_is_the_current_directorys_as_in_spin() {
        let app = tempfile::tempdir().unwrap();
        std::fs::write(
            app.path().join(".env"),
            "SPIN_VARIABLE_TOKEN=beside-the-manifest\n",
        )
        .unwrap();
        let cwd = tempfile::tempdir().unwrap();
        std::fs::write(
            cwd.path().join(".env"),
            "SPIN_VARIABLE_TOKEN=from-the-current-dir\n",
        )
        .unwrap();
        // The current directory is the process's: the check runs in a child started in `cwd`.
        crate::child_test::passes("variables::tests::resolve_in_a_child_process", |child| {
            child
                .current_dir(cwd.path())
                .env("ESIM402_TEST_APP_DIR", app.path());
        });
    }

    #[test]
    fn non_unicode_environment_entries_are_skipped_not_fatal() {
        use std::os::unix::ffi::OsStringExt;
        let bad = || OsString::from_vec(vec![b'x', 0xff, b'y']);
        let env = unicode_env([
            (
                OsString::from("SPIN_VARIABLE_TOKEN"),
                OsString::from("s3cret"),
            ),
            (OsString::from("SPIN_VARIABLE_REGION"), bad()),
            (bad(), OsString::from("value")),
            (OsString::from("PATH"), OsString::from("/bin")),
        ]);
        assert_eq!(
            env,
            HashMap::from([
                ("SPIN_VARIABLE_TOKEN".to_owned(), "s3cret".to_owned()),
                ("PATH".to_owned(), "/bin".to_owned()),
            ])
        );
        // The skipped variable's default applies (whatever `.env` the test's own directory may hold).
        let dir = tempfile::tempdir().unwrap();
        let r = resolve_in(&manifest(dir.path()), &env, dir.path()).unwrap();
        assert_eq!(r.per_component["a"]["where"], "in us-west");
    }

    #[test]
    fn missing_required_names_the_variable_not_a_value() {
        let dir = tempfile::tempdir().unwrap();
        let err = format!(
            "{:#}",
            resolve_in(&manifest(dir.path()), &HashMap::new(), dir.path()).unwrap_err()
        );
        assert!(
            err.contains("\"token\"") && err.contains("SPIN_VARIABLE_TOKEN"),
            "{err}"
        );
    }
}
