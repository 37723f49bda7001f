//! Builds query-svc from its settings: binds its listener (port 0 in tests), prepares the read
//! model's tables, starts the projection, and serves REST until the shutdown signal.

use shared::{
    cache::SnapshotCache,
    shutdown::{Stop, Stopper, Woken},
};
use std::{future::Future, net::SocketAddr, time::Duration};

use shared::{bus::BusNames, clock::Clock, config::Settings, money::Micros, period::BillingZone};
use tokio::net::TcpListener;

use crate::{
    api::{self, auth::JwtKeys, command::CommandClient},
    projection::Projector,
    store::ReadStore,
};

/// How accounts are presented: the same rules as the command side's.
#[derive(Clone, Debug)]
pub struct AccountRules {
    pub zone: BillingZone,
    pub currency: String,
    pub default_monthly_free: Micros,
}

/// Everything a REST handler needs.
#[derive(Clone)]
pub struct AppState {
    pub store: ReadStore,
    pub cache: SnapshotCache,
    pub clock: Clock,
    pub accounts: AccountRules,
    pub jwt: JwtKeys,
    pub command: CommandClient,
    /// Requests waiting for `min_version`, woken by the projection's announcements.
    pub waiters: api::fresh::VersionWaiters,
}

pub struct Application {
    listener: TcpListener,
    /// The listener's bounds: connections, timeouts, body size.
    limits: shared::listener::Limits,
    nats: async_nats::Client,
    names: BusNames,
    state: AppState,
    projector: Projector,
}

impl Application {
    /// Binds the configured address, migrates when `migrate_on_start` is set (waiting up to a
    /// minute for MySQL), and connects lazily to Redis, NATS and command-svc, so that any of
    /// them being away only degrades the service.
    pub async fn build(settings: &Settings, clock: Clock) -> anyhow::Result<Application> {
        // Installed before anything is counted; rare events' counters start at zero, so that a
        // rate sees their first occurrence.
        settings.check_for(shared::config::Service::Query)?;
        shared::telemetry::metrics();
        for rare in [
            "billing_projection_dead_letters_total",
            "billing_projection_redeliveries_total",
        ] {
            metrics::counter!(rare).increment(0);
        }
        let store = ReadStore::connect_lazy(&settings.database)?;
        if settings.database.migrate_on_start {
            store.migrate(Duration::from_secs(60)).await?;
        }
        let cache = SnapshotCache::read_model(
            &settings.redis,
            Duration::from_secs(settings.query.snapshot_ttl_secs),
        )?;
        let accounts = AccountRules {
            zone: settings.billing.zone()?,
            currency: settings.billing.currency.clone(),
            default_monthly_free: settings.billing.default_monthly_free()?,
        };
        let nats = shared::bus::connect(&settings.nats).await?;
        let projector = Projector::new(
            nats.clone(),
            settings,
            store.clone(),
            cache.clone(),
            accounts.zone,
        );
        let state = AppState {
            store,
            cache,
            clock,
            accounts,
            jwt: JwtKeys::from_settings(&settings.auth),
            command: CommandClient::new(&settings.query)?,
            waiters: api::fresh::VersionWaiters::new(settings.query.max_version_waiters),
        };
        let listener = TcpListener::bind(&settings.query.http_addr).await?;
        Ok(Application {
            listener,
            limits: shared::listener::Limits::from_settings(&settings.listeners),
            nats,
            names: BusNames::from_settings(&settings.nats),
            state,
            projector,
        })
    }

    pub fn http_addr(&self) -> SocketAddr {
        self.listener
            .local_addr()
            .expect("a bound listener has an address")
    }

    pub fn state(&self) -> &AppState {
        &self.state
    }

    /// Serves and projects until `shutdown` completes; then stops accepting, lets open requests
    /// finish, and lets the projection finish (and ack) the batch in hand.
    pub async fn run_until_stopped(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        let (stopper, stop) = Stopper::new();
        let projection = tokio::spawn(self.projector.run(stop.clone()));
        tokio::spawn(wake_waiters(
            self.nats.clone(),
            self.names.projected_subject(),
            self.state.waiters.clone(),
            stop.clone(),
        ));
        let mut http_stop = stop;
        let http = shared::listener::serve_http(
            self.listener,
            api::router(self.state),
            self.limits,
            async move {
                http_stop.stopped().await;
            },
        );
        let http = tokio::spawn(http);
        tracing::info!("query-svc serving");
        shutdown.await;
        tracing::info!("query-svc shutting down");
        stopper.stop();
        let drained = tokio::time::timeout(Duration::from_secs(10), async {
            let (projection, http) = tokio::join!(projection, http);
            projection??;
            http??;
            anyhow::Ok(())
        })
        .await;
        drained.unwrap_or_else(|_| {
            tracing::warn!("query-svc did not drain within 10 s");
            Ok(())
        })
    }
}

/// Wakes the `min_version` readers of this replica with every replica's announcements of the
/// account versions projected, until `stop`. A subscription lost with NATS is made again.
async fn wake_waiters(
    nats: async_nats::Client,
    subject: String,
    waiters: api::fresh::VersionWaiters,
    mut stop: Stop,
) {
    use futures::StreamExt;
    loop {
        let subscribed = tokio::select! {
            () = stop.stopped() => return,
            subscribed = nats.subscribe(subject.clone()) => subscribed,
        };
        match subscribed {
            Ok(mut announcements) => loop {
                tokio::select! {
                    () = stop.stopped() => return,
                    next = announcements.next() => match next {
                        Some(message) => waiters.advanced_all(&message.payload),
                        None => break,
                    },
                }
            },
            Err(error) => tracing::debug!(%error, "projection announcements not subscribed yet"),
        }
        if stop.sleep_or_stop(Duration::from_secs(1)).await == Woken::ByStop {
            return;
        }
    }
}
