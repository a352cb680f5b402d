//! The eSIM domain kernel: activation codes (SGP.22 §4.1), identifiers (ICCID, EID, PLMN), the ES2+ JSON
//! binding and its status codes, the carrier catalog, and the SIM/profile lifecycle state machines.
//!
//! Everything is pure and validated at construction: parse carrier or client input into these types at the
//! boundary (`Iccid::parse`, `ActivationCode::parse`, `Catalog::from_toml`, …) and pass the types inward. Secrets
//! (MatchingIDs, confirmation codes) have redacting `Debug` implementations so they never reach a log by accident.

pub mod activation_code;
pub mod catalog;
pub mod eid;
pub mod es2;
pub mod failure;
pub mod iccid;
pub mod plmn;
pub mod sim;

pub use activation_code::{ActivationCode, ActivationCodeError, Fqdn, FqdnError, MatchingId};
pub use catalog::{Carrier, Catalog, CatalogError, RegionEntry};
pub use eid::{Eid, EidError};
pub use failure::{TERMINAL_DOWNLOAD_FAILURES, state_after_terminal, terminal_failure};
pub use iccid::{Iccid, IccidError};
pub use plmn::{Plmn, PlmnError, RoamingPolicy, mcc_country};
pub use sim::{
    HoldError, Holds, InvalidTransition, ProfileState, SimAction, SimState, balance_hold,
    owner_action, profile_state_after, retire_after_terminate, retire_on_terminate, switched_away,
    top_up_refused,
};
