//! SIM records (`sim/<iccid>`, kernel `order::StoredSim`): read and written here, by orders and by the
//! lifecycle alike.

use esim402_core::esim::Iccid;
use esim402_core::order::StoredSim;
use esim402_core::store::keys;
use esim402_guest::convert::{invalid, kv_err};
use esim402_guest::{kv, wit};

/// Parse an ICCID (`invalid-input` on `iccid`).
pub fn parse_iccid(iccid: &str) -> Result<Iccid, wit::Error> {
    Iccid::parse(iccid).map_err(|e| invalid("iccid", e.to_string()))
}

/// The stored SIM.
pub async fn load(iccid: &Iccid) -> Result<Option<StoredSim>, wit::Error> {
    kv::get_json::<StoredSim, wit::Error>(&keys::sim(iccid.as_str()))
        .await
        .map_err(kv_err)
}

/// Store `sim`.
pub async fn put(sim: &StoredSim) -> Result<(), wit::Error> {
    kv::update_json::<StoredSim, wit::Error>(&keys::sim(&sim.iccid), |_| Ok(sim.clone()))
        .await
        .map(drop)
        .map_err(kv_err)
}
