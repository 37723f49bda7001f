//! Account snapshots in Redis, one hash per user at `<prefix><namespace>:account:{<user_id>}` (the
//! braces are a Redis Cluster hash tag). Two namespaces: `rm`, the read model's, written by
//! query-svc's projection; `cmd`, command-svc's own, written through after each commit and read
//! by `CheckQuota`. A snapshot is written only when its version is newer than the stored one, in
//! one Lua script, so replicas and redeliveries never move it back. Redis is a cache: every
//! failure here is logged and the caller falls back to MySQL.

use std::time::Duration;

use redis::{AsyncCommands, Script, aio::ConnectionManager};
use tokio::sync::OnceCell;

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

/// Redis calls never wait longer than this: a slow cache must not slow a read.
const REDIS_TIMEOUT: Duration = Duration::from_millis(500);

/// After a failed first connection, reads go straight to MySQL for this long.
const RECONNECT_PAUSE: Duration = Duration::from_secs(1);

/// A snapshot as stored: the encoded `AccountState`, its version, and when it was written on the
/// command side.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CachedSnapshot {
    pub version: i64,
    pub state: Vec<u8>,
    pub updated_at_ms: i64,
}

#[derive(Clone)]
pub struct SnapshotCache {
    client: redis::Client,
    connection: std::sync::Arc<OnceCell<ConnectionManager>>,
    last_failure: std::sync::Arc<std::sync::Mutex<Option<std::time::Instant>>>,
    prefix: String,
    namespace: &'static str,
    ttl: Duration,
    script: std::sync::Arc<Script>,
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
            connection: Default::default(),
            last_failure: Default::default(),
            prefix: prefix.to_owned(),
            namespace,
            ttl,
            script: std::sync::Arc::new(Script::new(PUT_IF_NEWER)),
        })
    }

    pub fn key(&self, user_id: &str) -> String {
        format!("{}{}:account:{{{user_id}}}", self.prefix, self.namespace)
    }

    async fn connection(&self) -> Option<ConnectionManager> {
        if let Some(connection) = self.connection.get() {
            return Some(connection.clone());
        }
        let paused = self
            .last_failure
            .lock()
            .expect("not poisoned")
            .is_some_and(|at| at.elapsed() < RECONNECT_PAUSE);
        if paused {
            return None;
        }
        let connect = || async {
            let config = redis::aio::ConnectionManagerConfig::new()
                .set_connection_timeout(Some(REDIS_TIMEOUT))
                .set_response_timeout(Some(REDIS_TIMEOUT))
                .set_number_of_retries(1);
            ConnectionManager::new_with_config(self.client.clone(), config).await
        };
        match self.connection.get_or_try_init(connect).await {
            Ok(connection) => Some(connection.clone()),
            Err(error) => {
                tracing::warn!(%error, "Redis unreachable; reading from MySQL");
                *self.last_failure.lock().expect("not poisoned") = Some(std::time::Instant::now());
                None
            }
        }
    }

    /// The stored snapshot, or `None` when absent or when Redis cannot answer.
    pub async fn get(&self, user_id: &str) -> Option<CachedSnapshot> {
        let mut connection = self.connection().await?;
        type Fields = (Option<i64>, Option<Vec<u8>>, Option<i64>);
        let reply: Result<Fields, _> = redis::cmd("HMGET")
            .arg(self.key(user_id))
            .arg(&["version", "state", "updated_at"])
            .query_async(&mut connection)
            .await;
        match reply {
            Ok((Some(version), Some(state), Some(updated_at_ms))) => Some(CachedSnapshot {
                version,
                state,
                updated_at_ms,
            }),
            Ok(_) => None,
            Err(error) => {
                tracing::warn!(%error, "Redis read failed; reading from MySQL");
                None
            }
        }
    }

    /// Stores `snapshot` unless one at least as new is there. Returns whether it was written; a
    /// Redis failure is logged and reported as not written.
    pub async fn put_if_newer(&self, user_id: &str, snapshot: &CachedSnapshot) -> bool {
        let Some(mut connection) = self.connection().await else {
            return false;
        };
        let ttl_ms = self.ttl.as_millis().min(i64::MAX as u128) as i64;
        let written: Result<i64, _> = self
            .script
            .key(self.key(user_id))
            .arg(snapshot.version)
            .arg(&snapshot.state)
            .arg(snapshot.updated_at_ms)
            .arg(ttl_ms)
            .invoke_async(&mut connection)
            .await;
        match written {
            Ok(written) => written == 1,
            Err(error) => {
                tracing::warn!(%error, "Redis write failed; the snapshot heals on the next event");
                false
            }
        }
    }

    /// Removes a snapshot (reconcile repairs by rewriting it from MySQL).
    pub async fn remove(&self, user_id: &str) -> bool {
        let Some(mut connection) = self.connection().await else {
            return false;
        };
        connection.del::<_, i64>(self.key(user_id)).await.is_ok()
    }
}
