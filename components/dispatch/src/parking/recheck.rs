//! Withdrawn `exact` activations looked at again on chain (kernel `order::recheck`): the paid request of an
//! order answered "pending" is kept (`cleanup/resend/<invoice>`); a sweep that withdraws that order unpaid lists
//! its invoice (`cleanup/recheck`), and the operator's run hands the kept requests to the gateway, which sends
//! them again and settles each. A kept request whose order was delivered, or parked as paid, is dropped; one
//! whose order moved on to another profile stays for that profile's entry.

use esim402_core::order::recheck::{MAX_RECHECK, MAX_RESEND_BYTES};
use esim402_core::store::keys;
use esim402_core::store::retry::{MAX_TRIES, Tried};
use esim402_guest::convert::{invalid, kv_err, store_err};
use esim402_guest::kv;
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

/// The order of `invoice` was withdrawn unpaid (or found failed): list it for a recheck if its request was
/// kept. A failure, or a full list, is logged for an operator: the payer's own resend still owes an executed
/// payment back.
pub async fn withdrawn(invoice: &str) {
    match kept(invoice).await {
        Ok(Some(_)) => {}
        Ok(None) => return,
        Err(e) => {
            eprintln!(
                "dispatch: OPERATOR: the kept request of withdrawn invoice {invoice} cannot be read ({e:?}): if its \
                 authorization was executed, its payment is owed back only when sent again"
            );
            return;
        }
    }
    let why = match crate::retry_list::push(keys::CLEANUP_RECHECK, invoice, MAX_RECHECK).await {
        Ok(true) => return,
        Ok(false) => format!("the recheck list is full ({MAX_RECHECK} entries)"),
        Err(e) => format!("{e:?}"),
    };
    eprintln!(
        "dispatch: OPERATOR: invoice {invoice}'s order was withdrawn unpaid and is not listed for its chain check \
         ({why}): if its authorization was executed, its payment is owed back only when sent again"
    );
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

/// The kept requests of up to `max` listed invoices due at `now`, taken (kernel `store::retry::take`: each counts a
/// try and waits before it is due again, settled or not). A listed invoice whose request is gone leaves the list;
/// one tried too often is left to an operator; a read that fails is logged and left for the next run.
pub async fn due(now: u64, max: usize) -> Vec<KeptRequest> {
    let taken = match crate::retry_list::take(keys::CLEANUP_RECHECK, now, max).await {
        Ok(taken) => taken,
        Err(e) => {
            eprintln!(
                "dispatch: the recheck list cannot be read (the next run tries again): {e:?}"
            );
            return Vec::new();
        }
    };
    for invoice in &taken.given_up {
        gave_up(invoice);
    }
    let mut out = Vec::new();
    for invoice in taken.due {
        match kept(&invoice).await {
            Ok(Some(request)) => out.push(KeptRequest { invoice, request }),
            Ok(None) => {
                if let Err(e) = settle(&invoice, true).await {
                    eprintln!(
                        "dispatch: invoice {invoice} stays listed without a kept request: {e:?}"
                    );
                }
            }
            Err(e) => eprintln!(
                "dispatch: the kept request of invoice {invoice} cannot be read (a later run tries again): {e:?}"
            ),
        }
    }
    out
}

fn gave_up(invoice: &str) {
    eprintln!(
        "dispatch: OPERATOR: the paid request of withdrawn invoice {invoice} was taken {} times without a final \
         answer: check on chain whether its authorization was executed, and owe it back if so (its request stays \
         kept)",
        MAX_TRIES
    );
}

/// `settle-recheck`: `invoice`'s request was sent again; with a final answer it leaves the list (and its kept
/// request is dropped), without it waits as taken, or is left to an operator after its last try.
pub async fn settle(invoice: &str, r#final: bool) -> Result<(), wit::Error> {
    let tried = if r#final { Tried::Done } else { Tried::Again };
    let gave = crate::retry_list::settle(keys::CLEANUP_RECHECK, invoice, tried).await?;
    if gave {
        gave_up(invoice);
    }
    if r#final {
        drop_kept(invoice).await;
    }
    Ok(())
}
