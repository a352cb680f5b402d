//! One `exact` payment against one requirement: the kernel's `verify_exact` run twice, first without the chain
//! (structure, recipient, time window, amount, signature), then with the [`ChainFacts`] this component reads
//! (for an asset other than the network's USDC, only whether it has code).
//!
//! [`ChainFacts`]: esim402_core::x402::ChainFacts

use alloy_primitives::Address;
use esim402_core::store::keys;
use esim402_core::x402::exact::{SignedAuthorization, requirement_asset};
use esim402_core::x402::{InvalidReason, PaymentPayload, PaymentRequirements, verify_exact};
use esim402_guest::wit;

use crate::chain::Chain;

/// A payment that passed the checks so far.
pub struct Checked {
    /// `authorization.from`.
    pub payer: Address,
    /// The parsed authorization and signature.
    pub signed: SignedAuthorization,
}

impl Checked {
    /// The authorization's claim key on `chain`.
    pub fn nonce_key(&self, chain: &Chain) -> String {
        keys::authorization(
            &chain.network.caip2(),
            self.signed.authorization.from,
            self.signed.authorization.nonce,
        )
    }
}

/// The authorization's claim key, if the payload parses that far.
pub fn nonce_key(chain: &Chain, payload: &PaymentPayload) -> Option<String> {
    let signed = SignedAuthorization::parse(payload.exact()).ok()?;
    let a = &signed.authorization;
    Some(keys::authorization(&chain.network.caip2(), a.from, a.nonce))
}

/// The chain-free checks at unix time `now`.
pub fn check(
    chain: &Chain,
    payload: &PaymentPayload,
    requirements: &PaymentRequirements,
    now: u64,
) -> Result<Checked, InvalidReason> {
    let payer = verify_exact(payload, requirements, &chain.network, now, None)?;
    let signed =
        SignedAuthorization::parse(payload.exact()).map_err(|_| InvalidReason::InvalidPayload)?;
    Ok(Checked { payer, signed })
}

/// Every check, the chain's included: the outer error is a fault (RPC down), the inner one a verdict.
pub async fn verify(
    chain: &Chain,
    facilitator: Option<Address>,
    payload: &PaymentPayload,
    requirements: &PaymentRequirements,
    now: u64,
) -> Result<Result<Checked, InvalidReason>, wit::Error> {
    Ok(
        verify_explained(chain, facilitator, payload, requirements, now)
            .await?
            .map_err(|(reason, _)| reason),
    )
}

/// [`verify`], with a refusal's detail when the chain gave one (the failed simulation's revert).
pub async fn verify_explained(
    chain: &Chain,
    facilitator: Option<Address>,
    payload: &PaymentPayload,
    requirements: &PaymentRequirements,
    now: u64,
) -> Result<Result<Checked, (InvalidReason, Option<String>)>, wit::Error> {
    let checked = match check(chain, payload, requirements, now) {
        Ok(c) => c,
        Err(reason) => return Ok(Err((reason, None))),
    };
    chain.check_chain_id().await?;
    // Another asset than our USDC got this far only if its payload is otherwise sound: the chain says whether
    // it exists (the references' `asset_not_deployed_contract`), and nothing else is asked of it.
    let facts = match requirement_asset(requirements) {
        Some(asset) if asset != chain.network.usdc => chain.foreign_asset_facts(asset).await?,
        _ => chain.facts(&checked.signed, facilitator).await?,
    };
    Ok(
        match verify_exact(payload, requirements, &chain.network, now, Some(&facts)) {
            Ok(_) => Ok(checked),
            Err(reason) => Err((reason, facts.message_for(reason).map(str::to_owned))),
        },
    )
}
