//! A SIM whose profile can never be installed (a terminal download failure: dispatch `download-progress`
//! returned it failed, and retired its profile at the SM-DP+): a payment whose activation failed is never
//! kept. Its account is closed (metering `fail`), and what kernel `usage::failed::failed_refunds` lists is owed
//! back through the refund job by the terminate's own path ([`crate::owing::owe`]): its own invoice whole
//! (activation fee or switch fee included) while none of its data was used, every other credit's unused data
//! as a terminate owes it. A switch's replacement gives the moved balance back to the SIM it replaced, which
//! stays in service; if that SIM left service meanwhile, its account is closed as its terminate closes it, or,
//! if it failed the same way itself, as this one's is (its own invoice whole while untouched).
//!
//! Invariants: every step is idempotent (the close is fixed by its first call, a refund is once per invoice,
//! the ledger keeps a repeated event once), so the SM-DP+ sending the notification again finishes what an
//! interrupted first call left, and owes nothing twice. A step that fails fails the callback (not 204), so the
//! SM-DP+ sends it again.

use esim402_core::ApiError;
use esim402_core::usage::account::RefundShare;
use esim402_core::usage::failed::{FailedRefund, failed_refunds};
use esim402_guest::wit;

use crate::owing::{Owing, owe, refund_unused};
use crate::{dispatch, from_wit, metering, pay};

/// Give back the money of `sim`, failed by a terminal download failure: the refunds owed (as recorded).
pub async fn give_back(sim: &wit::Sim) -> Result<Vec<serde_json::Value>, ApiError> {
    let iccid = sim.iccid.as_str();
    let closed = metering::fail(iccid.to_owned(), sim.replaces.clone())
        .await
        .map_err(from_wit)?;
    if let Some(hold) = closed.hold
        && let Err(e) = dispatch::set_balance_hold(hold).await
    {
        eprintln!(
            "gateway: the balance hold of {:?} (its switch's balance back) failed: {e:?}; its next usage batch retries",
            closed.restored
        );
    }
    // The SIM this one replaced left service since the switch: the balance that came back to it is owed as
    // its own end owes it (which found nothing there: the balance had moved). Terminated, as its terminate
    // owes it; failed itself by a terminal download failure (its profile Error), as this SIM's is owed: its own
    // invoice whole while untouched (its first failure owed nothing: its balance was here).
    if let Some(old) = &sim.replaces
        && let Some(old_sim) = dispatch::get_sim(old.clone()).await.map_err(from_wit)?
    {
        match (old_sim.state, old_sim.profile_state) {
            (wit::SimState::Failed, wit::ProfileState::Error) => {
                Box::pin(give_back(&old_sim)).await?;
            }
            (wit::SimState::Terminated | wit::SimState::Failed, _) => {
                refund_unused(old).await?;
            }
            _ => {}
        }
    }
    let shares: Vec<RefundShare> =
        serde_json::from_str(&closed.refunds).map_err(|e| ApiError::internal(e.to_string()))?;
    let invoice = pay::load_invoice(&sim.invoice_id).await?;
    let bought_data = matches!(invoice.purchase, wit::Purchase::Activation(_));
    let owing = failed_refunds(shares, &sim.invoice_id, bought_data)
        .into_iter()
        .map(|r| match r {
            FailedRefund::Data(share) => Owing::data(iccid, share),
            FailedRefund::Whole { invoice, share } => Owing {
                invoice,
                tx: share.map(|s| s.tx),
                amount: None,
                reason: format!("SIM {iccid} failed: its profile can never be installed"),
            },
        })
        .collect();
    let owed = owe(
        owing,
        "the SM-DP+ sending the notification again retries it",
    )
    .await;
    // Not answered 204 while a refund is left to owe: the SM-DP+ sends the notification again, and the repeat
    // owes what this call could not (nothing twice).
    if owed.retry > 0 {
        return Err(ApiError::new(
            esim402_core::ErrorKind::Unavailable,
            format!(
                "{} refund(s) of failed SIM {iccid} could not be recorded now; send the notification again",
                owed.retry
            ),
        ));
    }
    Ok(owed.recorded)
}
