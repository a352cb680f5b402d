//! What paying a refund needs, shared by its payment ([`super::pay`]) and the check of a transaction that looks
//! unmineable ([`super::unmineable`]): the transfer a refund is paid with, and the refund record's transitions.

use alloy_primitives::{Address, U256};
use esim402_core::chain::parse_address;
use esim402_core::refund::Refund;
use esim402_core::x402::exact::parse_decimal_u256;
use esim402_guest::convert::kv_err;
use esim402_guest::kv;
use esim402_guest::wit;

use crate::chain::Chain;

/// Apply `f` (a kernel transition returning whether it changed the refund): the refund after the attempt
/// and that answer; `None` if there is no refund.
pub(super) async fn update(
    key: &str,
    f: impl Fn(&mut Refund) -> bool,
) -> Result<Option<(Refund, bool)>, wit::Error> {
    kv::transition_json(key, f).await.map_err(kv_err)
}

/// What a refund transfer needs, checked before it is claimed.
pub(super) struct Transfer {
    /// The network's USDC (the refund's asset).
    pub token: Address,
    /// The payer.
    pub to: Address,
    /// Atomic units.
    pub amount: U256,
}

/// The transfer `refund` is paid with on `chain`, or why it cannot be.
pub(super) fn transfer_of(refund: &Refund, chain: &Chain) -> Result<Transfer, String> {
    if refund.network != chain.network.caip2() {
        return Err(format!(
            "the refund is owed on {}, which is not the enabled network",
            refund.network
        ));
    }
    if parse_address(&refund.asset).ok() != Some(chain.network.usdc) {
        return Err(format!(
            "the refund is owed in {}, which is not the network's USDC",
            refund.asset
        ));
    }
    let to = parse_address(&refund.payer).map_err(|e| format!("bad payer: {}", e.0))?;
    let amount = parse_decimal_u256(&refund.amount)
        .filter(|a| *a > U256::ZERO)
        .ok_or_else(|| format!("bad amount {:?}", refund.amount))?;
    Ok(Transfer {
        token: chain.network.usdc,
        to,
        amount,
    })
}
