//! Every field of every RPC is validated; a bad value gets INVALID_ARGUMENT naming the field, and
//! changes nothing.

use shared::proto::v1 as pb;
use tonic::Code;
use tonic_types::StatusExt;

use crate::helpers::*;

const LONG_129: usize = 129;

fn assert_invalid(name: &str, result: Result<(), tonic::Status>, field: &str) {
    let status = result.expect_err(name);
    assert_eq!(status.code(), Code::InvalidArgument, "{name}: {status:?}");
    assert_eq!(reason(&status), "INVALID_ARGUMENT", "{name}");
    let violations = status
        .get_details_bad_request()
        .expect("a BadRequest detail")
        .field_violations;
    assert!(
        violations.iter().any(|v| v.field == field),
        "{name}: {violations:?} must name {field}"
    );
}

#[tokio::test]
async fn bad_fields_are_refused_and_change_nothing() {
    let app = spawn_app().await;
    let user = new_user("valid");
    recharge(&app, &user, 5 * CNY).await;
    let before = fingerprint(&app.db).await;
    let mut ops = app.ops().await;
    let long = "x".repeat(LONG_129);

    let deducts = [
        (
            "empty user",
            pb::DeductQuotaRequest {
                user_id: String::new(),
                ..deduct(&user, 1, "r")
            },
            "user_id",
        ),
        (
            "user with space",
            pb::DeductQuotaRequest {
                user_id: "a b".into(),
                ..deduct(&user, 1, "r")
            },
            "user_id",
        ),
        (
            "user of 65",
            pb::DeductQuotaRequest {
                user_id: "u".repeat(65),
                ..deduct(&user, 1, "r")
            },
            "user_id",
        ),
        (
            "injection",
            pb::DeductQuotaRequest {
                user_id: "x' OR '1'='1".into(),
                ..deduct(&user, 1, "r")
            },
            "user_id",
        ),
        ("zero amount", deduct(&user, 0, "r"), "amount_micros"),
        ("negative amount", deduct(&user, -1, "r"), "amount_micros"),
        (
            "amount over 10^12",
            deduct(&user, 1_000_000_000_001, "r"),
            "amount_micros",
        ),
        ("i64 max", deduct(&user, i64::MAX, "r"), "amount_micros"),
        ("i64 min", deduct(&user, i64::MIN, "r"), "amount_micros"),
        ("empty request id", deduct(&user, 1, ""), "request_id"),
        ("request id of 129", deduct(&user, 1, &long), "request_id"),
        (
            "non-ASCII request id",
            deduct(&user, 1, "请求"),
            "request_id",
        ),
        (
            "control in request id",
            deduct(&user, 1, "r\n1"),
            "request_id",
        ),
        (
            "api id of 129",
            pb::DeductQuotaRequest {
                api_id: long.clone(),
                ..deduct(&user, 1, "r")
            },
            "api_id",
        ),
        (
            "description of 513",
            pb::DeductQuotaRequest {
                description: "d".repeat(513),
                ..deduct(&user, 1, "r")
            },
            "description",
        ),
    ];
    for (name, request, field) in deducts {
        assert_invalid(name, ops.deduct_quota(request).await.map(drop), field);
    }

    let check = |user_id: &str, amount| pb::CheckQuotaRequest {
        user_id: user_id.into(),
        amount_micros: amount,
        ..Default::default()
    };
    assert_invalid(
        "check zero",
        ops.check_quota(check(&user, 0)).await.map(drop),
        "amount_micros",
    );
    assert_invalid(
        "check bad user",
        ops.check_quota(check("", 1)).await.map(drop),
        "user_id",
    );
    assert_invalid(
        "account bad user",
        ops.get_account(pb::GetAccountRequest {
            user_id: "a/b".into(),
        })
        .await
        .map(drop),
        "user_id",
    );

    let orders = [
        ("order zero", new_order(&user, 0), "amount_micros"),
        (
            "order over max",
            new_order(&user, 1_000_000_000_001),
            "amount_micros",
        ),
        (
            "channel of 33",
            pb::CreateRechargeOrderRequest {
                channel: "c".repeat(33),
                ..new_order(&user, 1)
            },
            "channel",
        ),
        (
            "key of 129",
            pb::CreateRechargeOrderRequest {
                idempotency_key: long.clone(),
                ..new_order(&user, 1)
            },
            "idempotency_key",
        ),
        (
            "bad user",
            pb::CreateRechargeOrderRequest {
                user_id: "é".into(),
                ..new_order(&user, 1)
            },
            "user_id",
        ),
    ];
    for (name, request, field) in orders {
        assert_invalid(
            name,
            ops.create_recharge_order(request).await.map(drop),
            field,
        );
    }
    let get = |order_no: &str| pb::GetRechargeOrderRequest {
        user_id: user.clone(),
        order_no: order_no.into(),
    };
    assert_invalid(
        "empty order no",
        ops.get_recharge_order(get("")).await.map(drop),
        "order_no",
    );

    let callbacks = [
        ("callback empty order", paid("", "t", 1), "order_no"),
        ("callback empty txn", paid("RO1", "", 1), "provider_txn_id"),
        // A success's amount is never refused (an authentic one out of range is stored as an
        // unmatched payment); a failure notice's must be 0 or in range.
        (
            "failure notice negative",
            pb::RechargeCallbackRequest {
                success: false,
                ..paid("RO1", "t", -5)
            },
            "paid_amount_micros",
        ),
        (
            "failure notice over max",
            pb::RechargeCallbackRequest {
                success: false,
                ..paid("RO1", "t", 1_000_000_000_001)
            },
            "paid_amount_micros",
        ),
        (
            "callback txn of 129",
            paid("RO1", &long, 1),
            "provider_txn_id",
        ),
    ];
    for (name, request, field) in callbacks {
        assert_invalid(name, ops.recharge_callback(request).await.map(drop), field);
    }

    let adjustments = [
        ("zero adjustment", adjust(&user, 0, "a"), "amount_micros"),
        (
            "adjustment over max",
            adjust(&user, -1_000_000_000_001, "a"),
            "amount_micros",
        ),
        ("empty adjustment id", adjust(&user, 1, ""), "adjustment_id"),
        (
            "empty reason",
            pb::AdjustBalanceRequest {
                reason: String::new(),
                ..adjust(&user, 1, "a")
            },
            "reason",
        ),
        (
            "empty actor",
            pb::AdjustBalanceRequest {
                actor: String::new(),
                ..adjust(&user, 1, "a")
            },
            "actor",
        ),
        (
            "actor of 65",
            pb::AdjustBalanceRequest {
                actor: "a".repeat(65),
                ..adjust(&user, 1, "a")
            },
            "actor",
        ),
    ];
    for (name, request, field) in adjustments {
        assert_invalid(name, ops.adjust_balance(request).await.map(drop), field);
    }

    assert_eq!(fingerprint(&app.db).await, before);
    app.cleanup().await;
}

#[tokio::test]
async fn adjustments_credit_debit_and_replay() {
    let app = spawn_app().await;
    let user = new_user("adjust");
    let mut ops = app.ops().await;
    let credit = ops
        .adjust_balance(adjust(&user, 5 * CNY, "goodwill"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (credit.account.unwrap().balance_micros, credit.replayed),
        (5 * CNY, false)
    );
    let replay = ops
        .adjust_balance(adjust(&user, 5 * CNY, "goodwill"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (replay.record_id.as_str(), replay.replayed),
        (credit.record_id.as_str(), true)
    );
    let reused = ops
        .adjust_balance(adjust(&user, 6 * CNY, "goodwill"))
        .await
        .unwrap_err();
    assert_eq!(reason(&reused), "IDEMPOTENCY_KEY_REUSED");

    // A debit takes the balance only, never free quota, and never below zero.
    let too_much = ops
        .adjust_balance(adjust(&user, -5 * CNY - 1, "fine"))
        .await
        .unwrap_err();
    assert_eq!(
        (too_much.code(), reason(&too_much)),
        (Code::FailedPrecondition, "INSUFFICIENT_QUOTA".into())
    );
    let debit = ops
        .adjust_balance(adjust(&user, -5 * CNY, "fine"))
        .await
        .unwrap()
        .into_inner();
    let account = debit.account.unwrap();
    assert_eq!(
        (account.balance_micros, account.free_remaining_micros),
        (0, 10 * CNY)
    );
    assert_invariants(&app.db, &user).await;
    app.cleanup().await;
}
