//! A whole stack per test: command-svc and query-svc in this process, on ports of their own, with
//! their own database, NATS streams and subjects, and Redis key prefix, sharing one clock.

use std::{path::Path, time::Duration};

use chrono::{DateTime, Utc};
use serde_json::Value;
use shared::{bus::BusNames, clock::Clock, config::Settings};
use sqlx::MySqlPool;
use testkit::Leftovers;

pub use testkit::{
    Bearer, CNY, Client, GATEWAY, JWT_SECRET, OPS, ORDERS, PAYMENT, adjust, deduct, nats_url,
    new_user, redis_url, unique_tag,
};

/// The repository's configuration, isolated for one test: its database, NATS names, Redis prefix,
/// and ports chosen by the system.
pub fn test_settings(tag: &str, database_url: &str, overrides: &[(&str, &str)]) -> Settings {
    let mut env = testkit::isolated_env(tag, database_url);
    for (name, value) in [
        ("BILLING__COMMAND__GRPC_ADDR", "127.0.0.1:0"),
        ("BILLING__COMMAND__HTTP_ADDR", "127.0.0.1:0"),
        ("BILLING__QUERY__HTTP_ADDR", "127.0.0.1:0"),
        ("BILLING__OUTBOX__POLL_INTERVAL_MS", "50"),
    ] {
        env.insert(name.to_owned(), value.to_owned());
    }
    for (key, value) in overrides {
        env.insert((*key).to_owned(), (*value).to_owned());
    }
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../configs/config.yaml");
    Settings::load_with_env(&path, Some(env)).expect("the repository configuration loads")
}

struct Running {
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

impl Running {
    async fn stop(self) {
        let _ = self.stop.send(());
        let _ = tokio::time::timeout(Duration::from_secs(15), self.task).await;
    }
}

fn run(
    future: impl FnOnce(
        tokio::sync::oneshot::Receiver<()>,
    ) -> tokio::task::JoinHandle<anyhow::Result<()>>,
) -> Running {
    let (stop, stopped) = tokio::sync::oneshot::channel();
    Running {
        stop,
        task: future(stopped),
    }
}

pub struct Stack {
    pub tag: String,
    pub settings: Settings,
    pub clock: Clock,
    pub db: MySqlPool,
    pub names: BusNames,
    pub grpc_addr: std::net::SocketAddr,
    /// command-svc's HTTP listener: the payment webhook.
    pub command_http: std::net::SocketAddr,
    pub query_http: std::net::SocketAddr,
    command: Option<Running>,
    query: Option<Running>,
    /// The test's database, streams and Redis keys: removed by [`Stack::cleanup`] or, when the
    /// test panics, when the stack is dropped.
    leftovers: Leftovers,
}

pub async fn spawn_stack() -> Stack {
    spawn_stack_with(Clock::system(), &[]).await
}

/// Both services on one fresh database, command-svc first so query-svc can forward to it.
pub async fn spawn_stack_with(clock: Clock, overrides: &[(&str, &str)]) -> Stack {
    let tag = unique_tag();
    let database = testkit::TestDatabase::create(&tag).await;
    let (db_name, url) = (database.name, database.url);
    let mut settings = test_settings(&tag, &url, overrides);
    let leftovers = Leftovers::new()
        .database(&db_name)
        .streams(&settings.nats.url, &BusNames::from_settings(&settings.nats))
        .redis_keys(&format!("{}*", settings.redis.key_prefix));
    shared::telemetry::init(&settings.telemetry);

    let command = command_svc::app::Application::build(&settings, clock.clone())
        .await
        .expect("command-svc builds");
    let grpc_addr = command.grpc_addr();
    let command_http = command.http_addr();
    let command = run(|stopped| {
        tokio::spawn(command.run_until_stopped(async move {
            let _ = stopped.await;
        }))
    });
    settings.query.command_endpoint = format!("http://{grpc_addr}");
    let query = query_svc::app::Application::build(&settings, clock.clone())
        .await
        .expect("query-svc builds");
    let query_http = query.http_addr();
    let query = run(|stopped| {
        tokio::spawn(query.run_until_stopped(async move {
            let _ = stopped.await;
        }))
    });
    let db = MySqlPool::connect(&url).await.unwrap();
    Stack {
        names: BusNames::from_settings(&settings.nats),
        tag,
        settings,
        clock,
        db,
        grpc_addr,
        command_http,
        query_http,
        command: Some(command),
        query: Some(query),
        leftovers,
    }
}

impl Stack {
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.query_http)
    }

    /// A JWT for `user`, valid for an hour, signed with the configured secret.
    pub fn token(&self, user: &str) -> String {
        token_with(
            JWT_SECRET,
            user,
            self.clock.now() + chrono::Duration::hours(1),
        )
    }

    pub async fn client(&self, token: &str) -> Client {
        testkit::connect_client(self.grpc_addr, Bearer::token(token)).await
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

    /// GET with a user's token; the status and the JSON body.
    pub async fn get(&self, path: &str, token: &str) -> (reqwest::StatusCode, Value) {
        let response = reqwest::Client::new()
            .get(self.url(path))
            .bearer_auth(token)
            .send()
            .await
            .unwrap();
        let status = response.status();
        (status, response.json().await.expect("every answer is JSON"))
    }

    /// Polls `probe` until it returns `Some`, for at most `limit`.
    pub async fn eventually<T, F, Fut>(&self, limit: Duration, mut probe: F) -> T
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
                "not reached within {limit:?}"
            );
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    pub async fn stop_query(&mut self) {
        if let Some(query) = self.query.take() {
            query.stop().await;
        }
    }

    pub async fn stop_command(&mut self) {
        if let Some(command) = self.command.take() {
            command.stop().await;
        }
    }

    /// Stops both services and removes the test's database, streams and Redis keys.
    pub async fn cleanup(mut self) {
        self.stop_query().await;
        self.stop_command().await;
        self.db.close().await;
        std::mem::take(&mut self.leftovers).remove().await;
    }
}

/// A JWT for `user` expiring at `exp`, signed HS256 with `secret`.
pub fn token_with(secret: &str, user: &str, exp: DateTime<Utc>) -> String {
    let claims = serde_json::json!({ "sub": user, "exp": exp.timestamp() });
    jsonwebtoken::encode(
        &jsonwebtoken::Header::default(),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()),
    )
    .unwrap()
}

/// Puts `amount` on a user's balance through an order and its paid callback; the order number.
pub async fn recharge(stack: &Stack, user: &str, amount: i64) -> String {
    let paid = testkit::recharge_with(
        &mut stack.orders().await,
        &mut stack.payment().await,
        user,
        amount,
    )
    .await;
    paid.order.expect("the paid order").order_no
}
