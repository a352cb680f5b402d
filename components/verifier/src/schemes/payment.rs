//! One `exact` payment against one requirement: the kernel's chain-free checks (`check_exact`: structure,
//! recipient, time window, amount, signature), then the checks of the [`ChainFacts`] this component reads
//! (`ExactChecked::check_chain`; for an asset other than the network's USDC, only whether it has code). The
//! signature is recovered once per verification.
//!
//! [`ChainFacts`]: esim402_core::x402::ChainFacts

use alloy_primitives::{Address, U256};
use esim402_core::store::keys;
use esim402_core::x402::exact::{SignedAuthorization, requirement_asset};
use esim402_core::x402::{
    ExactChecked, InvalidReason, PaymentPayload, PaymentRequirements, check_exact,
};
use esim402_guest::wit;

use crate::chain::Chain;

/// A payment that passed the checks so far (its `payer` and `signed` authorization).
pub struct Checked {
    checked: ExactChecked,
    /// The payer's balance of the network's USDC as the chain checks read it (none before them, and for
    /// another asset, whose balance is not read).
    pub balance: Option<U256>,
}

impl std::ops::Deref for Checked {
    type Target = ExactChecked;
    fn deref(&self) -> &ExactChecked {
        &self.checked
    }
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

/// The chain-free checks at unix time `now`; `signer_known`: the payer an earlier check of this very payload
/// recovered (its signature is then not recovered again).
pub fn check(
    chain: &Chain,
    payload: &PaymentPayload,
    requirements: &PaymentRequirements,
    now: u64,
    signer_known: Option<Address>,
) -> Result<Checked, InvalidReason> {
    check_exact(payload, requirements, &chain.network, now, signer_known).map(|checked| Checked {
        checked,
        balance: None,
    })
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
    let mut checked = match check(chain, payload, requirements, now, None) {
        Ok(c) => c,
        Err(reason) => return Ok(Err((reason, None))),
    };
    chain.check_chain_id().await?;
    // Another asset than our USDC got this far only if its payload is otherwise sound: the chain says whether
    // it exists (the references' `asset_not_deployed_contract`), and nothing else is asked of it.
    let facts = match requirement_asset(requirements) {
        Some(asset) if asset != chain.network.usdc => chain.foreign_asset_facts(asset).await?,
        _ => {
            let facts = chain.facts(&checked.signed, facilitator).await?;
            checked.balance = Some(facts.balance);
            facts
        }
    };
    Ok(match checked.check_chain(&facts) {
        Ok(()) => Ok(checked),
        Err(reason) => Err((reason, facts.message_for(reason).map(str::to_owned))),
    })
}
