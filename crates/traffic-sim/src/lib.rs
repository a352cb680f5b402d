//! A traffic simulator: the network side of metered data for development and tests. For activated SIMs it
//! plays the carrier's packet core and charging adapter: it asks the facilitator for quota (online charging,
//! `POST /v1/esim/{iccid}/data`), moves at most the granted bytes, and reports them as usage receipts signed
//! with the carrier's **dev** key (kernel `usage::receipt::dev_signing_key`), one page signature per posted
//! batch (kernel `usage::page`: each receipt carries its Merkle proof), to `POST /v1/usage`. So the
//! balance is a hard cap at the network: once the facilitator answers 402, no more usage is generated.
//!
//! Which carrier issued an ICCID is asked of the SM-DP+ simulator (`GET /admin/operators/<op>/profiles/<iccid>`);
//! the serving network is the carrier's first home PLMN (catalog), unless the request names one.
//!
//! Endpoints (loopback only unless `--allow-public`):
//! - `POST /admin/usage` `{"iccid": "…", "bytes": N, "plmn"?: "MCC-MNC"}`: move N bytes now; answers once
//!   `/v1/usage` accepted the receipts: `{delivered, receipts, capped, results}` (`capped`: the quota ran
//!   out first).
//! - `POST /admin/schedule` `{"iccid": "…", "mode": "steady" | "anomaly" | "off"}`: the seed's fleet pattern,
//!   time-compressed by `--compression`: steady = 2 KB every 6 h, anomaly = 200 KB per hour.
//! - `GET /health`.

pub mod session;

pub use session::{Config, Traffic, UsageOutcome};
