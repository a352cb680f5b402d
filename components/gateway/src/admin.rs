//! The operator's routes, behind the `admin_token` bearer: the runs a cron job makes (refunds owed paid from the
//! treasury key; pending orders withdrawn and carrier work retried), and [`check`], which the ledger export
//! uses too.

use esim402_core::{ApiError, ErrorKind};
use spin_sdk::http::Request;

use crate::{Reply, dispatch, from_wit, json, now, verifier};

/// The shortest `admin_token` accepted: as every other secret here (carrier credentials, `access_token_secret`).
const MIN_ADMIN_TOKEN_CHARS: usize = esim402_core::auth::callback::MIN_SECRET_LEN;

/// The configured admin token: `Ok(None)` when unset (the admin endpoints are disabled); an error naming the
/// variable, never its value, when its provider fails or it is too short to be a secret.
pub async fn token() -> Result<Option<String>, String> {
    match esim402_guest::config::secret_var("admin_token").await {
        Ok(Some(t)) if t.chars().count() < MIN_ADMIN_TOKEN_CHARS => Err(format!(
            "variable admin_token is invalid: use at least {MIN_ADMIN_TOKEN_CHARS} characters"
        )),
        Ok(t) => Ok(t),
        Err(e) => Err(e.to_string()),
    }
}

/// The admin token, checked in constant time against `Authorization: Bearer …`; with `admin_token` unset the
/// admin endpoints are disabled (403); one that cannot be read, or is too short, is a fault naming the variable
/// (503; readiness says so too), never taken for "unset".
pub async fn check(req: &Request) -> Result<(), ApiError> {
    let token = token()
        .await
        .map_err(|e| ApiError::new(ErrorKind::Unavailable, e))?
        .ok_or_else(|| {
            ApiError::new(
                ErrorKind::Forbidden,
                "admin endpoints are disabled: set the admin_token variable",
            )
        })?;
    let presented = crate::bearer(req);
    let ok =
        presented.is_some_and(|p| esim402_core::auth::secret_eq(p.as_bytes(), token.as_bytes()));
    if ok {
        Ok(())
    } else {
        Err(ApiError::new(
            ErrorKind::Unauthorized,
            "missing or wrong bearer token",
        ))
    }
}

/// `POST /admin/refunds/run?limit=N` (for cron): pay owed refunds from the treasury key.
pub async fn run_refunds(req: &Request) -> Result<Reply, ApiError> {
    check(req).await?;
    let limit = run_limit(req)?;
    let run = verifier::run_refunds(now(), limit)
        .await
        .map_err(from_wit)?;
    // Paid refunds leave the queue only once their events are logged (or parked); a run that stops before
    // sees them again next time, as repeats the ledger keeps once.
    let logged = crate::pay::log_events(run.events, false).await
        & crate::pay::log_events(run.repeats, true).await;
    if logged
        && !run.settled.is_empty()
        && let Err(e) = verifier::ack_refunds(run.settled).await
    {
        eprintln!("gateway: acknowledging paid refunds failed (the next run repeats them): {e:?}");
    }
    Ok(json(200, run.summary))
}

/// `POST /admin/cleanup/run?limit=N` (for cron): withdraw pending orders whose payment can no longer settle, or
/// whose money moved (a tx-hash payment's) but which stayed pending `paid_order_pending_secs`, and retry the
/// carrier work left queued (cancels, lost DownloadOrders), up to `limit` of each; otherwise only a later
/// order's sweep does this, and nothing withdraws a paid order. The payment of each paid order that ended
/// undelivered is owed back ([`owe_withdrawn`]), and the refunds a terminate left unrecorded are recorded
/// (`crate::owing::record_unrefunded`). 200 with what was done and what is left.
pub async fn run_cleanup(req: &Request) -> Result<Reply, ApiError> {
    check(req).await?;
    let limit = run_limit(req)?;
    let run = dispatch::run_cleanup(now(), limit)
        .await
        .map_err(from_wit)?;
    let owed = owe_withdrawn(run.owed).await;
    let rechecked = recheck(run.recheck).await;
    let (unrefunded_recorded, unrefunded_left) =
        crate::owing::record_unrefunded(run.unrefunded).await;
    let body = serde_json::json!({
        "withdrawn": run.withdrawn,
        "tried": run.tried,
        "requeued": run.requeued,
        "queued": run.queued,
        "parked": run.parked.saturating_sub(owed.removed),
        "owed_back": owed.recorded,
        "owed_left": owed.left,
        "owed_operator": owed.operator,
        "rechecked": rechecked.done,
        "rechecked_owed": rechecked.owed,
        "recheck_left": rechecked.left,
        "unrefunded_recorded": unrefunded_recorded,
        "unrefunded_left": unrefunded_left,
    });
    Ok(json(200, body.to_string()))
}

/// What [`recheck`] did.
#[derive(Debug, Default)]
struct Rechecked {
    /// Requests sent again that got a final answer (they leave the list).
    done: usize,
    /// Of those, payments found charged (an authorization executed by someone else): owed back.
    owed: usize,
    /// Left for a later run (a fault, a settlement still on its way, or the payer's own resend in progress).
    left: usize,
}

/// Send again the kept requests of `exact` activations withdrawn unpaid (kernel `order::recheck`), as their
/// payers would: an authorization executed meanwhile is settled by that transaction and its payment owed back;
/// one never executed ends as "nothing charged". Each is settled as soon as it is answered (dispatch
/// `settle-recheck`), so a run cut short keeps what it did.
async fn recheck(items: Vec<dispatch::KeptRequest>) -> Rechecked {
    use esim402_core::order::recheck::is_final;
    let mut out = Rechecked::default();
    for item in items {
        let answer = crate::purchase::activate_again(&item.request).await;
        let (status, body) = match &answer {
            Ok(stored) => (stored.status, stored.body.clone()),
            Err(e) => (e.status(), serde_json::json!({ "error": e }).to_string()),
        };
        let done = is_final(status, &body);
        if done {
            out.done += 1;
            let charged = serde_json::from_str::<serde_json::Value>(&body)
                .is_ok_and(|b| b["charged"] == true);
            if charged {
                out.owed += 1;
                eprintln!(
                    "gateway: the withdrawn order of invoice {} was paid by its authorization's execution: its \
                     payment is owed back",
                    item.invoice
                );
            }
        } else {
            out.left += 1;
        }
        if let Err(e) = dispatch::settle_recheck(item.invoice.clone(), done).await {
            eprintln!(
                "gateway: settling the recheck of invoice {} failed (a later run sends it again): {e:?}",
                item.invoice
            );
        }
    }
    out
}

/// The reason the refund of a paid order that a cleanup run found undelivered gives.
const UNDELIVERED: &str = "its order stayed pending and ended without delivering a profile";

/// What [`owe_withdrawn`] did with the invoices a run named owed.
#[derive(Debug, Default)]
struct OwedRun {
    /// Refunds recorded (now, or found recorded).
    recorded: usize,
    /// Not recorded now (a store or verifier fault): named again by a later run.
    left: usize,
    /// Refunds no retry records (logged `OPERATOR: REFUND NOT RECORDED`): named again a day later.
    operator: usize,
    /// Parked entries that left the list.
    removed: u32,
}

/// Owe back the payments of the paid orders a cleanup run found undelivered (`invoices`): each through the
/// verifier's `owe-refund` (once per invoice: a repeat records nothing new) with its `refund_owed` logged and
/// the invoice marked refunded, then dispatch told (`settle-owed`): recorded ones leave the list, an operator's
/// case is looked at again a day later. One not recorded now stays named, and the next run after its hold owes
/// it (a run that stops midway loses nothing).
async fn owe_withdrawn(invoices: Vec<String>) -> OwedRun {
    let mut run = OwedRun::default();
    let (mut recorded, mut operator) = (Vec::new(), Vec::new());
    for invoice in invoices {
        let owing = crate::owing::Owing {
            invoice: invoice.clone(),
            tx: None,
            amount: None,
            reason: UNDELIVERED.to_owned(),
        };
        let done = crate::owing::owe(vec![owing], "the next cleanup run retries").await;
        // Owed moments ago by another call (or by this run before a failed append): settled only once a repeat
        // has logged its event (the verifier's relog delay), so a `refund_owed` lost with that call is not.
        if done.retry > 0 || done.quiet > 0 {
            run.left += 1;
        } else if done.recorded.is_empty() {
            operator.push(invoice);
        } else {
            match crate::invoices::mark_refunded(invoice.clone(), UNDELIVERED.to_owned()).await {
                Ok(_) => recorded.push(invoice),
                Err(e) => {
                    eprintln!(
                        "gateway: marking {invoice} refunded failed (the next cleanup run retries): {e:?}"
                    );
                    run.left += 1;
                }
            }
        }
    }
    if recorded.is_empty() && operator.is_empty() {
        return run;
    }
    let (n_recorded, n_operator) = (recorded.len(), operator.len());
    match dispatch::settle_owed(recorded, operator, now()).await {
        Ok(removed) => {
            run.recorded += n_recorded;
            run.operator += n_operator;
            run.removed = removed;
        }
        // Recorded all the same (owing again is a repeat): named again after the hold.
        Err(e) => {
            eprintln!(
                "gateway: paid orders whose refunds are recorded stay parked (a later run names them again): {e:?}"
            );
            run.recorded += n_recorded;
            run.left += n_operator;
        }
    }
    run
}

/// An admin run's `?limit=N` (1-500, default 50).
fn run_limit(req: &Request) -> Result<u32, ApiError> {
    let mut limit = 50u32;
    esim402_core::query::params(req.uri().query(), "limit", |k, v| {
        if k != "limit" {
            return Ok(false);
        }
        limit = v
            .parse()
            .ok()
            .filter(|n| (1..=500).contains(n))
            .ok_or_else(|| ApiError::invalid("limit", "limit must be 1-500"))?;
        Ok(true)
    })?;
    Ok(limit)
}
