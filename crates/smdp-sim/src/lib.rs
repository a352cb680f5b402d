//! An SM-DP+ simulator speaking the GSMA ES2+ JSON binding (SGP.22 §5.3, §6.5), for development and tests.
//!
//! One process hosts several **operators** (accounts on the SM-DP+), each under its own path prefix, with its
//! own profile pools, requester ids, callback URL and injected faults. It is an independent peer of our ES2+
//! client: it shares no code with `esim402-core`, so the two cannot share a wire bug.
//!
//! Run it with `smdp-sim --listen 127.0.0.1:0 [--config sim.toml] [--callback-url URL] [--allow-public]`;
//! it prints `smdp-sim listening on http://ADDR` on stdout once bound, logs to stderr (filter
//! `SMDP_SIM_LOG`) and stops gracefully on SIGINT/SIGTERM. Non-loopback addresses need `--allow-public`.
//!
//! # Endpoints
//!
//! ES2+ (`POST`, `Content-Type: application/json`, `X-Admin-Protocol: gsma/rsp/v2.*`; replies carry
//! `X-Admin-Protocol: gsma/rsp/v2.5.0`):
//!
//! - `/<operator>/gsma/rsp2/es2plus/downloadOrder` — `iccid` or `profileType`, optional `eid`
//! - `/<operator>/gsma/rsp2/es2plus/confirmOrder` — `iccid`, `releaseFlag`, optional `eid`, `matchingId`,
//!   `confirmationCode`, `smdsAddress`; answers `matchingId`, `smdpAddress`, `eid`
//! - `/<operator>/gsma/rsp2/es2plus/cancelOrder` — `iccid`, `finalProfileStatusIndicator`, optional `eid`,
//!   `matchingId`
//! - `/<operator>/gsma/rsp2/es2plus/releaseProfile` — `iccid`
//!
//! Every functional outcome is HTTP 200 with `header.functionExecutionStatus`; HTTP errors are for transport
//! problems only: 400 (bad `X-Admin-Protocol`, malformed JSON), 415 (not JSON), 413 (body over 1 MiB),
//! 404 (unknown operator or function), 405, and 503 (injected faults).
//!
//! Admin and inspection (JSON, no protocol headers needed):
//!
//! - `GET /health`, `GET /admin/stats` (per operator, per function counters), `GET /admin/operators`
//! - `GET /admin/operators/<op>` — summary: SM-DP+ address, callback, pools, faults
//! - `GET /admin/operators/<op>/profiles[?state=Released&profileType=…]` — `{counts, pools, profiles}`,
//!   without MatchingIDs
//! - `GET /admin/operators/<op>/profiles/<iccid>` — one profile **with** its `matchingId`
//! - `POST /admin/operators/<op>/profiles/<iccid>/download` — a device starts downloading a Released
//!   profile (202; for `auto_download = false`)
//! - `POST /admin/operators/<op>/profiles/<iccid>/fail` — its download fails: → `Error`, callback point 3
//!   `Failed` `8.8.5/6.4`
//! - `PUT /admin/operators/<op>/pools/<profileType>` `{"available": N}` — drain (0) or mint up to N Available
//! - `GET|PUT /admin/operators/<op>/faults` `{"latency_ms":0,"http_503":false,"hang":false,"fail_next":0,"reply_delay_ms":0,"no_device":false}`
//!   (PUT replaces them all; omitted fields reset; `no_device`: released profiles are not downloaded by themselves)
//!
//! # Status codes chosen by the simulator
//!
//! Codes from the SGP.22 table where one fits (see [`es2::subject`], [`es2::reason`]); where the table gives
//! no subject the simulator picks:
//!
//! - missing `header`, `functionRequesterIdentifier` or `functionCallIdentifier`: `1.1/2.2`;
//!   requester not accepted: `1.1/1.2`
//! - `functionCallIdentifier` reused with a different request (or function): `1.2/3.3`; the same request
//!   again returns the stored response, Failed ones included, without executing
//! - `releaseFlag`, `finalProfileStatusIndicator` missing / invalid: `8.8.5/2.2` / `8.8.5/2.1`
//! - DownloadOrder with neither `iccid` nor `profileType`: `8.2.1/2.2`; with an `iccid` of another type
//!   than `profileType`: `8.2.5/3.10`; malformed ICCID (not 18–20 digits, bad Luhn): `8.2.1/2.1`
//! - ConfirmOrder `smdsAddress` without any EID: `8.1.1/2.2`; malformed `matchingId`: `8.2.6/2.1`
//! - CancelOrder with a `matchingId` or `eid` that is not the order's: `8.2.6/3.10` / `8.1.1/3.10`;
//!   orders in `Error` may be cancelled too
//!
//! # Configuration
//!
//! Without `--config` five operators exist: `tmobile` (`tmo-iot-data`), `verizon` (`vzw-iot-data`), `att`
//! (`att-iot-data`), `telekom-de` (`tde-iot-data`), `vodafone-de` (`vfde-iot-data`), 1000 profiles each,
//! requester id `esim402-<operator>`, SM-DP+ address `smdp.<operator>.esim402.test`. A config file replaces
//! them (see `sim.example.toml`):
//!
//! ```toml
//! callback_url = "http://127.0.0.1:3000/gsma/rsp2/es2plus/handleDownloadProgressInfo" # optional default
//!
//! [operators.tmobile]
//! smdp_address = "smdp.tmobile.esim402.test"   # returned as smdpAddress
//! requester_ids = ["esim402-tmobile"]          # default ["esim402-<operator>"]; ["*"] accepts anyone
//! iccid_prefix = "8901260"                     # ICCIDs = prefix + serial + Luhn digit, 19 digits
//! callback_url = "http://127.0.0.1:3000/…"     # optional; beats --callback-url, which beats the top level
//! auto_download = true                         # simulate the device for every released profile
//! download_delay_ms = 200                      # Released → Downloaded (callback point 3)
//! install_delay_ms = 200                       # Downloaded → Installed (callback point 4)
//! [operators.tmobile.pools]
//! tmo-iot-data = 1000
//! [operators.tmobile.faults]                   # optional, same fields as the admin endpoint
//! latency_ms = 0
//! ```
//!
//! The device is simulated only when the operator has a callback URL (and `auto_download` is on, or an
//! admin trigger asks for it); otherwise released profiles stay `Released`.

#![deny(missing_docs)]

pub mod config;
pub mod es2;
pub mod ids;
pub mod operator;
pub mod server;

pub use config::SimConfig;
pub use server::{Sim, serve};
