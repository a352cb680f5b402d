//! `esim402-agent`: buy and manage eSIMs over x402 from a device or gateway. See the crate README.
#![deny(missing_docs)]

use std::path::PathBuf;

use clap::{Parser, Subcommand};
use esim402_agent::client::CommandKind;
use esim402_agent::config::{DEFAULT_URL, KEY_ENV};
use esim402_agent::{Agent, AgentError, Config, ExitCode, SpendPolicy, StateDir, WalletKey};
use serde_json::{Value, json};

/// `println!` that ends the process quietly once stdout is closed (`esim402-agent receipts | head`): std's
/// `println!` panics on a broken pipe (exit 101 and a backtrace, a fresh-user trial).
macro_rules! out {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        if let Err(e) = writeln!(std::io::stdout().lock(), $($arg)*) {
            stdout_failed(&e);
        }
    }};
}

/// Ends the process after a failed write to stdout: quietly (0) when the reader went away, else naming it (1).
fn stdout_failed(e: &std::io::Error) -> ! {
    if e.kind() == std::io::ErrorKind::BrokenPipe {
        std::process::exit(0);
    }
    eprintln!("esim402-agent: cannot write to stdout: {e}");
    std::process::exit(1);
}

const EXIT_CODES: &str = "\
Exit codes:
  0  done
  1  local problem: no or bad wallet key, unreadable state or policy file, a payment for the same purchase
     pending with another facilitator (run a command with --url of the origin named to collect it)
  2  usage: bad arguments (an --iccid that is not an ICCID, a --data-mb or --top-up-mb outside 1 to 100000:
     refused before anything is sent), no SIM to act on (none, or all terminated), a SIM just collected that
     a command without --iccid would change or pay for (pass --iccid)
  3  refused by the spend policy: nothing was signed or paid
  4  refused by the facilitator: payment refused, or a 4xx answer (not found, conflict, ...)
  5  facilitator unreachable, 5xx, settlement still pending, a paid answer that could not be saved, or a
     new payment refused while one for the same purchase is pending with this facilitator: a signed
     payment is kept in the state directory; run the same command (or any command) again later to collect
     it (it is never paid twice). Only as a last resort, for one that can never be collected:
     `esim402-agent pending --forget <payment-id>` (--force while its authorization is valid; its spend
     stays counted): forgetting it may pay twice for the same purchase if it was charged

Pending payments: before every command that talks to the facilitator, each payment still pending with it
(a lost reply) is sent again once, the same payment, and what it bought is recorded (a SIM and its token, a
top-up); what became of each is said on stderr. Switches are left to `switch` and `watch`. Without --iccid, a
command acts on the SIM it would have picked before this (never one just collected). While a payment stays
pending, with this facilitator or another, no new payment is signed for the same purchase (an activation; a
top-up or a switch of the same SIM). `esim402-agent pending` lists them.";

/// Buy and manage pay-per-use eSIMs over x402 (USDC, EIP-3009), within a spend policy.
#[derive(Parser)]
#[command(name = "esim402-agent", version, after_help = EXIT_CODES)]
struct Cli {
    /// The facilitator's base URL: https://, or plain http:// to this machine (localhost, 127.0.0.0/8, ::1);
    /// no user name or password in it. System proxies (HTTP_PROXY, ALL_PROXY, ...) are not used.
    #[arg(long, global = true, env = "ESIM402_URL", default_value = DEFAULT_URL)]
    url: String,
    /// Also allow plain http:// to a facilitator on another machine. Unsafe outside a network you trust:
    /// anyone on the path can rewrite what a payment pays for and read the SIMs' access tokens.
    #[arg(
        long,
        global = true,
        env = "ESIM402_INSECURE_HTTP",
        value_parser = clap::builder::BoolishValueParser::new()
    )]
    insecure_http: bool,
    /// A file holding the wallet's hex private key (else the ESIM402_WALLET_KEY variable).
    #[arg(long, global = true)]
    key_file: Option<PathBuf>,
    /// The state directory (SIMs, access tokens, spend history, pending payments).
    #[arg(
        long,
        global = true,
        env = "ESIM402_STATE_DIR",
        default_value = ".esim402-agent"
    )]
    state_dir: PathBuf,
    /// The spend policy (TOML); default `<state-dir>/policy.toml` if it exists, else the built-in limits.
    #[arg(long, global = true)]
    policy: Option<PathBuf>,
    /// Print JSON on stdout (for scripts).
    #[arg(long, global = true)]
    json: bool,
    /// No progress lines on stderr.
    #[arg(long, short, global = true)]
    quiet: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Buy a SIM: pay the 402 within the policy, print its LPA:1$ activation code.
    Activate {
        /// Region (`us-west`, …).
        #[arg(long)]
        region: String,
        /// Prepaid data in MB (1 to 100000).
        #[arg(long, value_parser = data_mb)]
        data_mb: u64,
        /// A carrier of the region (else the facilitator picks).
        #[arg(long)]
        carrier: Option<String>,
        /// The chain to pay on (CAIP-2 or a known name); may be repeated.
        #[arg(long)]
        chain: Vec<String>,
        /// The device's EID.
        #[arg(long)]
        eid: Option<String>,
        /// A label for the SIM (its `X-Agent-ID`: `sims --agent-id` lists by it); 1-64 letters, digits and . _ : -
        #[arg(long)]
        agent_id: Option<String>,
    },
    /// Every SIM this wallet paid for, oldest first (a wallet sign-in; all pages).
    Sims {
        /// Only this agent's (its `X-Agent-ID` at activation).
        #[arg(long)]
        agent_id: Option<String>,
    },
    /// The SIM: carrier, region, state.
    Status {
        #[command(flatten)]
        sim: Sim,
        /// Also print the SIM's LPA:1$ activation code kept in the state directory (it installs the profile:
        /// keep it out of logs). Never for a terminated SIM.
        #[arg(long)]
        activation_code: bool,
    },
    /// The SIM's data balance.
    Balance(Sim),
    /// Data used, per hour or day and network.
    Usage {
        #[command(flatten)]
        sim: Sim,
        /// `hour` or `day`.
        #[arg(long, default_value = "day")]
        granularity: String,
    },
    /// The carrier receipts charged to the SIM (accepted and disputed).
    Receipts {
        #[command(flatten)]
        sim: Sim,
        /// First sequence number.
        #[arg(long, default_value_t = 1)]
        from: u64,
    },
    /// Buy more data for the SIM.
    TopUp {
        #[command(flatten)]
        sim: Sim,
        /// MB to buy (1 to 100000; default: the smallest top-up the facilitator's catalog offers for the SIM's
        /// carrier, the most data its minimum invoice buys).
        #[arg(long, value_parser = data_mb)]
        data_mb: Option<u64>,
    },
    /// Move the SIM to another carrier or region (paid; its unused data moves to the new SIM).
    #[command(group(clap::ArgGroup::new("target").required(true).args(["carrier", "region"])))]
    Switch {
        #[command(flatten)]
        sim: Sim,
        /// The carrier to move to.
        #[arg(long)]
        carrier: Option<String>,
        /// The region to move to.
        #[arg(long)]
        region: Option<String>,
    },
    /// Suspend the SIM.
    Suspend(Sim),
    /// Resume a suspended SIM.
    Resume(Sim),
    /// Terminate the SIM (unused data is refunded by the facilitator).
    Terminate(Sim),
    /// Keep the SIM alive unattended: audit every charged receipt (a receipt that does not verify is
    /// disputed, never paid for), ask for quota, top up within the policy when verified usage runs low, and
    /// switch carrier (or region) when the signal stays weak or the attach is refused. One event per line.
    Watch(WatchArgs),
    /// The cost model: a fleet's month pay-per-use vs a per-SIM plan, and the crossover volume where both cost
    /// the same (none when pay-per-use is cheaper at every volume; with --json, `crossover_mb_per_device: null`).
    /// A few lines, or JSON with --json. No wallet, no network.
    Cost(CostArgs),
    /// The paying proxy: devices send plain HTTP; 402s are paid from this wallet within each device's budget,
    /// every payment appended to an audit log (JSON lines).
    Proxy(ProxyArgs),
    /// The payments still pending (signed, no answer yet): id, purchase, facilitator, when signed, amount. No
    /// wallet, no network.
    Pending {
        /// Last resort: stop sending this payment (one that can never be collected). It no longer holds back a
        /// new payment for the same purchase, so forgetting it may pay twice for the same purchase if it was
        /// charged; its spend stays counted, and a record of it (never its signed payment) is kept in the state
        /// as abandoned. A passing outage needs nothing: run the command again later.
        #[arg(long, value_name = "PAYMENT_ID")]
        forget: Option<String>,
        /// With --forget: forget a payment pending with this facilitator (--url) whose authorization is still
        /// valid (it may still be collected, or charged).
        #[arg(long, requires = "forget")]
        force: bool,
    },
}

#[derive(clap::Args)]
#[command(group(clap::ArgGroup::new("signal").args(["signal_file", "signal_stdin", "signal_command"])))]
struct WatchArgs {
    #[command(flatten)]
    sim: Sim,
    /// Seconds between ticks (decimal).
    #[arg(long, default_value = "60")]
    interval: String,
    /// Quota asked for each tick, KB.
    #[arg(long, default_value_t = 1024)]
    quota_kb: u64,
    /// Top-up size, MB, 1 to 100000 (default: the smallest the facilitator offers).
    #[arg(long, value_parser = data_mb)]
    top_up_mb: Option<u64>,
    /// A status file with the modem's current answers (dBm like -97, or +CSQ/+CESQ/+CEREG/+COPS lines), read
    /// every tick; one that cannot be read is no reading, and a warning each tick.
    #[arg(long)]
    signal_file: Option<PathBuf>,
    /// Read signal lines from stdin as they come.
    #[arg(long)]
    signal_stdin: bool,
    /// A shell command printing the modem's answers, run every tick; one that fails (a non-zero exit, killed,
    /// over 10 s) is no reading, and a warning naming its exit status.
    #[arg(long)]
    signal_command: Option<String>,
    /// Switch when the level stays below this many dBm.
    #[arg(long, default_value_t = -105, allow_hyphen_values = true)]
    switch_below_dbm: i32,
    /// ... for this many readings in a row.
    #[arg(long, default_value_t = 3)]
    switch_after: u32,
    /// Carriers to move between, in order (default: the region's order in the catalog). A carrier left less
    /// than 6 hours ago is skipped.
    #[arg(long, value_delimiter = ',')]
    carriers: Vec<String>,
    /// The most switches per UTC day (each one is paid), however the radio stays.
    #[arg(long, default_value_t = esim402_agent::watch::plan::MAX_SWITCHES_PER_DAY)]
    max_switches_per_day: u32,
    /// The carrier catalog this agent trusts (TOML, the facilitator's format): receipt signers, regions,
    /// roaming. Default: the catalog built in.
    #[arg(long)]
    catalog: Option<PathBuf>,
    /// Stop after this many ticks (default: never).
    #[arg(long)]
    ticks: Option<u64>,
}

#[derive(clap::Args)]
struct ProxyArgs {
    /// Where devices connect (loopback unless --allow-public).
    #[arg(long, default_value = "127.0.0.1:8480")]
    listen: std::net::SocketAddr,
    /// Allow a non-loopback listen address. Devices must then name the proxy by its IP address (Host header):
    /// a host name is refused, as are browser requests (Origin, Sec-Fetch-*), non-JSON bodies and, unless
    /// --device-header is set, the paid GET query form (a page's image makes no browser say it is one).
    #[arg(long)]
    allow_public: bool,
    /// The header naming the device (default: its source address).
    #[arg(long)]
    device_header: Option<String>,
    /// A device's most per payment, USDC.
    #[arg(long, default_value = "1")]
    device_max_per_payment: String,
    /// A device's most per UTC day, USDC.
    #[arg(long, default_value = "5")]
    device_max_per_day: String,
    /// The audit log (default: <state-dir>/proxy-audit.jsonl).
    #[arg(long)]
    audit_log: Option<PathBuf>,
}

#[derive(clap::Args)]
struct CostArgs {
    /// Devices in the fleet.
    #[arg(long)]
    devices: u64,
    /// MB per device per month (decimal).
    #[arg(long)]
    mb_per_device: String,
    /// The carrier's USDC per MB.
    #[arg(long, default_value = "0.003")]
    rate_per_mb: String,
    /// Top-up size, MB.
    #[arg(long, default_value_t = 10)]
    top_up_mb: u32,
    /// The smallest invoice, USDC.
    #[arg(long, default_value = "0.05")]
    minimum_invoice: String,
    /// Settlement gas per invoice (an EIP-3009 transferWithAuthorization).
    #[arg(long, default_value_t = 70_000)]
    gas_units: u64,
    /// Gas price, gwei.
    #[arg(long, default_value = "0.01")]
    gas_price_gwei: String,
    /// The chain's native token in USDC.
    #[arg(long, default_value = "3000")]
    native_usd: String,
    /// The per-SIM plan's fee per SIM per month, USDC.
    #[arg(long, default_value = "1")]
    plan_fee: String,
    /// The per-SIM plan's USDC per MB.
    #[arg(long, default_value = "0.02")]
    plan_per_mb: String,
}

#[derive(clap::Args)]
struct Sim {
    /// The SIM (default: the newest live SIM in the state directory).
    #[arg(long, value_parser = iccid)]
    iccid: Option<String>,
}

/// `--iccid`, checked as the facilitator checks it (18 to 20 digits, `89`, Luhn; a 19-digit one's `F` pad
/// dropped) before anything is collected, signed or sent: a typo is a usage error (exit 2), not a request the
/// facilitator refuses (exit 4) after this command has already sent every pending payment again.
fn iccid(s: &str) -> Result<String, String> {
    esim402_core::esim::Iccid::parse(s)
        .map(|i| i.as_str().to_owned())
        .map_err(|e| e.to_string())
}

/// A data size in MB (`--data-mb`, `--top-up-mb`): the kernel's bounds (1 to 100000), checked here for the same
/// reason as [`iccid`].
fn data_mb(s: &str) -> Result<u64, String> {
    s.parse::<u64>()
        .ok()
        .and_then(|mb| esim402_core::DataMb::new(mb).ok())
        .map(|mb| u64::from(mb.get()))
        .ok_or_else(|| {
            format!(
                "want a whole number of MB from 1 to {}",
                esim402_core::DataMb::MAX
            )
        })
}

fn agent(cli: &Cli) -> Result<Agent, AgentError> {
    let env_key = std::env::var(KEY_ENV).ok();
    let key = WalletKey::load(env_key.as_deref(), cli.key_file.as_deref())?;
    let config = if cli.insecure_http {
        Config::new_insecure_http(&cli.url, key)?
    } else {
        Config::new(&cli.url, key)?
    };
    let default_policy = cli.state_dir.join("policy.toml");
    let policy = match &cli.policy {
        Some(p) => SpendPolicy::load(p),
        None if default_policy.exists() => SpendPolicy::load(&default_policy),
        None => Ok(SpendPolicy::default()),
    }
    .map_err(|e| AgentError::Local(e.to_string()))?;
    Agent::new(config, policy, StateDir::new(&cli.state_dir), !cli.quiet)
}

fn print(json_out: bool, v: &Value) {
    if json_out {
        out!("{v}");
    } else {
        out!(
            "{}",
            serde_json::to_string_pretty(v).unwrap_or_else(|_| v.to_string())
        );
    }
}

/// A bought SIM: its activation code on stdout (or the answer as JSON), the rest on stderr.
fn print_sim(cli: &Cli, agent: &Agent, a: &esim402_agent::client::Activation) {
    if cli.json {
        out!("{}", a.answer);
    } else {
        eprintln!(
            "SIM {} on {} (tx {}); its access token is in {}",
            a.iccid,
            a.answer["carrier"].as_str().unwrap_or("?"),
            a.answer["transaction"].as_str().unwrap_or("?"),
            agent.state().path().display()
        );
        out!("{}", a.activation_code);
    }
}

async fn run(cli: Cli) -> Result<(), AgentError> {
    if let Command::Cost(c) = &cli.command {
        let inputs = esim402_agent::cost::Inputs {
            devices: c.devices,
            mb_per_device: c.mb_per_device.clone(),
            rate_per_mb: c.rate_per_mb.clone(),
            top_up_mb: c.top_up_mb,
            minimum_invoice: c.minimum_invoice.clone(),
            gas_units: c.gas_units,
            gas_price_gwei: c.gas_price_gwei.clone(),
            native_usd: c.native_usd.clone(),
            plan_fee: c.plan_fee.clone(),
            plan_per_mb: c.plan_per_mb.clone(),
        };
        let figures = esim402_agent::cost::figures(&inputs).map_err(AgentError::Usage)?;
        // The agent's own figures, like `pending`'s and `top-up`'s: lines for a person, JSON with --json (the
        // commands that print JSON either way pass the facilitator's answers on as they came).
        if cli.json {
            out!("{}", figures.json());
        } else {
            out!("{}", figures.human());
        }
        return Ok(());
    }
    if let Command::Proxy(p) = &cli.command {
        return proxy(&cli, p).await;
    }
    if let Command::Pending { forget, force } = &cli.command {
        return pending(&cli, forget.as_deref(), *force);
    }
    let agent = agent(&cli)?;
    if let Command::Watch(w) = &cli.command {
        // The watch takes the state directory's lock per tick, not for its whole run.
        return watch(&cli, &agent, w).await;
    }
    let _lock = agent.state().lock().map_err(AgentError::Local)?;
    // Every payment still pending with this facilitator is collected first (the same payments, sent again once: a
    // SIM paid for reaches the state whatever command runs next), except switches (`switch` and `watch` only) and
    // those of the command's own kind (the paying command collects those itself, its own request last). The SIM
    // the command acts on is resolved before that: a SIM just collected is never the target of a command that
    // did not name it.
    let (sim, kind) = match &cli.command {
        Command::Activate { .. } => (None, CommandKind::Activates),
        Command::Sims { .. } => (None, CommandKind::Reads),
        Command::Status { sim: s, .. } | Command::Balance(s) => {
            (s.iccid.as_deref(), CommandKind::Reads)
        }
        Command::Usage { sim, .. } | Command::Receipts { sim, .. } => {
            (sim.iccid.as_deref(), CommandKind::Reads)
        }
        Command::TopUp { sim, .. } => (sim.iccid.as_deref(), CommandKind::TopsUp),
        Command::Switch { sim, .. } => (sim.iccid.as_deref(), CommandKind::Switches),
        Command::Suspend(s) | Command::Resume(s) | Command::Terminate(s) => {
            (s.iccid.as_deref(), CommandKind::Changes)
        }
        // Answered above.
        Command::Cost(_) | Command::Proxy(_) | Command::Watch(_) | Command::Pending { .. } => {
            (None, CommandKind::Reads)
        }
    };
    let iccid = agent.before_command(sim, kind).await?;
    let iccid = iccid.as_deref();
    match &cli.command {
        Command::Activate {
            region,
            data_mb,
            carrier,
            chain,
            eid,
            agent_id,
        } => {
            let mut body = json!({"region": region, "data_mb": data_mb});
            if let Some(c) = carrier {
                body["carrier"] = json!(c);
            }
            if !chain.is_empty() {
                body["chain"] = json!(chain);
            }
            if let Some(e) = eid {
                body["eid"] = json!(e);
            }
            let a = agent.activate_labelled(&body, agent_id.as_deref()).await?;
            print_sim(&cli, &agent, &a);
        }
        Command::Switch {
            carrier, region, ..
        } => {
            let target = match (carrier, region) {
                (Some(c), _) => json!({"carrier": c}),
                (None, r) => json!({"region": r}),
            };
            let a = agent.switch(iccid, &target).await?;
            print_sim(&cli, &agent, &a);
        }
        Command::Sims { agent_id } => print(
            cli.json,
            &json!({ "sims": agent.list_sims(agent_id.as_deref()).await? }),
        ),
        Command::Status {
            activation_code, ..
        } => print(cli.json, &agent.status(iccid, *activation_code).await?),
        Command::Balance(_) => print(cli.json, &agent.sim_get(iccid, "/balance").await?),
        Command::Usage { granularity, .. } => {
            let route = format!("/usage?granularity={granularity}&group_by=plmn");
            print(cli.json, &agent.sim_get(iccid, &route).await?);
        }
        Command::Receipts { from, .. } => {
            let route = format!("/receipts?from={from}");
            print(cli.json, &agent.sim_get(iccid, &route).await?);
        }
        Command::TopUp { data_mb, .. } => {
            let out = agent.top_up(iccid, *data_mb).await?;
            if cli.json {
                out!("{out}");
            } else {
                out!("{}", esim402_agent::client::top_up_line(&out));
            }
        }
        Command::Suspend(_) => print(cli.json, &agent.sim_post(iccid, "/suspend").await?),
        Command::Resume(_) => print(cli.json, &agent.sim_post(iccid, "/resume").await?),
        Command::Terminate(_) => print(cli.json, &agent.sim_post(iccid, "/terminate").await?),
        // Answered above.
        Command::Cost(_) | Command::Proxy(_) | Command::Watch(_) | Command::Pending { .. } => {}
    }
    Ok(())
}

fn watch_settings(w: &WatchArgs) -> Result<esim402_agent::watch::WatchSettings, AgentError> {
    use esim402_agent::watch::{SignalSource, WatchSettings, signal::Thresholds};
    let usage = |flag: &str, e: &dyn std::fmt::Display| AgentError::Usage(format!("--{flag}: {e}"));
    let interval = w
        .interval
        .parse::<f64>()
        .ok()
        .and_then(|s| std::time::Duration::try_from_secs_f64(s).ok())
        .filter(|d| !d.is_zero())
        .ok_or_else(|| usage("interval", &"a positive number of seconds"))?;
    let catalog = match &w.catalog {
        Some(p) => {
            let text = std::fs::read_to_string(p)
                .map_err(|e| AgentError::Local(format!("{}: {e}", p.display())))?;
            esim402_core::esim::Catalog::from_toml(&text)
                .map_err(|e| AgentError::Local(format!("{}: {e}", p.display())))?
        }
        None => {
            // The pins a development facilitator uses; a real one's carriers sign with keys of their own, so
            // without `--catalog` every charge there would be disputed as not verifying.
            eprintln!(
                "esim402-agent watch: no --catalog given: pinning the built-in development carriers' receipt signers (a facilitator outside development uses its own; pass its catalog)"
            );
            esim402_core::esim::Catalog::builtin().clone()
        }
    };
    let carriers = w
        .carriers
        .iter()
        .map(|c| esim402_core::CarrierId::parse(c).map_err(|e| usage("carriers", &e)))
        .collect::<Result<_, _>>()?;
    let signal = match (&w.signal_file, w.signal_stdin, &w.signal_command) {
        (Some(f), _, _) => Some(SignalSource::File(f.clone())),
        (_, true, _) => Some(SignalSource::Stdin),
        (_, _, Some(c)) => Some(SignalSource::Command(c.clone())),
        _ => None,
    };
    Ok(WatchSettings {
        iccid: w.sim.iccid.clone(),
        interval,
        quota_kb: w.quota_kb,
        top_up_mb: w.top_up_mb,
        signal,
        thresholds: Thresholds {
            below_dbm: w.switch_below_dbm,
            after: w.switch_after.max(1),
        },
        carriers,
        catalog,
        ticks: w.ticks,
        max_switches_per_day: w.max_switches_per_day,
    })
}

async fn watch(cli: &Cli, agent: &Agent, w: &WatchArgs) -> Result<(), AgentError> {
    use std::io::Write as _;
    let mut settings = watch_settings(w)?;
    let json_out = cli.json;
    let emit = move |e: &esim402_agent::watch::Event| {
        let line = if json_out {
            serde_json::to_string(e).unwrap_or_default()
        } else {
            e.human()
        };
        let mut out = std::io::stdout().lock();
        // A closed stdout (the reader went away) must not stop the watch.
        let _ = writeln!(out, "{line}").and_then(|()| out.flush());
    };
    // The SIM watched is resolved before anything is collected (never one just collected, unless named), and
    // payments still pending are collected before the watch starts, switches excepted: a pending switch of the
    // SIM watched is the watch's first tick's (it follows the SIM to its new one), another SIM's may be another
    // watch's. The watch takes the lock per tick; if another command holds it now, that command collects them;
    // any other lock error stops the watch (exit 1).
    settings.iccid = agent.before_watch(w.sim.iccid.as_deref()).await?;
    esim402_agent::watch::Watcher::new(agent, settings, emit)?
        .run()
        .await
}

/// `pending`: list the payments still pending, or give up on one (`--forget`, `--force` for one this
/// facilitator may still collect). No wallet, no network.
fn pending(cli: &Cli, forget: Option<&str>, force: bool) -> Result<(), AgentError> {
    use esim402_agent::client::{FORGET_WARNING, forget_pending, pending_payments};
    let dir = StateDir::new(&cli.state_dir);
    let Some(id) = forget else {
        let all = pending_payments(&dir.load().map_err(AgentError::Local)?);
        if cli.json {
            out!("{}", json!({ "pending": all }));
        } else if all.is_empty() {
            out!("no payment pending");
        } else {
            for p in &all {
                out!("{p}");
            }
        }
        return Ok(());
    };
    let _lock = dir.lock().map_err(AgentError::Local)?;
    let origin = esim402_agent::config::bare_origin(cli.url.trim_end_matches('/'));
    let gone = forget_pending(&dir, id, origin.as_deref(), force)?;
    if cli.json {
        out!(
            "{}",
            json!({ "forgotten": gone, "warning": FORGET_WARNING })
        );
    } else {
        out!(
            "forgot the payment {id} for {}, pending with {}: it is no longer sent, and no longer holds back a new \
             payment for the same purchase: {FORGET_WARNING}. Its spend{} stays counted against the daily cap (a \
             facilitator that received it may settle it until its authorization expires, {}); a record of it \
             (not its signed payment) is kept in {} under abandoned.{id}",
            gone.purchase,
            gone.origin.as_deref().unwrap_or("an unknown facilitator"),
            gone.amount_usdc
                .as_deref()
                .map(|a| format!(" ({a} USDC)"))
                .unwrap_or_default(),
            esim402_agent::client::utc_time(gone.valid_before),
            dir.path().join(esim402_agent::state::FILE).display()
        );
    }
    Ok(())
}

async fn proxy(cli: &Cli, p: &ProxyArgs) -> Result<(), AgentError> {
    if !p.listen.ip().is_loopback() && !p.allow_public {
        return Err(AgentError::Usage(format!(
            "refusing to listen on {} without --allow-public (devices pay with this wallet)",
            p.listen
        )));
    }
    let usdc = |flag: &str, v: &str| {
        v.parse()
            .map_err(|e| AgentError::Usage(format!("{flag}: {e}")))
    };
    let agent = agent(cli)?;
    let settings = esim402_agent::proxy::ProxySettings {
        device_header: p.device_header.clone(),
        device_max_per_payment: usdc("device-max-per-payment", &p.device_max_per_payment)?,
        device_max_per_day: usdc("device-max-per-day", &p.device_max_per_day)?,
        audit_log: p
            .audit_log
            .clone()
            .unwrap_or_else(|| cli.state_dir.join("proxy-audit.jsonl")),
        state_dir: cli.state_dir.clone(),
    };
    // The state directory private (0700) and the wallet record held before anything listens: a second proxy
    // on the same directory is refused before it says it serves.
    let held = esim402_agent::proxy::hold_wallet(&cli.state_dir).map_err(AgentError::Local)?;
    let listener = tokio::net::TcpListener::bind(p.listen)
        .await
        .map_err(|e| AgentError::Local(format!("cannot listen on {}: {e}", p.listen)))?;
    let addr = listener
        .local_addr()
        .map_err(|e| AgentError::Local(e.to_string()))?;
    // Tests and scripts read the bound address (the port may be 0). A stdout nobody reads does not stop the
    // proxy (a supervisor would not restart a proxy that exited 0).
    {
        use std::io::Write as _;
        let _ = writeln!(
            std::io::stdout().lock(),
            "esim402-agent proxy listening on http://{addr}"
        );
    }
    esim402_agent::proxy::serve(
        listener,
        held,
        agent.config().clone(),
        agent.policy().clone(),
        settings,
    )
    .await
    .map_err(|e| AgentError::Local(e.to_string()))
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let json_out = cli.json;
    match run(cli).await {
        Ok(()) => std::process::ExitCode::from(ExitCode::Ok as u8),
        Err(e) => {
            let code = e.exit_code();
            if json_out {
                // Its exit code tells the failure whether or not stdout is still read.
                use std::io::Write as _;
                let _ = writeln!(
                    std::io::stdout().lock(),
                    "{}",
                    json!({"error": e.to_string(), "exit_code": code as u8})
                );
            }
            eprintln!("esim402-agent: {e}");
            std::process::ExitCode::from(code as u8)
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "tests")]
    use clap::Parser as _;

    use super::{Cli, Command};

    /// Fix: a malformed `--iccid` (length, prefix, Luhn) and a data size outside the kernel's 1 to 100000 MB are
    /// usage errors (exit 2) as the arguments are parsed, before any pending payment is sent again, anything
    /// signed or the facilitator asked. Before, `status --iccid 123` and `top-up --data-mb 0` went to the
    /// facilitator, which refused them (exit 4).
    #[test]
    fn bad_iccids_and_data_sizes_are_refused_as_arguments() {
        let refused: [&[&str]; 8] = [
            &["status", "--iccid", "123"],
            &["balance", "--iccid", "8901260000000000015"],
            &["terminate", "--iccid", "1201260000000000014"],
            &["top-up", "--data-mb", "0"],
            &["top-up", "--data-mb", "100001"],
            &["top-up", "--data-mb", "lots"],
            &["activate", "--region", "us-west", "--data-mb", "0"],
            &["watch", "--top-up-mb", "0"],
        ];
        for args in refused {
            let e =
                Cli::try_parse_from(std::iter::once("esim402-agent").chain(args.iter().copied()))
                    .err()
                    .unwrap_or_else(|| panic!("{args:?} parsed"));
            assert_eq!(
                e.kind(),
                clap::error::ErrorKind::ValueValidation,
                "{args:?}: {e}"
            );
            assert_eq!(
                e.exit_code(),
                esim402_agent::ExitCode::Usage as i32,
                "{args:?}"
            );
        }
        let e = Cli::try_parse_from(["esim402-agent", "top-up", "--data-mb", "0"])
            .err()
            .unwrap();
        assert!(e.to_string().contains("1 to 100000"), "{e}");
        // A good one is taken as the kernel writes it (a 19-digit ICCID's F pad dropped).
        let cli = Cli::try_parse_from([
            "esim402-agent",
            "top-up",
            "--iccid",
            "8901260000000000014F",
            "--data-mb",
            "100000",
        ])
        .unwrap();
        let Command::TopUp { sim, data_mb } = cli.command else {
            panic!("not a top-up");
        };
        assert_eq!(sim.iccid.as_deref(), Some("8901260000000000014"));
        assert_eq!(data_mb, Some(100_000));
    }
}
