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
use crate::policy::PolicyRefusal;
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

/// Why a device's payment was refused by a budget, for its 403: which limit refused it — the device's per-payment
/// or per-day limit (`--device-max-per-payment`, `--device-max-per-day`), or the wallet's own (the spend
/// policy's `max_per_payment_usdc`, its `max_per_day_usdc` reached by this device alone, or that cap shared by
/// every device) — and the amounts, as [`Shared::agent_for`] narrowed the policy. Before, every refusal read
/// "device d1 (or the wallet all devices share): …" and named neither. Any other rule of the policy (networks,
/// assets, recipients) is named as the policy names it.
pub(super) fn over_budget(
    device: &str,
    refusal: &PolicyRefusal,
    policy: &SpendPolicy,
    settings: &ProxySettings,
) -> String {
    let why = match refusal {
        PolicyRefusal::MaxPerPayment { price, max }
            if settings.device_max_per_payment <= policy.max_per_payment_usdc =>
        {
            format!(
                "device_max_per_payment (--device-max-per-payment): device {device} may pay at most {max} USDC per \
                 payment, and the offer costs {price} USDC"
            )
        }
        PolicyRefusal::MaxPerPayment { price, max } => format!(
            "max_per_payment_usdc (the wallet's spend policy): at most {max} USDC per payment, and the offer costs \
             {price} USDC"
        ),
        PolicyRefusal::MaxPerDay { spent, price, max }
            if settings.device_max_per_day <= policy.max_per_day_usdc =>
        {
            format!(
                "device_max_per_day (--device-max-per-day): device {device} may pay at most {max} USDC a day; it has \
                 spent {spent} USDC today, and this payment of {price} USDC would take it past that"
            )
        }
        PolicyRefusal::MaxPerDay { spent, price, max } => format!(
            "max_per_day_usdc (the wallet's spend policy): at most {max} USDC a day; device {device} alone has spent \
             {spent} USDC today, and this payment of {price} USDC would take it past that"
        ),
        PolicyRefusal::WalletMaxPerDay { spent, price, max } => format!(
            "max_per_day_usdc (the wallet's spend policy, shared by every device): at most {max} USDC a day for all \
             devices together; they have spent {spent} USDC today, and this payment of {price} USDC would take them \
             past that"
        ),
        other => format!("spend policy refused the payment for device {device}: {other}"),
    };
    format!("{why}; nothing was paid")
}
