//! Publishing the reset command. Its `Nats-Msg-Id` is `reset-free-quota:<period>`, so two
//! replicas, a restart, or the start-up publication and the midnight firing together reach
//! command-svc once within JetStream's window; after it, a second run grants nothing new anyway.

use async_nats::jetstream;
use shared::{
    backoff::Backoff,
    bus::{self, BusNames},
    config::NatsSettings,
    period::Period,
    shutdown::{Stop, Woken},
};

/// Publishes until JetStream acks, creating the streams first if needed, backing off between
/// tries. `false` when asked to stop first.
pub async fn publish_until_acked(
    js: &jetstream::Context,
    names: &BusNames,
    nats: &NatsSettings,
    period: Period,
    issued_at_ms: i64,
    stop: &mut Stop,
) -> bool {
    let id = bus::reset_command_id(period);
    let mut attempt = 0_u32;
    loop {
        let published = async {
            bus::ensure_streams(js, names, nats).await?;
            Ok::<_, anyhow::Error>(bus::publish_reset(js, names, &id, period, issued_at_ms).await?)
        };
        match published.await {
            Ok(trace_id) => {
                tracing::info!(%period, command_id = %id, %trace_id, "reset command published");
                metrics::counter!("billing_scheduler_reset_published_total").increment(1);
                return true;
            }
            Err(error) => {
                attempt += 1;
                metrics::counter!("billing_scheduler_publish_failures_total").increment(1);
                tracing::warn!(%error, %period, attempt, "reset command not published yet; retrying");
                if stop.sleep_or_stop(Backoff::RECONNECT.delay(attempt)).await == Woken::ByStop {
                    return false;
                }
            }
        }
    }
}
