//! Refunds of charges: balance part first, then the free part (back to the quota only within
//! the charge's period), never more than charged, part by part; once per `(user_id, refund_id)`.

use chrono::{DateTime, Utc};
use futures::future::join_all;
use shared::proto::v1 as pb;
use tonic::Code;

use crate::helpers::*;

fn utc(text: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(text)
        .unwrap()
        .with_timezone(&Utc)
}

fn refund(user: &str, refund_id: &str, request_id: &str, amount: i64) -> pb::RefundChargeRequest {
    pb::RefundChargeRequest {
        user_id: user.to_owned(),
        refund_id: refund_id.to_owned(),
        request_id: request_id.to_owned(),
        amount_micros: amount,
        reason: "the call failed upstream".to_owned(),
    }
}

/// A fresh account with 5 CNY recharged and a charge of 12 CNY: 10 free + 2 balance.
async fn charged_account(app: &TestApp, tag: &str) -> String {
    let user = new_user(tag);
    recharge(app, &user, 5 * CNY).await;
    let reply = app
        .gateway()
        .await
        .deduct_quota(deduct(&user, 12 * CNY, "the-call"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (reply.free_deducted_micros, reply.balance_deducted_micros),
        (10 * CNY, 2 * CNY)
    );
    user
}

#[tokio::test]
async fn a_refund_returns_the_balance_part_first_then_the_free_part() {
    let app = spawn_app().await;
    let user = charged_account(&app, "refund-split").await;
    let mut ops = app.ops().await;
    let first = ops
        .refund_charge(refund(&user, "rf-1", "the-call", 3 * CNY))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (
            first.balance_returned_micros,
            first.free_returned_micros,
            first.free_forfeited_micros
        ),
        (2 * CNY, CNY, 0)
    );
    assert!(!first.replayed);
    let after_first = first.account.unwrap();
    assert_eq!(
        (after_first.balance_micros, after_first.free_used_micros),
        (5 * CNY, 9 * CNY)
    );

    // The rest of the free part, then nothing more.
    let second = ops
        .refund_charge(refund(&user, "rf-2", "the-call", 9 * CNY))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (second.balance_returned_micros, second.free_returned_micros),
        (0, 9 * CNY)
    );
    let before = fingerprint(&app.db).await;
    let status = ops
        .refund_charge(refund(&user, "rf-3", "the-call", 1))
        .await
        .expect_err("the charge is wholly refunded");
    assert_eq!(status.code(), Code::FailedPrecondition);
    assert_eq!(reason(&status), "REFUND_EXCEEDS_CHARGE");
    assert_eq!(
        fingerprint(&app.db).await,
        before,
        "a refused refund changes nothing"
    );
    let view = account(&app, &user).await;
    assert_eq!((view.balance_micros, view.free_used_micros), (5 * CNY, 0));
    assert_invariants(&app.db, &user).await;
    app.cleanup().await;
}

#[tokio::test]
async fn a_free_part_refunded_after_the_charges_period_is_forfeited_and_reported() {
    let app = spawn_app_at(
        utc("2026-11-20T04:00:00Z"),
        &[("BILLING__OUTBOX__RETENTION_HOURS", "100000")],
    )
    .await;
    let user = new_user("refund-late");
    app.gateway()
        .await
        .deduct_quota(deduct(&user, 3 * CNY, "november-call"))
        .await
        .unwrap();
    // December in Shanghai: November's quota is gone.
    app.clock.set(utc("2026-11-30T16:00:05Z"));
    let refunded = app
        .ops()
        .await
        .refund_charge(refund(&user, "rf-late", "november-call", 3 * CNY))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (
            refunded.free_returned_micros,
            refunded.balance_returned_micros,
            refunded.free_forfeited_micros
        ),
        (0, 0, 3 * CNY)
    );
    let account = refunded.account.unwrap();
    assert_eq!(
        (
            account.period.as_str(),
            account.free_used_micros,
            account.free_granted_micros
        ),
        ("2026-12", 0, 10 * CNY),
        "December's quota untouched"
    );
    let (amount, free, balance): (i64, i64, i64) = sqlx::query_as(
        "SELECT amount_micros, free_micros, balance_micros FROM ledger WHERE record_id = ?",
    )
    .bind(&refunded.record_id)
    .fetch_one(&app.db)
    .await
    .unwrap();
    assert_eq!((amount, free, balance), (3 * CNY, 0, 0));
    assert_invariants(&app.db, &user).await;
    app.cleanup().await;
}

#[tokio::test]
async fn a_refund_sent_again_returns_the_original_and_a_reused_id_is_refused() {
    let app = spawn_app().await;
    let user = charged_account(&app, "refund-replay").await;
    let mut ops = app.ops().await;
    let original = ops
        .refund_charge(refund(&user, "rf-once", "the-call", 4 * CNY))
        .await
        .unwrap()
        .into_inner();
    let rows = ledger_count(&app, &user).await;
    let again = ops
        .refund_charge(refund(&user, "rf-once", "the-call", 4 * CNY))
        .await
        .unwrap()
        .into_inner();
    assert!(again.replayed);
    assert_eq!(again.record_id, original.record_id);
    assert_eq!(
        (again.balance_returned_micros, again.free_returned_micros),
        (
            original.balance_returned_micros,
            original.free_returned_micros
        )
    );
    assert_eq!(
        again.account, original.account,
        "the account right after the original"
    );
    assert_eq!(ledger_count(&app, &user).await, rows, "applied once");
    app.gateway()
        .await
        .deduct_quota(deduct(&user, CNY, "another-call"))
        .await
        .unwrap();
    for (amount, request_id) in [(5 * CNY, "the-call"), (4 * CNY, "another-call")] {
        let status = ops
            .refund_charge(refund(&user, "rf-once", request_id, amount))
            .await
            .expect_err("the key was used for another refund");
        assert_eq!(status.code(), Code::AlreadyExists);
        assert_eq!(reason(&status), "IDEMPOTENCY_KEY_REUSED");
    }
    assert_invariants(&app.db, &user).await;
    app.cleanup().await;
}

#[tokio::test]
async fn a_refund_of_no_charge_is_not_found_and_changes_nothing() {
    let app = spawn_app().await;
    let user = charged_account(&app, "refund-none").await;
    let before = fingerprint(&app.db).await;
    let mut ops = app.ops().await;
    for (who, request_id) in [
        (user.as_str(), "no-such-call"),
        ("never-seen-user", "the-call"),
    ] {
        let status = ops
            .refund_charge(refund(who, "rf-x", request_id, CNY))
            .await
            .expect_err("no such charge");
        assert_eq!(status.code(), Code::NotFound);
        assert_eq!(reason(&status), "CHARGE_NOT_FOUND");
    }
    let status = app
        .gateway()
        .await
        .refund_charge(refund(&user, "rf-y", "the-call", CNY))
        .await
        .expect_err("the gateway may not refund");
    assert_eq!(status.code(), Code::PermissionDenied);
    assert_eq!(fingerprint(&app.db).await, before);
    app.cleanup().await;
}

/// Twenty refunds of 1 CNY at once on a charge of 12 CNY: exactly twelve apply.
#[tokio::test]
async fn concurrent_refunds_never_exceed_the_charge() {
    let app = spawn_app().await;
    let user = charged_account(&app, "refund-race").await;
    let ops = app.ops().await;
    let refunds = (0..20).map(|i| {
        let mut ops = ops.clone();
        let request = refund(&user, &format!("rf-{i}"), "the-call", CNY);
        async move { ops.refund_charge(request).await.map(|r| r.into_inner()) }
    });
    let results = join_all(refunds).await;
    let applied: Vec<_> = results.iter().filter_map(|r| r.as_ref().ok()).collect();
    assert_eq!(applied.len(), 12);
    for refused in results.iter().filter_map(|r| r.as_ref().err()) {
        assert_eq!(reason(refused), "REFUND_EXCEEDS_CHARGE", "{refused:?}");
    }
    let balance_back: i64 = applied.iter().map(|r| r.balance_returned_micros).sum();
    let free_back: i64 = applied.iter().map(|r| r.free_returned_micros).sum();
    assert_eq!((balance_back, free_back), (2 * CNY, 10 * CNY));
    let view = account(&app, &user).await;
    assert_eq!((view.balance_micros, view.free_used_micros), (5 * CNY, 0));
    assert_invariants(&app.db, &user).await;
    app.cleanup().await;
}

/// A reservation's settle is a charge like any other: refunded by the reservation's request id.
/// A hold still held, or released, is no charge.
#[tokio::test]
async fn the_charge_that_settled_a_reservation_is_refunded_by_its_request_id() {
    let app = spawn_app().await;
    let user = new_user("refund-settled");
    recharge(&app, &user, 5 * CNY).await;
    let mut gateway = app.gateway().await;
    let reserve = |request_id: &str, amount: i64| pb::ReserveQuotaRequest {
        user_id: user.clone(),
        request_id: request_id.to_owned(),
        amount_micros: amount,
        api_id: "api.stream".to_owned(),
        ttl_ms: 0,
        ..Default::default()
    };
    // 12 CNY held: 10 free and 2 of the balance; 11 settled: 10 free, 1 balance.
    gateway
        .reserve_quota(reserve("streamed", 12 * CNY))
        .await
        .unwrap();
    let settled = gateway
        .settle_reservation(pb::SettleReservationRequest {
            user_id: user.clone(),
            request_id: "streamed".to_owned(),
            actual_amount_micros: 11 * CNY,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let charge = settled.charge.unwrap();
    let mut ops = app.ops().await;
    let refunded = ops
        .refund_charge(refund(&user, "rf-1", "streamed", 2 * CNY))
        .await
        .expect("the settle's charge is refundable")
        .into_inner();
    assert_eq!(
        (
            refunded.balance_returned_micros,
            refunded.free_returned_micros
        ),
        (CNY, CNY),
        "balance part first, then free"
    );
    let again = ops
        .refund_charge(refund(&user, "rf-1", "streamed", 2 * CNY))
        .await
        .unwrap()
        .into_inner();
    assert!(again.replayed);
    assert_eq!(again.record_id, refunded.record_id);
    let over = ops
        .refund_charge(refund(&user, "rf-2", "streamed", 10 * CNY))
        .await
        .unwrap_err();
    assert_eq!(reason(&over), "REFUND_EXCEEDS_CHARGE");
    let charge_record: String = sqlx::query_scalar(
        "SELECT charge_record_id FROM refunds WHERE user_id = ? AND refund_id = 'rf-1'",
    )
    .bind(&user)
    .fetch_one(&app.db)
    .await
    .unwrap();
    assert_eq!(charge_record, charge.record_id);

    // Held, then released: nothing to refund under either.
    gateway.reserve_quota(reserve("held", CNY)).await.unwrap();
    gateway
        .reserve_quota(reserve("released", CNY))
        .await
        .unwrap();
    gateway
        .release_reservation(pb::ReleaseReservationRequest {
            user_id: user.clone(),
            request_id: "released".to_owned(),
        })
        .await
        .unwrap();
    for request_id in ["held", "released"] {
        let status = ops
            .refund_charge(refund(&user, &format!("rf-{request_id}"), request_id, 1))
            .await
            .unwrap_err();
        assert_eq!(reason(&status), "CHARGE_NOT_FOUND", "{request_id}");
    }
    assert_invariants(&app.db, &user).await;
    app.cleanup().await;
}
