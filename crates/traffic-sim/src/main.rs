//! `traffic-sim`: run the traffic simulator (see the `esim402_traffic_sim` crate docs).

use std::io::Write;
use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::{Context, bail};
use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::{get, post};
use clap::Parser;
use esim402_traffic_sim::{Config, Traffic};
use serde::Deserialize;
use serde_json::{Value, json};

#[derive(Parser)]
#[command(
    name = "traffic-sim",
    version,
    about = "Simulated data sessions with signed usage receipts"
)]
struct Cli {
    /// Address to listen on; port 0 picks a free port (printed on stdout).
    #[arg(long, default_value = "127.0.0.1:8403")]
    listen: SocketAddr,
    /// The facilitator's base URL.
    #[arg(long, default_value = "http://127.0.0.1:3000")]
    facilitator: String,
    /// The SM-DP+ simulator's base URL.
    #[arg(long, default_value = "http://127.0.0.1:8402")]
    smdp: String,
    /// Time compression of scheduled traffic.
    #[arg(long, default_value_t = 60)]
    compression: u64,
    /// The carriers' credentials, `carrier=secret,…` (the facilitator's `carrier_callback_credentials`),
    /// presented on quota requests. Also read from TRAFFIC_SIM_CARRIER_CREDENTIALS.
    #[arg(
        long,
        env = "TRAFFIC_SIM_CARRIER_CREDENTIALS",
        hide_env_values = true,
        default_value = ""
    )]
    carrier_credentials: String,
    /// Allow a non-loopback address (the simulator has no authentication).
    #[arg(long)]
    allow_public: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct UsageReq {
    iccid: String,
    bytes: u64,
    #[serde(default)]
    plmn: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ScheduleReq {
    iccid: String,
    mode: String,
}

type Reply = (StatusCode, Json<Value>);

fn bad(e: anyhow::Error) -> Reply {
    (
        StatusCode::BAD_REQUEST,
        Json(json!({ "error": { "code": "invalid_input", "message": format!("{e:#}") } })),
    )
}

async fn usage(State(t): State<Arc<Traffic>>, Json(r): Json<UsageReq>) -> Reply {
    if r.bytes == 0 || r.bytes > 100_000_000_000 {
        return bad(anyhow::anyhow!("bytes must be 1-100000000000"));
    }
    match t.usage(&r.iccid, r.bytes, r.plmn.as_deref()).await {
        Ok(o) => (StatusCode::OK, Json(json!(o))),
        Err(e) => bad(e),
    }
}

async fn schedule(State(t): State<Arc<Traffic>>, Json(r): Json<ScheduleReq>) -> Reply {
    match t.schedule(&r.iccid, &r.mode).await {
        Ok(()) => (
            StatusCode::OK,
            Json(json!({ "iccid": r.iccid, "mode": r.mode })),
        ),
        Err(e) => bad(e),
    }
}

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("TRAFFIC_SIM_LOG")
                .unwrap_or_else(|_| "traffic_sim=info,esim402_traffic_sim=info,warn".into()),
        )
        .with_writer(std::io::stderr)
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
    let traffic = Traffic::new(Config {
        facilitator: cli.facilitator,
        smdp: cli.smdp,
        compression: cli.compression,
        credentials: esim402_core::auth::callback::CallbackCredentials::parse(
            &cli.carrier_credentials,
        )
        .map_err(|e| anyhow::anyhow!("--carrier-credentials: {e}"))?,
    })?;
    let app = axum::Router::new()
        .route("/health", get(|| async { Json(json!({ "status": "ok" })) }))
        .route("/admin/usage", post(usage))
        .route("/admin/schedule", post(schedule))
        .with_state(traffic);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let listener = tokio::net::TcpListener::bind(cli.listen)
            .await
            .with_context(|| format!("cannot listen on {}", cli.listen))?;
        let addr = listener.local_addr()?;
        let mut out = std::io::stdout().lock();
        writeln!(out, "traffic-sim listening on http://{addr}")?;
        out.flush()?;
        drop(out);
        axum::serve(listener, app)
            .with_graceful_shutdown(async {
                let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = async { match term.as_mut() { Some(t) => { t.recv().await; } None => std::future::pending::<()>().await } } => {}
                }
            })
            .await?;
        Ok(())
    })
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
