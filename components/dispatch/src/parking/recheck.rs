//! Withdrawn `exact` activations looked at again on chain (kernel `order::recheck`): the paid request of an
//! order answered "pending" is kept (`cleanup/resend/<invoice>`); a sweep that withdraws that order unpaid lists
//! its invoice (`cleanup/recheck`), and the operator's run hands the kept requests to the gateway, which sends
//! them again. A kept request whose parked entry leaves otherwise (delivered, or parked as paid) is dropped.

use esim402_core::order::recheck::{self, MAX_RESEND_BYTES};
use esim402_core::store::keys;
use esim402_guest::convert::{invalid, kv_err, store_err};
use esim402_guest::kv::{self, Change};
use esim402_guest::wit;

use crate::bindings::exports::esim402::dispatch::dispatch::KeptRequest;

/// `keep-resend`: keep `request` for `invoice` (a plain write: the same payment sent again keeps the same).
pub async fn keep(invoice: &str, request: &str) -> Result<(), wit::Error> {
    if request.len() > MAX_RESEND_BYTES {
        return Err(invalid(
            "request",
            format!("a kept request is at most {MAX_RESEND_BYTES} bytes"),
        ));
    }
    let store = kv::default_store().await.map_err(kv_err)?;
    store
        .set(keys::cleanup_resend(invoice), request.as_bytes())
        .await
        .map_err(store_err)
}

/// The order of `invoice` was withdrawn unpaid: list it for a recheck if its request was kept (a failure is
/// logged: the payer's own resend still owes an executed payment back).
pub async fn withdrawn(invoice: &str) {
    match kept(invoice).await {
        Ok(Some(_)) => {}
        Ok(None) => return,
        Err(e) => {
            eprintln!(
                "dispatch: the kept request of withdrawn invoice {invoice} cannot be read: {e:?}"
            );
            return;
        }
    }
    let r = kv::change_json::<Vec<String>, (), ()>(keys::CLEANUP_RECHECK, |list| {
        Ok(match recheck::push(list.unwrap_or_default(), invoice) {
            Some(list) => (Change::Put(list), ()),
            None => (Change::Keep, ()),
        })
    })
    .await;
    if let Err(e) = r {
        eprintln!(
            "dispatch: OPERATOR: invoice {invoice}'s order was withdrawn unpaid and cannot be listed for its chain \
             check ({e}): if its authorization was executed, its payment is owed back when sent again"
        );
    }
}

/// The parked entry of `invoice` left without a withdrawal (delivered, or parked as paid): its kept request is
/// not needed (best effort).
pub async fn drop_kept(invoice: &str) {
    if let Ok(store) = kv::default_store::<()>().await
        && let Err(e) = store.delete(keys::cleanup_resend(invoice)).await
    {
        eprintln!("dispatch: the kept request of invoice {invoice} stays: {e:?}");
    }
}

async fn kept(invoice: &str) -> Result<Option<String>, wit::Error> {
    let store = kv::default_store().await.map_err(kv_err)?;
    let bytes = store
        .get(keys::cleanup_resend(invoice))
        .await
        .map_err(store_err)?;
    Ok(bytes.and_then(|b| String::from_utf8(b).ok()))
}

/// The kept requests of up to `max` listed invoices (a listed invoice whose request is gone leaves the list).
pub async fn due(max: usize) -> Result<Vec<KeptRequest>, wit::Error> {
    let list = kv::get_json::<Vec<String>, wit::Error>(keys::CLEANUP_RECHECK)
        .await
        .map_err(kv_err)?
        .unwrap_or_default();
    let mut out = Vec::new();
    let mut gone = Vec::new();
    for invoice in list.into_iter().take(max) {
        match kept(&invoice).await? {
            Some(request) => out.push(KeptRequest { invoice, request }),
            None => gone.push(invoice),
        }
    }
    settle(&gone).await?;
    Ok(out)
}

/// `settle-recheck`: the invoices in `done` leave the list, and their kept requests are dropped. How many left.
pub async fn settle(done: &[String]) -> Result<u32, wit::Error> {
    if done.is_empty() {
        return Ok(0);
    }
    let (_, left) =
        kv::change_json::<Vec<String>, u32, wit::Error>(keys::CLEANUP_RECHECK, |list| {
            let list = list.unwrap_or_default();
            let before = list.len();
            Ok(match recheck::remove(list, done) {
                Some(list) => {
                    let left = u32::try_from(before - list.len()).unwrap_or(u32::MAX);
                    (Change::Put(list), left)
                }
                None => (Change::Keep, 0),
            })
        })
        .await
        .map_err(kv_err)?;
    for invoice in done {
        drop_kept(invoice).await;
    }
    Ok(left)
}
