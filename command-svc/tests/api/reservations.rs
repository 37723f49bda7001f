//! Reservations: hold, settle, release and expiry, with the invariants holds bring.

use std::time::Duration;

use chrono::{DateTime, Utc};
use futures::future::join_all;
use shared::{
    ids::{RequestId, UserId},
    proto::v1 as pb,
};
use tonic::Code;

use crate::helpers::*;

fn utc(text: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(text)
        .unwrap()
        .with_timezone(&Utc)
}

/// Sweeps are left to the tests that want them.
const NO_SWEEP: (&str, &str) = ("BILLING__RESERVATIONS__SWEEP_INTERVAL_MS", "3600000");
const KEEP_EVENTS: (&str, &str) = ("BILLING__OUTBOX__RETENTION_HOURS", "100000");

fn reserve(user: &str, request_id: &str, amount: i64, ttl_ms: i64) -> pb::ReserveQuotaRequest {
    pb::ReserveQuotaRequest {
        user_id: user.to_owned(),
        request_id: request_id.to_owned(),
        amount_micros: amount,
        api_id: "api.stream".to_owned(),
        ttl_ms,
        ..Default::default()
    }
}

fn settle(user: &str, request_id: &str, actual: i64) -> pb::SettleReservationRequest {
    pb::SettleReservationRequest {
        user_id: user.to_owned(),
        request_id: request_id.to_owned(),
        actual_amount_micros: actual,
        ..Default::default()
    }
}

fn release(user: &str, request_id: &str) -> pb::ReleaseReservationRequest {
    pb::ReleaseReservationRequest {
        user_id: user.to_owned(),
        request_id: request_id.to_owned(),
    }
}

async fn status_of(app: &TestApp, user: &str, request_id: &str) -> String {
    sqlx::query_scalar("SELECT status FROM reservations WHERE user_id = ? AND request_id = ?")
        .bind(user)
        .bind(request_id)
        .fetch_one(&app.db)
        .await
        .unwrap()
}

/// 10 CNY free and 5 CNY recharged.
async fn funded(app: &TestApp, tag: &str) -> String {
    let user = new_user(tag);
    recharge(app, &user, 5 * CNY).await;
    user
}

#[tokio::test]
async fn a_hold_takes_free_quota_first_and_a_settle_charges_the_actual_price() {
    let app = spawn_app_at(Utc::now(), &[NO_SWEEP]).await;
    let user = funded(&app, "hold-settle").await;
    let mut gateway = app.gateway().await;
    let held = gateway
        .reserve_quota(reserve(&user, "stream-1", 12 * CNY, 0))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (held.free_held_micros, held.balance_held_micros),
        (10 * CNY, 2 * CNY)
    );
    let account = held.account.unwrap();
    assert_eq!(
        (
            account.free_held_micros,
            account.balance_held_micros,
            account.available_micros
        ),
        (10 * CNY, 2 * CNY, 3 * CNY),
        "available excludes the hold"
    );
    assert_eq!(
        (account.balance_micros, account.free_used_micros),
        (5 * CNY, 0)
    );
    // Five minutes by default.
    let ttl = held.expires_at_ms - app.clock.now().timestamp_millis();
    assert_eq!(ttl, 300_000);
    // What is held is not available to a charge.
    let refused = gateway
        .deduct_quota(deduct(&user, 3 * CNY + 1, "meanwhile"))
        .await
        .expect_err("only 3 CNY available");
    assert_eq!(reason(&refused), "INSUFFICIENT_QUOTA");

    let settled = gateway
        .settle_reservation(settle(&user, "stream-1", 7 * CNY))
        .await
        .unwrap()
        .into_inner();
    let charge = settled.charge.unwrap();
    assert_eq!(
        (
            charge.free_deducted_micros,
            charge.balance_deducted_micros,
            settled.released_micros
        ),
        (7 * CNY, 0, 5 * CNY)
    );
    assert!(!settled.replayed && !settled.after_expiry);
    let account = charge.account.unwrap();
    assert_eq!(
        (
            account.free_used_micros,
            account.free_held_micros,
            account.balance_held_micros,
            account.balance_micros,
            account.available_micros
        ),
        (7 * CNY, 0, 0, 5 * CNY, 8 * CNY)
    );
    // An ordinary charge record with the hold's api_id.
    let (kind, api_id): (String, Option<String>) =
        sqlx::query_as("SELECT kind, api_id FROM ledger WHERE record_id = ?")
            .bind(&charge.record_id)
            .fetch_one(&app.db)
            .await
            .unwrap();
    assert_eq!(
        (kind.as_str(), api_id.as_deref()),
        ("deduct", Some("api.stream"))
    );

    // Sent again: the original; with another price: refused.
    let again = gateway
        .settle_reservation(settle(&user, "stream-1", 7 * CNY))
        .await
        .unwrap()
        .into_inner();
    assert!(again.replayed);
    assert_eq!(again.charge.unwrap().record_id, charge.record_id);
    let reused = gateway
        .settle_reservation(settle(&user, "stream-1", 6 * CNY))
        .await
        .expect_err("settled at another price");
    assert_eq!(reason(&reused), "IDEMPOTENCY_KEY_REUSED");
    assert_eq!(status_of(&app, &user, "stream-1").await, "settled");
    assert_invariants(&app.db, &user).await;
    app.cleanup().await;
}

#[tokio::test]
async fn a_settle_above_the_hold_is_refused_and_a_release_gives_everything_back() {
    let app = spawn_app_at(Utc::now(), &[NO_SWEEP]).await;
    let user = funded(&app, "hold-release").await;
    let mut gateway = app.gateway().await;
    gateway
        .reserve_quota(reserve(&user, "job-1", 4 * CNY, 60_000))
        .await
        .unwrap();
    let before = fingerprint(&app.db).await;
    let refused = gateway
        .settle_reservation(settle(&user, "job-1", 4 * CNY + 1))
        .await
        .expect_err("above the hold");
    assert_eq!(refused.code(), Code::FailedPrecondition);
    assert_eq!(reason(&refused), "SETTLE_EXCEEDS_HOLD");
    assert_eq!(fingerprint(&app.db).await, before, "nothing changed");

    let released = gateway
        .release_reservation(release(&user, "job-1"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(released.released_micros, 4 * CNY);
    let account = released.account.unwrap();
    assert_eq!(
        (account.free_held_micros, account.available_micros),
        (0, 15 * CNY)
    );
    let again = gateway
        .release_reservation(release(&user, "job-1"))
        .await
        .unwrap()
        .into_inner();
    assert!(again.replayed);
    assert_eq!(again.released_micros, 4 * CNY);
    for request_id in ["job-1", "never-reserved"] {
        let missing = gateway
            .settle_reservation(settle(&user, request_id, CNY))
            .await
            .expect_err("no open reservation");
        assert_eq!(
            (missing.code(), reason(&missing).as_str()),
            (Code::NotFound, "RESERVATION_NOT_FOUND")
        );
    }
    assert_invariants(&app.db, &user).await;
    app.cleanup().await;
}

#[tokio::test]
async fn reservations_and_charges_share_one_key_space() {
    let app = spawn_app_at(Utc::now(), &[NO_SWEEP]).await;
    let user = funded(&app, "keys").await;
    let mut gateway = app.gateway().await;
    let first = gateway
        .reserve_quota(reserve(&user, "k-1", CNY, 60_000))
        .await
        .unwrap()
        .into_inner();
    let replay = gateway
        .reserve_quota(reserve(&user, "k-1", CNY, 60_000))
        .await
        .unwrap()
        .into_inner();
    assert!(replay.replayed);
    assert_eq!(replay.reservation_id, first.reservation_id);
    for (label, status) in [
        (
            "a charge under a reservation's key",
            gateway
                .deduct_quota(deduct(&user, CNY, "k-1"))
                .await
                .map(drop),
        ),
        (
            "another reservation under the key",
            gateway
                .reserve_quota(reserve(&user, "k-1", 2 * CNY, 60_000))
                .await
                .map(drop),
        ),
    ] {
        let status = status.expect_err(label);
        assert_eq!(reason(&status), "IDEMPOTENCY_KEY_REUSED", "{label}");
    }
    gateway
        .deduct_quota(deduct(&user, CNY, "c-1"))
        .await
        .unwrap();
    let status = gateway
        .reserve_quota(reserve(&user, "c-1", CNY, 60_000))
        .await
        .expect_err("a reservation under a charge's key");
    assert_eq!(reason(&status), "IDEMPOTENCY_KEY_REUSED");
    // With one transaction per charge too.
    let single = spawn_app_at(
        Utc::now(),
        &[
            NO_SWEEP,
            ("BILLING__COMMAND__GROUP_COMMIT__ENABLED", "false"),
        ],
    )
    .await;
    let other = funded(&single, "keys-single").await;
    let mut gateway = single.gateway().await;
    gateway
        .reserve_quota(reserve(&other, "k-2", CNY, 60_000))
        .await
        .unwrap();
    let status = gateway
        .deduct_quota(deduct(&other, CNY, "k-2"))
        .await
        .expect_err("a charge under a reservation's key");
    assert_eq!(reason(&status), "IDEMPOTENCY_KEY_REUSED");
    assert_invariants(&app.db, &user).await;
    assert_invariants(&single.db, &other).await;
    single.cleanup().await;
    app.cleanup().await;
}

/// Many reservations settled or released at once on one account, with charges among them:
/// invariant 1 holds with holds, no hold is counted twice, and all of them end. The account can
/// pay for every call, so what must hold does not depend on how the calls interleave.
#[tokio::test]
async fn concurrent_reservations_on_one_account_keep_every_invariant() {
    let app = spawn_app_at(Utc::now(), &[NO_SWEEP]).await;
    let user = funded(&app, "hold-race").await;
    recharge(&app, &user, 100 * CNY).await;
    let gateway = app.gateway().await;
    let calls = (0..60).map(|i| {
        let mut gateway = gateway.clone();
        let user = user.clone();
        async move {
            let request_id = format!("r{i}");
            let amount = (1 + i % 5) * CNY / 2;
            if i % 6 == 5 {
                let charged = gateway
                    .deduct_quota(deduct(&user, amount, &request_id))
                    .await;
                return charged.map(|_| 0).unwrap_or_else(|s| {
                    assert_eq!(reason(&s), "INSUFFICIENT_QUOTA");
                    0
                });
            }
            match gateway
                .reserve_quota(reserve(&user, &request_id, amount, 60_000))
                .await
            {
                Ok(_) if i % 2 == 0 => {
                    gateway
                        .settle_reservation(settle(&user, &request_id, amount / 2))
                        .await
                        .unwrap();
                    1
                }
                Ok(_) => {
                    gateway
                        .release_reservation(release(&user, &request_id))
                        .await
                        .unwrap();
                    1
                }
                Err(status) => {
                    assert_eq!(reason(&status), "INSUFFICIENT_QUOTA");
                    0
                }
            }
        }
    });
    let ended: i32 = join_all(calls).await.into_iter().sum();
    // 60 calls, every sixth a charge: 50 reservations, each settled or released.
    assert_eq!(ended, 50);
    let made: i64 = count(
        &app.db,
        "SELECT COUNT(*) FROM reservations WHERE user_id = ? AND status IN ('settled', 'released')",
        &user,
    )
    .await;
    assert_eq!(made, 50);
    let account = account(&app, &user).await;
    assert_eq!(
        (account.free_held_micros, account.balance_held_micros),
        (0, 0)
    );
    let open: i64 = count(
        &app.db,
        "SELECT COUNT(*) FROM reservations WHERE user_id = ? AND status = 'held'",
        &user,
    )
    .await;
    assert_eq!(open, 0);
    assert_invariants(&app.db, &user).await;
    app.cleanup().await;
}

/// Two replicas sweeping side by side release an expired hold exactly once.
#[tokio::test]
async fn an_expired_hold_is_released_exactly_once_with_two_replicas() {
    let sweep = ("BILLING__RESERVATIONS__SWEEP_INTERVAL_MS", "20");
    let app = spawn_app_at(Utc::now(), &[sweep]).await;
    let mut second = app.replica().await;
    let user = funded(&app, "expiry").await;
    let mut gateway = app.gateway().await;
    for i in 0..20 {
        gateway
            .reserve_quota(reserve(&user, &format!("e{i}"), CNY / 4, 1_000))
            .await
            .unwrap();
    }
    app.clock.advance(chrono::Duration::seconds(2));
    eventually(Duration::from_secs(20), "every hold expired", || async {
        let held = count(
            &app.db,
            "SELECT COUNT(*) FROM reservations WHERE user_id = ? AND status = 'held'",
            &user,
        )
        .await;
        (held == 0).then_some(())
    })
    .await;
    let expired = count(
        &app.db,
        "SELECT COUNT(*) FROM reservations WHERE user_id = ? AND status = 'expired'",
        &user,
    )
    .await;
    let releases = count(
        &app.db,
        "SELECT COUNT(*) FROM ledger WHERE user_id = ? AND kind = 'release'",
        &user,
    )
    .await;
    assert_eq!((expired, releases), (20, 20), "each released once");
    assert_eq!(account(&app, &user).await.available_micros, 15 * CNY);
    assert_invariants(&app.db, &user).await;
    second.stop().await;
    app.cleanup().await;
}

/// A hold taken at 23:59 and settled after midnight pays from November's quota; December's is
/// untouched.
#[tokio::test]
async fn a_hold_taken_before_midnight_and_settled_after_pays_from_its_month() {
    let app = spawn_app_at(utc("2026-11-30T15:59:00Z"), &[NO_SWEEP, KEEP_EVENTS]).await;
    let user = new_user("midnight");
    let mut gateway = app.gateway().await;
    gateway
        .deduct_quota(deduct(&user, 4 * CNY, "november"))
        .await
        .unwrap();
    let held = gateway
        .reserve_quota(reserve(&user, "late-night", 6 * CNY, 600_000))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(held.free_held_micros, 6 * CNY);
    app.clock.set(utc("2026-11-30T16:02:00Z"));
    let settled = gateway
        .settle_reservation(settle(&user, "late-night", 5 * CNY))
        .await
        .unwrap()
        .into_inner();
    let charge = settled.charge.unwrap();
    assert_eq!(
        (charge.free_deducted_micros, charge.balance_deducted_micros),
        (5 * CNY, 0)
    );
    let account = charge.account.unwrap();
    assert_eq!(
        (
            account.period.as_str(),
            account.free_used_micros,
            account.free_remaining_micros
        ),
        ("2026-12", 0, 10 * CNY),
        "December's quota untouched"
    );
    let free_period: Option<String> =
        sqlx::query_scalar("SELECT free_period FROM ledger WHERE record_id = ?")
            .bind(&charge.record_id)
            .fetch_one(&app.db)
            .await
            .unwrap();
    assert_eq!(free_period.as_deref(), Some("2026-11"));
    assert_invariants(&app.db, &user).await;
    app.cleanup().await;
}

/// A settle after expiry is an ordinary charge of the actual price, whether or not the sweeper
/// released the hold first; never a silently unbilled call.
#[tokio::test]
async fn a_late_settle_is_charged() {
    let app = spawn_app_at(Utc::now(), &[NO_SWEEP]).await;
    let user = funded(&app, "late").await;
    let mut gateway = app.gateway().await;
    gateway
        .reserve_quota(reserve(&user, "not-swept", 2 * CNY, 1_000))
        .await
        .unwrap();
    gateway
        .reserve_quota(reserve(&user, "swept", 2 * CNY, 1_000))
        .await
        .unwrap();
    app.clock.advance(chrono::Duration::seconds(5));
    // The sweeper's pass for the second, as a replica would make it.
    let replica = command_svc::app::Application::build(&app.settings, app.clock.clone())
        .await
        .unwrap();
    let released = replica
        .commands()
        .expire_hold(&UserId::stored(user.as_str()), &RequestId::stored("swept"))
        .await
        .unwrap();
    assert!(released);
    assert_eq!(status_of(&app, &user, "swept").await, "expired");
    assert_eq!(status_of(&app, &user, "not-swept").await, "held");
    for request_id in ["swept", "not-swept"] {
        let settled = gateway
            .settle_reservation(settle(&user, request_id, 3 * CNY / 2))
            .await
            .unwrap()
            .into_inner();
        assert!(settled.after_expiry, "{request_id}");
        assert_eq!(settled.released_micros, 0);
        let charge = settled.charge.unwrap();
        assert_eq!(
            charge.free_deducted_micros + charge.balance_deducted_micros,
            3 * CNY / 2
        );
        assert_eq!(status_of(&app, &user, request_id).await, "settled");
    }
    let view = account(&app, &user).await;
    assert_eq!(
        (
            view.free_used_micros,
            view.free_held_micros,
            view.balance_held_micros
        ),
        (3 * CNY, 0, 0)
    );
    assert_invariants(&app.db, &user).await;
    app.cleanup().await;
}

#[tokio::test]
async fn reservations_are_validated_and_scoped() {
    let app = spawn_app_at(Utc::now(), &[NO_SWEEP]).await;
    let user = funded(&app, "hold-bad").await;
    let before = fingerprint(&app.db).await;
    let mut gateway = app.gateway().await;
    for (request, field) in [
        (reserve(&user, "x", 0, 0), "amount_micros"),
        (reserve(&user, "x", CNY, 999), "ttl_ms"),
        (reserve(&user, "x", CNY, 3_600_001), "ttl_ms"),
        (reserve(&user, "", CNY, 0), "request_id"),
    ] {
        let status = gateway.reserve_quota(request).await.expect_err(field);
        assert_eq!(status.code(), Code::InvalidArgument, "{field}");
        assert!(format!("{status:?}").contains(field), "{status:?}");
    }
    let status = gateway
        .settle_reservation(settle(&user, "x", 0))
        .await
        .expect_err("nothing to settle");
    assert_eq!(status.code(), Code::InvalidArgument);
    let status = app
        .payment()
        .await
        .reserve_quota(reserve(&user, "x", CNY, 0))
        .await
        .expect_err("payment may not reserve");
    assert_eq!(status.code(), Code::PermissionDenied);
    assert_eq!(fingerprint(&app.db).await, before);
    app.cleanup().await;
}

/// The sweeper passes over a hold it cannot release (its account's row unreadable) and releases
/// the ones behind it; it never starts again at the same hold forever.
#[tokio::test]
async fn the_sweeper_passes_over_a_hold_it_cannot_release() {
    let app = spawn_app_at(
        Utc::now(),
        &[
            ("BILLING__RESERVATIONS__SWEEP_INTERVAL_MS", "100"),
            ("BILLING__RESERVATIONS__SWEEP_BATCH", "1"),
        ],
    )
    .await;
    let (broken, healthy) = (
        funded(&app, "sweep-broken").await,
        funded(&app, "sweep-ok").await,
    );
    let mut gateway = app.gateway().await;
    // The broken account's hold expires first, so a sweep meets it first.
    gateway
        .reserve_quota(reserve(&broken, "first", CNY, 1_000))
        .await
        .unwrap();
    app.clock.advance(chrono::Duration::milliseconds(10));
    gateway
        .reserve_quota(reserve(&healthy, "second", CNY, 1_000))
        .await
        .unwrap();
    corrupt_account(&app, &broken).await;
    app.clock.advance(chrono::Duration::seconds(5));
    eventually(
        Duration::from_secs(20),
        "the healthy hold expires",
        || async { (status_of(&app, &healthy, "second").await == "expired").then_some(()) },
    )
    .await;
    assert_eq!(status_of(&app, &broken, "first").await, "held");
    let scraped = scrape(&app).await;
    assert!(scraped.expect("billing_reservation_sweep_errors_total", &[]) >= 1.0);
    assert_invariants(&app.db, &healthy).await;
    app.cleanup().await;
}
