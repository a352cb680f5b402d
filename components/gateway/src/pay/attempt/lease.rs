//! The attempt's hold on its payment record: renewed before a phase its lease no longer covers (kernel
//! `paid::lease_covers`, `PaymentRecord::renew`).

use esim402_core::paid::StoredResponse;
use esim402_guest::wit;

use super::super::answers::stored_error;
use super::Attempt;
use crate::{from_wit, invoices, now};

impl Attempt<'_> {
    /// Before a phase of up to `phase_secs` (an order, a settlement): renew the lease on the payment record if
    /// it no longer covers the phase, so no duplicate of this payment takes it over meanwhile. An attempt that
    /// lost it (a duplicate took over after the lease ran out) stops here, before the phase's effects: the
    /// duplicate drives the payment, and this request gets its 409.
    pub(super) async fn keep_lease(
        &self,
        phase_secs: u64,
    ) -> Result<(), (wit::PaymentEnd, StoredResponse)> {
        let at = now();
        if esim402_core::paid::lease_covers(self.lease_until.get(), at, phase_secs) {
            return Ok(());
        }
        match invoices::renew_payment(self.invoice.id.clone(), self.holder.clone(), at).await {
            Ok(until) => {
                self.lease_until.set(until);
                Ok(())
            }
            Err(e) => Err((wit::PaymentEnd::Resume, stored_error(&from_wit(e)))),
        }
    }

    /// Before appending its ledger events: whether this attempt still holds its payment record, its lease
    /// renewed if it does not cover the append (kernel `paid::LOG_PHASE_SECS`). `false` once the same payment
    /// sent again took it over (the lease ran out), or when the renewal could not run: its events then go
    /// through the repeat check (kernel `paid::logs_as_repeat`).
    pub(super) async fn still_holds(&self) -> bool {
        match self.keep_lease(esim402_core::paid::LOG_PHASE_SECS).await {
            Ok(()) => true,
            Err(_) => {
                eprintln!(
                    "gateway: payment of {} no longer held at its append: its events are checked for repeats",
                    self.invoice.id
                );
                false
            }
        }
    }
}
