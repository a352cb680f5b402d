//! Redis backend. Insert-if-absent is `SET NX`; compare-and-swap on a present value is a server-side script
//! (Redis runs a script atomically, so no WATCH/MULTI race can lose a write); increment is `INCRBY`.

use async_trait::async_trait;
use redis::AsyncCommands;
use redis::aio::MultiplexedConnection;

use super::{Backend, KvError, KvResult};

/// How long one command may wait for its reply.
const RESPONSE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// A store on one Redis server (all labels pointing at the same URL share its keyspace, as in Spin).
pub struct RedisStore {
    conn: MultiplexedConnection,
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
        // The client's default response timeout (500 ms) fails a write whenever the host's cores are busy for
        // half a second (measured: a saturated 2-core ingest run got `redis: timed out` as a 500); a store
        // call is a money step, so it waits longer before giving up.
        let config =
            redis::AsyncConnectionConfig::new().set_response_timeout(Some(RESPONSE_TIMEOUT));
        let mut conn = client
            .get_multiplexed_async_connection_with_config(&config)
            .await
            .map_err(|e| anyhow::anyhow!("cannot connect to Redis key-value store: {e}"))?;
        let _: String = redis::cmd("PING").query_async(&mut conn).await?;
        Ok(Self {
            conn,
            cas: redis::Script::new(CAS_SCRIPT),
        })
    }
}

fn err(e: redis::RedisError) -> KvError {
    KvError(format!("redis: {e}"))
}

#[async_trait]
impl Backend for RedisStore {
    async fn get(&self, key: &str) -> KvResult<Option<Vec<u8>>> {
        self.conn.clone().get(key).await.map_err(err)
    }
    async fn set(&self, key: &str, value: &[u8]) -> KvResult<()> {
        self.conn.clone().set(key, value).await.map_err(err)
    }
    async fn delete(&self, key: &str) -> KvResult<()> {
        self.conn.clone().del(key).await.map_err(err)
    }
    async fn exists(&self, key: &str) -> KvResult<bool> {
        self.conn.clone().exists(key).await.map_err(err)
    }
    async fn keys(&self) -> KvResult<Vec<String>> {
        let mut conn = self.conn.clone();
        let mut keys = Vec::new();
        let mut cursor: u64 = 0;
        loop {
            let (next, batch): (u64, Vec<String>) = redis::cmd("SCAN")
                .arg(cursor)
                .arg("COUNT")
                .arg(1000)
                .query_async(&mut conn)
                .await
                .map_err(err)?;
            keys.extend(batch);
            if next == 0 {
                return Ok(keys);
            }
            cursor = next;
        }
    }
    async fn increment(&self, key: &str, delta: i64) -> KvResult<i64> {
        self.conn.clone().incr(key, delta).await.map_err(err)
    }
    async fn compare_and_swap(
        &self,
        key: &str,
        expected: Option<&[u8]>,
        value: &[u8],
    ) -> KvResult<bool> {
        let mut conn = self.conn.clone();
        match expected {
            None => {
                let set: Option<String> = redis::cmd("SET")
                    .arg(key)
                    .arg(value)
                    .arg("NX")
                    .query_async(&mut conn)
                    .await
                    .map_err(err)?;
                Ok(set.is_some())
            }
            Some(exp) => {
                let n: i64 = self
                    .cas
                    .key(key)
                    .arg(exp)
                    .arg(value)
                    .invoke_async(&mut conn)
                    .await
                    .map_err(err)?;
                Ok(n == 1)
            }
        }
    }
}
