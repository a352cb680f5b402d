//! `smdp-sim`: run the SM-DP+ simulator (see the `esim402_smdp_sim` crate docs for endpoints and config).

use std::io::{IsTerminal, Write};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context, bail};
use clap::Parser;
use esim402_smdp_sim::{Sim, SimConfig, serve};

#[derive(Parser)]
#[command(
    name = "smdp-sim",
    version,
    about = "An SM-DP+ simulator speaking GSMA ES2+ JSON, for development and tests"
)]
struct Cli {
    /// Address to listen on; port 0 picks a free port (printed on stdout).
    #[arg(long, default_value = "127.0.0.1:8402")]
    listen: SocketAddr,
    /// Operators, pools and faults (TOML); without it, the five built-in operators.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Where to POST handleDownloadProgressInfo for operators that configure no callback_url.
    #[arg(long)]
    callback_url: Option<String>,
    /// Credentials the operators present on their callbacks, `operator=secret,…` (the same string as the
    /// facilitator's `carrier_callback_credentials`). Also read from SMDP_SIM_CALLBACK_CREDENTIALS.
    #[arg(long, env = "SMDP_SIM_CALLBACK_CREDENTIALS", hide_env_values = true)]
    callback_credentials: Option<String>,
    /// Allow listening on a non-loopback address (the simulator has no authentication).
    #[arg(long)]
    allow_public: bool,
}

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("SMDP_SIM_LOG")
                .unwrap_or_else(|_| "smdp_sim=info,esim402_smdp_sim=info,warn".into()),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
    if !follow_parent()? {
        return Ok(());
    }
    let cli = Cli::parse();
    if !cli.listen.ip().is_loopback() && !cli.allow_public {
        bail!(
            "refusing to listen on non-loopback address {} without --allow-public",
            cli.listen
        );
    }
    let config = match &cli.config {
        Some(path) => SimConfig::load(path)?,
        None => SimConfig::default(),
    };
    let mut sim = Sim::new(&config, cli.callback_url.as_deref())?;
    if let Some(spec) = &cli.callback_credentials {
        sim.set_callback_credentials(spec)
            .map_err(|e| anyhow::anyhow!("--callback-credentials: {e}"))?;
    }
    let sim = Arc::new(sim);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let listener = tokio::net::TcpListener::bind(cli.listen)
            .await
            .with_context(|| format!("cannot listen on {}", cli.listen))?;
        let addr = listener.local_addr()?;
        let names: Vec<&str> = sim.operator_names().collect();
        tracing::info!(%addr, operators = ?names, "SM-DP+ simulator ready");
        // Tests parse this exact line for the port.
        let mut out = std::io::stdout().lock();
        writeln!(out, "smdp-sim listening on http://{addr}")?;
        out.flush()?;
        drop(out);
        serve(sim, listener, shutdown_signal()).await?;
        tracing::info!("stopped");
        Ok(())
    })
}

/// SIGINT (Ctrl-C) or SIGTERM (process managers).
async fn shutdown_signal() {
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
}

/// The environment variable through which the esim402 dev stack that starts this simulator names its PID
/// (`esim402_host::devstack::PARENT_PID_ENV`; not imported, so the simulator stays independent of the host).
const PARENT_PID_ENV: &str = "ESIM402_PARENT_PID";

/// When started by the esim402 dev stack ([`PARENT_PID_ENV`] set), end with it however it ends: ask Linux for
/// SIGTERM when the parent goes (the host's `Drop` never runs under SIGKILL or the OOM killer), which stops the
/// simulator as any SIGTERM does; and if the parent is gone already (it ended before we asked: we were
/// re-parented), say so and return `false`, to exit at once. Before, an orphaned simulator ran on for good
/// (the traffic simulator posting receipts signed with the dev keys). Linux only: elsewhere the dev stack's
/// next start cannot stop it either, so it is left to the user.
fn follow_parent() -> anyhow::Result<bool> {
    let Some(value) = std::env::var_os(PARENT_PID_ENV) else {
        return Ok(true);
    };
    let expected: i32 = value
        .to_str()
        .and_then(|v| v.parse().ok())
        .with_context(|| format!("{PARENT_PID_ENV} is not a process id: {value:?}"))?;
    #[cfg(any(target_os = "linux", target_os = "android"))]
    rustix::process::set_parent_process_death_signal(Some(rustix::process::Signal::TERM))
        .context("cannot ask for a parent-death signal")?;
    // After asking: a parent that ends from here on sends the signal; one that ended before shows here.
    let parent = rustix::process::Pid::as_raw(rustix::process::getppid());
    if parent != expected {
        tracing::info!(
            expected,
            parent,
            "the dev stack that started this simulator is gone; exiting"
        );
        return Ok(false);
    }
    Ok(true)
}
