//! One `exact` payment against one requirement: the kernel's `verify_exact` run twice, first without the chain
//! (structure, recipient, time window, amount, signature), then with the [`ChainFacts`] this component reads.
//!
//! [`ChainFacts`]: esim402_core::x402::ChainFacts

use alloy_primitives::Address;
use esim402_core::store::keys;
use esim402_core::x402::exact::SignedAuthorization;
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
    let checked = match check(chain, payload, requirements, now) {
        Ok(c) => c,
        Err(reason) => return Ok(Err(reason)),
    };
    chain.check_chain_id().await?;
    let facts = chain.facts(&checked.signed, facilitator).await?;
    Ok(verify_exact(payload, requirements, &chain.network, now, Some(&facts)).map(|_| checked))
}
