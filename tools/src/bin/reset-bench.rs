//! The monthly reset at scale: seeds N accounts last month into a database of its own, runs
//! command-svc (its reset consumer and outbox relay) and query-svc in this process against it,
//! publishes the reset, and prints how long the write side took to grant every account (grants,
//! ledger and outbox rows committed) and how long until the read model showed them all.
//!
//! `cargo run --release -p billing-tools --bin reset-bench -- --accounts 1000000`
//!
//! It needs the MySQL user of the tests (one that may create `billing_test_%` databases) and
//! NATS and Redis, as `make test` does; everything it creates is removed at the end.

use std::{
    collections::HashMap,
    path::Path,
    time::{Duration, Instant},
};

use async_nats::jetstream::Context;
use billing_tools::jetstream;
use chrono::{DateTime, Utc};
use clap::Parser;
use shared::{
    bus::BusNames,
    clock::Clock,
    config::Settings,
    period::Period,
    shutdown::{Stop, Stopper},
};
use sqlx::{Connection, MySqlConnection, MySqlPool, QueryBuilder};

#[derive(Parser)]
struct Args {
    #[arg(long, default_value_t = 1_000_000)]
    accounts: u64,
    /// Accounts per reset transaction.
    #[arg(long, default_value_t = 1000)]
    batch_size: u32,
    /// Ranges of accounts walked side by side.
    #[arg(long, default_value_t = 4)]
    workers: u32,
    #[arg(
        long,
        env = "BILLING_TEST_DATABASE_URL",
        default_value = "mysql://billing:billing@127.0.0.1:3306"
    )]
    database: String,
    #[arg(
        long,
        env = "BILLING_TEST_NATS_URL",
        default_value = "nats://127.0.0.1:4222"
    )]
    nats: String,
    #[arg(
        long,
        env = "BILLING_TEST_REDIS_URL",
        default_value = "redis://127.0.0.1:6379"
    )]
    redis: String,
    /// Keep the database and streams afterwards.
    #[arg(long)]
    keep: bool,
}

const SEED_CHUNK: u64 = 2_000;
/// The reset under test, as the scheduler publishes December's.
const RESET_ID: &str = "reset-free-quota:2026-12";

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let tag = format!(
        "{}_{}",
        Utc::now().timestamp(),
        &uuid::Uuid::new_v4().simple().to_string()[..8]
    );
    let db_name = format!("billing_test_{tag}");
    let mut admin = MySqlConnection::connect(&args.database).await?;
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE `{db_name}`")))
        .execute(&mut admin)
        .await?;
    let url = format!("{}/{db_name}", args.database.trim_end_matches('/'));
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../configs/config.yaml");
    let mut settings = Settings::load_with_env(&path, Some(bench_env(&args, &tag, &url)?))?;
    shared::telemetry::init(&settings.telemetry);

    // The reset runs at 00:00:05 on 2026-12-01 in the billing zone; accounts are in November.
    let zone = settings.billing.zone()?;
    let december: Period = "2026-12".parse()?;
    let now: DateTime<Utc> = zone.period_start(december) + chrono::Duration::seconds(5);
    let pool = seeded_database(&settings, &url, args.accounts, now).await?;
    let (stop, command, query) = start_services(&mut settings, Clock::manual(now)).await?;

    let names = BusNames::from_settings(&settings.nats);
    let js = jetstream(&settings, &names).await?;
    let started = Instant::now();
    shared::bus::publish_reset(&js, &names, RESET_ID, december, now.timestamp_millis()).await?;
    let (granted, write_side) = wait_for_write_side(&pool, started).await?;
    wait_for_read_model(&pool, granted, started, write_side).await?;

    stop.stop();
    let _ = tokio::join!(command, query);
    if !args.keep {
        clean_up(&js, &names, pool, &mut admin, &db_name).await?;
    }
    Ok(())
}

/// The services' settings for this run: its database, spare ports, and streams, subjects and
/// keys of its own under `tag`.
fn bench_env(args: &Args, tag: &str, url: &str) -> anyhow::Result<HashMap<String, String>> {
    Ok(HashMap::from([
        ("BILLING__DATABASE__URL".to_owned(), url.to_owned()),
        ("BILLING__COMMAND__GRPC_ADDR".to_owned(), spare_addr()?),
        ("BILLING__COMMAND__HTTP_ADDR".to_owned(), spare_addr()?),
        ("BILLING__QUERY__HTTP_ADDR".to_owned(), spare_addr()?),
        ("BILLING__NATS__URL".to_owned(), args.nats.clone()),
        (
            "BILLING__NATS__STREAM_PREFIX".to_owned(),
            format!("T{tag}_"),
        ),
        (
            "BILLING__NATS__SUBJECT_PREFIX".to_owned(),
            format!("t{tag}"),
        ),
        ("BILLING__REDIS__URL".to_owned(), args.redis.clone()),
        (
            "BILLING__REDIS__KEY_PREFIX".to_owned(),
            format!("bench:{tag}:"),
        ),
        (
            "BILLING__RESET__BATCH_SIZE".to_owned(),
            args.batch_size.to_string(),
        ),
        (
            "BILLING__RESET__WORKERS".to_owned(),
            args.workers.to_string(),
        ),
        (
            "BILLING__OUTBOX__RETENTION_HOURS".to_owned(),
            "100000".to_owned(),
        ),
        ("BILLING__TELEMETRY__FILTER".to_owned(), "warn".to_owned()),
    ]))
}

/// A local address nothing listens on (just now).
fn spare_addr() -> std::io::Result<String> {
    std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()
        .map(|a| a.to_string())
}

/// The run's database migrated and seeded with `accounts` accounts last month, timed.
async fn seeded_database(
    settings: &Settings,
    url: &str,
    accounts: u64,
    now: DateTime<Utc>,
) -> anyhow::Result<MySqlPool> {
    shared::db::migrate(
        &shared::db::connect_lazy(&settings.database)?,
        Duration::from_secs(60),
    )
    .await?;
    let pool = MySqlPool::connect(url).await?;
    let seeding = Instant::now();
    seed(&pool, accounts, now - chrono::Duration::days(10)).await?;
    println!(
        "seeded {accounts} accounts in {:.1} s",
        seeding.elapsed().as_secs_f64()
    );
    Ok(pool)
}

type Service = tokio::task::JoinHandle<anyhow::Result<()>>;

/// command-svc and query-svc running in this process (query-svc calling command-svc's gRPC
/// address) until the returned stopper is asked (or dropped).
async fn start_services(
    settings: &mut Settings,
    clock: Clock,
) -> anyhow::Result<(Stopper, Service, Service)> {
    let command = command_svc::app::Application::build(settings, clock.clone()).await?;
    settings.query.command_endpoint = format!("http://{}", command.grpc_addr());
    let query = query_svc::app::Application::build(settings, clock).await?;
    let (stopper, stop) = Stopper::new();
    let waiter = |mut stop: Stop| async move { stop.stopped().await };
    let command = tokio::spawn(command.run_until_stopped(waiter(stop.clone())));
    let query = tokio::spawn(query.run_until_stopped(waiter(stop)));
    Ok((stopper, command, query))
}

/// Waits for the reset's progress row to be finished; prints and returns how many accounts
/// were granted and how long it took since `started`.
async fn wait_for_write_side(
    pool: &MySqlPool,
    started: Instant,
) -> anyhow::Result<(i64, Duration)> {
    loop {
        let finished: Option<Option<DateTime<Utc>>> =
            sqlx::query_scalar("SELECT finished_at FROM command_progress WHERE command_id = ?")
                .bind(RESET_ID)
                .fetch_optional(pool)
                .await?;
        if matches!(finished, Some(Some(_))) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let write_side = started.elapsed();
    let granted: i64 =
        sqlx::query_scalar("SELECT COUNT(*) FROM free_quota_grants WHERE period = '2026-12'")
            .fetch_one(pool)
            .await?;
    println!(
        "write side: {granted} accounts granted (grants, ledger and outbox rows committed) in {:.1} s, {:.0} accounts/s",
        write_side.as_secs_f64(),
        granted as f64 / write_side.as_secs_f64()
    );
    Ok((granted, write_side))
}

/// Waits for the read model to show all `granted` grants, saying how far it is every 10 s, and
/// prints how long that took.
async fn wait_for_read_model(
    pool: &MySqlPool,
    granted: i64,
    started: Instant,
    write_side: Duration,
) -> anyhow::Result<()> {
    let mut last_report = Instant::now();
    loop {
        let projected: i64 = sqlx::query_scalar(
            "SELECT COUNT(*) FROM rm_records WHERE type = 'free_grant' AND period = '2026-12'",
        )
        .fetch_one(pool)
        .await?;
        if projected >= granted {
            break;
        }
        if last_report.elapsed() > Duration::from_secs(10) {
            println!(
                "  read model: {projected} of {granted} after {:.0} s",
                started.elapsed().as_secs_f64()
            );
            last_report = Instant::now();
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let read_side = started.elapsed();
    println!(
        "read model: all {granted} grants visible {:.1} s after the command ({:.1} s after the write side finished)",
        read_side.as_secs_f64(),
        (read_side - write_side).as_secs_f64()
    );
    Ok(())
}

/// Removes the run's streams and database.
async fn clean_up(
    js: &Context,
    names: &BusNames,
    pool: MySqlPool,
    admin: &mut MySqlConnection,
    db_name: &str,
) -> anyhow::Result<()> {
    for stream in [
        names.events_stream(),
        names.dlq_stream(),
        names.commands_stream(),
    ] {
        let _ = js.delete_stream(stream).await;
    }
    pool.close().await;
    sqlx::query(sqlx::AssertSqlSafe(format!("DROP DATABASE `{db_name}`")))
        .execute(&mut *admin)
        .await?;
    Ok(())
}

/// `n` accounts as a month of use leaves them: November's grant, its ledger row, version 1.
async fn seed(pool: &MySqlPool, n: u64, at: DateTime<Utc>) -> anyhow::Result<()> {
    let ids: Vec<u64> = (0..n).collect();
    for chunk in ids.chunks(SEED_CHUNK as usize) {
        let mut tx = pool.begin().await?;
        let mut accounts = QueryBuilder::new(
            "INSERT INTO accounts (user_id, currency, balance_micros, period, free_granted_micros, \
             free_used_micros, monthly_free_micros, version, created_at, updated_at) ",
        );
        accounts.push_values(chunk, |mut row, i| {
            row.push_bind(format!("bench-{i:09}"))
                .push_bind("CNY")
                .push_bind(0_i64)
                .push_bind("2026-11")
                .push_bind(10_000_000_i64)
                .push_bind(0_i64)
                .push_bind(10_000_000_i64)
                .push_bind(1_i64)
                .push_bind(at)
                .push_bind(at);
        });
        accounts.build().execute(&mut *tx).await?;
        let mut grants = QueryBuilder::new(
            "INSERT INTO free_quota_grants (user_id, period, granted_micros, record_id, created_at) ",
        );
        grants.push_values(chunk, |mut row, i| {
            row.push_bind(format!("bench-{i:09}"))
                .push_bind("2026-11")
                .push_bind(10_000_000_i64)
                .push_bind(format!("seed-{i:09}"))
                .push_bind(at);
        });
        grants.build().execute(&mut *tx).await?;
        let mut ledger = QueryBuilder::new(
            "INSERT INTO ledger (record_id, user_id, version, kind, amount_micros, free_micros, balance_micros, \
             period, period_before, balance_before_micros, balance_after_micros, free_granted_before_micros, \
             free_granted_after_micros, free_used_before_micros, free_used_after_micros, created_at) ",
        );
        ledger.push_values(chunk, |mut row, i| {
            row.push_bind(format!("seed-{i:09}"))
                .push_bind(format!("bench-{i:09}"))
                .push_bind(1_i64)
                .push_bind("free_grant")
                .push_bind(10_000_000_i64)
                .push_bind(10_000_000_i64)
                .push_bind(0_i64)
                .push_bind("2026-11")
                .push_bind("2026-11")
                .push_bind(0_i64)
                .push_bind(0_i64)
                .push_bind(0_i64)
                .push_bind(10_000_000_i64)
                .push_bind(0_i64)
                .push_bind(0_i64)
                .push_bind(at);
        });
        ledger.build().execute(&mut *tx).await?;
        tx.commit().await?;
    }
    Ok(())
}
