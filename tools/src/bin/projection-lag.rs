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

use billing_tools::{caller_token, command_client, http_url, percentile, user_token};
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
    let background_ok = Arc::new(AtomicU64::new(0));
    let background_failed = Arc::new(AtomicU64::new(0));

    // Steady background load: one charge every 1/rate seconds, spread over the users.
    let load = {
        let (stop, ok, failed) = (
            stop.clone(),
            background_ok.clone(),
            background_failed.clone(),
        );
        let client = command_client(&grpc, &gateway_token).await?;
        let (run, users, rate) = (run.clone(), args.users, args.rate.max(1));
        tokio::spawn(async move {
            let mut ticks = tokio::time::interval(Duration::from_nanos(1_000_000_000 / rate));
            let mut n: u64 = 0;
            while !stop.load(Ordering::Relaxed) {
                ticks.tick().await;
                n += 1;
                let mut client = client.clone();
                let request = pb::DeductQuotaRequest {
                    user_id: format!("lag-{run}-{}", n as usize % users),
                    amount_micros: 1,
                    request_id: format!("lag-{run}-{n}"),
                    api_id: "bench.lag".into(),
                    description: String::new(),
                };
                let (ok, failed) = (ok.clone(), failed.clone());
                tokio::spawn(async move {
                    match client.deduct_quota(request).await {
                        Ok(_) => ok.fetch_add(1, Ordering::Relaxed),
                        Err(_) => failed.fetch_add(1, Ordering::Relaxed),
                    };
                });
            }
        })
    };

    let mut samplers = Vec::new();
    for sampler in 0..args.samplers {
        let user = format!("lag-{run}-sampler-{sampler}");
        let token = user_token(&settings, &user, chrono::Duration::hours(1))?;
        let mut client = command_client(&grpc, &gateway_token).await?;
        let (stop, rest, run) = (stop.clone(), rest.clone(), run.clone());
        samplers.push(tokio::spawn(async move {
            let http = reqwest::Client::new();
            let mut lags = Vec::new();
            let mut n = 0;
            while !stop.load(Ordering::Relaxed) {
                n += 1;
                let request = pb::DeductQuotaRequest {
                    user_id: user.clone(),
                    amount_micros: 1,
                    request_id: format!("lag-{run}-s{sampler}-{n}"),
                    api_id: "bench.lag".into(),
                    description: String::new(),
                };
                let Ok(reply) = client.deduct_quota(request).await else {
                    continue;
                };
                let committed = Instant::now();
                let version = reply.into_inner().account.map_or(0, |a| a.version);
                loop {
                    let response = http
                        .get(format!("{rest}/api/v1/billing/account"))
                        .bearer_auth(&token)
                        .send()
                        .await;
                    let seen = match response {
                        Ok(response) => response
                            .json::<serde_json::Value>()
                            .await
                            .ok()
                            .and_then(|b| b["version"].as_i64()),
                        Err(_) => None,
                    };
                    if seen.is_some_and(|seen| seen >= version) {
                        lags.push(committed.elapsed());
                        break;
                    }
                    if committed.elapsed() > Duration::from_secs(30) {
                        eprintln!("version {version} of {user} not visible within 30 s");
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
            }
            lags
        }));
    }

    tokio::time::sleep(Duration::from_secs(args.seconds)).await;
    stop.store(true, Ordering::Relaxed);
    load.await?;
    let mut lags = Vec::new();
    for sampler in samplers {
        lags.extend(sampler.await?);
    }
    lags.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    println!("projection lag (gRPC reply of a charge -> REST account at that version)");
    println!(
        "load: {} charges/s for {} s over {} accounts; background ok {}, failed {}",
        args.rate,
        args.seconds,
        args.users,
        background_ok.load(Ordering::Relaxed),
        background_failed.load(Ordering::Relaxed)
    );
    println!(
        "samples {}  p50 {:.1} ms  p90 {:.1} ms  p99 {:.1} ms  max {:.1} ms",
        lags.len(),
        ms(percentile(&lags, 50.0)),
        ms(percentile(&lags, 90.0)),
        ms(percentile(&lags, 99.0)),
        ms(lags.last().copied().unwrap_or_default())
    );
    Ok(())
}
