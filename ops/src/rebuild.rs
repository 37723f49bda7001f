//! Rebuild of the read model from the command side's tables, while the consumer keeps running.
//!
//! 1. Shadow tables are filled from the ledger (records, usage), `accounts` (snapshots) and
//!    `recharge_orders` (orders).
//! 2. They are swapped in with one atomic `RENAME TABLE`; the old tables are dropped.
//! 3. What was committed since the rebuild began (with a margin for commits in flight) is
//!    projected again into the new tables with the projection's own idempotent writes, so
//!    events the consumer applied to the old tables during the rebuild are not lost.

use std::collections::HashMap;

use chrono::{DateTime, Duration, NaiveDate, Utc};
use shared::period::BillingZone;
use sqlx::{MySqlPool, QueryBuilder};

use shared::record::LedgerRow;

use super::{LEDGER_COLUMNS, LEDGER_FROM, record_of};
use query_svc::store::{
    projection::{self as writes, RecordRow, UsageDelta},
    queries::OrderRow as StoredOrder,
};

const TABLES: [&str; 4] = ["rm_accounts", "rm_records", "rm_daily_usage", "rm_orders"];
const CHUNK: i64 = 5_000;
/// Commits in flight when the rebuild starts are caught up too.
const CATCH_UP_MARGIN: Duration = Duration::minutes(5);

#[derive(Debug, Default, PartialEq, Eq)]
pub struct RebuildReport {
    pub accounts: u64,
    pub records: u64,
    pub usage_rows: u64,
    pub orders: u64,
    pub caught_up: u64,
}

pub async fn rebuild(
    pool: &MySqlPool,
    zone: BillingZone,
    now: DateTime<Utc>,
) -> anyhow::Result<RebuildReport> {
    let since = now - CATCH_UP_MARGIN;
    let mut report = RebuildReport::default();
    create_shadows(pool).await?;
    let usage = fill_records(pool, zone, &mut report).await?;
    report.usage_rows = fill_usage(pool, usage).await?;
    report.accounts = sqlx::query(
        "INSERT INTO rm_accounts_shadow (user_id, currency, balance_micros, period, free_granted_micros, \
         free_used_micros, free_held_micros, balance_held_micros, monthly_free_micros, version, \
         updated_at) SELECT user_id, currency, balance_micros, period, free_granted_micros, \
         free_used_micros, free_held_micros, balance_held_micros, monthly_free_micros, version, \
         updated_at FROM accounts",
    )
    .execute(pool)
    .await?
    .rows_affected();
    report.orders = sqlx::query(
        "INSERT INTO rm_orders_shadow (order_no, user_id, amount_micros, channel, status, status_rank, \
         provider_txn_id, created_at, expires_at, paid_at) SELECT order_no, user_id, amount_micros, \
         channel, status, CASE status WHEN 'PAID' THEN 2 WHEN 'FAILED' THEN 1 ELSE 0 END, \
         provider_txn_id, created_at, expires_at, paid_at FROM recharge_orders",
    )
    .execute(pool)
    .await?
    .rows_affected();
    swap_in_shadows(pool).await?;
    report.caught_up = catch_up(pool, zone, since).await?;
    Ok(report)
}

/// Empty shadow tables beside the live ones.
async fn create_shadows(pool: &MySqlPool) -> Result<(), sqlx::Error> {
    for table in TABLES {
        let drop = format!("DROP TABLE IF EXISTS {table}_shadow");
        sqlx::query(sqlx::AssertSqlSafe(drop)).execute(pool).await?;
        let create = format!("CREATE TABLE {table}_shadow LIKE {table}");
        sqlx::query(sqlx::AssertSqlSafe(create))
            .execute(pool)
            .await?;
    }
    Ok(())
}

/// The daily usage counters of the rebuild (calls, amount, free part, balance part, units), by
/// user, day and API.
type UsageSums = HashMap<(String, NaiveDate, String), UsageDelta>;

/// Writes a record per ledger row into the shadow records, chunk by chunk, and sums the usage
/// the charges count to.
async fn fill_records(
    pool: &MySqlPool,
    zone: BillingZone,
    report: &mut RebuildReport,
) -> anyhow::Result<UsageSums> {
    let mut usage = UsageSums::new();
    let mut after_id: u64 = 0;
    loop {
        let rows = ledger_chunk(pool, after_id).await?;
        let Some((last, _)) = rows.last() else {
            return Ok(usage);
        };
        after_id = *last;
        let records: Vec<RecordRow> = rows
            .iter()
            .map(|(_, row)| {
                let (record, key) = record_of(row, zone);
                if let Some(key) = key {
                    usage
                        .entry((record.user_id.clone(), key.day, key.api_id))
                        .or_default()
                        .count(&record);
                }
                record
            })
            .collect();
        let rows: Vec<&RecordRow> = records.iter().collect();
        let mut conn = pool.acquire().await?;
        writes::insert_records_into(&mut conn, writes::Table::RecordsShadow, &rows).await?;
        report.records += records.len() as u64;
    }
}

/// The next [`CHUNK`] ledger rows after row id `after_id`, with their ids.
async fn ledger_chunk(pool: &MySqlPool, after_id: u64) -> anyhow::Result<Vec<(u64, LedgerRow)>> {
    let sql = format!(
        "SELECT l.id, {LEDGER_COLUMNS} FROM {LEDGER_FROM} WHERE l.id > ? ORDER BY l.id LIMIT ?"
    );
    let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
        .bind(after_id)
        .bind(CHUNK)
        .fetch_all(pool)
        .await?;
    let rows = rows
        .iter()
        .map(|row| {
            let id = sqlx::Row::try_get(row, "id")?;
            Ok((id, sqlx::FromRow::from_row(row)?))
        })
        .collect::<Result<_, sqlx::Error>>()?;
    Ok(rows)
}

/// Writes the usage counters and units into the shadow table; how many rows.
async fn fill_usage(pool: &MySqlPool, usage: UsageSums) -> Result<u64, sqlx::Error> {
    let usage: Vec<_> = usage.into_iter().collect();
    for chunk in usage.chunks(CHUNK as usize) {
        let mut insert = QueryBuilder::new(
            "INSERT INTO rm_daily_usage_shadow (user_id, day, api_id, calls, amount_micros, \
             free_micros, balance_micros, units) ",
        );
        insert.push_values(chunk, |mut row, ((user_id, day, api_id), sums)| {
            row.push_bind(user_id)
                .push_bind(day)
                .push_bind(api_id)
                .push_bind(sums.calls)
                .push_bind(sums.amount_micros)
                .push_bind(sums.free_micros)
                .push_bind(sums.balance_micros)
                .push_bind(sums.units_json());
        });
        insert.build().execute(pool).await?;
    }
    Ok(usage.len() as u64)
}

/// Puts the shadow tables in place of the live ones in one atomic rename, and drops the old.
async fn swap_in_shadows(pool: &MySqlPool) -> Result<(), sqlx::Error> {
    let renames: Vec<String> = TABLES
        .iter()
        .flat_map(|t| [format!("{t} TO {t}_old"), format!("{t}_shadow TO {t}")])
        .collect();
    let rename = format!("RENAME TABLE {}", renames.join(", "));
    sqlx::query(sqlx::AssertSqlSafe(rename))
        .execute(pool)
        .await?;
    for table in TABLES {
        let drop = format!("DROP TABLE {table}_old");
        sqlx::query(sqlx::AssertSqlSafe(drop)).execute(pool).await?;
    }
    Ok(())
}

/// Projects again, into the live tables, every change committed since `since`. Returns the
/// number of records that were missing.
pub async fn catch_up(
    pool: &MySqlPool,
    zone: BillingZone,
    since: DateTime<Utc>,
) -> anyhow::Result<u64> {
    let sql = format!(
        "SELECT {LEDGER_COLUMNS} FROM {LEDGER_FROM} WHERE l.created_at >= ? ORDER BY l.user_id, l.version"
    );
    let rows: Vec<LedgerRow> = sqlx::query_as(sqlx::AssertSqlSafe(sql))
        .bind(since)
        .fetch_all(pool)
        .await?;
    let mut inserted = 0;
    let mut users: Vec<&str> = rows.iter().map(|row| row.user_id.as_str()).collect();
    users.dedup();
    for user in users {
        let mut tx = pool.begin().await?;
        super::reconcile::refresh_snapshot(&mut tx, user, false).await?;
        for row in rows.iter().filter(|row| row.user_id.as_str() == user) {
            let (record, usage) = record_of(row, zone);
            if writes::insert_record(&mut tx, &record, usage.as_ref()).await? {
                inserted += 1;
            }
        }
        tx.commit().await?;
    }
    let orders: Vec<OrderSource> = sqlx::query_as(
        "SELECT order_no, user_id, amount_micros, channel, status, provider_txn_id, created_at, \
         expires_at, paid_at FROM recharge_orders WHERE updated_at >= ?",
    )
    .bind(since)
    .fetch_all(pool)
    .await?;
    let mut conn = pool.acquire().await?;
    for order in &orders {
        writes::upsert_order(&mut conn, &order.row()?).await?;
    }
    Ok(inserted)
}

/// A recharge order as the command side stores it: the columns the read model keeps of an
/// order (`recharge_orders` and `rm_orders` name them alike), and its owner.
#[derive(Debug, sqlx::FromRow)]
pub struct OrderSource {
    pub user_id: String,
    #[sqlx(flatten)]
    pub order: StoredOrder,
}

impl OrderSource {
    pub fn row(&self) -> anyhow::Result<writes::OrderRow<'_>> {
        let order = &self.order;
        Ok(writes::OrderRow {
            order_no: &order.order_no,
            user_id: &self.user_id,
            amount_micros: order.amount_micros,
            channel: &order.channel,
            status: shared::order::OrderStatus::parse(&order.status).ok_or_else(|| {
                anyhow::anyhow!("order {} has status {:?}", order.order_no, order.status)
            })?,
            provider_txn_id: order.provider_txn_id.as_deref(),
            created_at: order.created_at,
            expires_at: order.expires_at,
            paid_at: order.paid_at,
        })
    }
}
