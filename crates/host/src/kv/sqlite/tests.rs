//! The SQLite store's tests: conformance, the commit and sync paths, checkpoints, locking.

use std::path::PathBuf;

use super::writer::MAX_BATCH;
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
    super::super::conformance::check(Arc::new(SqliteStore::open(&path, "default").unwrap())).await;
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
    progress.count_commit();
    assert!(progress.all_synced());
    progress.sync().unwrap();
    assert_eq!(progress.syncs.load(Ordering::SeqCst), 0);
}

/// A failed sync fails every later barrier, even with nothing new committed.
#[test]
fn a_failed_sync_fails_every_later_barrier() {
    let progress = Progress::new(Path::new("/nonexistent/kv.db"), false);
    progress.count_commit();
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
        rusqlite::Error::SqliteFailure(rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_BUSY), None)
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

/// A barrier syncs through the WAL handle it keeps, and that handle stays the WAL file: through checkpoints
/// (which rewind the WAL in place) and other connections opening and closing (none is the last to close
/// while the store runs, so none deletes the WAL).
#[tokio::test]
async fn the_kept_wal_handle_stays_the_wal_file() {
    use std::os::unix::fs::MetadataExt as _;
    const PAGES: i32 = 200;
    let (dir, path, store) = fresh_with(PAGES);
    let wal_path = dir.path().join("kv.db-wal");
    let kept_inode = || {
        let kept = store.progress.wal_file.lock().unwrap();
        kept.as_ref().map(|f| f.metadata().unwrap().ino())
    };
    assert_eq!(kept_inode(), None, "nothing synced yet");
    store.set("a", b"1").await.unwrap();
    store.barrier().await.unwrap();
    let first = kept_inode().expect("the first sync keeps the WAL handle");
    assert_eq!(first, std::fs::metadata(&wal_path).unwrap().ino());

    let page = vec![7u8; 4096];
    for i in 0..600 {
        store.set(&format!("k{i}"), &page).await.unwrap();
        if i % 100 == 0 {
            drop(connect(&path, vfs().unwrap()).unwrap());
            store.barrier().await.unwrap();
        }
    }
    store.barrier().await.unwrap();
    assert!(store.progress.checkpoints.load(Ordering::SeqCst) >= 1);
    assert_eq!(kept_inode(), Some(first));
    assert_eq!(std::fs::metadata(&wal_path).unwrap().ino(), first);
    assert!(store.progress.syncs.load(Ordering::SeqCst) >= 8);
    assert_eq!(committed_value(&path, "k599"), Some(page));
}

/// A commit is counted before SQLite makes it, on either path (inline on the caller's thread, or queued for
/// the writer thread): a read connection sees a commit at once, and a barrier after that read must find it
/// to sync. (Before, the count followed the commit, and a barrier in between passed without a sync.)
#[tokio::test]
async fn a_commit_is_counted_before_readers_can_see_it() {
    for inline in [true, false] {
        let (_dir, _path, mut store) = fresh();
        store.inline = inline;
        let seen = Arc::new(Mutex::new(Vec::new()));
        {
            let conn = store.conn.lock().unwrap();
            let (progress, seen) = (store.progress.clone(), seen.clone());
            conn.commit_hook(Some(move || {
                seen.lock()
                    .unwrap()
                    .push(progress.committed.load(Ordering::SeqCst));
                false
            }));
        }
        store.set("a", b"1").await.unwrap();
        store.set("b", b"2").await.unwrap();
        let seen = seen.lock().unwrap().clone();
        assert_eq!(
            seen,
            [1, 2],
            "inline {inline}: each commit counted before it is made"
        );
        store.barrier().await.unwrap();
        assert!(store.progress.all_synced());
    }
}

/// Processes sharing the file (`ESIM402_SQLITE_LOCKING=shared`) read each other's commits, which their writers
/// may not have synced yet: on a shared file a read makes the next barrier sync the WAL (which makes every commit
/// in it durable, whoever wrote it). On a file of its own, a read alone leaves a barrier nothing to do. (Before,
/// a process could answer from another's commit that a power loss could take back.)
#[tokio::test]
async fn on_a_shared_file_a_read_makes_the_next_barrier_sync() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("kv.db");
    let open = |vfs| {
        SqliteStore::open_on(
            &path,
            "default",
            CHECKPOINT_PAGES,
            CommitAt::Barrier,
            IDLE_COMMIT,
            vfs,
            false,
        )
        .unwrap()
    };
    let writer = open("unix");
    let reader = open("unix");
    assert!(!writer.progress.lazy, "shared files commit each write");
    writer.set("a", b"1").await.unwrap();
    let before = reader.progress.syncs.load(Ordering::SeqCst);
    assert_eq!(reader.get("a").await.unwrap(), Some(b"1".to_vec()));
    assert!(!reader.progress.all_synced());
    reader.barrier().await.unwrap();
    assert_eq!(reader.progress.syncs.load(Ordering::SeqCst), before + 1);
    assert!(reader.progress.all_synced());

    let (_dir, _path, own) = fresh();
    own.set("b", b"2").await.unwrap();
    own.barrier().await.unwrap();
    let synced = own.progress.syncs.load(Ordering::SeqCst);
    assert_eq!(own.get("b").await.unwrap(), Some(b"2".to_vec()));
    assert!(own.progress.all_synced(), "a read of our own synced write");
    own.barrier().await.unwrap();
    assert_eq!(own.progress.syncs.load(Ordering::SeqCst), synced);
}

/// The first barrier that syncs also syncs the directory that holds the database (whose new `-wal` file, and
/// on a first start the database file, SQLite itself would sync only at its first checkpoint) and, for each
/// directory the store created, the one that holds it; once per process, not at every barrier.
#[tokio::test]
async fn the_first_sync_syncs_the_directories_once() {
    let dir = tempfile::tempdir().unwrap();
    let spin = dir.path().join(".spin");
    let path = spin.join("kv").join("kv.db");
    for (at, created) in [(CommitAt::Barrier, true), (CommitAt::Write, false)] {
        let store = SqliteStore::open_with(&path, "default", CHECKPOINT_PAGES, at).unwrap();
        let want: Vec<PathBuf> = if created {
            vec![spin.join("kv"), spin.clone(), dir.path().to_owned()]
        } else {
            vec![spin.join("kv")]
        };
        assert_eq!(store.progress.dirs, want, "created: {created}");
        let dir_syncs = || store.progress.dir_syncs.load(Ordering::SeqCst);
        assert_eq!(dir_syncs(), 0, "nothing synced yet");
        for i in 0..3 {
            store.set(&format!("k{i}"), b"v").await.unwrap();
            store.barrier().await.unwrap();
        }
        assert_eq!(store.progress.syncs.load(Ordering::SeqCst), 3);
        assert_eq!(dir_syncs(), 1, "once, with the first sync");
    }

    // A directory that cannot be synced fails the sync like the file would: no barrier passes after it.
    let wal = dir.path().join("lone.db-wal");
    std::fs::write(&wal, b"").unwrap();
    let progress = Progress {
        dirs: vec![dir.path().join("gone")],
        ..Progress::new(&dir.path().join("lone.db"), false)
    };
    progress.count_commit();
    let failed = progress.sync().unwrap_err();
    assert!(failed.0.contains("gone"), "{failed}");
    assert!(
        progress.wal_file.lock().unwrap().is_none(),
        "no handle kept"
    );
    assert!(progress.sync().unwrap_err().0.contains("restart the host"));
}

/// A queued batch that cannot begin (SQLite's write lock held elsewhere past the busy timeout) fails as a
/// whole at once: each write alone would wait the busy timeout again (64 writes, 64 timeouts, with every
/// barrier of the host waiting behind them).
#[tokio::test]
async fn a_busy_write_lock_fails_a_queued_batch_at_once() {
    let (_dir, path, store) = fresh();
    store.set("a", b"1").await.unwrap();
    let other = connect(&path, vfs().unwrap()).unwrap();
    other.execute_batch("BEGIN IMMEDIATE").unwrap();
    let (tx, rx) = mpsc::channel();
    let mut replies = Vec::new();
    for i in 0..MAX_BATCH {
        let (reply, done) = oneshot::channel();
        let write = Write::Set(format!("k{i}"), b"v".to_vec());
        tx.send(Job { write, reply }).unwrap();
        replies.push(done);
    }
    drop(tx);
    let timeout = std::time::Duration::from_millis(100);
    let progress = Progress {
        busy_timeout: timeout,
        ..Progress::new(&path, false)
    };
    let conn = connect(&path, vfs().unwrap()).unwrap();
    let started = std::time::Instant::now();
    assert_eq!(write_loop(&Mutex::new(conn), "default", &rx, &progress), 1);
    let took = started.elapsed();
    assert!(
        took < timeout * 10,
        "{took:?}: the batch waited more than one busy timeout"
    );
    for r in replies {
        let Err(e) = r.await.unwrap() else {
            panic!("a write went through a held write lock")
        };
        assert!(e.0.contains("locked"), "{e}");
    }
    other.execute_batch("COMMIT").unwrap();
    assert_eq!(committed_value(&path, "k0"), None);
}

/// Once the store has failed (a failed sync, or acknowledged writes lost), every later write is refused,
/// naming the reason, on every path: a write applied on top of a state that lost earlier ones could leave
/// the file, after a restart, with the tail of a request without its beginning.
#[tokio::test]
async fn a_failed_store_refuses_every_later_write() {
    let (_dir, _path, lazy) = fresh_lazy(NEVER_IDLE);
    let (_dir2, each_path, each) = fresh();
    for store in [&lazy, &each] {
        store.set("a", b"1").await.unwrap();
        store.progress.failed.store(true, Ordering::SeqCst);
        let refused = store.set("b", b"2").await.unwrap_err();
        assert!(refused.0.contains("restart the host"), "{refused}");
        assert!(store.increment("n", 1).await.is_err());
        assert!(store.compare_and_swap("c", None, b"x").await.is_err());
        assert!(store.barrier().await.is_err());
        assert_eq!(store.get("b").await.unwrap(), None);
    }
    // Queued for the writer thread too.
    {
        let _taken = each.conn.lock().unwrap();
        assert!(each.write_inline(&Write::Delete("a".into())).is_none());
    }
    let (tx, rx) = mpsc::channel();
    let (reply, done) = oneshot::channel();
    tx.send(Job {
        write: Write::Delete("a".into()),
        reply,
    })
    .unwrap();
    drop(tx);
    let conn = connect(&each_path, vfs().unwrap()).unwrap();
    let progress = Progress::new(&each_path, false);
    progress.failed.store(true, Ordering::SeqCst);
    write_loop(&Mutex::new(conn), "default", &rx, &progress);
    assert!(done.await.unwrap().is_err());
    assert_eq!(each.get("a").await.unwrap().as_deref(), Some(&b"1"[..]));
}

/// A transaction SQLite rolled back by itself between two writes (an error on a read that ran on the write
/// connection) took acknowledged writes with it: the next write finds it gone and is refused (it would
/// otherwise commit alone, on top of the lost ones), and no barrier passes again.
#[tokio::test]
async fn a_transaction_rolled_back_behind_the_store_fails_it() {
    let (_dir, path, store) = fresh_lazy(NEVER_IDLE);
    store.set("a", b"1").await.unwrap();
    assert!(store.progress.open.load(Ordering::SeqCst));
    // What SQLite does by itself on an I/O error or a full disk.
    store
        .conn
        .lock()
        .unwrap()
        .execute_batch("ROLLBACK")
        .unwrap();
    let refused = store.set("b", b"2").await.unwrap_err();
    assert!(refused.0.contains("restart the host"), "{refused}");
    assert!(store.progress.failed.load(Ordering::SeqCst));
    assert!(store.barrier().await.is_err());
    drop(store);
    assert_eq!(committed_value(&path, "a"), None, "lost");
    assert_eq!(committed_value(&path, "b"), None, "never committed alone");
}

/// A `set-many` one of whose entries SQLite refuses by rolling back only that statement (here a trigger's
/// `RAISE(ABORT)`, as some I/O-class errors do) leaves none of its entries in the open transaction: the guest
/// was told it failed, so the next commit must not keep the entries before the refused one (it did).
#[tokio::test]
async fn a_failed_set_many_leaves_none_of_its_entries_to_commit() {
    let (_dir, path, store) = fresh_lazy(NEVER_IDLE);
    connect(&path, vfs().unwrap())
        .unwrap()
        .execute_batch(
            "CREATE TRIGGER refuse BEFORE INSERT ON spin_key_value WHEN NEW.key = 'bad' \
             BEGIN SELECT RAISE(ABORT, 'refused'); END;",
        )
        .unwrap();
    store.set("before", b"0").await.unwrap();
    let many = vec![("a".into(), b"1".to_vec()), ("bad".into(), b"2".to_vec())];
    assert!(store.set_many(many).await.is_err());
    store.barrier().await.unwrap();
    assert_eq!(
        committed_value(&path, "a"),
        None,
        "none of the failed write"
    );
    assert_eq!(committed_value(&path, "before").as_deref(), Some(&b"0"[..]));
}

/// A new store's file, and the WAL files SQLite makes beside it, are readable by their owner only (they hold
/// payment records and, in development, the token key); before, they took the umask (typically 0644).
#[cfg(unix)]
#[tokio::test]
async fn a_new_store_file_is_private() {
    use std::os::unix::fs::PermissionsExt;
    let (_dir, path, store) = fresh();
    store.set("a", b"1").await.unwrap();
    store.barrier().await.unwrap();
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&path), 0o600);
    let wal = path.with_file_name("kv.db-wal");
    if wal.exists() {
        assert_eq!(mode(&wal), 0o600);
    }
}
