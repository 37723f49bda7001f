//! Each replica follows the events of every replica's commits, so that its memory of accounts
//! (`commands::AccountMemory`) learns what the others committed within milliseconds of their
//! publication, long before the memory's `max_age` would have it read the account again.
//!
//! The follower is an ordered consumer of its own (in memory on the server, no acks, from the
//! events published after it starts; the client sets it up again after a gap), so replicas never
//! share or hold up one another's deliveries. Its events only ever move an account to a newer
//! version; while it is away, `max_age` alone bounds what a check can miss.

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use async_nats::jetstream::{
    self,
    consumer::{DeliverPolicy, pull},
};
use futures::StreamExt;
use shared::{
    bus::{self, BusNames},
    clock::Clock,
    config::NatsSettings,
    ids::UserId,
    proto::v1::billing_event::Kind,
    shutdown::Stop,
};

use crate::commands::{AccountMemory, known_from};

pub struct AccountFollower {
    nats: async_nats::Client,
    names: BusNames,
    memory: Arc<AccountMemory>,
    clock: Clock,
}

impl AccountFollower {
    pub fn new(
        nats: async_nats::Client,
        settings: &NatsSettings,
        memory: Arc<AccountMemory>,
        clock: Clock,
    ) -> AccountFollower {
        AccountFollower {
            nats,
            names: BusNames::from_settings(settings),
            memory,
            clock,
        }
    }

    /// Follows the events until `stop`, setting the consumer up again when NATS was away.
    pub async fn run(self, stop: Stop) {
        let js = jetstream::new(self.nats.clone());
        let (js, this) = (&js, &self);
        bus::keep_consuming("account-memory", stop, |mut stop| async move {
            this.follow(js, &mut stop).await
        })
        .await;
    }

    async fn follow(&self, js: &jetstream::Context, stop: &mut Stop) -> anyhow::Result<()> {
        let stream = js.get_stream(self.names.events_stream()).await?;
        let consumer = stream
            .create_consumer(pull::OrderedConfig {
                filter_subject: self.names.events_filter(),
                deliver_policy: DeliverPolicy::New,
                ..Default::default()
            })
            .await?;
        let mut messages = consumer.messages().await?;
        loop {
            let next = tokio::select! {
                () = stop.stopped() => return Ok(()),
                next = messages.next() => next,
            };
            match next {
                Some(message) => {
                    let message = message?;
                    learn(
                        &self.memory,
                        &self.clock,
                        message.headers.as_ref(),
                        &message.payload,
                    );
                }
                None => anyhow::bail!("the event stream ended"),
            }
        }
    }
}

/// Remembers in `memory` the accounts a message's events carry (one event, or a batch's), each
/// as learned when it was committed by `clock` (a late event is no fresher than its commit); a
/// message that does not decode teaches nothing (the projection reports it).
fn learn(
    memory: &AccountMemory,
    clock: &Clock,
    headers: Option<&async_nats::HeaderMap>,
    payload: &[u8],
) {
    for event in bus::events_of(headers, payload).unwrap_or_default() {
        let Some(known) = event.account.as_ref().and_then(known_from) else {
            continue;
        };
        let Ok(user_id) = UserId::parse("user_id", &event.user_id) else {
            continue;
        };
        // A new price list changes no version: what was remembered is dropped instead.
        if matches!(event.kind, Some(Kind::PriceListAssigned(_))) {
            memory.forget(&user_id);
            continue;
        }
        if let Some(Kind::SpendLimitsSet(set)) = &event.kind {
            memory.limited().set(&user_id, !set.limits.is_empty());
        }
        let age_ms = (clock.now().timestamp_millis() - event.occurred_at_ms).max(0);
        let age = Duration::from_millis(u64::try_from(age_ms).unwrap_or(0));
        let now = Instant::now();
        memory.remember(&user_id, known, now.checked_sub(age).unwrap_or(now));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::commands::Known;
    use prost::Message;
    use shared::{
        config::AccountMemorySettings,
        proto::v1::{AccountState, BillingEvent},
    };

    fn charged(user: &str, version: i64, occurred_at_ms: i64) -> BillingEvent {
        BillingEvent {
            event_id: format!("{user}-{version}"),
            user_id: user.into(),
            version,
            occurred_at_ms,
            account: Some(AccountState {
                user_id: user.into(),
                currency: "CNY".into(),
                period: "2026-12".into(),
                balance_micros: 1_000 * version,
                version,
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn remembered_version(memory: &AccountMemory, user: &str) -> Option<i64> {
        match memory.recall(&UserId::stored(user))? {
            Known::Account { snapshot, .. } => Some(snapshot.version),
            Known::Absent => None,
        }
    }

    #[test]
    fn a_batch_teaches_every_account_it_carries_and_a_stale_event_nothing() {
        let memory = AccountMemory::new(&AccountMemorySettings {
            enabled: true,
            max_age_ms: 2_000,
            capacity: 1_000,
        });
        let clock = Clock::manual(chrono::DateTime::from_timestamp_millis(10_000_000).unwrap());
        let now_ms = clock.now().timestamp_millis();
        let events = [
            charged("dev-a", 3, now_ms),
            charged("dev-b", 7, now_ms),
            charged("dev-a", 4, now_ms),
        ];
        let encoded: Vec<Vec<u8>> = events.iter().map(Message::encode_to_vec).collect();
        let payload = bus::batch_payload(encoded.iter().map(Vec::as_slice));
        let mut headers = async_nats::HeaderMap::new();
        headers.insert(bus::BATCH_HEADER, "3");
        learn(&memory, &clock, Some(&headers), &payload);
        assert_eq!(remembered_version(&memory, "dev-a"), Some(4));
        assert_eq!(remembered_version(&memory, "dev-b"), Some(7));

        // An event committed longer than max_age ago is already forgotten when it arrives.
        let late = charged("dev-c", 1, now_ms - 5_000).encode_to_vec();
        learn(&memory, &clock, None, &late);
        assert_eq!(remembered_version(&memory, "dev-c"), None);
        // Garbage teaches nothing and breaks nothing.
        learn(&memory, &clock, Some(&headers), b"\xff\xff");
        assert_eq!(remembered_version(&memory, "dev-a"), Some(4));
    }
}
