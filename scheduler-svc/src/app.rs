//! Builds scheduler-svc: its probes, the start-up publication for the current period, and one
//! one-shot job at a time for the next firing, re-created after each firing (see [`schedule`]).
//!
//! [`schedule`]: crate::schedule

use std::{future::Future, net::SocketAddr, sync::Arc, time::Duration};

use async_nats::{connection::State as NatsState, jetstream};
use axum::{Json, Router, extract::State, http::StatusCode, response::IntoResponse, routing::get};
use chrono::{DateTime, Utc};
use serde_json::json;
use shared::{
    bus::BusNames,
    clock::Clock,
    config::{NatsSettings, Settings},
    shutdown::{Stop, Stopper, Woken},
};
use tokio::net::TcpListener;
use tokio_cron_scheduler::{Job, JobScheduler};

use crate::{publisher, schedule::FireSchedule};

/// What a firing needs.
struct Scheduler {
    nats: async_nats::Client,
    js: jetstream::Context,
    names: BusNames,
    nats_settings: NatsSettings,
    schedule: FireSchedule,
    clock: Clock,
    stop: Stop,
}

pub struct Application {
    listener: TcpListener,
    /// The listener's bounds: connections, timeouts, body size.
    limits: shared::listener::Limits,
    nats: async_nats::Client,
    names: BusNames,
    nats_settings: NatsSettings,
    schedule: FireSchedule,
    clock: Clock,
}

impl Application {
    /// Binds the probes' address and connects to NATS in the background (the probes answer, and
    /// `/readyz` says not ready, while NATS is away).
    pub async fn build(settings: &Settings, clock: Clock) -> anyhow::Result<Application> {
        settings.check_for(shared::config::Service::Scheduler)?;
        let schedule = FireSchedule::new(&settings.scheduler.cron, settings.billing.zone()?)?;
        // Installed before anything is counted; rare events' counters start at zero, so that a
        // rate sees their first occurrence.
        shared::telemetry::metrics();
        for rare in [
            "billing_scheduler_reset_published_total",
            "billing_scheduler_publish_failures_total",
        ] {
            metrics::counter!(rare).increment(0);
        }
        let nats = shared::bus::connect(&settings.nats).await?;
        let listener = TcpListener::bind(&settings.scheduler.http_addr).await?;
        Ok(Application {
            listener,
            limits: shared::listener::Limits::from_settings(&settings.listeners),
            nats,
            names: BusNames::from_settings(&settings.nats),
            nats_settings: settings.nats.clone(),
            schedule,
            clock,
        })
    }

    pub fn http_addr(&self) -> SocketAddr {
        self.listener
            .local_addr()
            .expect("a bound listener has an address")
    }

    pub async fn run_until_stopped(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        let (stopper, stop) = Stopper::new();
        let scheduler = Arc::new(Scheduler {
            js: jetstream::new(self.nats.clone()),
            nats: self.nats.clone(),
            names: self.names,
            nats_settings: self.nats_settings,
            schedule: self.schedule,
            clock: self.clock,
            stop: stop.clone(),
        });

        // A scheduler that was down at midnight still triggers the month: the current period is
        // published at start (a re-run grants nothing twice).
        let startup = {
            let scheduler = scheduler.clone();
            tokio::spawn(async move {
                let now = scheduler.clock.now();
                let period = scheduler.schedule.period_of(now);
                let mut stop = scheduler.stop.clone();
                publisher::publish_until_acked(
                    &scheduler.js,
                    &scheduler.names,
                    &scheduler.nats_settings,
                    period,
                    now.timestamp_millis(),
                    &mut stop,
                )
                .await;
            })
        };
        let jobs = JobScheduler::new().await?;
        schedule_next(jobs.clone(), scheduler.clone()).await?;
        jobs.start().await?;

        let router = router(scheduler.clone());
        let mut http_stop = stop;
        let http = shared::listener::serve_http(self.listener, router, self.limits, async move {
            http_stop.stopped().await;
        });
        let http = tokio::spawn(http);
        tracing::info!(next = %scheduler.schedule.next_after(scheduler.clock.now()), "scheduler-svc serving");

        shutdown.await;
        tracing::info!("scheduler-svc shutting down");
        stopper.stop();
        let mut jobs = jobs;
        let _ = jobs.shutdown().await;
        let _ = tokio::time::timeout(Duration::from_secs(10), async {
            tokio::join!(startup, http)
        })
        .await;
        Ok(())
    }
}

/// The probes and metrics; anything else answers 404 or 405 with the common JSON error body.
fn router(scheduler: Arc<Scheduler>) -> Router {
    Router::new()
        .route(
            shared::endpoints::LIVENESS,
            get(|| async { Json(json!({ "status": "ok" })) }),
        )
        .route(shared::endpoints::READINESS, get(readyz))
        .route(
            shared::endpoints::METRICS,
            get(|| async { shared::telemetry::metrics().render() }),
        )
        .fallback(|| async {
            (
                StatusCode::NOT_FOUND,
                Json(json!({ "error": { "code": "NOT_FOUND", "message": "no such route" } })),
            )
        })
        .method_not_allowed_fallback(|| async {
            (
                StatusCode::METHOD_NOT_ALLOWED,
                Json(json!({ "error": {
                    "code": "METHOD_NOT_ALLOWED",
                    "message": "method not allowed on this route",
                } })),
            )
        })
        .layer(axum::middleware::from_fn(shared::telemetry::observe_http))
        .with_state(scheduler)
}

/// Adds the one-shot job of the next firing; the job publishes for its *scheduled* instant and
/// then adds the next job, so the fire time is computed afresh each month.
fn schedule_next(
    jobs: JobScheduler,
    scheduler: Arc<Scheduler>,
) -> std::pin::Pin<Box<dyn Future<Output = anyhow::Result<()>> + Send>> {
    Box::pin(async move {
        let fire = scheduler.schedule.next_after(scheduler.clock.now());
        metrics::gauge!("billing_scheduler_next_fire_timestamp_seconds")
            .set(fire.timestamp() as f64);
        let delay = (fire - scheduler.clock.now()).to_std().unwrap_or_default();
        let job = Job::new_one_shot_at_instant_async(
            std::time::Instant::now() + delay,
            move |_, jobs| {
                let scheduler = scheduler.clone();
                Box::pin(async move {
                    fire_at(&scheduler, fire).await;
                    if !scheduler.stop.is_stopped()
                        && let Err(error) = schedule_next(jobs, scheduler.clone()).await
                    {
                        tracing::error!(%error, "the next reset could not be scheduled");
                    }
                })
            },
        )?;
        jobs.add(job).await?;
        Ok(())
    })
}

/// Publishes the reset of the month of `scheduled`, once the wall clock has reached it (a timer
/// on the monotonic clock can wake a little early).
async fn fire_at(scheduler: &Scheduler, scheduled: DateTime<Utc>) {
    let mut stop = scheduler.stop.clone();
    loop {
        let early = (scheduled - scheduler.clock.now())
            .to_std()
            .unwrap_or_default();
        if early.is_zero() {
            break;
        }
        if stop.sleep_or_stop(early).await == Woken::ByStop {
            return;
        }
    }
    let period = scheduler.schedule.period_of(scheduled);
    metrics::gauge!("billing_scheduler_last_fire_timestamp_seconds")
        .set(scheduled.timestamp() as f64);
    let now = scheduler.clock.now().timestamp_millis();
    publisher::publish_until_acked(
        &scheduler.js,
        &scheduler.names,
        &scheduler.nats_settings,
        period,
        now,
        &mut stop,
    )
    .await;
}

/// Ready when NATS is connected: the one thing a firing needs.
async fn readyz(State(scheduler): State<Arc<Scheduler>>) -> impl IntoResponse {
    if scheduler.nats.connection_state() == NatsState::Connected {
        (StatusCode::OK, Json(json!({ "status": "ready" })))
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({ "error": { "code": "UNAVAILABLE", "message": "NATS is unreachable" } })),
        )
    }
}
