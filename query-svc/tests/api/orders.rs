//! Recharge orders over REST: created in command-svc through query-svc, idempotent by key, read
//! from the read model or, before it is projected, from command-svc; listed newest first.

use chrono::{Duration, SecondsFormat};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::{helpers::*, support::*};

const RECHARGE: &str = "/api/v1/billing/recharge";

fn order_path(order_no: &str) -> String {
    format!("/api/v1/billing/recharge/orders/{order_no}")
}

#[tokio::test]
async fn a_recharge_creates_a_pending_order_in_command_svc() {
    let stack = spawn_stack().await;
    let user = new_user(&stack.tag);
    let token = stack.token(&user);
    let (status, created) = post_json(
        &stack,
        RECHARGE,
        &token,
        &json!({ "amount_micros": 25 * CNY, "channel": "alipay" }),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    let order_no = created["order_no"].as_str().unwrap().to_owned();
    assert_eq!(created["status"], json!("PENDING"));
    assert_eq!(created["amount_micros"], json!(25 * CNY));
    assert_eq!(created["channel"], json!("alipay"));
    let mut keys: Vec<&str> = created
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    keys.sort_unstable();
    assert_eq!(
        keys,
        [
            "amount_micros",
            "channel",
            "created_at",
            "expires_at",
            "order_no",
            "status"
        ]
    );

    let (owner, amount): (String, i64) =
        sqlx::query_as("SELECT user_id, amount_micros FROM recharge_orders WHERE order_no = ?")
            .bind(&order_no)
            .fetch_one(&stack.db)
            .await
            .unwrap();
    assert_eq!((owner, amount), (user.clone(), 25 * CNY));

    // Readable at once, whether or not the projection has caught up.
    let (status, order) = stack.get(&order_path(&order_no), &token).await;
    assert_eq!(status, StatusCode::OK, "{order}");
    assert_eq!(
        order,
        json!({
            "order_no": order_no, "status": "PENDING", "amount_micros": 25 * CNY,
            "channel": "alipay", "provider_txn_id": null, "created_at": created["created_at"],
            "paid_at": null, "expires_at": created["expires_at"],
        })
    );
    stack.cleanup().await;
}

#[tokio::test]
async fn an_idempotency_key_replays_the_same_order_and_refuses_another_amount() {
    let stack = spawn_stack().await;
    let user = new_user(&stack.tag);
    let token = stack.token(&user);
    let body = json!({ "amount_micros": CNY, "idempotency_key": "checkout-1" });
    let (first_status, first) = post_json(&stack, RECHARGE, &token, &body).await;
    let (again_status, again) = post_json(&stack, RECHARGE, &token, &body).await;
    assert_eq!(
        (first_status, again_status),
        (StatusCode::CREATED, StatusCode::CREATED)
    );
    assert_eq!(first, again);
    assert_eq!(first["channel"], json!(""));
    assert_eq!(command_orders(&stack).await, 1);

    let reused = post_json(
        &stack,
        RECHARGE,
        &token,
        &json!({ "amount_micros": 2 * CNY, "idempotency_key": "checkout-1" }),
    )
    .await;
    assert_eq!(
        error_code(&reused),
        (StatusCode::CONFLICT, "IDEMPOTENCY_KEY_REUSED")
    );
    // Keys are per user.
    let other = new_user(&stack.tag);
    let (status, theirs) = post_json(&stack, RECHARGE, &stack.token(&other), &body).await;
    assert_eq!(status, StatusCode::CREATED);
    assert_ne!(theirs["order_no"], first["order_no"]);
    assert_eq!(command_orders(&stack).await, 2);
    stack.cleanup().await;
}

#[tokio::test]
async fn an_order_past_the_balance_limit_is_refused_with_422() {
    let stack = spawn_stack().await;
    let user = new_user(&stack.tag);
    let token = stack.token(&user);
    let (status, _) = post_json(&stack, RECHARGE, &token, &json!({ "amount_micros": 1 })).await;
    assert_eq!(status, StatusCode::CREATED);
    // A balance at its limit: no test could recharge that far in a reasonable time.
    sqlx::query("UPDATE accounts SET balance_micros = 1000000000000000 WHERE user_id = ?")
        .bind(&user)
        .execute(&stack.db)
        .await
        .unwrap();
    let refused = post_json(&stack, RECHARGE, &token, &json!({ "amount_micros": 1 })).await;
    assert_eq!(
        error_code(&refused),
        (StatusCode::UNPROCESSABLE_ENTITY, "BALANCE_LIMIT")
    );
    assert_eq!(command_orders(&stack).await, 1);
    stack.cleanup().await;
}

#[tokio::test]
async fn an_order_not_projected_yet_is_read_from_command_svc() {
    let stack = spawn_stack().await;
    let user = new_user(&stack.tag);
    let now = stack.clock.now();
    let paid_at = now - Duration::minutes(1);
    seed_command_order(
        &stack,
        &OrderSeed {
            order_no: "RO-UNPROJECTED",
            user: &user,
            amount: 3 * CNY,
            status: "PAID",
            provider_txn_id: Some("txn-9"),
            created_at: now - Duration::minutes(2),
            expires_at: now + Duration::minutes(28),
            paid_at: Some(paid_at),
        },
    )
    .await;
    let (status, order) = stack
        .get(&order_path("RO-UNPROJECTED"), &stack.token(&user))
        .await;
    assert_eq!(status, StatusCode::OK, "{order}");
    assert_eq!(
        (
            &order["status"],
            &order["provider_txn_id"],
            &order["amount_micros"]
        ),
        (&json!("PAID"), &json!("txn-9"), &json!(3 * CNY))
    );
    // command-svc speaks in milliseconds.
    let millis = paid_at.timestamp_millis();
    let paid_at = chrono::DateTime::from_timestamp_millis(millis).unwrap();
    assert_eq!(
        order["paid_at"],
        json!(paid_at.to_rfc3339_opts(SecondsFormat::Micros, true))
    );
    stack.cleanup().await;
}

#[tokio::test]
async fn orders_show_their_status_at_now_and_list_newest_first() {
    let stack = spawn_stack().await;
    let (user, other) = (new_user(&stack.tag), new_user(&stack.tag));
    let now = stack.clock.now();
    let at = |minutes| now - Duration::minutes(minutes);
    let seeds = [
        // (order_no, status, created minutes ago, expires minutes from now)
        ("RO-A", "PAID", 50, -20),
        ("RO-B", "PENDING", 40, -10),
        ("RO-C", "FAILED", 30, 0),
        ("RO-D", "PENDING", 20, 10),
        // Two created in the same microsecond: the order number breaks the tie.
        ("RO-E1", "PENDING", 10, 20),
        ("RO-E2", "PENDING", 10, 20),
    ];
    for (order_no, status, created, expires) in seeds {
        seed_rm_order(
            &stack,
            &OrderSeed {
                order_no,
                user: &user,
                amount: CNY,
                status,
                provider_txn_id: (status == "PAID").then_some("txn-a"),
                created_at: at(created),
                expires_at: at(-expires),
                paid_at: (status == "PAID").then(|| at(45)),
            },
        )
        .await;
    }
    seed_rm_order(
        &stack,
        &OrderSeed {
            order_no: "RO-OTHER",
            user: &other,
            amount: CNY,
            status: "PENDING",
            provider_txn_id: None,
            created_at: now,
            expires_at: now + Duration::minutes(30),
            paid_at: None,
        },
    )
    .await;
    let token = stack.token(&user);

    let mut seen: Vec<Value> = Vec::new();
    let mut path = "/api/v1/billing/recharge/orders?limit=2".to_owned();
    loop {
        let (status, page) = stack.get(&path, &token).await;
        assert_eq!(status, StatusCode::OK, "{page}");
        seen.extend(page["orders"].as_array().unwrap().iter().cloned());
        match page["next_cursor"].as_str() {
            Some(cursor) => {
                path = format!("/api/v1/billing/recharge/orders?limit=2&cursor={cursor}")
            }
            None => break,
        }
    }
    let listed: Vec<(&str, &str)> = seen
        .iter()
        .map(|o| {
            (
                o["order_no"].as_str().unwrap(),
                o["status"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        listed,
        [
            ("RO-E2", "PENDING"),
            ("RO-E1", "PENDING"),
            ("RO-D", "PENDING"),
            ("RO-C", "FAILED"),
            ("RO-B", "EXPIRED"),
            ("RO-A", "PAID"),
        ]
    );

    let (status, paid) = stack.get(&order_path("RO-A"), &token).await;
    assert_eq!(status, StatusCode::OK);
    let time = |minutes| at(minutes).to_rfc3339_opts(SecondsFormat::Micros, true);
    assert_eq!(
        paid,
        json!({
            "order_no": "RO-A", "status": "PAID", "amount_micros": CNY, "channel": "alipay",
            "provider_txn_id": "txn-a", "created_at": time(50), "paid_at": time(45),
            "expires_at": time(20),
        })
    );
    let (_, expired) = stack.get(&order_path("RO-B"), &token).await;
    assert_eq!(expired["status"], json!("EXPIRED"));
    stack.cleanup().await;
}

#[tokio::test]
async fn command_svc_away_is_a_503_and_reads_of_projected_orders_go_on() {
    let mut stack = spawn_stack().await;
    let user = new_user(&stack.tag);
    let now = stack.clock.now();
    seed_rm_order(
        &stack,
        &OrderSeed {
            order_no: "RO-PROJECTED",
            user: &user,
            amount: CNY,
            status: "PENDING",
            provider_txn_id: None,
            created_at: now,
            expires_at: now + Duration::minutes(30),
            paid_at: None,
        },
    )
    .await;
    stack.stop_command().await;
    let token = stack.token(&user);
    let refused = post_json(&stack, RECHARGE, &token, &json!({ "amount_micros": CNY })).await;
    assert_eq!(
        error_code(&refused),
        (StatusCode::SERVICE_UNAVAILABLE, "UNAVAILABLE")
    );
    let unknown = stack.get(&order_path("RO-UNKNOWN"), &token).await;
    assert_eq!(error_code(&unknown).0, StatusCode::SERVICE_UNAVAILABLE);
    let (status, _) = stack.get(&order_path("RO-PROJECTED"), &token).await;
    assert_eq!(status, StatusCode::OK);
    let (status, _) = stack.get("/api/v1/billing/account", &token).await;
    assert_eq!(status, StatusCode::OK);
    stack.cleanup().await;
}

/// `PUT /api/v1/billing/alerts` saves the caller's settings through command-svc; a bad body is
/// refused with every violation and saves nothing.
#[tokio::test]
async fn alert_settings_are_saved_for_the_tokens_user_only() {
    let stack = spawn_stack().await;
    let user = new_user("alerts");
    let token = stack.token(&user);
    let put = |body: serde_json::Value| {
        let token = token.clone();
        let stack = &stack;
        async move {
            send(
                stack,
                Method::PUT,
                "/api/v1/billing/alerts",
                Some(&format!("Bearer {token}")),
                Some("application/json"),
                Some(body.to_string()),
            )
            .await
        }
    };
    let (status, saved) = put(json!({
        "low_balance_threshold_micros": 2 * CNY,
        "webhook_url": "https://hooks.example.com/billing"
    }))
    .await;
    assert_eq!(status, StatusCode::OK, "{saved}");
    // The first webhook comes with its signing secret, shown in this answer only.
    let secret = saved["signing_secret"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    assert!(secret.starts_with("whsec_") && secret.len() > 32, "{saved}");
    assert_eq!(
        saved,
        json!({"low_balance_threshold_micros": 2 * CNY,
               "webhook_url": "https://hooks.example.com/billing",
               "signing_secret": secret})
    );
    let (_, again) = put(json!({
        "low_balance_threshold_micros": 2 * CNY,
        "webhook_url": "https://hooks.example.com/billing"
    }))
    .await;
    assert!(again.get("signing_secret").is_none(), "{again}");
    let (_, rotated) = put(json!({
        "low_balance_threshold_micros": 2 * CNY,
        "webhook_url": "https://hooks.example.com/billing",
        "rotate_signing_secret": true
    }))
    .await;
    let rotated = rotated["signing_secret"].as_str().unwrap().to_owned();
    assert!(rotated.starts_with("whsec_") && rotated != secret);
    let stored_secret: Option<String> =
        sqlx::query_scalar("SELECT signing_secret FROM alert_settings WHERE user_id = ?")
            .bind(&user)
            .fetch_one(&stack.db)
            .await
            .unwrap();
    assert_eq!(stored_secret.as_deref(), Some(rotated.as_str()));
    let stored: (Option<i64>, Option<String>) = sqlx::query_as(
        "SELECT low_balance_threshold_micros, webhook_url FROM alert_settings WHERE user_id = ?",
    )
    .bind(&user)
    .fetch_one(&stack.db)
    .await
    .unwrap();
    assert_eq!(
        stored,
        (
            Some(2 * CNY),
            Some("https://hooks.example.com/billing".into())
        )
    );

    for bad in [
        json!({"low_balance_threshold_micros": -5}),
        json!({"low_balance_threshold_micros": CNY, "webhook_url": "file:///etc/passwd"}),
        json!({"low_balance_threshold_micros": CNY, "user_id": "someone-else"}),
        json!({"webhook_url": "https://x.example"}),
        json!({"low_balance_threshold_micros": CNY, "rotate_signing_secret": "yes"}),
    ] {
        let answer = put(bad.clone()).await;
        assert_eq!(
            error_code(&answer),
            (StatusCode::BAD_REQUEST, "INVALID_ARGUMENT"),
            "{bad}"
        );
    }
    let (status, cleared) =
        put(json!({"low_balance_threshold_micros": 0, "webhook_url": ""})).await;
    assert_eq!(
        (status, &cleared["webhook_url"]),
        (StatusCode::OK, &json!(null))
    );
    let unauthorized = send(
        &stack,
        Method::PUT,
        "/api/v1/billing/alerts",
        None,
        Some("application/json"),
        Some(json!({"low_balance_threshold_micros": 0}).to_string()),
    )
    .await;
    assert_eq!(unauthorized.0, StatusCode::UNAUTHORIZED);
    stack.cleanup().await;
}

/// `GET` reads the settings back; `PUT` replaces them whole and refuses a body without
/// `webhook_url` (it used to remove the webhook unasked); `PATCH` changes only what it names.
#[tokio::test]
async fn alert_settings_are_read_back_replaced_whole_or_changed_in_part() {
    let stack = spawn_stack().await;
    let user = new_user("alerts-rw");
    let token = format!("Bearer {}", stack.token(&user));
    let request = |method: Method, body: Option<serde_json::Value>| {
        let token = token.clone();
        let stack = &stack;
        async move {
            send(
                stack,
                method,
                "/api/v1/billing/alerts",
                Some(&token),
                body.as_ref().map(|_| "application/json"),
                body.map(|body| body.to_string()),
            )
            .await
        }
    };
    // Nothing set yet: the default threshold, no webhook.
    let (status, shown) = request(Method::GET, None).await;
    assert_eq!(status, StatusCode::OK, "{shown}");
    assert_eq!(
        shown,
        json!({"low_balance_threshold_micros": CNY, "threshold_set": false,
               "webhook_url": null, "signing_secret_set": false})
    );
    let hook = "https://hooks.example.com/billing";
    let (status, _) = request(
        Method::PUT,
        Some(json!({"low_balance_threshold_micros": 2 * CNY, "webhook_url": hook})),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    // A PUT without the webhook is refused, and removes nothing.
    let refused = request(
        Method::PUT,
        Some(json!({"low_balance_threshold_micros": 3 * CNY})),
    )
    .await;
    assert_eq!(
        error_code(&refused),
        (StatusCode::BAD_REQUEST, "INVALID_ARGUMENT")
    );
    // A PATCH of the threshold keeps the webhook.
    let (status, patched) = request(
        Method::PATCH,
        Some(json!({"low_balance_threshold_micros": 3 * CNY})),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{patched}");
    assert_eq!(patched["webhook_url"], json!(hook));
    let (_, shown) = request(Method::GET, None).await;
    assert_eq!(
        shown,
        json!({"low_balance_threshold_micros": 3 * CNY, "threshold_set": true,
               "webhook_url": hook, "signing_secret_set": true})
    );
    // A PATCH with null removes the webhook and keeps the threshold and the secret.
    let (status, _) = request(Method::PATCH, Some(json!({"webhook_url": null}))).await;
    assert_eq!(status, StatusCode::OK);
    let (_, shown) = request(Method::GET, None).await;
    assert_eq!(
        shown,
        json!({"low_balance_threshold_micros": 3 * CNY, "threshold_set": true,
               "webhook_url": null, "signing_secret_set": true})
    );
    let stranger = send(
        &stack,
        Method::GET,
        "/api/v1/billing/alerts",
        None,
        None,
        None,
    )
    .await;
    assert_eq!(stranger.0, StatusCode::UNAUTHORIZED);
    stack.cleanup().await;
}
