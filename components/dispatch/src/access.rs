//! Who may manage a SIM (kernel `esim402_core::auth`): checking a presented credential against the SIM's
//! stored owner and token hash, claiming a sign-in nonce once, and issuing, rotating and (on terminate, in
//! [`crate::sims`]) revoking access tokens. Keys: `sim/<iccid>` (the `access` field), `auth/nonce/…`.

use esim402_core::auth::{self, AuthError, Presented, SimToken, TokenState};
use esim402_core::chain::Address;
use esim402_core::order::StoredSim;
use esim402_core::store::keys;
use esim402_guest::convert::{kv_err, sim_to_wit};
use esim402_guest::{kv, wit};

use crate::sim_store::{load, parse_iccid};

fn refused(e: AuthError) -> wit::Error {
    match e {
        AuthError::NotYours(iccid) => wit::Error::NotFound(format!("no SIM {iccid}")),
        other => wit::Error::Unauthorized(other.to_string()),
    }
}

/// `authorize`: the SIM if `credential` opens it. A wallet's nonce is claimed only after the wallet is found
/// to be the owner, so nobody but owners can make the store remember nonces.
pub async fn authorize(iccid: &str, credential: &wit::Credential) -> Result<wit::Sim, wit::Error> {
    let id = parse_iccid(iccid)?;
    let not_yours = || refused(AuthError::NotYours(iccid.to_owned()));
    // A carrier credential is checked before the SIM is looked up: a wrong one is refused alike for every
    // ICCID, so it cannot tell which exist.
    let carrier = match credential {
        wit::Credential::Carrier(secret) => Some(
            crate::config::get()
                .await?
                .callbacks
                .carrier_of(Some(secret))
                .map_err(|e| wit::Error::Unauthorized(e.to_string()))?
                .to_string(),
        ),
        _ => None,
    };
    let sim = load(&id).await?.ok_or_else(not_yours)?;
    match credential {
        wit::Credential::Token(t) => {
            auth::decide(iccid, &sim.access, &Presented::Token(t)).map_err(refused)?;
        }
        wit::Credential::Carrier(_) => {
            if carrier.as_deref() != Some(sim.carrier.as_str()) {
                return Err(not_yours());
            }
        }
        wit::Credential::Wallet(w) => {
            let address: Address = w.address.parse().map_err(|_| not_yours())?;
            auth::decide(iccid, &sim.access, &Presented::Wallet(address)).map_err(refused)?;
            claim_wallet(w)?;
        }
    }
    Ok(sim_to_wit(&sim))
}

/// A verified wallet's address.
pub fn wallet_address(w: &wit::WalletProof) -> Result<Address, wit::Error> {
    w.address
        .parse()
        .map_err(|_| wit::Error::Unauthorized("not an EVM address".into()))
}

/// Claim a verified wallet's sign-in nonce (once per wallet): its address, or `unauthorized` for a reused one.
pub fn claim_wallet(w: &wit::WalletProof) -> Result<Address, wit::Error> {
    let address = wallet_address(w)?;
    if !kv::claim::<wit::Error>(&keys::auth_nonce(address, &w.nonce)).map_err(kv_err)? {
        return Err(refused(AuthError::NonceReused));
    }
    Ok(address)
}

/// The stored half of a fresh SIM's token (generation 0).
pub fn initial_state(key: &[u8; 32], iccid: &str) -> TokenState {
    TokenState {
        generation: 0,
        hash: SimToken::derive(key, iccid, 0).hash(),
    }
}

/// `initial-token`: the generation-0 token while it is still the SIM's token.
pub async fn initial_token(iccid: &str) -> Result<Option<String>, wit::Error> {
    let cfg = crate::config::get().await?;
    let Some(sim) = load(&parse_iccid(iccid)?).await? else {
        return Ok(None);
    };
    let token = SimToken::derive(&cfg.token_key, &sim.iccid, 0);
    Ok(sim
        .access
        .token
        .filter(|s| s.generation == 0 && s.hash == token.hash())
        .map(|_| token.as_str().to_owned()))
}

/// `rotate-token`: the next generation's token; refused for a terminated SIM (its access is revoked).
pub async fn rotate_token(iccid: &str) -> Result<String, wit::Error> {
    let cfg = crate::config::get().await?;
    let id = parse_iccid(iccid)?;
    let sim = kv::update_json::<StoredSim, wit::Error>(&keys::sim(id.as_str()), |current| {
        let mut sim = current.ok_or_else(|| wit::Error::NotFound(format!("no SIM {iccid}")))?;
        if sim.state == esim402_core::esim::SimState::Terminated {
            return Err(wit::Error::Conflict(format!(
                "SIM {iccid} is terminated: its access tokens are revoked"
            )));
        }
        let generation = sim.access.token.map_or(1, |t| t.generation + 1);
        sim.access.token = Some(TokenState {
            generation,
            hash: SimToken::derive(&cfg.token_key, &sim.iccid, generation).hash(),
        });
        Ok(sim)
    })
    .await
    .map_err(kv_err)?;
    let generation = sim.access.token.map_or(0, |t| t.generation);
    Ok(SimToken::derive(&cfg.token_key, &sim.iccid, generation)
        .as_str()
        .to_owned())
}
