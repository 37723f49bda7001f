//! MySQL, the source of truth. One transaction per command writes the account state, its ledger
//! rows and their outbox events; unique keys, not memory, make commands idempotent.
//!
//! Transactions run at READ COMMITTED and take row locks explicitly (`FOR UPDATE` on the account
//! first, always), so correctness rests on locks and unique keys rather than on snapshots, and a
//! missing row never takes a gap lock that could deadlock the insert that follows.

mod accounts;
mod ledger;
mod orders;
mod outbox;

use std::{future::Future, time::Duration};

use shared::config::DatabaseSettings;
use sqlx::{
    Executor, MySql, MySqlPool, Transaction,
    mysql::{MySqlConnectOptions, MySqlDatabaseError, MySqlPoolOptions},
};

pub use accounts::{AccountRow, create_account, load_account, lock_account, save_account};
pub use ledger::{
    LedgerEntry, LedgerRecord, RecordKind, Refs, find_adjustment, find_charge, find_credit_by_txn,
    insert_entry,
};
pub use orders::{
    OrderRow, UnmatchedRow, find_order, find_order_by_key, find_unmatched_by_txn, insert_order,
    insert_unmatched, lock_order, update_order_status,
};
pub use outbox::insert_event;

pub type Tx = Transaction<'static, MySql>;

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../migrations");

/// How a storage failure should be treated by the caller.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// MySQL could not be reached, or the connection broke: the outcome is unknown, and the
    /// caller must retry with the same idempotency key.
    #[error("store unavailable: {0}")]
    Unavailable(#[source] sqlx::Error),
    /// A deadlock, a lock wait timeout or a unique-key race with a concurrent command: the
    /// transaction was rolled back and can be run again from the start.
    #[error("transaction conflict: {0}")]
    Conflict(#[source] sqlx::Error),
    /// Anything else is a fault of this service or its schema.
    #[error("store error: {0}")]
    Internal(#[source] sqlx::Error),
}

const ER_LOCK_WAIT_TIMEOUT: u16 = 1205;
const ER_LOCK_DEADLOCK: u16 = 1213;
const ER_DUP_ENTRY: u16 = 1062;
/// The server went away or is shutting down.
const ER_SERVER_SHUTDOWN: u16 = 1053;
const ER_CONNECTION_KILLED: u16 = 1927;

impl From<sqlx::Error> for StoreError {
    fn from(error: sqlx::Error) -> Self {
        use sqlx::Error as E;
        match &error {
            E::Io(_)
            | E::Tls(_)
            | E::PoolTimedOut
            | E::PoolClosed
            | E::WorkerCrashed
            | E::Protocol(_) => StoreError::Unavailable(error),
            E::Database(db) => match db
                .try_downcast_ref::<MySqlDatabaseError>()
                .map(|e| e.number())
            {
                Some(ER_LOCK_WAIT_TIMEOUT | ER_LOCK_DEADLOCK | ER_DUP_ENTRY) => {
                    StoreError::Conflict(error)
                }
                Some(ER_SERVER_SHUTDOWN | ER_CONNECTION_KILLED) => StoreError::Unavailable(error),
                _ => StoreError::Internal(error),
            },
            _ => StoreError::Internal(error),
        }
    }
}

/// The connection pool and the retry policy around it.
#[derive(Clone)]
pub struct Store {
    pool: MySqlPool,
    max_retries: u32,
}

impl Store {
    /// A pool that connects on demand, so the service starts (and reports not ready) while MySQL
    /// is away, and recovers by itself when it returns.
    pub fn connect_lazy(settings: &DatabaseSettings) -> Result<Store, sqlx::Error> {
        let options: MySqlConnectOptions = settings.url.expose().parse()?;
        let lock_wait = settings.lock_wait_timeout_secs.max(1);
        let pool = MySqlPoolOptions::new()
            .max_connections(settings.max_connections)
            .acquire_timeout(Duration::from_millis(settings.acquire_timeout_ms))
            .after_connect(move |conn, _| {
                Box::pin(async move {
                    conn.execute("SET SESSION TRANSACTION ISOLATION LEVEL READ COMMITTED")
                        .await?;
                    // An integer of our own configuration, so it is written into the statement.
                    let bounded_wait =
                        format!("SET SESSION innodb_lock_wait_timeout = {lock_wait}");
                    conn.execute(sqlx::AssertSqlSafe(bounded_wait)).await?;
                    Ok(())
                })
            })
            .connect_lazy_with(options.timezone(Some("+00:00".to_owned())));
        Ok(Store {
            pool,
            max_retries: settings.max_retries,
        })
    }

    pub fn pool(&self) -> &MySqlPool {
        &self.pool
    }

    /// Applies the migrations in `migrations/`, waiting up to `patience` for MySQL to answer.
    pub async fn migrate(&self, patience: Duration) -> anyhow::Result<()> {
        let deadline = tokio::time::Instant::now() + patience;
        loop {
            match MIGRATOR.run(&self.pool).await {
                Ok(()) => return Ok(()),
                Err(error) if tokio::time::Instant::now() < deadline => {
                    tracing::warn!(%error, "migrations not applied yet; retrying");
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
                Err(error) => return Err(error.into()),
            }
        }
    }

    /// Ready to take commands: MySQL answers and every migration this build knows is applied.
    pub async fn is_ready(&self) -> bool {
        let latest = MIGRATOR.iter().map(|m| m.version).max().unwrap_or(0);
        let applied: Result<Option<i64>, _> =
            sqlx::query_scalar("SELECT MAX(version) FROM _sqlx_migrations WHERE success = TRUE")
                .fetch_one(&self.pool)
                .await;
        matches!(applied, Ok(Some(version)) if version >= latest)
    }

    pub async fn begin(&self) -> Result<Tx, StoreError> {
        Ok(self.pool.begin().await?)
    }

    /// Runs `attempt` (which opens and commits its own transaction) again while it fails with a
    /// conflict, with a short randomised back-off, so a deadlock or a creation race never reaches
    /// the caller. A retried command decides afresh from what is committed, so it applies once.
    pub async fn retrying<T, E, Fut>(&self, mut attempt: impl FnMut() -> Fut) -> Result<T, E>
    where
        Fut: Future<Output = Result<T, E>>,
        E: AsStoreError,
    {
        let mut tries = 0;
        loop {
            match attempt().await {
                Err(error) if error.is_conflict() && tries < self.max_retries => {
                    tries += 1;
                    tokio::time::sleep(backoff(tries)).await;
                }
                result => return result,
            }
        }
    }
}

/// Lets [`Store::retrying`] see a conflict inside a caller's own error type.
pub trait AsStoreError {
    fn is_conflict(&self) -> bool;
}

impl AsStoreError for StoreError {
    fn is_conflict(&self) -> bool {
        matches!(self, StoreError::Conflict(_))
    }
}

fn backoff(tries: u32) -> Duration {
    let base = 2_u64.saturating_pow(tries.min(6)) * 500;
    let jitter = u64::from(uuid::Uuid::new_v4().as_u128() as u16) % base.max(1);
    Duration::from_micros(base + jitter)
}
