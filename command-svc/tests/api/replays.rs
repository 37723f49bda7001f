//! A replay answers what the first call answered: every replayable RPC, sent again after every
//! change that can follow it (a hold's expiry, a settle, a refund, a new plan, a new month), gets
//! the first answer back but for its `replayed` flag (and a callback's `REPLAYED` outcome). The
//! answer comes from what was recorded, never from the account as it is now.

use std::time::Duration;

use chrono::{DateTime, Utc};
use shared::proto::v1 as pb;

use crate::helpers::*;

/// Mid-November in Shanghai.
const NOVEMBER: &str = "2026-11-20T04:00:00Z";
/// Sweeps often, so an expiry is seen soon after the clock passes it.
const QUICK_SWEEP: (&str, &str) = ("BILLING__RESERVATIONS__SWEEP_INTERVAL_MS", "50");
const KEEP_EVENTS: (&str, &str) = ("BILLING__OUTBOX__RETENTION_HOURS", "100000");

fn utc(text: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(text)
        .unwrap()
        .with_timezone(&Utc)
}

/// The replayable RPCs, each with what it needs set up first.
#[derive(Clone, Copy, Debug)]
enum Rpc {
    Deduct,
    Reserve,
    /// A settle after the hold expired: released 0, charged as an ordinary charge.
    LateSettle,
    /// A release asked for after the sweeper released the hold.
    ReleaseAfterExpiry,
    Refund,
    Adjust,
    CreateOrder,
    Callback,
}

const RPCS: [Rpc; 8] = [
    Rpc::Deduct,
    Rpc::Reserve,
    Rpc::LateSettle,
    Rpc::ReleaseAfterExpiry,
    Rpc::Refund,
    Rpc::Adjust,
    Rpc::CreateOrder,
    Rpc::Callback,
];

/// What can happen to an account between a call and its replay.
#[derive(Clone, Copy, Debug)]
enum Change {
    Expiry,
    Settle,
    Refund,
    NewPlan,
    NewPeriod,
}

const CHANGES: [Change; 5] = [
    Change::Expiry,
    Change::Settle,
    Change::Refund,
    Change::NewPlan,
    Change::NewPeriod,
];

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

fn refund(user: &str, refund_id: &str, request_id: &str, amount: i64) -> pb::RefundChargeRequest {
    pb::RefundChargeRequest {
        user_id: user.to_owned(),
        refund_id: refund_id.to_owned(),
        request_id: request_id.to_owned(),
        amount_micros: amount,
        reason: "upstream failed".to_owned(),
    }
}

/// Waits until the sweeper has released `request_id`'s hold.
async fn expired(app: &TestApp, user: &str, request_id: &str) {
    eventually(Duration::from_secs(20), "the hold expires", || async {
        let status: String = sqlx::query_scalar(
            "SELECT status FROM reservations WHERE user_id = ? AND request_id = ?",
        )
        .bind(user)
        .bind(request_id)
        .fetch_one(&app.db)
        .await
        .unwrap();
        (status == "expired").then_some(())
    })
    .await;
}

/// What the client needs before the call itself; what `call` then sends.
async fn prepare(app: &TestApp, rpc: Rpc, user: &str) -> Option<String> {
    let mut gateway = app.gateway().await;
    match rpc {
        Rpc::LateSettle | Rpc::ReleaseAfterExpiry => {
            gateway
                .reserve_quota(reserve(user, "held", 2 * CNY, 1_000))
                .await
                .unwrap();
            app.clock.advance(chrono::Duration::seconds(2));
            expired(app, user, "held").await;
            None
        }
        Rpc::Refund => {
            gateway
                .deduct_quota(deduct(user, 12 * CNY, "refunded"))
                .await
                .unwrap();
            None
        }
        Rpc::Callback => {
            let order = app
                .orders()
                .await
                .create_recharge_order(new_order(user, 3 * CNY))
                .await
                .unwrap()
                .into_inner();
            Some(order.order.unwrap().order_no)
        }
        _ => None,
    }
}

/// Sends the RPC; its answer, with the replay flags and the callback's outcome left out.
async fn call(app: &TestApp, rpc: Rpc, user: &str, order_no: Option<&str>) -> String {
    let (mut gateway, mut ops) = (app.gateway().await, app.ops().await);
    match rpc {
        Rpc::Deduct => {
            let mut answer = gateway
                .deduct_quota(deduct(user, 3 * CNY, "charged"))
                .await
                .unwrap()
                .into_inner();
            answer.replayed = false;
            format!("{answer:?}")
        }
        Rpc::Reserve => {
            let mut answer = gateway
                .reserve_quota(reserve(user, "reserved", 2 * CNY, 1_000))
                .await
                .unwrap()
                .into_inner();
            answer.replayed = false;
            format!("{answer:?}")
        }
        Rpc::LateSettle => {
            let mut answer = gateway
                .settle_reservation(settle(user, "held", 3 * CNY / 2))
                .await
                .unwrap()
                .into_inner();
            assert!(answer.after_expiry);
            answer.replayed = false;
            if let Some(charge) = answer.charge.as_mut() {
                charge.replayed = false;
            }
            format!("{answer:?}")
        }
        Rpc::ReleaseAfterExpiry => {
            let mut answer = gateway
                .release_reservation(pb::ReleaseReservationRequest {
                    user_id: user.to_owned(),
                    request_id: "held".to_owned(),
                })
                .await
                .unwrap()
                .into_inner();
            assert_eq!(
                answer.released_micros,
                2 * CNY,
                "the sweeper gave it all back"
            );
            answer.replayed = false;
            format!("{answer:?}")
        }
        Rpc::Refund => {
            let mut answer = ops
                .refund_charge(refund(user, "refund", "refunded", 2 * CNY))
                .await
                .unwrap()
                .into_inner();
            answer.replayed = false;
            format!("{answer:?}")
        }
        Rpc::Adjust => {
            let mut answer = ops
                .adjust_balance(adjust(user, CNY, "adjusted"))
                .await
                .unwrap()
                .into_inner();
            answer.replayed = false;
            format!("{answer:?}")
        }
        Rpc::CreateOrder => {
            let mut answer = app
                .orders()
                .await
                .create_recharge_order(pb::CreateRechargeOrderRequest {
                    idempotency_key: "ordered".to_owned(),
                    ..new_order(user, 4 * CNY)
                })
                .await
                .unwrap()
                .into_inner();
            answer.replayed = false;
            format!("{answer:?}")
        }
        Rpc::Callback => {
            let txn = format!("txn-{user}");
            let mut answer = app
                .payment()
                .await
                .recharge_callback(paid(order_no.expect("an order"), &txn, 3 * CNY))
                .await
                .unwrap()
                .into_inner();
            answer.replayed = false;
            answer.outcome = 0;
            format!("{answer:?}")
        }
    }
}

/// Makes `change` happen to `user`'s account (`rpc` says what the call left to act on).
async fn change(app: &TestApp, change: Change, rpc: Rpc, user: &str) {
    let (mut gateway, mut ops) = (app.gateway().await, app.ops().await);
    match change {
        Change::Expiry => {
            gateway
                .reserve_quota(reserve(user, "to-expire", CNY, 1_000))
                .await
                .unwrap();
            app.clock.advance(chrono::Duration::seconds(2));
            expired(app, user, "to-expire").await;
            if matches!(rpc, Rpc::Reserve) {
                expired(app, user, "reserved").await;
            }
        }
        Change::Settle => {
            // The call's own reservation when it has one (settled late), another otherwise.
            let request_id = match rpc {
                Rpc::Reserve => "reserved",
                Rpc::ReleaseAfterExpiry => "held",
                _ => {
                    gateway
                        .reserve_quota(reserve(user, "to-settle", CNY, 60_000))
                        .await
                        .unwrap();
                    "to-settle"
                }
            };
            gateway
                .settle_reservation(settle(user, request_id, CNY / 2))
                .await
                .unwrap();
        }
        Change::Refund => {
            let request_id = match rpc {
                Rpc::Deduct => "charged",
                Rpc::Refund => "refunded",
                Rpc::LateSettle => "held",
                _ => {
                    gateway
                        .deduct_quota(deduct(user, CNY, "to-refund"))
                        .await
                        .unwrap();
                    "to-refund"
                }
            };
            ops.refund_charge(refund(user, "changed", request_id, CNY / 2))
                .await
                .unwrap();
        }
        Change::NewPlan => {
            ops.set_free_quota_plan(pb::SetFreeQuotaPlanRequest {
                user_id: user.to_owned(),
                monthly_free_micros: 30 * CNY,
                actor: "ops@example.com".to_owned(),
            })
            .await
            .unwrap();
        }
        Change::NewPeriod => {
            app.clock.set(utc("2026-12-05T04:00:00Z"));
            gateway
                .deduct_quota(deduct(user, CNY, "next-month"))
                .await
                .unwrap();
            // The call's own hold expired meanwhile: its release is over before the checks.
            if matches!(rpc, Rpc::Reserve) {
                expired(app, user, "reserved").await;
            }
        }
    }
}

#[tokio::test]
async fn every_replay_answers_what_the_first_call_answered_whatever_happened_since() {
    let mut differences = Vec::new();
    for change_kind in CHANGES {
        let app = spawn_app_at(utc(NOVEMBER), &[QUICK_SWEEP, KEEP_EVENTS]).await;
        for (hour, rpc) in RPCS.into_iter().enumerate() {
            // Each call an hour after the one before, in November (a new month moves the clock).
            app.clock
                .set(utc(NOVEMBER) + chrono::Duration::hours(hour as i64));
            let user = new_user(&format!("{rpc:?}-{change_kind:?}").to_lowercase());
            recharge(&app, &user, 20 * CNY).await;
            let order_no = prepare(&app, rpc, &user).await;
            let first = call(&app, rpc, &user, order_no.as_deref()).await;
            change(&app, change_kind, rpc, &user).await;
            let again = call(&app, rpc, &user, order_no.as_deref()).await;
            if first != again {
                differences.push(format!(
                    "{rpc:?} after {change_kind:?}:\n  first  {first}\n  replay {again}"
                ));
            }
            assert_invariants(&app.db, &user).await;
        }
        app.cleanup().await;
    }
    assert!(
        differences.is_empty(),
        "{} replays answered otherwise:\n{}",
        differences.len(),
        differences.join("\n")
    );
}
