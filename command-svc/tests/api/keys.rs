//! Invariant 10: keys are compared byte for byte, in the code and in the database alike: two
//! keys that differ only by a trailing space are two keys, of every kind. And one caller's input
//! never fails another caller's charge in the same batch.

use futures::future::join_all;
use shared::proto::v1 as pb;
use tonic::Code;

use crate::helpers::*;

const WITHOUT_GROUP_COMMIT: (&str, &str) = ("BILLING__COMMAND__GROUP_COMMIT__ENABLED", "false");
/// A batch waits long enough for every concurrent charge of a test to join it.
const WIDE_BATCHES: (&str, &str) = ("BILLING__COMMAND__GROUP_COMMIT__MAX_WAIT_US", "20000");

async fn charges_differing_by_a_trailing_space_are_two_charges(overrides: &[(&str, &str)]) {
    let app = spawn_app_at(chrono::Utc::now(), overrides).await;
    let user = new_user("spaced-request");
    let mut gateway = app.gateway().await;
    let first = gateway
        .deduct_quota(deduct(&user, CNY, "k"))
        .await
        .unwrap()
        .into_inner();
    let spaced = gateway
        .deduct_quota(deduct(&user, CNY, "k "))
        .await
        .expect("`k ` is a key of its own")
        .into_inner();
    assert!(!spaced.replayed);
    assert_ne!(first.record_id, spaced.record_id);
    assert_eq!(spaced.account.unwrap().free_used_micros, 2 * CNY);
    // Each replays itself, and only itself.
    for (key, record_id) in [("k", &first.record_id), ("k ", &spaced.record_id)] {
        let again = gateway
            .deduct_quota(deduct(&user, CNY, key))
            .await
            .unwrap()
            .into_inner();
        assert!(again.replayed, "{key:?}");
        assert_eq!(&again.record_id, record_id, "{key:?}");
    }
    let stored: Vec<String> = sqlx::query_scalar(
        "SELECT request_id FROM ledger WHERE user_id = ? AND kind = 'deduct' ORDER BY version",
    )
    .bind(&user)
    .fetch_all(&app.db)
    .await
    .unwrap();
    assert_eq!(stored, ["k", "k "]);
    assert_invariants(&app.db, &user).await;
    app.cleanup().await;
}

#[tokio::test]
async fn charges_differing_by_a_trailing_space_are_two_charges_in_group_commit() {
    charges_differing_by_a_trailing_space_are_two_charges(&[]).await;
}

#[tokio::test]
async fn charges_differing_by_a_trailing_space_are_two_charges_one_by_one() {
    charges_differing_by_a_trailing_space_are_two_charges(&[WITHOUT_GROUP_COMMIT]).await;
}

#[tokio::test]
async fn a_spaced_key_among_a_hundred_charges_fails_none_of_them() {
    let app = spawn_app_at(chrono::Utc::now(), &[WIDE_BATCHES]).await;
    let spaced_user = new_user("spaced-batch");
    app.gateway()
        .await
        .deduct_quota(deduct(&spaced_user, CNY, "k"))
        .await
        .unwrap();
    let users: Vec<String> = (0..100).map(|i| new_user(&format!("batch{i}"))).collect();
    let mut calls = Vec::new();
    for user in &users {
        let mut gateway = app.gateway().await;
        let request = deduct(user, CNY, "r");
        calls.push(tokio::spawn(
            async move { gateway.deduct_quota(request).await },
        ));
    }
    let mut gateway = app.gateway().await;
    let spaced =
        tokio::spawn(async move { gateway.deduct_quota(deduct(&spaced_user, CNY, "k ")).await });
    let spaced = spaced.await.unwrap().expect("the spaced key charges once");
    assert!(!spaced.into_inner().replayed);
    for (user, call) in users.iter().zip(join_all(calls).await) {
        let reply = call
            .unwrap()
            .unwrap_or_else(|status| panic!("{user}: {status:?}"));
        assert_eq!(reply.into_inner().free_deducted_micros, CNY, "{user}");
    }
    app.cleanup().await;
}

/// A ledger trigger of the test's own database refuses one request id, as a fault of one
/// caller's row would: the charges batched with it apply, and only its caller hears the error.
async fn one_failing_member_fails_only_itself(overrides: &[(&str, &str)]) {
    let app = spawn_app_at(chrono::Utc::now(), overrides).await;
    sqlx::raw_sql(
        "CREATE TRIGGER refuse_poison BEFORE INSERT ON ledger FOR EACH ROW \
         IF NEW.request_id = 'poison' THEN \
           SIGNAL SQLSTATE '45000' SET MESSAGE_TEXT = 'refused by the test'; \
         END IF",
    )
    .execute(&app.db)
    .await
    .unwrap();
    let users: Vec<String> = (0..100).map(|i| new_user(&format!("member{i}"))).collect();
    let mut calls = Vec::new();
    for (i, user) in users.iter().enumerate() {
        let mut gateway = app.gateway().await;
        let request = deduct(user, CNY, if i == 50 { "poison" } else { "fine" });
        calls.push(tokio::spawn(
            async move { gateway.deduct_quota(request).await },
        ));
    }
    for (i, (user, call)) in users.iter().zip(join_all(calls).await).enumerate() {
        let result = call.unwrap();
        if i == 50 {
            let status = result.expect_err("the refused row fails its own charge");
            assert_eq!(status.code(), Code::Internal, "{status:?}");
            assert_eq!(ledger_count(&app, user).await, 0);
        } else {
            let reply = result.unwrap_or_else(|status| panic!("{user}: {status:?}"));
            assert_eq!(reply.into_inner().free_deducted_micros, CNY, "{user}");
            assert_invariants(&app.db, user).await;
        }
    }
    app.cleanup().await;
}

#[tokio::test]
async fn one_failing_member_of_a_batch_fails_only_itself() {
    one_failing_member_fails_only_itself(&[WIDE_BATCHES]).await;
}

#[tokio::test]
async fn one_failing_charge_fails_only_itself_without_group_commit() {
    one_failing_member_fails_only_itself(&[WITHOUT_GROUP_COMMIT]).await;
}

#[tokio::test]
async fn reservations_and_charges_keep_spaced_keys_apart() {
    let app = spawn_app().await;
    let user = new_user("spaced-hold");
    let mut gateway = app.gateway().await;
    gateway
        .reserve_quota(pb::ReserveQuotaRequest {
            user_id: user.clone(),
            request_id: "h".into(),
            amount_micros: CNY,
            api_id: "api.test".into(),
            ttl_ms: 0,
            ..Default::default()
        })
        .await
        .unwrap();
    let spaced_hold = gateway
        .reserve_quota(pb::ReserveQuotaRequest {
            user_id: user.clone(),
            request_id: "h ".into(),
            amount_micros: 2 * CNY,
            api_id: "api.test".into(),
            ttl_ms: 0,
            ..Default::default()
        })
        .await
        .expect("`h ` is a reservation of its own")
        .into_inner();
    assert!(!spaced_hold.replayed);
    let charge = gateway
        .deduct_quota(deduct(&user, CNY, "h  "))
        .await
        .expect("`h  ` is a charge of its own")
        .into_inner();
    assert!(!charge.replayed);
    let settled = gateway
        .settle_reservation(pb::SettleReservationRequest {
            user_id: user.clone(),
            request_id: "h ".into(),
            actual_amount_micros: 2 * CNY,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(settled.released_micros, 0, "the spaced hold settles itself");
    let released = gateway
        .release_reservation(pb::ReleaseReservationRequest {
            user_id: user.clone(),
            request_id: "h".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(released.released_micros, CNY);
    assert_invariants(&app.db, &user).await;
    app.cleanup().await;
}

#[tokio::test]
async fn adjustments_and_refunds_differing_by_a_trailing_space_are_two() {
    let app = spawn_app().await;
    let user = new_user("spaced-adjust");
    let mut ops = app.ops().await;
    let first = ops
        .adjust_balance(adjust(&user, CNY, "a"))
        .await
        .unwrap()
        .into_inner();
    let spaced = ops
        .adjust_balance(adjust(&user, CNY, "a "))
        .await
        .expect("`a ` is an adjustment of its own")
        .into_inner();
    assert!(!spaced.replayed);
    assert_ne!(first.record_id, spaced.record_id);
    assert_eq!(spaced.account.unwrap().balance_micros, 2 * CNY);

    // 10 CNY free and 2 CNY of balance: a charge of 12 CNY, refunded twice under keys a space apart.
    app.gateway()
        .await
        .deduct_quota(deduct(&user, 12 * CNY, "c"))
        .await
        .unwrap();
    let refund = |refund_id: &str, request_id: &str| pb::RefundChargeRequest {
        user_id: user.clone(),
        refund_id: refund_id.into(),
        request_id: request_id.into(),
        amount_micros: CNY,
        reason: "upstream failed".into(),
    };
    let one = ops
        .refund_charge(refund("f", "c"))
        .await
        .unwrap()
        .into_inner();
    let two = ops
        .refund_charge(refund("f ", "c"))
        .await
        .expect("`f ` is a refund of its own")
        .into_inner();
    assert!(!two.replayed);
    assert_ne!(one.record_id, two.record_id);
    assert_eq!(two.account.unwrap().balance_micros, 2 * CNY);
    // The charge is `c`, not `c `.
    let status = ops.refund_charge(refund("g", "c ")).await.unwrap_err();
    assert_eq!(reason(&status), "CHARGE_NOT_FOUND");
    assert_invariants(&app.db, &user).await;
    app.cleanup().await;
}

#[tokio::test]
async fn order_keys_differing_by_a_trailing_space_are_two_orders() {
    let app = spawn_app().await;
    let user = new_user("spaced-order");
    let mut orders = app.orders().await;
    let keyed = |key: &str| pb::CreateRechargeOrderRequest {
        idempotency_key: key.into(),
        ..new_order(&user, CNY)
    };
    let first = orders
        .create_recharge_order(keyed("i"))
        .await
        .unwrap()
        .into_inner();
    let spaced = orders
        .create_recharge_order(keyed("i "))
        .await
        .expect("`i ` is an order of its own")
        .into_inner();
    assert!(!spaced.replayed);
    let (first, spaced) = (first.order.unwrap(), spaced.order.unwrap());
    assert_ne!(first.order_no, spaced.order_no);

    // An order number with a trailing space is not the order.
    let status = orders
        .get_recharge_order(pb::GetRechargeOrderRequest {
            user_id: user.clone(),
            order_no: format!("{} ", first.order_no),
        })
        .await
        .unwrap_err();
    assert_eq!(reason(&status), "ORDER_NOT_FOUND");
    let mut payment = app.payment().await;
    let stray = payment
        .recharge_callback(paid(&format!("{} ", first.order_no), "t-stray", CNY))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(stray.outcome(), pb::CallbackOutcome::Unmatched);
    assert_eq!(account(&app, &user).await.balance_micros, 0);
    app.cleanup().await;
}

#[tokio::test]
async fn payments_whose_transaction_ids_differ_by_a_trailing_space_are_two_payments() {
    let app = spawn_app().await;
    let user = new_user("spaced-txn");
    let mut orders = app.orders().await;
    let mut payment = app.payment().await;
    let mut order_nos = Vec::new();
    for _ in 0..2 {
        let created = orders
            .create_recharge_order(new_order(&user, CNY))
            .await
            .unwrap()
            .into_inner();
        order_nos.push(created.order.unwrap().order_no);
    }
    let (a, b) = (&order_nos[0], &order_nos[1]);
    let first = payment
        .recharge_callback(paid(a, "T", CNY))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(first.outcome(), pb::CallbackOutcome::Credited);
    let second = payment
        .recharge_callback(paid(b, "T ", CNY))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        second.outcome(),
        pb::CallbackOutcome::Credited,
        "`T ` is a second payment: {second:?}"
    );
    assert!(!second.replayed);
    assert_eq!(&second.order.unwrap().order_no, b);
    assert_eq!(account(&app, &user).await.balance_micros, 2 * CNY);
    assert_invariants(&app.db, &user).await;
    app.cleanup().await;
}

#[tokio::test]
async fn every_text_column_compares_byte_for_byte() {
    let app = spawn_app().await;
    let padded: Vec<(String, String, String)> = sqlx::query_as(
        "SELECT TABLE_NAME, COLUMN_NAME, COLLATION_NAME FROM information_schema.COLUMNS \
         WHERE TABLE_SCHEMA = DATABASE() AND COLLATION_NAME IS NOT NULL \
           AND TABLE_NAME <> '_sqlx_migrations' AND COLLATION_NAME NOT LIKE '%nopad_bin'",
    )
    .fetch_all(&app.db)
    .await
    .unwrap();
    assert!(padded.is_empty(), "PAD SPACE columns: {padded:?}");
    let (equal,): (i64,) = sqlx::query_as(
        "SELECT COUNT(*) FROM information_schema.COLUMNS \
         WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME = 'ledger' AND COLUMN_NAME = 'request_id' \
           AND COLLATION_NAME = 'ascii_nopad_bin'",
    )
    .fetch_one(&app.db)
    .await
    .unwrap();
    assert_eq!(equal, 1);
    app.cleanup().await;
}

/// An account row that cannot be read (here a corrupt period) fails its own charges only; the
/// charges batched with it apply, and the row is counted for operators.
#[tokio::test]
async fn an_unreadable_account_fails_only_its_own_charges() {
    let app = spawn_app_at(chrono::Utc::now(), &[WIDE_BATCHES]).await;
    let broken = new_user("broken");
    app.gateway()
        .await
        .deduct_quota(deduct(&broken, 1_000, "before"))
        .await
        .unwrap();
    corrupt_account(&app, &broken).await;
    let users: Vec<String> = (0..50).map(|i| new_user(&format!("healthy{i}"))).collect();
    let mut calls = Vec::new();
    for user in users.iter().chain(std::iter::once(&broken)) {
        let mut gateway = app.gateway().await;
        let request = deduct(user, CNY, "after");
        calls.push(tokio::spawn(
            async move { gateway.deduct_quota(request).await },
        ));
    }
    for (user, call) in users
        .iter()
        .chain(std::iter::once(&broken))
        .zip(join_all(calls).await)
    {
        let result = call.unwrap();
        if user == &broken {
            assert_eq!(result.unwrap_err().code(), Code::Internal);
        } else {
            result.unwrap_or_else(|status| panic!("{user}: {status:?}"));
            assert_invariants(&app.db, user).await;
        }
    }
    let unreadable = scrape(&app)
        .await
        .expect("billing_undecodable_rows_total", &[("table", "accounts")]);
    assert!(unreadable >= 1.0, "{unreadable}");
    app.cleanup().await;
}
