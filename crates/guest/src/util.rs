//! Small things every component needs once: the clock, random tokens, a timeout, and a per-instance cache for
//! configuration parsed from Spin variables (variables do not change while an app runs, so each component
//! instance parses them once, however many requests it serves).

use std::cell::RefCell;
use std::rc::Rc;

/// Unix seconds now (the guest's wall clock; 0 if the clock is before 1970).
pub fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// `N` random bytes, or why there are none.
pub fn random_bytes<const N: usize>() -> Result<[u8; N], String> {
    let mut b = [0u8; N];
    getrandom::fill(&mut b).map_err(|e| format!("no randomness: {e}"))?;
    Ok(b)
}

/// A random u64.
pub fn random_u64() -> Result<u64, String> {
    random_bytes::<8>().map(u64::from_le_bytes)
}

/// A fresh random holder token (32 hex digits): who drives a claim or a lease.
pub fn holder_token() -> Result<String, String> {
    random_bytes::<16>().map(|b| b.iter().map(|x| format!("{x:02x}")).collect())
}

/// A value computed once per component instance. Wasm components are single-threaded, so a thread-local
/// holds it; two concurrent first calls may both compute it (harmless: the values are equal).
pub struct InstanceCache<T: 'static> {
    cell: &'static std::thread::LocalKey<RefCell<Option<Rc<T>>>>,
}

impl<T: 'static> InstanceCache<T> {
    /// A cache over `cell` (declare it with `thread_local!`).
    pub const fn new(cell: &'static std::thread::LocalKey<RefCell<Option<Rc<T>>>>) -> Self {
        Self { cell }
    }

    /// The cached value, if an earlier call loaded it (for synchronous exports, which must not wait).
    pub fn loaded(&self) -> Option<Rc<T>> {
        self.cell.with(|c| c.borrow().clone())
    }

    /// The cached value, computing it with `load` the first time.
    pub async fn get_or_load<E, F, Fut>(&self, load: F) -> Result<Rc<T>, E>
    where
        F: FnOnce() -> Fut,
        Fut: std::future::Future<Output = Result<T, E>>,
    {
        if let Some(v) = self.loaded() {
            return Ok(v);
        }
        Ok(self.keep(load().await?))
    }

    /// [`get_or_load`](Self::get_or_load) for a value a synchronous call produces.
    pub fn get_or_load_now<E>(&self, load: impl FnOnce() -> Result<T, E>) -> Result<Rc<T>, E> {
        if let Some(v) = self.loaded() {
            return Ok(v);
        }
        Ok(self.keep(load()?))
    }

    fn keep(&self, v: T) -> Rc<T> {
        let v = Rc::new(v);
        self.cell.with(|c| *c.borrow_mut() = Some(v.clone()));
        v
    }
}

/// Declare a per-instance cache of `$t`: `instance_cache!(CONFIG: Config);` then `CONFIG.get_or_load(...)`.
#[macro_export]
macro_rules! instance_cache {
    ($name:ident : $t:ty) => {
        static $name: $crate::util::InstanceCache<$t> = {
            ::std::thread_local! {
                static CELL: ::std::cell::RefCell<::std::option::Option<::std::rc::Rc<$t>>> =
                    const { ::std::cell::RefCell::new(None) };
            }
            $crate::util::InstanceCache::new(&CELL)
        };
    };
}

/// `fut`'s output, or `None` once `timeout` has passed first (`fut` is dropped then, cancelling what it waits
/// for).
pub async fn within<T>(fut: impl Future<Output = T>, timeout: std::time::Duration) -> Option<T> {
    let mut fut = std::pin::pin!(fut);
    let mut sleep = std::pin::pin!(spin_sdk::time::sleep(timeout));
    std::future::poll_fn(|cx| {
        if let std::task::Poll::Ready(r) = fut.as_mut().poll(cx) {
            return std::task::Poll::Ready(Some(r));
        }
        if sleep.as_mut().poll(cx).is_ready() {
            return std::task::Poll::Ready(None);
        }
        std::task::Poll::Pending
    })
    .await
}
