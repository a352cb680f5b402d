//! The `kv` benchmark: how long one `increment` takes in the host's stores, alone and with other writers in
//! flight. The guest's synchronous `wasi:keyvalue` `increment` (the versioned cells' claim, one per cell write)
//! holds its instance for exactly this long, so this is the stall it causes the instance's other requests.
//! SQLite: a fresh file in a temp dir (WAL, `synchronous = FULL`, group commit); Redis: a `redis-server` started
//! on a loopback port and stopped by its PID, if one is installed.

use std::sync::Arc;
use std::time::{Duration, Instant};

use esim402_host::kv::{Backend, RedisStore, SqliteStore};

use crate::pct;

async fn measure(
    name: &str,
    store: Arc<dyn Backend>,
    writers: usize,
    count: usize,
) -> anyhow::Result<()> {
    let start = Instant::now();
    let mut tasks = Vec::new();
    for w in 0..writers {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::with_capacity(count);
            for i in 0..count {
                let t = Instant::now();
                store.increment(&format!("k{w}@v{i}"), 1).await?;
                lat.push(t.elapsed());
            }
            anyhow::Ok(lat)
        }));
    }
    let mut lat: Vec<Duration> = Vec::new();
    for t in tasks {
        lat.extend(t.await??);
    }
    let elapsed = start.elapsed();
    lat.sort_unstable();
    println!(
        "kv {name:<8} {writers} writer(s): {:>6} increments/s  p50 {:>7.1}us  p90 {:>7.1}us  p99 {:>7.1}us",
        (lat.len() as f64 / elapsed.as_secs_f64()) as u64,
        pct(&lat, 0.5).as_secs_f64() * 1e6,
        pct(&lat, 0.9).as_secs_f64() * 1e6,
        pct(&lat, 0.99).as_secs_f64() * 1e6,
    );
    Ok(())
}

/// Run the `kv` scenario: `count` increments per writer, 1 and `concurrency` writers, per store.
pub async fn run(count: usize, concurrency: usize) -> anyhow::Result<()> {
    let dir = crate::bench_dir()?;
    let sqlite: Arc<dyn Backend> =
        Arc::new(SqliteStore::open(&dir.path().join("kv.db"), "default")?);
    let result = async {
        measure("sqlite", sqlite.clone(), 1, count).await?;
        measure("sqlite", sqlite, concurrency, count).await
    }
    .await;
    drop(dir);
    result?;
    let Ok(redis) = esim402_tests::RedisServer::start() else {
        println!("kv redis: skipped (no redis-server on PATH)");
        return Ok(());
    };
    let store: Arc<dyn Backend> = Arc::new(RedisStore::connect(&redis.url).await?);
    measure("redis", store.clone(), 1, count).await?;
    measure("redis", store, concurrency, count).await
}
