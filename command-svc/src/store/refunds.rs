//! `refunds`: one row per refund of a charge, beside its `refund` ledger row. Its unique key
//! `(user_id, refund_id)` makes a refund apply once; the rows of one charge, summed, say what is
//! left to refund of it. Every read here runs under the account's row lock, which every refund
//! of the account takes first.

use chrono::{DateTime, Utc};
use shared::{account::Refundable, ids::UserId, money::Micros};

use super::{LedgerRow, StoreError, Tx};

/// A refund as stored.
#[derive(Clone, Debug, sqlx::FromRow)]
pub struct RefundRow {
    pub record_id: String,
    pub charge_record_id: String,
    pub amount_micros: i64,
    pub balance_micros: i64,
    pub free_micros: i64,
    pub free_forfeited_micros: i64,
}

/// The refund recorded under `(user_id, refund_id)`, if any.
pub async fn find_refund(
    tx: &mut Tx,
    user_id: &UserId,
    refund_id: &str,
) -> Result<Option<RefundRow>, StoreError> {
    Ok(sqlx::query_as(
        "SELECT record_id, charge_record_id, amount_micros, balance_micros, free_micros, \
         free_forfeited_micros FROM refunds WHERE user_id = ? AND refund_id = ?",
    )
    .bind(user_id)
    .bind(refund_id)
    .fetch_optional(&mut **tx)
    .await?)
}

/// What is left to refund of `charge`: its parts less the parts of its refunds so far.
pub async fn refundable(tx: &mut Tx, charge: &LedgerRow) -> Result<Refundable, StoreError> {
    let (balance, free): (i64, i64) = sqlx::query_as(
        "SELECT CAST(COALESCE(SUM(balance_micros), 0) AS SIGNED), \
         CAST(COALESCE(SUM(free_micros + free_forfeited_micros), 0) AS SIGNED) \
         FROM refunds WHERE charge_record_id = ?",
    )
    .bind(&charge.record_id)
    .fetch_one(&mut **tx)
    .await?;
    Ok(Refundable {
        balance: Micros::new(charge.balance_micros - balance),
        free: Micros::new(charge.free_micros - free),
    })
}

/// A refund about to be stored.
pub struct NewRefund<'a> {
    pub record_id: &'a str,
    pub user_id: &'a UserId,
    pub refund_id: &'a str,
    pub charge_record_id: &'a str,
    pub amount: Micros,
    pub split: shared::account::RefundSplit,
    pub reason: &'a str,
}

pub async fn insert_refund(
    tx: &mut Tx,
    refund: &NewRefund<'_>,
    now: DateTime<Utc>,
) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO refunds (record_id, user_id, refund_id, charge_record_id, amount_micros, \
         balance_micros, free_micros, free_forfeited_micros, reason, created_at) \
         VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
    )
    .bind(refund.record_id)
    .bind(refund.user_id)
    .bind(refund.refund_id)
    .bind(refund.charge_record_id)
    .bind(refund.amount.get())
    .bind(refund.split.balance.get())
    .bind(refund.split.free.get())
    .bind(refund.split.forfeited.get())
    .bind(refund.reason)
    .bind(now)
    .execute(&mut **tx)
    .await?;
    Ok(())
}
