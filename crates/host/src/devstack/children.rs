//! The dev stack's children on record, so that a stack killed without stopping them (SIGKILL, the OOM killer:
//! no `Drop` runs) does not leave them running for good. Every process a stack starts is written to
//! `<dir>/devstack.pids` ([`RECORD_FILE`], beside its [`super::lock`]) as soon as it is spawned and struck off
//! once stopped; the next stack to take the directory's lock stops whatever the record still names
//! ([`stop_leftovers`]) before it starts its own. The simulators also end with their parent by themselves
//! (Linux's parent-death signal, asked for through [`super::PARENT_PID_ENV`]); anvil and the command of
//! `esim402 devstack -- <cmd>` are not ours to change, so for them this record is what stops them.
//!
//! The rule this module keeps: **a recorded process is signalled only if it is still the one recorded** —
//! same PID, same start time (`/proc/<pid>/stat`, so a PID the kernel handed to another process never
//! matches) and same program (`/proc/<pid>/cmdline`'s first argument) — and through a pidfd opened *before*
//! that check, so the signal cannot reach a process that took the PID after it. Never by name. Linux only:
//! elsewhere nothing is recorded and nothing stopped.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use serde::{Deserialize, Serialize};

/// The record's name inside the directory the dev-stack lock guards.
pub const RECORD_FILE: &str = "devstack.pids";

/// How long a leftover gets to exit after SIGTERM before it is killed.
const LEFTOVER_GRACE: Duration = Duration::from_secs(5);

/// One recorded child.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Recorded {
    /// What the stack calls it (`"anvil"`, `"smdp-sim"`, `"command"`).
    pub name: String,
    /// Its process id.
    pub pid: u32,
    /// Its start time (`/proc/<pid>/stat` field 22, clock ticks since boot).
    pub started: u64,
    /// Its program as spawned, which is its `/proc/<pid>/cmdline`'s first argument.
    pub program: String,
    /// The boot it ran in (`/proc/sys/kernel/random/boot_id`): a record left by an earlier boot names no
    /// process of this one, whatever PID and start time match.
    #[serde(default)]
    pub boot: Option<String>,
}

/// The children a running stack has on record (shared by the stack and the command `esim402 devstack` runs).
#[derive(Debug, Clone)]
pub struct Record {
    path: PathBuf,
    entries: Arc<Mutex<Vec<Recorded>>>,
}

impl Record {
    /// An empty record at `<dir>/`[`RECORD_FILE`]; the file is written at the first [`add`](Self::add).
    pub fn new(dir: &Path) -> Self {
        Self {
            path: dir.join(RECORD_FILE),
            entries: Arc::default(),
        }
    }

    /// The record file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Record child `pid` (spawned just now from `program`, not reaped) under `name`. A process that cannot be
    /// read (gone already, or no `/proc`) is not recorded.
    ///
    /// The program is the one the caller spawned (a `Command`'s program is its child's first argument), not
    /// read back: a spawn returns once the exec is under way, when the new process's command line can still be
    /// empty.
    pub fn add(&self, name: &str, pid: u32, program: &std::ffi::OsStr) -> anyhow::Result<()> {
        let Some(started) = start_time(pid) else {
            tracing::debug!(%name, pid, "dev stack: child not recorded (not readable in /proc)");
            return Ok(());
        };
        let program = program.to_string_lossy().into_owned();
        let mut entries = self.lock();
        entries.retain(|e| e.pid != pid);
        entries.push(Recorded {
            name: name.to_owned(),
            pid,
            started,
            program,
            boot: boot_id(),
        });
        self.write(&entries)
    }

    /// Strike `pid` off (it was stopped and reaped); the file goes once the record is empty.
    pub fn remove(&self, pid: u32) {
        let mut entries = self.lock();
        let before = entries.len();
        entries.retain(|e| e.pid != pid);
        if entries.len() == before {
            return;
        }
        if let Err(e) = self.write(&entries) {
            tracing::warn!(error = %format!("{e:#}"), "dev stack: cannot update {}", self.path.display());
        }
    }

    /// What is on record now.
    pub fn entries(&self) -> Vec<Recorded> {
        self.lock().clone()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Recorded>> {
        self.entries
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn write(&self, entries: &[Recorded]) -> anyhow::Result<()> {
        if entries.is_empty() {
            return match std::fs::remove_file(&self.path) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                    Err(e).with_context(|| format!("cannot remove {}", self.path.display()))
                }
                _ => Ok(()),
            };
        }
        super::write_private(&self.path, &serde_json::to_vec_pretty(entries)?)
    }
}

/// Read `<dir>/`[`RECORD_FILE`] (left by an earlier stack; the caller holds the directory's lock), stop every
/// recorded process that is still the one recorded (SIGTERM, up to 5 s, then SIGKILL), remove the file and
/// return what was stopped. A record that cannot be read is set aside with a warning, not trusted.
pub fn stop_leftovers(dir: &Path) -> Vec<Recorded> {
    let path = dir.join(RECORD_FILE);
    let bytes = match std::fs::read(&path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Vec::new(),
        Err(e) => {
            tracing::warn!(error = %e, "dev stack: cannot read {}", path.display());
            return Vec::new();
        }
    };
    let recorded: Vec<Recorded> = match serde_json::from_slice(&bytes) {
        Ok(r) => r,
        Err(e) => {
            tracing::warn!(error = %e, "dev stack: {} is not a record; ignored", path.display());
            Vec::new()
        }
    };
    let stopped = stop_all(recorded);
    for r in &stopped {
        tracing::warn!(
            name = %r.name,
            pid = r.pid,
            "dev stack: stopped a process an earlier stack in {} left running (it was killed before it \
             could stop it)",
            dir.display()
        );
    }
    if let Err(e) = std::fs::remove_file(&path) {
        tracing::warn!(error = %e, "dev stack: cannot remove {}", path.display());
    }
    stopped
}

/// Stop those of `recorded` that are still running as recorded: SIGTERM to all, up to [`LEFTOVER_GRACE`] for
/// them to exit, SIGKILL to the rest. The ones found running.
fn stop_all(recorded: Vec<Recorded>) -> Vec<Recorded> {
    let mut live: Vec<(Recorded, Handle)> = recorded
        .into_iter()
        .filter_map(|r| Handle::open(&r).map(|h| (r, h)))
        .collect();
    let found: Vec<Recorded> = live.iter().map(|(r, _)| r.clone()).collect();
    for (_, h) in &live {
        h.signal(Signal::Term);
    }
    let deadline = Instant::now() + LEFTOVER_GRACE;
    loop {
        live.retain(|(r, _)| is_still(r));
        if live.is_empty() || Instant::now() >= deadline {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    for (r, h) in &live {
        tracing::warn!(name = %r.name, pid = r.pid, "dev stack: a leftover ignored SIGTERM; killing it");
        h.signal(Signal::Kill);
    }
    let deadline = Instant::now() + Duration::from_secs(1);
    while live.iter().any(|(r, _)| is_still(r)) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    found
}

/// Whether the process `r` names still runs as recorded (a zombie has exited: not running).
fn is_still(r: &Recorded) -> bool {
    r.boot.is_some()
        && r.boot == boot_id()
        && identity(r.pid)
            .is_some_and(|(started, program)| started == r.started && program == r.program)
}

/// This boot's id, if the kernel shows it.
fn boot_id() -> Option<String> {
    std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .ok()
        .map(|b| b.trim().to_owned())
        .filter(|b| !b.is_empty())
}

#[derive(Clone, Copy)]
enum Signal {
    Term,
    Kill,
}

/// A way to signal one recorded process and no other: its pidfd (Linux 5.3+), taken before the identity check;
/// without pidfds, its PID, checked again just before each signal.
struct Handle {
    pid: u32,
    #[cfg(target_os = "linux")]
    fd: Option<rustix::fd::OwnedFd>,
    recorded: Recorded,
}

impl Handle {
    /// A handle on `r` if it still runs as recorded.
    fn open(r: &Recorded) -> Option<Self> {
        #[cfg(target_os = "linux")]
        let fd = {
            use rustix::process::{Pid, PidfdFlags, pidfd_open};
            let pid = Pid::from_raw(i32::try_from(r.pid).ok()?)?;
            match pidfd_open(pid, PidfdFlags::empty()) {
                Ok(fd) => Some(fd),
                Err(rustix::io::Errno::SRCH) => return None,
                // No pidfds here (an old kernel, a seccomp filter): the PID, checked before each signal.
                Err(_) => None,
            }
        };
        // After the pidfd is open: if the PID was reused before it, the check below refuses it; if after, the
        // pidfd still names the process checked here.
        is_still(r).then(|| Self {
            pid: r.pid,
            #[cfg(target_os = "linux")]
            fd,
            recorded: r.clone(),
        })
    }

    fn signal(&self, signal: Signal) {
        #[cfg(target_os = "linux")]
        if let Some(fd) = &self.fd {
            let sig = match signal {
                Signal::Term => rustix::process::Signal::TERM,
                Signal::Kill => rustix::process::Signal::KILL,
            };
            // An error is a process that exited meanwhile.
            let _ = rustix::process::pidfd_send_signal(fd, sig);
            return;
        }
        if is_still(&self.recorded) {
            let name = match signal {
                Signal::Term => "TERM",
                Signal::Kill => "KILL",
            };
            super::send_signal(self.pid, name);
        }
    }
}

/// `pid`'s start time and program, if it runs (not a zombie) and `/proc` shows it.
fn identity(pid: u32) -> Option<(u64, String)> {
    let started = start_time(pid)?;
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    let program = cmdline
        .split(|&b| b == 0)
        .next()
        .filter(|p| !p.is_empty())?;
    Some((started, String::from_utf8_lossy(program).into_owned()))
}

/// `pid`'s start time, if it runs (not a zombie) and `/proc` shows it.
fn start_time(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) is in parentheses and may hold spaces or parentheses: fields 3 on follow the
    // last ')'.
    let (_, rest) = stat.rsplit_once(')')?;
    let mut fields = rest.split_whitespace();
    let state = fields.next()?;
    if matches!(state, "Z" | "X" | "x") {
        return None;
    }
    // Field 22 (starttime): 18 fields after field 3 (state).
    fields.nth(18)?.parse().ok()
}

#[cfg(test)]
#[cfg(target_os = "linux")]
mod tests {
    use super::*;
    use std::process::{Command, Stdio};

    const SLEEP: &str = "sleep";

    fn sleeper() -> std::process::Child {
        Command::new(SLEEP)
            .arg("60")
            .stdin(Stdio::null())
            .spawn()
            .unwrap()
    }

    /// A recorded process still running as recorded is stopped by the next stack, and the record goes; an
    /// entry whose PID now runs something else (another program, or the same program started later: a
    /// reused PID) is left alone.
    #[test]
    fn leftovers_are_stopped_only_while_they_are_who_was_recorded() {
        let dir = tempfile::tempdir().unwrap();
        let record = Record::new(dir.path());
        let mut left = sleeper();
        let mut other = sleeper();
        record.add("anvil", left.id(), SLEEP.as_ref()).unwrap();
        record.add("other", other.id(), SLEEP.as_ref()).unwrap();
        let on_file: Vec<Recorded> =
            serde_json::from_slice(&std::fs::read(record.path()).unwrap()).unwrap();
        assert_eq!(on_file, record.entries());
        assert_eq!(on_file[0].program, SLEEP);
        // The second entry as if its PID had been reused: same program, another start time; and one whose
        // program differs.
        let mut reused = on_file[1].clone();
        reused.started += 1;
        let mut renamed = on_file[1].clone();
        renamed.program = "/usr/bin/anvil".into();
        // And one recorded in another boot (a record a power loss left): nothing of this boot.
        assert!(on_file[1].boot.is_some(), "this boot is named");
        let mut rebooted = on_file[1].clone();
        rebooted.boot = Some("another-boot".into());
        std::fs::write(
            record.path(),
            serde_json::to_vec(&[on_file[0].clone(), reused, renamed, rebooted]).unwrap(),
        )
        .unwrap();

        let stopped = stop_leftovers(dir.path());
        assert_eq!(stopped, vec![on_file[0].clone()]);
        assert!(!record.path().exists());
        let status = left.wait().unwrap();
        assert!(!status.success(), "stopped by a signal: {status}");
        assert_eq!(
            other.try_wait().unwrap(),
            None,
            "another process left alone"
        );
        super::super::stop_child(&mut other, "KILL", Duration::from_secs(5));
        assert!(stop_leftovers(dir.path()).is_empty(), "nothing on record");
    }

    /// A child struck off once stopped leaves no record; a process gone already is not recorded, and a
    /// record that is not one is set aside.
    #[test]
    fn the_record_follows_the_children() {
        let dir = tempfile::tempdir().unwrap();
        let record = Record::new(dir.path());
        let mut child = sleeper();
        record.add("smdp-sim", child.id(), SLEEP.as_ref()).unwrap();
        assert!(record.path().exists());
        super::super::stop_child(&mut child, "TERM", Duration::from_secs(5));
        record.remove(child.id());
        assert!(record.entries().is_empty());
        assert!(!record.path().exists());
        record.add("gone", child.id(), SLEEP.as_ref()).unwrap();
        assert!(
            record.entries().is_empty(),
            "a reaped child is not recorded"
        );
        std::fs::write(record.path(), b"not json").unwrap();
        assert!(stop_leftovers(dir.path()).is_empty());
        assert!(!record.path().exists());
    }
}
