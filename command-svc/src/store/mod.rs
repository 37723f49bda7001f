//! MySQL, the source of truth. One transaction per command writes the account state, its ledger
//! rows and their outbox events; unique keys, not memory, make commands idempotent.
//!
//! Transactions run at READ COMMITTED (see [`shared::db`]) and take row locks explicitly
//! (`FOR UPDATE` on the account first, always), so correctness rests on locks and unique keys.

mod accounts;
mod alerts;
mod grants;
mod ledger;
mod limits;
mod orders;
mod outbox;
mod prices;
mod refunds;
mod reservations;
mod writes;

use std::{future::Future, sync::Arc, time::Duration};

use shared::{backoff::Backoff, config::DatabaseSettings, db::Failure};
use sqlx::{MySql, MySqlPool, Transaction};
use tokio::sync::Notify;

pub use accounts::{
    AccountRow, AccountWrite, account_ids_after, accounts_created_since, create_account,
    load_account, lock_account, lock_accounts, lock_accounts_between, parse_period, save_account,
};
pub use alerts::{
    AlertSettingsRow, DeliveryAttempt, Webhook, alert_settings_of, delivery_settled,
    lock_alert_settings, purge_settled_deliveries, record_attempt, save_alert_settings, webhook_of,
};
pub use grants::{Grant, regrant};
pub use ledger::{
    Amounts, LedgerEntry, LedgerRow, RecordKind, Refs, find_adjustment, find_charge, find_charges,
    find_credit_by_txn, find_record, find_record_at_version, state_after,
};
pub use limits::{
    SpentRow, counters_column, find_limit_set, insert_limit_set, limited_users,
    settled_reservation_taken_at, spent_since,
};
pub use orders::{
    OrderRow, UnmatchedKey, UnmatchedRow, find_order, find_order_by_key, find_unmatched,
    insert_order, insert_unmatched, lock_order, update_order_status,
};
pub use outbox::{
    OutboxRow, Outgoing, PURGE_CHUNK, backlog, claim_unpublished, insert_event,
    make_seen_commits_durable, mark_published, purge_published_chunk,
};
pub use prices::{
    PriceRow, VersionRow, find_publication, list_exists, next_version, price_versions, prices_of,
    set_price_list,
};
pub use refunds::{NewRefund, RefundRow, find_refund, insert_refund, refundable};
pub use reservations::{
    ExpiredHold, NewReservation, Reservation, ReservationStatus, SettleRecord, end_reservation,
    expired_reservations, insert_reservation, lock_reservation, record_settle,
};
pub use writes::Writes;

pub type Tx = Transaction<'static, MySql>;

/// How a storage failure should be treated by the caller. Cloneable, so one failed group commit
/// can answer each of its callers.
#[derive(Clone, Debug, thiserror::Error)]
pub enum StoreError {
    /// MySQL could not be reached, or the connection broke: the outcome is unknown, and the
    /// caller must retry with the same idempotency key.
    #[error("store unavailable: {0}")]
    Unavailable(#[source] Arc<sqlx::Error>),
    /// A deadlock, a lock wait timeout or a unique-key race with a concurrent command: the
    /// transaction was rolled back and can be run again from the start.
    #[error("transaction conflict: {0}")]
    Conflict(#[source] Arc<sqlx::Error>),
    /// Anything else is a fault of this service or its schema.
    #[error("store error: {0}")]
    Internal(#[source] Arc<sqlx::Error>),
}

impl StoreError {
    /// A fault found by this service in what it read (a corrupt row, a vanished one).
    pub fn internal(error: sqlx::Error) -> Self {
        StoreError::Internal(Arc::new(error))
    }
}

impl From<sqlx::Error> for StoreError {
    /// A unique-key refusal is a race with a concurrent command (two first commands of one
    /// account, say): run again, the command finds the other's row.
    fn from(error: sqlx::Error) -> Self {
        match shared::db::failure(&error) {
            Failure::Unreachable => StoreError::Unavailable(Arc::new(error)),
            Failure::LockConflict | Failure::DuplicateKey => StoreError::Conflict(Arc::new(error)),
            Failure::Other => StoreError::Internal(Arc::new(error)),
        }
    }
}

/// The connection pool, the retry policy around it, and the outbox relay's wake-up call.
#[derive(Clone)]
pub struct Store {
    pool: MySqlPool,
    max_retries: u32,
    outbox_written: Arc<Notify>,
}

impl Store {
    /// A pool that connects on demand (see [`shared::db::connect_lazy`]).
    pub fn connect_lazy(settings: &DatabaseSettings) -> Result<Store, sqlx::Error> {
        Ok(Store {
            pool: shared::db::connect_lazy(settings)?,
            max_retries: settings.max_retries,
            outbox_written: Arc::new(Notify::new()),
        })
    }

    pub fn pool(&self) -> &MySqlPool {
        &self.pool
    }

    /// Applies the migrations in `migrations/`, waiting up to `patience` for MySQL to answer.
    pub async fn migrate(&self, patience: Duration) -> anyhow::Result<()> {
        Ok(shared::db::migrate(&self.pool, patience).await?)
    }

    /// Ready to take commands: MySQL answers and every migration this build knows is applied.
    pub async fn is_ready(&self) -> bool {
        shared::db::schema_ready(&self.pool).await
    }

    /// Tells the outbox relay that a transaction which wrote outbox rows has committed, so the
    /// event leaves now rather than at the next poll. A wake-up given while the relay is busy is
    /// kept for it (one at most), so none is lost.
    pub fn outbox_written(&self) {
        self.outbox_written.notify_one();
    }

    /// What the outbox relay waits on besides its poll timer.
    pub fn outbox_notifier(&self) -> Arc<Notify> {
        Arc::clone(&self.outbox_written)
    }

    /// Begins a transaction. Connections are not pinged when taken from the pool (the hot path
    /// saves that round trip), so one the server closed (it restarted, or dropped it while idle)
    /// fails its `BEGIN`, before anything ran: another connection is taken, a few times, so that
    /// callers see MySQL back as soon as it is. A pool that cannot give a connection in time is
    /// not retried here.
    pub async fn begin(&self) -> Result<Tx, StoreError> {
        const CLOSED_CONNECTIONS_SKIPPED: u32 = 4;
        let mut skipped = 0;
        loop {
            match self.pool.begin().await {
                Err(sqlx::Error::Io(error)) if skipped < CLOSED_CONNECTIONS_SKIPPED => {
                    skipped += 1;
                    tracing::debug!(%error, "a pooled connection was closed; taking another");
                }
                begun => return Ok(begun?),
            }
        }
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
                    tokio::time::sleep(Backoff::CONFLICT.delay(tries)).await;
                }
                result => return result,
            }
        }
    }
}

/// A stored row this build cannot read (a corrupt period, say): logged and counted
/// (`billing_undecodable_rows_total{table}`, alerted on), so that the work it was part of skips
/// it and goes on, and operators repair it.
pub fn undecodable(table: &'static str, key: &str, error: &StoreError) {
    tracing::error!(table, key, %error, "a row that cannot be read was skipped; repair it");
    metrics::counter!("billing_undecodable_rows_total", "table" => table).increment(1);
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
