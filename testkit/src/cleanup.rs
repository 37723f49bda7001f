//! What a test leaves on the shared servers (its database, its streams, its Redis keys), removed
//! when the test ends: by its cleanup at the end of a test that passed, or by the guard's drop
//! when the test panicked before, so a failing test leaves nothing behind either.

use std::time::Duration;

use shared::bus::BusNames;
use sqlx::{Connection, MySqlConnection};

/// The guard of a test's leftovers; removes them when dropped unless [`Leftovers::remove`] did.
#[derive(Default)]
pub struct Leftovers {
    what: What,
    removed: bool,
}

#[derive(Clone, Default)]
struct What {
    database: Option<String>,
    /// The NATS server and the names of the test's streams there.
    streams: Option<(String, BusNames)>,
    /// A `KEYS` pattern matching the test's Redis keys.
    redis_keys: Option<String>,
}

impl Leftovers {
    pub fn new() -> Leftovers {
        Leftovers::default()
    }

    /// The test's database, on the tests' MySQL server ([`crate::admin_url`]).
    pub fn database(mut self, name: &str) -> Leftovers {
        self.what.database = Some(name.to_owned());
        self
    }

    /// The test's three streams on the NATS server at `url`.
    pub fn streams(mut self, url: &str, names: &BusNames) -> Leftovers {
        self.what.streams = Some((url.to_owned(), names.clone()));
        self
    }

    /// The test's Redis keys, those matching `pattern` on the tests' Redis ([`crate::redis_url`]).
    pub fn redis_keys(mut self, pattern: &str) -> Leftovers {
        self.what.redis_keys = Some(pattern.to_owned());
        self
    }

    /// Removes everything now (the end of a test that passed).
    pub async fn remove(mut self) {
        self.what.remove().await;
        self.removed = true;
    }
}

impl Drop for Leftovers {
    fn drop(&mut self) {
        if self.removed || self.what.is_empty() {
            return;
        }
        let what = std::mem::take(&mut self.what);
        // The test's runtime may be unwinding: a thread and a runtime of the guard's own.
        let removing = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build();
            if let Ok(runtime) = runtime {
                runtime.block_on(async {
                    let _ = tokio::time::timeout(Duration::from_secs(15), what.remove()).await;
                });
            }
        });
        let _ = removing.join();
    }
}

impl What {
    fn is_empty(&self) -> bool {
        self.database.is_none() && self.streams.is_none() && self.redis_keys.is_none()
    }

    async fn remove(&self) {
        if let Some((url, names)) = &self.streams {
            delete_streams_at(url, names).await;
        }
        if let Some(pattern) = &self.redis_keys {
            delete_redis_keys(pattern).await;
        }
        if let Some(name) = &self.database {
            drop_database(name).await;
        }
    }
}

/// Deletes the three streams of `names` on the NATS server at `url`, if it can be reached.
pub async fn delete_streams_at(url: &str, names: &BusNames) {
    let connect = async_nats::ConnectOptions::new()
        .connection_timeout(Duration::from_secs(2))
        .connect(url);
    let Ok(Ok(nats)) = tokio::time::timeout(Duration::from_secs(5), connect).await else {
        return;
    };
    let js = async_nats::jetstream::new(nats);
    for stream in [
        names.events_stream(),
        names.dlq_stream(),
        names.commands_stream(),
    ] {
        let _ = js.delete_stream(stream).await;
    }
}

async fn delete_redis_keys(pattern: &str) {
    let Ok(client) = redis::Client::open(crate::redis_url()) else {
        return;
    };
    let Ok(mut redis) = client.get_multiplexed_async_connection().await else {
        return;
    };
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg(pattern)
        .query_async(&mut redis)
        .await
        .unwrap_or_default();
    if !keys.is_empty() {
        let _: Result<i64, _> = redis::cmd("DEL").arg(keys).query_async(&mut redis).await;
    }
}

async fn drop_database(name: &str) {
    let Ok(mut conn) = MySqlConnection::connect(&crate::admin_url()).await else {
        return;
    };
    let _ = sqlx::query(sqlx::AssertSqlSafe(format!(
        "DROP DATABASE IF EXISTS `{name}`"
    )))
    .execute(&mut conn)
    .await;
}
