//! Hostile input on every REST route: generated query strings, path segments, bodies and
//! `Authorization` headers (percent-encoded bytes that are not UTF-8, oversized, negative and
//! overflowing numbers, injection-shaped texts). Every answer is JSON, none is a 5xx, and nothing
//! changes on the command side.

use proptest::{
    prelude::*,
    strategy::{Strategy, ValueTree},
    test_runner::{Config, RngAlgorithm, TestRng, TestRunner},
};
use reqwest::{Method, StatusCode};

use crate::helpers::*;

/// Generated requests per route.
const CASES: usize = 500;

/// A value for a query parameter or a path segment, percent-encoded byte by byte where needed.
fn hostile_value() -> BoxedStrategy<String> {
    let bytes = prop_oneof![
        proptest::collection::vec(any::<u8>(), 0..64),
        Just(b"-1".to_vec()),
        Just(b"0".to_vec()),
        Just(b"101".to_vec()),
        Just(b"99999999999999999999999".to_vec()),
        Just(b"1e3".to_vec()),
        Just(b"' OR '1'='1".to_vec()),
        Just(b"2026-13-45T25:61:61Z".to_vec()),
        Just(b"2026-11-01T00:00:00+14:00".to_vec()),
        Just(b"deduct".to_vec()),
        Just(b"PAID".to_vec()),
        Just("日本".as_bytes().to_vec()),
        Just(vec![b'a'; 10_000]),
        Just(vec![0xff, 0xfe, 0x00]),
    ];
    bytes
        .prop_map(|bytes| {
            bytes
                .iter()
                .map(|b| {
                    if b.is_ascii_alphanumeric() || b"-._~".contains(b) {
                        (*b as char).to_string()
                    } else {
                        format!("%{b:02X}")
                    }
                })
                .collect()
        })
        .boxed()
}

fn query() -> BoxedStrategy<String> {
    let name = prop_oneof![
        Just("limit"),
        Just("cursor"),
        Just("type"),
        Just("from"),
        Just("to"),
        Just("status"),
        Just("min_version"),
        Just("group_by"),
        Just("x%00"),
    ];
    proptest::collection::vec((name, hostile_value()), 0..5)
        .prop_map(|pairs| {
            pairs
                .iter()
                .map(|(name, value)| format!("{name}={value}"))
                .collect::<Vec<_>>()
                .join("&")
        })
        .boxed()
}

/// A recharge body that must be refused (an amount out of range, the wrong types, not JSON).
fn invalid_recharge_body() -> BoxedStrategy<Vec<u8>> {
    prop_oneof![
        proptest::collection::vec(any::<u8>(), 0..512),
        (i64::MIN..=0).prop_map(|a| format!(r#"{{"amount_micros": {a}}}"#).into_bytes()),
        (1_000_000_000_001..=i64::MAX)
            .prop_map(|a| format!(r#"{{"amount_micros": {a}}}"#).into_bytes()),
        any::<String>().prop_map(|s| serde_json::json!({ "amount_micros": s })
            .to_string()
            .into_bytes()),
        (1_i64..=1_000_000, "[\u{0}-\u{1f}]{1,3}").prop_map(|(a, channel)| {
            serde_json::json!({ "amount_micros": a, "channel": channel })
                .to_string()
                .into_bytes()
        }),
        Just(format!("{}{}", "[".repeat(5_000), "]".repeat(5_000)).into_bytes()),
    ]
    .boxed()
}

/// An alert-settings body that must be refused: a threshold out of range or of the wrong type,
/// a webhook that is no http(s) URL, an unknown field, or not JSON.
fn invalid_alerts_body() -> BoxedStrategy<Vec<u8>> {
    prop_oneof![
        proptest::collection::vec(any::<u8>(), 0..512),
        (i64::MIN..0)
            .prop_map(|t| format!(r#"{{"low_balance_threshold_micros": {t}}}"#).into_bytes()),
        (1_000_000_000_000_001..=i64::MAX)
            .prop_map(|t| format!(r#"{{"low_balance_threshold_micros": {t}}}"#).into_bytes()),
        any::<String>().prop_map(|s| serde_json::json!({ "low_balance_threshold_micros": s })
            .to_string()
            .into_bytes()),
        "(ftp|file|javascript|gopher):[[:print:]]{0,40}".prop_map(|url| {
            serde_json::json!({ "low_balance_threshold_micros": 1, "webhook_url": url })
                .to_string()
                .into_bytes()
        }),
        "[a-z_]{1,12}"
            .prop_filter("not a field", |f| f != "webhook_url")
            .prop_map(|field| {
                serde_json::json!({ "low_balance_threshold_micros": 1, field: "x" })
                    .to_string()
                    .into_bytes()
            }),
    ]
    .boxed()
}

fn runner() -> TestRunner {
    TestRunner::new_with_rng(
        Config::default(),
        TestRng::deterministic_rng(RngAlgorithm::ChaCha),
    )
}

fn draw<T: std::fmt::Debug>(runner: &mut TestRunner, strategy: &BoxedStrategy<T>) -> T {
    strategy.new_tree(runner).expect("a value").current()
}

#[tokio::test]
async fn hostile_requests_on_every_route_get_json_answers_and_change_nothing() {
    let stack = spawn_stack().await;
    let user = new_user(&stack.tag);
    recharge(&stack, &user, 5_000_000).await;
    let count = |table: &'static str| {
        let db = stack.db.clone();
        async move {
            sqlx::query_scalar::<_, i64>(sqlx::AssertSqlSafe(format!(
                "SELECT COUNT(*) FROM {table}"
            )))
            .fetch_one(&db)
            .await
            .unwrap()
        }
    };
    let before = (
        count("recharge_orders").await,
        count("ledger").await,
        count("alert_settings").await,
    );
    let token = format!("Bearer {}", stack.token(&user));
    let hostile_tokens = prop_oneof![
        Just(String::new()),
        Just("Bearer".to_owned()),
        Just("Basic dXNlcjpwYXNz".to_owned()),
        Just(format!("Bearer {}", token_with("not-the-secret", &user, chrono::Utc::now() + chrono::Duration::hours(1)))),
        Just(format!("Bearer {}", stack.token(&user).replace('.', ".."))),
        // alg none, another user's claims.
        Just("Bearer eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0.eyJzdWIiOiJhZG1pbiIsImV4cCI6OTk5OTk5OTk5OX0.".to_owned()),
        "Bearer [[:print:]]{0,200}",
    ]
    .boxed();
    let (queries, values, bodies, alert_bodies) = (
        query(),
        hostile_value(),
        invalid_recharge_body(),
        invalid_alerts_body(),
    );
    let mut runner = runner();
    let client = reqwest::Client::new();
    let mut answers = Vec::new();
    for i in 0..CASES * 8 {
        let (method, path, body) = match i % 8 {
            0 => (
                Method::GET,
                format!("/api/v1/billing/account?{}", draw(&mut runner, &queries)),
                None,
            ),
            1 => (
                Method::GET,
                format!("/api/v1/billing/records?{}", draw(&mut runner, &queries)),
                None,
            ),
            2 => (
                Method::GET,
                format!(
                    "/api/v1/billing/recharge/orders?{}",
                    draw(&mut runner, &queries)
                ),
                None,
            ),
            3 => (
                Method::GET,
                format!(
                    "/api/v1/billing/recharge/orders/{}",
                    draw(&mut runner, &values)
                ),
                None,
            ),
            4 => (
                Method::GET,
                format!("/api/v1/billing/usage?{}", draw(&mut runner, &queries)),
                None,
            ),
            5 => (
                Method::GET,
                format!(
                    "/api/v1/billing/records/export?{}",
                    draw(&mut runner, &queries)
                ),
                None,
            ),
            6 => (
                Method::PUT,
                "/api/v1/billing/alerts".to_owned(),
                Some(draw(&mut runner, &alert_bodies)),
            ),
            _ => (
                Method::POST,
                "/api/v1/billing/recharge".to_owned(),
                Some(draw(&mut runner, &bodies)),
            ),
        };
        // One request in four with a hostile Authorization header.
        let authorization = if i % 4 == 3 {
            draw(&mut runner, &hostile_tokens)
        } else {
            token.clone()
        };
        let mut request = client
            .request(method.clone(), stack.url(&path))
            .header("content-type", "application/json");
        if let Ok(value) = reqwest::header::HeaderValue::from_str(&authorization) {
            request = request.header("authorization", value);
        }
        if let Some(body) = body {
            request = request.body(body);
        }
        let response = request.send().await.unwrap();
        let status = response.status();
        // Errors are JSON; an export that succeeds is CSV.
        let csv = response
            .headers()
            .get("content-type")
            .is_some_and(|t| t.as_bytes().starts_with(b"text/csv"));
        let well_formed =
            if status.is_success() && path.starts_with("/api/v1/billing/records/export") {
                csv
            } else {
                response.json::<serde_json::Value>().await.is_ok()
            };
        answers.push((method, path, authorization == token, status, well_formed));
    }
    let unexpected: Vec<_> = answers
        .iter()
        .filter(|(method, _, authorized, status, json)| {
            let allowed = if !authorized {
                // A path no route matches (an empty order number) is unknown before anyone
                // is asked who they are.
                *status == StatusCode::UNAUTHORIZED || *status == StatusCode::NOT_FOUND
            } else if *method == Method::POST || *method == Method::PUT {
                [
                    StatusCode::BAD_REQUEST,
                    StatusCode::PAYLOAD_TOO_LARGE,
                    StatusCode::UNSUPPORTED_MEDIA_TYPE,
                ]
                .contains(status)
            } else {
                status.is_success() || status.is_client_error()
            };
            !(allowed && *json)
        })
        .collect();
    assert!(
        unexpected.is_empty(),
        "{} of {} answers unexpected, e.g. {:?}",
        unexpected.len(),
        answers.len(),
        &unexpected[..unexpected.len().min(5)]
    );
    let refused = answers.iter().filter(|a| a.3.is_client_error()).count();
    assert!(
        refused > answers.len() / 2,
        "most hostile requests are refused"
    );
    assert_eq!(
        (
            count("recharge_orders").await,
            count("ledger").await,
            count("alert_settings").await
        ),
        before,
        "nothing changed"
    );
    stack.cleanup().await;
}
