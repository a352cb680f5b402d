//! An order's journal (`order/<invoice id>`, kernel `order::claim` and `Order::journal`): claimed by one driver
//! at a time, with a lease, and updated only while that driver holds it. Used by the order itself
//! ([`crate::ordering`]) and by the withdrawal of a parked order ([`crate::parking`]).

use std::cell::Cell;

use esim402_core::order::{self, Claim, Order};
use esim402_core::store::keys;
use esim402_guest::convert::{internal, kv_err};
use esim402_guest::kv::{self, Change, Stored};
use esim402_guest::{util, wit};

/// The driver of one order: its journal as claimed.
pub struct Driver {
    pub order: Order,
    /// The journal's cell version as this driver last wrote it: its next journal update starts there instead
    /// of reading the journal (kernel `cell::Update::after`; a stale one costs a read, nothing more).
    version: Cell<Option<Stored>>,
}

/// Claim the order journal for `invoice_id` (kernel `order::claim`); a refusal writes nothing.
pub async fn claim(
    invoice_id: &str,
    now: u64,
    lease: u64,
) -> Result<Result<Driver, Claim>, wit::Error> {
    let token = util::holder_token().map_err(internal)?;
    let (_, claimed, version) = kv::change_json_from::<Order, Claim, wit::Error>(
        &keys::order(invoice_id),
        None,
        |current| {
            Ok(
                match order::claim(current.as_ref(), invoice_id, &token, now, lease) {
                    Claim::Drive(next) => (Change::Put(next.clone()), Claim::Drive(next)),
                    other => (Change::Keep, other),
                },
            )
        },
    )
    .await
    .map_err(kv_err)?;
    Ok(match claimed {
        Claim::Drive(order) => Ok(Driver {
            order,
            version: Cell::new(Some(version)),
        }),
        other => Err(other),
    })
}

/// Update the journal if this driver still holds it.
pub async fn journal(driver: &Driver, f: impl Fn(&mut Order)) -> Result<Order, wit::Error> {
    let token = driver.order.token.clone();
    let (_, order, version) = kv::change_json_from::<Order, Order, wit::Error>(
        &keys::order(&driver.order.invoice_id),
        driver.version.take(),
        |current| {
            Order::journal(current, &token, &f)
                .map(|next| (Change::Put(next.clone()), next))
                .map_err(|e| wit::Error::Conflict(e.to_string()))
        },
    )
    .await
    .map_err(kv_err)?;
    driver.version.set(Some(version));
    Ok(order)
}
