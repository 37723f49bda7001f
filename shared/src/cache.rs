//! Account snapshots in Redis, one hash per user at `<prefix><namespace>:account:{<user_id>}` (the
//! braces are a Redis Cluster hash tag). Two namespaces: `rm`, the read model's, written by
//! query-svc's projection; `cmd`, command-svc's own, written through after each commit and read
//! by `CheckQuota`. A snapshot is written only when its version is newer than the stored one, in
//! one Lua script, so replicas and redeliveries never move it back.
//!
//! Redis is a cache: every failure is logged and the caller falls back to MySQL. A failure also
//! opens a short breaker: for [`PAUSE_AFTER_FAILURE`] no call goes to Redis, so an outage costs
//! the callers nothing but the first timeouts; then one connection attempt decides again.

use std::{
    sync::{Arc, Mutex, OnceLock},
    time::{Duration, Instant},
};

use redis::{Script, aio::MultiplexedConnection};
use tokio::sync::{mpsc, oneshot};

/// Replaces the snapshot only with a newer version, and refreshes its time to live.
const PUT_IF_NEWER: &str = r#"
local current = tonumber(redis.call('HGET', KEYS[1], 'version') or '-1')
if tonumber(ARGV[1]) > current then
  redis.call('HSET', KEYS[1], 'version', ARGV[1], 'state', ARGV[2], 'updated_at', ARGV[3])
  redis.call('PEXPIRE', KEYS[1], ARGV[4])
  return 1
end
return 0
"#;

/// A Redis call never waits longer than this by default: a slow cache must not slow a command.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_millis(500);

/// After a failure, calls skip Redis for this long.
pub const PAUSE_AFTER_FAILURE: Duration = Duration::from_millis(500);

/// The fields of a snapshot as `HMGET` returns them: version, state, updated_at.
type Fields = (Option<i64>, Option<Vec<u8>>, Option<i64>);

fn snapshot_of(fields: Fields) -> Option<CachedSnapshot> {
    match fields {
        (Some(version), Some(state), Some(updated_at_ms)) => Some(CachedSnapshot {
            version,
            state,
            updated_at_ms,
        }),
        _ => None,
    }
}

/// A snapshot as stored: the encoded `AccountState`, its version, and when it was written on the
/// command side.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CachedSnapshot {
    pub version: i64,
    pub state: Vec<u8>,
    pub updated_at_ms: i64,
}

#[derive(Default)]
enum Link {
    #[default]
    Closed,
    Open(MultiplexedConnection),
    Failed(Instant),
}

/// A read waiting for the next pipeline: the key, and where its answer goes.
type Read = (String, oneshot::Sender<Option<CachedSnapshot>>);

/// The most reads one pipeline carries.
const MAX_READS_PER_PIPELINE: usize = 256;

#[derive(Clone)]
pub struct SnapshotCache {
    client: redis::Client,
    link: Arc<Mutex<Link>>,
    prefix: String,
    namespace: &'static str,
    ttl: Duration,
    timeout: Duration,
    script: Arc<Script>,
    /// The queue of the task that sends concurrent reads as one pipeline, started by the first
    /// read.
    reads: Arc<OnceLock<mpsc::UnboundedSender<Read>>>,
}

impl SnapshotCache {
    /// The read model's snapshots (namespace `rm`). Opens nothing yet: the first use connects,
    /// so the service starts while Redis is away.
    pub fn new(url: &str, prefix: &str, ttl: Duration) -> Result<Self, redis::RedisError> {
        Self::in_namespace(url, prefix, "rm", ttl)
    }

    /// command-svc's own snapshots (namespace `cmd`), which `CheckQuota` answers from.
    pub fn for_commands(url: &str, prefix: &str, ttl: Duration) -> Result<Self, redis::RedisError> {
        Self::in_namespace(url, prefix, "cmd", ttl)
    }

    fn in_namespace(
        url: &str,
        prefix: &str,
        namespace: &'static str,
        ttl: Duration,
    ) -> Result<Self, redis::RedisError> {
        Ok(SnapshotCache {
            client: redis::Client::open(url)?,
            link: Arc::default(),
            prefix: prefix.to_owned(),
            namespace,
            ttl,
            timeout: DEFAULT_TIMEOUT,
            script: Arc::new(Script::new(PUT_IF_NEWER)),
            reads: Arc::default(),
        })
    }

    /// How long one Redis call (or connection attempt) may take before it counts as a failure.
    pub fn with_timeout(self, timeout: Duration) -> Self {
        SnapshotCache { timeout, ..self }
    }

    pub fn key(&self, user_id: &str) -> String {
        format!("{}{}:account:{{{user_id}}}", self.prefix, self.namespace)
    }

    /// A connection, unless the breaker is open or Redis cannot be reached now.
    async fn connection(&self) -> Option<MultiplexedConnection> {
        {
            let link = self.link.lock().expect("not poisoned");
            match &*link {
                Link::Open(connection) => return Some(connection.clone()),
                Link::Failed(at) if at.elapsed() < PAUSE_AFTER_FAILURE => return None,
                _ => {}
            }
        }
        let connected =
            tokio::time::timeout(self.timeout, self.client.get_multiplexed_async_connection())
                .await;
        match connected {
            Ok(Ok(connection)) => {
                let mut link = self.link.lock().expect("not poisoned");
                if matches!(*link, Link::Failed(_)) {
                    tracing::info!("Redis is back");
                }
                *link = Link::Open(connection.clone());
                metrics::gauge!("billing_redis_available").set(1.0);
                Some(connection)
            }
            Ok(Err(error)) => self.failed(&error.to_string()),
            Err(_) => self.failed("connection timed out"),
        }
    }

    fn failed<T>(&self, why: &str) -> Option<T> {
        let mut link = self.link.lock().expect("not poisoned");
        if !matches!(*link, Link::Failed(_)) {
            tracing::warn!(why, "Redis unavailable; MySQL answers meanwhile");
        }
        metrics::counter!("billing_redis_failures_total").increment(1);
        metrics::gauge!("billing_redis_available").set(0.0);
        *link = Link::Failed(Instant::now());
        None
    }

    /// Runs one Redis call with the timeout; a failure opens the breaker.
    async fn call<T: redis::FromRedisValue>(
        &self,
        command: impl FnOnce(&mut MultiplexedConnection) -> redis::RedisFuture<'_, T>,
    ) -> Option<T> {
        let mut connection = self.connection().await?;
        match tokio::time::timeout(self.timeout, command(&mut connection)).await {
            Ok(Ok(value)) => Some(value),
            Ok(Err(error)) => self.failed(&error.to_string()),
            Err(_) => self.failed("call timed out"),
        }
    }

    /// The stored snapshot, or `None` when absent or when Redis cannot answer.
    ///
    /// Reads made while others are on their way are sent together as one pipeline (one write
    /// and one read of the socket for all of them, on both ends): on the gateway's hot path
    /// many checks are in flight at once. A read alone goes at once.
    pub async fn get(&self, user_id: &str) -> Option<CachedSnapshot> {
        let (answer, answered) = oneshot::channel();
        let reads = self.reads.get_or_init(|| self.start_reader());
        // The reader is gone only with its runtime: then nothing is cached for this caller.
        reads.send((self.key(user_id), answer)).ok()?;
        answered.await.ok().flatten()
    }

    /// Starts the task that sends queued reads as pipelines, one pipeline at a time.
    fn start_reader(&self) -> mpsc::UnboundedSender<Read> {
        let (sender, mut queue) = mpsc::unbounded_channel::<Read>();
        // The task's own copy has no queue of its own, so it does not keep itself alive.
        let cache = SnapshotCache {
            reads: Arc::default(),
            ..self.clone()
        };
        tokio::spawn(async move {
            let mut batch = Vec::new();
            while queue.recv_many(&mut batch, MAX_READS_PER_PIPELINE).await > 0 {
                let mut pipeline = redis::pipe();
                for (key, _) in &batch {
                    pipeline
                        .cmd("HMGET")
                        .arg(key)
                        .arg(&["version", "state", "updated_at"]);
                }
                let found: Option<Vec<Fields>> = cache
                    .call(|connection| {
                        Box::pin(async move { pipeline.query_async(connection).await })
                    })
                    .await;
                let found = found.filter(|rows| rows.len() == batch.len());
                match found {
                    Some(rows) => {
                        for ((_, answer), fields) in batch.drain(..).zip(rows) {
                            let _ = answer.send(snapshot_of(fields));
                        }
                    }
                    None => {
                        for (_, answer) in batch.drain(..) {
                            let _ = answer.send(None);
                        }
                    }
                }
            }
        });
        sender
    }

    /// Stores `snapshot` unless one at least as new is there. Returns whether it was written; a
    /// Redis failure is reported as not written.
    pub async fn put_if_newer(&self, user_id: &str, snapshot: &CachedSnapshot) -> bool {
        let ttl_ms = self.ttl.as_millis().min(i64::MAX as u128) as i64;
        let (key, script) = (self.key(user_id), self.script.clone());
        let (version, state, updated_at_ms) = (
            snapshot.version,
            snapshot.state.clone(),
            snapshot.updated_at_ms,
        );
        let written: Option<i64> = self
            .call(|connection| {
                Box::pin(async move {
                    script
                        .key(key)
                        .arg(version)
                        .arg(state)
                        .arg(updated_at_ms)
                        .arg(ttl_ms)
                        .invoke_async(connection)
                        .await
                })
            })
            .await;
        written == Some(1)
    }

    /// Stores several snapshots, each unless one at least as new is there, in one pipeline.
    /// Returns, for each, whether it was written; a Redis failure is reported as none written.
    pub async fn put_many_if_newer(&self, snapshots: &[(&str, &CachedSnapshot)]) -> Vec<bool> {
        if snapshots.is_empty() {
            return Vec::new();
        }
        let ttl_ms = self.ttl.as_millis().min(i64::MAX as u128) as i64;
        let mut pipeline = redis::pipe();
        // Loading is idempotent and cheap; it makes the calls below work after a Redis restart.
        pipeline.load_script(&self.script).ignore();
        for (user_id, snapshot) in snapshots {
            pipeline.invoke_script(
                self.script
                    .key(self.key(user_id))
                    .arg(snapshot.version)
                    .arg(&snapshot.state)
                    .arg(snapshot.updated_at_ms)
                    .arg(ttl_ms),
            );
        }
        let written: Option<Vec<i64>> = self
            .call(|connection| Box::pin(async move { pipeline.query_async(connection).await }))
            .await;
        match written {
            Some(flags) if flags.len() == snapshots.len() => {
                flags.into_iter().map(|flag| flag == 1).collect()
            }
            _ => vec![false; snapshots.len()],
        }
    }

    /// Removes a snapshot; whether Redis confirmed it.
    pub async fn remove(&self, user_id: &str) -> bool {
        let key = self.key(user_id);
        let removed: Option<i64> = self
            .call(|connection| {
                Box::pin(async move { redis::cmd("DEL").arg(&key).query_async(connection).await })
            })
            .await;
        removed.is_some()
    }
}
