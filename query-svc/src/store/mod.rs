//! The read model's tables in MySQL (`rm_` prefix), in the same database as the command side's
//! tables, which query-svc never reads (the operators' rebuild and reconcile in billing-ops do).
//!
//! - [`projection`]: the writes of the projection: version-guarded snapshots, records inserted
//!   only if absent with their usage counters, orders that never move back.
//! - [`queries`]: what the REST API reads.

pub mod projection;
pub mod queries;

use std::time::Duration;

use chrono::{DateTime, Utc};
use shared::{account::AccountSnapshot, config::DatabaseSettings, money::Micros};
use sqlx::{AssertSqlSafe, MySqlExecutor, MySqlPool};

#[derive(Clone)]
pub struct ReadStore {
    pool: MySqlPool,
}

/// The columns of an account snapshot in `rm_accounts`, in the order the writes bind them.
pub(crate) const ACCOUNT_COLUMNS: &str = "user_id, currency, balance_micros, period, \
    free_granted_micros, free_used_micros, free_held_micros, balance_held_micros, \
    monthly_free_micros, version, updated_at";

/// An account snapshot as `rm_accounts` holds it: its text owned when read ([`RmAccount`]),
/// borrowed from the event when written ([`projection::SnapshotRow`]).
#[derive(Clone, Debug, PartialEq, Eq, sqlx::FromRow)]
pub struct AccountRow<Text> {
    pub user_id: Text,
    pub currency: Text,
    pub balance_micros: i64,
    pub period: Text,
    pub free_granted_micros: i64,
    pub free_used_micros: i64,
    pub free_held_micros: i64,
    pub balance_held_micros: i64,
    pub monthly_free_micros: i64,
    pub version: i64,
    pub updated_at: DateTime<Utc>,
}

/// An account snapshot as the read model holds it.
pub type RmAccount = AccountRow<String>;

impl RmAccount {
    /// The same row, borrowed, as the projection's writes take it.
    pub fn borrowed(&self) -> AccountRow<&str> {
        AccountRow {
            user_id: &self.user_id,
            currency: &self.currency,
            balance_micros: self.balance_micros,
            period: &self.period,
            free_granted_micros: self.free_granted_micros,
            free_used_micros: self.free_used_micros,
            free_held_micros: self.free_held_micros,
            balance_held_micros: self.balance_held_micros,
            monthly_free_micros: self.monthly_free_micros,
            version: self.version,
            updated_at: self.updated_at,
        }
    }

    /// The snapshot for [`shared::account::view_at`]; `None` if the stored period is corrupt.
    pub fn snapshot(&self) -> Option<AccountSnapshot> {
        Some(AccountSnapshot {
            balance: Micros::new(self.balance_micros),
            period: self.period.parse().ok()?,
            free_granted: Micros::new(self.free_granted_micros),
            free_used: Micros::new(self.free_used_micros),
            free_held: Micros::new(self.free_held_micros),
            balance_held: Micros::new(self.balance_held_micros),
            monthly_free: Micros::new(self.monthly_free_micros),
            version: self.version,
        })
    }
}

/// The columns of a record in `rm_records`, in the order the writes bind them.
pub const RECORD_COLUMNS: &str = "record_id, user_id, version, type, amount_micros, \
    free_micros, balance_micros, balance_after_micros, free_remaining_after_micros, api_id, \
    request_id, order_no, period, created_at, usage_units, price_list, price_version";

/// A record as `rm_records` holds it: written by the projection, read by the REST API.
#[derive(Clone, Debug, PartialEq, Eq, sqlx::FromRow)]
pub struct RecordRow {
    pub record_id: String,
    pub user_id: String,
    pub version: i64,
    #[sqlx(rename = "type")]
    pub kind: String,
    pub amount_micros: i64,
    pub free_micros: i64,
    pub balance_micros: i64,
    pub balance_after_micros: i64,
    pub free_remaining_after_micros: i64,
    pub api_id: Option<String>,
    pub request_id: Option<String>,
    pub order_no: Option<String>,
    pub period: String,
    pub created_at: DateTime<Utc>,
    /// A priced charge's (or hold's) usage, as `shared::pricing::Usage::to_json` writes it, and
    /// the list and version that priced it.
    pub usage_units: Option<String>,
    pub price_list: Option<String>,
    pub price_version: Option<i64>,
}

impl ReadStore {
    pub fn connect_lazy(settings: &DatabaseSettings) -> Result<ReadStore, sqlx::Error> {
        Ok(ReadStore {
            pool: shared::db::connect_lazy(settings)?,
        })
    }

    pub fn pool(&self) -> &MySqlPool {
        &self.pool
    }

    pub async fn migrate(&self, patience: Duration) -> anyhow::Result<()> {
        Ok(shared::db::migrate(&self.pool, patience).await?)
    }

    /// Ready to serve: MySQL answers and the read model's tables exist at this build's schema.
    pub async fn is_ready(&self) -> bool {
        shared::db::schema_ready(&self.pool).await
    }
}

/// The read model's snapshot of one account, if any event reached it.
pub async fn load_account<'e>(
    executor: impl MySqlExecutor<'e>,
    user_id: &str,
) -> Result<Option<RmAccount>, sqlx::Error> {
    let sql = format!("SELECT {ACCOUNT_COLUMNS} FROM rm_accounts WHERE user_id = ?");
    sqlx::query_as(AssertSqlSafe(sql))
        .bind(user_id)
        .fetch_optional(executor)
        .await
}
