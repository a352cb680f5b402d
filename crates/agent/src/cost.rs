//! `esim402-agent cost`: the kernel's cost model (`esim402_core::cost`) over command-line inputs. Decimal
//! inputs are parsed at the boundary into integer units (MB with up to 6 decimals into bytes, USDC into
//! micro-USDC, gwei into wei); the figures come back as a few lines for a person ([`Figures::human`]) or as
//! JSON for scripts ([`Figures::json`]).

use alloy_primitives::utils::parse_units;
use esim402_core::UsdcAmount;
use esim402_core::cost::{Fleet, Month, PayPerUse, Plan, gas_cost};
use serde_json::{Value, json};

/// The inputs, as given on the command line.
#[derive(Debug, Clone)]
pub struct Inputs {
    /// Devices in the fleet.
    pub devices: u64,
    /// MB per device per month (decimal, e.g. `7.2`).
    pub mb_per_device: String,
    /// The carrier's USDC per MB (e.g. `0.003`).
    pub rate_per_mb: String,
    /// Top-up size, MB.
    pub top_up_mb: u32,
    /// The smallest invoice, USDC.
    pub minimum_invoice: String,
    /// Settlement gas per invoice, in gas units.
    pub gas_units: u64,
    /// Gas price, gwei (decimal).
    pub gas_price_gwei: String,
    /// The chain's native token, USDC.
    pub native_usd: String,
    /// The per-SIM plan compared against: fee per SIM per month, USDC.
    pub plan_fee: String,
    /// The plan's USDC per MB.
    pub plan_per_mb: String,
}

fn units(field: &str, v: &str, decimals: u8) -> Result<u128, String> {
    let parsed = parse_units(v, decimals).map_err(|e| format!("{field}: {e}"))?;
    let value = parsed.get_absolute();
    if parsed.is_negative() {
        return Err(format!("{field} must not be negative"));
    }
    u128::try_from(value).map_err(|_| format!("{field} is too large"))
}

fn usdc(field: &str, v: &str) -> Result<UsdcAmount, String> {
    v.parse().map_err(|e| format!("{field}: {e}"))
}

/// What the model says about a fleet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Figures {
    /// Devices in the fleet.
    pub devices: u64,
    /// Bytes per device per month.
    pub bytes_per_device: u64,
    /// Top-up size, MB.
    pub top_up_mb: u32,
    /// One top-up invoice.
    pub invoice: UsdcAmount,
    /// Settlement gas per invoice.
    pub gas_per_invoice: UsdcAmount,
    /// The fleet's month paying per use.
    pub month: Month,
    /// The fleet's month on the per-SIM plan.
    pub plan: UsdcAmount,
    /// The volume per device per month (bytes) where both cost the same; `None`: pay-per-use is cheaper at
    /// every volume (its cost per MB, gas included, is not above the plan's).
    pub crossover_bytes: Option<u64>,
}

/// The model's figures for `inputs`, as JSON (see [`Figures::json`]).
pub fn report(i: &Inputs) -> Result<Value, String> {
    figures(i).map(|f| f.json())
}

/// The model's figures for `inputs`.
pub fn figures(i: &Inputs) -> Result<Figures, String> {
    let bytes = u64::try_from(units("mb-per-device", &i.mb_per_device, 6)?)
        .map_err(|_| "mb-per-device is too large".to_owned())?;
    let fleet = Fleet {
        devices: i.devices,
        bytes_per_device: bytes,
    };
    let gas = gas_cost(
        i.gas_units,
        units("gas-price-gwei", &i.gas_price_gwei, 9)?,
        usdc("native-usd", &i.native_usd)?,
    );
    let ppu = PayPerUse {
        rate_per_mb: usdc("rate-per-mb", &i.rate_per_mb)?,
        top_up_mb: i.top_up_mb,
        minimum_invoice: usdc("minimum-invoice", &i.minimum_invoice)?,
        gas_per_invoice: gas,
    };
    let plan = Plan {
        monthly_fee: usdc("plan-fee", &i.plan_fee)?,
        per_mb: usdc("plan-per-mb", &i.plan_per_mb)?,
    };
    Ok(Figures {
        devices: i.devices,
        bytes_per_device: bytes,
        top_up_mb: i.top_up_mb,
        invoice: ppu.invoice(),
        gas_per_invoice: gas,
        month: ppu.month(&fleet).map_err(|e| e.to_string())?,
        plan: plan.month(&fleet).map_err(|e| e.to_string())?,
        crossover_bytes: ppu.crossover(&plan).map_err(|e| e.to_string())?,
    })
}

impl Figures {
    /// Pay-per-use for the month, data and gas (`None`: past what USDC amounts hold).
    fn pay_per_use_total(&self) -> Option<UsdcAmount> {
        self.month.paid.checked_add(self.month.gas)
    }

    /// The figures as JSON (`cost --json`). `crossover_*_per_device` is `null` when pay-per-use is cheaper at
    /// every volume: there is no volume where both cost the same.
    pub fn json(&self) -> Value {
        json!({
            "fleet": { "devices": self.devices, "bytes_per_device": self.bytes_per_device },
            "pay_per_use": {
                "top_up_mb": self.top_up_mb,
                "invoice_usdc": self.invoice.to_string(),
                "invoices_per_month": self.month.invoices,
                "data_usdc": self.month.paid.to_string(),
                "at_bare_rate_usdc": self.month.at_rate.to_string(),
                "gas_per_invoice_usdc": self.gas_per_invoice.to_string(),
                "gas_usdc": self.month.gas.to_string(),
                "total_usdc": self.pay_per_use_total().map(|t| t.to_string()),
            },
            "plan_usdc": self.plan.to_string(),
            "crossover_bytes_per_device": self.crossover_bytes,
            "crossover_mb_per_device": self.crossover_bytes.map(mb),
        })
    }

    /// The figures for a person (`cost` without `--json`): the month both ways, which is cheaper, and the
    /// crossover said in words (a bare `null` said nothing).
    pub fn human(&self) -> String {
        let total = self
            .pay_per_use_total()
            .map_or_else(|| "too much to count".to_owned(), |t| format!("{t} USDC"));
        let cheaper = match self.pay_per_use_total() {
            Some(t) if t < self.plan => format!(
                "pay-per-use, by {} USDC a month",
                UsdcAmount::from_micros(self.plan.micros() - t.micros())
            ),
            Some(t) if t > self.plan => format!(
                "the per-SIM plan, by {} USDC a month",
                UsdcAmount::from_micros(t.micros() - self.plan.micros())
            ),
            Some(_) => "neither: both cost the same".to_owned(),
            None => "the per-SIM plan".to_owned(),
        };
        let crossover = match self.crossover_bytes {
            Some(b) => format!(
                "{} MB per device a month: below it pay-per-use is cheaper, above it the plan",
                mb(b)
            ),
            None => "none: pay-per-use is cheaper at every volume (its cost per MB, gas included, is not \
                     above the plan's)"
                .to_owned(),
        };
        format!(
            "fleet: {devices} device(s), {per} MB each a month\n\
             pay-per-use: {total} a month: {data} USDC of data in {invoices} top-up(s) of {top_up} MB at {invoice} \
             USDC ({at_rate} USDC at the bare per-MB rate), and {gas} USDC of settlement gas ({gas_each} per top-up)\n\
             per-SIM plan: {plan} USDC a month\n\
             cheaper: {cheaper}\n\
             crossover: {crossover}",
            devices = self.devices,
            per = mb(self.bytes_per_device),
            data = self.month.paid,
            invoices = self.month.invoices,
            top_up = self.top_up_mb,
            invoice = self.invoice,
            at_rate = self.month.at_rate,
            gas = self.month.gas,
            gas_each = self.gas_per_invoice,
            plan = self.plan,
        )
    }
}

/// Bytes as decimal MB (10^6 bytes), trailing zeros trimmed: `125`, `7.2`.
fn mb(bytes: u64) -> String {
    let frac = format!("{:06}", bytes % 1_000_000);
    let frac = frac.trim_end_matches('0');
    if frac.is_empty() {
        (bytes / 1_000_000).to_string()
    } else {
        format!("{}.{frac}", bytes / 1_000_000)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seed() -> Inputs {
        Inputs {
            devices: 12_000,
            mb_per_device: "7.2".into(),
            rate_per_mb: "0.003".into(),
            top_up_mb: 10,
            minimum_invoice: "0.05".into(),
            gas_units: 70_000,
            gas_price_gwei: "0.01".into(),
            native_usd: "3000".into(),
            plan_fee: "1".into(),
            plan_per_mb: "0.02".into(),
        }
    }

    #[test]
    fn the_seed_fleet() {
        let r = report(&seed()).unwrap();
        assert_eq!(r["pay_per_use"]["at_bare_rate_usdc"], "259.20");
        assert_eq!(r["pay_per_use"]["data_usdc"], "432.00");
        assert_eq!(r["pay_per_use"]["invoices_per_month"], 8_640);
        assert_eq!(r["pay_per_use"]["gas_per_invoice_usdc"], "0.0021");
        assert_eq!(r["plan_usdc"], "13728.00");
        assert_eq!(r["crossover_mb_per_device"], Value::Null);
        let cheap = Inputs {
            plan_fee: "0.5".into(),
            plan_per_mb: "0.001".into(),
            gas_units: 0,
            ..seed()
        };
        let r = report(&cheap).unwrap();
        assert_eq!(r["crossover_mb_per_device"], "125");
        assert_eq!(r["crossover_bytes_per_device"], 125_000_000);
        assert_eq!(mb(7_200_000), "7.2");
    }

    /// Fix: `cost` without `--json` prints a few lines for a person, the crossover in words: "none" says that
    /// pay-per-use is cheaper at every volume. Before, it printed the JSON, whose `crossover_mb_per_device: null`
    /// said nothing of what it meant.
    #[test]
    fn the_figures_read_as_lines_the_crossover_in_words() {
        let lines = figures(&seed()).unwrap().human();
        assert!(
            lines.starts_with("fleet: 12000 device(s), 7.2 MB each a month\n"),
            "{lines}"
        );
        assert!(
            lines.contains("pay-per-use: 450.144 USDC a month: 432.00 USDC of data in 8640 top-up(s) of 10 MB at 0.05 USDC (259.20 USDC at the bare per-MB rate)"),
            "{lines}"
        );
        assert!(
            lines.contains("per-SIM plan: 13728.00 USDC a month"),
            "{lines}"
        );
        assert!(
            lines.contains("cheaper: pay-per-use, by 13277.856 USDC a month"),
            "{lines}"
        );
        assert!(
            lines.contains("crossover: none: pay-per-use is cheaper at every volume"),
            "{lines}"
        );
        assert!(!lines.contains("null") && !lines.contains('{'), "{lines}");
        let cheap = Inputs {
            plan_fee: "0.5".into(),
            plan_per_mb: "0.001".into(),
            gas_units: 0,
            ..seed()
        };
        let lines = figures(&cheap).unwrap().human();
        assert!(
            lines.contains(
                "crossover: 125 MB per device a month: below it pay-per-use is cheaper, above it the plan"
            ),
            "{lines}"
        );
        assert_eq!(
            report(&seed()).unwrap()["pay_per_use"]["total_usdc"],
            "450.144"
        );
    }

    #[test]
    fn bad_inputs_name_the_flag() {
        let e = report(&Inputs {
            mb_per_device: "lots".into(),
            ..seed()
        })
        .unwrap_err();
        assert!(e.starts_with("mb-per-device"), "{e}");
        let e = report(&Inputs {
            plan_fee: "-1".into(),
            ..seed()
        })
        .unwrap_err();
        assert!(e.starts_with("plan-fee"), "{e}");
        assert!(
            report(&Inputs {
                top_up_mb: 0,
                ..seed()
            })
            .is_err()
        );
    }
}
