//! SIM records (`sim/<iccid>`, kernel `order::StoredSim`): read and written here, by orders and by the
//! lifecycle alike; and the owner index (`owner/<address>`: the ICCIDs a wallet paid for, oldest first).

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

/// Add `iccid` to `owner`'s index (once).
pub async fn index_owner(
    owner: esim402_core::chain::Address,
    iccid: &str,
) -> Result<(), wit::Error> {
    kv::update_json::<Vec<String>, wit::Error>(&keys::owner_sims(owner), |current| {
        let mut list = current.unwrap_or_default();
        if !list.iter().any(|i| i == iccid) {
            list.push(iccid.to_owned());
        }
        Ok(list)
    })
    .await
    .map(drop)
    .map_err(kv_err)
}

/// The ICCIDs `owner` paid for.
pub async fn owned(owner: esim402_core::chain::Address) -> Result<Vec<String>, wit::Error> {
    kv::get_json::<Vec<String>, wit::Error>(&keys::owner_sims(owner))
        .await
        .map(Option::unwrap_or_default)
        .map_err(kv_err)
}
