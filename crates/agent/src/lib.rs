//! esim402's device side: buy, top up and manage eSIMs over x402, within a spend policy.
//!
//! - [`config`]: the facilitator URL and the wallet key (from `ESIM402_WALLET_KEY` or a key file; never printed).
//! - [`policy`]: the spend policy (TOML) every offer is checked against *before* anything is signed.
//! - [`state`]: the local state directory (SIMs and their access tokens, spend history, pending payments),
//!   rewritten atomically (temp file + rename) on every change.
//! - [`pay`]: an x402 v2 `exact` payment (EIP-3009) signed with the kernel's signer, carrying a
//!   `payment-identifier` so that sending it again replays its answer instead of paying twice.
//! - [`client`]: the HTTP side: the 402 → policy → sign → send walk, and the SIM routes.
//! - [`clock`]: the local clock checked against the facilitator's `Date` before anything is signed.
//! - [`error`]: what can go wrong, and the CLI's exit code for each.
//! - [`cost`]: the `cost` command: the kernel's cost model over command-line inputs.
//! - [`proxy`]: the paying proxy for devices that cannot pay (per-device budgets, an audit log).
//! - [`replay`]: the proxy's paid answers kept a while, so a device's retry is answered, not paid again.
//! - [`watch`]: keep a SIM alive unattended: zero-trust receipt audit, top-ups within the policy, carrier or
//!   region switches when the radio says so.
//!
//! The `esim402-agent` binary (`src/main.rs`) is a thin clap front over [`Agent`]; its commands, the policy file and
//! the exit codes (0 done, 1 local, 2 usage, 3 policy, 4 refused, 5 unavailable) are in the crate README and
//! `esim402-agent --help`.
//!
//! The rule a reader must not break: a payment is written to the state directory as *pending* before it is
//! sent, and removed only once the facilitator answered it. A command run again after a lost reply finds it and
//! sends the very same payment (same nonce, same identifier), so nothing is paid twice; and so does any other
//! command, before it runs ([`Agent::before_command`]; a switch only `switch` and `watch`): no new payment is
//! signed for a purchase (an activation, a top-up or a switch of the same SIM) while one for it is still pending
//! with the same facilitator, unless it is given up on (`pending --forget`, its spend kept:
//! [`client::forget_pending`]).
#![deny(missing_docs)]

pub mod budget;
pub mod client;
pub mod clock;
pub mod config;
pub mod cost;
pub mod error;
pub mod pay;
pub mod policy;
pub mod proxy;
pub mod replay;
pub mod state;
pub mod watch;

#[cfg(test)]
mod testing;

pub use client::Agent;
pub use config::{Config, WalletKey};
pub use error::{AgentError, ExitCode};
pub use policy::SpendPolicy;
pub use state::{State, StateDir};
