//! The transactional outbox: each event is written in the transaction of the change it reports,
//! so an event exists exactly when its change was committed.

use chrono::{DateTime, Utc};
use prost::Message;
use shared::proto::v1::BillingEvent;

use super::{StoreError, Tx};

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
