//! SQLite backend, file-compatible with Spin's `type = "spin"` store (table `spin_key_value`, one row per
//! `(store, key)`; counters as 8-byte little-endian integers, as Spin's `increment` writes them), so `spin up`
//! and `esim402 up` can take turns on one `.spin/sqlite_key_value.db`. The file is in WAL mode with SQLite's
//! default `synchronous = FULL` (a commit is on disk before it is acknowledged). Writes go to one writer thread
//! per store, which commits everything queued at once in one `BEGIN IMMEDIATE` transaction (group commit:
//! concurrent requests share an fsync instead of queueing for one each); reads use a small pool of their own
//! connections and never wait for the writer. Writers in other processes on the same file serialise with this
//! one on SQLite's write lock.

use std::path::{Path, PathBuf};
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
    writer: mpsc::Sender<Job>,
    readers: Arc<Readers>,
}

/// A write and where its result goes once committed.
struct Job {
    write: Write,
    reply: oneshot::Sender<KvResult<Done>>,
}

enum Write {
    Set(String, Vec<u8>),
    Delete(String),
    Increment(String, i64),
    Cas(String, Option<Vec<u8>>, Vec<u8>),
}

enum Done {
    Unit,
    Count(i64),
    Swapped(bool),
}

const GET: &str = "SELECT value FROM spin_key_value WHERE store = ?1 AND key = ?2";
const DELETE: &str = "DELETE FROM spin_key_value WHERE store = ?1 AND key = ?2";
const UPSERT: &str = "INSERT INTO spin_key_value (store, key, value) VALUES (?1, ?2, ?3) ON CONFLICT (store, key) DO UPDATE SET value = excluded.value";

fn connect(path: &Path) -> rusqlite::Result<Connection> {
    let conn = Connection::open(path)?;
    conn.busy_timeout(std::time::Duration::from_secs(5))?;
    Ok(conn)
}

impl SqliteStore {
    /// Open (creating if needed) the database file and its table, and start the writer.
    pub fn open(path: &Path, label: &str) -> anyhow::Result<Self> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)
                .with_context(|| format!("cannot create {}", dir.display()))?;
        }
        let conn = connect(path)
            .with_context(|| format!("cannot open SQLite store {}", path.display()))?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.execute(
            "CREATE TABLE IF NOT EXISTS spin_key_value (store TEXT NOT NULL, key TEXT NOT NULL, value BLOB NOT NULL, PRIMARY KEY (store, key))",
            [],
        )?;
        let label: Arc<str> = label.into();
        let (writer, jobs) = mpsc::channel();
        let thread_label = label.clone();
        std::thread::Builder::new()
            .name(format!("sqlite-kv-{label}"))
            .spawn(move || {
                write_loop(conn, &thread_label, &jobs);
            })
            .context("cannot start the SQLite writer thread")?;
        Ok(Self {
            label,
            writer,
            readers: Arc::new(Readers {
                path: path.to_owned(),
                idle: Mutex::new(Vec::new()),
            }),
        })
    }

    async fn write(&self, write: Write) -> KvResult<Done> {
        let (reply, done) = oneshot::channel();
        self.writer
            .send(Job { write, reply })
            .map_err(|_| KvError("the SQLite writer has stopped".into()))?;
        done.await
            .map_err(|_| KvError("the SQLite writer has stopped".into()))?
    }

    async fn read<R: Send + 'static>(
        &self,
        f: impl FnOnce(&Connection, &str) -> rusqlite::Result<R> + Send + 'static,
    ) -> KvResult<R> {
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

/// Read connections, reused (WAL lets them read while the writer commits).
struct Readers {
    path: PathBuf,
    idle: Mutex<Vec<Connection>>,
}

/// Idle read connections kept.
const MAX_IDLE_READERS: usize = 8;

impl Readers {
    fn take(&self) -> KvResult<Connection> {
        let idle = self.idle.lock().ok().and_then(|mut v| v.pop());
        match idle {
            Some(c) => Ok(c),
            None => connect(&self.path).map_err(KvError::from_display),
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

/// The writer: take every queued write (up to [`MAX_BATCH`]), apply them in arrival order inside one
/// `BEGIN IMMEDIATE` transaction, commit once, then answer each. A write's result is only sent after the
/// commit, so an acknowledged write is durable and visible to every reader ("group commit": under load, one
/// fsync serves many writes; alone, a write commits as before).
fn write_loop(mut conn: Connection, label: &str, jobs: &mpsc::Receiver<Job>) -> u64 {
    let mut commits = 0;
    while let Ok(first) = jobs.recv() {
        commits += 1;
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match jobs.try_recv() {
                Ok(job) => batch.push(job),
                Err(_) => break,
            }
        }
        match commit(&mut conn, label, &batch) {
            Ok(results) => {
                for (job, result) in batch.into_iter().zip(results) {
                    let _ = job.reply.send(result);
                }
            }
            // A failed statement or commit: retry each write in its own transaction, so one bad write does
            // not fail the others.
            Err(_) => {
                for job in batch {
                    let result = commit(&mut conn, label, std::slice::from_ref(&job))
                        .map_err(KvError::from_display)
                        .and_then(|mut r| r.pop().unwrap_or(Err(KvError("no result".into()))));
                    let _ = job.reply.send(result);
                }
            }
        }
    }
    commits
}

fn commit(
    conn: &mut Connection,
    label: &str,
    batch: &[Job],
) -> rusqlite::Result<Vec<KvResult<Done>>> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let mut results = Vec::with_capacity(batch.len());
    for job in batch {
        results.push(apply(&tx, label, &job.write)?);
    }
    tx.commit()?;
    Ok(results)
}

/// One write inside the batch's transaction. `Ok(Err(..))` is the write's own refusal (not a counter, overflow),
/// which changes nothing and does not abort the batch.
fn apply(
    tx: &rusqlite::Transaction<'_>,
    s: &str,
    write: &Write,
) -> rusqlite::Result<KvResult<Done>> {
    Ok(Ok(match write {
        Write::Set(key, value) => {
            tx.prepare_cached(UPSERT)?.execute(params![s, key, value])?;
            Done::Unit
        }
        Write::Delete(key) => {
            tx.prepare_cached(DELETE)?.execute(params![s, key])?;
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
    async fn keys(&self) -> KvResult<Vec<String>> {
        self.read(|c, s| {
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
}

#[cfg(test)]
mod tests {
    use super::*;

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
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("kv.db");
        let store = SqliteStore::open(&path, "default").unwrap();
        store.set("text", b"x").await.unwrap();
        let conn = connect(&path).unwrap();
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
        let commits = write_loop(conn, "default", &rx);
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
    }
}
