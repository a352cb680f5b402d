//! Who may manage a SIM (kernel `esim402_core::auth`): checking a presented credential against the SIM's
//! stored owner and token hash, claiming a sign-in nonce once, and issuing, rotating and (on terminate, in
//! [`crate::sims`]) revoking access tokens. A token is bound to its SIM record (ICCID and invoice, kernel
//! `auth::token`): a profile handed out again is recorded for another payer with tokens of its own. Keys:
//! `sim/<iccid>` (the `access` field), `auth/nonce/…`.

use esim402_core::auth::{self, AuthError, Presented, TokenState, token};
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
    if matches!(credential, wit::Credential::Token(_)) {
        // No token is honoured while the deployment has no token key of its own (outside development
        // without `access_token_secret`): the error names the variable.
        crate::config::get().await?.token_key()?;
    }
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

/// Whether `by`, a credential [`authorize`] accepted for this request, still opens `sim` as stored now (inside
/// the cell update that acts on it): a token rotated away since, or a record recorded over for another payer,
/// does not (404, as `authorize` answers it, and nothing changes). Without this, a leaked token's request
/// authorized just before its owner's rotation could rotate again after it and keep the SIM.
pub fn still_opens(sim: &StoredSim, by: &wit::Credential) -> Result<(), wit::Error> {
    let opens = match by {
        wit::Credential::Token(t) => {
            auth::decide(&sim.iccid, &sim.access, &Presented::Token(t)).is_ok()
        }
        wit::Credential::Wallet(w) => w
            .address
            .parse::<Address>()
            .is_ok_and(|a| auth::decide(&sim.iccid, &sim.access, &Presented::Wallet(a)).is_ok()),
        // A carrier asks for quota; it manages no SIM.
        wit::Credential::Carrier(_) => false,
    };
    // Answered as `authorize` answers a credential that does not open the SIM (a rotated or revoked token): 404.
    if opens {
        Ok(())
    } else {
        Err(refused(AuthError::NotYours(sim.iccid.clone())))
    }
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

/// The stored half of the first token of a new SIM record (`iccid`, paid by `invoice_id`; generation 0).
pub fn initial_state(key: &[u8; 32], iccid: &str, invoice_id: &str) -> TokenState {
    token::initial_state(key, iccid, invoice_id)
}

/// `initial-token`: the first token of the SIM record of `iccid` while it is still its token (kernel
/// `auth::token::initial_token`), only for the record `invoice_id` paid for: a paid answer replayed after the
/// profile was handed out again to another payer gets none (it would be that payer's first token).
pub async fn initial_token(iccid: &str, invoice_id: &str) -> Result<Option<String>, wit::Error> {
    let cfg = crate::config::get().await?;
    let key = cfg.token_key()?;
    let Some(sim) = load(&parse_iccid(iccid)?).await? else {
        return Ok(None);
    };
    if invoice_id != sim.invoice_id {
        return Ok(None);
    }
    Ok(
        token::initial_token(key, &sim.iccid, &sim.invoice_id, sim.access.token.as_ref())
            .map(|t| t.as_str().to_owned()),
    )
}

/// `rotate-token`: the next generation's token; refused (conflict) unless the SIM is live (kernel
/// `auth::token::rotation_refused`: a terminated SIM's tokens are revoked, a failed one's profile may be
/// another payer's next, a pending one's confirm would undo the rotation).
pub async fn rotate_token(iccid: &str, by: &wit::Credential) -> Result<String, wit::Error> {
    let cfg = crate::config::get().await?;
    let key = cfg.token_key()?;
    let id = parse_iccid(iccid)?;
    let (_, token) =
        kv::change_json::<StoredSim, _, wit::Error>(&keys::sim(id.as_str()), |current| {
            let mut sim = current.ok_or_else(|| wit::Error::NotFound(format!("no SIM {iccid}")))?;
            still_opens(&sim, by)?;
            if let Some(why) = token::rotation_refused(sim.state) {
                return Err(wit::Error::Conflict(format!("SIM {iccid} {why}")));
            }
            let (token, state) =
                token::rotated(key, &sim.iccid, &sim.invoice_id, sim.access.token.as_ref());
            sim.access.token = Some(state);
            Ok((kv::Change::Put(sim), token))
        })
        .await
        .map_err(kv_err)?;
    Ok(token.as_str().to_owned())
}
