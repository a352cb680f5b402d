//! The holds on a payer's balance while its `exact` payments are driven (rules: kernel `hold`; key:
//! `x402/hold/<caip2>/<asset>/<payer>`, written by this component only). `verify` places one once the chain
//! checks passed, before the gateway orders the profile; the gateway releases it (`release-hold`) when the
//! payment ends without moving money. A settled payment's hold is not released: a later placement that finds
//! the holds full asks the chain which nonces are used and drops those.

use alloy_primitives::{Address, U256};
use esim402_core::hold::{Hold, Holds, Placement, Refusal};
use esim402_core::store::keys;
use esim402_core::x402::InvalidReason;
use esim402_core::x402::exact::TransferAuthorization;
use esim402_guest::convert::kv_fault;
use esim402_guest::kv::{self, Change, KvError};
use esim402_guest::wit;

use crate::chain::Chain;
use crate::rejected;

fn refused(r: Refusal) -> wit::Error {
    match r {
        Refusal::Insufficient(_) => rejected(InvalidReason::InsufficientFunds),
        Refusal::OtherInvoice => wit::Error::Conflict(r.to_string()),
        // Passing: the same payment sent again shortly is held.
        Refusal::TooMany => wit::Error::Unavailable(r.to_string()),
    }
}

fn kv_err(e: KvError<Refusal>) -> wit::Error {
    match e {
        KvError::Refused(r) => refused(r),
        other => kv_fault("", other),
    }
}

/// What an update of the holds asks for next: the nonces to look up on chain, if any.
type Next = Option<Vec<alloy_primitives::B256>>;

/// A kernel step on the holds: whether it changed them, and what to do next.
type Step<'a> = dyn Fn(&mut Holds) -> Result<(bool, Next), Refusal> + 'a;

/// Apply `f` to the holds at `key` (none: empty), writing them when it says they changed (removing the record
/// once empty); `f`'s answer. (`dyn`: one copy of the cell protocol's driver for every caller.)
async fn update(key: &str, f: &Step<'_>) -> Result<Next, wit::Error> {
    // Holds are soft state: a record that does not read as one (corrupt, or written by a later build) counts
    // as none and is overwritten, rather than refusing that payer every payment.
    let (_, r) = kv::change_json::<serde_json::Value, Next, Refusal>(key, |cur| {
        let mut holds: Holds = cur
            .and_then(|v| serde_json::from_value(v).ok())
            .unwrap_or_default();
        let (changed, r) = f(&mut holds)?;
        let change = match (changed, holds.is_empty()) {
            (false, _) => Change::Keep,
            (true, true) => Change::Remove,
            (true, false) => match serde_json::to_value(&holds) {
                Ok(v) => Change::Put(v),
                Err(_) => Change::Keep,
            },
        };
        Ok((change, r))
    })
    .await
    .map_err(kv_err)?;
    Ok(r)
}

/// Hold `authorization` (paying `invoice` in `asset`) against `balance`, the payer's balance as `verify` read
/// it (none for an asset other than the network's USDC, whose balance is not read, and for a payment whose
/// settlement was claimed already: only the authorization is then held to one invoice). Refused:
/// `insufficient_funds` when the balance does not cover the payer's other payments in flight too, 409 when the
/// authorization is paying another invoice, 503 while the payer has too many in flight.
pub async fn place(
    chain: &Chain,
    asset: Address,
    authorization: &TransferAuthorization,
    balance: Option<U256>,
    invoice: &str,
    now: u64,
) -> Result<(), wit::Error> {
    let hold = Hold::of(authorization, invoice, now);
    let key = keys::holds(&chain.network.caip2(), asset, authorization.from);
    let read = balance.unwrap_or(U256::MAX);
    let placed = update(&key, &|holds| {
        Ok(match holds.place(&hold, read, now)? {
            Placement::Held { changed } => (changed, None),
            Placement::Check(nonces) => (false, Some(nonces)),
        })
    })
    .await?;
    let Some(nonces) = placed else {
        return Ok(());
    };
    let (balance, used) = match balance {
        Some(_) => chain.used_nonces(authorization.from, &nonces).await?,
        // Another asset's nonces are not read: its holds only lapse or are released.
        None => (U256::MAX, Vec::new()),
    };
    update(&key, &|holds| {
        holds
            .place_checked(&hold, balance, &used, now)
            .map(|changed| (changed, None))
    })
    .await
    .map(drop)
}

/// End the hold of `authorization` for `invoice` (its payment ended without moving money).
pub async fn release(
    chain: &Chain,
    asset: Address,
    authorization: &TransferAuthorization,
    invoice: &str,
    now: u64,
) -> Result<(), wit::Error> {
    let key = keys::holds(&chain.network.caip2(), asset, authorization.from);
    update(&key, &|holds| {
        Ok((holds.release(authorization.nonce, invoice, now), None))
    })
    .await
    .map(drop)
}

/// Whether an invoice's payment holds the authorization `nonce` of `payer` in `asset` on `network` (CAIP-2) at
/// `now` (kernel `settlement::api_may_settle`): its invoice's settlement must be what executes it.
pub async fn holds_nonce(
    network: &str,
    asset: Address,
    payer: Address,
    nonce: alloy_primitives::B256,
    now: u64,
) -> Result<bool, wit::Error> {
    let key = keys::holds(network, asset, payer);
    // Soft state (as `update` reads it): a record that does not read as holds holds nothing.
    let holds: Holds = kv::get_json::<serde_json::Value, ()>(&key)
        .await
        .map_err(|e| kv_fault(&key, e))?
        .and_then(|v| serde_json::from_value(v).ok())
        .unwrap_or_default();
    Ok(!esim402_core::settlement::api_may_settle(
        &holds, nonce, now,
    ))
}
