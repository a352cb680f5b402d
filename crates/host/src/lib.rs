//! esim402's host: runs the Spin application described by `spin.toml` on wasmtime, without the Spin CLI.
//!
//! [`app::App::load`] reads the manifest, runtime config and variables, composes each component with its
//! dependencies, compiles and pre-instantiates it; [`server::serve`] runs the HTTP trigger. The binary
//! `esim402` wraps both with `build`, `check` and `up` subcommands.
//!
//! Two environment variables exist **for tests only** and are inert when unset: `ESIM402_FAILPOINT`
//! ([`kv::failpoint`]: stall the request whose key-value write reaches a given key prefix, so a test can
//! SIGKILL the host there) and `ESIM402_CLOCK_SKEW_SECS` ([`clock`]: the guests' wall clock runs ahead, to
//! restart a killed host "after" a lease). Never set them in a deployment.
#![deny(missing_docs)]

pub mod admission;
pub mod app;
pub mod build;
pub mod clock;
pub mod compose;
pub mod deps;
pub mod devstack;
pub mod ids;
pub mod interfaces;
pub mod jobs;
pub mod kv;
pub mod manifest;
pub mod outbound;
pub mod pool;
pub mod router;
pub mod runtime_config;
pub mod server;
pub mod variables;
pub mod well_known;

/// Test support shared by the modules' unit tests.
#[cfg(test)]
pub(crate) mod child_test {
    /// Run the unit test `name` alone in a child process of this test binary, set up by `configure` (the
    /// environment or working directory of a process cannot be changed safely while other tests run), and
    /// assert it ran and passed.
    pub(crate) fn passes(name: &str, configure: impl FnOnce(&mut std::process::Command)) {
        let mut child = std::process::Command::new(std::env::current_exe().unwrap());
        child.args(["--exact", name]);
        configure(&mut child);
        let out = child.output().unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success() && stdout.contains("1 passed"),
            "{stdout}{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}
