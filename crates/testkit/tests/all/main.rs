//! Per-component tests: each built component alone in wasmtime, called through its exported WIT functions.
#![allow(clippy::unwrap_used, reason = "tests")]

mod dispatch;
mod invoices;
mod metering;
mod refunds;
mod verifier;

use esim402_testkit::types;

/// A plain activation request.
pub fn activation(region: &str, data_mb: u32) -> types::ActivationRequest {
    types::ActivationRequest {
        region: region.into(),
        data_mb,
        carrier: None,
        eid: None,
        payer: None,
        networks: Vec::new(),
        allow_failover: false,
    }
}

/// Await every future concurrently (on the accessor's task), keeping order.
pub async fn join_all<F: Future>(futs: impl IntoIterator<Item = F>) -> Vec<F::Output> {
    let mut futs: Vec<_> = futs.into_iter().map(Box::pin).collect();
    let mut out: Vec<Option<F::Output>> = futs.iter().map(|_| None).collect();
    std::future::poll_fn(|cx| {
        let mut pending = false;
        for (i, f) in futs.iter_mut().enumerate() {
            if out[i].is_none() {
                match f.as_mut().poll(cx) {
                    std::task::Poll::Ready(v) => out[i] = Some(v),
                    std::task::Poll::Pending => pending = true,
                }
            }
        }
        if pending {
            std::task::Poll::Pending
        } else {
            std::task::Poll::Ready(())
        }
    })
    .await;
    out.into_iter().flatten().collect()
}
