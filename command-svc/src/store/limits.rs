//! Spend limits: each user's limits with the counter of their current window (`spend_limits`),
//! locked after the account in primary-key order, and the sets that replaced them
//! (`spend_limit_sets`, for idempotency).

use chrono::{DateTime, NaiveDate, Utc};
use shared::{
    ids::UserId,
    limits::{Counter, Scope, SpendLimit, Window},
    money::Micros,
};
use sqlx::MySqlExecutor;

use super::{StoreError, Tx, Writes};

/// One limit and its counter, as stored.
#[derive(Clone, Debug, sqlx::FromRow)]
pub struct LimitRow {
    pub user_id: UserId,
    pub scope: String,
    pub window_kind: String,
    pub limit_micros: i64,
    pub window_first_day: NaiveDate,
    pub spent_micros: i64,
    pub reached_published: bool,
}

impl LimitRow {
    /// The counter this row holds. Rows are checked when written; a window that does not
    /// parse is a corrupt row.
    pub fn counter(&self) -> Result<Counter, StoreError> {
        let window = Window::parse("window", &self.window_kind)
            .map_err(|e| StoreError::internal(sqlx::Error::Decode(e.description.into())))?;
        Ok(Counter {
            limit: SpendLimit {
                scope: Scope::stored(&self.scope),
                window,
                limit: Micros::new(self.limit_micros),
            },
            first_day: self.window_first_day,
            spent: Micros::new(self.spent_micros),
            reached_published: self.reached_published,
        })
    }
}

const COLUMNS: &str = "user_id, scope, window_kind, limit_micros, window_first_day, spent_micros, \
                       reached_published";

/// The counters of these users, locked, in primary-key order (after their accounts).
pub async fn lock_limits(tx: &mut Tx, user_ids: &[&UserId]) -> Result<Vec<LimitRow>, StoreError> {
    if user_ids.is_empty() {
        return Ok(Vec::new());
    }
    let mut select = sqlx::QueryBuilder::new(format!(
        "SELECT {COLUMNS} FROM spend_limits WHERE user_id IN ("
    ));
    let mut ids = select.separated(", ");
    for user_id in shared::db::padded(user_ids) {
        ids.push_bind(user_id);
    }
    select.push(") ORDER BY user_id, scope, window_kind FOR UPDATE");
    Ok(select.build_query_as().fetch_all(&mut **tx).await?)
}

/// A user's counters as committed, without locking (checks and reads).
pub async fn limits_of<'e>(
    executor: impl MySqlExecutor<'e>,
    user_id: &UserId,
) -> Result<Vec<LimitRow>, StoreError> {
    let sql =
        format!("SELECT {COLUMNS} FROM spend_limits WHERE user_id = ? ORDER BY scope, window_kind");
    Ok(sqlx::query_as(sqlx::AssertSqlSafe(sql))
        .bind(user_id)
        .fetch_all(executor)
        .await?)
}

/// Every user with limits.
pub async fn limited_users<'e>(
    executor: impl MySqlExecutor<'e>,
) -> Result<Vec<UserId>, StoreError> {
    Ok(
        sqlx::query_scalar("SELECT DISTINCT user_id FROM spend_limits")
            .fetch_all(executor)
            .await?,
    )
}

/// Replaces the user's whole set of limits by `counters` and sets the account's
/// `spend_limited` flag (the account row exists and is locked).
pub async fn replace_limits(
    tx: &mut Tx,
    user_id: &UserId,
    counters: &[Counter],
    now: DateTime<Utc>,
) -> Result<(), StoreError> {
    sqlx::query("DELETE FROM spend_limits WHERE user_id = ?")
        .bind(user_id)
        .execute(&mut **tx)
        .await?;
    let mut writes = Writes::new();
    let rows: Vec<(&UserId, &Counter)> = counters.iter().map(|c| (user_id, c)).collect();
    writes.save_counters(&rows, now);
    writes.run(tx).await?;
    sqlx::query("UPDATE accounts SET spend_limited = ? WHERE user_id = ?")
        .bind(!counters.is_empty())
        .bind(user_id)
        .execute(&mut **tx)
        .await?;
    Ok(())
}

/// The digest a set was recorded with under `set_id`, if one was.
pub async fn find_limit_set(
    tx: &mut Tx,
    user_id: &UserId,
    set_id: &str,
) -> Result<Option<String>, StoreError> {
    Ok(sqlx::query_scalar(
        "SELECT content_sha256 FROM spend_limit_sets WHERE user_id = ? AND set_id = ?",
    )
    .bind(user_id)
    .bind(set_id)
    .fetch_optional(&mut **tx)
    .await?)
}

pub async fn insert_limit_set(
    tx: &mut Tx,
    user_id: &UserId,
    set_id: &str,
    digest: &str,
    now: DateTime<Utc>,
) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO spend_limit_sets (user_id, set_id, content_sha256, created_at) \
         VALUES (?, ?, ?, ?)",
    )
    .bind(user_id)
    .bind(set_id)
    .bind(digest)
    .bind(now)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// One amount a user spent: a charge (less what was refunded of it) or a hold still held.
#[derive(Clone, Debug, sqlx::FromRow)]
pub struct SpentRow {
    pub api_id: Option<String>,
    pub key_id: Option<String>,
    pub amount_micros: i64,
    pub at: DateTime<Utc>,
}

/// What `user_id` spent since `since`, for a new limit's counter: the charges decided since
/// (less their refunds; a settle counts where its reservation was taken, so the settles of
/// reservations taken before are left out) and the holds taken since that still hold.
pub async fn spent_since(
    tx: &mut Tx,
    user_id: &UserId,
    since: DateTime<Utc>,
) -> Result<Vec<SpentRow>, StoreError> {
    let charges = sqlx::query_as(
        "SELECT l.api_id, l.key_id, \
                CAST(l.amount_micros - COALESCE((SELECT SUM(r.amount_micros) FROM refunds r \
                                                 WHERE r.charge_record_id = l.record_id), 0) \
                     AS SIGNED) AS amount_micros, \
                l.created_at AS at \
         FROM ledger l WHERE l.user_id = ? AND l.kind = 'deduct' AND l.created_at >= ? \
           AND NOT EXISTS (SELECT 1 FROM reservations v \
                           WHERE v.user_id = l.user_id AND v.settle_record_id = l.record_id \
                             AND v.created_at < ? AND v.settled_after_expiry = FALSE)",
    )
    .bind(user_id)
    .bind(since)
    .bind(since)
    .fetch_all(&mut **tx);
    let mut spent: Vec<SpentRow> = charges.await?;
    let holds: Vec<SpentRow> = sqlx::query_as(
        "SELECT api_id, key_id, amount_micros, created_at AS at \
         FROM reservations WHERE user_id = ? AND status = 'held' AND created_at >= ?",
    )
    .bind(user_id)
    .bind(since)
    .fetch_all(&mut **tx)
    .await?;
    spent.extend(holds);
    Ok(spent)
}

/// When the reservation a charge settled was taken, for a settle made before its expiry (such a
/// charge spends in the reservation's window); `None` for any other charge.
pub async fn settled_reservation_taken_at(
    tx: &mut Tx,
    user_id: &UserId,
    charge_record_id: &str,
) -> Result<Option<DateTime<Utc>>, StoreError> {
    Ok(sqlx::query_scalar(
        "SELECT created_at FROM reservations \
         WHERE user_id = ? AND settle_record_id = ? AND settled_after_expiry = FALSE",
    )
    .bind(user_id)
    .bind(charge_record_id)
    .fetch_optional(&mut **tx)
    .await?)
}

impl Writes {
    /// The counters of these users as decided: a row just deleted by a set is inserted whole; a
    /// row that exists (locked) has its counter updated (its limit only ever changes by a set).
    pub fn save_counters(
        &mut self,
        counters: &[(&UserId, &Counter)],
        now: DateTime<Utc>,
    ) -> &mut Self {
        self.script.insert(
            "INSERT INTO spend_limits (user_id, scope, window_kind, limit_micros, \
             window_first_day, spent_micros, reached_published, updated_at) ",
            counters,
            " ON DUPLICATE KEY UPDATE window_first_day = VALUES(window_first_day), \
             spent_micros = VALUES(spent_micros), reached_published = VALUES(reached_published), \
             updated_at = VALUES(updated_at)",
            |row, (user_id, counter)| {
                row.text(user_id.as_str())
                    .text(&counter.limit.scope.to_string())
                    .text(counter.limit.window.as_str())
                    .int(counter.limit.limit.get())
                    .text(&counter.first_day.to_string())
                    .int(counter.spent.get())
                    .int(i64::from(counter.reached_published))
                    .instant(now);
            },
        );
        self
    }
}
