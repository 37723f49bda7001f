//! The transactional outbox: each event is written in the transaction of the change it reports,
//! so an event exists exactly when its change was committed. The relay ([`crate::bus::relay`])
//! claims unpublished rows, marks them published once JetStream has acked them, and purges
//! published rows after retention.

use chrono::{DateTime, Utc};
use prost::Message;
use shared::proto::v1::BillingEvent;
use sqlx::MySqlPool;

use super::{StoreError, Tx, Writes};

/// Appends `event` for publication on `subject`.
pub async fn insert_event(
    tx: &mut Tx,
    event: &BillingEvent,
    subject: &str,
    traceparent: Option<&str>,
    now: DateTime<Utc>,
) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO outbox (event_id, user_id, subject, payload, traceparent, created_at) \
         VALUES (?, ?, ?, ?, ?, ?)",
    )
    .bind(&event.event_id)
    .bind(&event.user_id)
    .bind(subject)
    .bind(event.encode_to_vec())
    .bind(traceparent)
    .bind(now)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

impl Writes {
    /// Events for publication, each on its subject, with the trace context of the command that
    /// caused it.
    pub fn events(&mut self, events: &[Outgoing], now: DateTime<Utc>) -> &mut Self {
        self.script.insert(
            "INSERT INTO outbox (event_id, user_id, subject, payload, traceparent, created_at) ",
            events,
            "",
            |row, outgoing| {
                row.text(&outgoing.event.event_id)
                    .text(&outgoing.event.user_id)
                    .text(&outgoing.subject)
                    .bytes(&outgoing.event.encode_to_vec())
                    .opt_text(outgoing.traceparent.as_deref())
                    .instant(now);
            },
        );
        self
    }
}

/// An event on its way to the outbox.
pub struct Outgoing {
    pub event: BillingEvent,
    pub subject: String,
    /// The W3C `traceparent` of the command that caused the event, sent as its header.
    pub traceparent: Option<String>,
}

impl Outgoing {
    /// `event` on `subject`, in the trace of the request being handled.
    pub fn in_current_trace(event: BillingEvent, subject: String) -> Outgoing {
        Outgoing {
            event,
            subject,
            traceparent: shared::trace::current_traceparent(),
        }
    }
}

/// An event waiting to be published.
#[derive(Clone, Debug, sqlx::FromRow)]
pub struct OutboxRow {
    pub id: u64,
    pub event_id: String,
    pub subject: String,
    pub payload: Vec<u8>,
    pub traceparent: Option<String>,
}

/// Locks up to `limit` unpublished rows, oldest id first, for the rest of `tx`.
///
/// No id watermark: auto-increment order is not commit order, so a row committed late with a
/// small id is still found by the next scan. `SKIP LOCKED` leaves rows claimed by another relay
/// (or still being written by an open transaction) to their owner instead of waiting for them.
pub async fn claim_unpublished(tx: &mut Tx, limit: u32) -> Result<Vec<OutboxRow>, StoreError> {
    Ok(sqlx::query_as(
        "SELECT id, event_id, subject, payload, traceparent FROM outbox \
         WHERE published_at IS NULL ORDER BY id LIMIT ? FOR UPDATE SKIP LOCKED",
    )
    .bind(limit)
    .fetch_all(&mut **tx)
    .await?)
}

/// Commits a write and waits for it, on a connection of its own: once it returns, every commit
/// that was visible before it is on disk (InnoDB shows a commit before its redo log is flushed,
/// and flushes the log in order).
pub async fn make_seen_commits_durable(
    pool: &MySqlPool,
    at: DateTime<Utc>,
) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO outbox_durability (id, written_at) VALUES (1, ?) \
         ON DUPLICATE KEY UPDATE written_at = VALUES(written_at)",
    )
    .bind(at)
    .execute(pool)
    .await?;
    Ok(())
}

/// Marks claimed rows as published at `at`.
pub async fn mark_published(tx: &mut Tx, ids: &[u64], at: DateTime<Utc>) -> Result<(), StoreError> {
    if ids.is_empty() {
        return Ok(());
    }
    // Only placeholders are formatted into the statement; every value is bound.
    let ids = shared::db::padded(ids);
    let placeholders = vec!["?"; ids.len()].join(", ");
    let sql = format!("UPDATE outbox SET published_at = ? WHERE id IN ({placeholders})");
    let mut query = sqlx::query(sqlx::AssertSqlSafe(sql)).bind(at);
    for id in &ids {
        query = query.bind(id);
    }
    query.execute(&mut **tx).await?;
    Ok(())
}

/// The most unpublished rows [`backlog`] counts; a larger backlog reads as this many.
pub const BACKLOG_COUNT_CAP: i64 = 1_000_000;

/// How many rows wait for publication (counted up to [`BACKLOG_COUNT_CAP`]) and when the oldest
/// of them was written. Both read the unpublished rows' index only.
pub async fn backlog(pool: &MySqlPool) -> Result<(i64, Option<DateTime<Utc>>), StoreError> {
    let (waiting,): (i64,) = sqlx::query_as(
        "SELECT COUNT(*) FROM \
         (SELECT 1 FROM outbox WHERE published_at IS NULL LIMIT ?) AS waiting",
    )
    .bind(BACKLOG_COUNT_CAP)
    .fetch_one(pool)
    .await?;
    let oldest: Option<(DateTime<Utc>,)> = sqlx::query_as(
        "SELECT created_at FROM outbox WHERE published_at IS NULL ORDER BY id LIMIT 1",
    )
    .fetch_optional(pool)
    .await?;
    Ok((waiting, oldest.map(|(at,)| at)))
}

/// Rows deleted by one purge statement: small enough to keep each statement's locks short.
pub const PURGE_CHUNK: u64 = 5000;

/// Deletes up to [`PURGE_CHUNK`] rows published before `cutoff`; returns how many it deleted.
/// Unpublished rows are never touched, however old.
pub async fn purge_published_chunk(
    pool: &MySqlPool,
    cutoff: DateTime<Utc>,
) -> Result<u64, StoreError> {
    let deleted = sqlx::query(
        "DELETE FROM outbox WHERE published_at IS NOT NULL AND published_at < ? LIMIT ?",
    )
    .bind(cutoff)
    .bind(PURGE_CHUNK)
    .execute(pool)
    .await?;
    Ok(deleted.rows_affected())
}
