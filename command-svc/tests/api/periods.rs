//! Month boundaries with a set clock, in the default zone Asia/Shanghai (UTC+8, no DST).

use chrono::{DateTime, Utc};
use shared::{clock::Clock, proto::v1 as pb};

use crate::helpers::*;

fn utc(text: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(text)
        .unwrap()
        .with_timezone(&Utc)
}

/// 2026-11-30 23:59:59.999 and 2026-12-01 00:00:00.000 in Shanghai.
const LAST_MS_OF_NOVEMBER: &str = "2026-11-30T15:59:59.999Z";
const FIRST_MS_OF_DECEMBER: &str = "2026-11-30T16:00:00.000Z";

async fn ledger_periods(app: &TestApp, user: &str) -> Vec<(String, String)> {
    sqlx::query_as("SELECT kind, period FROM ledger WHERE user_id = ? ORDER BY version")
        .bind(user)
        .fetch_all(&app.db)
        .await
        .unwrap()
}

#[tokio::test]
async fn charges_either_side_of_midnight_land_in_their_own_months() {
    let app = spawn_app_at(utc(LAST_MS_OF_NOVEMBER), &[]).await;
    let user = new_user("midnight");
    let mut gateway = app.gateway().await;

    let november = gateway
        .deduct_quota(deduct(&user, 4 * CNY, "before"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(november.account.as_ref().unwrap().period, "2026-11");

    app.clock.set(utc(FIRST_MS_OF_DECEMBER));
    let december = gateway
        .deduct_quota(deduct(&user, 3 * CNY, "after"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (
            december.free_deducted_micros,
            december.balance_deducted_micros
        ),
        (3 * CNY, 0)
    );
    let account = december.account.unwrap();
    assert_eq!(
        (
            account.period.as_str(),
            account.free_granted_micros,
            account.free_used_micros
        ),
        ("2026-12", 10 * CNY, 3 * CNY)
    );

    let expected = [
        ("free_grant", "2026-11"),
        ("deduct", "2026-11"),
        ("free_grant", "2026-12"),
        ("deduct", "2026-12"),
    ];
    let expected: Vec<_> = expected
        .iter()
        .map(|(k, p)| (k.to_string(), p.to_string()))
        .collect();
    assert_eq!(ledger_periods(&app, &user).await, expected);
    assert_invariants(&app.db, &user).await;
    app.cleanup().await;
}

#[tokio::test]
async fn on_the_first_the_view_shows_the_new_month_before_any_write() {
    let app = spawn_app_at(utc(LAST_MS_OF_NOVEMBER), &[]).await;
    let user = new_user("view");
    app.gateway()
        .await
        .deduct_quota(deduct(&user, 10 * CNY, "all-of-november"))
        .await
        .unwrap();
    let check = |amount| pb::CheckQuotaRequest {
        user_id: user.clone(),
        amount_micros: amount,
        ..Default::default()
    };
    assert!(
        !app.gateway()
            .await
            .check_quota(check(1))
            .await
            .unwrap()
            .into_inner()
            .allowed
    );
    let before = fingerprint(&app.db).await;

    app.clock.set(utc(FIRST_MS_OF_DECEMBER));
    let view = account(&app, &user).await;
    assert_eq!(
        (
            view.period.as_str(),
            view.free_granted_micros,
            view.free_used_micros,
            view.available_micros,
            view.version
        ),
        ("2026-12", 10 * CNY, 0, 10 * CNY, 2)
    );
    assert!(
        app.gateway()
            .await
            .check_quota(check(10 * CNY))
            .await
            .unwrap()
            .into_inner()
            .allowed
    );
    assert_eq!(
        fingerprint(&app.db).await,
        before,
        "reads write nothing, not even the grant"
    );
    app.cleanup().await;
}

#[tokio::test]
async fn a_lagging_clock_still_charges_in_the_accounts_period() {
    let ahead = spawn_app_at(utc("2026-11-30T16:00:01Z"), &[]).await;
    let user = new_user("skew");
    ahead
        .gateway()
        .await
        .deduct_quota(deduct(&user, 2 * CNY, "december"))
        .await
        .unwrap();

    // A second replica on the same database whose clock is still in November.
    let lagging = spawn_with(
        ahead.settings.clone(),
        Clock::manual(utc("2026-11-30T15:59:59Z")),
        ahead.db_name.clone(),
    )
    .await;
    let reply = lagging
        .gateway()
        .await
        .deduct_quota(deduct(&user, 3 * CNY, "lagging"))
        .await
        .unwrap()
        .into_inner();
    let account = reply.account.unwrap();
    assert_eq!(
        (account.period.as_str(), account.free_used_micros),
        ("2026-12", 5 * CNY)
    );
    let periods = ledger_periods(&ahead, &user).await;
    assert_eq!(
        periods.last().unwrap(),
        &("deduct".to_owned(), "2026-12".to_owned())
    );
    assert_eq!(
        periods
            .iter()
            .filter(|(kind, _)| kind == "free_grant")
            .count(),
        1,
        "November is never reopened"
    );
    assert_invariants(&ahead.db, &user).await;
    let mut lagging = lagging;
    lagging.stop().await;
    ahead.cleanup().await;
}

#[tokio::test]
async fn a_new_month_grants_once_to_concurrent_first_charges() {
    let app = spawn_app_at(utc(LAST_MS_OF_NOVEMBER), &[]).await;
    let user = new_user("concurrent-grant");
    app.gateway()
        .await
        .deduct_quota(deduct(&user, CNY, "november"))
        .await
        .unwrap();
    app.clock.set(utc(FIRST_MS_OF_DECEMBER));
    let gateway = app.gateway().await;
    let calls = (0..30).map(|i| {
        let mut gateway = gateway.clone();
        let request = deduct(&user, 300_000, &format!("december-{i}"));
        async move { gateway.deduct_quota(request).await.unwrap() }
    });
    futures::future::join_all(calls).await;
    let grants = count(
        &app.db,
        "SELECT COUNT(*) FROM free_quota_grants WHERE user_id = ?",
        &user,
    )
    .await;
    assert_eq!(grants, 2, "one grant for each month");
    let view = account(&app, &user).await;
    assert_eq!(
        (view.free_used_micros, view.free_remaining_micros),
        (9 * CNY, CNY)
    );
    assert_eq!(view.balance_micros, 0);
    assert_invariants(&app.db, &user).await;
    app.cleanup().await;
}
