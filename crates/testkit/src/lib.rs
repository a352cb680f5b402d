//! Per-component tests in wasmtime: [`Kit`] loads **one** built component (`build/wasm/<name>.wasm`, made by
//! `esim402 build`) with nothing else around it, gives it the host boundary a test controls — an in-memory
//! key-value store, variables, and outbound HTTP answered by a script — and calls its exported WIT functions
//! through bindings generated from `wit/facilitator.wit` (world `testkit`).
//!
//! ```ignore
//! let kit = Kit::builder("dispatch").var("smdp_url", "http://smdp.test").allow("http://smdp.test")
//!     .respond(|req| Scripted::json(200, r#"{"header":{...}}"#)).build().await?;
//! let quote = kit.call(async |a, g| g.dispatch().call_price(a, request).await).await?;
//! ```
//!
//! Every call runs inside `Store::run_concurrent`, exactly as the host runs the components' async exports.
//! Outbound requests go through the same [`OutboundPolicy`] check as in `esim402 up` (a denied destination fails
//! in the guest with `HttpRequestDenied`) and are recorded for assertions.
#![deny(missing_docs)]

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context as _;
use bytes::Bytes;
use esim402_host::interfaces::{self, KvCtx, SpinView, VarsCtx};
use esim402_host::kv::{MemoryStore, SharedBackend};
use esim402_host::outbound::OutboundPolicy;
use http_body_util::{BodyExt, Full};
use wasmtime::component::{Component, Instance, Linker, ResourceTable};
use wasmtime::{Config, Engine, Store};
use wasmtime_wasi::{WasiCtx, WasiCtxBuilder, WasiCtxView, WasiView};
use wasmtime_wasi_http::{
    RequestOptions, WasiBody, WasiHttpCtx, WasiHttpCtxView, WasiHttpHooks, WasiHttpView,
};

/// Bindings for every interface the domain components export.
pub mod bindings {
    #![allow(missing_docs, reason = "generated code")]
    wasmtime::component::bindgen!({
        path: "../../wit",
        world: "esim402:facilitator/testkit",
        exports: { default: async | store },
    });
}

pub use bindings::esim402::types::types;
use bindings::exports::esim402::dispatch::dispatch;
use bindings::exports::esim402::invoices::invoices;
pub use bindings::exports::esim402::metering::metering;
use bindings::exports::esim402::verifier::verifier;
pub use wasmtime::component::Accessor;

/// One outbound request the component made.
#[derive(Debug, Clone)]
pub struct Recorded {
    /// HTTP method.
    pub method: String,
    /// Full URI.
    pub uri: String,
    /// Request headers.
    pub headers: Vec<(String, String)>,
    /// Request body.
    pub body: Bytes,
    /// False if the policy denied it (the script never saw it).
    pub allowed: bool,
}

impl Recorded {
    /// The body parsed as JSON.
    pub fn json(&self) -> serde_json::Result<serde_json::Value> {
        serde_json::from_slice(&self.body)
    }

    /// A header value by (case-insensitive) name.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// How the script answers one request.
#[derive(Debug, Clone)]
pub enum Scripted {
    /// An HTTP response.
    Response {
        /// Status code.
        status: u16,
        /// Headers.
        headers: Vec<(String, String)>,
        /// Body.
        body: Bytes,
        /// Delay before answering.
        delay: Duration,
    },
    /// The transport fails (connection refused).
    Refused,
    /// The peer never answers: the request fails after `after` with a connection timeout.
    Timeout {
        /// How long the guest waits first.
        after: Duration,
    },
    /// Send it for real (e.g. to a simulator on loopback), as `esim402 up` would.
    Forward,
}

impl Scripted {
    /// A JSON response.
    pub fn json(status: u16, body: impl Into<String>) -> Self {
        Self::Response {
            status,
            headers: vec![("content-type".into(), "application/json".into())],
            body: Bytes::from(body.into()),
            delay: Duration::ZERO,
        }
    }

    /// A response with no body.
    pub fn status(status: u16) -> Self {
        Self::Response {
            status,
            headers: Vec::new(),
            body: Bytes::new(),
            delay: Duration::ZERO,
        }
    }

    /// Add a response header.
    #[must_use]
    pub fn with_header(mut self, name: &str, value: &str) -> Self {
        if let Self::Response { headers, .. } = &mut self {
            headers.push((name.into(), value.into()));
        }
        self
    }
}

type Responder = Arc<dyn Fn(&Recorded) -> Scripted + Send + Sync>;

/// Outbound HTTP at the host boundary: policy check, record, answer from the script.
#[derive(Clone)]
struct ScriptedHttp {
    policy: OutboundPolicy,
    responder: Responder,
    log: Arc<Mutex<Vec<Recorded>>>,
}

type IoFuture = Box<dyn Future<Output = Result<(), wasmtime_wasi_http::Error>> + Send>;

impl WasiHttpHooks for ScriptedHttp {
    fn send_request(
        &mut self,
        request: http::Request<WasiBody>,
        options: Option<RequestOptions>,
        _response_result: IoFuture,
    ) -> Box<
        dyn Future<Output = Result<(http::Response<WasiBody>, IoFuture), wasmtime_wasi_http::Error>>
            + Send,
    > {
        let this = self.clone();
        Box::new(async move {
            let allowed = this.policy.allows_uri(request.uri());
            let (parts, body) = request.into_parts();
            let body = body.collect().await?.to_bytes();
            let forward = (parts.clone(), body.clone());
            let rec = Recorded {
                method: parts.method.to_string(),
                uri: parts.uri.to_string(),
                headers: parts
                    .headers
                    .iter()
                    .map(|(k, v)| {
                        (
                            k.as_str().to_owned(),
                            String::from_utf8_lossy(v.as_bytes()).into_owned(),
                        )
                    })
                    .collect(),
                body,
                allowed,
            };
            let answer = allowed.then(|| (this.responder)(&rec));
            if let Ok(mut log) = this.log.lock() {
                log.push(rec);
            }
            match answer {
                None => Err(wasmtime_wasi_http::Error::HttpRequestDenied),
                Some(Scripted::Forward) => {
                    let (parts, body) = forward;
                    let request = http::Request::from_parts(
                        parts,
                        Full::new(body)
                            .map_err(|never| match never {})
                            .boxed_unsync(),
                    );
                    let (response, io) =
                        wasmtime_wasi_http::default_send_request(request, options).await?;
                    Ok((
                        response.map(BodyExt::boxed_unsync),
                        Box::new(io) as IoFuture,
                    ))
                }
                Some(Scripted::Refused) => Err(wasmtime_wasi_http::Error::ConnectionRefused),
                Some(Scripted::Timeout { after }) => {
                    tokio::time::sleep(after).await;
                    Err(wasmtime_wasi_http::Error::ConnectionTimeout)
                }
                Some(Scripted::Response {
                    status,
                    headers,
                    body,
                    delay,
                }) => {
                    // A zero delay answers at once: `sleep(0)` would still wait for tokio's next timer
                    // tick (about 1 ms), which benchmarks through the kit would count as the component's.
                    if !delay.is_zero() {
                        tokio::time::sleep(delay).await;
                    }
                    let mut builder = http::Response::builder().status(status);
                    for (k, v) in headers {
                        builder = builder.header(k, v);
                    }
                    let response = builder
                        .body(
                            Full::new(body)
                                .map_err(|never| match never {})
                                .boxed_unsync(),
                        )
                        .map_err(|_| wasmtime_wasi_http::Error::HttpResponseIncomplete)?;
                    Ok((response, Box::new(async { Ok(()) }) as IoFuture))
                }
            }
        })
    }
}

/// Store data of the component under test.
pub struct KitState {
    table: ResourceTable,
    wasi: WasiCtx,
    http: WasiHttpCtx,
    hooks: ScriptedHttp,
    kv: KvCtx,
    vars: VarsCtx,
}

impl WasiView for KitState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl WasiHttpView for KitState {
    fn http(&mut self) -> WasiHttpCtxView<'_> {
        WasiHttpCtxView {
            ctx: &mut self.http,
            table: &mut self.table,
            hooks: &mut self.hooks,
        }
    }
}

impl SpinView for KitState {
    fn kv(&mut self) -> (&KvCtx, &mut ResourceTable) {
        (&self.kv, &mut self.table)
    }
    fn vars(&mut self) -> &mut VarsCtx {
        &mut self.vars
    }
}

/// The exports of the component under test; each accessor fails if the component does not export it.
pub struct Exports {
    invoices: Option<invoices::Guest>,
    verifier: Option<verifier::Guest>,
    metering: Option<metering::Guest>,
    dispatch: Option<dispatch::Guest>,
}

fn missing(name: &str) -> ! {
    panic!("the component under test does not export esim402:{name}/{name}")
}

impl Exports {
    /// `esim402:invoices/invoices`.
    pub fn invoices(&self) -> &invoices::Guest {
        self.invoices
            .as_ref()
            .unwrap_or_else(|| missing("invoices"))
    }
    /// `esim402:verifier/verifier`.
    pub fn verifier(&self) -> &verifier::Guest {
        self.verifier
            .as_ref()
            .unwrap_or_else(|| missing("verifier"))
    }
    /// `esim402:metering/metering`.
    pub fn metering(&self) -> &metering::Guest {
        self.metering
            .as_ref()
            .unwrap_or_else(|| missing("metering"))
    }
    /// `esim402:dispatch/dispatch`.
    pub fn dispatch(&self) -> &dispatch::Guest {
        self.dispatch
            .as_ref()
            .unwrap_or_else(|| missing("dispatch"))
    }
}

/// Configures a [`Kit`].
pub struct Builder {
    name: String,
    wasm: Option<PathBuf>,
    vars: HashMap<String, String>,
    allowed: Vec<String>,
    responder: Responder,
    store: Option<SharedBackend>,
}

impl Builder {
    /// Set a variable the component reads with `spin:variables`.
    #[must_use]
    pub fn var(mut self, name: &str, value: &str) -> Self {
        self.vars.insert(name.to_owned(), value.to_owned());
        self
    }

    /// Allow outbound requests to a destination (Spin `allowed_outbound_hosts` syntax).
    #[must_use]
    pub fn allow(mut self, host: &str) -> Self {
        self.allowed.push(host.to_owned());
        self
    }

    /// Answer every allowed outbound request with `f`.
    #[must_use]
    pub fn respond(mut self, f: impl Fn(&Recorded) -> Scripted + Send + Sync + 'static) -> Self {
        self.responder = Arc::new(f);
        self
    }

    /// Use this key-value store as `default` (to share state between kits or inspect it).
    #[must_use]
    pub fn store(mut self, store: SharedBackend) -> Self {
        self.store = Some(store);
        self
    }

    /// Load from an explicit path instead of `build/wasm/<name>.wasm`.
    #[must_use]
    pub fn wasm(mut self, path: impl Into<PathBuf>) -> Self {
        self.wasm = Some(path.into());
        self
    }

    /// Compile (cached per process and on disk), link and instantiate.
    pub async fn build(self) -> anyhow::Result<Kit> {
        let path = self.wasm.unwrap_or_else(|| {
            repo_root()
                .join("build/wasm")
                .join(format!("{}.wasm", self.name))
        });
        let engine = engine()?;
        let component = Component::from_file(engine, &path)
            .map_err(anyhow::Error::from)
            .with_context(|| format!("load {} (run `esim402 build` first)", path.display()))?;
        let mut linker = Linker::<KitState>::new(engine);
        wasmtime_wasi::p2::add_to_linker_async(&mut linker)?;
        wasmtime_wasi::p3::add_to_linker(&mut linker)?;
        wasmtime_wasi_http::p3::add_to_linker(&mut linker)?;
        wasmtime_wasi_http::p2::add_only_http_to_linker_async(&mut linker)?;
        interfaces::add_to_linker(&mut linker)?;

        let store_backend = self
            .store
            .unwrap_or_else(|| Arc::new(MemoryStore::default()) as SharedBackend);
        let log = Arc::new(Mutex::new(Vec::new()));
        let state = KitState {
            table: ResourceTable::new(),
            wasi: WasiCtxBuilder::new().inherit_stderr().build(),
            http: WasiHttpCtx::new(),
            hooks: ScriptedHttp {
                policy: OutboundPolicy::new(&self.name, &self.allowed)?,
                responder: self.responder,
                log: log.clone(),
            },
            kv: KvCtx {
                allowed: Arc::new(HashSet::from(["default".to_owned()])),
                stores: Arc::new(HashMap::from([(
                    "default".to_owned(),
                    store_backend.clone(),
                )])),
            },
            vars: VarsCtx {
                vars: Arc::new(self.vars),
            },
        };
        let mut store = Store::new(engine, state);
        let pre = linker
            .instantiate_pre(&component)
            .map_err(anyhow::Error::from)
            .with_context(|| format!("link {}", self.name))?;
        let instance: Instance = pre
            .instantiate_async(&mut store)
            .await
            .map_err(anyhow::Error::from)
            .with_context(|| format!("instantiate {}", self.name))?;
        let exports = Exports {
            invoices: load(invoices::GuestIndices::new(&pre), &mut store, &instance),
            verifier: load(verifier::GuestIndices::new(&pre), &mut store, &instance),
            metering: load(metering::GuestIndices::new(&pre), &mut store, &instance),
            dispatch: load(dispatch::GuestIndices::new(&pre), &mut store, &instance),
        };
        Ok(Kit {
            store,
            exports: Arc::new(exports),
            kv: store_backend,
            log,
        })
    }
}

fn load<G, I>(
    indices: wasmtime::Result<I>,
    store: &mut Store<KitState>,
    instance: &Instance,
) -> Option<G>
where
    I: LoadGuest<G>,
{
    indices.ok()?.load_guest(store, instance).ok()
}

/// `GuestIndices::load` for each generated interface.
trait LoadGuest<G> {
    fn load_guest(&self, store: &mut Store<KitState>, instance: &Instance) -> wasmtime::Result<G>;
}

macro_rules! load_guest {
    ($($m:ident),*) => {$(
        impl LoadGuest<$m::Guest> for $m::GuestIndices {
            fn load_guest(&self, store: &mut Store<KitState>, instance: &Instance) -> wasmtime::Result<$m::Guest> {
                self.load(store, instance)
            }
        }
    )*};
}
load_guest!(invoices, verifier, metering, dispatch);

/// One component instance under test.
pub struct Kit {
    store: Store<KitState>,
    exports: Arc<Exports>,
    kv: SharedBackend,
    log: Arc<Mutex<Vec<Recorded>>>,
}

impl Kit {
    /// Start configuring a kit for `build/wasm/<name>.wasm`. Its variables start with `payment_network` at
    /// `spin.toml`'s default, the local dev chain (every component inherits it there; dispatch and metering
    /// read it to tell a development deployment from another: kernel `deployment`).
    pub fn builder(name: &str) -> Builder {
        Builder {
            name: name.to_owned(),
            wasm: None,
            vars: HashMap::from([("payment_network".to_owned(), "eip155:31337".to_owned())]),
            allowed: Vec::new(),
            responder: Arc::new(|r: &Recorded| {
                panic!("unscripted outbound request: {} {}", r.method, r.uri)
            }),
            store: None,
        }
    }

    /// Run `f` with the store's accessor and the component's exports, inside `run_concurrent`.
    pub async fn call<R: Send + 'static>(
        &mut self,
        f: impl AsyncFnOnce(&Accessor<KitState>, &Exports) -> wasmtime::Result<R> + Send,
    ) -> anyhow::Result<R> {
        let exports = self.exports.clone();
        let out = self
            .store
            .run_concurrent(async move |a| f(a, &exports).await)
            .await
            .map_err(anyhow::Error::from)?
            .map_err(anyhow::Error::from)?;
        Ok(out)
    }

    /// The component's `default` key-value store.
    pub fn kv(&self) -> &SharedBackend {
        &self.kv
    }

    /// The latest value of the cell at `key` in the `default` store, as the components read it (the data inside
    /// the versioned-cell envelope; `None` if absent or removed). Raw bytes: [`Kit::kv`].
    pub async fn kv_get(&self, key: &str) -> Option<Vec<u8>> {
        let raw = self.kv.get(key).await.ok().flatten()?;
        esim402_core::store::cell::Stored::decode(&raw).ok()?.data
    }

    /// Overwrite the data of the cell at `key` *in place* (same version), as time passing or another component
    /// would have left it. Test set-up only: a real writer goes through the cell protocol.
    pub async fn kv_put(&self, key: &str, data: &[u8]) {
        use esim402_core::store::cell::Stored;
        let head = self.kv.get(key).await.ok().flatten();
        let (version, token) = head
            .as_deref()
            .and_then(|b| Stored::decode(b).ok())
            .map_or((0, 0), |s| (s.version, s.token));
        let bytes = Stored {
            version,
            token,
            data: Some(data.to_vec()),
        }
        .encode();
        if let Err(e) = self.kv.set(key, &bytes).await {
            panic!("test kit: cannot write {key}: {e}");
        }
    }

    /// Every outbound request so far, in order.
    pub fn requests(&self) -> Vec<Recorded> {
        self.log.lock().map(|l| l.clone()).unwrap_or_default()
    }
}

/// The built-in carrier catalog with no carrier signing receipts (its `receipt_signer` lines dropped): a
/// `carrier_catalog` a deployment outside development may run with (the built-in signers' keys are public,
/// and refused there: kernel `deployment`).
pub fn catalog_without_signers() -> String {
    esim402_core::esim::catalog::BUILTIN_TOML
        .lines()
        .filter(|l| !l.trim_start().starts_with("receipt_signer"))
        .map(|l| format!("{l}\n"))
        .collect()
}

/// The repository root (holds `build/wasm`).
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .ancestors()
        .nth(2)
        .map_or_else(|| PathBuf::from("."), Path::to_path_buf)
}

/// One engine per test process: compiling a component once serves every test that loads it.
fn engine() -> anyhow::Result<&'static Engine> {
    static ENGINE: std::sync::OnceLock<Engine> = std::sync::OnceLock::new();
    if let Some(e) = ENGINE.get() {
        return Ok(e);
    }
    let mut cfg = Config::new();
    cfg.wasm_component_model(true);
    cfg.wasm_component_model_async(true);
    let dir = std::env::temp_dir().join("esim402-testkit-cache");
    std::fs::create_dir_all(&dir)?;
    let mut cc = wasmtime::CacheConfig::new();
    cc.with_directory(dir);
    cfg.cache(Some(wasmtime::Cache::new(cc)?));
    let engine = Engine::new(&cfg)?;
    Ok(ENGINE.get_or_init(|| engine))
}
