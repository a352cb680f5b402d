//! SQLite backend, file-compatible with Spin's `type = "spin"` store (table `spin_key_value`, one row per
//! `(store, key)`; counters as 8-byte little-endian integers, as Spin's `increment` writes them), so `spin up`
//! and `esim402 up` can take turns on one `.spin/sqlite_key_value.db`. The file is in WAL mode. Each store
//! has one write connection: a write that finds it free commits at once on the caller's thread (a commit
//! without a disk sync is tens of microseconds, less than handing the write to another thread and back);
//! one that finds it taken, or SQLite's write lock held by another process, never waits on the caller's
//! thread but queues for the store's writer thread, which commits everything queued at once in one
//! `BEGIN IMMEDIATE` transaction (group commit). Reads use a small pool of their own connections, on the
//! caller's thread, and never wait for the writer. The process holds the file for as long as it runs
//! (SQLite's `unix-excl` VFS, [`switches::LOCKING_ENV`]): its transactions make no file-lock system calls, and
//! another process that opens the file is refused by name; `ESIM402_SQLITE_LOCKING=shared` in every process
//! that shares the file makes them serialise on SQLite's write lock instead. SQLite's automatic checkpoint,
//! which would run inside whichever commit crosses 1 000 WAL pages, is off: the writer thread runs one once
//! the WAL holds [`CHECKPOINT_PAGES`] (writes queue behind it meanwhile).
//! `ESIM402_SQLITE_INLINE=off` (for measurements) hands every write to the writer thread and every read to a
//! blocking thread, as before.
//!
//! Durability: the writer commits with `synchronous = NORMAL` (the commit is in the WAL, in order, but not
//! yet synced to disk; counted before it is made, so a request that reads it finds something to sync) and
//! syncs the WAL file on demand: [`Backend::barrier`] returns once every write
//! acknowledged before it is on disk, sharing one `fdatasync` among all concurrent barriers and skipping it when
//! nothing was committed since the last one. The host calls the barrier before anything leaves it (an HTTP
//! answer, an outbound request: [`super::Durability`]), so nobody outside ever sees a write that a power loss
//! could take back; a request making 20 sequential writes pays for one disk sync instead of 20.
//! The first sync also syncs the directory that holds the file (and, for each directory the store created,
//! the one that holds it): SQLite creates the WAL file at every start, and under `synchronous = NORMAL` would
//! sync its directory entry only at the first checkpoint, so a power loss could take back the file itself.
//! A failed sync, of the file or of a directory, fails that barrier and every later one, and every later
//! write, until the host restarts.
//! `ESIM402_SQLITE_SYNC=commit` (for measurements) syncs at every commit instead, as SQLite's default does.
//! On a file shared with other processes (`ESIM402_SQLITE_LOCKING=shared`) a read may see another process's
//! commit that is not yet synced, so a read counts too: the barrier after it syncs the WAL file, which makes
//! every commit in it durable, whoever wrote it.
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
//! A transaction SQLite rolls back by itself (an I/O error or a full disk, during a write, or during a read
//! that ran on the write connection: found before the next write, which would otherwise commit alone) may
//! take acknowledged writes with it: then, as after a failed sync, no barrier passes again and every later
//! write is refused, naming the reason, until the host restarts (applied on top of a state that lost earlier
//! writes, a later one could survive a restart without them: the tail of a request without its beginning).
//! Only the first store opened on a file commits at barriers (an open transaction holds the file's write
//! lock; another label on the same file commits each write), and only with the default locking, inline calls
//! and barrier syncs.

use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, mpsc};

use anyhow::Context;
use async_trait::async_trait;
use rusqlite::{Connection, OptionalExtension, params};
use tokio::sync::oneshot;

use super::{Backend, KvError, KvResult};

mod files;
mod progress;
mod switches;
#[cfg(test)]
mod tests;
mod writer;

use files::{LazyFile, Readers, connect, in_use};
use progress::{CHECKPOINT_PAGES, IDLE_COMMIT, Progress, create_dirs, note_wal_pages};
use switches::{COMMIT_ENV, CommitAt, inline, switch, sync_each_commit, vfs};
use writer::{Done, GET, Job, MAX_OPEN_WRITES, Write, apply_open, commit, commit_open, write_loop};

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
        let vfs = vfs()?;
        let sync_each = sync_each_commit()?;
        Self::open_on(
            path,
            label,
            checkpoint_pages,
            at,
            idle_commit,
            vfs,
            sync_each,
        )
    }

    /// [`SqliteStore::open_tuned`] with the VFS (`unix-excl` or `unix`: [`switches::LOCKING_ENV`]) and the sync
    /// at every commit ([`switches::SYNC_ENV`]) given.
    fn open_on(
        path: &Path,
        label: &str,
        checkpoint_pages: i32,
        at: CommitAt,
        idle_commit: std::time::Duration,
        vfs: &'static str,
        sync_each: bool,
    ) -> anyhow::Result<Self> {
        // The directories whose entries the first barrier syncs (with those the store creates here).
        let dirs = create_dirs(path)
            .with_context(|| format!("cannot create the directory of {}", path.display()))?;
        let conn = connect(path, vfs)
            .with_context(|| format!("cannot open SQLite store {}", path.display()))?;
        // The first statement takes the file's lock (for good, with `unix-excl`).
        conn.pragma_update(None, "journal_mode", "WAL")
            .map_err(|e| in_use(e, path, vfs))?;
        // Checkpoints run on the writer thread, not inside whichever commit crosses SQLite's threshold.
        conn.pragma_update(None, "wal_autocheckpoint", 0)?;
        conn.wal_hook(Some(note_wal_pages));
        // Commits are synced on demand, by `barrier` (module docs).
        let each_commit = sync_each;
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
            shared: vfs == "unix",
            idle_commit,
            dirs,
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
        if let Err(e) = self.progress.refuse_if_failed() {
            return Some(Err(e));
        }
        // Counted before it commits (and the lock held until it has): a read connection may see the commit at
        // once, and the reader's barrier must then find something to sync (`Progress::committed`).
        self.progress.count_commit();
        match commit(&mut conn, &self.label, std::iter::once(write)) {
            Ok(mut results) => {
                if self.progress.wal_grown() {
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
        let read = self.read_now(f).await;
        // Counted once the read has run: a sync whose target includes it starts after the read, so it covers
        // whatever commit of another process the read saw (`Progress::note_read`).
        self.progress.note_read();
        read
    }

    async fn read_now<R: Send + 'static>(
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
        let keys = self
            .read_blocking(|c, s| {
                let mut stmt = c.prepare("SELECT key FROM spin_key_value WHERE store = ?1")?;
                stmt.query_map(params![s], |r| r.get(0))?.collect()
            })
            .await;
        self.progress.note_read();
        keys
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
