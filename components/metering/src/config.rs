//! The receipt-signer registry (each carrier's signing address) and the price book (each carrier's rate, by
//! which a switch's moved balance is revalued), from the carrier catalog (the `carrier_catalog` variable,
//! else the shipped one, which only a development deployment may use; outside development no carrier may
//! sign with a development key, built-in or derived from a catalog carrier id: kernel `deployment`), parsed
//! once per instance.

use std::collections::HashMap;
use std::rc::Rc;

use esim402_core::pricing::PriceBook;
use esim402_core::{Address, CarrierId};
use esim402_guest::config::receipt_catalog;
use esim402_guest::convert::internal;
use esim402_guest::{instance_cache, wit};

pub struct Config {
    signers: HashMap<CarrierId, Address>,
    /// The carriers' rates.
    pub price_book: PriceBook,
}

impl Config {
    /// The address that signs `carrier`'s receipts, if any.
    pub fn signer(&self, carrier: &CarrierId) -> Option<Address> {
        self.signers.get(carrier).copied()
    }
}

instance_cache!(CONFIG: Config);

pub async fn get() -> Result<Rc<Config>, wit::Error> {
    CONFIG
        .get_or_load(|| async {
            let catalog = receipt_catalog().await.map_err(internal)?;
            let signers = catalog
                .carriers()
                .iter()
                .filter_map(|c| Some((c.id.clone(), c.receipt_signer?)))
                .collect();
            Ok(Config {
                signers,
                price_book: catalog.price_book(),
            })
        })
        .await
}
