//! `esim402-agent proxy`: the paying proxy for devices that cannot pay (no x402, no wallet). A device sends plain
//! HTTP to it; it forwards the request to the facilitator (method, path and query, body, `Content-Type`, and the
//! device's own `Authorization`, `X-Agent-ID` and `Sign-In-With-X`: its SIM token or wallet sign-in, its label;
//! no other header, so no hop-by-hop one) and, when the answer is a 402 on a route a device buys connectivity
//! with ([`PAID_ROUTES`]), pays it from the gateway's wallet on the device's behalf and answers with the paid
//! result. Another route's 402 is answered with a 402 of the proxy's own, unpaid. The proxy pays, not the
//! device: a request carrying a payment (`PAYMENT-SIGNATURE`, `X-PAYMENT*`, `payment-identifier`) is refused.
//!
//! Each device is identified by a header (e.g. `X-Device-ID`) or, without one configured, by its source
//! address, and has a budget: the gateway's spend policy narrowed to the device's per-payment and per-day
//! limits, kept in a state directory of its own (`<state>/devices/<id>/`), so its spend history and any
//! pending payment are its own. Over budget: 403 with a JSON error naming the limit that refused it (the
//! device's, or the wallet's: its own per payment or per day, or its daily cap all devices share) and the
//! amounts, nothing paid. Every payment made for a device is appended to an audit log (JSON lines: time, device,
//! path, invoice, amount, tx hash).
//! One request at a time per device (a payment and its retry must not race); devices run in parallel.
//! A paid answer is kept 15 minutes in the device's state: the same request (or `Idempotency-Key`) sent again
//! within them by the same requester (its `Authorization` and `X-Agent-ID`, to the same facilitator; never with
//! a `Sign-In-With-X`) is answered with it, nothing forwarded or paid; a device named by a header only by its
//! `Idempotency-Key` ([`crate::replay`]). A payment still pending is sent again for its own request and
//! requester only; before a device's purchase is paid, its other payments pending for that purchase are sent
//! again first, and one still pending holds a new payment back (`client/device.rs`).
//!
//! Devices are not browsers: what a browser would send (`Origin`, `Sec-Fetch-*`, a body that is not JSON, a
//! host name a web page could rebind to this machine) is refused before anything is forwarded or paid, so no
//! page open on the host can have this wallet pay. Devices therefore address the proxy by IP address (or
//! `localhost`), never by a host name.
//!
//! Where each part lives, in the order a request meets them:
//! - `server`: the accept loop and what a connection may hold of the proxy (timeouts, the connection cap).
//! - `request`: a device's request read (body within its limit) and checked, its device named.
//! - `checks`: what is refused before anything is forwarded (browsers, rebound hosts, a device's own payment, a
//!   paid route spelled otherwise than the one way its pending payments are found by) and which routes' 402
//!   the proxy pays ([`PAID_ROUTES`]).
//! - `devices`: device ids and the one-request-at-a-time lock per device.
//! - `forward`: the request sent on to the facilitator, its answer read within its limit.
//! - `handle`: a device's request end to end: a paid request sent again answered with its kept answer
//!   ([`crate::replay`]), else forwarded, and a 402 on a paid route paid within its budget.
//! - `shared`: what every connection shares (settings, the wallet-wide cap, the HTTP client, the audit log).
//! - `audit`: the audit log, and how each payment a request signed or found pending ended.
//! - `reply`: the proxy's own JSON answers and errors.
//!
//! No circles: `shared` (used by `server`, `request`, `forward` and `handle`) uses only `audit`; `checks` uses
//! only `reply`; `reply`, `devices` and `audit` use nothing of the proxy's; `forward` and `handle` add methods to
//! `Shared`, so nothing imports them but for `forward`'s `Parts`.

mod audit;
mod checks;
mod devices;
#[cfg(test)]
mod earlier_tests;
mod forward;
mod handle;
#[cfg(test)]
mod replay_tests;
mod reply;
mod request;
mod server;
mod shared;
#[cfg(test)]
mod tests;

pub use checks::PAID_ROUTES;
pub use devices::device_id;
pub use shared::ProxySettings;

use crate::{Config, SpendPolicy, StateDir};

/// The proxy's hold on the wallet record under `state_dir`, for as long as it serves: the daily cap's record is
/// read and rewritten by one process alone (another proxy on it would lose reservations and pass the cap).
/// Taken before the proxy binds and says it listens, so a second proxy on the same directory never announces
/// itself, whichever of the two gets there first. The state directory (every device's pending payments, the
/// audit log by default) is created private (0700) here, before anything creates it with the default mode.
pub fn hold_wallet(state_dir: &std::path::Path) -> Result<crate::state::StateLock, String> {
    StateDir::new(state_dir).create()?;
    StateDir::new(state_dir.join("wallet")).lock()
}

/// Serve on `listener` until the process ends, holding the wallet record ([`hold_wallet`]).
pub async fn serve(
    listener: tokio::net::TcpListener,
    held: crate::state::StateLock,
    config: Config,
    policy: SpendPolicy,
    settings: ProxySettings,
) -> std::io::Result<()> {
    server::serve_with(listener, held, config, policy, settings, server::LIMITS).await
}
