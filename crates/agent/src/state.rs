//! The agent's state directory: one `state.json` holding the SIMs (with their access tokens), the spend
//! history and the payments in flight.
//!
//! Invariants:
//! - Every change rewrites the file atomically: a temporary file in the same directory (mode 0600: it holds
//!   access tokens and signed payments; the directory is made 0700), flushed to disk, then renamed over
//!   `state.json`. A crash leaves the old or the new state, never half of one.
//! - A payment is recorded as pending (with its spend entry, which counts against the daily cap) *before* it is
//!   sent; only an answer removes it.
//! - One command at a time per state directory: [`StateDir::lock`] takes an exclusive `flock` on `<dir>/lock`
//!   for the whole command (released by the OS if the process dies), so no two read-modify-writes interleave.

use std::collections::BTreeMap;
use std::io::Write as _;
use std::path::{Path, PathBuf};

use esim402_core::UsdcAmount;
use serde::{Deserialize, Serialize};

/// The state file's name inside the directory.
pub const FILE: &str = "state.json";

/// A SIM this agent bought.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SimRecord {
    /// Its ICCID.
    pub iccid: String,
    /// Its access token (`sim_…`), if the activation answer carried one.
    #[serde(default)]
    pub access_token: Option<String>,
    /// The `LPA:1$…` activation code.
    #[serde(default)]
    pub activation_code: Option<String>,
    /// Region and carrier, as the answer said.
    #[serde(default)]
    pub region: Option<String>,
    /// The carrier.
    #[serde(default)]
    pub carrier: Option<String>,
    /// The network it was paid on (CAIP-2), used for wallet sign-ins.
    #[serde(default)]
    pub network: Option<String>,
    /// Unix seconds of the activation.
    pub activated_at: u64,
    /// The agent terminated it.
    #[serde(default)]
    pub terminated: bool,
    /// The facilitator that issued it (`scheme://host[:port]`, lower case): its access token is sent to that
    /// origin only. `None` for a SIM recorded before origins were kept: its issuer is unknown, so its token is
    /// never sent (a wallet sign-in is used instead, which names the origin it is for).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub origin: Option<String>,
    /// The SIM this one replaced (a paid switch): `watch` follows the line back to count its switches and the
    /// carriers it left (see [`crate::watch::plan::Switches::of`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replaces: Option<String>,
    /// The MB its activation paid for, as the agent asked for them (`None`: a switch's SIM, which takes over an
    /// unknown remainder, or one recorded before this was kept): `watch`'s floor under the facilitator's
    /// credit figure ([`State::credit_floor`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data_mb: Option<u64>,
}

impl SimRecord {
    /// The SIM's access token, if `origin` (the facilitator about to be called) is the one that issued it.
    pub fn token_for(&self, origin: &str) -> Option<&str> {
        // Compared normalised: a record of an earlier agent kept the origin as `--url` spelled it.
        let issuer = self.origin.as_deref().and_then(crate::config::bare_origin);
        self.access_token
            .as_deref()
            .filter(|_| issuer.as_deref() == Some(origin))
    }
}

/// Where a spend stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SpendStatus {
    /// Signed and (maybe) sent; no answer yet.
    Pending,
    /// Settled on chain.
    Settled,
    /// Answered with something that does not say whether money moved, or given up on without an answer
    /// (`pending --forget`, see [`State::abandon`]): kept, counts against the cap.
    Unknown,
}

/// One payment the agent signed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Spend {
    /// The payment-identifier it carries.
    pub payment_id: String,
    /// What it paid for (`activate …`, `top-up …`).
    pub purpose: String,
    /// Unix seconds when it was signed.
    pub at: u64,
    /// Its amount.
    pub amount_usdc: UsdcAmount,
    /// CAIP-2 network.
    pub network: String,
    /// Recipient.
    pub pay_to: String,
    /// Where it stands.
    pub status: SpendStatus,
    /// The settlement transaction, once known.
    #[serde(default)]
    pub transaction: Option<String>,
}

/// A signed payment kept until the facilitator answers it (see the module's invariants).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PendingPayment {
    /// Its payment-identifier.
    pub payment_id: String,
    /// The `PAYMENT-SIGNATURE` value, sent again as is.
    pub header: String,
    /// Unix seconds after which the authorization is no longer valid.
    pub valid_before: u64,
    /// The device request the paying proxy signed it for (its requester and `Idempotency-Key`): sent again for
    /// that request only, and its answer kept there ([`crate::replay`]). `None`: the CLI's own, or an earlier
    /// agent's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub slot: Option<crate::replay::Slot>,
    /// The `X-Agent-ID` the CLI's own request was sent with (`activate --agent-id`), sent again with it: a
    /// request the facilitator never saw orders the SIM then, and must carry its label. `None`: none, or a
    /// proxied device's (its `slot` carries its own headers).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub label: Option<String>,
}

/// A pending payment the agent was told to stop sending (`esim402-agent pending --forget`): it may have been
/// charged (its spend stays counted), and no answer ended it. Kept for its owner as a record only: never its
/// signed payment (a live EIP-3009 authorization until it expires, which anyone holding it could send), which
/// leaves the state with it. An earlier agent's record with a `header` still loads; the header is dropped at the
/// next save.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AbandonedPayment {
    /// The request it paid for (its key in [`State::pending`]: `<method> <origin><path>[ <body>]`).
    pub request: String,
    /// What it paid for, as `esim402-agent pending` told it (`an activation (a new SIM)`, …).
    #[serde(default)]
    pub purchase: String,
    /// The facilitator it was pending with (its origin, or the host an earlier agent's signature named), if
    /// known.
    #[serde(default)]
    pub origin: Option<String>,
    /// Its amount, if its spend is recorded.
    #[serde(default)]
    pub amount_usdc: Option<UsdcAmount>,
    /// Unix seconds when it was signed, if its spend is recorded.
    #[serde(default)]
    pub signed_at: Option<u64>,
    /// Unix seconds after which its authorization is no longer valid.
    pub valid_before: u64,
    /// Unix seconds when it was given up on.
    pub abandoned_at: u64,
}

/// How long a spend nothing else needs is kept in a state's record ([`State::prune_spends`]).
pub const SPEND_HISTORY_SECS: u64 = 30 * 86_400;

/// The SIM and the MB of a top-up's spend (purpose `top-up <iccid> <MB> MB`).
fn top_up_of(purpose: &str) -> Option<(&str, u64)> {
    let mut words = purpose.strip_prefix("top-up ")?.split(' ');
    let (iccid, mb, unit) = (words.next()?, words.next()?, words.next()?);
    (unit == "MB" && words.next().is_none())
        .then(|| mb.parse::<u64>().ok().map(|mb| (iccid, mb)))
        .flatten()
}

/// Everything in `state.json`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct State {
    /// SIMs by ICCID.
    #[serde(default)]
    pub sims: BTreeMap<String, SimRecord>,
    /// Every payment signed, oldest first.
    #[serde(default)]
    pub spends: Vec<Spend>,
    /// Payments in flight, by the request they pay for (see [`crate::client`]).
    #[serde(default)]
    pub pending: BTreeMap<String, PendingPayment>,
    /// `watch`'s audit of each SIM's receipt log, by ICCID (see [`crate::watch::audit`]).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub audits: BTreeMap<String, crate::watch::audit::Audit>,
    /// Paid answers the agent could not record (a 2xx naming no SIM), whole, by payment id: the payment went
    /// through and is settled, so the answer is kept here for its owner (access token included: the file is
    /// private) instead of being asked for again on every run.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub unrecorded_answers: BTreeMap<String, serde_json::Value>,
    /// Pending payments given up on (`pending --forget`), by payment id: no longer sent, their spends kept.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub abandoned: BTreeMap<String, AbandonedPayment>,
    /// The paying proxy's paid answers to a device's requests, kept a while so the same request sent again
    /// gets its answer back instead of paying again (see [`crate::replay`]; their tokens are as private here as
    /// the SIMs').
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub paid_answers: BTreeMap<String, crate::replay::KeptAnswer>,
    /// Paid answers of a device's payments that another of its requests collected, kept for the request each
    /// was signed for until it comes back, at any age ([`crate::replay::keep_collected`]).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub collected_answers: BTreeMap<String, crate::replay::KeptAnswer>,
}

impl State {
    /// What this agent's own records say the SIM `iccid` was credited at least, in bytes: its activation's MB (as
    /// the agent asked for it, recorded with the SIM; a SIM a switch made takes over an unknown remainder, so none)
    /// and the MB of every top-up of it whose payment settled (spend purpose `top-up <iccid> <MB> MB`).
    pub fn credit_floor(&self, iccid: &str) -> u64 {
        use esim402_core::usage::account::BYTES_PER_MB;
        let activation = self
            .sims
            .get(iccid)
            .filter(|s| s.replaces.is_none())
            .and_then(|s| s.data_mb)
            .unwrap_or(0);
        let top_ups = self
            .spends
            .iter()
            .filter(|s| s.status == SpendStatus::Settled)
            .filter_map(|s| top_up_of(&s.purpose).filter(|(id, _)| *id == iccid))
            .map(|(_, mb)| mb)
            .fold(0u64, u64::saturating_add);
        activation
            .saturating_add(top_ups)
            .saturating_mul(BYTES_PER_MB)
    }

    /// What was signed on `now`'s UTC day, from 00:00 to 24:00 (pending and unknown spends included). A spend
    /// dated on a later day (signed while the clock ran ahead) is that day's, not today's.
    pub fn spent_today(&self, now: u64) -> UsdcAmount {
        let day_start = now - now % 86_400;
        let day = day_start..day_start.saturating_add(86_400);
        self.spends
            .iter()
            .filter(|s| day.contains(&s.at))
            .fold(UsdcAmount::ZERO, |sum, s| {
                sum.checked_add(s.amount_usdc)
                    .unwrap_or(UsdcAmount::from_micros(u64::MAX))
            })
    }

    /// Record a payment about to be sent for the request `key` (and drop the spends nothing needs any more,
    /// [`Self::prune_spends`]).
    pub fn begin(&mut self, key: &str, pending: PendingPayment, spend: Spend) {
        self.prune_spends(spend.at);
        self.pending.insert(key.to_owned(), pending);
        self.spends.push(spend);
    }

    /// Drop the spends older than [`SPEND_HISTORY_SECS`] before the newest one recorded (or `now` if earlier,
    /// so that a clock ahead erases nothing: as the wallet's budget does) that nothing reads any more: kept are a
    /// payment still pending (`pending` lists it, or its spend still says so) and a settled top-up of a SIM this
    /// state has not seen terminated (its [`Self::credit_floor`], which `watch`'s audit checks the facilitator's
    /// credit against, counts it for the SIM's whole life, also for a SIM `watch --iccid` follows that this state
    /// never recorded). The daily cap reads today's spends and `watch`'s switch limits the last day's;
    /// the rest was a history growing by a few hundred bytes a payment, rewritten at every save.
    pub fn prune_spends(&mut self, now: u64) {
        let Some(newest) = self.spends.iter().map(|s| s.at).max() else {
            return;
        };
        let before = newest.min(now).saturating_sub(SPEND_HISTORY_SECS);
        let State {
            spends,
            sims,
            pending,
            ..
        } = self;
        spends.retain(|s| {
            s.at >= before
                || s.status == SpendStatus::Pending
                || pending.values().any(|p| p.payment_id == s.payment_id)
                || (s.status == SpendStatus::Settled
                    && top_up_of(&s.purpose).is_some_and(|(iccid, _)| {
                        !sims.get(iccid).is_some_and(|sim| sim.terminated)
                    }))
        });
    }

    fn spend_mut(&mut self, payment_id: &str) -> Option<&mut Spend> {
        self.spends
            .iter_mut()
            .rev()
            .find(|s| s.payment_id == payment_id)
    }

    /// The payment for `key` settled in `transaction`.
    pub fn settled(&mut self, key: &str, payment_id: &str, transaction: Option<String>) {
        self.pending.remove(key);
        if let Some(s) = self.spend_mut(payment_id) {
            s.status = SpendStatus::Settled;
            s.transaction = transaction;
        }
    }

    /// The payment for `key` was refused before settlement: nothing was charged, forget it.
    pub fn refused(&mut self, key: &str, payment_id: &str) {
        self.pending.remove(key);
        self.spends.retain(|s| s.payment_id != payment_id);
    }

    /// The payment for `key` got an answer that does not say whether money moved: stop sending it, keep the
    /// spend (it still counts against the daily cap).
    pub fn unknown(&mut self, key: &str, payment_id: &str) {
        self.pending.remove(key);
        if let Some(s) = self.spend_mut(payment_id) {
            s.status = SpendStatus::Unknown;
        }
    }

    /// Stop sending the pending payment `payment_id` (`pending --forget`): it leaves [`State::pending`] for
    /// [`State::abandoned`] without its signed payment (kept there: `purchase` and `origin`, as the caller
    /// tells them, its amount, when it was signed and given up on), and its spend stays counted (it may have
    /// been charged), marked unknown. The request it was pending for, or `None` if no payment of that id is
    /// pending (nothing changes).
    pub fn abandon(
        &mut self,
        payment_id: &str,
        purchase: &str,
        origin: Option<&str>,
        now: u64,
    ) -> Option<String> {
        let key = self
            .pending
            .iter()
            .find(|(_, p)| p.payment_id == payment_id)
            .map(|(k, _)| k.clone())?;
        let p = self.pending.remove(&key)?;
        let (amount_usdc, signed_at) = match self.spend_mut(payment_id) {
            Some(s) => {
                s.status = SpendStatus::Unknown;
                (Some(s.amount_usdc), Some(s.at))
            }
            None => (None, None),
        };
        self.abandoned.insert(
            p.payment_id,
            AbandonedPayment {
                request: key.clone(),
                purchase: purchase.to_owned(),
                origin: origin.map(str::to_owned),
                amount_usdc,
                signed_at,
                valid_before: p.valid_before,
                abandoned_at: now,
            },
        );
        Some(key)
    }

    /// The SIM to act on: `iccid` if given (it need not be known), else the newest live one.
    pub fn pick_sim(&self, iccid: Option<&str>) -> Option<SimRecord> {
        if let Some(id) = iccid {
            return Some(self.sims.get(id).cloned().unwrap_or_else(|| SimRecord {
                iccid: id.to_owned(),
                access_token: None,
                activation_code: None,
                region: None,
                carrier: None,
                network: None,
                activated_at: 0,
                terminated: false,
                origin: None,
                replaces: None,
                data_mb: None,
            }));
        }
        self.sims
            .values()
            .filter(|s| !s.terminated)
            .max_by_key(|s| (s.activated_at, s.iccid.clone()))
            .cloned()
    }
}

/// A held [`StateDir::lock`].
#[derive(Debug)]
pub struct StateLock {
    _file: std::fs::File,
}

/// The state directory.
#[derive(Debug, Clone)]
pub struct StateDir {
    dir: PathBuf,
    /// Tests: how many more saves succeed before each one fails (a full disk, a crash between two saves).
    #[cfg(test)]
    saves_left: Option<std::sync::Arc<std::sync::atomic::AtomicUsize>>,
}

impl StateDir {
    /// The directory (created on first save).
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self {
            dir: dir.into(),
            #[cfg(test)]
            saves_left: None,
        }
    }

    /// Tests: this directory, where only the next `n` saves succeed (the counter may be changed meanwhile).
    #[cfg(test)]
    pub(crate) fn failing_after(
        mut self,
        n: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    ) -> Self {
        self.saves_left = Some(n);
        self
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.dir
    }

    /// Take the directory for this process (an exclusive, non-blocking `flock` on `<dir>/lock`), held until the
    /// returned guard is dropped. Another command using the directory is an error naming it.
    pub fn lock(&self) -> Result<StateLock, String> {
        self.try_lock()?.ok_or_else(|| {
            format!(
                "another esim402-agent is using the state directory {}; wait for it to finish",
                self.dir.display()
            )
        })
    }

    /// [`StateDir::lock`], telling a lock another command holds (`Ok(None)`) from any other failure (the
    /// directory or its lock file cannot be made or locked: an error).
    pub fn try_lock(&self) -> Result<Option<StateLock>, String> {
        self.create()?;
        let path = self.dir.join("lock");
        let file = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(|e| format!("cannot open {}: {e}", path.display()))?;
        match file.try_lock() {
            Ok(()) => Ok(Some(StateLock { _file: file })),
            Err(std::fs::TryLockError::WouldBlock) => Ok(None),
            Err(std::fs::TryLockError::Error(e)) => {
                Err(format!("cannot lock {}: {e}", path.display()))
            }
        }
    }

    /// Create the directory if it does not exist yet, private (0700, on unix, with any parent it creates); an
    /// existing one that others may read or enter is made private too. It holds access tokens and signed
    /// payments: one that cannot be made private (not ours) is an error.
    pub fn create(&self) -> Result<(), String> {
        let mut dirs = std::fs::DirBuilder::new();
        dirs.recursive(true);
        // Created private, not chmod-ed after: no moment in which another user may open it.
        #[cfg(unix)]
        std::os::unix::fs::DirBuilderExt::mode(&mut dirs, 0o700);
        dirs.create(&self.dir).map_err(|e| {
            format!(
                "cannot create the state directory {}: {e}",
                self.dir.display()
            )
        })?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            let private = |e: std::io::Error| {
                format!("cannot make {} private (0700): {e}", self.dir.display())
            };
            let mode = std::fs::metadata(&self.dir)
                .map_err(private)?
                .permissions()
                .mode();
            if mode & 0o077 != 0 {
                std::fs::set_permissions(&self.dir, std::fs::Permissions::from_mode(mode & 0o7700))
                    .map_err(private)?;
            }
        }
        Ok(())
    }

    /// The state; empty if there is no file yet.
    pub fn load(&self) -> Result<State, String> {
        let file = self.dir.join(FILE);
        match std::fs::read(&file) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map_err(|e| format!("state file {} is corrupt: {e}", file.display())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(State::default()),
            Err(e) => Err(format!("cannot read state file {}: {e}", file.display())),
        }
    }

    /// Replace the state atomically (temp file, fsync, rename).
    pub fn save(&self, state: &State) -> Result<(), String> {
        let err =
            |what: &str, e: std::io::Error| format!("cannot {what} in {}: {e}", self.dir.display());
        #[cfg(test)]
        if let Some(left) = &self.saves_left {
            use std::sync::atomic::Ordering;
            if left
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                .is_err()
            {
                return Err(format!("injected save failure in {}", self.dir.display()));
            }
        }
        self.create()?;
        let tmp = self.dir.join(format!(".{FILE}.{}.tmp", std::process::id()));
        let mut opts = std::fs::OpenOptions::new();
        opts.write(true).create(true).truncate(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut opts, 0o600);
        let mut f = opts.open(&tmp).map_err(|e| err("write the state", e))?;
        let json = serde_json::to_vec_pretty(state).map_err(|e| e.to_string())?;
        f.write_all(&json)
            .and_then(|()| f.sync_all())
            .map_err(|e| err("write the state", e))?;
        drop(f);
        std::fs::rename(&tmp, self.dir.join(FILE)).map_err(|e| err("replace the state", e))?;
        // The rename is durable only once the directory is synced: a power loss right after a payment is sent
        // must not bring back a state without it.
        #[cfg(unix)]
        std::fs::File::open(&self.dir)
            .and_then(|d| d.sync_all())
            .map_err(|e| err("sync the state's directory", e))?;
        Ok(())
    }

    /// Load, change and save.
    pub fn update<T>(&self, change: impl FnOnce(&mut State) -> T) -> Result<T, String> {
        let mut state = self.load()?;
        let out = change(&mut state);
        self.save(&state)?;
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "tests")]
    use super::*;

    fn spend(id: &str, at: u64, micros: u64) -> Spend {
        Spend {
            payment_id: id.into(),
            purpose: "activate".into(),
            at,
            amount_usdc: UsdcAmount::from_micros(micros),
            network: "eip155:31337".into(),
            pay_to: "0x3C44CdDdB6a900fa2b585dd299e03d12FA4293BC".into(),
            status: SpendStatus::Pending,
            transaction: None,
        }
    }

    fn pending(id: &str) -> PendingPayment {
        PendingPayment {
            payment_id: id.into(),
            header: "eyJ4NDAyVmVyc2lvbiI6Mn0=".into(),
            valid_before: 1_000,
            slot: None,
            label: None,
        }
    }

    fn sim(iccid: &str, at: u64) -> SimRecord {
        SimRecord {
            iccid: iccid.into(),
            access_token: Some(format!("sim_{iccid}")),
            activation_code: None,
            region: None,
            carrier: None,
            network: None,
            activated_at: at,
            terminated: false,
            origin: Some("http://127.0.0.1:3000".into()),
            replaces: None,
            data_mb: None,
        }
    }

    #[test]
    fn state_round_trips_atomically_and_privately() {
        let dir = tempfile::tempdir().unwrap();
        let sd = StateDir::new(dir.path().join("nested"));
        assert_eq!(sd.load().unwrap(), State::default(), "no file yet");
        let mut s = State::default();
        s.sims.insert("8901".into(), sim("8901", 5));
        s.begin("activate x", pending("pay_a"), spend("pay_a", 5, 420_000));
        sd.save(&s).unwrap();
        assert_eq!(sd.load().unwrap(), s);
        let names: Vec<_> = std::fs::read_dir(sd.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert_eq!(names, [FILE], "no temporary file left behind");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            let mode = std::fs::metadata(sd.path().join(FILE))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
            let mode = std::fs::metadata(sd.path()).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o700, "a directory we create is private");
        }
        sd.update(|s| s.settled("activate x", "pay_a", Some("0xab".into())))
            .unwrap();
        let s = sd.load().unwrap();
        assert!(s.pending.is_empty());
        assert_eq!(s.spends[0].status, SpendStatus::Settled);
        std::fs::write(sd.path().join(FILE), "{not json").unwrap();
        assert!(sd.load().unwrap_err().contains("corrupt"));
    }

    /// A state directory that others may read is made private when the agent uses it, and every directory the
    /// agent creates on the way to it is private from the start. Before, only the last directory, and only
    /// when the agent created it, was (chmod-ed after `create_dir_all`).
    #[cfg(unix)]
    #[test]
    fn an_existing_state_directory_and_new_parents_are_made_private() {
        use std::os::unix::fs::PermissionsExt as _;
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o7777;
        let dir = tempfile::tempdir().unwrap();
        let open = dir.path().join("open");
        std::fs::create_dir(&open).unwrap();
        std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o755)).unwrap();
        StateDir::new(&open).save(&State::default()).unwrap();
        assert_eq!(mode(&open), 0o700);
        let deep = dir.path().join("a").join("b");
        StateDir::new(&deep).create().unwrap();
        assert_eq!(mode(&dir.path().join("a")), 0o700, "a parent it created");
        assert_eq!(mode(&deep), 0o700);
    }

    #[test]
    fn one_command_at_a_time_per_directory() {
        let dir = tempfile::tempdir().unwrap();
        let sd = StateDir::new(dir.path().join("s"));
        let held = sd.lock().unwrap();
        let e = StateDir::new(dir.path().join("s")).lock().unwrap_err();
        assert!(e.contains("another esim402-agent"), "{e}");
        drop(held);
        sd.lock().unwrap();
    }

    #[test]
    fn spends_count_per_utc_day_until_refused() {
        let day = 20_000 * 86_400;
        let mut s = State::default();
        s.begin(
            "a",
            pending("pay_old"),
            spend("pay_old", day - 1, 1_000_000),
        );
        s.begin("b", pending("pay_1"), spend("pay_1", day, 420_000));
        s.begin("c", pending("pay_2"), spend("pay_2", day + 10, 50_000));
        assert_eq!(s.spent_today(day + 100).micros(), 470_000);
        s.unknown("b", "pay_1");
        assert_eq!(
            s.spent_today(day + 100).micros(),
            470_000,
            "unknown still counts"
        );
        s.refused("c", "pay_2");
        assert_eq!(s.spent_today(day + 100).micros(), 420_000);
        assert_eq!(s.pending.keys().collect::<Vec<_>>(), ["a"]);
        assert_eq!(s.spent_today(day + 86_400).micros(), 0, "a new day");
    }

    /// Fix: the spend history was never pruned (a record per payment for the state's life, rewritten at every
    /// save). A spend older than [`SPEND_HISTORY_SECS`] goes at the next payment unless a pending payment or a
    /// live SIM's credit floor still reads it; a clock ahead erases nothing.
    #[test]
    fn old_spends_go_unless_something_still_reads_them() {
        let day = 20_000 * 86_400;
        let settled = |id: &str, purpose: &str, at: u64| Spend {
            purpose: purpose.into(),
            status: SpendStatus::Settled,
            ..spend(id, at, 50_000)
        };
        let mut s = State::default();
        s.sims.insert("8901".into(), sim("8901", day));
        s.sims.insert(
            "8902".into(),
            SimRecord {
                terminated: true,
                ..sim("8902", day)
            },
        );
        s.spends = vec![
            settled("old_activation", "activate", day),
            settled("live_top_up", "top-up 8901 16 MB", day + 1),
            settled("dead_top_up", "top-up 8902 16 MB", day + 2),
            spend("still_pending", day, 50_000),
            settled("recent", "activate", day + 20 * 86_400),
            // A SIM this state never recorded (`watch --iccid`): its floor still counts the top-up.
            settled("unknown_sim_top_up", "top-up 8903 16 MB", day + 3),
            // Still pending by its spend alone (a legacy state without its `pending` entry).
            spend("legacy_pending", day + 4, 1),
            Spend {
                status: SpendStatus::Unknown,
                ..spend("old_unknown", day + 5, 1)
            },
        ];
        s.pending.insert("p".into(), pending("still_pending"));
        let floor = s.credit_floor("8901");
        let later = day + SPEND_HISTORY_SECS + 10;
        s.begin("q", pending("new"), spend("new", later + 40 * 86_400, 1));
        assert_eq!(s.spends.len(), 9, "a clock ahead prunes nothing: {s:?}");
        let unknown_floor = s.credit_floor("8903");
        s.begin("r", pending("next"), spend("next", later, 1));
        let kept: Vec<&str> = s.spends.iter().map(|x| x.payment_id.as_str()).collect();
        assert_eq!(
            kept,
            [
                "live_top_up",
                "still_pending",
                "recent",
                "unknown_sim_top_up",
                "legacy_pending",
                "new",
                "next"
            ]
        );
        assert_eq!(s.credit_floor("8901"), floor, "the live SIM's floor holds");
        assert_eq!(s.credit_floor("8903"), unknown_floor);
    }

    /// Fix: a spend dated on a later day (signed while the clock ran ahead) is that day's, not today's: the
    /// day is `[00:00, 24:00)`. Before, every spend from today's start on counted, whatever its date.
    #[test]
    fn a_spend_dated_on_a_later_day_is_not_todays() {
        let day = 20_000 * 86_400;
        let mut s = State::default();
        s.begin("a", pending("pay_1"), spend("pay_1", day + 86_399, 420_000));
        s.begin("b", pending("pay_2"), spend("pay_2", day + 86_400, 50_000));
        s.begin(
            "c",
            pending("pay_3"),
            spend("pay_3", day + 5 * 86_400, 70_000),
        );
        assert_eq!(s.spent_today(day + 100).micros(), 420_000);
        assert_eq!(s.spent_today(day + 86_400).micros(), 50_000);
    }

    #[test]
    fn the_newest_live_sim_is_picked() {
        let mut s = State::default();
        assert_eq!(s.pick_sim(None), None);
        s.sims.insert("1".into(), sim("1", 10));
        s.sims.insert("2".into(), sim("2", 20));
        assert_eq!(s.pick_sim(None).unwrap().iccid, "2");
        s.sims.get_mut("2").unwrap().terminated = true;
        assert_eq!(s.pick_sim(None).unwrap().iccid, "1");
        assert_eq!(
            s.pick_sim(Some("2")).unwrap().access_token.as_deref(),
            Some("sim_2")
        );
        assert_eq!(s.pick_sim(Some("9")).unwrap().access_token, None);
    }

    /// `pending --forget`: the payment leaves `pending` (nothing sends it again) for `abandoned`, with the
    /// request it paid for, what and where, its amount and times, never its signed payment (before, the header,
    /// a live authorization, stayed in the state and its backups for good); its spend stays counted against the day's cap (it may have
    /// been charged), marked unknown. An id that is not pending changes nothing. A state file without
    /// `abandoned` (an earlier agent's) still loads, and one with it is read back.
    #[test]
    fn a_forgotten_payment_keeps_its_spend_and_is_kept_as_abandoned() {
        let day = 20_000 * 86_400;
        let mut s = State::default();
        s.begin(
            "POST http://h/v1/esim/activate {}",
            pending("pay_1"),
            spend("pay_1", day, 420_000),
        );
        s.begin(
            "POST http://h/v1/esim/8901/data {}",
            pending("pay_2"),
            spend("pay_2", day, 50_000),
        );
        assert_eq!(s.abandon("pay_nope", "x", None, day + 5), None);
        assert_eq!(s.pending.len(), 2);
        assert_eq!(
            s.abandon(
                "pay_1",
                "an activation (a new SIM)",
                Some("http://h"),
                day + 5
            )
            .as_deref(),
            Some("POST http://h/v1/esim/activate {}")
        );
        assert_eq!(
            s.pending.keys().collect::<Vec<_>>(),
            ["POST http://h/v1/esim/8901/data {}"]
        );
        assert_eq!(s.spent_today(day + 10).micros(), 470_000, "still counted");
        assert_eq!(s.spends[0].status, SpendStatus::Unknown);
        assert_eq!(
            s.abandoned["pay_1"],
            AbandonedPayment {
                request: "POST http://h/v1/esim/activate {}".into(),
                purchase: "an activation (a new SIM)".into(),
                origin: Some("http://h".into()),
                amount_usdc: Some(UsdcAmount::from_micros(420_000)),
                signed_at: Some(day),
                valid_before: 1_000,
                abandoned_at: day + 5,
            }
        );
        let kept = serde_json::to_string(&s.abandoned).unwrap();
        assert!(
            !kept.contains(&pending("pay_1").header) && !kept.contains("header"),
            "never the signed payment: {kept}"
        );
        let text = serde_json::to_string(&s).unwrap();
        assert_eq!(serde_json::from_str::<State>(&text).unwrap(), s);
        // An earlier agent's record, with the signed payment: it loads, and the next save drops the header.
        let mut earlier = serde_json::to_value(&s).unwrap();
        earlier["abandoned"]["pay_1"] = serde_json::json!({
            "request": "POST http://h/v1/esim/activate {}",
            "header": "eyJzaWduZWQiOnRydWV9",
            "valid_before": 1_000,
            "abandoned_at": day + 5,
        });
        let earlier: State = serde_json::from_value(earlier).unwrap();
        assert_eq!(earlier.abandoned["pay_1"].purchase, "");
        let text = serde_json::to_string(&earlier).unwrap();
        assert!(!text.contains("eyJzaWduZWQiOnRydWV9"), "{text}");
        let old: State =
            serde_json::from_value(serde_json::json!({"sims": {}, "spends": [], "pending": {}}))
                .unwrap();
        assert!(old.abandoned.is_empty());
        assert!(!serde_json::to_string(&old).unwrap().contains("abandoned"));
    }

    /// A SIM's token goes to the facilitator that issued it only; one recorded before origins were kept (its
    /// issuer unknown) never goes anywhere.
    #[test]
    fn a_token_is_for_its_issuer_only() {
        let s = sim("1", 10);
        assert_eq!(s.token_for("http://127.0.0.1:3000"), Some("sim_1"));
        assert_eq!(s.token_for("http://127.0.0.1:3001"), None);
        assert_eq!(s.token_for("https://evil.example"), None);
        let old: SimRecord = serde_json::from_value(serde_json::json!({
            "iccid": "1", "access_token": "sim_1", "activated_at": 10
        }))
        .unwrap();
        assert_eq!(old.origin, None, "an old state file still loads");
        assert_eq!(old.token_for("http://127.0.0.1:3000"), None);
        // An origin an earlier agent kept as `--url` spelled it is compared normalised.
        let spelled = SimRecord {
            origin: Some("https://esim.example:443".into()),
            ..sim("1", 10)
        };
        assert_eq!(spelled.token_for("https://esim.example"), Some("sim_1"));
    }

    /// The credit floor `watch` counts: the activation's MB recorded with the SIM (none for a SIM a switch made)
    /// and every settled top-up's, never a pending or unknown one, nor another SIM's.
    #[test]
    fn the_credit_floor_counts_what_this_agent_paid_for() {
        let mut state = State::default();
        state.sims.insert(
            "8901".into(),
            SimRecord {
                iccid: "8901".into(),
                access_token: None,
                activation_code: None,
                region: None,
                carrier: None,
                network: None,
                activated_at: 1,
                terminated: false,
                origin: None,
                replaces: None,
                data_mb: Some(1),
            },
        );
        let top_up = |iccid: &str, mb: u64, status| Spend {
            payment_id: format!("pay_{iccid}_{mb}"),
            purpose: format!("top-up {iccid} {mb} MB"),
            at: 1,
            amount_usdc: UsdcAmount::from_micros(30_000),
            network: "eip155:31337".into(),
            pay_to: "0x3C44CdDdB6a900fa2b585dd299e03d12FA4293BC".into(),
            status,
            transaction: None,
        };
        state.spends = vec![
            top_up("8901", 10, SpendStatus::Settled),
            top_up("8901", 50, SpendStatus::Unknown),
            top_up("8901", 100, SpendStatus::Pending),
            top_up("8902", 10, SpendStatus::Settled),
        ];
        assert_eq!(state.credit_floor("8901"), 11_000_000);
        assert_eq!(state.credit_floor("8902"), 10_000_000, "no SIM record");
        assert_eq!(state.credit_floor("8999"), 0);
        // A switch's SIM takes over an unknown remainder: its activation MB are no floor.
        if let Some(sim) = state.sims.get_mut("8901") {
            sim.replaces = Some("8900".into());
        }
        assert_eq!(state.credit_floor("8901"), 10_000_000);
    }
}
