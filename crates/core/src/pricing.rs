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
        let rate = self.rates.iter().find(|r| &r.carrier == carrier)?;
        let milli = u128::from(rate.milli_micros_per_mb) * u128::from(data_mb.get());
        u64::try_from(milli.div_ceil(1000))
            .ok()
            .map(UsdcAmount::from_micros)
    }

    /// What moving a `data_mb` bundle from `from` to `to` costs: a new profile is ordered, so the activation
    /// fee, plus the bundle's price difference when the new carrier is dearer (a cheaper carrier is no
    /// refund: the old bundle is not metered back). Never below the minimum invoice.
    pub fn switch_charge(
        &self,
        from: &CarrierId,
        to: &CarrierId,
        data_mb: DataMb,
    ) -> Option<UsdcAmount> {
        let old = self.usage(from, data_mb)?;
        let new = self.usage(to, data_mb)?;
        let extra = new.checked_sub(old).unwrap_or(UsdcAmount::ZERO);
        Some(self.activation_fee.checked_add(extra)?.max(self.minimum))
    }

    /// A data top-up of `data_mb` on `carrier`: the data at the carrier's rate (no activation fee), never below
    /// the minimum invoice.
    pub fn top_up(&self, carrier: &CarrierId, data_mb: DataMb) -> Option<UsdcAmount> {
        Some(self.usage(carrier, data_mb)?.max(self.minimum))
    }

    /// The price of `data_mb` on `carrier`, or `None` for an unknown carrier.
    pub fn quote(&self, carrier: &CarrierId, data_mb: DataMb) -> Option<UsdcAmount> {
        let rate = self.rates.iter().find(|r| &r.carrier == carrier)?;
        // u64 cannot overflow: rate ≤ 2^40 in practice and data_mb ≤ 100_000; use u128 anyway.
        let milli = u128::from(rate.milli_micros_per_mb) * u128::from(data_mb.get());
        let usage = u64::try_from(milli.div_ceil(1000)).ok()?;
        let total = self
            .activation_fee
            .checked_add(UsdcAmount::from_micros(usage))?;
        Some(total.max(self.minimum))
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
    fn switching_to_a_dearer_carrier_pays_fee_plus_difference() {
        let book = seed();
        let mb = DataMb::new(100).unwrap();
        // 100 MB: tmobile $0.30, verizon $0.35 → $0.12 fee + $0.05.
        assert_eq!(
            book.switch_charge(&c("tmobile"), &c("verizon"), mb)
                .unwrap()
                .micros(),
            170_000
        );
        // Cheaper: the fee only.
        assert_eq!(
            book.switch_charge(&c("verizon"), &c("tmobile"), mb)
                .unwrap()
                .micros(),
            120_000
        );
        assert!(book.switch_charge(&c("nope"), &c("tmobile"), mb).is_none());
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
