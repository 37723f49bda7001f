//! Projection lag: the time from a charge's commit (its gRPC reply) until the REST API shows the
//! account at that version, measured under a steady charge load against a running stack
//! (`make run-all`). Prints the distribution.
//!
//! `cargo run --release -p billing-tools --bin projection-lag -- --rate 200 --seconds 30`

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use billing_tools::{
    CommandClient, caller_token, command_client, http_url, percentile, user_token,
};
use clap::Parser;
use shared::{config::Settings, proto::v1 as pb};

#[derive(Parser)]
struct Args {
    /// Configuration of the stack under test.
    #[arg(long = "config", default_value = shared::config::DEFAULT_CONFIG_PATH)]
    config: String,
    /// Background charges per second, spread over `--users` accounts.
    #[arg(long, default_value_t = 200)]
    rate: u64,
    #[arg(long, default_value_t = 30)]
    seconds: u64,
    #[arg(long, default_value_t = 100)]
    users: usize,
    /// Concurrent samplers: each charges its own account and waits to see it over REST.
    #[arg(long, default_value_t = 4)]
    samplers: usize,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    command_svc::install_crypto_provider();
    let settings = Settings::load(args.config.as_ref())?;
    let grpc = http_url(&settings.command.grpc_addr);
    let rest = http_url(&settings.query.http_addr);
    let gateway_token = caller_token(&settings, "gateway")?;
    let run = uuid::Uuid::new_v4().simple().to_string()[..8].to_owned();
    let stop = Arc::new(AtomicBool::new(false));
    let background = Arc::new(Outcomes::default());

    let load = tokio::spawn(background_load(
        command_client(&grpc, &gateway_token).await?,
        run.clone(),
        args.users,
        args.rate.max(1),
        stop.clone(),
        background.clone(),
    ));
    let mut samplers = Vec::new();
    for sampler in 0..args.samplers {
        let user = format!("lag-{run}-sampler-{sampler}");
        let sampler = Sampler {
            token: user_token(&settings, &user, chrono::Duration::hours(1))?,
            client: command_client(&grpc, &gateway_token).await?,
            account_url: format!("{rest}/api/v1/billing/account"),
            request_prefix: format!("lag-{run}-s{sampler}"),
            user,
        };
        samplers.push(tokio::spawn(sampler.run(stop.clone())));
    }

    tokio::time::sleep(Duration::from_secs(args.seconds)).await;
    stop.store(true, Ordering::Relaxed);
    load.await?;
    let mut lags = Vec::new();
    for sampler in samplers {
        lags.extend(sampler.await?);
    }
    lags.sort();
    print_report(&args, &background, &lags);
    Ok(())
}

/// How the background charges ended.
#[derive(Default)]
struct Outcomes {
    ok: AtomicU64,
    failed: AtomicU64,
}

/// A charge of one micro, as both the load and the samplers send it.
fn lag_charge(user_id: String, request_id: String) -> pb::DeductQuotaRequest {
    pb::DeductQuotaRequest {
        user_id,
        amount_micros: 1,
        request_id,
        api_id: "bench.lag".into(),
        description: String::new(),
        ..Default::default()
    }
}

/// Steady background load until stopped: one charge every 1/`rate` seconds, spread over `users`
/// accounts, each counted in `outcomes` once answered.
async fn background_load(
    client: CommandClient,
    run: String,
    users: usize,
    rate: u64,
    stop: Arc<AtomicBool>,
    outcomes: Arc<Outcomes>,
) {
    let mut ticks = tokio::time::interval(Duration::from_nanos(1_000_000_000 / rate));
    let mut n: u64 = 0;
    while !stop.load(Ordering::Relaxed) {
        ticks.tick().await;
        n += 1;
        let mut client = client.clone();
        let request = lag_charge(
            format!("lag-{run}-{}", n as usize % users),
            format!("lag-{run}-{n}"),
        );
        let outcomes = outcomes.clone();
        tokio::spawn(async move {
            match client.deduct_quota(request).await {
                Ok(_) => outcomes.ok.fetch_add(1, Ordering::Relaxed),
                Err(_) => outcomes.failed.fetch_add(1, Ordering::Relaxed),
            };
        });
    }
}

/// Charges its own account and waits to see each charge over REST.
struct Sampler {
    client: CommandClient,
    user: String,
    /// The user's REST token.
    token: String,
    account_url: String,
    request_prefix: String,
}

impl Sampler {
    /// Charges one after the other until stopped; returns each charge's lag.
    async fn run(mut self, stop: Arc<AtomicBool>) -> Vec<Duration> {
        let http = reqwest::Client::new();
        let mut lags = Vec::new();
        let mut n = 0;
        while !stop.load(Ordering::Relaxed) {
            n += 1;
            let request = lag_charge(self.user.clone(), format!("{}-{n}", self.request_prefix));
            let Ok(reply) = self.client.deduct_quota(request).await else {
                continue;
            };
            let committed = Instant::now();
            let version = reply.into_inner().account.map_or(0, |a| a.version);
            match self.visible_after(&http, version, committed).await {
                Some(lag) => lags.push(lag),
                None => eprintln!("version {version} of {} not visible within 30 s", self.user),
            }
        }
        lags
    }

    /// How long after `committed` the REST API showed `version`; none if not within 30 s.
    async fn visible_after(
        &self,
        http: &reqwest::Client,
        version: i64,
        committed: Instant,
    ) -> Option<Duration> {
        loop {
            if self
                .seen_version(http)
                .await
                .is_some_and(|seen| seen >= version)
            {
                return Some(committed.elapsed());
            }
            if committed.elapsed() > Duration::from_secs(30) {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }

    /// The account's version as the REST API shows it now, if it answers.
    async fn seen_version(&self, http: &reqwest::Client) -> Option<i64> {
        let response = http
            .get(&self.account_url)
            .bearer_auth(&self.token)
            .send()
            .await
            .ok()?;
        let body = response.json::<serde_json::Value>().await.ok()?;
        body["version"].as_i64()
    }
}

/// The run's load and the distribution of its lags (sorted).
fn print_report(args: &Args, background: &Outcomes, lags: &[Duration]) {
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    println!("projection lag (gRPC reply of a charge -> REST account at that version)");
    println!(
        "load: {} charges/s for {} s over {} accounts; background ok {}, failed {}",
        args.rate,
        args.seconds,
        args.users,
        background.ok.load(Ordering::Relaxed),
        background.failed.load(Ordering::Relaxed)
    );
    println!(
        "samples {}  p50 {:.1} ms  p90 {:.1} ms  p99 {:.1} ms  max {:.1} ms",
        lags.len(),
        ms(percentile(lags, 50.0)),
        ms(percentile(lags, 90.0)),
        ms(percentile(lags, 99.0)),
        ms(lags.last().copied().unwrap_or_default())
    );
}
