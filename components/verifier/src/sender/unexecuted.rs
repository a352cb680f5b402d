//! A settlement whose own transaction failed (reverted, or can never be mined) while its authorization reads
//! unused: our calldata published the authorization, so it stays executable until its `validBefore` (kernel
//! `settlement::unexecuted`). Split from [`super::receipts`], which calls it.

use alloy_primitives::B256;
use esim402_core::evm::rpc::EthGetBlockByNumber;
use esim402_core::settlement::{self, Outcome, Unexecuted};
use esim402_core::x402::exact::TransferAuthorization;

use super::front_run;
use crate::chain::Chain;

/// What the settlement at `record_key` (claimed as `claim`) becomes whose transaction ended as `failed` (reverted, or can never be mined)
/// while the authorization `auth` of `from` (`nonce`) read unused: our transaction published it, so anyone may
/// still execute it until its `validBefore` (kernel `settlement::unexecuted`). `authorizationState` at the
/// latest block decides: used, what used it ([`front_run::settle`]); unused, `failed` (no money moved, none
/// can) once that block is past `validBefore`, else `None` (pending: nothing withdrawn).
pub(super) async fn unexecuted(
    chain: &Chain,
    (record_key, claim): (&str, &str),
    failed: Outcome,
    auth: Option<&TransferAuthorization>,
    (from, nonce): (alloy_primitives::Address, B256),
) -> Option<Outcome> {
    let valid_before = auth.map(|a| a.valid_before);
    let latest = match chain.rpc.call(&EthGetBlockByNumber::latest()).await {
        Ok(block) => block,
        Err(e) => {
            eprintln!("verifier: cannot read the latest block ({e}); {failed:?} left pending");
            None
        }
    };
    let used = match latest {
        Some(b) => chain
            .authorization_used_at(from, nonce, b.number)
            .await
            .inspect_err(|e| eprintln!("verifier: authorizationState is unreadable ({e})"))
            .ok(),
        None => None,
    };
    match settlement::unexecuted(valid_before, latest.map(|b| b.timestamp), used) {
        Unexecuted::Pending => {
            eprintln!(
                "verifier: {failed:?}: the authorization {nonce} of {from}, published by our calldata, is not known to be unused past its validBefore; left pending"
            );
            None
        }
        Unexecuted::Failed => Some(failed),
        Unexecuted::UsedMeanwhile => {
            let used = front_run::Used {
                from,
                nonce,
                executes: auth,
                by_block: latest.map_or(0, |b| b.number),
                window: None,
            };
            front_run::settle(chain, record_key, claim, failed, &used).await
        }
    }
}
