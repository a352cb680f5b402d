//! An attempt's ledger events: noted as it goes, appended together ([`Attempt::flush`]), and what the payment
//! record's end becomes when they could not be ([`Attempt::end`]).

use esim402_core::ledger::{EntryFields, EntryKind};
use esim402_core::paid;
use esim402_guest::convert::event_to_wit;
use esim402_guest::wit;

use super::super::log_events;
use super::Attempt;
use crate::invoices;

impl Attempt<'_> {
    /// Mark the invoice paid and log the settlement; `false` if it was already paid (a repeat) and this attempt
    /// resumes nothing. A mark the store refuses is tried once more; one that still fails logs all the same (the
    /// money moved, and this attempt is the first to see it), and the invoice stays unmarked (README, Known
    /// gaps).
    pub(super) async fn paid(&self, tx: &str, payer: &str) -> bool {
        // Noted and marked by this attempt already: nothing more (a mark that failed is tried again below).
        if self.paid_noted.get() && self.marked.get() {
            return true;
        }
        let mark = || invoices::mark_paid(self.invoice.id.clone(), tx.to_owned(), payer.to_owned());
        let (marked, retried) = match mark().await {
            Err(e) if !matches!(e, wit::Error::Conflict(_)) => {
                eprintln!(
                    "gateway: marking {} paid failed, trying once more: {e:?}",
                    self.invoice.id
                );
                (mark().await, true)
            }
            marked => (marked, false),
        };
        let new = match &marked {
            Ok(_) => true,
            // Our own first mark landed and only its answer was lost: this attempt marked it.
            Err(wit::Error::Conflict(m))
                if retried && m.ends_with(paid::PAID_BY_THIS_TRANSACTION) =>
            {
                true
            }
            // A repeat after an interruption finds it paid already.
            Err(wit::Error::Conflict(_)) => false,
            Err(e) => {
                eprintln!(
                    "gateway: OPERATOR: {} is settled but could not be marked paid: {e:?}",
                    self.invoice.id
                );
                true
            }
        };
        // Marked by this attempt, or found marked (a repeat, or this attempt's own retried mark).
        self.marked
            .set(matches!(marked, Ok(_) | Err(wit::Error::Conflict(_))));
        if self.paid_noted.get() {
            return true;
        }
        if !self.logs(new) {
            return false;
        }
        self.note(
            EntryKind::SettlementConfirmed,
            self.fields().payer(payer.to_owned()).tx_hash(tx.to_owned()),
        );
        self.paid_noted.set(true);
        true
    }

    /// The payment record's end for `end`: a payment marked paid whose ledger events this attempt could neither
    /// append nor park stays resumable (its answer stands), so the same payment sent again logs them (the ledger
    /// leaves out what landed); ended, nothing would log them again. Only once marked: a resumed payment whose
    /// invoice is not marked paid is taken for one whose answer was never sent (a SIM its owner terminated is
    /// then owed back whole, `Attempt::deliver`), which a delivered one's answer was.
    pub fn end(&self, end: wit::PaymentEnd) -> wit::PaymentEnd {
        match end {
            wit::PaymentEnd::Done if self.marked.get() && self.unlogged.get() => {
                wit::PaymentEnd::Resume
            }
            end => end,
        }
    }

    /// Record a ledger event, appended at the next [`Attempt::flush`].
    pub fn note(&self, kind: EntryKind, fields: EntryFields) {
        self.pending.borrow_mut().push(event_to_wit(kind, &fields));
    }

    /// Append the recorded events (a resumed attempt's may repeat an interrupted one's: the ledger keeps each
    /// once-per-invoice event once). So does an attempt that no longer holds its payment record (kernel
    /// `paid::logs_as_repeat`): it outlived its lease, and the same payment sent again may have taken it over and
    /// logged the same events; its lease is renewed first if it does not cover the append.
    pub async fn flush(&self) {
        let events = std::mem::take(&mut *self.pending.borrow_mut());
        if events.is_empty() {
            return;
        }
        let holds = self.resumed || self.still_holds().await;
        if !log_events(events, paid::logs_as_repeat(self.resumed, holds)).await {
            self.unlogged.set(true);
        }
    }

    /// Whether an effect's event is logged: the effect is new, or this attempt resumes one that may have been
    /// interrupted between that effect and its append (the ledger leaves out a repeat).
    pub(super) fn logs(&self, new: bool) -> bool {
        new || self.resumed
    }
}
