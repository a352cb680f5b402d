//! The carrier catalog as configuration: carriers (rate, ES2+ endpoint, requester id, profile type, home
//! networks) and regions (default carrier, failover order, roaming policy), parsed and validated from TOML.
//!
//! [`Catalog::builtin`] is the shipped `crates/core/catalog/carriers.toml`; [`Catalog::from_toml`] loads
//! another. Ask [`Catalog::candidates`] which carriers to try for a request and [`Catalog::price_book`] what
//! they cost.

use std::collections::BTreeMap;
use std::sync::OnceLock;

use serde::Deserialize;

use super::activation_code::Fqdn;
use super::plmn::{Plmn, PlmnError, RoamingPolicy};
use crate::chain::{Address, parse_address};
use crate::ids::{CarrierId, Region};
use crate::money::{AmountError, UsdcAmount};
use crate::pricing::{PriceBook, Rate};

/// The shipped catalog's TOML text.
pub const BUILTIN_TOML: &str = include_str!("../../catalog/carriers.toml");

/// The placeholder in `es2_base` replaced by the SM-DP+ base URL at runtime.
pub const SMDP_BASE_PLACEHOLDER: &str = "{smdp_base}";

/// Why a catalog did not load, or a lookup in it failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CatalogError {
    /// Not TOML of the expected shape (unknown keys, floats for money and bad ids or PLMNs land here, with
    /// the position).
    #[error("catalog is not valid: {0}")]
    Syntax(String),
    /// `minimum_invoice` is 0: every invoice is at least it (a switch's is the fee or it), and one of 0 cannot
    /// be paid (with a 0 fee every switch quote failed), while 1 µUSDC top-ups would each cost gas to settle.
    #[error("minimum_invoice must be more than 0 (every invoice, a switch's too, is at least it)")]
    ZeroMinimum,
    /// `activation_fee` or `minimum_invoice` is not a USDC amount.
    #[error("{field} must be a decimal USDC string: {source}")]
    Amount {
        /// The key.
        field: &'static str,
        /// Why.
        source: AmountError,
    },
    /// A `receipt_signer` that is not a 0x-prefixed 20-byte address.
    #[error("carrier {carrier}: receipt_signer {value:?} must be a 0x-prefixed 20-byte address")]
    Signer {
        /// The carrier.
        carrier: CarrierId,
        /// The refused text.
        value: String,
    },
    /// An `smdp_address` that is not a bare host name.
    #[error(
        "carrier {carrier}: smdp_address {value:?} must be a bare host name (no scheme, port or path)"
    )]
    SmdpAddress {
        /// The carrier.
        carrier: CarrierId,
        /// The refused text.
        value: String,
    },
    /// A `price_per_mb` that is not a decimal above zero with at most 9 decimals.
    #[error(
        "carrier {carrier}: price_per_mb {value:?} must be a decimal USDC string above zero with at most 9 decimals"
    )]
    Price {
        /// The carrier.
        carrier: CarrierId,
        /// The refused text.
        value: String,
    },
    /// A required text field is empty.
    #[error("carrier {carrier}: {field} must not be empty")]
    Empty {
        /// The carrier.
        carrier: CarrierId,
        /// The key.
        field: &'static str,
    },
    /// An unusable `es2_base`.
    #[error("carrier {carrier}: es2_base {reason}")]
    Es2Base {
        /// The carrier.
        carrier: CarrierId,
        /// What is wrong.
        reason: &'static str,
    },
    /// No catalog configured outside development (`crate::deployment`): the built-in one's carriers are
    /// development carriers whose receipt signers' private keys are public, so anyone could sign usage that
    /// spends every SIM's balance.
    #[error(
        "no carrier catalog is configured: the built-in one (development carriers whose receipt-signing keys are public) is refused outside development (public_origins set, or a payment network other than the local dev chain)"
    )]
    BuiltinOutsideDevelopment,
    /// Outside development, a carrier whose `receipt_signer` is its public development key.
    #[error(
        "carrier {0}: receipt_signer is the public development key (anyone can sign its receipts), refused outside development"
    )]
    DevSigner(CarrierId),
    /// A region without carriers.
    #[error("region {region} lists no carriers")]
    EmptyRegion {
        /// The region.
        region: Region,
    },
    /// A region names a carrier that is not defined.
    #[error("region {region} lists unknown carrier {carrier}")]
    UnknownCarrier {
        /// The region.
        region: Region,
        /// The carrier.
        carrier: CarrierId,
    },
    /// A region lists a carrier twice.
    #[error("region {region} lists carrier {carrier} twice")]
    DuplicateCarrier {
        /// The region.
        region: Region,
        /// The carrier.
        carrier: CarrierId,
    },
    /// A region's roaming policy is invalid.
    #[error("region {region} roaming: {source}")]
    Roaming {
        /// The region.
        region: Region,
        /// Why.
        source: PlmnError,
    },
    /// Lookup: the region is not in the catalog.
    #[error("no carrier serves region {0} (GET /v1/catalog lists the regions served)")]
    UnknownRegion(Region),
    /// Lookup: the requested carrier does not serve the region.
    #[error("carrier {carrier} does not serve region {region}")]
    CarrierNotInRegion {
        /// The carrier.
        carrier: CarrierId,
        /// The region.
        region: Region,
    },
}

/// One carrier.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Carrier {
    /// Its id.
    pub id: CarrierId,
    /// Display name.
    pub name: String,
    /// Thousandths of a micro-USDC per MB, as [`Rate::milli_micros_per_mb`].
    pub milli_micros_per_mb: u64,
    /// ES2+ base URL, possibly containing [`SMDP_BASE_PLACEHOLDER`].
    pub es2_base: String,
    /// The `functionRequesterIdentifier` for this carrier's SM-DP+.
    pub requester_id: String,
    /// The `profileType` to order.
    pub profile_type: String,
    /// The carrier's own networks.
    pub home_plmns: Vec<Plmn>,
    /// The address whose key signs this carrier's usage receipts (`crate::usage::receipt`); `None`: the
    /// carrier's receipts are refused as from an unknown carrier.
    pub receipt_signer: Option<Address>,
    /// The SM-DP+ address activation codes name when a ConfirmOrder answer leaves out its `smdpAddress`
    /// (optional in ES2+: the SM-DP+'s default address applies); `None`: such an answer cannot be used.
    pub smdp_address: Option<Fqdn>,
}

impl Carrier {
    /// The ES2+ base URL with [`SMDP_BASE_PLACEHOLDER`] replaced by `smdp_base` (trailing `/` dropped);
    /// append an `es2` path constant to call a function.
    pub fn es2_url(&self, smdp_base: &str) -> String {
        self.es2_base
            .replace(SMDP_BASE_PLACEHOLDER, smdp_base.trim_end_matches('/'))
    }

    /// This carrier's price-book rate.
    pub fn rate(&self) -> Rate {
        Rate {
            carrier: self.id.clone(),
            milli_micros_per_mb: self.milli_micros_per_mb,
        }
    }
}

/// One region.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegionEntry {
    /// Its id.
    pub region: Region,
    /// Default carrier first, then the failover order; non-empty, no duplicates, all defined.
    pub carriers: Vec<CarrierId>,
    /// Roaming policy for SIMs sold here.
    pub roaming: RoamingPolicy,
}

/// A validated carrier catalog.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Catalog {
    activation_fee: UsdcAmount,
    minimum_invoice: UsdcAmount,
    carriers: Vec<Carrier>,
    regions: Vec<RegionEntry>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCatalog {
    activation_fee: String,
    minimum_invoice: String,
    carriers: BTreeMap<CarrierId, RawCarrier>,
    regions: BTreeMap<Region, RawRegion>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCarrier {
    name: String,
    price_per_mb: String,
    es2_base: String,
    requester_id: String,
    profile_type: String,
    #[serde(default)]
    home_plmns: Vec<Plmn>,
    #[serde(default)]
    receipt_signer: Option<String>,
    #[serde(default)]
    smdp_address: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRegion {
    carriers: Vec<CarrierId>,
    #[serde(default)]
    roaming: RoamingPolicy,
}

impl Catalog {
    /// Parse and validate a catalog (see `crates/core/catalog/carriers.toml` for the documented shape).
    pub fn from_toml(text: &str) -> Result<Self, CatalogError> {
        let raw: RawCatalog = toml::from_str(text)
            .map_err(|e| CatalogError::Syntax(crate::toml_text::syntax_error(text, &e)))?;
        let amount = |field, s: &str| {
            UsdcAmount::parse_usdc(s).map_err(|source| CatalogError::Amount { field, source })
        };
        let activation_fee = amount("activation_fee", &raw.activation_fee)?;
        let minimum_invoice = amount("minimum_invoice", &raw.minimum_invoice)?;
        if minimum_invoice == UsdcAmount::ZERO {
            return Err(CatalogError::ZeroMinimum);
        }
        let carriers = raw
            .carriers
            .into_iter()
            .map(|(id, c)| carrier(id, c))
            .collect::<Result<Vec<_>, _>>()?;
        let mut regions = Vec::with_capacity(raw.regions.len());
        for (region, r) in raw.regions {
            if r.carriers.is_empty() {
                return Err(CatalogError::EmptyRegion { region });
            }
            for (i, c) in r.carriers.iter().enumerate() {
                if !carriers.iter().any(|k| &k.id == c) {
                    let carrier = c.clone();
                    return Err(CatalogError::UnknownCarrier { region, carrier });
                }
                if r.carriers[..i].contains(c) {
                    let carrier = c.clone();
                    return Err(CatalogError::DuplicateCarrier { region, carrier });
                }
            }
            if let Err(source) = r.roaming.validate() {
                return Err(CatalogError::Roaming { region, source });
            }
            regions.push(RegionEntry {
                region,
                carriers: r.carriers,
                roaming: r.roaming,
            });
        }
        Ok(Self {
            activation_fee,
            minimum_invoice,
            carriers,
            regions,
        })
    }

    /// The shipped catalog, parsed once.
    pub fn builtin() -> &'static Catalog {
        static BUILTIN: OnceLock<Catalog> = OnceLock::new();
        BUILTIN.get_or_init(|| {
            // Compile-time constant text, parsed by this module's tests: a failure here is a build defect.
            Self::from_toml(BUILTIN_TOML)
                .expect("the builtin catalog is validated by its unit test")
        })
    }

    /// Charged once per activation.
    pub fn activation_fee(&self) -> UsdcAmount {
        self.activation_fee
    }

    /// The smallest invoice issued.
    pub fn minimum_invoice(&self) -> UsdcAmount {
        self.minimum_invoice
    }

    /// All carriers, ordered by id.
    pub fn carriers(&self) -> &[Carrier] {
        &self.carriers
    }

    /// All regions, ordered by id.
    pub fn regions(&self) -> &[RegionEntry] {
        &self.regions
    }

    /// A carrier by id.
    pub fn carrier(&self, id: &CarrierId) -> Option<&Carrier> {
        self.carriers.iter().find(|c| &c.id == id)
    }

    /// A region by id.
    pub fn region(&self, region: &Region) -> Option<&RegionEntry> {
        self.regions.iter().find(|r| &r.region == region)
    }

    /// The carriers to try for a request, in order. A `requested` carrier must serve the region and goes
    /// first; otherwise the region's default does. Without failover only that one is returned; with failover
    /// the rest of the region's order follows.
    pub fn candidates(
        &self,
        region: &Region,
        requested: Option<&CarrierId>,
        allow_failover: bool,
    ) -> Result<Vec<&Carrier>, CatalogError> {
        let entry = self
            .region(region)
            .ok_or_else(|| CatalogError::UnknownRegion(region.clone()))?;
        let first = match requested {
            Some(c) if entry.carriers.contains(c) => c,
            Some(c) => {
                return Err(CatalogError::CarrierNotInRegion {
                    carrier: c.clone(),
                    region: region.clone(),
                });
            }
            None => entry
                .carriers
                .first()
                .ok_or_else(|| CatalogError::EmptyRegion {
                    region: region.clone(),
                })?,
        };
        let mut ids = vec![first];
        if allow_failover {
            ids.extend(entry.carriers.iter().filter(|c| *c != first));
        }
        ids.into_iter()
            .map(|id| {
                self.carrier(id)
                    .ok_or_else(|| CatalogError::UnknownCarrier {
                        region: region.clone(),
                        carrier: id.clone(),
                    })
            })
            .collect()
    }

    /// What an agent needs to choose a region and carrier and see the price before asking for a 402 (`GET
    /// /v1/catalog`): the fees, every carrier's rate per MB, its home networks, its receipt signer and the price
    /// of each of `top_up_sizes` (MB), and every region's carriers (default first) and roaming policy. No
    /// SM-DP+ address, requester id or profile type (the facilitator's business with the carrier). The top-ups
    /// are those a low-balance 402 offers ([`PriceBook::top_up_offers`]).
    pub fn public_view(&self, top_up_sizes: &[u32]) -> serde_json::Value {
        use serde_json::json;
        let book = self.price_book();
        let carriers: Vec<_> = self
            .carriers
            .iter()
            .map(|c| {
                let top_ups: Vec<_> = book
                    .top_up_offers(&c.id, None, top_up_sizes, 0)
                    .unwrap_or_default()
                    .into_iter()
                    .map(|(mb, amount)| json!({ "data_mb": mb.get(), "amount_usdc": amount }))
                    .collect();
                json!({
                    "id": c.id, "name": c.name,
                    "price_per_mb_usdc": per_mb(c.milli_micros_per_mb),
                    "home_plmns": c.home_plmns.iter().map(ToString::to_string).collect::<Vec<_>>(),
                    "receipt_signer": c.receipt_signer.map(|a| a.to_checksum(None)),
                    "top_ups": top_ups,
                })
            })
            .collect();
        let regions: Vec<_> = self
            .regions
            .iter()
            .map(|r| {
                json!({
                    "region": r.region, "carriers": r.carriers,
                    "roaming": {
                        "allow": r.roaming.allow.iter().map(ToString::to_string).collect::<Vec<_>>(),
                        "deny": r.roaming.deny.iter().map(ToString::to_string).collect::<Vec<_>>(),
                        "countries": r.roaming.countries,
                    },
                })
            })
            .collect();
        json!({
            "activation_fee_usdc": self.activation_fee,
            "minimum_invoice_usdc": self.minimum_invoice,
            "switch_fee_usdc": book.switch_charge(),
            "carriers": carriers,
            "regions": regions,
        })
    }

    /// The price book: the catalog's fee, minimum and every carrier's rate.
    pub fn price_book(&self) -> PriceBook {
        PriceBook {
            activation_fee: self.activation_fee,
            minimum: self.minimum_invoice,
            rates: self.carriers.iter().map(Carrier::rate).collect(),
        }
    }
}

/// A rate of `milli_micros` thousandths of a micro-USDC per MB as a USDC decimal (`3_500_000` → `"0.0035"`).
fn per_mb(milli_micros: u64) -> String {
    let (whole, frac) = (milli_micros / 1_000_000_000, milli_micros % 1_000_000_000);
    let frac = format!("{frac:09}");
    let frac = frac.trim_end_matches('0');
    if frac.is_empty() {
        whole.to_string()
    } else {
        format!("{whole}.{frac}")
    }
}

fn carrier(id: CarrierId, c: RawCarrier) -> Result<Carrier, CatalogError> {
    for (field, value) in [
        ("name", &c.name),
        ("requester_id", &c.requester_id),
        ("profile_type", &c.profile_type),
        ("es2_base", &c.es2_base),
    ] {
        if value.trim().is_empty() {
            return Err(CatalogError::Empty { carrier: id, field });
        }
    }
    let es2_error = |reason| CatalogError::Es2Base {
        carrier: id.clone(),
        reason,
    };
    if c.es2_base.contains(char::is_whitespace) {
        return Err(es2_error("must not contain whitespace"));
    }
    let rest = c.es2_base.replace(SMDP_BASE_PLACEHOLDER, "");
    if rest.contains(['{', '}']) {
        return Err(es2_error(
            "may contain no placeholder other than {smdp_base}",
        ));
    }
    if !(c.es2_base.starts_with(SMDP_BASE_PLACEHOLDER)
        || c.es2_base.starts_with("https://")
        || c.es2_base.starts_with("http://"))
    {
        return Err(es2_error(
            "must start with {smdp_base} or an http(s):// URL",
        ));
    }
    // A free carrier cannot be metered: a balance's value would buy unbounded bytes on it (a switch revalues
    // balances at the new carrier's rate).
    let Some(milli_micros_per_mb) = parse_milli_micros(&c.price_per_mb).filter(|&m| m > 0) else {
        return Err(CatalogError::Price {
            carrier: id,
            value: c.price_per_mb,
        });
    };
    let receipt_signer = match &c.receipt_signer {
        None => None,
        Some(text) => Some(parse_address(text).map_err(|_| CatalogError::Signer {
            carrier: id.clone(),
            value: text.clone(),
        })?),
    };
    let smdp_address = match &c.smdp_address {
        None => None,
        Some(text) => Some(Fqdn::parse(text).map_err(|_| CatalogError::SmdpAddress {
            carrier: id.clone(),
            value: text.clone(),
        })?),
    };
    Ok(Carrier {
        id,
        name: c.name,
        milli_micros_per_mb,
        es2_base: c.es2_base,
        requester_id: c.requester_id,
        profile_type: c.profile_type,
        home_plmns: c.home_plmns,
        receipt_signer,
        smdp_address,
    })
}

/// A decimal USDC string with at most 9 decimals, in thousandths of a micro-USDC (`"0.0035"` → 3_500_000).
fn parse_milli_micros(s: &str) -> Option<u64> {
    let (int, frac) = s.split_once('.').unwrap_or((s, ""));
    let digits = |p: &str| p.bytes().all(|b| b.is_ascii_digit());
    if int.is_empty() || !digits(int) || !digits(frac) || frac.len() > 9 {
        return None;
    }
    if s.contains('.') && frac.is_empty() {
        return None;
    }
    let int: u64 = int.parse().ok()?;
    let frac: u64 = format!("{frac:0<9}").parse().ok()?;
    int.checked_mul(1_000_000_000)?.checked_add(frac)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_builtin_price_book_is_the_seeds() {
        let book = Catalog::builtin().price_book();
        let c = |s: &str| crate::ids::CarrierId::parse(s).unwrap();
        let mb = crate::ids::DataMb::new(100).unwrap();
        assert_eq!(book.quote(&c("tmobile"), mb).unwrap().to_string(), "0.42");
        assert_eq!(book.quote(&c("verizon"), mb).unwrap().micros(), 470_000);
        assert_eq!(book.quote(&c("att"), mb).unwrap().micros(), 440_000);
        assert_eq!(book.activation_fee.micros(), 120_000);
        assert_eq!(book.minimum.micros(), 50_000);
    }

    #[test]
    fn builtin_regions_list_their_default_carrier_first() {
        let carriers = |region: &str| -> Option<Vec<String>> {
            Catalog::builtin()
                .regions()
                .iter()
                .find(|r| r.region.as_str() == region)
                .map(|r| r.carriers.iter().map(|c| c.as_str().to_owned()).collect())
        };
        assert_eq!(carriers("us-west").unwrap()[0], "tmobile");
        assert_eq!(
            carriers("eu-central").unwrap(),
            ["telekom-de", "vodafone-de"]
        );
        for region in ["us-west", "us-east", "us-central"] {
            assert_eq!(carriers(region).unwrap().len(), 3, "{region}");
        }
        assert!(carriers("mars-north").is_none());
    }
    use crate::ids::DataMb;

    fn c(s: &str) -> CarrierId {
        CarrierId::parse(s).unwrap()
    }

    fn r(s: &str) -> Region {
        Region::parse(s).unwrap()
    }

    fn ids(carriers: &[&Carrier]) -> Vec<String> {
        carriers.iter().map(|k| k.id.to_string()).collect()
    }

    const MINIMAL: &str = r#"
        activation_fee = "0.12"
        minimum_invoice = "0.05"
        [carriers.tmobile]
        name = "T-Mobile US"
        price_per_mb = "0.003"
        es2_base = "{smdp_base}/tmobile"
        requester_id = "esim402-tmo"
        profile_type = "tmo-iot-data"
        home_plmns = ["310-260"]
        [regions.us-west]
        carriers = ["tmobile"]
    "#;

    #[test]
    fn a_carrier_may_name_its_default_smdp_address_as_a_bare_host_name() {
        let tmo = |cat: &Catalog| cat.carrier(&c("tmobile")).unwrap().smdp_address.clone();
        assert_eq!(tmo(&Catalog::from_toml(MINIMAL).unwrap()), None);
        let with = MINIMAL.replace(
            "home_plmns = [\"310-260\"]",
            "home_plmns = [\"310-260\"]\n smdp_address = \"smdp.tmo.example\"",
        );
        assert_eq!(
            tmo(&Catalog::from_toml(&with).unwrap()).unwrap().as_str(),
            "smdp.tmo.example"
        );
        let bad = with.replace("smdp.tmo.example", "https://smdp.tmo.example/");
        let e = Catalog::from_toml(&bad).unwrap_err();
        assert!(matches!(e, CatalogError::SmdpAddress { .. }), "{e}");
    }

    /// A minimum invoice of 0 is refused (a review: with a 0 fee too, every switch quote failed as an invoice
    /// of 0, and top-ups of 1 µUSDC each cost gas to settle); a 0 fee alone is fine.
    #[test]
    fn a_zero_minimum_invoice_is_refused() {
        let zero_min = MINIMAL.replace("minimum_invoice = \"0.05\"", "minimum_invoice = \"0\"");
        assert_ne!(zero_min, MINIMAL);
        assert_eq!(
            Catalog::from_toml(&zero_min).unwrap_err(),
            CatalogError::ZeroMinimum
        );
        let zero_fee = MINIMAL.replace("activation_fee = \"0.12\"", "activation_fee = \"0\"");
        assert_ne!(zero_fee, MINIMAL);
        assert!(Catalog::from_toml(&zero_fee).is_ok());
    }

    #[test]
    fn a_receipt_signer_without_0x_is_refused_naming_it() {
        let with = |signer: &str| {
            MINIMAL.replace(
                "home_plmns = [\"310-260\"]",
                &format!("home_plmns = [\"310-260\"]\n receipt_signer = \"{signer}\""),
            )
        };
        let ok = Catalog::from_toml(&with("0xa0ee7a142d267c1f36714e4a8f75612f20a79720")).unwrap();
        assert!(ok.carrier(&c("tmobile")).unwrap().receipt_signer.is_some());
        let e = Catalog::from_toml(&with("a0ee7a142d267c1f36714e4a8f75612f20a79720")).unwrap_err();
        assert!(matches!(e, CatalogError::Signer { .. }), "{e}");
        assert!(e.to_string().contains("receipt_signer"), "{e}");
    }

    #[test]
    fn the_builtin_catalog_is_valid() {
        let cat = Catalog::from_toml(BUILTIN_TOML).unwrap();
        assert_eq!(&cat, Catalog::builtin());
        assert_eq!(cat.activation_fee().to_string(), "0.12");
        assert_eq!(cat.minimum_invoice().to_string(), "0.05");
        for region in ["us-west", "us-east", "us-central", "eu-central"] {
            let entry = cat.region(&r(region)).unwrap();
            assert!(entry.carriers.len() >= 2, "{region} can fail over");
        }
        assert_eq!(cat.region(&r("us-west")).unwrap().carriers[0], c("tmobile"));
        let tmo = cat.carrier(&c("tmobile")).unwrap();
        assert_eq!(tmo.milli_micros_per_mb, 3_000_000);
        assert_eq!(tmo.home_plmns, vec![Plmn::parse("310-260").unwrap()]);
        assert_eq!(
            cat.carrier(&c("verizon")).unwrap().milli_micros_per_mb,
            3_500_000
        );
        assert_eq!(
            cat.carrier(&c("att")).unwrap().milli_micros_per_mb,
            3_200_000
        );
        assert_eq!(
            cat.carrier(&c("telekom-de")).unwrap().milli_micros_per_mb,
            4_000_000
        );
        assert!(cat.carrier(&c("nope")).is_none());
    }

    #[test]
    fn the_builtin_roaming_policies_admit_their_home_networks() {
        let cat = Catalog::builtin();
        for region in cat.regions() {
            for id in &region.carriers {
                for plmn in &cat.carrier(id).unwrap().home_plmns {
                    assert!(region.roaming.permits(plmn), "{} {plmn}", region.region);
                }
            }
        }
    }

    #[test]
    fn price_book_reproduces_the_seed_prices() {
        let book = Catalog::builtin().price_book();
        let mb = DataMb::new(100).unwrap();
        assert_eq!(book.quote(&c("tmobile"), mb).unwrap().to_string(), "0.42");
        assert_eq!(book.quote(&c("verizon"), mb).unwrap().to_string(), "0.47");
        assert_eq!(book.quote(&c("att"), mb).unwrap().micros(), 440_000);
        assert_eq!(book.quote(&c("telekom-de"), mb).unwrap().micros(), 520_000);
    }

    #[test]
    fn candidates_follow_the_region_order() {
        let cat = Catalog::builtin();
        let west = r("us-west");
        assert_eq!(
            ids(&cat.candidates(&west, None, false).unwrap()),
            ["tmobile"]
        );
        assert_eq!(
            ids(&cat.candidates(&west, None, true).unwrap()),
            ["tmobile", "verizon", "att"]
        );
        assert_eq!(
            ids(&cat.candidates(&west, Some(&c("att")), false).unwrap()),
            ["att"]
        );
        assert_eq!(
            ids(&cat.candidates(&west, Some(&c("att")), true).unwrap()),
            ["att", "tmobile", "verizon"]
        );
        assert_eq!(
            cat.candidates(&r("eu-central"), Some(&c("tmobile")), true),
            Err(CatalogError::CarrierNotInRegion {
                carrier: c("tmobile"),
                region: r("eu-central")
            })
        );
        let err = cat.candidates(&r("mars-north"), None, true).unwrap_err();
        assert_eq!(
            err.to_string(),
            "no carrier serves region mars-north (GET /v1/catalog lists the regions served)"
        );
    }

    /// The public view: fees, rates as decimals, top-up prices, regions with their carriers (default first) and
    /// roaming, and nothing of the facilitator's SM-DP+ business.
    #[test]
    fn the_public_view_prices_every_carrier_and_region() {
        let v = Catalog::builtin().public_view(&[10, 100]);
        assert_eq!(v["activation_fee_usdc"], "0.12", "{v}");
        let tmo = v["carriers"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["id"] == "tmobile")
            .unwrap();
        assert_eq!(tmo["price_per_mb_usdc"], "0.003", "{tmo}");
        // 10 MB would cost the $0.05 minimum, which buys 16 MB: the offer is 16 MB.
        assert_eq!(tmo["top_ups"][0]["data_mb"], 16, "{tmo}");
        assert_eq!(tmo["top_ups"][0]["amount_usdc"], "0.05", "{tmo}");
        assert_eq!(tmo["top_ups"][1]["data_mb"], 100);
        assert_eq!(tmo["top_ups"][1]["amount_usdc"], "0.30", "{tmo}");
        let text = v.to_string();
        assert!(
            !text.contains("es2") && !text.contains("requester"),
            "{text}"
        );
        let west = v["regions"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["region"] == "us-west")
            .unwrap();
        assert_eq!(west["carriers"][0], "tmobile", "{west}");
        assert_eq!(
            (per_mb(3_500_000), per_mb(2_000_000_000)),
            ("0.0035".into(), "2".into())
        );
    }

    #[test]
    fn es2_urls_substitute_the_smdp_base() {
        let tmo = Catalog::builtin().carrier(&c("tmobile")).unwrap();
        assert_eq!(
            tmo.es2_url("https://smdp.example.com/"),
            "https://smdp.example.com/tmobile"
        );
        assert_eq!(
            tmo.es2_url("http://127.0.0.1:8081"),
            "http://127.0.0.1:8081/tmobile"
        );
    }

    #[test]
    fn milli_micro_prices() {
        assert_eq!(parse_milli_micros("0.0035"), Some(3_500_000));
        assert_eq!(parse_milli_micros("0"), Some(0));
        assert_eq!(parse_milli_micros("1.000000001"), Some(1_000_000_001));
        for bad in [
            "",
            "-0.1",
            "0.0000000001",
            "1.",
            ".5",
            "1e-3",
            "0,1",
            "18446744074",
        ] {
            assert_eq!(parse_milli_micros(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn validation_names_the_problem() {
        assert!(Catalog::from_toml(MINIMAL).is_ok());
        let broken = |from: &str, to: &str| {
            assert!(MINIMAL.contains(from), "{from}");
            Catalog::from_toml(&MINIMAL.replace(from, to)).unwrap_err()
        };
        assert!(
            matches!(broken(r#""0.12""#, "0.12"), CatalogError::Syntax(_)),
            "money is never a float"
        );
        assert!(matches!(
            broken(r#""0.05""#, r#""-1""#),
            CatalogError::Amount {
                field: "minimum_invoice",
                ..
            }
        ));
        assert!(matches!(
            broken(r#""0.003""#, r#""0.0000000001""#),
            CatalogError::Price { .. }
        ));
        for zero in [r#""0""#, r#""0.000""#] {
            assert!(
                matches!(broken(r#""0.003""#, zero), CatalogError::Price { .. }),
                "{zero}: a zero rate is refused"
            );
        }
        assert!(matches!(
            broken(r#""esim402-tmo""#, r#""""#),
            CatalogError::Empty {
                field: "requester_id",
                ..
            }
        ));
        assert!(matches!(
            broken(r#""{smdp_base}/tmobile""#, r#""""#),
            CatalogError::Empty {
                field: "es2_base",
                ..
            }
        ));
        assert!(matches!(
            broken("{smdp_base}/tmobile", "{base}/tmobile"),
            CatalogError::Es2Base { .. }
        ));
        assert!(matches!(
            broken("{smdp_base}/tmobile", "smdp/tmobile"),
            CatalogError::Es2Base { .. }
        ));
        assert!(matches!(
            broken(r#"["310-260"]"#, r#"["31026"]"#),
            CatalogError::Syntax(_)
        ));
        assert!(matches!(
            broken("carriers.tmobile", "carriers.T-Mobile"),
            CatalogError::Syntax(_)
        ));
        assert!(matches!(
            broken(r#"name = "T"#, r#"nmae = "T"#),
            CatalogError::Syntax(_)
        ));
        assert_eq!(
            broken(
                r#"carriers = ["tmobile"]"#,
                r#"carriers = ["tmobile", "verizon"]"#
            ),
            CatalogError::UnknownCarrier {
                region: r("us-west"),
                carrier: c("verizon")
            }
        );
        assert_eq!(
            broken(
                r#"carriers = ["tmobile"]"#,
                r#"carriers = ["tmobile", "tmobile"]"#
            ),
            CatalogError::DuplicateCarrier {
                region: r("us-west"),
                carrier: c("tmobile")
            }
        );
        assert_eq!(
            broken(r#"carriers = ["tmobile"]"#, "carriers = []"),
            CatalogError::EmptyRegion {
                region: r("us-west")
            }
        );
        assert_eq!(
            broken(
                r#"carriers = ["tmobile"]"#,
                "carriers = [\"tmobile\"]\nroaming = { countries = [\"usa\"] }"
            ),
            CatalogError::Roaming {
                region: r("us-west"),
                source: PlmnError::Country("usa".into())
            }
        );
    }
}
