//! A store wrapped by something that watches or refuses its calls ([`Wrapped`] over a [`Hook`]): the test-only
//! failpoint ([`super::failpoint`]), a test's failing writes, a benchmark's call counter. The wrapper delegates
//! every operation to the inner store and gives the hook its say; a hook only writes what it adds.
//!
//! The batch operations (`get-many`, `set-many`, `delete-many`) go key by key through the wrapper, so the hook
//! sees each key, as it would without batching.

use async_trait::async_trait;

use super::{Backend, KvResult, SharedBackend};

/// A key-value operation, as a [`Hook`] is told of it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    /// `get`.
    Get,
    /// `set`.
    Set,
    /// `delete`.
    Delete,
    /// `exists`.
    Exists,
    /// `keys`.
    Keys,
    /// `increment`.
    Increment,
    /// `compare_and_swap`.
    CompareAndSwap,
}

impl Op {
    /// Whether it can change the store.
    pub fn writes(self) -> bool {
        matches!(
            self,
            Self::Set | Self::Delete | Self::Increment | Self::CompareAndSwap
        )
    }
}

/// What a wrapper adds to a store. Every method defaults to adding nothing.
#[async_trait]
pub trait Hook: Send + Sync + 'static {
    /// Before `op` on `key` (`""` for `keys`): an error refuses the call, and the store is not asked.
    fn before(&self, _op: Op, _key: &str) -> KvResult<()> {
        Ok(())
    }

    /// After a write that took effect on `key` (a `set`, or a `compare_and_swap` that swapped) in `inner`.
    async fn after_write(&self, _inner: &dyn Backend, _key: &str) {}

    /// The answer to a write that took effect on `key`: an error is a reply lost after the store applied it
    /// (a Redis timeout after the write), which the caller must not take for "not written".
    fn reply(&self, _op: Op, _key: &str) -> KvResult<()> {
        Ok(())
    }

    /// The durability barrier, over the `inner` store's.
    async fn barrier(&self, inner: &dyn Backend) -> KvResult<()> {
        inner.barrier().await
    }
}

/// `inner` with `hook`'s additions.
pub struct Wrapped<H> {
    /// The store that holds the data.
    pub inner: SharedBackend,
    /// What is added.
    pub hook: H,
}

impl<H: Hook> Wrapped<H> {
    /// `inner` wrapped by `hook`.
    pub fn new(inner: SharedBackend, hook: H) -> Self {
        Self { inner, hook }
    }
}

#[async_trait]
impl<H: Hook> Backend for Wrapped<H> {
    async fn get(&self, key: &str) -> KvResult<Option<Vec<u8>>> {
        self.hook.before(Op::Get, key)?;
        self.inner.get(key).await
    }

    async fn set(&self, key: &str, value: &[u8]) -> KvResult<()> {
        self.hook.before(Op::Set, key)?;
        self.inner.set(key, value).await?;
        self.hook.after_write(self.inner.as_ref(), key).await;
        self.hook.reply(Op::Set, key)
    }

    async fn delete(&self, key: &str) -> KvResult<()> {
        self.hook.before(Op::Delete, key)?;
        self.inner.delete(key).await
    }

    async fn exists(&self, key: &str) -> KvResult<bool> {
        self.hook.before(Op::Exists, key)?;
        self.inner.exists(key).await
    }

    async fn keys(&self) -> KvResult<Vec<String>> {
        self.hook.before(Op::Keys, "")?;
        self.inner.keys().await
    }

    async fn increment(&self, key: &str, delta: i64) -> KvResult<i64> {
        self.hook.before(Op::Increment, key)?;
        self.inner.increment(key, delta).await
    }

    async fn compare_and_swap(
        &self,
        key: &str,
        expected: Option<&[u8]>,
        value: &[u8],
    ) -> KvResult<bool> {
        self.hook.before(Op::CompareAndSwap, key)?;
        let swapped = self.inner.compare_and_swap(key, expected, value).await?;
        if swapped {
            self.hook.after_write(self.inner.as_ref(), key).await;
            self.hook.reply(Op::CompareAndSwap, key)?;
        }
        Ok(swapped)
    }

    async fn barrier(&self) -> KvResult<()> {
        self.hook.barrier(self.inner.as_ref()).await
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::Mutex;

    use super::*;
    use crate::kv::{KvError, MemoryStore};

    /// Records what it is told, and refuses writes to `ro/`.
    #[derive(Default)]
    struct Log(Mutex<Vec<String>>);

    #[async_trait]
    impl Hook for Log {
        fn before(&self, op: Op, key: &str) -> KvResult<()> {
            self.0.lock().unwrap().push(format!("{op:?} {key}"));
            if op.writes() && key.starts_with("ro/") {
                return Err(KvError(format!("read-only: {key}")));
            }
            Ok(())
        }
        async fn after_write(&self, _inner: &dyn Backend, key: &str) {
            self.0.lock().unwrap().push(format!("wrote {key}"));
        }
    }

    #[tokio::test]
    async fn the_hook_sees_every_call_and_refuses_before_the_store_is_asked() {
        let inner = Arc::new(MemoryStore::default());
        let w = Wrapped::new(inner.clone(), Log::default());
        w.set("a", b"1").await.unwrap();
        assert!(w.compare_and_swap("a", Some(b"1"), b"2").await.unwrap());
        assert!(!w.compare_and_swap("a", Some(b"1"), b"3").await.unwrap());
        assert_eq!(w.increment("n", 2).await.unwrap(), 2);
        assert!(w.set("ro/x", b"1").await.is_err());
        assert_eq!(
            inner.get("ro/x").await.unwrap(),
            None,
            "refused before the store"
        );
        assert_eq!(w.get("a").await.unwrap(), Some(b"2".to_vec()));
        w.set_many(vec![("b".into(), b"1".to_vec())]).await.unwrap();
        w.barrier().await.unwrap();
        assert_eq!(
            *w.hook.0.lock().unwrap(),
            [
                "Set a",
                "wrote a",
                "CompareAndSwap a",
                "wrote a",
                "CompareAndSwap a",
                "Increment n",
                "Set ro/x",
                "Get a",
                "Set b",
                "wrote b",
            ],
            "a failed swap is no write; a batch goes key by key"
        );
    }
}
