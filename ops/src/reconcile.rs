//! Reconcile: the read model (MySQL `rm_` tables and Redis snapshots) compared with the write
//! model, at equal versions: a snapshot at version V is compared with the ledger row that made
//! version V, and the records up to V with the ledger rows up to V. A read model that is only
//! behind is not different. What still differs after a short settling pause (events in flight)
//! is reported; `repair` rewrites those accounts' read model from the write model.

use shared::cache::SnapshotCache;
use std::{
    collections::{BTreeMap, HashMap},
    time::Duration,
};

use chrono::NaiveDate;
use prost::Message;
use shared::{period::BillingZone, proto::v1 as pb, record::RecordKind};
use sqlx::{Connection, MySqlConnection, MySqlPool};

use shared::record::{AccountAmounts, LedgerRow};

use super::{LEDGER_COLUMNS, LEDGER_FROM, rebuild::OrderSource, record_of};
use query_svc::store::{
    self, RECORD_COLUMNS,
    projection::{self as writes, RecordRow, UsageDelta},
};

/// One difference between the models, in words an operator can act on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Difference {
    pub user_id: String,
    pub what: String,
}

impl std::fmt::Display for Difference {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.user_id, self.what)
    }
}

#[derive(Clone, Debug)]
pub struct Options {
    pub repair: bool,
    /// How long to wait before looking again at accounts that differed.
    pub settle: Duration,
}

/// How many settling pauses an account that differs gets before its differences are reported.
const SETTLE_ROUNDS: u32 = 3;

/// Compares every account; returns the differences that persisted (before any repair).
pub async fn reconcile(
    pool: &MySqlPool,
    cache: Option<&SnapshotCache>,
    zone: BillingZone,
    options: &Options,
) -> anyhow::Result<Vec<Difference>> {
    let mut suspects = Vec::new();
    let mut after = String::new();
    loop {
        let users: Vec<String> = sqlx::query_scalar(
            "SELECT user_id FROM accounts WHERE user_id > ? ORDER BY user_id LIMIT 1000",
        )
        .bind(&after)
        .fetch_all(pool)
        .await?;
        let Some(last) = users.last() else { break };
        after = last.clone();
        for user in users {
            if !compare(pool, cache, zone, &user).await?.is_empty() {
                suspects.push(user);
            }
        }
    }
    let strays: Vec<String> = sqlx::query_scalar(
        "SELECT r.user_id FROM rm_accounts r LEFT JOIN accounts a ON a.user_id = r.user_id WHERE a.user_id IS NULL",
    )
    .fetch_all(pool)
    .await?;
    suspects.extend(strays);

    // Events in flight (an order created and not yet projected; with several replicas, a later
    // version projected before an earlier one) look like differences for a moment: what still
    // differs is looked at again, after a pause each time, up to SETTLE_ROUNDS times.
    for _ in 1..SETTLE_ROUNDS {
        if suspects.is_empty() {
            break;
        }
        tokio::time::sleep(options.settle).await;
        let mut still = Vec::new();
        for user in suspects {
            if !compare(pool, cache, zone, &user).await?.is_empty() {
                still.push(user);
            }
        }
        suspects = still;
    }
    if !suspects.is_empty() {
        tokio::time::sleep(options.settle).await;
    }
    let mut differences = Vec::new();
    for user in suspects {
        let found = compare(pool, cache, zone, &user).await?;
        if !found.is_empty() && options.repair {
            repair(pool, cache, zone, &user).await?;
        }
        differences.extend(found.into_iter().map(|what| Difference {
            user_id: user.clone(),
            what,
        }));
    }
    Ok(differences)
}

/// Every difference for one account, in words.
async fn compare(
    pool: &MySqlPool,
    cache: Option<&SnapshotCache>,
    zone: BillingZone,
    user: &str,
) -> anyhow::Result<Vec<String>> {
    // Redis first: its snapshots are written after the projection's commit, so the MySQL
    // instant below holds every version Redis can show.
    let cached = match cache {
        Some(cache) => cache.get(user).await,
        None => None,
    };
    let Some(models) = Models::read(pool, user).await? else {
        return Ok(vec![
            "the read model has an account the write model does not".to_owned(),
        ]);
    };
    let mut found = models.snapshot_differences();
    found.extend(models.record_differences(zone));
    found.extend(models.usage_differences(zone));
    found.extend(models.order_differences());
    if let Some(cached) = cached {
        let state = pb::AccountState::decode(cached.state.as_slice())?;
        found.extend(models.cache_differences(cached.version, state));
    }
    Ok(found)
}

/// A `rm_daily_usage` row: day, API, calls, amount, free part, balance part, units (JSON).
type UsageRow = (NaiveDate, String, i64, i64, i64, i64, Option<String>);

/// One account in both models, read at one instant.
struct Models {
    write_version: i64,
    monthly_free: i64,
    ledger: Vec<LedgerRow>,
    snapshot: Option<store::RmAccount>,
    records: Vec<RecordRow>,
    /// `rm_daily_usage`: day, API, calls, amount, free part, balance part, units.
    usage: Vec<UsageRow>,
    read_orders: HashMap<String, String>,
    write_orders: HashMap<String, String>,
}

impl Models {
    /// Both models in MySQL as of one instant: the projection commits after the write side, so
    /// at any instant the read model is at or behind the write model, and its snapshot, records
    /// and usage counters (written in one transaction) agree with one another. `None` when the
    /// write model has no such account.
    async fn read(pool: &MySqlPool, user: &str) -> anyhow::Result<Option<Models>> {
        let mut connection = pool.acquire().await?;
        sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
            .execute(&mut *connection)
            .await?;
        let mut tx = connection
            .begin_with("START TRANSACTION WITH CONSISTENT SNAPSHOT, READ ONLY")
            .await?;
        let written: Option<(i64, i64)> =
            sqlx::query_as("SELECT version, monthly_free_micros FROM accounts WHERE user_id = ?")
                .bind(user)
                .fetch_optional(&mut *tx)
                .await?;
        let Some((write_version, monthly_free)) = written else {
            return Ok(None);
        };
        let sql = format!(
            "SELECT {LEDGER_COLUMNS} FROM {LEDGER_FROM} WHERE l.user_id = ? ORDER BY l.version"
        );
        let records = format!("SELECT {RECORD_COLUMNS} FROM rm_records WHERE user_id = ?");
        let models = Models {
            write_version,
            monthly_free,
            ledger: sqlx::query_as(sqlx::AssertSqlSafe(sql))
                .bind(user)
                .fetch_all(&mut *tx)
                .await?,
            snapshot: store::load_account(&mut *tx, user).await?,
            records: sqlx::query_as(sqlx::AssertSqlSafe(records))
                .bind(user)
                .fetch_all(&mut *tx)
                .await?,
            usage: sqlx::query_as(
                "SELECT day, api_id, calls, amount_micros, free_micros, balance_micros, units \
                 FROM rm_daily_usage WHERE user_id = ?",
            )
            .bind(user)
            .fetch_all(&mut *tx)
            .await?,
            read_orders: orders(&mut tx, "rm_orders", user).await?,
            write_orders: orders(&mut tx, "recharge_orders", user).await?,
        };
        tx.rollback().await?;
        Ok(Some(models))
    }

    /// The state the ledger records right after `version`.
    fn state_at(&self, version: i64) -> Option<AccountAmounts> {
        self.ledger
            .iter()
            .find(|row| row.version == version)
            .map(LedgerRow::after)
    }

    fn read_version(&self) -> i64 {
        self.snapshot.as_ref().map_or(0, |s| s.version)
    }

    fn snapshot_differences(&self) -> Vec<String> {
        let write_version = self.write_version;
        let Some(s) = &self.snapshot else {
            return vec![format!(
                "no snapshot in the read model (write model at version {write_version})"
            )];
        };
        if s.version > write_version {
            return vec![format!(
                "snapshot at version {} is ahead of the write model ({write_version})",
                s.version
            )];
        }
        let mut found = Vec::new();
        let read = AccountAmounts {
            balance: s.balance_micros,
            period: s.period.clone(),
            granted: s.free_granted_micros,
            used: s.free_used_micros,
            free_held: s.free_held_micros,
            balance_held: s.balance_held_micros,
        };
        let recorded = self.state_at(s.version);
        if recorded.as_ref() != Some(&read) {
            found.push(format!(
                "snapshot at version {} is {read:?}, the ledger says {recorded:?}",
                s.version
            ));
        }
        if s.version == write_version && s.monthly_free_micros != self.monthly_free {
            found.push(format!(
                "monthly free amount {} differs from {}",
                s.monthly_free_micros, self.monthly_free
            ));
        }
        found
    }

    /// The records against the ledger's rows up to the snapshot's version.
    fn record_differences(&self, zone: BillingZone) -> Vec<String> {
        let read_version = self.read_version();
        let mut expected: BTreeMap<&str, RecordRow> = self
            .ledger
            .iter()
            .filter(|row| row.version <= read_version)
            .map(|row| (row.record_id.as_str(), record_of(row, zone).0))
            .collect();
        let mut found = Vec::new();
        for record in &self.records {
            match expected.remove(record.record_id.as_str()) {
                None => found.push(format!(
                    "record {} is not in the ledger up to version {read_version}",
                    record.record_id
                )),
                Some(want) if &want != record => found.push(format!(
                    "record {} is {record:?}, the ledger says {want:?}",
                    record.record_id
                )),
                Some(_) => {}
            }
        }
        found.extend(
            expected
                .keys()
                .map(|missing| format!("record {missing} is missing")),
        );
        found
    }

    /// The daily usage counters and units against the sums of the charges' records.
    fn usage_differences(&self, zone: BillingZone) -> Vec<String> {
        let mut sums: HashMap<(NaiveDate, String), UsageDelta> = HashMap::new();
        for record in self
            .records
            .iter()
            .filter(|r| RecordKind::Deduct.is(&r.kind))
        {
            let day = record.created_at.with_timezone(&zone.tz()).date_naive();
            sums.entry((day, record.api_id.clone().unwrap_or_default()))
                .or_default()
                .count(record);
        }
        let mut found = Vec::new();
        for (day, api_id, calls, amount, free, balance, units) in &self.usage {
            let Some(units) = UsageDelta::units_of(units.as_deref()) else {
                found.push(format!(
                    "usage of {day} {api_id:?}: units {units:?} do not read"
                ));
                continue;
            };
            let have = UsageDelta {
                calls: *calls,
                amount_micros: *amount,
                free_micros: *free,
                balance_micros: *balance,
                units,
            };
            match sums.remove(&(*day, api_id.clone())) {
                Some(want) if want == have => {}
                want => found.push(format!(
                    "usage of {day} {api_id:?} is {have:?}, its records make {want:?}"
                )),
            }
        }
        found.extend(sums.into_iter().map(|((day, api_id), want)| {
            format!("usage of {day} {api_id:?} is missing, its records make {want:?}")
        }));
        found
    }

    fn order_differences(&self) -> Vec<String> {
        let mut found = Vec::new();
        for (order_no, status) in &self.write_orders {
            match self.read_orders.get(order_no) {
                Some(read) if read == status => {}
                read => found.push(format!(
                    "order {order_no} is {read:?} in the read model, {status} in the write model"
                )),
            }
        }
        let unknown = self
            .read_orders
            .keys()
            .filter(|no| !self.write_orders.contains_key(*no));
        found.extend(unknown.map(|no| format!("order {no} is not in the write model")));
        found
    }

    /// Redis's snapshot (`state` at `version`) against the ledger.
    fn cache_differences(&self, version: i64, state: pb::AccountState) -> Option<String> {
        let read = AccountAmounts {
            balance: state.balance_micros,
            period: state.period,
            granted: state.free_granted_micros,
            used: state.free_used_micros,
            free_held: state.free_held_micros,
            balance_held: state.balance_held_micros,
        };
        let recorded = self.state_at(version);
        (version > self.write_version || recorded.as_ref() != Some(&read)).then(|| {
            format!("Redis snapshot at version {version} is {read:?}, the ledger says {recorded:?}")
        })
    }
}

/// A user's orders and their statuses in `table` (`rm_orders` or `recharge_orders`).
async fn orders(
    conn: &mut MySqlConnection,
    table: &'static str,
    user: &str,
) -> Result<HashMap<String, String>, sqlx::Error> {
    let sql = format!("SELECT order_no, status FROM {table} WHERE user_id = ?");
    let rows: Vec<(String, String)> = sqlx::query_as(sqlx::AssertSqlSafe(sql))
        .bind(user)
        .fetch_all(conn)
        .await?;
    Ok(rows.into_iter().collect())
}

/// Writes the account's snapshot from the write model, locking its read-model row (the
/// projection locks it first too, so the two never interleave on one account). `force` also
/// replaces a snapshot that claims a newer version.
pub async fn refresh_snapshot(
    conn: &mut MySqlConnection,
    user: &str,
    force: bool,
) -> Result<(), sqlx::Error> {
    let written: Option<store::RmAccount> = sqlx::query_as(
        "SELECT user_id, currency, balance_micros, period, free_granted_micros, free_used_micros, \
         free_held_micros, balance_held_micros, monthly_free_micros, version, updated_at \
         FROM accounts WHERE user_id = ?",
    )
    .bind(user)
    .fetch_optional(&mut *conn)
    .await?;
    if force {
        // Replaces whatever is there; a snapshot of an account the write model does not have
        // is only removed.
        sqlx::query("DELETE FROM rm_accounts WHERE user_id = ?")
            .bind(user)
            .execute(&mut *conn)
            .await?;
    }
    let Some(account) = written else {
        return Ok(());
    };
    writes::upsert_account(conn, &account.borrowed()).await
}

/// Rewrites one account's read model from the write model, in one transaction that holds the
/// account's read-model row, then drops its Redis snapshot (the next event writes it again).
async fn repair(
    pool: &MySqlPool,
    cache: Option<&SnapshotCache>,
    zone: BillingZone,
    user: &str,
) -> anyhow::Result<()> {
    let mut tx = pool.begin().await?;
    refresh_snapshot(&mut tx, user, true).await?;
    for table in ["rm_records", "rm_daily_usage", "rm_orders"] {
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "DELETE FROM {table} WHERE user_id = ?"
        )))
        .bind(user)
        .execute(&mut *tx)
        .await?;
    }
    let sql = format!(
        "SELECT {LEDGER_COLUMNS} FROM {LEDGER_FROM} WHERE l.user_id = ? ORDER BY l.version"
    );
    let ledger: Vec<LedgerRow> = sqlx::query_as(sqlx::AssertSqlSafe(sql))
        .bind(user)
        .fetch_all(&mut *tx)
        .await?;
    for row in &ledger {
        let (record, usage) = record_of(row, zone);
        writes::insert_record(&mut tx, &record, usage.as_ref()).await?;
    }
    let orders: Vec<OrderSource> = sqlx::query_as(
        "SELECT order_no, user_id, amount_micros, channel, status, provider_txn_id, created_at, \
         expires_at, paid_at FROM recharge_orders WHERE user_id = ?",
    )
    .bind(user)
    .fetch_all(&mut *tx)
    .await?;
    for order in &orders {
        writes::upsert_order(&mut tx, &order.row()?).await?;
    }
    tx.commit().await?;
    if let Some(cache) = cache {
        cache.remove(user).await;
    }
    Ok(())
}
