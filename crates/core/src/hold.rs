//! Holds on a payer's balance while its `exact` payments are driven: the profile is ordered *before* the
//! authorization is settled (a payment whose order fails is never taken), so without them one authorization
//! presented for N invoices at once, or N authorizations that one balance covers, verified N times and ordered
//! N carrier profiles, of which at most one was paid for.
//!
//! One record per (network, token, payer) lists the authorizations being driven. [`Holds::place`] runs inside
//! the record's update, after `verify` read the chain:
//! - **An authorization is held for one invoice at a time.** The same (payer, nonce) for another invoice is
//!   [`Refusal::OtherInvoice`] while held; for the same invoice (a resumed attempt) it is held again.
//! - **The balance covers every live hold.** The balance read on chain must cover the value of every live hold
//!   and the new one. A settled payment's hold is not removed on the success path (that would cost a second
//!   update per payment): its money has left the balance, so when the holds do not fit, or the record holds
//!   [`CHECK_AT`] or more, the component asks the chain which of their nonces are used ([`Placement::Check`])
//!   and places again with that answer ([`Holds::place_checked`]), which drops them.
//! - **A hold ends** at its `until` (the authorization's `validBefore`, at most [`HOLD_SECS`] from its
//!   placement: a crashed driver's hold lapses), when the chain shows its nonce used, or when its payment fails
//!   without moving money ([`Holds::release`]: a failed order, a refused settlement).
//!
//! Holds bound the orders a balance buys; they are not a guarantee: a hold lapses while a payment is driven
//! for longer than [`HOLD_SECS`] (a resumed payment whose settlement is still on its way renews it), a balance
//! read before another payment of the same payer confirmed, and whose hold a chain check then dropped, can let
//! one more payment through to its order (its settlement then fails and it is withdrawn, as before), and money
//! the payer moves otherwise (a facilitator API settlement, a plain transfer) is seen only through the balance.
//! Each needs a payment in flight at the same time, from the same payer.

use alloy_primitives::{B256, U256};
use serde::{Deserialize, Serialize};

use crate::x402::exact::TransferAuthorization;

/// The longest a hold lasts from its placement (unix seconds): a payment's verification, order and settlement
/// at their slowest (kernel `paid::ORDER_PHASE_SECS` and `SETTLE_PHASE_SECS`, with room to spare).
pub const HOLD_SECS: u64 = 300;

const _: () = assert!(crate::paid::ORDER_PHASE_SECS + crate::paid::SETTLE_PHASE_SECS < HOLD_SECS);

/// A hold placed again for the same invoice (a resumed attempt) is written only if this moves its end by at
/// least this much (seconds): a payment sent again every second does not rewrite the record each time.
pub const RENEW_AFTER_SECS: u64 = 30;

/// The most live holds one payer may have (payments driven at the same time, from one wallet, on one token).
pub const MAX_HELD: usize = 128;

/// A record holding this many is checked against the chain before it takes another ([`Placement::Check`]):
/// a busy wallet's settled payments are dropped every few payments, so its record stays small.
pub const CHECK_AT: usize = 16;

/// The live holds of one payer on one token, as stored.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Holds {
    /// Oldest first.
    #[serde(default)]
    pub held: Vec<Hold>,
}

/// One authorization being driven. Stored as plain strings and numbers (no `alloy` serde in the components).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hold {
    /// The EIP-3009 nonce (`0x` + 64 lowercase hex digits).
    pub nonce: String,
    /// The invoice it pays, as [`invoice_tag`].
    pub invoice: String,
    /// What it moves (token atomic units; USDC amounts fit; a value above `u64::MAX`, possible only in a token
    /// whose balance is not read, is held as `u64::MAX`).
    pub value: u64,
    /// When it lapses (unix seconds).
    pub until: u64,
}

/// A short, fixed-length tag of an invoice id (the first 8 bytes of its keccak-256, hex): the holds record
/// tells invoices apart, it does not name them.
pub fn invoice_tag(invoice: &str) -> String {
    alloy_primitives::hex::encode(&alloy_primitives::keccak256(invoice.as_bytes())[..8])
}

impl Hold {
    /// The hold of an authorization (`nonce`, moving `value`, valid before `valid_before`) paying `invoice`,
    /// placed at `now`.
    pub fn new(nonce: B256, invoice: &str, value: U256, valid_before: u64, now: u64) -> Self {
        Self {
            nonce: nonce.to_string(),
            invoice: invoice_tag(invoice),
            value: u64::try_from(value).unwrap_or(u64::MAX),
            until: valid_before.min(now.saturating_add(HOLD_SECS)),
        }
    }

    /// The hold of `authorization` paying `invoice`, placed at `now`.
    pub fn of(authorization: &TransferAuthorization, invoice: &str, now: u64) -> Self {
        let valid_before = u64::try_from(authorization.valid_before).unwrap_or(u64::MAX);
        Self::new(
            authorization.nonce,
            invoice,
            authorization.value,
            valid_before,
            now,
        )
    }

    fn live(&self, now: u64) -> bool {
        self.until > now
    }
}

/// Why a payment cannot be held.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// The authorization is being used to pay another invoice.
    #[error("the authorization is being used to pay another invoice")]
    OtherInvoice,
    /// The balance does not cover this payment on top of the payer's payments being driven.
    #[error("the payer's balance does not cover this payment on top of its {0} payments in flight")]
    Insufficient(usize),
    /// The payer has [`MAX_HELD`] payments being driven.
    #[error("the payer has {MAX_HELD} payments in flight; send this one again when one has ended")]
    TooMany,
}

/// What [`Holds::place`] decided, when it did not refuse.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Placement {
    /// Held; `changed`: the record must be written.
    Held {
        /// Whether the record changed.
        changed: bool,
    },
    /// The holds do not fit: ask the chain which of these nonces are used (and the balance again, read with
    /// them), then [`Holds::place_checked`].
    Check(Vec<B256>),
}

impl Holds {
    /// Place `hold` against `balance` (read on chain) at `now`. Lapsed holds are dropped. A record of
    /// [`CHECK_AT`] holds or more is checked against the chain first, so that settled payments' holds do not
    /// pile up in it.
    pub fn place(&mut self, hold: &Hold, balance: U256, now: u64) -> Result<Placement, Refusal> {
        if let Some(changed) = self.renew(hold, now)? {
            return Ok(Placement::Held { changed });
        }
        let fits = self.fits(hold, balance);
        if fits && self.held.len() < CHECK_AT {
            self.held.push(hold.clone());
            return Ok(Placement::Held { changed: true });
        }
        if self.held.is_empty() {
            return Err(Refusal::Insufficient(0));
        }
        Ok(Placement::Check(
            self.held
                .iter()
                .filter_map(|h| h.nonce.parse().ok())
                .collect(),
        ))
    }

    /// [`Holds::place`] after the chain said which nonces are `used` and what the balance is now: holds of used
    /// nonces are dropped (their money has left the balance), and nothing is left to check.
    pub fn place_checked(
        &mut self,
        hold: &Hold,
        balance: U256,
        used: &[B256],
        now: u64,
    ) -> Result<bool, Refusal> {
        let before = self.held.len();
        let used: Vec<String> = used.iter().map(B256::to_string).collect();
        self.held
            .retain(|h| h.nonce == hold.nonce || !used.contains(&h.nonce));
        let dropped = self.held.len() != before;
        if let Some(changed) = self.renew(hold, now)? {
            return Ok(changed || dropped);
        }
        if !self.fits(hold, balance) {
            return Err(Refusal::Insufficient(self.held.len()));
        }
        if self.held.len() >= MAX_HELD {
            return Err(Refusal::TooMany);
        }
        self.held.push(hold.clone());
        Ok(true)
    }

    /// Drop lapsed holds; if `hold`'s authorization is held, renew it for the same invoice (whether the record
    /// changed) or refuse it for another.
    fn renew(&mut self, hold: &Hold, now: u64) -> Result<Option<bool>, Refusal> {
        let before = self.held.len();
        self.held.retain(|h| h.live(now));
        let mut changed = self.held.len() != before;
        let Some(h) = self.held.iter_mut().find(|h| h.nonce == hold.nonce) else {
            return Ok(None);
        };
        if h.invoice != hold.invoice {
            return Err(Refusal::OtherInvoice);
        }
        if hold.until >= h.until.saturating_add(RENEW_AFTER_SECS) {
            h.until = hold.until;
            changed = true;
        }
        Ok(Some(changed))
    }

    /// Whether `balance` covers `hold` on top of every hold in the record.
    fn fits(&self, hold: &Hold, balance: U256) -> bool {
        let held = self
            .held
            .iter()
            .fold(U256::ZERO, |sum, h| sum.saturating_add(U256::from(h.value)));
        held.saturating_add(U256::from(hold.value)) <= balance
    }

    /// End the hold of `nonce` for `invoice` (its payment failed without moving money), dropping lapsed ones:
    /// whether the record changed. A hold of the nonce for another invoice stays.
    pub fn release(&mut self, nonce: B256, invoice: &str, now: u64) -> bool {
        let tag = invoice_tag(invoice);
        let nonce = nonce.to_string();
        let before = self.held.len();
        self.held
            .retain(|h| h.live(now) && !(h.nonce == nonce && h.invoice == tag));
        self.held.len() != before
    }

    /// Whether no hold is left (the record can be removed).
    pub fn is_empty(&self) -> bool {
        self.held.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: u64 = 1_700_000_000;

    fn nonce(n: u8) -> B256 {
        B256::repeat_byte(n)
    }

    fn hold(n: u8, invoice: &str, value: u64) -> Hold {
        Hold::new(nonce(n), invoice, U256::from(value), NOW + 3_600, NOW)
    }

    fn placed(holds: &mut Holds, h: &Hold, balance: u64) -> Result<Placement, Refusal> {
        holds.place(h, U256::from(balance), NOW)
    }

    #[test]
    fn a_hold_lasts_at_most_hold_secs_and_never_past_valid_before() {
        assert_eq!(hold(1, "inv-a", 5).until, NOW + HOLD_SECS);
        let short = Hold::new(nonce(1), "inv-a", U256::from(5), NOW + 60, NOW);
        assert_eq!(short.until, NOW + 60);
    }

    #[test]
    fn an_authorizations_hold_is_its_nonce_and_value_until_its_valid_before() {
        let auth = TransferAuthorization {
            from: alloy_primitives::Address::repeat_byte(1),
            to: alloy_primitives::Address::repeat_byte(2),
            value: U256::from(1_500_000),
            valid_after: U256::ZERO,
            valid_before: U256::from(NOW + 90),
            nonce: nonce(7),
        };
        let h = Hold::of(&auth, "inv-a", NOW);
        assert_eq!(
            h,
            Hold::new(nonce(7), "inv-a", U256::from(1_500_000), NOW + 90, NOW)
        );
        assert_eq!(h.until, NOW + 90);
        let forever = TransferAuthorization {
            valid_before: U256::MAX,
            ..auth
        };
        assert_eq!(Hold::of(&forever, "inv-a", NOW).until, NOW + HOLD_SECS);
    }

    #[test]
    fn one_authorization_is_held_for_one_invoice_at_a_time() {
        let mut holds = Holds::default();
        let a = hold(1, "inv-a", 5);
        assert_eq!(
            placed(&mut holds, &a, 100),
            Ok(Placement::Held { changed: true })
        );
        // The same authorization for another invoice, however large the balance.
        assert_eq!(
            placed(&mut holds, &hold(1, "inv-b", 5), u64::MAX),
            Err(Refusal::OtherInvoice)
        );
        // The same invoice again (a resumed attempt): held, nothing to write.
        assert_eq!(
            placed(&mut holds, &a, 100),
            Ok(Placement::Held { changed: false })
        );
        // Placed a little later: not worth a write.
        let soon = Hold::new(nonce(1), "inv-a", U256::from(5), NOW + 3_600, NOW + 10);
        assert_eq!(
            holds.place(&soon, U256::from(100), NOW + 10),
            Ok(Placement::Held { changed: false })
        );
        assert_eq!(holds.held[0].until, NOW + HOLD_SECS);
        // Placed later still: its end moves on.
        let at = NOW + RENEW_AFTER_SECS;
        let later = Hold::new(nonce(1), "inv-a", U256::from(5), NOW + 3_600, at);
        assert_eq!(
            holds.place(&later, U256::from(100), at),
            Ok(Placement::Held { changed: true })
        );
        assert_eq!(holds.held.len(), 1);
        assert_eq!(holds.held[0].until, at + HOLD_SECS);
        // An earlier end (a shorter `validBefore`) never shortens it.
        let shorter = Hold::new(nonce(1), "inv-a", U256::from(5), at + 60, at);
        assert_eq!(
            holds.place(&shorter, U256::from(100), at),
            Ok(Placement::Held { changed: false })
        );
        assert_eq!(holds.held[0].until, at + HOLD_SECS);
    }

    #[test]
    fn a_placement_between_the_two_updates_is_decided_again_after_the_check() {
        // Between `place` (asked to check) and `place_checked`, another request held the same authorization for
        // another invoice, and another lapsed.
        let mut holds = Holds::default();
        assert!(placed(&mut holds, &hold(1, "inv-a", 60), 100).is_ok());
        let c = hold(3, "inv-c", 50);
        assert!(matches!(
            placed(&mut holds, &c, 100),
            Ok(Placement::Check(_))
        ));
        let stolen = hold(3, "inv-x", 50);
        let mut now_held = holds.clone();
        assert!(
            now_held
                .place_checked(&stolen, U256::from(100), &[nonce(1)], NOW)
                .is_ok()
        );
        assert_eq!(
            now_held.place_checked(&c, U256::from(100), &[nonce(1)], NOW),
            Err(Refusal::OtherInvoice)
        );
        // Lapsed holds go in the checked placement and in a release, which then says the record changed.
        let later = NOW + HOLD_SECS;
        let d = Hold::new(nonce(4), "inv-d", U256::from(100), later + 600, later);
        assert_eq!(
            holds.clone().place_checked(&d, U256::from(100), &[], later),
            Ok(true)
        );
        let mut lapsed = holds.clone();
        assert!(lapsed.release(nonce(9), "inv-z", later));
        assert!(lapsed.is_empty());
        assert!(!holds.release(nonce(9), "inv-z", NOW));
    }

    #[test]
    fn a_value_beyond_u64_is_held_as_u64_max() {
        let h = Hold::new(nonce(1), "inv-a", U256::MAX, NOW + 60, NOW);
        assert_eq!(h.value, u64::MAX);
        let mut holds = Holds::default();
        assert_eq!(
            holds.place(&h, U256::from(u64::MAX), NOW),
            Ok(Placement::Held { changed: true })
        );
    }

    #[test]
    fn the_balance_must_cover_every_live_hold_and_the_new_one() {
        let mut holds = Holds::default();
        assert!(placed(&mut holds, &hold(1, "inv-a", 60), 100).is_ok());
        // 60 held + 50 > 100: the chain must say whether the first was settled meanwhile.
        assert_eq!(
            placed(&mut holds, &hold(2, "inv-b", 50), 100),
            Ok(Placement::Check(vec![nonce(1)]))
        );
        // It was not: refused, nothing written.
        let mut after = holds.clone();
        assert_eq!(
            after.place_checked(&hold(2, "inv-b", 50), U256::from(100), &[], NOW),
            Err(Refusal::Insufficient(1))
        );
        // 60 + 40 fits exactly.
        assert_eq!(
            placed(&mut holds, &hold(3, "inv-c", 40), 100),
            Ok(Placement::Held { changed: true })
        );
        assert_eq!(holds.held.len(), 2);
    }

    #[test]
    fn a_first_payment_larger_than_the_balance_is_refused_without_a_chain_check() {
        let mut holds = Holds::default();
        assert_eq!(
            placed(&mut holds, &hold(1, "inv-a", 101), 100),
            Err(Refusal::Insufficient(0))
        );
        assert!(holds.is_empty());
    }

    #[test]
    fn holds_of_used_nonces_are_dropped_after_the_chain_check() {
        let mut holds = Holds::default();
        assert!(placed(&mut holds, &hold(1, "inv-a", 60), 100).is_ok());
        assert!(placed(&mut holds, &hold(2, "inv-b", 40), 100).is_ok());
        // Both settled: the balance read with the check is what is left.
        let c = hold(3, "inv-c", 30);
        assert_eq!(
            placed(&mut holds, &c, 100),
            Ok(Placement::Check(vec![nonce(1), nonce(2)]))
        );
        assert_eq!(
            holds.place_checked(&c, U256::from(30), &[nonce(1)], NOW),
            // Nonce 2 is not used yet: 40 + 30 > 30.
            Err(Refusal::Insufficient(1))
        );
        let mut holds2 = Holds::default();
        assert!(placed(&mut holds2, &hold(1, "inv-a", 60), 100).is_ok());
        assert!(placed(&mut holds2, &hold(2, "inv-b", 40), 100).is_ok());
        assert_eq!(
            holds2.place_checked(&c, U256::from(30), &[nonce(1), nonce(2)], NOW),
            Ok(true)
        );
        assert_eq!(holds2.held, vec![c]);
    }

    #[test]
    fn the_checked_answer_never_drops_the_hold_being_placed() {
        // A resumed attempt whose own nonce the chain shows used (its settlement confirmed meanwhile) keeps it.
        let mut holds = Holds::default();
        let a = hold(1, "inv-a", 60);
        assert!(placed(&mut holds, &a, 100).is_ok());
        assert_eq!(
            holds.place_checked(&a, U256::ZERO, &[nonce(1)], NOW),
            Ok(false)
        );
        assert_eq!(holds.held, vec![a]);
    }

    #[test]
    fn lapsed_holds_count_for_nothing() {
        let mut holds = Holds::default();
        assert!(placed(&mut holds, &hold(1, "inv-a", 100), 100).is_ok());
        let later = NOW + HOLD_SECS;
        let b = Hold::new(nonce(2), "inv-b", U256::from(100), later + 3_600, later);
        assert_eq!(
            holds.place(&b, U256::from(100), later),
            Ok(Placement::Held { changed: true })
        );
        assert_eq!(holds.held, vec![b]);
        // A lapsed hold's authorization may pay another invoice.
        let c = Hold::new(nonce(1), "inv-c", U256::from(1), later + 3_600, later);
        assert_eq!(
            holds.place(&c, U256::from(1_000), later),
            Ok(Placement::Held { changed: true })
        );
    }

    fn numbered(i: usize) -> Hold {
        let n = B256::from(U256::from(i + 1));
        Hold::new(n, &format!("inv-{i}"), U256::from(1), NOW + 600, NOW)
    }

    #[test]
    fn a_record_of_check_at_holds_is_checked_against_the_chain_first() {
        let mut holds = Holds::default();
        for i in 0..CHECK_AT {
            assert_eq!(
                holds.place(&numbered(i), U256::MAX, NOW),
                Ok(Placement::Held { changed: true })
            );
        }
        // However large the balance: the settled ones are found and dropped.
        let next = numbered(CHECK_AT);
        let Ok(Placement::Check(nonces)) = holds.place(&next, U256::MAX, NOW) else {
            panic!("a full record is checked");
        };
        assert_eq!(nonces.len(), CHECK_AT);
        let settled: Vec<B256> = nonces[..CHECK_AT - 1].to_vec();
        assert_eq!(
            holds.place_checked(&next, U256::MAX, &settled, NOW),
            Ok(true)
        );
        assert_eq!(holds.held, vec![numbered(CHECK_AT - 1), next]);
    }

    #[test]
    fn at_most_max_held_payments_are_driven_at_once() {
        let mut holds = Holds::default();
        for i in 0..MAX_HELD {
            assert_eq!(
                holds.place_checked(&numbered(i), U256::MAX, &[], NOW),
                Ok(true)
            );
        }
        let next = hold(0xee, "inv-next", 1);
        assert!(matches!(
            holds.place(&next, U256::MAX, NOW),
            Ok(Placement::Check(n)) if n.len() == MAX_HELD
        ));
        assert_eq!(
            holds.clone().place_checked(&next, U256::MAX, &[], NOW),
            Err(Refusal::TooMany)
        );
        let first = B256::from(U256::from(1));
        assert_eq!(
            holds.place_checked(&next, U256::MAX, &[first], NOW),
            Ok(true)
        );
        assert_eq!(holds.held.len(), MAX_HELD);
    }

    #[test]
    fn a_release_ends_only_its_own_invoices_hold() {
        let mut holds = Holds::default();
        assert!(placed(&mut holds, &hold(1, "inv-a", 60), 100).is_ok());
        assert!(placed(&mut holds, &hold(2, "inv-b", 40), 100).is_ok());
        assert!(!holds.release(nonce(1), "inv-b", NOW));
        assert_eq!(holds.held.len(), 2);
        assert!(holds.release(nonce(1), "inv-a", NOW));
        assert_eq!(holds.held.len(), 1);
        // The balance it held is free again.
        assert_eq!(
            placed(&mut holds, &hold(3, "inv-c", 60), 100),
            Ok(Placement::Held { changed: true })
        );
        assert!(holds.release(nonce(2), "inv-b", NOW));
        assert!(holds.release(nonce(3), "inv-c", NOW));
        assert!(holds.is_empty());
    }

    #[test]
    fn the_record_round_trips_through_json() {
        let mut holds = Holds::default();
        assert!(placed(&mut holds, &hold(1, "inv-a", 60), 100).is_ok());
        let json = serde_json::to_string(&holds).expect("serialises");
        assert_eq!(serde_json::from_str::<Holds>(&json).ok(), Some(holds));
        assert_eq!(
            serde_json::from_str::<Holds>("{}").ok(),
            Some(Holds::default())
        );
        assert_eq!(invoice_tag("inv-a").len(), 16);
        assert_ne!(invoice_tag("inv-a"), invoice_tag("inv-b"));
    }
}
