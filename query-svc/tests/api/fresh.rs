//! `min_version` read-your-writes on the account and records: a read waits (up to 2 s) for the
//! read model to reach the version the caller's own change produced, and says when it could not.

use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::Value;

use crate::{helpers::*, support::*};

/// GET with the user's token: status, `X-Billing-Stale`, body.
async fn read(stack: &Stack, path: &str, user: &str) -> (StatusCode, Option<String>, Value) {
    let response = reqwest::Client::new()
        .get(stack.url(path))
        .bearer_auth(stack.token(user))
        .send()
        .await
        .unwrap();
    let stale = response
        .headers()
        .get("x-billing-stale")
        .map(|value| value.to_str().unwrap().to_owned());
    (response.status(), stale, response.json().await.unwrap())
}

async fn charge(stack: &Stack, user: &str, request_id: &str) -> i64 {
    stack
        .gateway()
        .await
        .deduct_quota(deduct(user, CNY, request_id))
        .await
        .unwrap()
        .into_inner()
        .account
        .unwrap()
        .version
}

#[tokio::test]
async fn a_read_waits_for_the_version_of_the_caller_s_own_change() {
    let stack = spawn_stack().await;
    let user = new_user(&stack.tag);
    let first = charge(&stack, &user, "f-1").await;

    // Asked before the change exists: the read waits for it.
    let wanted = first + 1;
    let asked = Instant::now();
    let reading = {
        let (stack, user) = (&stack, &user);
        async move {
            read(
                stack,
                &format!("/api/v1/billing/account?min_version={wanted}"),
                user,
            )
            .await
        }
    };
    let changing = async {
        tokio::time::sleep(Duration::from_millis(300)).await;
        charge(&stack, &user, "f-2").await
    };
    let ((status, stale, account), second) = tokio::join!(reading, changing);
    assert_eq!(second, wanted);
    assert_eq!((status, stale), (StatusCode::OK, None), "{account}");
    assert!(account["version"].as_i64().unwrap() >= wanted, "{account}");
    assert!(asked.elapsed() >= Duration::from_millis(300));

    let (status, stale, page) = read(
        &stack,
        &format!("/api/v1/billing/records?min_version={wanted}"),
        &user,
    )
    .await;
    assert_eq!((status, stale), (StatusCode::OK, None));
    let versions: Vec<i64> = page["records"]
        .as_array()
        .unwrap()
        .iter()
        .map(|record| record["version"].as_i64().unwrap())
        .collect();
    assert_eq!(versions.first(), Some(&wanted), "{page}");
    stack.cleanup().await;
}

#[tokio::test]
async fn a_version_not_reached_within_two_seconds_is_answered_stale() {
    let stack = spawn_stack().await;
    let user = new_user(&stack.tag);
    let version = charge(&stack, &user, "s-1").await;
    for path in ["/api/v1/billing/account", "/api/v1/billing/records"] {
        let asked = Instant::now();
        let (status, stale, body) = read(
            &stack,
            &format!("{path}?min_version={}", version + 100),
            &user,
        )
        .await;
        let waited = asked.elapsed();
        assert_eq!(
            (status, stale.as_deref()),
            (StatusCode::OK, Some("true")),
            "{body}"
        );
        assert!(
            waited >= Duration::from_millis(1900) && waited < Duration::from_secs(4),
            "{path}: {waited:?}"
        );
    }
    let (_, stale, account) = read(&stack, "/api/v1/billing/account", &user).await;
    assert_eq!(stale, None);
    assert!(account["version"].as_i64().unwrap() <= version);
    for bad in ["-1", "x", "1.0", "99999999999999999999"] {
        let answer = stack
            .get(
                &format!("/api/v1/billing/account?min_version={bad}"),
                &stack.token(&user),
            )
            .await;
        assert_eq!(
            error_code(&answer),
            (StatusCode::BAD_REQUEST, "INVALID_ARGUMENT"),
            "{bad}"
        );
    }
    stack.cleanup().await;
}
