//! Opening a SQLite store's connections: the write connection's file lock (named when another process holds
//! it), the pool of read connections, and which store on a file may keep a transaction open.

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use rusqlite::Connection;

use super::switches::LOCKING_ENV;
use crate::kv::{KvError, KvResult};

/// How long a statement waits for another process's lock before failing.
pub(super) const BUSY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

pub(super) fn connect(path: &Path, vfs: &str) -> rusqlite::Result<Connection> {
    create_private(path);
    let conn = Connection::open_with_flags_and_vfs(path, rusqlite::OpenFlags::default(), vfs)?;
    conn.busy_timeout(BUSY_TIMEOUT)?;
    Ok(conn)
}

/// Create a store's file readable by its owner only (0600) when it does not exist yet: it holds payment records,
/// sign-in nonces and, in development, the generated token key. SQLite gives its `-wal` and `-shm` files the
/// database file's mode. (SQLite would create it with the process umask: world-readable, typically.) An
/// existing file keeps its mode; a failure here leaves the open to SQLite, which reports it.
fn create_private(path: &Path) {
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        let _ = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path);
    }
}

/// A clear error when the file's lock is held by another process: by name, with the way to share it.
pub(super) fn in_use(e: rusqlite::Error, path: &Path, vfs: &str) -> anyhow::Error {
    let busy = matches!(&e, rusqlite::Error::SqliteFailure(f, _) if f.code == rusqlite::ErrorCode::DatabaseBusy);
    if !busy {
        return anyhow::Error::new(e)
            .context(format!("cannot open SQLite store {}", path.display()));
    }
    let how = if vfs == "unix" {
        format!(
            "another process holds it exclusively (an `esim402 up` without {LOCKING_ENV}=shared?)"
        )
    } else {
        "another process is using it (`spin up`, another `esim402 up`, a `sqlite3` shell?); this host locks \
         its store file for as long as it runs"
            .to_owned()
    };
    anyhow::anyhow!(
        "SQLite store {} is locked: {how}. Stop the other process, or set {LOCKING_ENV}=shared in every esim402 process that shares the file",
        path.display()
    )
}

/// Files whose store commits at barriers, in this process. An open transaction holds the file's write lock,
/// so a second store (another label) on the same file would wait for the first one's commits; it commits
/// each write instead.
pub(super) struct LazyFile;

pub(super) static LAZY_FILES: Mutex<Vec<PathBuf>> = Mutex::new(Vec::new());

impl LazyFile {
    pub(super) fn id(path: &Path) -> PathBuf {
        std::fs::canonicalize(path).unwrap_or_else(|_| path.to_owned())
    }

    /// Whether the store being opened on `path` may commit at barriers (the first on its file).
    pub(super) fn claim(path: &Path) -> bool {
        let id = Self::id(path);
        let Ok(mut files) = LAZY_FILES.lock() else {
            return false;
        };
        if files.contains(&id) {
            return false;
        }
        files.push(id);
        true
    }

    pub(super) fn release(path: &Path) {
        let id = Self::id(path);
        if let Ok(mut files) = LAZY_FILES.lock() {
            files.retain(|f| *f != id);
        }
    }
}

/// Read connections, reused (WAL lets them read while the writer commits).
pub(super) struct Readers {
    pub(super) path: PathBuf,
    pub(super) vfs: &'static str,
    pub(super) idle: Mutex<Vec<Connection>>,
}

/// Idle read connections kept.
pub(super) const MAX_IDLE_READERS: usize = 8;

impl Readers {
    pub(super) fn take(&self) -> KvResult<Connection> {
        let idle = self.idle.lock().ok().and_then(|mut v| v.pop());
        match idle {
            Some(c) => Ok(c),
            None => connect(&self.path, self.vfs).map_err(KvError::from_display),
        }
    }

    pub(super) fn put(&self, conn: Connection) {
        if let Ok(mut idle) = self.idle.lock()
            && idle.len() < MAX_IDLE_READERS
        {
            idle.push(conn);
        }
    }
}
