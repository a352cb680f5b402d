//! `esim402`: build, check and serve the esim402 Spin application (or any Spin app this host supports).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use clap::{Parser, Subcommand};
use esim402_host::app::{App, LoadOptions};
use esim402_host::devstack::DevStack;
use esim402_host::manifest::Manifest;
use esim402_host::runtime_config::{RuntimeConfig, StoreConfig};

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
}

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("ESIM402_LOG")
                .unwrap_or_else(|_| "esim402=info,esim402_host=info,warn".into()),
        )
        .with_writer(std::io::stderr)
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

async fn run(manifest: &std::path::Path, args: ServeArgs) -> anyhow::Result<()> {
    let mut opts = LoadOptions::new(manifest);
    opts.runtime_config = args.runtime_config_file;
    if args.memory_kv {
        opts.kv_override = Some(StoreConfig::Memory);
    }
    // Bind first: the dev stack's callbacks need the real address (the port may be 0).
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    let addr = listener.local_addr()?;
    let stack = if args.no_dev_stack {
        DevStack::default()
    } else {
        let app_dir = Manifest::load(manifest)?.dir;
        let stack = DevStack::start(&app_dir, addr, &opts.env).await?;
        opts.env.extend(stack.env.iter().cloned());
        stack
    };
    let app = Arc::new(App::load(&opts).await?);
    if !stack.facts.is_empty() {
        let path = stack.write_facts(&app.manifest.dir)?;
        eprintln!("Dev stack ({}):", path.display());
        for (k, v) in &stack.facts {
            match v {
                // Dev keys stay in the file; the console (and any log capturing it) never shows a key.
                _ if k.ends_with("private_key") || k == "admin_token" => {
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
    }
    eprintln!("Serving http://{addr}");
    eprintln!("Available Routes:");
    for route in app.router.routes() {
        eprintln!("  {}: http://{addr}{}", route.component, route.pattern);
    }
    // Ctrl-C locally; SIGTERM from process managers and Kubernetes (SpinKube).
    let shutdown = async {
        let term = async {
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(mut s) => {
                    s.recv().await;
                }
                Err(_) => std::future::pending::<()>().await,
            }
        };
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            () = term => {}
        }
    };
    let served = esim402_host::server::serve(app, listener, shutdown).await;
    drop(stack);
    served
}
