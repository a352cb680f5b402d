//! The cost model: what a fleet pays per month buying data pay-per-use (top-ups at a carrier's per-MB rate,
//! each invoice at least the minimum, plus the settlement gas the facilitator spends per invoice) against a
//! per-SIM plan (a monthly fee per SIM plus a per-MB price), and the data volume per device where the two cost
//! the same. Every input is explicit (nothing is looked up), money is integer micro-USDC, data integer bytes
//! (1 MB = 10^6 bytes, as metering counts); fractions are kept exact until the final rounding (half up).

use crate::UsdcAmount;

/// Bytes per MB, as metering counts them.
pub const BYTES_PER_MB: u128 = 1_000_000;

/// What the fleet uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fleet {
    /// Devices (one SIM each).
    pub devices: u64,
    /// Data per device per month, bytes.
    pub bytes_per_device: u64,
}

/// Pay-per-use terms.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PayPerUse {
    /// The carrier's data rate, per MB.
    pub rate_per_mb: UsdcAmount,
    /// Size of one top-up, MB (at least 1).
    pub top_up_mb: u32,
    /// The smallest invoice (a top-up below it costs it).
    pub minimum_invoice: UsdcAmount,
    /// Settlement gas per invoice (the facilitator's cost), in USDC.
    pub gas_per_invoice: UsdcAmount,
}

/// A per-SIM telco plan.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Plan {
    /// Fee per SIM per month.
    pub monthly_fee: UsdcAmount,
    /// Price per MB.
    pub per_mb: UsdcAmount,
}

/// A month of pay-per-use for a fleet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Month {
    /// Top-up invoices (fleet total, rounded up: a started top-up is a whole invoice's worth of data).
    pub invoices: u64,
    /// What the fleet pays for its data (the invoices' amounts).
    pub paid: UsdcAmount,
    /// The same data at the bare rate (what the minimum invoice adds is `paid − at_rate`).
    pub at_rate: UsdcAmount,
    /// The facilitator's settlement gas for those invoices.
    pub gas: UsdcAmount,
}

/// Why a computation has no answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CostError {
    /// A top-up of 0 MB.
    #[error("top_up_mb must be at least 1")]
    ZeroTopUp,
    /// The result does not fit micro-USDC in a u64.
    #[error("the amount overflows")]
    Overflow,
}

fn div_round(n: u128, d: u128) -> Result<u128, CostError> {
    Ok(n.checked_add(d / 2).ok_or(CostError::Overflow)? / d)
}

fn mul(a: u128, b: u128) -> Result<u128, CostError> {
    a.checked_mul(b).ok_or(CostError::Overflow)
}

fn usdc(micros: u128) -> Result<UsdcAmount, CostError> {
    u64::try_from(micros)
        .map(UsdcAmount::from_micros)
        .map_err(|_| CostError::Overflow)
}

impl PayPerUse {
    /// One top-up invoice: `top_up_mb` at the rate, never below the minimum.
    pub fn invoice(&self) -> UsdcAmount {
        let at_rate = u128::from(self.rate_per_mb.micros()) * u128::from(self.top_up_mb);
        UsdcAmount::from_micros(u64::try_from(at_rate).unwrap_or(u64::MAX))
            .max(self.minimum_invoice)
    }

    fn top_up_bytes(&self) -> Result<u128, CostError> {
        match self.top_up_mb {
            0 => Err(CostError::ZeroTopUp),
            mb => Ok(u128::from(mb) * BYTES_PER_MB),
        }
    }

    /// The fleet's month: each device buys its data in top-ups of `top_up_mb`.
    pub fn month(&self, fleet: &Fleet) -> Result<Month, CostError> {
        let chunk = self.top_up_bytes()?;
        let bytes = u128::from(fleet.devices) * u128::from(fleet.bytes_per_device);
        let invoices = bytes.div_ceil(chunk);
        let paid = div_round(mul(bytes, u128::from(self.invoice().micros()))?, chunk)?;
        let at_rate = div_round(
            mul(bytes, u128::from(self.rate_per_mb.micros()))?,
            BYTES_PER_MB,
        )?;
        let gas = mul(invoices, u128::from(self.gas_per_invoice.micros()))?;
        Ok(Month {
            invoices: u64::try_from(invoices).map_err(|_| CostError::Overflow)?,
            paid: usdc(paid)?,
            at_rate: usdc(at_rate)?,
            gas: usdc(gas)?,
        })
    }

    /// The data volume per device per month (bytes) at which pay-per-use (invoices and gas) costs what `plan`
    /// does; `None` if pay-per-use is cheaper at every volume (its per-MB cost is not above the plan's).
    pub fn crossover(&self, plan: &Plan) -> Result<Option<u64>, CostError> {
        let chunk = self.top_up_bytes()?;
        // Per byte: pay-per-use (invoice + gas) / chunk, the plan per_mb / 10^6; the plan adds its fee.
        let ppu = u128::from(self.invoice().micros()) + u128::from(self.gas_per_invoice.micros());
        let lhs = ppu * BYTES_PER_MB;
        let rhs = u128::from(plan.per_mb.micros()) * chunk;
        if lhs <= rhs {
            return Ok(None);
        }
        let bytes = mul(
            mul(u128::from(plan.monthly_fee.micros()), chunk)?,
            BYTES_PER_MB,
        )? / (lhs - rhs);
        u64::try_from(bytes)
            .map(Some)
            .map_err(|_| CostError::Overflow)
    }
}

impl Plan {
    /// The fleet's month on the plan.
    pub fn month(&self, fleet: &Fleet) -> Result<UsdcAmount, CostError> {
        let devices = u128::from(fleet.devices);
        let fees = devices * u128::from(self.monthly_fee.micros());
        let bytes = devices * u128::from(fleet.bytes_per_device);
        let data = div_round(mul(bytes, u128::from(self.per_mb.micros()))?, BYTES_PER_MB)?;
        usdc(fees.checked_add(data).ok_or(CostError::Overflow)?)
    }
}

/// Settlement gas in USDC: `gas_units` at `gas_price_wei`, the chain's native token at `native_usd`
/// (micro-USDC per whole token, 10^18 wei).
pub fn gas_cost(gas_units: u64, gas_price_wei: u128, native_usd: UsdcAmount) -> UsdcAmount {
    let wei = u128::from(gas_units).saturating_mul(gas_price_wei);
    let micros = wei.saturating_mul(u128::from(native_usd.micros())) / 1_000_000_000_000_000_000;
    UsdcAmount::from_micros(u64::try_from(micros).unwrap_or(u64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn usd(s: &str) -> UsdcAmount {
        s.parse().unwrap()
    }

    /// The seed article's fleet: 12 000 devices, 7.2 MB each per month.
    const SEED: Fleet = Fleet {
        devices: 12_000,
        bytes_per_device: 7_200_000,
    };

    fn tmobile(top_up_mb: u32) -> PayPerUse {
        PayPerUse {
            rate_per_mb: usd("0.003"),
            top_up_mb,
            minimum_invoice: usd("0.05"),
            gas_per_invoice: UsdcAmount::from_micros(0),
        }
    }

    #[test]
    fn the_seed_fleet_at_the_bare_rate_is_259_20_a_month_not_1_080() {
        // Hand-computed: 12 000 × 7.2 MB × $0.003/MB = $259.20 (the seed's table prints $1 080, which is
        // $0.0125/MB, not its own $0.003).
        let m = tmobile(100).month(&SEED).unwrap();
        assert_eq!(m.at_rate, usd("259.20"));
        // 100 MB top-ups ($0.30 each, above the minimum): the data costs the bare rate.
        assert_eq!(m.paid, usd("259.20"));
        assert_eq!(m.invoices, 864); // 86 400 MB / 100 MB
    }

    #[test]
    fn small_top_ups_pay_the_minimum_invoice() {
        // 10 MB at $0.003 = $0.03 < $0.05: each top-up costs $0.05, so $0.005/MB: 86 400 MB → $432.00.
        let p = tmobile(10);
        assert_eq!(p.invoice(), usd("0.05"));
        let m = p.month(&SEED).unwrap();
        assert_eq!(m.invoices, 8_640);
        assert_eq!(m.paid, usd("432"));
        assert_eq!(m.at_rate, usd("259.20"));
        // 16 MB (the most the minimum buys, what a low-balance 402 offers first): $0.048 → $0.05, $0.003125/MB,
        // 86 400 MB / 16 = 5 400 invoices → $270.00.
        let m = tmobile(16).month(&SEED).unwrap();
        assert_eq!((m.invoices, m.paid), (5_400, usd("270")));
    }

    #[test]
    fn gas_per_invoice_and_per_chain() {
        // 70 000 gas at 0.01 gwei with ETH at $3 000: 7e11 wei = 7e-7 ETH = $0.0021.
        assert_eq!(gas_cost(70_000, 10_000_000, usd("3000")), usd("0.0021"));
        // Polygon-like: 70 000 gas at 30 gwei, POL at $0.50: 2.1e15 wei = 0.0021 POL = $0.00105 → 1 050 micro.
        assert_eq!(
            gas_cost(70_000, 30_000_000_000, usd("0.5")),
            UsdcAmount::from_micros(1_050)
        );
        let p = PayPerUse {
            gas_per_invoice: usd("0.0021"),
            ..tmobile(100)
        };
        assert_eq!(p.month(&SEED).unwrap().gas, usd("1.8144")); // 864 × $0.0021
    }

    #[test]
    fn plans_and_the_crossover() {
        // A $1/SIM/month plan at $0.02/MB: 12 000 + 86 400 MB × 0.02 = $12 000 + $1 728.
        let plan = Plan {
            monthly_fee: usd("1"),
            per_mb: usd("0.02"),
        };
        assert_eq!(plan.month(&SEED).unwrap(), usd("13728"));
        // Pay-per-use at $0.005/MB effective is cheaper at any volume than $0.02/MB.
        assert_eq!(tmobile(10).crossover(&plan).unwrap(), None);
        // Against $0.50/month + $0.001/MB: 0.50 / (0.005 − 0.001) = 125 MB per device.
        let cheap = Plan {
            monthly_fee: usd("0.5"),
            per_mb: usd("0.001"),
        };
        assert_eq!(tmobile(10).crossover(&cheap).unwrap(), Some(125_000_000));
        // Both sides equal there.
        let at = Fleet {
            devices: 1,
            bytes_per_device: 125_000_000,
        };
        assert_eq!(
            tmobile(10).month(&at).unwrap().paid,
            cheap.month(&at).unwrap()
        );
    }

    #[test]
    fn refusals() {
        assert_eq!(tmobile(0).month(&SEED), Err(CostError::ZeroTopUp));
        let huge = Fleet {
            devices: u64::MAX,
            bytes_per_device: u64::MAX,
        };
        assert_eq!(tmobile(10).month(&huge), Err(CostError::Overflow));
        let plan = Plan {
            monthly_fee: usd("1"),
            per_mb: usd("0.02"),
        };
        assert_eq!(plan.month(&huge), Err(CostError::Overflow));
    }
}
