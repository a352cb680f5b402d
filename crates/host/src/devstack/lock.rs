//! One dev stack per directory: the lock `esim402 up` and `esim402 devstack` hold on the directory they write
//! the stack's facts (and, for `up`, its fresh key-value store) to, for as long as they run.
//!
//! A second `esim402 up` in the same app directory used to empty [`super::FRESH_CHAIN_STORE`] under the first
//! (the first went on writing to a file nobody could open again, and lost it at exit) and overwrite its
//! `devstack.json`, so scripts reading it talked to the wrong chain. The lock is an advisory `flock` on
//! `<dir>/devstack.lock`, taken without waiting: the kernel drops it when its holder exits, however it exits,
//! so a crashed stack never leaves a stale lock behind. The file holds the holder's PID, for the message the
//! next one prints; the PID is information only, the lock is what counts.
//!
//! A crashed stack can leave its children behind, though: the lock's holder keeps them on record
//! ([`super::children`], [`DirLock::record`]), and taking the lock stops what an earlier holder's record still
//! names before anything else starts.

use std::fs::{File, OpenOptions, TryLockError};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};

use super::children::{self, Record};

/// The lock file's name inside the directory it guards.
pub const LOCK_FILE: &str = "devstack.lock";

/// A held dev-stack lock; released when dropped (or when the process ends).
#[derive(Debug)]
pub struct DirLock {
    _file: File,
    path: PathBuf,
    record: Record,
}

impl DirLock {
    /// Lock `dir` (created if missing) for this process's dev stack, or fail at once naming the directory and
    /// the PID of the process that holds it. Once locked, the processes an earlier holder left running (it was
    /// killed before it could stop them) are stopped: [`children::stop_leftovers`].
    pub fn acquire(dir: &Path) -> anyhow::Result<Self> {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
        let path = dir.join(LOCK_FILE);
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .with_context(|| format!("cannot open {}", path.display()))?;
        match file.try_lock() {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => {
                let mut holder = String::new();
                let _ = file.read_to_string(&mut holder);
                let holder = match holder.trim().parse::<u32>() {
                    Ok(pid) => format!(" (pid {pid})"),
                    Err(_) => String::new(),
                };
                bail!(
                    "another esim402 dev stack{holder} is running for {}: stop it first, run this one from \
                     another directory, or pass --no-dev-stack (the lock is {})",
                    dir.display(),
                    path.display()
                );
            }
            Err(TryLockError::Error(e)) => {
                return Err(e).with_context(|| format!("cannot lock {}", path.display()));
            }
        }
        file.set_len(0)?;
        file.seek(SeekFrom::Start(0))?;
        writeln!(file, "{}", std::process::id())?;
        children::stop_leftovers(dir);
        Ok(Self {
            _file: file,
            path,
            record: Record::new(dir),
        })
    }

    /// Where this holder records the children it starts (empty at first).
    pub fn record(&self) -> &Record {
        &self.record
    }

    /// The lock file.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A second lock on the directory is refused, naming the holder's PID, while the first is held (a lock is
    /// per open file, so this holds within one process too), and taken once the first is dropped.
    #[test]
    fn a_directory_holds_one_dev_stack_at_a_time() {
        let dir = tempfile::tempdir().unwrap();
        let guarded = dir.path().join(".spin");
        let first = DirLock::acquire(&guarded).unwrap();
        assert_eq!(
            std::fs::read_to_string(first.path()).unwrap().trim(),
            std::process::id().to_string()
        );
        let err = DirLock::acquire(&guarded).unwrap_err().to_string();
        assert!(
            err.contains(&format!("(pid {})", std::process::id()))
                && err.contains("--no-dev-stack"),
            "{err}"
        );
        drop(first);
        let again = DirLock::acquire(&guarded).unwrap();
        assert_eq!(again.path(), guarded.join(LOCK_FILE));
    }
}
