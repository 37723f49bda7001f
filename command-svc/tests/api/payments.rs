//! Recharge orders and payment callbacks over gRPC: money that arrives is credited once, and what
//! cannot be applied is stored as unmatched with the balance untouched.

use chrono::Duration;
use futures::future::join_all;
use shared::proto::v1 as pb;
use tonic::Code;

use crate::helpers::*;

const OUTCOME_CREDITED: i32 = pb::CallbackOutcome::Credited as i32;
const OUTCOME_REPLAYED: i32 = pb::CallbackOutcome::Replayed as i32;
const OUTCOME_UNMATCHED: i32 = pb::CallbackOutcome::Unmatched as i32;
const OUTCOME_MARKED_FAILED: i32 = pb::CallbackOutcome::MarkedFailed as i32;

async fn create_order(app: &TestApp, user: &str, amount: i64) -> pb::RechargeOrder {
    let reply = app
        .orders()
        .await
        .create_recharge_order(new_order(user, amount))
        .await
        .unwrap();
    reply.into_inner().order.unwrap()
}

async fn callback(
    app: &TestApp,
    request: pb::RechargeCallbackRequest,
) -> pb::RechargeCallbackResponse {
    app.payment()
        .await
        .recharge_callback(request)
        .await
        .unwrap()
        .into_inner()
}

async fn unmatched_why(app: &TestApp, unmatched_id: &str) -> String {
    sqlx::query_scalar("SELECT why FROM unmatched_payments WHERE unmatched_id = ?")
        .bind(unmatched_id)
        .fetch_one(&app.db)
        .await
        .unwrap()
}

fn failed(order_no: &str, txn: &str) -> pb::RechargeCallbackRequest {
    pb::RechargeCallbackRequest {
        order_no: order_no.into(),
        provider_txn_id: txn.into(),
        paid_amount_micros: 0,
        success: false,
    }
}

#[tokio::test]
async fn callback_credits_the_order_once() {
    let app = spawn_app().await;
    let user = new_user("pay");
    let order = create_order(&app, &user, 50 * CNY).await;
    assert_eq!(order.status, pb::OrderStatus::Pending as i32);
    assert!(order.order_no.starts_with("RO") && order.expires_at_ms > order.created_at_ms);

    let reply = callback(&app, paid(&order.order_no, "txn-1", 50 * CNY)).await;
    assert_eq!((reply.outcome, reply.replayed), (OUTCOME_CREDITED, false));
    let paid_order = reply.order.unwrap();
    assert_eq!(
        (paid_order.status, paid_order.provider_txn_id.as_str()),
        (pb::OrderStatus::Paid as i32, "txn-1")
    );
    assert!(paid_order.paid_at_ms > 0);
    assert_eq!(reply.account.unwrap().balance_micros, 50 * CNY);

    let before = fingerprint(&app.db).await;
    let again = callback(&app, paid(&order.order_no, "txn-1", 50 * CNY)).await;
    assert_eq!((again.outcome, again.replayed), (OUTCOME_REPLAYED, true));
    assert_eq!(again.account.unwrap().balance_micros, 50 * CNY);
    assert_eq!(
        fingerprint(&app.db).await,
        before,
        "a replay changes nothing"
    );
    assert_invariants(&app.db, &user).await;
    app.cleanup().await;
}

#[tokio::test]
async fn concurrent_deliveries_of_one_payment_credit_once() {
    let app = spawn_app().await;
    let user = new_user("pay-race");
    let order = create_order(&app, &user, 7 * CNY).await;
    let payment = app.payment().await;
    let calls = (0..20).map(|_| {
        let mut payment = payment.clone();
        let request = paid(&order.order_no, "txn-race", 7 * CNY);
        async move {
            payment
                .recharge_callback(request)
                .await
                .unwrap()
                .into_inner()
        }
    });
    let replies = join_all(calls).await;
    assert_eq!(
        replies
            .iter()
            .filter(|reply| reply.outcome == OUTCOME_CREDITED)
            .count(),
        1
    );
    assert!(
        replies
            .iter()
            .all(|reply| reply.outcome == OUTCOME_CREDITED || reply.replayed)
    );
    assert_eq!(account(&app, &user).await.balance_micros, 7 * CNY);
    assert_invariants(&app.db, &user).await;
    app.cleanup().await;
}

#[tokio::test]
async fn an_amount_that_differs_from_the_order_is_unmatched() {
    let app = spawn_app().await;
    let user = new_user("mismatch");
    let order = create_order(&app, &user, 10 * CNY).await;
    let reply = callback(&app, paid(&order.order_no, "txn-short", 9 * CNY)).await;
    assert_eq!(reply.outcome, OUTCOME_UNMATCHED);
    assert_eq!(
        unmatched_why(&app, &reply.unmatched_id).await,
        "amount_mismatch"
    );
    assert_eq!(reply.order.unwrap().status, pb::OrderStatus::Pending as i32);
    assert_eq!(account(&app, &user).await.balance_micros, 0);
    // The same notification again is a replay of the stored unmatched payment.
    let again = callback(&app, paid(&order.order_no, "txn-short", 9 * CNY)).await;
    assert_eq!(
        (again.outcome, again.unmatched_id.as_str()),
        (OUTCOME_REPLAYED, reply.unmatched_id.as_str())
    );
    assert_invariants(&app.db, &user).await;
    app.cleanup().await;
}

#[tokio::test]
async fn an_unknown_order_is_stored_as_unmatched() {
    let app = spawn_app().await;
    let reply = callback(&app, paid("RO-no-such-order", "txn-ghost", 5 * CNY)).await;
    assert_eq!(
        (reply.outcome, reply.order, reply.account),
        (OUTCOME_UNMATCHED, None, None)
    );
    assert_eq!(
        unmatched_why(&app, &reply.unmatched_id).await,
        "unknown_order"
    );
    let stored: i64 = sqlx::query_scalar(
        "SELECT paid_amount_micros FROM unmatched_payments WHERE provider_txn_id = 'txn-ghost'",
    )
    .fetch_one(&app.db)
    .await
    .unwrap();
    assert_eq!(stored, 5 * CNY);
    let again = callback(&app, paid("RO-no-such-order", "txn-ghost", 5 * CNY)).await;
    assert_eq!((again.outcome, again.replayed), (OUTCOME_REPLAYED, true));
    let rows: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM unmatched_payments")
        .fetch_one(&app.db)
        .await
        .unwrap();
    assert_eq!(rows, 1);
    app.cleanup().await;
}

#[tokio::test]
async fn a_second_transaction_for_a_paid_order_is_unmatched() {
    let app = spawn_app().await;
    let user = new_user("twice");
    let order = create_order(&app, &user, 10 * CNY).await;
    callback(&app, paid(&order.order_no, "txn-a", 10 * CNY)).await;
    let second = callback(&app, paid(&order.order_no, "txn-b", 10 * CNY)).await;
    assert_eq!(second.outcome, OUTCOME_UNMATCHED);
    assert_eq!(
        unmatched_why(&app, &second.unmatched_id).await,
        "already_paid"
    );
    assert_eq!(account(&app, &user).await.balance_micros, 10 * CNY);
    assert_invariants(&app.db, &user).await;
    app.cleanup().await;
}

#[tokio::test]
async fn money_past_the_balance_limit_is_unmatched_and_orders_are_refused() {
    let app = spawn_app().await;
    let user = new_user("limit");
    let order = create_order(&app, &user, 10 * CNY).await;
    // Bring the balance near the limit directly; reaching it through 1,000 recharges adds nothing.
    sqlx::query("UPDATE accounts SET balance_micros = 1000000000000000 - 5 WHERE user_id = ?")
        .bind(&user)
        .execute(&app.db)
        .await
        .unwrap();
    let reply = callback(&app, paid(&order.order_no, "txn-limit", 10 * CNY)).await;
    assert_eq!(reply.outcome, OUTCOME_UNMATCHED);
    assert_eq!(
        unmatched_why(&app, &reply.unmatched_id).await,
        "balance_limit"
    );
    assert_eq!(
        account(&app, &user).await.balance_micros,
        1_000_000_000_000_000 - 5
    );

    let refused = app
        .orders()
        .await
        .create_recharge_order(new_order(&user, 6))
        .await
        .unwrap_err();
    assert_eq!(
        (refused.code(), reason(&refused)),
        (Code::FailedPrecondition, "BALANCE_LIMIT".into())
    );
    assert!(
        app.orders()
            .await
            .create_recharge_order(new_order(&user, 5))
            .await
            .is_ok()
    );
    app.cleanup().await;
}

#[tokio::test]
async fn a_failed_order_paid_later_is_credited() {
    let app = spawn_app().await;
    let user = new_user("fail-then-pay");
    let order = create_order(&app, &user, 20 * CNY).await;
    let failed_reply = callback(&app, failed(&order.order_no, "txn-declined")).await;
    assert_eq!(failed_reply.outcome, OUTCOME_MARKED_FAILED);
    assert_eq!(
        failed_reply.order.unwrap().status,
        pb::OrderStatus::Failed as i32
    );
    let again = callback(&app, failed(&order.order_no, "txn-declined")).await;
    assert_eq!((again.outcome, again.replayed), (OUTCOME_REPLAYED, true));

    let credited = callback(&app, paid(&order.order_no, "txn-retry", 20 * CNY)).await;
    assert_eq!(credited.outcome, OUTCOME_CREDITED);
    assert_eq!(credited.order.unwrap().status, pb::OrderStatus::Paid as i32);
    assert_eq!(account(&app, &user).await.balance_micros, 20 * CNY);
    assert_invariants(&app.db, &user).await;
    app.cleanup().await;
}

#[tokio::test]
async fn an_expired_order_shows_expired_and_is_still_credited() {
    let app = spawn_app().await;
    let user = new_user("expired");
    let order = create_order(&app, &user, 3 * CNY).await;
    app.clock.advance(Duration::seconds(1801));
    let get = pb::GetRechargeOrderRequest {
        user_id: user.clone(),
        order_no: order.order_no.clone(),
    };
    let shown = app
        .orders()
        .await
        .get_recharge_order(get)
        .await
        .unwrap()
        .into_inner()
        .order
        .unwrap();
    assert_eq!(shown.status, pb::OrderStatus::Expired as i32);
    let reply = callback(&app, paid(&order.order_no, "txn-late", 3 * CNY)).await;
    assert_eq!(reply.outcome, OUTCOME_CREDITED);
    assert_eq!(account(&app, &user).await.balance_micros, 3 * CNY);
    app.cleanup().await;
}

#[tokio::test]
async fn order_creation_is_idempotent_by_key() {
    let app = spawn_app().await;
    let user = new_user("order-key");
    let mut orders = app.orders().await;
    let keyed = |amount| pb::CreateRechargeOrderRequest {
        idempotency_key: "checkout-1".into(),
        ..new_order(&user, amount)
    };
    let first = orders
        .create_recharge_order(keyed(5 * CNY))
        .await
        .unwrap()
        .into_inner();
    let second = orders
        .create_recharge_order(keyed(5 * CNY))
        .await
        .unwrap()
        .into_inner();
    assert_eq!((first.replayed, second.replayed), (false, true));
    assert_eq!(
        first.order.unwrap().order_no,
        second.order.unwrap().order_no
    );
    let reused = orders
        .create_recharge_order(keyed(6 * CNY))
        .await
        .unwrap_err();
    assert_eq!(
        (reused.code(), reason(&reused)),
        (Code::AlreadyExists, "IDEMPOTENCY_KEY_REUSED".into())
    );
    // Without a key every call is a new order.
    let a = orders
        .create_recharge_order(new_order(&user, CNY))
        .await
        .unwrap()
        .into_inner()
        .order
        .unwrap();
    let b = orders
        .create_recharge_order(new_order(&user, CNY))
        .await
        .unwrap()
        .into_inner()
        .order
        .unwrap();
    assert_ne!(a.order_no, b.order_no);
    app.cleanup().await;
}

#[tokio::test]
async fn an_order_is_visible_to_its_owner_only() {
    let app = spawn_app().await;
    let (owner, other) = (new_user("owner"), new_user("other"));
    let order = create_order(&app, &owner, CNY).await;
    let mut orders = app.orders().await;
    let get = |user: &str| pb::GetRechargeOrderRequest {
        user_id: user.into(),
        order_no: order.order_no.clone(),
    };
    assert_eq!(
        orders
            .get_recharge_order(get(&owner))
            .await
            .unwrap()
            .into_inner()
            .order
            .unwrap()
            .order_no,
        order.order_no
    );
    let hidden = orders.get_recharge_order(get(&other)).await.unwrap_err();
    assert_eq!(
        (hidden.code(), reason(&hidden)),
        (Code::NotFound, "ORDER_NOT_FOUND".into())
    );
    let missing = orders
        .get_recharge_order(pb::GetRechargeOrderRequest {
            user_id: owner.clone(),
            order_no: "RO-missing".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(reason(&missing), "ORDER_NOT_FOUND");
    app.cleanup().await;
}

#[tokio::test]
async fn a_failure_notice_for_a_paid_order_is_kept_for_operators() {
    let app = spawn_app().await;
    let user = new_user("late-failure");
    let order = create_order(&app, &user, 4 * CNY).await;
    callback(&app, paid(&order.order_no, "txn-ok", 4 * CNY)).await;
    let reply = callback(&app, failed(&order.order_no, "txn-chargeback")).await;
    assert_eq!(reply.outcome, OUTCOME_UNMATCHED);
    assert_eq!(
        unmatched_why(&app, &reply.unmatched_id).await,
        "failure_after_paid"
    );
    assert_eq!(reply.order.unwrap().status, pb::OrderStatus::Paid as i32);
    assert_eq!(account(&app, &user).await.balance_micros, 4 * CNY);
    app.cleanup().await;
}

/// A replay is the same provider transaction for the same order and amount. The same id for
/// another order, or another amount, is a payment of its own: stored as unmatched (with its
/// event), never answered with the first order's replay, never credited twice.
#[tokio::test]
async fn a_provider_transaction_reused_for_another_order_or_amount_is_unmatched_not_replayed() {
    let app = spawn_app().await;
    let (alice, bob) = (new_user("txn-alice"), new_user("txn-bob"));
    let a = create_order(&app, &alice, 5 * CNY).await.order_no;
    let b = create_order(&app, &bob, 5 * CNY).await.order_no;
    let first = callback(&app, paid(&a, "T-shared", 5 * CNY)).await;
    assert_eq!(first.outcome, OUTCOME_CREDITED);

    let reused = callback(&app, paid(&b, "T-shared", 5 * CNY)).await;
    assert_eq!(reused.outcome, OUTCOME_UNMATCHED, "{reused:?}");
    assert!(!reused.replayed);
    assert_eq!(reused.order.as_ref().unwrap().order_no, b);
    assert_eq!(
        reused.order.as_ref().unwrap().status,
        pb::OrderStatus::Pending as i32
    );
    let unmatched_id = reused.unmatched_id.clone();
    assert_eq!(
        unmatched_why(&app, &unmatched_id).await,
        "provider_txn_reused"
    );

    // Sent again, it is that unmatched payment's replay, not alice's.
    let again = callback(&app, paid(&b, "T-shared", 5 * CNY)).await;
    assert_eq!(
        (again.outcome, again.replayed, again.unmatched_id.as_str()),
        (OUTCOME_REPLAYED, true, unmatched_id.as_str())
    );
    assert_eq!(again.order.unwrap().order_no, b);
    assert_eq!(again.account.unwrap().user_id, bob);

    // The same order with another amount is not a replay either.
    let other_amount = callback(&app, paid(&a, "T-shared", 6 * CNY)).await;
    assert_eq!(other_amount.outcome, OUTCOME_UNMATCHED);
    assert_ne!(other_amount.unmatched_id, unmatched_id);

    // Alice's own replay is still hers.
    let replay = callback(&app, paid(&a, "T-shared", 5 * CNY)).await;
    assert_eq!(
        (replay.outcome, replay.order.unwrap().order_no),
        (OUTCOME_REPLAYED, a)
    );
    assert_eq!(account(&app, &alice).await.balance_micros, 5 * CNY);
    assert_eq!(account(&app, &bob).await.balance_micros, 0);
    let events: i64 =
        sqlx::query_scalar("SELECT COUNT(*) FROM outbox WHERE subject LIKE '%.payment_unmatched'")
            .fetch_one(&app.db)
            .await
            .unwrap();
    assert_eq!(events, 2, "one event per unmatched payment");
    for user in [&alice, &bob] {
        assert_invariants(&app.db, user).await;
    }
    app.cleanup().await;
}
