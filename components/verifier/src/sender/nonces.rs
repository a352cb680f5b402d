//! The account nonces of our keys (`signer/<caip2>/<address>/nonce`, kernel `NonceState`), reserved and given
//! back with versioned-cell updates, so two sends of one key never get one nonce.

use esim402_core::evm::{GiveBack, NonceState, SigningKey};
use esim402_core::store::keys;
use esim402_guest::convert::kv_err;
use esim402_guest::{kv, util, wit};

use super::Counts;
use crate::chain::Chain;

/// The nonce record of `signer` on `chain`.
pub fn key(chain: &Chain, signer: alloy_primitives::Address) -> String {
    keys::signer_nonces(&chain.network.caip2(), signer)
}

/// Reserve the next account nonce for `signer`'s transaction held by the record `owner`, given the chain's
/// counts; with the reservation's own holder token, which giving it back needs (kernel
/// `NonceState::reserve_held`: a send that lost its claim to a takeover cannot give back its successor's).
pub async fn reserve(
    chain: &Chain,
    signer: &SigningKey,
    counts: Counts,
    owner: &str,
) -> Result<(u64, String), wit::Error> {
    let now = util::now_secs();
    let holder = util::holder_token().map_err(esim402_guest::convert::internal)?;
    let (_, nonce) =
        kv::update_json_with::<NonceState, u64, wit::Error>(&key(chain, signer.address()), |s| {
            let mut s = s.unwrap_or_default();
            if let Some(mined) = counts.mined {
                s.observe_mined(mined);
            }
            let n = s.reserve_held(counts.pending, owner, &holder, now);
            Ok((s, n))
        })
        .await
        .map_err(kv_err)?;
    Ok((nonce, holder))
}

/// Hand back an account nonce whose transaction was certainly not broadcast (kernel `NonceState::give_back`):
/// released if it is the newest; if later ones are out, it stays held and the answer is `Plug`; if it is no
/// longer the reservation `holder` made for `owner` (the record that reserved it), nothing changes
/// (`NotHeld`). A store failure answers `NotHeld` (nothing to do; a reservation left behind is an orphan the
/// next send releases). With `recorded`, kernel `NonceState::give_back_recorded` instead (the send's
/// transaction may be on `owner`'s record: the nonce stays held, an orphan at once).
pub async fn give_back(
    chain: &Chain,
    signer: &SigningKey,
    nonce: u64,
    owner: &str,
    holder: &str,
    recorded: bool,
) -> GiveBack {
    let r = kv::update_json_with::<NonceState, GiveBack, wit::Error>(
        &key(chain, signer.address()),
        |s| {
            let mut s = s.unwrap_or_default();
            let g = if recorded {
                s.give_back_recorded(nonce, owner, holder, util::now_secs())
            } else {
                s.give_back(nonce, owner, holder)
            };
            Ok((s, g))
        },
    )
    .await;
    match r {
        Ok((_, g)) => g,
        Err(e) => {
            eprintln!(
                "verifier: cannot give back account nonce {nonce}: {e}; a later send releases it"
            );
            GiveBack::NotHeld
        }
    }
}

/// Release `signer`'s orphan `nonce` if it is still the reservation read (held by `owner` since `reserved_at`;
/// kernel `NonceState::release_orphan`): a sender working from an older read releases nothing handed out again.
pub async fn release_orphan(
    chain: &Chain,
    signer: alloy_primitives::Address,
    nonce: u64,
    owner: &str,
    reserved_at: Option<u64>,
) {
    update(chain, signer, nonce, |s| {
        s.release_orphan(nonce, owner, reserved_at);
    })
    .await;
}

/// Keep `signer`'s orphan `nonce` for a no-op transaction, or release it if it is the newest, if it is still
/// the reservation read (kernel `NonceState::heal_orphan`); a store failure answers `NotHeld`.
pub async fn heal_orphan(
    chain: &Chain,
    signer: alloy_primitives::Address,
    nonce: u64,
    owner: &str,
    reserved_at: Option<u64>,
    now: u64,
) -> GiveBack {
    let r = kv::update_json_with::<NonceState, GiveBack, wit::Error>(&key(chain, signer), |s| {
        let mut s = s.unwrap_or_default();
        let g = s.heal_orphan(nonce, owner, reserved_at, now);
        Ok((s, g))
    })
    .await;
    r.map(|(_, g)| g).unwrap_or_else(|e| {
        eprintln!("verifier: cannot fill account nonce {nonce}: {e}");
        GiveBack::NotHeld
    })
}

/// Give back an account nonce whose transaction was certainly not broadcast.
pub async fn release(chain: &Chain, signer: &SigningKey, nonce: u64) {
    update(chain, signer.address(), nonce, |s| {
        s.release_on_failure(nonce);
    })
    .await;
}

/// Apply `f` to `signer`'s nonce state (best effort: a failure to release `nonce` is logged).
async fn update(
    chain: &Chain,
    signer: alloy_primitives::Address,
    nonce: u64,
    f: impl Fn(&mut NonceState),
) {
    let r = kv::update_json::<NonceState, ()>(&key(chain, signer), |s| {
        let mut s = s.unwrap_or_default();
        f(&mut s);
        Ok(s)
    })
    .await;
    if let Err(e) = r {
        eprintln!("verifier: cannot release account nonce {nonce}: {e}");
    }
}
