//! Publishing the reset command. Its `Nats-Msg-Id` is `reset-free-quota:<period>`, so two
//! replicas, a restart, or the start-up publication and the midnight firing together reach
//! command-svc once within JetStream's window; after it, a second run grants nothing new anyway.

use async_nats::jetstream::{self, message::PublishMessage};
use prost::Message;
use shared::{
    backoff::Backoff,
    bus::{self, BusNames},
    config::NatsSettings,
    period::Period,
    proto::v1::ResetFreeQuota,
    shutdown::{Stop, Woken},
    trace::TraceContext,
};

/// The command id the scheduler uses for `period`.
pub fn command_id(period: Period) -> String {
    format!("reset-free-quota:{period}")
}

/// Publishes `ResetFreeQuota{period}` and waits for JetStream's ack (a duplicate ack counts).
/// The command carries a `traceparent`: the current trace continued, or a new one, which the
/// grants' events then carry. Returns the trace id.
pub async fn publish_reset(
    js: &jetstream::Context,
    names: &BusNames,
    command_id: &str,
    period: Period,
    issued_at_ms: i64,
) -> anyhow::Result<String> {
    let trace =
        shared::trace::current().map_or_else(TraceContext::new_root, |current| current.child());
    let command = ResetFreeQuota {
        command_id: command_id.to_owned(),
        period: period.to_string(),
        issued_at_ms,
    };
    let message = PublishMessage::build()
        .payload(command.encode_to_vec().into())
        .message_id(command_id)
        .header(shared::trace::TRACEPARENT, trace.traceparent());
    js.send_publish(names.reset_free_quota_subject(), message)
        .await?
        .await?;
    Ok(trace.trace_id_hex())
}

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
    let id = command_id(period);
    let mut attempt = 0_u32;
    loop {
        let published = async {
            bus::ensure_streams(js, names, nats).await?;
            publish_reset(js, names, &id, period, issued_at_ms).await
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
