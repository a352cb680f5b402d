//! SQLite backend, file-compatible with Spin's `type = "spin"` store (table `spin_key_value`, one row per
//! `(store, key)`; counters as 8-byte little-endian integers, as Spin's `increment` writes them), so `spin up`
//! and `esim402 up` can take turns on one `.spin/sqlite_key_value.db`. The file is in WAL mode. Each store
//! has one write connection: a write that finds it free commits at once on the caller's thread (a commit
//! without a disk sync is tens of microseconds, less than handing the write to another thread and back);
//! one that finds it taken, or SQLite's write lock held by another process, never waits on the caller's
//! thread but queues for the store's writer thread, which commits everything queued at once in one
//! `BEGIN IMMEDIATE` transaction (group commit). Reads use a small pool of their own connections, on the
//! caller's thread, and never wait for the writer. The process holds the file for as long as it runs
//! (SQLite's `unix-excl` VFS, [`LOCKING_ENV`]): its transactions make no file-lock system calls, and
//! another process that opens the file is refused by name; `ESIM402_SQLITE_LOCKING=shared` in every process
//! that shares the file makes them serialise on SQLite's write lock instead. SQLite's automatic checkpoint,
//! which would run inside whichever commit crosses 1 000 WAL pages, is off: the writer thread runs one once
//! the WAL holds [`CHECKPOINT_PAGES`] (writes queue behind it meanwhile).
//! `ESIM402_SQLITE_INLINE=off` (for measurements) hands every write to the writer thread and every read to a
//! blocking thread, as before.
//!
//! Durability: the writer commits with `synchronous = NORMAL` (the commit is in the WAL, in order, but not
//! yet synced to disk) and syncs the WAL file on demand: [`Backend::barrier`] returns once every write
//! acknowledged before it is on disk, sharing one `fdatasync` among all concurrent barriers and skipping it when
//! nothing was committed since the last one. The host calls the barrier before anything leaves it (an HTTP
//! answer, an outbound request: [`super::Durability`]), so nobody outside ever sees a write that a power loss
//! could take back; a request making 20 sequential writes pays for one disk sync instead of 20.
//! `ESIM402_SQLITE_SYNC=commit` (for measurements) syncs at every commit instead, as SQLite's default does.
//!
//! Commits at barriers ([`CommitAt::Barrier`], the default; `ESIM402_SQLITE_COMMIT=write` for measurements
//! commits each write as above): the write connection keeps one transaction open across writes, from every
//! request alike, and a write is acknowledged once applied in it; the barrier commits it, then syncs. Reads
//! go to the write connection while a transaction is open (it alone sees it; they wait for it off the
//! runtime when it is busy), to the read connections otherwise. A paid activation's ~85 writes then cost
//! a handful of commits (one per barrier that follows writes) instead of 85: each page the writes touch is
//! written to the WAL once per commit, not once per write. What a crash of the process loses is what a
//! power loss already could: writes nobody outside has seen (the store is as it was at an earlier moment,
//! which every flow recovers from). The writer thread also commits a transaction once it has had nothing to
//! do for [`IDLE_COMMIT`], after [`MAX_OPEN_WRITES`] writes, before a checkpoint, and when the store closes.
//! A transaction SQLite rolls back by itself (an I/O error, a full disk) may take acknowledged writes with it:
//! then, as after a failed sync, no barrier passes again until the host restarts. Only the first store opened
//! on a file commits at barriers (an open transaction holds the file's write lock; another label on the same
//! file commits each write), and only with the default locking, inline calls and barrier syncs.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, mpsc};

use anyhow::Context;
use async_trait::async_trait;
use rusqlite::{Connection, OptionalExtension, TransactionBehavior, params};
use tokio::sync::oneshot;

use super::{Backend, KvError, KvResult};

/// Most writes one commit carries.
const MAX_BATCH: usize = 64;

/// One store label inside a SQLite file: a writer thread that commits queued writes together, and a pool of
/// read connections.
pub struct SqliteStore {
    label: Arc<str>,
    /// The write connection: taken at once by a caller that finds it free ([`Self::write`]), else by the
    /// writer thread for a batch of queued writes.
    conn: Arc<Mutex<Connection>>,
    writer: mpsc::Sender<Job>,
    /// Writes and reads run on the caller's thread when they need not wait (`ESIM402_SQLITE_INLINE=off`
    /// always hands them to threads of their own, for measurements).
    inline: bool,
    readers: Arc<Readers>,
    progress: Arc<Progress>,
}

/// How far the writer has committed and how far the WAL is synced, in commits.
#[derive(Debug)]
struct Progress {
    /// The WAL file (synced on demand).
    wal: PathBuf,
    /// The database file (synced instead if there is no WAL file).
    db: PathBuf,
    /// Commits so far; counted before their writes are acknowledged.
    committed: AtomicU64,
    /// Every commit up to this one is on disk.
    synced: AtomicU64,
    /// Disk syncs made (for tests and measurements).
    syncs: AtomicU64,
    /// Every commit is synced by SQLite itself (`ESIM402_SQLITE_SYNC=commit`).
    each_commit: bool,
    /// A sync failed. The kernel may have dropped the pages it could not write and a later sync would then
    /// report success without them, so no barrier passes again until the host restarts (and SQLite recovers
    /// from what is really on disk).
    failed: std::sync::atomic::AtomicBool,
    /// A checkpoint is asked for and not yet run.
    checkpoint_asked: std::sync::atomic::AtomicBool,
    /// Checkpoints run (for tests and measurements).
    checkpoints: AtomicU64,
    /// WAL pages that call for a checkpoint ([`CHECKPOINT_PAGES`]; smaller in tests).
    checkpoint_pages: i32,
    /// Writes are committed at barriers, not one by one ([`CommitAt::Barrier`]); `committed` then counts
    /// acknowledged writes, and a sync covers those its commit held.
    lazy: bool,
    /// The write connection holds an open transaction (lazy mode; changed only under its lock).
    open: std::sync::atomic::AtomicBool,
    /// Writes in the open transaction.
    open_writes: AtomicU64,
    /// The writer thread commits an open transaction after this long without a job ([`IDLE_COMMIT`]).
    idle_commit: std::time::Duration,
}

/// `ESIM402_SQLITE_COMMIT`: `barrier` (the default) or `write`.
pub const COMMIT_ENV: &str = "ESIM402_SQLITE_COMMIT";

/// When the write connection commits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CommitAt {
    /// Every write (or queued batch of writes) is its own transaction.
    Write,
    /// Writes go into one open transaction, committed when a durability barrier asks for them (before the
    /// host answers or sends anything), when the writer thread has had nothing to do for [`IDLE_COMMIT`], or
    /// after [`MAX_OPEN_WRITES`] writes (module docs).
    Barrier,
}

/// An open transaction is committed once the writer thread has been idle this long.
const IDLE_COMMIT: std::time::Duration = std::time::Duration::from_millis(2);

/// An open transaction is committed after this many writes.
const MAX_OPEN_WRITES: u64 = 1_024;

/// `ESIM402_SQLITE_SYNC`: `barrier` (the default) or `commit`.
pub const SYNC_ENV: &str = "ESIM402_SQLITE_SYNC";

/// Whether `ESIM402_SQLITE_SYNC` asks for a sync at every commit.
fn sync_each_commit() -> anyhow::Result<bool> {
    switch(SYNC_ENV, "barrier", "commit")
}

/// `ESIM402_SQLITE_INLINE`: `on` (the default) or `off`.
pub const INLINE_ENV: &str = "ESIM402_SQLITE_INLINE";

fn inline() -> anyhow::Result<bool> {
    switch(INLINE_ENV, "on", "off").map(|off| !off)
}

/// Whether the measurement switch `name` is set to `other` rather than left unset or set to `default`; any
/// other value is refused.
fn switch(name: &str, default: &str, other: &str) -> anyhow::Result<bool> {
    match std::env::var(name) {
        Err(_) => Ok(false),
        Ok(v) if v == default => Ok(false),
        Ok(v) if v == other => Ok(true),
        Ok(v) => anyhow::bail!("{name}={v:?}: expected {default:?} or {other:?}"),
    }
}

impl Progress {
    fn new(db: &Path, each_commit: bool) -> Self {
        let mut wal = OsString::from(db.as_os_str());
        wal.push("-wal");
        Self {
            wal: wal.into(),
            db: db.to_owned(),
            committed: AtomicU64::new(0),
            synced: AtomicU64::new(0),
            syncs: AtomicU64::new(0),
            each_commit,
            failed: std::sync::atomic::AtomicBool::new(false),
            checkpoint_asked: std::sync::atomic::AtomicBool::new(false),
            checkpoints: AtomicU64::new(0),
            checkpoint_pages: CHECKPOINT_PAGES,
            lazy: false,
            open: std::sync::atomic::AtomicBool::new(false),
            open_writes: AtomicU64::new(0),
            idle_commit: IDLE_COMMIT,
        }
    }

    /// True when the WAL has grown to `checkpoint_pages` at this thread's last commit and no checkpoint is
    /// asked for yet: the caller asks the writer thread for one.
    fn wal_grown(&self) -> bool {
        WAL_PAGES.replace(0) >= self.checkpoint_pages
            && !self.checkpoint_asked.swap(true, Ordering::SeqCst)
    }

    /// Count a commit made on this thread (before its writes are acknowledged). True when the WAL has grown to
    /// `checkpoint_pages` and no checkpoint is asked for yet: the caller asks the writer thread for one.
    fn committed(&self) -> bool {
        let n = self.committed.fetch_add(1, Ordering::SeqCst) + 1;
        if self.each_commit {
            self.synced.fetch_max(n, Ordering::SeqCst);
        }
        self.wal_grown()
    }

    fn all_synced(&self) -> bool {
        !self.failed.load(Ordering::SeqCst)
            && self.synced.load(Ordering::SeqCst) >= self.committed.load(Ordering::SeqCst)
    }

    /// Sync the WAL if anything was committed since the last sync (on the writer thread: one at a time).
    fn sync(&self) -> KvResult<()> {
        self.sync_to(self.committed.load(Ordering::SeqCst))
    }

    /// Sync the WAL, which holds the first `target` counted writes (or commits), unless they are synced.
    fn sync_to(&self, target: u64) -> KvResult<()> {
        if self.failed.load(Ordering::SeqCst) {
            return Err(KvError(
                "an earlier disk sync or commit of the SQLite store failed; restart the host"
                    .into(),
            ));
        }
        if self.synced.load(Ordering::SeqCst) >= target {
            return Ok(());
        }
        let synced = match std::fs::File::open(&self.wal) {
            Ok(f) => f.sync_data(),
            // No WAL file: everything is in the database file.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                std::fs::File::open(&self.db).and_then(|f| f.sync_data())
            }
            Err(e) => Err(e),
        };
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
}

/// A write and where its result goes once committed.
struct Job {
    write: Write,
    reply: oneshot::Sender<KvResult<Done>>,
}

enum Write {
    Set(String, Vec<u8>),
    /// `set-many`: one write, so the keys share a commit whichever path it takes.
    SetMany(Vec<(String, Vec<u8>)>),
    Delete(String),
    DeleteMany(Vec<String>),
    Increment(String, i64),
    Cas(String, Option<Vec<u8>>, Vec<u8>),
    /// Not a write: sync everything committed so far to disk.
    Sync,
    /// Not a write: copy the WAL's pages into the database file (SQLite's automatic checkpoint is off).
    Checkpoint,
    /// Not a write: a transaction was opened on a caller's thread (lazy mode); the writer thread starts
    /// watching it for idleness.
    Tick,
}

impl Write {
    /// Whether this job is a request to the writer thread rather than a write.
    fn is_request(&self) -> bool {
        matches!(self, Write::Sync | Write::Checkpoint | Write::Tick)
    }
}

enum Done {
    Unit,
    Count(i64),
    Swapped(bool),
}

const GET: &str = "SELECT value FROM spin_key_value WHERE store = ?1 AND key = ?2";
const DELETE: &str = "DELETE FROM spin_key_value WHERE store = ?1 AND key = ?2";
const UPSERT: &str = "INSERT INTO spin_key_value (store, key, value) VALUES (?1, ?2, ?3) ON CONFLICT (store, key) DO UPDATE SET value = excluded.value";

/// How long a statement waits for another process's lock before failing.
const BUSY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// `ESIM402_SQLITE_LOCKING`: `exclusive` (the default) or `shared`.
pub const LOCKING_ENV: &str = "ESIM402_SQLITE_LOCKING";

/// SQLite's VFS for the locking `ESIM402_SQLITE_LOCKING` asks for. `unix-excl` takes one lock on the file
/// for the whole process when its first connection first locks it, and keeps it until the last one closes:
/// connections in this process lock each other as usual, but no transaction makes a file-lock system call,
/// and the WAL index lives in the heap instead of a shared `-shm` mapping. Other processes cannot use the
/// file meanwhile. `unix` is SQLite's default: every transaction takes and drops POSIX locks, so processes
/// can share the file (measured: 20–30% more host CPU per write-heavy request, BENCHMARKS.md).
fn vfs() -> anyhow::Result<&'static str> {
    Ok(if switch(LOCKING_ENV, "exclusive", "shared")? {
        "unix"
    } else {
        "unix-excl"
    })
}

fn connect(path: &Path, vfs: &str) -> rusqlite::Result<Connection> {
    let conn = Connection::open_with_flags_and_vfs(path, rusqlite::OpenFlags::default(), vfs)?;
    conn.busy_timeout(BUSY_TIMEOUT)?;
    Ok(conn)
}

/// A clear error when the file's lock is held by another process: by name, with the way to share it.
fn in_use(e: rusqlite::Error, path: &Path, vfs: &str) -> anyhow::Error {
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

impl SqliteStore {
    /// Open (creating if needed) the database file and its table, and start the writer.
    pub fn open(path: &Path, label: &str) -> anyhow::Result<Self> {
        let at = if switch(COMMIT_ENV, "barrier", "write")? {
            CommitAt::Write
        } else {
            CommitAt::Barrier
        };
        Self::open_with(path, label, CHECKPOINT_PAGES, at)
    }

    fn open_with(
        path: &Path,
        label: &str,
        checkpoint_pages: i32,
        at: CommitAt,
    ) -> anyhow::Result<Self> {
        Self::open_tuned(path, label, checkpoint_pages, at, IDLE_COMMIT)
    }

    fn open_tuned(
        path: &Path,
        label: &str,
        checkpoint_pages: i32,
        at: CommitAt,
        idle_commit: std::time::Duration,
    ) -> anyhow::Result<Self> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)
                .with_context(|| format!("cannot create {}", dir.display()))?;
        }
        let vfs = vfs()?;
        let conn = connect(path, vfs)
            .with_context(|| format!("cannot open SQLite store {}", path.display()))?;
        // The first statement takes the file's lock (for good, with `unix-excl`).
        conn.pragma_update(None, "journal_mode", "WAL")
            .map_err(|e| in_use(e, path, vfs))?;
        // Checkpoints run on the writer thread, not inside whichever commit crosses SQLite's threshold.
        conn.pragma_update(None, "wal_autocheckpoint", 0)?;
        conn.wal_hook(Some(note_wal_pages));
        // Commits are synced on demand, by `barrier` (module docs).
        let each_commit = sync_each_commit()?;
        conn.pragma_update(
            None,
            "synchronous",
            if each_commit { "FULL" } else { "NORMAL" },
        )?;
        conn.execute(
            "CREATE TABLE IF NOT EXISTS spin_key_value (store TEXT NOT NULL, key TEXT NOT NULL, value BLOB NOT NULL, PRIMARY KEY (store, key))",
            [],
        )?;
        // At rest the write connection does not wait for another process's write lock: a write on the caller's
        // thread gives way to the writer thread, which waits for it (`BUSY_TIMEOUT`) around each batch.
        conn.busy_timeout(std::time::Duration::ZERO)?;
        let label: Arc<str> = label.into();
        let (writer, jobs) = mpsc::channel();
        let thread_label = label.clone();
        let inline = inline()?;
        // Commits at barriers need the caller's-thread paths (reads must see the open transaction) and the
        // file to themselves (an open transaction holds SQLite's write lock); a sync at every commit asks for
        // the opposite.
        let lazy = at == CommitAt::Barrier
            && inline
            && !each_commit
            && vfs == "unix-excl"
            && LazyFile::claim(path);
        let progress = Arc::new(Progress {
            checkpoint_pages,
            lazy,
            idle_commit,
            ..Progress::new(path, each_commit)
        });
        let thread_progress = progress.clone();
        let conn = Arc::new(Mutex::new(conn));
        let thread_conn = conn.clone();
        std::thread::Builder::new()
            .name(format!("sqlite-kv-{label}"))
            .spawn(move || {
                write_loop(&thread_conn, &thread_label, &jobs, &thread_progress);
            })
            .context("cannot start the SQLite writer thread")?;
        Ok(Self {
            label,
            conn,
            writer,
            inline,
            readers: Arc::new(Readers {
                path: path.to_owned(),
                vfs,
                idle: Mutex::new(Vec::new()),
            }),
            progress,
        })
    }

    async fn write(&self, write: Write) -> KvResult<Done> {
        if let Some(done) = self.write_inline(&write) {
            return done;
        }
        let (reply, done) = oneshot::channel();
        self.writer
            .send(Job { write, reply })
            .map_err(|_| KvError("the SQLite writer has stopped".into()))?;
        done.await
            .map_err(|_| KvError("the SQLite writer has stopped".into()))?
    }

    /// Commit `write` on the caller's thread if the write connection is free and SQLite's write lock is not
    /// held by another process (the connection has no busy timeout then; `None`: queue it for the writer
    /// thread instead). Never waits: a store call
    /// holding the guest's instance costs the commit alone, without two thread hand-offs.
    fn write_inline(&self, write: &Write) -> Option<KvResult<Done>> {
        // While a checkpoint is asked for, writes queue behind it, so the WAL cannot outgrow it.
        if !self.inline
            || write.is_request()
            || self.progress.checkpoint_asked.load(Ordering::SeqCst)
        {
            return None;
        }
        let mut conn = self.conn.try_lock().ok()?;
        if self.progress.lazy {
            let opened = !self.progress.open.load(Ordering::SeqCst);
            let result = match apply_open(&conn, &self.label, &self.progress, write) {
                Ok(result) => result,
                // Another process holds the write lock (not in lazy mode's exclusive locking; kept safe).
                Err(rusqlite::Error::SqliteFailure(e, _))
                    if opened && e.code == rusqlite::ErrorCode::DatabaseBusy =>
                {
                    return None;
                }
                Err(e) => Err(KvError::from_display(e)),
            };
            let mut checkpoint = false;
            if self.progress.open_writes.load(Ordering::SeqCst) >= MAX_OPEN_WRITES {
                if let Err(e) = commit_open(&conn, &self.progress) {
                    return Some(Err(e));
                }
                checkpoint = self.progress.wal_grown();
            }
            drop(conn);
            let tell = if checkpoint {
                Some(Write::Checkpoint)
            } else if opened && self.progress.open.load(Ordering::SeqCst) {
                Some(Write::Tick)
            } else {
                None
            };
            if let Some(write) = tell {
                let (reply, _) = oneshot::channel();
                let _ = self.writer.send(Job { write, reply });
            }
            return Some(result);
        }
        match commit(&mut conn, &self.label, std::iter::once(write)) {
            Ok(mut results) => {
                if self.progress.committed() {
                    let (reply, _) = oneshot::channel();
                    let _ = self.writer.send(Job {
                        write: Write::Checkpoint,
                        reply,
                    });
                }
                drop(conn);
                Some(results.pop().unwrap_or(Err(KvError("no result".into()))))
            }
            // Another process holds the write lock: the writer thread waits for it instead.
            Err(rusqlite::Error::SqliteFailure(e, _))
                if e.code == rusqlite::ErrorCode::DatabaseBusy =>
            {
                None
            }
            Err(e) => Some(Err(KvError::from_display(e))),
        }
    }

    async fn read<R: Send + 'static>(
        &self,
        f: impl FnOnce(&Connection, &str) -> rusqlite::Result<R> + Send + 'static,
    ) -> KvResult<R> {
        if self.progress.lazy {
            // The write connection sees the open transaction (and its page cache is never invalidated).
            if let Ok(conn) = self.conn.try_lock() {
                return f(&conn, &self.label).map_err(KvError::from_display);
            }
            // Without an open transaction every acknowledged write is committed: any connection sees it.
            if self.progress.open.load(Ordering::SeqCst) {
                return self.read_blocking(f).await;
            }
        }
        if self.inline {
            let conn = self.readers.take()?;
            let r = f(&conn, &self.label).map_err(KvError::from_display);
            self.readers.put(conn);
            return r;
        }
        self.read_blocking(f).await
    }

    async fn read_blocking<R: Send + 'static>(
        &self,
        f: impl FnOnce(&Connection, &str) -> rusqlite::Result<R> + Send + 'static,
    ) -> KvResult<R> {
        if self.progress.lazy {
            // On the write connection, which alone sees the open transaction: waits for it off the runtime.
            let conn = self.conn.clone();
            let label = self.label.clone();
            return tokio::task::spawn_blocking(move || {
                let conn = conn
                    .lock()
                    .map_err(|_| KvError("the SQLite write connection is poisoned".into()))?;
                f(&conn, &label).map_err(KvError::from_display)
            })
            .await
            .map_err(KvError::from_display)?;
        }
        let readers = self.readers.clone();
        let label = self.label.clone();
        tokio::task::spawn_blocking(move || {
            let conn = readers.take()?;
            let r = f(&conn, &label).map_err(KvError::from_display);
            readers.put(conn);
            r
        })
        .await
        .map_err(KvError::from_display)?
    }
}

impl Drop for SqliteStore {
    /// What the store acknowledged is committed when it closes (lazy mode).
    fn drop(&mut self) {
        if self.progress.lazy {
            if let Ok(conn) = self.conn.lock() {
                let _ = commit_open(&conn, &self.progress);
            }
            LazyFile::release(&self.progress.db);
        }
    }
}

/// Files whose store commits at barriers, in this process. An open transaction holds the file's write lock,
/// so a second store (another label) on the same file would wait for the first one's commits; it commits
/// each write instead.
struct LazyFile;

static LAZY_FILES: Mutex<Vec<PathBuf>> = Mutex::new(Vec::new());

impl LazyFile {
    fn id(path: &Path) -> PathBuf {
        std::fs::canonicalize(path).unwrap_or_else(|_| path.to_owned())
    }

    /// Whether the store being opened on `path` may commit at barriers (the first on its file).
    fn claim(path: &Path) -> bool {
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

    fn release(path: &Path) {
        let id = Self::id(path);
        if let Ok(mut files) = LAZY_FILES.lock() {
            files.retain(|f| *f != id);
        }
    }
}

/// Read connections, reused (WAL lets them read while the writer commits).
struct Readers {
    path: PathBuf,
    vfs: &'static str,
    idle: Mutex<Vec<Connection>>,
}

/// Idle read connections kept.
const MAX_IDLE_READERS: usize = 8;

impl Readers {
    fn take(&self) -> KvResult<Connection> {
        let idle = self.idle.lock().ok().and_then(|mut v| v.pop());
        match idle {
            Some(c) => Ok(c),
            None => connect(&self.path, self.vfs).map_err(KvError::from_display),
        }
    }

    fn put(&self, conn: Connection) {
        if let Ok(mut idle) = self.idle.lock()
            && idle.len() < MAX_IDLE_READERS
        {
            idle.push(conn);
        }
    }
}

/// Apply `write` in the write connection's open transaction, opening one if there is none (lazy mode); the
/// write counts as acknowledged once applied. If SQLite rolled the whole transaction back (an I/O error, a full
/// disk), writes acknowledged before are gone: the store fails every later barrier, as after a failed sync.
fn apply_open(
    conn: &Connection,
    label: &str,
    progress: &Progress,
    write: &Write,
) -> rusqlite::Result<KvResult<Done>> {
    if !progress.open.load(Ordering::SeqCst) {
        conn.execute_batch("BEGIN IMMEDIATE")?;
        progress.open.store(true, Ordering::SeqCst);
    }
    match apply(conn, label, write) {
        Ok(result) => {
            if result.is_ok() {
                progress.committed.fetch_add(1, Ordering::SeqCst);
                progress.open_writes.fetch_add(1, Ordering::SeqCst);
            }
            Ok(result)
        }
        Err(e) => {
            if conn.is_autocommit() {
                progress.open.store(false, Ordering::SeqCst);
                if progress.open_writes.swap(0, Ordering::SeqCst) > 0 {
                    progress.failed.store(true, Ordering::SeqCst);
                }
            }
            Err(e)
        }
    }
}

/// Commit the write connection's open transaction, if any (lazy mode, holding the connection); returns how
/// many writes have been acknowledged up to it (all of them now committed: the target of the next sync). A
/// failed commit may have lost acknowledged writes: every later barrier fails.
fn commit_open(conn: &Connection, progress: &Progress) -> KvResult<u64> {
    let target = progress.committed.load(Ordering::SeqCst);
    if !progress.open.load(Ordering::SeqCst) {
        return Ok(target);
    }
    let committed = conn.execute_batch("COMMIT");
    if committed.is_err() && !conn.is_autocommit() {
        let _ = conn.execute_batch("ROLLBACK");
    }
    progress.open.store(false, Ordering::SeqCst);
    progress.open_writes.store(0, Ordering::SeqCst);
    committed.map_err(|e| {
        progress.failed.store(true, Ordering::SeqCst);
        KvError(format!("cannot commit the SQLite store: {e}"))
    })?;
    Ok(target)
}

/// The writer thread's work in lazy mode, for one batch of jobs in arrival order: writes are applied in the
/// open transaction and answered at once; a barrier commits the transaction at its place in the batch (so
/// it covers every write acknowledged before it was asked for), and the batch's barriers share one sync;
/// a checkpoint runs last. Returns the commits made.
fn lazy_batch(conn: &Mutex<Connection>, label: &str, batch: Vec<Job>, progress: &Progress) -> u64 {
    let Ok(guard) = conn.lock() else {
        return 0;
    };
    let mut commits = 0;
    let mut barriers = Vec::new();
    let mut target = None;
    let mut asked = false;
    let _ = guard.busy_timeout(BUSY_TIMEOUT);
    for job in batch {
        match job.write {
            Write::Sync => {
                let open = progress.open.load(Ordering::SeqCst);
                match commit_open(&guard, progress) {
                    Ok(t) => {
                        commits += u64::from(open);
                        target = Some(target.map_or(t, |m: u64| m.max(t)));
                        barriers.push(job);
                    }
                    Err(e) => {
                        let _ = job.reply.send(Err(e));
                    }
                }
            }
            Write::Checkpoint => {
                asked = true;
                let _ = job.reply.send(Ok(Done::Unit));
            }
            Write::Tick => {}
            write => {
                let result = apply_open(&guard, label, progress, &write)
                    .unwrap_or_else(|e| Err(KvError::from_display(e)));
                let _ = job.reply.send(result);
            }
        }
    }
    if progress.open_writes.load(Ordering::SeqCst) >= MAX_OPEN_WRITES {
        commits += commit_if_open(&guard, progress);
    }
    asked |= progress.wal_grown();
    let _ = guard.busy_timeout(std::time::Duration::ZERO);
    drop(guard);
    if let Some(target) = target {
        let synced = progress.sync_to(target);
        for job in barriers {
            let _ = job.reply.send(match &synced {
                Ok(()) => Ok(Done::Unit),
                Err(e) => Err(KvError(e.0.clone())),
            });
        }
    }
    if asked {
        commits += lazy_checkpoint(conn, progress);
    }
    commits
}

/// [`commit_open`] on the writer thread, for its count: 1 if a transaction was open and is now committed.
fn commit_if_open(conn: &Connection, progress: &Progress) -> u64 {
    let open = progress.open.load(Ordering::SeqCst);
    u64::from(open && commit_open(conn, progress).is_ok())
}

/// Commit what is open, then checkpoint (lazy mode). Returns the commits made.
fn lazy_checkpoint(conn: &Mutex<Connection>, progress: &Progress) -> u64 {
    let mut commits = 0;
    if let Ok(guard) = conn.lock() {
        commits += commit_if_open(&guard, progress);
        // The checkpoint below covers the pages this commit added.
        WAL_PAGES.set(0);
    }
    progress.checkpoint_asked.store(false, Ordering::SeqCst);
    checkpoint(conn);
    progress.checkpoints.fetch_add(1, Ordering::SeqCst);
    commits
}

/// The writer: take every queued job (up to [`MAX_BATCH`]), apply the writes in arrival order inside one
/// `BEGIN IMMEDIATE` transaction, commit once, count the commit, then answer each; then, if the batch held
/// barriers, sync the WAL once (if anything was committed since the last sync) and answer them. A write's
/// result is only sent after its commit, so an acknowledged write is visible to every reader, and a barrier
/// answered after it finds it counted. Last, if a checkpoint was asked for (by this batch's commit or by a
/// caller's), run it. Writes committed on callers' threads meanwhile are counted the same way. In lazy mode
/// ([`CommitAt::Barrier`]) each batch goes to [`lazy_batch`] instead, an open transaction is committed once
/// no job has come for `idle_commit`, and the last one when the store is gone.
fn write_loop(
    conn: &Mutex<Connection>,
    label: &str,
    jobs: &mpsc::Receiver<Job>,
    progress: &Progress,
) -> u64 {
    let mut commits = 0;
    loop {
        // Lazy mode: an open transaction is committed once nothing has come for a while.
        let first = if progress.lazy && progress.open.load(Ordering::SeqCst) {
            match jobs.recv_timeout(progress.idle_commit) {
                Ok(job) => job,
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    if let Ok(guard) = conn.lock() {
                        commits += commit_if_open(&guard, progress);
                        if progress.wal_grown() {
                            drop(guard);
                            commits += lazy_checkpoint(conn, progress);
                        }
                    }
                    continue;
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => break,
            }
        } else {
            match jobs.recv() {
                Ok(job) => job,
                Err(_) => break,
            }
        };
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match jobs.try_recv() {
                Ok(job) => batch.push(job),
                Err(_) => break,
            }
        }
        if progress.lazy {
            commits += lazy_batch(conn, label, batch, progress);
            continue;
        }
        let (requests, writes): (Vec<Job>, Vec<Job>) = batch
            .into_iter()
            .filter(|j| !matches!(j.write, Write::Tick))
            .partition(|j| j.write.is_request());
        let (barriers, checkpoints): (Vec<Job>, Vec<Job>) = requests
            .into_iter()
            .partition(|j| matches!(j.write, Write::Sync));
        let mut asked = !checkpoints.is_empty();
        if !writes.is_empty() {
            commits += 1;
            let Ok(mut conn) = conn.lock() else {
                return commits;
            };
            // `sqlite3_busy_timeout` cannot fail. The connection rests without one (`SqliteStore::open`).
            let _ = conn.busy_timeout(BUSY_TIMEOUT);
            let results = match commit(&mut conn, label, writes.iter().map(|j| &j.write)) {
                Ok(results) => results,
                // A failed statement or commit: retry each write in its own transaction, so one bad write
                // does not fail the others.
                Err(_) => writes
                    .iter()
                    .map(|job| {
                        commit(&mut conn, label, std::iter::once(&job.write))
                            .map_err(KvError::from_display)
                            .and_then(|mut r| r.pop().unwrap_or(Err(KvError("no result".into()))))
                    })
                    .collect(),
            };
            asked |= progress.committed();
            let _ = conn.busy_timeout(std::time::Duration::ZERO);
            drop(conn);
            for (job, result) in writes.into_iter().zip(results) {
                let _ = job.reply.send(result);
            }
        }
        if !barriers.is_empty() {
            let synced = progress.sync();
            for job in barriers {
                let _ = job.reply.send(match &synced {
                    Ok(()) => Ok(Done::Unit),
                    Err(e) => Err(KvError(e.0.clone())),
                });
            }
        }
        if asked {
            progress.checkpoint_asked.store(false, Ordering::SeqCst);
            checkpoint(conn);
            progress.checkpoints.fetch_add(1, Ordering::SeqCst);
        }
    }
    // The store is gone: what it acknowledged is committed before the thread ends.
    if progress.lazy
        && let Ok(guard) = conn.lock()
    {
        let _ = commit_open(&guard, progress);
    }
    commits
}

/// WAL pages that call for a checkpoint (32 MiB of 4 KiB pages). SQLite's own threshold is 1 000, but the
/// pages a checkpoint copies are the distinct ones the WAL holds, and a store's hot pages (counters, cell
/// heads, the table's index) are rewritten by nearly every commit: a larger WAL copies each of them once for
/// many more commits, and stalls the queued writes less often (ingest of 100 SIMs per batch on SQLite: +5 to
/// +28% against 1 000 in alternating runs, BENCHMARKS.md). The price: up to 32 MiB of WAL on disk, and
/// as much to replay after a crash.
const CHECKPOINT_PAGES: i32 = 8_000;

thread_local! {
    /// Pages in the WAL after this thread's last commit (SQLite's WAL hook runs inside the commit).
    static WAL_PAGES: std::cell::Cell<i32> = const { std::cell::Cell::new(0) };
}

fn note_wal_pages(_: &rusqlite::hooks::Wal, pages: std::ffi::c_int) -> rusqlite::Result<()> {
    WAL_PAGES.set(pages);
    Ok(())
}

/// A checkpoint, on the write connection and holding it: while it runs, writes queue for the writer thread.
/// (On a connection of its own it would run alongside a steady stream of commits and never catch up with
/// them: the WAL restarts from its start only when a write begins after a checkpoint that copied all of it.)
/// `PASSIVE` does not wait for readers.
fn checkpoint(conn: &Mutex<Connection>) {
    let Ok(conn) = conn.lock() else { return };
    // A failed checkpoint loses nothing (the pages stay in the WAL): the next one tries again.
    let _ = conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(()));
}

fn commit<'a>(
    conn: &mut Connection,
    label: &str,
    batch: impl Iterator<Item = &'a Write>,
) -> rusqlite::Result<Vec<KvResult<Done>>> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let mut results = Vec::new();
    for write in batch {
        results.push(apply(&tx, label, write)?);
    }
    tx.commit()?;
    Ok(results)
}

/// One write inside the batch's transaction. `Ok(Err(..))` is the write's own refusal (not a counter, overflow),
/// which changes nothing and does not abort the batch.
fn apply(tx: &Connection, s: &str, write: &Write) -> rusqlite::Result<KvResult<Done>> {
    Ok(Ok(match write {
        Write::Set(key, value) => {
            tx.prepare_cached(UPSERT)?.execute(params![s, key, value])?;
            Done::Unit
        }
        Write::SetMany(entries) => {
            let mut upsert = tx.prepare_cached(UPSERT)?;
            for (key, value) in entries {
                upsert.execute(params![s, key, value])?;
            }
            Done::Unit
        }
        Write::Delete(key) => {
            tx.prepare_cached(DELETE)?.execute(params![s, key])?;
            Done::Unit
        }
        Write::DeleteMany(keys) => {
            let mut delete = tx.prepare_cached(DELETE)?;
            for key in keys {
                delete.execute(params![s, key])?;
            }
            Done::Unit
        }
        Write::Increment(key, delta) => {
            let current: Option<Vec<u8>> = tx
                .prepare_cached(GET)?
                .query_row(params![s, key], |r| r.get(0))
                .optional()?;
            let current = match current.map(|v| <[u8; 8]>::try_from(v.as_slice())) {
                None => 0,
                Some(Ok(le)) => i64::from_le_bytes(le),
                // Spin's own store panics here; this one refuses.
                Some(Err(_)) => {
                    return Ok(Err(KvError(format!(
                        "value of {key:?} is not a counter (8-byte little-endian integer)"
                    ))));
                }
            };
            let Some(next) = current.checked_add(*delta) else {
                return Ok(Err(KvError("counter overflow".into())));
            };
            tx.prepare_cached(UPSERT)?
                .execute(params![s, key, next.to_le_bytes().to_vec()])?;
            Done::Count(next)
        }
        Write::Cas(key, expected, value) => {
            let current: Option<Vec<u8>> = tx
                .prepare_cached(GET)?
                .query_row(params![s, key], |r| r.get(0))
                .optional()?;
            if current != *expected {
                Done::Swapped(false)
            } else {
                tx.prepare_cached(UPSERT)?.execute(params![s, key, value])?;
                Done::Swapped(true)
            }
        }
        // Never in a transaction's batch (the writer takes them apart).
        Write::Sync | Write::Checkpoint | Write::Tick => Done::Unit,
    }))
}

fn unexpected<T>() -> KvResult<T> {
    Err(KvError(
        "the SQLite writer answered another kind of write".into(),
    ))
}

#[async_trait]
impl Backend for SqliteStore {
    async fn get(&self, key: &str) -> KvResult<Option<Vec<u8>>> {
        let key = key.to_owned();
        self.read(move |c, s| {
            c.prepare_cached(GET)?
                .query_row(params![s, key], |r| r.get(0))
                .optional()
        })
        .await
    }
    async fn set(&self, key: &str, value: &[u8]) -> KvResult<()> {
        match self
            .write(Write::Set(key.to_owned(), value.to_vec()))
            .await?
        {
            Done::Unit => Ok(()),
            _ => unexpected(),
        }
    }
    async fn delete(&self, key: &str) -> KvResult<()> {
        match self.write(Write::Delete(key.to_owned())).await? {
            Done::Unit => Ok(()),
            _ => unexpected(),
        }
    }
    async fn exists(&self, key: &str) -> KvResult<bool> {
        Ok(self.get(key).await?.is_some())
    }
    async fn get_many(&self, keys: &[String]) -> KvResult<Vec<Option<Vec<u8>>>> {
        let keys = keys.to_vec();
        // One read transaction: the values are one snapshot.
        self.read(move |c, s| {
            let read = |c: &Connection| -> rusqlite::Result<Vec<Option<Vec<u8>>>> {
                let mut get = c.prepare_cached(GET)?;
                keys.iter()
                    .map(|key| get.query_row(params![s, key], |r| r.get(0)).optional())
                    .collect()
            };
            // Inside the write connection's open transaction the view is one snapshot already.
            if !c.is_autocommit() {
                return read(c);
            }
            let tx = c.unchecked_transaction()?;
            let values = read(&tx)?;
            tx.finish()?;
            Ok(values)
        })
        .await
    }
    async fn set_many(&self, entries: Vec<(String, Vec<u8>)>) -> KvResult<()> {
        if entries.is_empty() {
            return Ok(());
        }
        match self.write(Write::SetMany(entries)).await? {
            Done::Unit => Ok(()),
            _ => unexpected(),
        }
    }
    async fn delete_many(&self, keys: &[String]) -> KvResult<()> {
        if keys.is_empty() {
            return Ok(());
        }
        match self.write(Write::DeleteMany(keys.to_vec())).await? {
            Done::Unit => Ok(()),
            _ => unexpected(),
        }
    }
    async fn keys(&self) -> KvResult<Vec<String>> {
        // Every key of the store: too long a scan for the caller's thread.
        self.read_blocking(|c, s| {
            let mut stmt = c.prepare("SELECT key FROM spin_key_value WHERE store = ?1")?;
            stmt.query_map(params![s], |r| r.get(0))?.collect()
        })
        .await
    }
    async fn increment(&self, key: &str, delta: i64) -> KvResult<i64> {
        match self.write(Write::Increment(key.to_owned(), delta)).await? {
            Done::Count(n) => Ok(n),
            _ => unexpected(),
        }
    }
    async fn compare_and_swap(
        &self,
        key: &str,
        expected: Option<&[u8]>,
        value: &[u8],
    ) -> KvResult<bool> {
        let write = Write::Cas(key.to_owned(), expected.map(<[u8]>::to_vec), value.to_vec());
        match self.write(write).await? {
            Done::Swapped(b) => Ok(b),
            _ => unexpected(),
        }
    }
    async fn barrier(&self) -> KvResult<()> {
        if self.progress.all_synced() {
            return Ok(());
        }
        match self.write(Write::Sync).await? {
            Done::Unit => Ok(()),
            _ => unexpected(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kv::SharedBackend;

    /// A store on a new file in a temporary directory (removed when the returned guard drops).
    fn fresh() -> (tempfile::TempDir, PathBuf, SqliteStore) {
        fresh_with(CHECKPOINT_PAGES)
    }

    /// [`fresh`] with its own checkpoint threshold, committing every write.
    fn fresh_with(checkpoint_pages: i32) -> (tempfile::TempDir, PathBuf, SqliteStore) {
        fresh_at(checkpoint_pages, CommitAt::Write)
    }

    fn fresh_at(checkpoint_pages: i32, at: CommitAt) -> (tempfile::TempDir, PathBuf, SqliteStore) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("kv.db");
        let store = SqliteStore::open_with(&path, "default", checkpoint_pages, at).unwrap();
        (dir, path, store)
    }

    /// A store committing at barriers (and after `idle` without writer-thread work).
    fn fresh_lazy(idle: std::time::Duration) -> (tempfile::TempDir, PathBuf, SqliteStore) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("kv.db");
        let store =
            SqliteStore::open_tuned(&path, "default", CHECKPOINT_PAGES, CommitAt::Barrier, idle)
                .unwrap();
        assert!(store.progress.lazy);
        (dir, path, store)
    }

    const NEVER_IDLE: std::time::Duration = std::time::Duration::from_secs(3600);

    /// What another connection (another process, after a crash) finds at `key`: committed data only.
    fn committed_value(path: &Path, key: &str) -> Option<Vec<u8>> {
        let conn = connect(path, vfs().unwrap()).unwrap();
        conn.query_row(GET, params!["default", key], |r| r.get(0))
            .optional()
            .unwrap()
    }

    #[tokio::test]
    async fn conformance_when_committing_every_write() {
        let (_dir, _path, store) = fresh();
        assert!(!store.progress.lazy);
        super::super::conformance::check(Arc::new(store)).await;
    }

    /// Writes go into one open transaction: the store reads them back at once, nothing outside sees them
    /// until a barrier commits and syncs them all (one commit, one sync); a barrier with nothing new does
    /// nothing. A second store on the same file commits each write instead.
    #[tokio::test]
    async fn writes_commit_at_the_next_barrier() {
        let (_dir, path, store) = fresh_lazy(NEVER_IDLE);
        let syncs = || store.progress.syncs.load(Ordering::SeqCst);
        store.set("a", b"1").await.unwrap();
        assert_eq!(store.increment("n", 5).await.unwrap(), 5);
        store
            .set_many(vec![("b".into(), b"2".to_vec())])
            .await
            .unwrap();
        assert!(store.progress.open.load(Ordering::SeqCst));
        assert_eq!(store.get("a").await.unwrap().as_deref(), Some(&b"1"[..]));
        assert_eq!(
            store
                .get_many(&["b".into(), "a".into(), "x".into()])
                .await
                .unwrap(),
            vec![Some(b"2".to_vec()), Some(b"1".to_vec()), None]
        );
        let mut keys = store.keys().await.unwrap();
        keys.sort();
        assert_eq!(keys, ["a", "b", "n"]);
        assert_eq!(committed_value(&path, "a"), None, "not committed yet");
        store.barrier().await.unwrap();
        assert_eq!(committed_value(&path, "a").as_deref(), Some(&b"1"[..]));
        assert_eq!(
            committed_value(&path, "n"),
            Some(5i64.to_le_bytes().to_vec())
        );
        assert_eq!(syncs(), 1);
        assert!(!store.progress.open.load(Ordering::SeqCst));
        store.barrier().await.unwrap();
        assert_eq!(syncs(), 1, "nothing written since");
        assert!(store.increment("a", 1).await.is_err(), "not a counter");
        store.barrier().await.unwrap();
        assert_eq!(syncs(), 1, "a refused write is nothing to sync");

        let second =
            SqliteStore::open_with(&path, "other", CHECKPOINT_PAGES, CommitAt::Barrier).unwrap();
        assert!(!second.progress.lazy, "one store per file commits lazily");
        drop(second);
    }

    /// An open transaction is committed by itself once the writer has been idle a moment (not synced: a
    /// barrier still syncs it), and when the store closes.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_idle_or_closing_store_commits() {
        let (_dir, path, store) = fresh_lazy(IDLE_COMMIT);
        store.set("a", b"1").await.unwrap();
        let mut waited = 0;
        while committed_value(&path, "a").is_none() {
            assert!(waited < 5_000, "not committed after 5 s");
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
            waited += 5;
        }
        assert_eq!(store.progress.syncs.load(Ordering::SeqCst), 0);
        assert!(!store.progress.all_synced());
        store.barrier().await.unwrap();
        assert_eq!(store.progress.syncs.load(Ordering::SeqCst), 1);

        store.set("b", b"2").await.unwrap();
        drop(store);
        assert_eq!(committed_value(&path, "b").as_deref(), Some(&b"2"[..]));
        let again =
            SqliteStore::open_with(&path, "default", CHECKPOINT_PAGES, CommitAt::Barrier).unwrap();
        assert!(again.progress.lazy, "the closed store gave the file back");
    }

    /// While another thread holds the write connection, a read waits for it (it alone sees the open
    /// transaction) and a write queues for the writer thread; both see every acknowledged write.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn reads_and_writes_behind_a_held_connection_see_the_open_transaction() {
        let (_dir, _path, store) = fresh_lazy(NEVER_IDLE);
        let store = Arc::new(store);
        store.set("a", b"1").await.unwrap();
        let (taken, release) = (std::sync::Barrier::new(2), std::sync::Barrier::new(2));
        let (taken, release) = (Arc::new(taken), Arc::new(release));
        let holder = std::thread::spawn({
            let store = store.clone();
            let (taken, release) = (taken.clone(), release.clone());
            move || {
                let _held = store.conn.lock().unwrap();
                taken.wait();
                release.wait();
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
        });
        taken.wait();
        assert!(store.progress.open.load(Ordering::SeqCst));
        let read = tokio::spawn({
            let store = store.clone();
            async move { store.get("a").await }
        });
        let write = tokio::spawn({
            let store = store.clone();
            async move { store.increment("n", 1).await }
        });
        tokio::time::sleep(std::time::Duration::from_millis(30)).await;
        assert!(!read.is_finished() && !write.is_finished());
        release.wait();
        assert_eq!(read.await.unwrap().unwrap().as_deref(), Some(&b"1"[..]));
        assert_eq!(write.await.unwrap().unwrap(), 1);
        holder.join().unwrap();
        assert_eq!(
            store.get("n").await.unwrap(),
            Some(1i64.to_le_bytes().to_vec())
        );
    }

    #[tokio::test]
    async fn conformance_and_persistence() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("kv.db");
        super::super::conformance::check(Arc::new(SqliteStore::open(&path, "default").unwrap()))
            .await;
        // Counters are stored as Spin stores them: 8 bytes, little-endian.
        let again = SqliteStore::open(&path, "default").unwrap();
        assert_eq!(
            again.get("n").await.unwrap(),
            Some(3i64.to_le_bytes().to_vec())
        );
        assert!(
            again.increment("b", 1).await.is_err(),
            "\"y\" is not a counter"
        );
        // A second handle (a restarted host) sees the data; another label does not.
        let again = SqliteStore::open(&path, "default").unwrap();
        assert_eq!(again.get("b").await.unwrap().as_deref(), Some(&b"y"[..]));
        let other = SqliteStore::open(&path, "other").unwrap();
        assert_eq!(other.get("b").await.unwrap(), None);
    }

    /// Queued writes share commits, in arrival order, and each gets its own result; a refused write (not a
    /// counter) fails alone.
    #[tokio::test]
    async fn queued_writes_commit_together() {
        let (_dir, path, store) = fresh();
        store.set("text", b"x").await.unwrap();
        let conn = connect(&path, vfs().unwrap()).unwrap();
        let (tx, rx) = mpsc::channel();
        let mut replies = Vec::new();
        let mut queue = |write| {
            let (reply, done) = oneshot::channel();
            tx.send(Job { write, reply }).unwrap();
            replies.push(done);
        };
        for _ in 0..100 {
            queue(Write::Increment("n".into(), 1));
        }
        queue(Write::Increment("text".into(), 1));
        queue(Write::Cas("c".into(), None, b"first".to_vec()));
        queue(Write::Cas("c".into(), None, b"second".to_vec()));
        queue(Write::Set("s".into(), b"v".to_vec()));
        drop(tx);
        let progress = Progress::new(&path, false);
        let commits = write_loop(&Mutex::new(conn), "default", &rx, &progress);
        assert_eq!(commits, 2, "104 queued writes in batches of {MAX_BATCH}");
        let mut results = Vec::new();
        for r in replies {
            results.push(r.await.unwrap());
        }
        for (i, r) in results[..100].iter().enumerate() {
            assert!(matches!(r, Ok(Done::Count(n)) if *n == i as i64 + 1));
        }
        assert!(results[100].is_err(), "\"x\" is not a counter");
        assert!(matches!(results[101], Ok(Done::Swapped(true))));
        assert!(matches!(results[102], Ok(Done::Swapped(false))));
        assert_eq!(
            store.get("c").await.unwrap().as_deref(),
            Some(&b"first"[..])
        );
        assert_eq!(store.get("s").await.unwrap().as_deref(), Some(&b"v"[..]));
        assert_eq!(store.increment("n", 0).await.unwrap(), 100);
        assert_eq!(progress.committed.load(Ordering::SeqCst), 2);
        assert_eq!(
            progress.syncs.load(Ordering::SeqCst),
            0,
            "no barrier was asked for"
        );
    }

    /// A barrier syncs the disk only when something was committed since the last sync, and barriers queued
    /// together share one sync.
    #[tokio::test]
    async fn barriers_sync_only_what_was_committed() {
        let (_dir, path, store) = fresh();
        let syncs = || store.progress.syncs.load(Ordering::SeqCst);
        store.barrier().await.unwrap();
        assert_eq!(syncs(), 0, "nothing committed yet");
        store.set("a", b"1").await.unwrap();
        assert!(!store.progress.all_synced());
        store.barrier().await.unwrap();
        assert_eq!(syncs(), 1);
        assert!(store.progress.all_synced());
        store.barrier().await.unwrap();
        assert_eq!(syncs(), 1, "nothing committed since");
        let _ = store.get("a").await.unwrap();
        store.barrier().await.unwrap();
        assert_eq!(syncs(), 1, "reads commit nothing");

        // 64 queued barriers after one write: one sync answers them all.
        let conn = connect(&path, vfs().unwrap()).unwrap();
        let progress = Progress::new(&path, false);
        let (tx, rx) = mpsc::channel();
        let mut replies = Vec::new();
        for write in std::iter::once(Write::Set("b".into(), b"2".to_vec()))
            .chain(std::iter::repeat_with(|| Write::Sync).take(63))
        {
            let (reply, done) = oneshot::channel();
            tx.send(Job { write, reply }).unwrap();
            replies.push(done);
        }
        drop(tx);
        assert_eq!(write_loop(&Mutex::new(conn), "default", &rx, &progress), 1);
        for r in replies {
            assert!(matches!(r.await.unwrap(), Ok(Done::Unit)));
        }
        assert_eq!(progress.syncs.load(Ordering::SeqCst), 1);
        assert!(progress.all_synced());
    }

    /// The host's barrier over all its stores reaches the SQLite one.
    #[tokio::test]
    async fn the_hosts_barrier_syncs_the_sqlite_store() {
        let (_dir, _, store) = fresh();
        let store = Arc::new(store);
        let durability = super::super::Durability::new([
            Arc::new(super::super::MemoryStore::default()) as SharedBackend,
            store.clone(),
        ]);
        store.increment("n", 1).await.unwrap();
        assert!(!store.progress.all_synced());
        durability.wait().await.unwrap();
        assert!(store.progress.all_synced());
        assert_eq!(store.progress.syncs.load(Ordering::SeqCst), 1);
    }

    /// With a sync at every commit (`ESIM402_SQLITE_SYNC=commit`), a commit counts as synced and a barrier
    /// has nothing to do.
    #[test]
    fn syncing_at_every_commit_leaves_barriers_nothing_to_do() {
        let progress = Progress::new(Path::new("/nonexistent/kv.db"), true);
        progress.committed();
        assert!(progress.all_synced());
        progress.sync().unwrap();
        assert_eq!(progress.syncs.load(Ordering::SeqCst), 0);
    }

    /// A failed sync fails every later barrier, even with nothing new committed.
    #[test]
    fn a_failed_sync_fails_every_later_barrier() {
        let progress = Progress::new(Path::new("/nonexistent/kv.db"), false);
        progress.committed();
        assert!(!progress.all_synced());
        assert!(progress.sync().is_err(), "no such file to sync");
        let again = progress.sync().unwrap_err();
        assert!(again.0.contains("restart the host"), "{again}");
        assert!(!progress.all_synced());
    }

    /// Opening a file whose lock another process holds fails by name, saying how to share it.
    #[test]
    fn a_lock_held_elsewhere_is_named_with_the_way_to_share() {
        let busy = || {
            rusqlite::Error::SqliteFailure(
                rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_BUSY),
                None,
            )
        };
        let path = Path::new("/data/kv.db");
        let held = in_use(busy(), path, "unix-excl").to_string();
        assert!(
            held.contains("/data/kv.db is locked")
                && held.contains("another process is using it")
                && held.contains("ESIM402_SQLITE_LOCKING=shared"),
            "{held}"
        );
        let shared = in_use(busy(), path, "unix").to_string();
        assert!(shared.contains("holds it exclusively"), "{shared}");
        let other = in_use(rusqlite::Error::InvalidQuery, path, "unix-excl");
        assert!(
            format!("{other:#}").starts_with("cannot open SQLite store /data/kv.db"),
            "{other:#}"
        );
    }

    /// A write finding the write connection free commits on the caller's thread; one finding it taken (the
    /// writer thread's batch) or SQLite's write lock held by another process waits its turn on the writer
    /// thread, and commits once the lock is free.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn writes_commit_inline_or_wait_for_the_lock() {
        let (_dir, path, store) = fresh();
        let store = Arc::new(store);
        assert!(store.inline);
        assert!(
            store
                .write_inline(&Write::Increment("n".into(), 2))
                .is_some()
        );
        {
            let _taken = store.conn.lock().unwrap();
            assert!(
                store
                    .write_inline(&Write::Increment("n".into(), 1))
                    .is_none(),
                "the connection is taken: queue"
            );
        }
        // Another process's write transaction: the inline attempt gives way, the writer thread waits for it.
        let other = connect(&path, vfs().unwrap()).unwrap();
        other.execute_batch("BEGIN IMMEDIATE").unwrap();
        assert!(
            store
                .write_inline(&Write::Increment("n".into(), 1))
                .is_none()
        );
        let queued = tokio::spawn({
            let store = store.clone();
            async move { store.increment("n", 1).await }
        });
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        assert!(!queued.is_finished(), "waits for the other writer");
        other.execute_batch("COMMIT").unwrap();
        assert_eq!(queued.await.unwrap().unwrap(), 3);
        assert_eq!(
            store.get("n").await.unwrap(),
            Some(3i64.to_le_bytes().to_vec())
        );
    }

    /// `set-many` and `delete-many` are one write each: their keys share one commit, on the caller's thread
    /// or queued for the writer thread (whose group commit may add other writes to it); `get-many` reads one
    /// snapshot.
    #[tokio::test]
    #[allow(
        clippy::await_holding_lock,
        reason = "holds the write connection on purpose (one-thread runtime) so the batch must queue"
    )]
    async fn a_batch_is_one_commit_on_either_path() {
        let (_dir, _path, store) = fresh();
        let store = Arc::new(store);
        let commits = || store.progress.committed.load(Ordering::SeqCst);
        let entries = |tag: &str| -> Vec<(String, Vec<u8>)> {
            (0..50)
                .map(|i| (format!("{tag}{i}"), format!("{tag}-{i}").into_bytes()))
                .collect()
        };
        let before = commits();
        store.set_many(entries("a")).await.unwrap();
        assert_eq!(commits(), before + 1, "50 keys, one commit, inline");
        let queued = {
            let _taken = store.conn.lock().unwrap();
            let queued = tokio::spawn({
                let store = store.clone();
                async move { store.set_many(entries("b")).await }
            });
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            assert!(!queued.is_finished(), "the connection is taken: queued");
            queued
        };
        queued.await.unwrap().unwrap();
        assert_eq!(commits(), before + 2, "one commit on the writer thread");
        let keys: Vec<String> = entries("a")
            .into_iter()
            .chain(entries("b"))
            .map(|(k, _)| k)
            .collect();
        let values = store.get_many(&keys).await.unwrap();
        assert_eq!(values.len(), 100);
        for (key, value) in keys.iter().zip(&values) {
            let want = format!("{}-{}", &key[..1], &key[1..]).into_bytes();
            assert_eq!(value.as_deref(), Some(&want[..]), "{key}");
        }
        store.delete_many(&keys[..60]).await.unwrap();
        assert_eq!(commits(), before + 3);
        let left = store.get_many(&keys).await.unwrap();
        assert_eq!(left.iter().filter(|v| v.is_some()).count(), 40);
    }

    /// SQLite's automatic checkpoint is off; once the WAL holds `checkpoint_pages`, the writer thread runs one
    /// (asked once until it has run), the next write starts the WAL over, so under a steady stream of writes
    /// the WAL file stays bounded; and the data stays whole.
    #[tokio::test]
    async fn a_grown_wal_is_checkpointed_by_the_writer_thread() {
        const PAGES: i32 = 1_000;
        let (dir, path, store) = fresh_with(PAGES);
        let checkpoints = || store.progress.checkpoints.load(Ordering::SeqCst);
        let page = vec![7u8; 4096];
        for i in 0..100 {
            store.set(&format!("k{i}"), &page).await.unwrap();
        }
        assert_eq!(checkpoints(), 0, "the WAL is still small");
        // ~5 000 pages in all (a 4 KiB value takes an overflow page besides its leaf).
        for i in 100..1200 {
            store.set(&format!("k{i}"), &page).await.unwrap();
        }
        store.barrier().await.unwrap();
        assert!(checkpoints() >= 2, "{} checkpoints", checkpoints());
        let wal = std::fs::metadata(dir.path().join("kv.db-wal"))
            .unwrap()
            .len();
        let bound = 2 * PAGES as u64 * (4096 + 24);
        assert!(wal <= bound, "WAL of {wal} bytes, more than {bound}");
        let fresh = connect(&path, vfs().unwrap()).unwrap();
        let n: i64 = fresh
            .query_row("SELECT count(*) FROM spin_key_value", [], |r| r.get(0))
            .unwrap();
        assert_eq!(n, 1200);
    }
}
