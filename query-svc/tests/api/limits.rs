//! The caller's spend limits over REST: read with their windows, replaced whole, and every bad
//! body refused with a 400 and a JSON error that names the field, changing nothing.

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use shared::proto::v1 as pb;

use crate::{helpers::*, support::*};

const LIMITS: &str = "/api/v1/billing/limits";

async fn put(stack: &Stack, token: &str, body: &Value) -> (StatusCode, Value) {
    send(
        stack,
        Method::PUT,
        LIMITS,
        Some(&format!("Bearer {token}")),
        Some("application/json"),
        Some(body.to_string()),
    )
    .await
}

#[tokio::test]
async fn the_caller_reads_and_replaces_their_limits_and_charges_count_against_them() {
    let stack = spawn_stack().await;
    let user = new_user(&stack.tag);
    recharge(&stack, &user, 10 * CNY).await;
    let token = stack.token(&user);

    let (status, body) = stack.get(LIMITS, &token).await;
    assert_eq!((status, body), (StatusCode::OK, json!({"limits": []})));

    let asked = json!({"limits": [
        {"scope": "account", "window": "day", "limit_micros": 3_000_000},
        {"scope": "api:chat", "window": "month", "limit_micros": 50_000_000},
    ]});
    let (status, body) = put(&stack, &token, &asked).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["limits"].as_array().map(Vec::len), Some(2), "{body}");

    stack
        .gateway()
        .await
        .deduct_quota(pb::DeductQuotaRequest {
            user_id: user.clone(),
            request_id: "r1".into(),
            amount_micros: 1_250_000,
            api_id: "chat".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    let (status, body) = stack.get(LIMITS, &token).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let day = &body["limits"][0];
    assert_eq!(
        (
            &day["scope"],
            &day["window"],
            &day["spent_micros"],
            &day["remaining_micros"]
        ),
        (
            &json!("account"),
            &json!("day"),
            &json!(1_250_000),
            &json!(1_750_000)
        ),
        "{body}"
    );
    for instant in ["window_start", "resets_at"] {
        let text = day[instant].as_str().unwrap_or_default();
        assert!(
            chrono::DateTime::parse_from_rfc3339(text).is_ok(),
            "{instant}: {body}"
        );
    }
    let refused = stack
        .gateway()
        .await
        .deduct_quota(pb::DeductQuotaRequest {
            user_id: user.clone(),
            request_id: "r2".into(),
            amount_micros: 1_750_001,
            api_id: "chat".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::FailedPrecondition);

    // Replaced whole: an empty set removes them all.
    let (status, body) = put(&stack, &token, &json!({"limits": []})).await;
    assert_eq!((status, body), (StatusCode::OK, json!({"limits": []})));
    stack.cleanup().await;
}

#[tokio::test]
async fn bad_bodies_are_refused_with_a_json_error_and_a_scope_given_twice_keeps_the_smaller() {
    let stack = spawn_stack().await;
    let user = new_user(&stack.tag);
    let token = stack.token(&user);
    let kept = json!({"limits": [{"scope": "account", "window": "day", "limit_micros": 1_000}]});
    assert_eq!(put(&stack, &token, &kept).await.0, StatusCode::OK);
    let twenty_one: Vec<Value> = (0..21)
        .map(|n| json!({"scope": format!("key:k{n}"), "window": "day", "limit_micros": 1}))
        .collect();
    let one = |scope: &str, window: &str, limit: Value| json!({"limits": [{"scope": scope, "window": window, "limit_micros": limit}]});
    for (body, names) in [
        (one("team:x", "day", json!(1)), "scope"),
        (one("api:", "day", json!(1)), "scope"),
        (one("key:a b", "day", json!(1)), "scope"),
        (one("account", "week", json!(1)), "window"),
        (one("account", "day", json!(-1)), "limit_micros"),
        (
            one("account", "day", json!(1_000_000_000_000_001_i64)),
            "limit_micros",
        ),
        (one("account", "day", json!(1.5)), "integer"),
        (one("account", "day", json!("5")), "number"),
        (json!({"limits": twenty_one}), "limits"),
        (json!({"limits": [], "extra": 1}), "extra"),
        (json!([]), "object"),
    ] {
        let (status, answer) = put(&stack, &token, &body).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body}: {answer}");
        assert_eq!(answer["error"]["code"], "INVALID_ARGUMENT", "{answer}");
        let message = answer["error"]["message"].as_str().unwrap_or_default();
        assert!(message.contains(names), "{body}: {message}");
    }
    let (status, body) = stack.get(LIMITS, &token).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["limits"].as_array().map(Vec::len), Some(1), "{body}");
    assert_eq!(body["limits"][0]["limit_micros"], 1_000);
    // A scope and window given twice is one limit, the smaller.
    let twice = json!({"limits": [
        {"scope": "account", "window": "day", "limit_micros": 7},
        {"scope": "account", "window": "day", "limit_micros": 5},
    ]});
    let (status, body) = put(&stack, &token, &twice).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["limits"].as_array().map(Vec::len), Some(1), "{body}");
    assert_eq!(body["limits"][0]["limit_micros"], 5);
    stack.cleanup().await;
}
