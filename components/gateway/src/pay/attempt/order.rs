//! The order step of an `exact` payment: the profile ordered (or, for a payment whose settlement an earlier
//! attempt claimed, what that attempt's order delivered, fetched), before anything is settled.

use esim402_core::ledger::EntryKind;
use esim402_core::paid::StoredResponse;
use esim402_guest::wit;

use super::super::Order;
use super::super::answers::{order_pending, uncharged, unsettled};
use super::Attempt;
use crate::from_wit;

impl Attempt<'_> {
    /// Order the profile for an `exact` payment; a failure ends the invoice (the order journal replays it)
    /// with nothing charged. A payment whose settlement an earlier attempt claimed (after its order delivered)
    /// is not ordered again: what that order delivered is fetched ([`Order::delivered_before`]), and the
    /// settlement then decides as for any payment (settled: credited, or owed back if it can no longer be;
    /// failed: withdrawn). A fault there never ends it.
    pub(super) async fn deliver(
        &self,
        order: &Order,
        verified: &wit::Verified,
    ) -> Result<wit::Sim, (wit::PaymentEnd, StoredResponse)> {
        let payer = verified.payer.as_str();
        let delivered = match verified.claimed {
            true => match order.delivered_before(&self.invoice.id).await {
                Ok(Some(sim)) => Ok(sim),
                Ok(None) => order.deliver(&self.invoice.id, payer).await,
                Err(e) => Err(e),
            },
            false => order.deliver(&self.invoice.id, payer).await,
        };
        match delivered {
            Ok(sim) if sim.activation_code.is_some() || verified.claimed => Ok(sim),
            Ok(_) => Err((wit::PaymentEnd::Resume, order_pending())),
            Err(e) if verified.claimed => Err((wit::PaymentEnd::Resume, unsettled(from_wit(e)))),
            Err(e) => {
                let mut err = from_wit(e);
                self.release_hold().await;
                self.note(
                    EntryKind::ActivationFailed,
                    self.fields()
                        .payer(payer.to_owned())
                        .detail("reason", &err.message),
                );
                err.message = format!(
                    "{}; no payment was taken (the authorization was not settled); request a new invoice",
                    err.message
                );
                Err((wit::PaymentEnd::Done, uncharged(&err)))
            }
        }
    }
}
