//! Bad input gets a clear JSON error and changes nothing; every error answer, the framework's
//! own included (bad JSON, wrong content type, a body too large, an unknown route, a wrong
//! method), has the contract's shape.

use reqwest::{Method, StatusCode};
use serde_json::json;

use crate::{helpers::*, support::*};

const RECHARGE: &str = "/api/v1/billing/recharge";

#[tokio::test]
async fn a_bad_recharge_body_is_refused_and_creates_nothing() {
    let stack = spawn_stack().await;
    let user = new_user(&stack.tag);
    let bearer = format!("Bearer {}", stack.token(&user));
    let json_type = Some("application/json");
    let cases: Vec<(Option<&str>, String, StatusCode, &str)> = vec![
        (
            json_type,
            r#"{"amount_micros": -1}"#.into(),
            StatusCode::BAD_REQUEST,
            "INVALID_ARGUMENT",
        ),
        (
            json_type,
            r#"{"amount_micros": 0}"#.into(),
            StatusCode::BAD_REQUEST,
            "INVALID_ARGUMENT",
        ),
        (
            json_type,
            r#"{"amount_micros": 1000000000001}"#.into(),
            StatusCode::BAD_REQUEST,
            "INVALID_ARGUMENT",
        ),
        (
            json_type,
            r#"{"amount_micros": 99999999999999999999}"#.into(),
            StatusCode::BAD_REQUEST,
            "INVALID_ARGUMENT",
        ),
        (
            json_type,
            r#"{"amount_micros": "1000000"}"#.into(),
            StatusCode::BAD_REQUEST,
            "INVALID_ARGUMENT",
        ),
        (
            json_type,
            r#"{"amount_micros": 1.5}"#.into(),
            StatusCode::BAD_REQUEST,
            "INVALID_ARGUMENT",
        ),
        (
            json_type,
            r#"{"amount_micros": 1.0000001e6}"#.into(),
            StatusCode::BAD_REQUEST,
            "INVALID_ARGUMENT",
        ),
        (
            json_type,
            r#"{"amount_micros": null}"#.into(),
            StatusCode::BAD_REQUEST,
            "INVALID_ARGUMENT",
        ),
        (
            json_type,
            r#"{"channel": "alipay"}"#.into(),
            StatusCode::BAD_REQUEST,
            "INVALID_ARGUMENT",
        ),
        (
            json_type,
            r#"{"amount_micros": 1, "user_id": "someone-else"}"#.into(),
            StatusCode::BAD_REQUEST,
            "INVALID_ARGUMENT",
        ),
        (
            json_type,
            r#"{"amount_micros": 1, "channel": 7}"#.into(),
            StatusCode::BAD_REQUEST,
            "INVALID_ARGUMENT",
        ),
        (
            json_type,
            format!(r#"{{"amount_micros": 1, "channel": "{}"}}"#, "c".repeat(33)),
            StatusCode::BAD_REQUEST,
            "INVALID_ARGUMENT",
        ),
        (
            json_type,
            r#"{"amount_micros": 1, "idempotency_key": "clé"}"#.into(),
            StatusCode::BAD_REQUEST,
            "INVALID_ARGUMENT",
        ),
        (
            json_type,
            format!(
                r#"{{"amount_micros": 1, "idempotency_key": "{}"}}"#,
                "k".repeat(129)
            ),
            StatusCode::BAD_REQUEST,
            "INVALID_ARGUMENT",
        ),
        (
            json_type,
            r#"[1000000]"#.into(),
            StatusCode::BAD_REQUEST,
            "INVALID_ARGUMENT",
        ),
        (
            json_type,
            r#"{"amount_micros": 1000000"#.into(),
            StatusCode::BAD_REQUEST,
            "INVALID_ARGUMENT",
        ),
        (
            json_type,
            "not json".into(),
            StatusCode::BAD_REQUEST,
            "INVALID_ARGUMENT",
        ),
        (
            json_type,
            String::new(),
            StatusCode::BAD_REQUEST,
            "INVALID_ARGUMENT",
        ),
        (
            Some("text/plain"),
            r#"{"amount_micros": 1000000}"#.into(),
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "UNSUPPORTED_MEDIA_TYPE",
        ),
        (
            Some("application/x-www-form-urlencoded"),
            "amount_micros=1000000".into(),
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "UNSUPPORTED_MEDIA_TYPE",
        ),
        (
            None,
            r#"{"amount_micros": 1000000}"#.into(),
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "UNSUPPORTED_MEDIA_TYPE",
        ),
        (
            json_type,
            format!(
                r#"{{"amount_micros": 1, "channel": "{}"}}"#,
                "x".repeat(64 * 1024)
            ),
            StatusCode::PAYLOAD_TOO_LARGE,
            "PAYLOAD_TOO_LARGE",
        ),
        // Just past listeners.max_body_bytes (8 KiB): refused before it is parsed; just under
        // it, parsed (and refused for what it says).
        (
            json_type,
            format!(
                r#"{{"amount_micros": 1, "channel": "{}"}}"#,
                "x".repeat(8 * 1024)
            ),
            StatusCode::PAYLOAD_TOO_LARGE,
            "PAYLOAD_TOO_LARGE",
        ),
        (
            json_type,
            format!(
                r#"{{"amount_micros": 1, "channel": "{}"}}"#,
                "x".repeat(8 * 1024 - 64)
            ),
            StatusCode::BAD_REQUEST,
            "INVALID_ARGUMENT",
        ),
    ];
    for (content_type, body, status, code) in cases {
        let shown = body.chars().take(80).collect::<String>();
        let answer = send(
            &stack,
            Method::POST,
            RECHARGE,
            Some(&bearer),
            content_type,
            Some(body),
        )
        .await;
        assert_eq!(
            error_code(&answer),
            (status, code),
            "{content_type:?} {shown}"
        );
    }
    assert_eq!(command_orders(&stack).await, 0);
    stack.cleanup().await;
}

#[tokio::test]
async fn unknown_routes_wrong_methods_and_bad_paths_answer_json() {
    let stack = spawn_stack().await;
    let user = new_user(&stack.tag);
    let bearer = format!("Bearer {}", stack.token(&user));
    let cases = [
        (
            Method::GET,
            "/nowhere",
            None,
            StatusCode::NOT_FOUND,
            "NOT_FOUND",
        ),
        (
            Method::GET,
            "/api/v1/billing/nowhere",
            Some(bearer.as_str()),
            StatusCode::NOT_FOUND,
            "NOT_FOUND",
        ),
        (
            Method::GET,
            "/api/v1/billing/account/",
            Some(bearer.as_str()),
            StatusCode::NOT_FOUND,
            "NOT_FOUND",
        ),
        (
            Method::DELETE,
            "/api/v1/billing/account",
            Some(bearer.as_str()),
            StatusCode::METHOD_NOT_ALLOWED,
            "METHOD_NOT_ALLOWED",
        ),
        (
            Method::POST,
            "/api/v1/billing/records",
            Some(bearer.as_str()),
            StatusCode::METHOD_NOT_ALLOWED,
            "METHOD_NOT_ALLOWED",
        ),
        (
            Method::GET,
            RECHARGE,
            Some(bearer.as_str()),
            StatusCode::METHOD_NOT_ALLOWED,
            "METHOD_NOT_ALLOWED",
        ),
        (
            Method::PUT,
            "/api/v1/billing/recharge/orders/RO1",
            Some(bearer.as_str()),
            StatusCode::METHOD_NOT_ALLOWED,
            "METHOD_NOT_ALLOWED",
        ),
        (
            Method::POST,
            "/healthz",
            None,
            StatusCode::METHOD_NOT_ALLOWED,
            "METHOD_NOT_ALLOWED",
        ),
    ];
    for (method, path, authorization, status, code) in cases {
        let answer = send(&stack, method.clone(), path, authorization, None, None).await;
        assert_eq!(error_code(&answer), (status, code), "{method} {path}");
    }
    // An order number the contract cannot hold.
    let too_long = format!("/api/v1/billing/recharge/orders/{}", "R".repeat(129));
    let answer = send(&stack, Method::GET, &too_long, Some(&bearer), None, None).await;
    assert_eq!(
        error_code(&answer),
        (StatusCode::BAD_REQUEST, "INVALID_ARGUMENT")
    );
    let answer = send(
        &stack,
        Method::GET,
        "/api/v1/billing/recharge/orders/%FF",
        Some(&bearer),
        None,
        None,
    )
    .await;
    assert_eq!(error_code(&answer).0, StatusCode::BAD_REQUEST);
    stack.cleanup().await;
}

#[tokio::test]
async fn probes_answer_json() {
    let stack = spawn_stack().await;
    let (status, body) = send(&stack, Method::GET, "/healthz", None, None, None).await;
    assert_eq!((status, body), (StatusCode::OK, json!({ "status": "ok" })));
    let (status, body) = send(&stack, Method::GET, "/readyz", None, None, None).await;
    assert_eq!(
        (status, body),
        (StatusCode::OK, json!({ "status": "ready" }))
    );
    stack.cleanup().await;
}

#[tokio::test]
async fn metrics_count_projected_events() {
    let stack = spawn_stack().await;
    let user = new_user("metered");
    stack
        .gateway()
        .await
        .deduct_quota(deduct(&user, 1, "counted"))
        .await
        .unwrap();
    let text = stack
        .eventually(std::time::Duration::from_secs(20), || async {
            let text = reqwest::get(stack.url("/metrics"))
                .await
                .ok()?
                .text()
                .await
                .ok()?;
            text.contains("billing_projection_events_applied_total")
                .then_some(text)
        })
        .await;
    assert!(
        text.contains("# TYPE billing_projection_events_applied_total counter"),
        "{text}"
    );
    stack.cleanup().await;
}
