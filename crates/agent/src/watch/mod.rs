//! `watch`: keep a SIM alive unattended. Every tick it
//! 1. reads the radio ([`signal`]: a status file, stdin or a command printing a modem's AT answers) and, when
//!    the level stays weak or the network refuses the attach, switches the SIM ([`plan`]: another carrier, or
//!    another region after a border) — a paid switch, within the spend policy;
//! 2. audits the SIM's receipt log ([`audit`]): every charged receipt is verified again against the carrier
//!    signers this agent pins; one that does not verify is disputed and never counted as used;
//! 3. asks for its next quota; on the low-balance 402 it tops up within the spend policy **only if its own
//!    verified count says the SIM is low** — a shortfall made of disputed charges is withheld, never paid.
//!
//! It stops (with the CLI's exit codes) when the spend policy refuses a payment (3: e.g. the daily cap), when
//! the facilitator refuses the SIM (4: terminated, not ours), or after `--ticks`. An unreachable, failing or
//! throttling facilitator (5xx, 408/429/499, `Retry-After`) is reported and retried next tick. Each tick takes the state directory's lock only while it works, so other
//! commands (`balance`, `receipts`) can run beside it. Every event is a line on stdout (JSON with `--json`).

pub mod audit;
pub mod plan;
pub mod signal;

use std::path::PathBuf;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use esim402_core::esim::{Catalog, Iccid, RoamingPolicy};
use esim402_core::usage::ingest::LogEntry;
use esim402_core::{CarrierId, Region};
use serde::Serialize;
use serde_json::{Value, json};
use tokio::io::AsyncBufReadExt as _;

use crate::client::{Agent, unexpected};
use crate::error::AgentError;
use crate::state::SimRecord;
use audit::{Audit, Finding, LowBalance, SimView, on_low_balance};
use plan::{Switches, next_move};
use signal::{Thresholds, Tracker, parse_line};

/// Receipts per log page (the facilitator's maximum).
const PAGE: u32 = 1_000;
/// The most log pages audited per tick (the state directory is locked meanwhile): a longer log is audited on
/// over the next ticks.
const MAX_PAGES_PER_TICK: u32 = 20;

/// Where radio readings come from.
#[derive(Debug, Clone)]
pub enum SignalSource {
    /// A status file holding the modem's current answers (rewritten by whatever polls the modem): all its
    /// lines are read every tick.
    File(PathBuf),
    /// A stream of readings on stdin, each line read once.
    Stdin,
    /// A shell command printing the modem's answers (e.g. `atinout - /dev/ttyUSB2 - <<< 'AT+CSQ'`), run every
    /// tick (at most 10 s).
    Command(String),
}

/// How to watch.
#[derive(Debug, Clone)]
pub struct WatchSettings {
    /// The SIM (default: the newest live one).
    pub iccid: Option<String>,
    /// Time between ticks.
    pub interval: Duration,
    /// Quota asked for per tick, KB.
    pub quota_kb: u64,
    /// Top-up size, MB (default: the smallest the facilitator offers).
    pub top_up_mb: Option<u64>,
    /// Radio readings, if any.
    pub signal: Option<SignalSource>,
    /// When the radio is a reason to move.
    pub thresholds: Thresholds,
    /// Carrier preference for moves (empty: the region's order in the catalog).
    pub carriers: Vec<CarrierId>,
    /// The carrier catalog this agent trusts: receipt signers, regions, roaming.
    pub catalog: Catalog,
    /// Stop after this many ticks.
    pub ticks: Option<u64>,
    /// The most switches per UTC day (each is paid), default [`plan::MAX_SWITCHES_PER_DAY`].
    pub max_switches_per_day: u32,
}

/// Something worth telling: one line of output each.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum Event {
    /// Watching this SIM.
    Watching {
        /// ICCID.
        iccid: String,
        /// Carrier.
        carrier: Option<String>,
        /// Region.
        region: Option<String>,
    },
    /// Charged receipts that verified this tick.
    Verified {
        /// ICCID.
        iccid: String,
        /// How many.
        receipts: u64,
        /// Their bytes.
        bytes: u64,
        /// All verified bytes of the SIM so far.
        total_bytes: u64,
    },
    /// A receipt disputed (by this agent if `charged`, else already by the facilitator).
    Disputed {
        /// ICCID.
        iccid: String,
        /// The dispute.
        #[serde(flatten)]
        dispute: audit::Dispute,
    },
    /// Quota granted.
    Granted {
        /// ICCID.
        iccid: String,
        /// KB granted.
        granted_kb: u64,
        /// KB left.
        remaining_kb: u64,
    },
    /// A top-up paid.
    ToppedUp {
        /// ICCID.
        iccid: String,
        /// MB bought.
        data_mb: u64,
        /// Its price.
        amount_usdc: String,
        /// The settlement transaction.
        transaction: Option<String>,
    },
    /// The facilitator says the SIM is low, this agent's verified count says it is not: nothing paid.
    TopUpWithheld {
        /// ICCID.
        iccid: String,
        /// KB left by this agent's count.
        own_remaining_kb: u64,
        /// Charged bytes this agent disputes.
        disputed_bytes: u64,
    },
    /// The radio gave a reason to move.
    Moving {
        /// ICCID.
        iccid: String,
        /// Why.
        reason: String,
        /// Where to (`{"carrier": …}` or `{"region": …}`).
        to: Value,
    },
    /// Moved: the new SIM.
    Switched {
        /// The old SIM.
        from: String,
        /// The new SIM.
        iccid: String,
        /// Its carrier.
        carrier: Option<String>,
        /// Its region.
        region: Option<String>,
        /// How to read its activation code (kept in the state directory, never printed by `watch`: its output
        /// ends up in logs, and the code installs the profile).
        activation_code_at: String,
    },
    /// Something to know that does not stop the watch.
    Warning {
        /// What.
        message: String,
    },
    /// The watch ended.
    Stopped {
        /// Why.
        reason: String,
        /// The CLI's exit code.
        exit_code: u8,
    },
}

impl Event {
    /// One human line.
    pub fn human(&self) -> String {
        match self {
            Self::Watching {
                iccid,
                carrier,
                region,
            } => format!(
                "watching {iccid} ({} in {})",
                carrier.as_deref().unwrap_or("?"),
                region.as_deref().unwrap_or("?")
            ),
            Self::Verified {
                iccid,
                receipts,
                bytes,
                total_bytes,
            } => format!(
                "{iccid}: {receipts} receipt(s) verified, {bytes} bytes ({total_bytes} in all)"
            ),
            Self::Disputed { iccid, dispute } => format!(
                "{iccid}: receipt #{} ({} bytes) disputed{}: {}",
                dispute.n,
                dispute.bytes,
                if dispute.charged {
                    ", it was charged"
                } else {
                    ""
                },
                dispute.reason
            ),
            Self::Granted {
                iccid,
                granted_kb,
                remaining_kb,
            } => format!("{iccid}: {granted_kb} KB granted, {remaining_kb} KB left"),
            Self::ToppedUp {
                iccid,
                data_mb,
                amount_usdc,
                transaction,
            } => format!(
                "{iccid}: topped up {data_mb} MB for {amount_usdc} USDC (tx {})",
                transaction.as_deref().unwrap_or("?")
            ),
            Self::TopUpWithheld {
                iccid,
                own_remaining_kb,
                disputed_bytes,
            } => format!(
                "{iccid}: the facilitator says low, verified usage leaves {own_remaining_kb} KB \
                 ({disputed_bytes} charged bytes disputed): top-up withheld"
            ),
            Self::Moving { iccid, reason, to } => format!("{iccid}: {reason}; switching to {to}"),
            Self::Switched {
                from,
                iccid,
                carrier,
                activation_code_at,
                ..
            } => format!(
                "switched {from} → {iccid} on {} (its activation code: {activation_code_at})",
                carrier.as_deref().unwrap_or("?")
            ),
            Self::Warning { message } => format!("warning: {message}"),
            Self::Stopped { reason, exit_code } => format!("stopped ({exit_code}): {reason}"),
        }
    }
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// The readings source, opened.
enum Readings {
    None,
    File(PathBuf),
    Stdin(tokio::sync::mpsc::UnboundedReceiver<String>),
    Command(String),
}

impl Readings {
    fn open(source: Option<&SignalSource>) -> Self {
        match source {
            None => Self::None,
            Some(SignalSource::File(p)) => Self::File(p.clone()),
            Some(SignalSource::Command(c)) => Self::Command(c.clone()),
            Some(SignalSource::Stdin) => {
                let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
                tokio::spawn(async move {
                    let mut lines = tokio::io::BufReader::new(tokio::io::stdin()).lines();
                    while let Ok(Some(line)) = lines.next_line().await {
                        if tx.send(line).is_err() {
                            break;
                        }
                    }
                });
                Self::Stdin(rx)
            }
        }
    }

    /// This tick's lines, and what they are to tell a source that has not caught up with a move: a file's
    /// modification time (read before its content), a command's output; stdin lines are always new.
    async fn take(&mut self) -> (Result<Vec<String>, String>, Seen) {
        let modified = match self {
            Self::File(p) => Some(
                tokio::fs::metadata(&*p)
                    .await
                    .and_then(|m| m.modified())
                    .ok(),
            ),
            _ => None,
        };
        let lines = self.lines().await;
        let seen = match (&*self, modified) {
            (_, Some(modified)) => Seen::File(modified),
            (Self::Command(_), None) => Seen::Output(lines.clone().unwrap_or_default()),
            _ => Seen::Fresh,
        };
        (lines, seen)
    }

    /// This tick's lines.
    async fn lines(&mut self) -> Result<Vec<String>, String> {
        match self {
            Self::None => Ok(Vec::new()),
            // A file that cannot be read (not there yet, a wrong path, no permission) is no reading, and said so
            // every tick: before, a missing one was taken silently for a quiet radio, and a watch on a mistyped
            // path ran for good without a word, its switches never triggered.
            Self::File(p) => match tokio::fs::read_to_string(&*p).await {
                Ok(text) => Ok(text.lines().map(str::to_owned).collect()),
                Err(e) => Err(format!(
                    "signal file {} cannot be read: {e}; no radio reading this tick",
                    p.display()
                )),
            },
            Self::Stdin(rx) => {
                let mut out = Vec::new();
                while let Ok(line) = rx.try_recv() {
                    out.push(line);
                }
                Ok(out)
            }
            Self::Command(c) => {
                let run = signal_command(c).output();
                match tokio::time::timeout(Duration::from_secs(10), run).await {
                    // A command that failed (exited non-zero, or was killed) printed no reading to trust, whatever
                    // it printed: before, its output counted, and a modem tool's stale or partial answer could
                    // pass for the radio's.
                    Ok(Ok(out)) if !out.status.success() => {
                        Err(command_failed(out.status, &out.stderr))
                    }
                    Ok(Ok(out)) => Ok(String::from_utf8_lossy(&out.stdout)
                        .lines()
                        .map(str::to_owned)
                        .collect()),
                    Ok(Err(e)) => Err(format!(
                        "signal command cannot be run: {e}; no radio reading this tick"
                    )),
                    Err(_) => {
                        Err("signal command took over 10 s; no radio reading this tick".into())
                    }
                }
            }
        }
    }
}

/// What a tick decided.
enum Next {
    Continue,
    Stop(AgentError),
}

/// The watch: the agent, its settings, and what it tracks between ticks.
pub struct Watcher<'a> {
    agent: &'a Agent,
    settings: WatchSettings,
    tracker: Tracker,
    /// The readings of the tick that last moved the SIM, until the source says something else.
    moved_on: Option<Moved>,
    sim: SimRecord,
    emit: Box<dyn FnMut(&Event) + 'a>,
}

impl<'a> Watcher<'a> {
    /// A watcher over `settings.iccid` (or the newest live SIM), telling `emit` every event.
    pub fn new(
        agent: &'a Agent,
        settings: WatchSettings,
        emit: impl FnMut(&Event) + 'a,
    ) -> Result<Self, AgentError> {
        let sim = agent.sim(settings.iccid.as_deref())?;
        Ok(Self {
            agent,
            tracker: Tracker::new(settings.thresholds),
            moved_on: None,
            settings,
            sim,
            emit: Box::new(emit),
        })
    }

    /// The SIM watched (until a switch moves the watch to its new SIM).
    pub fn iccid(&self) -> &str {
        &self.sim.iccid
    }

    fn say(&mut self, e: Event) {
        (self.emit)(&e);
    }

    /// Watch until a stop: `Ok` after `--ticks`, else the error that stopped it (its exit code).
    pub async fn run(mut self) -> Result<(), AgentError> {
        let mut readings = Readings::open(self.settings.signal.as_ref());
        self.say(Event::Watching {
            iccid: self.sim.iccid.clone(),
            carrier: self.sim.carrier.clone(),
            region: self.sim.region.clone(),
        });
        let mut tick = 0u64;
        loop {
            let (lines, seen) = readings.take().await;
            let outcome = match self.agent.state().try_lock() {
                Ok(Some(_lock)) => self.tick(lines, seen).await,
                // Another command holds the directory: this tick is skipped, the next one tries again.
                Ok(None) => {
                    self.say(Event::Warning {
                        message: format!(
                            "another esim402-agent is using the state directory {}; this tick is skipped",
                            self.agent.state().path().display()
                        ),
                    });
                    Next::Continue
                }
                // The directory cannot be locked at all: no tick could ever run.
                Err(e) => Next::Stop(AgentError::Local(e)),
            };
            if let Next::Stop(e) = outcome {
                self.say(Event::Stopped {
                    reason: e.to_string(),
                    exit_code: e.exit_code() as u8,
                });
                return Err(e);
            }
            tick += 1;
            if self.settings.ticks.is_some_and(|n| tick >= n) {
                self.say(Event::Stopped {
                    reason: format!("{tick} ticks done"),
                    exit_code: 0,
                });
                return Ok(());
            }
            tokio::time::sleep(self.settings.interval).await;
        }
    }

    async fn tick(&mut self, lines: Result<Vec<String>, String>, seen: Seen) -> Next {
        match self.radio(lines, seen).await {
            Ok(()) => {}
            Err(e) if stops(&e) => return Next::Stop(e),
            Err(e) => self.say(Event::Warning {
                message: e.to_string(),
            }),
        }
        match self.audit().await.map(drop) {
            Ok(()) => {}
            Err(e) if stops(&e) => return Next::Stop(e),
            Err(e) => self.say(Event::Warning {
                message: e.to_string(),
            }),
        }
        match self.quota().await {
            Ok(()) => Next::Continue,
            Err(e) if stops(&e) => Next::Stop(e),
            Err(e) => {
                self.say(Event::Warning {
                    message: e.to_string(),
                });
                Next::Continue
            }
        }
    }

    /// Feed the readings; move the SIM if they say so.
    async fn radio(
        &mut self,
        lines: Result<Vec<String>, String>,
        seen: Seen,
    ) -> Result<(), AgentError> {
        let lines = lines.unwrap_or_else(|e| {
            // An unreadable source is reported; the SIM is still kept alive.
            self.say(Event::Warning { message: e });
            Vec::new()
        });
        // A switch of this SIM whose answer never came (lost reply, facilitator down) is finished first, with
        // the very same payment (the same body is the same pending request): choosing a target anew would sign
        // a second switch of the same SIM.
        let state = self.agent.state().load().map_err(AgentError::Local)?;
        if let Some(to) = crate::client::pending_switch(&state, &self.sim.iccid) {
            self.say(Event::Moving {
                iccid: self.sim.iccid.clone(),
                reason: "a switch paid earlier is still pending: sending the same payment again"
                    .into(),
                to: to.clone(),
            });
            return self.switch_to(&to, seen).await;
        }
        if lines.is_empty() {
            return Ok(());
        }
        // After a move, the readings say nothing about the new SIM until its profile is on the device (the modem
        // still reports the old one), nor while their source has not caught up: they must not pay for another
        // move.
        if self.moved_on.as_ref().is_some_and(|m| !m.settled)
            && self.profile_settled().await
            && let Some(m) = &mut self.moved_on
        {
            m.settled = true;
        }
        if let Some(m) = &mut self.moved_on {
            let held = held(m, &seen);
            m.ticks += 1;
            if held {
                return Ok(());
            }
            self.moved_on = None;
        }
        let mut trigger = None;
        for line in lines {
            match parse_line(&line) {
                Ok(r) => trigger = self.tracker.observe(r).or(trigger),
                Err(e) => self.say(Event::Warning {
                    message: e.to_string(),
                }),
            }
        }
        let Some(trigger) = trigger else {
            return Ok(());
        };
        let (Some(carrier), Some(region)) = (
            self.sim
                .carrier
                .as_deref()
                .and_then(|c| CarrierId::parse(c).ok()),
            self.sim
                .region
                .as_deref()
                .and_then(|r| Region::parse(r).ok()),
        ) else {
            return Err(AgentError::Usage(format!(
                "SIM {} has no known carrier and region in the state directory: cannot choose where to move",
                self.sim.iccid
            )));
        };
        let reason = match &trigger {
            signal::Trigger::Weak { dbm } => format!(
                "signal {dbm} dBm below {} dBm",
                self.settings.thresholds.below_dbm
            ),
            signal::Trigger::Denied { seen } => format!(
                "attach refused{}",
                seen.as_ref()
                    .map(|p| format!(" on network {p}"))
                    .unwrap_or_default()
            ),
        };
        let at = now();
        // From the state directory, not this watch's memory: the switches of an earlier run (or of `switch`)
        // count, and so do those still pending.
        let switches = Switches::of(&state, &self.sim.iccid);
        let to = switches
            .check(at, self.settings.max_switches_per_day)
            .and_then(|()| {
                next_move(
                    &trigger,
                    &carrier,
                    &region,
                    &self.settings.catalog,
                    &self.settings.carriers,
                    &switches.avoided(at),
                )
            })
            .map_err(|e| AgentError::Refused {
                status: 0,
                message: format!("{reason}, but {e}"),
            });
        let to = match to {
            Ok(m) => m,
            Err(e) => {
                // Nowhere to go is worth knowing, not a reason to stop keeping the SIM alive.
                self.say(Event::Warning {
                    message: e.to_string(),
                });
                return Ok(());
            }
        };
        self.say(Event::Moving {
            iccid: self.sim.iccid.clone(),
            reason,
            to: to.body(),
        });
        self.switch_to(&to.body(), seen).await
    }

    /// Switch the SIM to `to` (a switch body), paid (or a pending payment for that same body sent again), and
    /// watch the new SIM; `seen`: the readings of this tick, held back until the new profile counts.
    async fn switch_to(&mut self, to: &Value, seen: Seen) -> Result<(), AgentError> {
        let from = self.sim.iccid.clone();
        let moved = self.agent.switch(Some(&from), to).await?;
        self.sim = self.agent.sim(Some(&moved.iccid))?;
        self.tracker.reset();
        self.moved_on = Some(Moved {
            seen,
            ticks: 0,
            at: std::time::Instant::now(),
            settled: false,
        });
        self.say(Event::Switched {
            from,
            activation_code_at: activation_code_hint(&moved.iccid),
            iccid: moved.iccid,
            carrier: self.sim.carrier.clone(),
            region: self.sim.region.clone(),
        });
        Ok(())
    }

    /// Whether the SIM's profile is on the device (installed or enabled) or will never be (failed, deleted), as
    /// the facilitator last heard from the carrier; `false` if it cannot tell now.
    async fn profile_settled(&self) -> bool {
        match self
            .agent
            .sim_request(reqwest::Method::GET, &self.sim, "", None)
            .await
        {
            Ok(a) if a.status == 200 => matches!(
                a.body["profile_state"].as_str(),
                Some("installed" | "enabled" | "error" | "deleted")
            ),
            _ => false,
        }
    }

    /// Audit the SIM's log from the cursor to its end; the audit after it.
    async fn audit(&mut self) -> Result<Audit, AgentError> {
        let iccid = Iccid::parse(&self.sim.iccid)
            .map_err(|e| AgentError::Usage(format!("{}: {e}", self.sim.iccid)))?;
        let carrier = self
            .sim
            .carrier
            .as_deref()
            .and_then(|c| CarrierId::parse(c).ok())
            .ok_or_else(|| {
                AgentError::Usage(format!("SIM {} has no known carrier", self.sim.iccid))
            })?;
        // Roaming by the pinned catalog's region; a region it does not know checks no roaming.
        let roaming = self
            .sim
            .region
            .as_deref()
            .and_then(|r| Region::parse(r).ok())
            .and_then(|r| self.settings.catalog.region(&r))
            .map_or_else(RoamingPolicy::default, |r| r.roaming.clone());
        let state = self.agent.state().load().map_err(AgentError::Local)?;
        let mut audit = state
            .audits
            .get(&self.sim.iccid)
            .cloned()
            .unwrap_or_default();
        let (mut receipts, mut bytes) = (0u64, 0u64);
        let mut disputes = Vec::new();
        let mut warnings = Vec::new();
        let mut pages = 0u32;
        while !audit.log_end {
            let from = audit.next.max(1);
            let route = format!("/receipts?from={from}&limit={PAGE}");
            let answer = self
                .agent
                .sim_request(reqwest::Method::GET, &self.sim, &route, None)
                .await?;
            if answer.status != 200 {
                return Err(unexpected(&answer));
            }
            let page: Vec<LogEntry> = serde_json::from_value(answer.body["receipts"].clone())
                .map_err(|e| AgentError::Refused {
                    status: 200,
                    message: format!("unreadable receipt log: {e}"),
                })?;
            if page.is_empty() {
                break;
            }
            let view = SimView {
                iccid: &iccid,
                carrier: &carrier,
                roaming: &roaming,
            };
            for entry in &page {
                match audit.check(entry, view, &self.settings.catalog, now()) {
                    Some(Finding::Verified { bytes: b, .. }) => {
                        receipts += 1;
                        bytes += b;
                    }
                    Some(Finding::Disputed(d)) => disputes.push(d),
                    None => {}
                }
            }
            pages += 1;
            if page.len() < PAGE as usize || audit.log_end || pages >= MAX_PAGES_PER_TICK {
                break;
            }
            // A full page that did not move the cursor (a facilitator ignoring `from` answers the same page
            // forever) ends the pass instead of looping with the state directory locked.
            if audit.next <= from {
                warnings.push(format!(
                    "the receipt log of {} answered a full page from position {from} without moving past it: \
                     the audit stops here this tick",
                    self.sim.iccid
                ));
                break;
            }
        }
        if audit.log_end {
            warnings.push(format!(
                "the receipt log of {} reached position {}, past which it cannot be followed: no later receipt \
                 is audited or counted as used",
                self.sim.iccid,
                u64::MAX
            ));
        }
        let key = self.sim.iccid.clone();
        let saved = audit.clone();
        self.agent
            .state()
            .update(|s| {
                s.audits.insert(key, saved);
            })
            .map_err(AgentError::Local)?;
        if receipts > 0 {
            self.say(Event::Verified {
                iccid: self.sim.iccid.clone(),
                receipts,
                bytes,
                total_bytes: audit.verified_bytes,
            });
        }
        for dispute in disputes {
            self.say(Event::Disputed {
                iccid: self.sim.iccid.clone(),
                dispute,
            });
        }
        for message in warnings {
            self.say(Event::Warning { message });
        }
        Ok(audit)
    }

    async fn ask_quota(&self) -> Result<crate::client::Answer, AgentError> {
        let body = json!({"quota_kb": self.settings.quota_kb});
        self.agent
            .sim_request(reqwest::Method::POST, &self.sim, "/data", Some(&body))
            .await
    }

    /// Ask for quota; on the low-balance 402, top up if verified usage justifies it.
    async fn quota(&mut self) -> Result<(), AgentError> {
        let answer = self.ask_quota().await?;
        match answer.status {
            200 => {
                self.granted(&answer.body);
                return Ok(());
            }
            402 => {}
            _ => return Err(unexpected(&answer)),
        }
        let options = answer.body["top_up_options"].clone();
        // Receipts may have landed since the tick's audit: bring it up to date before deciding.
        let audit = self.audit().await?;
        let balance = self
            .agent
            .sim_request(reqwest::Method::GET, &self.sim, "/balance", None)
            .await?;
        if balance.status != 200 {
            return Err(unexpected(&balance));
        }
        // Without the figure there is nothing to check the verified usage against: no top-up (read as 0 it
        // would pass every check).
        let Some(credited) = balance.body["credited_bytes"].as_u64() else {
            self.say(Event::Warning {
                message: "the balance answer has no credited_bytes: top-up withheld".into(),
            });
            return Ok(());
        };
        // The last top-up this watch paid must show in the facilitator's figure: one that does not (paid, never
        // credited) stops auto top-ups (each would be paid for nothing) until it does.
        if let Some(last) = audit.last_top_up.filter(|t| t.unmet(credited)) {
            self.say(Event::Warning {
                message: format!(
                    "{}: the facilitator reports {credited} credited bytes, but the last top-up paid ({} bytes, \
                     on {} credited before it) should have raised that to {}: auto top-ups are stopped until it \
                     shows (check `esim402-agent balance --iccid {}`)",
                    self.sim.iccid,
                    last.bytes,
                    last.credited_before,
                    last.credited_before.saturating_add(last.bytes),
                    self.sim.iccid
                ),
            });
            return Ok(());
        }
        let state = self.agent.state().load().map_err(AgentError::Local)?;
        let floor = state.credit_floor(&self.sim.iccid);
        // The bytes the carrier's grants hold (a facilitator before them reports none).
        let reserved = balance.body["reserved_bytes"].as_u64().unwrap_or(0);
        if let LowBalance::Withhold { own_remaining } =
            on_low_balance(credited, floor, reserved, &audit)
        {
            self.say(Event::TopUpWithheld {
                iccid: self.sim.iccid.clone(),
                own_remaining_kb: own_remaining / 1_000,
                disputed_bytes: audit.disputed_bytes,
            });
            return Ok(());
        }
        let data_mb = self
            .settings
            .top_up_mb
            .or_else(|| options[0]["data_mb"].as_u64())
            .ok_or_else(|| AgentError::Refused {
                status: 402,
                message: "low-balance 402 without top_up_options".into(),
            })?;
        let paid = self
            .agent
            .top_up(Some(&self.sim.iccid), Some(data_mb))
            .await?;
        let key = self.sim.iccid.clone();
        let check = audit::TopUpCheck {
            credited_before: credited,
            bytes: data_mb.saturating_mul(esim402_core::usage::account::BYTES_PER_MB),
        };
        self.agent
            .state()
            .update(|s| s.audits.entry(key).or_default().last_top_up = Some(check))
            .map_err(AgentError::Local)?;
        self.say(Event::ToppedUp {
            iccid: self.sim.iccid.clone(),
            data_mb,
            amount_usdc: paid["amount_usdc"].as_str().unwrap_or("?").to_owned(),
            transaction: paid["transaction"].as_str().map(str::to_owned),
        });
        let again = self.ask_quota().await?;
        if again.status == 200 {
            self.granted(&again.body);
        }
        Ok(())
    }

    fn granted(&mut self, body: &Value) {
        self.say(Event::Granted {
            iccid: self.sim.iccid.clone(),
            granted_kb: body["granted_kb"].as_u64().unwrap_or(0),
            remaining_kb: body["remaining_kb"].as_u64().unwrap_or(0),
        });
    }
}

/// A tick's readings as [`Readings::stamp`] tells them apart.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Seen {
    /// A status file, as of its modification time (`None`: unknown).
    File(Option<std::time::SystemTime>),
    /// A command's output.
    Output(Vec<String>),
    /// New lines (stdin), or no source.
    Fresh,
}

/// A move the watch made, until the readings count again.
#[derive(Debug, Clone)]
struct Moved {
    /// The readings that caused it.
    seen: Seen,
    /// Ticks since.
    ticks: u32,
    /// When.
    at: std::time::Instant,
    /// The new profile is on the device (installed or enabled), or will never be (failed, deleted).
    settled: bool,
}

/// The longest wait after a move for the new profile to be on the device before readings count again.
const MOVE_WAIT: Duration = Duration::from_secs(600);

/// Whether readings `now` are held back after the move `m`: until its profile settled (at most
/// [`MOVE_WAIT`]), then while their source has not caught up ([`stale`]).
fn held(m: &Moved, now: &Seen) -> bool {
    if !m.settled && m.at.elapsed() < MOVE_WAIT {
        return true;
    }
    stale(&m.seen, m.ticks, now)
}

/// How many ticks after a move a command's unchanged output is still taken for the old SIM's.
const MOVE_GRACE_TICKS: u32 = 3;

/// Whether readings `now`, `ticks` ticks after the move that `at_move`'s readings caused, are those same readings
/// from a source that has not caught up yet: a status file not rewritten since (for as long as it is not), a
/// command's identical output within [`MOVE_GRACE_TICKS`] (the new profile refused alike prints alike: after
/// that it counts again). New stdin lines never are.
fn stale(at_move: &Seen, ticks: u32, now: &Seen) -> bool {
    match (at_move, now) {
        (Seen::File(Some(a)), Seen::File(Some(b))) => a == b,
        (Seen::Output(a), Seen::Output(b)) => a == b && ticks < MOVE_GRACE_TICKS,
        _ => false,
    }
}

/// The `--signal-command` to run for a tick's readings: `sh -c`, without stdin and without the wallet key in
/// its environment (a modem tool never needs it, nor gets to log it).
fn signal_command(command: &str) -> tokio::process::Command {
    let mut run = tokio::process::Command::new("sh");
    run.arg("-c")
        .arg(command)
        .stdin(std::process::Stdio::null())
        .env_remove(crate::config::KEY_ENV)
        .kill_on_drop(true);
    run
}

/// The longest part of a failed signal command's stderr a warning repeats.
const COMMAND_ERROR_CHARS: usize = 80;

/// The warning for a signal command that failed: its exit status (or the signal that killed it) and at most the
/// first line of its stderr, cut to [`COMMAND_ERROR_CHARS`]: a hint at what went wrong, never its whole output
/// (a modem tool may print more than belongs in logs).
fn command_failed(status: std::process::ExitStatus, stderr: &[u8]) -> String {
    let stderr = String::from_utf8_lossy(stderr);
    let first: String = stderr
        .lines()
        .map(str::trim)
        .find(|l| !l.is_empty())
        .unwrap_or_default()
        .chars()
        .filter(|c| !c.is_control())
        .take(COMMAND_ERROR_CHARS)
        .collect();
    format!(
        "signal command failed ({status}){}; its output is not taken as a reading: no radio reading this tick",
        if first.is_empty() {
            String::new()
        } else {
            format!(": {first:?}")
        }
    )
}

/// Where a new SIM's activation code is read (it is never printed by `watch`).
fn activation_code_hint(iccid: &str) -> String {
    format!("kept in the state directory: `esim402-agent status --iccid {iccid} --activation-code`")
}

/// Errors that end the watch: the policy refused a payment, the facilitator refused the SIM, or a local
/// problem (state, usage). An unreachable, failing or throttling facilitator ([`AgentError::Unavailable`], see
/// [`crate::client::unexpected`]) is retried next tick.
fn stops(e: &AgentError) -> bool {
    !matches!(e, AgentError::Unavailable { .. })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "tests")]
    use serde_json::{Value, json};

    use crate::state::{SimRecord, SpendStatus, StateDir};
    use crate::{Agent, AgentError, Config, SpendPolicy, WalletKey};

    /// Readings that moved the SIM are not taken again for the new SIM while their source has not caught up:
    /// a file until it is rewritten (even with the same content: that is a new reading), a command's identical
    /// output for a few ticks only; stdin lines always count.
    #[test]
    fn a_source_that_has_not_caught_up_with_a_move_is_stale() {
        use super::{MOVE_GRACE_TICKS, Seen, stale};
        let t = std::time::SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(100);
        let later = t + std::time::Duration::from_millis(1);
        assert!(stale(&Seen::File(Some(t)), 50, &Seen::File(Some(t))));
        assert!(!stale(&Seen::File(Some(t)), 0, &Seen::File(Some(later))));
        assert!(!stale(&Seen::File(None), 0, &Seen::File(None)));
        let out = Seen::Output(vec!["+CEREG: 0,3".into()]);
        assert!(stale(&out, 0, &out));
        assert!(stale(&out, MOVE_GRACE_TICKS - 1, &out));
        assert!(!stale(&out, MOVE_GRACE_TICKS, &out));
        assert!(!stale(&out, 0, &Seen::Output(vec!["+CEREG: 0,1".into()])));
        assert!(!stale(&Seen::Fresh, 0, &Seen::Fresh));
    }

    /// After a move, readings wait for the new profile to be on the device (at most [`MOVE_WAIT`]), then for
    /// their source to catch up: a poller rewriting the old profile's refused attach every few seconds moves
    /// nothing until the new profile is installed.
    #[test]
    fn readings_wait_for_the_new_profile_then_for_their_source() {
        use super::{MOVE_WAIT, Moved, Seen, held};
        let t = std::time::SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(100);
        let rewritten = Seen::File(Some(t + std::time::Duration::from_secs(3)));
        let mut m = Moved {
            seen: Seen::File(Some(t)),
            ticks: 0,
            at: std::time::Instant::now(),
            settled: false,
        };
        assert!(held(&m, &rewritten), "not installed yet");
        assert!(held(&m, &Seen::Fresh), "stdin too");
        m.settled = true;
        assert!(
            !held(&m, &rewritten),
            "installed, and the file rewritten since"
        );
        assert!(
            held(&m, &Seen::File(Some(t))),
            "installed, the file as it was"
        );
        let waited = Moved {
            at: std::time::Instant::now() - MOVE_WAIT,
            settled: false,
            ..m
        };
        assert!(!held(&waited, &rewritten), "waited long enough");
    }

    fn iccid(body: &str) -> String {
        esim402_core::esim::Iccid::with_check_digit(body)
            .unwrap()
            .to_string()
    }

    /// A facilitator for a watch: receipts (none), quota (granted), the profile installed, and a switch paid
    /// with `switched` (its answers in turn, as [`crate::testing::facilitator`]).
    async fn facilitator(switched: Vec<(u16, Value)>) -> crate::testing::Server {
        let switched = std::sync::Mutex::new((switched, 0usize));
        crate::testing::Server::start(move |seen| {
            if seen.method == "GET" {
                return (
                    200,
                    vec![],
                    json!({"receipts": [], "profile_state": "installed"}),
                );
            }
            if seen.target.ends_with("/data") {
                return (200, vec![], json!({"granted_kb": 1, "remaining_kb": 1}));
            }
            if seen.header("payment-signature").is_none() {
                return crate::testing::challenge(seen);
            }
            let mut s = switched.lock().unwrap();
            let (answers, next) = &mut *s;
            let answer = answers[(*next).min(answers.len() - 1)].clone();
            *next += 1;
            (answer.0, vec![], answer.1)
        })
        .await
    }

    /// An agent on `url` whose state holds the SIM `iccid` (tmobile in us-west, its token from `url`).
    fn agent_with_sim(url: &str, dir: &std::path::Path, iccid: &str) -> Agent {
        let key = WalletKey::parse(&"11".repeat(32), "test").unwrap();
        let config = Config::new(url, key).unwrap();
        let state = StateDir::new(dir);
        let origin = config.origin();
        state
            .update(|s| {
                s.sims.insert(
                    iccid.to_owned(),
                    SimRecord {
                        iccid: iccid.to_owned(),
                        access_token: Some("sim_secret".into()),
                        activation_code: None,
                        region: Some("us-west".into()),
                        carrier: Some("tmobile".into()),
                        network: Some("eip155:31337".into()),
                        activated_at: 1,
                        terminated: false,
                        origin: Some(origin),
                        replaces: None,
                        data_mb: None,
                    },
                );
            })
            .unwrap();
        Agent::new(config, SpendPolicy::default(), state, false).unwrap()
    }

    fn settings(iccid: &str, signal: Option<super::SignalSource>) -> super::WatchSettings {
        super::WatchSettings {
            iccid: Some(iccid.to_owned()),
            interval: std::time::Duration::from_millis(10),
            quota_kb: 1,
            top_up_mb: None,
            signal,
            thresholds: super::Thresholds {
                below_dbm: -100,
                after: 1,
            },
            carriers: Vec::new(),
            catalog: esim402_core::esim::Catalog::builtin().clone(),
            ticks: Some(1),
            max_switches_per_day: super::plan::MAX_SWITCHES_PER_DAY,
        }
    }

    /// Run one tick of a watch over `iccid`; its events.
    async fn one_tick(agent: &Agent, settings: super::WatchSettings) -> Vec<super::Event> {
        let mut events = Vec::new();
        let watcher = super::Watcher::new(agent, settings, |e| events.push(e.clone())).unwrap();
        watcher.run().await.unwrap();
        events
    }

    /// A switch whose reply was lost is finished by the next watch, with the very same payment, before any
    /// reading is looked at (there are none here). Before, it was left pending, and the next weak signal chose
    /// a target anew: a second switch of the same SIM, paid again.
    #[tokio::test]
    async fn a_pending_switch_is_sent_again_not_chosen_anew() {
        let (old, new) = (iccid("890126000000000001"), iccid("890126000000000002"));
        let f = facilitator(vec![
            (500, json!({"error": {"message": "down"}})),
            (200, crate::testing::sim_answer(&new)),
        ])
        .await;
        let dir = tempfile::tempdir().unwrap();
        let agent = agent_with_sim(&f.url, dir.path(), &old);
        let e = agent
            .switch(Some(&old), &json!({"carrier": "att"}))
            .await
            .unwrap_err();
        assert!(
            matches!(e, AgentError::Unavailable { pending: true, .. }),
            "{e}"
        );
        let events = one_tick(&agent, settings(&old, None)).await;
        assert!(
            events.iter().any(
                |e| matches!(e, super::Event::Moving { to, .. } if *to == json!({"carrier": "att"}))
            ),
            "{events:?}"
        );
        assert!(
            events
                .iter()
                .any(|e| matches!(e, super::Event::Switched { iccid, .. } if *iccid == new)),
            "{events:?}"
        );
        // Fix: the new SIM's activation code is not in the watch's output (JSON or text), only where to read it.
        // Before, `Switched` carried it.
        for e in &events {
            let (json, text) = (serde_json::to_string(e).unwrap(), e.human());
            assert!(!json.contains("LPA:") && !text.contains("LPA:"), "{json}");
        }
        let switched = events
            .iter()
            .find_map(|e| match e {
                super::Event::Switched {
                    activation_code_at, ..
                } => Some(activation_code_at.clone()),
                _ => None,
            })
            .unwrap();
        assert!(
            switched.contains(&format!("status --iccid {new} --activation-code")),
            "{switched}"
        );
        let paid = f.payments();
        assert_eq!(paid.len(), 2, "{paid:?}");
        assert_eq!(paid[0], paid[1], "the same payment, sent again");
        let st = agent.state().load().unwrap();
        assert!(st.pending.is_empty(), "{st:?}");
        assert_eq!(st.spends.len(), 1);
        assert_eq!(st.sims[&new].replaces.as_deref(), Some(old.as_str()));
        assert!(st.sims[&old].terminated);
    }

    /// A watch started again counts the switches made before it (by an earlier watch, `switch`, or still
    /// pending): with the day's three made, a weak signal moves nothing and pays nothing. Before, each watch
    /// started with three fresh switches.
    #[tokio::test]
    async fn a_restarted_watch_counts_the_days_switches_from_the_state() {
        let (first, second) = (iccid("890126000000000001"), iccid("890126000000000002"));
        let f = facilitator(vec![(
            200,
            crate::testing::sim_answer(&iccid("890126000000000003")),
        )])
        .await;
        let dir = tempfile::tempdir().unwrap();
        let agent = agent_with_sim(&f.url, dir.path(), &second);
        let now = super::now();
        agent
            .state()
            .update(|s| {
                let mut older = s.sims[&second].clone();
                older.iccid.clone_from(&first);
                older.terminated = true;
                s.sims.insert(first.clone(), older);
                s.sims.get_mut(&second).unwrap().replaces = Some(first.clone());
                for (n, (id, status)) in [
                    (&first, SpendStatus::Settled),
                    (&first, SpendStatus::Unknown),
                    (&second, SpendStatus::Settled),
                ]
                .into_iter()
                .enumerate()
                {
                    s.spends.push(crate::state::Spend {
                        payment_id: format!("pay_{n}"),
                        purpose: format!(
                            "{}{}",
                            crate::client::switch_purpose_prefix(id),
                            json!({"carrier": "verizon"})
                        ),
                        at: now - now % 86_400,
                        amount_usdc: "0.42".parse().unwrap(),
                        network: "eip155:31337".into(),
                        pay_to: "0x3C44CdDdB6a900fa2b585dd299e03d12FA4293BC".into(),
                        status,
                        transaction: None,
                    });
                }
            })
            .unwrap();
        let readings = dir.path().join("signal");
        std::fs::write(&readings, "-120\n").unwrap();
        let events = one_tick(
            &agent,
            settings(&second, Some(super::SignalSource::File(readings))),
        )
        .await;
        assert!(
            events.iter().any(|e| matches!(e, super::Event::Warning { message } if message.contains("3 switches today"))),
            "{events:?}"
        );
        assert!(f.payments().is_empty(), "nothing paid");
        assert!(
            !events
                .iter()
                .any(|e| matches!(e, super::Event::Moving { .. }))
        );
    }

    /// The signal command runs without the wallet key in its environment (it inherited the agent's whole
    /// environment before, key included).
    #[tokio::test]
    async fn the_signal_command_never_sees_the_wallet_key() {
        let run = super::signal_command("echo \"key=${ESIM402_WALLET_KEY-unset}\"");
        let removed: Vec<_> = run
            .as_std()
            .get_envs()
            .filter(|(_, v)| v.is_none())
            .map(|(k, _)| k.to_owned())
            .collect();
        assert_eq!(removed, [crate::config::KEY_ENV]);
        let out = super::signal_command("echo \"key=${ESIM402_WALLET_KEY-unset}\"")
            .output()
            .await
            .unwrap();
        assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "key=unset");
    }

    /// A facilitator that answers a switch with a new SIM, and an agent on it (its state in the returned
    /// directory) holding `sim`: where a weak signal reading pays for a switch.
    async fn switchable(sim: &str) -> (crate::testing::Server, tempfile::TempDir, Agent) {
        let f = facilitator(vec![(
            200,
            crate::testing::sim_answer(&iccid("890126000000000002")),
        )])
        .await;
        let dir = tempfile::tempdir().unwrap();
        let agent = agent_with_sim(&f.url, dir.path(), sim);
        (f, dir, agent)
    }

    /// The messages of the warnings among `events`.
    fn warnings(events: &[super::Event]) -> Vec<String> {
        events
            .iter()
            .filter_map(|e| match e {
                super::Event::Warning { message } => Some(message.clone()),
                _ => None,
            })
            .collect()
    }

    /// Fix: a signal file that cannot be read (here: not there) is a warning every tick naming the file and the
    /// error, and no reading. Before, a missing file was taken silently for a quiet radio: a watch given a wrong
    /// path ran for good without a word, never able to switch.
    #[tokio::test]
    async fn a_signal_file_that_cannot_be_read_is_warned_of_every_tick() {
        let sim = iccid("890126000000000001");
        let (f, dir, agent) = switchable(&sim).await;
        let missing = dir.path().join("no-such-status");
        let mut s = settings(&sim, Some(super::SignalSource::File(missing.clone())));
        s.ticks = Some(2);
        let events = one_tick(&agent, s).await;
        let warned: Vec<_> = warnings(&events)
            .into_iter()
            .filter(|m| m.contains(&missing.display().to_string()))
            .collect();
        assert_eq!(warned.len(), 2, "one a tick: {events:?}");
        assert!(warned[0].contains("No such file"), "{}", warned[0]);
        assert!(warned[0].contains("no radio reading"), "{}", warned[0]);
        assert!(f.payments().is_empty(), "{events:?}");
    }

    /// Fix: a signal command that fails (exits non-zero, or is killed) gives no reading, whatever it printed, and
    /// a warning names its exit status with at most the first line of its stderr. Before, its exit status was
    /// ignored: here its `-120` was a weak reading and paid for a switch.
    #[tokio::test]
    async fn a_failing_signal_command_is_no_reading() {
        for (command, status) in [
            (
                "echo -120; printf 'modem not found\\nsecret=abc\\n' >&2; exit 3",
                "exit status: 3",
            ),
            ("echo -120; kill -9 $$", "signal: 9"),
        ] {
            let sim = iccid("890126000000000001");
            let (f, _dir, agent) = switchable(&sim).await;
            let events = one_tick(
                &agent,
                settings(&sim, Some(super::SignalSource::Command(command.into()))),
            )
            .await;
            assert!(f.payments().is_empty(), "{events:?}");
            assert!(
                !events
                    .iter()
                    .any(|e| matches!(e, super::Event::Moving { .. })),
                "{events:?}"
            );
            let warned = warnings(&events);
            let failed = warned
                .iter()
                .find(|m| m.starts_with("signal command failed"))
                .unwrap_or_else(|| panic!("{events:?}"));
            assert!(failed.contains(status), "{failed}");
            assert!(!failed.contains("secret"), "one line at most: {failed}");
            if status.starts_with("exit") {
                assert!(failed.contains("modem not found"), "{failed}");
            }
        }
        // A command that succeeds is read as before.
        let sim = iccid("890126000000000001");
        let (f, _dir, agent) = switchable(&sim).await;
        let events = one_tick(
            &agent,
            settings(&sim, Some(super::SignalSource::Command("echo -120".into()))),
        )
        .await;
        assert_eq!(f.payments().len(), 1, "a weak reading moves: {events:?}");
    }

    /// An agent on `url` whose state holds `iccid` activated with `data_mb`, its audit at `verified_bytes`.
    fn agent_with_audit(
        url: &str,
        dir: &std::path::Path,
        iccid: &str,
        data_mb: u64,
        verified_bytes: u64,
    ) -> Agent {
        let agent = agent_with_sim(url, dir, iccid);
        agent
            .state()
            .update(|s| {
                s.sims.get_mut(iccid).unwrap().data_mb = Some(data_mb);
                s.audits.insert(
                    iccid.to_owned(),
                    super::Audit {
                        next: 1,
                        verified_bytes,
                        ..super::Audit::default()
                    },
                );
            })
            .unwrap();
        agent
    }

    /// A facilitator whose SIM is always low (quota: the low-balance 402), whose balance reports `credited` bytes
    /// whatever was paid, and which takes every top-up paid.
    async fn never_credits(credited: u64) -> crate::testing::Server {
        crate::testing::Server::start(move |seen| {
            if seen.method == "GET" {
                if seen.target.contains("/balance") {
                    return (200, vec![], json!({"credited_bytes": credited}));
                }
                return (200, vec![], json!({"receipts": []}));
            }
            let body: Value = serde_json::from_slice(&seen.body).unwrap_or(Value::Null);
            if body.get("top_up_mb").is_none() {
                return (
                    402,
                    vec![],
                    json!({"error": {"code": "low_balance", "message": "low"},
                           "top_up_options": [{"data_mb": 10, "amount_usdc": "0.42"}]}),
                );
            }
            if seen.header("payment-signature").is_none() {
                return crate::testing::challenge(seen);
            }
            (
                200,
                vec![],
                json!({"status": "topped_up", "topped_up_mb": 10, "amount_usdc": "0.42", "transaction": "0xab"}),
            )
        })
        .await
    }

    /// Fix: a facilitator that takes a top-up and never credits it (its `credited_bytes` stays where it was) gets
    /// one top-up, not one per tick: the next ticks warn that the last top-up does not show, and the credit this
    /// agent counts is never below what it paid for. Before, every tick found the SIM low by the facilitator's
    /// figure and paid again, up to the daily cap, every day.
    #[tokio::test]
    async fn a_top_up_the_facilitator_never_credits_is_not_paid_again() {
        let sim = iccid("890126000000000001");
        let f = never_credits(1_000_000).await;
        let dir = tempfile::tempdir().unwrap();
        let agent = agent_with_audit(&f.url, dir.path(), &sim, 1, 950_000);
        let mut s = settings(&sim, None);
        s.ticks = Some(3);
        let events = one_tick(&agent, s).await;
        assert_eq!(f.payments().len(), 1, "one top-up: {events:?}");
        let topped = events
            .iter()
            .filter(|e| matches!(e, super::Event::ToppedUp { .. }))
            .count();
        assert_eq!(topped, 1, "{events:?}");
        assert!(
            events
                .iter()
                .any(|e| matches!(e, super::Event::Warning { message }
                if message.contains("auto top-ups are stopped"))),
            "{events:?}"
        );
        // Fix: the warning's source lines are joined with one space (they held runs of indentation before).
        assert!(
            warnings(&events).iter().all(|m| !m.contains("  ")),
            "{events:?}"
        );
        let st = agent.state().load().unwrap();
        assert_eq!(
            st.audits[&sim].last_top_up,
            Some(super::audit::TopUpCheck {
                credited_before: 1_000_000,
                bytes: 10_000_000
            })
        );
    }

    /// Fix: a facilitator reporting less credit than the activation this agent paid for (here: none) gets no
    /// top-up while the agent's own count leaves data: withheld. Before, `credited_bytes` was taken as
    /// reported, and the SIM was "low" from the start.
    #[tokio::test]
    async fn an_under_reported_credit_pays_no_top_up() {
        let sim = iccid("890126000000000001");
        let f = never_credits(0).await;
        let dir = tempfile::tempdir().unwrap();
        let agent = agent_with_audit(&f.url, dir.path(), &sim, 10, 0);
        let events = one_tick(&agent, settings(&sim, None)).await;
        assert!(f.payments().is_empty(), "{events:?}");
        assert!(
            events.iter().any(|e| matches!(
                e,
                super::Event::TopUpWithheld {
                    own_remaining_kb: 10_000,
                    ..
                }
            )),
            "{events:?}"
        );
    }

    /// Fix: one throttled or timed-out answer to an ordinary request (429, 408, 499, or one with `Retry-After`)
    /// is a warning, and the next tick goes on. Before, it was a refusal and the watch stopped for good (exit 4).
    #[tokio::test]
    async fn a_throttled_request_does_not_end_the_watch() {
        let sim = iccid("890126000000000001");
        let calls = std::sync::Mutex::new(0usize);
        let f = crate::testing::Server::start(move |seen| {
            if seen.method == "GET" {
                let mut n = calls.lock().unwrap();
                *n += 1;
                return match *n {
                    1 => (429, vec![], json!({"error": {"message": "slow down"}})),
                    2 => (403, vec![("retry-after", "1".into())], Value::Null),
                    _ => (200, vec![], json!({"receipts": []})),
                };
            }
            (200, vec![], json!({"granted_kb": 1, "remaining_kb": 5}))
        })
        .await;
        let dir = tempfile::tempdir().unwrap();
        let agent = agent_with_sim(&f.url, dir.path(), &sim);
        let mut s = settings(&sim, None);
        s.ticks = Some(3);
        let events = one_tick(&agent, s).await;
        let warnings = events
            .iter()
            .filter(
                |e| matches!(e, super::Event::Warning { message } if message.contains("throttled")),
            )
            .count();
        assert_eq!(warnings, 2, "{events:?}");
        let granted = events
            .iter()
            .filter(|e| matches!(e, super::Event::Granted { .. }))
            .count();
        assert_eq!(granted, 3, "every tick went on: {events:?}");
    }

    /// `n` log entries from position `from`, each a receipt that does not verify (disputed: nothing counted).
    fn log_page(sim: &str, from: u64, n: u64) -> Value {
        let entries: Vec<Value> = (from..from + n)
            .map(|k| {
                json!({"n": k, "at": 1, "state": "accepted", "receipt": {
                    "carrier": "tmobile", "iccid": sim, "plmn": "310-260", "session_id": "s", "seq": k,
                    "window_start": 1, "window_end": 2, "bytes_up": 1, "bytes_down": 1, "signature": "0x00"}})
            })
            .collect();
        json!({ "receipts": entries })
    }

    /// The `from` of a receipt log request.
    fn from_of(target: &str) -> u64 {
        target
            .split_once("from=")
            .and_then(|(_, rest)| rest.split('&').next())
            .and_then(|n| n.parse().ok())
            .unwrap_or(1)
    }

    /// Fix: the audit never loops holding the state lock: a facilitator answering the same full page whatever
    /// `from` says stops the pass (a warning) once a page does not move the cursor, and one whose log never ends
    /// is read at most [`super::MAX_PAGES_PER_TICK`] pages a tick. Before, both looped forever.
    #[tokio::test]
    async fn the_receipt_audit_never_loops_forever() {
        let sim = iccid("890126000000000001");
        let page = log_page(&sim, 1, u64::from(super::PAGE));
        let same = crate::testing::Server::start(move |seen| {
            if seen.method == "GET" {
                return (200, vec![], page.clone());
            }
            (200, vec![], json!({"granted_kb": 1, "remaining_kb": 5}))
        })
        .await;
        let dir = tempfile::tempdir().unwrap();
        let agent = agent_with_sim(&same.url, dir.path(), &sim);
        let events = tokio::time::timeout(
            std::time::Duration::from_secs(60),
            one_tick(&agent, settings(&sim, None)),
        )
        .await
        .expect("the tick ended");
        assert!(
            events
                .iter()
                .any(|e| matches!(e, super::Event::Warning { message }
                if message.contains("without moving past it"))),
            "{:?}",
            events.last()
        );
        assert!(
            warnings(&events).iter().all(|m| !m.contains("  ")),
            "{events:?}"
        );
        let asked = same.seen().iter().filter(|s| s.method == "GET").count();
        assert_eq!(asked, 2, "the page, then the same page again");

        let endless = crate::testing::Server::start(move |seen| {
            if seen.method == "GET" {
                return (
                    200,
                    vec![],
                    log_page(&sim_of(&seen.target), from_of(&seen.target), 1_000),
                );
            }
            (200, vec![], json!({"granted_kb": 1, "remaining_kb": 5}))
        })
        .await;
        let dir = tempfile::tempdir().unwrap();
        let agent = agent_with_sim(&endless.url, dir.path(), &sim);
        tokio::time::timeout(
            std::time::Duration::from_secs(120),
            one_tick(&agent, settings(&sim, None)),
        )
        .await
        .expect("the tick ended");
        let asked = endless.seen().iter().filter(|s| s.method == "GET").count();
        assert_eq!(asked, super::MAX_PAGES_PER_TICK as usize);
        let st = agent.state().load().unwrap();
        assert_eq!(
            st.audits[&sim].next,
            u64::from(super::MAX_PAGES_PER_TICK) * 1_000 + 1,
            "audited on next tick"
        );
    }

    /// The ICCID of a `/v1/esim/{iccid}/…` target.
    fn sim_of(target: &str) -> String {
        target.split('/').nth(3).unwrap_or_default().to_owned()
    }
}
