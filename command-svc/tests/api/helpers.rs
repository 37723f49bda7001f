//! One command-svc per test, on ports of its own, with its own database, NATS streams and
//! subjects, and a clock the test controls. Clients for each configured caller, and the invariant
//! checks every test can run.

use std::{collections::HashMap, path::Path, time::Duration};

use chrono::{DateTime, Utc};
use command_svc::app::Application;
use shared::{bus::BusNames, clock::Clock, config::Settings, proto::v1 as pb};
use sqlx::{MySqlPool, mysql::MySqlPoolOptions};
use testkit::Leftovers;

pub use testkit::invariants::assert_invariants;
pub use testkit::{
    Bearer, CNY, Client, GATEWAY, OPS, ORDERS, PAYMENT, TestDatabase, WEBHOOK_SECRET, adjust,
    admin_url, deduct, nats_url, new_order, new_user, paid, reason, redis_url, unique_tag,
};

pub struct TestApp {
    pub grpc_addr: std::net::SocketAddr,
    pub http_addr: std::net::SocketAddr,
    pub clock: Clock,
    pub db: MySqlPool,
    pub db_name: String,
    pub settings: Settings,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    pub server: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
    /// What the test leaves on the shared servers: owned by the instance that made it, removed
    /// by [`TestApp::cleanup`] or, when the test panics, when the instance is dropped.
    leftovers: Leftovers,
}

/// The repository's configuration, pointed at a fresh database, NATS streams and subjects of the
/// test's own, and ports chosen by the system.
pub fn test_settings(database_url: &str, overrides: &[(&str, &str)]) -> Settings {
    let tag = unique_tag();
    let mut env = HashMap::from([
        ("BILLING__DATABASE__URL".to_owned(), database_url.to_owned()),
        (
            "BILLING__COMMAND__GRPC_ADDR".to_owned(),
            "127.0.0.1:0".to_owned(),
        ),
        (
            "BILLING__COMMAND__HTTP_ADDR".to_owned(),
            "127.0.0.1:0".to_owned(),
        ),
        ("BILLING__NATS__URL".to_owned(), nats_url()),
        (
            "BILLING__NATS__STREAM_PREFIX".to_owned(),
            format!("T{tag}_"),
        ),
        (
            "BILLING__NATS__SUBJECT_PREFIX".to_owned(),
            format!("t{tag}"),
        ),
        (
            "BILLING__OUTBOX__POLL_INTERVAL_MS".to_owned(),
            "50".to_owned(),
        ),
        ("BILLING__REDIS__URL".to_owned(), redis_url()),
        (
            "BILLING__REDIS__KEY_PREFIX".to_owned(),
            format!("test:{tag}:"),
        ),
        ("BILLING__TELEMETRY__FILTER".to_owned(), "warn".to_owned()),
    ]);
    for (key, value) in overrides {
        env.insert((*key).to_owned(), (*value).to_owned());
    }
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../configs/config.yaml");
    Settings::load_with_env(&path, Some(env)).expect("the repository configuration loads")
}

pub async fn spawn_app() -> TestApp {
    spawn_app_at(Utc::now(), &[]).await
}

/// A service whose clock stands at `now` (tests move it with `app.clock`).
pub async fn spawn_app_at(now: DateTime<Utc>, overrides: &[(&str, &str)]) -> TestApp {
    let db = TestDatabase::create(&unique_tag()).await;
    let settings = test_settings(&db.url, overrides);
    let leftovers = Leftovers::new()
        .database(&db.name)
        .streams(&settings.nats.url, &BusNames::from_settings(&settings.nats))
        .redis_keys(&format!("{}*", settings.redis.key_prefix));
    let mut app = spawn_with(settings, Clock::manual(now), db.name).await;
    app.leftovers = leftovers;
    app
}

/// A service on an existing test database (a second replica, a restart): the instance that
/// made the database keeps the duty of removing it.
pub async fn spawn_with(settings: Settings, clock: Clock, db_name: String) -> TestApp {
    shared::telemetry::init(&settings.telemetry);
    testkit::sweep_stale_test_streams().await;
    let app = Application::build(&settings, clock.clone())
        .await
        .expect("the service builds");
    let (grpc_addr, http_addr) = (app.grpc_addr(), app.http_addr());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(app.run_until_stopped(async move {
        let _ = stopped.await;
    }));
    let db = MySqlPoolOptions::new()
        .max_connections(4)
        .connect(settings.database.url.expose())
        .await
        .expect("the test database is reachable");
    TestApp {
        grpc_addr,
        http_addr,
        clock,
        db,
        db_name,
        settings,
        stop: Some(stop),
        server: Some(server),
        leftovers: Leftovers::new(),
    }
}

impl TestApp {
    /// A second replica of this service: the same settings, database and clock.
    pub async fn replica(&self) -> TestApp {
        spawn_with(
            self.settings.clone(),
            self.clock.clone(),
            self.db_name.clone(),
        )
        .await
    }

    pub async fn client(&self, token: &str) -> Client {
        self.client_with(Bearer::token(token)).await
    }

    pub async fn client_with(&self, bearer: Bearer) -> Client {
        testkit::connect_client(self.grpc_addr, bearer).await
    }

    pub async fn anonymous(&self) -> Client {
        self.client_with(Bearer(None)).await
    }

    pub async fn gateway(&self) -> Client {
        self.client(GATEWAY).await
    }

    pub async fn ops(&self) -> Client {
        self.client(OPS).await
    }

    pub async fn payment(&self) -> Client {
        self.client(PAYMENT).await
    }

    pub async fn orders(&self) -> Client {
        self.client(ORDERS).await
    }

    pub fn http(&self, path: &str) -> String {
        format!("http://{}{path}", self.http_addr)
    }

    /// Stops the service and waits for it to drain.
    pub async fn stop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(server) = self.server.take() {
            let _ = tokio::time::timeout(Duration::from_secs(15), server).await;
        }
    }

    /// The test's own stream and subject names.
    pub fn bus_names(&self) -> BusNames {
        BusNames::from_settings(&self.settings.nats)
    }

    /// A JetStream context on the NATS server this service publishes to.
    pub async fn jetstream(&self) -> async_nats::jetstream::Context {
        let nats = async_nats::connect(&self.settings.nats.url)
            .await
            .expect("the test's NATS is reachable");
        async_nats::jetstream::new(nats)
    }

    /// Deletes the test's three streams, if their server can be reached.
    pub async fn delete_streams(&self) {
        testkit::delete_streams_at(&self.settings.nats.url, &self.bus_names()).await;
    }

    /// Stops the service and removes the test's database, streams and Redis keys; called at the
    /// end of a test that passed (a test that panics has them removed when it is dropped).
    pub async fn cleanup(mut self) {
        self.stop().await;
        self.delete_streams().await;
        self.db.close().await;
        TestDatabase::drop_named(&self.db_name).await;
        std::mem::take(&mut self.leftovers).remove().await;
    }
}

// ---- requests -------------------------------------------------------------------------------

/// Puts `amount` on a user's balance through an order and its paid callback.
pub async fn recharge(app: &TestApp, user: &str, amount: i64) -> pb::RechargeCallbackResponse {
    testkit::recharge_with(
        &mut app.orders().await,
        &mut app.payment().await,
        user,
        amount,
    )
    .await
}

pub async fn account(app: &TestApp, user: &str) -> pb::AccountState {
    let request = pb::GetAccountRequest {
        user_id: user.into(),
    };
    app.gateway()
        .await
        .get_account(request)
        .await
        .unwrap()
        .into_inner()
        .account
        .unwrap()
}

/// The service's `/metrics` page, parsed.
pub async fn scrape(app: &TestApp) -> testkit::metrics::Scrape {
    let page = reqwest::get(app.http("/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    testkit::metrics::Scrape::parse(&page)
}

// ---- stored state ---------------------------------------------------------------------------

/// Makes `user`'s account row unreadable (a period that does not parse), as a corrupt row would be.
pub async fn corrupt_account(app: &TestApp, user: &str) {
    sqlx::query("UPDATE accounts SET period = '2026-99' WHERE user_id = ?")
        .bind(user)
        .execute(&app.db)
        .await
        .unwrap();
}

pub async fn count(pool: &MySqlPool, sql: &'static str, user: &str) -> i64 {
    sqlx::query_scalar(sql)
        .bind(user)
        .fetch_one(pool)
        .await
        .unwrap()
}

pub async fn ledger_count(app: &TestApp, user: &str) -> i64 {
    count(
        &app.db,
        "SELECT COUNT(*) FROM ledger WHERE user_id = ?",
        user,
    )
    .await
}

/// A whole-database fingerprint, to show that a refused command changed nothing.
pub async fn fingerprint(pool: &MySqlPool) -> Vec<i64> {
    let mut counts = Vec::new();
    for sql in [
        "SELECT COUNT(*) FROM accounts",
        "SELECT CAST(COALESCE(SUM(balance_micros + free_used_micros + version), 0) AS SIGNED) FROM accounts",
        "SELECT COUNT(*) FROM ledger",
        "SELECT COUNT(*) FROM free_quota_grants",
        "SELECT COUNT(*) FROM recharge_orders",
        "SELECT COUNT(*) FROM unmatched_payments",
        "SELECT COUNT(*) FROM outbox",
        "SELECT COUNT(*) FROM refunds",
        "SELECT COUNT(*) FROM alert_settings",
        "SELECT COUNT(*) FROM price_list_versions",
        "SELECT COUNT(*) FROM accounts WHERE price_list IS NOT NULL",
        "SELECT CAST(COALESCE(SUM(CRC32(spend_counters)), 0) AS SIGNED) FROM accounts",
    ] {
        let value: i64 = sqlx::query_scalar(sql).fetch_one(pool).await.unwrap();
        counts.push(value);
    }
    counts
}

// ---- waiting --------------------------------------------------------------------------------

/// Polls `probe` until it returns `Some`, for at most `limit`; `what` names the awaited
/// condition in the failure.
pub async fn eventually<T, F, Fut>(limit: Duration, what: &str, mut probe: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        if let Some(value) = probe().await {
            return value;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "not reached within {limit:?}: {what}"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// A command-svc in a runtime of its own, so a test can kill it outright: every task stops at
/// once, open transactions die with their connections, unacked messages come back later.
pub struct Killable {
    runtime: Option<tokio::runtime::Runtime>,
}

pub async fn spawn_killable(settings: Settings, clock: Clock) -> Killable {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let (ready, built) = tokio::sync::oneshot::channel();
    runtime.spawn(async move {
        let app = Application::build(&settings, clock)
            .await
            .expect("the service builds");
        let _ = ready.send(());
        let _ = app.run_until_stopped(std::future::pending()).await;
    });
    built.await.expect("the killable service started");
    Killable {
        runtime: Some(runtime),
    }
}

impl Killable {
    pub fn kill(mut self) {
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

impl Drop for Killable {
    fn drop(&mut self) {
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

/// Publishes a reset command on the app's commands stream, as the scheduler or an operator does;
/// returns the trace id the command carries.
pub async fn publish_reset(settings: &Settings, command_id: &str, period: &str) -> String {
    let js = async_nats::jetstream::new(async_nats::connect(nats_url()).await.unwrap());
    let names = shared::bus::BusNames::from_settings(&settings.nats);
    shared::bus::ensure_streams(&js, &names, &settings.nats)
        .await
        .unwrap();
    shared::bus::publish_reset(&js, &names, command_id, period.parse().unwrap(), 0)
        .await
        .unwrap()
}

/// Waits until the reset `command_id` has finished; returns how many accounts it granted.
pub async fn reset_finished(pool: &MySqlPool, command_id: &str, limit: Duration) -> i64 {
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        let row: Option<(i64, Option<DateTime<Utc>>)> = sqlx::query_as(
            "SELECT accounts_granted, finished_at FROM command_progress WHERE command_id = ?",
        )
        .bind(command_id)
        .fetch_optional(pool)
        .await
        .unwrap();
        if let Some((granted, Some(_))) = row {
            return granted;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "reset {command_id} not finished within {limit:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
