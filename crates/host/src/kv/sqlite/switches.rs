//! The SQLite store's settings from the environment: when it commits and syncs, whether calls run on the
//! caller's thread, and how the file is locked. All but the locking are measurement switches; each is read
//! once, when a store opens, and any value other than the two named is refused.

/// `ESIM402_SQLITE_COMMIT`: `barrier` (the default) or `write`.
pub const COMMIT_ENV: &str = "ESIM402_SQLITE_COMMIT";

/// When the write connection commits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CommitAt {
    /// Every write (or queued batch of writes) is its own transaction.
    Write,
    /// Writes go into one open transaction, committed when a durability barrier asks for them (before the
    /// host answers or sends anything), when the writer thread has had nothing to do for
    /// [`super::progress::IDLE_COMMIT`], or after [`super::writer::MAX_OPEN_WRITES`] writes (module docs).
    Barrier,
}

/// `ESIM402_SQLITE_SYNC`: `barrier` (the default) or `commit`.
pub const SYNC_ENV: &str = "ESIM402_SQLITE_SYNC";

/// Whether `ESIM402_SQLITE_SYNC` asks for a sync at every commit.
pub(super) fn sync_each_commit() -> anyhow::Result<bool> {
    switch(SYNC_ENV, "barrier", "commit")
}

/// `ESIM402_SQLITE_INLINE`: `on` (the default) or `off`.
pub const INLINE_ENV: &str = "ESIM402_SQLITE_INLINE";

pub(super) fn inline() -> anyhow::Result<bool> {
    switch(INLINE_ENV, "on", "off").map(|off| !off)
}

/// Whether the measurement switch `name` is set to `other` rather than left unset or set to `default`; any
/// other value is refused.
pub(super) fn switch(name: &str, default: &str, other: &str) -> anyhow::Result<bool> {
    match std::env::var(name) {
        Err(_) => Ok(false),
        Ok(v) if v == default => Ok(false),
        Ok(v) if v == other => Ok(true),
        Ok(v) => anyhow::bail!("{name}={v:?}: expected {default:?} or {other:?}"),
    }
}

/// `ESIM402_SQLITE_LOCKING`: `exclusive` (the default) or `shared`.
pub const LOCKING_ENV: &str = "ESIM402_SQLITE_LOCKING";

/// SQLite's VFS for the locking `ESIM402_SQLITE_LOCKING` asks for. `unix-excl` takes one lock on the file
/// for the whole process when its first connection first locks it, and keeps it until the last one closes:
/// connections in this process lock each other as usual, but no transaction makes a file-lock system call,
/// and the WAL index lives in the heap instead of a shared `-shm` mapping. Other processes cannot use the
/// file meanwhile. `unix` is SQLite's default: every transaction takes and drops POSIX locks, so processes
/// can share the file (measured: 20–30% more host CPU per write-heavy request, BENCHMARKS.md).
pub(super) fn vfs() -> anyhow::Result<&'static str> {
    Ok(if switch(LOCKING_ENV, "exclusive", "shared")? {
        "unix"
    } else {
        "unix-excl"
    })
}
