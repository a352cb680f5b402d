//! Stateless invoices: the id *is* the invoice. An unpaid `402` writes nothing anywhere; the terms it offered
//! travel inside the invoice id, sealed with a MAC under the server's key, and come back with the payment.
//!
//! `inv_<terms>.<mac>`: `<terms>` is the [`Terms`] in postcard (a compact, stable binary encoding), `<mac>`
//! the first 16 bytes of `keccak256("esim402/invoice/v1" ‖ key ‖ terms)`, both URL-safe base64 without
//! padding. Keccak-256 is a sponge, so a keyed prefix is a sound MAC (no length extension). An activation's
//! id is about 120 characters (about 150 with a payer).
//!
//! Encoding versions: 1 is the terms alone; 2 (an activation's) appends the quote it was priced at (the
//! carrier and the data's value, [`SealedQuote`]). Both open; only version 2 carries a quote.
//!
//! Rules a reader must not break:
//! - Only [`open`] turns an id into terms, and it checks the MAC first (in constant time): a forged or edited
//!   id is [`TokenError::BadMac`], never a cheaper invoice.
//! - The terms are everything the payment is checked against (amount, recipient, networks, purchase, expiry)
//!   and what its data is worth (the sealed quote);
//!   the asset and EIP-712 domain of each network come from the deployment's network registry when the
//!   invoice is opened, so an id cannot name a token of its own.
//! - Each id carries a random `nonce`: two identical requests in one second get two invoices.
//!
//! ```
//! use esim402_core::invoice::token::{InvoiceKey, Terms, open, seal};
//! use esim402_core::invoice::Purchase;
//! use esim402_core::{Network, UsdcAmount};
//!
//! let key = InvoiceKey::new([7; 32]);
//! let terms = Terms {
//!     purchase: Purchase::TopUp { iccid: "8901260000000000014".into(), data_mb: 50, payer: None },
//!     amount: UsdcAmount::from_micros(210_000),
//!     networks: vec![Network::parse("eip155:8453").unwrap()],
//!     pay_to: "0x3C44CdDdB6a900fa2b585dd299e03d12FA4293BC".parse().unwrap(),
//!     created_at: 1_700_000_000,
//!     expires_at: 1_700_000_900,
//!     nonce: 42,
//!     quoted: None,
//! };
//! let id = seal(&terms, &key).unwrap();
//! assert_eq!(open(&id, &key).unwrap(), terms);
//! assert!(open(&id, &InvoiceKey::new([8; 32])).is_err());
//! ```

use std::fmt;

use alloy_primitives::{Address, keccak256};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::{Deserialize, Serialize};

use super::Purchase;
use crate::chain::{ChainId, Network};
use crate::ids::CarrierId;
use crate::ids::InvoiceId;
use crate::money::UsdcAmount;
use crate::pricing::SealedQuote;

/// Version byte of the encoding without a quote; any version but these two is refused, not guessed at.
const VERSION: u8 = 1;
/// Version byte of the encoding with a quote (a [`WireQuote`] after the terms).
const VERSION_QUOTED: u8 = 2;
/// Domain separation of the MAC.
const DOMAIN: &[u8] = b"esim402/invoice/v1";
/// MAC bytes kept (128 bits).
const MAC_LEN: usize = 16;

/// The server's invoice key (32 bytes). Its `Debug` shows nothing of it.
#[derive(Clone, PartialEq, Eq)]
pub struct InvoiceKey([u8; 32]);

impl InvoiceKey {
    /// A key from 32 secret bytes.
    pub const fn new(bytes: [u8; 32]) -> Self {
        Self(bytes)
    }

    /// A key derived from a secret of any length alone: keccak-256 of it, domain-separated. How a configured
    /// `invoice_secret` sealed ids before ids were bound to a store ([`InvoiceKey::derive_for_store`]): such
    /// ids still open under it, no new one is sealed with it (`super::keyring`).
    pub fn derive(secret: &[u8]) -> Self {
        let mut input = b"esim402/invoice-key/v1".to_vec();
        input.extend_from_slice(secret);
        Self(keccak256(input).0)
    }

    /// A key derived from a secret and the store's random `salt`: deployments that share a secret but not a
    /// store seal (and open) different ids, so a payment proved at one is never a payment at another (the
    /// claims that make a payment count once live in the store).
    pub fn derive_for_store(secret: &[u8], salt: &[u8; 32]) -> Self {
        let mut input = b"esim402/invoice-key/v2".to_vec();
        input.extend_from_slice(salt);
        input.extend_from_slice(secret);
        Self(keccak256(input).0)
    }

    fn mac(&self, payload: &[u8]) -> [u8; MAC_LEN] {
        let mut input = Vec::with_capacity(DOMAIN.len() + 32 + payload.len());
        input.extend_from_slice(DOMAIN);
        input.extend_from_slice(&self.0);
        input.extend_from_slice(payload);
        let full = keccak256(input);
        let mut out = [0u8; MAC_LEN];
        out.copy_from_slice(&full[..MAC_LEN]);
        out
    }
}

impl fmt::Debug for InvoiceKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("InvoiceKey(..)")
    }
}

/// What an invoice offers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Terms {
    /// What it buys.
    pub purchase: Purchase,
    /// The price.
    pub amount: UsdcAmount,
    /// The networks it may be paid on, preferred first (never empty).
    pub networks: Vec<Network>,
    /// Who receives the payment.
    pub pay_to: Address,
    /// Issued at (unix seconds).
    pub created_at: u64,
    /// Payable until (unix seconds).
    pub expires_at: u64,
    /// Random, so identical requests get distinct invoices.
    pub nonce: u64,
    /// An activation's quote: the carrier that priced it and its data's value then (`None` for other
    /// purchases, and for activations sealed by a build before quotes were sealed).
    pub quoted: Option<SealedQuote>,
}

/// Why an id does not open.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    /// Not `<base64>.<base64>`, or the terms do not decode.
    #[error("not an invoice id issued by this service")]
    Malformed,
    /// The MAC does not match: edited, forged, or sealed under another key.
    #[error("invoice id was not issued by this service")]
    BadMac,
    /// Sealed with another encoding version.
    #[error("invoice id uses an unsupported format version {0}")]
    UnsupportedVersion(u8),
    /// Terms that cannot be sealed (no network, or a payer that is not an address).
    #[error("invalid invoice terms: {0}")]
    InvalidTerms(&'static str),
}

/// The encoding: plain, positional types only (postcard is not self-describing).
#[derive(Serialize, Deserialize)]
struct Wire {
    version: u8,
    nonce: u64,
    created_at: u64,
    ttl: u64,
    amount: u64,
    pay_to: [u8; 20],
    networks: Vec<u64>,
    purchase: WirePurchase,
}

/// What version 2 appends: the quote.
#[derive(Serialize, Deserialize)]
struct WireQuote {
    carrier: String,
    data_value: u64,
}

#[derive(Serialize, Deserialize)]
enum WirePurchase {
    Activation {
        region: String,
        data_mb: u32,
        carrier: Option<String>,
        eid: Option<String>,
        payer: Option<[u8; 20]>,
        allow_failover: bool,
    },
    TopUp {
        iccid: String,
        data_mb: u32,
        payer: Option<[u8; 20]>,
    },
    Switch {
        iccid: String,
        target: String,
    },
}

fn payer_bytes(payer: Option<&str>) -> Result<Option<[u8; 20]>, TokenError> {
    payer
        .map(|a| {
            crate::chain::parse_address(a)
                .map(|a| a.0.0)
                .map_err(|_| TokenError::InvalidTerms("payer is not a 0x-prefixed 20-byte address"))
        })
        .transpose()
}

impl WirePurchase {
    fn from_purchase(p: &Purchase) -> Result<Self, TokenError> {
        Ok(match p {
            Purchase::Activation {
                region,
                data_mb,
                carrier,
                eid,
                payer,
                allow_failover,
            } => Self::Activation {
                region: region.clone(),
                data_mb: *data_mb,
                carrier: carrier.clone(),
                eid: eid.clone(),
                payer: payer_bytes(payer.as_deref())?,
                allow_failover: *allow_failover,
            },
            Purchase::TopUp {
                iccid,
                data_mb,
                payer,
            } => Self::TopUp {
                iccid: iccid.clone(),
                data_mb: *data_mb,
                payer: payer_bytes(payer.as_deref())?,
            },
            Purchase::Switch { iccid, target } => Self::Switch {
                iccid: iccid.clone(),
                target: target.clone(),
            },
        })
    }

    fn into_purchase(self) -> Purchase {
        match self {
            Self::Activation {
                region,
                data_mb,
                carrier,
                eid,
                payer,
                allow_failover,
            } => Purchase::Activation {
                region,
                data_mb,
                carrier,
                eid,
                payer: payer.map(|a| Address::from(a).to_checksum(None)),
                allow_failover,
            },
            Self::TopUp {
                iccid,
                data_mb,
                payer,
            } => Purchase::TopUp {
                iccid,
                data_mb,
                payer: payer.map(|a| Address::from(a).to_checksum(None)),
            },
            Self::Switch { iccid, target } => Purchase::Switch { iccid, target },
        }
    }
}

/// A quote is an activation's alone, and never worth more than its invoice: [`seal`] refuses other terms, and
/// [`open`] refuses an id that carries them (only a key holder could have made one, but the rule holds both ways).
fn check_quote(terms: &Terms) -> Result<(), TokenError> {
    let Some(q) = &terms.quoted else {
        return Ok(());
    };
    if !matches!(terms.purchase, Purchase::Activation { .. }) {
        return Err(TokenError::InvalidTerms("only an activation seals a quote"));
    }
    if q.data_value > terms.amount {
        return Err(TokenError::InvalidTerms(
            "the data is worth more than the invoice",
        ));
    }
    Ok(())
}

/// Seal `terms` into an invoice id under `key`.
pub fn seal(terms: &Terms, key: &InvoiceKey) -> Result<InvoiceId, TokenError> {
    if terms.networks.is_empty() {
        return Err(TokenError::InvalidTerms("no network to pay on"));
    }
    check_quote(terms)?;
    let wire = Wire {
        version: if terms.quoted.is_some() {
            VERSION_QUOTED
        } else {
            VERSION
        },
        nonce: terms.nonce,
        created_at: terms.created_at,
        ttl: terms.expires_at.saturating_sub(terms.created_at),
        amount: terms.amount.micros(),
        pay_to: terms.pay_to.0.0,
        networks: terms.networks.iter().map(|n| n.chain_id().0).collect(),
        purchase: WirePurchase::from_purchase(&terms.purchase)?,
    };
    let mut payload = postcard::to_allocvec(&wire).map_err(|_| TokenError::Malformed)?;
    if let Some(q) = &terms.quoted {
        let quote = WireQuote {
            carrier: q.carrier.to_string(),
            data_value: q.data_value.micros(),
        };
        payload = postcard::to_extend(&quote, payload).map_err(|_| TokenError::Malformed)?;
    }
    let mac = key.mac(&payload);
    let id = InvoiceId::from_token(format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(&payload),
        URL_SAFE_NO_PAD.encode(mac)
    ));
    // An id nobody could send back (`InvoiceId::parse` refuses it) must not be issued.
    if id.as_str().len() > InvoiceId::MAX_LEN {
        return Err(TokenError::InvalidTerms(
            "the terms do not fit an invoice id",
        ));
    }
    Ok(id)
}

/// Open an invoice id: its terms, if and only if it was sealed under `key`.
pub fn open(id: &InvoiceId, key: &InvoiceKey) -> Result<Terms, TokenError> {
    open_any(id, std::slice::from_ref(key))
}

/// Open an invoice id sealed under any of `keys` (tried in order; each MAC compared in constant time): its
/// terms, or [`TokenError::BadMac`] when none of them sealed it.
pub fn open_any(id: &InvoiceId, keys: &[InvoiceKey]) -> Result<Terms, TokenError> {
    let (payload, mac) = id.token().split_once('.').ok_or(TokenError::Malformed)?;
    let payload = URL_SAFE_NO_PAD
        .decode(payload)
        .map_err(|_| TokenError::Malformed)?;
    let mac = URL_SAFE_NO_PAD
        .decode(mac)
        .map_err(|_| TokenError::Malformed)?;
    // Constant time: the comparison must not tell a forger how many bytes were right (a length other than
    // MAC_LEN is refused at once: the length is no secret). Which key matched is no secret either.
    let sealed = keys.iter().any(|key| {
        let expected = key.mac(&payload);
        bool::from(subtle::ConstantTimeEq::ct_eq(
            mac.as_slice(),
            expected.as_slice(),
        ))
    });
    if !sealed {
        return Err(TokenError::BadMac);
    }
    let (wire, rest): (Wire, &[u8]) =
        postcard::take_from_bytes(&payload).map_err(|_| TokenError::Malformed)?;
    let (quoted, rest) = match wire.version {
        VERSION => (None, rest),
        VERSION_QUOTED => {
            let (q, rest): (WireQuote, &[u8]) =
                postcard::take_from_bytes(rest).map_err(|_| TokenError::Malformed)?;
            let quote = SealedQuote {
                carrier: CarrierId::parse(&q.carrier).map_err(|_| TokenError::Malformed)?,
                data_value: UsdcAmount::from_micros(q.data_value),
            };
            (Some(quote), rest)
        }
        v => return Err(TokenError::UnsupportedVersion(v)),
    };
    if !rest.is_empty() || wire.networks.is_empty() {
        return Err(TokenError::Malformed);
    }
    let terms = Terms {
        purchase: wire.purchase.into_purchase(),
        amount: UsdcAmount::from_micros(wire.amount),
        networks: wire
            .networks
            .into_iter()
            .map(|c| Network::new(ChainId(c)))
            .collect(),
        pay_to: Address::from(wire.pay_to),
        created_at: wire.created_at,
        expires_at: wire.created_at.saturating_add(wire.ttl),
        nonce: wire.nonce,
        quoted,
    };
    check_quote(&terms).map_err(|_| TokenError::Malformed)?;
    Ok(terms)
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn key() -> InvoiceKey {
        InvoiceKey::derive(b"test secret")
    }

    fn activation() -> Terms {
        Terms {
            purchase: Purchase::Activation {
                region: "us-west".into(),
                data_mb: 100,
                carrier: None,
                eid: None,
                payer: None,
                allow_failover: false,
            },
            amount: UsdcAmount::from_micros(420_000),
            networks: vec![Network::parse("eip155:31337").unwrap()],
            pay_to: "0x3C44CdDdB6a900fa2b585dd299e03d12FA4293BC"
                .parse()
                .unwrap(),
            created_at: 1_796_206_021,
            expires_at: 1_796_206_921,
            nonce: 0x0123_4567_89ab_cdef,
            quoted: Some(SealedQuote {
                carrier: CarrierId::parse("tmobile").unwrap(),
                data_value: UsdcAmount::from_micros(300_000),
            }),
        }
    }

    /// The first byte of an id's terms: its encoding version.
    fn version(id: &InvoiceId) -> u8 {
        let (payload, _) = id.token().split_once('.').unwrap();
        URL_SAFE_NO_PAD.decode(payload).unwrap()[0]
    }

    #[test]
    fn an_activation_id_is_short_url_safe_and_opens_to_its_terms() {
        let id = seal(&activation(), &key()).unwrap();
        assert_eq!(version(&id), VERSION_QUOTED);
        assert!(id.as_str().len() < 140, "{} chars: {id}", id.as_str().len());
        assert!(InvoiceId::parse(id.as_str()).is_ok());
        assert_eq!(open(&id, &key()).unwrap(), activation());
    }

    /// The largest request a client can make (every field at its longest, the most chains, with chain ids
    /// as long as Sepolia's) seals an id that parses back; terms that do not fit one are refused, never
    /// issued (before, such an id was issued and answered 500 when it came back).
    #[test]
    fn the_largest_request_fits_an_id_and_larger_terms_are_refused() {
        let mut t = activation();
        t.purchase = Purchase::Activation {
            region: "a".repeat(32),
            data_mb: u32::MAX,
            carrier: Some("c".repeat(32)),
            eid: Some("89049032123451234512345678901235".into()),
            payer: Some("0xa0Ee7A142d267C1f36714E4a8F75612F20a79720".into()),
            allow_failover: true,
        };
        t.quoted = Some(SealedQuote {
            carrier: CarrierId::parse(&"c".repeat(32)).unwrap(),
            data_value: UsdcAmount::from_micros(u64::MAX),
        });
        t.amount = UsdcAmount::from_micros(u64::MAX);
        t.networks = (0..crate::activation::MAX_CHAINS as u64)
            .map(|i| Network::parse(&format!("eip155:{}", 11_155_111 + i)).unwrap())
            .collect();
        let id = seal(&t, &key()).unwrap();
        assert!(
            InvoiceId::parse(id.as_str()).is_ok(),
            "{}",
            id.as_str().len()
        );
        // Every built-in network at once (what an invoice offers when they are all enabled and the client
        // names none), and a client may name them all.
        let builtin = crate::x402::networks::Networks::builtin();
        assert!(builtin.iter().count() <= crate::activation::MAX_CHAINS);
        t.networks = builtin.iter().map(|n| n.network).collect();
        let id = seal(&t, &key()).unwrap();
        assert!(InvoiceId::parse(id.as_str()).is_ok());
        t.networks = (0..60u64)
            .map(|i| Network::parse(&format!("eip155:{}", u64::MAX - i)).unwrap())
            .collect();
        assert!(matches!(seal(&t, &key()), Err(TokenError::InvalidTerms(_))));
    }

    #[test]
    fn every_purchase_kind_and_field_round_trips() {
        let mut t = activation();
        t.purchase = Purchase::Activation {
            region: "eu-central".into(),
            data_mb: 4096,
            carrier: Some("telekom-de".into()),
            eid: Some("89049032123451234512345678901235".into()),
            payer: Some("0xa0Ee7A142d267C1f36714E4a8F75612F20a79720".into()),
            allow_failover: true,
        };
        t.networks.push(Network::parse("base").unwrap());
        let id = seal(&t, &key()).unwrap();
        assert_eq!(open(&id, &key()).unwrap(), t);
        for purchase in [
            Purchase::TopUp {
                iccid: "8901260000000000014".into(),
                data_mb: 1,
                payer: None,
            },
            Purchase::TopUp {
                iccid: "8901260000000000014".into(),
                data_mb: 1,
                payer: Some("0xa0Ee7A142d267C1f36714E4a8F75612F20a79720".into()),
            },
            Purchase::Switch {
                iccid: "8901260000000000014".into(),
                target: "carrier:verizon".into(),
            },
        ] {
            let t = Terms {
                purchase,
                quoted: None,
                ..activation()
            };
            assert_eq!(open(&seal(&t, &key()).unwrap(), &key()).unwrap(), t);
        }
    }

    #[test]
    fn a_payer_without_0x_is_refused_naming_it() {
        for purchase in [
            Purchase::TopUp {
                iccid: "8901260000000000014".into(),
                data_mb: 1,
                payer: Some("a0ee7a142d267c1f36714e4a8f75612f20a79720".into()),
            },
            Purchase::Activation {
                region: "eu-central".into(),
                data_mb: 1,
                carrier: None,
                eid: None,
                payer: Some("a0ee7a142d267c1f36714e4a8f75612f20a79720".into()),
                allow_failover: false,
            },
        ] {
            let t = Terms {
                purchase,
                quoted: None,
                ..activation()
            };
            match seal(&t, &key()) {
                Err(TokenError::InvalidTerms(m)) => {
                    assert!(m.contains("payer") && m.contains("0x"), "{m}")
                }
                other => panic!("{other:?}"),
            }
        }
    }

    #[test]
    fn forged_edited_or_foreign_ids_do_not_open() {
        let id = seal(&activation(), &key()).unwrap();
        assert_eq!(
            open(&id, &InvoiceKey::derive(b"another")),
            Err(TokenError::BadMac)
        );
        // A cheaper invoice: same MAC over edited terms.
        let mut cheap = activation();
        cheap.amount = UsdcAmount::from_micros(1);
        cheap.quoted.as_mut().unwrap().data_value = cheap.amount;
        let cheap = seal(&cheap, &key()).unwrap();
        let (payload, _) = cheap.token().split_once('.').unwrap();
        let (_, mac) = id.token().split_once('.').unwrap();
        let forged = InvoiceId::parse(&format!("inv_{payload}.{mac}")).unwrap();
        assert_eq!(open(&forged, &key()), Err(TokenError::BadMac));
        for bad in [
            "inv_abc",
            "inv_abc.def",
            "inv_.",
            "inv_00000000000000000000000000000000",
        ] {
            let id = InvoiceId::parse(bad).unwrap();
            assert!(open(&id, &key()).is_err(), "{bad}");
        }
    }

    /// Terms without a quote keep the first encoding, byte for byte: ids sealed by a build before quotes were
    /// sealed still open (with no quote), and top-ups and switches are sealed as they were.
    #[test]
    fn terms_without_a_quote_keep_the_first_encoding() {
        let t = Terms {
            quoted: None,
            ..activation()
        };
        let id = seal(&t, &key()).unwrap();
        assert_eq!(version(&id), VERSION);
        assert_eq!(open(&id, &key()).unwrap(), t);
        // An id sealed by the build before this one (the same terms, nonce and key).
        let earlier = InvoiceId::parse(
            "inv_Ae-br834rNGRAcXbv9gGhAeg0Rk8RM3dtqkA-itYXdKZ4D0S-kKTvAHp9AEAB3VzLXdlc3RkAAAAAA.KRdTviyksS-EIiRNsQzT6A",
        )
        .unwrap();
        assert_eq!(open(&earlier, &key()).unwrap(), t);
        // A quote is an activation's alone, and never worth more than the invoice.
        let mut switch = activation();
        switch.purchase = Purchase::Switch {
            iccid: "8901260000000000014".into(),
            target: "carrier:verizon".into(),
        };
        assert!(matches!(
            seal(&switch, &key()),
            Err(TokenError::InvalidTerms(_))
        ));
        let mut dear = activation();
        dear.quoted.as_mut().unwrap().data_value = UsdcAmount::from_micros(420_001);
        assert!(matches!(
            seal(&dear, &key()),
            Err(TokenError::InvalidTerms(_))
        ));
        // A version-2 payload without its quote, or with trailing bytes after it, does not open (sealed here
        // with the right MAC, so only the decoding can refuse it).
        let quoted = seal(&activation(), &key()).unwrap();
        let (payload, _) = quoted.token().split_once('.').unwrap();
        let payload = URL_SAFE_NO_PAD.decode(payload).unwrap();
        let (plain, _) = id.token().split_once('.').unwrap();
        let mut cut = URL_SAFE_NO_PAD.decode(plain).unwrap();
        cut[0] = VERSION_QUOTED;
        let mut long = payload.clone();
        long.push(0);
        for bytes in [cut, long] {
            let mac = URL_SAFE_NO_PAD.encode(key().mac(&bytes));
            let id =
                InvoiceId::parse(&format!("inv_{}.{mac}", URL_SAFE_NO_PAD.encode(&bytes))).unwrap();
            assert_eq!(open(&id, &key()), Err(TokenError::Malformed));
        }
        // Terms `seal` refuses do not open either: a switch's payload with a quote appended, under the right MAC.
        let switch = Terms {
            purchase: Purchase::Switch {
                iccid: "8901260000000000014".into(),
                target: "carrier:verizon".into(),
            },
            quoted: None,
            ..activation()
        };
        let (plain, _) = seal(&switch, &key())
            .unwrap()
            .token()
            .split_once('.')
            .map(|(p, m)| (p.to_owned(), m.to_owned()))
            .unwrap();
        let mut quoted_switch = URL_SAFE_NO_PAD.decode(plain).unwrap();
        quoted_switch[0] = VERSION_QUOTED;
        let quote = WireQuote {
            carrier: "tmobile".into(),
            data_value: 1,
        };
        let quoted_switch = postcard::to_extend(&quote, quoted_switch).unwrap();
        let mac = URL_SAFE_NO_PAD.encode(key().mac(&quoted_switch));
        let id = InvoiceId::parse(&format!(
            "inv_{}.{mac}",
            URL_SAFE_NO_PAD.encode(&quoted_switch)
        ))
        .unwrap();
        assert_eq!(open(&id, &key()), Err(TokenError::Malformed));
        let mut v3 = payload;
        v3[0] = 3;
        let mac = URL_SAFE_NO_PAD.encode(key().mac(&v3));
        let id = InvoiceId::parse(&format!("inv_{}.{mac}", URL_SAFE_NO_PAD.encode(&v3))).unwrap();
        assert_eq!(open(&id, &key()), Err(TokenError::UnsupportedVersion(3)));
    }

    #[test]
    fn identical_requests_get_distinct_ids() {
        let a = seal(&activation(), &key()).unwrap();
        let mut t = activation();
        t.nonce += 1;
        assert_ne!(a, seal(&t, &key()).unwrap());
    }

    #[test]
    fn unsealable_terms_are_refused() {
        let mut t = activation();
        t.networks.clear();
        assert!(matches!(seal(&t, &key()), Err(TokenError::InvalidTerms(_))));
        t = activation();
        t.purchase = Purchase::Activation {
            region: "us-west".into(),
            data_mb: 1,
            carrier: None,
            eid: None,
            payer: Some("not an address".into()),
            allow_failover: false,
        };
        assert!(matches!(seal(&t, &key()), Err(TokenError::InvalidTerms(_))));
    }

    #[test]
    fn the_key_never_shows() {
        let k = InvoiceKey::new([0xab; 32]);
        assert!(!format!("{k:?}").contains("ab"));
    }

    proptest! {
        #[test]
        fn any_terms_round_trip(
            amount in 1u64..u64::MAX / 2,
            created in 0u64..u64::MAX / 4,
            ttl in 0u64..10_000_000,
            nonce: u64,
            chain in 1u64..u64::MAX / 2,
            data_mb in 1u32..1_000_000,
            region in "[a-z]{2,8}-[a-z]{2,8}",
            quote in proptest::option::of(("[a-z][a-z0-9]{1,15}", 0u64..u64::MAX / 2)),
        ) {
            let quoted = quote.map(|(carrier, value)| SealedQuote {
                carrier: CarrierId::parse(&carrier).unwrap(),
                data_value: UsdcAmount::from_micros(value.min(amount)),
            });
            let t = Terms {
                purchase: Purchase::Activation {
                    region, data_mb, carrier: None, eid: None, payer: None, allow_failover: false,
                },
                amount: UsdcAmount::from_micros(amount),
                networks: vec![Network::new(ChainId(chain))],
                pay_to: Address::repeat_byte(7),
                created_at: created,
                expires_at: created + ttl,
                nonce,
                quoted,
            };
            let id = seal(&t, &key()).unwrap();
            prop_assert!(InvoiceId::parse(id.as_str()).is_ok());
            prop_assert_eq!(open(&id, &key()).unwrap(), t);
        }

        #[test]
        fn arbitrary_ids_never_panic(token in "[A-Za-z0-9_.-]{1,300}") {
            if let Ok(id) = InvoiceId::parse(&format!("inv_{token}")) {
                let _ = open(&id, &key());
            }
        }
    }
}
