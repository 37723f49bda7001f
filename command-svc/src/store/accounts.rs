//! The `accounts` table: one row per account ever written, locked first by every command.

use chrono::{DateTime, Utc};
use shared::{
    account::AccountSnapshot, ids::UserId, limits::Counter, money::Micros, period::Period,
};
use sqlx::MySqlExecutor;

use super::{StoreError, Tx, Writes};
use crate::events::Terms;

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct AccountRow {
    pub user_id: UserId,
    pub currency: String,
    pub balance_micros: i64,
    pub period: String,
    pub free_granted_micros: i64,
    pub free_used_micros: i64,
    pub free_held_micros: i64,
    pub balance_held_micros: i64,
    pub monthly_free_micros: i64,
    pub version: i64,
    pub updated_at: DateTime<Utc>,
    /// The user's own `balance_low` threshold (`alert_settings`), if they set one.
    pub low_balance_threshold_micros: Option<i64>,
    /// The list that prices the account's usage; `None`: the default list.
    pub price_list: Option<String>,
    /// The account's spend limits with their counters (`None`: it has none); see
    /// [`super::limits::counters_of`].
    pub spend_counters: Option<String>,
}

impl AccountRow {
    pub fn terms(&self) -> Terms<'_> {
        Terms {
            currency: &self.currency,
            price_list: self.price_list.as_deref(),
        }
    }

    pub fn snapshot(&self) -> Result<AccountSnapshot, StoreError> {
        Ok(AccountSnapshot {
            balance: Micros::new(self.balance_micros),
            period: parse_period(&self.period)?,
            free_granted: Micros::new(self.free_granted_micros),
            free_used: Micros::new(self.free_used_micros),
            free_held: Micros::new(self.free_held_micros),
            balance_held: Micros::new(self.balance_held_micros),
            monthly_free: Micros::new(self.monthly_free_micros),
            version: self.version,
        })
    }

    /// The account's spend limits with their counters; `None` when it has none.
    pub fn counters(&self) -> Result<Option<Vec<Counter>>, StoreError> {
        self.spend_counters
            .as_deref()
            .map(super::limits::counters_of)
            .transpose()
    }
}

/// An account's row as a transaction writes it: its state and its limits' counters.
#[derive(Debug)]
pub struct AccountWrite<'a> {
    pub user_id: &'a UserId,
    pub currency: &'a str,
    pub state: AccountSnapshot,
    /// The `spend_counters` column ([`super::limits::counters_column`]).
    pub counters: Option<String>,
}

/// A period column that does not parse is a corrupt row, never the caller's fault.
pub fn parse_period(text: &str) -> Result<Period, StoreError> {
    text.parse().map_err(|e: shared::period::PeriodError| {
        StoreError::internal(sqlx::Error::Decode(e.into()))
    })
}

/// The columns of [`AccountRow`] and the tables they come from, for every SELECT of an account:
/// the account and, beside it, the user's alert threshold (locked with it by `FOR UPDATE`, so
/// a change and the threshold it is compared with are read together).
macro_rules! account_columns {
    () => {
        "a.user_id, a.currency, a.balance_micros, a.period, a.free_granted_micros, \
         a.free_used_micros, a.free_held_micros, a.balance_held_micros, a.monthly_free_micros, \
         a.version, a.updated_at, a.price_list, a.spend_counters, \
         s.low_balance_threshold_micros \
         FROM accounts a LEFT JOIN alert_settings s ON s.user_id = a.user_id"
    };
}

/// Locks the account row for the rest of the transaction; `None` when it does not exist yet
/// (at READ COMMITTED that takes no gap lock, so a concurrent creation cannot deadlock on it).
pub async fn lock_account(tx: &mut Tx, user_id: &UserId) -> Result<Option<AccountRow>, StoreError> {
    const SQL: &str = concat!(
        "SELECT ",
        account_columns!(),
        " WHERE a.user_id = ? FOR UPDATE"
    );
    Ok(sqlx::query_as(SQL)
        .bind(user_id)
        .fetch_optional(&mut **tx)
        .await?)
}

/// Reads the committed state without locking: the authoritative read of GetAccount and CheckQuota.
pub async fn load_account<'e>(
    executor: impl MySqlExecutor<'e>,
    user_id: &UserId,
) -> Result<Option<AccountRow>, StoreError> {
    const SQL: &str = concat!("SELECT ", account_columns!(), " WHERE a.user_id = ?");
    Ok(sqlx::query_as(SQL)
        .bind(user_id)
        .fetch_optional(executor)
        .await?)
}

/// The ids of up to `limit` accounts after `after`, in key order: a full scan, page by page.
pub async fn account_ids_after<'e>(
    executor: impl MySqlExecutor<'e>,
    after: Option<&UserId>,
    limit: u32,
) -> Result<Vec<UserId>, StoreError> {
    const SQL: &str = "SELECT user_id FROM accounts WHERE user_id > ? ORDER BY user_id LIMIT ?";
    let after = after.map_or("", UserId::as_str);
    Ok(sqlx::query_scalar(SQL)
        .bind(after)
        .bind(limit)
        .fetch_all(executor)
        .await?)
}

/// The ids of the accounts created at or after `since` (by `accounts_created_at`).
pub async fn accounts_created_since<'e>(
    executor: impl MySqlExecutor<'e>,
    since: DateTime<Utc>,
) -> Result<Vec<UserId>, StoreError> {
    const SQL: &str = "SELECT user_id FROM accounts WHERE created_at >= ?";
    Ok(sqlx::query_scalar(SQL)
        .bind(since)
        .fetch_all(executor)
        .await?)
}

type Query<'q> = sqlx::query::Query<'q, sqlx::MySql, sqlx::mysql::MySqlArguments>;

/// Binds the state's columns, in the order every statement here lists them: balance, period,
/// free granted, used and held, balance held, monthly free, version.
fn bind_state<'q>(query: Query<'q>, state: &AccountSnapshot) -> Query<'q> {
    query
        .bind(state.balance.get())
        .bind(state.period.to_string())
        .bind(state.free_granted.get())
        .bind(state.free_used.get())
        .bind(state.free_held.get())
        .bind(state.balance_held.get())
        .bind(state.monthly_free.get())
        .bind(state.version)
}

/// Inserts a new account already in `state`. A concurrent creation of the same account makes this
/// fail with a duplicate key, a conflict: the command is run again and finds the row.
pub async fn create_account(
    tx: &mut Tx,
    account: &AccountWrite<'_>,
    price_list: Option<&str>,
    now: DateTime<Utc>,
) -> Result<(), StoreError> {
    let insert = sqlx::query(
        "INSERT INTO accounts (user_id, currency, price_list, balance_micros, period, \
         free_granted_micros, free_used_micros, free_held_micros, balance_held_micros, \
         monthly_free_micros, version, spend_limited, spend_counters, created_at, updated_at) \
         VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
    )
    .bind(account.user_id)
    .bind(account.currency)
    .bind(price_list);
    bind_state(insert, &account.state)
        .bind(account.counters.is_some())
        .bind(account.counters.as_deref())
        .bind(now)
        .bind(now)
        .execute(&mut **tx)
        .await?;
    Ok(())
}

/// Writes the state the command decided. The version guard is a second line of defence behind
/// the row lock: a write based on a stale read fails instead of overwriting.
pub async fn save_account(
    tx: &mut Tx,
    account: &AccountWrite<'_>,
    from_version: i64,
    now: DateTime<Utc>,
) -> Result<(), StoreError> {
    let user_id = account.user_id;
    let update = sqlx::query(
        "UPDATE accounts SET balance_micros = ?, period = ?, free_granted_micros = ?, \
         free_used_micros = ?, free_held_micros = ?, balance_held_micros = ?, \
         monthly_free_micros = ?, version = ?, spend_limited = ?, spend_counters = ?, \
         updated_at = ? WHERE user_id = ? AND version = ?",
    );
    let result = bind_state(update, &account.state)
        .bind(account.counters.is_some())
        .bind(account.counters.as_deref())
        .bind(now)
        .bind(user_id)
        .bind(from_version)
        .execute(&mut **tx)
        .await?;
    if result.rows_affected() == 1 {
        Ok(())
    } else {
        Err(StoreError::internal(sqlx::Error::Protocol(format!(
            "account {user_id} is no longer at version {from_version}"
        ))))
    }
}

/// Locks the next `limit` accounts after `after` (and up to `until`, when given) in primary-key
/// order, the order every command that locks several accounts takes them in, so two such
/// commands never deadlock.
pub async fn lock_accounts_between(
    tx: &mut Tx,
    after: &str,
    until: Option<&str>,
    limit: u32,
) -> Result<Vec<AccountRow>, StoreError> {
    const SQL: &str = concat!(
        "SELECT ",
        account_columns!(),
        " WHERE a.user_id > ? AND (? IS NULL OR a.user_id <= ?) ORDER BY a.user_id LIMIT ? FOR UPDATE"
    );
    Ok(sqlx::query_as(SQL)
        .bind(after)
        .bind(until)
        .bind(until)
        .bind(limit)
        .fetch_all(&mut **tx)
        .await?)
}

/// Locks these accounts (those that exist) in primary-key order.
pub async fn lock_accounts(
    tx: &mut Tx,
    user_ids: &[&UserId],
) -> Result<Vec<AccountRow>, StoreError> {
    if user_ids.is_empty() {
        return Ok(Vec::new());
    }
    let mut select = sqlx::QueryBuilder::new(concat!(
        "SELECT ",
        account_columns!(),
        " WHERE a.user_id IN ("
    ));
    let mut ids = select.separated(", ");
    for user_id in shared::db::padded(user_ids) {
        ids.push_bind(user_id);
    }
    select.push(") ORDER BY a.user_id FOR UPDATE");
    Ok(select.build_query_as().fetch_all(&mut **tx).await?)
}

impl Writes {
    /// New accounts in their first state. A concurrent creation of one of them is a duplicate
    /// key, a conflict: the whole transaction is run again and finds it.
    pub fn create_accounts(
        &mut self,
        accounts: &[AccountWrite<'_>],
        now: DateTime<Utc>,
    ) -> &mut Self {
        self.accounts(accounts, now, "")
    }

    /// The states of accounts this transaction has locked.
    pub fn save_accounts(
        &mut self,
        accounts: &[AccountWrite<'_>],
        now: DateTime<Utc>,
    ) -> &mut Self {
        // Every row exists and is locked: the insert half never applies, the update half does.
        self.accounts(
            accounts,
            now,
            " ON DUPLICATE KEY UPDATE balance_micros = VALUES(balance_micros), \
             period = VALUES(period), free_granted_micros = VALUES(free_granted_micros), \
             free_used_micros = VALUES(free_used_micros), \
             free_held_micros = VALUES(free_held_micros), \
             balance_held_micros = VALUES(balance_held_micros), \
             monthly_free_micros = VALUES(monthly_free_micros), version = VALUES(version), \
             spend_limited = VALUES(spend_limited), spend_counters = VALUES(spend_counters), \
             updated_at = VALUES(updated_at)",
        )
    }

    fn accounts(
        &mut self,
        accounts: &[AccountWrite<'_>],
        now: DateTime<Utc>,
        tail: &'static str,
    ) -> &mut Self {
        self.script.insert(
            "INSERT INTO accounts (user_id, currency, balance_micros, period, free_granted_micros, \
             free_used_micros, free_held_micros, balance_held_micros, monthly_free_micros, \
             version, spend_limited, spend_counters, created_at, updated_at) ",
            accounts,
            tail,
            |row, account| {
                let state = &account.state;
                row.text(account.user_id.as_str())
                    .text(account.currency)
                    .int(state.balance.get())
                    .text(&state.period.to_string())
                    .int(state.free_granted.get())
                    .int(state.free_used.get())
                    .int(state.free_held.get())
                    .int(state.balance_held.get())
                    .int(state.monthly_free.get())
                    .int(state.version)
                    .int(i64::from(account.counters.is_some()))
                    .opt_text(account.counters.as_deref())
                    .instant(now)
                    .instant(now);
            },
        );
        self
    }
}
