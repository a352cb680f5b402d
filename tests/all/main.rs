//! End-to-end tests through the host with the real components.
#![allow(clippy::unwrap_used, reason = "tests")]

mod activate;
mod agent;
mod api;
mod backends;
mod conformance;
mod crash;
mod deploy;
mod devchain;
mod dispatch;
mod download_failure;
mod facilitator;
mod fee_bump;
mod holds;
mod invoice_keys;
mod ledger;
mod metering;
mod orphans;
mod ownership;
mod payments;
mod python_client;
mod runtimes;
mod scaleout;
mod spin_compat;
mod startup;
mod up;
mod watch;
