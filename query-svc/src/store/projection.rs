//! The projection's writes. Each one is idempotent and order-insensitive, so redelivery,
//! duplicates, replays after JetStream's dedup window and out-of-order delivery across replicas
//! all leave the same read model:
//! - a snapshot is replaced only by a newer version;
//! - a record is inserted only if absent, and the usage counters move in the same transaction
//!   only when it was;
//! - an order's status only moves forward (PENDING → FAILED → PAID).
//!
//! A single row is written by the same statement as many, so each rule is written once.

use std::collections::BTreeMap;

use chrono::{DateTime, NaiveDate, Utc};
use shared::{
    db::Failure,
    order::OrderStatus,
    pricing::{Meter, Usage},
};
use sqlx::MySqlConnection;

pub use super::RecordRow;
use super::{ACCOUNT_COLUMNS, AccountRow, RECORD_COLUMNS};

/// An account snapshot from an event.
pub type SnapshotRow<'a> = AccountRow<&'a str>;

/// Writes the snapshot unless the stored one is at least as new.
pub async fn upsert_account(
    conn: &mut MySqlConnection,
    row: &SnapshotRow<'_>,
) -> Result<(), sqlx::Error> {
    upsert_accounts(conn, &[row]).await
}

/// The day and API a charge counts towards in `rm_daily_usage`.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct UsageKey {
    pub day: NaiveDate,
    pub api_id: String,
}

/// Inserts the record unless it is already there; a charge's usage counters move only when it
/// was inserted. Returns whether it was. A different record already holding this account
/// version is an error: the write model never gives one version to two changes.
pub async fn insert_record(
    conn: &mut MySqlConnection,
    record: &RecordRow,
    usage: Option<&UsageKey>,
) -> Result<bool, sqlx::Error> {
    let inserted = insert_records_into(&mut *conn, Table::Records, &[record]).await;
    match inserted {
        Ok(_) => {}
        Err(error) if shared::db::failure(&error) == Failure::DuplicateKey => {
            // A statement's duplicate-key error leaves the transaction usable. A locking read
            // sees the latest committed row whatever the session's isolation level.
            let present: Option<i64> = sqlx::query_scalar(
                "SELECT version FROM rm_records WHERE record_id = ? LOCK IN SHARE MODE",
            )
            .bind(&record.record_id)
            .fetch_optional(&mut *conn)
            .await?;
            return match present {
                Some(_) => Ok(false),
                None => Err(error),
            };
        }
        Err(error) => return Err(error),
    }
    if let Some(usage) = usage {
        add_usages(conn, &[(&record.user_id, usage, UsageDelta::of(record))]).await?;
    }
    Ok(true)
}

/// An order from an event.
#[derive(Clone, Debug)]
pub struct OrderRow<'a> {
    pub order_no: &'a str,
    pub user_id: &'a str,
    pub amount_micros: i64,
    pub channel: &'a str,
    pub status: OrderStatus,
    pub provider_txn_id: Option<&'a str>,
    pub created_at: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
    pub paid_at: Option<DateTime<Utc>>,
}

/// Inserts the order or moves its status forward; a status never moves back, so an event
/// applied late changes nothing. `status_rank` is assigned last, as a snapshot's `version` is.
pub async fn upsert_order(
    conn: &mut MySqlConnection,
    row: &OrderRow<'_>,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO rm_orders (order_no, user_id, amount_micros, channel, status, status_rank, \
         provider_txn_id, created_at, expires_at, paid_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?) \
         ON DUPLICATE KEY UPDATE \
         status = IF(VALUES(status_rank) > status_rank, VALUES(status), status), \
         provider_txn_id = IF(VALUES(status_rank) > status_rank, VALUES(provider_txn_id), provider_txn_id), \
         paid_at = IF(VALUES(status_rank) > status_rank, VALUES(paid_at), paid_at), \
         status_rank = GREATEST(status_rank, VALUES(status_rank))",
    )
    .bind(row.order_no)
    .bind(row.user_id)
    .bind(row.amount_micros)
    .bind(row.channel)
    .bind(row.status.as_str())
    .bind(row.status.rank())
    .bind(row.provider_txn_id)
    .bind(row.created_at)
    .bind(row.expires_at)
    .bind(row.paid_at)
    .execute(conn)
    .await?;
    Ok(())
}

/// Each column of a stored snapshot is replaced only by a newer version. `version` is assigned
/// last, because MySQL evaluates the assignments in order and the guards compare against it.
const NEWER_SNAPSHOT_WINS: &str = " ON DUPLICATE KEY UPDATE \
    currency = IF(VALUES(version) > version, VALUES(currency), currency), \
    balance_micros = IF(VALUES(version) > version, VALUES(balance_micros), balance_micros), \
    period = IF(VALUES(version) > version, VALUES(period), period), \
    free_granted_micros = IF(VALUES(version) > version, VALUES(free_granted_micros), free_granted_micros), \
    free_used_micros = IF(VALUES(version) > version, VALUES(free_used_micros), free_used_micros), \
    free_held_micros = IF(VALUES(version) > version, VALUES(free_held_micros), free_held_micros), \
    balance_held_micros = IF(VALUES(version) > version, VALUES(balance_held_micros), balance_held_micros), \
    monthly_free_micros = IF(VALUES(version) > version, VALUES(monthly_free_micros), monthly_free_micros), \
    updated_at = IF(VALUES(version) > version, VALUES(updated_at), updated_at), \
    version = GREATEST(version, VALUES(version))";

/// Writes many snapshots with one statement per power-of-two chunk, each only over an older
/// version ([`NEWER_SNAPSHOT_WINS`]). The rows are locked in the order given: callers sort them
/// by account.
pub async fn upsert_accounts(
    conn: &mut MySqlConnection,
    rows: &[&SnapshotRow<'_>],
) -> Result<(), sqlx::Error> {
    for chunk in shared::db::pow2_chunks(rows) {
        let mut upsert =
            sqlx::QueryBuilder::new(format!("INSERT INTO rm_accounts ({ACCOUNT_COLUMNS}) "));
        upsert.push_values(chunk, |mut row, s| {
            row.push_bind(s.user_id)
                .push_bind(s.currency)
                .push_bind(s.balance_micros)
                .push_bind(s.period)
                .push_bind(s.free_granted_micros)
                .push_bind(s.free_used_micros)
                .push_bind(s.free_held_micros)
                .push_bind(s.balance_held_micros)
                .push_bind(s.monthly_free_micros)
                .push_bind(s.version)
                .push_bind(s.updated_at);
        });
        upsert.push(NEWER_SNAPSHOT_WINS);
        upsert.build().execute(&mut *conn).await?;
    }
    Ok(())
}

/// Which of these records are already in the read model. A locking read: it sees the latest
/// committed rows whatever the isolation level.
pub async fn existing_records(
    conn: &mut MySqlConnection,
    record_ids: &[&str],
) -> Result<Vec<String>, sqlx::Error> {
    let mut existing = Vec::new();
    for chunk in shared::db::pow2_chunks(record_ids) {
        let mut select =
            sqlx::QueryBuilder::new("SELECT record_id FROM rm_records WHERE record_id IN (");
        let mut ids = select.separated(", ");
        for id in chunk {
            ids.push_bind(*id);
        }
        select.push(") LOCK IN SHARE MODE");
        existing.extend(
            select
                .build_query_scalar::<String>()
                .fetch_all(&mut *conn)
                .await?,
        );
    }
    Ok(existing)
}

/// Inserts records known to be absent, one statement per power-of-two chunk.
pub async fn insert_records(
    conn: &mut MySqlConnection,
    records: &[&RecordRow],
) -> Result<(), sqlx::Error> {
    insert_records_into(conn, Table::Records, records).await
}

/// Where [`insert_records_into`] writes: the live records, or the rebuild's shadow table.
#[derive(Clone, Copy, Debug)]
pub enum Table {
    Records,
    RecordsShadow,
}

pub async fn insert_records_into(
    conn: &mut MySqlConnection,
    table: Table,
    records: &[&RecordRow],
) -> Result<(), sqlx::Error> {
    let table = match table {
        Table::Records => "rm_records",
        Table::RecordsShadow => "rm_records_shadow",
    };
    for chunk in shared::db::pow2_chunks(records) {
        let mut insert =
            sqlx::QueryBuilder::new(format!("INSERT INTO {table} ({RECORD_COLUMNS}) "));
        insert.push_values(chunk, |mut row, r| {
            row.push_bind(&r.record_id)
                .push_bind(&r.user_id)
                .push_bind(r.version)
                .push_bind(&r.kind)
                .push_bind(r.amount_micros)
                .push_bind(r.free_micros)
                .push_bind(r.balance_micros)
                .push_bind(r.balance_after_micros)
                .push_bind(r.free_remaining_after_micros)
                .push_bind(&r.api_id)
                .push_bind(&r.request_id)
                .push_bind(&r.order_no)
                .push_bind(&r.period)
                .push_bind(r.created_at)
                .push_bind(&r.usage_units)
                .push_bind(&r.price_list)
                .push_bind(r.price_version);
        });
        insert.build().execute(&mut *conn).await?;
    }
    Ok(())
}

/// Usage to add for one account, day and API: calls, the three sums, and the units of each
/// meter the priced calls used.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct UsageDelta {
    pub calls: i64,
    pub amount_micros: i64,
    pub free_micros: i64,
    pub balance_micros: i64,
    pub units: BTreeMap<String, i64>,
}

impl UsageDelta {
    /// The usage of one charge.
    pub fn of(record: &RecordRow) -> UsageDelta {
        let mut delta = UsageDelta::default();
        delta.count(record);
        delta
    }

    /// The units as the `units` column holds them: a JSON object of meter to quantity; `None`
    /// when no call was priced.
    pub fn units_json(&self) -> Option<String> {
        (!self.units.is_empty()).then(|| serde_json::to_string(&self.units).unwrap_or_default())
    }

    /// Units read back from a `units` column; `None` when it holds something else.
    pub fn units_of(json: Option<&str>) -> Option<BTreeMap<String, i64>> {
        json.map_or(Some(BTreeMap::new()), |json| {
            serde_json::from_str(json).ok()
        })
    }

    /// Counts one more charge: a call, its three sums and its units.
    pub fn count(&mut self, record: &RecordRow) {
        self.calls += 1;
        self.amount_micros += record.amount_micros;
        self.free_micros += record.free_micros;
        self.balance_micros += record.balance_micros;
        let usage = record.usage_units.as_deref().and_then(Usage::from_json);
        for (meter, quantity) in usage.iter().flat_map(Usage::lines) {
            *self.units.entry(meter.as_str().to_owned()).or_default() += quantity;
        }
    }
}

/// Adds usage for many (account, day, API) keys, one statement per power-of-two chunk: calls,
/// the three sums and the units of each meter, in the one row of the key.
pub async fn add_usages(
    conn: &mut MySqlConnection,
    deltas: &[(&str, &UsageKey, UsageDelta)],
) -> Result<(), sqlx::Error> {
    for chunk in shared::db::pow2_chunks(deltas) {
        let mut upsert = sqlx::QueryBuilder::new(
            "INSERT INTO rm_daily_usage (user_id, day, api_id, calls, amount_micros, free_micros, \
             balance_micros, units) ",
        );
        upsert.push_values(chunk, |mut row, (user_id, key, delta)| {
            row.push_bind(*user_id)
                .push_bind(key.day)
                .push_bind(&key.api_id)
                .push_bind(delta.calls)
                .push_bind(delta.amount_micros)
                .push_bind(delta.free_micros)
                .push_bind(delta.balance_micros)
                .push_bind(delta.units_json());
        });
        upsert.push(
            " ON DUPLICATE KEY UPDATE calls = calls + VALUES(calls), \
             amount_micros = amount_micros + VALUES(amount_micros), \
             free_micros = free_micros + VALUES(free_micros), \
             balance_micros = balance_micros + VALUES(balance_micros)",
        );
        let meters = chunk.iter().flat_map(|(_, _, delta)| delta.units.keys());
        upsert.push(units_added(meters));
        upsert.build().execute(&mut *conn).await?;
    }
    Ok(())
}

/// The `units` assignment of a usage upsert whose rows report `meters`: each reported meter's
/// quantity added to the stored one (exactly, in BIGINT), the others left as stored (a JSON
/// `null` in the patch leaves an absent meter absent). Only meter names, `[a-z0-9_]`, are
/// written into the statement; any other name is left out.
fn units_added<'m>(meters: impl Iterator<Item = &'m String>) -> String {
    let meters: std::collections::BTreeSet<&str> = meters
        .map(String::as_str)
        .filter(|meter| Meter::parse(meter).is_some())
        .collect();
    if meters.is_empty() {
        return String::new();
    }
    let sums: Vec<String> = meters
        .iter()
        .map(|m| {
            format!(
                "'{m}', IF(JSON_VALUE(VALUES(units), '$.{m}') IS NULL, \
                 CAST(JSON_VALUE(units, '$.{m}') AS SIGNED), \
                 CAST(COALESCE(JSON_VALUE(units, '$.{m}'), '0') AS SIGNED) \
                 + CAST(JSON_VALUE(VALUES(units), '$.{m}') AS SIGNED))"
            )
        })
        .collect();
    format!(
        ", units = IF(VALUES(units) IS NULL, units, \
         JSON_MERGE_PATCH(COALESCE(units, '{{}}'), JSON_OBJECT({})))",
        sums.join(", ")
    )
}
