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
pub mod kv;
pub mod manifest;
pub mod outbound;
pub mod pool;
pub mod router;
pub mod runtime_config;
pub mod server;
pub mod variables;
