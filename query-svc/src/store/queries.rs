//! What the REST API reads from the read model. Every query is scoped to one user (the token's
//! subject) and pages by keyset, so a page costs the same however deep it is.

use chrono::{DateTime, Utc};
use sqlx::{AssertSqlSafe, MySql, MySqlExecutor};

use super::{RECORD_COLUMNS, RecordRow};

/// Which records a page shows: all, or one type, in `[from, to)` of `created_at`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RecordFilter<'a> {
    pub kind: Option<&'a str>,
    pub from: Option<DateTime<Utc>>,
    pub to: Option<DateTime<Utc>>,
}

/// Up to `limit` records of `user_id` below version `before` (all when `None`), newest first.
/// With a type the `(user_id, type, version)` index serves it, otherwise `(user_id, version)`:
/// named, because MariaDB otherwise reads the user's whole range before it stops at the limit
/// (80 ms a page for 100,000 records, against 0.2 ms read backwards from the cursor).
pub async fn records_page<'e>(
    executor: impl MySqlExecutor<'e>,
    user_id: &str,
    filter: RecordFilter<'_>,
    before: Option<i64>,
    limit: u32,
) -> Result<Vec<RecordRow>, sqlx::Error> {
    let (index, of_kind) = match filter.kind {
        Some(_) => ("rm_records_user_type_version", "AND type = ? "),
        None => ("rm_records_user_version", ""),
    };
    let sql = format!(
        "SELECT {RECORD_COLUMNS} FROM rm_records FORCE INDEX ({index}) \
         WHERE user_id = ? {of_kind}AND version < ? \
         AND (? IS NULL OR created_at >= ?) AND (? IS NULL OR created_at < ?) \
         ORDER BY version DESC LIMIT ?"
    );
    let mut query = sqlx::query_as::<MySql, RecordRow>(AssertSqlSafe(sql)).bind(user_id);
    if let Some(kind) = filter.kind {
        query = query.bind(kind);
    }
    query
        .bind(before.unwrap_or(i64::MAX))
        .bind(filter.from)
        .bind(filter.from)
        .bind(filter.to)
        .bind(filter.to)
        .bind(limit)
        .fetch_all(executor)
        .await
}

/// The columns of [`OrderRow`] in `rm_orders`.
const ORDER_COLUMNS: &str =
    "order_no, amount_micros, channel, status, provider_txn_id, created_at, expires_at, paid_at";

/// One row of `rm_orders`, as stored (the status without expiry applied).
#[derive(Clone, Debug, PartialEq, Eq, sqlx::FromRow)]
pub struct OrderRow {
    pub order_no: String,
    pub amount_micros: i64,
    pub channel: String,
    pub status: String,
    pub provider_txn_id: Option<String>,
    pub created_at: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
    pub paid_at: Option<DateTime<Utc>>,
}

/// The order `order_no` if it is `user_id`'s: another user's order is as absent as a missing one.
pub async fn find_order<'e>(
    executor: impl MySqlExecutor<'e>,
    user_id: &str,
    order_no: &str,
) -> Result<Option<OrderRow>, sqlx::Error> {
    let sql = format!("SELECT {ORDER_COLUMNS} FROM rm_orders WHERE order_no = ? AND user_id = ?");
    sqlx::query_as(AssertSqlSafe(sql))
        .bind(order_no)
        .bind(user_id)
        .fetch_optional(executor)
        .await
}

/// Up to `limit` orders of `user_id`, newest first (`created_at`, then `order_no`, descending),
/// after the position `after` of the previous page's last order.
pub async fn orders_page<'e>(
    executor: impl MySqlExecutor<'e>,
    user_id: &str,
    after: Option<(DateTime<Utc>, &str)>,
    limit: u32,
) -> Result<Vec<OrderRow>, sqlx::Error> {
    let below_after = match after {
        Some(_) => "AND (created_at < ? OR (created_at = ? AND order_no < ?)) ",
        None => "",
    };
    let sql = format!(
        "SELECT {ORDER_COLUMNS} FROM rm_orders WHERE user_id = ? {below_after}\
         ORDER BY created_at DESC, order_no DESC LIMIT ?"
    );
    let mut query = sqlx::query_as::<MySql, OrderRow>(AssertSqlSafe(sql)).bind(user_id);
    if let Some((created_at, order_no)) = after {
        query = query.bind(created_at).bind(created_at).bind(order_no);
    }
    query.bind(limit).fetch_all(executor).await
}

/// How usage is summed: per day (in the billing time zone) or per API.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UsageGrouping {
    Day,
    Api,
}

impl UsageGrouping {
    pub fn as_str(self) -> &'static str {
        match self {
            UsageGrouping::Day => "day",
            UsageGrouping::Api => "api",
        }
    }
}

/// The charges of one day or one API.
#[derive(Clone, Debug, PartialEq, Eq, sqlx::FromRow)]
pub struct UsageRow {
    pub key: String,
    pub calls: i64,
    pub amount_micros: i64,
    pub free_micros: i64,
    pub balance_micros: i64,
}

/// The units `user_id`'s priced calls used on each day of `[from, to)` with any: (API, the
/// day's `units` JSON object of meter to quantity).
pub async fn units<'e>(
    executor: impl MySqlExecutor<'e>,
    user_id: &str,
    from: chrono::NaiveDate,
    to: chrono::NaiveDate,
) -> Result<Vec<(String, String)>, sqlx::Error> {
    sqlx::query_as(
        "SELECT api_id, units FROM rm_daily_usage \
         WHERE user_id = ? AND day >= ? AND day < ? AND units IS NOT NULL",
    )
    .bind(user_id)
    .bind(from)
    .bind(to)
    .fetch_all(executor)
    .await
}

/// `user_id`'s charges on the days `[from, to)`, summed per day (in date order) or per API
/// (largest amount first). The primary key `(user_id, day, api_id)` serves both.
pub async fn usage<'e>(
    executor: impl MySqlExecutor<'e>,
    user_id: &str,
    from: chrono::NaiveDate,
    to: chrono::NaiveDate,
    grouping: UsageGrouping,
) -> Result<Vec<UsageRow>, sqlx::Error> {
    let (key, grouped) = match grouping {
        UsageGrouping::Day => ("DATE_FORMAT(day, '%Y-%m-%d')", "GROUP BY day ORDER BY day"),
        UsageGrouping::Api => (
            "api_id",
            "GROUP BY api_id ORDER BY amount_micros DESC, api_id",
        ),
    };
    let sql = format!(
        "SELECT {key} AS `key`, \
         CAST(SUM(calls) AS SIGNED) AS calls, CAST(SUM(amount_micros) AS SIGNED) AS amount_micros, \
         CAST(SUM(free_micros) AS SIGNED) AS free_micros, \
         CAST(SUM(balance_micros) AS SIGNED) AS balance_micros \
         FROM rm_daily_usage WHERE user_id = ? AND day >= ? AND day < ? {grouped}"
    );
    sqlx::query_as(AssertSqlSafe(sql))
        .bind(user_id)
        .bind(from)
        .bind(to)
        .fetch_all(executor)
        .await
}
