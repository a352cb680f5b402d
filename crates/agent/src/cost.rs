//! `esim402-agent cost`: the kernel's cost model (`esim402_core::cost`) over command-line inputs. Decimal
//! inputs are parsed at the boundary into integer units (MB with up to 6 decimals into bytes, USDC into
//! micro-USDC, gwei into wei); the figures come back as JSON.

use alloy_primitives::utils::parse_units;
use esim402_core::UsdcAmount;
use esim402_core::cost::{Fleet, PayPerUse, Plan, gas_cost};
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

/// The model's figures for `inputs`.
pub fn report(i: &Inputs) -> Result<Value, String> {
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
    let month = ppu.month(&fleet).map_err(|e| e.to_string())?;
    let crossover = ppu.crossover(&plan).map_err(|e| e.to_string())?;
    Ok(json!({
        "fleet": { "devices": i.devices, "bytes_per_device": bytes },
        "pay_per_use": {
            "invoice_usdc": ppu.invoice().to_string(),
            "invoices_per_month": month.invoices,
            "data_usdc": month.paid.to_string(),
            "at_bare_rate_usdc": month.at_rate.to_string(),
            "gas_per_invoice_usdc": gas.to_string(),
            "gas_usdc": month.gas.to_string(),
        },
        "plan_usdc": plan.month(&fleet).map_err(|e| e.to_string())?.to_string(),
        "crossover_bytes_per_device": crossover,
        "crossover_mb_per_device": crossover.map(mb),
    }))
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
