//! Events into the read model: every committed change appears once, whatever the redeliveries,
//! duplicates and order; what cannot be projected goes to the dead-letter stream, not lost.

use std::time::Duration;

use async_nats::jetstream::{self, message::PublishMessage};
use billing_ops::dlq;
use prost::Message;
use shared::proto::v1 as pb;
use sqlx::Row;

use crate::helpers::*;

const WAIT: Duration = Duration::from_secs(20);

/// The read model agrees with the write model for `user`: snapshot at the account's version,
/// every ledger row as a record, usage counters equal to the charges.
pub async fn projected(stack: &Stack, user: &str) -> bool {
    let write_version: Option<i64> =
        sqlx::query_scalar("SELECT version FROM accounts WHERE user_id = ?")
            .bind(user)
            .fetch_optional(&stack.db)
            .await
            .unwrap();
    let read_version: Option<i64> =
        sqlx::query_scalar("SELECT version FROM rm_accounts WHERE user_id = ?")
            .bind(user)
            .fetch_optional(&stack.db)
            .await
            .unwrap();
    if write_version.is_none() || write_version != read_version {
        return false;
    }
    let ledger: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM ledger WHERE user_id = ?")
        .bind(user)
        .fetch_one(&stack.db)
        .await
        .unwrap();
    let records: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM rm_records WHERE user_id = ?")
        .bind(user)
        .fetch_one(&stack.db)
        .await
        .unwrap();
    ledger == records
}

/// Waits until the read model agrees with the write model for `user`, for at most `limit`.
pub async fn until_projected(stack: &Stack, user: &str, limit: Duration) {
    stack
        .eventually(limit, || async {
            projected(stack, user).await.then_some(())
        })
        .await;
}

/// Fails the test with the first difference between the models for `user`.
pub async fn assert_models_agree(stack: &Stack, user: &str) {
    let account = sqlx::query(
        "SELECT a.balance_micros = r.balance_micros AND a.period = r.period \
         AND a.free_granted_micros = r.free_granted_micros AND a.free_used_micros = r.free_used_micros \
         AND a.version = r.version AND a.monthly_free_micros = r.monthly_free_micros AS same \
         FROM accounts a JOIN rm_accounts r ON r.user_id = a.user_id WHERE a.user_id = ?",
    )
    .bind(user)
    .fetch_one(&stack.db)
    .await
    .unwrap();
    assert!(account.get::<bool, _>("same"), "{user}: snapshot differs");

    let differing: i64 = sqlx::query_scalar(
        "SELECT COUNT(*) FROM ledger l LEFT JOIN rm_records r ON r.record_id = l.record_id \
         WHERE l.user_id = ? AND (r.record_id IS NULL OR r.version <> l.version OR r.type <> l.kind \
         OR r.amount_micros <> l.amount_micros OR r.free_micros <> l.free_micros \
         OR r.balance_micros <> l.balance_micros OR r.balance_after_micros <> l.balance_after_micros \
         OR r.free_remaining_after_micros <> l.free_granted_after_micros - l.free_used_after_micros - l.free_held_after_micros \
         OR r.period <> COALESCE(l.free_period, l.period) OR r.created_at <> l.created_at)",
    )
    .bind(user)
    .fetch_one(&stack.db)
    .await
    .unwrap();
    assert_eq!(differing, 0, "{user}: records differ from the ledger");
    let records: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM rm_records WHERE user_id = ?")
        .bind(user)
        .fetch_one(&stack.db)
        .await
        .unwrap();
    let ledger: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM ledger WHERE user_id = ?")
        .bind(user)
        .fetch_one(&stack.db)
        .await
        .unwrap();
    assert_eq!(records, ledger, "{user}: one record per ledger row");

    let usage = sqlx::query(
        "SELECT CAST(COALESCE(SUM(calls), 0) AS SIGNED) AS calls, CAST(COALESCE(SUM(amount_micros), 0) AS SIGNED) AS amount, \
         CAST(COALESCE(SUM(free_micros), 0) AS SIGNED) AS free FROM rm_daily_usage WHERE user_id = ?",
    )
    .bind(user)
    .fetch_one(&stack.db)
    .await
    .unwrap();
    let charges = sqlx::query(
        "SELECT COUNT(*) AS calls, CAST(COALESCE(SUM(amount_micros), 0) AS SIGNED) AS amount, \
         CAST(COALESCE(SUM(free_micros), 0) AS SIGNED) AS free FROM ledger WHERE user_id = ? AND kind = 'deduct'",
    )
    .bind(user)
    .fetch_one(&stack.db)
    .await
    .unwrap();
    for column in ["calls", "amount", "free"] {
        assert_eq!(
            usage.get::<i64, _>(column),
            charges.get::<i64, _>(column),
            "{user}: usage {column}"
        );
    }
}

pub async fn some_activity(stack: &Stack, user: &str) {
    recharge(stack, user, 20 * CNY).await;
    let mut gateway = stack.gateway().await;
    for i in 0..5 {
        gateway
            .deduct_quota(deduct(user, 3 * CNY, &format!("call-{i}")))
            .await
            .unwrap();
    }
    stack
        .ops()
        .await
        .adjust_balance(adjust(user, -CNY, "fee"))
        .await
        .unwrap();
    // A reservation settled below its hold, and one released.
    for request_id in ["stream-1", "stream-2"] {
        gateway
            .reserve_quota(pb::ReserveQuotaRequest {
                user_id: user.to_owned(),
                request_id: request_id.to_owned(),
                amount_micros: 2 * CNY,
                api_id: "api.stream".into(),
                ttl_ms: 60_000,
                ..Default::default()
            })
            .await
            .unwrap();
    }
    gateway
        .settle_reservation(pb::SettleReservationRequest {
            user_id: user.to_owned(),
            request_id: "stream-1".into(),
            actual_amount_micros: CNY + CNY / 2,
            ..Default::default()
        })
        .await
        .unwrap();
    gateway
        .release_reservation(pb::ReleaseReservationRequest {
            user_id: user.to_owned(),
            request_id: "stream-2".into(),
        })
        .await
        .unwrap();
    // A hold left to expire (the sweeper or the settle itself releases it), then settled late:
    // a release and a charge, each showing the reservation's request id.
    gateway
        .reserve_quota(pb::ReserveQuotaRequest {
            user_id: user.to_owned(),
            request_id: "stream-3".into(),
            amount_micros: CNY,
            api_id: "api.stream".into(),
            ttl_ms: 1_000,
            ..Default::default()
        })
        .await
        .unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(1_200)).await;
    let late = gateway
        .settle_reservation(pb::SettleReservationRequest {
            user_id: user.to_owned(),
            request_id: "stream-3".into(),
            actual_amount_micros: CNY / 2,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(late.after_expiry);
}

#[tokio::test]
async fn committed_changes_reach_the_read_model_once() {
    let stack = spawn_stack().await;
    let user = new_user("projected");
    some_activity(&stack, &user).await;
    until_projected(&stack, &user, WAIT).await;
    assert_models_agree(&stack, &user).await;

    let order: (String, i64) =
        sqlx::query_as("SELECT status, status_rank FROM rm_orders WHERE user_id = ?")
            .bind(&user)
            .fetch_one(&stack.db)
            .await
            .unwrap();
    assert_eq!(order, ("PAID".to_owned(), 2));

    // The Redis snapshot follows the same version.
    let cache = shared::cache::SnapshotCache::new(
        &redis_url(),
        &stack.settings.redis.key_prefix,
        Duration::from_secs(60),
    )
    .unwrap();
    let version: i64 = sqlx::query_scalar("SELECT version FROM accounts WHERE user_id = ?")
        .bind(&user)
        .fetch_one(&stack.db)
        .await
        .unwrap();
    let cached = stack
        .eventually(WAIT, || async {
            cache.get(&user).await.filter(|s| s.version == version)
        })
        .await;
    let state = pb::AccountState::decode(cached.state.as_slice()).unwrap();
    assert_eq!(state.version, version);
    stack.cleanup().await;
}

/// Every event of the outbox, as the relay published it.
async fn outbox_events(stack: &Stack) -> Vec<(String, Vec<u8>)> {
    sqlx::query_as("SELECT subject, payload FROM outbox ORDER BY id")
        .fetch_all(&stack.db)
        .await
        .unwrap()
}

/// Publishes on the test's events stream, which may not exist yet when a test starts (query-svc
/// and command-svc create it in the background).
/// A newer producer's event: a kind and a schema version this build does not know. Returns its
/// subject.
pub async fn publish_from_the_future(stack: &Stack) -> String {
    let newer = pb::BillingEvent {
        event_id: "from-the-future".into(),
        user_id: "u".into(),
        schema_version: 2,
        ..Default::default()
    };
    let subject = format!("t{}.v1.events.quota_reserved", stack.tag);
    publish(stack, &subject, newer.encode_to_vec(), "future-1").await;
    subject
}

pub async fn publish(stack: &Stack, subject: &str, payload: Vec<u8>, message_id: &str) {
    let message = PublishMessage::build()
        .payload(payload.into())
        .message_id(message_id);
    publish_message(stack, subject, message).await;
}

async fn publish_message(stack: &Stack, subject: &str, message: PublishMessage) {
    let js = jetstream::new(async_nats::connect(nats_url()).await.unwrap());
    shared::bus::ensure_streams(&js, &stack.names, &stack.settings.nats)
        .await
        .unwrap();
    js.send_publish(subject.to_owned(), message)
        .await
        .unwrap()
        .await
        .unwrap();
}

#[tokio::test]
async fn duplicates_and_reordered_redeliveries_change_nothing() {
    let stack = spawn_stack().await;
    let user = new_user("dups");
    some_activity(&stack, &user).await;
    until_projected(&stack, &user, WAIT).await;

    // Every event again, newest first, with message ids JetStream has not seen: as if the relay
    // re-published after the dedup window, or another replica redelivered out of order.
    let mut events = outbox_events(&stack).await;
    events.reverse();
    for (index, (subject, payload)) in events.iter().enumerate() {
        publish(&stack, subject, payload.clone(), &format!("again-{index}")).await;
    }
    // And once more inside the window, with the original ids, which JetStream drops.
    for (subject, payload) in &events {
        let id = pb::BillingEvent::decode(payload.as_slice())
            .unwrap()
            .event_id;
        publish(&stack, subject, payload.clone(), &id).await;
    }
    // A marker event after them: once it is projected, so are the duplicates before it.
    let marker = new_user("marker");
    stack
        .gateway()
        .await
        .deduct_quota(deduct(&marker, 1, "marker"))
        .await
        .unwrap();
    until_projected(&stack, &marker, WAIT).await;

    assert_models_agree(&stack, &user).await;
    let options = billing_ops::reconcile::Options {
        repair: false,
        settle: Duration::from_millis(300),
    };
    let cache = shared::cache::SnapshotCache::new(
        &redis_url(),
        &stack.settings.redis.key_prefix,
        Duration::from_secs(60),
    )
    .unwrap();
    let differences = billing_ops::reconcile::reconcile(
        &stack.db,
        Some(&cache),
        shared::period::BillingZone::default(),
        &options,
    )
    .await
    .unwrap();
    assert_eq!(differences, vec![], "reconcile finds the models equal");
    stack.cleanup().await;
}

#[tokio::test]
async fn a_read_model_rebuilt_from_shuffled_events_equals_the_write_model() {
    let stack = spawn_stack().await;
    let users: Vec<String> = (0..3).map(|i| new_user(&format!("shuffle{i}"))).collect();
    for user in &users {
        some_activity(&stack, user).await;
    }
    for user in &users {
        until_projected(&stack, user, WAIT).await;
    }
    for table in ["rm_accounts", "rm_records", "rm_daily_usage", "rm_orders"] {
        sqlx::query(sqlx::AssertSqlSafe(format!("DELETE FROM {table}")))
            .execute(&stack.db)
            .await
            .unwrap();
    }
    // A deterministic shuffle: interleave from both ends.
    let events = outbox_events(&stack).await;
    let (mut front, mut back) = (0, events.len());
    let mut index = 0;
    while front < back {
        let (subject, payload) = if index % 2 == 0 {
            back -= 1;
            &events[back]
        } else {
            front += 1;
            &events[front - 1]
        };
        publish(
            &stack,
            subject,
            payload.clone(),
            &format!("shuffled-{index}"),
        )
        .await;
        index += 1;
    }
    for user in &users {
        until_projected(&stack, user, WAIT).await;
        assert_models_agree(&stack, user).await;
    }
    stack.cleanup().await;
}

#[tokio::test]
async fn an_event_this_build_cannot_read_goes_to_the_dead_letter_stream() {
    let stack = spawn_stack_with(
        shared::clock::Clock::system(),
        &[("BILLING__QUERY__MAX_DELIVER", "3")],
    )
    .await;
    let subject = publish_from_the_future(&stack).await;
    publish(
        &stack,
        &format!("t{}.v1.events.quota_deducted", stack.tag),
        b"\xff\x01 not protobuf".to_vec(),
        "garbage-1",
    )
    .await;

    let js = jetstream::new(async_nats::connect(nats_url()).await.unwrap());
    let dlq_name = stack.names.dlq_stream();
    stack
        .eventually(WAIT, || {
            let (js, name) = (js.clone(), dlq_name.clone());
            async move {
                (js.get_stream(name)
                    .await
                    .ok()?
                    .info()
                    .await
                    .ok()?
                    .state
                    .messages
                    == 2)
                    .then_some(())
            }
        })
        .await;
    // Both letters are kept, each under its kind, with its original subject and reason; their
    // order is the order the projector met them, which a batch may change.
    let dlq = js.get_stream(&dlq_name).await.unwrap();
    let mut letters = Vec::new();
    for sequence in 1..=2 {
        let letter = dlq.get_raw_message(sequence).await.unwrap();
        let header = |name: &str| letter.headers.get(name).map(|v| v.to_string());
        letters.push((
            letter.subject.to_string(),
            header(shared::bus::ORIGINAL_SUBJECT_HEADER).unwrap(),
            header(shared::bus::DEAD_LETTER_REASON_HEADER).unwrap(),
        ));
    }
    letters.sort();
    let tag = &stack.tag;
    assert_eq!(letters[0].0, format!("t{tag}.v1.dlq.quota_deducted"));
    assert_eq!(letters[0].1, format!("t{tag}.v1.events.quota_deducted"));
    assert!(letters[0].2.contains("undecodable"), "{:?}", letters[0]);
    assert_eq!(letters[1].0, format!("t{tag}.v1.dlq.quota_reserved"));
    assert_eq!(letters[1].1, subject);
    assert!(
        letters[1].2.contains("schema version 2"),
        "{:?}",
        letters[1]
    );

    // The consumer moved on: a normal event behind them is projected.
    let user = new_user("after-dlq");
    stack
        .gateway()
        .await
        .deduct_quota(deduct(&user, 1, "r"))
        .await
        .unwrap();
    until_projected(&stack, &user, WAIT).await;
    stack.cleanup().await;
}

/// An event of a kind this build does not know (a newer command-svc in a rolling deploy) is
/// delivered `max_deliver` times, then kept in the dead-letter stream; replayed while the build
/// still does not know it, it comes back to the dead-letter stream: it is never dropped, and the
/// read model is untouched. (Replay into the model once it can take an event is
/// `ops::events_the_read_model_refused_are_replayed_from_the_dead_letter_stream`.)
#[tokio::test]
async fn an_unknown_event_kind_is_kept_in_the_dead_letter_stream_until_a_build_knows_it() {
    let stack = spawn_stack_with(
        shared::clock::Clock::system(),
        &[("BILLING__QUERY__MAX_DELIVER", "2")],
    )
    .await;
    let user = new_user("unknown-kind");
    let known = pb::BillingEvent {
        event_id: format!("{user}-newer-kind"),
        user_id: user.clone(),
        version: 1,
        occurred_at_ms: chrono::Utc::now().timestamp_millis(),
        schema_version: 1,
        ..Default::default()
    };
    // The kind is a field of the `oneof` this build's schema lacks: number 90, length-delimited.
    let mut payload = known.encode_to_vec();
    let body = pb::QuotaDeducted {
        record_id: "r-1".into(),
        amount_micros: 5,
        ..Default::default()
    }
    .encode_to_vec();
    prost::encoding::encode_key(90, prost::encoding::WireType::LengthDelimited, &mut payload);
    prost::encoding::encode_varint(body.len() as u64, &mut payload);
    payload.extend_from_slice(&body);
    assert!(
        pb::BillingEvent::decode(payload.as_slice())
            .unwrap()
            .kind
            .is_none(),
        "this build reads the event but not its kind"
    );
    let subject = format!("t{}.v1.events.quota_rebated", stack.tag);
    publish(&stack, &subject, payload.clone(), "newer-kind-1").await;

    let js = jetstream::new(async_nats::connect(nats_url()).await.unwrap());
    let dead_letter = |js: jetstream::Context| {
        let names = stack.names.clone();
        async move {
            let letters = dlq::list(&js, &names).await.ok()?;
            (letters.len() == 1).then(|| letters[0].clone())
        }
    };
    let letter = stack.eventually(WAIT, || dead_letter(js.clone())).await;
    assert_eq!(letter.original_subject, subject);
    assert!(letter.reason.contains("unknown event kind"), "{letter:?}");
    assert_eq!(letter.bytes, payload.len(), "the event is kept whole");

    let replayed = dlq::replay(&js, &stack.names, &[]).await.unwrap();
    assert_eq!(replayed, vec![letter.sequence]);
    let again = stack
        .eventually(WAIT, || {
            let js = js.clone();
            let first = letter.sequence;
            async move { dead_letter(js).await.filter(|l| l.sequence > first) }
        })
        .await;
    assert_eq!(again.original_subject, subject);
    assert_eq!(again.bytes, payload.len());
    let touched: i64 = sqlx::query_scalar(
        "SELECT (SELECT COUNT(*) FROM rm_accounts WHERE user_id = ?) \
         + (SELECT COUNT(*) FROM rm_records WHERE user_id = ?)",
    )
    .bind(&user)
    .bind(&user)
    .fetch_one(&stack.db)
    .await
    .unwrap();
    assert_eq!(
        touched, 0,
        "nothing of the unknown event reached the read model"
    );
    stack.cleanup().await;
}

/// Publishes `events` as one `BillingEventBatch` message, as command-svc's relay does.
async fn publish_batch(stack: &Stack, subject: &str, events: &[Vec<u8>], message_id: &str) {
    let payload = shared::bus::batch_payload(events.iter().map(Vec::as_slice));
    let message = PublishMessage::build()
        .payload(payload.into())
        .header(shared::bus::BATCH_HEADER, events.len().to_string())
        .message_id(message_id);
    publish_message(stack, subject, message).await;
}

/// A batch message is projected event by event, in one go; an event of it this build cannot
/// read goes to the dead-letter stream alone (as a single event), and the others are kept.
#[tokio::test]
async fn a_batch_is_projected_whole_and_its_refused_event_alone_is_dead_lettered() {
    let stack = spawn_stack_with(
        shared::clock::Clock::system(),
        &[("BILLING__QUERY__MAX_DELIVER", "2")],
    )
    .await;
    let user = new_user("batched");
    let mut gateway = stack.gateway().await;
    for i in 0..6 {
        gateway
            .deduct_quota(deduct(&user, CNY / 2, &format!("call-{i}")))
            .await
            .unwrap();
    }
    until_projected(&stack, &user, WAIT).await;

    // The read model forgets the user; the grant comes back on its own, the charges in one
    // batch with an event from a newer build among them.
    for forget in [
        "DELETE FROM rm_accounts WHERE user_id = ?",
        "DELETE FROM rm_records WHERE user_id = ?",
        "DELETE FROM rm_daily_usage WHERE user_id = ?",
    ] {
        sqlx::query(forget)
            .bind(&user)
            .execute(&stack.db)
            .await
            .unwrap();
    }
    let mut charges = Vec::new();
    for (subject, payload) in outbox_events(&stack).await {
        let event = pb::BillingEvent::decode(payload.as_slice()).unwrap();
        if event.user_id != user {
            continue;
        }
        if subject.ends_with(".quota_deducted") {
            charges.push(payload);
        } else {
            publish(
                &stack,
                &subject,
                payload,
                &format!("again-{}", event.event_id),
            )
            .await;
        }
    }
    assert_eq!(charges.len(), 6);
    let newer = pb::BillingEvent {
        event_id: "from-the-future-in-a-batch".into(),
        user_id: user.clone(),
        schema_version: 2,
        ..Default::default()
    };
    charges.insert(3, newer.encode_to_vec());
    let subject = format!("t{}.v1.events.quota_deducted", stack.tag);
    publish_batch(&stack, &subject, &charges, "batch-again-1").await;

    until_projected(&stack, &user, WAIT).await;
    assert_models_agree(&stack, &user).await;

    let js = jetstream::new(async_nats::connect(nats_url()).await.unwrap());
    let dlq_name = stack.names.dlq_stream();
    let letter = stack
        .eventually(WAIT, || {
            let (js, name) = (js.clone(), dlq_name.clone());
            async move {
                let dlq = js.get_stream(name).await.ok()?;
                dlq.get_raw_message(1).await.ok()
            }
        })
        .await;
    let header = |name: &str| letter.headers.get(name).map(|v| v.to_string());
    assert_eq!(
        header(shared::bus::BATCH_HEADER),
        None,
        "one event, not the batch"
    );
    assert_eq!(header(shared::bus::ORIGINAL_SUBJECT_HEADER), Some(subject));
    assert!(
        header(shared::bus::DEAD_LETTER_REASON_HEADER)
            .unwrap()
            .contains("schema version 2")
    );
    let dead = pb::BillingEvent::decode(letter.payload.as_ref()).unwrap();
    assert_eq!(dead, newer);
    let dlq = js.get_stream(&dlq_name).await.unwrap();
    assert_eq!(dlq.get_info().await.unwrap().state.messages, 1);
    stack.cleanup().await;
}
