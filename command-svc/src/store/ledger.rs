//! The append-only `ledger`: one row per change of an account's state.

use chrono::{DateTime, Utc};
use shared::pricing::PricedBy;
use shared::{
    account::AccountSnapshot,
    ids::{RequestId, UserId},
    money::Micros,
};
use sqlx::MySqlExecutor;

use super::{StoreError, Tx, Writes};

pub use shared::record::{LedgerRow, RecordKind};

/// The references a row may carry, depending on its kind.
#[derive(Clone, Debug, Default)]
pub struct Refs {
    pub request_id: Option<String>,
    pub api_id: Option<String>,
    pub description: Option<String>,
    pub order_no: Option<String>,
    pub provider_txn_id: Option<String>,
    pub adjustment_id: Option<String>,
    pub reason: Option<String>,
    pub actor: Option<String>,
    /// The month whose free quota the row's free part belongs to, when it is not the row's
    /// period (a hold settled after its month ended).
    pub free_period: Option<String>,
    /// A priced charge's (or hold's) usage and the version that priced it.
    pub priced_by: Option<PricedBy>,
    /// The caller's API key of a charge or a hold, when it gave one.
    pub key_id: Option<String>,
}

/// The amounts of a row: `amount` the change as asked, `free` and `balance` its parts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Amounts {
    /// A magnitude, except for adjustments (signed: + credit, - debit).
    pub amount: Micros,
    pub free: Micros,
    pub balance: Micros,
}

impl Amounts {
    pub fn of(amount: Micros, free: Micros, balance: Micros) -> Amounts {
        Amounts {
            amount,
            free,
            balance,
        }
    }
}

/// A row about to be appended: the change, its split, and the state before and after it.
#[derive(Clone, Debug)]
pub struct LedgerEntry {
    pub record_id: String,
    pub user_id: UserId,
    pub kind: RecordKind,
    pub amounts: Amounts,
    pub before: AccountSnapshot,
    pub after: AccountSnapshot,
    pub refs: Refs,
    pub created_at: DateTime<Utc>,
}

/// The account right after `row`; `monthly_free` stands in for a row that does not hold it
/// (written before it was recorded).
pub fn state_after(row: &LedgerRow, monthly_free: Micros) -> Result<AccountSnapshot, StoreError> {
    let monthly_free = row
        .monthly_free_after_micros
        .map_or(monthly_free, Micros::new);
    Ok(AccountSnapshot {
        balance: Micros::new(row.balance_after_micros),
        period: super::accounts::parse_period(&row.period)?,
        free_granted: Micros::new(row.free_granted_after_micros),
        free_used: Micros::new(row.free_used_after_micros),
        free_held: Micros::new(row.free_held_after_micros),
        balance_held: Micros::new(row.balance_held_after_micros),
        monthly_free,
        version: row.version,
    })
}

macro_rules! record_columns {
    () => {
        "record_id, user_id, version, kind, amount_micros, free_micros, balance_micros, period, \
         balance_after_micros, free_granted_after_micros, free_used_after_micros, \
         free_held_after_micros, balance_held_after_micros, monthly_free_after_micros, \
         free_period, api_id, request_id, order_no, created_at, usage_units, price_list, \
         price_version, key_id"
    };
}

/// The charge already recorded under `(user_id, request_id)`, if any.
pub async fn find_charge(
    tx: &mut Tx,
    user_id: &UserId,
    request_id: &RequestId,
) -> Result<Option<LedgerRow>, StoreError> {
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

/// The ledger row with this record id, if it is `user_id`'s.
pub async fn find_record(
    tx: &mut Tx,
    user_id: &UserId,
    record_id: &str,
) -> Result<Option<LedgerRow>, StoreError> {
    const SQL: &str = concat!(
        "SELECT ",
        record_columns!(),
        " FROM ledger WHERE record_id = ? AND user_id = ?"
    );
    Ok(sqlx::query_as(SQL)
        .bind(record_id)
        .bind(user_id)
        .fetch_optional(&mut **tx)
        .await?)
}

/// `user_id`'s ledger row of `version`, if any.
pub async fn find_record_at_version(
    tx: &mut Tx,
    user_id: &UserId,
    version: i64,
) -> Result<Option<LedgerRow>, StoreError> {
    const SQL: &str = concat!(
        "SELECT ",
        record_columns!(),
        " FROM ledger WHERE user_id = ? AND version = ?"
    );
    Ok(sqlx::query_as(SQL)
        .bind(user_id)
        .bind(version)
        .fetch_optional(&mut **tx)
        .await?)
}

/// The adjustment already recorded under `(user_id, adjustment_id)`, if any.
pub async fn find_adjustment(
    tx: &mut Tx,
    user_id: &UserId,
    adjustment_id: &str,
) -> Result<Option<LedgerRow>, StoreError> {
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
) -> Result<Option<LedgerRow>, StoreError> {
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

impl Writes {
    /// Appends ledger rows, in the order given.
    pub fn entries(&mut self, entries: &[LedgerEntry]) -> &mut Self {
        self.script.insert(
            "INSERT INTO ledger (record_id, user_id, version, kind, amount_micros, free_micros, \
             balance_micros, period, period_before, free_period, balance_before_micros, \
             balance_after_micros, free_granted_before_micros, free_granted_after_micros, \
             free_used_before_micros, free_used_after_micros, free_held_before_micros, \
             free_held_after_micros, balance_held_before_micros, balance_held_after_micros, \
             monthly_free_after_micros, request_id, api_id, description, order_no, \
             provider_txn_id, adjustment_id, reason, actor, created_at, usage_units, \
             price_list, price_version, key_id) ",
            entries,
            "",
            |row, entry| {
                let LedgerEntry {
                    amounts,
                    before,
                    after,
                    refs,
                    ..
                } = entry;
                row.text(&entry.record_id)
                    .text(entry.user_id.as_str())
                    .int(after.version)
                    .text(entry.kind.as_str())
                    .int(amounts.amount.get())
                    .int(amounts.free.get())
                    .int(amounts.balance.get())
                    .text(&after.period.to_string())
                    .text(&before.period.to_string())
                    .opt_text(refs.free_period.as_deref())
                    .int(before.balance.get())
                    .int(after.balance.get())
                    .int(before.free_granted.get())
                    .int(after.free_granted.get())
                    .int(before.free_used.get())
                    .int(after.free_used.get())
                    .int(before.free_held.get())
                    .int(after.free_held.get())
                    .int(before.balance_held.get())
                    .int(after.balance_held.get())
                    .int(after.monthly_free.get())
                    .opt_text(refs.request_id.as_deref())
                    .opt_text(refs.api_id.as_deref())
                    .opt_text(refs.description.as_deref())
                    .opt_text(refs.order_no.as_deref())
                    .opt_text(refs.provider_txn_id.as_deref())
                    .opt_text(refs.adjustment_id.as_deref())
                    .opt_text(refs.reason.as_deref())
                    .opt_text(refs.actor.as_deref())
                    .instant(entry.created_at);
                let priced = refs.priced_by.as_ref();
                row.opt_text(priced.map(|p| p.usage.to_json()).as_deref())
                    .opt_text(priced.map(|p| p.list.as_str()))
                    .opt_int(priced.map(|p| p.version))
                    .opt_text(refs.key_id.as_deref());
            },
        );
        self
    }
}

/// The charges already recorded for any of these `(user_id, request_id)` keys, with one query
/// for a whole batch (a row-constructor `IN`, one index probe per key).
pub async fn find_charges(
    tx: &mut Tx,
    keys: &[(&str, &str)],
) -> Result<Vec<LedgerRow>, StoreError> {
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
