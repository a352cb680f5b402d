//! **Test-only** crash points in the key-value layer, for the crash-safety tests (`tests/all/crash.rs`).
//!
//! `ESIM402_FAILPOINT=<key prefix>[#<n>]`: when the `n`-th (default: first) published write of a key starting
//! with the prefix has completed, the host prints `failpoint hit: <prefix>[#<n>]` to stderr and that request
//! never continues (the store call never returns; every later matching write blocks too). The test then sends
//! the process a real SIGKILL, so what is left in the store is exactly what a crash at that point leaves —
//! after a durability barrier, which the failpoint passes before it prints (a store that commits at barriers,
//! `sqlite::CommitAt::Barrier`, would otherwise still hold the write in its open transaction, and the crash
//! would be one at an earlier point). Nothing aborts in-process: the kill comes from outside, as a real crash
//! would.
//!
//! A *published write* is a `set` or a successful `compare_and_swap` of a key itself, not of a versioned
//! cell's bookkeeping (`<key>@v<n>` claim counters and `<key>@v<n>.<token>` proposals, `esim402_core::store::
//! cell`): the prefix `order/` fires when an order journal's new version becomes visible. Counters
//! (`increment`) and deletes never fire.
//!
//! `ESIM402_FAILPOINT_SYNC=<key prefix>`: once a published write of a key starting with the prefix has
//! completed, every later durability barrier ([`super::Durability`]) fails, as a store whose disk sync failed
//! does (`tests/all/crash.rs`: the answer is withheld): the store still commits what it holds, only the sync
//! fails.
//!
//! `ESIM402_FAILPOINT_ERROR=<key prefix>[#<n>]`: the `n`-th (default: first) update of a versioned cell whose
//! key starts with the prefix fails at its first write (its proposal), with a store error, once: nothing of
//! it lands, and the caller sees the failure a real store gives (`tests/all/metering.rs`).
//!
//! Unset (always, outside tests), [`wrap`] returns the backend unchanged: the failpoints cost nothing and
//! cannot fire. Never set them in a deployment.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use async_trait::async_trait;

use super::wrapped::{Hook, Wrapped};
use super::{Backend, KvResult, SharedBackend};

/// The environment variable that arms the failpoint.
pub const ENV: &str = "ESIM402_FAILPOINT";

/// The environment variable that arms the failing disk sync.
pub const SYNC_ENV: &str = "ESIM402_FAILPOINT_SYNC";

/// The environment variable that arms the failing cell update.
pub const ERROR_ENV: &str = "ESIM402_FAILPOINT_ERROR";

/// A parsed `ESIM402_FAILPOINT` value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Spec {
    /// Keys this failpoint watches.
    pub prefix: String,
    /// Which matching write fires it (1-based).
    pub nth: u64,
}

impl Spec {
    /// Parse `<prefix>[#<n>]`; `None` for an empty prefix or a malformed count.
    pub fn parse(value: &str) -> Option<Self> {
        let (prefix, nth) = match value.rsplit_once('#') {
            Some((p, n)) => (p, n.parse().ok().filter(|n| *n >= 1)?),
            None => (value, 1),
        };
        (!prefix.is_empty()).then(|| Self {
            prefix: prefix.to_owned(),
            nth,
        })
    }

    fn label(&self) -> String {
        if self.nth == 1 {
            self.prefix.clone()
        } else {
            format!("{}#{}", self.prefix, self.nth)
        }
    }
}

/// The key a versioned cell's proposal (`<key>@v<n>.<token>`) is for, if `key` is one.
fn proposal_for(key: &str) -> Option<&str> {
    let (base, tail) = key.rsplit_once("@v")?;
    let (version, token) = tail.split_once('.')?;
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    (digits(version) && digits(token)).then_some(base)
}

/// Whether `key` is a versioned cell's claim counter (`…@v<n>`) or proposal (`…@v<n>.<token>`).
fn is_cell_bookkeeping(key: &str) -> bool {
    let Some((_, tail)) = key.rsplit_once("@v") else {
        return false;
    };
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    match tail.split_once('.') {
        Some((version, token)) => digits(version) && digits(token),
        None => digits(tail),
    }
}

/// The [`Spec`] the variable `name` sets, if set (`what` names it in the warning that it is armed).
fn armed(name: &str, what: &str) -> anyhow::Result<Option<Spec>> {
    let Some(value) = std::env::var_os(name) else {
        return Ok(None);
    };
    let value = value.to_string_lossy();
    let spec = Spec::parse(&value)
        .ok_or_else(|| anyhow::anyhow!("{name}={value:?}: expected <key prefix>[#<n>]"))?;
    tracing::warn!(failpoint = %spec.label(), "test-only {what} armed");
    Ok(Some(spec))
}

/// `backend` behind the failpoints `ESIM402_FAILPOINT`, `ESIM402_FAILPOINT_SYNC` and `ESIM402_FAILPOINT_ERROR`
/// name, or unchanged when all are unset. A set but malformed value fails start-up (a crash test must not
/// silently run without its crash).
pub fn wrap(backend: SharedBackend) -> anyhow::Result<SharedBackend> {
    let spec = armed(ENV, "key-value failpoint")?;
    let sync_after = match std::env::var_os(SYNC_ENV) {
        None => None,
        Some(value) if value.is_empty() => {
            anyhow::bail!("{SYNC_ENV} is empty: expected a key prefix")
        }
        Some(value) => {
            let prefix = value.to_string_lossy().into_owned();
            tracing::warn!(failpoint = %prefix, "test-only failing disk sync armed");
            Some(prefix)
        }
    };
    let error = armed(ERROR_ENV, "failing cell update")?;
    if spec.is_none() && sync_after.is_none() && error.is_none() {
        return Ok(backend);
    }
    Ok(Arc::new(Wrapped::new(
        backend,
        Failpoint::new(spec, sync_after, error),
    )))
}

/// What the failpoint adds to a store ([`Wrapped`]): it stalls the request whose write reaches the failpoint,
/// or fails barriers after one.
struct Failpoint {
    spec: Option<Spec>,
    seen: AtomicU64,
    sync_after: Option<String>,
    sync_failed: AtomicBool,
    error: Option<Spec>,
    updates: AtomicU64,
}

impl Failpoint {
    fn new(spec: Option<Spec>, sync_after: Option<String>, error: Option<Spec>) -> Self {
        Self {
            spec,
            seen: AtomicU64::new(0),
            sync_after,
            sync_failed: AtomicBool::new(false),
            error,
            updates: AtomicU64::new(0),
        }
    }
}

#[async_trait]
impl Hook for Failpoint {
    /// Before a proposal of a cell update under the error failpoint's prefix: fail the `n`-th, once.
    fn before(&self, op: super::wrapped::Op, key: &str) -> KvResult<()> {
        let Some(spec) = &self.error else {
            return Ok(());
        };
        if op != super::wrapped::Op::Set
            || !proposal_for(key).is_some_and(|k| k.starts_with(&spec.prefix))
        {
            return Ok(());
        }
        if self.updates.fetch_add(1, Ordering::SeqCst) + 1 == spec.nth {
            eprintln!("failpoint error: {}", spec.label());
            return Err(super::KvError(format!(
                "failpoint: the update of {} failed",
                proposal_for(key).unwrap_or(key)
            )));
        }
        Ok(())
    }

    /// After a completed published write of `key`: break the disk sync if it is the sync failpoint's; stall
    /// forever if it is the failpoint's.
    async fn after_write(&self, inner: &dyn Backend, key: &str) {
        if is_cell_bookkeeping(key) {
            return;
        }
        if self
            .sync_after
            .as_ref()
            .is_some_and(|p| key.starts_with(p.as_str()))
        {
            self.sync_failed.store(true, Ordering::SeqCst);
        }
        let Some(spec) = &self.spec else { return };
        if !key.starts_with(&spec.prefix) {
            return;
        }
        let n = self.seen.fetch_add(1, Ordering::SeqCst) + 1;
        if n < spec.nth {
            return;
        }
        // The write is committed and on disk before the crash comes: a store that commits at barriers
        // (`sqlite::CommitAt::Barrier`) would otherwise still hold it in its open transaction.
        let _ = inner.barrier().await;
        eprintln!("failpoint hit: {}", spec.label());
        std::future::pending::<()>().await;
    }

    async fn barrier(&self, inner: &dyn Backend) -> KvResult<()> {
        if self.sync_failed.load(Ordering::SeqCst) {
            // A store that commits at barriers commits before it syncs; only the sync fails.
            let _ = inner.barrier().await;
            return Err(super::KvError("failpoint: the disk sync failed".into()));
        }
        inner.barrier().await
    }
}

#[cfg(test)]
mod tests {
    use std::task::{Context, Poll, Waker};

    use super::*;
    use crate::kv::MemoryStore;

    /// A memory store behind the failpoints given.
    fn failpoint(
        spec: Option<Spec>,
        sync_after: Option<String>,
        error: Option<Spec>,
    ) -> Wrapped<Failpoint> {
        Wrapped::new(
            Arc::new(MemoryStore::default()),
            Failpoint::new(spec, sync_after, error),
        )
    }

    #[test]
    fn specs_parse_with_an_optional_count() {
        let spec = |p: &str, nth| {
            Some(Spec {
                prefix: p.into(),
                nth,
            })
        };
        assert_eq!(Spec::parse("order/"), spec("order/", 1));
        assert_eq!(Spec::parse("x402/nonce/#3"), spec("x402/nonce/", 3));
        assert_eq!(Spec::parse("a#b#2"), spec("a#b", 2));
        assert_eq!(Spec::parse(""), None);
        assert_eq!(Spec::parse("#2"), None);
        assert_eq!(Spec::parse("sim/#0"), None);
        assert_eq!(Spec::parse("sim/#x"), None);
    }

    #[test]
    fn cell_bookkeeping_is_not_a_published_write() {
        assert!(is_cell_bookkeeping("order/inv_1@v2"));
        assert!(is_cell_bookkeeping("order/inv_1@v2.123456"));
        assert!(!is_cell_bookkeeping("order/inv_1"));
        assert!(!is_cell_bookkeeping("user@vendor/x"));
        assert!(!is_cell_bookkeeping("a@v"));
    }

    #[tokio::test]
    async fn the_nth_published_write_completes_then_stalls_and_the_rest_pass() {
        let fp = failpoint(Spec::parse("sim/#2"), None, None);
        fp.set("sim/1@v1.77", b"proposal").await.unwrap();
        fp.set("other/1", b"x").await.unwrap();
        fp.set("sim/1", b"first").await.unwrap();
        assert!(
            !fp.compare_and_swap("sim/2", Some(b"no"), b"y")
                .await
                .unwrap()
        );
        fp.increment("sim/1@v2", 5).await.unwrap();
        // The memory store never waits, so one poll runs the write to its end: the failpoint's stall.
        let mut second = std::pin::pin!(fp.set("sim/2", b"second"));
        let mut cx = Context::from_waker(Waker::noop());
        assert!(matches!(second.as_mut().poll(&mut cx), Poll::Pending));
        assert_eq!(
            fp.get("sim/2").await.unwrap().as_deref(),
            Some(&b"second"[..]),
            "the write itself completed before the stall"
        );
    }

    /// The error failpoint fails the `n`-th cell update under its prefix at its proposal, once; other writes
    /// (published values, counters, other prefixes) pass.
    #[tokio::test]
    async fn the_nth_cell_update_fails_at_its_proposal_once() {
        let fp = failpoint(None, None, Spec::parse("balance/#2"));
        fp.set("balance/1@v1.5", b"first").await.unwrap();
        fp.set("balance/1", b"published").await.unwrap();
        fp.set("other/1@v1.5", b"x").await.unwrap();
        fp.increment("balance/1@v2", 1).await.unwrap();
        assert!(fp.set("balance/1@v2.9", b"second").await.is_err());
        assert_eq!(
            fp.get("balance/1@v2.9").await.unwrap(),
            None,
            "nothing landed"
        );
        fp.set("balance/1@v2.10", b"again").await.unwrap();
    }

    #[tokio::test]
    async fn after_the_sync_failpoints_write_every_barrier_fails() {
        let fp = failpoint(None, Some("balance/".into()), None);
        fp.set("balance/1@v1.5", b"proposal").await.unwrap();
        fp.set("other/1", b"x").await.unwrap();
        fp.barrier().await.unwrap();
        fp.set("balance/1", b"y").await.unwrap();
        assert!(fp.barrier().await.is_err());
        fp.set("other/2", b"z").await.unwrap();
        assert!(fp.barrier().await.is_err(), "for good");
    }
}
