//! Alerts delivered to developers' webhooks. Durable consumers of `BILLING_EVENTS`, one per alert
//! kind (`balance_low`, `free_quota_exhausted`, `spend_limit_reached`, `spend_limits_set`), shared
//! by command-svc's replicas, so each
//! alert is in one replica's hands at a time. Each alert is posted to the user's webhook as JSON,
//! signed with the user's own secret in the alert scheme (`shared::signature`); a failed attempt
//! is tried again after a growing pause (the message is handed back with a delay), and after
//! `alerts.max_attempts` the delivery is recorded as failed. Every attempt is recorded in
//! `alert_deliveries`. Alerts are raised in the charges' transactions but delivered after their
//! commit, from the bus: a slow or broken webhook never holds up a charge.

use shared::{
    backoff::Backoff,
    shutdown::{Stop, Woken},
};
use std::{
    net::{IpAddr, SocketAddr},
    sync::Arc,
    time::Duration,
};

use async_nats::jetstream::{self, AckKind, consumer::PullConsumer};
use chrono::SecondsFormat;
use futures::StreamExt;
use prost::Message;
use serde_json::json;
use shared::{
    bus::{self, BusNames},
    clock::Clock,
    config::{AlertSettings, NatsSettings},
    ids::UserId,
    proto::v1::{BillingEvent, billing_event::Kind},
    signature::{self, Scheme},
};
use tokio::task::JoinSet;

use crate::store::{self, DeliveryAttempt, Store, StoreError};

/// The alert kinds, each with its consumer.
const KINDS: [&str; 4] = [
    "balance_low",
    "free_quota_exhausted",
    "spend_limit_reached",
    "spend_limits_set",
];
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

    /// Delivers until `stop`; deliveries in hand are finished first. Purges settled deliveries
    /// past their retention meanwhile.
    pub async fn run(self, stop: Stop) {
        let this = Arc::new(self);
        let runs = KINDS.map(|kind| {
            let (this, stop) = (this.clone(), stop.clone());
            async move { this.run_kind(kind, stop).await }
        });
        tokio::join!(futures::future::join_all(runs), this.purge_until(stop));
    }

    /// Every `purge_interval_secs` (and at start), deletes the settled deliveries older than
    /// `delivery_retention_days`, in chunks, so the table does not grow without end.
    async fn purge_until(&self, mut stop: Stop) {
        const CHUNK: u32 = 1_000;
        let every = Duration::from_secs(self.settings.purge_interval_secs.max(1));
        let retention = chrono::Duration::days(i64::from(self.settings.delivery_retention_days));
        loop {
            let before = self.clock.now() - retention;
            loop {
                match store::purge_settled_deliveries(self.store.pool(), before, CHUNK).await {
                    Ok(deleted) => {
                        metrics::counter!("billing_alert_deliveries_purged_total")
                            .increment(deleted);
                        if deleted < u64::from(CHUNK) {
                            break;
                        }
                    }
                    Err(error) => {
                        tracing::warn!(%error, "alert deliveries not purged yet");
                        break;
                    }
                }
            }
            if stop.sleep_or_stop(every).await == Woken::ByStop {
                return;
            }
        }
    }

    async fn run_kind(self: &Arc<Self>, kind: &'static str, stop: Stop) {
        let js = jetstream::new(self.nats.clone());
        let js = &js;
        bus::keep_consuming(kind, stop, |mut stop| async move {
            self.consume(js, kind, &mut stop).await
        })
        .await;
    }

    async fn consumer(&self, js: &jetstream::Context, kind: &str) -> anyhow::Result<PullConsumer> {
        let timeout = Duration::from_millis(self.settings.delivery_timeout_ms);
        let durable = bus::Durable {
            stream: self.names.events_stream(),
            name: format!("{}-{}", self.settings.consumer_name, kind.replace('_', "-")),
            filter: self.names.event_subject_named(kind),
            // An attempt takes at most the delivery timeout (plus the name lookup).
            ack_wait: timeout * 2 + Duration::from_secs(5),
            max_ack_pending: None,
        };
        Ok(bus::durable_consumer(js, &self.names, &self.nats_settings, durable).await?)
    }

    async fn consume(
        self: &Arc<Self>,
        js: &jetstream::Context,
        kind: &'static str,
        stop: &mut Stop,
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
                () = stop.stopped() => break,
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
        let user_id = UserId::stored(event.user_id.clone());
        let webhook = store::webhook_of(pool, &user_id).await?;
        let shown_url = webhook.as_ref().map(|webhook| redacted(&webhook.url));
        let mut record = DeliveryAttempt {
            event_id: &event.event_id,
            user_id: &user_id,
            kind,
            url: shown_url.as_deref(),
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
    /// `retry_max_ms`, and a little more at random.
    fn backoff(&self, attempt: u32) -> Duration {
        let first = Duration::from_millis(self.settings.retry_initial_ms.max(1));
        let max = Duration::from_millis(self.settings.retry_max_ms).max(first);
        Backoff::new(first, max, 10).delay(attempt)
    }

    async fn post(&self, url: &str, secret: &str, event: &BillingEvent) -> Attempted {
        let refused = |error: String| Attempted::Refused {
            http_status: None,
            error,
        };
        // One budget for the whole attempt, the name's lookup included.
        let budget = Duration::from_millis(self.settings.delivery_timeout_ms);
        let started = std::time::Instant::now();
        let (parsed, address) = match tokio::time::timeout(budget, self.resolve(url)).await {
            Ok(Ok(resolved)) => resolved,
            Ok(Err(error)) => return refused(error),
            Err(_) => return refused("the host's name did not resolve in time".to_owned()),
        };
        let host = parsed.host_str().unwrap_or_default().to_owned();
        let left = budget
            .saturating_sub(started.elapsed())
            .max(Duration::from_millis(1));
        // The address checked is the one connected to, redirects are not followed and no proxy
        // of the environment is used: a webhook cannot be turned towards an address it may not
        // reach.
        let client = match reqwest::Client::builder()
            .timeout(left)
            .no_proxy()
            .redirect(reqwest::redirect::Policy::none())
            .resolve(&host, address)
            .user_agent(concat!("devshare-billing/", env!("CARGO_PKG_VERSION")))
            .build()
        {
            Ok(client) => client,
            Err(error) => return refused(error.without_url().to_string()),
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
            // The URL may carry credentials: it never goes into the recorded error.
            Err(error) => refused(error.without_url().to_string()),
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
/// broadcast, multicast, reserved, for benchmarking or for documentation; an IPv6 address that
/// carries an IPv4 one (mapped, compatible, NAT64, 6to4) is judged by the IPv4 one it carries,
/// and Teredo, whose IPv4 address is hidden, is refused.
pub fn is_public(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            let [a, b, c, _] = v4.octets();
            !(v4.is_loopback()
                || v4.is_private()
                || v4.is_link_local()
                || v4.is_unspecified()
                || v4.is_broadcast()
                || v4.is_multicast()
                || v4.is_documentation()
                || (a == 100 && (64..128).contains(&b))
                || (a == 198 && (18..20).contains(&b))
                || (a == 192 && b == 0 && c == 0)
                || (a == 192 && b == 88 && c == 99)
                || a >= 240
                || a == 0)
        }
        IpAddr::V6(v6) => {
            if let Some(v4) = embedded_ipv4(v6) {
                return is_public(IpAddr::V4(v4));
            }
            let segments = v6.segments();
            let first = segments[0];
            !(v6.is_loopback()
                || v6.is_unspecified()
                || v6.is_multicast()
                || (first & 0xfe00) == 0xfc00
                || (first & 0xffc0) == 0xfe80
                || (first & 0xffc0) == 0xfec0
                || (first == 0x2001 && segments[1] == 0)
                || (first == 0x2001 && segments[1] == 0x0db8)
                || (first == 0x0100 && segments[1..4] == [0, 0, 0])
                || (first == 0x0064 && segments[1] == 0xff9b))
        }
    }
}

/// The IPv4 address an IPv6 one stands for: IPv4-mapped `::ffff:a.b.c.d`, IPv4-compatible
/// `::a.b.c.d`, NAT64 `64:ff9b::a.b.c.d` and 6to4 `2002:aabb:ccdd::`.
fn embedded_ipv4(v6: std::net::Ipv6Addr) -> Option<std::net::Ipv4Addr> {
    let s = v6.segments();
    let from = |high: u16, low: u16| {
        let [a, b] = high.to_be_bytes();
        let [c, d] = low.to_be_bytes();
        std::net::Ipv4Addr::new(a, b, c, d)
    };
    if let Some(v4) = v6.to_ipv4_mapped() {
        return Some(v4);
    }
    let compatible = s[..6] == [0; 6] && !(s[6] == 0 && s[7] <= 1);
    let nat64 = s[..6] == [0x64, 0xff9b, 0, 0, 0, 0];
    if compatible || nat64 {
        return Some(from(s[6], s[7]));
    }
    (s[0] == 0x2002).then(|| from(s[1], s[2]))
}

/// A webhook's URL as it may be stored and shown: scheme, host, port and path; never its user
/// and password, query or fragment, which may hold tokens.
pub fn redacted(url: &str) -> String {
    match reqwest::Url::parse(url) {
        Ok(mut parsed) => {
            let _ = parsed.set_username("");
            let _ = parsed.set_password(None);
            parsed.set_query(None);
            parsed.set_fragment(None);
            parsed.to_string()
        }
        Err(_) => "(not a URL)".to_owned(),
    }
}

fn limit_json(limit: &shared::proto::v1::SpendLimit) -> serde_json::Value {
    json!({
        "scope": limit.scope,
        "window": limit.window,
        "limit_micros": limit.limit_micros,
    })
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
        Some(Kind::SpendLimitReached(reached)) => {
            let limit = reached.limit.clone().unwrap_or_default();
            body["type"] = json!("spend_limit_reached");
            body["limit"] = limit_json(&limit);
            body["spent_micros"] = json!(reached.spent_micros);
            body["window_first_day"] = json!(reached.window_first_day);
            body["refused_micros"] = json!(reached.refused_micros);
        }
        Some(Kind::SpendLimitsSet(set)) => {
            body["type"] = json!("spend_limits_set");
            body["limits"] = set.limits.iter().map(limit_json).collect();
            body["actor"] = json!(set.actor);
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

    #[test]
    fn ipv6_forms_of_private_ipv4_and_reserved_ranges_are_not_public() {
        for private in [
            "::127.0.0.1",
            "::10.0.0.1",
            "64:ff9b::127.0.0.1",
            "64:ff9b::a9fe:a9fe",
            "2002:7f00:1::",
            "2002:c0a8:101::1",
            "198.18.0.1",
            "198.19.255.255",
            "240.0.0.1",
            "255.255.255.254",
            "192.0.0.8",
            "192.88.99.1",
            "2001:0:4136:e378::1",
            "2001:db8::1",
            "100::1",
            "fec0::1",
        ] {
            assert!(!is_public(private.parse().unwrap()), "{private}");
        }
        for public in [
            "::8.8.8.8",
            "64:ff9b::808:808",
            "2002:808:808::1",
            "198.20.0.1",
        ] {
            assert!(is_public(public.parse().unwrap()), "{public}");
        }
    }

    #[test]
    fn stored_urls_lose_their_credentials_and_query() {
        assert_eq!(
            redacted("https://user:secret@hooks.example.com:8443/billing?token=abc#frag"),
            "https://hooks.example.com:8443/billing"
        );
        assert_eq!(redacted("not a url"), "(not a URL)");
    }
}
