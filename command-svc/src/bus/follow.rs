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
    proto::v1::BillingEvent,
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
                    self.learn(message.headers.as_ref(), &message.payload);
                }
                None => anyhow::bail!("the event stream ended"),
            }
        }
    }

    /// Remembers the accounts a message's events carry (one event, or a batch's), each as
    /// learned when it was committed (a late event is no fresher than its commit); a message that
    /// does not decode teaches nothing (the projection reports it).
    fn learn(&self, headers: Option<&async_nats::HeaderMap>, payload: &[u8]) {
        for event in bus::events_of(headers, payload).unwrap_or_default() {
            self.learn_event(&event);
        }
    }

    fn learn_event(&self, event: &BillingEvent) {
        let Some(known) = event.account.as_ref().and_then(known_from) else {
            return;
        };
        let Ok(user_id) = UserId::parse("user_id", &event.user_id) else {
            return;
        };
        let age_ms = (self.clock.now().timestamp_millis() - event.occurred_at_ms).max(0);
        let age = Duration::from_millis(u64::try_from(age_ms).unwrap_or(0));
        let now = Instant::now();
        self.memory
            .remember(&user_id, known, now.checked_sub(age).unwrap_or(now));
    }
}
