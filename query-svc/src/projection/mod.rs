//! The projection: events from `BILLING_EVENTS` into the read model.

use shared::{
    bus::BusNames,
    config::{NatsSettings, QuerySettings},
    period::BillingZone,
};

use crate::{cache::SnapshotCache, store::ReadStore};

pub struct Projector {
    nats: async_nats::Client,
    names: BusNames,
    nats_settings: NatsSettings,
    settings: QuerySettings,
    store: ReadStore,
    cache: SnapshotCache,
    zone: BillingZone,
}

impl Projector {
    pub fn new(
        nats: async_nats::Client,
        names: BusNames,
        nats_settings: NatsSettings,
        settings: QuerySettings,
        store: ReadStore,
        cache: SnapshotCache,
        zone: BillingZone,
    ) -> Self {
        Projector {
            nats,
            names,
            nats_settings,
            settings,
            store,
            cache,
            zone,
        }
    }

    pub async fn run(self, mut stop: tokio::sync::watch::Receiver<bool>) -> anyhow::Result<()> {
        let _ = stop.wait_for(|stop| *stop).await;
        Ok(())
    }
}
