//! Redis backend. Insert-if-absent is `SET NX`; compare-and-swap on a present value is a server-side script
//! (Redis runs a script atomically, so no WATCH/MULTI race can lose a write); increment is `INCRBY`.

use std::collections::HashSet;

use async_trait::async_trait;
use redis::AsyncCommands;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};

use super::{Backend, KvError, KvResult};

/// How long one command may wait for its reply.
const RESPONSE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);
/// How long one (re)connection attempt may take.
const CONNECT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// A store on one Redis server (all labels pointing at the same URL share its keyspace, as in Spin).
pub struct RedisStore {
    /// One multiplexed connection that is replaced when it breaks (Redis restarted, the connection dropped):
    /// the command that meets the break fails, later ones go to the new connection.
    conn: ConnectionManager,
    cas: redis::Script,
}

const CAS_SCRIPT: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('SET', KEYS[1], ARGV[2])
  return 1
end
return 0
";

impl RedisStore {
    /// Connect (fails fast if the server is unreachable).
    pub async fn connect(url: &str) -> anyhow::Result<Self> {
        let client =
            redis::Client::open(url).map_err(|e| anyhow::anyhow!("invalid Redis url: {e}"))?;
        // The client's default response timeout (500 ms) would fail a store call, a money step, whenever the
        // host or the server pauses for half a second; it waits up to 10 s before giving up. (The `redis: timed
        // out` 500s first blamed on that default were the send-slot stall that `spawned` below removes.)
        let config = ConnectionManagerConfig::new()
            .set_response_timeout(Some(RESPONSE_TIMEOUT))
            .set_connection_timeout(Some(CONNECT_TIMEOUT));
        let mut conn = client
            .get_connection_manager_with_config(config)
            .await
            .map_err(|e| anyhow::anyhow!("cannot connect to Redis key-value store: {e}"))?;
        let _: String = redis::cmd("PING").query_async(&mut conn).await?;
        Ok(Self {
            conn,
            cas: redis::Script::new(CAS_SCRIPT),
        })
    }
}

/// Append the keys of one `SCAN` reply not seen before, in their order: `SCAN` may return a key more than once
/// (one that was in a rehashed bucket), and `keys` lists each once.
fn append_new(keys: &mut Vec<String>, seen: &mut HashSet<String>, batch: Vec<String>) {
    for key in batch {
        if seen.insert(key.clone()) {
            keys.push(key);
        }
    }
}

fn err(e: redis::RedisError) -> KvError {
    KvError(format!("redis: {e}"))
}

/// Run one command on its own tokio task and wait for it there.
///
/// A command must progress even while nobody polls the future that asked for it. The synchronous
/// `wasi:keyvalue` calls hold the instance's store for their duration, so the instance's other pending
/// `spin:key-value` calls are not polled meanwhile; the multiplexed connection hands its send-queue slots out
/// first-come first-served (tokio's fair `mpsc`), so a slot granted to such an unpolled call is never used,
/// and once all 50 are granted that way the synchronous call waits behind them until its response timeout
/// (measured: four concurrent 100-receipt page-signed batches stalled 10 s and answered 500). On a task of its
/// own every command reaches Redis whatever the store is doing.
async fn spawned<T: Send + 'static>(
    command: impl Future<Output = redis::RedisResult<T>> + Send + 'static,
) -> KvResult<T> {
    match tokio::spawn(command).await {
        Ok(r) => r.map_err(err),
        Err(e) => Err(KvError(format!("redis: command task failed: {e}"))),
    }
}

#[async_trait]
impl Backend for RedisStore {
    async fn get(&self, key: &str) -> KvResult<Option<Vec<u8>>> {
        let (mut conn, key) = (self.conn.clone(), key.to_owned());
        spawned(async move { conn.get(key).await }).await
    }
    async fn set(&self, key: &str, value: &[u8]) -> KvResult<()> {
        let (mut conn, key, value) = (self.conn.clone(), key.to_owned(), value.to_vec());
        spawned(async move { conn.set(key, value).await }).await
    }
    async fn delete(&self, key: &str) -> KvResult<()> {
        let (mut conn, key) = (self.conn.clone(), key.to_owned());
        spawned(async move { conn.del(key).await }).await
    }
    async fn exists(&self, key: &str) -> KvResult<bool> {
        let (mut conn, key) = (self.conn.clone(), key.to_owned());
        spawned(async move { conn.exists(key).await }).await
    }
    async fn get_many(&self, keys: &[String]) -> KvResult<Vec<Option<Vec<u8>>>> {
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        let (mut conn, keys) = (self.conn.clone(), keys.to_vec());
        // `MGET`: one round trip, one reply per key in order (nil for an absent key).
        spawned(async move { redis::cmd("MGET").arg(keys).query_async(&mut conn).await }).await
    }
    async fn set_many(&self, entries: Vec<(String, Vec<u8>)>) -> KvResult<()> {
        if entries.is_empty() {
            return Ok(());
        }
        let mut conn = self.conn.clone();
        // `MSET`: one round trip.
        spawned(async move {
            redis::cmd("MSET")
                .arg(entries)
                .query_async::<()>(&mut conn)
                .await
        })
        .await
    }
    async fn delete_many(&self, keys: &[String]) -> KvResult<()> {
        if keys.is_empty() {
            return Ok(());
        }
        let (mut conn, keys) = (self.conn.clone(), keys.to_vec());
        spawned(async move {
            redis::cmd("DEL")
                .arg(keys)
                .query_async::<()>(&mut conn)
                .await
        })
        .await
    }
    async fn keys(&self) -> KvResult<Vec<String>> {
        let mut conn = self.conn.clone();
        spawned(async move {
            let mut keys = Vec::new();
            let mut seen = HashSet::new();
            let mut cursor: u64 = 0;
            loop {
                let (next, batch): (u64, Vec<String>) = redis::cmd("SCAN")
                    .arg(cursor)
                    .arg("COUNT")
                    .arg(1000)
                    .query_async(&mut conn)
                    .await?;
                append_new(&mut keys, &mut seen, batch);
                if next == 0 {
                    return Ok(keys);
                }
                cursor = next;
            }
        })
        .await
    }
    async fn increment(&self, key: &str, delta: i64) -> KvResult<i64> {
        let (mut conn, key) = (self.conn.clone(), key.to_owned());
        spawned(async move { conn.incr(key, delta).await }).await
    }
    async fn compare_and_swap(
        &self,
        key: &str,
        expected: Option<&[u8]>,
        value: &[u8],
    ) -> KvResult<bool> {
        let (mut conn, key, value) = (self.conn.clone(), key.to_owned(), value.to_vec());
        match expected.map(<[u8]>::to_vec) {
            None => {
                spawned(async move {
                    let set: Option<String> = redis::cmd("SET")
                        .arg(key)
                        .arg(value)
                        .arg("NX")
                        .query_async(&mut conn)
                        .await?;
                    Ok(set.is_some())
                })
                .await
            }
            Some(exp) => {
                let cas = self.cas.clone();
                spawned(async move {
                    let n: i64 = cas
                        .key(key)
                        .arg(exp)
                        .arg(value)
                        .invoke_async(&mut conn)
                        .await?;
                    Ok(n == 1)
                })
                .await
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A key that `SCAN` returns twice (in one reply or in two) is listed once, in first-seen order.
    #[test]
    fn scan_replies_are_deduplicated_in_order() {
        let (mut keys, mut seen) = (Vec::new(), HashSet::new());
        let batch = |k: &[&str]| k.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
        append_new(&mut keys, &mut seen, batch(&["b", "a", "b"]));
        append_new(&mut keys, &mut seen, batch(&["c", "a"]));
        assert_eq!(keys, ["b", "a", "c"]);
    }
}
