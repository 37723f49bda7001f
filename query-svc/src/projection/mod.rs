//! The projection: the durable JetStream consumer that applies `BILLING_EVENTS` to the read model.
//!
//! Messages are taken as they arrive and applied in batches: one MySQL transaction per batch,
//! then the Redis snapshots, then the acks — so an event is acked only once it is projected, and
//! a crash between the two only means a redelivery, which the idempotent writes absorb.
//!
//! An event this build cannot project (undecodable, a newer schema, an unknown kind, or one the
//! read model refuses) is not lost: it is delivered again a bounded number of times and then
//! moved to the dead-letter stream, from which operators replay it once a build knows it.
//! Outages of MySQL are not the event's fault: they are waited out and never dead-letter.

pub mod plan;

use shared::cache::{CachedSnapshot, SnapshotCache};
use shared::{
    backoff::Backoff,
    shutdown::{Stop, Woken},
};
use std::{
    collections::{BTreeMap, HashMap},
    time::Duration,
};

use async_nats::jetstream::{
    self, AckKind,
    consumer::{PullConsumer, pull},
    message::PublishMessage,
};
use futures::{FutureExt, StreamExt};
use prost::Message as _;
use shared::{
    bus::{self, BusNames},
    config::{NatsSettings, QuerySettings, Settings},
    period::BillingZone,
    proto::v1 as pb,
};

use crate::store::{ReadStore, projection as writes};
use plan::{Plan, Refused, Unreadable};

pub struct Projector {
    nats: async_nats::Client,
    names: BusNames,
    nats_settings: NatsSettings,
    settings: QuerySettings,
    store: ReadStore,
    cache: SnapshotCache,
    zone: BillingZone,
}

/// A received message and the events it carries (one, or those of a batch), each decoded or
/// refused.
struct Delivery {
    message: jetstream::Message,
    events: Vec<Result<pb::BillingEvent, Unreadable>>,
}

impl Delivery {
    fn is_batch(&self) -> bool {
        self.message
            .headers
            .as_ref()
            .is_some_and(|headers| headers.get(bus::BATCH_HEADER).is_some())
    }
}

/// An event that can be projected, and the delivery (by index) that brought it.
#[derive(Clone)]
struct Projectable<'d> {
    plan: Plan<'d>,
    event: &'d pb::BillingEvent,
    delivery: usize,
}

/// An event the read model does not take: the whole message when `event` is `None` (a single
/// event, or a batch that does not decode), else one event cut out of a batch.
struct Refusal {
    event: Option<pb::BillingEvent>,
    why: Refused,
}

/// What becomes of each delivery once its projectable events were applied.
#[derive(Default)]
struct Outcome {
    refusals: Vec<Refusal>,
    /// The read model was unavailable for one of its events: delivered again soon.
    again: bool,
}

impl Projector {
    pub fn new(
        nats: async_nats::Client,
        settings: &Settings,
        store: ReadStore,
        cache: SnapshotCache,
        zone: BillingZone,
    ) -> Self {
        Projector {
            names: BusNames::from_settings(&settings.nats),
            nats_settings: settings.nats.clone(),
            settings: settings.query.clone(),
            nats,
            store,
            cache,
            zone,
        }
    }

    /// Consumes until `stop`; the batch in hand is finished (or left unacked) first. Meanwhile
    /// samples the consumer's backlog and the dead-letter stream for `/metrics`.
    pub async fn run(self, stop: Stop) -> anyhow::Result<()> {
        let js = jetstream::new(self.nats.clone());
        tokio::join!(
            self.consume_until_stopped(&js, stop.clone()),
            self.sample_backlog(&js, stop)
        );
        Ok(())
    }

    /// Stopping inside a batch is safe: its transaction rolls back or its acks are never sent,
    /// and the redelivered events are absorbed.
    async fn consume_until_stopped(&self, js: &jetstream::Context, stop: Stop) {
        bus::keep_consuming("projection", stop, |mut stop| async move {
            self.consume(js, &mut stop).await
        })
        .await;
    }

    /// Every [`BACKLOG_SAMPLE_EVERY`], the consumer's backlog (events not yet delivered, and
    /// delivered but not acked) and the dead-letter stream's size as gauges. A sample that
    /// cannot be taken (NATS away) leaves the last values.
    async fn sample_backlog(&self, js: &jetstream::Context, mut stop: Stop) {
        loop {
            let connected =
                self.nats.connection_state() == async_nats::connection::State::Connected;
            metrics::gauge!("billing_nats_connected").set(if connected { 1.0 } else { 0.0 });
            let events = self.names.events_stream();
            if let Ok(mut consumer) = js
                .get_consumer_from_stream::<pull::Config, _, _>(
                    &self.settings.consumer_name,
                    &events,
                )
                .await
                && let Ok(info) = consumer.info().await
            {
                metrics::gauge!("billing_projection_consumer_pending").set(info.num_pending as f64);
                metrics::gauge!("billing_projection_consumer_ack_pending")
                    .set(info.num_ack_pending as f64);
            }
            if let Ok(mut dlq) = js.get_stream(self.names.dlq_stream()).await
                && let Ok(info) = dlq.info().await
            {
                metrics::gauge!("billing_dlq_messages").set(info.state.messages as f64);
            }
            if stop.sleep_or_stop(BACKLOG_SAMPLE_EVERY).await == Woken::ByStop {
                return;
            }
        }
    }

    /// The durable consumer shared by every replica; its settings are brought up to date.
    async fn consumer(&self, js: &jetstream::Context) -> anyhow::Result<PullConsumer> {
        let durable = bus::Durable {
            stream: self.names.events_stream(),
            name: self.settings.consumer_name.clone(),
            filter: self.names.events_filter(),
            ack_wait: Duration::from_secs(self.settings.ack_wait_secs),
            max_ack_pending: Some((self.settings.batch_size * 8) as i64),
        };
        Ok(bus::durable_consumer(js, &self.names, &self.nats_settings, durable).await?)
    }

    async fn consume(&self, js: &jetstream::Context, stop: &mut Stop) -> anyhow::Result<()> {
        let consumer = self.consumer(js).await?;
        let mut messages = consumer
            .stream()
            .max_messages_per_batch(self.settings.batch_size)
            .heartbeat(Duration::from_secs(5))
            .messages()
            .await?;
        loop {
            let first = tokio::select! {
                () = stop.stopped() => return Ok(()),
                next = messages.next() => next,
            };
            let first = match first {
                Some(Ok(message)) => message,
                Some(Err(error)) => {
                    tracing::warn!(%error, "event stream error");
                    continue;
                }
                None => anyhow::bail!("the event stream ended"),
            };
            // Whatever else has already arrived joins the batch; nothing waits for more.
            let mut batch = vec![first];
            while batch.len() < self.settings.batch_size {
                match messages.next().now_or_never() {
                    Some(Some(Ok(message))) => batch.push(message),
                    _ => break,
                }
            }
            self.handle(js, batch, stop).await;
        }
    }

    async fn handle(
        &self,
        js: &jetstream::Context,
        batch: Vec<jetstream::Message>,
        stop: &mut Stop,
    ) {
        let deliveries: Vec<Delivery> = batch
            .into_iter()
            .map(|message| {
                count_redelivery(&message);
                Delivery {
                    events: plan::decode_message(message.headers.as_ref(), &message.payload),
                    message,
                }
            })
            .collect();
        let mut outcomes: Vec<Outcome> = deliveries.iter().map(|_| Outcome::default()).collect();
        let mut projectable = Vec::new();
        for (index, delivery) in deliveries.iter().enumerate() {
            for event in &delivery.events {
                let (event, why) = match event {
                    Ok(event) => match plan::plan(event, self.zone) {
                        Ok(plan) => {
                            projectable.push(Projectable {
                                plan,
                                event,
                                delivery: index,
                            });
                            continue;
                        }
                        Err(why) => (Some(event), why),
                    },
                    Err(unreadable) => (unreadable.event.as_deref(), unreadable.why.clone()),
                };
                outcomes[index].refusals.push(refusal(delivery, event, why));
            }
        }
        // One lock order for every replica: by account, then version.
        projectable.sort_by(|a, b| key(&a.plan).cmp(&key(&b.plan)));
        let applied = if projectable.is_empty() {
            Vec::new()
        } else {
            match self.apply_batch(&deliveries, &projectable, stop).await {
                Some(Ok(())) => projectable,
                Some(Err(error)) => {
                    tracing::warn!(%error, "a batch was refused; projecting its events one by one");
                    self.apply_one_by_one(&deliveries, projectable, &mut outcomes)
                        .await
                }
                None => return, // stopping: unacked, redelivered after ack_wait
            }
        };
        metrics::counter!("billing_projection_events_applied_total")
            .increment(applied.len() as u64);
        self.refresh_snapshots(&applied).await;
        let mut projected: Vec<Vec<&pb::BillingEvent>> = vec![Vec::new(); deliveries.len()];
        for item in &applied {
            projected[item.delivery].push(item.event);
        }
        for ((delivery, outcome), events) in deliveries.iter().zip(outcomes).zip(&projected) {
            self.settle(js, delivery, outcome, events).await;
        }
    }

    /// Applies the batch in one transaction, retrying while the read model is unavailable (and
    /// telling JetStream the deliveries are in progress); `None` when the stop came first.
    async fn apply_batch(
        &self,
        deliveries: &[Delivery],
        projectable: &[Projectable<'_>],
        stop: &mut Stop,
    ) -> Option<Result<(), sqlx::Error>> {
        let plans: Vec<&Plan> = projectable.iter().map(|item| &item.plan).collect();
        let mut attempt = 0;
        loop {
            match self.apply(&plans).await {
                Err(error) if shared::db::is_transient(&error) => {
                    attempt += 1;
                    tracing::warn!(%error, attempt, "read model unavailable; retrying the batch");
                    for delivery in deliveries {
                        let _ = delivery.message.ack_with(AckKind::Progress).await;
                    }
                    if stop.sleep_or_stop(Backoff::RECONNECT.delay(attempt)).await == Woken::ByStop
                    {
                        return None;
                    }
                }
                done => return Some(done),
            }
        }
    }

    /// Isolates the event that the read model refuses, so the others of its batch go through;
    /// the events applied.
    async fn apply_one_by_one<'d>(
        &self,
        deliveries: &'d [Delivery],
        projectable: Vec<Projectable<'d>>,
        outcomes: &mut [Outcome],
    ) -> Vec<Projectable<'d>> {
        let mut applied = Vec::new();
        for item in projectable {
            match self.apply(&[&item.plan]).await {
                Ok(()) => applied.push(item),
                Err(error) if shared::db::is_transient(&error) => {
                    outcomes[item.delivery].again = true;
                }
                Err(error) => {
                    let why = Refused::Invalid(error.to_string());
                    let delivery = &deliveries[item.delivery];
                    outcomes[item.delivery]
                        .refusals
                        .push(refusal(delivery, Some(item.event), why));
                }
            }
        }
        applied
    }

    /// Acknowledges a delivery whose events were all projected; one with a refused event is
    /// delivered again later (its projected events are absorbed then) or, after `max_deliver`
    /// deliveries, has its refused events moved to the dead-letter stream and is acknowledged.
    async fn settle(
        &self,
        js: &jetstream::Context,
        delivery: &Delivery,
        outcome: Outcome,
        projected: &[&pb::BillingEvent],
    ) {
        let message = &delivery.message;
        if outcome.again {
            let _ = message
                .ack_with(AckKind::Nak(Some(Duration::from_secs(1))))
                .await;
            return;
        }
        if outcome.refusals.is_empty() {
            if let Err(error) = message.ack().await {
                tracing::warn!(%error, "ack lost; the event will be redelivered and absorbed");
            }
            for event in projected {
                observe_projected(event, message);
            }
            return;
        }
        let delivered = message
            .info()
            .map(|info| info.delivered)
            .unwrap_or(i64::MAX);
        if delivered < self.settings.max_deliver {
            let delay = Backoff::RECONNECT.delay(delivered.clamp(0, 6) as u32);
            let _ = message.ack_with(AckKind::Nak(Some(delay))).await;
            return;
        }
        for refused in &outcome.refusals {
            if let Err(error) = self.dead_letter(js, message, refused).await {
                tracing::warn!(%error, "dead-letter stream unavailable; the event will come back");
                let _ = message
                    .ack_with(AckKind::Nak(Some(Duration::from_secs(1))))
                    .await;
                return;
            }
            metrics::counter!("billing_projection_dead_letters_total").increment(1);
            tracing::error!(subject = %message.subject, reason = %refused.why, "event moved to the dead-letter stream");
        }
        let _ = message.ack_with(AckKind::Term).await;
    }

    /// Projects a batch in one transaction, with a few multi-row statements whatever its size:
    /// the newest snapshot of each account (which locks the accounts' rows, in account order, as
    /// every writer of the read model does first), then the records not there yet, the usage of
    /// exactly those, and the orders.
    async fn apply(&self, plans: &[&Plan<'_>]) -> Result<(), sqlx::Error> {
        let mut tx = self.store.pool().begin().await?;
        let mut newest: BTreeMap<&str, &writes::SnapshotRow> = BTreeMap::new();
        for snapshot in plans.iter().filter_map(|plan| plan.snapshot.as_ref()) {
            let entry = newest.entry(snapshot.user_id).or_insert(snapshot);
            if snapshot.version > entry.version {
                *entry = snapshot;
            }
        }
        let snapshots: Vec<&writes::SnapshotRow> = newest.into_values().collect();
        writes::upsert_accounts(&mut tx, &snapshots).await?;

        let mut records: BTreeMap<&str, (&writes::RecordRow, Option<&writes::UsageKey>)> =
            BTreeMap::new();
        for (record, usage) in plans.iter().filter_map(|plan| plan.record.as_ref()) {
            records
                .entry(record.record_id.as_str())
                .or_insert((record, usage.as_ref()));
        }
        let ids: Vec<&str> = records.keys().copied().collect();
        for present in writes::existing_records(&mut tx, &ids).await? {
            records.remove(present.as_str());
        }
        let fresh: Vec<&writes::RecordRow> = records.values().map(|(record, _)| *record).collect();
        writes::insert_records(&mut tx, &fresh).await?;
        let mut usage: BTreeMap<(&str, &writes::UsageKey), writes::UsageDelta> = BTreeMap::new();
        for (record, key) in records.values() {
            if let Some(key) = key {
                usage
                    .entry((record.user_id.as_str(), key))
                    .or_default()
                    .count(record);
            }
        }
        let deltas: Vec<(&str, &writes::UsageKey, writes::UsageDelta)> = usage
            .into_iter()
            .map(|((user, key), delta)| (user, key, delta))
            .collect();
        writes::add_usages(&mut tx, &deltas).await?;

        for order in plans.iter().filter_map(|plan| plan.order.as_ref()) {
            writes::upsert_order(&mut tx, order).await?;
        }
        tx.commit().await
    }

    /// Writes the newest snapshot of each account in the batch to Redis (version-guarded there).
    async fn refresh_snapshots(&self, applied: &[Projectable<'_>]) {
        let mut newest: HashMap<&str, (i64, &pb::BillingEvent)> = HashMap::new();
        for item in applied {
            let Some(snapshot) = &item.plan.snapshot else {
                continue;
            };
            let entry = newest
                .entry(snapshot.user_id)
                .or_insert((snapshot.version, item.event));
            if snapshot.version > entry.0 {
                *entry = (snapshot.version, item.event);
            }
        }
        let snapshots: Vec<(&str, CachedSnapshot)> = newest
            .into_iter()
            .filter_map(|(user_id, (version, event))| {
                let account = event.account.as_ref()?;
                let snapshot = CachedSnapshot {
                    version,
                    state: account.encode_to_vec(),
                    updated_at_ms: event.occurred_at_ms,
                };
                Some((user_id, snapshot))
            })
            .collect();
        let puts: Vec<(&str, &CachedSnapshot)> = snapshots
            .iter()
            .map(|(user_id, snapshot)| (*user_id, snapshot))
            .collect();
        // One pipeline for the batch; a snapshot not written is older than Redis's or waits
        // for the account's next event (Redis is a cache).
        self.cache.put_many_if_newer(&puts).await;
        self.announce(&snapshots).await;
    }

    /// Tells every replica which account versions the read model now holds, one `user version`
    /// line per account, in one core NATS message per batch: their `min_version` readers wake
    /// at once. At most once: a lost announcement only delays a reader to its next recheck.
    async fn announce(&self, snapshots: &[(&str, CachedSnapshot)]) {
        if snapshots.is_empty() {
            return;
        }
        let mut lines = String::with_capacity(snapshots.len() * 32);
        for (user_id, snapshot) in snapshots {
            lines.push_str(user_id);
            lines.push(' ');
            lines.push_str(&snapshot.version.to_string());
            lines.push('\n');
        }
        let subject = self.names.projected_subject();
        if let Err(error) = self.nats.publish(subject, lines.into()).await {
            tracing::debug!(%error, "projection not announced");
        }
    }

    /// Publishes a refused event (or the whole message) to the dead-letter stream, with where
    /// and why it was refused.
    async fn dead_letter(
        &self,
        js: &jetstream::Context,
        message: &jetstream::Message,
        refused: &Refusal,
    ) -> anyhow::Result<()> {
        let info = message.info().map_err(|e| anyhow::anyhow!("{e}"))?;
        let reason: String = refused
            .why
            .to_string()
            .chars()
            .map(|c| if c.is_control() { ' ' } else { c })
            .collect();
        let (payload, message_id) = match &refused.event {
            Some(event) => (
                event.encode_to_vec().into(),
                format!(
                    "dlq:{}:{}:{}",
                    info.stream, info.stream_sequence, event.event_id
                ),
            ),
            None => (
                message.payload.clone(),
                format!("dlq:{}:{}", info.stream, info.stream_sequence),
            ),
        };
        let mut publish = PublishMessage::build()
            .payload(payload)
            .header(bus::ORIGINAL_SUBJECT_HEADER, message.subject.as_str())
            .header(bus::DEAD_LETTER_REASON_HEADER, reason.as_str())
            .message_id(message_id);
        if let Some(id) = message.headers.as_ref().and_then(|h| h.get("Nats-Msg-Id")) {
            publish = publish.header(bus::ORIGINAL_MSG_ID_HEADER, id.as_str());
        }
        if refused.event.is_none()
            && let Some(count) = message
                .headers
                .as_ref()
                .and_then(|h| h.get(bus::BATCH_HEADER))
        {
            publish = publish.header(bus::BATCH_HEADER, count.as_str());
        }
        if let Some(traceparent) = traceparent(message) {
            publish = publish.header(shared::trace::TRACEPARENT, traceparent);
        }
        js.send_publish(self.names.dlq_subject(&message.subject), publish)
            .await?
            .await?;
        Ok(())
    }
}

/// A refused event of `delivery`: cut out of its batch when it decoded, else the whole message.
fn refusal(delivery: &Delivery, event: Option<&pb::BillingEvent>, why: Refused) -> Refusal {
    Refusal {
        event: event.filter(|_| delivery.is_batch()).cloned(),
        why,
    }
}

/// How often the consumer's backlog and the dead-letter stream are sampled.
const BACKLOG_SAMPLE_EVERY: Duration = Duration::from_secs(5);

/// The `traceparent` header the event was published with (that of the command that caused it).
fn traceparent(message: &jetstream::Message) -> Option<&str> {
    message
        .headers
        .as_ref()?
        .get(shared::trace::TRACEPARENT)
        .map(|value| value.as_str())
}

/// An event delivered more than once: its ack was late or lost, or its projection failed.
fn count_redelivery(message: &jetstream::Message) {
    if message.info().is_ok_and(|info| info.delivered > 1) {
        metrics::counter!("billing_projection_redeliveries_total").increment(1);
    }
}

/// The projection lag of an event (from its commit to its projection), and a debug line in the
/// trace of the command that caused it.
fn observe_projected(event: &pb::BillingEvent, message: &jetstream::Message) {
    let lag_ms = chrono::Utc::now().timestamp_millis() - event.occurred_at_ms;
    metrics::histogram!("billing_projection_lag_seconds").record(lag_ms.max(0) as f64 / 1000.0);
    let incoming = shared::trace::TraceContext::incoming(traceparent(message));
    let span = tracing::debug_span!("projection", trace_id = tracing::field::Empty);
    let context = shared::trace::attach(&span, incoming);
    span.in_scope(|| {
        tracing::debug!(
            event_id = %event.event_id,
            user_id = %event.user_id,
            version = event.version,
            trace_id = %incoming.map(|_| context.trace_id_hex()).unwrap_or_default(),
            lag_ms,
            "event projected"
        )
    });
}

fn key<'a>(plan: &'a Plan<'_>) -> (&'a str, i64) {
    match (&plan.snapshot, &plan.record, &plan.order) {
        (Some(snapshot), _, _) => (snapshot.user_id, snapshot.version),
        (None, Some((record, _)), _) => (record.user_id.as_str(), record.version),
        (None, None, Some(order)) => (order.user_id, 0),
        (None, None, None) => ("", 0),
    }
}
