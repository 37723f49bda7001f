//! Recharge orders and the payments that could not be applied to one.

use chrono::{DateTime, Utc};
use sqlx::MySqlExecutor;

use super::{StoreError, Tx};
use shared::{ids::UserId, order::OrderStatus};

#[derive(Clone, Debug, sqlx::FromRow)]
pub struct OrderRow {
    pub order_no: String,
    pub user_id: UserId,
    pub amount_micros: i64,
    pub channel: String,
    pub status: String,
    pub idempotency_key: Option<String>,
    pub provider_txn_id: Option<String>,
    pub created_at: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
    pub paid_at: Option<DateTime<Utc>>,
}

impl OrderRow {
    pub fn status(&self) -> Result<OrderStatus, StoreError> {
        OrderStatus::parse(&self.status).ok_or_else(|| {
            StoreError::internal(sqlx::Error::Decode(
                format!("unknown order status {:?}", self.status).into(),
            ))
        })
    }
}

macro_rules! order_columns {
    () => {
        "order_no, user_id, amount_micros, channel, status, idempotency_key, provider_txn_id, \
         created_at, expires_at, paid_at"
    };
}

pub async fn insert_order(tx: &mut Tx, order: &OrderRow) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO recharge_orders (order_no, user_id, amount_micros, channel, status, \
         idempotency_key, provider_txn_id, created_at, expires_at, paid_at, updated_at) \
         VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
    )
    .bind(&order.order_no)
    .bind(&order.user_id)
    .bind(order.amount_micros)
    .bind(&order.channel)
    .bind(&order.status)
    .bind(&order.idempotency_key)
    .bind(&order.provider_txn_id)
    .bind(order.created_at)
    .bind(order.expires_at)
    .bind(order.paid_at)
    .bind(order.created_at)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

pub async fn find_order<'e>(
    executor: impl MySqlExecutor<'e>,
    order_no: &str,
) -> Result<Option<OrderRow>, StoreError> {
    const SQL: &str = concat!(
        "SELECT ",
        order_columns!(),
        " FROM recharge_orders WHERE order_no = ?"
    );
    Ok(sqlx::query_as(SQL)
        .bind(order_no)
        .fetch_optional(executor)
        .await?)
}

/// Locks an order for a status change; taken after the account's lock, never before.
pub async fn lock_order(tx: &mut Tx, order_no: &str) -> Result<Option<OrderRow>, StoreError> {
    const SQL: &str = concat!(
        "SELECT ",
        order_columns!(),
        " FROM recharge_orders WHERE order_no = ? FOR UPDATE"
    );
    Ok(sqlx::query_as(SQL)
        .bind(order_no)
        .fetch_optional(&mut **tx)
        .await?)
}

/// The order a user already created with this idempotency key, if any.
pub async fn find_order_by_key(
    tx: &mut Tx,
    user_id: &UserId,
    idempotency_key: &str,
) -> Result<Option<OrderRow>, StoreError> {
    const SQL: &str = concat!(
        "SELECT ",
        order_columns!(),
        " FROM recharge_orders WHERE user_id = ? AND idempotency_key = ?"
    );
    Ok(sqlx::query_as(SQL)
        .bind(user_id)
        .bind(idempotency_key)
        .fetch_optional(&mut **tx)
        .await?)
}

pub async fn update_order_status(
    tx: &mut Tx,
    order_no: &str,
    status: OrderStatus,
    provider_txn_id: &str,
    paid_at: Option<DateTime<Utc>>,
    now: DateTime<Utc>,
) -> Result<(), StoreError> {
    sqlx::query(
        "UPDATE recharge_orders SET status = ?, provider_txn_id = ?, paid_at = ?, updated_at = ? \
         WHERE order_no = ?",
    )
    .bind(status.as_str())
    .bind(provider_txn_id)
    .bind(paid_at)
    .bind(now)
    .bind(order_no)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

#[derive(Clone, Debug, sqlx::FromRow)]
pub struct UnmatchedRow {
    pub unmatched_id: String,
    pub order_no: String,
    pub user_id: Option<String>,
    pub provider_txn_id: String,
    pub success: bool,
    pub paid_amount_micros: i64,
    pub why: String,
    /// The version of the order's account when the payment was stored (none for an unknown
    /// order): its ledger row gives a replay the account the first answer showed.
    pub account_version: Option<i64>,
    pub created_at: DateTime<Utc>,
}

/// Stores a payment that could not be applied. The same notification twice (provider
/// transaction, outcome, order and amount) is a duplicate key: a concurrent replay, retried and
/// then answered as one.
pub async fn insert_unmatched(tx: &mut Tx, row: &UnmatchedRow) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO unmatched_payments (unmatched_id, order_no, user_id, provider_txn_id, \
         success, paid_amount_micros, why, account_version, created_at) \
         VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
    )
    .bind(&row.unmatched_id)
    .bind(&row.order_no)
    .bind(&row.user_id)
    .bind(&row.provider_txn_id)
    .bind(row.success)
    .bind(row.paid_amount_micros)
    .bind(&row.why)
    .bind(row.account_version)
    .bind(row.created_at)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// The unmatched payment stored for this very notification (provider transaction, outcome,
/// order and amount), if any.
pub async fn find_unmatched<'e>(
    executor: impl MySqlExecutor<'e>,
    notification: &UnmatchedKey<'_>,
) -> Result<Option<UnmatchedRow>, StoreError> {
    Ok(sqlx::query_as(
        "SELECT unmatched_id, order_no, user_id, provider_txn_id, success, paid_amount_micros, \
         why, account_version, created_at FROM unmatched_payments \
         WHERE provider_txn_id = ? AND success = ? AND order_no = ? AND paid_amount_micros = ?",
    )
    .bind(notification.provider_txn_id)
    .bind(notification.success)
    .bind(notification.order_no)
    .bind(notification.paid_amount_micros)
    .fetch_optional(executor)
    .await?)
}

/// What makes two payment notifications one: a replay repeats all of it.
pub struct UnmatchedKey<'a> {
    pub provider_txn_id: &'a str,
    pub success: bool,
    pub order_no: &'a str,
    pub paid_amount_micros: i64,
}
