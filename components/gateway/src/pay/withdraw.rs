//! Taking back what an `exact` payment's order delivered when the payment will not settle: a settlement that
//! failed after the order, and a resumed payment that no longer verifies (its authorization expired since an
//! earlier attempt of it ordered the profile). No money moved in either case, so the profile must not stay with
//! the payer, and the invoice must not be released either: its order journal holds that profile, and the next
//! payment of it would be answered with it.

use esim402_core::ledger::EntryKind;
use esim402_core::paid::StoredResponse;
use esim402_core::{ApiError, ErrorKind};
use esim402_guest::wit;

use super::Order;
use super::answers::{order_pending, uncharged, unsettled};
use super::attempt::{Attempt, Resumed};
use crate::{dispatch, from_wit, invoices, now, verifier};

impl Attempt<'_> {
    /// Settlement failed after the order: no money moved, so the profile must not stay with the payer.
    /// A top-up delivered nothing yet (its data is credited only after settlement): the SIM stays as it was.
    /// The terminated SIM's metering account is closed as its owner's terminate closes it: a top-up someone
    /// paid for the SIM meanwhile is owed back now (the activation's own data was never credited).
    pub(super) async fn withdraw(&self, order: &Order, sim: &wit::Sim, payer: &str, reason: &str) {
        self.release_hold().await;
        if matches!(order, Order::TopUp { .. }) {
            self.note(
                EntryKind::SettlementFailed,
                self.fields()
                    .payer(payer.to_owned())
                    .detail("reason", reason),
            );
            return;
        }
        let terminated =
            match dispatch::lifecycle(sim.iccid.clone(), wit::LifecycleAction::Terminate, None)
                .await
            {
                Ok(_) => true,
                // Terminated before (a repeat of this withdrawal): its refunds are once per invoice.
                Err(wit::Error::Conflict(_)) => matches!(
                    dispatch::get_sim(sim.iccid.clone()).await,
                    Ok(Some(s)) if s.state == wit::SimState::Terminated
                ),
                Err(e) => {
                    eprintln!(
                        "gateway: settlement failed and terminating {} failed: {e:?}",
                        sim.iccid
                    );
                    false
                }
            };
        if terminated && let Err(e) = crate::owing::finish_terminate(&sim.iccid).await {
            eprintln!(
                "gateway: settlement failed; closing the account of {} failed (the operator's cleanup run records \
                 its refunds): {e:?}",
                sim.iccid
            );
        }
        self.note(
            EntryKind::SettlementFailed,
            self.fields()
                .payer(payer.to_owned())
                .detail("reason", reason),
        );
        self.note(
            EntryKind::ActivationFailed,
            self.fields()
                .detail("iccid", &sim.iccid)
                .detail("reason", "settlement failed; profile terminated"),
        );
    }

    /// The payment ended without moving money: the hold its verification placed on the payer's balance ends
    /// too (kernel `hold`), so the payer may pay another invoice with that balance, or that authorization, at
    /// once. A failure only logs: the hold lapses by itself.
    pub(super) async fn release_hold(&self) {
        if let Err(e) = verifier::release_hold(self.invoice.clone(), self.proof.wit()).await {
            eprintln!(
                "gateway: releasing the balance hold of {} failed (it lapses by itself): {e:?}",
                self.invoice.id
            );
        }
    }

    /// Whether the invoice is marked paid (or owed back) now, as the invoices component reads it (one it does not
    /// know counts as paid): an earlier attempt of this payment then settled it and went on to deliver.
    pub(super) async fn marked_paid(&self) -> Result<bool, wit::Error> {
        Ok(match invoices::get(self.invoice.id.clone(), now()).await? {
            Some(inv) => matches!(
                inv.status,
                wit::InvoiceStatus::Paid | wit::InvoiceStatus::Refunded
            ),
            None => true,
        })
    }

    /// A resumed payment refused by verification (`refused`: the answer a fresh payment would get, a 4xx). An
    /// activation or switch the earlier attempt ordered is found through its order journal (dispatch
    /// `ordered-sim`, which orders nothing). Its authorization may have been executed by another transaction
    /// while the order waited (the payer's own wallet, another facilitator; verifier `executed`, which records
    /// the invoice's settlement as that transaction): then it goes on as a payment whose settlement was claimed
    /// ([`Resumed::Executed`]). Else the order is withdrawn and the invoice ends with a 410. Nothing ordered (or
    /// a top-up, which delivers nothing before settlement): refused as any payment is. An order still being
    /// allocated, a lookup that fails, or an invoice whose payment did settle (its network disabled since, say)
    /// decides nothing: the same payment sent again does.
    pub(super) async fn unverifiable_resume(
        &self,
        order: &Order,
        refused: (wit::PaymentEnd, StoredResponse),
    ) -> Resumed {
        if matches!(order, Order::TopUp { .. }) {
            return Resumed::End(refused);
        }
        let reason = reason_of(&refused.1);
        let sim = match dispatch::ordered_sim(self.invoice.id.clone(), now()).await {
            Ok(sim) => sim,
            Err(wit::Error::Conflict(_)) => {
                return Resumed::End((wit::PaymentEnd::Resume, order_pending()));
            }
            Err(e) => return Resumed::End((wit::PaymentEnd::Resume, unsettled(from_wit(e)))),
        };
        // Executed by another transaction: delivered only if an order of it is live (an earlier attempt of
        // this very payment then verified it, its nonce unused, and held it for this invoice, so whatever
        // executed it did so after that); with none (withdrawn since, or never placed) it is owed back to its
        // payer ([`Attempt::deliver`] finds nothing delivered).
        match verifier::executed(self.invoice.clone(), self.proof.wit()).await {
            Ok(Some(verified)) => return Resumed::Executed(verified),
            Ok(None) => {}
            Err(e) => return Resumed::End((wit::PaymentEnd::Resume, unsettled(from_wit(e)))),
        }
        let Some(sim) = sim else {
            return Resumed::End(refused);
        };
        match self.marked_paid().await {
            Ok(false) => {}
            Ok(true) => {
                let e = ApiError::new(
                    ErrorKind::Unavailable,
                    format!("the payment settled but no longer verifies ({reason})"),
                );
                return Resumed::End((wit::PaymentEnd::Resume, unsettled(e)));
            }
            Err(e) => return Resumed::End((wit::PaymentEnd::Resume, unsettled(from_wit(e)))),
        }
        let payer = self.proof.claimed_payer().unwrap_or_default();
        self.withdraw(order, &sim, &payer, &reason).await;
        let e = ApiError::new(
            ErrorKind::Expired,
            format!(
                "invoice {} can no longer be paid ({reason}): the payment stopped verifying after its profile \
                 was ordered, so nothing was charged and the profile was withdrawn; request a new invoice",
                self.invoice.id
            ),
        );
        // `charged: false` says so to clients (an agent frees the spend it counted), as other answers that
        // moved no money do.
        Resumed::End((wit::PaymentEnd::Done, uncharged(&e)))
    }
}

/// What a refusal says: its x402 reason, else its message.
fn reason_of(refused: &StoredResponse) -> String {
    let body: serde_json::Value = serde_json::from_str(&refused.body).unwrap_or_default();
    let error = &body["error"];
    error["reason"]
        .as_str()
        .or_else(|| error["message"].as_str())
        .unwrap_or("the payment no longer verifies")
        .to_owned()
}
