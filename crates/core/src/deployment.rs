//! What a deployment may run with. A **development** deployment (no `public_origins`, and the local dev chain,
//! `eip155:31337`, as its only payment network: `esim402 up`, `spin up` with the shipped defaults) may use the
//! built-in carrier catalog, whose receipt signers are public development keys
//! ([`crate::usage::receipt::dev_signing_key`]). Any other deployment takes real money or real users, so it
//! must configure its own catalog, and no carrier in it may sign with a development key (a built-in carrier's,
//! or one derived from a catalog carrier id): anyone could sign receipts that spend every SIM's balance.

use crate::chain::{Address, ChainId, Network};
use crate::esim::catalog::{Catalog, CatalogError};
use crate::usage::receipt::dev_signing_key;
use crate::x402::exact::address_of;

/// The local development chain (anvil's default chain id).
pub const DEV_CHAIN: ChainId = ChainId(31337);

/// Whether a deployment is a development one: `public_origins` unset and `payment_network` (its comma-separated
/// CAIP-2 ids or names) naming the dev chain only, as `eip155:31337` or `anvil`. Fails closed: an unset or
/// empty list, or any other entry (a registry alias such as `localhost`, a typo), is not development. Reads the
/// variable itself rather than the network registry, which the components that ask need nothing else of.
pub fn is_development(public_origins_set: bool, payment_network: Option<&str>) -> bool {
    not_development(public_origins_set, payment_network).is_none()
}

/// Why a deployment is not a development one ([`is_development`]), in words for an operator (a typo in
/// `payment_network` makes a deployment "not development", and the first thing refused is then the built-in
/// catalog: the message must lead to the typo); `None` if it is one.
pub fn not_development(public_origins_set: bool, payment_network: Option<&str>) -> Option<String> {
    if public_origins_set {
        return Some("public_origins is set".to_owned());
    }
    let entries: Vec<&str> = payment_network
        .unwrap_or_default()
        .split(',')
        .map(str::trim)
        .filter(|e| !e.is_empty())
        .collect();
    if entries.is_empty() {
        return Some("payment_network is not set".to_owned());
    }
    let other = entries
        .iter()
        .find(|e| !Network::parse(e).is_ok_and(|n| n.chain_id() == DEV_CHAIN))?;
    let what = if Network::parse(other).is_ok() {
        "a network other than the local dev chain"
    } else {
        "not a network name or CAIP-2 id"
    };
    Some(format!(
        "payment_network names {other:?}, {what} (development is eip155:31337 or anvil only)"
    ))
}

/// The built-in carriers and their development receipt signers (`dev_signing_key` of each id: the built-in
/// catalog's `receipt_signer`s, held to both by a test), as constants, so a deployment checks a catalog
/// against them without parsing the built-in catalog or deriving a key per instance.
pub const BUILTIN_DEV_SIGNERS: [(&str, Address); 5] = [
    (
        "tmobile",
        alloy_primitives::address!("0xA9De341e526Be47F2eB5E47B9a85D26D65538809"),
    ),
    (
        "verizon",
        alloy_primitives::address!("0xEF561F12df7deDa78a6D871305251E69FA5Db502"),
    ),
    (
        "att",
        alloy_primitives::address!("0xf172C61Ec6dA1625ffA99fB9443b35685AdAFC80"),
    ),
    (
        "telekom-de",
        alloy_primitives::address!("0x04ED8Cbfc580Ae0292fdee42eD024C418463c1D7"),
    ),
    (
        "vodafone-de",
        alloy_primitives::address!("0x5e009C72b64284D91569cf6b73176c81FF5356a8"),
    ),
];

/// Whether `signer` is one of the built-in carriers' development keys.
fn is_builtin_dev_signer(signer: Address) -> bool {
    BUILTIN_DEV_SIGNERS.iter().any(|(_, a)| *a == signer)
}

/// The carrier catalog a deployment runs with: `custom` (its `carrier_catalog` TOML) when set, else the
/// built-in one, which only a development deployment may use. Outside development a carrier that signs
/// receipts with a built-in carrier's development key is refused too (a catalog copied from the built-in one,
/// a carrier renamed but keeping its signer line): a comparison with [`BUILTIN_DEV_SIGNERS`], cheap enough
/// for every instance's configuration load. [`refuse_derived_dev_signers`] also checks the development keys
/// of the catalog's own carrier ids (a key derivation each): metering at its configuration load, dispatch at
/// an instance's first order.
pub fn catalog(custom: Option<&str>, development: bool) -> Result<Catalog, CatalogError> {
    let catalog = match custom {
        Some(toml) => Catalog::from_toml(toml)?,
        None if development => return Ok(Catalog::builtin().clone()),
        None => return Err(CatalogError::BuiltinOutsideDevelopment),
    };
    if !development
        && let Some(c) = catalog
            .carriers()
            .iter()
            .find(|c| c.receipt_signer.is_some_and(is_builtin_dev_signer))
    {
        return Err(CatalogError::DevSigner(c.id.clone()));
    }
    Ok(catalog)
}

/// Outside development, refuse a carrier of `catalog` that signs receipts with a development key derived from
/// any of the catalog's own carrier ids (e.g. one the traffic simulator signed for while testing): one key
/// derivation per carrier id that is not a built-in one (those are [`BUILTIN_DEV_SIGNERS`], which [`catalog`]
/// checks), and none when no such carrier signs anything.
pub fn refuse_derived_dev_signers(
    catalog: &Catalog,
    development: bool,
) -> Result<(), CatalogError> {
    if development
        || catalog
            .carriers()
            .iter()
            .all(|c| c.receipt_signer.is_none())
    {
        return Ok(());
    }
    let derived: Vec<Address> = catalog
        .carriers()
        .iter()
        .filter(|c| {
            !BUILTIN_DEV_SIGNERS
                .iter()
                .any(|(id, _)| c.id.as_str() == *id)
        })
        .map(|c| address_of(dev_signing_key(&c.id).verifying_key()))
        .collect();
    match catalog
        .carriers()
        .iter()
        .find(|c| c.receipt_signer.is_some_and(|a| derived.contains(&a)))
    {
        Some(c) => Err(CatalogError::DevSigner(c.id.clone())),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::esim::catalog::BUILTIN_TOML;

    /// The built-in catalog's text without its receipt signers (carriers that sign nothing).
    fn unsigned_builtin() -> String {
        BUILTIN_TOML
            .lines()
            .filter(|l| !l.trim_start().starts_with("receipt_signer"))
            .collect::<Vec<_>>()
            .join("\n")
    }

    #[test]
    fn development_is_no_public_origin_and_only_the_dev_chain() {
        assert!(is_development(false, Some("eip155:31337")));
        assert!(is_development(false, Some(" anvil , eip155:31337 ")));
        assert!(!is_development(true, Some("eip155:31337")));
        assert!(!is_development(false, Some("eip155:31337, base")));
        assert!(!is_development(false, Some("eip155:8453")));
        // Fails closed.
        assert!(!is_development(false, None));
        assert!(!is_development(false, Some(" , ")));
        assert!(!is_development(false, Some("eip155:31337,not-a-chain")));
    }

    /// Why not development, in words that lead to the setting (a fresh-user trial: `payment_network=nosuchnet`
    /// answered every 402 with the built-in catalog's refusal, naming `carrier_catalog` only).
    #[test]
    fn not_development_names_the_setting_that_made_it_so() {
        assert_eq!(not_development(false, Some("anvil")), None);
        let why = |p, n| not_development(p, n).unwrap();
        assert_eq!(why(true, Some("anvil")), "public_origins is set");
        assert_eq!(why(false, None), "payment_network is not set");
        assert_eq!(why(false, Some(" , ")), "payment_network is not set");
        assert!(
            why(false, Some("anvil, nosuchnet")).contains("\"nosuchnet\", not a network name"),
            "{}",
            why(false, Some("anvil,nosuchnet"))
        );
        assert!(
            why(false, Some("base")).contains("\"base\", a network other than the local dev chain")
        );
    }

    #[test]
    fn the_builtin_dev_signers_are_the_builtin_catalogs_and_the_dev_keys() {
        let mut signers: Vec<(&str, Address)> = Catalog::builtin()
            .carriers()
            .iter()
            .map(|c| {
                let dev = address_of(dev_signing_key(&c.id).verifying_key());
                assert_eq!(c.receipt_signer, Some(dev), "{}", c.id);
                (c.id.as_str(), dev)
            })
            .collect();
        let mut expected = BUILTIN_DEV_SIGNERS.to_vec();
        expected.sort();
        signers.sort();
        assert_eq!(signers, expected);
    }

    /// A carrier of the catalog's own signing with its own id's development key (one the traffic simulator
    /// signs for): refused by the receipt-verifying check, not by the cheap one.
    #[test]
    fn a_carrier_signing_with_its_own_ids_dev_key_is_refused_where_receipts_are_verified() {
        let id = crate::CarrierId::parse("acme-iot").unwrap();
        let dev = address_of(dev_signing_key(&id).verifying_key()).to_checksum(None);
        let own = unsigned_builtin().replacen(
            "[carriers.tmobile]",
            &format!("[carriers.acme-iot]\nreceipt_signer = \"{dev}\""),
            1,
        );
        let own = own.replace("\"tmobile\"", "\"acme-iot\"");
        let parsed = catalog(Some(&own), false).expect("the cheap check passes it");
        assert_eq!(
            refuse_derived_dev_signers(&parsed, false),
            Err(CatalogError::DevSigner(id))
        );
        assert_eq!(refuse_derived_dev_signers(&parsed, true), Ok(()));
        // Another carrier of the catalog signing with acme-iot's derived key: refused too.
        let other = own.replacen(
            &format!("[carriers.acme-iot]\nreceipt_signer = \"{dev}\""),
            "[carriers.acme-iot]",
            1,
        );
        let other = other.replacen(
            "[carriers.verizon]",
            &format!("[carriers.verizon]\nreceipt_signer = \"{dev}\""),
            1,
        );
        let parsed = catalog(Some(&other), false).expect("the cheap check passes it");
        assert_eq!(
            refuse_derived_dev_signers(&parsed, false),
            Err(CatalogError::DevSigner(
                crate::CarrierId::parse("verizon").unwrap()
            ))
        );
        let unsigned = catalog(Some(&unsigned_builtin()), false).unwrap();
        assert_eq!(refuse_derived_dev_signers(&unsigned, false), Ok(()));
    }

    #[test]
    fn the_builtin_catalog_and_its_dev_signers_are_for_development_only() {
        assert_eq!(&catalog(None, true).unwrap(), Catalog::builtin());
        assert_eq!(
            catalog(None, false),
            Err(CatalogError::BuiltinOutsideDevelopment)
        );
        // The built-in text set as the deployment's own: its dev signers are still refused outside development.
        assert_eq!(
            &catalog(Some(BUILTIN_TOML), true).unwrap(),
            Catalog::builtin()
        );
        assert!(matches!(
            catalog(Some(BUILTIN_TOML), false),
            Err(CatalogError::DevSigner(_))
        ));
        // One edited carrier is not enough: every dev signer is refused.
        let tmobile = crate::CarrierId::parse("tmobile").unwrap();
        let dev = address_of(dev_signing_key(&tmobile).verifying_key()).to_checksum(None);
        assert_eq!(BUILTIN_TOML.matches(&dev).count(), 1);
        let one_real = BUILTIN_TOML.replacen(&dev, "0x1111111111111111111111111111111111111111", 1);
        assert!(matches!(
            catalog(Some(&one_real), false),
            Err(CatalogError::DevSigner(c)) if c.as_str() != "tmobile"
        ));
        // A carrier renamed in a copy, keeping another's dev signer: refused all the same.
        let renamed = BUILTIN_TOML.replacen("[carriers.tmobile]", "[carriers.tmobile-us]", 1);
        let renamed = renamed.replace("\"tmobile\"", "\"tmobile-us\"");
        let parsed = Catalog::from_toml(&renamed).expect("the renamed copy parses");
        assert!(
            parsed
                .carrier(&crate::CarrierId::parse("tmobile-us").unwrap())
                .is_some()
        );
        assert!(matches!(
            catalog(Some(&renamed), false),
            Err(CatalogError::DevSigner(_))
        ));
        let only_renamed: String = renamed
            .lines()
            .filter(|l| !l.trim_start().starts_with("receipt_signer") || l.contains(&dev))
            .map(|l| format!("{l}\n"))
            .collect();
        assert!(matches!(
            catalog(Some(&only_renamed), false),
            Err(CatalogError::DevSigner(c)) if c.as_str() == "tmobile-us"
        ));
        // Carriers that sign nothing, or with keys of their own, are fine.
        let unsigned = unsigned_builtin();
        assert!(catalog(Some(&unsigned), false).is_ok());
        assert!(matches!(
            catalog(Some("nonsense = 1"), true),
            Err(CatalogError::Syntax(_))
        ));
    }
}
