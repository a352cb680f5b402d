//! One attempt at a payment, held by its payment record: verify, deliver and settle in the order the scheme
//! needs, and the record's end with the answer to store.

use esim402_core::ledger::{EntryFields, EntryKind};
use esim402_core::paid::{self, StoredResponse};
use esim402_core::{ApiError, ErrorKind, UsdcAmount};
use esim402_guest::wit;

use super::answers::{Answers, order_pending_paid, stored_error, uncharged, unsettled};
use std::cell::RefCell;

use super::Order;
use crate::{from_wit, verifier};

mod credit;
mod events;
mod late;
mod lease;
mod order;
mod owe;

/// An attempt answers with its [`Answers`] and collects its ledger events: they are appended together (one
/// run in the invoice's shard, one head advance) after verification and at the end ([`Attempt::flush`]).
pub struct Attempt<'a> {
    answers: Answers<'a>,
    pending: RefCell<Vec<wit::LedgerEvent>>,
    /// An earlier attempt of this payment may have acted (kernel `paid::resumes`).
    pub(super) resumed: bool,
    /// This attempt's hold on the payment record, and until when (kernel `paid::lease_covers`).
    holder: String,
    lease_until: std::cell::Cell<u64>,
    /// The payment's money is final and its invoice is marked paid (by this attempt, or found so).
    marked: std::cell::Cell<bool>,
    /// This attempt's ledger events were neither appended nor parked ([`Attempt::end`]).
    unlogged: std::cell::Cell<bool>,
    /// An earlier attempt had already claimed the payment's settlement (`verified.claimed`): its transaction
    /// may be public (kernel `paid::hands_over_codes`).
    claimed_before: std::cell::Cell<bool>,
    /// This attempt marked the invoice paid and noted its settlement ([`Attempt::paid`]) already: an order
    /// delivered after its money was marked notes nothing twice.
    paid_noted: std::cell::Cell<bool>,
}

/// What [`Attempt::unverifiable_resume`] comes to.
pub(super) enum Resumed {
    /// Its authorization was executed by another transaction that moved its money: verified, its settlement
    /// claimed (and confirmed) for this invoice.
    Executed(wit::Verified),
    /// The attempt's end and answer.
    End((wit::PaymentEnd, StoredResponse)),
}

impl<'a> std::ops::Deref for Attempt<'a> {
    type Target = Answers<'a>;
    fn deref(&self) -> &Answers<'a> {
        &self.answers
    }
}

impl<'a> Attempt<'a> {
    pub fn new(answers: Answers<'a>, driver: &wit::Driver) -> Self {
        Self {
            answers,
            pending: RefCell::new(Vec::new()),
            resumed: driver.resumed,
            holder: driver.holder.clone(),
            lease_until: std::cell::Cell::new(driver.lease_until),
            marked: std::cell::Cell::new(false),
            unlogged: std::cell::Cell::new(false),
            claimed_before: std::cell::Cell::new(false),
            paid_noted: std::cell::Cell::new(false),
        }
    }
}

impl Attempt<'_> {
    pub fn fields(&self) -> EntryFields {
        EntryFields::default()
            .invoice(self.invoice.id.clone())
            .amount(UsdcAmount::from_micros(self.invoice.amount))
            .network(self.network())
    }

    /// `exact`: verify, order, settle.
    pub async fn exact(&self, order: &Order) -> (wit::PaymentEnd, StoredResponse) {
        let verified = match self.verify().await {
            Ok(v) => v,
            // Its authorization may have been executed by someone else while the order waited: then it goes on
            // as a payment whose settlement an earlier attempt claimed.
            Err(refused) if self.resumed && matches!(refused.0, wit::PaymentEnd::Release) => {
                match self.unverifiable_resume(order, refused).await {
                    Resumed::Executed(v) => v,
                    Resumed::End(answer) => return answer,
                }
            }
            Err(refused) => return refused,
        };
        let payer = verified.payer.clone();
        self.claimed_before.set(verified.claimed);
        if let Err(stop) = self.keep_lease(paid::ORDER_PHASE_SECS).await {
            return stop;
        }
        let sim = match self.deliver(order, &verified).await {
            Ok(sim) => sim,
            Err(end) => return end,
        };
        if let Err(stop) = self.keep_lease(paid::SETTLE_PHASE_SECS).await {
            return stop;
        }
        match verifier::settle(self.invoice.clone(), self.proof.wit(), verified).await {
            Ok(wit::Settlement::Settled(tx)) => {
                // Logged once: a repeat that finds the invoice paid already logs nothing new, unless it resumes
                // an interrupted attempt (then the ledger leaves out what that one logged).
                if self.paid(&tx, &payer).await {
                    self.activated(order, &sim).await;
                }
                self.delivered(order, &sim, &tx, &payer).await
            }
            Ok(wit::Settlement::Pending(tx)) => {
                (wit::PaymentEnd::Resume, self.pending(&tx, &payer))
            }
            // Another attempt of this payment drives its settlement (a duplicate took over a lapsed lease):
            // that attempt decides; nothing is withdrawn under it.
            Err(wit::Error::Conflict(m)) if m == esim402_core::settlement::IN_PROGRESS => (
                wit::PaymentEnd::Resume,
                unsettled(ApiError::new(ErrorKind::Unavailable, m)),
            ),
            Err(wit::Error::PaymentRequired(reason)) => {
                // The settlement may have taken long: the withdrawal is this driver's only while it holds.
                if let Err(stop) = self.keep_lease(paid::ORDER_PHASE_SECS).await {
                    return stop;
                }
                self.withdraw(order, &sim, &payer, &reason).await;
                (wit::PaymentEnd::Done, self.settle_failed(&reason, &payer))
            }
            // The authorization settled something else meanwhile (a v1 payment replayed with another
            // request), or the invoice expired while the profile was being ordered (refused before anything
            // was claimed or sent): no money moves, so this invoice gets nothing, and neither does its profile.
            Err(e @ (wit::Error::Conflict(_) | wit::Error::Expired(_))) => {
                let e = from_wit(e);
                if let Err(stop) = self.keep_lease(paid::ORDER_PHASE_SECS).await {
                    return stop;
                }
                self.withdraw(order, &sim, &payer, &e.message).await;
                (wit::PaymentEnd::Done, stored_error(&e))
            }
            Err(e) => (wit::PaymentEnd::Resume, unsettled(from_wit(e))),
        }
    }

    /// tx-hash proofs: verify, claim the transaction, order; a failed order owes a refund.
    pub async fn prepaid(&self, order: &Order) -> (wit::PaymentEnd, StoredResponse) {
        let verified = match self.verify().await {
            Ok(v) => v,
            Err(r) => return r,
        };
        let payer = verified.payer.clone();
        if let Err(stop) = self.keep_lease(paid::SETTLE_PHASE_SECS).await {
            return stop;
        }
        let tx = match verifier::settle(self.invoice.clone(), self.proof.wit(), verified).await {
            Ok(wit::Settlement::Settled(tx)) => tx,
            Ok(wit::Settlement::Pending(tx)) => {
                return (wit::PaymentEnd::Resume, self.pending(&tx, &payer));
            }
            Err(wit::Error::PaymentRequired(reason)) => return self.refused(&reason).await,
            // Found late only now (a reorg moved it since `verify`): claimed as a late transfer, owed back.
            Err(wit::Error::Expired(msg)) => return self.late_transfer(msg).await,
            Err(e @ (wit::Error::Conflict(_) | wit::Error::InvalidInput(_))) => {
                return (wit::PaymentEnd::Release, stored_error(&from_wit(e)));
            }
            Err(e) => return (wit::PaymentEnd::Resume, unsettled(from_wit(e))),
        };
        self.paid(&tx, &payer).await;
        if let Err(stop) = self.keep_lease(paid::ORDER_PHASE_SECS).await {
            return stop;
        }
        match order.deliver(&self.invoice.id, &payer).await {
            Ok(sim) if sim.activation_code.is_some() => {
                self.activated(order, &sim).await;
                self.delivered(order, &sim, &tx, &payer).await
            }
            Ok(_) => (
                wit::PaymentEnd::Resume,
                order_pending_paid(&self.invoice.id, &tx),
            ),
            Err(e) => {
                let err = from_wit(e);
                self.note(
                    EntryKind::ActivationFailed,
                    self.fields().detail("reason", &err.message),
                );
                self.owed_back(&tx, err, &payer).await
            }
        }
    }

    /// Verify; on refusal the attempt ends here with the answer to send.
    /// The invoice's first events (issued, verified) are appended here, before anything moves.
    pub(super) async fn verify(&self) -> Result<wit::Verified, (wit::PaymentEnd, StoredResponse)> {
        let verified = verifier::verify(self.invoice.clone(), self.proof.wit()).await;
        if let Ok(v) = &verified {
            if self.proof.kind == super::Kind::TxHash {
                *self.found_on.borrow_mut() = Some(v.network.clone());
                self.overpaid
                    .set(v.transferred.filter(|t| *t > self.invoice.amount));
            }
            let mut fields = self.fields().payer(v.payer.clone());
            // A transfer above the invoice's amount: the ledger says what came in (a refund returns it whole).
            if let Some(moved) = v.transferred.filter(|t| *t > self.invoice.amount) {
                fields = fields.detail("transferred", UsdcAmount::from_micros(moved).to_string());
            }
            self.note(EntryKind::PaymentVerified, fields);
        }
        self.flush().await;
        match verified {
            Ok(v) => Ok(v),
            // A tx-hash payment is the transaction hash alone (its record's key): a resumed one presented with a
            // signature that does not verify is someone else's attempt at it, which must not end the payer's.
            Err(wit::Error::PaymentRequired(reason))
                if self.resumed
                    && self.proof.kind == super::Kind::TxHash
                    && reason == esim402_core::x402::InvalidReason::Signature.as_str() =>
            {
                Err((wit::PaymentEnd::Resume, self.challenge(&reason)))
            }
            Err(wit::Error::PaymentRequired(reason)) => Err(self.refused(&reason).await),
            Err(wit::Error::Expired(msg)) if self.proof.kind == super::Kind::TxHash => {
                Err(self.late_transfer(msg).await)
            }
            Err(e) => {
                let e = from_wit(e);
                // A resumed payment whose verification could not run (the chain or the store unavailable)
                // decides nothing: an earlier attempt may have ordered or settled; the same payment sent again
                // decides. An `exact` payment refused here otherwise moved nothing (`charged: false`, also for a
                // fresh one's 503: the chain could not be asked, or nothing here can settle it now); a tx-hash
                // proof's transfer was made by the payer before it came.
                let exact = self.proof.kind != super::Kind::TxHash;
                match (self.resumed, e.status() >= 500) {
                    (true, true) => Err((wit::PaymentEnd::Resume, stored_error(&e))),
                    _ if exact => Err((wit::PaymentEnd::Release, uncharged(&e))),
                    _ => Err((wit::PaymentEnd::Release, stored_error(&e))),
                }
            }
        }
    }

    /// The money is final and the purchase delivered: credit the data it bought (idempotent per invoice, so a
    /// repeat after an interruption credits nothing twice) and answer. A top-up the SIM can no longer take (it
    /// was terminated meanwhile) is owed back.
    async fn delivered(
        &self,
        order: &Order,
        sim: &wit::Sim,
        tx: &str,
        payer: &str,
    ) -> (wit::PaymentEnd, StoredResponse) {
        let (claimed_before, public) = (
            self.claimed_before.get(),
            self.proof.kind == super::Kind::V1,
        );
        let withhold = match order {
            Order::Switch {
                by_wallet, owner, ..
            } => !paid::switch_hands_over_codes(
                claimed_before,
                public,
                *by_wallet,
                owner.as_deref(),
                payer,
            ),
            _ => !paid::hands_over_codes(claimed_before, public, false),
        };
        match self.credit(order, sim, tx, payer).await {
            Ok(None) => (
                wit::PaymentEnd::Done,
                self.success(sim, tx, payer, withhold),
            ),
            Ok(Some(_)) => match order {
                Order::TopUp {
                    iccid,
                    quota,
                    show_balance,
                    by_carrier,
                    ..
                } => {
                    // The grant the request asked for, reserved as any grant is (none if metering cannot
                    // grant now: the answer then says what was bought, and the next quota request asks again).
                    let granted = if *show_balance {
                        let asked = crate::metering::grant(
                            iccid.clone(),
                            *quota,
                            *by_carrier,
                            crate::now(),
                        );
                        asked
                            .await
                            .inspect_err(|e| {
                                eprintln!(
                                    "gateway: the grant of {iccid}'s paid top-up failed (the answer says what was \
                                     bought; the next quota request asks again): {e:?}"
                                );
                            })
                            .ok()
                    } else {
                        None
                    };
                    (
                        wit::PaymentEnd::Done,
                        self.topped_up(granted.as_ref(), tx, payer),
                    )
                }
                _ => (
                    wit::PaymentEnd::Done,
                    self.success(sim, tx, payer, withhold),
                ),
            },
            Err(wit::Error::Conflict(msg)) if matches!(order, Order::TopUp { .. }) => {
                self.owed_back(tx, ApiError::new(ErrorKind::Conflict, msg), payer)
                    .await
            }
            // Money moved and the SIM exists: the same payment sent again credits it (nothing twice).
            Err(e) => (wit::PaymentEnd::Resume, unsettled(from_wit(e))),
        }
    }

    async fn activated(&self, order: &Order, sim: &wit::Sim) {
        if matches!(order, Order::TopUp { .. }) {
            return;
        }
        self.note(
            EntryKind::ActivationCompleted,
            self.fields()
                .detail("iccid", &sim.iccid)
                .detail("carrier", &sim.carrier),
        );
    }
}
