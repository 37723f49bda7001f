//! Spend limits: exact under any concurrency, batching and replicas; windows that roll at local
//! midnight; scopes that bind only their own charges; holds that count while they hold; refunds
//! that give back within their window.

use chrono::{DateTime, TimeDelta, Utc};
use shared::proto::v1 as pb;
use tonic::Code;

use crate::helpers::*;

const WITHOUT_GROUP_COMMIT: (&str, &str) = ("BILLING__COMMAND__GROUP_COMMIT__ENABLED", "false");

fn limit(scope: &str, window: &str, limit_micros: i64) -> pb::SpendLimit {
    pb::SpendLimit {
        scope: scope.into(),
        window: window.into(),
        limit_micros,
    }
}

async fn set_limits(
    app: &TestApp,
    user: &str,
    limits: Vec<pb::SpendLimit>,
) -> Vec<pb::SpendLimitStatus> {
    app.orders()
        .await
        .set_spend_limits(pb::SetSpendLimitsRequest {
            user_id: user.into(),
            limits,
            actor: "user:test".into(),
            set_id: String::new(),
        })
        .await
        .expect("the limits are set")
        .into_inner()
        .limits
}

async fn limits_of(app: &TestApp, user: &str) -> Vec<pb::SpendLimitStatus> {
    app.gateway()
        .await
        .get_spend_limits(pb::GetSpendLimitsRequest {
            user_id: user.into(),
        })
        .await
        .expect("the limits are read")
        .into_inner()
        .limits
}

fn charge(
    user: &str,
    request_id: &str,
    amount: i64,
    api_id: &str,
    key_id: &str,
) -> pb::DeductQuotaRequest {
    pb::DeductQuotaRequest {
        user_id: user.into(),
        request_id: request_id.into(),
        amount_micros: amount,
        api_id: api_id.into(),
        key_id: key_id.into(),
        ..Default::default()
    }
}

fn metadata(status: &tonic::Status, key: &str) -> String {
    use tonic_types::StatusExt;
    status
        .get_details_error_info()
        .and_then(|info| info.metadata.get(key).cloned())
        .unwrap_or_default()
}

fn reason(status: &tonic::Status) -> String {
    use tonic_types::StatusExt;
    status
        .get_details_error_info()
        .map(|info| info.reason)
        .unwrap_or_default()
}

/// What the user's counters hold, summed, as their account row stores them.
async fn spent_sum(app: &TestApp, user: &str) -> i64 {
    let column: Option<String> =
        sqlx::query_scalar("SELECT spend_counters FROM accounts WHERE user_id = ?")
            .bind(user)
            .fetch_one(&app.db)
            .await
            .unwrap();
    let counters: Vec<serde_json::Value> = serde_json::from_str(&column.unwrap()).unwrap();
    counters
        .iter()
        .map(|counter| counter["spent_micros"].as_i64().unwrap())
        .sum()
}

/// The `spend_limit_reached` events recorded for the user.
async fn reached_events(app: &TestApp, user: &str) -> i64 {
    sqlx::query_scalar(
        "SELECT COUNT(*) FROM outbox WHERE user_id = ? AND subject LIKE '%.spend_limit_reached'",
    )
    .bind(user)
    .fetch_one(&app.db)
    .await
    .unwrap()
}

/// 1,000 concurrent charges of 1,000 micros against a limit of 317,000: exactly 317 pass and
/// the limit is spent to the micro, never above.
async fn exactly_the_limit_passes(apps: &[&TestApp]) {
    let user = new_user("exact");
    recharge(apps[0], &user, 10 * CNY).await;
    set_limits(apps[0], &user, vec![limit("account", "day", 317_000)]).await;
    let mut calls = tokio::task::JoinSet::new();
    for n in 0..1_000 {
        let app = apps[n % apps.len()];
        let mut client = app.gateway().await;
        let request = charge(&user, &format!("r{n}"), 1_000, "chat", "");
        calls.spawn(async move { client.deduct_quota(request).await });
    }
    let (mut passed, mut refused) = (0, 0);
    while let Some(result) = calls.join_next().await {
        match result.expect("the call ran") {
            Ok(_) => passed += 1,
            Err(status) => {
                assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}");
                assert_eq!(reason(&status), "SPEND_LIMIT_REACHED");
                refused += 1;
            }
        }
    }
    assert_eq!((passed, refused), (317, 683));
    let status = &limits_of(apps[0], &user).await[0];
    assert_eq!((status.spent_micros, status.remaining_micros), (317_000, 0));
    let charged: i64 = sqlx::query_scalar(
        "SELECT CAST(SUM(amount_micros) AS SIGNED) FROM ledger WHERE user_id = ? AND kind = 'deduct'",
    )
    .bind(&user)
    .fetch_one(&apps[0].db)
    .await
    .unwrap();
    assert_eq!(charged, 317_000);
    assert_invariants(&apps[0].db, &user).await;
}

#[tokio::test]
async fn exactly_the_limit_passes_with_group_commit() {
    let app = spawn_app().await;
    exactly_the_limit_passes(&[&app]).await;
    app.cleanup().await;
}

#[tokio::test]
async fn exactly_the_limit_passes_without_group_commit() {
    let app = spawn_app_at(Utc::now(), &[WITHOUT_GROUP_COMMIT]).await;
    exactly_the_limit_passes(&[&app]).await;
    app.cleanup().await;
}

#[tokio::test]
async fn exactly_the_limit_passes_on_two_replicas() {
    let first = spawn_app().await;
    let second = first.replica().await;
    exactly_the_limit_passes(&[&first, &second]).await;
    second.cleanup().await;
    first.cleanup().await;
}

/// A day in the billing zone (Asia/Shanghai in the repository's configuration).
fn local(text: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(text)
        .unwrap()
        .with_timezone(&Utc)
}

#[tokio::test]
async fn a_day_rolls_at_local_midnight_and_its_last_instant_counts_in_the_old_day() {
    let app = spawn_app_at(local("2026-12-04T23:00:00+08:00"), &[]).await;
    let user = new_user("midnight");
    recharge(&app, &user, 10 * CNY).await;
    set_limits(
        &app,
        &user,
        vec![
            limit("account", "day", 5_000),
            limit("account", "month", 8_000),
        ],
    )
    .await;
    let mut gateway = app.gateway().await;
    app.clock.set(local("2026-12-04T23:59:59.999+08:00"));
    gateway
        .deduct_quota(charge(&user, "late", 5_000, "chat", ""))
        .await
        .unwrap();
    let refused = gateway
        .deduct_quota(charge(&user, "late-2", 1, "chat", ""))
        .await
        .unwrap_err();
    assert_eq!(
        (
            metadata(&refused, "scope").as_str(),
            metadata(&refused, "window").as_str()
        ),
        ("account", "day")
    );
    assert_eq!(metadata(&refused, "remaining_micros"), "0");
    app.clock.set(local("2026-12-05T00:00:00+08:00"));
    gateway
        .deduct_quota(charge(&user, "early", 3_000, "chat", ""))
        .await
        .unwrap();
    let statuses = limits_of(&app, &user).await;
    let day = statuses
        .iter()
        .find(|s| s.limit.as_ref().unwrap().window == "day")
        .unwrap();
    let month = statuses
        .iter()
        .find(|s| s.limit.as_ref().unwrap().window == "month")
        .unwrap();
    assert_eq!(day.spent_micros, 3_000);
    assert_eq!(
        day.window_start_ms,
        local("2026-12-05T00:00:00+08:00").timestamp_millis()
    );
    assert_eq!(
        day.resets_at_ms,
        local("2026-12-06T00:00:00+08:00").timestamp_millis()
    );
    // The month goes on: 8,000 spent, the next micro is refused by it.
    assert_eq!((month.spent_micros, month.remaining_micros), (8_000, 0));
    let refused = gateway
        .deduct_quota(charge(&user, "early-2", 1, "chat", ""))
        .await
        .unwrap_err();
    assert_eq!(metadata(&refused, "window"), "month");
    app.clock.set(local("2027-01-01T00:00:00+08:00"));
    gateway
        .deduct_quota(charge(&user, "january", 5_000, "chat", ""))
        .await
        .unwrap();
    app.cleanup().await;
}

#[tokio::test]
async fn a_day_across_a_dst_change_has_its_local_length() {
    let app = spawn_app_at(
        local("2026-03-08T00:30:00-05:00"),
        &[("BILLING__BILLING__TIME_ZONE", "America/New_York")],
    )
    .await;
    let user = new_user("dst");
    recharge(&app, &user, 10 * CNY).await;
    let statuses = set_limits(&app, &user, vec![limit("account", "day", 1_000)]).await;
    // 2026-03-08 in New York has 23 hours: from 05:00Z to 04:00Z the next day.
    assert_eq!(
        statuses[0].window_start_ms,
        local("2026-03-08T05:00:00Z").timestamp_millis()
    );
    assert_eq!(
        statuses[0].resets_at_ms,
        local("2026-03-09T04:00:00Z").timestamp_millis()
    );
    let mut gateway = app.gateway().await;
    gateway
        .deduct_quota(charge(&user, "a", 1_000, "chat", ""))
        .await
        .unwrap();
    app.clock.set(local("2026-03-09T03:59:59.999Z"));
    assert!(
        gateway
            .deduct_quota(charge(&user, "b", 1, "chat", ""))
            .await
            .is_err()
    );
    app.clock.set(local("2026-03-09T04:00:00Z"));
    gateway
        .deduct_quota(charge(&user, "c", 1_000, "chat", ""))
        .await
        .unwrap();
    app.cleanup().await;
}

#[tokio::test]
async fn key_and_api_scopes_bind_only_their_own_and_the_tightest_refuses_changing_nothing() {
    let app = spawn_app().await;
    let user = new_user("scopes");
    recharge(&app, &user, 10 * CNY).await;
    set_limits(
        &app,
        &user,
        vec![
            limit("account", "month", 100_000),
            limit("api:chat", "day", 30_000),
            limit("key:k1", "day", 20_000),
        ],
    )
    .await;
    let mut gateway = app.gateway().await;
    // Another API, no key: only the account's limit counts it.
    gateway
        .deduct_quota(charge(&user, "e1", 50_000, "embed", ""))
        .await
        .unwrap();
    gateway
        .deduct_quota(charge(&user, "c1", 15_000, "chat", "k1"))
        .await
        .unwrap();
    // k1 has 5,000 left, chat 15,000, the account 35,000: the key refuses, nothing changes but
    // the limit's one spend_limit_reached of the window.
    let (ledger, spent) = (
        ledger_count(&app, &user).await,
        spent_sum(&app, &user).await,
    );
    for request_id in ["c2", "c2-again"] {
        let refused = gateway
            .deduct_quota(charge(&user, request_id, 6_000, "chat", "k1"))
            .await
            .unwrap_err();
        assert_eq!(metadata(&refused, "scope"), "key:k1");
        assert_eq!(metadata(&refused, "remaining_micros"), "5000");
    }
    assert_eq!(ledger_count(&app, &user).await, ledger);
    assert_eq!(spent_sum(&app, &user).await, spent);
    assert_eq!(reached_events(&app, &user).await, 1);
    // Another key of the same API is bound by the API's limit alone.
    gateway
        .deduct_quota(charge(&user, "c3", 15_000, "chat", "k2"))
        .await
        .unwrap();
    let refused = gateway
        .deduct_quota(charge(&user, "c4", 1, "chat", "k2"))
        .await
        .unwrap_err();
    assert_eq!(metadata(&refused, "scope"), "api:chat");
    assert_eq!(
        reached_events(&app, &user).await,
        2,
        "the API's limit was reached too"
    );
    // CheckQuota honours the limits too.
    let check = |amount: i64, api_id: &str, key_id: &str| pb::CheckQuotaRequest {
        user_id: user.clone(),
        amount_micros: amount,
        api_id: api_id.into(),
        key_id: key_id.into(),
        ..Default::default()
    };
    assert!(
        !gateway
            .check_quota(check(1, "chat", ""))
            .await
            .unwrap()
            .into_inner()
            .allowed
    );
    assert!(
        gateway
            .check_quota(check(20_000, "embed", ""))
            .await
            .unwrap()
            .into_inner()
            .allowed
    );
    assert!(
        !gateway
            .check_quota(check(20_001, "embed", ""))
            .await
            .unwrap()
            .into_inner()
            .allowed
    );
    assert_invariants(&app.db, &user).await;
    app.cleanup().await;
}

#[tokio::test]
async fn holds_count_while_they_hold_and_settles_releases_and_expiries_give_back() {
    let app = spawn_app().await;
    let user = new_user("holds");
    recharge(&app, &user, 10 * CNY).await;
    set_limits(&app, &user, vec![limit("account", "day", 10_000)]).await;
    let mut gateway = app.gateway().await;
    let reserve = |request_id: &str, amount: i64, ttl_ms: i64| pb::ReserveQuotaRequest {
        user_id: user.clone(),
        request_id: request_id.into(),
        amount_micros: amount,
        api_id: "chat".into(),
        ttl_ms,
        ..Default::default()
    };
    gateway
        .reserve_quota(reserve("h1", 6_000, 60_000))
        .await
        .unwrap();
    let spent = |statuses: Vec<pb::SpendLimitStatus>| statuses[0].spent_micros;
    assert_eq!(spent(limits_of(&app, &user).await), 6_000);
    let refused = gateway
        .reserve_quota(reserve("h2", 5_000, 60_000))
        .await
        .unwrap_err();
    assert_eq!(reason(&refused), "SPEND_LIMIT_REACHED");
    assert!(
        gateway
            .deduct_quota(charge(&user, "d1", 4_001, "chat", ""))
            .await
            .is_err()
    );
    // A settle replaces the hold by the actual amount.
    gateway
        .settle_reservation(pb::SettleReservationRequest {
            user_id: user.clone(),
            request_id: "h1".into(),
            actual_amount_micros: 2_500,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(spent(limits_of(&app, &user).await), 2_500);
    // A release gives the whole hold back.
    gateway
        .reserve_quota(reserve("h3", 7_000, 60_000))
        .await
        .unwrap();
    assert_eq!(spent(limits_of(&app, &user).await), 9_500);
    gateway
        .release_reservation(pb::ReleaseReservationRequest {
            user_id: user.clone(),
            request_id: "h3".into(),
        })
        .await
        .unwrap();
    assert_eq!(spent(limits_of(&app, &user).await), 2_500);
    // An expiry too.
    gateway
        .reserve_quota(reserve("h4", 7_000, 1_000))
        .await
        .unwrap();
    app.clock.advance(TimeDelta::seconds(2));
    eventually(
        std::time::Duration::from_secs(10),
        "the hold expired",
        || async { (spent(limits_of(&app, &user).await) == 2_500).then_some(()) },
    )
    .await;
    assert_invariants(&app.db, &user).await;
    app.cleanup().await;
}

#[tokio::test]
async fn a_refund_gives_back_only_while_its_window_is_current() {
    let app = spawn_app_at(local("2026-12-04T10:00:00+08:00"), &[]).await;
    let user = new_user("refunds");
    recharge(&app, &user, 10 * CNY).await;
    set_limits(
        &app,
        &user,
        vec![
            limit("account", "day", 10_000),
            limit("account", "month", 50_000),
        ],
    )
    .await;
    let mut gateway = app.gateway().await;
    gateway
        .deduct_quota(charge(&user, "today", 8_000, "chat", ""))
        .await
        .unwrap();
    let refund = |refund_id: &str, request_id: &str, amount: i64| pb::RefundChargeRequest {
        user_id: user.clone(),
        refund_id: refund_id.into(),
        request_id: request_id.into(),
        amount_micros: amount,
        reason: "bad answer".into(),
    };
    let mut ops = app.ops().await;
    ops.refund_charge(refund("f1", "today", 3_000))
        .await
        .unwrap();
    let statuses = limits_of(&app, &user).await;
    assert_eq!(
        (statuses[0].spent_micros, statuses[1].spent_micros),
        (5_000, 5_000)
    );
    app.clock.set(local("2026-12-05T10:00:00+08:00"));
    gateway
        .deduct_quota(charge(&user, "tomorrow", 1_000, "chat", ""))
        .await
        .unwrap();
    // Yesterday's charge gives back to the month, not to the new day.
    ops.refund_charge(refund("f2", "today", 5_000))
        .await
        .unwrap();
    let statuses = limits_of(&app, &user).await;
    assert_eq!(
        (statuses[0].spent_micros, statuses[1].spent_micros),
        (1_000, 1_000)
    );
    assert_invariants(&app.db, &user).await;
    app.cleanup().await;
}

#[tokio::test]
async fn a_new_limit_counts_what_was_already_spent_in_its_window_and_a_set_is_idempotent() {
    let app = spawn_app().await;
    let user = new_user("late-limit");
    recharge(&app, &user, 10 * CNY).await;
    let mut gateway = app.gateway().await;
    gateway
        .deduct_quota(charge(&user, "a", 4_000, "chat", "k1"))
        .await
        .unwrap();
    gateway
        .deduct_quota(charge(&user, "b", 2_000, "embed", ""))
        .await
        .unwrap();
    let set = pb::SetSpendLimitsRequest {
        user_id: user.clone(),
        limits: vec![
            limit("account", "day", 10_000),
            limit("key:k1", "day", 5_000),
        ],
        actor: "ops".into(),
        set_id: "s1".into(),
    };
    let mut ops = app.ops().await;
    let reply = ops
        .set_spend_limits(set.clone())
        .await
        .unwrap()
        .into_inner();
    assert!(!reply.replayed);
    let spent: Vec<(String, i64)> = reply
        .limits
        .iter()
        .map(|s| (s.limit.as_ref().unwrap().scope.clone(), s.spent_micros))
        .collect();
    assert_eq!(
        spent,
        vec![("account".to_owned(), 6_000), ("key:k1".to_owned(), 4_000)]
    );
    assert!(
        ops.set_spend_limits(set.clone())
            .await
            .unwrap()
            .into_inner()
            .replayed
    );
    let other = pb::SetSpendLimitsRequest {
        limits: vec![limit("account", "day", 1)],
        ..set
    };
    let reused = ops.set_spend_limits(other).await.unwrap_err();
    assert_eq!(reused.code(), Code::AlreadyExists);
    // A limit kept across a set keeps its counter; removing all lifts them.
    gateway
        .deduct_quota(charge(&user, "c", 1_000, "chat", "k1"))
        .await
        .unwrap();
    let kept = set_limits(&app, &user, vec![limit("key:k1", "day", 6_000)]).await;
    assert_eq!(
        (kept[0].spent_micros, kept[0].remaining_micros),
        (5_000, 1_000)
    );
    assert!(set_limits(&app, &user, vec![]).await.is_empty());
    gateway
        .deduct_quota(charge(&user, "d", 9_000, "chat", "k1"))
        .await
        .unwrap();
    app.cleanup().await;
}

#[tokio::test]
async fn bad_limits_are_refused_whole_and_change_nothing() {
    let app = spawn_app().await;
    let user = new_user("bad-limits");
    recharge(&app, &user, CNY).await;
    set_limits(&app, &user, vec![limit("account", "day", 1_000)]).await;
    let before = fingerprint(&app.db).await;
    let mut ops = app.ops().await;
    let too_many: Vec<pb::SpendLimit> = (0..21)
        .map(|n| limit(&format!("key:k{n}"), "day", 1))
        .collect();
    for limits in [
        vec![limit("team:x", "day", 1)],
        vec![limit("account", "week", 1)],
        vec![limit("account", "day", -1)],
        vec![limit("account", "day", 1_000_000_000_000_001)],
        vec![limit("account", "day", 1), limit("account", "day", 2)],
        vec![limit("api:", "day", 1)],
        too_many,
    ] {
        let refused = ops
            .set_spend_limits(pb::SetSpendLimitsRequest {
                user_id: user.clone(),
                limits,
                actor: "ops".into(),
                set_id: String::new(),
            })
            .await
            .unwrap_err();
        assert_eq!(refused.code(), Code::InvalidArgument, "{refused:?}");
    }
    assert!(
        app.gateway()
            .await
            .set_spend_limits(pb::SetSpendLimitsRequest {
                user_id: user.clone(),
                limits: vec![],
                actor: "gateway".into(),
                set_id: String::new(),
            })
            .await
            .is_err(),
        "the quota scope cannot set limits"
    );
    assert_eq!(before, fingerprint(&app.db).await);
    app.cleanup().await;
}
