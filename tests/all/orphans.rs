//! A dev stack whose host is killed outright (SIGKILL, the OOM killer: no `Drop` runs) leaves nothing running
//! for good: its simulators end with it (the parent-death signal they ask for), and the next stack in the same
//! directory stops the anvil it left (`devstack.pids`, checked by start time and program, never by name).
//! Before, each killed `esim402 up` left anvil, smdp-sim and traffic-sim running, the latter posting receipts
//! signed with the dev keys, and the next `up` started a second set beside them.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use esim402_tests::{StopOnDrop, children_of, free_port, host_binary, repo_root};

/// `esim402 devstack` (no command: it runs until stopped) for the repository's app, its facts in `out`, its
/// output in `dir/<log>`. Run from `dir`, so no `.env` of the checkout counts.
fn devstack(dir: &Path, out: &Path, log: &str) -> StopOnDrop {
    let file = std::fs::File::create(dir.join(log)).unwrap();
    let child = Command::new(host_binary())
        .arg("devstack")
        .arg("-f")
        .arg(repo_root().join("spin.toml"))
        .args(["--app-url", &format!("http://127.0.0.1:{}", free_port())])
        .arg("--out-dir")
        .arg(out)
        .current_dir(dir)
        .env("RUST_BACKTRACE", "0")
        .stdin(Stdio::null())
        .stdout(file.try_clone().unwrap())
        .stderr(file)
        .spawn()
        .unwrap();
    StopOnDrop(child)
}

/// Wait (up to 60 s) for `esim402 devstack` to say it is ready; panics with its output if it exits or does not.
fn wait_ready(dir: &Path, log: &str, child: &mut StopOnDrop) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let text = std::fs::read_to_string(dir.join(log)).unwrap_or_default();
        if text.lines().any(|l| l.starts_with("devstack ready: ")) {
            return;
        }
        if let Ok(Some(status)) = child.0.try_wait() {
            panic!("esim402 devstack exited with {status}:\n{text}");
        }
        assert!(
            Instant::now() < deadline,
            "esim402 devstack not ready in 60 s:\n{text}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A process's start time (`/proc/<pid>/stat` field 22) while it runs; `None` once it is gone or a zombie.
fn running_since(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let mut fields = stat.rsplit_once(')')?.1.split_whitespace();
    if matches!(fields.next()?, "Z" | "X") {
        return None;
    }
    fields.nth(18)?.parse().ok()
}

/// The program a process runs (`/proc/<pid>/cmdline`'s first argument).
fn program(pid: u32) -> String {
    let cmd = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    let first = cmd.split(|&b| b == 0).next().unwrap_or_default();
    String::from_utf8_lossy(first).into_owned()
}

/// Processes the test saw started, SIGKILLed on drop if they still run (the same process: same start time), so
/// none outlives the test whatever it asserts.
#[derive(Default)]
struct Seen(Vec<(String, u32, u64)>);

impl Seen {
    fn add(&mut self, pid: u32) {
        if let Some(started) = running_since(pid) {
            self.0.push((program(pid), pid, started));
        }
    }

    /// The PID of the one whose program ends with `name`.
    fn pid(&self, name: &str) -> Option<u32> {
        self.0
            .iter()
            .find(|(p, _, _)| p.ends_with(name))
            .map(|(_, pid, _)| *pid)
    }

    fn still_running(&self, pid: u32) -> bool {
        self.0
            .iter()
            .any(|&(_, p, started)| p == pid && running_since(pid) == Some(started))
    }
}

impl Drop for Seen {
    fn drop(&mut self) {
        for &(_, pid, started) in &self.0 {
            if running_since(pid) == Some(started) {
                esim402_host::devstack::send_signal(pid, "KILL");
            }
        }
    }
}

#[test]
fn a_killed_dev_stack_leaves_no_process_behind() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("stack");
    let mut seen = Seen::default();
    let mut first = devstack(dir.path(), &out, "first.log");
    wait_ready(dir.path(), "first.log", &mut first);
    for pid in children_of(first.0.id()) {
        seen.add(pid);
    }
    let (Some(smdp), Some(traffic), Some(anvil)) = (
        seen.pid("/smdp-sim"),
        seen.pid("/traffic-sim"),
        seen.pid("anvil"),
    ) else {
        panic!("the dev stack's children: {:?}", seen.0);
    };
    let record = std::fs::read_to_string(out.join("devstack.pids")).unwrap();
    for pid in [smdp, traffic, anvil] {
        assert!(record.contains(&format!("\"pid\": {pid}")), "{record}");
    }

    // A crash: no signal handler, no Drop.
    esim402_host::devstack::send_signal(first.0.id(), "KILL");
    first.0.wait().unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    while (seen.still_running(smdp) || seen.still_running(traffic)) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(
        !seen.still_running(smdp) && !seen.still_running(traffic),
        "the simulators outlived the killed host by 5 s"
    );
    // anvil cannot follow its parent: it runs until the next stack in the directory stops it.
    assert!(seen.still_running(anvil), "anvil (the premise)");

    let mut second = devstack(dir.path(), &out, "second.log");
    wait_ready(dir.path(), "second.log", &mut second);
    let log = std::fs::read_to_string(dir.path().join("second.log")).unwrap();
    assert!(
        !seen.still_running(anvil),
        "the leftover anvil still runs:\n{log}"
    );
    assert!(log.contains("left running"), "{log}");
    for pid in children_of(second.0.id()) {
        seen.add(pid);
    }
    assert_eq!(
        children_of(second.0.id()).len(),
        3,
        "one new set: {:?}",
        seen.0
    );
    // A clean stop stops its own children and leaves no record.
    assert!(second.stop().is_some_and(|s| s.success()), "{log}");
    assert!(
        seen.0.iter().all(|&(_, pid, _)| !seen.still_running(pid)),
        "{:?}",
        seen.0
    );
    assert!(!out.join("devstack.pids").exists());
}

/// A simulator whose parent is not the dev stack named in `ESIM402_PARENT_PID` any more (the stack ended
/// before the simulator could ask for its parent-death signal, so it was re-parented) exits at once, without
/// serving.
#[test]
fn a_simulator_started_for_a_stack_that_is_gone_exits_at_once() {
    use esim402_tests::bin_dir;
    // Not the test process (the simulators' real parent).
    let gone = if std::process::id() == 1 { "2" } else { "1" };
    for name in ["smdp-sim", "traffic-sim"] {
        let mut child = StopOnDrop(
            Command::new(bin_dir().join(name))
                .args(["--listen", "127.0.0.1:0"])
                .env(esim402_host::devstack::PARENT_PID_ENV, gone)
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::null())
                .spawn()
                .unwrap(),
        );
        let deadline = Instant::now() + Duration::from_secs(5);
        let status = loop {
            if let Some(status) = child.0.try_wait().unwrap() {
                break Some(status);
            }
            if Instant::now() > deadline {
                break None;
            }
            std::thread::sleep(Duration::from_millis(10));
        };
        let mut out = String::new();
        if status.is_some() {
            std::io::Read::read_to_string(&mut child.0.stdout.take().unwrap(), &mut out).unwrap();
        }
        child.stop();
        assert!(status.is_some_and(|s| s.success()), "{name}: {status:?}");
        assert!(!out.contains("listening"), "{name}: {out}");
    }
}
