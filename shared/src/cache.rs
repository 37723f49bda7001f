//! Account snapshots in Redis, one hash per user at `<prefix><namespace>:account:{<user_id>}` (the
//! braces are a Redis Cluster hash tag). Two namespaces: `rm`, the read model's, written by
//! query-svc's projection; `cmd`, command-svc's own, written through after each commit and read
//! by `CheckQuota`. A snapshot is written only when its version is newer than the stored one, in
//! one Lua script, so replicas and redeliveries never move it back.
//!
//! Redis is a cache: every failure is logged and the caller falls back to MySQL. A failure also
//! opens a short breaker: for [`PAUSE_AFTER_FAILURE`] no call goes to Redis, so an outage costs
//! the callers nothing but the first timeouts; then one connection attempt decides again.
//!
//! The server is one Redis or a Redis Cluster (`redis.cluster`). Calls of several keys go to one
//! server as one pipeline; to a cluster as one call per key, side by side, each routed to its
//! key's node (a cluster pipeline must stay within one slot).

use std::{
    future::Future,
    sync::{Arc, Mutex, OnceLock},
    time::{Duration, Instant},
};

use redis::Script;
use redis::{
    Cmd, FromRedisValue, Pipeline, RedisFuture, ScriptInvocation, Value,
    aio::{ConnectionLike, MultiplexedConnection},
    cluster::ClusterClient,
    cluster_async::ClusterConnection,
};

use crate::config::RedisSettings;
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

/// Where the snapshots are kept.
#[derive(Clone)]
enum Server {
    Single(redis::Client),
    Cluster(Box<ClusterClient>),
}

impl Server {
    async fn connect(&self) -> redis::RedisResult<Connection> {
        Ok(match self {
            Server::Single(client) => {
                Connection::Single(client.get_multiplexed_async_connection().await?)
            }
            Server::Cluster(client) => Connection::Cluster(client.get_async_connection().await?),
        })
    }
}

/// A connection to the one server, or to every node of the cluster; cheap to clone.
#[derive(Clone)]
enum Connection {
    Single(MultiplexedConnection),
    Cluster(ClusterConnection),
}

impl ConnectionLike for Connection {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Connection::Single(connection) => connection.req_packed_command(cmd),
            Connection::Cluster(connection) => connection.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        cmd: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Connection::Single(connection) => connection.req_packed_commands(cmd, offset, count),
            Connection::Cluster(connection) => connection.req_packed_commands(cmd, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Connection::Single(connection) => connection.get_db(),
            Connection::Cluster(connection) => connection.get_db(),
        }
    }
}

/// A call of one key.
enum Call<'s> {
    Command(Cmd),
    Script(ScriptInvocation<'s>),
}

/// Calls of one key each, made together: one pipeline to a single server, or side by side to a
/// cluster. The answers are in the calls' order; any failure fails them all. `script`, the
/// script the calls invoke if any, is loaded first on a single server (idempotent and cheap, it
/// makes the calls work after a Redis restart); a cluster node that lacks it loads it when asked.
async fn call_many<T: FromRedisValue>(
    connection: &mut Connection,
    calls: Vec<Call<'_>>,
    script: Option<&Script>,
) -> redis::RedisResult<Vec<T>> {
    match connection {
        Connection::Single(single) => {
            let mut pipeline = redis::pipe();
            if let Some(script) = script {
                pipeline.load_script(script).ignore();
            }
            for call in &calls {
                match call {
                    Call::Command(command) => {
                        pipeline.add_command(command.clone());
                    }
                    Call::Script(invocation) => {
                        pipeline.invoke_script(invocation);
                    }
                }
            }
            pipeline.query_async(single).await
        }
        Connection::Cluster(cluster) => {
            let each = calls.into_iter().map(|call| {
                let mut connection = cluster.clone();
                async move {
                    match call {
                        Call::Command(command) => command.query_async(&mut connection).await,
                        Call::Script(invocation) => invocation.invoke_async(&mut connection).await,
                    }
                }
            });
            futures::future::try_join_all(each).await
        }
    }
}

#[derive(Default)]
enum Link {
    #[default]
    Closed,
    Open(Connection),
    Failed(Instant),
}

/// A read waiting for the next pipeline: the key, and where its answer goes.
type Read = (String, oneshot::Sender<Option<CachedSnapshot>>);

/// The most reads one pipeline carries.
const MAX_READS_PER_PIPELINE: usize = 256;

#[derive(Clone)]
pub struct SnapshotCache {
    server: Server,
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
    /// The read model's snapshots (namespace `rm`) on the server `settings` name, with their
    /// key prefix and call timeout. Opens nothing yet: the first use connects, so the service
    /// starts while Redis is away.
    pub fn read_model(settings: &RedisSettings, ttl: Duration) -> Result<Self, redis::RedisError> {
        Self::configured(settings, "rm", ttl)
    }

    /// command-svc's own snapshots (namespace `cmd`), which `CheckQuota` answers from, on the
    /// server `settings` name.
    pub fn command_side(
        settings: &RedisSettings,
        ttl: Duration,
    ) -> Result<Self, redis::RedisError> {
        Self::configured(settings, "cmd", ttl)
    }

    fn configured(
        settings: &RedisSettings,
        namespace: &'static str,
        ttl: Duration,
    ) -> Result<Self, redis::RedisError> {
        let url = settings.url.expose();
        let server = if settings.cluster {
            let nodes: Vec<&str> = url.split(',').map(str::trim).collect();
            Server::Cluster(Box::new(ClusterClient::new(nodes)?))
        } else {
            Server::Single(redis::Client::open(url)?)
        };
        Ok(Self::on(server, &settings.key_prefix, namespace, ttl)
            .with_timeout(Duration::from_millis(settings.timeout_ms)))
    }

    /// The read model's snapshots on the one Redis server at `url`.
    pub fn new(url: &str, prefix: &str, ttl: Duration) -> Result<Self, redis::RedisError> {
        Ok(Self::on(
            Server::Single(redis::Client::open(url)?),
            prefix,
            "rm",
            ttl,
        ))
    }

    /// command-svc's own snapshots on the one Redis server at `url`.
    pub fn for_commands(url: &str, prefix: &str, ttl: Duration) -> Result<Self, redis::RedisError> {
        Ok(Self::on(
            Server::Single(redis::Client::open(url)?),
            prefix,
            "cmd",
            ttl,
        ))
    }

    fn on(server: Server, prefix: &str, namespace: &'static str, ttl: Duration) -> Self {
        SnapshotCache {
            server,
            link: Arc::default(),
            prefix: prefix.to_owned(),
            namespace,
            ttl,
            timeout: DEFAULT_TIMEOUT,
            script: Arc::new(Script::new(PUT_IF_NEWER)),
            reads: Arc::default(),
        }
    }

    /// How long one Redis call (or connection attempt) may take before it counts as a failure.
    pub fn with_timeout(self, timeout: Duration) -> Self {
        SnapshotCache { timeout, ..self }
    }

    pub fn key(&self, user_id: &str) -> String {
        format!("{}{}:account:{{{user_id}}}", self.prefix, self.namespace)
    }

    /// A connection, unless the breaker is open or Redis cannot be reached now.
    async fn connection(&self) -> Option<Connection> {
        {
            let link = self.link.lock().expect("not poisoned");
            match &*link {
                Link::Open(connection) => return Some(connection.clone()),
                Link::Failed(at) if at.elapsed() < PAUSE_AFTER_FAILURE => return None,
                _ => {}
            }
        }
        let connected = tokio::time::timeout(self.timeout, self.server.connect()).await;
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
    async fn call<T, Answer>(&self, command: impl FnOnce(Connection) -> Answer) -> Option<T>
    where
        Answer: Future<Output = redis::RedisResult<T>>,
    {
        let connection = self.connection().await?;
        match tokio::time::timeout(self.timeout, command(connection)).await {
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
                let reads: Vec<Call> = batch
                    .iter()
                    .map(|(key, _)| {
                        let mut read = redis::cmd("HMGET");
                        read.arg(key).arg(&["version", "state", "updated_at"]);
                        Call::Command(read)
                    })
                    .collect();
                let found: Option<Vec<Fields>> =
                    cache
                        .call(|mut connection| async move {
                            call_many(&mut connection, reads, None).await
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
            .call(|mut connection| async move {
                script
                    .key(key)
                    .arg(version)
                    .arg(state)
                    .arg(updated_at_ms)
                    .arg(ttl_ms)
                    .invoke_async(&mut connection)
                    .await
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
        let puts: Vec<Call> = snapshots
            .iter()
            .map(|(user_id, snapshot)| {
                let mut invocation = self.script.key(self.key(user_id));
                invocation
                    .arg(snapshot.version)
                    .arg(&snapshot.state)
                    .arg(snapshot.updated_at_ms)
                    .arg(ttl_ms);
                Call::Script(invocation)
            })
            .collect();
        let written: Option<Vec<i64>> = self
            .call(|mut connection| async move {
                call_many(&mut connection, puts, Some(&self.script)).await
            })
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
            .call(|mut connection| async move {
                redis::cmd("DEL")
                    .arg(&key)
                    .query_async(&mut connection)
                    .await
            })
            .await;
        removed.is_some()
    }
}
