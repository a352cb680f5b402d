//! Proof of ownership on the SIM routes (rules: kernel `esim402_core::auth`). The credential is read and
//! checked for form here — an access token's shape, or a `sign-in-with-x` proof verified against this
//! service's public origins (kernel `siwx::expected_origins`) and the clock — before anything is looked up, so a missing or bad credential is 401 whatever
//! the ICCID; dispatch then decides whether it opens the SIM (404 if not, exactly like a SIM that does not
//! exist) and claims a wallet's nonce once.

use esim402_core::auth::siwx::{self, SiwxProof};
use esim402_core::auth::{AuthError, token};
use esim402_core::{ApiError, ErrorKind};
use esim402_guest::wit;
use spin_sdk::http::Request;

use crate::{bearer, dispatch, from_wit, header, now, resource_url};

/// 401 (503 when nothing could be checked).
fn unauthorized(e: &AuthError) -> ApiError {
    let kind = match e {
        AuthError::Unavailable(_) => ErrorKind::Unavailable,
        _ => ErrorKind::Unauthorized,
    };
    ApiError::new(kind, e.to_string())
}

/// The credential the request presents (checked for form, a wallet proof fully verified). A bearer value
/// that is not an access token is a carrier's credential where `carrier_too` (the quota route), else 401.
pub async fn credential(req: &Request, carrier_too: bool) -> Result<wit::Credential, ApiError> {
    // Sent once each: a doubled one was refused before routing (kernel `routes::SINGLE_VALUED_HEADERS`).
    if let Some(presented) = bearer(req) {
        return match presented {
            t if token::looks_like_token(t) => Ok(wit::Credential::Token(t.to_owned())),
            c if carrier_too && !c.is_empty() => Ok(wit::Credential::Carrier(c.to_owned())),
            _ => Err(unauthorized(&AuthError::Invalid(
                "Authorization must be `Bearer sim_…` (the SIM's access token)".into(),
            ))),
        };
    }
    let Some(value) = header(req, siwx::HEADER) else {
        return Err(unauthorized(&AuthError::Missing));
    };
    let url = resource_url(req);
    let client = header(req, "spin-client-addr");
    let configured = crate::public_origins()
        .await
        .map_err(|e| format!("the variable {} {}", e.name, e.problem));
    let origins = siwx::expected_origins(configured, &url, client).map_err(|e| unauthorized(&e))?;
    let verified = SiwxProof::from_header(value)
        .and_then(|p| p.verify_for(&origins, siwx::path_of(&url), now()))
        .map_err(|e| unauthorized(&e))?;
    Ok(wit::Credential::Wallet(wit::WalletProof {
        address: verified.address.to_checksum(None),
        nonce: verified.nonce,
    }))
}

/// The SIM, if the request proves it manages it.
pub async fn owner(req: &Request, iccid: &str) -> Result<wit::Sim, ApiError> {
    let credential = credential(req, false).await?;
    open(iccid, credential).await
}

/// [`owner`] for a route that acts on the SIM and takes no parameters, with the credential that opened it (a
/// route that changes the SIM passes it on to dispatch, which checks it again inside its update: a token rotated
/// away meanwhile changes nothing). Its body, if any, must be an empty JSON object, and is checked before the
/// credential is used (415 for another media type, 400 naming a field it does not take).
pub async fn owner_by(req: Request, iccid: &str) -> Result<(wit::Sim, wit::Credential), ApiError> {
    let credential = credential(&req, false).await?;
    let body = crate::read_body(req).await?;
    esim402_core::json_body::no_params(&body)
        .map_err(|(field, why)| ApiError::invalid(field, why))?;
    let sim = open(iccid, credential.clone()).await?;
    Ok((sim, credential))
}

/// The SIM, if `credential` (from [`credential`]) opens it: dispatch decides, and claims a wallet's nonce. A
/// route that reads a body calls this once the body is known good, so a malformed request does not use up
/// the caller's sign-in.
pub async fn open(iccid: &str, credential: wit::Credential) -> Result<wit::Sim, ApiError> {
    dispatch::authorize(iccid.to_owned(), credential)
        .await
        .map_err(from_wit)
}
