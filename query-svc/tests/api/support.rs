//! What the REST tests share: requests of any shape, and read-model rows seeded straight into the
//! test's database (and Redis), so the REST contract is tested apart from the projection.

use std::time::Duration;

use chrono::{DateTime, Utc};
use prost::Message;
use reqwest::{Method, StatusCode};
use serde_json::Value;
use shared::cache::{CachedSnapshot, SnapshotCache};
use shared::proto::v1 as pb;

use crate::helpers::{Stack, redis_url};

pub fn utc(text: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(text)
        .unwrap()
        .with_timezone(&Utc)
}

/// Any request; the status and the body, which must be JSON whatever the status.
pub async fn send(
    stack: &Stack,
    method: Method,
    path: &str,
    authorization: Option<&str>,
    content_type: Option<&str>,
    body: Option<String>,
) -> (StatusCode, Value) {
    let mut request = reqwest::Client::new().request(method, stack.url(path));
    if let Some(authorization) = authorization {
        request = request.header("authorization", authorization);
    }
    if let Some(content_type) = content_type {
        request = request.header("content-type", content_type);
    }
    if let Some(body) = body {
        request = request.body(body);
    }
    let response = request.send().await.unwrap();
    let status = response.status();
    let text = response.text().await.unwrap();
    let json = serde_json::from_str(&text)
        .unwrap_or_else(|_| panic!("every answer is JSON, got {status}: {text:?}"));
    (status, json)
}

/// A JSON POST with a user's token.
pub async fn post_json(
    stack: &Stack,
    path: &str,
    token: &str,
    body: &Value,
) -> (StatusCode, Value) {
    send(
        stack,
        Method::POST,
        path,
        Some(&format!("Bearer {token}")),
        Some("application/json"),
        Some(body.to_string()),
    )
    .await
}

/// The status, and the error code of an error body (the shape is checked on the way).
pub fn error_code(answer: &(StatusCode, Value)) -> (StatusCode, &str) {
    let (status, body) = answer;
    let code = body["error"]["code"]
        .as_str()
        .unwrap_or_else(|| panic!("an error body with a code, got {status}: {body}"));
    assert!(
        body["error"]["message"].is_string(),
        "an error body with a message, got {body}"
    );
    (*status, code)
}

pub struct AccountRow<'a> {
    pub user: &'a str,
    pub balance: i64,
    pub period: &'a str,
    pub granted: i64,
    pub used: i64,
    pub monthly: i64,
    pub version: i64,
    pub updated_at: DateTime<Utc>,
}

pub async fn seed_account(stack: &Stack, row: AccountRow<'_>) {
    sqlx::query(
        "INSERT INTO rm_accounts (user_id, currency, balance_micros, period, free_granted_micros, \
         free_used_micros, monthly_free_micros, version, updated_at) \
         VALUES (?, 'CNY', ?, ?, ?, ?, ?, ?, ?)",
    )
    .bind(row.user)
    .bind(row.balance)
    .bind(row.period)
    .bind(row.granted)
    .bind(row.used)
    .bind(row.monthly)
    .bind(row.version)
    .bind(row.updated_at)
    .execute(&stack.db)
    .await
    .unwrap();
}

/// Writes `state` into the stack's Redis as the projection would.
pub async fn put_snapshot(stack: &Stack, state: &pb::AccountState, updated_at: DateTime<Utc>) {
    let cache = SnapshotCache::new(
        &redis_url(),
        &stack.settings.redis.key_prefix,
        Duration::from_secs(600),
    )
    .unwrap();
    let written = cache
        .put_if_newer(
            &state.user_id,
            &CachedSnapshot {
                version: state.version,
                state: state.encode_to_vec(),
                updated_at_ms: updated_at.timestamp_millis(),
            },
        )
        .await;
    assert!(written, "the snapshot is written to Redis");
}

/// An `AccountState` as events carry it.
pub fn account_state(
    user: &str,
    balance: i64,
    period: &str,
    granted: i64,
    used: i64,
    version: i64,
) -> pb::AccountState {
    pb::AccountState {
        user_id: user.into(),
        currency: "CNY".into(),
        balance_micros: balance,
        period: period.into(),
        free_granted_micros: granted,
        free_used_micros: used,
        free_remaining_micros: granted - used,
        available_micros: granted - used + balance,
        version,
        monthly_free_micros: granted,
        free_held_micros: 0,
        balance_held_micros: 0,
        ..Default::default()
    }
}

pub struct RecordSeed<'a> {
    pub user: &'a str,
    pub version: i64,
    pub kind: &'a str,
    pub amount: i64,
    pub created_at: DateTime<Utc>,
}

/// A record whose other fields follow from its type and version.
pub async fn seed_record(stack: &Stack, seed: RecordSeed<'_>) -> String {
    let record_id = uuid::Uuid::now_v7().to_string();
    let (free, balance) = match seed.kind {
        "deduct" => (seed.amount / 2, seed.amount - seed.amount / 2),
        "free_grant" => (seed.amount, 0),
        _ => (0, seed.amount),
    };
    let (api_id, request_id, order_no) = match seed.kind {
        "deduct" => (
            Some("api.chat".to_owned()),
            Some(format!("req-{}", seed.version)),
            None,
        ),
        "recharge" => (None, None, Some(format!("RO{}", seed.version))),
        _ => (None, None, None),
    };
    sqlx::query(
        "INSERT INTO rm_records (record_id, user_id, version, type, amount_micros, free_micros, \
         balance_micros, balance_after_micros, free_remaining_after_micros, api_id, request_id, \
         order_no, period, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
    )
    .bind(&record_id)
    .bind(seed.user)
    .bind(seed.version)
    .bind(seed.kind)
    .bind(seed.amount)
    .bind(free)
    .bind(balance)
    .bind(1_000 * seed.version)
    .bind(2_000 * seed.version)
    .bind(api_id)
    .bind(request_id)
    .bind(order_no)
    .bind("2026-11")
    .bind(seed.created_at)
    .execute(&stack.db)
    .await
    .unwrap();
    record_id
}

pub struct OrderSeed<'a> {
    pub order_no: &'a str,
    pub user: &'a str,
    pub amount: i64,
    pub status: &'a str,
    pub provider_txn_id: Option<&'a str>,
    pub created_at: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
    pub paid_at: Option<DateTime<Utc>>,
}

/// An order as the read model holds it.
pub async fn seed_rm_order(stack: &Stack, seed: &OrderSeed<'_>) {
    let rank = match seed.status {
        "PENDING" => 0,
        "FAILED" => 1,
        _ => 2,
    };
    sqlx::query(
        "INSERT INTO rm_orders (order_no, user_id, amount_micros, channel, status, status_rank, \
         provider_txn_id, created_at, expires_at, paid_at) \
         VALUES (?, ?, ?, 'alipay', ?, ?, ?, ?, ?, ?)",
    )
    .bind(seed.order_no)
    .bind(seed.user)
    .bind(seed.amount)
    .bind(seed.status)
    .bind(rank)
    .bind(seed.provider_txn_id)
    .bind(seed.created_at)
    .bind(seed.expires_at)
    .bind(seed.paid_at)
    .execute(&stack.db)
    .await
    .unwrap();
}

/// An order on the command side only, as if its event had not been projected yet (no event is
/// written, so it never will be).
pub async fn seed_command_order(stack: &Stack, seed: &OrderSeed<'_>) {
    sqlx::query(
        "INSERT INTO recharge_orders (order_no, user_id, amount_micros, channel, status, \
         idempotency_key, provider_txn_id, created_at, expires_at, paid_at, updated_at) \
         VALUES (?, ?, ?, 'alipay', ?, NULL, ?, ?, ?, ?, ?)",
    )
    .bind(seed.order_no)
    .bind(seed.user)
    .bind(seed.amount)
    .bind(seed.status)
    .bind(seed.provider_txn_id)
    .bind(seed.created_at)
    .bind(seed.expires_at)
    .bind(seed.paid_at)
    .bind(seed.created_at)
    .execute(&stack.db)
    .await
    .unwrap();
}

/// Orders command-svc holds (of anyone).
pub async fn command_orders(stack: &Stack) -> i64 {
    sqlx::query_scalar("SELECT COUNT(*) FROM recharge_orders")
        .fetch_one(&stack.db)
        .await
        .unwrap()
}
