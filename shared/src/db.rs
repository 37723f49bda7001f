//! MySQL connections and the schema, the same for both services that use the database.
//!
//! Sessions run at READ COMMITTED with a bounded lock wait: correctness rests on explicit row
//! locks and unique keys, and a missing row never takes a gap lock that could deadlock the insert
//! that follows. Instants are UTC on the wire.

use std::time::Duration;

use sqlx::{
    Connection, Executor, MySqlPool,
    migrate::Migrator,
    mysql::{MySqlConnectOptions, MySqlPoolOptions},
};

use crate::config::DatabaseSettings;

/// Every migration in `migrations/`; both services apply them at start (unless
/// `database.migrate_on_start` is off), one process at a time ([`migrate`]).
pub static MIGRATOR: Migrator = sqlx::migrate!("../migrations");

/// The named lock the migrating session holds (one per database: its name ends with the digest
/// of the database's name), so that processes starting together against one database apply the
/// migrations one after the other. (sqlx's own lock asks `GET_LOCK` to wait
/// with a timeout of -1, which MariaDB answers at once with NULL, taking no lock: replicas then
/// applied one migration side by side, and one that failed half-way left it marked dirty.)
const MIGRATION_LOCK: &str = "CONCAT('billing_migrations:', SHA1(DATABASE()))";

/// How long a pooled connection may sit unused before it is pinged on its next acquire.
const IDLE_BEFORE_PING: Duration = Duration::from_secs(1);

/// A pool that connects on demand, so a service starts (and reports not ready) while MySQL is
/// away, and recovers by itself when it returns.
pub fn connect_lazy(settings: &DatabaseSettings) -> Result<MySqlPool, sqlx::Error> {
    let options: MySqlConnectOptions = settings.url.expose().parse()?;
    let lock_wait = settings.lock_wait_timeout_secs.max(1);
    Ok(MySqlPoolOptions::new()
        .max_connections(settings.max_connections)
        .acquire_timeout(Duration::from_millis(settings.acquire_timeout_ms))
        // A connection in steady use is known to be alive: only one that sat idle is pinged
        // before it is handed out (a ping on every acquire is a round trip per transaction).
        .test_before_acquire(false)
        .before_acquire(|conn, meta| {
            Box::pin(async move {
                if meta.idle_for >= IDLE_BEFORE_PING {
                    conn.ping().await?;
                }
                Ok(true)
            })
        })
        .after_connect(move |conn, _| {
            Box::pin(async move {
                conn.execute("SET SESSION TRANSACTION ISOLATION LEVEL READ COMMITTED")
                    .await?;
                // A bound parameter in SET is accepted but not applied by MariaDB; this is an
                // integer of our own configuration, so it is written into the statement.
                let bounded_wait = format!("SET SESSION innodb_lock_wait_timeout = {lock_wait}");
                conn.execute(sqlx::AssertSqlSafe(bounded_wait)).await?;
                Ok(())
            })
        })
        .connect_lazy_with(options.timezone(Some("+00:00".to_owned()))))
}

/// Applies the migrations, waiting up to `patience` for MySQL to answer.
pub async fn migrate(
    pool: &MySqlPool,
    patience: Duration,
) -> Result<(), sqlx::migrate::MigrateError> {
    let deadline = tokio::time::Instant::now() + patience;
    loop {
        let wait = deadline.saturating_duration_since(tokio::time::Instant::now());
        match migrate_locked(pool, wait).await {
            Ok(()) => return Ok(()),
            Err(error) if tokio::time::Instant::now() < deadline => {
                tracing::warn!(%error, "migrations not applied yet; retrying");
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            Err(error) => return Err(error),
        }
    }
}

/// Applies the migrations on one session that holds [`MIGRATION_LOCK`] throughout, waiting up to
/// `wait` (1 s at least) for a process that holds it.
async fn migrate_locked(
    pool: &MySqlPool,
    wait: Duration,
) -> Result<(), sqlx::migrate::MigrateError> {
    let mut conn = pool.acquire().await?;
    let wait_secs = wait.as_secs().max(1);
    let lock = format!("SELECT GET_LOCK({MIGRATION_LOCK}, {wait_secs})");
    let locked: Option<i64> = sqlx::query_scalar(sqlx::AssertSqlSafe(lock))
        .fetch_one(&mut *conn)
        .await?;
    if locked != Some(1) {
        return Err(sqlx::migrate::MigrateError::Execute(sqlx::Error::Protocol(
            "another process is applying the migrations".into(),
        )));
    }
    // `run_direct` is `run` on a connection in hand (sqlx offers it because the compiler cannot
    // prove `run`'s future `Send` for a borrowed connection).
    let applied = MIGRATOR.run_direct(None, &mut *conn, false).await;
    let release = format!("SELECT RELEASE_LOCK({MIGRATION_LOCK})");
    let released = sqlx::query(sqlx::AssertSqlSafe(release))
        .execute(&mut *conn)
        .await;
    if released.is_err() {
        // The lock is the session's: a session whose state is unknown is not pooled again.
        conn.detach();
    }
    applied
}

/// The most rows one multi-row statement carries.
pub const MAX_CHUNK: usize = 1024;

/// Multi-row statements are prepared once per size and then reused from the statement cache:
/// rows go in chunks whose sizes are powers of two, so a handful of statement texts serve every
/// batch. (A new text for every batch would also mean a statement closed for every batch, and a
/// close the server does not answer makes the next request wait on TCP's delayed ACK.)
pub fn pow2_chunks<T>(items: &[T]) -> impl Iterator<Item = &[T]> {
    let mut rest = items;
    std::iter::from_fn(move || {
        if rest.is_empty() {
            return None;
        }
        let size = (1_usize << (usize::BITS - 1 - rest.len().leading_zeros())).min(MAX_CHUNK);
        let (chunk, tail) = rest.split_at(size);
        rest = tail;
        Some(chunk)
    })
}

/// An `IN` list padded to a power of two by repeating its last value (harmless in `IN`), for
/// the same reason as [`pow2_chunks`].
pub fn padded<T: Clone>(items: &[T]) -> Vec<T> {
    let mut list = items.to_vec();
    if let Some(last) = items.last() {
        list.resize(items.len().next_power_of_two(), last.clone());
    }
    list
}

/// What a failed statement means, in the terms its caller acts on: the one reading of MySQL's
/// errors.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Failure {
    /// The server could not be reached, or went away: the outcome is unknown.
    Unreachable,
    /// The transaction lost a deadlock or a lock wait: it was rolled back and can run again.
    LockConflict,
    /// A unique key refused the row.
    DuplicateKey,
    /// Anything else: a fault of the statement, the schema or the data.
    Other,
}

const ER_LOCK_WAIT_TIMEOUT: u16 = 1205;
const ER_LOCK_DEADLOCK: u16 = 1213;
const ER_DUP_ENTRY: u16 = 1062;
const ER_SERVER_SHUTDOWN: u16 = 1053;
const ER_CONNECTION_KILLED: u16 = 1927;

pub fn failure(error: &sqlx::Error) -> Failure {
    use sqlx::Error as E;
    match error {
        E::Io(_)
        | E::Tls(_)
        | E::PoolTimedOut
        | E::PoolClosed
        | E::WorkerCrashed
        | E::Protocol(_) => Failure::Unreachable,
        E::Database(db) => match db
            .try_downcast_ref::<sqlx::mysql::MySqlDatabaseError>()
            .map(|e| e.number())
        {
            Some(ER_LOCK_WAIT_TIMEOUT | ER_LOCK_DEADLOCK) => Failure::LockConflict,
            Some(ER_DUP_ENTRY) => Failure::DuplicateKey,
            Some(ER_SERVER_SHUTDOWN | ER_CONNECTION_KILLED) => Failure::Unreachable,
            _ => Failure::Other,
        },
        _ => Failure::Other,
    }
}

/// Whether a failed statement or transaction is worth running again as it is: the server was
/// unreachable or went away, or the transaction lost a deadlock or a lock wait.
pub fn is_transient(error: &sqlx::Error) -> bool {
    matches!(failure(error), Failure::Unreachable | Failure::LockConflict)
}

/// MySQL answers and every migration this build knows is applied.
pub async fn schema_ready(pool: &MySqlPool) -> bool {
    let latest = MIGRATOR.iter().map(|m| m.version).max().unwrap_or(0);
    let applied: Result<Option<i64>, _> =
        sqlx::query_scalar("SELECT MAX(version) FROM _sqlx_migrations WHERE success = TRUE")
            .fetch_one(pool)
            .await;
    matches!(applied, Ok(Some(version)) if version >= latest)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunks_are_powers_of_two_covering_every_row_once() {
        let rows: Vec<u32> = (0..2_500).collect();
        let chunks: Vec<&[u32]> = pow2_chunks(&rows).collect();
        assert_eq!(
            chunks.iter().map(|c| c.len()).collect::<Vec<_>>(),
            [1024, 1024, 256, 128, 64, 4]
        );
        assert_eq!(chunks.concat(), rows);
        assert!(pow2_chunks::<u32>(&[]).next().is_none());
    }

    #[test]
    fn in_lists_are_padded_with_their_last_value() {
        assert_eq!(padded(&[1, 2, 3]), [1, 2, 3, 3]);
        assert_eq!(padded(&[7]), [7]);
        assert!(padded::<u8>(&[]).is_empty());
    }
}
