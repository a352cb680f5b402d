//! `esim402 up` with its dev stack, as a user runs it from an app directory: one stack per directory (a second
//! `up` there is refused and leaves the first one's store alone), and a stop during start-up stops every
//! process it had started.

use std::os::unix::fs::MetadataExt as _;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use esim402_tests::{StopOnDrop, children_of, host_binary, process_exists, repo_root};

/// A directory with the repository's app (component sources pointing at its `build/wasm`, `tools` linked for
/// anvil), from which `esim402 up` runs as a user would run it.
fn app_dir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let text = std::fs::read_to_string(repo_root().join("spin.toml")).unwrap();
    let wasm = repo_root().join("build/wasm");
    let text = text.replace(
        "source = \"build/wasm/",
        &format!("source = \"{}/", wasm.display()),
    );
    std::fs::write(dir.path().join("spin.toml"), text).unwrap();
    std::os::unix::fs::symlink(repo_root().join("tools"), dir.path().join("tools")).unwrap();
    dir
}

/// `esim402 up` on a loopback port from `dir`, its output in `dir/<log>`.
fn up(dir: &Path, log: &str) -> StopOnDrop {
    let out = std::fs::File::create(dir.join(log)).unwrap();
    let child = Command::new(host_binary())
        .args(["up", "--listen", "127.0.0.1:0"])
        .current_dir(dir)
        .env("RUST_BACKTRACE", "0")
        .stdin(Stdio::null())
        .stdout(out.try_clone().unwrap())
        .stderr(out)
        .spawn()
        .unwrap();
    StopOnDrop(child)
}

/// Wait up to `secs` for `dir/<log>` to hold a line starting with `prefix` (the rest of it returned), or for
/// the process to exit (`None`).
fn wait_for_line(
    dir: &Path,
    log: &str,
    prefix: &str,
    child: &mut StopOnDrop,
    secs: u64,
) -> Option<String> {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while Instant::now() < deadline {
        let text = std::fs::read_to_string(dir.join(log)).unwrap_or_default();
        if let Some(rest) = text.lines().find_map(|l| l.strip_prefix(prefix)) {
            return Some(rest.trim().to_owned());
        }
        if let Ok(Some(_)) = child.0.try_wait() {
            return None;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    None
}

/// A second `esim402 up` in the directory of a running one is refused at once, naming the first one's PID,
/// and the first one's store (`.spin/devstack-kv.db`, emptied at each start of a fresh chain) is the same file,
/// the first one still serving. Before, the second emptied the first one's store under it and served a
/// second stack, overwriting `.spin/devstack.json`.
#[tokio::test]
async fn a_second_up_in_one_directory_is_refused_and_leaves_the_first_store() {
    let dir = app_dir();
    let mut first = up(dir.path(), "first.log");
    let Some(addr) = wait_for_line(dir.path(), "first.log", "Serving http://", &mut first, 180)
    else {
        first.stop();
        panic!(
            "the first esim402 up did not serve:\n{}",
            std::fs::read_to_string(dir.path().join("first.log")).unwrap_or_default()
        );
    };
    let store = dir.path().join(".spin/devstack-kv.db");
    let inode = std::fs::metadata(&store).unwrap().ino();
    let facts = std::fs::read(dir.path().join(".spin/devstack.json")).unwrap();
    // The generated carrier credentials are in the facts file (a trial: under `esim402 up` nothing said
    // which asks for quota as the carrier), never on the console.
    let parsed: serde_json::Value = serde_json::from_slice(&facts).unwrap();
    let credentials = parsed["carrier_callback_credentials"].as_str().unwrap();
    assert!(credentials.contains("tmobile="), "{credentials}");
    let first_log = std::fs::read_to_string(dir.path().join("first.log")).unwrap();
    assert!(
        first_log.contains("carrier_callback_credentials: (in "),
        "{first_log}"
    );
    for (_, token) in credentials.split(',').filter_map(|c| c.split_once('=')) {
        assert!(!first_log.contains(token), "a credential on the console");
    }

    let mut second = up(dir.path(), "second.log");
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Ok(Some(status)) = second.0.try_wait() {
            break Some(status);
        }
        if Instant::now() > deadline {
            break None;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let second_log = std::fs::read_to_string(dir.path().join("second.log")).unwrap_or_default();
    second.stop();
    assert!(
        status.is_some_and(|s| !s.success()),
        "the second esim402 up was not refused ({status:?}):\n{second_log}"
    );
    assert!(
        second_log.contains(&format!(
            "another esim402 dev stack (pid {}) is running",
            first.0.id()
        )),
        "{second_log}"
    );
    assert_eq!(std::fs::metadata(&store).unwrap().ino(), inode);
    assert_eq!(
        std::fs::read(dir.path().join(".spin/devstack.json")).unwrap(),
        facts
    );
    let health = reqwest::get(format!("http://{addr}/health")).await.unwrap();
    assert!(health.status().is_success());
    assert!(first.stop().is_some_and(|s| s.success()));
}

/// A SIGTERM while `esim402 up` is still starting (its SM-DP+ simulator just spawned; anvil, the token's
/// deployment and the components' loading still ahead) stops every process it had started and ends it
/// cleanly. Before, the signal ended `esim402` at once and its children ran on, orphaned.
#[tokio::test]
async fn a_stop_during_start_up_stops_every_process_started() {
    let dir = app_dir();
    let mut child = up(dir.path(), "up.log");
    let pid = child.0.id();
    let mut seen: Vec<u32> = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    while seen.is_empty() && Instant::now() < deadline {
        if let Ok(Some(status)) = child.0.try_wait() {
            panic!(
                "esim402 up exited ({status}) before starting anything:\n{}",
                std::fs::read_to_string(dir.path().join("up.log")).unwrap_or_default()
            );
        }
        seen = children_of(pid);
        std::thread::sleep(Duration::from_millis(5));
    }
    assert!(!seen.is_empty(), "esim402 up started no child within 60 s");
    esim402_host::devstack::send_signal(pid, "TERM");
    // Whatever it spawns until it exits counts too.
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        for c in children_of(pid) {
            if !seen.contains(&c) {
                seen.push(c);
            }
        }
        if let Ok(Some(status)) = child.0.try_wait() {
            break Some(status);
        }
        if Instant::now() > deadline {
            break None;
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    let log = std::fs::read_to_string(dir.path().join("up.log")).unwrap_or_default();
    // Reparented orphans would still run: give them a moment to be seen, then stop any the test finds.
    std::thread::sleep(Duration::from_millis(300));
    let alive: Vec<u32> = seen
        .iter()
        .copied()
        .filter(|&c| process_exists(c) && !is_zombie(c))
        .collect();
    child.stop();
    let named: Vec<String> = alive
        .iter()
        .map(|c| {
            let cmd = std::fs::read(format!("/proc/{c}/cmdline")).unwrap_or_default();
            format!("{c}: {}", String::from_utf8_lossy(&cmd).replace('\0', " "))
        })
        .collect();
    for &c in &alive {
        esim402_host::devstack::send_signal(c, "KILL");
    }
    assert!(alive.is_empty(), "left running: {named:?}\n{log}");
    assert!(
        status.is_some_and(|s| s.success()),
        "esim402 up did not end cleanly ({status:?}):\n{log}"
    );
    assert!(log.contains("stopped while starting"), "{log}");
    assert!(!log.contains("Serving http://"), "{log}");
}

/// Whether `pid` is a zombie (exited, not reaped yet): `/proc/<pid>/stat`'s state after the command name.
fn is_zombie(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            s.rsplit_once(')')
                .map(|(_, rest)| rest.trim_start().starts_with('Z'))
        })
        .unwrap_or(false)
}
