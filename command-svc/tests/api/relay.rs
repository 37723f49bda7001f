//! The outbox relay against real NATS JetStream: every committed event reaches the test's own
//! events stream exactly once, whatever the commit order, a NATS outage or a second relay, and
//! published rows are purged after retention while unpublished ones never are.

use std::{
    collections::{BTreeMap, BTreeSet},
    time::Duration,
};

use async_nats::jetstream::{self, consumer};
use chrono::{DateTime, Utc};
use futures::StreamExt;
use reqwest::StatusCode;
use shared::{
    bus::{BATCH_HEADER, BusNames, TRACEPARENT_HEADER, events_of, kind_name},
    clock::Clock,
    proto::v1::{self as pb, billing_event::Kind},
};
use sqlx::{MySqlPool, Row};

use testkit::OwnNats;

use crate::helpers::*;

const MSG_ID: &str = "Nats-Msg-Id";
const PATIENCE: Duration = Duration::from_secs(30);

/// One outbox row as the test sees it.
#[derive(Clone, Debug)]
struct OutboxEntry {
    id: u64,
    event_id: String,
    subject: String,
    published_at: Option<DateTime<Utc>>,
}

async fn outbox_rows(pool: &MySqlPool) -> Vec<OutboxEntry> {
    sqlx::query("SELECT id, event_id, subject, published_at FROM outbox ORDER BY id")
        .fetch_all(pool)
        .await
        .unwrap()
        .into_iter()
        .map(|row| OutboxEntry {
            id: row.get("id"),
            event_id: row.get("event_id"),
            subject: row.get("subject"),
            published_at: row.get("published_at"),
        })
        .collect()
}

async fn unpublished(pool: &MySqlPool) -> i64 {
    sqlx::query_scalar("SELECT COUNT(*) FROM outbox WHERE published_at IS NULL")
        .fetch_one(pool)
        .await
        .unwrap()
}

/// Waits until every outbox row is marked published; returns them.
async fn all_published(pool: &MySqlPool) -> Vec<OutboxEntry> {
    eventually(PATIENCE, "every outbox row marked published", || async {
        let rows = outbox_rows(pool).await;
        rows.iter()
            .all(|row| row.published_at.is_some())
            .then_some(rows)
    })
    .await
}

/// One event as it sits in the events stream, with the message that carries it.
#[derive(Debug)]
struct Delivered {
    subject: String,
    msg_id: String,
    traceparent: Option<String>,
    /// Events in its message (`Billing-Batch`; 1 for a message of one event).
    batch: usize,
    event: pb::BillingEvent,
}

/// Every event of the test's events stream, read in order by a consumer of the test's own.
async fn stream_messages(js: &jetstream::Context, names: &BusNames) -> Vec<Delivered> {
    let stream = js.get_stream(names.events_stream()).await.unwrap();
    let count = stream.get_info().await.unwrap().state.messages as usize;
    let reader = stream
        .create_consumer(consumer::pull::OrderedConfig {
            deliver_policy: consumer::DeliverPolicy::All,
            ..Default::default()
        })
        .await
        .unwrap();
    let messages = reader.messages().await.unwrap().take(count);
    let messages: Vec<_> = tokio::time::timeout(PATIENCE, messages.collect())
        .await
        .expect("the stream's messages are delivered");
    messages
        .into_iter()
        .flat_map(|message| {
            let message = message.unwrap();
            let header = |name: &str| {
                message
                    .headers
                    .as_ref()
                    .and_then(|headers| headers.get(name))
                    .map(|value| value.as_str().to_owned())
            };
            let events = events_of(message.headers.as_ref(), &message.payload)
                .expect("the payload is a BillingEvent or a batch of them");
            let batch = header(BATCH_HEADER).map_or(1, |count| count.parse().unwrap());
            assert_eq!(
                batch,
                events.len(),
                "Billing-Batch counts the batch's events"
            );
            let (subject, msg_id) = (message.subject.to_string(), header(MSG_ID));
            let msg_id = msg_id.expect("every message carries Nats-Msg-Id");
            let traceparent = header(TRACEPARENT_HEADER);
            events.into_iter().map(move |event| Delivered {
                subject: subject.clone(),
                msg_id: msg_id.clone(),
                traceparent: traceparent.clone(),
                batch,
                event,
            })
        })
        .collect()
}

/// The stream holds exactly the outbox's events, each once, each on its kind's subject.
fn assert_exactly_the_outbox(delivered: &[Delivered], rows: &[OutboxEntry], names: &BusNames) {
    let mut seen = BTreeMap::<&str, usize>::new();
    for message in delivered {
        *seen.entry(message.event.event_id.as_str()).or_default() += 1;
        if message.batch == 1 {
            assert_eq!(
                message.event.event_id, message.msg_id,
                "Nats-Msg-Id = event id"
            );
        } else {
            assert!(message.msg_id.starts_with("batch:"), "{}", message.msg_id);
        }
        let kind = message.event.kind.as_ref().expect("every event has a kind");
        assert_eq!(message.subject, names.event_subject(kind));
    }
    let twice: Vec<_> = seen.iter().filter(|(_, n)| **n > 1).collect();
    assert!(twice.is_empty(), "events in the stream twice: {twice:?}");
    let in_stream: BTreeSet<&str> = seen.keys().copied().collect();
    let in_outbox: BTreeSet<&str> = rows.iter().map(|row| row.event_id.as_str()).collect();
    assert_eq!(in_stream, in_outbox, "the stream holds exactly the outbox");
    for row in rows {
        let message = delivered
            .iter()
            .find(|message| message.event.event_id == row.event_id)
            .unwrap();
        assert_eq!(
            message.subject, row.subject,
            "published on the row's subject"
        );
    }
}

async fn messages_in_stream(js: &jetstream::Context, names: &BusNames) -> u64 {
    js.get_stream(names.events_stream())
        .await
        .unwrap()
        .get_info()
        .await
        .unwrap()
        .state
        .messages
}

/// An event as command-svc would write it for a payment it cannot apply (no account).
fn unmatched_event(names: &BusNames, now: DateTime<Utc>) -> (pb::BillingEvent, String) {
    let kind = Kind::PaymentUnmatched(pb::PaymentUnmatched {
        unmatched_id: uuid::Uuid::now_v7().to_string(),
        order_no: "RO-unknown".into(),
        provider_txn_id: format!("txn-{}", uuid::Uuid::new_v4().simple()),
        paid_amount_micros: CNY,
        why: "unknown_order".into(),
    });
    let subject = names.event_subject(&kind);
    let event = pb::BillingEvent {
        event_id: uuid::Uuid::now_v7().to_string(),
        user_id: String::new(),
        version: 0,
        occurred_at_ms: now.timestamp_millis(),
        account: None,
        schema_version: 1,
        kind: Some(kind),
    };
    (event, subject)
}

#[tokio::test]
async fn every_committed_change_is_published_exactly_once() {
    let app = spawn_app().await;
    let user = new_user("relay");
    let mut gateway = app.gateway().await;
    for (amount, request_id) in [(4 * CNY, "r1"), (5 * CNY, "r2")] {
        gateway
            .deduct_quota(deduct(&user, amount, request_id))
            .await
            .unwrap();
    }
    recharge(&app, &user, 20 * CNY).await;
    // Takes the last of the free quota and some balance.
    gateway
        .deduct_quota(deduct(&user, 3 * CNY, "r3"))
        .await
        .unwrap();
    app.ops()
        .await
        .adjust_balance(adjust(&user, -CNY, "fix-1"))
        .await
        .unwrap();

    let rows = all_published(&app.db).await;
    let delivered = stream_messages(&app.jetstream().await, &app.bus_names()).await;
    assert_exactly_the_outbox(&delivered, &rows, &app.bus_names());
    assert!(
        rows.iter()
            .all(|row| row.published_at == Some(app.clock.now())),
        "published_at comes from the service's clock"
    );
    let kinds: BTreeSet<&str> = delivered
        .iter()
        .map(|message| kind_name(message.event.kind.as_ref().unwrap()))
        .collect();
    assert_eq!(
        kinds,
        BTreeSet::from([
            "free_quota_granted",
            "quota_deducted",
            "recharge_order_created",
            "balance_recharged",
            "balance_adjusted",
            // r3 used up the free quota.
            "free_quota_exhausted",
        ])
    );
    let prefix = format!("{}.v1.events.", app.settings.nats.subject_prefix);
    for message in &delivered {
        let kind = kind_name(message.event.kind.as_ref().unwrap());
        assert_eq!(message.subject, format!("{prefix}{kind}"));
        assert_eq!(message.event.user_id, user);
    }
    // 1 grant + 3 charges + order + recharge + adjustment + the free quota used up.
    assert_eq!(delivered.len(), 8);
    assert_invariants(&app.db, &user).await;
    app.cleanup().await;
}

#[tokio::test]
async fn rows_committed_out_of_id_order_are_all_published() {
    let app = spawn_app().await;
    let names = app.bus_names();
    let user = new_user("late");
    let mut gateway = app.gateway().await;
    gateway
        .deduct_quota(deduct(&user, CNY, "first"))
        .await
        .unwrap();
    all_published(&app.db).await;

    // A transaction that allocates an outbox id now and commits only after later rows have
    // been committed and published: an id watermark would skip it for ever.
    let (late_event, subject) = unmatched_event(&names, app.clock.now());
    let traceparent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let mut held = app.db.begin().await.unwrap();
    command_svc::store::insert_event(
        &mut held,
        &late_event,
        &subject,
        Some(traceparent),
        app.clock.now(),
    )
    .await
    .unwrap();
    let late_id: u64 = sqlx::query_scalar("SELECT id FROM outbox WHERE event_id = ?")
        .bind(&late_event.event_id)
        .fetch_one(&mut *held)
        .await
        .unwrap();

    for request_id in ["second", "third", "fourth"] {
        gateway
            .deduct_quota(deduct(&user, CNY, request_id))
            .await
            .unwrap();
    }
    let committed = all_published(&app.db).await;
    assert_eq!(committed.len(), 5, "the held row is not visible yet");
    let later: Vec<u64> = committed
        .iter()
        .map(|row| row.id)
        .filter(|id| *id > late_id)
        .collect();
    assert_eq!(later.len(), 3, "the later charges got larger ids");

    held.commit().await.unwrap();
    let rows = all_published(&app.db).await;
    assert_eq!(rows.len(), 6);
    // Rows are marked only after JetStream acked them, so the stream has them all by now.
    let delivered = stream_messages(&app.jetstream().await, &names).await;
    assert_exactly_the_outbox(&delivered, &rows, &names);
    let late = delivered
        .iter()
        .find(|message| message.event.event_id == late_event.event_id)
        .unwrap();
    assert_eq!(late.traceparent.as_deref(), Some(traceparent));
    assert_eq!(late.event, late_event);
    app.cleanup().await;
}

#[tokio::test]
async fn nats_down_only_delays_events() {
    let mut nats = OwnNats::start().await;
    let db = TestDatabase::create(&unique_tag()).await;
    let url = nats.url();
    let settings = test_settings(&db.url, &[("BILLING__NATS__URL", &url)]);
    let app = spawn_with(settings, Clock::system(), db.name).await;
    let names = app.bus_names();
    let user = new_user("outage");
    let mut gateway = app.gateway().await;
    gateway
        .deduct_quota(deduct(&user, CNY, "before"))
        .await
        .unwrap();
    let before = all_published(&app.db).await.len();
    assert_eq!(before, 2, "grant and charge");

    nats.stop().await;
    let mut backlog = Vec::new();
    for n in 0..5 {
        gateway
            .deduct_quota(deduct(&user, CNY, &format!("during-{n}")))
            .await
            .expect("charges succeed while NATS is down");
        backlog.push(unpublished(&app.db).await);
    }
    app.ops()
        .await
        .adjust_balance(adjust(&user, 2 * CNY, "during-adjust"))
        .await
        .unwrap();
    assert_eq!(
        backlog,
        [1, 2, 3, 4, 5],
        "the backlog grows with each commit"
    );
    // The outage lasts a while: the relay keeps trying and nothing is lost or marked.
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(unpublished(&app.db).await, 6);
    assert_eq!(
        reqwest::get(app.http("/readyz")).await.unwrap().status(),
        StatusCode::OK,
        "NATS never makes command-svc unready"
    );

    nats.restart().await;
    let rows = eventually(Duration::from_secs(60), "the backlog drained", || async {
        let rows = outbox_rows(&app.db).await;
        rows.iter()
            .all(|row| row.published_at.is_some())
            .then_some(rows)
    })
    .await;
    assert_eq!(rows.len(), 8);
    let js = jetstream::new(async_nats::connect(nats.url()).await.unwrap());
    let delivered = stream_messages(&js, &names).await;
    assert_exactly_the_outbox(&delivered, &rows, &names);
    // The charges that waited went out together, in one batch; the adjustment on its own.
    let batched: Vec<&Delivered> = delivered.iter().filter(|event| event.batch > 1).collect();
    assert_eq!(batched.len(), 5);
    assert!(batched.iter().all(|event| event.msg_id == batched[0].msg_id
        && event.subject == names.event_subject_named("quota_deducted")));
    assert_invariants(&app.db, &user).await;
    app.cleanup().await;
}

#[tokio::test]
async fn two_relays_publish_every_row_exactly_once() {
    // Small batches, so the two relays claim many times and often at the same moment.
    let overrides = [("BILLING__OUTBOX__BATCH_SIZE", "4")];
    let start = Utc::now();
    let first = spawn_app_at(start, &overrides).await;
    // The second replica's clock stands a second later, so `published_at` tells which relay
    // marked each row.
    let second_clock = Clock::manual(start + chrono::Duration::seconds(1));
    let second = spawn_with(
        first.settings.clone(),
        second_clock.clone(),
        first.db_name.clone(),
    )
    .await;
    let names = first.bus_names();

    // JetStream drops a second publish of an event id within its duplicate window, so the
    // stream alone cannot show a double publish. A plain subscriber on the events subjects
    // receives every publish, duplicates included: it counts what the relays actually sent.
    let watcher = async_nats::connect(&first.settings.nats.url).await.unwrap();
    let mut sent = watcher.subscribe(names.events_filter()).await.unwrap();
    watcher.flush().await.unwrap();

    let users: Vec<String> = (0..12).map(|_| new_user("pair")).collect();
    let (mut to_first, mut to_second) = (first.gateway().await, second.gateway().await);
    let mut calls = Vec::new();
    for (n, user) in users.iter().enumerate() {
        for k in 0..5 {
            let mut client = if (n + k) % 2 == 0 {
                to_first.clone()
            } else {
                to_second.clone()
            };
            let request = deduct(user, CNY / 10, &format!("call-{k}"));
            calls.push(async move { client.deduct_quota(request).await });
        }
    }
    for reply in futures::future::join_all(calls).await {
        reply.expect("every charge succeeds");
    }
    to_first
        .deduct_quota(deduct(&users[0], CNY, "last-first"))
        .await
        .unwrap();
    to_second
        .deduct_quota(deduct(&users[1], CNY, "last-second"))
        .await
        .unwrap();
    let rows = all_published(&first.db).await;
    // 12 grants + 60 charges + 2.
    assert_eq!(rows.len(), 74);

    // Stopping both services lets each finish the batch in hand, so every publish they will
    // ever make has been sent; the flush then brings the watcher everything routed to it.
    let mut second = second;
    second.stop().await;
    let mut first = first;
    first.stop().await;
    watcher.flush().await.unwrap();
    let mut publishes = BTreeMap::<String, usize>::new();
    while let Ok(Some(message)) =
        tokio::time::timeout(Duration::from_millis(500), sent.next()).await
    {
        let events = events_of(message.headers.as_ref(), &message.payload).unwrap();
        for event in events {
            *publishes.entry(event.event_id).or_default() += 1;
        }
    }
    let twice: Vec<_> = publishes.iter().filter(|(_, n)| **n > 1).collect();
    assert!(twice.is_empty(), "rows published more than once: {twice:?}");
    assert_eq!(publishes.len(), rows.len(), "every row was published");

    let js = first.jetstream().await;
    let delivered = stream_messages(&js, &names).await;
    let messages: BTreeSet<&str> = delivered
        .iter()
        .map(|event| event.msg_id.as_str())
        .collect();
    assert_eq!(
        messages_in_stream(&js, &names).await,
        messages.len() as u64,
        "each message in the stream once"
    );
    assert_exactly_the_outbox(&delivered, &rows, &names);
    let by_second = rows
        .iter()
        .filter(|row| row.published_at == Some(second_clock.now()))
        .count();
    assert!(
        0 < by_second && by_second < rows.len(),
        "both relays published: {by_second} of {} by the second",
        rows.len()
    );
    first.cleanup().await;
}

#[tokio::test]
async fn published_rows_are_purged_after_retention_and_unpublished_rows_never() {
    // Microseconds, as MySQL stores them.
    let t0 = Clock::manual(Utc::now()).now();
    let first = spawn_app_at(t0, &[]).await;
    let user = new_user("purge");
    first
        .gateway()
        .await
        .deduct_quota(deduct(&user, CNY, "old"))
        .await
        .unwrap();
    let published_by_relay = all_published(&first.db).await;
    assert_eq!(published_by_relay.len(), 2);
    let mut first = first;
    first.stop().await;

    // Rows the purge must tell apart, written while no relay runs: many published at t0 (more
    // than one purge chunk), one published two hours later, and old ones never published.
    let bulk = 6_000;
    let mut rows = Vec::new();
    for n in 0..bulk {
        rows.push((format!("bulk-{n}"), Some(t0)));
    }
    rows.push(("recent".to_owned(), Some(t0 + chrono::Duration::hours(2))));
    for n in 0..3 {
        rows.push((format!("waiting-{n}"), None));
    }
    let created_at = t0 - chrono::Duration::hours(48);
    for chunk in rows.chunks(1_000) {
        let mut insert = sqlx::QueryBuilder::new(
            "INSERT INTO outbox (event_id, user_id, subject, payload, created_at, published_at) ",
        );
        insert.push_values(chunk, |mut row, (tag, published_at)| {
            row.push_bind(format!(
                "{tag}-{}",
                &uuid::Uuid::new_v4().simple().to_string()[..20]
            ))
            .push_bind("bulk")
            .push_bind("t.v1.events.bulk")
            .push_bind(Vec::<u8>::new())
            .push_bind(created_at)
            .push_bind(*published_at);
        });
        insert.build().execute(&first.db).await.unwrap();
    }

    // A replica that cannot reach NATS (so it publishes nothing), a day and an hour later.
    let closed = format!("nats://127.0.0.1:{}", testkit::spare_port());
    let mut settings = first.settings.clone();
    settings.nats.url = closed;
    settings.outbox.purge_interval_secs = 1;
    let clock = Clock::manual(t0 + chrono::Duration::hours(25));
    let mut purger = spawn_with(settings, clock.clone(), first.db_name.clone()).await;

    let count = |sql: &'static str| {
        let pool = first.db.clone();
        async move {
            sqlx::query_scalar::<_, i64>(sql)
                .fetch_one(&pool)
                .await
                .unwrap()
        }
    };
    eventually(PATIENCE, "rows published at t0 purged", || async {
        let published = count("SELECT COUNT(*) FROM outbox WHERE published_at IS NOT NULL").await;
        (published == 1).then_some(())
    })
    .await;
    let kept: String =
        sqlx::query_scalar("SELECT event_id FROM outbox WHERE published_at IS NOT NULL")
            .fetch_one(&first.db)
            .await
            .unwrap();
    assert!(
        kept.starts_with("recent-"),
        "the row published less than the retention ago stays"
    );
    assert_eq!(
        count("SELECT COUNT(*) FROM outbox WHERE published_at IS NULL").await,
        3,
        "unpublished rows are never purged, however old"
    );

    clock.advance(chrono::Duration::hours(2));
    eventually(PATIENCE, "the recent row purged in its turn", || async {
        (count("SELECT COUNT(*) FROM outbox WHERE published_at IS NOT NULL").await == 0)
            .then_some(())
    })
    .await;
    assert_eq!(
        count("SELECT COUNT(*) FROM outbox WHERE published_at IS NULL").await,
        3
    );
    purger.stop().await;
    first.cleanup().await;
}

#[tokio::test]
async fn command_svc_starts_and_charges_while_nats_is_unreachable() {
    let db = TestDatabase::create(&unique_tag()).await;
    let closed = format!("nats://127.0.0.1:{}", testkit::spare_port());
    let settings = test_settings(&db.url, &[("BILLING__NATS__URL", &closed)]);
    let mut app = tokio::time::timeout(
        Duration::from_secs(60),
        spawn_with(settings, Clock::system(), db.name),
    )
    .await
    .expect("start-up does not wait for NATS");
    eventually(PATIENCE, "/readyz answers 200", || async {
        let ready = reqwest::get(app.http("/readyz")).await.ok()?;
        (ready.status() == StatusCode::OK).then_some(())
    })
    .await;

    let user = new_user("offline");
    let charged = app
        .gateway()
        .await
        .deduct_quota(deduct(&user, 2 * CNY, "offline-1"))
        .await
        .expect("charges are served without NATS")
        .into_inner();
    assert_eq!(charged.free_deducted_micros, 2 * CNY);
    assert_eq!(
        unpublished(&app.db).await,
        2,
        "grant and charge wait in the outbox"
    );
    assert_invariants(&app.db, &user).await;

    // The relay, still waiting for NATS, does not hold up the shutdown (the grace is 10 s).
    let stopping = tokio::time::Instant::now();
    app.stop().await;
    assert!(stopping.elapsed() < Duration::from_secs(5));
    app.cleanup().await;
}

/// At shutdown the relay stops last and publishes what is still unpublished: here a row that
/// no commit announced and that the (minute-long) poll would only find much later.
#[tokio::test]
async fn the_outbox_is_flushed_at_shutdown() {
    let mut app = spawn_app_at(
        Utc::now(),
        &[("BILLING__OUTBOX__POLL_INTERVAL_MS", "600000")],
    )
    .await;
    let names = app.bus_names();
    let user = new_user("flush");
    app.gateway()
        .await
        .deduct_quota(deduct(&user, CNY, "before"))
        .await
        .unwrap();
    all_published(&app.db).await;

    let (quiet_event, subject) = unmatched_event(&names, app.clock.now());
    let mut tx = app.db.begin().await.unwrap();
    command_svc::store::insert_event(&mut tx, &quiet_event, &subject, None, app.clock.now())
        .await
        .unwrap();
    tx.commit().await.unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(unpublished(&app.db).await, 1, "nothing woke the relay");

    app.stop().await;
    assert_eq!(
        unpublished(&app.db).await,
        0,
        "flushed before the service stopped"
    );
    let rows = outbox_rows(&app.db).await;
    let delivered = stream_messages(&app.jetstream().await, &names).await;
    assert_exactly_the_outbox(&delivered, &rows, &names);
    app.cleanup().await;
}

/// The streams are created, and brought back at every start, with the configured number of
/// replicas (a lone server records the number it is asked for).
#[tokio::test]
async fn streams_are_created_and_updated_with_the_configured_settings() {
    let app = spawn_app().await;
    let names = app.bus_names();
    let js = app.jetstream().await;
    let mut settings = app.settings.nats.clone();
    let hours = |h: u64| Duration::from_secs(h * 3600);
    // The configured settings, then other ones: an existing stream is updated to them.
    for (replicas, events_hours, dlq_hours, commands_hours, window_secs) in
        [(1, 168, 720, 168, 120), (3, 24, 48, 12, 60)]
    {
        settings.stream_replicas = replicas;
        settings.events_max_age_hours = events_hours;
        settings.dlq_max_age_hours = dlq_hours;
        settings.commands_max_age_hours = commands_hours;
        settings.duplicate_window_secs = window_secs;
        shared::bus::ensure_streams(&js, &names, &settings)
            .await
            .unwrap();
        for (stream, subject, max_age) in [
            (names.events_stream(), names.events_filter(), events_hours),
            (names.dlq_stream(), names.dlq_filter(), dlq_hours),
            (
                names.commands_stream(),
                names.commands_filter(),
                commands_hours,
            ),
        ] {
            let mut stream = js.get_stream(&stream).await.unwrap();
            let config = stream.info().await.unwrap().config.clone();
            assert_eq!(config.subjects, vec![subject], "{}", config.name);
            assert_eq!(config.num_replicas, replicas, "{}", config.name);
            assert_eq!(config.max_age, hours(max_age), "{}", config.name);
            assert_eq!(
                config.duplicate_window,
                Duration::from_secs(window_secs),
                "{}",
                config.name
            );
            assert_eq!(config.storage, jetstream::stream::StorageType::File);
            assert_eq!(config.retention, jetstream::stream::RetentionPolicy::Limits);
        }
    }
    app.cleanup().await;
}
