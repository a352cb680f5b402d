//! Loading a Spin application: manifest + runtime config + variables → one wasmtime `Engine`, a `Linker` with
//! WASI p2/p3, `wasi:http` p3 and the Spin interfaces, each triggered component composed with its dependencies,
//! compiled (cached on disk by wasmtime, keyed by the wasm's hash), pre-instantiated, and served through a
//! `ProxyHandler` that reuses instances like Spin 4 (up to 16 concurrent and 128 total requests per instance;
//! one concurrent request for a component on Redis unless the command line says otherwise: [`concurrent_reuse`]).
//! Instances come from a fixed pool; an instance is created only with a slot from the app's
//! [`Gate`](crate::admission::Gate), sized at load from what one instance was measured to take, so a full pool
//! makes a request wait (then answer 503) instead of failing it and every request queued behind it.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context as TaskContext, Poll};
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use wasmtime::component::{Component, GuestTaskId, Linker, ResourceTable};
use wasmtime::{
    Config, Engine, InstanceAllocationStrategy, PoolingAllocationConfig, Store, StoreContextMut,
    StoreLimits, StoreLimitsBuilder,
};
use wasmtime_wasi::{WasiCtx, WasiCtxBuilder, WasiCtxView, WasiView};
use wasmtime_wasi_http::handler::{
    HandlerState, Instance, Proxy, ProxyHandler, ProxyPre, ShouldAccept, WorkerExpiration,
    WorkerState, WorkerStatus,
};
use wasmtime_wasi_http::{WasiHttpCtx, WasiHttpCtxView, WasiHttpView};

use crate::admission::{self, Demand, Gate, InstanceCost, PoolTotals, Slot};
use crate::compose::{Dependency, Dependent, compose};
use crate::interfaces::{self, KvCtx, SpinView, VarsCtx};
use crate::kv::{self, SharedBackend};
use crate::manifest::{Inherit, Manifest, RouteSpec, expand};
use crate::outbound::OutboundPolicy;
use crate::router::Router;
use crate::runtime_config::{RuntimeConfig, StoreConfig};
use crate::variables;

/// How to load the app. Its `Debug` leaves `env` out (it holds every `SPIN_VARIABLE_*`, secrets included).
#[derive(Clone, Default)]
pub struct LoadOptions {
    /// Path to spin.toml.
    pub manifest: PathBuf,
    /// Path to a runtime config file (Spin's default stores otherwise).
    pub runtime_config: Option<PathBuf>,
    /// Replace every key-value store with this backend (tests).
    pub kv_override: Option<StoreConfig>,
    /// Environment for `SPIN_VARIABLE_*` (the process environment in production).
    pub env: HashMap<String, String>,
    /// Where compiled components are cached (none = no disk cache).
    pub cache_dir: Option<PathBuf>,
    /// Requests one instance may serve concurrently; `None`: [`concurrent_reuse`] chooses per component.
    pub max_concurrent_per_instance: Option<usize>,
    /// Requests one instance may serve in total before it is retired.
    pub max_requests_per_instance: usize,
    /// How long a connection may take to send a request's headers, or stay idle between requests, before it is
    /// closed (default 30 s; `ESIM402_HEADER_TIMEOUT_MS` in the environment overrides it).
    pub header_timeout: Duration,
    /// How long a client may take to send a request's body, however it is framed (default 30 s).
    pub body_timeout: Duration,
    /// How long a write to a client may stay blocked (the client reads nothing, so its socket buffers stay
    /// full) before the connection is closed (default 30 s).
    pub write_timeout: Duration,
    /// How long a request may wait for room in the instance pool before it is answered 503 (default 10 s).
    pub instance_wait: Duration,
}

impl std::fmt::Debug for LoadOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoadOptions")
            .field("manifest", &self.manifest)
            .field("runtime_config", &self.runtime_config)
            .field("kv_override", &self.kv_override)
            .field(
                "env",
                &format_args!("({} variables, not shown)", self.env.len()),
            )
            .field("cache_dir", &self.cache_dir)
            .field(
                "max_concurrent_per_instance",
                &self.max_concurrent_per_instance,
            )
            .field("max_requests_per_instance", &self.max_requests_per_instance)
            .field("header_timeout", &self.header_timeout)
            .field("body_timeout", &self.body_timeout)
            .field("write_timeout", &self.write_timeout)
            .field("instance_wait", &self.instance_wait)
            .finish()
    }
}

impl LoadOptions {
    /// Defaults for a manifest path: Spin 4's reuse limits and a cache under `<app>/.spin/cache`.
    pub fn new(manifest: impl Into<PathBuf>) -> Self {
        let manifest = manifest.into();
        let dir = manifest
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .map_or_else(|| PathBuf::from("."), Path::to_path_buf);
        Self {
            manifest,
            runtime_config: None,
            kv_override: None,
            env: variables::process_env(),
            cache_dir: Some(dir.join(".spin").join("cache")),
            max_concurrent_per_instance: None,
            max_requests_per_instance: 128,
            header_timeout: std::env::var("ESIM402_HEADER_TIMEOUT_MS")
                .ok()
                .and_then(|v| v.parse().ok())
                .map_or(Duration::from_secs(30), Duration::from_millis),
            body_timeout: Duration::from_secs(30),
            write_timeout: Duration::from_secs(30),
            instance_wait: INSTANCE_WAIT,
        }
    }
}

/// [`LoadOptions::instance_wait`]'s default: long enough to ride out a burst (a slot frees as soon as some
/// instance ends or goes idle), short enough that a client learns the server is saturated well before its own
/// timeout, and is told when to retry.
pub const INSTANCE_WAIT: Duration = Duration::from_secs(10);

/// Store data of one instance.
pub struct HostState {
    table: ResourceTable,
    wasi: WasiCtx,
    http: WasiHttpCtx,
    hooks: OutboundPolicy,
    kv: KvCtx,
    vars: VarsCtx,
    limits: StoreLimits,
}

impl WasiView for HostState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl WasiHttpView for HostState {
    fn http(&mut self) -> WasiHttpCtxView<'_> {
        WasiHttpCtxView {
            ctx: &mut self.http,
            table: &mut self.table,
            hooks: &mut self.hooks,
        }
    }
}

impl SpinView for HostState {
    fn kv(&mut self) -> (&KvCtx, &mut ResourceTable) {
        (&self.kv, &mut self.table)
    }
    fn vars(&mut self) -> &mut VarsCtx {
        &mut self.vars
    }
}

/// Everything one component's instances share.
pub struct ComponentRuntime {
    engine: Engine,
    pre: ProxyPre<HostState>,
    id: String,
    policy: OutboundPolicy,
    kv: KvCtx,
    vars: VarsCtx,
    env: Vec<(String, String)>,
    /// Test-only: the guests' wall clock runs this far ahead (`crate::clock`).
    clock_skew: Option<Duration>,
    max_concurrent: usize,
    max_requests: usize,
    /// Room in the instance pool, shared by every component.
    gate: Arc<Gate>,
}

/// A loaded application.
pub struct App {
    /// The manifest.
    pub manifest: Manifest,
    /// Public routes.
    pub router: Router,
    /// Component id → request handler.
    pub handlers: HashMap<String, ProxyHandler<ComponentRuntime>>,
    /// Configured stores (for inspection and tests).
    pub stores: Arc<HashMap<String, SharedBackend>>,
    /// The barrier every answer waits on (writes durable before anyone outside sees them).
    pub durability: kv::Durability,
    /// [`LoadOptions::header_timeout`].
    pub header_timeout: Duration,
    /// [`LoadOptions::body_timeout`].
    pub body_timeout: Duration,
    /// [`LoadOptions::write_timeout`].
    pub write_timeout: Duration,
    /// The runtime config's variables providers (to read a variable as the app reads it).
    pub variables_providers: Vec<variables::EnvProvider>,
    engine: Engine,
    gate: Arc<Gate>,
}

/// The backstop for one request. A paid activation may legally run until its payment lease ends
/// (`esim402_core::paid::LEASE_SECS`: the largest dispatch budget and settlement wait fit inside it); cut sooner,
/// a payment still being honoured would be answered 500, its outcome unknown to the client. The slack covers the
/// host's own work around the guest (reading the body, the durability barrier).
const REQUEST_TIMEOUT: Duration =
    Duration::from_secs(esim402_core::paid::LEASE_SECS + REQUEST_TIMEOUT_SLACK_SECS);
/// What [`REQUEST_TIMEOUT`] allows beyond the lease.
const REQUEST_TIMEOUT_SLACK_SECS: u64 = 30;
const IDLE_TIMEOUT: Duration = Duration::from_secs(10);

/// The engine every component shares, with the host's pool ([`admission::POOL`]).
pub fn engine(cache_dir: Option<&Path>) -> anyhow::Result<Engine> {
    engine_with_pool(cache_dir, &admission::POOL)
}

/// [`engine`] with other pool totals (tests: a pool small enough to fill).
pub fn engine_with_pool(cache_dir: Option<&Path>, totals: &PoolTotals) -> anyhow::Result<Engine> {
    let mut cfg = Config::new();
    cfg.wasm_component_model(true);
    cfg.wasm_component_model_async(true);
    cfg.epoch_interruption(true);
    let mut pool = PoolingAllocationConfig::new();
    pool.total_component_instances(totals.component_instances)
        .total_core_instances(totals.core_instances)
        .total_memories(totals.memories)
        .total_tables(totals.tables)
        .total_stacks(totals.stacks)
        .max_memory_size(256 << 20)
        .max_core_instances_per_component(64)
        .max_memories_per_component(16)
        .max_tables_per_component(64)
        .max_unused_warm_slots(64)
        .linear_memory_keep_resident(1 << 20)
        .table_keep_resident(1 << 16)
        // A retired instance's memory is reset for the next one: with `PAGEMAP_SCAN` (Linux 6.7+) only the
        // pages it wrote, not the whole resident MiB of each of the composite's memories (a `memset` that was
        // ~3% of a 402's host CPU, an instance being retired every 128 requests). Elsewhere: as before.
        .pagemap_scan(wasmtime::Enabled::Auto);
    cfg.allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
    // `ESIM402_PROFILE=perfmap`: write /tmp/perf-<pid>.map so `perf report` names the wasm functions.
    if std::env::var("ESIM402_PROFILE").as_deref() == Ok("perfmap") {
        cfg.profiler(wasmtime::ProfilingStrategy::PerfMap);
    }
    if let Some(dir) = cache_dir {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("cannot create cache dir {}", dir.display()))?;
        let dir = dir
            .canonicalize()
            .with_context(|| format!("cannot resolve cache dir {}", dir.display()))?;
        let mut cc = wasmtime::CacheConfig::new();
        cc.with_directory(dir);
        cfg.cache(Some(wasmtime::Cache::new(cc)?));
    }
    Ok(Engine::new(&cfg)?)
}

/// The linker with every host interface guests may import.
pub fn linker(engine: &Engine) -> anyhow::Result<Linker<HostState>> {
    let mut linker = Linker::<HostState>::new(engine);
    wasmtime_wasi::p2::add_to_linker_async(&mut linker)?;
    wasmtime_wasi::p3::add_to_linker(&mut linker)?;
    wasmtime_wasi_http::p3::add_to_linker(&mut linker)?;
    wasmtime_wasi_http::p2::add_only_http_to_linker_async(&mut linker)?;
    interfaces::add_to_linker(&mut linker)?;
    Ok(linker)
}

/// Read a component source, with a hint to build first when it is missing.
fn read_source(manifest: &Manifest, id: &str, source: &str) -> anyhow::Result<Vec<u8>> {
    let path = manifest.resolve(source);
    std::fs::read(&path).with_context(|| {
        format!(
            "component {id}: cannot read {} (run `esim402 build` first)",
            path.display()
        )
    })
}

/// The bytes of a component, composed with its dependencies.
pub fn component_bytes(manifest: &Manifest, id: &str) -> anyhow::Result<Vec<u8>> {
    let decl = &manifest.components[id];
    let main = read_source(manifest, id, &decl.source)?;
    if decl.dependencies.is_empty() {
        return Ok(main);
    }
    let mut deps = Vec::new();
    for (name, dep) in &decl.dependencies {
        let (source, bytes) = match (&dep.component, &dep.path) {
            (Some(other), _) => (
                other.clone(),
                read_source(manifest, other, &manifest.components[other].source)?,
            ),
            (None, Some(path)) => (path.clone(), read_source(manifest, id, path)?),
            (None, None) => bail!("component {id}: dependency {name:?} has no source"),
        };
        let inherit = dep.inherit_configuration.clone().unwrap_or(Inherit::All(
            decl.dependencies_inherit_configuration.unwrap_or(false),
        ));
        deps.push(Dependency {
            name,
            export: dep.export.as_deref(),
            bytes,
            source,
            inherit,
        });
    }
    compose(
        Dependent {
            name: id,
            bytes: &main,
            sets_environment: !decl.environment.is_empty(),
        },
        deps,
    )
}

/// How long a component's start-up probe instance may take to instantiate. Instantiation runs the guest's
/// start functions and initialisers, normally in milliseconds; one that does not return would otherwise hold
/// start-up forever, the server never listening and nothing said why.
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(30);

/// A component's probe instance did not finish instantiating within [`PROBE_TIMEOUT`].
#[derive(Debug, thiserror::Error)]
#[error(
    "component {component}: its start-up instance was not ready within {} s (a start function or initialiser \
     that does not return?)",
    limit.as_secs_f64()
)]
pub struct ProbeTimedOut {
    /// The component's id.
    pub component: String,
    /// The time it had.
    pub limit: Duration,
}

/// An engine whose epoch a thread advances every 10 ms, for as long as the engine lives. Every store yields at
/// each tick ([`ComponentRuntime::new_instance`]), so wasm execution is interruptible: a guest that runs too long
/// gives the runtime the chance to time it out. Guests run only once this exists: [`Ticking::probe_cost`] is
/// where start-up runs them first.
struct Ticking(Engine);

impl Ticking {
    fn start(engine: &Engine) -> Self {
        let ticker = engine.weak();
        std::thread::spawn(move || {
            while let Some(engine) = ticker.upgrade() {
                engine.increment_epoch();
                drop(engine);
                std::thread::sleep(Duration::from_millis(10));
            }
        });
        Self(engine.clone())
    }

    /// What the instance `probe` makes of component `id` takes from the pool ([`InstanceCost::measure`]);
    /// [`ProbeTimedOut`] if it is not made within `limit`.
    async fn probe_cost<T>(
        &self,
        id: &str,
        probe: impl Future<Output = anyhow::Result<T>>,
        limit: Duration,
    ) -> anyhow::Result<InstanceCost> {
        match tokio::time::timeout(limit, InstanceCost::measure(&self.0, probe)).await {
            Ok(cost) => cost,
            Err(_) => Err(ProbeTimedOut {
                component: id.to_owned(),
                limit,
            }
            .into()),
        }
    }
}

impl App {
    /// Load, compose, compile and pre-instantiate every triggered component.
    pub async fn load(opts: &LoadOptions) -> anyhow::Result<Self> {
        let manifest = Manifest::load(&opts.manifest)?;
        let runtime = match &opts.runtime_config {
            Some(p) => RuntimeConfig::load(p, &manifest.dir)?,
            None => RuntimeConfig::spin_default(&manifest.dir),
        };
        let resolved = variables::resolve(&manifest, &opts.env, &runtime.variables_providers)?;
        tracing::debug!(variables = ?resolved, "variables resolved");

        // Open every store some component uses; an unknown label fails start-up, as in Spin.
        let mut stores: HashMap<String, SharedBackend> = HashMap::new();
        let mut networked: HashSet<String> = HashSet::new();
        for (id, c) in &manifest.components {
            for label in &c.key_value_stores {
                if stores.contains_key(label) {
                    continue;
                }
                let cfg = match &opts.kv_override {
                    Some(o) => o.clone(),
                    None => runtime
                        .key_value_stores
                        .get(label)
                        .cloned()
                        .with_context(|| format!("component {id} uses key-value store {label:?}, which the runtime config does not define"))?,
                };
                if matches!(cfg, StoreConfig::Redis(_)) {
                    networked.insert(label.clone());
                }
                stores.insert(
                    label.clone(),
                    kv::open(label, &cfg)
                        .await
                        .with_context(|| format!("key-value store {label:?}"))?,
                );
            }
        }
        let stores = Arc::new(stores);
        let durability = kv::Durability::new(stores.values().cloned());
        // One outbound connection pool for every component: keep-alive per origin, bounded.
        // `ESIM402_OUTBOUND_POOL=off`: a new connection per request (for measurements).
        let pool = (std::env::var("ESIM402_OUTBOUND_POOL").as_deref() != Ok("off"))
            .then(|| Arc::new(crate::pool::Pool::new(crate::pool::PoolLimits::default())));

        let clock_skew = crate::clock::skew()?;
        let engine = engine(opts.cache_dir.as_deref())?;
        // Before any guest runs, the probes below included: a guest yields only when the epoch moves.
        let ticking = Ticking::start(&engine);
        // Closed until every component's instance cost is known (below).
        let gate = Gate::new(opts.instance_wait);
        let mut worst = InstanceCost::default();
        let linker = linker(&engine)?;
        let router = Router::new(
            manifest
                .http_triggers
                .iter()
                .filter_map(|t| match &t.route {
                    RouteSpec::Path(p) => Some((p.clone(), t.component.clone())),
                    RouteSpec::Private { .. } => None,
                }),
        )?;
        // As Spin's loader: every component's source must be there, triggered or not (a manifest whose unused
        // component is missing its file would load here and fail under `spin up`).
        for (id, decl) in &manifest.components {
            let path = manifest.resolve(&decl.source);
            ensure!(
                path.is_file(),
                "component {id}: cannot read {} (run `esim402 build` first)",
                path.display()
            );
        }
        let triggered: BTreeMap<&str, ()> = manifest
            .http_triggers
            .iter()
            .map(|t| (t.component.as_str(), ()))
            .collect();

        let mut handlers = HashMap::new();
        for id in triggered.keys() {
            let decl = &manifest.components[*id];
            let bytes = component_bytes(&manifest, id)?;
            let component = Component::new(&engine, &bytes)
                .map_err(anyhow::Error::from)
                .with_context(|| format!("component {id}: compile"))?;
            let pre = linker
                .instantiate_pre(&component)
                .map_err(anyhow::Error::from)
                .with_context(|| format!("component {id}: link"))?;
            let pre = ProxyPre::P3(
                wasmtime_wasi_http::p3::bindings::ServicePre::new(pre)
                    .map_err(anyhow::Error::from)
                    .with_context(|| {
                        format!("component {id} does not export wasi:http/handler@0.3.0")
                    })?,
            );
            let hosts = decl
                .allowed_outbound_hosts
                .iter()
                .map(|h| {
                    let entry = expand(h, |v| resolved.app.get(v).cloned())?;
                    crate::outbound::check_templated(h, &entry)?;
                    Ok(entry)
                })
                .collect::<anyhow::Result<Vec<_>>>()
                .with_context(|| format!("component {id}: allowed_outbound_hosts"))?;
            let runtime = ComponentRuntime {
                engine: engine.clone(),
                pre,
                id: (*id).to_owned(),
                policy: OutboundPolicy::new(id, &hosts)
                    .with_context(|| format!("component {id}"))?
                    .pooled(pool.clone())
                    .durable(durability.clone()),
                kv: KvCtx {
                    allowed: Arc::new(
                        decl.key_value_stores
                            .iter()
                            .cloned()
                            .collect::<HashSet<_>>(),
                    ),
                    stores: stores.clone(),
                },
                vars: VarsCtx {
                    vars: resolved.per_component.get(*id).cloned().unwrap_or_default(),
                },
                env: decl
                    .environment
                    .iter()
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect(),
                clock_skew,
                max_concurrent: concurrent_reuse(
                    opts.max_concurrent_per_instance,
                    decl.key_value_stores.iter().any(|l| networked.contains(l)),
                ),
                max_requests: opts.max_requests_per_instance.max(1),
                gate: gate.clone(),
            };
            // One instance, made and dropped before serving, shows what each takes from the pool (and that the
            // component can be instantiated at all: a failure here would otherwise be every request's 500).
            let probe = async { runtime.new_instance().await.map_err(anyhow::Error::from) };
            let cost = ticking
                .probe_cost(id, probe, PROBE_TIMEOUT)
                .await
                .with_context(|| format!("component {id}: instantiate"))?;
            tracing::debug!(component = %id, ?cost, "instance cost");
            worst = worst.max(cost);
            handlers.insert((*id).to_owned(), ProxyHandler::new(runtime));
        }
        let capacity = admission::POOL.instances_of(&worst);
        if capacity == 0 {
            bail!("the instance pool cannot hold one instance ({worst:?})");
        }
        tracing::info!(instances = capacity, per_instance = ?worst, "instance pool");
        gate.open(capacity);
        Ok(Self {
            manifest,
            router,
            handlers,
            stores,
            durability,
            header_timeout: opts.header_timeout,
            body_timeout: opts.body_timeout,
            write_timeout: opts.write_timeout,
            variables_providers: runtime.variables_providers,
            engine,
            gate,
        })
    }

    /// The shared engine.
    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    /// Room in the instance pool.
    pub fn gate(&self) -> &Gate {
        &self.gate
    }
}

/// Spin's default for `--max-instance-concurrent-reuse-count`.
pub const SPIN_CONCURRENT_REUSE: usize = 16;

/// Requests one instance of a component serves at once. Chosen on the command line
/// (`--max-instance-concurrent-reuse-count`), it holds for every component; else it is Spin's 16, except for a
/// component using a store over the network (Redis), which gets one request per instance. A synchronous
/// `wasi:keyvalue` call (`increment`: the app's claims and counters) holds its instance, and so every request
/// on it, for a round trip to the store; requests on instances of their own overlap those waits. On SQLite
/// and in memory the call is work on the caller's thread anyway, and sharing an instance saves
/// instantiations (BENCHMARKS.md, "One request per instance on Redis").
pub fn concurrent_reuse(chosen: Option<usize>, uses_network_store: bool) -> usize {
    match chosen {
        Some(n) => n.max(1),
        None if uses_network_store => 1,
        None => SPIN_CONCURRENT_REUSE,
    }
}

/// Retires idle workers (at once when an instantiation waits for their slot) and is the backstop for requests
/// that run too long.
pub struct Expiry {
    sleep: Pin<Box<tokio::time::Sleep>>,
    demand: Demand,
}

impl WorkerExpiration for Expiry {
    fn poll(
        mut self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
        status: WorkerStatus,
        start: Instant,
    ) -> Poll<()> {
        let limit = match status {
            WorkerStatus::Idle => {
                if self.demand.poll(cx).is_ready() {
                    return Poll::Ready(());
                }
                IDLE_TIMEOUT
            }
            WorkerStatus::Requests | WorkerStatus::PostReturn => REQUEST_TIMEOUT,
        };
        let Some(deadline) = start.checked_add(limit) else {
            return Poll::Pending;
        };
        let deadline = tokio::time::Instant::from_std(deadline);
        if self.sleep.deadline() != deadline {
            self.sleep.as_mut().reset(deadline);
        }
        self.sleep.as_mut().poll(cx)
    }
}

/// Per-instance reuse policy.
pub struct Worker {
    max_concurrent: usize,
    max_requests: usize,
    /// Returned when the worker is dropped, which wasmtime-wasi-http does after [`WorkerState::drop`] has
    /// dropped the store.
    _slot: Slot,
}

impl WorkerState for Worker {
    type StoreData = HostState;
    type RequestData = ();

    fn should_accept_request(&self, concurrent: usize, total: usize) -> ShouldAccept {
        if total >= self.max_requests {
            ShouldAccept::Never
        } else if concurrent >= self.max_concurrent {
            ShouldAccept::No
        } else {
            ShouldAccept::Yes
        }
    }

    fn on_request_start(
        &self,
        _store: StoreContextMut<'_, HostState>,
        _req: (),
        _task: GuestTaskId,
    ) -> Pin<Box<dyn Future<Output = ()> + Send + Sync + 'static>> {
        Box::pin(tokio::time::sleep(REQUEST_TIMEOUT))
    }

    fn drop(&self, store: Store<HostState>, result: wasmtime::Result<()>) {
        match result {
            Ok(()) => {}
            // wasmtime-wasi-http reports a worker future dropped before it finished this way; at shutdown the
            // runtime drops idle workers. A real panic is also printed by the panic hook, so this is not lost.
            Err(e) if e.to_string() == "worker panicked" => {
                tracing::debug!(component = %store.data().hooks.component, "instance dropped before it finished");
            }
            Err(e) => {
                tracing::warn!(component = %store.data().hooks.component, error = %format!("{e:#}"), "instance ended with an error");
            }
        }
    }
}

impl ComponentRuntime {
    /// A new store and instance, without a slot: [`HandlerState::instantiate`] takes one first.
    async fn new_instance(&self) -> wasmtime::Result<(Store<HostState>, Proxy)> {
        let mut wasi = WasiCtxBuilder::new();
        wasi.inherit_stdout().inherit_stderr();
        for (k, v) in &self.env {
            wasi.env(k, v);
        }
        if let Some(ahead) = self.clock_skew {
            wasi.wall_clock(crate::clock::SkewedClock { ahead });
        }
        let state = HostState {
            table: ResourceTable::new(),
            wasi: wasi.build(),
            http: WasiHttpCtx::new(),
            hooks: self.policy.clone(),
            kv: self.kv.clone(),
            vars: self.vars.clone(),
            limits: StoreLimitsBuilder::new()
                .memory_size(256 << 20)
                .instances(128)
                .build(),
        };
        let mut store = Store::new(&self.engine, state);
        store.limiter(|s| &mut s.limits);
        store.set_epoch_deadline(1);
        store.epoch_deadline_async_yield_and_update(1);
        let proxy = self.pre.instantiate_async(&mut store).await?;
        Ok((store, proxy))
    }
}

impl HandlerState for ComponentRuntime {
    type StoreData = HostState;
    type WorkerExpiration = Expiry;
    type WorkerState = Worker;

    async fn instantiate(&self) -> wasmtime::Result<Instance<HostState, Expiry, Worker>> {
        // Room first: the pool refusing an instantiation would fail every request queued for this component.
        let (slot, (store, proxy)) = self.gate.instantiate(self.new_instance()).await?;
        tracing::debug!(component = %self.id, "new instance");
        Ok(Instance {
            store,
            proxy,
            view: <HostState as WasiHttpView>::http,
            expiration: Expiry {
                sleep: Box::pin(tokio::time::sleep(Duration::from_secs(86_400 * 365))),
                demand: slot.demand(),
            },
            state: Worker {
                max_concurrent: self.max_concurrent,
                max_requests: self.max_requests,
                _slot: slot,
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The half of [`a_non_unicode_environment_does_not_stop_the_host`] run in its child process; inert elsewhere.
    #[test]
    fn load_options_in_a_child_process() {
        if std::env::var_os("ESIM402_TEST_CHILD").is_none() {
            return;
        }
        let opts = LoadOptions::new("spin.toml");
        assert!(opts.env.contains_key("ESIM402_TEST_CHILD"));
        assert!(!opts.env.contains_key("ESIM402_TEST_NOT_UTF8"));
    }

    #[test]
    fn a_non_unicode_environment_does_not_stop_the_host() {
        use std::os::unix::ffi::OsStringExt;
        // A process's environment cannot be changed safely while other tests run: the check runs in a child.
        crate::child_test::passes("app::tests::load_options_in_a_child_process", |child| {
            child.env("ESIM402_TEST_CHILD", "1").env(
                "ESIM402_TEST_NOT_UTF8",
                std::ffi::OsString::from_vec(vec![b'x', 0xff]),
            );
        });
    }

    #[test]
    fn a_probe_instance_that_never_finishes_fails_start_up_naming_its_component() {
        use crate::admission::testing::TINY;
        // A start function that never returns.
        const SPINS: &str = r#"(component
            (core module $m (func $spin (loop $l (br $l))) (start $spin))
            (core instance (instantiate $m)))"#;
        // On a thread of its own: a guest that never yields would hold it for good, and this test must fail then,
        // not hang.
        let (done, outcome) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            let result = runtime.block_on(async {
                let engine = engine_with_pool(None, &TINY)?;
                let component = Component::new(&engine, SPINS)?;
                let ticking = Ticking::start(&engine);
                let probe = async {
                    // As every instance's store is set up ([`ComponentRuntime::new_instance`]).
                    let mut store = Store::new(&engine, ());
                    store.set_epoch_deadline(1);
                    store.epoch_deadline_async_yield_and_update(1);
                    Linker::new(&engine)
                        .instantiate_async(&mut store, &component)
                        .await?;
                    anyhow::Ok(store)
                };
                ticking
                    .probe_cost("spinner", probe, Duration::from_millis(200))
                    .await
            });
            let _ = done.send(result.map_err(|e| format!("{e:#}")));
        });
        let Ok(result) = outcome.recv_timeout(Duration::from_secs(20)) else {
            panic!("the probe instance was never given up");
        };
        let Err(err) = result else {
            panic!("a start function that never returns was instantiated");
        };
        assert!(err.contains("component spinner"), "{err}");
        assert!(err.contains("not ready within 0.2 s"), "{err}");
    }

    #[test]
    fn a_request_may_outlive_its_payment_lease() {
        // A request cut before its lease ends answers 500 for a payment that is still being honoured.
        assert!(
            REQUEST_TIMEOUT >= Duration::from_secs(esim402_core::paid::LEASE_SECS + 30),
            "REQUEST_TIMEOUT {REQUEST_TIMEOUT:?} leaves no slack after the {} s payment lease",
            esim402_core::paid::LEASE_SECS
        );
    }

    #[test]
    fn one_request_per_instance_by_default_only_on_a_network_store() {
        assert_eq!(concurrent_reuse(None, false), SPIN_CONCURRENT_REUSE);
        assert_eq!(concurrent_reuse(None, true), 1);
        // The command line wins either way.
        assert_eq!(concurrent_reuse(Some(4), true), 4);
        assert_eq!(concurrent_reuse(Some(4), false), 4);
        assert_eq!(concurrent_reuse(Some(0), false), 1);
    }
}
