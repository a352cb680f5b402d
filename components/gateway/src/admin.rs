//! The operator's routes, behind the `admin_token` bearer: the runs a cron job makes (refunds owed paid from the
//! treasury key; pending orders withdrawn and carrier work retried), and [`check`], which the ledger export
//! uses too.

use esim402_core::{ApiError, ErrorKind};
use spin_sdk::http::Request;

use crate::{Reply, dispatch, from_wit, json, now, verifier};

/// The admin token, checked in constant time against `Authorization: Bearer …`; with `admin_token` unset the
/// admin endpoints are disabled (403).
pub async fn check(req: &Request) -> Result<(), ApiError> {
    let token = esim402_guest::config::optional_var("admin_token")
        .await
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

/// `POST /admin/cleanup/run?limit=N` (for cron): withdraw pending orders whose payment can no longer settle and
/// retry the carrier work left queued (cancels, lost DownloadOrders), up to `limit` of each; otherwise only a
/// later order's sweep does this. 200 with what was done and what is left.
pub async fn run_cleanup(req: &Request) -> Result<Reply, ApiError> {
    check(req).await?;
    let limit = run_limit(req)?;
    let run = dispatch::run_cleanup(now(), limit)
        .await
        .map_err(from_wit)?;
    let body = serde_json::json!({
        "withdrawn": run.withdrawn,
        "tried": run.tried,
        "requeued": run.requeued,
        "queued": run.queued,
        "parked": run.parked,
    });
    Ok(json(200, body.to_string()))
}

/// An admin run's `?limit=N` (1-500, default 50).
fn run_limit(req: &Request) -> Result<u32, ApiError> {
    let mut limit = 50u32;
    crate::query::params(req.uri().query(), "limit", |k, v| {
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
