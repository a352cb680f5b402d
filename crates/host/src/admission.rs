//! Admission to the instance pool. Every live instance holds slots of wasmtime's pooling allocator (one
//! component instance, and one memory, table and core instance per core module of the composite), and the pool
//! is fixed at start-up ([`PoolTotals`]). Past it, an instantiation fails, and wasmtime-wasi-http fails with it
//! not only the request that asked for the instance but every request queued for that component
//! (`InstantiationError`): a few hundred slow requests (bodies trickling for the whole body timeout) would turn
//! everyone else's request into a 500.
//!
//! So an instance is created only with a [`Slot`] from the [`Gate`], which holds as many slots as the pool can
//! hold instances ([`PoolTotals::instances_of`], from what one instance was measured to take:
//! [`InstanceCost::measure`]). Without a free slot the instantiation waits, up to [`Gate::wait`], then fails
//! with [`Busy`], which the server answers 503 with `Retry-After`; so does one that finds [`WAITERS_PER_SLOT`]
//! waiters per slot already waiting, at once. The slot is held as long as the instance's
//! store lives and returned after the store (and so its pool slots) is gone. An idle instance keeps its slot
//! for its idle timeout unless someone is waiting for one: then it gives it up ([`Demand`]), so a request never
//! waits for an instance that has nothing to do.
//!
//! Fiber stacks are left out of the gate's count, as they hold far more than the gate lets live: a guest call
//! runs on its store's one worker fiber, which goes back to the store when the call returns or suspends through
//! the component model's callback ABI, and is kept by a task only while it suspends stackfully. This app's
//! guests never do: their exports and the calls between the composed components are WIT `async func`s (lifted
//! with a callback, lowered async), and a call to a synchronous host function, even one that awaits I/O (the
//! `wasi:keyvalue` ones: [`crate::interfaces`]), holds the whole store (nothing else in that instance runs, so no
//! second fiber is taken meanwhile). So each live instance
//! holds about one stack whatever its 16 concurrent requests do, and an instantiation one while it runs: about
//! 204 of the pool's 2048. Were a stackful guest ever to exhaust them, the error would surface as its instance
//! failing (each of its requests sees wasmtime-wasi-http's `TrapOrPanicError`, the pool's error reaching only
//! `WorkerState::drop`), not where responses are built, so it could not be answered 503 there; during
//! instantiation it is (`InstantiationError` with a `PoolConcurrencyLimitError`, whatever the resource).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use anyhow::Context as _;
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};
use wasmtime::Engine;

/// The pooling allocator's totals: the live instances of every component share them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PoolTotals {
    /// Component instances (one per live instance of a triggered component, however composed).
    pub component_instances: u32,
    /// Core module instances.
    pub core_instances: u32,
    /// Linear memories.
    pub memories: u32,
    /// Tables.
    pub tables: u32,
    /// Fiber stacks. Not part of an instance's cost: a guest call holds one while it runs or is suspended
    /// stackfully, and `instantiate_async` only while it runs (see the module docs).
    pub stacks: u32,
}

/// The pool the host runs with.
pub const POOL: PoolTotals = PoolTotals {
    component_instances: 256,
    core_instances: 4096,
    memories: 1024,
    tables: 2048,
    stacks: 2048,
};

/// What one live instance of a component takes from the pool.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct InstanceCost {
    /// Component instances.
    pub component_instances: u64,
    /// Core module instances.
    pub core_instances: u64,
    /// Linear memories.
    pub memories: u64,
    /// Tables.
    pub tables: u64,
}

impl InstanceCost {
    /// What the instance `probe` creates takes from `engine`'s pool, measured as the pool's live counts while
    /// it exists: exact for this build of the component, where counting its modules by hand would go stale
    /// with every change to the composition. Nothing else may allocate from the pool meanwhile (call it before
    /// serving).
    pub async fn measure<T>(
        engine: &Engine,
        probe: impl Future<Output = anyhow::Result<T>>,
    ) -> anyhow::Result<Self> {
        let metrics = engine
            .pooling_allocator_metrics()
            .context("the engine does not use the pooling allocator")?;
        let count = |m: &wasmtime::PoolingAllocatorMetrics| Self {
            component_instances: m.component_instances(),
            core_instances: m.core_instances(),
            memories: m.memories() as u64,
            tables: m.tables() as u64,
        };
        let before = count(&metrics);
        let live = probe.await?;
        let after = count(&metrics);
        drop(live);
        Ok(Self {
            component_instances: after
                .component_instances
                .saturating_sub(before.component_instances),
            core_instances: after.core_instances.saturating_sub(before.core_instances),
            memories: after.memories.saturating_sub(before.memories),
            tables: after.tables.saturating_sub(before.tables),
        })
    }

    /// The larger of each: one gate serves every component, so its unit is the most expensive instance.
    #[must_use]
    pub fn max(self, other: Self) -> Self {
        Self {
            component_instances: self.component_instances.max(other.component_instances),
            core_instances: self.core_instances.max(other.core_instances),
            memories: self.memories.max(other.memories),
            tables: self.tables.max(other.tables),
        }
    }
}

impl PoolTotals {
    /// How many instances costing `cost` fit in the pool at once: the scarcest resource decides. The gateway
    /// (five components composed) measured 1 component instance, 16 core instances, 5 memories and 10 tables:
    /// with [`POOL`], min(256 / 1, 4096 / 16, 1024 / 5, 2048 / 10) = min(256, 256, 204, 204) = 204 instances,
    /// memories and tables running out together.
    pub fn instances_of(&self, cost: &InstanceCost) -> usize {
        [
            (self.component_instances, cost.component_instances),
            (self.core_instances, cost.core_instances),
            (self.memories, cost.memories),
            (self.tables, cost.tables),
        ]
        .into_iter()
        .filter(|&(_, each)| each > 0)
        .map(|(total, each)| usize::try_from(u64::from(total) / each).unwrap_or(usize::MAX))
        .min()
        .unwrap_or(0)
    }
}

/// No instance slot for this instantiation: the server is saturated (the server answers 503 with `Retry-After`).
#[derive(Debug, thiserror::Error)]
pub enum Busy {
    /// No slot became free within the wait.
    #[error("all {capacity} instance slots stayed in use for {} ms", waited.as_millis())]
    Waited {
        /// The gate's capacity.
        capacity: usize,
        /// How long the instantiation waited.
        waited: Duration,
    },
    /// Refused without waiting: as many instantiations as may wait already do ([`WAITERS_PER_SLOT`]).
    #[error("all {capacity} instance slots are in use and {waiting} requests already wait for one")]
    Crowded {
        /// The gate's capacity.
        capacity: usize,
        /// The instantiations waiting.
        waiting: usize,
    },
}

/// Instantiations that may wait at once, per slot of the gate; past them a request is [`Busy`] at once. Each
/// waiter holds its request, body included (up to the 64 KiB read before the component runs), and a task, for up
/// to [`Gate::wait`]; unbounded, every connection the server accepts (4 096) could be one. Four per slot still
/// rides out a burst, since slots turn over within the wait (an idle instance gives its slot up at once, a busy
/// one retires after its 128th request), while the gateway's 204 slots bound the waiters to 816 and what they
/// hold to about 51 MiB. More would mostly wait the whole 10 s to be told the same 503.
pub const WAITERS_PER_SLOT: usize = 4;

/// Hands out the pool's instance slots (see the module docs).
#[derive(Debug)]
pub struct Gate {
    permits: Arc<Semaphore>,
    capacity: AtomicUsize,
    wait: Duration,
    /// Instantiations waiting for a slot.
    waiting: AtomicUsize,
    /// Idle instances that have promised a waiter their slot and not yet returned it.
    yielding: AtomicUsize,
    /// Wakes idle instances when an instantiation starts waiting.
    pressure: Arc<Notify>,
}

impl Gate {
    /// A closed gate (no slots until [`Gate::open`]) whose instantiations wait up to `wait` for a slot.
    pub fn new(wait: Duration) -> Arc<Self> {
        Arc::new(Self {
            permits: Arc::new(Semaphore::new(0)),
            capacity: AtomicUsize::new(0),
            wait,
            waiting: AtomicUsize::new(0),
            yielding: AtomicUsize::new(0),
            pressure: Arc::new(Notify::new()),
        })
    }

    /// Add `slots` slots: the pool's capacity, once the app knows what its instances cost.
    pub fn open(&self, slots: usize) {
        self.capacity.fetch_add(slots, Ordering::Relaxed);
        self.permits.add_permits(slots);
    }

    /// Slots in all.
    pub fn capacity(&self) -> usize {
        self.capacity.load(Ordering::Relaxed)
    }

    /// Slots free now.
    pub fn available(&self) -> usize {
        self.permits.available_permits()
    }

    /// How long an instantiation waits for a slot.
    pub fn wait(&self) -> Duration {
        self.wait
    }

    /// A slot for one instance: at once if one is free, else the first one freed within [`Gate::wait`]
    /// (first come, first served), unless [`WAITERS_PER_SLOT`] per slot already wait: then [`Busy`] at once.
    ///
    /// A waiter whose client has gone keeps its place until it is served or times out: the wait runs in
    /// wasmtime-wasi-http's worker task, not in the connection's, and `HandlerState::instantiate` is not told
    /// which request (if any) it is for, so nothing here can see the client leave. The bound on waiters bounds
    /// what such waits hold.
    pub async fn admit(self: &Arc<Self>) -> Result<Slot, Busy> {
        if let Ok(permit) = self.permits.clone().try_acquire_owned() {
            return Ok(self.slot(permit));
        }
        let most = self.capacity().saturating_mul(WAITERS_PER_SLOT);
        // Counted before idle instances are woken, so each one that looks sees this waiter; and only when there is
        // room, so a refused instantiation never counts (an idle instance would give its slot up for nobody).
        if let Err(waiting) =
            self.waiting
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |waiting| {
                    (waiting < most).then_some(waiting + 1)
                })
        {
            return Err(Busy::Crowded {
                capacity: self.capacity(),
                waiting,
            });
        }
        let _waiting = Waiting(self);
        self.pressure.notify_waiters();
        match tokio::time::timeout(self.wait, self.permits.clone().acquire_owned()).await {
            Ok(Ok(permit)) => Ok(self.slot(permit)),
            // The semaphore is never closed; were it, no slot would ever come.
            Ok(Err(_)) | Err(_) => Err(Busy::Waited {
                capacity: self.capacity(),
                waited: self.wait,
            }),
        }
    }

    /// Run `instantiate` once a slot is free ([`Gate::admit`]; [`Busy`] if none is). The slot comes back with the
    /// instance: keep it until the instance's store is dropped.
    pub async fn instantiate<T>(
        self: &Arc<Self>,
        instantiate: impl Future<Output = wasmtime::Result<T>>,
    ) -> wasmtime::Result<(Slot, T)> {
        let slot = self.admit().await.map_err(wasmtime::Error::new)?;
        Ok((slot, instantiate.await?))
    }

    fn slot(self: &Arc<Self>, permit: OwnedSemaphorePermit) -> Slot {
        Slot {
            yielded: Arc::new(AtomicBool::new(false)),
            gate: self.clone(),
            _permit: permit,
        }
    }

    /// Whether an idle instance should give up its slot: some waiter has no slot promised yet. Promises this
    /// instance's (the caller must then end the instance) so that one waiter does not empty every idle instance.
    fn claim_waiter(&self) -> bool {
        let waiting = self.waiting.load(Ordering::SeqCst);
        self.yielding
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |yielding| {
                (waiting > yielding).then_some(yielding + 1)
            })
            .is_ok()
    }
}

/// Takes a waiter off the count however its wait ends (slot, timeout, or the instantiation dropped).
struct Waiting<'a>(&'a Gate);

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.waiting.fetch_sub(1, Ordering::SeqCst);
    }
}

/// One instance's place in the pool; dropping it frees the place. Keep it until the instance's store is gone:
/// the pool's slots are returned when the store drops, and a slot freed earlier would admit an instantiation
/// the pool cannot hold yet.
#[derive(Debug)]
pub struct Slot {
    yielded: Arc<AtomicBool>,
    gate: Arc<Gate>,
    // Dropped after `Drop::drop` has withdrawn this slot's promise. The other order would, for a moment, count
    // a promise to a waiter that already has its slot, and an idle instance looking then would not give way to
    // a waiter still unserved; this one at worst ends one idle instance too many.
    _permit: OwnedSemaphorePermit,
}

impl Slot {
    /// What tells the instance holding this slot that a waiter needs the slot more than the idle instance does.
    pub fn demand(&self) -> Demand {
        Demand {
            gate: self.gate.clone(),
            yielded: self.yielded.clone(),
            wake: pressure(&self.gate.pressure),
        }
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        if self.yielded.load(Ordering::SeqCst) {
            self.gate.yielding.fetch_sub(1, Ordering::SeqCst);
        }
    }
}

type Wake = Pin<Box<dyn Future<Output = ()> + Send + Sync>>;

fn pressure(notify: &Arc<Notify>) -> Wake {
    let notify = notify.clone();
    Box::pin(async move { notify.notified().await })
}

/// Polled by an idle instance (see [`Slot::demand`]).
pub struct Demand {
    gate: Arc<Gate>,
    yielded: Arc<AtomicBool>,
    wake: Wake,
}

impl Demand {
    /// Ready when the idle instance should end now and free its slot for a waiting instantiation; otherwise
    /// wakes the task when a new waiter arrives. Once ready it stays ready: a waiter counts on this slot.
    pub fn poll(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        if self.yielded.load(Ordering::SeqCst) {
            return Poll::Ready(());
        }
        // Listen before looking: a waiter that arrives between the two still wakes this task.
        while self.wake.as_mut().poll(cx).is_ready() {
            self.wake = pressure(&self.gate.pressure);
        }
        if self.gate.claim_waiter() {
            self.yielded.store(true, Ordering::SeqCst);
            return Poll::Ready(());
        }
        Poll::Pending
    }
}

/// A pool small enough to fill in a test, and a component to fill it with.
#[cfg(test)]
pub(crate) mod testing {
    use wasmtime::component::{Component, Linker};
    use wasmtime::{Engine, Store};

    use super::PoolTotals;

    /// Room for two instances of [`TWO_MEMORIES`]: memories run out first.
    pub(crate) const TINY: PoolTotals = PoolTotals {
        component_instances: 8,
        core_instances: 64,
        memories: 4,
        tables: 8,
        stacks: 16,
    };

    /// Two core instances, each with a memory of its own, as in a composite of two components.
    pub(crate) const TWO_MEMORIES: &str = r#"(component
        (core module $m (memory 1))
        (core instance (instantiate $m))
        (core instance (instantiate $m)))"#;

    /// An engine with the [`TINY`] pool and [`TWO_MEMORIES`] compiled for it.
    pub(crate) fn tiny() -> (Engine, Component) {
        let engine = crate::app::engine_with_pool(None, &TINY).unwrap();
        let component = Component::new(&engine, TWO_MEMORIES).unwrap();
        (engine, component)
    }

    /// A live instance of `component` (the store holds it).
    pub(crate) async fn instance(
        engine: &Engine,
        component: &Component,
    ) -> wasmtime::Result<Store<()>> {
        let mut store = Store::new(engine, ());
        Linker::new(engine)
            .instantiate_async(&mut store, component)
            .await?;
        Ok(store)
    }
}

#[cfg(test)]
mod tests {
    use super::testing::{TINY, instance, tiny};
    use super::*;

    fn cost(component_instances: u64, core: u64, memories: u64, tables: u64) -> InstanceCost {
        InstanceCost {
            component_instances,
            core_instances: core,
            memories,
            tables,
        }
    }

    #[test]
    fn the_scarcest_resource_sizes_the_gate() {
        // The gateway as measured: memories and tables run out together, 1024 / 5 = 2048 / 10.
        assert_eq!(POOL.instances_of(&cost(1, 16, 5, 10)), 204);
        // Core instances: 4096 / 40.
        assert_eq!(POOL.instances_of(&cost(1, 40, 2, 8)), 102);
        // A trivial component: the component instances themselves.
        assert_eq!(POOL.instances_of(&cost(1, 1, 1, 1)), 256);
        // The most expensive component of several sets the unit.
        let worst = cost(1, 20, 2, 8).max(cost(1, 4, 6, 1));
        assert_eq!(worst, cost(1, 20, 6, 8));
        assert_eq!(POOL.instances_of(&worst), 170);
    }

    /// Short enough for a test, long enough that a slot freed mid-wait is clearly inside it.
    const WAIT: Duration = Duration::from_millis(300);

    #[tokio::test]
    async fn beyond_its_slots_an_instantiation_waits_then_is_busy() {
        let gate = Gate::new(WAIT);
        gate.open(2);
        let first = gate.admit().await.unwrap();
        let _second = gate.admit().await.unwrap();
        assert_eq!(gate.available(), 0);

        // The third waits for a slot and gets the first one freed.
        let waiter = tokio::spawn({
            let gate = gate.clone();
            async move { gate.admit().await }
        });
        tokio::time::sleep(WAIT / 3).await;
        assert!(!waiter.is_finished(), "admitted beyond the gate's capacity");
        drop(first);
        let third = waiter.await.unwrap();
        assert!(third.is_ok(), "a freed slot was not handed to the waiter");

        // The fourth finds none within the bound.
        let start = std::time::Instant::now();
        let Err(busy) = gate.admit().await else {
            panic!("admitted beyond the gate's capacity");
        };
        assert!(
            start.elapsed() >= WAIT,
            "gave up early: {:?}",
            start.elapsed()
        );
        assert!(matches!(busy, Busy::Waited { capacity: 2, .. }), "{busy:?}");
        assert!(busy.to_string().contains("all 2 instance slots"), "{busy}");
        assert_eq!(gate.waiting.load(Ordering::SeqCst), 0);
    }

    #[tokio::test]
    async fn past_so_many_waiters_a_request_is_busy_at_once() {
        let gate = Gate::new(Duration::from_secs(10));
        gate.open(1);
        let held = gate.admit().await.unwrap();
        // As many waiters as the gate lets wait for its one slot.
        let waiters: Vec<_> = (0..WAITERS_PER_SLOT)
            .map(|_| {
                let gate = gate.clone();
                tokio::spawn(async move { gate.admit().await })
            })
            .collect();
        while gate.waiting.load(Ordering::SeqCst) < WAITERS_PER_SLOT {
            tokio::task::yield_now().await;
        }
        // One more is refused without waiting, and not counted as a waiter.
        let start = std::time::Instant::now();
        let Err(busy) = gate.admit().await else {
            panic!("admitted beyond the gate's capacity");
        };
        assert!(
            start.elapsed() < Duration::from_secs(1),
            "{:?}",
            start.elapsed()
        );
        assert!(
            matches!(busy, Busy::Crowded { capacity: 1, waiting } if waiting == WAITERS_PER_SLOT),
            "{busy:?}"
        );
        assert!(busy.to_string().contains("already wait"), "{busy}");
        assert_eq!(gate.waiting.load(Ordering::SeqCst), WAITERS_PER_SLOT);
        // The waiters still get the slot in turn.
        drop(held);
        for waiter in waiters {
            let slot = waiter.await.unwrap();
            assert!(slot.is_ok(), "a waiter within the bound was refused");
        }
    }

    #[tokio::test]
    async fn an_instance_is_measured_in_what_it_takes_from_the_pool() {
        let (engine, component) = tiny();
        let probe = async {
            instance(&engine, &component)
                .await
                .map_err(anyhow::Error::from)
        };
        let cost = InstanceCost::measure(&engine, probe).await.unwrap();
        assert_eq!(cost, self::cost(1, 2, 2, 0));
        assert_eq!(TINY.instances_of(&cost), 2);
        // The probe is gone: the pool is empty again.
        let metrics = engine.pooling_allocator_metrics().unwrap();
        assert_eq!((metrics.memories(), metrics.component_instances()), (0, 0));
    }

    #[tokio::test]
    async fn admitted_instantiations_never_overfill_the_pool() {
        let (engine, component) = tiny();
        let gate = Gate::new(Duration::from_secs(10));
        gate.open(TINY.instances_of(&self::cost(1, 2, 2, 0)));
        // Three times what the pool holds, at once, each instance living a while: without the gate the pool
        // refuses the third instantiation.
        let tasks: Vec<_> = (0..6)
            .map(|_| {
                let (engine, component, gate) = (engine.clone(), component.clone(), gate.clone());
                tokio::spawn(async move {
                    let (slot, store) = gate.instantiate(instance(&engine, &component)).await?;
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    // As wasmtime-wasi-http's worker does: the store first, then the slot.
                    drop(store);
                    drop(slot);
                    wasmtime::Result::<()>::Ok(())
                })
            })
            .collect();
        for task in tasks {
            if let Err(e) = task.await.unwrap() {
                panic!("an admitted instantiation failed: {e:?}");
            }
        }
    }

    fn poll_demand(demand: &mut Demand) -> Poll<()> {
        let waker = std::task::Waker::noop();
        demand.poll(&mut Context::from_waker(waker))
    }

    #[tokio::test]
    async fn an_idle_instance_gives_its_slot_to_one_waiter() {
        let gate = Gate::new(Duration::from_secs(10));
        gate.open(2);
        let a = gate.admit().await.unwrap();
        let b = gate.admit().await.unwrap();
        let (mut idle_a, mut idle_b) = (a.demand(), b.demand());
        // Nobody waits: idle instances keep their slots.
        assert!(poll_demand(&mut idle_a).is_pending());

        let waiter = tokio::spawn({
            let gate = gate.clone();
            async move { gate.admit().await }
        });
        tokio::task::yield_now().await;
        // One waiter: one idle instance gives way, not both.
        assert!(poll_demand(&mut idle_a).is_ready());
        assert!(poll_demand(&mut idle_b).is_pending());
        drop(a);
        assert!(waiter.await.unwrap().is_ok());
        // The promise went with the slot: nobody waits now.
        assert_eq!(gate.yielding.load(Ordering::SeqCst), 0);
        assert!(poll_demand(&mut idle_b).is_pending());
    }

    #[tokio::test]
    async fn a_waiter_wakes_an_idle_instance() {
        let gate = Gate::new(Duration::from_secs(10));
        gate.open(1);
        let slot = gate.admit().await.unwrap();
        let mut demand = slot.demand();
        // The idle instance's task: ends when its slot is wanted.
        let idle = tokio::spawn(async move {
            std::future::poll_fn(|cx| demand.poll(cx)).await;
            drop(slot);
        });
        tokio::task::yield_now().await;
        assert!(!idle.is_finished());
        let admitted = tokio::time::timeout(Duration::from_secs(5), gate.admit())
            .await
            .expect("the idle instance kept its slot");
        assert!(admitted.is_ok());
        idle.await.unwrap();
    }
}
