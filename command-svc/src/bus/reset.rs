//! The consumer of `BILLING_COMMANDS`: the durable `command-svc` consumer, shared by replicas,
//! carries out each `ResetFreeQuota` batch by batch (see [`crate::commands`]' reset), marking the
//! message in progress as it goes so JetStream does not hand it to another replica mid-run. A
//! replica that dies mid-run leaves its message unacked; it comes back after the ack wait and
//! the run resumes at the persisted cursor. The message is acked once the walk is finished.

use shared::{
    backoff::Backoff,
    shutdown::{Stop, Woken},
};
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, AckKind, consumer::PullConsumer};
use futures::StreamExt;
use prost::Message;
use shared::{
    bus::{self, BusNames},
    config::{NatsSettings, ResetSettings},
    period::Period,
    proto::v1::ResetFreeQuota,
    trace::TraceContext,
};
use tracing::Instrument;

use crate::commands::Commands;

pub struct ResetConsumer {
    commands: Commands,
    nats: async_nats::Client,
    names: BusNames,
    nats_settings: NatsSettings,
    settings: ResetSettings,
}

impl ResetConsumer {
    pub fn new(
        commands: Commands,
        nats: async_nats::Client,
        nats_settings: &NatsSettings,
        settings: &ResetSettings,
    ) -> Self {
        ResetConsumer {
            commands,
            nats,
            names: BusNames::from_settings(nats_settings),
            nats_settings: nats_settings.clone(),
            settings: settings.clone(),
        }
    }

    /// Consumes until `stop`; a run in hand stops between batches, unacked.
    pub async fn run(self, stop: Stop) {
        let js = jetstream::new(self.nats.clone());
        let (this, js) = (&self, &js);
        bus::keep_consuming("reset", stop, |mut stop| async move {
            this.consume(js, &mut stop).await
        })
        .await;
    }

    async fn consumer(&self, js: &jetstream::Context) -> anyhow::Result<PullConsumer> {
        let durable = bus::Durable {
            stream: self.names.commands_stream(),
            name: self.settings.consumer_name.clone(),
            filter: self.names.reset_free_quota_subject(),
            ack_wait: Duration::from_secs(self.settings.ack_wait_secs),
            // One reset at a time.
            max_ack_pending: Some(1),
        };
        Ok(bus::durable_consumer(js, &self.names, &self.nats_settings, durable).await?)
    }

    async fn consume(&self, js: &jetstream::Context, stop: &mut Stop) -> anyhow::Result<()> {
        let consumer = self.consumer(js).await?;
        let mut messages = consumer
            .stream()
            .max_messages_per_batch(1)
            .heartbeat(Duration::from_secs(5))
            .messages()
            .await?;
        loop {
            let next = tokio::select! {
                () = stop.stopped() => return Ok(()),
                next = messages.next() => next,
            };
            match next {
                Some(Ok(message)) => {
                    if message.info().is_ok_and(|info| info.delivered > 1) {
                        metrics::counter!("billing_reset_redeliveries_total").increment(1);
                    }
                    // The reset's events carry the trace of the command (the scheduler's or
                    // an operator's).
                    let incoming = TraceContext::incoming(
                        message
                            .headers
                            .as_ref()
                            .and_then(|headers| headers.get(shared::trace::TRACEPARENT))
                            .map(|value| value.as_str()),
                    );
                    let span = tracing::info_span!("reset", trace_id = tracing::field::Empty);
                    let context = shared::trace::attach(&span, incoming);
                    shared::trace::scope(context, self.handle(&message, stop).instrument(span))
                        .await;
                }
                Some(Err(error)) => tracing::debug!(%error, "command stream error"),
                None => anyhow::bail!("the command stream ended"),
            }
        }
    }

    async fn handle(&self, message: &jetstream::Message, stop: &mut Stop) {
        let Some((command_id, period)) = self.accept(message).await else {
            return;
        };
        tracing::info!(%period, %command_id, "reset started");
        let started = Instant::now();
        let _running = Running::start();
        let Some(shards) = self.plan(&command_id, period, stop).await else {
            return;
        };
        if !self
            .walk_all(message, &command_id, &shards, period, stop)
            .await
        {
            return; // stopped: unacked, resumed from the cursors after redelivery
        }
        let Some(granted) = self.finish(&command_id, stop).await else {
            return;
        };
        if let Err(error) = message.double_ack().await {
            tracing::warn!(%error, %command_id, "reset done but its ack was lost; a redelivery finds it finished");
        }
        metrics::counter!("billing_reset_finished_total").increment(1);
        metrics::gauge!("billing_reset_last_finished_timestamp_seconds")
            .set(chrono::Utc::now().timestamp() as f64);
        tracing::info!(%period, %command_id, granted, elapsed_ms = started.elapsed().as_millis() as u64, "reset finished");
    }

    /// The command's id and period, when it may be carried out; otherwise it is acked for good
    /// and counted as ignored.
    async fn accept(&self, message: &jetstream::Message) -> Option<(String, Period)> {
        let command = match ResetFreeQuota::decode(message.payload.as_ref()) {
            Ok(command) => command,
            Err(error) => {
                tracing::error!(%error, subject = %message.subject, "undecodable command ignored");
                ignored("undecodable");
                let _ = message.ack_with(AckKind::Term).await;
                return None;
            }
        };
        let period: Period = match command.period.parse() {
            Ok(period) => period,
            Err(error) => {
                tracing::error!(%error, command_id = %command.command_id, "reset with a malformed period ignored");
                ignored("malformed");
                let _ = message.ack_with(AckKind::Term).await;
                return None;
            }
        };
        if let Err(not_due) = self.commands.check_reset_period(period) {
            // The bus is a trust boundary: a reset that is not due would hand every account a
            // month's free quota early. Acked so it never comes back.
            tracing::error!(%not_due, command_id = %command.command_id, "reset not due; ignored");
            ignored(not_due.why());
            let _ = message.ack().await;
            return None;
        }
        let command_id = if command.command_id.is_empty() {
            shared::bus::reset_command_id(period)
        } else {
            command.command_id
        };
        Some((command_id, period))
    }

    /// The shards still to walk, planned once per command; `None` when asked to stop first.
    async fn plan(&self, command_id: &str, period: Period, stop: &mut Stop) -> Option<Vec<i32>> {
        let (workers, batch) = (self.settings.workers, self.settings.batch_size);
        let mut failures = 0;
        loop {
            match self
                .commands
                .plan_reset(command_id, period, workers, batch)
                .await
            {
                Ok(shards) => return Some(shards),
                Err(error) => {
                    failures += 1;
                    tracing::warn!(%error, failures, %command_id, "reset not planned yet; retrying");
                    if stop.sleep_or_stop(Backoff::RECONNECT.delay(failures)).await == Woken::ByStop
                    {
                        return None;
                    }
                }
            }
        }
    }

    /// Walks each range in a loop of its own, the message marked in progress meanwhile;
    /// whether every walk reached its end (`false` when asked to stop first).
    async fn walk_all(
        &self,
        message: &jetstream::Message,
        command_id: &str,
        shards: &[i32],
        period: Period,
        stop: &Stop,
    ) -> bool {
        let walks = futures::future::join_all(shards.iter().map(|&shard| {
            let mut stop = stop.clone();
            async move { self.walk(command_id, shard, period, &mut stop).await }
        }));
        let progress = async {
            loop {
                tokio::time::sleep(Duration::from_secs(1)).await;
                let _ = message.ack_with(AckKind::Progress).await;
            }
        };
        let walked = tokio::select! {
            walked = walks => walked,
            () = progress => unreachable!("marking progress never ends"),
        };
        walked.iter().all(|done| *done)
    }

    /// Marks the command finished; the accounts it granted, or `None` when it cannot be
    /// finished yet (the command comes back) or when asked to stop first.
    async fn finish(&self, command_id: &str, stop: &mut Stop) -> Option<i64> {
        loop {
            match self.commands.finish_reset(command_id).await {
                Ok(Some(granted)) => return Some(granted),
                Ok(None) => {
                    tracing::error!(%command_id, "a shard is still open after its walk; the command comes back");
                    return None;
                }
                Err(error) => {
                    tracing::warn!(%error, %command_id, "reset not marked finished yet; retrying");
                    if stop.sleep_or_stop(Backoff::RECONNECT.delay(1)).await == Woken::ByStop {
                        return None;
                    }
                }
            }
        }
    }

    /// Walks one range batch by batch to its end; `false` when asked to stop first.
    async fn walk(&self, command_id: &str, shard: i32, period: Period, stop: &mut Stop) -> bool {
        let mut failures = 0;
        loop {
            if stop.is_stopped() {
                return false;
            }
            match self
                .commands
                .reset_batch(command_id, shard, period, self.settings.batch_size)
                .await
            {
                Ok(batch) => {
                    failures = 0;
                    metrics::counter!("billing_reset_batches_total").increment(1);
                    metrics::counter!("billing_reset_accounts_granted_total")
                        .increment(batch.granted);
                    if batch.finished {
                        return true;
                    }
                }
                Err(error) => {
                    failures += 1;
                    tracing::warn!(%error, failures, %command_id, shard, "reset batch failed; retrying");
                    if stop.sleep_or_stop(Backoff::RECONNECT.delay(failures)).await == Woken::ByStop
                    {
                        return false;
                    }
                }
            }
        }
    }
}

/// Counts a reset command that was acked without being carried out.
fn ignored(why: &'static str) {
    metrics::counter!("billing_reset_commands_ignored_total", "why" => why).increment(1);
}

/// Counts a reset run in `billing_reset_running` while it lasts, however it ends.
struct Running;

impl Running {
    fn start() -> Running {
        metrics::gauge!("billing_reset_running").increment(1.0);
        Running
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        metrics::gauge!("billing_reset_running").decrement(1.0);
    }
}
