//! `GET /api/v1/billing/account`: the newer of Redis and MySQL, a fresh account when neither has
//! it, always shown through the one view function at the service's clock.

use chrono::Duration;
use reqwest::StatusCode;
use serde_json::json;
use shared::{clock::Clock, period::BillingZone};

use crate::{helpers::*, support::*};

const PATH: &str = "/api/v1/billing/account";

#[tokio::test]
async fn a_user_never_seen_gets_a_fresh_account_with_this_months_quota() {
    let stack = spawn_stack().await;
    let user = new_user(&stack.tag);
    let (status, body) = stack.get(PATH, &stack.token(&user)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let zone = BillingZone::default();
    let period = zone.period_of(stack.clock.now());
    let resets_at = zone.period_start(period.next());
    assert_eq!(
        body,
        json!({
            "user_id": user,
            "currency": "CNY",
            "balance_micros": 0,
            "balance_held_micros": 0,
            "free_quota": {
                "period": period.to_string(),
                "granted_micros": 10 * CNY,
                "used_micros": 0,
                "held_micros": 0,
                "remaining_micros": 10 * CNY,
                "resets_at": resets_at.to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
                "time_zone": zone.tz().name(),
            },
            "available_micros": 10 * CNY,
            "monthly_free_micros": 10 * CNY,
            "version": 0,
            "updated_at": null,
        })
    );
    stack.cleanup().await;
}

#[tokio::test]
async fn mysql_answers_when_redis_lacks_the_account() {
    let stack = spawn_stack().await;
    let user = new_user(&stack.tag);
    let now = stack.clock.now();
    let period = BillingZone::default().period_of(now).to_string();
    let updated_at = utc("2026-11-20T08:00:00.123456Z");
    seed_account(
        &stack,
        AccountRow {
            user: &user,
            balance: 5 * CNY,
            period: &period,
            granted: 10 * CNY,
            used: 4 * CNY,
            monthly: 10 * CNY,
            version: 3,
            updated_at,
        },
    )
    .await;
    let (status, body) = stack.get(PATH, &stack.token(&user)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["version"], json!(3));
    assert_eq!(body["balance_micros"], json!(5 * CNY));
    assert_eq!(body["free_quota"]["used_micros"], json!(4 * CNY));
    assert_eq!(body["free_quota"]["remaining_micros"], json!(6 * CNY));
    assert_eq!(body["available_micros"], json!(11 * CNY));
    assert_eq!(body["updated_at"], json!("2026-11-20T08:00:00.123456Z"));
    stack.cleanup().await;
}

#[tokio::test]
async fn the_newer_of_redis_and_mysql_is_shown() {
    let stack = spawn_stack().await;
    let (cached_newer, stored_newer) = (new_user(&stack.tag), new_user(&stack.tag));
    let now = stack.clock.now();
    let period = BillingZone::default().period_of(now).to_string();
    for user in [&cached_newer, &stored_newer] {
        seed_account(
            &stack,
            AccountRow {
                user,
                balance: 5 * CNY,
                period: &period,
                granted: 10 * CNY,
                used: 0,
                monthly: 10 * CNY,
                version: 3,
                updated_at: now - Duration::minutes(5),
            },
        )
        .await;
    }
    let at = utc("2026-11-24T01:02:03.456Z");
    put_snapshot(
        &stack,
        &account_state(&cached_newer, 7 * CNY, &period, 10 * CNY, 2 * CNY, 5),
        at,
    )
    .await;
    // A stale snapshot, as a failed Redis write leaves behind.
    put_snapshot(
        &stack,
        &account_state(&stored_newer, 1, &period, 10 * CNY, 9 * CNY, 2),
        at,
    )
    .await;

    let (_, body) = stack.get(PATH, &stack.token(&cached_newer)).await;
    assert_eq!(
        (
            &body["version"],
            &body["balance_micros"],
            &body["free_quota"]["used_micros"]
        ),
        (&json!(5), &json!(7 * CNY), &json!(2 * CNY))
    );
    assert_eq!(body["updated_at"], json!("2026-11-24T01:02:03.456000Z"));

    let (_, body) = stack.get(PATH, &stack.token(&stored_newer)).await;
    assert_eq!(
        (&body["version"], &body["balance_micros"]),
        (&json!(3), &json!(5 * CNY))
    );
    stack.cleanup().await;
}

#[tokio::test]
async fn redis_alone_answers_for_an_account_mysql_has_not_got() {
    let stack = spawn_stack().await;
    let user = new_user(&stack.tag);
    let period = BillingZone::default()
        .period_of(stack.clock.now())
        .to_string();
    put_snapshot(
        &stack,
        &account_state(&user, 3 * CNY, &period, 10 * CNY, 10 * CNY, 4),
        stack.clock.now(),
    )
    .await;
    let (_, body) = stack.get(PATH, &stack.token(&user)).await;
    assert_eq!(
        (
            &body["version"],
            &body["available_micros"],
            &body["free_quota"]["remaining_micros"]
        ),
        (&json!(4), &json!(3 * CNY), &json!(0))
    );
    stack.cleanup().await;
}

#[tokio::test]
async fn an_older_period_is_shown_rolled_forward_from_midnight_on_the_first() {
    // One millisecond before midnight on 1 December in Shanghai.
    let clock = Clock::manual(utc("2026-11-30T15:59:59.999Z"));
    let stack = spawn_stack_with(clock.clone(), &[]).await;
    let (stored, cached) = (new_user(&stack.tag), new_user(&stack.tag));
    seed_account(
        &stack,
        AccountRow {
            user: &stored,
            balance: 3 * CNY,
            period: "2026-11",
            granted: 10 * CNY,
            used: 10 * CNY,
            monthly: 10 * CNY,
            version: 7,
            updated_at: utc("2026-11-30T12:00:00Z"),
        },
    )
    .await;
    put_snapshot(
        &stack,
        &account_state(&cached, 0, "2026-11", 10 * CNY, 6 * CNY, 2),
        utc("2026-11-30T12:00:00Z"),
    )
    .await;

    let (_, body) = stack.get(PATH, &stack.token(&stored)).await;
    assert_eq!(
        body["free_quota"],
        json!({
            "period": "2026-11",
            "granted_micros": 10 * CNY,
            "used_micros": 10 * CNY,
            "held_micros": 0,
            "remaining_micros": 0,
            "resets_at": "2026-11-30T16:00:00.000000Z",
            "time_zone": "Asia/Shanghai",
        })
    );
    assert_eq!(body["available_micros"], json!(3 * CNY));

    clock.advance(Duration::milliseconds(1));
    let (_, body) = stack.get(PATH, &stack.token(&stored)).await;
    assert_eq!(
        body["free_quota"],
        json!({
            "period": "2026-12",
            "granted_micros": 10 * CNY,
            "used_micros": 0,
            "held_micros": 0,
            "remaining_micros": 10 * CNY,
            "resets_at": "2026-12-31T16:00:00.000000Z",
            "time_zone": "Asia/Shanghai",
        })
    );
    assert_eq!(body["available_micros"], json!(13 * CNY));
    // Rolling forward is a view: the stored version is what it was.
    assert_eq!(body["version"], json!(7));

    let (_, body) = stack.get(PATH, &stack.token(&cached)).await;
    assert_eq!(
        (
            &body["free_quota"]["period"],
            &body["free_quota"]["remaining_micros"],
            &body["version"]
        ),
        (&json!("2026-12"), &json!(10 * CNY), &json!(2))
    );
    stack.cleanup().await;
}
