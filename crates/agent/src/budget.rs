//! A daily cap shared by several agents of one process: the paying proxy signs for many devices with one
//! wallet, each device within its own budget, and all of them together within the wallet's
//! `max_per_day_usdc`. Every signed payment is reserved here before it is sent (a check and a record under
//! one lock, so two devices paying at once cannot both pass the last of the cap) and released only if the
//! facilitator says nothing was charged.

use std::sync::Mutex;

use esim402_core::UsdcAmount;

use crate::policy::PolicyRefusal;
use crate::state::{Spend, StateDir};

/// How long a spend is kept in the wallet's record: two days before the newest (see [`Budget::reserve`]).
pub const KEEP_SECS: u64 = 2 * 86_400;

/// What one wallet may sign in a day across every agent sharing it, and what it signed.
pub struct Budget {
    max_per_day: UsdcAmount,
    state: StateDir,
    lock: Mutex<()>,
}

impl Budget {
    /// A budget of `max_per_day`, its spends kept in `state`.
    pub fn new(max_per_day: UsdcAmount, state: StateDir) -> Self {
        Self {
            max_per_day,
            state,
            lock: Mutex::new(()),
        }
    }

    /// Reserve `spend` at `now`: recorded, or refused when it would take today's total past the cap. Spends
    /// older than [`KEEP_SECS`] are dropped on the way (only today's count, and yesterday's are kept for a
    /// payment still settling across midnight): the record stays a few days long, not the wallet's history.
    ///
    /// Older than what: than the newest spend already recorded, or `now` if earlier, never `now` alone. A clock
    /// that jumps ahead would otherwise erase today's real spends with the first payment it signs, and once set
    /// back the cap would count from nothing; this way a clock ahead and back again erases nothing of the real
    /// day (one that stays ahead over two payments still can: the facilitator's `Date`, `crate::clock`, is
    /// what stops a payment signed on a clock far off).
    pub fn reserve(&self, spend: &Spend, now: u64) -> Result<Result<(), PolicyRefusal>, String> {
        let _one = self
            .lock
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        self.state.update(|s| {
            if let Some(newest) = s.spends.iter().map(|x| x.at).max() {
                let before = newest.min(now).saturating_sub(KEEP_SECS);
                s.spends.retain(|x| x.at >= before);
            }
            let spent = s.spent_today(now);
            match spent.checked_add(spend.amount_usdc) {
                Some(total) if total <= self.max_per_day => {
                    s.spends.push(spend.clone());
                    Ok(())
                }
                _ => Err(PolicyRefusal::WalletMaxPerDay {
                    spent,
                    price: spend.amount_usdc,
                    max: self.max_per_day,
                }),
            }
        })
    }

    /// Give back the reservation of `payment_id` (nothing was charged).
    pub fn release(&self, payment_id: &str) -> Result<(), String> {
        let _one = self
            .lock
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        self.state
            .update(|s| s.spends.retain(|x| x.payment_id != payment_id))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "tests")]
    use super::*;
    use crate::state::SpendStatus;

    fn spend(id: &str, micros: u64) -> Spend {
        spend_at(id, micros, 1_000_000)
    }

    fn spend_at(id: &str, micros: u64, at: u64) -> Spend {
        Spend {
            payment_id: id.into(),
            purpose: "device".into(),
            at,
            amount_usdc: UsdcAmount::from_micros(micros),
            network: "eip155:31337".into(),
            pay_to: "0x3C44CdDdB6a900fa2b585dd299e03d12FA4293BC".into(),
            status: SpendStatus::Pending,
            transaction: None,
        }
    }

    /// A wallet budget capped at $0.10 a day in a fresh directory (kept alive by the returned guard), and
    /// its state directory.
    fn wallet() -> (tempfile::TempDir, StateDir, Budget) {
        let dir = tempfile::tempdir().unwrap();
        let state = StateDir::new(dir.path().join("wallet"));
        let budget = Budget::new(UsdcAmount::from_micros(100_000), state.clone());
        (dir, state, budget)
    }

    /// The payment ids of the spends the wallet's record keeps, in order.
    fn kept(state: &StateDir) -> Vec<String> {
        state
            .load()
            .unwrap()
            .spends
            .into_iter()
            .map(|s| s.payment_id)
            .collect()
    }

    #[test]
    fn devices_share_the_wallets_daily_cap_and_a_release_gives_it_back() {
        let (_dir, _, budget) = wallet();
        assert_eq!(budget.reserve(&spend("a", 50_000), 1_000_000), Ok(Ok(())));
        assert_eq!(budget.reserve(&spend("b", 50_000), 1_000_000), Ok(Ok(())));
        assert!(matches!(
            budget.reserve(&spend("c", 50_000), 1_000_000),
            Ok(Err(PolicyRefusal::WalletMaxPerDay { .. }))
        ));
        budget.release("b").unwrap();
        assert_eq!(budget.reserve(&spend("c", 50_000), 1_000_000), Ok(Ok(())));
        // The next day starts afresh.
        assert_eq!(
            budget.reserve(&spend("d", 100_000), 1_000_000 + 86_400),
            Ok(Ok(()))
        );
    }

    /// Fix: the wallet's record keeps the spends of the two days before the newest only (pruned as a payment is
    /// reserved), and the cap is as before. Before, it kept every spend ever signed, read and rewritten on every
    /// payment.
    #[test]
    fn spends_from_before_yesterday_are_pruned_and_the_cap_holds() {
        let (_dir, state, budget) = wallet();
        let day = 20_000 * 86_400;
        for (i, at) in [day - 3 * 86_400, day - 86_401, day - 86_400, day - 1]
            .into_iter()
            .enumerate()
        {
            assert_eq!(
                budget.reserve(&spend_at(&format!("old{i}"), 50_000, at), at),
                Ok(Ok(()))
            );
        }
        assert_eq!(
            budget.reserve(&spend_at("a", 60_000, day + 5), day + 5),
            Ok(Ok(()))
        );
        assert_eq!(
            kept(&state),
            ["old1", "old2", "old3", "a"],
            "two days before the newest"
        );
        assert!(matches!(
            budget.reserve(&spend_at("b", 50_000, day + 6), day + 6),
            Ok(Err(PolicyRefusal::WalletMaxPerDay { .. }))
        ));
        assert_eq!(
            budget.reserve(&spend_at("c", 40_000, day + 7), day + 7),
            Ok(Ok(()))
        );
    }

    /// Fix: a clock that jumps ahead (a payment signed days ahead) and back erases nothing of the real day: its
    /// spends still count against the cap. Before, spends were pruned from `now`'s day before yesterday: the
    /// payment dated ahead erased today's, and once the clock was back the cap counted from nothing.
    #[test]
    fn a_clock_ahead_and_back_never_erases_the_real_days_spends() {
        let (_dir, state, budget) = wallet();
        let today = 20_000 * 86_400 + 3_600;
        assert_eq!(
            budget.reserve(&spend_at("real", 80_000, today), today),
            Ok(Ok(()))
        );
        let ahead = today + 30 * 86_400;
        assert_eq!(
            budget.reserve(&spend_at("ahead", 10_000, ahead), ahead),
            Ok(Ok(()))
        );
        assert!(
            kept(&state).contains(&"real".to_owned()),
            "kept while the clock is ahead"
        );
        let back = today + 60;
        assert!(matches!(
            budget.reserve(&spend_at("again", 50_000, back), back),
            Ok(Err(PolicyRefusal::WalletMaxPerDay { .. }))
        ));
        assert_eq!(
            budget.reserve(&spend_at("small", 20_000, back), back),
            Ok(Ok(()))
        );
        assert_eq!(kept(&state), ["real", "ahead", "small"]);
    }
}
