//! Concurrency on one task without an executor dependency: the components await several host calls (outbound
//! HTTP, key-value) at once so a batch pays one round of latency, not one per call; the component tests race
//! calls the same way.

/// Run two futures of different types concurrently (on this one task) and return both outputs.
pub async fn join2<A: Future, B: Future>(a: A, b: B) -> (A::Output, B::Output) {
    let (mut a, mut b) = (Box::pin(a), Box::pin(b));
    let (mut ra, mut rb) = (None, None);
    std::future::poll_fn(|cx| {
        if ra.is_none()
            && let std::task::Poll::Ready(v) = a.as_mut().poll(cx)
        {
            ra = Some(v);
        }
        if rb.is_none()
            && let std::task::Poll::Ready(v) = b.as_mut().poll(cx)
        {
            rb = Some(v);
        }
        match (ra.take(), rb.take()) {
            (Some(x), Some(y)) => std::task::Poll::Ready((x, y)),
            (x, y) => {
                (ra, rb) = (x, y);
                std::task::Poll::Pending
            }
        }
    })
    .await
}

/// Await every future concurrently, keeping order.
pub async fn join_all<F: Future>(futs: impl IntoIterator<Item = F>) -> Vec<F::Output> {
    let mut futs: Vec<_> = futs.into_iter().map(Box::pin).collect();
    let mut out: Vec<Option<F::Output>> = futs.iter().map(|_| None).collect();
    std::future::poll_fn(|cx| {
        let mut pending = false;
        for (fut, slot) in futs.iter_mut().zip(out.iter_mut()) {
            if slot.is_none() {
                match fut.as_mut().poll(cx) {
                    std::task::Poll::Ready(v) => *slot = Some(v),
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

/// [`join_all`], at most `width` futures at a time, keeping order: bounds the calls in flight (a batch of 1 000
/// receipts may name 1 000 SIMs) and the polling work (`join_all` polls every pending future on each wake).
pub async fn join_windows<F: Future>(
    futs: impl IntoIterator<Item = F>,
    width: usize,
) -> Vec<F::Output> {
    let mut out = Vec::new();
    let mut rest = futs.into_iter().peekable();
    while rest.peek().is_some() {
        let window: Vec<F> = rest.by_ref().take(width.max(1)).collect();
        out.extend(join_all(window).await);
    }
    out
}

#[cfg(test)]
mod tests {
    use std::pin::pin;
    use std::task::{Context, Poll, Waker};

    use super::*;

    /// Ready after being polled `n` times.
    async fn after(n: usize, v: u32) -> u32 {
        let mut left = n;
        std::future::poll_fn(|cx| {
            if left == 0 {
                Poll::Ready(v)
            } else {
                left -= 1;
                cx.waker().wake_by_ref();
                Poll::Pending
            }
        })
        .await
    }

    fn run<T>(f: impl Future<Output = T>) -> (T, usize) {
        let mut f = pin!(f);
        let mut cx = Context::from_waker(Waker::noop());
        for polls in 1.. {
            if let Poll::Ready(v) = f.as_mut().poll(&mut cx) {
                return (v, polls);
            }
        }
        unreachable!()
    }

    #[test]
    fn join_all_keeps_order_and_polls_all_at_once() {
        let (out, polls) = run(join_all(vec![after(3, 1), after(0, 2), after(1, 3)]));
        assert_eq!(out, vec![1, 2, 3]);
        // Concurrent: as many polls as the slowest needs, not the sum.
        assert_eq!(polls, 4);
        assert!(
            run(join_all(Vec::<std::future::Ready<u8>>::new()))
                .0
                .is_empty()
        );
    }

    #[test]
    fn join2_returns_both_once_both_are_ready() {
        let (out, polls) = run(join2(after(2, 7), async { "x" }));
        assert_eq!((out, polls), ((7, "x"), 3));
    }

    #[test]
    fn windows_keep_order_and_bound_what_runs_at_once() {
        let live = std::cell::Cell::new(0usize);
        let most = std::cell::Cell::new(0usize);
        let futs = (0..10u32).map(|i| {
            let (live, most) = (&live, &most);
            async move {
                live.set(live.get() + 1);
                most.set(most.get().max(live.get()));
                let v = after(usize::try_from(10 - i).unwrap(), i).await;
                live.set(live.get() - 1);
                v
            }
        });
        let (out, _) = run(join_windows(futs, 3));
        assert_eq!(out, (0..10).collect::<Vec<_>>());
        assert_eq!(most.get(), 3);
        let (none, _) = run(join_windows(Vec::<std::future::Ready<u8>>::new(), 3));
        assert!(none.is_empty());
    }
}
