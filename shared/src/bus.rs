//! The message bus: NATS JetStream streams and subjects, named once for every service.
//!
//! | stream | subjects | written by | read by |
//! | --- | --- | --- | --- |
//! | `BILLING_EVENTS` | `billing.v1.events.>` | command-svc's outbox relay | query-svc (`query-svc`) |
//! | `BILLING_EVENTS_DLQ` | `billing.v1.dlq.>` | query-svc | operators |
//! | `BILLING_COMMANDS` | `billing.v1.commands.>` | scheduler-svc, operators | command-svc (`command-svc`) |
//!
//! The stream prefix and the subject prefix come from configuration, so tests (and several
//! deployments on one NATS) never see each other's messages.

use std::time::Duration;

use async_nats::jetstream::{self, stream};

use async_nats::jetstream::{context::PublishError, message::PublishMessage};
use prost::Message;

use crate::{
    backoff::Backoff,
    config::NatsSettings,
    period::Period,
    proto::v1::{BillingEvent, BillingEventBatch, ResetFreeQuota, billing_event::Kind},
    shutdown::{Stop, Woken},
    trace::TraceContext,
};

/// Header naming the subject a dead letter was first published on.
pub const ORIGINAL_SUBJECT_HEADER: &str = "Billing-Original-Subject";
/// Header saying why a message became a dead letter.
pub const DEAD_LETTER_REASON_HEADER: &str = "Billing-Dead-Letter-Reason";
/// Header keeping the `Nats-Msg-Id` a dead letter had on its first subject.
pub const ORIGINAL_MSG_ID_HEADER: &str = "Billing-Original-Msg-Id";
/// Header carrying the W3C trace context of the command behind an event.
pub const TRACEPARENT_HEADER: &str = "traceparent";
/// Header of a message carrying a `BillingEventBatch`: how many events it holds. Absent, the
/// message is one `BillingEvent`.
pub const BATCH_HEADER: &str = "Billing-Batch";

/// The payload of a `BillingEventBatch` of these encoded `BillingEvent`s, built without decoding
/// them: each is the batch's field 1, length-delimited.
pub fn batch_payload<'a>(events: impl IntoIterator<Item = &'a [u8]>) -> Vec<u8> {
    let mut payload = Vec::new();
    for event in events {
        prost::encoding::encode_key(1, prost::encoding::WireType::LengthDelimited, &mut payload);
        prost::encoding::encode_varint(event.len() as u64, &mut payload);
        payload.extend_from_slice(event);
    }
    payload
}

/// The events a message on an events subject carries: a batch when it has [`BATCH_HEADER`],
/// else one event.
pub fn events_of(
    headers: Option<&async_nats::HeaderMap>,
    payload: &[u8],
) -> Result<Vec<BillingEvent>, prost::DecodeError> {
    if headers.is_some_and(|headers| headers.get(BATCH_HEADER).is_some()) {
        Ok(BillingEventBatch::decode(payload)?.events)
    } else {
        Ok(vec![BillingEvent::decode(payload)?])
    }
}

/// The names of this deployment's streams and subjects.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BusNames {
    stream_prefix: String,
    subject_prefix: String,
}

impl BusNames {
    pub fn new(stream_prefix: &str, subject_prefix: &str) -> Self {
        BusNames {
            stream_prefix: stream_prefix.to_owned(),
            subject_prefix: subject_prefix.to_owned(),
        }
    }

    pub fn from_settings(settings: &NatsSettings) -> Self {
        Self::new(&settings.stream_prefix, &settings.subject_prefix)
    }

    /// The stream `name`, under the stream prefix.
    fn stream(&self, name: &str) -> String {
        format!("{}{name}", self.stream_prefix)
    }

    /// `<subject prefix>.v1.<rest>`: every subject of version 1.
    fn subject(&self, rest: &str) -> String {
        format!("{}.v1.{rest}", self.subject_prefix)
    }

    pub fn events_stream(&self) -> String {
        self.stream("BILLING_EVENTS")
    }

    pub fn dlq_stream(&self) -> String {
        self.stream("BILLING_EVENTS_DLQ")
    }

    pub fn commands_stream(&self) -> String {
        self.stream("BILLING_COMMANDS")
    }

    /// `billing.v1.events.<kind>`, kind being the snake_case name of the event's `oneof` field.
    pub fn event_subject(&self, kind: &Kind) -> String {
        self.event_subject_named(kind_name(kind))
    }

    /// The subject of the events of one kind (its snake_case name).
    pub fn event_subject_named(&self, kind: &str) -> String {
        self.subject(&format!("events.{kind}"))
    }

    pub fn events_filter(&self) -> String {
        self.subject("events.>")
    }

    /// Where a dead letter of `original_subject` goes: its last token under `dlq`.
    pub fn dlq_subject(&self, original_subject: &str) -> String {
        let kind = original_subject
            .rsplit('.')
            .next()
            .filter(|k| !k.is_empty())
            .unwrap_or("unknown");
        self.subject(&format!("dlq.{kind}"))
    }

    pub fn dlq_filter(&self) -> String {
        self.subject("dlq.>")
    }

    pub fn reset_free_quota_subject(&self) -> String {
        self.subject("commands.reset_free_quota")
    }

    pub fn commands_filter(&self) -> String {
        self.subject("commands.>")
    }

    /// Core NATS (no stream): query-svc's replicas announce the account versions each projected
    /// batch reached, so every replica wakes its `min_version` readers at once.
    pub fn projected_subject(&self) -> String {
        self.subject("projected")
    }
}

/// The snake_case name of the `oneof` field set, as used in the subject.
pub fn kind_name(kind: &Kind) -> &'static str {
    match kind {
        Kind::QuotaDeducted(_) => "quota_deducted",
        Kind::BalanceRecharged(_) => "balance_recharged",
        Kind::FreeQuotaGranted(_) => "free_quota_granted",
        Kind::RechargeOrderCreated(_) => "recharge_order_created",
        Kind::RechargeOrderFailed(_) => "recharge_order_failed",
        Kind::BalanceAdjusted(_) => "balance_adjusted",
        Kind::PaymentUnmatched(_) => "payment_unmatched",
        Kind::FreeQuotaPlanSet(_) => "free_quota_plan_set",
        Kind::ChargeRefunded(_) => "charge_refunded",
        Kind::QuotaReserved(_) => "quota_reserved",
        Kind::ReservationSettled(_) => "reservation_settled",
        Kind::ReservationReleased(_) => "reservation_released",
        Kind::BalanceLow(_) => "balance_low",
        Kind::FreeQuotaExhausted(_) => "free_quota_exhausted",
        Kind::PriceListPublished(_) => "price_list_published",
        Kind::PriceListAssigned(_) => "price_list_assigned",
        Kind::SpendLimitsSet(_) => "spend_limits_set",
        Kind::SpendLimitReached(_) => "spend_limit_reached",
    }
}

/// Runs `consume` (which sets up a pull consumer and consumes until the stop it is given) until
/// it ends or the stop comes, setting it up again after a growing pause each time it fails (NATS
/// away, its consumer gone). The projection, the reset and the alert deliveries run their
/// consumers so. The first timeout (NATS not reachable yet at start) is not worth a warning.
pub async fn keep_consuming<F, Fut, E>(what: &'static str, mut stop: Stop, mut consume: F)
where
    F: FnMut(Stop) -> Fut,
    Fut: std::future::Future<Output = Result<(), E>>,
    E: std::fmt::Display,
{
    let mut failures = 0;
    while !stop.is_stopped() {
        // Setting up the consumer waits on NATS; the stop must not wait for NATS.
        let consuming = consume(stop.clone());
        let consumed = tokio::select! {
            () = stop.stopped() => return,
            consumed = consuming => consumed,
        };
        match consumed {
            Ok(()) => return,
            Err(error) => {
                failures += 1;
                if failures > 1 || !error.to_string().contains("timed out") {
                    tracing::warn!(%error, consumer = what, "consumer interrupted; reconnecting");
                }
                let pause = Backoff::RECONNECT.delay(failures);
                if stop.sleep_or_stop(pause).await == Woken::ByStop {
                    return;
                }
            }
        }
    }
}

/// How often a connection pings its server: a server cut off from the service (a partition, a
/// frozen process) is left for another of the cluster once three pings in a row went
/// unanswered, within about 15 s.
pub const PING_INTERVAL: Duration = Duration::from_secs(5);

/// Connects to NATS; the first connection is retried in the background, so a service starts
/// (and answers its probes) while NATS is away. `nats.url` may list several servers of a
/// cluster, separated by commas; the client also learns the others from the one it reaches.
pub async fn connect(
    settings: &NatsSettings,
) -> Result<async_nats::Client, async_nats::ConnectError> {
    let servers = server_addrs(&settings.url).map_err(|error| {
        async_nats::ConnectError::with_source(async_nats::ConnectErrorKind::ServerParse, error)
    })?;
    connect_options(settings)
        .await?
        .retry_on_initial_connect()
        .connection_timeout(Duration::from_secs(5))
        .ping_interval(PING_INTERVAL)
        .connect(servers)
        .await
}

/// The servers of `nats.url`: one URL, or several separated by commas.
pub fn server_addrs(url: &str) -> Result<Vec<async_nats::ServerAddr>, String> {
    url.split(',')
        .map(str::trim)
        .map(|server| {
            if server.is_empty() {
                return Err("an empty server".to_owned());
            }
            server
                .parse::<async_nats::ServerAddr>()
                .map_err(|error| format!("{server:?}: {error}"))
        })
        .collect()
}

/// The credentials and TLS of `settings` (see [`NatsSettings`]), as connect options.
pub async fn connect_options(
    settings: &NatsSettings,
) -> Result<async_nats::ConnectOptions, async_nats::ConnectError> {
    let unreadable = |what: &str, error: std::io::Error| {
        async_nats::ConnectError::with_source(
            async_nats::ConnectErrorKind::Io,
            format!("{what}: {error}"),
        )
    };
    let mut options = if !settings.credentials_file.is_empty() {
        async_nats::ConnectOptions::with_credentials_file(&settings.credentials_file)
            .await
            .map_err(|error| unreadable(&settings.credentials_file, error))?
    } else if !settings.nkey_seed_file.is_empty() {
        let seed = tokio::fs::read_to_string(&settings.nkey_seed_file)
            .await
            .map_err(|error| unreadable(&settings.nkey_seed_file, error))?;
        async_nats::ConnectOptions::with_nkey(seed.trim().to_owned())
    } else if !settings.token.expose().is_empty() {
        async_nats::ConnectOptions::with_token(settings.token.expose().to_owned())
    } else if !settings.user.is_empty() {
        async_nats::ConnectOptions::with_user_and_password(
            settings.user.clone(),
            settings.password.expose().to_owned(),
        )
    } else {
        async_nats::ConnectOptions::new()
    };
    if !settings.tls_ca_file.is_empty() {
        options = options.add_root_certificates(settings.tls_ca_file.clone().into());
    }
    if !settings.tls_cert_file.is_empty() {
        options = options.add_client_certificate(
            settings.tls_cert_file.clone().into(),
            settings.tls_key_file.clone().into(),
        );
    }
    let tls = settings.tls_required
        || !settings.tls_ca_file.is_empty()
        || !settings.tls_cert_file.is_empty();
    Ok(options.require_tls(tls))
}

/// Creates the three streams, or updates them to these settings when they differ:
/// file storage, retention by age (`*_max_age_hours`), deduplication by `Nats-Msg-Id` within
/// `duplicate_window_secs`, `stream_replicas` copies in a cluster.
///
/// A stream another caller created between the look-up and the creation counts as created (every
/// consumer and relay sets the streams up as it starts, often at the same moment). A stream that
/// already has them is left alone: every consumer of every replica calls this when
/// it (re)connects, and nats-server 2.9 can crash on stream updates that race (a nil pointer in
/// `updateWithAdvisory`, seen under the test suite), so an update is sent only for a change.
pub async fn ensure_streams(
    js: &jetstream::Context,
    names: &BusNames,
    settings: &NatsSettings,
) -> Result<(), StreamSetupError> {
    for wanted in stream_configs(names, settings) {
        match js.get_stream(&wanted.name).await {
            Ok(stream) => {
                if !has_settings(&stream.cached_info().config, &wanted) {
                    js.update_stream(&wanted).await?;
                }
            }
            Err(error) if stream_missing(&error) => {
                let name = wanted.name.clone();
                if let Err(error) = js.create_stream(wanted).await {
                    // Another service or replica may have created it meanwhile: then it is there.
                    if js.get_stream(&name).await.is_err() {
                        return Err(error.into());
                    }
                }
            }
            Err(error) => return Err(error.into()),
        }
    }
    Ok(())
}

/// A durable pull consumer shared by a service's replicas: every message of `filter` in `stream`
/// from the first, each acked explicitly within `ack_wait`.
#[derive(Clone, Debug)]
pub struct Durable {
    pub stream: String,
    pub name: String,
    pub filter: String,
    pub ack_wait: Duration,
    /// Messages delivered and not yet acked, at most (`None`: the server's default).
    pub max_ack_pending: Option<i64>,
}

/// The streams set up, then `durable` created or brought up to date (creating a durable consumer
/// that exists with other settings updates it).
pub async fn durable_consumer(
    js: &jetstream::Context,
    names: &BusNames,
    settings: &NatsSettings,
    durable: Durable,
) -> Result<jetstream::consumer::PullConsumer, StreamSetupError> {
    use jetstream::consumer::{AckPolicy, DeliverPolicy, pull};
    ensure_streams(js, names, settings).await?;
    let stream = js.get_stream(&durable.stream).await?;
    let mut config = pull::Config {
        durable_name: Some(durable.name),
        filter_subject: durable.filter,
        deliver_policy: DeliverPolicy::All,
        ack_policy: AckPolicy::Explicit,
        ack_wait: durable.ack_wait,
        ..Default::default()
    };
    if let Some(pending) = durable.max_ack_pending {
        config.max_ack_pending = pending;
    }
    Ok(stream.create_consumer(config).await?)
}

/// Why the streams or a consumer could not be set up (NATS away, a refused configuration).
#[derive(Debug, thiserror::Error)]
pub enum StreamSetupError {
    #[error("reading a stream: {0}")]
    Get(#[from] jetstream::context::GetStreamError),
    /// (Updates fail with the same error type as creations.)
    #[error("creating or updating a stream: {0}")]
    Write(#[from] jetstream::context::CreateStreamError),
    #[error("creating or updating a consumer: {0}")]
    Consumer(#[from] jetstream::stream::ConsumerError),
}

/// The three streams as these settings describe them.
fn stream_configs(names: &BusNames, settings: &NatsSettings) -> Vec<stream::Config> {
    let hours = |h: u64| Duration::from_secs(h * 3600);
    let window = Duration::from_secs(settings.duplicate_window_secs);
    [
        (
            names.events_stream(),
            names.events_filter(),
            hours(settings.events_max_age_hours),
        ),
        (
            names.dlq_stream(),
            names.dlq_filter(),
            hours(settings.dlq_max_age_hours),
        ),
        (
            names.commands_stream(),
            names.commands_filter(),
            hours(settings.commands_max_age_hours),
        ),
    ]
    .into_iter()
    .map(|(name, subject, max_age)| stream::Config {
        name,
        subjects: vec![subject],
        storage: stream::StorageType::File,
        retention: stream::RetentionPolicy::Limits,
        max_age,
        // The window may not exceed the age limit.
        duplicate_window: window.min(max_age),
        num_replicas: settings.stream_replicas.max(1),
        ..Default::default()
    })
    .collect()
}

/// Whether a stream's configuration already has every setting this service manages.
fn has_settings(current: &stream::Config, wanted: &stream::Config) -> bool {
    current.subjects == wanted.subjects
        && current.storage == wanted.storage
        && current.retention == wanted.retention
        && current.max_age == wanted.max_age
        && current.duplicate_window == wanted.duplicate_window
        && current.num_replicas == wanted.num_replicas
}

fn stream_missing(error: &jetstream::context::GetStreamError) -> bool {
    matches!(
        error.kind(),
        jetstream::context::GetStreamErrorKind::JetStream(inner)
            if inner.error_code() == jetstream::ErrorCode::STREAM_NOT_FOUND
    )
}

/// The id of the reset command of `period`, also its `Nats-Msg-Id`: the scheduler's replicas, a
/// restart, an operator and the midnight firing all publish the same one, so JetStream keeps it
/// once within its duplicate window (and command-svc's progress row once after it).
pub fn reset_command_id(period: Period) -> String {
    format!("reset-free-quota:{period}")
}

/// Publishes `ResetFreeQuota{period}` under `command_id` and waits for JetStream's ack (a
/// duplicate's ack counts). The command carries a `traceparent`, the current trace continued or
/// a new one, which the grants' events then carry. Returns the trace id.
pub async fn publish_reset(
    js: &jetstream::Context,
    names: &BusNames,
    command_id: &str,
    period: Period,
    issued_at_ms: i64,
) -> Result<String, PublishError> {
    let trace =
        crate::trace::current().map_or_else(TraceContext::new_root, |current| current.child());
    let command = ResetFreeQuota {
        command_id: command_id.to_owned(),
        period: period.to_string(),
        issued_at_ms,
    };
    let message = PublishMessage::build()
        .payload(command.encode_to_vec().into())
        .message_id(command_id)
        .header(crate::trace::TRACEPARENT, trace.traceparent());
    js.send_publish(names.reset_free_quota_subject(), message)
        .await?
        .await?;
    Ok(trace.trace_id_hex())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::v1::QuotaDeducted;

    #[test]
    fn a_batch_built_from_encoded_events_decodes_to_them_in_order() {
        let events: Vec<BillingEvent> = (1..=3)
            .map(|version| BillingEvent {
                event_id: format!("e{version}"),
                user_id: "dev-1".into(),
                version,
                ..Default::default()
            })
            .collect();
        let encoded: Vec<Vec<u8>> = events.iter().map(Message::encode_to_vec).collect();
        let payload = batch_payload(encoded.iter().map(Vec::as_slice));
        let mut headers = async_nats::HeaderMap::new();
        headers.insert(BATCH_HEADER, "3");
        assert_eq!(events_of(Some(&headers), &payload).unwrap(), events);
        // Without the header, a message is one event.
        assert_eq!(
            events_of(None, &encoded[1]).unwrap(),
            vec![events[1].clone()]
        );
        assert!(events_of(Some(&headers), b"\xff\xff").is_err());
    }

    #[test]
    fn default_names_are_the_contract() {
        let names = BusNames::new("", "billing");
        assert_eq!(names.events_stream(), "BILLING_EVENTS");
        assert_eq!(names.dlq_stream(), "BILLING_EVENTS_DLQ");
        assert_eq!(names.commands_stream(), "BILLING_COMMANDS");
        assert_eq!(
            names.event_subject(&Kind::QuotaDeducted(QuotaDeducted::default())),
            "billing.v1.events.quota_deducted"
        );
        assert_eq!(
            names.dlq_subject("billing.v1.events.quota_reserved"),
            "billing.v1.dlq.quota_reserved"
        );
        assert_eq!(
            names.reset_free_quota_subject(),
            "billing.v1.commands.reset_free_quota"
        );
    }

    #[test]
    fn prefixes_keep_deployments_apart() {
        let names = BusNames::new("T1_", "t1");
        assert_eq!(names.events_stream(), "T1_BILLING_EVENTS");
        assert_eq!(names.events_filter(), "t1.v1.events.>");
    }
}
