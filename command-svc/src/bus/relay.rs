//! The outbox relay: publishes every committed event to JetStream and marks it published only
//! after JetStream has acked it.
//!
//! One round claims a batch of unpublished rows in a MySQL transaction (`FOR UPDATE SKIP
//! LOCKED`, so replicas never publish the same row at once), publishes them all (each event with
//! `Nats-Msg-Id` = event id, the charges gathered into `BillingEventBatch` messages), awaits
//! every ack, then marks the rows and commits. Any failure rolls
//! the round back: the rows stay unpublished and are published again later, which JetStream
//! deduplicates within its window and consumers tolerate after it (they dedupe by event id).
//! So a committed event is published at least once and never lost; it is marked at most once.
//!
//! The relay wakes when a command commits events and polls besides, for rows written by other
//! replicas or committed while it was busy. Published rows are kept for the retention period, so
//! events can be re-published after a bus failure, then purged in bounded chunks.

use shared::{
    backoff::Backoff,
    shutdown::{Stop, Woken},
};
use std::{future::IntoFuture, sync::Arc, time::Duration};

use async_nats::{
    connection::State,
    jetstream::{
        self,
        context::{PublishError, PublishErrorKind},
        message::PublishMessage,
    },
};
use shared::{
    bus::{BATCH_HEADER, BusNames, TRACEPARENT_HEADER},
    clock::Clock,
    config::{NatsSettings, OutboxSettings},
};
use tokio::{sync::Notify, time::Instant};

use crate::store::{self, OutboxRow, PURGE_CHUNK, Store, StoreError};

/// NATS not connected for this long is an outage worth a warning (a connection still being
/// made at start-up is not), repeated this often while it lasts.
const OUTAGE_GRACE: Duration = Duration::from_secs(5);
const OUTAGE_WARN_EVERY: Duration = Duration::from_secs(60);
/// How often the outbox backlog is sampled for `/metrics`.
const BACKLOG_SAMPLE_EVERY: Duration = Duration::from_secs(5);

/// Publishes the outbox and purges it; one per command-svc process.
pub struct OutboxRelay {
    store: Store,
    clock: Clock,
    nats: async_nats::Client,
    js: jetstream::Context,
    names: BusNames,
    nats_settings: NatsSettings,
    batch_size: u32,
    poll_interval: Duration,
    publish_timeout: Duration,
    retention: chrono::Duration,
    purge_interval: Duration,
    wake: Arc<Notify>,
}

/// What one publishing round found.
#[derive(Debug, PartialEq, Eq)]
enum Round {
    /// A full batch went out: more rows may be waiting, so claim again at once.
    Full,
    /// Fewer rows than a batch (or none): the outbox is drained for now.
    Drained,
}

#[derive(Debug, thiserror::Error)]
enum RoundError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("publish failed: {0}")]
    Publish(#[from] PublishError),
    #[error("JetStream did not ack the batch within {0:?}")]
    AckTimeout(Duration),
}

impl RoundError {
    /// No stream takes the subject: the stream was deleted (or the server lost its store), so
    /// the streams must be created again before publishing.
    fn stream_missing(&self) -> bool {
        matches!(self, RoundError::Publish(error) if error.kind() == PublishErrorKind::StreamNotFound)
    }
}

impl OutboxRelay {
    /// A relay over `store`'s outbox, publishing through `nats` (which may not be connected
    /// yet: the relay waits for it). `clock` stamps `published_at` and dates the purge.
    pub fn new(
        store: Store,
        clock: Clock,
        nats: async_nats::Client,
        nats_settings: &NatsSettings,
        settings: &OutboxSettings,
    ) -> Self {
        let publish_timeout = Duration::from_millis(settings.publish_timeout_ms.max(1));
        let mut js = jetstream::new(nats.clone());
        // Bounds each ack (and the stream set-up requests) by the configured publish timeout.
        js.set_timeout(publish_timeout);
        let retention_hours = i64::try_from(settings.retention_hours).unwrap_or(i64::MAX);
        OutboxRelay {
            wake: store.outbox_notifier(),
            store,
            clock,
            nats,
            js,
            names: BusNames::from_settings(nats_settings),
            nats_settings: nats_settings.clone(),
            batch_size: settings.batch_size.max(1),
            poll_interval: Duration::from_millis(settings.poll_interval_ms.max(1)),
            publish_timeout,
            retention: chrono::Duration::try_hours(retention_hours)
                .unwrap_or(chrono::Duration::MAX),
            purge_interval: Duration::from_secs(settings.purge_interval_secs.max(1)),
        }
    }

    /// Publishes and purges until `stop` turns true. Publishing needs NATS and purging only
    /// MySQL, so they run side by side and neither waits for the other's dependency.
    /// At the stop, the outbox is flushed: what is unpublished goes out while NATS is connected
    /// (the caller bounds how long that may take).
    pub async fn run(self, stop: Stop) {
        tokio::join!(
            self.publish_loop(stop.clone()),
            self.purge_loop(stop.clone()),
            self.sample_backlog(stop)
        );
        self.flush().await;
        tracing::debug!("outbox relay stopped");
    }

    /// Publishes round after round until the outbox is drained, NATS is away or a round fails
    /// (the rows then wait for another replica, or for this one's restart).
    async fn flush(&self) {
        let mut rounds = 0_u32;
        while self.nats.connection_state() == State::Connected {
            rounds += 1;
            match self.publish_round().await {
                Ok(Round::Full) => {}
                Ok(Round::Drained) => {
                    tracing::debug!(rounds, "outbox flushed");
                    return;
                }
                Err(error) => {
                    tracing::warn!(%error, "outbox not flushed; the rows wait for the next relay");
                    return;
                }
            }
        }
    }

    /// Ensures the streams, then publishes round after round: at once after a full batch, on a
    /// commit's wake-up or the poll timer otherwise, after a growing pause when a round failed.
    /// While NATS is not connected nothing is claimed: a publish would only be buffered by the
    /// client, and the claimed rows locked for a whole ack timeout. A round in hand is always
    /// finished or rolled back before the stop is obeyed.
    async fn publish_loop(&self, mut stop: Stop) {
        let mut outage = OutageLog::default();
        let mut failures = 0_u32;
        loop {
            if !self.ensure_streams(&mut stop, &mut outage).await {
                return;
            }
            loop {
                if stop.is_stopped() {
                    return;
                }
                if !outage.connected(&self.nats) {
                    if self.idle(&mut stop).await {
                        return;
                    }
                    continue;
                }
                match self.publish_round().await {
                    Ok(Round::Full) => failures = 0,
                    Ok(Round::Drained) => {
                        failures = 0;
                        if self.idle(&mut stop).await {
                            return;
                        }
                    }
                    Err(error) => {
                        failures += 1;
                        metrics::counter!("billing_outbox_publish_errors_total").increment(1);
                        tracing::warn!(
                            %error,
                            failures,
                            "outbox batch not published; it stays in the outbox and is retried"
                        );
                        if stop.sleep_or_stop(Backoff::RECONNECT.delay(failures)).await
                            == Woken::ByStop
                        {
                            return;
                        }
                        if error.stream_missing() {
                            break;
                        }
                    }
                }
            }
        }
    }

    /// Creates the streams or updates them to the configured settings, once NATS is connected,
    /// retrying with backoff; false when the stop came first.
    async fn ensure_streams(&self, stop: &mut Stop, outage: &mut OutageLog) -> bool {
        let mut failures = 0_u32;
        loop {
            if !outage.connected(&self.nats) {
                if self.idle(stop).await {
                    return false;
                }
                continue;
            }
            let ensured = tokio::select! {
                biased;
                () = stop.stopped() => return false,
                ensured = shared::bus::ensure_streams(&self.js, &self.names, &self.nats_settings) => ensured,
            };
            match ensured {
                Ok(()) => return true,
                Err(error) => {
                    failures += 1;
                    tracing::warn!(
                        %error,
                        failures,
                        "cannot set up the JetStream streams; events wait in the outbox"
                    );
                    if stop.sleep_or_stop(Backoff::RECONNECT.delay(failures)).await == Woken::ByStop
                    {
                        return false;
                    }
                }
            }
        }
    }

    /// Waits for a commit's wake-up or the poll interval; true when the relay must stop.
    async fn idle(&self, stop: &mut Stop) -> bool {
        tokio::select! {
            biased;
            () = stop.stopped() => true,
            () = self.wake.notified() => false,
            () = tokio::time::sleep(self.poll_interval) => false,
        }
    }

    /// Claims one batch, publishes it, and marks it published once every row is acked.
    async fn publish_round(&self) -> Result<Round, RoundError> {
        let mut tx = self.store.begin().await?;
        let rows = store::claim_unpublished(&mut tx, self.batch_size).await?;
        if rows.is_empty() {
            tx.rollback().await.map_err(StoreError::from)?;
            return Ok(Round::Drained);
        }
        // The claimed rows' commits are visible; they are published only once they are durable.
        if let Err(error) =
            store::make_seen_commits_durable(self.store.pool(), self.clock.now()).await
        {
            let _ = tx.rollback().await;
            return Err(error.into());
        }
        let ids: Vec<u64> = rows.iter().map(|row| row.id).collect();
        let duplicates = match self.publish(rows).await {
            Ok(duplicates) => duplicates,
            Err(error) => {
                // Releases the claim; the rows are published again by a later round.
                let _ = tx.rollback().await;
                return Err(error);
            }
        };
        store::mark_published(&mut tx, &ids, self.clock.now()).await?;
        tx.commit().await.map_err(StoreError::from)?;
        metrics::counter!("billing_outbox_published_total").increment(ids.len() as u64);
        tracing::debug!(published = ids.len(), duplicates, "outbox batch published");
        Ok(if ids.len() == self.batch_size as usize {
            Round::Full
        } else {
            Round::Drained
        })
    }

    /// Sends the rows' messages (the charge events gathered into batches, see [`messages_of`]),
    /// then awaits all the acks together, so a round costs one round trip rather than one per
    /// event. Returns how many acks JetStream flagged as duplicates: messages published before
    /// whose marking was lost, which count as published.
    async fn publish(&self, rows: Vec<OutboxRow>) -> Result<usize, RoundError> {
        let batched = self.names.event_subject_named(BATCHED_KIND);
        let mut acks = Vec::new();
        for outgoing in messages_of(rows, &batched) {
            let mut message = PublishMessage::build()
                .payload(outgoing.payload.into())
                .message_id(outgoing.message_id);
            if outgoing.events > 1 {
                message = message.header(BATCH_HEADER, outgoing.events.to_string());
            }
            if let Some(traceparent) = outgoing.traceparent {
                message = message.header(TRACEPARENT_HEADER, traceparent);
            }
            acks.push(self.js.send_publish(outgoing.subject, message).await?);
        }
        let all_acked =
            futures::future::try_join_all(acks.into_iter().map(IntoFuture::into_future));
        let acked = tokio::time::timeout(self.publish_timeout, all_acked)
            .await
            .map_err(|_| RoundError::AckTimeout(self.publish_timeout))??;
        Ok(acked.iter().filter(|ack| ack.duplicate).count())
    }

    /// Every [`BACKLOG_SAMPLE_EVERY`], the rows waiting for publication and the age of the
    /// oldest as gauges (0 when none waits). A sample MySQL does not answer leaves the last.
    async fn sample_backlog(&self, mut stop: Stop) {
        loop {
            if let Ok((waiting, oldest)) = store::backlog(self.store.pool()).await {
                let age = oldest.map_or(0.0, |at| {
                    (self.clock.now() - at).num_milliseconds().max(0) as f64 / 1000.0
                });
                metrics::gauge!("billing_outbox_backlog").set(waiting as f64);
                metrics::gauge!("billing_outbox_oldest_age_seconds").set(age);
            }
            if stop.sleep_or_stop(BACKLOG_SAMPLE_EVERY).await == Woken::ByStop {
                return;
            }
        }
    }

    /// Every `purge_interval`, deletes rows published longer than the retention ago.
    async fn purge_loop(&self, mut stop: Stop) {
        let mut ticks = tokio::time::interval(self.purge_interval);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                biased;
                () = stop.stopped() => return,
                _ = ticks.tick() => {}
            }
            let cutoff = self
                .clock
                .now()
                .checked_sub_signed(self.retention)
                .unwrap_or(chrono::DateTime::<chrono::Utc>::MIN_UTC);
            match self.purge(cutoff, &stop).await {
                Ok(0) => {}
                Ok(deleted) => tracing::debug!(deleted, %cutoff, "published outbox rows purged"),
                Err(error) => {
                    tracing::warn!(%error, "outbox purge failed; retried at the next interval")
                }
            }
        }
    }

    /// Deletes in chunks, so no statement holds many locks for long, until a chunk comes back
    /// short (nothing older is left) or the relay is stopping.
    async fn purge(
        &self,
        cutoff: chrono::DateTime<chrono::Utc>,
        stop: &Stop,
    ) -> Result<u64, StoreError> {
        let mut total = 0;
        loop {
            let deleted = store::purge_published_chunk(self.store.pool(), cutoff).await?;
            total += deleted;
            if deleted < PURGE_CHUNK || stop.is_stopped() {
                return Ok(total);
            }
        }
    }
}

/// The kind whose events travel in batches: the charges, the bulk of the hot path's events.
/// Every other kind goes one event per message.
const BATCHED_KIND: &str = "quota_deducted";
/// A batch holds at most this many events, and at most about this many bytes (well under
/// NATS's default 1 MiB payload).
const BATCH_EVENTS: usize = 256;
const BATCH_BYTES: usize = 256 * 1024;

/// One message of a round: one event, or several of the batched kind.
#[derive(Debug, PartialEq, Eq)]
struct Outgoing {
    subject: String,
    payload: Vec<u8>,
    /// `Nats-Msg-Id`: the event's id, or one derived from the batch's first and last ids and its
    /// count, so the same batch published again is deduplicated by JetStream (and one cut
    /// differently is absorbed by the consumers, which dedupe by event id).
    message_id: String,
    /// The first event's trace context.
    traceparent: Option<String>,
    events: usize,
}

/// The round's messages: each row on its own, except the rows on `batched_subject`, gathered in
/// their order into batches of at most [`BATCH_EVENTS`] events and about [`BATCH_BYTES`]. A
/// batch of one is sent as a single event.
fn messages_of(rows: Vec<OutboxRow>, batched_subject: &str) -> Vec<Outgoing> {
    let mut messages = Vec::new();
    let mut batch: Vec<OutboxRow> = Vec::new();
    let mut bytes = 0;
    for row in rows {
        if row.subject != batched_subject {
            messages.push(single(row));
            continue;
        }
        if batch.len() == BATCH_EVENTS || bytes + row.payload.len() > BATCH_BYTES {
            messages.push(batched(std::mem::take(&mut batch)));
            bytes = 0;
        }
        bytes += row.payload.len();
        batch.push(row);
    }
    if !batch.is_empty() {
        messages.push(batched(batch));
    }
    messages
}

fn single(row: OutboxRow) -> Outgoing {
    Outgoing {
        subject: row.subject,
        payload: row.payload,
        message_id: row.event_id,
        traceparent: row.traceparent,
        events: 1,
    }
}

fn batched(mut rows: Vec<OutboxRow>) -> Outgoing {
    if rows.len() == 1 {
        return single(rows.pop().expect("one row"));
    }
    let (first, last) = (&rows[0], &rows[rows.len() - 1]);
    Outgoing {
        subject: first.subject.clone(),
        payload: shared::bus::batch_payload(rows.iter().map(|row| row.payload.as_slice())),
        message_id: format!("batch:{}:{}:{}", first.event_id, last.event_id, rows.len()),
        traceparent: first.traceparent.clone(),
        events: rows.len(),
    }
}

/// Reports NATS being unreachable without flooding the log: after a short grace, then once a
/// minute while it lasts, and once when it is back.
#[derive(Default)]
struct OutageLog {
    since: Option<Instant>,
    warned_at: Option<Instant>,
}

impl OutageLog {
    fn connected(&mut self, nats: &async_nats::Client) -> bool {
        let now = Instant::now();
        let connected = nats.connection_state() == State::Connected;
        metrics::gauge!("billing_nats_connected").set(if connected { 1.0 } else { 0.0 });
        if connected {
            if let Some(since) = self.since.take()
                && self.warned_at.take().is_some()
            {
                tracing::info!(outage = ?(now - since), "NATS is back; publishing the outbox");
            }
            return true;
        }
        let since = *self.since.get_or_insert(now);
        let due = self
            .warned_at
            .is_none_or(|at| now - at >= OUTAGE_WARN_EVERY);
        if now - since >= OUTAGE_GRACE && due {
            self.warned_at = Some(now);
            tracing::warn!(
                outage = ?(now - since),
                "NATS is not connected; events wait in the outbox"
            );
        }
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CHARGES: &str = "billing.v1.events.quota_deducted";

    fn row(id: u64, subject: &str, bytes: usize) -> OutboxRow {
        OutboxRow {
            id,
            event_id: format!("e{id}"),
            subject: subject.to_owned(),
            payload: vec![b'x'; bytes],
            traceparent: Some(format!("t{id}")),
        }
    }

    #[test]
    fn charges_travel_in_batches_and_every_other_event_alone() {
        let rows = vec![
            row(1, CHARGES, 10),
            row(2, "billing.v1.events.balance_low", 10),
            row(3, CHARGES, 10),
            row(4, CHARGES, 10),
        ];
        let messages = messages_of(rows, CHARGES);
        assert_eq!(messages.len(), 2);
        assert_eq!(
            (messages[0].message_id.as_str(), messages[0].events),
            ("e2", 1)
        );
        let batch = &messages[1];
        assert_eq!(
            (
                batch.message_id.as_str(),
                batch.events,
                batch.subject.as_str()
            ),
            ("batch:e1:e4:3", 3, CHARGES)
        );
        assert_eq!(batch.traceparent.as_deref(), Some("t1"));
        // Each event is field 1 of the batch: a tag, its length, its bytes.
        assert_eq!(batch.payload.len(), 3 * (1 + 1 + 10));
    }

    #[test]
    fn batches_are_bounded_by_count_and_bytes_and_a_batch_of_one_is_an_event() {
        let rows: Vec<OutboxRow> = (0..BATCH_EVENTS as u64 + 1)
            .map(|id| row(id, CHARGES, 4))
            .collect();
        let sizes: Vec<usize> = messages_of(rows, CHARGES)
            .iter()
            .map(|m| m.events)
            .collect();
        assert_eq!(sizes, vec![BATCH_EVENTS, 1]);
        let last = messages_of(vec![row(9, CHARGES, 4)], CHARGES)
            .pop()
            .unwrap();
        assert_eq!((last.message_id.as_str(), last.payload.len()), ("e9", 4));

        let big = BATCH_BYTES / 3 + 1;
        let rows = (0..4).map(|id| row(id, CHARGES, big)).collect();
        let sizes: Vec<usize> = messages_of(rows, CHARGES)
            .iter()
            .map(|m| m.events)
            .collect();
        assert_eq!(sizes, vec![2, 2]);
    }
}
