//! **Test-only** wall-clock skew for the guests, for the crash-safety tests (`tests/all/crash.rs`).
//!
//! `ESIM402_CLOCK_SKEW_SECS=<n>`: every component's wall clock (`wasi:clocks/wall-clock`, which the components
//! read as "now") runs `n` seconds ahead of the machine's. A test restarts a killed host with it to stand for
//! "restarted after the payment's lease ran out" (`esim402_core::paid::LEASE_SECS`) without waiting for it.
//! Monotonic clocks, the host's own timers and every peer (chain, SM-DP+) keep real time.
//!
//! Unset (always, outside tests), [`skew`] is `None` and the guests get wasmtime's own wall clock. Never set it
//! in a deployment.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use wasmtime_wasi::HostWallClock;

/// The environment variable that sets the skew.
pub const ENV: &str = "ESIM402_CLOCK_SKEW_SECS";

/// The skew `ESIM402_CLOCK_SKEW_SECS` asks for; a malformed value fails start-up.
pub fn skew() -> anyhow::Result<Option<Duration>> {
    let Some(value) = std::env::var_os(ENV) else {
        return Ok(None);
    };
    let value = value.to_string_lossy();
    let secs: u64 = value
        .trim()
        .parse()
        .map_err(|_| anyhow::anyhow!("{ENV}={value:?}: expected whole seconds"))?;
    tracing::warn!(secs, "test-only guest clock skew set");
    Ok(Some(Duration::from_secs(secs)))
}

/// The machine's wall clock, `ahead` in the future.
#[derive(Debug, Clone, Copy)]
pub struct SkewedClock {
    /// How far ahead.
    pub ahead: Duration,
}

impl HostWallClock for SkewedClock {
    fn resolution(&self) -> Duration {
        Duration::from_nanos(1)
    }

    fn now(&self) -> Duration {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .saturating_add(self.ahead)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_skewed_clock_runs_ahead() {
        let real = SystemTime::now().duration_since(UNIX_EPOCH).unwrap();
        let skewed = SkewedClock {
            ahead: Duration::from_secs(200),
        }
        .now();
        assert!(skewed >= real + Duration::from_secs(200));
    }
}
