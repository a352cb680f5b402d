//! The order step of an `exact` payment: the profile ordered (or, for a payment whose settlement an earlier
//! attempt claimed, what that attempt's order delivered, fetched), before anything is settled.

use esim402_core::ledger::EntryKind;
use esim402_core::paid::StoredResponse;
use esim402_core::{ApiError, ErrorKind};
use esim402_guest::wit;

use super::super::Order;
use super::super::answers::{order_pending, order_pending_paid, uncharged, unsettled};
use super::Attempt;
use crate::{from_wit, verifier};

impl Attempt<'_> {
    /// Order the profile for an `exact` payment; a failure ends the invoice (the order journal replays it)
    /// with nothing charged. A payment whose settlement an earlier attempt claimed (after its order delivered)
    /// is not ordered again: what that order delivered is fetched ([`Order::delivered_before`]), and the
    /// settlement then decides as for any payment (settled: credited, or a top-up owed back if it can no
    /// longer be; failed: withdrawn). A fault there never ends it; a claimed activation or switch whose SIM is
    /// gone (no longer in its journal, or terminated by its owner meanwhile) is [`Attempt::undelivered`].
    pub(super) async fn deliver(
        &self,
        order: &Order,
        verified: &wit::Verified,
    ) -> Result<wit::Sim, (wit::PaymentEnd, StoredResponse)> {
        let payer = verified.payer.as_str();
        if verified.claimed {
            let top_up = matches!(order, Order::TopUp { .. });
            return match order.delivered_before(&self.invoice.id).await {
                Ok(Some(sim)) if top_up => Ok(sim),
                Ok(Some(sim)) if sim.activation_code.is_some() => {
                    let ended =
                        matches!(sim.state, wit::SimState::Terminated | wit::SimState::Failed);
                    // Terminated after the payment was marked paid (its answer was sent, and only the record's
                    // end was lost): delivered, and used as its owner pleased; its terminate refunded what was
                    // unused. Terminated while its settlement was still on its way: it was never delivered.
                    // A failed read counts as paid: the delivered answer, never a refund.
                    if ended && matches!(self.marked_paid().await, Ok(false)) {
                        return Err(self.undelivered(verified).await);
                    }
                    Ok(sim)
                }
                // Still with the carrier: its authorization was executed by another transaction while the order
                // waited (verifier `executed`). Driven on as any order is; a failure is undelivered (its money
                // moved, so it is owed back), and so is an order withdrawn meanwhile.
                Ok(Some(sim)) if !top_up && sim.state == wit::SimState::Pending => {
                    self.deliver_paid(order, verified).await
                }
                Ok(_) => Err(self.undelivered(verified).await),
                Err(e) => Err((wit::PaymentEnd::Resume, unsettled(from_wit(e)))),
            };
        }
        match order
            .deliver_until(&self.invoice.id, payer, self.withdrawal())
            .await
        {
            Ok(sim) if sim.activation_code.is_some() => Ok(sim),
            Ok(_) => Err((wit::PaymentEnd::Resume, order_pending())),
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

    /// When dispatch withdraws the order if it is left pending: once the authorization's `validBefore` has passed.
    fn withdrawal(&self) -> Option<crate::dispatch::Withdrawal> {
        self.proof
            .valid_before()
            .map(crate::dispatch::Withdrawal::UnsettledAfter)
    }

    /// A claimed payment whose order is still with the carrier: its money moved, so it goes on as a tx-hash
    /// payment's order does. The invoice is marked paid with its settlement (so a refund knows what it
    /// returns), and the order is driven on, parked as paid if it stays pending (withdrawn only by the
    /// operator's run, which owes the payment back; its unpaid entry leaves). Pending: the answer names the
    /// transaction (`charged: true`) and the same payment sent again collects the SIM; failed: owed back.
    async fn deliver_paid(
        &self,
        order: &Order,
        verified: &wit::Verified,
    ) -> Result<wit::Sim, (wit::PaymentEnd, StoredResponse)> {
        let payer = verified.payer.as_str();
        let settled = verifier::settle(self.invoice.clone(), self.proof.wit(), verified.clone());
        let tx = match settled.await {
            Ok(wit::Settlement::Settled(tx)) => tx,
            Ok(wit::Settlement::Pending(tx)) => {
                return Err((wit::PaymentEnd::Resume, self.pending(&tx, payer)));
            }
            Err(e) => return Err((wit::PaymentEnd::Resume, unsettled(from_wit(e)))),
        };
        self.paid(&tx, payer).await;
        match order.deliver(&self.invoice.id, payer).await {
            Ok(sim) if sim.activation_code.is_some() => Ok(sim),
            Ok(sim) if sim.state == wit::SimState::Pending => Err((
                wit::PaymentEnd::Resume,
                order_pending_paid(&self.invoice.id, &tx),
            )),
            // Ended without a profile (withdrawn meanwhile): owed back.
            Ok(_) => Err(self.undelivered(verified).await),
            // A failed order, a fault, or another call driving it (dispatch answers several of these alike): its
            // journal says which. Still pending: the money is named and the same payment sent again collects
            // the SIM; delivered by that other call: delivered; gone: owed back.
            Err(e) => match order.delivered_before(&self.invoice.id).await {
                Ok(Some(sim)) if sim.activation_code.is_some() => Ok(sim),
                Ok(Some(sim)) if sim.state == wit::SimState::Pending => Err((
                    wit::PaymentEnd::Resume,
                    order_pending_paid(&self.invoice.id, &tx),
                )),
                Ok(_) => Err(self.undelivered(verified).await),
                Err(_) => {
                    eprintln!(
                        "gateway: the paid order of {} answered {e:?}; its journal is unreadable: the same payment sent again decides",
                        self.invoice.id
                    );
                    Err((
                        wit::PaymentEnd::Resume,
                        order_pending_paid(&self.invoice.id, &tx),
                    ))
                }
            },
        }
    }

    /// A claimed activation or switch whose SIM is gone: nothing is ordered again (that would be a second
    /// profile for one payment); the settlement decides. Settled: owed back (409, `charged: true`); pending:
    /// the same payment sent again decides; failed: nothing was charged.
    async fn undelivered(&self, verified: &wit::Verified) -> (wit::PaymentEnd, StoredResponse) {
        let payer = verified.payer.as_str();
        let err = ApiError::new(
            ErrorKind::Conflict,
            "the profile this payment ordered is gone (terminated, or no longer in its order journal)",
        );
        match verifier::settle(self.invoice.clone(), self.proof.wit(), verified.clone()).await {
            Ok(wit::Settlement::Settled(tx)) => {
                self.paid(&tx, payer).await;
                self.note(
                    EntryKind::ActivationFailed,
                    self.fields().detail("reason", &err.message),
                );
                self.owed_back(&tx, err, payer).await
            }
            Ok(wit::Settlement::Pending(tx)) => (wit::PaymentEnd::Resume, self.pending(&tx, payer)),
            Err(wit::Error::PaymentRequired(reason)) => {
                self.release_hold().await;
                self.note(
                    EntryKind::SettlementFailed,
                    self.fields()
                        .payer(payer.to_owned())
                        .detail("reason", &reason),
                );
                self.note(
                    EntryKind::ActivationFailed,
                    self.fields().detail("reason", &err.message),
                );
                (wit::PaymentEnd::Done, self.settle_failed(&reason, payer))
            }
            Err(e) => (wit::PaymentEnd::Resume, unsettled(from_wit(e))),
        }
    }
}
