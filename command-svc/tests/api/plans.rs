//! Per-user plans: the free quota of the periods after the current one, set by an operator.

use std::time::Duration;

use chrono::{DateTime, Utc};
use shared::proto::v1 as pb;
use tonic::Code;

use crate::helpers::*;

fn utc(text: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(text)
        .unwrap()
        .with_timezone(&Utc)
}

/// Mid-November in Shanghai.
const NOVEMBER: &str = "2026-11-20T04:00:00Z";
/// Five seconds past midnight on 2026-12-01 in Shanghai.
const DECEMBER_FIRST: &str = "2026-11-30T16:00:05Z";
/// The clock jumps ten days: published events are kept past that for the invariant check.
const KEEP_EVENTS: (&str, &str) = ("BILLING__OUTBOX__RETENTION_HOURS", "100000");

fn plan(user: &str, monthly_free: i64, actor: &str) -> pb::SetFreeQuotaPlanRequest {
    pb::SetFreeQuotaPlanRequest {
        user_id: user.to_owned(),
        monthly_free_micros: monthly_free,
        actor: actor.to_owned(),
    }
}

async fn granted(app: &TestApp, user: &str, period: &str) -> Option<i64> {
    sqlx::query_scalar(
        "SELECT granted_micros FROM free_quota_grants WHERE user_id = ? AND period = ?",
    )
    .bind(user)
    .bind(period)
    .fetch_optional(&app.db)
    .await
    .unwrap()
}

#[tokio::test]
async fn a_plan_applies_from_the_next_period_in_lazy_grants_and_the_reset() {
    let app = spawn_app_at(utc(NOVEMBER), &[KEEP_EVENTS]).await;
    let (charged, reset) = (new_user("plan-lazy"), new_user("plan-reset"));
    let mut gateway = app.gateway().await;
    for user in [&charged, &reset] {
        gateway
            .deduct_quota(deduct(user, CNY, "november"))
            .await
            .unwrap();
        let set = app
            .ops()
            .await
            .set_free_quota_plan(plan(user, 30 * CNY, "alice@ops"))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(set.next_period_free_micros, 30 * CNY);
        let account = set.account.unwrap();
        assert_eq!(account.monthly_free_micros, 30 * CNY);
        assert_eq!(
            (account.free_granted_micros, account.free_used_micros),
            (10 * CNY, CNY),
            "this month keeps its grant"
        );
    }
    let (kind, amount, actor): (String, i64, Option<String>) = sqlx::query_as(
        "SELECT kind, amount_micros, actor FROM ledger WHERE user_id = ? ORDER BY version DESC LIMIT 1",
    )
    .bind(&charged)
    .fetch_one(&app.db)
    .await
    .unwrap();
    assert_eq!(
        (kind.as_str(), amount, actor.as_deref()),
        ("plan", 30 * CNY, Some("alice@ops"))
    );

    // December: a charge grants the plan's amount lazily, the reset grants it to the other.
    app.clock.set(utc(DECEMBER_FIRST));
    let reply = gateway
        .deduct_quota(deduct(&charged, CNY, "december"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(reply.account.unwrap().free_granted_micros, 30 * CNY);
    publish_reset(&app.settings, "reset-free-quota:2026-12", "2026-12").await;
    reset_finished(&app.db, "reset-free-quota:2026-12", Duration::from_secs(30)).await;
    for user in [&charged, &reset] {
        assert_eq!(
            granted(&app, user, "2026-12").await,
            Some(30 * CNY),
            "{user}"
        );
        assert_invariants(&app.db, user).await;
    }
    app.cleanup().await;
}

#[tokio::test]
async fn a_plan_corrects_a_next_period_granted_in_advance_never_below_its_use() {
    let app = spawn_app_at(utc(DECEMBER_FIRST), &[KEEP_EVENTS]).await;
    let user = new_user("plan-ahead");
    let mut gateway = app.gateway().await;
    gateway
        .deduct_quota(deduct(&user, 2 * CNY, "december"))
        .await
        .unwrap();
    // A replica whose clock still says November: for it, December is the next period, already
    // granted to this account.
    app.clock.set(utc("2026-11-30T15:59:00Z"));
    let raised = app
        .ops()
        .await
        .set_free_quota_plan(plan(&user, 25 * CNY, "ops"))
        .await
        .unwrap()
        .into_inner()
        .account
        .unwrap();
    assert_eq!(
        (raised.period.as_str(), raised.free_granted_micros),
        ("2026-12", 25 * CNY)
    );
    assert_eq!(granted(&app, &user, "2026-12").await, Some(25 * CNY));
    let cut = app
        .ops()
        .await
        .set_free_quota_plan(plan(&user, CNY, "ops"))
        .await
        .unwrap()
        .into_inner()
        .account
        .unwrap();
    assert_eq!(
        (
            cut.free_granted_micros,
            cut.free_used_micros,
            cut.monthly_free_micros
        ),
        (2 * CNY, 2 * CNY, CNY),
        "never granted less than it used"
    );
    assert_eq!(granted(&app, &user, "2026-12").await, Some(2 * CNY));
    assert_invariants(&app.db, &user).await;
    app.cleanup().await;
}

#[tokio::test]
async fn setting_the_plan_an_account_has_writes_nothing() {
    let app = spawn_app().await;
    let user = new_user("plan-again");
    let mut ops = app.ops().await;
    let first = ops
        .set_free_quota_plan(plan(&user, 5 * CNY, "ops"))
        .await
        .unwrap()
        .into_inner()
        .account
        .unwrap();
    // The first mutating command creates the account with this period's (default) grant.
    assert_eq!((first.version, first.free_granted_micros), (2, 10 * CNY));
    let rows = ledger_count(&app, &user).await;
    let again = ops
        .set_free_quota_plan(plan(&user, 5 * CNY, "ops"))
        .await
        .unwrap()
        .into_inner()
        .account
        .unwrap();
    assert_eq!(again.version, first.version);
    assert_eq!(ledger_count(&app, &user).await, rows);
    assert_invariants(&app.db, &user).await;
    app.cleanup().await;
}

#[tokio::test]
async fn a_plan_out_of_range_or_without_an_actor_is_refused_and_changes_nothing() {
    let app = spawn_app().await;
    let user = new_user("plan-bad");
    let before = fingerprint(&app.db).await;
    let mut ops = app.ops().await;
    for (amount, actor, field) in [
        (-1, "ops", "monthly_free_micros"),
        (1_000_000_000_001, "ops", "monthly_free_micros"),
        (CNY, "", "actor"),
    ] {
        let status = ops
            .set_free_quota_plan(plan(&user, amount, actor))
            .await
            .expect_err("refused");
        assert_eq!(status.code(), Code::InvalidArgument, "{field}");
        assert!(status.message().contains(field) || format!("{status:?}").contains(field));
    }
    let status = app
        .gateway()
        .await
        .set_free_quota_plan(plan(&user, CNY, "ops"))
        .await
        .expect_err("the gateway may not set plans");
    assert_eq!(status.code(), Code::PermissionDenied);
    assert_eq!(fingerprint(&app.db).await, before, "nothing changed");
    let zero = ops
        .set_free_quota_plan(plan(&user, 0, "ops"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(zero.next_period_free_micros, 0, "a plan may grant nothing");
    app.cleanup().await;
}
