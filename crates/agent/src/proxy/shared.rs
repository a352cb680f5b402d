//! What every connection of the proxy shares: its settings ([`ProxySettings`]), the wallet and spend policy, the
//! wallet-wide daily cap, the one HTTP client, the per-device locks and the audit log; and the agent a device's
//! payment is made with, narrowed to the device's budget and kept in its own state directory.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use esim402_core::UsdcAmount;
use tokio::sync::Mutex;

use super::audit::AuditLog;
use crate::{Agent, Config, SpendPolicy, StateDir};

/// How the proxy runs.
#[derive(Debug, Clone)]
pub struct ProxySettings {
    /// The header naming the device (`None`: the source address).
    pub device_header: Option<String>,
    /// A device's most per payment.
    pub device_max_per_payment: UsdcAmount,
    /// A device's most per UTC day.
    pub device_max_per_day: UsdcAmount,
    /// The audit log (JSON lines, appended).
    pub audit_log: PathBuf,
    /// The gateway's state directory (devices get sub-directories).
    pub state_dir: PathBuf,
}

pub(super) struct Shared {
    pub(super) config: Config,
    pub(super) policy: SpendPolicy,
    /// The wallet's `max_per_day_usdc`, shared by every device (each also has its own, smaller budget).
    pub(super) budget: Arc<crate::budget::Budget>,
    pub(super) settings: ProxySettings,
    pub(super) http: reqwest::Client,
    /// One lock per device with a request in progress (see [`device_lock`](super::devices::device_lock)).
    pub(super) devices: Mutex<HashMap<String, Arc<Mutex<()>>>>,
    pub(super) audit: Arc<AuditLog>,
    /// The address the proxy listens on (the `Host` a request may name).
    pub(super) listen: SocketAddr,
}

impl Shared {
    /// The device's agent: the gateway's wallet and policy, narrowed to the device's budget, with the device's
    /// own state directory, talking through the proxy's one HTTP client.
    pub(super) fn agent_for(&self, device: &str) -> Agent {
        let mut policy = self.policy.clone();
        policy.max_per_payment_usdc = policy
            .max_per_payment_usdc
            .min(self.settings.device_max_per_payment);
        policy.max_per_day_usdc = policy
            .max_per_day_usdc
            .min(self.settings.device_max_per_day);
        let dir = self.settings.state_dir.join("devices").join(device);
        Agent::with_http(
            self.config.clone(),
            policy,
            StateDir::new(dir),
            false,
            self.http.clone(),
        )
        .with_budget(self.budget.clone())
    }
}
