//! The consumer of `BILLING_COMMANDS`: the durable `command-svc` consumer, shared by replicas,
//! carries out each `ResetFreeQuota` batch by batch (see [`crate::commands`]' reset), marking the
//! message in progress as it goes so JetStream does not hand it to another replica mid-run. A
//! replica that dies mid-run leaves its message unacked; it comes back after the ack wait and
//! the run resumes at the persisted cursor. The message is acked once the walk is finished.

use std::time::{Duration, Instant};

use async_nats::jetstream::{
    self, AckKind,
    consumer::{AckPolicy, DeliverPolicy, PullConsumer, pull},
};
use futures::StreamExt;
use prost::Message;
use shared::{
    bus::{self, BusNames},
    config::{NatsSettings, ResetSettings},
    period::Period,
    proto::v1::ResetFreeQuota,
};
use tokio::sync::watch;

use crate::commands::Commands;

pub struct ResetConsumer {
    commands: Commands,
    nats: async_nats::Client,
    names: BusNames,
    nats_settings: NatsSettings,
    settings: ResetSettings,
}

fn backoff(attempt: u32) -> Duration {
    Duration::from_millis(100 * 2_u64.pow(attempt.min(6))).min(Duration::from_secs(5))
}

/// Sleeps unless asked to stop first; `false` when asked to stop.
async fn pause(stop: &mut watch::Receiver<bool>, delay: Duration) -> bool {
    tokio::select! {
        _ = stop.wait_for(|stop| *stop) => false,
        () = tokio::time::sleep(delay) => true,
    }
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
    pub async fn run(self, mut stop: watch::Receiver<bool>) {
        let js = jetstream::new(self.nats.clone());
        let mut attempt = 0;
        while !*stop.borrow() {
            // Setting up the consumer waits on NATS; the stop must not wait for NATS.
            let mut consuming = stop.clone();
            let consumed = tokio::select! {
                _ = stop.wait_for(|stop| *stop) => return,
                consumed = self.consume(&js, &mut consuming) => consumed,
            };
            match consumed {
                Ok(()) => return,
                Err(error) => {
                    attempt += 1;
                    if attempt > 1 || !error.to_string().contains("timed out") {
                        tracing::warn!(%error, "command consumer interrupted; reconnecting");
                    }
                    if !pause(&mut stop, backoff(attempt)).await {
                        return;
                    }
                }
            }
        }
    }

    async fn consumer(&self, js: &jetstream::Context) -> anyhow::Result<PullConsumer> {
        bus::ensure_streams(js, &self.names, &self.nats_settings).await?;
        let stream = js.get_stream(self.names.commands_stream()).await?;
        let config = pull::Config {
            durable_name: Some(self.settings.consumer_name.clone()),
            filter_subject: self.names.reset_free_quota_subject(),
            deliver_policy: DeliverPolicy::All,
            ack_policy: AckPolicy::Explicit,
            ack_wait: Duration::from_secs(self.settings.ack_wait_secs),
            max_ack_pending: 1,
            ..Default::default()
        };
        Ok(stream.create_consumer(config).await?)
    }

    async fn consume(
        &self,
        js: &jetstream::Context,
        stop: &mut watch::Receiver<bool>,
    ) -> anyhow::Result<()> {
        let consumer = self.consumer(js).await?;
        let mut messages = consumer
            .stream()
            .max_messages_per_batch(1)
            .heartbeat(Duration::from_secs(5))
            .messages()
            .await?;
        loop {
            let next = tokio::select! {
                _ = stop.wait_for(|stop| *stop) => return Ok(()),
                next = messages.next() => next,
            };
            match next {
                Some(Ok(message)) => self.handle(&message, stop).await,
                Some(Err(error)) => tracing::debug!(%error, "command stream error"),
                None => anyhow::bail!("the command stream ended"),
            }
        }
    }

    async fn handle(&self, message: &jetstream::Message, stop: &mut watch::Receiver<bool>) {
        let command = match ResetFreeQuota::decode(message.payload.as_ref()) {
            Ok(command) => command,
            Err(error) => {
                tracing::error!(%error, subject = %message.subject, "undecodable command ignored");
                let _ = message.ack_with(AckKind::Term).await;
                return;
            }
        };
        let period: Period = match command.period.parse() {
            Ok(period) => period,
            Err(error) => {
                tracing::error!(%error, command_id = %command.command_id, "reset with a malformed period ignored");
                let _ = message.ack_with(AckKind::Term).await;
                return;
            }
        };
        if let Err(refused) = self.commands.check_reset_period(period) {
            tracing::warn!(%refused, command_id = %command.command_id, "reset ignored");
            let _ = message.ack().await;
            return;
        }
        let command_id = if command.command_id.is_empty() {
            format!("reset-free-quota:{period}")
        } else {
            command.command_id
        };
        tracing::info!(%period, %command_id, "reset started");
        let (started, mut last_progress, mut granted, mut failures) =
            (Instant::now(), Instant::now(), 0_u64, 0_u32);
        loop {
            if *stop.borrow() {
                return; // unacked: resumed from the cursor after redelivery
            }
            match self
                .commands
                .reset_batch(&command_id, period, self.settings.batch_size.max(1))
                .await
            {
                Ok(batch) => {
                    failures = 0;
                    granted += batch.granted;
                    metrics::counter!("billing_reset_accounts_granted_total")
                        .increment(batch.granted);
                    if batch.finished {
                        break;
                    }
                }
                Err(error) => {
                    failures += 1;
                    tracing::warn!(%error, failures, %command_id, "reset batch failed; retrying");
                    if !pause(stop, backoff(failures)).await {
                        return;
                    }
                }
            }
            if last_progress.elapsed() > Duration::from_secs(1) {
                let _ = message.ack_with(AckKind::Progress).await;
                last_progress = Instant::now();
            }
        }
        if let Err(error) = message.double_ack().await {
            tracing::warn!(%error, %command_id, "reset done but its ack was lost; a redelivery finds it finished");
        }
        tracing::info!(%period, %command_id, granted, elapsed_ms = started.elapsed().as_millis() as u64, "reset finished");
    }
}
