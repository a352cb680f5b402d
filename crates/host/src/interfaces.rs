//! Host implementations of the Spin interfaces guests import, at Spin 4's exact versions:
//! `spin:key-value@3.0.0`, `spin:variables@3.0.0` and `wasi:keyvalue@0.2.0-draft2` (store + atomics).
//!
//! The async (`async func`) interfaces run concurrently through wasmtime's `Accessor`: each call clones the
//! backend handle out of the store, then awaits I/O without holding the store. The synchronous `wasi:keyvalue`
//! functions are async on the host side (they await the backend) but hold the store for their duration, so the
//! instance's other requests wait meanwhile. That cannot be helped for a synchronous WIT function: wasmtime
//! 48 types a concurrent host function (`func_wrap_concurrent`) as `async`, and linking it for
//! `wasi:keyvalue/atomics.increment` fails with "instance export `increment` has the wrong type"; Spin 4.1
//! offers no async atomic. The app calls it once per cell write (its claim); what that costs is measured in
//! `BENCHMARKS.md` ("Key-value calls and the instance"). Because the store is held, a backend must never need
//! the instance's pending futures polled to serve a synchronous call: SQLite runs on blocking threads, memory
//! answers at once, and Redis runs every command on a task of its own (`kv::redis_store`).

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use wasmtime::component::{
    Accessor, FutureReader, HasData, Linker, Resource, ResourceTable, StreamReader,
};

use crate::kv::SharedBackend;

mod bindings {
    wasmtime::component::bindgen!({
        path: "wit",
        world: "esim402:host/host",
        imports: {
            "wasi:keyvalue": async | trappable,
            default: trappable,
        },
        with: {
            "spin:key-value/key-value.store": crate::interfaces::SpinStore,
            "wasi:keyvalue/store.bucket": crate::interfaces::WasiBucket,
            "wasi:keyvalue/atomics.cas": crate::interfaces::Cas,
        },
    });
}

use bindings::spin::key_value::key_value as spin_kv;
use bindings::spin::variables::variables as spin_vars;
use bindings::wasi::keyvalue::{atomics, batch, store as wasi_kv};

/// The key-value stores one component may open.
#[derive(Clone, Default)]
pub struct KvCtx {
    /// Labels listed in the component's `key_value_stores`.
    pub allowed: Arc<HashSet<String>>,
    /// Every configured store.
    pub stores: Arc<HashMap<String, SharedBackend>>,
}

enum OpenError {
    Denied,
    NoSuchStore,
}

impl KvCtx {
    fn open(&self, label: &str) -> Result<SharedBackend, OpenError> {
        if !self.allowed.contains(label) {
            return Err(OpenError::Denied);
        }
        self.stores
            .get(label)
            .cloned()
            .ok_or(OpenError::NoSuchStore)
    }
}

/// A component's resolved variables.
#[derive(Clone, Default)]
pub struct VarsCtx {
    /// Name → value.
    pub vars: Arc<HashMap<String, String>>,
}

/// `spin:key-value` store handle.
pub struct SpinStore(SharedBackend);
/// `wasi:keyvalue` bucket handle.
pub struct WasiBucket(SharedBackend);
/// A compare-and-swap snapshot.
pub struct Cas {
    store: SharedBackend,
    key: String,
    current: Option<Vec<u8>>,
}

/// What the bindings see of the store data.
pub struct KvView<'a> {
    ctx: &'a KvCtx,
    table: &'a mut ResourceTable,
}

/// `HasData` marker for the key-value interfaces.
pub struct KvHost;
impl HasData for KvHost {
    type Data<'a> = KvView<'a>;
}

/// `HasData` marker for variables.
pub struct VarsHost;
impl HasData for VarsHost {
    type Data<'a> = &'a mut VarsCtx;
}

/// Store data that carries the Spin contexts.
pub trait SpinView: Send + 'static {
    /// Key-value context and the resource table.
    fn kv(&mut self) -> (&KvCtx, &mut ResourceTable);
    /// Variables.
    fn vars(&mut self) -> &mut VarsCtx;
}

fn kv_view<T: SpinView>(t: &mut T) -> KvView<'_> {
    let (ctx, table) = t.kv();
    KvView { ctx, table }
}

/// Add every Spin interface to `linker`.
pub fn add_to_linker<T: SpinView>(linker: &mut Linker<T>) -> wasmtime::Result<()> {
    spin_kv::add_to_linker::<T, KvHost>(linker, kv_view::<T>)?;
    spin_vars::add_to_linker::<T, VarsHost>(linker, |t| t.vars())?;
    wasi_kv::add_to_linker::<T, KvHost>(linker, kv_view::<T>)?;
    atomics::add_to_linker::<T, KvHost>(linker, kv_view::<T>)?;
    batch::add_to_linker::<T, KvHost>(linker, kv_view::<T>)?;
    Ok(())
}

// ---- spin:variables -------------------------------------------------------------------------------------

impl spin_vars::Host for VarsCtx {}

impl<T> spin_vars::HostWithStore<T> for VarsHost {
    async fn get(
        accessor: &Accessor<T, Self>,
        name: String,
    ) -> wasmtime::Result<Result<String, spin_vars::Error>> {
        if !crate::manifest::is_variable_name(&name) {
            return Ok(Err(spin_vars::Error::InvalidName(name)));
        }
        let value = accessor.with(|mut a| a.get().vars.get(&name).cloned());
        Ok(value.ok_or(spin_vars::Error::Undefined(name)))
    }
}

// ---- spin:key-value ---------------------------------------------------------------------------------------

fn spin_handle<T>(
    accessor: &Accessor<T, KvHost>,
    r: &Resource<SpinStore>,
) -> wasmtime::Result<SharedBackend> {
    accessor.with(|mut a| Ok(a.get().table.get(r)?.0.clone()))
}

fn spin_err(e: crate::kv::KvError) -> spin_kv::Error {
    spin_kv::Error::Other(e.0)
}

impl spin_kv::Host for KvView<'_> {}
impl spin_kv::HostStore for KvView<'_> {
    fn drop(&mut self, rep: Resource<SpinStore>) -> wasmtime::Result<()> {
        self.table.delete(rep)?;
        Ok(())
    }
}

impl<T> spin_kv::HostStoreWithStore<T> for KvHost {
    async fn open(
        accessor: &Accessor<T, Self>,
        label: String,
    ) -> wasmtime::Result<Result<Resource<SpinStore>, spin_kv::Error>> {
        let backend = match accessor.with(|mut a| a.get().ctx.open(&label)) {
            Ok(b) => b,
            Err(OpenError::Denied) => return Ok(Err(spin_kv::Error::AccessDenied)),
            Err(OpenError::NoSuchStore) => return Ok(Err(spin_kv::Error::NoSuchStore)),
        };
        Ok(Ok(
            accessor.with(|mut a| a.get().table.push(SpinStore(backend)))?
        ))
    }

    async fn get(
        accessor: &Accessor<T, Self>,
        this: Resource<SpinStore>,
        key: String,
    ) -> wasmtime::Result<Result<Option<Vec<u8>>, spin_kv::Error>> {
        Ok(spin_handle(accessor, &this)?
            .get(&key)
            .await
            .map_err(spin_err))
    }

    async fn set(
        accessor: &Accessor<T, Self>,
        this: Resource<SpinStore>,
        key: String,
        value: Vec<u8>,
    ) -> wasmtime::Result<Result<(), spin_kv::Error>> {
        Ok(spin_handle(accessor, &this)?
            .set(&key, &value)
            .await
            .map_err(spin_err))
    }

    async fn delete(
        accessor: &Accessor<T, Self>,
        this: Resource<SpinStore>,
        key: String,
    ) -> wasmtime::Result<Result<(), spin_kv::Error>> {
        Ok(spin_handle(accessor, &this)?
            .delete(&key)
            .await
            .map_err(spin_err))
    }

    async fn exists(
        accessor: &Accessor<T, Self>,
        this: Resource<SpinStore>,
        key: String,
    ) -> wasmtime::Result<Result<bool, spin_kv::Error>> {
        Ok(spin_handle(accessor, &this)?
            .exists(&key)
            .await
            .map_err(spin_err))
    }

    async fn get_keys(
        accessor: &Accessor<T, Self>,
        this: Resource<SpinStore>,
    ) -> wasmtime::Result<(
        StreamReader<String>,
        FutureReader<Result<(), spin_kv::Error>>,
    )> {
        let (keys, result) = match spin_handle(accessor, &this)?.keys().await {
            Ok(keys) => (keys, Ok(())),
            Err(e) => (Vec::new(), Err(spin_err(e))),
        };
        accessor.with(|mut a| {
            let stream = StreamReader::new(&mut a, keys)?;
            let future =
                FutureReader::new(&mut a, std::future::ready(Ok::<_, wasmtime::Error>(result)))?;
            Ok((stream, future))
        })
    }
}

// ---- wasi:keyvalue ------------------------------------------------------------------------------------------

fn wasi_err(e: crate::kv::KvError) -> wasi_kv::Error {
    wasi_kv::Error::Other(e.0)
}

impl KvView<'_> {
    fn bucket(&self, r: &Resource<WasiBucket>) -> wasmtime::Result<SharedBackend> {
        Ok(self.table.get(r)?.0.clone())
    }
}

impl wasi_kv::Host for KvView<'_> {
    async fn open(
        &mut self,
        identifier: String,
    ) -> wasmtime::Result<Result<Resource<WasiBucket>, wasi_kv::Error>> {
        match self.ctx.open(&identifier) {
            Ok(b) => Ok(Ok(self.table.push(WasiBucket(b))?)),
            Err(OpenError::Denied) => Ok(Err(wasi_kv::Error::AccessDenied)),
            Err(OpenError::NoSuchStore) => Ok(Err(wasi_kv::Error::NoSuchStore)),
        }
    }
}

impl wasi_kv::HostBucket for KvView<'_> {
    async fn get(
        &mut self,
        this: Resource<WasiBucket>,
        key: String,
    ) -> wasmtime::Result<Result<Option<Vec<u8>>, wasi_kv::Error>> {
        Ok(self.bucket(&this)?.get(&key).await.map_err(wasi_err))
    }
    async fn set(
        &mut self,
        this: Resource<WasiBucket>,
        key: String,
        value: Vec<u8>,
    ) -> wasmtime::Result<Result<(), wasi_kv::Error>> {
        Ok(self
            .bucket(&this)?
            .set(&key, &value)
            .await
            .map_err(wasi_err))
    }
    async fn delete(
        &mut self,
        this: Resource<WasiBucket>,
        key: String,
    ) -> wasmtime::Result<Result<(), wasi_kv::Error>> {
        Ok(self.bucket(&this)?.delete(&key).await.map_err(wasi_err))
    }
    async fn exists(
        &mut self,
        this: Resource<WasiBucket>,
        key: String,
    ) -> wasmtime::Result<Result<bool, wasi_kv::Error>> {
        Ok(self.bucket(&this)?.exists(&key).await.map_err(wasi_err))
    }
    async fn list_keys(
        &mut self,
        this: Resource<WasiBucket>,
        cursor: Option<String>,
    ) -> wasmtime::Result<Result<wasi_kv::KeyResponse, wasi_kv::Error>> {
        if cursor.is_some() {
            return Ok(Err(wasi_kv::Error::Other(
                "cursors are not supported: the first page holds every key".into(),
            )));
        }
        Ok(self
            .bucket(&this)?
            .keys()
            .await
            .map(|keys| wasi_kv::KeyResponse { keys, cursor: None })
            .map_err(wasi_err))
    }
    async fn drop(&mut self, rep: Resource<WasiBucket>) -> wasmtime::Result<()> {
        self.table.delete(rep)?;
        Ok(())
    }
}

impl atomics::HostCas for KvView<'_> {
    async fn new(
        &mut self,
        bucket: Resource<WasiBucket>,
        key: String,
    ) -> wasmtime::Result<Result<Resource<Cas>, wasi_kv::Error>> {
        let store = self.bucket(&bucket)?;
        let current = match store.get(&key).await {
            Ok(v) => v,
            Err(e) => return Ok(Err(wasi_err(e))),
        };
        Ok(Ok(self.table.push(Cas {
            store,
            key,
            current,
        })?))
    }
    async fn current(
        &mut self,
        this: Resource<Cas>,
    ) -> wasmtime::Result<Result<Option<Vec<u8>>, wasi_kv::Error>> {
        Ok(Ok(self.table.get(&this)?.current.clone()))
    }
    async fn drop(&mut self, rep: Resource<Cas>) -> wasmtime::Result<()> {
        self.table.delete(rep)?;
        Ok(())
    }
}

impl atomics::Host for KvView<'_> {
    async fn increment(
        &mut self,
        bucket: Resource<WasiBucket>,
        key: String,
        delta: i64,
    ) -> wasmtime::Result<Result<i64, wasi_kv::Error>> {
        Ok(self
            .bucket(&bucket)?
            .increment(&key, delta)
            .await
            .map_err(wasi_err))
    }

    async fn swap(
        &mut self,
        cas: Resource<Cas>,
        value: Vec<u8>,
    ) -> wasmtime::Result<Result<(), atomics::CasError>> {
        let (store, key, expected) = {
            let c = self.table.get(&cas)?;
            (c.store.clone(), c.key.clone(), c.current.clone())
        };
        match store
            .compare_and_swap(&key, expected.as_deref(), &value)
            .await
        {
            Ok(true) => {
                self.table.delete(cas)?;
                Ok(Ok(()))
            }
            // The snapshot is stale: the handle goes back to the guest updated to the key's latest value (the
            // interface's contract), so a retry with it can succeed.
            Ok(false) => match store.get(&key).await {
                Ok(latest) => {
                    self.table.get_mut(&cas)?.current = latest;
                    Ok(Err(atomics::CasError::CasFailed(cas)))
                }
                Err(e) => {
                    self.table.delete(cas)?;
                    Ok(Err(atomics::CasError::StoreError(wasi_err(e))))
                }
            },
            Err(e) => {
                self.table.delete(cas)?;
                Ok(Err(atomics::CasError::StoreError(wasi_err(e))))
            }
        }
    }
}

impl batch::Host for KvView<'_> {
    /// Every key with its value or `None` (the interface's contract; Spin's SQLite store leaves absent keys
    /// out, so guests must accept both).
    async fn get_many(
        &mut self,
        bucket: Resource<WasiBucket>,
        keys: Vec<String>,
    ) -> wasmtime::Result<Result<Vec<(String, Option<Vec<u8>>)>, wasi_kv::Error>> {
        let store = self.bucket(&bucket)?;
        Ok(match store.get_many(&keys).await {
            Ok(values) => Ok(keys.into_iter().zip(values).collect()),
            Err(e) => Err(wasi_err(e)),
        })
    }
    async fn set_many(
        &mut self,
        bucket: Resource<WasiBucket>,
        entries: Vec<(String, Vec<u8>)>,
    ) -> wasmtime::Result<Result<(), wasi_kv::Error>> {
        let store = self.bucket(&bucket)?;
        Ok(store.set_many(entries).await.map_err(wasi_err))
    }
    async fn delete_many(
        &mut self,
        bucket: Resource<WasiBucket>,
        keys: Vec<String>,
    ) -> wasmtime::Result<Result<(), wasi_kv::Error>> {
        let store = self.bucket(&bucket)?;
        Ok(store.delete_many(&keys).await.map_err(wasi_err))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kv::MemoryStore;

    /// A swap that fails because another writer changed the key hands back a CAS handle updated to the
    /// latest value (`wasi:keyvalue/atomics`: "MUST return a CAS handle that has been updated to the latest
    /// version"), so retrying with it succeeds. (Before, it kept the stale snapshot and every retry failed.)
    #[tokio::test]
    async fn a_failed_swap_returns_a_handle_with_the_latest_value() {
        let store: SharedBackend = Arc::new(MemoryStore::default());
        store.set("k", b"1").await.unwrap();
        let ctx = KvCtx::default();
        let mut table = ResourceTable::new();
        let mut view = KvView {
            ctx: &ctx,
            table: &mut table,
        };
        let bucket = view.table.push(WasiBucket(store.clone())).unwrap();
        let borrow = || Resource::<WasiBucket>::new_borrow(bucket.rep());
        let cas = atomics::HostCas::new(&mut view, borrow(), "k".into())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(
            view.table.get(&cas).unwrap().current.as_deref(),
            Some(&b"1"[..])
        );

        // Another writer changes the key between the snapshot and the swap.
        store.set("k", b"2").await.unwrap();
        let Err(atomics::CasError::CasFailed(cas)) =
            atomics::Host::swap(&mut view, cas, b"3".to_vec())
                .await
                .unwrap()
        else {
            panic!("the swap of a stale snapshot must fail with a handle to retry");
        };
        let current = atomics::HostCas::current(&mut view, Resource::new_borrow(cas.rep()))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(
            current.as_deref(),
            Some(&b"2"[..]),
            "the other writer's value"
        );
        assert_eq!(store.get("k").await.unwrap().as_deref(), Some(&b"2"[..]));

        // The retry with the returned handle succeeds.
        assert!(matches!(
            atomics::Host::swap(&mut view, cas, b"3".to_vec())
                .await
                .unwrap(),
            Ok(())
        ));
        assert_eq!(store.get("k").await.unwrap().as_deref(), Some(&b"3"[..]));
    }
}
