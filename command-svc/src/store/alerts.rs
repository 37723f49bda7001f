//! `alert_settings` (a developer's threshold and webhook) and `alert_deliveries` (what became of
//! each alert sent to a webhook).

use chrono::{DateTime, Utc};
use shared::ids::UserId;
use sqlx::MySqlPool;

use super::{StoreError, Tx};

/// A developer's settings as stored.
#[derive(Clone, Debug, Default, sqlx::FromRow)]
pub struct AlertSettingsRow {
    pub low_balance_threshold_micros: Option<i64>,
    pub webhook_url: Option<String>,
    pub signing_secret: Option<String>,
}

/// The user's settings, locked until `tx` ends (none stored: `None`).
pub async fn lock_alert_settings(
    tx: &mut Tx,
    user_id: &UserId,
) -> Result<Option<AlertSettingsRow>, StoreError> {
    Ok(sqlx::query_as(
        "SELECT low_balance_threshold_micros, webhook_url, signing_secret \
         FROM alert_settings WHERE user_id = ? FOR UPDATE",
    )
    .bind(user_id.as_str())
    .fetch_optional(&mut **tx)
    .await?)
}

/// `user_id`'s settings, unlocked (none stored: `None`).
pub async fn alert_settings_of(
    pool: &MySqlPool,
    user_id: &UserId,
) -> Result<Option<AlertSettingsRow>, StoreError> {
    Ok(sqlx::query_as(
        "SELECT low_balance_threshold_micros, webhook_url, signing_secret \
         FROM alert_settings WHERE user_id = ?",
    )
    .bind(user_id.as_str())
    .fetch_optional(pool)
    .await?)
}

/// Stores a developer's settings, replacing earlier ones.
pub async fn save_alert_settings(
    tx: &mut Tx,
    user_id: &UserId,
    settings: &AlertSettingsRow,
    now: DateTime<Utc>,
) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO alert_settings (user_id, low_balance_threshold_micros, webhook_url, \
         signing_secret, updated_at) VALUES (?, ?, ?, ?, ?) ON DUPLICATE KEY UPDATE \
         low_balance_threshold_micros = VALUES(low_balance_threshold_micros), \
         webhook_url = VALUES(webhook_url), signing_secret = VALUES(signing_secret), \
         updated_at = VALUES(updated_at)",
    )
    .bind(user_id.as_str())
    .bind(settings.low_balance_threshold_micros)
    .bind(settings.webhook_url.as_deref())
    .bind(settings.signing_secret.as_deref())
    .bind(now)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// Where a developer's alerts go and the secret they are signed with.
pub struct Webhook {
    pub url: String,
    /// `None` for a webhook set before secrets were per user: it must be set again.
    pub signing_secret: Option<String>,
}

/// The webhook a developer's alerts go to, if any.
pub async fn webhook_of(pool: &MySqlPool, user_id: &UserId) -> Result<Option<Webhook>, StoreError> {
    let row: Option<(Option<String>, Option<String>)> =
        sqlx::query_as("SELECT webhook_url, signing_secret FROM alert_settings WHERE user_id = ?")
            .bind(user_id)
            .fetch_optional(pool)
            .await?;
    Ok(row.and_then(|(url, signing_secret)| {
        url.map(|url| Webhook {
            url,
            signing_secret,
        })
    }))
}

/// One attempt at delivering an alert, and where the delivery stands after it.
pub struct DeliveryAttempt<'a> {
    pub event_id: &'a str,
    pub user_id: &'a UserId,
    pub kind: &'a str,
    pub url: Option<&'a str>,
    /// `pending` (to be tried again), `delivered`, `failed` (attempts used up) or `no_webhook`.
    pub status: &'a str,
    pub http_status: Option<u16>,
    pub error: Option<&'a str>,
}

/// Records an attempt: the delivery's row is created by the first and updated by the next; a
/// delivery recorded as done stays done (a redelivered alert is not sent twice).
pub async fn record_attempt(
    pool: &MySqlPool,
    attempt: &DeliveryAttempt<'_>,
    now: DateTime<Utc>,
) -> Result<(), StoreError> {
    let error = attempt
        .error
        .map(|e| e.chars().take(512).collect::<String>());
    sqlx::query(
        "INSERT INTO alert_deliveries (event_id, user_id, kind, url, status, attempts, \
         last_http_status, last_error, first_attempt_at, last_attempt_at, delivered_at) \
         VALUES (?, ?, ?, ?, ?, 1, ?, ?, ?, ?, IF(? = 'delivered', ?, NULL)) \
         ON DUPLICATE KEY UPDATE \
         attempts = IF(status = 'pending', attempts + 1, attempts), \
         last_http_status = IF(status = 'pending', VALUES(last_http_status), last_http_status), \
         last_error = IF(status = 'pending', VALUES(last_error), last_error), \
         last_attempt_at = IF(status = 'pending', VALUES(last_attempt_at), last_attempt_at), \
         delivered_at = IF(status = 'pending', VALUES(delivered_at), delivered_at), \
         url = IF(status = 'pending', VALUES(url), url), \
         status = IF(status = 'pending', VALUES(status), status)",
    )
    .bind(attempt.event_id)
    .bind(attempt.user_id)
    .bind(attempt.kind)
    .bind(attempt.url)
    .bind(attempt.status)
    .bind(attempt.http_status)
    .bind(error)
    .bind(now)
    .bind(now)
    .bind(attempt.status)
    .bind(now)
    .execute(pool)
    .await?;
    Ok(())
}

/// Whether this alert's delivery is already settled (delivered, failed or without a webhook),
/// so a redelivery of its event sends nothing.
pub async fn delivery_settled(pool: &MySqlPool, event_id: &str) -> Result<bool, StoreError> {
    let status: Option<String> =
        sqlx::query_scalar("SELECT status FROM alert_deliveries WHERE event_id = ?")
            .bind(event_id)
            .fetch_optional(pool)
            .await?;
    Ok(status.is_some_and(|status| status != "pending"))
}

/// Deletes up to `chunk` settled deliveries last attempted before `before`; how many it deleted.
/// Pending ones stay whatever their age: their alert is still being delivered.
pub async fn purge_settled_deliveries(
    pool: &MySqlPool,
    before: DateTime<Utc>,
    chunk: u32,
) -> Result<u64, StoreError> {
    let deleted = sqlx::query(
        "DELETE FROM alert_deliveries WHERE status <> 'pending' AND last_attempt_at < ? LIMIT ?",
    )
    .bind(before)
    .bind(chunk)
    .execute(pool)
    .await?;
    Ok(deleted.rows_affected())
}
