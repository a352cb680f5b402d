//! How far a SQLite store has committed and synced, and how far its WAL has grown: the bookkeeping behind
//! [`super::SqliteStore`]'s durability barrier (a barrier passes once every write acknowledged before it is
//! on disk; one `fdatasync` serves every barrier waiting for it) and its checkpoint schedule.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use super::files::BUSY_TIMEOUT;
use crate::kv::{KvError, KvResult};

/// An open transaction is committed once the writer thread has been idle this long.
pub(super) const IDLE_COMMIT: std::time::Duration = std::time::Duration::from_millis(2);

/// How far the writer has committed and how far the WAL is synced, in commits.
#[derive(Debug)]
pub(super) struct Progress {
    /// The WAL file (synced on demand).
    pub(super) wal: PathBuf,
    /// The WAL file, opened at the first sync that finds it and kept: a sync is then one system call, not an
    /// open, a sync and a close. The file is never replaced while the store runs: SQLite deletes a WAL only
    /// when the last connection to the database closes, and the write connection stays open until the store
    /// closes (a checkpoint rewinds the WAL in place).
    pub(super) wal_file: std::sync::Mutex<Option<std::fs::File>>,
    /// The database file (synced instead if there is no WAL file).
    pub(super) db: PathBuf,
    /// The directories whose entries the first sync makes durable, innermost first: the database's (which
    /// holds the `-wal` file SQLite creates at every start, and the database file at the first), then each
    /// one the store created on its way there and the directory that holds it ([`dirs_to_sync`]). Under
    /// `synchronous = NORMAL` SQLite syncs the WAL's directory only at its first checkpoint, thousands of
    /// pages later, and a barrier syncs the WAL through a handle of its own: without this a power loss could
    /// take the new WAL file's entry back, with every commit a barrier had passed.
    pub(super) dirs: Vec<PathBuf>,
    /// The database file's directory entries are synced (by a sync that found no WAL file; the WAL's are
    /// synced by the sync that keeps its handle, once).
    pub(super) db_dirs_synced: std::sync::atomic::AtomicBool,
    /// Syncs of [`Progress::dirs`] made (for tests).
    pub(super) dir_syncs: AtomicU64,
    /// Commits so far; counted before they are made (a failed or retried one too: a sync more, nothing lost).
    pub(super) committed: AtomicU64,
    /// Every commit up to this one is on disk.
    pub(super) synced: AtomicU64,
    /// Disk syncs made (for tests and measurements).
    pub(super) syncs: AtomicU64,
    /// How long the writer thread waits for SQLite's write lock around a batch ([`BUSY_TIMEOUT`]).
    pub(super) busy_timeout: std::time::Duration,
    /// Every commit is synced by SQLite itself (`ESIM402_SQLITE_SYNC=commit`).
    pub(super) each_commit: bool,
    /// A sync failed, or SQLite rolled back an open transaction that held acknowledged writes (lazy mode). The
    /// kernel may have dropped the pages it could not write and a later sync would then report success
    /// without them; a rolled-back transaction took writes with it. So no barrier passes again and every
    /// later write is refused until the host restarts (and SQLite recovers from what is really on disk): a
    /// write applied on top of a state that lost earlier ones could leave, after a restart, the tail of a
    /// request without its beginning.
    pub(super) failed: std::sync::atomic::AtomicBool,
    /// A checkpoint is asked for and not yet run.
    pub(super) checkpoint_asked: std::sync::atomic::AtomicBool,
    /// Checkpoints run (for tests and measurements).
    pub(super) checkpoints: AtomicU64,
    /// WAL pages that call for a checkpoint ([`CHECKPOINT_PAGES`]; smaller in tests).
    pub(super) checkpoint_pages: i32,
    /// Writes are committed at barriers, not one by one ([`super::CommitAt::Barrier`]); `committed` then counts
    /// acknowledged writes, and a sync covers those its commit held.
    pub(super) lazy: bool,
    /// Other processes share the file (`ESIM402_SQLITE_LOCKING=shared`): a read may see their commits, which
    /// they may not have synced yet ([`Progress::note_read`]).
    pub(super) shared: bool,
    /// The write connection holds an open transaction (lazy mode; changed only under its lock).
    pub(super) open: std::sync::atomic::AtomicBool,
    /// Writes in the open transaction.
    pub(super) open_writes: AtomicU64,
    /// The writer thread commits an open transaction after this long without a job ([`IDLE_COMMIT`]).
    pub(super) idle_commit: std::time::Duration,
}

impl Progress {
    pub(super) fn new(db: &Path, each_commit: bool) -> Self {
        let mut wal = OsString::from(db.as_os_str());
        wal.push("-wal");
        Self {
            wal: wal.into(),
            wal_file: std::sync::Mutex::new(None),
            db: db.to_owned(),
            dirs: vec![parent_dir(db)],
            db_dirs_synced: std::sync::atomic::AtomicBool::new(false),
            dir_syncs: AtomicU64::new(0),
            busy_timeout: BUSY_TIMEOUT,
            committed: AtomicU64::new(0),
            synced: AtomicU64::new(0),
            syncs: AtomicU64::new(0),
            each_commit,
            failed: std::sync::atomic::AtomicBool::new(false),
            checkpoint_asked: std::sync::atomic::AtomicBool::new(false),
            checkpoints: AtomicU64::new(0),
            checkpoint_pages: CHECKPOINT_PAGES,
            lazy: false,
            shared: false,
            open: std::sync::atomic::AtomicBool::new(false),
            open_writes: AtomicU64::new(0),
            idle_commit: IDLE_COMMIT,
        }
    }

    /// True when the WAL has grown to `checkpoint_pages` at this thread's last commit and no checkpoint is
    /// asked for yet: the caller asks the writer thread for one.
    pub(super) fn wal_grown(&self) -> bool {
        WAL_PAGES.replace(0) >= self.checkpoint_pages
            && !self.checkpoint_asked.swap(true, Ordering::SeqCst)
    }

    /// Count a commit this thread is about to make, under the write connection's lock (held until the commit
    /// has finished): counted before a reader can see it, so the reader's barrier syncs it, and finished before
    /// a sync reads its target under that lock (`writer::write_loop`). After the commit, [`Progress::wal_grown`]
    /// says whether to ask for a checkpoint.
    pub(super) fn count_commit(&self) {
        let n = self.committed.fetch_add(1, Ordering::SeqCst) + 1;
        if self.each_commit {
            // SQLite syncs the WAL before it publishes the commit: nobody sees it unsynced.
            self.synced.fetch_max(n, Ordering::SeqCst);
        }
    }

    /// A read has run. On a shared file it may have seen another process's commit that is not synced yet: it
    /// counts as a commit of ours, so the next barrier syncs the WAL file (an `fdatasync` of the file makes every
    /// commit in it durable, whichever process wrote it), with a sync that starts after the read (counted
    /// before it, a sync already under way could have missed what the read saw). Elsewhere a read changes
    /// nothing.
    pub(super) fn note_read(&self) {
        if self.shared && !self.each_commit {
            self.committed.fetch_add(1, Ordering::SeqCst);
        }
    }

    pub(super) fn all_synced(&self) -> bool {
        !self.failed.load(Ordering::SeqCst)
            && self.synced.load(Ordering::SeqCst) >= self.committed.load(Ordering::SeqCst)
    }

    /// The error of every barrier and write once [`Progress::failed`] is set.
    pub(super) fn failed_error() -> KvError {
        KvError(
            "an earlier disk sync or commit of the SQLite store failed, or SQLite rolled back acknowledged \
             writes; the store refuses every write and barrier: restart the host"
                .into(),
        )
    }

    /// Refuse a write once the store has failed ([`Progress::failed`]).
    pub(super) fn refuse_if_failed(&self) -> KvResult<()> {
        if self.failed.load(Ordering::SeqCst) {
            return Err(Self::failed_error());
        }
        Ok(())
    }

    /// Sync the WAL if anything was committed since the last sync.
    #[cfg(test)]
    pub(super) fn sync(&self) -> KvResult<()> {
        self.sync_to(self.committed.load(Ordering::SeqCst))
    }

    /// Sync the WAL, which holds the first `target` counted writes (or commits), unless they are synced (on the
    /// writer thread: one at a time).
    pub(super) fn sync_to(&self, target: u64) -> KvResult<()> {
        self.refuse_if_failed()?;
        if self.synced.load(Ordering::SeqCst) >= target {
            return Ok(());
        }
        let synced = self.sync_wal();
        if let Err(e) = synced {
            self.failed.store(true, Ordering::SeqCst);
            return Err(KvError(format!(
                "cannot sync the SQLite store to disk: {e}"
            )));
        }
        self.syncs.fetch_add(1, Ordering::SeqCst);
        self.synced.fetch_max(target, Ordering::SeqCst);
        Ok(())
    }

    /// `fdatasync` the WAL file (or, while there is none, the database file, which then holds everything). The
    /// first sync of each also syncs the directories that hold it ([`Progress::dirs`]), once per process (for
    /// the WAL, the sync that keeps its handle); a failure there fails the sync, and sets
    /// [`Progress::failed`], like any.
    fn sync_wal(&self) -> std::io::Result<()> {
        let mut kept = self
            .wal_file
            .lock()
            .map_err(|_| std::io::Error::other("the WAL file handle is poisoned"))?;
        if kept.is_none() {
            match std::fs::File::open(&self.wal) {
                Ok(f) => {
                    f.sync_data()?;
                    // Kept only once its directories are synced: the next sync of a handle not kept does it.
                    self.sync_dirs()?;
                    *kept = Some(f);
                    return Ok(());
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    std::fs::File::open(&self.db).and_then(|f| f.sync_data())?;
                    if !self.db_dirs_synced.load(Ordering::SeqCst) {
                        self.sync_dirs()?;
                        self.db_dirs_synced.store(true, Ordering::SeqCst);
                    }
                    return Ok(());
                }
                Err(e) => return Err(e),
            }
        }
        kept.as_ref().map_or(Ok(()), std::fs::File::sync_data)
    }

    /// `fsync` each of [`Progress::dirs`], making the entries of the files and directories in them durable.
    fn sync_dirs(&self) -> std::io::Result<()> {
        for dir in &self.dirs {
            std::fs::File::open(dir)
                .and_then(|d| d.sync_all())
                .map_err(|e| {
                    std::io::Error::new(e.kind(), format!("directory {}: {e}", dir.display()))
                })?;
        }
        self.dir_syncs.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }
}

/// The directory that holds `path` (`.` for a bare file name).
fn parent_dir(path: &Path) -> PathBuf {
    match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir.to_owned(),
        _ => PathBuf::from("."),
    }
}

/// Create the directory that holds `db` if need be; returns the directories whose entries make the database
/// durable, innermost first ([`Progress::dirs`]): the database's, and, for each directory this call created,
/// the one that holds it.
pub(super) fn create_dirs(db: &Path) -> std::io::Result<Vec<PathBuf>> {
    let dir = parent_dir(db);
    let mut dirs = vec![dir.clone()];
    let mut missing = dir.clone();
    while !missing.exists() {
        let up = parent_dir(&missing);
        if up == missing {
            break;
        }
        dirs.push(up.clone());
        missing = up;
    }
    std::fs::create_dir_all(&dir)?;
    Ok(dirs)
}

/// WAL pages that call for a checkpoint (32 MiB of 4 KiB pages). SQLite's own threshold is 1 000, but the
/// pages a checkpoint copies are the distinct ones the WAL holds, and a store's hot pages (counters, cell
/// heads, the table's index) are rewritten by nearly every commit: a larger WAL copies each of them once for
/// many more commits, and stalls the queued writes less often (ingest of 100 SIMs per batch on SQLite: +5 to
/// +28% against 1 000 in alternating runs, BENCHMARKS.md). The price: up to 32 MiB of WAL on disk, and
/// as much to replay after a crash.
pub(super) const CHECKPOINT_PAGES: i32 = 8_000;

thread_local! {
    /// Pages in the WAL after this thread's last commit (SQLite's WAL hook runs inside the commit).
    pub(super) static WAL_PAGES: std::cell::Cell<i32> = const { std::cell::Cell::new(0) };
}

pub(super) fn note_wal_pages(
    _: &rusqlite::hooks::Wal,
    pages: std::ffi::c_int,
) -> rusqlite::Result<()> {
    WAL_PAGES.set(pages);
    Ok(())
}
