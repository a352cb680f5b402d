//! What dispatch keeps in the `default` key-value store, and its WIT rendering.
//!
//! - `sim/<iccid>` → [`StoredSim`]: written as `pending` as soon as a carrier allocates a profile, so an order
//!   interrupted mid-way is visible; `active` once confirmed and released.
//! - `order/<invoice id>` → [`Order`]: the journal of one paid order (activation or switch). Claimed with
//!   insert-if-absent or, once its lease expired, compare-and-swap, so one invoice drives at most one order at a
//!   time and a repeat returns (or resumes) the same order.
//! - `cleanup/queue` → `Vec<`[`Cleanup`]`>`: carrier-side work that must still happen so no profile leaks.

use esim402_core::esim::{ProfileState, RoamingPolicy, SimState};
use serde::{Deserialize, Serialize};

use crate::wit;

/// A SIM as stored.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StoredSim {
    pub iccid: String,
    pub carrier: String,
    pub region: String,
    pub state: SimState,
    /// `None` until the carrier released the profile.
    pub profile_state: Option<ProfileState>,
    /// The activation code (`1$…$…`, without the QR prefix). A secret.
    pub activation_code: Option<String>,
    pub eid: Option<String>,
    pub roaming: RoamingPolicy,
    pub data_mb: u32,
    pub invoice_id: String,
    pub created_at: u64,
    #[serde(default)]
    pub failovers: Vec<String>,
    #[serde(default)]
    pub replaces: Option<String>,
    #[serde(default)]
    pub replaced_by: Option<String>,
}

impl StoredSim {
    pub fn to_wit(&self) -> wit::Sim {
        wit::Sim {
            iccid: self.iccid.clone(),
            carrier: self.carrier.clone(),
            region: self.region.clone(),
            state: match self.state {
                SimState::Pending => wit::SimState::Pending,
                SimState::Active => wit::SimState::Active,
                SimState::Suspended => wit::SimState::Suspended,
                SimState::Terminated => wit::SimState::Terminated,
                SimState::Failed => wit::SimState::Failed,
            },
            profile_state: match self.profile_state {
                None => wit::ProfileState::Ordered,
                Some(ProfileState::Released) => wit::ProfileState::Released,
                Some(ProfileState::Downloaded) => wit::ProfileState::Downloaded,
                Some(ProfileState::Installed) => wit::ProfileState::Installed,
                Some(ProfileState::Enabled) => wit::ProfileState::Enabled,
                Some(ProfileState::Deleted) => wit::ProfileState::Deleted,
                Some(ProfileState::Error) => wit::ProfileState::Error,
            },
            activation_code: self
                .activation_code
                .as_ref()
                .map(|c| format!("{}{c}", esim402_core::esim::activation_code::QR_PREFIX)),
            eid: self.eid.clone(),
            roaming: wit::RoamingPolicy {
                allow: self.roaming.allow.iter().map(ToString::to_string).collect(),
                deny: self.roaming.deny.iter().map(ToString::to_string).collect(),
                countries: self.roaming.countries.clone(),
            },
            data_mb: self.data_mb,
            invoice_id: self.invoice_id.clone(),
            created_at: self.created_at,
            failovers: self.failovers.clone(),
            replaces: self.replaces.clone(),
            replaced_by: self.replaced_by.clone(),
        }
    }
}

pub fn sim_key(iccid: &str) -> String {
    format!("sim/{iccid}")
}

pub fn order_key(invoice_id: &str) -> String {
    format!("order/{invoice_id}")
}

pub const CLEANUP_KEY: &str = "cleanup/queue";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OrderStatus {
    Ordering,
    Done,
    Failed,
}

/// A profile allocated by a carrier whose order is not finished yet.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Step {
    pub carrier: String,
    pub iccid: String,
    /// Sent again verbatim on resume: the SM-DP+ is idempotent on it, so a confirm that succeeded unseen
    /// replays its MatchingID instead of failing on the profile's new state.
    pub confirm_fci: String,
}

/// The journal of one paid order.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Order {
    pub invoice_id: String,
    pub status: OrderStatus,
    /// Who drives the order, and until when (unix seconds); another call may take over after that.
    pub token: String,
    pub lease_until: u64,
    pub step: Option<Step>,
    /// The SIM, once done.
    pub iccid: Option<String>,
    /// Carriers skipped so far, as `carrier: reason`.
    pub failovers: Vec<String>,
    /// Why it failed, once failed.
    pub error: Option<String>,
}

/// Carrier-side work still owed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Cleanup {
    /// CancelOrder this ICCID with the given final status.
    Cancel {
        carrier: String,
        iccid: String,
        retire: bool,
    },
    /// A DownloadOrder whose answer was lost: replay its call id to learn the ICCID, then cancel it.
    LostDownload {
        carrier: String,
        fci: String,
        profile_type: String,
        eid: Option<String>,
    },
}
