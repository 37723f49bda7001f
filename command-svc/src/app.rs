//! Builds command-svc from its settings: binds both listeners (port 0 in tests), prepares the
//! store, starts the outbox relay, and serves gRPC and HTTP until the shutdown signal, then
//! drains within a bounded time.

use shared::cache::SnapshotCache;
use std::{future::Future, net::SocketAddr, time::Duration};

use shared::{clock::Clock, config::Settings, proto::v1 as pb};
use shared::{
    config::ListenerSettings,
    listener::Limits,
    shutdown::{Stop, Stopper, Woken},
};
use tokio::net::TcpListener;
use tonic::transport::{Server, server::Router};
use tower::layer::util::{Identity, Stack};

use crate::{
    api::{auth::Callers, grpc::GrpcApi, http, observe::ObserveLayer, webhook::WebhookKeys},
    bus::{AccountFollower, AlertDispatcher, OutboxRelay, ResetConsumer},
    commands::{Commands, Rules},
    store::Store,
};

pub struct Application {
    grpc_listener: TcpListener,
    http_listener: TcpListener,
    commands: Commands,
    callers: Callers,
    webhook: WebhookKeys,
    relay: OutboxRelay,
    reset: ResetConsumer,
    alerts: AlertDispatcher,
    follower: Option<AccountFollower>,
    reservations: shared::config::ReservationSettings,
    listeners: shared::config::ListenerSettings,
    shutdown_grace: Duration,
}

impl Application {
    /// Binds the configured addresses and migrates the database when `migrate_on_start` is set,
    /// waiting up to a minute for MySQL to answer. NATS is connected in the background: while it
    /// is away the service still starts, is ready and takes commands; their events wait in the
    /// outbox.
    pub async fn build(settings: &Settings, clock: Clock) -> anyhow::Result<Application> {
        settings.check_for(shared::config::Service::Command)?;
        // Installed before anything is counted.
        shared::telemetry::metrics();
        count_rare_events_from_zero();
        // Alert webhooks are called over TLS with the process's one crypto provider.
        crate::install_crypto_provider();
        let store = Store::connect_lazy(&settings.database)?;
        if settings.database.migrate_on_start {
            store.migrate(Duration::from_secs(60)).await?;
        }
        let nats = shared::bus::connect(&settings.nats).await?;
        let relay = OutboxRelay::new(
            store.clone(),
            clock.clone(),
            nats.clone(),
            &settings.nats,
            &settings.outbox,
        );
        let rules = Rules::from_settings(settings)?;
        let snapshots = SnapshotCache::command_side(
            &settings.redis,
            Duration::from_secs(settings.command.snapshot_ttl_secs),
        )?;
        let (clock_for_alerts, clock_for_follower) = (clock.clone(), clock.clone());
        let commands = Commands::new(store, clock, rules)
            .with_snapshots(snapshots)
            .with_memory(&settings.command.account_memory)
            .with_group_commit(&settings.command.group_commit);
        let alerts = AlertDispatcher::new(
            commands.store().clone(),
            clock_for_alerts,
            nats.clone(),
            &settings.nats,
            &settings.alerts,
        );
        let follower = commands.memory().map(|memory| {
            AccountFollower::new(
                nats.clone(),
                &settings.nats,
                memory.clone(),
                clock_for_follower,
            )
        });
        let reset = ResetConsumer::new(commands.clone(), nats, &settings.nats, &settings.reset);
        let grpc_listener = TcpListener::bind(&settings.command.grpc_addr).await?;
        let http_listener = TcpListener::bind(&settings.command.http_addr).await?;
        let mut secrets = vec![settings.payment.webhook_secret.clone()];
        secrets.extend(settings.payment.webhook_previous_secrets.iter().cloned());
        Ok(Application {
            grpc_listener,
            http_listener,
            commands,
            callers: Callers::new(&settings.auth.callers),
            webhook: WebhookKeys {
                secrets,
                tolerance_secs: i64::try_from(settings.payment.signature_tolerance_secs)
                    .unwrap_or(i64::MAX),
            },
            relay,
            reset,
            alerts,
            follower,
            reservations: settings.reservations.clone(),
            listeners: settings.listeners.clone(),
            shutdown_grace: Duration::from_millis(settings.command.shutdown_grace_ms),
        })
    }

    pub fn grpc_addr(&self) -> SocketAddr {
        self.grpc_listener
            .local_addr()
            .expect("a bound listener has an address")
    }

    pub fn http_addr(&self) -> SocketAddr {
        self.http_listener
            .local_addr()
            .expect("a bound listener has an address")
    }

    pub fn commands(&self) -> &Commands {
        &self.commands
    }

    /// Serves and relays the outbox until `shutdown` completes; then stops accepting, lets open
    /// calls and the reset batch in hand finish, and lets the relay publish what they committed,
    /// all within the grace period.
    pub async fn run_until_stopped(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        let (stopper, stop) = Stopper::new();
        let stopped = |mut stop: Stop| async move { stop.stopped().await };

        let limits = Limits::from_settings(&self.listeners);
        let grpc = grpc_server(&self.listeners, self.commands.clone(), self.callers.clone())
            .await?
            .serve_with_incoming_shutdown(
                shared::listener::incoming(self.grpc_listener, limits),
                stopped(stop.clone()),
            );

        let router = http::router(http::HttpState {
            commands: self.commands.clone(),
            webhook: self.webhook,
        });
        let http =
            shared::listener::serve_http(self.http_listener, router, limits, stopped(stop.clone()));

        // The relay stops last, so that it publishes what the last calls committed.
        let (relay_stopper, relay_stop) = Stopper::new();
        let relay = tokio::spawn(self.relay.run(relay_stop));
        let reset = tokio::spawn(self.reset.run(stop.clone()));
        let alerts = tokio::spawn(self.alerts.run(stop.clone()));
        if let Some(follower) = self.follower {
            // Nothing waits for it at shutdown: it only ever updates this process's memory.
            tokio::spawn(follower.run(stop.clone()));
        }
        let directory = tokio::spawn(keep_directory(self.commands.clone(), stop.clone()));
        // Nothing waits for it at shutdown: it only ever replaces this process's price book.
        tokio::spawn(keep_price_book(self.commands.clone(), stop.clone()));
        let sweeper = tokio::spawn(sweep_expired_holds(
            self.commands.clone(),
            self.reservations.clone(),
            stop,
        ));
        tracing::info!("command-svc serving");
        let grpc = tokio::spawn(grpc);
        let http = tokio::spawn(http);
        shutdown.await;
        tracing::info!("command-svc shutting down");
        stopper.stop();
        let drained = tokio::time::timeout(self.shutdown_grace, async {
            let (grpc, http, reset, alerts, sweeper, directory) =
                tokio::join!(grpc, http, reset, alerts, sweeper, directory);
            alerts?;
            directory?;
            sweeper?;
            relay_stopper.stop();
            let relay = relay.await;
            reset?;
            grpc??;
            http??;
            relay?;
            tracing::info!("command-svc drained");
            anyhow::Ok(())
        })
        .await;
        match drained {
            Ok(result) => result,
            Err(_) => {
                tracing::warn!(
                    "open calls or the outbox relay did not finish within the grace period"
                );
                Ok(())
            }
        }
    }
}

/// Rare events' counters start at zero, so that a rate sees their first occurrence.
fn count_rare_events_from_zero() {
    for rare in [
        "billing_insufficient_quota_total",
        "billing_unmatched_payments_total",
        "billing_outbox_publish_errors_total",
        "billing_reset_redeliveries_total",
        "billing_reset_finished_total",
        "billing_account_memory_cleared_total",
    ] {
        metrics::counter!(rare).increment(0);
    }
    for why in ["past", "early", "future", "malformed", "undecodable"] {
        metrics::counter!("billing_reset_commands_ignored_total", "why" => why).increment(0);
    }
    metrics::counter!("billing_group_commit_isolated_total").increment(0);
    metrics::counter!("billing_reservation_sweep_errors_total").increment(0);
    metrics::counter!("billing_undecodable_rows_total", "table" => "accounts").increment(0);
}

/// The gRPC server: health, reflection and the billing service behind its callers' check, bounded
/// by the listener settings (deadline, streams, message size, keep-alive pings).
async fn grpc_server(
    listeners: &ListenerSettings,
    commands: Commands,
    callers: Callers,
) -> anyhow::Result<Router<Stack<ObserveLayer, Identity>>> {
    let limits = Limits::from_settings(listeners);
    let (health_reporter, health_service) = tonic_health::server::health_reporter();
    health_reporter
        .set_serving::<pb::billing_command_service_server::BillingCommandServiceServer<GrpcApi>>()
        .await;
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(pb::FILE_DESCRIPTOR_SET)
        .build_v1()?;
    let billing = tonic::service::interceptor::InterceptedService::new(
        pb::billing_command_service_server::BillingCommandServiceServer::new(GrpcApi::new(
            commands,
        ))
        .max_decoding_message_size(listeners.grpc_max_message_bytes),
        move |request| callers.authenticate(request),
    );
    // Pinged well within the idle timeout, so a quiet but live connection stays open.
    let ping_every = limits.idle_timeout / 4;
    Ok(Server::builder()
        .tcp_nodelay(true)
        .timeout(limits.request_timeout)
        .max_concurrent_streams(listeners.grpc_max_concurrent_streams)
        .http2_keepalive_interval(Some(ping_every))
        .http2_keepalive_timeout(Some(ping_every))
        .layer(ObserveLayer::new())
        .add_service(health_service)
        .add_service(reflection)
        .add_service(billing))
}

/// Keeps the memory's directory of account ids up to date, every half of the memory's
/// `max_age`, until `stop` (nothing to do when the memory is off).
async fn keep_directory(commands: Commands, mut stop: Stop) {
    let Some(max_age) = commands.memory().map(|memory| memory.max_age()) else {
        return;
    };
    let every = (max_age / 2).max(Duration::from_millis(10));
    let mut last = None;
    loop {
        match commands.refresh_directory(last).await {
            Ok(started_at) => last = Some(started_at),
            Err(error) => {
                tracing::warn!(%error, "the directory of account ids is not up to date; trying again")
            }
        }
        if stop.sleep_or_stop(every).await == Woken::ByStop {
            return;
        }
    }
}

/// Reloads the price book every [`crate::commands::BOOK_REFRESH`] until `stop`, so that a charge
/// rarely waits for a load (a book older than its lease is reloaded on the charge's path).
async fn keep_price_book(commands: Commands, mut stop: Stop) {
    loop {
        if let Err(error) = commands.reload_prices().await {
            tracing::warn!(%error, "the price book is not up to date; trying again");
        }
        if stop.sleep_or_stop(crate::commands::BOOK_REFRESH).await == Woken::ByStop {
            return;
        }
    }
}

/// Releases the holds that expired, every `sweep_interval_ms`, until `stop`. Replicas sweep side
/// by side; each hold is released once (`Commands::release_expired`).
async fn sweep_expired_holds(
    commands: Commands,
    settings: shared::config::ReservationSettings,
    mut stop: Stop,
) {
    let every = Duration::from_millis(settings.sweep_interval_ms.max(10));
    while stop.sleep_or_stop(every).await == Woken::AfterPause {
        if let Err(error) = commands.release_expired(settings.sweep_batch.max(1)).await {
            tracing::warn!(%error, "expired holds not released yet; trying again");
        }
    }
}
