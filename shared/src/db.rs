//! MySQL connections and the schema, the same for both services that use the database.
//!
//! Sessions run at READ COMMITTED with a bounded lock wait: correctness rests on explicit row
//! locks and unique keys, and a missing row never takes a gap lock that could deadlock the insert
//! that follows. Instants are UTC on the wire.

use std::time::Duration;

use sqlx::{
    Executor, MySqlPool,
    migrate::Migrator,
    mysql::{MySqlConnectOptions, MySqlPoolOptions},
};

use crate::config::DatabaseSettings;

/// Every migration in `migrations/`; both services apply them at start (unless
/// `database.migrate_on_start` is off), under sqlx's lock, so replicas never race.
pub static MIGRATOR: Migrator = sqlx::migrate!("../migrations");

/// A pool that connects on demand, so a service starts (and reports not ready) while MySQL is
/// away, and recovers by itself when it returns.
pub fn connect_lazy(settings: &DatabaseSettings) -> Result<MySqlPool, sqlx::Error> {
    let options: MySqlConnectOptions = settings.url.expose().parse()?;
    let lock_wait = settings.lock_wait_timeout_secs.max(1);
    Ok(MySqlPoolOptions::new()
        .max_connections(settings.max_connections)
        .acquire_timeout(Duration::from_millis(settings.acquire_timeout_ms))
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
        match MIGRATOR.run(pool).await {
            Ok(()) => return Ok(()),
            Err(error) if tokio::time::Instant::now() < deadline => {
                tracing::warn!(%error, "migrations not applied yet; retrying");
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            Err(error) => return Err(error),
        }
    }
}

/// Whether a failed statement or transaction is worth running again as it is: the server was
/// unreachable or went away, or the transaction lost a deadlock or a lock wait.
pub fn is_transient(error: &sqlx::Error) -> bool {
    use sqlx::Error as E;
    match error {
        E::Io(_)
        | E::Tls(_)
        | E::PoolTimedOut
        | E::PoolClosed
        | E::WorkerCrashed
        | E::Protocol(_) => true,
        E::Database(db) => matches!(
            db.try_downcast_ref::<sqlx::mysql::MySqlDatabaseError>()
                .map(|e| e.number()),
            // lock wait timeout, deadlock, server shutdown, connection killed
            Some(1205 | 1213 | 1053 | 1927)
        ),
        _ => false,
    }
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
