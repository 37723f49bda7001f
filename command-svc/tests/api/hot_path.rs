//! The hot path's two speed-ups keep every rule: group commit (and the same results without it),
//! and `CheckQuota` from command-svc's memory and Redis snapshots (and from MySQL without Redis);
//! the memory's own rules are in `memory`.

use std::{collections::HashSet, time::Duration};

use chrono::Utc;
use futures::future::join_all;
use shared::proto::v1 as pb;

use crate::helpers::*;

const WITHOUT_GROUP_COMMIT: (&str, &str) = ("BILLING__COMMAND__GROUP_COMMIT__ENABLED", "false");
const WITHOUT_MEMORY: (&str, &str) = ("BILLING__COMMAND__ACCOUNT_MEMORY__ENABLED", "false");

/// 300 concurrent 1-CNY charges on an account that can afford exactly 150, half of them sent
/// twice: each key charges once, the refusals take nothing, the books balance.
async fn contended_account_keeps_every_rule(overrides: &[(&str, &str)]) {
    let app = spawn_app_at(Utc::now(), overrides).await;
    let user = new_user("contended");
    recharge(&app, &user, 140 * CNY).await;
    let gateway = app.gateway().await;
    let calls = (0..300).flat_map(|i| {
        let copies = if i % 2 == 0 { 2 } else { 1 };
        (0..copies).map(move |_| i)
    });
    let calls = calls.map(|i| {
        let mut gateway = gateway.clone();
        let request = deduct(&user, CNY, &format!("key-{i}"));
        async move {
            (
                i,
                gateway.deduct_quota(request).await.map(|r| r.into_inner()),
            )
        }
    });
    let results = join_all(calls).await;
    let applied: HashSet<_> = results
        .iter()
        .filter_map(|(i, r)| r.as_ref().ok().map(|_| *i))
        .collect();
    let refused = results
        .iter()
        .filter(|(_, r)| matches!(r, Err(s) if reason(s) == "INSUFFICIENT_QUOTA"))
        .count();
    assert_eq!(applied.len(), 150, "exactly what the account affords");
    assert!(refused >= 150, "{refused}");
    assert!(
        results
            .iter()
            .all(|(_, r)| r.is_ok() || matches!(r, Err(s) if reason(s) == "INSUFFICIENT_QUOTA"))
    );
    let records: HashSet<_> = results
        .iter()
        .filter_map(|(_, r)| r.as_ref().ok().map(|c| c.record_id.clone()))
        .collect();
    assert_eq!(
        records.len(),
        150,
        "a key sent twice answers with one record"
    );
    let view = account(&app, &user).await;
    assert_eq!((view.balance_micros, view.free_remaining_micros), (0, 0));
    assert_eq!(
        count(
            &app.db,
            "SELECT COUNT(*) FROM ledger WHERE user_id = ? AND kind = 'deduct'",
            &user
        )
        .await,
        150
    );
    assert_invariants(&app.db, &user).await;
    app.cleanup().await;
}

#[tokio::test]
async fn group_commit_keeps_every_rule_on_a_contended_account() {
    contended_account_keeps_every_rule(&[]).await;
}

#[tokio::test]
async fn one_transaction_per_charge_keeps_every_rule_too() {
    contended_account_keeps_every_rule(&[WITHOUT_GROUP_COMMIT]).await;
}

#[tokio::test]
async fn a_batch_mixing_new_accounts_replays_refusals_and_reused_keys_answers_each_on_its_own() {
    let app = spawn_app_at(
        Utc::now(),
        &[
            ("BILLING__COMMAND__GROUP_COMMIT__MAX_WAIT_US", "20000"),
            ("BILLING__COMMAND__GROUP_COMMIT__WORKERS", "1"),
        ],
    )
    .await;
    let rich = new_user("rich");
    recharge(&app, &rich, 50 * CNY).await;
    app.gateway()
        .await
        .deduct_quota(deduct(&rich, CNY, "earlier"))
        .await
        .unwrap();
    let newcomer = new_user("new");
    // Sent together, so the single worker takes them as one batch.
    let requests = vec![
        deduct(&rich, CNY, "earlier"),     // a replay of a committed charge
        deduct(&rich, 2 * CNY, "earlier"), // the same key with another amount
        deduct(&newcomer, 11 * CNY, "too-much"), // refused: a new account has 10 CNY free
        deduct(&newcomer, 3 * CNY, "fits"), // applied: creates the account with its grant
        deduct(&rich, 4 * CNY, "twice"),   // applied
        deduct(&rich, 4 * CNY, "twice"),   // the same key again in the batch: once
        deduct(&rich, 100 * CNY, "huge"),  // refused, the others unaffected
    ];
    let gateway = app.gateway().await;
    let results = join_all(requests.into_iter().map(|request| {
        let mut gateway = gateway.clone();
        async move { gateway.deduct_quota(request).await.map(|r| r.into_inner()) }
    }))
    .await;
    assert!(results[0].as_ref().unwrap().replayed);
    assert_eq!(
        reason(results[1].as_ref().unwrap_err()),
        "IDEMPOTENCY_KEY_REUSED"
    );
    assert_eq!(
        reason(results[2].as_ref().unwrap_err()),
        "INSUFFICIENT_QUOTA"
    );
    let fits = results[3].as_ref().unwrap();
    assert_eq!(
        (
            fits.free_deducted_micros,
            fits.account.as_ref().unwrap().version
        ),
        (3 * CNY, 2)
    );
    let (first, second) = (results[4].as_ref().unwrap(), results[5].as_ref().unwrap());
    assert_eq!(first.record_id, second.record_id);
    assert_ne!(
        first.replayed, second.replayed,
        "one applied, one answered as its replay"
    );
    assert_eq!(
        reason(results[6].as_ref().unwrap_err()),
        "INSUFFICIENT_QUOTA"
    );

    assert_eq!(
        count(
            &app.db,
            "SELECT COUNT(*) FROM ledger WHERE user_id = ? AND kind = 'deduct'",
            &rich
        )
        .await,
        2
    );
    assert_eq!(ledger_count(&app, &newcomer).await, 2, "grant and charge");
    for user in [&rich, &newcomer] {
        assert_invariants(&app.db, user).await;
    }
    app.cleanup().await;
}

/// CheckQuota after an acknowledged charge shows at least that charge's version.
async fn checks_follow_charges(app: &TestApp, user: &str) {
    let (mut gateway, mut checker) = (app.gateway().await, app.gateway().await);
    for i in 0..40 {
        let charged = gateway
            .deduct_quota(deduct(user, 100_000, &format!("c{i}")))
            .await
            .unwrap()
            .into_inner();
        let version = charged.account.unwrap().version;
        let check = pb::CheckQuotaRequest {
            user_id: user.into(),
            amount_micros: 1,
            ..Default::default()
        };
        let seen = checker
            .check_quota(check)
            .await
            .unwrap()
            .into_inner()
            .account
            .unwrap();
        assert!(
            seen.version >= version,
            "check at version {} after a charge at {version}",
            seen.version
        );
        assert_eq!(seen.free_used_micros, (i + 1) * 100_000);
    }
}

#[tokio::test]
async fn checks_answer_from_redis_at_least_as_new_as_the_callers_last_charge() {
    let app = spawn_app().await;
    let user = new_user("cached");
    checks_follow_charges(&app, &user).await;
    // The answer came from the snapshot: it is there, at the account's version.
    let cache = shared::cache::SnapshotCache::for_commands(
        &redis_url(),
        &app.settings.redis.key_prefix,
        Duration::from_secs(30),
    )
    .unwrap();
    let cached = cache.get(&user).await.expect("a snapshot written through");
    assert_eq!(cached.version, account(&app, &user).await.version);
    app.cleanup().await;
}

#[tokio::test]
async fn a_check_after_the_snapshot_expired_answers_from_mysql_and_caches_it_again() {
    // Redis and MySQL behind the memory: with the memory off, every check reaches them.
    let app = spawn_app_at(Utc::now(), &[WITHOUT_MEMORY]).await;
    let user = new_user("refill");
    let charged = app
        .gateway()
        .await
        .deduct_quota(deduct(&user, 250_000, "only"))
        .await
        .unwrap()
        .into_inner();
    let version = charged.account.unwrap().version;
    let cache = shared::cache::SnapshotCache::for_commands(
        &redis_url(),
        &app.settings.redis.key_prefix,
        Duration::from_secs(30),
    )
    .unwrap();
    cache.remove(&user).await;
    assert!(cache.get(&user).await.is_none(), "the snapshot is gone");

    let check = pb::CheckQuotaRequest {
        user_id: user.clone(),
        amount_micros: 1,
        ..Default::default()
    };
    let seen = app
        .gateway()
        .await
        .check_quota(check)
        .await
        .unwrap()
        .into_inner();
    let seen = seen.account.unwrap();
    assert_eq!((seen.version, seen.free_used_micros), (version, 250_000));
    let cached = cache
        .get(&user)
        .await
        .expect("the miss cached the account again");
    assert_eq!(cached.version, version);

    // An account never written is not cached: there is nothing to be newer than.
    let stranger = new_user("refill-none");
    let check = pb::CheckQuotaRequest {
        user_id: stranger.clone(),
        amount_micros: 1,
        ..Default::default()
    };
    let seen = app
        .gateway()
        .await
        .check_quota(check)
        .await
        .unwrap()
        .into_inner();
    assert!(seen.allowed);
    assert!(cache.get(&stranger).await.is_none());
    app.cleanup().await;
}

#[tokio::test]
async fn with_redis_down_checks_answer_from_mysql_and_charges_go_on() {
    let mut redis = testkit::OwnRedis::start().await;
    let url = format!("redis://127.0.0.1:{}", redis.port);
    let app = spawn_app_at(Utc::now(), &[("BILLING__REDIS__URL", url.as_str())]).await;
    let user = new_user("no-redis");
    app.gateway()
        .await
        .deduct_quota(deduct(&user, 100_000, "before"))
        .await
        .unwrap();
    redis.kill().await;
    let other = new_user("no-redis-2");
    checks_follow_charges(&app, &other).await;
    assert_invariants(&app.db, &other).await;
    app.cleanup().await;
}

/// Batches are written as one script with literal values: texts of every shape are stored
/// byte for byte, with group commit and without, and none of them is ever read as SQL.
async fn texts_are_stored_exactly_as_sent(overrides: &[(&str, &str)]) {
    let app = spawn_app_at(Utc::now(), overrides).await;
    let user = new_user("texts");
    let descriptions = [
        "x'); DROP TABLE ledger; --",
        "\\' OR '1'='1",
        "日本語のテキスト 🙂",
        "\"quotes\" and `backticks` and %_ wildcards; \\0 \\n",
        "",
    ];
    let mut gateway = app.gateway().await;
    for (i, description) in descriptions.iter().enumerate() {
        let mut request = deduct(&user, 1_000, &format!("t{i}"));
        request.description = (*description).to_owned();
        request.api_id = format!("api-{i}");
        gateway.deduct_quota(request).await.unwrap();
    }
    let stored: Vec<(String, String)> = sqlx::query_as(
        "SELECT COALESCE(description, ''), api_id FROM ledger \
         WHERE user_id = ? AND kind = 'deduct' ORDER BY version",
    )
    .bind(&user)
    .fetch_all(&app.db)
    .await
    .unwrap();
    let expected: Vec<(String, String)> = descriptions
        .iter()
        .enumerate()
        .map(|(i, d)| ((*d).to_owned(), format!("api-{i}")))
        .collect();
    assert_eq!(stored, expected);
    assert_invariants(&app.db, &user).await;
    app.cleanup().await;
}

#[tokio::test]
async fn texts_are_stored_exactly_as_sent_by_group_commit() {
    texts_are_stored_exactly_as_sent(&[]).await;
}

#[tokio::test]
async fn texts_are_stored_exactly_as_sent_one_charge_per_transaction() {
    texts_are_stored_exactly_as_sent(&[WITHOUT_GROUP_COMMIT]).await;
}

/// The batch write-through: each snapshot written only over an older one, in one pipeline that
/// also works after Redis lost its scripts, and that reports nothing written when Redis is down.
#[tokio::test]
async fn snapshots_written_together_keep_the_version_guard() {
    let mut redis = testkit::OwnRedis::start().await;
    let url = redis.url();
    let cache = shared::cache::SnapshotCache::for_commands(&url, "guard:", Duration::from_secs(30))
        .unwrap();
    let at = |version| shared::cache::CachedSnapshot {
        version,
        state: vec![version as u8],
        updated_at_ms: 1,
    };
    assert_eq!(
        cache
            .put_many_if_newer(&[("a", &at(5)), ("b", &at(3))])
            .await,
        [true, true]
    );
    assert_eq!(
        cache
            .put_many_if_newer(&[("a", &at(4)), ("b", &at(7)), ("a", &at(5))])
            .await,
        [false, true, false]
    );
    assert_eq!(cache.get("a").await.map(|s| s.version), Some(5));
    assert_eq!(cache.get("b").await.map(|s| s.version), Some(7));

    let flushed = std::process::Command::new("redis-cli")
        .args(["-p", &redis.port.to_string(), "SCRIPT", "FLUSH"])
        .output()
        .expect("redis-cli runs");
    assert!(flushed.status.success());
    assert_eq!(cache.put_many_if_newer(&[("a", &at(6))]).await, [true]);
    assert_eq!(cache.get("a").await.map(|s| s.version), Some(6));

    redis.kill().await;
    assert_eq!(
        cache
            .put_many_if_newer(&[("a", &at(9)), ("c", &at(1))])
            .await,
        [false, false]
    );
    assert!(
        cache.get("a").await.is_none(),
        "Redis is down: nothing to read"
    );
}

/// With `redis.cluster`, command-svc's snapshots live in a Redis Cluster (three primaries of the
/// test's own): the write-through of a batch of charges on many accounts (many slots) and the
/// checks read together reach each key's node, and a check follows each charge as on one server.
#[tokio::test]
async fn snapshots_in_a_redis_cluster_follow_every_charge() {
    let cluster = testkit::OwnRedisCluster::start().await;
    let url = cluster.url();
    let app = spawn_app_at(
        Utc::now(),
        &[
            ("BILLING__REDIS__URL", url.as_str()),
            ("BILLING__REDIS__CLUSTER", "true"),
        ],
    )
    .await;
    let users: Vec<String> = (0..30).map(|i| new_user(&format!("slot{i}"))).collect();
    let gateway = app.gateway().await;
    let charges = users.iter().map(|user| {
        let mut gateway = gateway.clone();
        let request = deduct(user, 100_000, "first");
        async move { gateway.deduct_quota(request).await.unwrap().into_inner() }
    });
    let charged = join_all(charges).await;
    let checks = users.iter().map(|user| {
        let mut gateway = gateway.clone();
        let check = pb::CheckQuotaRequest {
            user_id: user.clone(),
            amount_micros: 1,
            ..Default::default()
        };
        async move { gateway.check_quota(check).await.unwrap().into_inner() }
    });
    let checked = join_all(checks).await;
    for (charge, check) in charged.iter().zip(&checked) {
        let (charged, seen) = (
            charge.account.as_ref().unwrap(),
            check.account.as_ref().unwrap(),
        );
        assert_eq!(seen.version, charged.version, "{}", seen.user_id);
        assert_eq!(seen.free_used_micros, 100_000);
    }

    // The snapshots are in the cluster, on more than one node, at the accounts' versions.
    let cache =
        shared::cache::SnapshotCache::command_side(&app.settings.redis, Duration::from_secs(30))
            .unwrap();
    let cached = join_all(users.iter().map(|user| cache.get(user))).await;
    for (user, cached) in users.iter().zip(cached) {
        let cached = cached.expect("a snapshot written through to the cluster");
        assert_eq!(cached.version, account(&app, user).await.version, "{user}");
    }
    let nodes_used = cluster
        .keys_per_node()
        .await
        .into_iter()
        .filter(|keys| *keys > 0)
        .count();
    assert!(nodes_used >= 2, "the accounts' keys spread over the nodes");
    // An older snapshot never replaces a newer one there either.
    let older = shared::cache::CachedSnapshot {
        version: 1,
        state: Vec::new(),
        updated_at_ms: 0,
    };
    let puts: Vec<(&str, &shared::cache::CachedSnapshot)> =
        users.iter().map(|user| (user.as_str(), &older)).collect();
    assert!(
        cache
            .put_many_if_newer(&puts)
            .await
            .iter()
            .all(|written| !written)
    );

    checks_follow_charges(&app, &new_user("slot-follow")).await;
    let metrics = reqwest::get(app.http("/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let scraped = testkit::metrics::Scrape::parse(&metrics);
    assert_eq!(
        scraped
            .value("billing_redis_failures_total", &[])
            .unwrap_or(0.0),
        0.0
    );
    assert_eq!(scraped.value("billing_redis_available", &[]), Some(1.0));
    app.cleanup().await;
}
