//! The SQLite store's writes: the statements, one write applied in a transaction, and the writer thread, which
//! commits queued writes together (group commit), commits an open transaction at a barrier and syncs once
//! for every barrier of a batch, and runs the checkpoints. Invariant: a write is acknowledged only once it is
//! applied where every later read of this process sees it (committed, or in the write connection's open
//! transaction), and a barrier is answered only once every write acknowledged before it was asked is on disk.

use std::sync::atomic::Ordering;
use std::sync::{Mutex, mpsc};

use rusqlite::{Connection, OptionalExtension, TransactionBehavior, params};
use tokio::sync::oneshot;

use super::progress::{Progress, WAL_PAGES};
use crate::kv::{KvError, KvResult};

/// Most writes one commit carries.
pub(super) const MAX_BATCH: usize = 64;

/// An open transaction is committed after this many writes.
pub(super) const MAX_OPEN_WRITES: u64 = 1_024;

/// A write and where its result goes once committed.
pub(super) struct Job {
    pub(super) write: Write,
    pub(super) reply: oneshot::Sender<KvResult<Done>>,
}

pub(super) enum Write {
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
    pub(super) fn is_request(&self) -> bool {
        matches!(self, Write::Sync | Write::Checkpoint | Write::Tick)
    }
}

pub(super) enum Done {
    Unit,
    Count(i64),
    Swapped(bool),
}

pub(super) const GET: &str = "SELECT value FROM spin_key_value WHERE store = ?1 AND key = ?2";
pub(super) const DELETE: &str = "DELETE FROM spin_key_value WHERE store = ?1 AND key = ?2";
pub(super) const UPSERT: &str = "INSERT INTO spin_key_value (store, key, value) VALUES (?1, ?2, ?3) ON CONFLICT (store, key) DO UPDATE SET value = excluded.value";

/// Apply `write` in the write connection's open transaction, opening one if there is none (lazy mode); the
/// write counts as acknowledged once applied. If SQLite rolled the whole transaction back (an I/O error, a full
/// disk; during this write, or before it, on a read that ran on the write connection), writes acknowledged
/// before are gone: the store fails every later barrier, as after a failed sync, and refuses every later
/// write (applied on top of a state that lost earlier ones, it could survive a restart without them).
pub(super) fn apply_open(
    conn: &Connection,
    label: &str,
    progress: &Progress,
    write: &Write,
) -> rusqlite::Result<KvResult<Done>> {
    if progress.open.load(Ordering::SeqCst) && conn.is_autocommit() {
        // Rolled back by SQLite since the last write: without this check the write would commit by itself.
        lost_open(progress);
    }
    if let Err(e) = progress.refuse_if_failed() {
        return Ok(Err(e));
    }
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
                lost_open(progress);
            }
            Err(e)
        }
    }
}

/// The open transaction is gone without a commit (SQLite rolled it back): if it held acknowledged writes,
/// the store has failed ([`Progress::failed`]).
fn lost_open(progress: &Progress) {
    progress.open.store(false, Ordering::SeqCst);
    if progress.open_writes.swap(0, Ordering::SeqCst) > 0 {
        progress.failed.store(true, Ordering::SeqCst);
    }
}

/// Commit the write connection's open transaction, if any (lazy mode, holding the connection); returns how
/// many writes have been acknowledged up to it (all of them now committed: the target of the next sync). A
/// failed commit, or a transaction SQLite rolled back by itself, may have lost acknowledged writes: every
/// later barrier and write fails ([`Progress::failed`]).
pub(super) fn commit_open(conn: &Connection, progress: &Progress) -> KvResult<u64> {
    let target = progress.committed.load(Ordering::SeqCst);
    if !progress.open.load(Ordering::SeqCst) {
        return Ok(target);
    }
    if conn.is_autocommit() {
        // Rolled back by SQLite since the last write (module docs): failed if it held acknowledged writes.
        lost_open(progress);
        progress.refuse_if_failed()?;
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
pub(super) fn lazy_batch(
    conn: &Mutex<Connection>,
    label: &str,
    batch: Vec<Job>,
    progress: &Progress,
) -> u64 {
    let Ok(guard) = conn.lock() else {
        return 0;
    };
    let mut commits = 0;
    let mut barriers = Vec::new();
    let mut target = None;
    let mut asked = false;
    let _ = guard.busy_timeout(progress.busy_timeout);
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
pub(super) fn commit_if_open(conn: &Connection, progress: &Progress) -> u64 {
    let open = progress.open.load(Ordering::SeqCst);
    u64::from(open && commit_open(conn, progress).is_ok())
}

/// Commit what is open, then checkpoint (lazy mode). Returns the commits made.
pub(super) fn lazy_checkpoint(conn: &Mutex<Connection>, progress: &Progress) -> u64 {
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
/// ([`super::CommitAt::Barrier`]) each batch goes to [`lazy_batch`] instead, an open transaction is committed once
/// no job has come for `idle_commit`, and the last one when the store is gone.
pub(super) fn write_loop(
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
            let _ = conn.busy_timeout(progress.busy_timeout);
            // Counted before it commits: a read connection may see the commit at once, and the reader's barrier
            // must then find something to sync (`Progress::committed`).
            progress.count_commit();
            let results = if let Err(e) = progress.refuse_if_failed() {
                writes.iter().map(|_| Err(KvError(e.0.clone()))).collect()
            } else {
                match commit_staged(&mut conn, label, writes.iter().map(|j| &j.write)) {
                    Ok(results) => results,
                    // SQLite's write lock busy or locked past the busy timeout, or no transaction begun: each
                    // write alone would wait (the busy timeout again, each) or fail the same way, so the batch
                    // fails at once.
                    Err(Failed::Whole(e)) => {
                        let e = KvError::from_display(e);
                        writes.iter().map(|_| Err(KvError(e.0.clone()))).collect()
                    }
                    // A failed statement or commit: retry each write in its own transaction, so one bad write
                    // does not fail the others.
                    Err(Failed::Statement(_)) => writes
                        .iter()
                        .map(|job| {
                            commit(&mut conn, label, std::iter::once(&job.write))
                                .map_err(KvError::from_display)
                                .and_then(|mut r| {
                                    r.pop().unwrap_or(Err(KvError("no result".into())))
                                })
                        })
                        .collect(),
                }
            };
            asked |= progress.wal_grown();
            let _ = conn.busy_timeout(std::time::Duration::ZERO);
            drop(conn);
            for (job, result) in writes.into_iter().zip(results) {
                let _ = job.reply.send(result);
            }
        }
        if !barriers.is_empty() {
            // The target read under the write connection's lock: every commit counted by then has finished
            // (an inline commit holds the lock from its count to its end), so the sync covers it.
            let target = conn
                .lock()
                .map(|_held| progress.committed.load(Ordering::SeqCst));
            let synced = match target {
                Ok(target) => progress.sync_to(target),
                Err(_) => Err(KvError("the SQLite write connection is poisoned".into())),
            };
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

/// A checkpoint, on the write connection and holding it: while it runs, writes queue for the writer thread.
/// (On a connection of its own it would run alongside a steady stream of commits and never catch up with
/// them: the WAL restarts from its start only when a write begins after a checkpoint that copied all of it.)
/// `PASSIVE` does not wait for readers.
pub(super) fn checkpoint(conn: &Mutex<Connection>) {
    let Ok(conn) = conn.lock() else { return };
    // A failed checkpoint loses nothing (the pages stay in the WAL): the next one tries again.
    let _ = conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(()));
}

/// Apply `batch` in one `BEGIN IMMEDIATE` transaction and commit it; each write's result.
pub(super) fn commit<'a>(
    conn: &mut Connection,
    label: &str,
    batch: impl Iterator<Item = &'a Write>,
) -> rusqlite::Result<Vec<KvResult<Done>>> {
    commit_staged(conn, label, batch).map_err(|(Failed::Whole(e) | Failed::Statement(e))| e)
}

/// Why a batch's transaction failed.
pub(super) enum Failed {
    /// It never began, or SQLite's write lock was busy or locked: every write would fail alone the same way.
    Whole(rusqlite::Error),
    /// A statement or the commit failed: one write may be to blame.
    Statement(rusqlite::Error),
}

/// [`commit`], telling a failure of the whole batch from one a write may cause.
pub(super) fn commit_staged<'a>(
    conn: &mut Connection,
    label: &str,
    batch: impl Iterator<Item = &'a Write>,
) -> Result<Vec<KvResult<Done>>, Failed> {
    let staged = |e: rusqlite::Error| match e.sqlite_error_code() {
        Some(rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked) => {
            Failed::Whole(e)
        }
        _ => Failed::Statement(e),
    };
    let tx = conn
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .map_err(Failed::Whole)?;
    let mut results = Vec::new();
    for write in batch {
        results.push(apply(&tx, label, write).map_err(staged)?);
    }
    tx.commit().map_err(staged)?;
    Ok(results)
}

/// Run `statements` (several, of one write) inside a savepoint: an error that SQLite answers by rolling back only
/// the failing statement (not the transaction) undoes the ones before it too, so a `set-many` or `delete-many`
/// the guest is told failed leaves none of its entries in the open transaction for the next commit to keep.
fn all_or_nothing(
    tx: &Connection,
    statements: impl FnOnce() -> rusqlite::Result<()>,
) -> rusqlite::Result<()> {
    tx.execute_batch("SAVEPOINT many")?;
    match statements() {
        Ok(()) => tx.execute_batch("RELEASE many"),
        Err(e) => {
            // Still inside the transaction: undo this write's statements. (Rolled back whole: nothing to undo.)
            if !tx.is_autocommit() {
                let _ = tx.execute_batch("ROLLBACK TO many; RELEASE many");
            }
            Err(e)
        }
    }
}

/// One write inside the batch's transaction. `Ok(Err(..))` is the write's own refusal (not a counter, overflow),
/// which changes nothing and does not abort the batch.
pub(super) fn apply(tx: &Connection, s: &str, write: &Write) -> rusqlite::Result<KvResult<Done>> {
    Ok(Ok(match write {
        Write::Set(key, value) => {
            tx.prepare_cached(UPSERT)?.execute(params![s, key, value])?;
            Done::Unit
        }
        Write::SetMany(entries) => {
            all_or_nothing(tx, || {
                let mut upsert = tx.prepare_cached(UPSERT)?;
                for (key, value) in entries {
                    upsert.execute(params![s, key, value])?;
                }
                Ok(())
            })?;
            Done::Unit
        }
        Write::Delete(key) => {
            tx.prepare_cached(DELETE)?.execute(params![s, key])?;
            Done::Unit
        }
        Write::DeleteMany(keys) => {
            all_or_nothing(tx, || {
                let mut delete = tx.prepare_cached(DELETE)?;
                for key in keys {
                    delete.execute(params![s, key])?;
                }
                Ok(())
            })?;
            Done::Unit
        }
        Write::Increment(key, delta) => {
            let current: Option<Vec<u8>> = tx
                .prepare_cached(GET)?
                .query_row(params![s, key], |r| r.get(0))
                .optional()?;
            // Spin's own store panics on a value that is not 8 bytes; this one refuses it.
            let current = match super::super::decode_counter(key, current.as_deref()) {
                Ok(n) => n,
                Err(e) => return Ok(Err(e)),
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
