//! The whole path: commands over gRPC, events over NATS, the read model, and the REST API.

use std::{collections::HashSet, time::Duration};

use serde_json::{Value, json};
use shared::{clock::Clock, proto::v1 as pb};

use crate::helpers::*;

const WAIT: Duration = Duration::from_secs(20);

async fn write_version(stack: &Stack, user: &str) -> i64 {
    sqlx::query_scalar("SELECT version FROM accounts WHERE user_id = ?")
        .bind(user)
        .fetch_one(&stack.db)
        .await
        .unwrap()
}

/// Waits until REST shows the account at the write model's version; returns that account.
async fn account_caught_up(stack: &Stack, user: &str) -> Value {
    let (token, version) = (stack.token(user), write_version(stack, user).await);
    stack
        .eventually(WAIT, || {
            let token = token.clone();
            async move {
                let (status, body) = stack.get("/api/v1/billing/account", &token).await;
                (status == 200 && body["version"] == json!(version)).then_some(body)
            }
        })
        .await
}

/// Every record over REST, following the cursor `limit` at a time.
async fn all_records(stack: &Stack, user: &str, query: &str, limit: usize) -> Vec<Value> {
    let token = stack.token(user);
    let mut records = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let mut path = format!("/api/v1/billing/records?limit={limit}{query}");
        if let Some(cursor) = &cursor {
            path.push_str(&format!("&cursor={cursor}"));
        }
        let (status, body) = stack.get(&path, &token).await;
        assert_eq!(status, 200, "{body}");
        let page = body["records"].as_array().unwrap();
        assert!(page.len() <= limit);
        records.extend(page.iter().cloned());
        match body["next_cursor"].as_str() {
            Some(next) => cursor = Some(next.to_owned()),
            None => return records,
        }
    }
}

#[tokio::test]
async fn charges_adjustments_and_a_recharge_show_over_rest() {
    let stack = spawn_stack().await;
    let user = new_user("e2e");
    let token = stack.token(&user);

    // A recharge started by the frontend and paid by the provider.
    let response = reqwest::Client::new()
        .post(stack.url("/api/v1/billing/recharge"))
        .bearer_auth(&token)
        .json(&json!({ "amount_micros": 30 * CNY, "channel": "alipay" }))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 201);
    let order_no = response.json::<Value>().await.unwrap()["order_no"]
        .as_str()
        .unwrap()
        .to_owned();
    let callback = pb::RechargeCallbackRequest {
        order_no: order_no.clone(),
        provider_txn_id: "e2e-txn".into(),
        paid_amount_micros: 30 * CNY,
        success: true,
    };
    stack
        .payment()
        .await
        .recharge_callback(callback)
        .await
        .unwrap();

    let mut gateway = stack.gateway().await;
    for i in 0..12 {
        let mut request = deduct(&user, 2 * CNY, &format!("e2e-{i}"));
        request.api_id = if i % 2 == 0 {
            "api.even".into()
        } else {
            "api.odd".into()
        };
        gateway.deduct_quota(request).await.unwrap();
    }
    stack
        .ops()
        .await
        .adjust_balance(adjust(&user, -3 * CNY, "correction"))
        .await
        .unwrap();

    // 10 free + 30 recharged - 24 charged - 3 adjusted.
    let account = account_caught_up(&stack, &user).await;
    assert_eq!(account["balance_micros"], json!(13 * CNY), "{account}");
    assert_eq!(account["free_quota"]["used_micros"], json!(10 * CNY));
    assert_eq!(account["free_quota"]["remaining_micros"], json!(0));
    assert_eq!(account["available_micros"], json!(13 * CNY));

    // Paging visits every record exactly once, newest first by version.
    let records = all_records(&stack, &user, "", 4).await;
    let ledger: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM ledger WHERE user_id = ?")
        .bind(&user)
        .fetch_one(&stack.db)
        .await
        .unwrap();
    assert_eq!(records.len() as i64, ledger);
    let ids: HashSet<_> = records
        .iter()
        .map(|r| r["record_id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(ids.len(), records.len(), "no record twice");
    let versions: Vec<i64> = records
        .iter()
        .map(|r| r["version"].as_i64().unwrap())
        .collect();
    assert!(
        versions.windows(2).all(|w| w[0] > w[1]),
        "newest first: {versions:?}"
    );
    let adjustment = records.iter().find(|r| r["type"] == "adjust").unwrap();
    assert_eq!(adjustment["amount_micros"], json!(-3 * CNY));

    // Filters.
    let deducts = all_records(&stack, &user, "&type=deduct", 5).await;
    assert_eq!(deducts.len(), 12);
    assert!(deducts.iter().all(|r| r["type"] == "deduct"));
    let recharges = all_records(&stack, &user, "&type=recharge", 5).await;
    assert_eq!(recharges.len(), 1);
    assert_eq!(recharges[0]["order_no"], json!(order_no));
    let future = (chrono::Utc::now() + chrono::Duration::hours(1))
        .to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    assert!(
        all_records(&stack, &user, &format!("&from={future}"), 5)
            .await
            .is_empty()
    );
    let past = (chrono::Utc::now() - chrono::Duration::hours(1))
        .to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    assert_eq!(
        all_records(&stack, &user, &format!("&from={past}&to={future}"), 50)
            .await
            .len(),
        records.len()
    );

    // The order, paid.
    let (status, order) = stack
        .get(
            &format!("/api/v1/billing/recharge/orders/{order_no}"),
            &token,
        )
        .await;
    assert_eq!(
        (status.as_u16(), &order["status"]),
        (200, &json!("PAID")),
        "{order}"
    );
    let (_, list) = stack.get("/api/v1/billing/recharge/orders", &token).await;
    let listed = list["orders"].as_array().unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0]["order_no"], json!(order_no));
    stack.cleanup().await;
}

/// A plan and a refund made over gRPC show in the read model: the account's monthly amount, a
/// `plan` record with the new amount and no money moved, a `refund` record with the parts given
/// back; the read model equals the write model.
#[tokio::test]
async fn a_plan_and_a_refund_show_in_the_account_and_as_records() {
    let stack = spawn_stack().await;
    let user = new_user("e2e-plan");
    stack
        .gateway()
        .await
        .deduct_quota(deduct(&user, CNY, "before-plan"))
        .await
        .unwrap();
    stack
        .ops()
        .await
        .set_free_quota_plan(pb::SetFreeQuotaPlanRequest {
            user_id: user.clone(),
            monthly_free_micros: 50 * CNY,
            actor: "ops@devshare".into(),
        })
        .await
        .unwrap();
    let refunded = stack
        .ops()
        .await
        .refund_charge(pb::RefundChargeRequest {
            user_id: user.clone(),
            refund_id: "rf-e2e".into(),
            request_id: "before-plan".into(),
            amount_micros: CNY / 2,
            reason: "upstream failure".into(),
        })
        .await
        .unwrap()
        .into_inner();
    let account = account_caught_up(&stack, &user).await;
    assert_eq!(account["monthly_free_micros"], json!(50 * CNY), "{account}");
    assert_eq!(account["free_quota"]["used_micros"], json!(CNY / 2));
    let refunds = all_records(&stack, &user, "&type=refund", 10).await;
    assert_eq!(refunds.len(), 1, "{refunds:?}");
    assert_eq!(refunds[0]["record_id"], json!(refunded.record_id));
    assert_eq!(
        (
            &refunds[0]["amount_micros"],
            &refunds[0]["free_micros"],
            &refunds[0]["balance_micros"]
        ),
        (&json!(CNY / 2), &json!(CNY / 2), &json!(0))
    );
    assert_eq!(
        account["free_quota"]["granted_micros"],
        json!(10 * CNY),
        "this month keeps its grant"
    );
    let plans = all_records(&stack, &user, "&type=plan", 10).await;
    assert_eq!(plans.len(), 1, "{plans:?}");
    assert_eq!(
        (
            &plans[0]["amount_micros"],
            &plans[0]["free_micros"],
            &plans[0]["balance_micros"]
        ),
        (&json!(50 * CNY), &json!(0), &json!(0))
    );
    crate::projection::assert_models_agree(&stack, &user).await;
    stack.cleanup().await;
}

/// Reservations in the read model: the hold's record (with its request id) and the account's
/// holds while it is open; the settle as an ordinary charge counted in the daily usage; the
/// release; the read model equals the write model.
#[tokio::test]
async fn reservations_show_in_the_account_records_and_usage() {
    let stack = spawn_stack().await;
    let user = new_user("e2e-hold");
    let mut gateway = stack.gateway().await;
    let reserve = |request_id: &str, amount| pb::ReserveQuotaRequest {
        user_id: user.clone(),
        request_id: request_id.to_owned(),
        amount_micros: amount,
        api_id: "api.stream".into(),
        ttl_ms: 60_000,
        ..Default::default()
    };
    gateway
        .reserve_quota(reserve("s-1", 4 * CNY))
        .await
        .unwrap();
    gateway
        .reserve_quota(reserve("s-2", 3 * CNY))
        .await
        .unwrap();
    let account = account_caught_up(&stack, &user).await;
    assert_eq!(
        account["free_quota"]["held_micros"],
        json!(7 * CNY),
        "{account}"
    );
    assert_eq!(account["free_quota"]["remaining_micros"], json!(3 * CNY));
    assert_eq!(account["available_micros"], json!(3 * CNY));

    gateway
        .settle_reservation(pb::SettleReservationRequest {
            user_id: user.clone(),
            request_id: "s-1".into(),
            actual_amount_micros: CNY,
            ..Default::default()
        })
        .await
        .unwrap();
    gateway
        .release_reservation(pb::ReleaseReservationRequest {
            user_id: user.clone(),
            request_id: "s-2".into(),
        })
        .await
        .unwrap();
    let account = account_caught_up(&stack, &user).await;
    assert_eq!(
        (
            &account["free_quota"]["held_micros"],
            &account["free_quota"]["used_micros"]
        ),
        (&json!(0), &json!(CNY))
    );
    assert_eq!(account["available_micros"], json!(9 * CNY));
    let holds = all_records(&stack, &user, "&type=hold", 10).await;
    assert_eq!(holds.len(), 2);
    assert!(
        holds
            .iter()
            .any(|r| r["request_id"] == "s-1" && r["amount_micros"] == json!(4 * CNY))
    );
    let charges = all_records(&stack, &user, "&type=deduct", 10).await;
    assert_eq!(charges.len(), 1);
    assert_eq!(
        (
            &charges[0]["amount_micros"],
            &charges[0]["api_id"],
            &charges[0]["request_id"]
        ),
        (&json!(CNY), &json!("api.stream"), &json!("s-1"))
    );
    let releases = all_records(&stack, &user, "&type=release", 10).await;
    assert_eq!(
        (&releases[0]["amount_micros"], &releases[0]["request_id"]),
        (&json!(3 * CNY), &json!("s-2"))
    );
    let (status, usage) = stack
        .get("/api/v1/billing/usage?group_by=api", &stack.token(&user))
        .await;
    assert_eq!(status, 200, "{usage}");
    assert_eq!(usage["buckets"][0]["key"], json!("api.stream"));
    assert_eq!(usage["buckets"][0]["calls"], json!(1));
    assert_eq!(usage["buckets"][0]["amount_micros"], json!(CNY));
    crate::projection::assert_models_agree(&stack, &user).await;
    stack.cleanup().await;
}

#[tokio::test]
async fn with_redis_down_reads_stay_correct_from_mysql() {
    let mut redis = testkit::OwnRedis::start().await;
    let url = format!("redis://127.0.0.1:{}", redis.port);
    let stack = spawn_stack_with(Clock::system(), &[("BILLING__REDIS__URL", url.as_str())]).await;
    let user = new_user("no-redis");
    recharge(&stack, &user, 10 * CNY).await;
    stack
        .gateway()
        .await
        .deduct_quota(deduct(&user, 4 * CNY, "before"))
        .await
        .unwrap();
    account_caught_up(&stack, &user).await;

    redis.kill().await;
    let mut gateway = stack.gateway().await;
    for i in 0..3 {
        gateway
            .deduct_quota(deduct(&user, 5 * CNY, &format!("during-{i}")))
            .await
            .unwrap();
    }
    // 10 free + 10 balance - 4 - 15 = 1 left on the balance, seen at the newest version.
    let account = account_caught_up(&stack, &user).await;
    assert_eq!(account["balance_micros"], json!(CNY), "{account}");
    assert_eq!(account["free_quota"]["remaining_micros"], json!(0));
    assert_eq!(
        all_records(&stack, &user, "", 100).await.len() as i64,
        write_version(&stack, &user).await
    );
    stack.cleanup().await;
}
