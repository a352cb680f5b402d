//! An `exact` payment whose settlement an earlier attempt already claimed (its order had delivered), resumed,
//! and whose order replay now fails: the settlement decides, not the replay. Before, such an attempt answered
//! "nothing was charged" and ended the payment while its settlement went on to confirm (a top-up whose SIM was
//! terminated meanwhile lost its money).

use esim402_core::ledger::EntryKind;
use esim402_core::paid::StoredResponse;
use esim402_core::{ApiError, settlement};
use esim402_guest::wit;

use super::super::answers::unsettled;
use super::Attempt;
use crate::{from_wit, verifier};

impl Attempt<'_> {
    /// The order replay failed with `err` after an earlier attempt claimed the settlement. A fault (5xx) decides
    /// nothing: the same payment sent again does (what the earlier order delivered stays). A refusal (a top-up's
    /// SIM terminated meanwhile) asks the settlement: settled, the payment is owed back; pending, the same payment
    /// sent again decides; failed, nothing was charged.
    pub(super) async fn undelivered_after_claim(
        &self,
        err: ApiError,
        verified: &wit::Verified,
    ) -> (wit::PaymentEnd, StoredResponse) {
        if err.status() >= 500 {
            return (wit::PaymentEnd::Resume, unsettled(err));
        }
        let payer = verified.payer.clone();
        match verifier::settle(self.invoice.clone(), self.proof.wit(), verified.clone()).await {
            Ok(wit::Settlement::Settled(tx)) => {
                self.paid(&tx, &payer).await;
                self.note(
                    EntryKind::ActivationFailed,
                    self.fields().detail("reason", &err.message),
                );
                self.owed_back(&tx, err, &payer).await
            }
            Ok(wit::Settlement::Pending(tx)) => {
                (wit::PaymentEnd::Resume, self.pending(&tx, &payer))
            }
            Err(wit::Error::PaymentRequired(reason)) => {
                self.release_hold().await;
                (wit::PaymentEnd::Done, self.settle_failed(&reason, &payer))
            }
            Err(wit::Error::Conflict(m)) if m == settlement::IN_PROGRESS => {
                (wit::PaymentEnd::Resume, unsettled(err))
            }
            Err(e) => (wit::PaymentEnd::Resume, unsettled(from_wit(e))),
        }
    }
}
