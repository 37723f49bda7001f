//! The payment webhook over HTTP: only a fresh signature made with a configured secret gets in,
//! and then it behaves exactly as the gRPC callback.

use command_svc::api::webhook::sign;
use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::helpers::*;

struct Delivery {
    body: String,
    timestamp: i64,
    signature: Option<String>,
}

impl Delivery {
    /// A body signed now with `secret`, as a payment service would send it.
    fn signed(app: &TestApp, body: Value, secret: &str) -> Delivery {
        let body = body.to_string();
        let timestamp = app.clock.now().timestamp();
        let signature = Some(sign(secret, timestamp, body.as_bytes()));
        Delivery {
            body,
            timestamp,
            signature,
        }
    }

    async fn send(&self, app: &TestApp) -> (StatusCode, Value) {
        let mut request = reqwest::Client::new()
            .post(app.http("/api/v1/billing/recharge/callback"))
            .header("content-type", "application/json")
            .header("x-billing-timestamp", self.timestamp.to_string())
            .body(self.body.clone());
        if let Some(signature) = &self.signature {
            request = request.header("x-billing-signature", signature);
        }
        let response = request.send().await.unwrap();
        let status = response.status();
        (status, response.json().await.expect("every answer is JSON"))
    }
}

async fn pending_order(app: &TestApp, user: &str, amount: i64) -> String {
    let reply = app
        .orders()
        .await
        .create_recharge_order(new_order(user, amount))
        .await
        .unwrap();
    reply.into_inner().order.unwrap().order_no
}

fn body(order_no: &str, txn: &str, amount: i64) -> Value {
    json!({ "order_no": order_no, "provider_txn_id": txn, "paid_amount_micros": amount, "success": true })
}

#[tokio::test]
async fn a_signed_callback_credits_once_and_a_redelivery_is_a_replay() {
    let app = spawn_app().await;
    let user = new_user("hook");
    let order_no = pending_order(&app, &user, 8 * CNY).await;
    let delivery = Delivery::signed(&app, body(&order_no, "wx-1", 8 * CNY), WEBHOOK_SECRET);

    let (status, reply) = delivery.send(&app).await;
    assert_eq!(status, StatusCode::OK, "{reply}");
    assert_eq!(reply["outcome"], "CREDITED");
    assert_eq!(reply["replayed"], false);
    assert_eq!(reply["order"]["status"], "PAID");
    assert_eq!(reply["unmatched_id"], Value::Null);

    let (status, again) = delivery.send(&app).await;
    assert_eq!(
        (status, &again["outcome"], &again["replayed"]),
        (StatusCode::OK, &json!("REPLAYED"), &json!(true))
    );
    assert_eq!(account(&app, &user).await.balance_micros, 8 * CNY);
    assert_invariants(&app.db, &user).await;
    app.cleanup().await;
}

#[tokio::test]
async fn unauthentic_deliveries_get_401_and_change_nothing() {
    let app = spawn_app().await;
    let user = new_user("forged");
    let order_no = pending_order(&app, &user, 8 * CNY).await;
    let before = fingerprint(&app.db).await;
    let genuine = Delivery::signed(&app, body(&order_no, "wx-2", 8 * CNY), WEBHOOK_SECRET);

    let wrong_secret = Delivery::signed(&app, body(&order_no, "wx-2", 8 * CNY), "not-the-secret");
    let missing = Delivery {
        signature: None,
        ..Delivery::signed(&app, body(&order_no, "wx-2", 8 * CNY), WEBHOOK_SECRET)
    };
    let stale = {
        let body_text = body(&order_no, "wx-2", 8 * CNY).to_string();
        let timestamp = app.clock.now().timestamp() - 301;
        Delivery {
            signature: Some(sign(WEBHOOK_SECRET, timestamp, body_text.as_bytes())),
            body: body_text,
            timestamp,
        }
    };
    let future = {
        let body_text = body(&order_no, "wx-2", 8 * CNY).to_string();
        let timestamp = app.clock.now().timestamp() + 301;
        Delivery {
            signature: Some(sign(WEBHOOK_SECRET, timestamp, body_text.as_bytes())),
            body: body_text,
            timestamp,
        }
    };
    let replayed_signature_other_body = Delivery {
        body: body(&order_no, "wx-2", 800 * CNY).to_string(),
        timestamp: genuine.timestamp,
        signature: genuine.signature.clone(),
    };
    let moved_timestamp = Delivery {
        timestamp: genuine.timestamp + 1,
        ..Delivery::signed(&app, body(&order_no, "wx-2", 8 * CNY), WEBHOOK_SECRET)
    };
    let garbage = Delivery {
        signature: Some("sha256=zz".into()),
        ..Delivery::signed(&app, body(&order_no, "wx-2", 8 * CNY), WEBHOOK_SECRET)
    };

    for (name, delivery) in [
        ("wrong secret", wrong_secret),
        ("missing signature", missing),
        ("stale timestamp", stale),
        ("future timestamp", future),
        (
            "signature reused with another body",
            replayed_signature_other_body,
        ),
        ("signature with another timestamp", moved_timestamp),
        ("malformed signature", garbage),
    ] {
        let (status, reply) = delivery.send(&app).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{name}: {reply}");
        assert_eq!(reply["error"]["code"], "UNAUTHENTICATED", "{name}");
    }
    assert_eq!(fingerprint(&app.db).await, before);
    app.cleanup().await;
}

#[tokio::test]
async fn a_signature_made_with_a_previous_secret_still_verifies() {
    let app = spawn_app_at(
        chrono::Utc::now(),
        &[
            ("BILLING__PAYMENT__WEBHOOK_SECRET", "new-secret"),
            ("BILLING__PAYMENT__WEBHOOK_PREVIOUS_SECRETS", "old-secret"),
        ],
    )
    .await;
    let user = new_user("rotation");
    let first = pending_order(&app, &user, CNY).await;
    let second = pending_order(&app, &user, CNY).await;
    let (status, _) = Delivery::signed(&app, body(&first, "r-1", CNY), "new-secret")
        .send(&app)
        .await;
    assert_eq!(status, StatusCode::OK);
    let (status, _) = Delivery::signed(&app, body(&second, "r-2", CNY), "old-secret")
        .send(&app)
        .await;
    assert_eq!(status, StatusCode::OK);
    let (status, _) = Delivery::signed(&app, body(&second, "r-3", CNY), WEBHOOK_SECRET)
        .send(&app)
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(account(&app, &user).await.balance_micros, 2 * CNY);
    app.cleanup().await;
}

/// Invariant 7: an authentic success is money that arrived, whatever amount it names. One
/// outside 1 ..= 10^12 is stored as an unmatched payment and answered 200, once; never a 4xx
/// that the provider would retry forever.
#[tokio::test]
async fn an_authentic_success_with_an_amount_out_of_range_is_kept_as_unmatched() {
    let app = spawn_app().await;
    let user = new_user("out-of-range");
    let order_no = pending_order(&app, &user, CNY).await;
    for (txn, amount) in [("t-neg", -1), ("t-zero", 0), ("t-huge", 1_000_000_000_001)] {
        for delivery in 0..2 {
            let (status, reply) =
                Delivery::signed(&app, body(&order_no, txn, amount), WEBHOOK_SECRET)
                    .send(&app)
                    .await;
            assert_eq!(status, StatusCode::OK, "{txn}: {reply}");
            assert_eq!(
                reply["outcome"],
                if delivery == 0 {
                    "UNMATCHED"
                } else {
                    "REPLAYED"
                }
            );
            let unmatched_id = reply["unmatched_id"].as_str().unwrap().to_owned();
            let stored: (String, i64) = sqlx::query_as(
                "SELECT why, paid_amount_micros FROM unmatched_payments WHERE unmatched_id = ?",
            )
            .bind(&unmatched_id)
            .fetch_one(&app.db)
            .await
            .unwrap();
            assert_eq!(stored, ("amount_out_of_range".to_owned(), amount), "{txn}");
        }
    }
    assert_eq!(account(&app, &user).await.balance_micros, 0);
    let events: i64 =
        sqlx::query_scalar("SELECT COUNT(*) FROM outbox WHERE subject LIKE '%.payment_unmatched'")
            .fetch_one(&app.db)
            .await
            .unwrap();
    assert_eq!(events, 3, "one event per payment, none for the replays");
    app.cleanup().await;
}

#[tokio::test]
async fn a_signed_but_malformed_body_gets_400_and_changes_nothing() {
    let app = spawn_app().await;
    let user = new_user("malformed");
    let order_no = pending_order(&app, &user, CNY).await;
    let before = fingerprint(&app.db).await;
    for (name, bad) in [
        ("not JSON", json!("{{{")),
        (
            "missing field",
            json!({ "order_no": order_no, "provider_txn_id": "t", "success": true }),
        ),
        (
            "string amount",
            json!({ "order_no": order_no, "provider_txn_id": "t", "paid_amount_micros": "100", "success": true }),
        ),
        (
            "negative amount on a failure",
            json!({ "order_no": order_no, "provider_txn_id": "t", "paid_amount_micros": -1, "success": false }),
        ),
        ("empty transaction", body(&order_no, "", CNY)),
    ] {
        let delivery = if name == "not JSON" {
            let text = "{{{".to_owned();
            let timestamp = app.clock.now().timestamp();
            Delivery {
                signature: Some(sign(WEBHOOK_SECRET, timestamp, text.as_bytes())),
                body: text,
                timestamp,
            }
        } else {
            Delivery::signed(&app, bad, WEBHOOK_SECRET)
        };
        let (status, reply) = delivery.send(&app).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{name}: {reply}");
        assert_eq!(reply["error"]["code"], "INVALID_ARGUMENT", "{name}");
    }
    assert_eq!(fingerprint(&app.db).await, before);
    app.cleanup().await;
}

#[tokio::test]
async fn fields_the_contract_does_not_know_are_ignored() {
    let app = spawn_app().await;
    let user = new_user("extra");
    let order_no = pending_order(&app, &user, CNY).await;
    let mut extended = body(&order_no, "wx-extra", CNY);
    extended["channel_fee_micros"] = json!(600);
    let (status, reply) = Delivery::signed(&app, extended, WEBHOOK_SECRET)
        .send(&app)
        .await;
    assert_eq!(
        (status, &reply["outcome"]),
        (StatusCode::OK, &json!("CREDITED")),
        "{reply}"
    );
    assert_eq!(account(&app, &user).await.balance_micros, CNY);
    app.cleanup().await;
}

#[tokio::test]
async fn probes_and_unknown_routes_answer_json() {
    let app = spawn_app().await;
    let client = reqwest::Client::new();
    let health = client.get(app.http("/healthz")).send().await.unwrap();
    assert_eq!(health.status(), StatusCode::OK);
    let ready = client.get(app.http("/readyz")).send().await.unwrap();
    assert_eq!(ready.status(), StatusCode::OK);
    let user = new_user("metered");
    app.gateway()
        .await
        .deduct_quota(deduct(&user, 1, "counted"))
        .await
        .unwrap();
    let metrics = client
        .get(app.http("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(metrics.contains("billing_charges_total"), "{metrics}");
    let missing = client.get(app.http("/nope")).send().await.unwrap();
    assert_eq!(missing.status(), StatusCode::NOT_FOUND);
    assert_eq!(
        missing.json::<Value>().await.unwrap()["error"]["code"],
        "NOT_FOUND"
    );
    let wrong_method = client
        .get(app.http("/api/v1/billing/recharge/callback"))
        .send()
        .await
        .unwrap();
    assert_eq!(wrong_method.status(), StatusCode::METHOD_NOT_ALLOWED);
    assert!(wrong_method.json::<Value>().await.unwrap()["error"]["code"].is_string());
    app.cleanup().await;
}
