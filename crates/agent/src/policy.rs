//! The spend policy: what the agent may pay, checked against every offer before anything is signed.
//!
//! A TOML file (all keys optional):
//!
//! ```toml
//! max_per_payment_usdc = "1.00"     # one payment at most this much
//! max_per_day_usdc = "5.00"         # payments signed since 00:00 UTC, this one included
//! networks = ["eip155:8453"]        # CAIP-2 ids or known names ("base")
//! assets = ["0x833589fCD6eDb6E08f4c7C32D4f71b54bdA02913"]
//! recipients = ["0x209693Bc6afc0C5328bA36FaF03C514EF312287C"]
//! ```
//!
//! Without a file the defaults apply: at most [`DEFAULT_MAX_PER_PAYMENT`] per payment and
//! [`DEFAULT_MAX_PER_DAY`] per day, any recipient. A refusal names the rule it broke.
//!
//! Every amount is read as micro-USDC, so which token is paid matters as much as how much: without an
//! `assets` list, only the USDC contract the kernel's network registry ([`Networks::builtin`]) names for the
//! offer's network is paid, signed under the registry's EIP-712 domain (an offer naming another domain is
//! refused). Otherwise a facilitator could ask for `amount` units of any EIP-3009 token the wallet holds, one
//! with fewer decimals or a higher unit value. A network the registry does not know is refused unless
//! `networks` lists it (and then, having no registry USDC, only a token `assets` lists is paid there). A token
//! `assets` lists is the operator's word: it is paid on any allowed network, under the domain the offer names.

use std::path::Path;

use alloy_primitives::Address;
use esim402_core::x402::domain::TokenDomain;
use esim402_core::x402::networks::Networks;
use esim402_core::x402::wire::PaymentRequirements;
use esim402_core::{Network, UsdcAmount};
use serde::Deserialize;

/// Per payment, without a policy file.
pub const DEFAULT_MAX_PER_PAYMENT: UsdcAmount = UsdcAmount::from_micros(5_000_000);
/// Per UTC day, without a policy file.
pub const DEFAULT_MAX_PER_DAY: UsdcAmount = UsdcAmount::from_micros(20_000_000);

/// The policy, as the file says it.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SpendPolicy {
    /// The most one payment may cost.
    #[serde(default = "default_per_payment")]
    pub max_per_payment_usdc: UsdcAmount,
    /// The most all payments signed since 00:00 UTC may cost together.
    #[serde(default = "default_per_day")]
    pub max_per_day_usdc: UsdcAmount,
    /// Allowed networks (`None`: any the kernel's network registry knows).
    #[serde(default)]
    pub networks: Option<Vec<String>>,
    /// Allowed token contracts (`None`: the registry's USDC of the offer's network, under its EIP-712 domain).
    #[serde(default)]
    pub assets: Option<Vec<String>>,
    /// Allowed recipients (`None`: any).
    #[serde(default)]
    pub recipients: Option<Vec<String>>,
}

fn default_per_payment() -> UsdcAmount {
    DEFAULT_MAX_PER_PAYMENT
}

fn default_per_day() -> UsdcAmount {
    DEFAULT_MAX_PER_DAY
}

impl Default for SpendPolicy {
    fn default() -> Self {
        Self {
            max_per_payment_usdc: DEFAULT_MAX_PER_PAYMENT,
            max_per_day_usdc: DEFAULT_MAX_PER_DAY,
            networks: None,
            assets: None,
            recipients: None,
        }
    }
}

/// Why an offer was refused: the rule, and the values that broke it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PolicyRefusal {
    /// The 402 offered nothing this agent can pay (not `exact`, not EVM, malformed).
    #[error("no offer this agent can pay (x402 v2 `exact` on an eip155 network): {0}")]
    Unpayable(String),
    /// More than `max_per_payment_usdc`.
    #[error(
        "max_per_payment_usdc: the offer costs {price} USDC, the policy allows {max} per payment"
    )]
    MaxPerPayment {
        /// The price.
        price: UsdcAmount,
        /// The rule's limit.
        max: UsdcAmount,
    },
    /// Would take today's total above `max_per_day_usdc`.
    #[error(
        "max_per_day_usdc: {spent} USDC already spent today + {price} would exceed the daily {max}"
    )]
    MaxPerDay {
        /// Spent today so far.
        spent: UsdcAmount,
        /// The price.
        price: UsdcAmount,
        /// The rule's limit.
        max: UsdcAmount,
    },
    /// Would take the day's total of every agent sharing the wallet (the proxy's devices) above
    /// `max_per_day_usdc` ([`crate::budget::Budget`]); [`PolicyRefusal::MaxPerDay`] is one agent's own day.
    #[error(
        "max_per_day_usdc, shared by every device of the wallet: {spent} USDC already spent today by all of \
         them + {price} would exceed the daily {max}"
    )]
    WalletMaxPerDay {
        /// Spent today so far by all of them.
        spent: UsdcAmount,
        /// The price.
        price: UsdcAmount,
        /// The rule's limit.
        max: UsdcAmount,
    },
    /// The network is not in `networks`.
    #[error("networks: {0} is not an allowed network")]
    Network(String),
    /// The asset is not in `assets`.
    #[error("assets: {0} is not an allowed asset")]
    Asset(String),
    /// A network the kernel's registry does not know, and `networks` does not list.
    #[error(
        "networks: {0} is not in the network registry; list it in `networks` (and its token in `assets`) to allow it"
    )]
    UnknownNetwork(String),
    /// Without an `assets` list: not the USDC contract the registry names for the network (`usdc`: that
    /// contract, `None` when the registry does not know the network).
    #[error(
        "assets: {asset} is not the USDC contract the network registry names for {network} ({}); list it in `assets` to allow it",
        usdc.as_deref().unwrap_or("none known")
    )]
    NotRegistryUsdc {
        /// The offered token.
        asset: String,
        /// The offer's network.
        network: String,
        /// The registry's USDC on that network.
        usdc: Option<String>,
    },
    /// Without an `assets` list: the offer names another EIP-712 domain than the registry's for its USDC.
    #[error(
        "assets: the offer signs for USDC on {network} under the EIP-712 domain {offered}, the network registry's is {registry}; list the asset in `assets` to trust the offer's"
    )]
    Domain {
        /// The offer's network.
        network: String,
        /// The offer's `name`/`version`.
        offered: String,
        /// The registry's.
        registry: String,
    },
    /// The recipient is not in `recipients`.
    #[error("recipients: {0} is not an allowed recipient")]
    Recipient(String),
}

/// An offer the policy allows: what it costs, and the token domain its payment is signed under (the
/// registry's unless the policy lists the asset: see the module docs).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Approval {
    /// The price.
    pub price: UsdcAmount,
    /// The EIP-712 domain to sign under.
    pub domain: TokenDomain,
}

/// Why a policy file is unusable.
#[derive(Debug, thiserror::Error)]
#[error("spend policy {path}: {message}")]
pub struct PolicyFileError {
    /// The file.
    pub path: String,
    /// What is wrong.
    pub message: String,
}

impl SpendPolicy {
    /// Read a policy file; every listed network, asset and recipient must parse.
    pub fn load(path: &Path) -> Result<Self, PolicyFileError> {
        let err = |message: String| PolicyFileError {
            path: path.display().to_string(),
            message,
        };
        let text = std::fs::read_to_string(path).map_err(|e| err(e.to_string()))?;
        Self::parse(&text).map_err(err)
    }

    /// Parse the TOML text of a policy.
    pub fn parse(text: &str) -> Result<Self, String> {
        let p: Self = toml::from_str(text).map_err(|e| e.to_string())?;
        for n in p.networks.iter().flatten() {
            Network::parse(n).map_err(|e| format!("networks: {}", e.0))?;
        }
        for (rule, list) in [("assets", &p.assets), ("recipients", &p.recipients)] {
            for a in list.iter().flatten() {
                a.parse::<Address>()
                    .map_err(|_| format!("{rule}: {a:?} is not an 0x address"))?;
            }
        }
        Ok(p)
    }

    /// Check one offer given what was spent today; its price and signing domain if allowed.
    pub fn check(
        &self,
        req: &PaymentRequirements,
        spent_today: UsdcAmount,
    ) -> Result<Approval, PolicyRefusal> {
        if req.scheme != "exact" {
            return Err(PolicyRefusal::Unpayable(format!("scheme {}", req.scheme)));
        }
        let network = Network::parse(&req.network)
            .map_err(|_| PolicyRefusal::Unpayable(format!("network {}", req.network)))?;
        let price = UsdcAmount::parse_atomic(&req.amount)
            .map_err(|_| PolicyRefusal::Unpayable(format!("amount {:?}", req.amount)))?;
        let asset: Address = req
            .asset
            .parse()
            .map_err(|_| PolicyRefusal::Unpayable(format!("asset {:?}", req.asset)))?;
        let pay_to: Address = req
            .pay_to
            .parse()
            .map_err(|_| PolicyRefusal::Unpayable(format!("payTo {:?}", req.pay_to)))?;
        let (Some(name), Some(version)) = (req.eip712_name(), req.eip712_version()) else {
            return Err(PolicyRefusal::Unpayable(
                "no EIP-712 domain name/version in `extra`".into(),
            ));
        };
        let listed = self.networks.as_ref().map(|allowed| {
            allowed
                .iter()
                .any(|n| Network::parse(n).is_ok_and(|n| n == network))
        });
        if listed == Some(false) {
            return Err(PolicyRefusal::Network(network.to_string()));
        }
        let registry = Networks::builtin().get(network);
        if registry.is_none() && listed.is_none() {
            return Err(PolicyRefusal::UnknownNetwork(network.to_string()));
        }
        let domain = match (&self.assets, registry) {
            (Some(allowed), _) => {
                if !allowed.iter().any(|a| a.parse::<Address>() == Ok(asset)) {
                    return Err(PolicyRefusal::Asset(asset.to_string()));
                }
                // The operator named this token: its domain is as the offer says (a wrong one only makes a
                // signature the token refuses; which contract is paid is pinned by `verifyingContract`).
                TokenDomain {
                    name: name.to_owned(),
                    version: version.to_owned(),
                    chain_id: network.chain_id().0,
                    verifying_contract: asset,
                }
            }
            (None, Some(known)) if known.usdc == asset => {
                if (name, version) != (known.eip712_name.as_str(), known.eip712_version.as_str()) {
                    return Err(PolicyRefusal::Domain {
                        network: network.to_string(),
                        offered: format!("{name:?}/{version:?}"),
                        registry: format!("{:?}/{:?}", known.eip712_name, known.eip712_version),
                    });
                }
                known.token_domain()
            }
            (None, known) => {
                return Err(PolicyRefusal::NotRegistryUsdc {
                    asset: asset.to_string(),
                    network: network.to_string(),
                    usdc: known.map(|k| k.usdc.to_string()),
                });
            }
        };
        if let Some(allowed) = &self.recipients
            && !allowed.iter().any(|a| a.parse::<Address>() == Ok(pay_to))
        {
            return Err(PolicyRefusal::Recipient(pay_to.to_string()));
        }
        if price > self.max_per_payment_usdc {
            return Err(PolicyRefusal::MaxPerPayment {
                price,
                max: self.max_per_payment_usdc,
            });
        }
        if spent_today
            .checked_add(price)
            .is_none_or(|total| total > self.max_per_day_usdc)
        {
            return Err(PolicyRefusal::MaxPerDay {
                spent: spent_today,
                price,
                max: self.max_per_day_usdc,
            });
        }
        Ok(Approval { price, domain })
    }

    /// The first offer of a 402 this policy allows (offers come in the server's order of preference), or the
    /// refusal of the first offer if none is allowed.
    pub fn choose<'a>(
        &self,
        accepts: &'a [PaymentRequirements],
        spent_today: UsdcAmount,
    ) -> Result<(&'a PaymentRequirements, Approval), PolicyRefusal> {
        let mut first = None;
        for req in accepts {
            match self.check(req, spent_today) {
                Ok(approval) => return Ok((req, approval)),
                Err(e) => {
                    first.get_or_insert(e);
                }
            }
        }
        Err(first.unwrap_or_else(|| PolicyRefusal::Unpayable("the 402 offered nothing".into())))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "tests")]
    use super::*;
    use esim402_core::x402::wire::Extra;

    const TOKEN: &str = "0x5FbDB2315678afecb367f032d93F642f64180aa3";
    const RECIPIENT: &str = "0x3C44CdDdB6a900fa2b585dd299e03d12FA4293BC";

    fn offer(network: &str, amount: &str) -> PaymentRequirements {
        PaymentRequirements {
            scheme: "exact".into(),
            network: network.into(),
            amount: amount.into(),
            asset: TOKEN.into(),
            pay_to: RECIPIENT.into(),
            max_timeout_seconds: 300,
            extra: Some(Extra::eip712("USD Coin", "2")),
        }
    }

    fn usdc(s: &str) -> UsdcAmount {
        s.parse().unwrap()
    }

    #[test]
    fn a_file_parses_and_defaults_apply() {
        let p = SpendPolicy::parse(
            r#"
            max_per_payment_usdc = "0.50"
            networks = ["anvil", "eip155:8453"]
            recipients = ["0x3C44CdDdB6a900fa2b585dd299e03d12FA4293BC"]
            "#,
        )
        .unwrap();
        assert_eq!(p.max_per_payment_usdc, usdc("0.5"));
        assert_eq!(p.max_per_day_usdc, DEFAULT_MAX_PER_DAY);
        assert_eq!(p.assets, None);
        assert_eq!(SpendPolicy::parse("").unwrap(), SpendPolicy::default());
        for bad in [
            "max_per_payment_usdc = 0.5",
            "max_per_payment_usdc = \"0.1234567\"",
            "networks = [\"mars\"]",
            "assets = [\"usdc\"]",
            "max_per_paymnet_usdc = \"1\"",
        ] {
            assert!(SpendPolicy::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn every_rule_refuses_by_name() {
        let p = SpendPolicy {
            max_per_payment_usdc: usdc("1"),
            max_per_day_usdc: usdc("2"),
            networks: Some(vec!["eip155:31337".into()]),
            assets: Some(vec![TOKEN.into()]),
            recipients: Some(vec![RECIPIENT.into()]),
        };
        let ok = offer("eip155:31337", "420000");
        let price = |r: Result<Approval, PolicyRefusal>| r.map(|a| a.price);
        assert_eq!(price(p.check(&ok, UsdcAmount::ZERO)), Ok(usdc("0.42")));
        let e = p
            .check(&offer("eip155:31337", "1000001"), UsdcAmount::ZERO)
            .unwrap_err();
        assert!(matches!(e, PolicyRefusal::MaxPerPayment { .. }));
        assert!(e.to_string().starts_with("max_per_payment_usdc: "), "{e}");
        assert!(e.to_string().contains("1.000001"), "{e}");
        let e = p.check(&ok, usdc("1.6")).unwrap_err();
        assert!(e.to_string().starts_with("max_per_day_usdc: "), "{e}");
        assert_eq!(
            price(p.check(&ok, usdc("1.58"))),
            Ok(usdc("0.42")),
            "exactly the cap"
        );
        let e = p
            .check(&offer("eip155:8453", "1"), UsdcAmount::ZERO)
            .unwrap_err();
        assert_eq!(e, PolicyRefusal::Network("eip155:8453".into()));
        let mut other = ok.clone();
        other.asset = RECIPIENT.into();
        assert!(matches!(
            p.check(&other, UsdcAmount::ZERO),
            Err(PolicyRefusal::Asset(_))
        ));
        let mut other = ok.clone();
        other.pay_to = TOKEN.into();
        assert!(matches!(
            p.check(&other, UsdcAmount::ZERO),
            Err(PolicyRefusal::Recipient(_))
        ));
        let mut other = ok.clone();
        other.scheme = "upto".into();
        assert!(matches!(
            p.check(&other, UsdcAmount::ZERO),
            Err(PolicyRefusal::Unpayable(_))
        ));
        let mut other = ok;
        other.extra = None;
        assert!(matches!(
            p.check(&other, UsdcAmount::ZERO),
            Err(PolicyRefusal::Unpayable(_))
        ));
    }

    /// The registry's USDC offer on `network`, under its domain.
    fn usdc_offer(network: &str, amount: &str) -> PaymentRequirements {
        let known = Networks::builtin().lookup(network).unwrap();
        PaymentRequirements {
            asset: known.usdc.to_string(),
            extra: Some(Extra::eip712(&known.eip712_name, &known.eip712_version)),
            ..offer(network, amount)
        }
    }

    #[test]
    fn the_first_allowed_offer_is_chosen() {
        let p = SpendPolicy {
            networks: Some(vec!["base".into()]),
            ..SpendPolicy::default()
        };
        let offers = [
            usdc_offer("eip155:31337", "1"),
            usdc_offer("eip155:8453", "2"),
        ];
        let (chosen, approval) = p.choose(&offers, UsdcAmount::ZERO).unwrap();
        assert_eq!(
            (chosen.network.as_str(), approval.price.micros()),
            ("eip155:8453", 2)
        );
        let e = p.choose(&offers[..1], UsdcAmount::ZERO).unwrap_err();
        assert_eq!(e, PolicyRefusal::Network("eip155:31337".into()));
        assert!(matches!(
            p.choose(&[], UsdcAmount::ZERO),
            Err(PolicyRefusal::Unpayable(_))
        ));
    }

    /// Without an `assets` list only the registry's USDC of the offer's network is paid, under the registry's
    /// EIP-712 domain, and a network the registry does not know only when `networks` lists it. Before, any
    /// token on any network was paid, its amount read as micro-USDC, under whatever domain the offer named.
    #[test]
    fn without_an_assets_list_only_the_registrys_usdc_is_paid_under_its_domain() {
        let any = SpendPolicy::default();
        let base = Networks::builtin().lookup("base").unwrap();
        let ok = any
            .check(&usdc_offer("eip155:8453", "1"), UsdcAmount::ZERO)
            .unwrap();
        assert_eq!(ok.domain, base.token_domain());
        let sepolia = any
            .check(&usdc_offer("base-sepolia", "1"), UsdcAmount::ZERO)
            .unwrap();
        assert_eq!(sepolia.domain.name, "USDC", "the registry's, per network");

        // Another token the wallet may hold (fewer decimals, a higher unit value): refused by name.
        let e = any
            .check(&offer("eip155:8453", "1"), UsdcAmount::ZERO)
            .unwrap_err();
        assert_eq!(
            e,
            PolicyRefusal::NotRegistryUsdc {
                asset: TOKEN.into(),
                network: "eip155:8453".into(),
                usdc: Some(base.usdc.to_string()),
            }
        );
        assert!(e.to_string().starts_with("assets: "), "{e}");
        assert!(e.to_string().contains("list it in `assets`"), "{e}");

        // The registry's USDC under another domain than the registry's: refused, never signed as offered.
        let mut renamed = usdc_offer("eip155:8453", "1");
        renamed.extra = Some(Extra::eip712("USD Coin", "3"));
        let e = any.check(&renamed, UsdcAmount::ZERO).unwrap_err();
        assert!(matches!(e, PolicyRefusal::Domain { .. }), "{e}");
        assert!(e.to_string().contains("\"3\""), "{e}");

        // A network the registry does not know: refused unless listed, and then only a listed token is paid.
        let unknown = offer("eip155:999", "1");
        assert_eq!(
            any.check(&unknown, UsdcAmount::ZERO),
            Err(PolicyRefusal::UnknownNetwork("eip155:999".into()))
        );
        let only_assets = SpendPolicy {
            assets: Some(vec![TOKEN.into()]),
            ..SpendPolicy::default()
        };
        assert_eq!(
            only_assets.check(&unknown, UsdcAmount::ZERO),
            Err(PolicyRefusal::UnknownNetwork("eip155:999".into()))
        );
        let listed = SpendPolicy {
            networks: Some(vec!["eip155:999".into()]),
            ..SpendPolicy::default()
        };
        assert!(matches!(
            listed.check(&unknown, UsdcAmount::ZERO),
            Err(PolicyRefusal::NotRegistryUsdc { usdc: None, .. })
        ));
        let both = SpendPolicy {
            assets: Some(vec![TOKEN.into()]),
            ..listed
        };
        assert_eq!(
            both.check(&unknown, UsdcAmount::ZERO).unwrap().domain,
            TokenDomain {
                name: "USD Coin".into(),
                version: "2".into(),
                chain_id: 999,
                verifying_contract: TOKEN.parse().unwrap(),
            }
        );

        // A listed token is the operator's word, as before: paid on a known network, under the offer's domain.
        let mut own = offer("eip155:8453", "1");
        own.extra = Some(Extra::eip712("Our Token", "1"));
        let approved = only_assets.check(&own, UsdcAmount::ZERO).unwrap();
        assert_eq!(
            (approved.domain.name.as_str(), approved.domain.chain_id),
            ("Our Token", 8453)
        );
    }
}
