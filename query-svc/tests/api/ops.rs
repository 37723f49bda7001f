//! Operations on the read model: reconcile finds and repairs every kind of difference, a rebuild
//! swaps in a model equal to the write model while charges go on, and dead letters are replayed.

use std::time::Duration;

use async_nats::jetstream;
use billing_ops::{dlq, rebuild, reconcile};
use shared::{
    cache::{CachedSnapshot, SnapshotCache},
    period::BillingZone,
};

use crate::{
    helpers::*,
    projection::{assert_models_agree, some_activity, until_projected},
};

const WAIT: Duration = Duration::from_secs(20);

fn cache(stack: &Stack) -> SnapshotCache {
    SnapshotCache::new(
        &redis_url(),
        &stack.settings.redis.key_prefix,
        Duration::from_secs(60),
    )
    .unwrap()
}

async fn differences(stack: &Stack, repair: bool) -> Vec<reconcile::Difference> {
    let options = reconcile::Options {
        repair,
        settle: Duration::from_millis(300),
    };
    reconcile::reconcile(
        &stack.db,
        Some(&cache(stack)),
        BillingZone::default(),
        &options,
    )
    .await
    .unwrap()
}

#[tokio::test]
async fn reconcile_reports_every_difference_and_repairs_them() {
    let stack = spawn_stack().await;
    let users: Vec<String> = (0..3).map(|i| new_user(&format!("rec{i}"))).collect();
    for user in &users {
        some_activity(&stack, user).await;
    }
    for user in &users {
        until_projected(&stack, user, WAIT).await;
    }
    assert_eq!(
        differences(&stack, false).await,
        vec![],
        "a converged model has no differences"
    );

    // Break the read model in every place reconcile looks.
    let (a, b, c) = (&users[0], &users[1], &users[2]);
    sqlx::query("UPDATE rm_accounts SET balance_micros = balance_micros + 1 WHERE user_id = ?")
        .bind(a)
        .execute(&stack.db)
        .await
        .unwrap();
    sqlx::query("DELETE FROM rm_records WHERE user_id = ? AND type = 'deduct' LIMIT 1")
        .bind(b)
        .execute(&stack.db)
        .await
        .unwrap();
    sqlx::query("UPDATE rm_daily_usage SET calls = calls + 1 WHERE user_id = ?")
        .bind(c)
        .execute(&stack.db)
        .await
        .unwrap();
    sqlx::query("UPDATE rm_orders SET status = 'PENDING', status_rank = 0 WHERE user_id = ?")
        .bind(c)
        .execute(&stack.db)
        .await
        .unwrap();
    let version: i64 = sqlx::query_scalar("SELECT version FROM accounts WHERE user_id = ?")
        .bind(a)
        .fetch_one(&stack.db)
        .await
        .unwrap();
    let bogus = shared::proto::v1::AccountState {
        balance_micros: -7,
        period: "2026-01".into(),
        ..Default::default()
    };
    cache(&stack).remove(b).await;
    assert!(
        cache(&stack)
            .put_if_newer(
                b,
                &CachedSnapshot {
                    version: version + 100,
                    state: prost::Message::encode_to_vec(&bogus),
                    updated_at_ms: 0
                }
            )
            .await
    );

    let stray = new_user("stray");
    sqlx::query(
        "INSERT INTO rm_accounts (user_id, currency, balance_micros, period, free_granted_micros, \
         free_used_micros, monthly_free_micros, version, updated_at) VALUES (?, 'CNY', 5, '2026-11', 0, 0, 0, 1, NOW(6))",
    )
    .bind(&stray)
    .execute(&stack.db)
    .await
    .unwrap();

    let found = differences(&stack, true).await;
    assert!(
        found
            .iter()
            .any(|d| d.user_id == stray && d.what.contains("does not")),
        "{found:#?}"
    );
    let about = |user: &str, words: &str| {
        found
            .iter()
            .any(|d| d.user_id == user && d.what.contains(words))
    };
    assert!(about(a, "snapshot at version"), "{found:#?}");
    assert!(about(b, "is missing"), "{found:#?}");
    assert!(about(b, "Redis snapshot"), "{found:#?}");
    assert!(about(c, "usage of"), "{found:#?}");
    assert!(about(c, "order "), "{found:#?}");

    assert_eq!(differences(&stack, false).await, vec![], "repaired");
    for user in &users {
        assert_models_agree(&stack, user).await;
    }
    stack.cleanup().await;
}

#[tokio::test]
async fn a_rebuild_while_charges_go_on_converges_to_the_write_model() {
    let stack = spawn_stack().await;
    let users: Vec<String> = (0..4).map(|i| new_user(&format!("reb{i}"))).collect();
    for user in &users {
        some_activity(&stack, user).await;
    }
    // A damaged read model, rebuilt while more charges are committed and projected.
    sqlx::query("DELETE FROM rm_records LIMIT 5")
        .execute(&stack.db)
        .await
        .unwrap();
    let load = {
        let (users, gateway) = (users.clone(), stack.gateway().await);
        tokio::spawn(async move {
            let mut gateway = gateway;
            for i in 0..60 {
                let user = &users[i % users.len()];
                gateway
                    .deduct_quota(deduct(user, 1_000, &format!("during-{i}")))
                    .await
                    .unwrap();
            }
        })
    };
    let report = rebuild::rebuild(&stack.db, BillingZone::default(), chrono::Utc::now())
        .await
        .unwrap();
    assert!(
        report.records > 0 && report.accounts == users.len() as u64,
        "{report:?}"
    );
    load.await.unwrap();

    for user in &users {
        until_projected(&stack, user, WAIT).await;
        assert_models_agree(&stack, user).await;
    }
    assert_eq!(differences(&stack, false).await, vec![]);
    stack.cleanup().await;
}

#[tokio::test]
async fn events_the_read_model_refused_are_replayed_from_the_dead_letter_stream() {
    let stack = spawn_stack_with(
        shared::clock::Clock::system(),
        &[("BILLING__QUERY__MAX_DELIVER", "2")],
    )
    .await;
    let user = new_user("replay");
    // The read model cannot take records for a while (a broken deploy): those events are
    // refused until they go to the dead-letter stream.
    sqlx::query("RENAME TABLE rm_records TO rm_records_away")
        .execute(&stack.db)
        .await
        .unwrap();
    stack
        .gateway()
        .await
        .deduct_quota(deduct(&user, 2 * CNY, "while-broken"))
        .await
        .unwrap();
    let js = jetstream::new(async_nats::connect(nats_url()).await.unwrap());
    let letters = stack
        .eventually(WAIT, || {
            let (js, names) = (js.clone(), stack.names.clone());
            async move {
                let letters = dlq::list(&js, &names).await.ok()?;
                (letters.len() >= 2).then_some(letters)
            }
        })
        .await;
    assert!(
        letters
            .iter()
            .any(|l| l.original_subject.ends_with(".quota_deducted")),
        "{letters:?}"
    );
    assert!(letters.iter().all(|l| !l.reason.is_empty()));

    sqlx::query("RENAME TABLE rm_records_away TO rm_records")
        .execute(&stack.db)
        .await
        .unwrap();
    let replayed = dlq::replay(&js, &stack.names, &[]).await.unwrap();
    assert_eq!(replayed.len(), letters.len());
    until_projected(&stack, &user, WAIT).await;
    assert_models_agree(&stack, &user).await;
    assert!(
        dlq::list(&js, &stack.names).await.unwrap().is_empty(),
        "replayed letters leave the stream"
    );
    stack.cleanup().await;
}
