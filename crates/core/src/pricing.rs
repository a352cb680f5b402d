//! Pricing: an activation fee plus a per-megabyte carrier rate, rounded up to whole micro-USDC and never below
//! the minimum invoice. The rates here are the seed's defaults; the payments issue moves them into the carrier
//! catalog configuration.

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
    /// The seed's defaults: T-Mobile $0.003/MB, Verizon $0.0035/MB, AT&T $0.0032/MB, Telekom DE $0.004/MB,
    /// $0.12 fee, $0.05 minimum
    /// (100 MB on T-Mobile = $0.42).
    pub fn seed_defaults() -> Self {
        let rate = |c: &str, m| Rate {
            carrier: CarrierId::parse(c).expect("static slug"),
            milli_micros_per_mb: m,
        };
        Self {
            activation_fee: UsdcAmount::from_micros(120_000),
            minimum: UsdcAmount::from_micros(50_000),
            rates: vec![
                rate("tmobile", 3_000_000),
                rate("verizon", 3_500_000),
                rate("att", 3_200_000),
                rate("telekom-de", 4_000_000),
            ],
        }
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

/// Which carriers serve a region, default first (placeholder until the carrier catalog is configuration).
pub fn region_carriers(region: &str) -> Option<&'static [&'static str]> {
    match region {
        "us-west" | "us-east" | "us-central" => Some(&["tmobile", "verizon", "att"]),
        "eu-central" => Some(&["telekom-de"]),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(s: &str) -> CarrierId {
        CarrierId::parse(s).unwrap()
    }

    #[test]
    fn seed_price_for_100mb_tmobile_is_42_cents() {
        let book = PriceBook::seed_defaults();
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
    fn regions_list_their_default_carrier_first() {
        assert_eq!(region_carriers("us-west").unwrap()[0], "tmobile");
        assert_eq!(region_carriers("eu-central").unwrap(), &["telekom-de"]);
        assert!(region_carriers("mars-north").is_none());
    }

    #[test]
    fn minimum_and_unknown_carrier() {
        let mut book = PriceBook::seed_defaults();
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
