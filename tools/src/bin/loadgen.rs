//! The hot-path benchmark: a load generator for command-svc (DeductQuota, CheckQuota, the gRPC
//! health check), the plain-SQL baseline it is compared with, and the suite `make bench` runs.
//! The suite's targets are ratios to what sysbench measured of the database alone in the same
//! `make bench` (deploy/bench.sh passes its rates); it also reports the CPU time each process of
//! the stack spent per charge.
//!
//! Closed loop (`--concurrency N`: N callers, each sending its next call when the last is
//! answered) or open loop (`--rate R`: calls started at R per second whatever the answers);
//! accounts uniform or Zipf-skewed, or one hot account. Latencies go into an HDR histogram;
//! errors are counted by gRPC code. After every charging run the ledger and the account states
//! are checked against the replies received: no charge lost, none doubled, no balance negative.
//!
//! ```text
//! loadgen suite [--sysbench-wide R --sysbench-hot R --sysbench-ceiling R] [--pid NAME=PID]…
//!                                               the whole table (make bench)
//! loadgen deduct --concurrency 64 --seconds 10 [--accounts 10000 | --hot] [--zipf 1.1]
//! loadgen deduct --rate 2000 --seconds 10
//! loadgen check --concurrency 64 --seconds 10 [--unseen]
//! loadgen health --concurrency 64 --seconds 10
//! loadgen baseline --connections 32 --seconds 10 [--hot]
//! ```
//! Every command reads the stack's configuration (`--config`, `BILLING__` overrides) and seeds
//! the accounts it needs (`bench-*`, `base-*`) the first time.

use std::{
    borrow::Cow,
    collections::HashMap,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use billing_tools::{
    CommandClient, caller_token, command_client,
    cpu_time::{CpuSpent, Process, Watched},
    http_url, jetstream,
};
use clap::{Args as ClapArgs, Parser, Subcommand};
use hdrhistogram::Histogram;
use shared::{config::Settings, proto::v1 as pb};
use sqlx::{MySql, MySqlPool, QueryBuilder};
use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};

#[derive(Parser)]
struct Cli {
    #[arg(long = "config", global = true, default_value = shared::config::DEFAULT_CONFIG_PATH)]
    config: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Every scenario, then one table with the targets and one of CPU time per charge.
    Suite {
        #[arg(long, default_value_t = 10)]
        seconds: u64,
        #[command(flatten)]
        sysbench: SysbenchRates,
        /// A process of the stack by pid (`command-svc=1234`), for the CPU time per charge;
        /// the others (mariadbd, command-svc, query-svc, nats-server, redis-server) are found
        /// by name.
        #[arg(long = "pid", value_parser = named_pid)]
        pids: Vec<(String, u32)>,
    },
    Deduct(Load),
    Check {
        #[command(flatten)]
        load: Load,
        /// Every call on an account id never used before, so new to the service.
        #[arg(long, conflicts_with = "hot")]
        unseen: bool,
    },
    Health(Load),
    /// One charge per transaction in plain SQL, straight to MySQL.
    Baseline {
        #[arg(long, default_value_t = 32)]
        connections: usize,
        #[command(flatten)]
        spread: Spread,
    },
}

/// How long a run lasts and over which seeded accounts its calls spread.
#[derive(ClapArgs, Clone)]
// Flattened into the subcommands: its doc comment is not their help text.
#[command(about = None, long_about = None)]
struct Spread {
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    #[arg(long, default_value_t = ACCOUNTS)]
    accounts: usize,
    /// Every call on one account.
    #[arg(long)]
    hot: bool,
}

/// What sysbench measured of the database alone in the same run (deploy/bench.sh), in charges
/// per second: the yardsticks of the targets. A target whose rate is not given is missed.
#[derive(ClapArgs, Clone, Copy, Default)]
// Flattened into the suite: its doc comment is not the suite's help text.
#[command(about = None, long_about = None)]
struct SysbenchRates {
    /// baseline-deduct.lua on 10,000 accounts from 32 threads, one charge per transaction.
    #[arg(long = "sysbench-wide")]
    wide: Option<f64>,
    /// baseline-deduct.lua on one account from 16 threads.
    #[arg(long = "sysbench-hot")]
    hot: Option<f64>,
    /// ceiling-batch.lua on 10,000 accounts from 4 threads, 100 charges per transaction.
    #[arg(long = "sysbench-ceiling")]
    ceiling: Option<f64>,
}

/// `name=pid`.
fn named_pid(arg: &str) -> Result<(String, u32), String> {
    let (name, pid) = arg
        .split_once('=')
        .ok_or_else(|| format!("{arg:?} is not NAME=PID"))?;
    let pid = pid.parse().map_err(|_| format!("{pid:?} is not a pid"))?;
    Ok((name.to_owned(), pid))
}

#[derive(ClapArgs, Clone)]
struct Load {
    /// Closed loop: this many callers.
    #[arg(long, default_value_t = 64)]
    concurrency: usize,
    /// Open loop: calls started per second (overrides --concurrency).
    #[arg(long)]
    rate: Option<u64>,
    #[command(flatten)]
    spread: Spread,
    /// Zipf-skewed accounts with this exponent instead of uniform.
    #[arg(long)]
    zipf: Option<f64>,
    /// Each charge reports its usage (three meters, [`BENCH_USAGE`]), priced by the default
    /// list ([`BENCH_PRICES`], published first), instead of an amount.
    #[arg(long)]
    priced: bool,
    /// The accounts carry spend limits (set first, `set_bench_limits`): only the run's name says
    /// so; the charges are the same.
    #[arg(skip)]
    limited: bool,
}

impl Load {
    /// `concurrency` callers over `spread`, uniformly or on the hot account.
    fn closed(concurrency: usize, spread: Spread) -> Load {
        Load {
            concurrency,
            rate: None,
            spread,
            zipf: None,
            priced: false,
            limited: false,
        }
    }
}

/// The usage a priced charge reports: a chat call's meters.
const BENCH_USAGE: [(&str, i64); 3] =
    [("call", 1), ("input_tokens", 1_200), ("output_tokens", 300)];

/// The prices of the API `bench` (api, meter, price_micros, per_units): [`BENCH_USAGE`] costs
/// 100 + 600 + 300 = [`CHARGE`], as an amount charge does.
const BENCH_PRICES: [(&str, i64, i64); 3] = [
    ("call", 100, 1),
    ("input_tokens", 500_000, 1_000_000),
    ("output_tokens", 1_000_000, 1_000_000),
];

/// Publishes [`BENCH_PRICES`] as the default list, in effect when this returns.
async fn publish_bench_prices(settings: &Settings) -> anyhow::Result<()> {
    let (endpoint, token) = (
        http_url(&settings.command.grpc_addr),
        caller_token(settings, "ops")?,
    );
    let mut client = command_client(&endpoint, &token).await?;
    let prices = BENCH_PRICES
        .iter()
        .map(|(meter, price_micros, per_units)| pb::Price {
            api_id: "bench".into(),
            meter: (*meter).into(),
            price_micros: *price_micros,
            per_units: *per_units,
        });
    let request = pb::PublishPriceListRequest {
        name: settings.billing.default_price_list.clone(),
        effective_from_ms: 0,
        prices: prices.collect(),
        publish_id: format!("bench-{}", run_id()),
        actor: "loadgen".into(),
    };
    client.publish_price_list(request).await?;
    Ok(())
}

/// The daily account limit of the limited run: far above what any run spends on one account.
const BENCH_LIMIT: i64 = 1_000_000_000_000;

/// Sets a daily account limit of `limit` on every seeded account (`None`: removes them), 64
/// sets at a time.
async fn set_bench_limits(settings: &Settings, limit: Option<i64>) -> anyhow::Result<()> {
    use futures::{StreamExt, TryStreamExt};
    let (endpoint, token) = (
        http_url(&settings.command.grpc_addr),
        caller_token(settings, "ops")?,
    );
    let client = command_client(&endpoint, &token).await?;
    let limits: Vec<pb::SpendLimit> = limit
        .into_iter()
        .map(|limit_micros| pb::SpendLimit {
            scope: "account".into(),
            window: "day".into(),
            limit_micros,
        })
        .collect();
    let sets = (0..ACCOUNTS).map(|i| {
        let mut client = client.clone();
        let request = pb::SetSpendLimitsRequest {
            user_id: format!("bench-{i:06}"),
            limits: limits.clone(),
            actor: "loadgen".into(),
            set_id: String::new(),
        };
        async move { client.set_spend_limits(request).await.map(|_| ()) }
    });
    futures::stream::iter(sets)
        .buffer_unordered(64)
        .try_collect::<Vec<()>>()
        .await?;
    Ok(())
}

/// Waits until what the sets of limits published has been taken off the bus (the outbox relayed,
/// every consumer of the events stream caught up: the projection, the alert dispatchers, the
/// replicas' followers), so that the run after measures the charges alone.
async fn wait_for_quiet_bus(settings: &Settings, pool: &MySqlPool) -> anyhow::Result<()> {
    use futures::StreamExt;
    let names = shared::bus::BusNames::from_settings(&settings.nats);
    let js = jetstream(settings, &names).await?;
    let deadline = Instant::now() + Duration::from_secs(180);
    loop {
        let mut behind: u64 =
            sqlx::query_scalar::<_, i64>("SELECT COUNT(*) FROM outbox WHERE published_at IS NULL")
                .fetch_one(pool)
                .await?
                .unsigned_abs();
        if behind == 0 {
            let stream = js.get_stream(names.events_stream()).await?;
            let mut consumers = stream.consumers();
            while let Some(info) = consumers.next().await {
                let info = info?;
                behind += info.num_pending + info.num_ack_pending as u64;
            }
        }
        if behind == 0 {
            return Ok(());
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "the bus is still {behind} event(s) behind after 3 minutes"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// What a charge of `load` asks for: [`CHARGE`], or [`BENCH_USAGE`] when priced.
fn bench_request(load: &Load, user_id: String, request_id: String) -> pb::DeductQuotaRequest {
    let request = pb::DeductQuotaRequest {
        user_id,
        request_id,
        api_id: "bench".into(),
        ..Default::default()
    };
    if !load.priced {
        return pb::DeductQuotaRequest {
            amount_micros: CHARGE,
            ..request
        };
    }
    let usage = BENCH_USAGE.iter().map(|(meter, quantity)| pb::Usage {
        meter: (*meter).into(),
        quantity: *quantity,
    });
    pb::DeductQuotaRequest {
        usage: usage.collect(),
        ..request
    }
}

const ACCOUNTS: usize = 10_000;
/// One charge: a thousandth of a unit.
const CHARGE: i64 = 1_000;
/// What each seeded account holds: far more than any run takes.
const SEED_BALANCE: i64 = 1_000_000_000_000;

/// The plain SQL of one charge, the baseline: a conditional balance update (which also takes
/// the next version), the ledger row and the outbox row, in one transaction.
const BASELINE_UPDATE: &str = "UPDATE accounts SET balance_micros = balance_micros - ?, \
     version = LAST_INSERT_ID(version + 1), updated_at = ? WHERE user_id = ? AND balance_micros >= ?";
const BASELINE_LEDGER: &str = "INSERT INTO ledger (record_id, user_id, version, kind, amount_micros, \
     free_micros, balance_micros, period, period_before, balance_before_micros, balance_after_micros, \
     free_granted_before_micros, free_granted_after_micros, free_used_before_micros, \
     free_used_after_micros, request_id, api_id, created_at) \
     VALUES (?, ?, LAST_INSERT_ID(), 'deduct', ?, 0, ?, ?, ?, 0, 0, 0, 0, 0, 0, ?, 'bench', ?)";
const BASELINE_OUTBOX: &str =
    "INSERT INTO outbox (event_id, user_id, subject, payload, created_at) VALUES (?, ?, ?, ?, ?)";

/// Which accounts calls go to.
#[derive(Clone)]
enum Accounts {
    Hot(String),
    Uniform(Vec<String>),
    /// Cumulative weights over the accounts, for inverse sampling.
    Zipf(Vec<String>, Vec<f64>),
    /// A new id on every call: this prefix and a 64-bit random number.
    Unseen(String),
}

impl Accounts {
    fn new(prefix: &str, load: &Load) -> Self {
        let names = || {
            (0..load.spread.accounts)
                .map(|i| format!("{prefix}-{i:06}"))
                .collect::<Vec<_>>()
        };
        match (load.spread.hot, load.zipf) {
            (true, _) => Accounts::Hot(format!("{prefix}-hot")),
            (false, Some(s)) => {
                let mut total = 0.0;
                let cumulative = (1..=load.spread.accounts).map(|rank| {
                    total += 1.0 / (rank as f64).powf(s);
                    total
                });
                let cumulative: Vec<f64> = cumulative.collect();
                let cumulative = cumulative.iter().map(|c| c / total).collect();
                Accounts::Zipf(names(), cumulative)
            }
            (false, None) => Accounts::Uniform(names()),
        }
    }

    /// Accounts no run has used: the prefix is new to each run.
    fn unseen() -> Self {
        Accounts::Unseen(format!("unseen-{}", run_id()))
    }

    fn pick(&self, random: u64) -> Cow<'_, str> {
        match self {
            Accounts::Hot(name) => Cow::Borrowed(name),
            Accounts::Uniform(names) => {
                Cow::Borrowed(&names[(random % names.len() as u64) as usize])
            }
            Accounts::Zipf(names, cumulative) => {
                let u = (random >> 11) as f64 / (1u64 << 53) as f64;
                let index = cumulative.partition_point(|c| *c < u).min(names.len() - 1);
                Cow::Borrowed(&names[index])
            }
            Accounts::Unseen(prefix) => Cow::Owned(format!("{prefix}-{random:016x}")),
        }
    }
}

/// splitmix64: cheap, good enough to spread calls.
fn random(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// What one run measured.
#[derive(Clone)]
struct Measured {
    name: String,
    ok: u64,
    errors: HashMap<String, u64>,
    elapsed: Duration,
    histogram: Histogram<u64>,
    /// Open loop: how late the generator's millisecond ticks fired (µs).
    lateness: Option<Histogram<u64>>,
    /// The CPU time the stack's processes spent meanwhile, when they were watched.
    cpu: Option<CpuSpent>,
}

impl Measured {
    fn rate(&self) -> f64 {
        self.ok as f64 / self.elapsed.as_secs_f64()
    }

    fn quantile_ms(&self, q: f64) -> f64 {
        self.histogram.value_at_quantile(q) as f64 / 1000.0
    }

    fn print(&self) {
        let errors = if self.errors.is_empty() {
            "none".to_owned()
        } else {
            format!("{:?}", self.errors)
        };
        println!(
            "{:<44} {:>9.0}/s  p50 {:>6.2}  p90 {:>6.2}  p99 {:>6.2}  p999 {:>6.2} ms  ok {}  errors {}",
            self.name,
            self.rate(),
            self.quantile_ms(0.5),
            self.quantile_ms(0.9),
            self.quantile_ms(0.99),
            self.quantile_ms(0.999),
            self.ok,
            errors
        );
        if let Some(lateness) = &self.lateness {
            println!(
                "{:<44} generator ticks late: p50 {:.2}  p99 {:.2} ms",
                "",
                lateness.value_at_quantile(0.5) as f64 / 1000.0,
                lateness.value_at_quantile(0.99) as f64 / 1000.0
            );
        }
    }
}

/// Acknowledged charges per account: (calls, micros), as the replies said.
type Acknowledged = Arc<Mutex<HashMap<String, (i64, i64)>>>;

/// One call of a scenario; returns the gRPC code name on failure.
type Call =
    Arc<dyn Fn(u64) -> futures::future::BoxFuture<'static, Result<(), String>> + Send + Sync>;

/// A histogram of microseconds, up to a minute.
fn micros_histogram() -> Histogram<u64> {
    Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("valid bounds")
}

/// What a run's calls add up to: successes timed from their start, failures counted by code.
struct Tally {
    ok: AtomicU64,
    errors: Mutex<HashMap<String, u64>>,
    histogram: Mutex<Histogram<u64>>,
}

impl Tally {
    fn new() -> Self {
        Tally {
            ok: AtomicU64::new(0),
            errors: Mutex::default(),
            histogram: Mutex::new(micros_histogram()),
        }
    }

    fn record(&self, began: Instant, result: Result<(), String>) {
        match result {
            Ok(()) => {
                self.ok.fetch_add(1, Ordering::Relaxed);
                let _ = self
                    .histogram
                    .lock()
                    .unwrap()
                    .record(began.elapsed().as_micros() as u64);
            }
            Err(code) => *self.errors.lock().unwrap().entry(code).or_default() += 1,
        }
    }
}

/// Runs `call` closed-loop with `concurrency` callers, or open-loop at `rate`, for `seconds`.
async fn drive(name: &str, load: &Load, call: Call) -> Measured {
    let stop = Arc::new(AtomicBool::new(false));
    let started = Instant::now();
    let tally = Arc::new(Tally::new());
    let lateness = Arc::new(Mutex::new(micros_histogram()));
    let tasks = match load.rate {
        None => closed_loop(load.concurrency, &stop, &call, &tally),
        Some(rate) => vec![tokio::spawn(open_loop(
            rate,
            stop.clone(),
            call,
            tally.clone(),
            lateness.clone(),
        ))],
    };
    tokio::time::sleep(Duration::from_secs(load.spread.seconds)).await;
    stop.store(true, Ordering::Relaxed);
    for task in tasks {
        let _ = task.await;
    }
    let histogram = tally.histogram.lock().unwrap().clone();
    let errors = tally.errors.lock().unwrap().clone();
    Measured {
        name: name.to_owned(),
        ok: tally.ok.load(Ordering::Relaxed),
        errors,
        elapsed: started.elapsed(),
        histogram,
        lateness: load.rate.map(|_| lateness.lock().unwrap().clone()),
        cpu: None,
    }
}

/// `concurrency` callers, each sending its next call when the last is answered, until stopped.
fn closed_loop(
    concurrency: usize,
    stop: &Arc<AtomicBool>,
    call: &Call,
    tally: &Arc<Tally>,
) -> Vec<tokio::task::JoinHandle<()>> {
    (0..concurrency)
        .map(|worker| {
            let (stop, call, tally) = (stop.clone(), call.clone(), tally.clone());
            tokio::spawn(async move {
                let mut seed = worker as u64 * 0x1000_0000_0001 + 7;
                while !stop.load(Ordering::Relaxed) {
                    let began = Instant::now();
                    let result = call(random(&mut seed)).await;
                    tally.record(began, result);
                }
            })
        })
        .collect()
}

/// Calls started at `rate` per second whatever the answers, until stopped; then waits for the
/// calls in flight.
async fn open_loop(
    rate: u64,
    stop: Arc<AtomicBool>,
    call: Call,
    tally: Arc<Tally>,
    lateness: Arc<Mutex<Histogram<u64>>>,
) {
    // Timers fire to the millisecond: every millisecond, the calls due by then are started,
    // each timed from its start. The generator never waits for an answer (no coordinated
    // omission); how late its ticks ran is reported beside.
    let mut ticks = tokio::time::interval(Duration::from_millis(1));
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let begun = Instant::now();
    let (mut seed, mut started) = (11_u64, 0_u64);
    let mut inflight = Vec::new();
    while !stop.load(Ordering::Relaxed) {
        let scheduled = ticks.tick().await.into_std();
        let late = scheduled.elapsed().as_micros().max(1) as u64;
        let _ = lateness.lock().unwrap().record(late);
        let due = (begun.elapsed().as_secs_f64() * rate as f64) as u64;
        for _ in started..due {
            let (call, tally, r) = (call.clone(), tally.clone(), random(&mut seed));
            inflight.push(tokio::spawn(async move {
                let began = Instant::now();
                tally.record(began, call(r).await)
            }));
        }
        started = due.max(started);
        inflight.retain(|t: &tokio::task::JoinHandle<()>| !t.is_finished());
    }
    for task in inflight {
        let _ = task.await;
    }
}

/// Several channels, so the load is not squeezed through one HTTP/2 connection.
async fn clients(settings: &Settings, token: &str) -> anyhow::Result<Vec<CommandClient>> {
    let mut clients = Vec::new();
    for _ in 0..4 {
        clients.push(command_client(&http_url(&settings.command.grpc_addr), token).await?);
    }
    Ok(clients)
}

fn code_name(status: &tonic::Status) -> String {
    format!("{:?}", status.code())
}

async fn deduct(
    settings: &Settings,
    load: &Load,
    run: &str,
    acknowledged: Acknowledged,
) -> anyhow::Result<Measured> {
    let clients = clients(settings, &caller_token(settings, "gateway")?).await?;
    let accounts = Arc::new(Accounts::new("bench", load));
    let counter = Arc::new(AtomicU64::new(0));
    let run = run.to_owned();
    let shared_load = Arc::new(load.clone());
    let call: Call = Arc::new(move |r| {
        let mut client = clients[(r % 4) as usize].clone();
        let user = accounts.pick(r).into_owned();
        let request_id = format!("{run}-{}", counter.fetch_add(1, Ordering::Relaxed));
        let acknowledged = acknowledged.clone();
        let load = shared_load.clone();
        Box::pin(async move {
            // An unknown outcome is retried with the same key until it is known, as the gateway
            // is told to; it then counts once.
            loop {
                let request = bench_request(&load, user.clone(), request_id.clone());
                match client.deduct_quota(request).await {
                    // A priced charge must cost what the list says, exactly.
                    Ok(reply) if reply.get_ref().amount_micros != CHARGE => {
                        return Err("WRONG_AMOUNT".into());
                    }
                    Ok(_) => {
                        let mut acknowledged = acknowledged.lock().unwrap();
                        let entry = acknowledged.entry(user).or_default();
                        *entry = (entry.0 + 1, entry.1 + CHARGE);
                        return Ok(());
                    }
                    Err(status)
                        if matches!(
                            status.code(),
                            tonic::Code::Unavailable | tonic::Code::DeadlineExceeded
                        ) =>
                    {
                        continue;
                    }
                    Err(status) => return Err(code_name(&status)),
                }
            }
        })
    });
    let shape = match (load.spread.hot, load.zipf, load.rate) {
        (true, _, _) => "one hot account".to_owned(),
        (false, Some(s), _) => format!("{} accounts, Zipf {s}", load.spread.accounts),
        (false, None, _) => format!("{} accounts", load.spread.accounts),
    };
    let shape = if load.limited {
        format!("{shape}, an account limit on each")
    } else if load.priced {
        format!("{shape}, priced by usage (3 meters)")
    } else {
        shape
    };
    Ok(drive(
        &format!("DeductQuota gRPC, {}, {shape}", shape_of(load)),
        load,
        call,
    )
    .await)
}

async fn check(settings: &Settings, load: &Load, accounts: Accounts) -> anyhow::Result<Measured> {
    let clients = clients(settings, &caller_token(settings, "gateway")?).await?;
    let accounts_label = match accounts {
        Accounts::Unseen(_) => ", accounts never seen",
        _ => "",
    };
    let accounts = Arc::new(accounts);
    let call: Call = Arc::new(move |r| {
        let mut client = clients[(r % 4) as usize].clone();
        let request = pb::CheckQuotaRequest {
            user_id: accounts.pick(r).into_owned(),
            amount_micros: CHARGE,
            ..Default::default()
        };
        Box::pin(async move {
            client
                .check_quota(request)
                .await
                .map(drop)
                .map_err(|s| code_name(&s))
        })
    });
    Ok(drive(
        &format!("CheckQuota gRPC, {}{accounts_label}", shape_of(load)),
        load,
        call,
    )
    .await)
}

/// How a run drives its calls, for its label.
fn shape_of(load: &Load) -> String {
    match load.rate {
        Some(rate) => format!("{rate}/s open loop"),
        None => format!("{} callers", load.concurrency),
    }
}

/// CheckQuota on the seeded accounts.
async fn check_seeded(settings: &Settings, load: &Load) -> anyhow::Result<Measured> {
    check(settings, load, Accounts::new("bench", load)).await
}

async fn health(settings: &Settings, load: &Load) -> anyhow::Result<Measured> {
    let mut clients = Vec::new();
    for _ in 0..4 {
        let channel =
            tonic::transport::Endpoint::from_shared(http_url(&settings.command.grpc_addr))?
                .connect()
                .await?;
        clients.push(HealthClient::new(channel));
    }
    let call: Call = Arc::new(move |r| {
        let mut client = clients[(r % 4) as usize].clone();
        Box::pin(async move {
            client
                .check(HealthCheckRequest {
                    service: String::new(),
                })
                .await
                .map(drop)
                .map_err(|s| code_name(&s))
        })
    });
    Ok(drive(
        &format!("grpc.health.v1 Check, {}", shape_of(load)),
        load,
        call,
    )
    .await)
}

async fn baseline(pool: &MySqlPool, connections: usize, spread: Spread, run: &str) -> Measured {
    let load = Load::closed(connections, spread);
    let picks = Arc::new(Accounts::new("base", &load));
    let (pool, run, counter) = (pool.clone(), run.to_owned(), Arc::new(AtomicU64::new(0)));
    let call: Call = Arc::new(move |r| {
        let (pool, user) = (pool.clone(), picks.pick(r).into_owned());
        let id = format!("{run}-{}", counter.fetch_add(1, Ordering::Relaxed));
        Box::pin(async move {
            baseline_charge(&pool, &user, &id)
                .await
                .map_err(|e| e.to_string())
        })
    });
    let shape = if load.spread.hot {
        "one hot row".to_owned()
    } else {
        format!("{} accounts", load.spread.accounts)
    };
    drive(
        &format!("baseline SQL, {connections} connections, {shape}"),
        &load,
        call,
    )
    .await
}

async fn baseline_charge(pool: &MySqlPool, user: &str, id: &str) -> Result<(), sqlx::Error> {
    let now = chrono::Utc::now();
    let mut tx = pool.begin().await?;
    let updated = sqlx::query(BASELINE_UPDATE)
        .bind(CHARGE)
        .bind(now)
        .bind(user)
        .bind(CHARGE)
        .execute(&mut *tx)
        .await?;
    if updated.rows_affected() != 1 {
        return Err(sqlx::Error::RowNotFound);
    }
    let record_id = uuid::Uuid::now_v7().to_string();
    let period = now.format("%Y-%m").to_string();
    sqlx::query(BASELINE_LEDGER)
        .bind(&record_id)
        .bind(user)
        .bind(CHARGE)
        .bind(CHARGE)
        .bind(&period)
        .bind(&period)
        .bind(id)
        .bind(now)
        .execute(&mut *tx)
        .await?;
    sqlx::query(BASELINE_OUTBOX)
        .bind(uuid::Uuid::now_v7().to_string())
        .bind(user)
        .bind("bench.baseline")
        .bind(record_id.as_bytes())
        .bind(now)
        .execute(&mut *tx)
        .await?;
    tx.commit().await
}

/// Seeds `<prefix>-*` accounts (`bench` in the service's database, `base` in the baseline's)
/// with a large balance, once; each with its first ledger row so the chain starts right.
async fn seed(pool: &MySqlPool, settings: &Settings, prefix: &str) -> anyhow::Result<()> {
    let zone = settings.billing.zone()?;
    let now = chrono::Utc::now();
    let period = zone.period_of(now).to_string();
    let mut names = vec![format!("{prefix}-hot")];
    names.extend((0..ACCOUNTS).map(|i| format!("{prefix}-{i:06}")));
    let present: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM accounts WHERE user_id = ?")
        .bind(format!("{prefix}-hot"))
        .fetch_one(pool)
        .await?;
    if present == 1 {
        return Ok(());
    }
    for chunk in names.chunks(2_000) {
        let mut tx = pool.begin().await?;
        seeded_accounts(chunk, &period, now)
            .build()
            .execute(&mut *tx)
            .await?;
        seeded_ledger(chunk, &period, now)
            .build()
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
    }
    Ok(())
}

/// The accounts `names`, each holding `SEED_BALANCE` at version 1.
fn seeded_accounts(
    names: &[String],
    period: &str,
    now: chrono::DateTime<chrono::Utc>,
) -> QueryBuilder<MySql> {
    let mut accounts = QueryBuilder::new(
        "INSERT INTO accounts (user_id, currency, balance_micros, period, free_granted_micros, \
         free_used_micros, monthly_free_micros, version, created_at, updated_at) ",
    );
    accounts.push_values(names, |mut row, name| {
        row.push_bind(name)
            .push_bind("CNY")
            .push_bind(SEED_BALANCE)
            .push_bind(period)
            .push_bind(0_i64)
            .push_bind(0_i64)
            .push_bind(0_i64)
            .push_bind(1_i64)
            .push_bind(now)
            .push_bind(now);
    });
    accounts
}

/// The first ledger row of each of `names`: the adjustment that gave it `SEED_BALANCE`.
fn seeded_ledger(
    names: &[String],
    period: &str,
    now: chrono::DateTime<chrono::Utc>,
) -> QueryBuilder<MySql> {
    let mut ledger = QueryBuilder::new(
        "INSERT INTO ledger (record_id, user_id, version, kind, amount_micros, free_micros, balance_micros, \
         period, period_before, balance_before_micros, balance_after_micros, free_granted_before_micros, \
         free_granted_after_micros, free_used_before_micros, free_used_after_micros, adjustment_id, \
         reason, actor, created_at) ",
    );
    ledger.push_values(names, |mut row, name| {
        row.push_bind(uuid::Uuid::now_v7().to_string())
            .push_bind(name)
            .push_bind(1_i64)
            .push_bind("adjust")
            .push_bind(SEED_BALANCE)
            .push_bind(0_i64)
            .push_bind(SEED_BALANCE)
            .push_bind(period)
            .push_bind(period)
            .push_bind(0_i64)
            .push_bind(SEED_BALANCE)
            .push_bind(0_i64)
            .push_bind(0_i64)
            .push_bind(0_i64)
            .push_bind(0_i64)
            .push_bind(format!("seed-{name}"))
            .push_bind("benchmark float")
            .push_bind("loadgen")
            .push_bind(now);
    });
    ledger
}

/// The ledger and the account states agree with the replies: every acknowledged charge of this
/// run is recorded once, nothing else was charged, no balance went below zero, and each charged
/// account's balance is its float less every charge recorded against it.
async fn verify(
    pool: &MySqlPool,
    run: &str,
    acknowledged: &Acknowledged,
) -> anyhow::Result<String> {
    let recorded: Vec<(String, i64, i64)> = sqlx::query_as(
        "SELECT user_id, COUNT(*), CAST(SUM(amount_micros) AS SIGNED) FROM ledger \
         WHERE kind = 'deduct' AND request_id LIKE CONCAT(?, '-%') GROUP BY user_id",
    )
    .bind(run)
    .fetch_all(pool)
    .await?;
    let acknowledged = acknowledged.lock().unwrap().clone();
    let recorded: HashMap<String, (i64, i64)> =
        recorded.into_iter().map(|(u, n, s)| (u, (n, s))).collect();
    if recorded != acknowledged {
        let lost = acknowledged
            .iter()
            .filter(|(u, a)| recorded.get(*u) != Some(a))
            .count();
        anyhow::bail!(
            "FAILED: {lost} account(s) whose ledger disagrees with the replies of run {run}"
        );
    }
    let negative: i64 =
        sqlx::query_scalar("SELECT COUNT(*) FROM accounts WHERE balance_micros < 0")
            .fetch_one(pool)
            .await?;
    let unbalanced: i64 = sqlx::query_scalar(
        "SELECT COUNT(*) FROM accounts a JOIN (SELECT user_id, CAST(SUM(balance_micros) AS SIGNED) AS charged \
         FROM ledger WHERE kind = 'deduct' AND user_id LIKE 'bench-%' GROUP BY user_id) l ON l.user_id = a.user_id \
         WHERE a.balance_micros <> ? - l.charged",
    )
    .bind(SEED_BALANCE)
    .fetch_one(pool)
    .await?;
    let doubled: i64 = sqlx::query_scalar(
        "SELECT COUNT(*) FROM (SELECT user_id, request_id FROM ledger WHERE request_id LIKE CONCAT(?, '-%') \
         GROUP BY user_id, request_id HAVING COUNT(*) > 1) d",
    )
    .bind(run)
    .fetch_one(pool)
    .await?;
    if negative + unbalanced + doubled > 0 {
        anyhow::bail!(
            "FAILED: {negative} negative balance(s), {unbalanced} unbalanced account(s), {doubled} doubled charge(s)"
        );
    }
    let calls: i64 = acknowledged.values().map(|(n, _)| n).sum();
    Ok(format!(
        "ok: {calls} charges on {} accounts, each once",
        acknowledged.len()
    ))
}

/// The baseline's own database on the same server (`<database>_base`, same schema), so its
/// outbox rows are nobody's to publish and its accounts are nobody else's.
async fn baseline_database(settings: &Settings) -> anyhow::Result<MySqlPool> {
    use sqlx::Connection;
    let url = settings.database.url.expose();
    let (server, name) = url
        .rsplit_once('/')
        .ok_or_else(|| anyhow::anyhow!("database.url names no database"))?;
    let name = format!("{name}_base");
    let mut admin = sqlx::MySqlConnection::connect(server).await?;
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "CREATE DATABASE IF NOT EXISTS `{name}`"
    )))
    .execute(&mut admin)
    .await?;
    let pool = sqlx::mysql::MySqlPoolOptions::new()
        .max_connections(40)
        .connect(&format!("{server}/{name}"))
        .await?;
    shared::db::migrate(&pool, Duration::from_secs(30)).await?;
    seed(&pool, settings, "base").await?;
    Ok(pool)
}

/// The benchmark means nothing unless each commit is durable before its reply.
async fn durability(pool: &MySqlPool) -> anyhow::Result<()> {
    let flush: String = sqlx::query_scalar("SELECT CAST(@@innodb_flush_log_at_trx_commit AS CHAR)")
        .fetch_one(pool)
        .await?;
    let sync_binlog: String = sqlx::query_scalar("SELECT CAST(@@sync_binlog AS CHAR)")
        .fetch_one(pool)
        .await?;
    let log_bin: String = sqlx::query_scalar("SELECT CAST(@@log_bin AS CHAR)")
        .fetch_one(pool)
        .await?;
    let version: String = sqlx::query_scalar("SELECT VERSION()")
        .fetch_one(pool)
        .await?;
    println!(
        "database {version}: innodb_flush_log_at_trx_commit = {flush}, sync_binlog = {sync_binlog}, log_bin = {log_bin}"
    );
    if flush != "1" {
        anyhow::bail!(
            "refusing to benchmark: innodb_flush_log_at_trx_commit must be 1 (a commit durable before its reply)"
        );
    }
    Ok(())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let settings = Settings::load(cli.config.as_ref())?;
    let pool = sqlx::mysql::MySqlPoolOptions::new()
        .max_connections(40)
        .connect(settings.database.url.expose())
        .await?;
    durability(&pool).await?;
    seed(&pool, &settings, "bench").await?;
    let base = baseline_database(&settings).await?;
    match cli.command {
        Command::Deduct(load) => {
            let (run, acknowledged) = (run_id(), Acknowledged::default());
            deduct(&settings, &load, &run, acknowledged.clone())
                .await?
                .print();
            println!("invariants: {}", verify(&pool, &run, &acknowledged).await?);
        }
        Command::Check { load, unseen } => {
            let accounts = if unseen {
                Accounts::unseen()
            } else {
                Accounts::new("bench", &load)
            };
            check(&settings, &load, accounts).await?.print()
        }
        Command::Health(load) => health(&settings, &load).await?.print(),
        Command::Baseline {
            connections,
            spread,
        } => baseline(&base, connections, spread, &run_id())
            .await
            .print(),
        Command::Suite {
            seconds,
            sysbench,
            pids,
        } => suite(&settings, &pool, &base, seconds, &sysbench, &watched(&pids)).await?,
    }
    Ok(())
}

/// Every scenario, each printed as it ends, then the table with the targets and the CPU time
/// per charge.
async fn suite(
    settings: &Settings,
    pool: &MySqlPool,
    base: &MySqlPool,
    seconds: u64,
    sysbench: &SysbenchRates,
    watched: &Watched,
) -> anyhow::Result<()> {
    warm_up(settings, base).await?;
    let runs = measure_suite(settings, pool, base, seconds, watched).await?;
    print_table(&runs, sysbench);
    print_cpu_table(&runs, watched);
    Ok(())
}

/// The servers and services of the stack whose CPU time per charge the suite reports.
const STACK: [&str; 5] = [
    "mariadbd",
    "command-svc",
    "query-svc",
    "nats-server",
    "redis-server",
];

/// The stack's processes, each by the pid given for its name or else found by name; then any
/// other process given by pid; then loadgen itself.
fn watched(pids: &[(String, u32)]) -> Watched {
    let given = |name: &str| {
        pids.iter()
            .find(|(given, _)| given == name)
            .map(|(_, pid)| Process::pid(name, *pid))
    };
    let stack = STACK
        .iter()
        .map(|name| given(name).unwrap_or_else(|| Process::named(name)));
    let others = pids
        .iter()
        .filter(|(name, _)| !STACK.contains(&name.as_str()))
        .map(|(name, pid)| Process::pid(name, *pid));
    let itself = Process::pid("loadgen", std::process::id());
    Watched::new(stack.chain(others).chain([itself]).collect())
}

/// The suite's spread: every seeded account (or the hot one) for `seconds`.
fn suite_spread(seconds: u64, hot: bool) -> Spread {
    Spread {
        seconds,
        accounts: ACCOUNTS,
        hot,
    }
}

/// The suite's closed loop: 64 callers over the seeded accounts (or the hot one).
fn suite_load(seconds: u64, hot: bool) -> Load {
    Load::closed(64, suite_spread(seconds, hot))
}

/// An open loop at half the rate `measured` reached: latency below saturation.
fn at_half_rate(measured: &Measured, seconds: u64) -> Load {
    Load {
        rate: Some((measured.rate() / 2.0).max(1.0) as u64),
        ..suite_load(seconds, false)
    }
}

/// Connections, statement caches, buffer pool.
async fn warm_up(settings: &Settings, base: &MySqlPool) -> anyhow::Result<()> {
    let _ = deduct(
        settings,
        &suite_load(2, false),
        &run_id(),
        Acknowledged::default(),
    )
    .await?;
    let _ = baseline(base, 32, suite_spread(2, false), &run_id()).await;
    Ok(())
}

/// What the suite's table is made of; `*_check` are the invariants' verdicts of charging runs.
struct SuiteRuns {
    base_wide: Measured,
    wide: Measured,
    wide_check: String,
    /// The wide run again between the priced and the limited runs, and after them: each of those
    /// is compared with the mean of the amount runs right before and after it, so that the
    /// machine's drift between runs (and the tables growing run after run) weighs on both sides
    /// alike.
    wide_between: Measured,
    wide_between_check: String,
    wide_after: Measured,
    wide_after_check: String,
    /// The wide run's charges priced by usage instead of asking an amount.
    priced: Measured,
    priced_check: String,
    /// The wide run with an account limit on every account.
    limited: Measured,
    limited_check: String,
    base_hot: Measured,
    hot: Measured,
    hot_check: String,
    zipf: Measured,
    zipf_check: String,
    /// DeductQuota in an open loop at `open_rate`, half the wide rate.
    open: Measured,
    open_check: String,
    open_rate: u64,
    health: Measured,
    checks: Measured,
    /// CheckQuota in an open loop at `open_checks_rate`, half its closed-loop rate.
    open_checks: Measured,
    open_checks_rate: u64,
    /// CheckQuota, each call on an account the service has never seen.
    unseen_checks: Measured,
}

impl SuiteRuns {
    /// What the priced run is held to: the rate of charges of an amount on 10,000 accounts,
    /// the mean of the runs right before and after it.
    fn amount_around_priced(&self) -> f64 {
        (self.wide.rate() + self.wide_between.rate()) / 2.0
    }

    /// What the limited run is held to, likewise.
    fn amount_around_limited(&self) -> f64 {
        (self.wide_between.rate() + self.wide_after.rate()) / 2.0
    }

    /// Errors of the gRPC runs the targets are about.
    fn grpc_errors(&self) -> u64 {
        [
            &self.wide,
            &self.priced,
            &self.wide_between,
            &self.limited,
            &self.wide_after,
            &self.hot,
            &self.zipf,
            &self.open,
            &self.checks,
            &self.open_checks,
            &self.unseen_checks,
        ]
        .iter()
        .map(|m| m.errors.values().sum::<u64>())
        .sum()
    }

    /// The runs that charged, in the table's order.
    fn charging(&self) -> [&Measured; 10] {
        [
            &self.base_wide,
            &self.wide,
            &self.priced,
            &self.wide_between,
            &self.limited,
            &self.wide_after,
            &self.base_hot,
            &self.hot,
            &self.zipf,
            &self.open,
        ]
    }
}

/// Runs the suite's scenarios one after the other, printing each.
async fn measure_suite(
    settings: &Settings,
    pool: &MySqlPool,
    base: &MySqlPool,
    seconds: u64,
    watched: &Watched,
) -> anyhow::Result<SuiteRuns> {
    let base_wide = watched_baseline(base, suite_spread(seconds, false), watched).await;
    base_wide.print();
    let (wide, wide_check) = charged(settings, pool, &suite_load(seconds, false), watched).await?;
    wide.print();
    publish_bench_prices(settings).await?;
    let priced_load = Load {
        priced: true,
        ..suite_load(seconds, false)
    };
    let (priced, priced_check) = charged(settings, pool, &priced_load, watched).await?;
    priced.print();
    // Every run of the bracket starts on a quiet bus, as the limited one and the one after do.
    wait_for_quiet_bus(settings, pool).await?;
    let (wide_between, wide_between_check) =
        charged(settings, pool, &suite_load(seconds, false), watched).await?;
    wide_between.print();
    // The same charges with a daily account limit on every account (far above what a run
    // spends), then the limits removed, so the runs after are the unlimited accounts again.
    set_bench_limits(settings, Some(BENCH_LIMIT)).await?;
    wait_for_quiet_bus(settings, pool).await?;
    let limited_load = Load {
        limited: true,
        ..suite_load(seconds, false)
    };
    let (limited, limited_check) = charged(settings, pool, &limited_load, watched).await?;
    limited.print();
    set_bench_limits(settings, None).await?;
    wait_for_quiet_bus(settings, pool).await?;
    let (wide_after, wide_after_check) =
        charged(settings, pool, &suite_load(seconds, false), watched).await?;
    wide_after.print();
    let hot_row = Spread {
        accounts: 1,
        ..suite_spread(seconds, true)
    };
    let base_hot = watched_baseline(base, hot_row, watched).await;
    base_hot.print();
    let (hot, hot_check) = charged(settings, pool, &suite_load(seconds, true), watched).await?;
    hot.print();
    let zipf_load = Load {
        zipf: Some(1.1),
        ..suite_load(seconds, false)
    };
    let (zipf, zipf_check) = charged(settings, pool, &zipf_load, watched).await?;
    zipf.print();
    let half = at_half_rate(&wide, seconds);
    let (open, open_check) = charged(settings, pool, &half, watched).await?;
    open.print();
    let health = health(settings, &suite_load(seconds, false)).await?;
    health.print();
    let checks = check_seeded(settings, &suite_load(seconds, false)).await?;
    checks.print();
    // Latency is measured below saturation, as for DeductQuota: in a closed loop at full rate
    // every caller also waits for the 63 others (the health check's own p99 is then ~3 ms).
    let half_checks = at_half_rate(&checks, seconds);
    let open_checks = check_seeded(settings, &half_checks).await?;
    open_checks.print();
    let unseen_checks = check(settings, &suite_load(seconds, false), Accounts::unseen()).await?;
    unseen_checks.print();
    Ok(SuiteRuns {
        base_wide,
        wide,
        wide_check,
        priced,
        priced_check,
        limited,
        limited_check,
        wide_between,
        wide_between_check,
        wide_after,
        wide_after_check,
        base_hot,
        hot,
        hot_check,
        zipf,
        zipf_check,
        open,
        open_check,
        open_rate: half.rate.unwrap_or(0),
        health,
        checks,
        open_checks,
        open_checks_rate: half_checks.rate.unwrap_or(0),
        unseen_checks,
    })
}

/// One line of the suite's table.
struct Row {
    scenario: String,
    ours: String,
    baseline: String,
    ratio: String,
    target: String,
    met: bool,
    invariants: String,
    /// One of the targets; the other rows are informative.
    counted: bool,
}

impl Row {
    /// Our rate against a reference measured in the suite; met at `at_least` times it.
    fn ratio(
        scenario: &str,
        ours: &Measured,
        reference: &Measured,
        at_least: f64,
        invariants: &str,
    ) -> Row {
        Row::against(
            scenario,
            ours,
            Some(reference.rate()),
            Some(at_least),
            invariants,
        )
    }

    /// Our rate against a reference rate measured outside the suite (sysbench), if it was; met
    /// at `at_least` times it.
    fn ratio_to_rate(
        scenario: &str,
        ours: &Measured,
        reference: Option<f64>,
        at_least: f64,
        invariants: &str,
    ) -> Row {
        Row::against(scenario, ours, reference, Some(at_least), invariants)
    }

    /// Our rate against a reference rate, shown beside the targets.
    fn informative_ratio(
        scenario: &str,
        ours: &Measured,
        reference: Option<f64>,
        invariants: &str,
    ) -> Row {
        Row::against(scenario, ours, reference, None, invariants)
    }

    /// Our rate against `reference` (none: not measured, which misses a target), with a target
    /// of `at_least` times it, or none (informative).
    fn against(
        scenario: &str,
        ours: &Measured,
        reference: Option<f64>,
        at_least: Option<f64>,
        invariants: &str,
    ) -> Row {
        let ratio = reference.map(|rate| ours.rate() / rate);
        Row {
            scenario: scenario.to_owned(),
            ours: format!("{:.0}/s", ours.rate()),
            baseline: reference.map_or("not measured".into(), |rate| format!("{rate:.0}/s")),
            ratio: ratio.map_or("-".into(), |ratio| format!("{ratio:.2}x")),
            target: at_least.map_or("(informative)".into(), |at_least| format!(">= {at_least}x")),
            met: at_least.is_none_or(|at_least| ratio.is_some_and(|ratio| ratio >= at_least)),
            invariants: invariants.to_owned(),
            counted: at_least.is_some(),
        }
    }

    /// The p99 of `operation` in an open loop at `rate`, half the max; met below `below_ms`.
    fn p99(
        operation: &str,
        measured: &Measured,
        rate: u64,
        below_ms: f64,
        invariants: &str,
    ) -> Row {
        let p99 = measured.quantile_ms(0.99);
        Row {
            scenario: format!("{operation} p99 at {rate}/s (half the max)"),
            ours: format!("{p99:.2} ms"),
            baseline: "-".into(),
            ratio: "-".into(),
            target: format!("< {below_ms} ms"),
            met: p99 < below_ms,
            invariants: invariants.to_owned(),
            counted: true,
        }
    }

    /// A figure shown beside the targets.
    fn informative(scenario: &str, ours: String, invariants: &str) -> Row {
        Row {
            scenario: scenario.to_owned(),
            ours,
            baseline: "-".into(),
            ratio: "-".into(),
            target: "(informative)".into(),
            met: true,
            invariants: invariants.to_owned(),
            counted: false,
        }
    }

    /// The row as a Markdown table line.
    fn line(&self) -> String {
        format!(
            "| {} | {} | {} | {} | {} | {} | {} |",
            self.scenario,
            self.ours,
            self.baseline,
            self.ratio,
            self.target,
            if self.met { "met" } else { "MISSED" },
            self.invariants
        )
    }
}

/// The table's rows, in its order: the charging targets are ratios to sysbench's rates, with
/// the plain-SQL baseline of the suite beside them.
fn table_rows(runs: &SuiteRuns, sysbench: &SysbenchRates) -> Vec<Row> {
    vec![
        Row::ratio_to_rate(
            "DeductQuota, 64 callers, 10,000 accounts vs sysbench, 32 threads",
            &runs.wide,
            sysbench.wide,
            2.0,
            &runs.wide_check,
        ),
        Row::informative_ratio(
            "DeductQuota, 64 callers, 10,000 accounts vs plain SQL, 32 connections",
            &runs.wide,
            Some(runs.base_wide.rate()),
            "as above",
        ),
        Row::informative_ratio(
            "DeductQuota, 64 callers, 10,000 accounts vs sysbench, 100 charges per transaction, 4 threads",
            &runs.wide,
            sysbench.ceiling,
            "as above",
        ),
        Row::ratio_to_rate(
            "DeductQuota priced by usage (3 meters) vs an amount (runs before and after), 64 callers, 10,000 accounts",
            &runs.priced,
            Some(runs.amount_around_priced()),
            0.95,
            &runs.priced_check,
        ),
        Row::ratio_to_rate(
            "DeductQuota with an account limit on every account vs without (runs before and after), 64 callers, 10,000 accounts",
            &runs.limited,
            Some(runs.amount_around_limited()),
            0.9,
            &runs.limited_check,
        ),
        Row::informative_ratio(
            "DeductQuota, 64 callers, 10,000 accounts, run again between, vs the first run",
            &runs.wide_between,
            Some(runs.wide.rate()),
            &runs.wide_between_check,
        ),
        Row::informative_ratio(
            "DeductQuota, 64 callers, 10,000 accounts, run again after, vs the first run",
            &runs.wide_after,
            Some(runs.wide.rate()),
            &runs.wide_after_check,
        ),
        Row::ratio_to_rate(
            "DeductQuota, 64 callers, one hot account vs sysbench, one row, 16 threads",
            &runs.hot,
            sysbench.hot,
            3.0,
            &runs.hot_check,
        ),
        Row::informative_ratio(
            "DeductQuota, 64 callers, one hot account vs plain SQL, one row, 32 connections",
            &runs.hot,
            Some(runs.base_hot.rate()),
            "as above",
        ),
        Row::informative(
            "DeductQuota, 64 callers, Zipf 1.1",
            format!("{:.0}/s", runs.zipf.rate()),
            &runs.zipf_check,
        ),
        Row::p99(
            "DeductQuota",
            &runs.open,
            runs.open_rate,
            10.0,
            &runs.open_check,
        ),
        Row::p99(
            "CheckQuota",
            &runs.open_checks,
            runs.open_checks_rate,
            2.0,
            "-",
        ),
        Row::informative(
            "CheckQuota p99, 64 callers at full rate",
            format!("{:.2} ms", runs.checks.quantile_ms(0.99)),
            "-",
        ),
        Row::ratio(
            "CheckQuota rate vs gRPC health check",
            &runs.checks,
            &runs.health,
            0.7,
            "-",
        ),
        Row::ratio(
            "CheckQuota rate on accounts never seen vs gRPC health check",
            &runs.unseen_checks,
            &runs.health,
            0.7,
            "-",
        ),
    ]
}

/// The table, then the errors and how many targets were met.
fn print_table(runs: &SuiteRuns, sysbench: &SysbenchRates) {
    let rows = table_rows(runs, sysbench);
    println!();
    println!("| scenario | ours | baseline | ratio | target | result | invariants |");
    println!("| --- | --- | --- | --- | --- | --- | --- |");
    for row in &rows {
        println!("{}", row.line());
    }
    let targets: Vec<&Row> = rows.iter().filter(|row| row.counted).collect();
    println!();
    println!(
        "errors in the gRPC runs: {}; targets met: {} of {}",
        runs.grpc_errors(),
        targets.iter().filter(|row| row.met).count(),
        targets.len()
    );
}

/// The CPU table: for each charging run, the microseconds of CPU each watched process spent per
/// charge; then which processes those were.
fn print_cpu_table(runs: &SuiteRuns, watched: &Watched) {
    println!();
    for line in cpu_lines(&runs.charging(), watched.processes()) {
        println!("{line}");
    }
    let described: Vec<String> = watched.processes().iter().map(Process::describe).collect();
    println!();
    println!("CPU time of: {}", described.join(", "));
}

/// The CPU table's lines: the head, then one per run that was watched.
fn cpu_lines(runs: &[&Measured], processes: &[Process]) -> Vec<String> {
    let names: Vec<&str> = processes.iter().map(|p| p.name.as_str()).collect();
    let mut lines = vec![
        format!(
            "| CPU µs per charge | charges | {} | all |",
            names.join(" | ")
        ),
        format!("| --- | --- |{} --- |", " --- |".repeat(names.len())),
    ];
    lines.extend(
        runs.iter()
            .filter_map(|run| Some(cpu_line(run, run.cpu.as_ref()?))),
    );
    lines
}

/// A run's line of the CPU table; `-` for a process that was not running throughout, left out
/// of `all`.
fn cpu_line(run: &Measured, cpu: &CpuSpent) -> String {
    let per_charge = cpu.micros_per(run.ok);
    let all: f64 = per_charge.iter().flatten().sum();
    let cells: Vec<String> = per_charge
        .iter()
        .map(|micros| micros.map_or("-".into(), |micros| format!("{micros:.1}")))
        .collect();
    format!(
        "| {} | {} | {} | {all:.1} |",
        run.name,
        run.ok,
        cells.join(" | ")
    )
}

fn run_id() -> String {
    format!("r{}", &uuid::Uuid::new_v4().simple().to_string()[..10])
}

/// A charging run with the CPU time the stack spent on it, and its check against the ledger; a
/// failed check fails the suite loudly.
async fn charged(
    settings: &Settings,
    pool: &MySqlPool,
    load: &Load,
    watched: &Watched,
) -> anyhow::Result<(Measured, String)> {
    let (run, acknowledged) = (run_id(), Acknowledged::default());
    let (measured, cpu) = watched
        .during(deduct(settings, load, &run, acknowledged.clone()))
        .await;
    let measured = Measured {
        cpu: Some(cpu),
        ..measured?
    };
    let verdict = verify(pool, &run, &acknowledged).await?;
    Ok((measured, verdict))
}

/// The plain-SQL baseline from 32 connections, with the CPU time the stack spent on it.
async fn watched_baseline(base: &MySqlPool, spread: Spread, watched: &Watched) -> Measured {
    let (measured, cpu) = watched.during(baseline(base, 32, spread, &run_id())).await;
    Measured {
        cpu: Some(cpu),
        ..measured
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn measured(ok: u64, p99_micros: u64) -> Measured {
        let mut histogram = micros_histogram();
        histogram.record(p99_micros).unwrap();
        Measured {
            name: "test".into(),
            ok,
            errors: HashMap::new(),
            elapsed: Duration::from_secs(1),
            histogram,
            lateness: None,
            cpu: None,
        }
    }

    /// A suite whose charging runs reached `wide` and `hot` charges per second (priced ones
    /// 96% of `wide`), their plain-SQL baselines half that, and whose checks reached `checks`
    /// (known accounts) and `unseen` (accounts never seen) against a health check at 1,000.
    fn suite_runs(wide: u64, hot: u64, checks: u64, unseen: u64) -> SuiteRuns {
        let run = |ok| measured(ok, 1_000);
        SuiteRuns {
            base_wide: run(wide / 2),
            wide: run(wide),
            wide_check: "ok wide".into(),
            wide_between: run(wide),
            wide_between_check: "ok wide between".into(),
            wide_after: run(wide),
            wide_after_check: "ok wide after".into(),
            priced: run(wide * 96 / 100),
            priced_check: "ok priced".into(),
            limited: run(wide * 92 / 100),
            limited_check: "ok limited".into(),
            base_hot: run(hot / 2),
            hot: run(hot),
            hot_check: "ok hot".into(),
            zipf: run(wide),
            zipf_check: "ok zipf".into(),
            open: run(wide / 2),
            open_check: "ok open".into(),
            open_rate: wide / 2,
            health: run(1_000),
            checks: run(checks),
            open_checks: run(checks / 2),
            open_checks_rate: checks / 2,
            unseen_checks: run(unseen),
        }
    }

    fn lines_starting(rows: &[Row], scenario: &str) -> Vec<String> {
        rows.iter()
            .filter(|row| row.scenario.starts_with(scenario))
            .map(Row::line)
            .collect()
    }

    #[test]
    fn the_command_line_is_well_formed() {
        <Cli as clap::CommandFactory>::command().debug_assert();
        let suite = Cli::try_parse_from([
            "loadgen",
            "suite",
            "--sysbench-wide",
            "8282.2",
            "--pid",
            "command-svc=42",
        ])
        .unwrap();
        let Command::Suite { sysbench, pids, .. } = suite.command else {
            panic!("not the suite");
        };
        assert_eq!((sysbench.wide, sysbench.hot), (Some(8282.2), None));
        assert_eq!(pids, [("command-svc".to_owned(), 42)]);
        assert!(Cli::try_parse_from(["loadgen", "suite", "--pid", "command-svc"]).is_err());
        assert!(Cli::try_parse_from(["loadgen", "check", "--unseen", "--hot"]).is_err());
    }

    #[test]
    fn table_rows_read_as_the_suite_prints_them() {
        let (ours, reference) = (measured(300, 1_000), measured(100, 1_000));
        assert_eq!(
            Row::ratio("wide", &ours, &reference, 2.0, "ok").line(),
            "| wide | 300/s | 100/s | 3.00x | >= 2x | met | ok |"
        );
        assert_eq!(
            Row::ratio("vs health", &reference, &ours, 0.7, "-").line(),
            "| vs health | 100/s | 300/s | 0.33x | >= 0.7x | MISSED | - |"
        );
        assert_eq!(
            Row::p99("CheckQuota", &measured(1, 3_000), 50, 2.0, "-").line(),
            "| CheckQuota p99 at 50/s (half the max) | 3.00 ms | - | - | < 2 ms | MISSED | - |"
        );
        assert_eq!(
            Row::informative("zipf", "7/s".into(), "ok").line(),
            "| zipf | 7/s | - | - | (informative) | met | ok |"
        );
    }

    #[test]
    fn charging_targets_are_ratios_to_sysbench_with_the_plain_sql_baseline_beside() {
        let sysbench = SysbenchRates {
            wide: Some(1_000.0),
            hot: Some(500.0),
            ceiling: Some(20_000.0),
        };
        let rows = table_rows(&suite_runs(3_000, 1_000, 800, 600), &sysbench);
        assert_eq!(
            lines_starting(&rows, "DeductQuota, 64 callers, 10,000 accounts vs"),
            [
                "| DeductQuota, 64 callers, 10,000 accounts vs sysbench, 32 threads | 3000/s | 1000/s | 3.00x | >= 2x | met | ok wide |",
                "| DeductQuota, 64 callers, 10,000 accounts vs plain SQL, 32 connections | 3000/s | 1500/s | 2.00x | (informative) | met | as above |",
                "| DeductQuota, 64 callers, 10,000 accounts vs sysbench, 100 charges per transaction, 4 threads | 3000/s | 20000/s | 0.15x | (informative) | met | as above |",
            ]
        );
        assert_eq!(
            lines_starting(&rows, "DeductQuota priced"),
            [
                "| DeductQuota priced by usage (3 meters) vs an amount (runs before and after), 64 callers, 10,000 accounts | 2880/s | 3000/s | 0.96x | >= 0.95x | met | ok priced |",
            ]
        );
        assert_eq!(
            lines_starting(&rows, "DeductQuota with an account limit"),
            [
                "| DeductQuota with an account limit on every account vs without (runs before and after), 64 callers, 10,000 accounts | 2760/s | 3000/s | 0.92x | >= 0.9x | met | ok limited |",
            ]
        );
        assert_eq!(
            lines_starting(&rows, "DeductQuota, 64 callers, one hot account vs"),
            [
                "| DeductQuota, 64 callers, one hot account vs sysbench, one row, 16 threads | 1000/s | 500/s | 2.00x | >= 3x | MISSED | ok hot |",
                "| DeductQuota, 64 callers, one hot account vs plain SQL, one row, 32 connections | 1000/s | 500/s | 2.00x | (informative) | met | as above |",
            ]
        );
        assert_eq!(
            lines_starting(&rows, "CheckQuota rate"),
            [
                "| CheckQuota rate vs gRPC health check | 800/s | 1000/s | 0.80x | >= 0.7x | met | - |",
                "| CheckQuota rate on accounts never seen vs gRPC health check | 600/s | 1000/s | 0.60x | >= 0.7x | MISSED | - |",
            ]
        );
    }

    #[test]
    fn priced_and_limited_runs_are_held_to_the_mean_of_the_amount_runs_around_them() {
        let mut runs = suite_runs(3_000, 1_000, 800, 600);
        runs.priced = measured(2_700, 1_000);
        runs.wide_between = measured(2_600, 1_000);
        runs.wide_after = measured(2_000, 1_000);
        runs.limited = measured(2_100, 1_000);
        let rows = table_rows(&runs, &SysbenchRates::default());
        assert_eq!(
            lines_starting(&rows, "DeductQuota priced"),
            [
                "| DeductQuota priced by usage (3 meters) vs an amount (runs before and after), 64 callers, 10,000 accounts | 2700/s | 2800/s | 0.96x | >= 0.95x | met | ok priced |",
            ]
        );
        assert_eq!(
            lines_starting(&rows, "DeductQuota with an account limit"),
            [
                "| DeductQuota with an account limit on every account vs without (runs before and after), 64 callers, 10,000 accounts | 2100/s | 2300/s | 0.91x | >= 0.9x | met | ok limited |",
            ]
        );
        assert_eq!(
            lines_starting(
                &rows,
                "DeductQuota, 64 callers, 10,000 accounts, run again after"
            ),
            [
                "| DeductQuota, 64 callers, 10,000 accounts, run again after, vs the first run | 2000/s | 3000/s | 0.67x | (informative) | met | ok wide after |",
            ]
        );
    }

    #[test]
    fn a_target_whose_sysbench_rate_is_missing_is_missed() {
        let rows = table_rows(
            &suite_runs(3_000, 1_000, 800, 600),
            &SysbenchRates::default(),
        );
        let wide = &lines_starting(
            &rows,
            "DeductQuota, 64 callers, 10,000 accounts vs sysbench",
        )[0];
        assert_eq!(
            wide,
            "| DeductQuota, 64 callers, 10,000 accounts vs sysbench, 32 threads | 3000/s | not measured | - | >= 2x | MISSED | ok wide |"
        );
        let counted = rows.iter().filter(|row| row.counted).count();
        assert_eq!(
            counted, 8,
            "2 charging ratios to sysbench, priced and limited to amount, 2 p99 bounds, 2 CheckQuota ratios"
        );
    }

    #[test]
    fn the_cpu_table_shows_microseconds_per_charge_of_each_process() {
        let processes = [Process::pid("mariadbd", 1), Process::pid("loadgen", 2)];
        let mut watched_run = measured(2_000, 1_000);
        watched_run.cpu = Some(CpuSpent {
            ticks: vec![Some(5), None],
            ticks_per_second: 100,
        });
        let unwatched_run = measured(7, 1_000);
        assert_eq!(
            cpu_lines(&[&watched_run, &unwatched_run], &processes),
            [
                "| CPU µs per charge | charges | mariadbd | loadgen | all |",
                "| --- | --- | --- | --- | --- |",
                "| test | 2000 | 25.0 | - | 25.0 |",
            ]
        );
    }
}
