//! Alerts delivered to developers' webhooks. Two durable consumers of `BILLING_EVENTS`, one per
//! alert kind (`balance_low`, `free_quota_exhausted`), shared by command-svc's replicas, so each
//! alert is in one replica's hands at a time. Each alert is posted to the user's webhook as JSON,
//! signed with the user's own secret in the alert scheme (`shared::signature`); a failed attempt
//! is tried again after a growing pause (the message is handed back with a delay), and after
//! `alerts.max_attempts` the delivery is recorded as failed. Every attempt is recorded in
//! `alert_deliveries`. Alerts are raised in the charges' transactions but delivered after their
//! commit, from the bus: a slow or broken webhook never holds up a charge.

use std::{
    net::{IpAddr, SocketAddr},
    sync::Arc,
    time::Duration,
};

use async_nats::jetstream::{
    self, AckKind,
    consumer::{AckPolicy, DeliverPolicy, PullConsumer, pull},
};
use chrono::SecondsFormat;
use futures::StreamExt;
use prost::Message;
use serde_json::json;
use shared::{
    bus::{self, BusNames},
    clock::Clock,
    config::{AlertSettings, NatsSettings},
    proto::v1::{BillingEvent, billing_event::Kind},
    signature::{self, Scheme},
};
use tokio::{sync::watch, task::JoinSet};

use crate::store::{self, DeliveryAttempt, Store, StoreError};

/// The alert kinds, each with its consumer.
const KINDS: [&str; 2] = ["balance_low", "free_quota_exhausted"];
/// Deliveries in flight at once, per kind.
const IN_FLIGHT: usize = 16;
/// A redelivery after a database error comes back after this long.
const STORE_RETRY: Duration = Duration::from_secs(2);

pub struct AlertDispatcher {
    store: Store,
    clock: Clock,
    nats: async_nats::Client,
    names: BusNames,
    nats_settings: NatsSettings,
    settings: Arc<AlertSettings>,
}

/// What became of one attempt.
enum Attempted {
    Delivered(u16),
    Refused {
        http_status: Option<u16>,
        error: String,
    },
}

impl AlertDispatcher {
    pub fn new(
        store: Store,
        clock: Clock,
        nats: async_nats::Client,
        nats_settings: &NatsSettings,
        settings: &AlertSettings,
    ) -> Self {
        AlertDispatcher {
            store,
            clock,
            nats,
            names: BusNames::from_settings(nats_settings),
            nats_settings: nats_settings.clone(),
            settings: Arc::new(settings.clone()),
        }
    }

    /// Delivers until `stop`; deliveries in hand are finished first.
    pub async fn run(self, stop: watch::Receiver<bool>) {
        let this = Arc::new(self);
        let runs = KINDS.map(|kind| {
            let (this, stop) = (this.clone(), stop.clone());
            async move { this.run_kind(kind, stop).await }
        });
        futures::future::join_all(runs).await;
    }

    async fn run_kind(self: &Arc<Self>, kind: &'static str, mut stop: watch::Receiver<bool>) {
        let js = jetstream::new(self.nats.clone());
        let mut failures = 0_u32;
        while !*stop.borrow() {
            let mut consuming = stop.clone();
            let consumed = tokio::select! {
                _ = stop.wait_for(|stop| *stop) => return,
                consumed = self.consume(&js, kind, &mut consuming) => consumed,
            };
            match consumed {
                Ok(()) => return,
                Err(error) => {
                    failures += 1;
                    if failures > 1 || !error.to_string().contains("timed out") {
                        tracing::warn!(%error, kind, "alert consumer interrupted; reconnecting");
                    }
                    let pause = Duration::from_millis(100 * 2_u64.pow(failures.min(6)));
                    tokio::select! {
                        _ = stop.wait_for(|stop| *stop) => return,
                        () = tokio::time::sleep(pause.min(Duration::from_secs(5))) => {}
                    }
                }
            }
        }
    }

    async fn consumer(&self, js: &jetstream::Context, kind: &str) -> anyhow::Result<PullConsumer> {
        bus::ensure_streams(js, &self.names, &self.nats_settings).await?;
        let stream = js.get_stream(self.names.events_stream()).await?;
        let timeout = Duration::from_millis(self.settings.delivery_timeout_ms);
        let config = pull::Config {
            durable_name: Some(format!(
                "{}-{}",
                self.settings.consumer_name,
                kind.replace('_', "-")
            )),
            filter_subject: self.names.event_subject_named(kind),
            deliver_policy: DeliverPolicy::All,
            ack_policy: AckPolicy::Explicit,
            // An attempt takes at most the delivery timeout (plus the name lookup).
            ack_wait: timeout * 2 + Duration::from_secs(5),
            ..Default::default()
        };
        Ok(stream.create_consumer(config).await?)
    }

    async fn consume(
        self: &Arc<Self>,
        js: &jetstream::Context,
        kind: &'static str,
        stop: &mut watch::Receiver<bool>,
    ) -> anyhow::Result<()> {
        let consumer = self.consumer(js, kind).await?;
        let mut messages = consumer
            .stream()
            .max_messages_per_batch(IN_FLIGHT)
            .heartbeat(Duration::from_secs(5))
            .messages()
            .await?;
        let mut in_flight = JoinSet::new();
        loop {
            while in_flight.len() >= IN_FLIGHT {
                in_flight.join_next().await;
            }
            let next = tokio::select! {
                _ = stop.wait_for(|stop| *stop) => break,
                next = messages.next() => next,
            };
            match next {
                Some(Ok(message)) => {
                    let this = self.clone();
                    in_flight.spawn(async move { this.handle(message).await });
                }
                Some(Err(error)) => tracing::debug!(%error, kind, "alert stream error"),
                None => {
                    in_flight.join_all().await;
                    anyhow::bail!("the alert stream ended");
                }
            }
        }
        in_flight.join_all().await;
        Ok(())
    }

    async fn handle(&self, message: jetstream::Message) {
        let Ok(event) = BillingEvent::decode(message.payload.as_ref()) else {
            tracing::error!(subject = %message.subject, "undecodable alert ignored");
            let _ = message.ack_with(AckKind::Term).await;
            return;
        };
        let attempt = message.info().map_or(1, |info| info.delivered.max(1)) as u32;
        match self.deliver(&event, attempt).await {
            Ok(Some(retry_in)) => {
                let _ = message.ack_with(AckKind::Nak(Some(retry_in))).await;
            }
            Ok(None) => {
                let _ = message.double_ack().await;
            }
            Err(error) => {
                tracing::warn!(%error, event_id = %event.event_id, "alert delivery not recorded; it comes back");
                let _ = message.ack_with(AckKind::Nak(Some(STORE_RETRY))).await;
            }
        }
    }

    /// One attempt at delivering `event`, recorded; `Some(pause)` when it should be tried
    /// again after `pause`.
    async fn deliver(
        &self,
        event: &BillingEvent,
        attempt: u32,
    ) -> Result<Option<Duration>, StoreError> {
        let pool = self.store.pool();
        if store::delivery_settled(pool, &event.event_id).await? {
            return Ok(None);
        }
        let kind = event.kind.as_ref().map_or("unknown", bus::kind_name);
        let webhook = store::webhook_of(pool, &event.user_id).await?;
        let mut record = DeliveryAttempt {
            event_id: &event.event_id,
            user_id: &event.user_id,
            kind,
            url: webhook.as_ref().map(|webhook| webhook.url.as_str()),
            status: "no_webhook",
            http_status: None,
            error: None,
        };
        let Some(webhook) = &webhook else {
            store::record_attempt(pool, &record, self.clock.now()).await?;
            return Ok(None);
        };
        let outcome = match &webhook.signing_secret {
            Some(secret) => self.post(&webhook.url, secret, event).await,
            // Set before secrets were per user: nothing to sign with until it is set again.
            None => Attempted::Refused {
                http_status: None,
                error: "no signing secret: set the webhook again to receive one".to_owned(),
            },
        };
        let retry = match &outcome {
            Attempted::Delivered(status) => {
                metrics::counter!("billing_alert_deliveries_total", "outcome" => "delivered")
                    .increment(1);
                record.status = "delivered";
                record.http_status = Some(*status);
                None
            }
            Attempted::Refused { http_status, error } => {
                record.http_status = *http_status;
                record.error = Some(error);
                if attempt >= self.settings.max_attempts {
                    metrics::counter!("billing_alert_deliveries_total", "outcome" => "failed")
                        .increment(1);
                    tracing::warn!(event_id = %event.event_id, attempt, %error, "alert not delivered; attempts used up");
                    record.status = "failed";
                    None
                } else {
                    metrics::counter!("billing_alert_deliveries_total", "outcome" => "retried")
                        .increment(1);
                    record.status = "pending";
                    Some(self.backoff(attempt))
                }
            }
        };
        store::record_attempt(pool, &record, self.clock.now()).await?;
        Ok(retry)
    }

    /// The pause after failed attempt `attempt`: `retry_initial_ms`, doubled each time, up to
    /// `retry_max_ms`.
    fn backoff(&self, attempt: u32) -> Duration {
        let initial = self.settings.retry_initial_ms.max(1);
        let pause = initial.saturating_mul(2_u64.saturating_pow(attempt.saturating_sub(1)));
        Duration::from_millis(pause.min(self.settings.retry_max_ms.max(initial)))
    }

    async fn post(&self, url: &str, secret: &str, event: &BillingEvent) -> Attempted {
        let refused = |error: String| Attempted::Refused {
            http_status: None,
            error,
        };
        let (parsed, address) = match self.resolve(url).await {
            Ok(resolved) => resolved,
            Err(error) => return refused(error),
        };
        let host = parsed.host_str().unwrap_or_default().to_owned();
        // The address checked is the one connected to, and redirects are not followed: a
        // webhook cannot be turned towards an address it may not reach.
        let client = match reqwest::Client::builder()
            .timeout(Duration::from_millis(self.settings.delivery_timeout_ms))
            .redirect(reqwest::redirect::Policy::none())
            .resolve(&host, address)
            .user_agent(concat!("devshare-billing/", env!("CARGO_PKG_VERSION")))
            .build()
        {
            Ok(client) => client,
            Err(error) => return refused(error.to_string()),
        };
        let body = delivery_body(event);
        let timestamp = self.clock.now().timestamp();
        let signed = signature::sign(Scheme::Alert, secret, timestamp, &body);
        let (timestamp_header, signature_header) = Scheme::Alert.headers();
        let sent = client
            .post(parsed)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .header(timestamp_header, timestamp.to_string())
            .header(signature_header, signed)
            .header("x-billing-event-id", &event.event_id)
            .body(body)
            .send()
            .await;
        match sent {
            Ok(response) if response.status().is_success() => {
                Attempted::Delivered(response.status().as_u16())
            }
            Ok(response) => Attempted::Refused {
                http_status: Some(response.status().as_u16()),
                error: format!("the webhook answered {}", response.status()),
            },
            Err(error) => refused(error.to_string()),
        }
    }

    /// The webhook's URL and the address to connect to, refused when the address is one a
    /// webhook may not reach.
    async fn resolve(&self, url: &str) -> Result<(reqwest::Url, SocketAddr), String> {
        let parsed = reqwest::Url::parse(url).map_err(|e| format!("not a URL: {e}"))?;
        let host = parsed.host_str().ok_or("a URL without a host")?.to_owned();
        let port = parsed
            .port_or_known_default()
            .ok_or("a URL without a port")?;
        let host = host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned();
        let addresses: Vec<SocketAddr> = tokio::net::lookup_host((host.as_str(), port))
            .await
            .map_err(|e| format!("the host does not resolve: {e}"))?
            .collect();
        let allowed = addresses
            .into_iter()
            .find(|address| self.settings.allow_private_addresses || is_public(address.ip()));
        allowed
            .map(|address| (parsed, address))
            .ok_or_else(|| "the webhook's address is not a public one".to_owned())
    }
}

/// An address on the public internet: not loopback, private, link-local, shared, unspecified,
/// broadcast, multicast or for documentation.
pub fn is_public(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            let [a, b, ..] = v4.octets();
            !(v4.is_loopback()
                || v4.is_private()
                || v4.is_link_local()
                || v4.is_unspecified()
                || v4.is_broadcast()
                || v4.is_multicast()
                || v4.is_documentation()
                || (a == 100 && (64..128).contains(&b))
                || a == 0)
        }
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return is_public(IpAddr::V4(v4));
            }
            let first = v6.segments()[0];
            !(v6.is_loopback()
                || v6.is_unspecified()
                || v6.is_multicast()
                || (first & 0xfe00) == 0xfc00
                || (first & 0xffc0) == 0xfe80)
        }
    }
}

/// The JSON a webhook receives for `event`.
pub fn delivery_body(event: &BillingEvent) -> Vec<u8> {
    let occurred_at = chrono::DateTime::from_timestamp_millis(event.occurred_at_ms)
        .map(|at| at.to_rfc3339_opts(SecondsFormat::Millis, true));
    let account = event.account.as_ref().map(|account| {
        json!({
            "balance_micros": account.balance_micros,
            "period": account.period,
            "free_granted_micros": account.free_granted_micros,
            "free_used_micros": account.free_used_micros,
            "free_remaining_micros": account.free_remaining_micros,
            "available_micros": account.available_micros,
            "version": account.version,
        })
    });
    let mut body = json!({
        "event_id": event.event_id,
        "user_id": event.user_id,
        "occurred_at": occurred_at,
        "account": account,
    });
    match &event.kind {
        Some(Kind::BalanceLow(low)) => {
            body["type"] = json!("balance_low");
            body["record_id"] = json!(low.record_id);
            body["balance_micros"] = json!(low.balance_micros);
            body["threshold_micros"] = json!(low.threshold_micros);
        }
        Some(Kind::FreeQuotaExhausted(exhausted)) => {
            body["type"] = json!("free_quota_exhausted");
            body["record_id"] = json!(exhausted.record_id);
            body["period"] = json!(exhausted.period);
        }
        _ => body["type"] = json!("unknown"),
    }
    serde_json::to_vec(&body).expect("JSON of known values")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_public_addresses_are_public() {
        for private in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "0.0.0.0",
            "100.64.0.1",
            "255.255.255.255",
            "224.0.0.1",
            "::1",
            "::",
            "fd00::1",
            "fe80::1",
            "::ffff:127.0.0.1",
            "192.0.2.1",
        ] {
            assert!(!is_public(private.parse().unwrap()), "{private}");
        }
        for public in ["93.184.216.34", "8.8.8.8", "2606:4700::1111"] {
            assert!(is_public(public.parse().unwrap()), "{public}");
        }
    }
}
