//! `esim402`: build, check and serve the esim402 Spin application (or any Spin app this host supports).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context;
use clap::{Parser, Subcommand};
use esim402_host::app::{App, LoadOptions};
use esim402_host::devstack::DevStack;
use esim402_host::devstack::lock::DirLock;
use esim402_host::manifest::Manifest;
use esim402_host::runtime_config::{RuntimeConfig, StoreConfig};

/// The request path allocates and frees many small objects on every tokio worker (hyper, wasmtime's
/// component-model task state); mimalloc's per-thread heaps serve them faster than glibc's malloc
/// (BENCHMARKS.md, "The 402 path").
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "esim402",
    version,
    about = "Run the esim402 Spin application on wasmtime, without the Spin CLI"
)]
struct Cli {
    /// The application manifest.
    #[arg(long, short = 'f', global = true, default_value = "spin.toml")]
    from: PathBuf,
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Build every component (runs each `[component.<id>.build] command`).
    Build {
        /// Only these components.
        #[arg(long = "component-id", short = 'c')]
        components: Vec<String>,
        /// Serve the app after building.
        #[arg(long)]
        up: bool,
        #[command(flatten)]
        serve: ServeArgs,
    },
    /// Serve the app.
    Up {
        /// Build the components first.
        #[arg(long)]
        build: bool,
        #[command(flatten)]
        serve: ServeArgs,
    },
    /// Start the development stack on its own, for `spin up`: the SM-DP+ simulator and anvil with the test
    /// token. Writes the `SPIN_VARIABLE_*` settings to `.spin/devstack.env` (and the facts to
    /// `.spin/devstack.json`), then runs the command after `--` with them (e.g. `esim402 devstack -- spin up`)
    /// and stops the stack when it exits; without a command it runs until Ctrl-C.
    Devstack {
        /// Where the app is served: the simulator's download-progress callbacks go there.
        #[arg(long, default_value = "http://127.0.0.1:3000")]
        app_url: String,
        /// Directory for `devstack.env` and `devstack.json` (default: `.spin` beside the manifest).
        #[arg(long)]
        out_dir: Option<PathBuf>,
        /// The command to run with the settings in its environment.
        #[arg(last = true)]
        command: Vec<String>,
    },
    /// Validate the manifest, runtime config and variables, and compose + compile every component.
    Check {
        /// Runtime config file.
        #[arg(long)]
        runtime_config_file: Option<PathBuf>,
    },
}

#[derive(clap::Args)]
struct ServeArgs {
    /// Address to listen on (loopback by default).
    #[arg(long, default_value = "127.0.0.1:3000")]
    listen: SocketAddr,
    /// Runtime config file (Spin format).
    #[arg(long)]
    runtime_config_file: Option<PathBuf>,
    /// Keep key-value data in memory only (nothing persists).
    #[arg(long)]
    memory_kv: bool,
    /// Do not start the embedded development stack (SM-DP+ simulator, anvil dev chain with the test token);
    /// configure real endpoints instead.
    #[arg(long)]
    no_dev_stack: bool,
    /// Requests one component instance serves before it is retired (Spin's flag; default 128).
    #[arg(long, default_value_t = 128, value_parser = clap::value_parser!(u32).range(1..))]
    max_instance_reuse_count: u32,
    /// Requests one component instance serves at once (Spin's flag). Default: Spin's 16, or 1 for a component
    /// whose key-value store is Redis. An instance's synchronous `wasi:keyvalue` calls (`increment`) hold all
    /// of its requests: a lower figure spreads concurrent requests over more instances (more memory) so that
    /// those calls overlap.
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
    max_instance_concurrent_reuse_count: Option<u32>,
    /// Run the operator's jobs (`POST /admin/refunds/run`, `POST /admin/cleanup/run`, with `admin_token`) every
    /// this many seconds (at most a day), as a cron job would; 0: never. Default: 60 with the dev stack, else
    /// never.
    #[arg(long, value_parser = clap::value_parser!(u64).range(0..=86_400))]
    jobs_every: Option<u64>,
}

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("ESIM402_LOG")
                .unwrap_or_else(|_| "esim402=info,esim402_host=info,warn".into()),
        )
        .with_writer(std::io::stderr)
        // Colours only for a terminal: a log file or a collector gets plain text.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let cli = Cli::parse();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    match cli.command {
        Cmd::Build {
            components,
            up,
            serve,
        } => {
            let manifest = Manifest::load(&cli.from)?;
            esim402_host::build::build(&manifest, &components)?;
            if up {
                rt.block_on(run(&cli.from, serve))?;
            }
            Ok(())
        }
        Cmd::Up { build, serve } => {
            if build {
                esim402_host::build::build(&Manifest::load(&cli.from)?, &[])?;
            }
            rt.block_on(run(&cli.from, serve))
        }
        Cmd::Devstack {
            app_url,
            out_dir,
            command,
        } => {
            let code = rt.block_on(devstack(&cli.from, &app_url, out_dir, &command))?;
            std::process::exit(code);
        }
        Cmd::Check {
            runtime_config_file,
        } => rt.block_on(async {
            let manifest = Manifest::load(&cli.from)?;
            if let Some(rc) = &runtime_config_file {
                RuntimeConfig::load(rc, &manifest.dir)?;
            }
            let mut opts = LoadOptions::new(&cli.from);
            opts.runtime_config = runtime_config_file;
            opts.kv_override = Some(StoreConfig::Memory);
            let app = App::load(&opts).await?;
            println!(
                "ok: {} ({} routes, {} components)",
                app.manifest.name,
                app.router.routes().len(),
                app.manifest.components.len()
            );
            Ok(())
        }),
    }
}

/// A stop request: Ctrl-C locally, SIGTERM from process managers and Kubernetes (SpinKube). Listened for from
/// the moment a command that starts children begins ([`Stop::listen`]), not only once it serves: until a
/// handler is installed, SIGTERM ends the process at once, and a dev stack still starting (its simulators and
/// anvil already running) was left behind. A stop during start-up now unwinds it, stopping each child.
#[derive(Clone)]
struct Stop(tokio::sync::watch::Receiver<bool>);

impl Stop {
    /// Install the handlers now (from here on SIGTERM and Ctrl-C no longer end the process by themselves) and
    /// watch for either. Must run inside the runtime.
    fn listen() -> anyhow::Result<Self> {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .context("cannot listen for SIGTERM")?;
        let mut int = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())
            .context("cannot listen for Ctrl-C")?;
        let (tx, rx) = tokio::sync::watch::channel(false);
        tokio::spawn(async move {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
            let _ = tx.send(true);
        });
        Ok(Self(rx))
    }

    /// Resolves once a stop was requested (at once if it already was).
    async fn requested(mut self) {
        if self.0.wait_for(|stopped| *stopped).await.is_err() {
            // The watcher is gone without a stop (cannot happen while the runtime runs): never resolve.
            std::future::pending::<()>().await;
        }
    }
}

/// What a command does when it is stopped before it got going: say so and end without an error.
fn stopped_during_start_up() {
    eprintln!("esim402: stopped while starting (every process it had started is stopped)");
}

/// `esim402 devstack`: the stack alone, its settings in an env file, optionally a command run with them.
/// Returns the exit code.
async fn devstack(
    manifest: &std::path::Path,
    app_url: &str,
    out_dir: Option<PathBuf>,
    command: &[String],
) -> anyhow::Result<i32> {
    let stop = Stop::listen()?;
    let app_dir = Manifest::load(manifest)?.dir;
    let env: std::collections::HashMap<String, String> = esim402_host::variables::process_env()
        .into_iter()
        .filter(|(k, _)| k.starts_with("SPIN_VARIABLE_"))
        .collect();
    let dir = out_dir.unwrap_or_else(|| app_dir.join(".spin"));
    // One stack per facts directory: another one's `devstack.json` and `devstack.env` stay its own.
    // Taking it stops what a killed earlier stack here left running (`devstack::children`).
    let lock = DirLock::acquire(&dir)?;
    // The `.env` that counts is the one `spin up` (or `esim402 up`) reads: the current directory's.
    let stack = tokio::select! {
        stack = DevStack::start_with_dotenv(&app_dir, Path::new("."), app_url, &env, &[], Some(lock.record())) => stack?,
        () = stop.clone().requested() => {
            stopped_during_start_up();
            return Ok(0);
        }
    };
    let facts = stack.write_facts_to(&dir)?;
    let env_file = stack.write_env(&dir)?;
    eprintln!("Dev stack for an app at {app_url} ({}):", facts.display());
    for (k, v) in &stack.facts {
        match v {
            _ if esim402_host::devstack::secret_fact(k) => {
                eprintln!("  {k}: (in {})", facts.display());
            }
            serde_json::Value::String(s) => eprintln!("  {k}: {s}"),
            other => eprintln!("  {k}: {other}"),
        }
    }
    eprintln!("Settings for the app: {}", env_file.display());
    // One machine-readable line on stdout, for scripts and tests.
    println!("devstack ready: {}", env_file.display());
    if command.is_empty() {
        eprintln!(
            "Run the app with them, e.g.:\n  set -a; . {}; set +a; spin up\nor next time: esim402 devstack -- spin up\nCtrl-C stops the stack.",
            env_file.display()
        );
        stop.requested().await;
        drop(stack);
        return Ok(0);
    }
    let mut child = tokio::process::Command::new(&command[0])
        .args(&command[1..])
        .envs(stack.env.iter().cloned())
        .spawn()
        .with_context(|| format!("cannot start {:?}", command[0]))?;
    // On record too: should this process be killed, the next stack here stops the command it left running.
    let pid = child.id();
    let program = std::ffi::OsStr::new(&command[0]);
    if let Some(Err(e)) = pid.map(|pid| lock.record().add("command", pid, program)) {
        tracing::warn!(error = %format!("{e:#}"), "dev stack: the command is not on record");
    }
    let code = tokio::select! {
        status = child.wait() => status?.code().unwrap_or(1),
        () = stop.requested() => {
            // Pass the stop on (by PID) and give the command time to finish.
            if let Some(pid) = child.id() {
                esim402_host::devstack::send_signal(pid, "TERM");
            }
            match tokio::time::timeout(std::time::Duration::from_secs(10), child.wait()).await {
                Ok(status) => status?.code().unwrap_or(1),
                Err(_) => {
                    child.kill().await?;
                    1
                }
            }
        }
    };
    if let Some(pid) = pid {
        lock.record().remove(pid);
    }
    drop(stack);
    Ok(code)
}

async fn run(manifest: &std::path::Path, args: ServeArgs) -> anyhow::Result<()> {
    let stop = Stop::listen()?;
    let mut opts = LoadOptions::new(manifest);
    opts.runtime_config = args.runtime_config_file;
    opts.max_requests_per_instance = args.max_instance_reuse_count as usize;
    opts.max_concurrent_per_instance = args.max_instance_concurrent_reuse_count.map(|n| n as usize);
    if args.memory_kv {
        opts.kv_override = Some(StoreConfig::Memory);
    }
    // Bind first: the dev stack's callbacks need the real address (the port may be 0).
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    let addr = listener.local_addr()?;
    let (stack, _lock) = if args.no_dev_stack {
        (DevStack::default(), None)
    } else {
        let app_dir = Manifest::load(manifest)?.dir;
        // Before anything under `.spin` is touched: a second `esim402 up` here would empty the first one's
        // store under it.
        // Taking it also stops what a killed earlier stack here left running (`devstack::children`).
        let lock = DirLock::acquire(&app_dir.join(".spin"))?;
        // The current directory's `.env`: the one `App::load` reads, as Spin does.
        let app_url = format!("http://{addr}");
        // A variable the runtime config's `env` providers set is the app's, not the stack's to fill in.
        let providers = match &opts.runtime_config {
            Some(rc) => RuntimeConfig::load(rc, &app_dir)?.variables_providers,
            None => Vec::new(),
        };
        let start = DevStack::start_with_dotenv(
            &app_dir,
            Path::new("."),
            &app_url,
            &opts.env,
            &providers,
            Some(lock.record()),
        );
        let stack = tokio::select! {
            stack = start => stack?,
            () = stop.clone().requested() => {
                stopped_during_start_up();
                return Ok(());
            }
        };
        opts.env.extend(stack.env.iter().cloned());
        // A fresh dev chain gets a fresh store (unless the store was chosen explicitly): the app's state is
        // bound to the chain it was made on.
        if stack.started_chain() && opts.runtime_config.is_none() && opts.kv_override.is_none() {
            let path = DevStack::fresh_store(&app_dir)?;
            eprintln!(
                "dev stack: a fresh chain, so a fresh key-value store: {}",
                path.display()
            );
            opts.kv_override = Some(StoreConfig::Sqlite(path));
        }
        (stack, Some(lock))
    };
    // Loading compiles (or reads from the cache) every component: seconds, during which a stop unwinds the
    // stack too.
    let app = tokio::select! {
        app = App::load(&opts) => Arc::new(app?),
        () = stop.clone().requested() => {
            stopped_during_start_up();
            return Ok(());
        }
    };
    if !stack.facts.is_empty() {
        let path = stack.write_facts(&app.manifest.dir)?;
        eprintln!("Dev stack ({}):", path.display());
        for (k, v) in &stack.facts {
            match v {
                // Dev keys stay in the file; the console (and any log capturing it) never shows a key.
                _ if esim402_host::devstack::secret_fact(k) => {
                    eprintln!("  {k}: (in {})", path.display());
                }
                serde_json::Value::String(s) => eprintln!("  {k}: {s}"),
                other => eprintln!("  {k}: {other}"),
            }
        }
    }
    if stack.facts.contains_key("demo_agent_private_key") {
        eprintln!(
            "Pay for an eSIM with the funded demo agent (official x402 Python client):\n  \
             tools/.venv/bin/python scripts/demo.py --url http://{addr}"
        );
        if let Some(traffic) = stack.facts.get("traffic_url").and_then(|v| v.as_str()) {
            eprintln!(
                "Watch a balance move (activation, simulated usage, 402, paid top-up, quota again):\n  \
                 tools/.venv/bin/python scripts/demo_metering.py --url http://{addr}\n  \
                 or: curl -X POST {traffic}/admin/usage --json '{{\"iccid\":\"<iccid>\",\"bytes\":500000}}'; \
                 curl -H 'Authorization: Bearer <access_token>' http://{addr}/v1/esim/<iccid>/balance"
            );
        }
    }
    eprintln!("Serving http://{addr}");
    eprintln!("Available Routes:");
    for route in app.router.routes() {
        eprintln!("  {}: http://{addr}{}", route.component, route.matched());
    }
    let every = args
        .jobs_every
        .unwrap_or(if args.no_dev_stack { 0 } else { 60 });
    if every > 0 {
        // The token as the app reads it (environment, `.env`, the dev stack's).
        let providers = &app.variables_providers;
        let mut vars = esim402_host::variables::resolve(&app.manifest, &opts.env, providers)?.app;
        let token = vars.remove("admin_token").filter(|t| !t.is_empty());
        match token {
            Some(token) => {
                eprintln!("Operator jobs (refunds, cleanup) every {every} s");
                tokio::spawn(esim402_host::jobs::run_every(
                    format!("http://{addr}"),
                    token,
                    std::time::Duration::from_secs(every),
                    stop.clone().requested(),
                ));
            }
            None => eprintln!(
                "Operator jobs not run: they need the admin_token variable (SPIN_VARIABLE_ADMIN_TOKEN)"
            ),
        }
    }
    let served = esim402_host::server::serve(app, listener, stop.requested()).await;
    drop(stack);
    served
}
