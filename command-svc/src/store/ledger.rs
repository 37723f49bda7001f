//! The append-only `ledger`: one row per change of an account's state.

use chrono::{DateTime, Utc};
use shared::{account::AccountSnapshot, money::Micros};
use sqlx::MySqlExecutor;

use super::{StoreError, Tx};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RecordKind {
    Deduct,
    Recharge,
    FreeGrant,
    Adjust,
}

impl RecordKind {
    /// The stored and published name, also the `type` of a REST record.
    pub fn as_str(self) -> &'static str {
        match self {
            RecordKind::Deduct => "deduct",
            RecordKind::Recharge => "recharge",
            RecordKind::FreeGrant => "free_grant",
            RecordKind::Adjust => "adjust",
        }
    }
}

/// The references a row may carry, depending on its kind.
#[derive(Clone, Copy, Debug, Default)]
pub struct Refs<'a> {
    pub request_id: Option<&'a str>,
    pub api_id: Option<&'a str>,
    pub description: Option<&'a str>,
    pub order_no: Option<&'a str>,
    pub provider_txn_id: Option<&'a str>,
    pub adjustment_id: Option<&'a str>,
    pub reason: Option<&'a str>,
    pub actor: Option<&'a str>,
}

/// A row about to be appended: the change, its split, and the state before and after it.
#[derive(Clone, Debug)]
pub struct LedgerEntry<'a> {
    pub record_id: &'a str,
    pub user_id: &'a str,
    pub kind: RecordKind,
    /// A magnitude, except for adjustments (signed: + credit, - debit).
    pub amount: Micros,
    pub free: Micros,
    pub balance: Micros,
    pub before: AccountSnapshot,
    pub after: AccountSnapshot,
    pub refs: Refs<'a>,
    pub created_at: DateTime<Utc>,
}

pub async fn insert_entry(tx: &mut Tx, entry: &LedgerEntry<'_>) -> Result<(), StoreError> {
    let LedgerEntry {
        before,
        after,
        refs,
        ..
    } = entry;
    sqlx::query(
        "INSERT INTO ledger (record_id, user_id, version, kind, amount_micros, free_micros, \
         balance_micros, period, period_before, balance_before_micros, balance_after_micros, \
         free_granted_before_micros, free_granted_after_micros, free_used_before_micros, \
         free_used_after_micros, request_id, api_id, description, order_no, provider_txn_id, \
         adjustment_id, reason, actor, created_at) \
         VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
    )
    .bind(entry.record_id)
    .bind(entry.user_id)
    .bind(after.version)
    .bind(entry.kind.as_str())
    .bind(entry.amount.get())
    .bind(entry.free.get())
    .bind(entry.balance.get())
    .bind(after.period.to_string())
    .bind(before.period.to_string())
    .bind(before.balance.get())
    .bind(after.balance.get())
    .bind(before.free_granted.get())
    .bind(after.free_granted.get())
    .bind(before.free_used.get())
    .bind(after.free_used.get())
    .bind(refs.request_id)
    .bind(refs.api_id)
    .bind(refs.description)
    .bind(refs.order_no)
    .bind(refs.provider_txn_id)
    .bind(refs.adjustment_id)
    .bind(refs.reason)
    .bind(refs.actor)
    .bind(entry.created_at)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// A stored row, as idempotent replays need it back.
#[derive(Clone, Debug, sqlx::FromRow)]
pub struct LedgerRecord {
    pub record_id: String,
    pub user_id: String,
    pub version: i64,
    pub kind: String,
    pub amount_micros: i64,
    pub free_micros: i64,
    pub balance_micros: i64,
    pub period: String,
    pub balance_after_micros: i64,
    pub free_granted_after_micros: i64,
    pub free_used_after_micros: i64,
    pub api_id: Option<String>,
    pub request_id: Option<String>,
    pub order_no: Option<String>,
    pub created_at: DateTime<Utc>,
}

impl LedgerRecord {
    /// The account right after this row, given what the row does not hold.
    pub fn state_after(&self, monthly_free: Micros) -> Result<AccountSnapshot, StoreError> {
        Ok(AccountSnapshot {
            balance: Micros::new(self.balance_after_micros),
            period: super::accounts::parse_period(&self.period)?,
            free_granted: Micros::new(self.free_granted_after_micros),
            free_used: Micros::new(self.free_used_after_micros),
            monthly_free,
            version: self.version,
        })
    }
}

macro_rules! record_columns {
    () => {
        "record_id, user_id, version, kind, amount_micros, free_micros, balance_micros, period, \
         balance_after_micros, free_granted_after_micros, free_used_after_micros, api_id, \
         request_id, order_no, created_at"
    };
}

/// The charge already recorded under `(user_id, request_id)`, if any.
pub async fn find_charge(
    tx: &mut Tx,
    user_id: &str,
    request_id: &str,
) -> Result<Option<LedgerRecord>, StoreError> {
    const SQL: &str = concat!(
        "SELECT ",
        record_columns!(),
        " FROM ledger WHERE user_id = ? AND request_id = ?"
    );
    Ok(sqlx::query_as(SQL)
        .bind(user_id)
        .bind(request_id)
        .fetch_optional(&mut **tx)
        .await?)
}

/// The adjustment already recorded under `(user_id, adjustment_id)`, if any.
pub async fn find_adjustment(
    tx: &mut Tx,
    user_id: &str,
    adjustment_id: &str,
) -> Result<Option<LedgerRecord>, StoreError> {
    const SQL: &str = concat!(
        "SELECT ",
        record_columns!(),
        " FROM ledger WHERE user_id = ? AND adjustment_id = ?"
    );
    Ok(sqlx::query_as(SQL)
        .bind(user_id)
        .bind(adjustment_id)
        .fetch_optional(&mut **tx)
        .await?)
}

/// The recharge that a provider transaction already credited, if any.
pub async fn find_credit_by_txn<'e>(
    executor: impl MySqlExecutor<'e>,
    provider_txn_id: &str,
) -> Result<Option<LedgerRecord>, StoreError> {
    const SQL: &str = concat!(
        "SELECT ",
        record_columns!(),
        " FROM ledger WHERE provider_txn_id = ?"
    );
    Ok(sqlx::query_as(SQL)
        .bind(provider_txn_id)
        .fetch_optional(executor)
        .await?)
}

/// Appends many rows with one statement (the monthly reset, a batch of charges). Rows are written
/// in the order given.
pub async fn insert_entries(tx: &mut Tx, entries: &[LedgerEntry<'_>]) -> Result<(), StoreError> {
    if entries.is_empty() {
        return Ok(());
    }
    for chunk in shared::db::pow2_chunks(entries) {
        let mut insert = sqlx::QueryBuilder::new(
            "INSERT INTO ledger (record_id, user_id, version, kind, amount_micros, free_micros, \
             balance_micros, period, period_before, balance_before_micros, balance_after_micros, \
             free_granted_before_micros, free_granted_after_micros, free_used_before_micros, \
             free_used_after_micros, request_id, api_id, description, order_no, provider_txn_id, \
             adjustment_id, reason, actor, created_at) ",
        );
        insert.push_values(chunk, |mut row, entry| {
            let LedgerEntry {
                before,
                after,
                refs,
                ..
            } = entry;
            row.push_bind(entry.record_id)
                .push_bind(entry.user_id)
                .push_bind(after.version)
                .push_bind(entry.kind.as_str())
                .push_bind(entry.amount.get())
                .push_bind(entry.free.get())
                .push_bind(entry.balance.get())
                .push_bind(after.period.to_string())
                .push_bind(before.period.to_string())
                .push_bind(before.balance.get())
                .push_bind(after.balance.get())
                .push_bind(before.free_granted.get())
                .push_bind(after.free_granted.get())
                .push_bind(before.free_used.get())
                .push_bind(after.free_used.get())
                .push_bind(refs.request_id)
                .push_bind(refs.api_id)
                .push_bind(refs.description)
                .push_bind(refs.order_no)
                .push_bind(refs.provider_txn_id)
                .push_bind(refs.adjustment_id)
                .push_bind(refs.reason)
                .push_bind(refs.actor)
                .push_bind(entry.created_at);
        });
        insert.build().execute(&mut **tx).await?;
    }
    Ok(())
}

/// The charges already recorded for any of these `(user_id, request_id)` keys, with one query
/// for a whole batch (a row-constructor `IN`, one index probe per key).
pub async fn find_charges(
    tx: &mut Tx,
    keys: &[(&str, &str)],
) -> Result<Vec<LedgerRecord>, StoreError> {
    if keys.is_empty() {
        return Ok(Vec::new());
    }
    let mut select = sqlx::QueryBuilder::new(concat!(
        "SELECT ",
        record_columns!(),
        " FROM ledger WHERE (user_id, request_id) IN ("
    ));
    let mut pairs = select.separated(", ");
    for (user_id, request_id) in shared::db::padded(keys) {
        pairs.push("(");
        pairs.push_bind_unseparated(user_id);
        pairs.push_unseparated(", ");
        pairs.push_bind_unseparated(request_id);
        pairs.push_unseparated(")");
    }
    select.push(")");
    Ok(select.build_query_as().fetch_all(&mut **tx).await?)
}
