//! Pricing: an activation fee plus a per-megabyte carrier rate, rounded up to whole micro-USDC and never below
//! the minimum invoice. The rates come from the carrier catalog (`crates/core/catalog/carriers.toml`, see
//! `crate::esim::catalog`, which builds the [`PriceBook`]).

use crate::ids::{CarrierId, DataMb};
use crate::money::UsdcAmount;

/// A per-carrier rate in micro-USDC per megabyte (may be fractional: per-KB billing uses thousandths).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rate {
    /// Carrier.
    pub carrier: CarrierId,
    /// Thousandths of a micro-USDC per MB (so `$0.0035/MB` = 3_500_000).
    pub milli_micros_per_mb: u64,
}

/// The quote an activation's invoice was issued at, sealed into its id (`invoice::token`): the carrier that
/// priced it and the data part of its amount (the amount less the activation fee, before the minimum invoice
/// lifts it). A catalog changed between the quote and the settlement does not change what the data was
/// bought at ([`PriceBook::sealed_data_value`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SealedQuote {
    /// The carrier the quote was priced at (the request's, else the region's default at the time).
    pub carrier: CarrierId,
    /// The data's value at that carrier's rate then; never above the invoice's amount.
    pub data_value: UsdcAmount,
}

/// The price book.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PriceBook {
    /// Charged once per activation.
    pub activation_fee: UsdcAmount,
    /// The smallest invoice issued.
    pub minimum: UsdcAmount,
    /// Carrier rates.
    pub rates: Vec<Rate>,
}

impl PriceBook {
    /// The data part alone: `data_mb` at `carrier`'s rate, rounded up to whole micro-USDC.
    pub fn usage(&self, carrier: &CarrierId, data_mb: DataMb) -> Option<UsdcAmount> {
        let rate = self.rate(carrier)?;
        let milli = u128::from(rate.milli_micros_per_mb) * u128::from(data_mb.get());
        u64::try_from(milli.div_ceil(1000))
            .ok()
            .map(UsdcAmount::from_micros)
    }

    /// What a switch to another carrier or region costs: a new profile is ordered, so the activation fee,
    /// never below the minimum invoice. The unused balance moves by its value, not its bytes (see
    /// [`PriceBook::bytes_for`]): on a dearer carrier it buys fewer bytes, on a cheaper one more, so nothing
    /// is priced on a bundle size that top-ups and earlier use have long changed.
    pub fn switch_charge(&self) -> UsdcAmount {
        self.activation_fee.max(self.minimum)
    }

    /// `carrier`'s rate, or `None` for a carrier the book does not price.
    pub fn rate(&self, carrier: &CarrierId) -> Option<&Rate> {
        self.rates.iter().find(|r| &r.carrier == carrier)
    }

    /// The bytes `value` buys on `carrier` (rounded down), or `None` for an unknown carrier or a zero rate
    /// (the catalog refuses zero rates; a book built by hand may hold one).
    pub fn bytes_for(&self, carrier: &CarrierId, value: UsdcAmount) -> Option<u64> {
        let rate = self.rate(carrier)?;
        if rate.milli_micros_per_mb == 0 {
            return None;
        }
        // micro-USDC × 1000 = milli-micros; ÷ rate = MB; × 10^6 = bytes.
        let bytes =
            u128::from(value.micros()) * 1_000_000_000 / u128::from(rate.milli_micros_per_mb);
        Some(u64::try_from(bytes).unwrap_or(u64::MAX))
    }

    /// What the data of an activation bought for `paid` (fee included) is worth: `data_mb` at `carrier`'s rate,
    /// never above `paid`. A carrier the book no longer prices (dropped from the catalog since the invoice was
    /// quoted) gets an estimate of what was paid for data: `paid` less the activation fee as configured now
    /// (an invoice without a sealed quote says nothing of its fee), or `paid` when that leaves nothing (a
    /// credit worth nothing would buy no bytes when a switch revalues it). This is the refund rate of the data
    /// of an activation whose invoice was sealed before quotes were ([`PriceBook::sealed_data_value`]).
    pub fn paid_data_value(
        &self,
        carrier: &CarrierId,
        data_mb: DataMb,
        paid: UsdcAmount,
    ) -> UsdcAmount {
        match self.usage(carrier, data_mb) {
            Some(value) => value.min(paid),
            None => paid
                .checked_sub(self.activation_fee)
                .filter(|v| *v != UsdcAmount::ZERO)
                .unwrap_or(paid),
        }
    }

    /// What the data of an activation whose invoice sealed `quoted` is worth, delivered by `delivering`:
    /// what the quote valued it at (never above `paid`); a failover to another carrier is valued at that
    /// carrier's rate today when that is less (the data was bought at the quoted rate, not a dearer one's).
    /// A carrier the book no longer prices changes nothing: the sealed value stands. This is the refund rate
    /// of the activation's data; invoices without a sealed quote (issued by an earlier build) are valued by
    /// [`PriceBook::paid_data_value`].
    pub fn sealed_data_value(
        &self,
        delivering: &CarrierId,
        data_mb: DataMb,
        paid: UsdcAmount,
        quoted: &SealedQuote,
    ) -> UsdcAmount {
        let bought = quoted.data_value.min(paid);
        if delivering == &quoted.carrier {
            return bought;
        }
        self.usage(delivering, data_mb)
            .map_or(bought, |today| today.min(bought))
    }

    /// An activation's price ([`PriceBook::quote`]) and the quote its invoice seals: the data part of that
    /// price (never above it), from one computation of the data's value. `None` for a carrier the book does
    /// not price.
    pub fn priced(
        &self,
        carrier: &CarrierId,
        data_mb: DataMb,
    ) -> Option<(UsdcAmount, SealedQuote)> {
        let usage = self.usage(carrier, data_mb)?;
        let amount = self.with_fee(usage)?;
        let sealed = SealedQuote {
            carrier: carrier.clone(),
            data_value: usage.min(amount),
        };
        Some((amount, sealed))
    }

    /// A data top-up of `data_mb` on `carrier`: the data at the carrier's rate (no activation fee), never below
    /// the minimum invoice.
    pub fn top_up(&self, carrier: &CarrierId, data_mb: DataMb) -> Option<UsdcAmount> {
        Some(self.usage(carrier, data_mb)?.max(self.minimum))
    }

    /// The most data a top-up on `carrier` sells at the minimum invoice: the largest size whose data costs
    /// no more than it (at $0.003/MB and a $0.05 minimum, 16 MB); `None` for an unknown carrier.
    pub fn minimum_top_up_mb(&self, carrier: &CarrierId) -> Option<u32> {
        let rate = u128::from(self.rate(carrier)?.milli_micros_per_mb);
        // `usage(n) = ceil(rate × n / 1000) ≤ minimum` exactly when `rate × n ≤ 1000 × minimum`.
        let most = (u128::from(self.minimum.micros()) * 1000)
            .checked_div(rate)
            .unwrap_or(u128::MAX);
        Some(u32::try_from(most).unwrap_or(u32::MAX).min(DataMb::MAX))
    }

    /// The top-ups to offer for a SIM on `carrier`, with their prices: `asked` first when the request named
    /// one, then each of `sizes` raised to [`Self::minimum_top_up_mb`] (a size below it costs the minimum all
    /// the same, so the offer is the most data that price buys) and to `at_least_mb` (what the SIM needs to be
    /// granted quota again: `usage::account::top_up_needed_mb`), without repeats. `None` for an unknown
    /// carrier.
    pub fn top_up_offers(
        &self,
        carrier: &CarrierId,
        asked: Option<DataMb>,
        sizes: &[u32],
        at_least_mb: u32,
    ) -> Option<Vec<(DataMb, UsdcAmount)>> {
        let floor = self
            .minimum_top_up_mb(carrier)?
            .max(at_least_mb.min(DataMb::MAX));
        let mut offers: Vec<(DataMb, UsdcAmount)> = Vec::with_capacity(sizes.len() + 1);
        let lifted = sizes
            .iter()
            .filter_map(|mb| DataMb::new(u64::from((*mb).max(floor))).ok());
        for mb in asked.into_iter().chain(lifted) {
            if !offers.iter().any(|(seen, _)| *seen == mb) {
                offers.push((mb, self.top_up(carrier, mb)?));
            }
        }
        Some(offers)
    }

    /// The price of `data_mb` on `carrier`, or `None` for an unknown carrier.
    pub fn quote(&self, carrier: &CarrierId, data_mb: DataMb) -> Option<UsdcAmount> {
        self.with_fee(self.usage(carrier, data_mb)?)
    }

    /// An activation's price for data worth `usage`: the activation fee added, never below the minimum.
    fn with_fee(&self, usage: UsdcAmount) -> Option<UsdcAmount> {
        Some(self.activation_fee.checked_add(usage)?.max(self.minimum))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(s: &str) -> CarrierId {
        CarrierId::parse(s).unwrap()
    }

    /// The seed's rates (the builtin catalog's are checked against them in `esim::catalog`).
    fn seed() -> PriceBook {
        PriceBook {
            activation_fee: UsdcAmount::from_micros(120_000),
            minimum: UsdcAmount::from_micros(50_000),
            rates: vec![
                Rate {
                    carrier: c("tmobile"),
                    milli_micros_per_mb: 3_000_000,
                },
                Rate {
                    carrier: c("verizon"),
                    milli_micros_per_mb: 3_500_000,
                },
            ],
        }
    }

    #[test]
    fn seed_price_for_100mb_tmobile_is_42_cents() {
        let book = seed();
        assert_eq!(
            book.quote(&c("tmobile"), DataMb::new(100).unwrap())
                .unwrap()
                .to_string(),
            "0.42"
        );
        assert_eq!(
            book.quote(&c("verizon"), DataMb::new(100).unwrap())
                .unwrap()
                .micros(),
            470_000
        );
    }

    #[test]
    fn a_switch_costs_the_fee_and_the_balance_moves_by_its_value() {
        let mut book = seed();
        assert_eq!(book.switch_charge().micros(), 120_000);
        // 100 MB of T-Mobile data cost $0.30: on Verizon ($0.0035/MB) that buys 85.71 MB, on T-Mobile 100.
        let paid = book
            .usage(&c("tmobile"), DataMb::new(100).unwrap())
            .unwrap();
        assert_eq!(book.bytes_for(&c("verizon"), paid), Some(85_714_285));
        assert_eq!(book.bytes_for(&c("tmobile"), paid), Some(100_000_000));
        assert_eq!(book.bytes_for(&c("tmobile"), UsdcAmount::ZERO), Some(0));
        assert_eq!(book.bytes_for(&c("nope"), paid), None);
        // The arbitrage this closes: 1 MB activated, 100 000 MB topped up cheaply, switched to a dearer
        // carrier. The switch costs the fee; the balance keeps its value, not its bytes.
        let topped = book
            .usage(&c("tmobile"), DataMb::new(100_000).unwrap())
            .unwrap();
        let moved = book.bytes_for(&c("verizon"), topped).unwrap();
        assert!(
            book.usage(&c("verizon"), DataMb::new(moved / 1_000_000).unwrap())
                .unwrap()
                <= topped
        );
        book.activation_fee = UsdcAmount::ZERO;
        assert_eq!(book.switch_charge(), book.minimum);
    }

    #[test]
    fn paid_data_is_worth_its_rate_and_an_estimate_once_its_carrier_is_gone() {
        let mut book = seed();
        let mb = DataMb::new(100).unwrap();
        let micros = UsdcAmount::from_micros;
        // Quoted on T-Mobile ($0.42 = $0.12 fee + $0.30 data) and delivered there: its rate.
        assert_eq!(
            book.paid_data_value(&c("tmobile"), mb, micros(420_000)),
            micros(300_000)
        );
        // A priced carrier: its rate, never above what was paid (an invoice without a sealed quote, so a
        // dearer carrier put first since the quote is capped at the invoice, not below it).
        assert_eq!(
            book.paid_data_value(&c("verizon"), mb, micros(420_000)),
            micros(350_000)
        );
        assert_eq!(
            book.paid_data_value(&c("verizon"), mb, micros(200_000)),
            micros(200_000)
        );
        // A carrier the book no longer prices: what was paid beyond today's fee.
        assert_eq!(
            book.paid_data_value(&c("gone"), mb, micros(420_000)),
            micros(300_000)
        );
        // ... or all of it when today's fee leaves nothing (a credit must keep some value).
        book.activation_fee = micros(500_000);
        assert_eq!(
            book.paid_data_value(&c("gone"), mb, micros(420_000)),
            micros(420_000)
        );
        assert_eq!(
            book.paid_data_value(&c("tmobile"), mb, micros(420_000)),
            micros(300_000),
            "a priced carrier does not depend on the fee"
        );
    }

    #[test]
    fn sealed_data_is_worth_its_quote_whatever_the_catalog_says_since() {
        let mut book = seed();
        let mb = DataMb::new(100).unwrap();
        let micros = UsdcAmount::from_micros;
        let paid = book.quote(&c("tmobile"), mb).unwrap();
        assert_eq!(paid, micros(420_000));
        let (amount, quoted) = book.priced(&c("tmobile"), mb).unwrap();
        assert_eq!(amount, paid);
        assert_eq!(quoted.data_value, micros(300_000));
        assert_eq!(book.priced(&c("nope"), mb), None);
        // Delivered where it was quoted: the quote's value, whatever the rate or the fee is now.
        book.rates[0].milli_micros_per_mb = 4_000_000;
        book.activation_fee = micros(10_000);
        assert_eq!(
            book.sealed_data_value(&c("tmobile"), mb, paid, &quoted),
            micros(300_000)
        );
        book.rates[0].milli_micros_per_mb = 1_000_000;
        assert_eq!(
            book.sealed_data_value(&c("tmobile"), mb, paid, &quoted),
            micros(300_000),
            "a rate cut since the quote does not shrink a refund of data bought before it"
        );
        // Failed over: the delivering carrier's rate when less, never above the quote.
        assert_eq!(
            book.sealed_data_value(&c("verizon"), mb, paid, &quoted),
            micros(300_000)
        );
        book.rates[1].milli_micros_per_mb = 2_000_000;
        assert_eq!(
            book.sealed_data_value(&c("verizon"), mb, paid, &quoted),
            micros(200_000)
        );
        // The quoted carrier gone from the book: the sealed value stands (no estimate from today's fee).
        book.rates.clear();
        assert_eq!(
            book.sealed_data_value(&c("tmobile"), mb, paid, &quoted),
            micros(300_000)
        );
        assert_eq!(
            book.sealed_data_value(&c("verizon"), mb, paid, &quoted),
            micros(300_000)
        );
        // Never above what was paid.
        assert_eq!(
            book.sealed_data_value(&c("tmobile"), mb, micros(250_000), &quoted),
            micros(250_000)
        );
        // The minimum invoice lifts the amount, not the data's value.
        let mut book = seed();
        book.activation_fee = UsdcAmount::ZERO;
        let one = DataMb::new(1).unwrap();
        let paid = book.quote(&c("tmobile"), one).unwrap();
        assert_eq!(paid, micros(50_000));
        let (amount, quoted) = book.priced(&c("tmobile"), one).unwrap();
        assert_eq!(amount, paid);
        assert_eq!(quoted.data_value, micros(3_000));
    }

    #[test]
    fn top_ups_below_the_minimum_are_offered_as_the_most_data_it_buys() {
        let book = seed();
        let mb = |n: u64| DataMb::new(n).unwrap();
        let offers = |carrier: &str, asked: Option<u64>| -> Vec<(u32, u64)> {
            book.top_up_offers(&c(carrier), asked.map(mb), &[10, 50, 100], 0)
                .unwrap()
                .into_iter()
                .map(|(mb, amount)| (mb.get(), amount.micros()))
                .collect()
        };
        // $0.05 buys 16 MB at $0.003 (17 MB is $0.051), 14 MB at $0.0035 (15 MB is $0.0525).
        assert_eq!(book.minimum_top_up_mb(&c("tmobile")), Some(16));
        assert_eq!(book.minimum_top_up_mb(&c("verizon")), Some(14));
        assert_eq!(
            offers("tmobile", None),
            [(16, 50_000), (50, 150_000), (100, 300_000)]
        );
        assert_eq!(
            offers("verizon", None),
            [(14, 50_000), (50, 175_000), (100, 350_000)]
        );
        // What the request asked for comes first, as asked, and is not offered twice.
        assert_eq!(
            offers("tmobile", Some(10)),
            [(10, 50_000), (16, 50_000), (50, 150_000), (100, 300_000)]
        );
        assert_eq!(
            offers("tmobile", Some(50)),
            [(50, 150_000), (16, 50_000), (100, 300_000)]
        );
        // A rate so low the minimum buys more than the largest top-up: one offer, the largest.
        let mut cheap = seed();
        cheap.rates[0].milli_micros_per_mb = 1;
        assert_eq!(cheap.minimum_top_up_mb(&c("tmobile")), Some(DataMb::MAX));
        let all = cheap
            .top_up_offers(&c("tmobile"), None, &[10, 50, 100], 0)
            .unwrap();
        assert_eq!(all.len(), 1);
        assert_eq!(all[0].0.get(), DataMb::MAX);
        assert_eq!(book.top_up_offers(&c("att"), None, &[10], 0), None);
        // A SIM 968 MB in debt needs 969 MB to be granted quota again: every standard size is raised to it.
        let owed: Vec<(u32, u64)> = book
            .top_up_offers(&c("tmobile"), None, &[10, 50, 100], 969)
            .unwrap()
            .into_iter()
            .map(|(mb, amount)| (mb.get(), amount.micros()))
            .collect();
        assert_eq!(owed, [(969, 2_907_000)]);
        let big = book
            .top_up_offers(&c("tmobile"), None, &[10, 50, 100], 60)
            .unwrap();
        assert_eq!(
            big.iter().map(|(mb, _)| mb.get()).collect::<Vec<_>>(),
            [60, 100]
        );
    }

    #[test]
    fn minimum_and_unknown_carrier() {
        let mut book = seed();
        book.activation_fee = UsdcAmount::ZERO;
        assert_eq!(
            book.quote(&c("tmobile"), DataMb::new(1).unwrap())
                .unwrap()
                .micros(),
            50_000
        );
        assert!(book.quote(&c("nope"), DataMb::new(1).unwrap()).is_none());
    }

    #[test]
    fn rounds_up_fractional_micros() {
        let book = PriceBook {
            activation_fee: UsdcAmount::ZERO,
            minimum: UsdcAmount::ZERO,
            rates: vec![Rate {
                carrier: c("x1"),
                milli_micros_per_mb: 1,
            }],
        };
        assert_eq!(
            book.quote(&c("x1"), DataMb::new(1).unwrap())
                .unwrap()
                .micros(),
            1
        );
    }
}
