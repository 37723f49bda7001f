//! What the test suites of the workspace share, so each test runs in isolation against the real
//! MariaDB, Redis and NATS.
//!
//! - `cleanup`: [`Leftovers`], the guard that removes a test's database, streams and Redis keys
//!   from the shared servers even when the test panics.
//! - [`invariants`]: the invariants checked against what MySQL holds, each failure naming the
//!   account, the version and the rule.
//! - `mariadb`, `nats`, `redis`: servers of a test's own for the tests that stop one
//!   ([`OwnMariaDb`], [`OwnNats`], [`OwnRedis`], [`OwnRedisCluster`]).
//! - [`metrics`]: reading a service's `/metrics` page.
//!
//! The crate root holds names of a test's own (a database `billing_test_<unix seconds>_<hex>`,
//! stream and subject prefixes, a Redis key prefix: [`unique_tag`], [`TestDatabase`],
//! [`isolated_env`]), the sweep of crashed runs' leftovers, recognised by their time
//! ([`sweep_stale_test_streams`], `deploy/dev-deps.sh`), and gRPC clients of command-svc with a
//! caller's token, with the requests the tests send.

mod cleanup;
pub mod invariants;
mod mariadb;
pub mod metrics;
mod nats;
mod redis;

use std::str::FromStr;

use chrono::Utc;
use shared::proto::v1::{self as pb, billing_command_service_client::BillingCommandServiceClient};
use sqlx::{Connection, MySqlConnection};
use tonic::{
    Request, Status,
    metadata::{Ascii, MetadataValue},
    service::{Interceptor, interceptor::InterceptedService},
    transport::Channel,
};

pub use cleanup::{Leftovers, delete_streams_at};
pub use mariadb::OwnMariaDb;
pub use nats::{OwnNats, OwnNatsCluster};
pub use redis::{OwnRedis, OwnRedisCluster};

/// The development callers' tokens of `configs/config.yaml`.
pub const GATEWAY: &str = "dev-gateway-token";
pub const ORDERS: &str = "dev-query-svc-token";
pub const PAYMENT: &str = "dev-payment-token";
pub const OPS: &str = "dev-ops-token";
pub const WEBHOOK_SECRET: &str = "dev-webhook-secret-change-me";
pub const JWT_SECRET: &str = "dev-jwt-secret-change-me";
/// One unit of currency in micros.
pub const CNY: i64 = 1_000_000;

/// The MySQL server of the tests, without a database (`BILLING_TEST_DATABASE_URL`).
pub fn admin_url() -> String {
    std::env::var("BILLING_TEST_DATABASE_URL")
        .unwrap_or_else(|_| "mysql://billing:billing@127.0.0.1:3306".to_owned())
}

pub fn redis_url() -> String {
    std::env::var("BILLING_TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".to_owned())
}

pub fn nats_url() -> String {
    std::env::var("BILLING_TEST_NATS_URL").unwrap_or_else(|_| "nats://127.0.0.1:4222".to_owned())
}

/// A port nobody listens on right now.
pub fn spare_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .expect("a spare port")
        .local_addr()
        .expect("an address")
        .port()
}

/// A unique tag for one test's names, starting with the time so stale ones can be recognised.
pub fn unique_tag() -> String {
    format!(
        "{}_{}",
        Utc::now().timestamp(),
        &uuid::Uuid::new_v4().simple().to_string()[..12]
    )
}

/// The `BILLING__` settings that give a test's services names of their own on the shared
/// servers: its database, NATS stream and subject prefixes, Redis key prefix; warnings only.
pub fn isolated_env(tag: &str, database_url: &str) -> std::collections::HashMap<String, String> {
    [
        ("BILLING__DATABASE__URL", database_url.to_owned()),
        ("BILLING__NATS__URL", nats_url()),
        ("BILLING__NATS__STREAM_PREFIX", format!("T{tag}_")),
        ("BILLING__NATS__SUBJECT_PREFIX", format!("t{tag}")),
        ("BILLING__REDIS__URL", redis_url()),
        ("BILLING__REDIS__KEY_PREFIX", format!("test:{tag}:")),
        ("BILLING__TELEMETRY__FILTER", "warn".to_owned()),
    ]
    .into_iter()
    .map(|(name, value)| (name.to_owned(), value))
    .collect()
}

/// A database of the test's own.
pub struct TestDatabase {
    pub name: String,
    pub url: String,
}

impl TestDatabase {
    /// Creates `billing_test_<tag>` (the test user may create databases of that name).
    pub async fn create(tag: &str) -> TestDatabase {
        let name = format!("billing_test_{tag}");
        let admin = admin_url();
        let mut conn = MySqlConnection::connect(&admin)
            .await
            .expect("MySQL for tests is reachable");
        sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE `{name}`")))
            .execute(&mut conn)
            .await
            .expect("the test user may create billing_test_ databases");
        TestDatabase {
            url: format!("{}/{name}", admin.trim_end_matches('/')),
            name,
        }
    }

    /// Drops the database named `name` (at the end of a test that passed).
    pub async fn drop_named(name: &str) {
        let mut conn = MySqlConnection::connect(&admin_url())
            .await
            .expect("MySQL for tests is reachable");
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "DROP DATABASE IF EXISTS `{name}`"
        )))
        .execute(&mut conn)
        .await
        .expect("the test user may drop billing_test_ databases");
    }
}

/// Test streams are named `T<unix seconds>_<hex>_…`; those of runs that ended without cleaning
/// up (a panic, a killed run) are deleted once they are two hours old, so the shared NATS server
/// does not collect them.
pub async fn sweep_stale_test_streams() {
    use futures::TryStreamExt;
    let Ok(client) = async_nats::connect(nats_url()).await else {
        return;
    };
    let js = async_nats::jetstream::new(client);
    let names: Vec<String> = js.stream_names().try_collect().await.unwrap_or_default();
    let cutoff = Utc::now().timestamp() - 2 * 3600;
    for name in names {
        let created = name
            .strip_prefix('T')
            .and_then(|rest| rest.split('_').next())
            .and_then(|secs| secs.parse::<i64>().ok());
        if created.is_some_and(|secs| secs < cutoff) {
            let _ = js.delete_stream(&name).await;
        }
    }
}

/// Deletes the three streams of these bus names (at the end of a test).
pub async fn delete_streams(names: &shared::bus::BusNames) {
    delete_streams_at(&nats_url(), names).await;
}

/// Adds a caller's bearer token to every call.
#[derive(Clone)]
pub struct Bearer(pub Option<MetadataValue<Ascii>>);

impl Bearer {
    pub fn token(token: &str) -> Bearer {
        Bearer(Some(
            MetadataValue::from_str(&format!("Bearer {token}")).expect("a token is ASCII"),
        ))
    }
}

impl Interceptor for Bearer {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        if let Some(token) = &self.0 {
            request
                .metadata_mut()
                .insert("authorization", token.clone());
        }
        Ok(request)
    }
}

pub type Client = BillingCommandServiceClient<InterceptedService<Channel, Bearer>>;

/// A client of command-svc at `addr`.
pub async fn connect_client(addr: std::net::SocketAddr, bearer: Bearer) -> Client {
    let channel = Channel::from_shared(format!("http://{addr}"))
        .expect("a valid address")
        .connect()
        .await
        .expect("the gRPC server accepts connections");
    BillingCommandServiceClient::with_interceptor(channel, bearer)
}

/// The `ErrorInfo` reason of an error status.
pub fn reason(status: &Status) -> String {
    use tonic_types::StatusExt;
    status
        .get_details_error_info()
        .map(|info| info.reason)
        .unwrap_or_default()
}

/// A unique user id for one test.
pub fn new_user(tag: &str) -> String {
    format!("{tag}-{}", &uuid::Uuid::new_v4().simple().to_string()[..10])
}

pub fn deduct(user: &str, amount: i64, request_id: &str) -> pb::DeductQuotaRequest {
    pb::DeductQuotaRequest {
        user_id: user.into(),
        amount_micros: amount,
        request_id: request_id.into(),
        api_id: "api.test".into(),
        description: "a test call".into(),
        ..Default::default()
    }
}

pub fn adjust(user: &str, amount: i64, adjustment_id: &str) -> pb::AdjustBalanceRequest {
    pb::AdjustBalanceRequest {
        user_id: user.into(),
        adjustment_id: adjustment_id.into(),
        amount_micros: amount,
        reason: "test adjustment".into(),
        actor: "ops@example.com".into(),
    }
}

pub fn new_order(user: &str, amount: i64) -> pb::CreateRechargeOrderRequest {
    pb::CreateRechargeOrderRequest {
        user_id: user.into(),
        amount_micros: amount,
        channel: "alipay".into(),
        idempotency_key: String::new(),
    }
}

pub fn paid(order_no: &str, txn: &str, amount: i64) -> pb::RechargeCallbackRequest {
    pb::RechargeCallbackRequest {
        order_no: order_no.into(),
        provider_txn_id: txn.into(),
        paid_amount_micros: amount,
        success: true,
    }
}

/// Puts `amount` on a user's balance through an order and its paid callback, with these callers.
pub async fn recharge_with(
    orders: &mut Client,
    payment: &mut Client,
    user: &str,
    amount: i64,
) -> pb::RechargeCallbackResponse {
    let order = orders
        .create_recharge_order(new_order(user, amount))
        .await
        .expect("the order is created")
        .into_inner();
    let order_no = order.order.expect("an order").order_no;
    let txn = format!("txn-{}", uuid::Uuid::new_v4().simple());
    payment
        .recharge_callback(paid(&order_no, &txn, amount))
        .await
        .expect("the payment is applied")
        .into_inner()
}
