//! Dependency names and inheritance as Spin's manifest defines them (`spin_serde::DependencyName`,
//! `inherit_configuration`): read by the manifest loader ([`crate::manifest`]) and by the composer
//! ([`crate::compose`]), owned by neither.

use anyhow::{Context, bail};
use serde::Deserialize;

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

/// `inherit_configuration`: all, nothing, or a list of configuration keys.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum Inherit {
    /// true/false.
    All(bool),
    /// Listed keys.
    Some(Vec<String>),
}

/// Configuration keys a dependency may inherit, and the host interfaces each one unlocks.
pub const INHERITABLE: &[(&str, &[&str])] = &[
    (
        "key_value_stores",
        &[
            "spin:key-value/",
            "wasi:keyvalue/",
            "fermyon:spin/key-value",
        ],
    ),
    (
        "variables",
        &["spin:variables/", "fermyon:spin/variables", "wasi:config/"],
    ),
    (
        "allowed_outbound_hosts",
        &[
            "wasi:http/outgoing-handler",
            "wasi:http/client",
            "wasi:sockets/",
            "spin:redis/",
            "spin:postgres/",
            "spin:mysql/",
            "spin:mqtt/",
        ],
    ),
    ("sqlite_databases", &["spin:sqlite/", "fermyon:spin/sqlite"]),
    ("ai_models", &["fermyon:spin/llm"]),
    // The dependent's `environment` variables. This host gives a composed instance one environment, so it can
    // only withhold them by refusing the composition ([`crate::compose`]), and does so only when the dependent
    // sets any.
    ("environment", &["wasi:cli/environment"]),
    // Refused by the manifest loader wherever it appears: nothing to inherit.
    ("files", &[]),
];

impl Inherit {
    /// Whether configuration key `key` is inherited.
    pub fn grants(&self, key: &str) -> bool {
        match self {
            Self::All(all) => *all,
            Self::Some(keys) => keys.iter().any(|k| k == key),
        }
    }
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
        assert_eq!(
            capability_key("wasi:cli/environment@0.2.6"),
            Some("environment")
        );
        assert_eq!(capability_key("wasi:http/types@0.3.0"), None);
    }
}
