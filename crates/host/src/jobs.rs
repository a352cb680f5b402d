//! The operator's jobs, run by the host itself: `POST /admin/refunds/run` (refunds owed, paid from the treasury
//! key) and `POST /admin/cleanup/run` (pending orders whose payment can no longer settle withdrawn, carrier
//! cancels left queued retried), sent to its own listener with the admin token every `--jobs-every` seconds,
//! as a cron job does for a Spin deployment. `esim402 up` with its dev stack runs them every minute unless told
//! otherwise; without the dev stack only when `--jobs-every` asks (several hosts on one store may all run
//! them: both runs claim what they take).
//!
//! The console shows a run only when it did something or failed, never the token.

use std::future::Future;
use std::time::Duration;

use serde_json::Value;

/// The jobs, in the order each tick runs them.
pub const JOBS: [&str; 2] = ["refunds", "cleanup"];

/// Longest a run may take: an order budget's worth of carrier calls, or a refund run's transactions.
const RUN_TIMEOUT: Duration = Duration::from_secs(120);

/// Run [`JOBS`] against `base` (`http://127.0.0.1:<port>`) with the bearer `token` every `every`, the first
/// tick one interval after the start, until `stop` completes.
pub async fn run_every(
    base: String,
    token: String,
    every: Duration,
    stop: impl Future<Output = ()>,
) {
    let client = match reqwest::Client::builder()
        .timeout(RUN_TIMEOUT)
        .no_proxy()
        .build()
    {
        Ok(c) => c,
        Err(e) => {
            eprintln!("jobs: not run: no HTTP client ({e})");
            return;
        }
    };
    tokio::pin!(stop);
    let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = ticks.tick() => {}
            () = &mut stop => return,
        }
        for job in JOBS {
            let url = format!("{base}/admin/{job}/run");
            let sent = client.post(&url).bearer_auth(&token).send().await;
            let (status, body) = match sent {
                Ok(r) => (r.status().as_u16(), r.text().await.unwrap_or_default()),
                Err(e) => {
                    eprintln!("jobs: POST /admin/{job}/run failed: {}", e.without_url());
                    continue;
                }
            };
            if let Some(line) = report(job, status, &body) {
                eprintln!("jobs: {line}");
            }
        }
    }
}

/// What the console shows of a run that answered `status` with `body`: nothing for a run that did nothing.
pub fn report(job: &str, status: u16, body: &str) -> Option<String> {
    if status != 200 {
        return Some(format!("POST /admin/{job}/run answered {status}: {body}"));
    }
    let v: Value = serde_json::from_str(body).unwrap_or(Value::Null);
    let count = |k: &str| match &v[k] {
        Value::Array(a) => u64::try_from(a.len()).unwrap_or(u64::MAX),
        other => other.as_u64().unwrap_or(0),
    };
    let did = match job {
        "refunds" => ["paid", "pending", "failed"].iter().any(|k| count(k) > 0),
        _ => [
            "withdrawn",
            "tried",
            "owed_back",
            "owed_left",
            "owed_operator",
        ]
        .iter()
        .any(|k| count(k) > 0),
    };
    did.then(|| format!("{job}: {body}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_runs_that_did_something_or_failed_are_shown() {
        let idle_cleanup = r#"{"withdrawn":0,"tried":0,"requeued":0,"queued":0,"parked":2}"#;
        assert_eq!(report("cleanup", 200, idle_cleanup), None);
        let idle_refunds = r#"{"paid":[],"pending":[],"failed":[],"remaining":0}"#;
        assert_eq!(report("refunds", 200, idle_refunds), None);
        let withdrew = r#"{"withdrawn":1,"tried":0,"requeued":0,"queued":0,"parked":0}"#;
        assert_eq!(
            report("cleanup", 200, withdrew).as_deref(),
            Some(format!("cleanup: {withdrew}").as_str())
        );
        // A run that only owed refunds of paid orders, or has some left, is shown too.
        for owed in [
            r#"{"withdrawn":0,"tried":0,"owed_back":1,"owed_left":0,"owed_operator":0}"#,
            r#"{"withdrawn":0,"tried":0,"owed_back":0,"owed_left":1,"owed_operator":0}"#,
            r#"{"withdrawn":0,"tried":0,"owed_back":0,"owed_left":0,"owed_operator":1}"#,
        ] {
            assert!(report("cleanup", 200, owed).is_some(), "{owed}");
        }
        let paid = r#"{"paid":[{"invoice":"inv_1"}],"pending":[],"failed":[],"remaining":0}"#;
        assert!(report("refunds", 200, paid).is_some());
        let refused = report(
            "cleanup",
            401,
            r#"{"error":{"message":"missing or wrong bearer token"}}"#,
        );
        assert!(refused.is_some_and(|l| l.contains("401")));
    }
}
