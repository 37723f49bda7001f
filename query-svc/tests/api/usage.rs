//! `GET /api/v1/billing/usage`: charges summed per day of the billing time zone or per API, for
//! the token's user only.

use reqwest::StatusCode;
use serde_json::{Value, json};
use shared::{clock::Clock, proto::v1 as pb};

use crate::{helpers::*, projection::projected, support::*};

const PATH: &str = "/api/v1/billing/usage";

async fn charge(stack: &Stack, user: &str, amount: i64, api: &str, request_id: &str) {
    stack
        .gateway()
        .await
        .deduct_quota(pb::DeductQuotaRequest {
            user_id: user.into(),
            amount_micros: amount,
            request_id: request_id.into(),
            api_id: api.into(),
            description: String::new(),
            ..Default::default()
        })
        .await
        .unwrap();
}

fn bucket(key: &str, calls: i64, amount: i64) -> Value {
    json!({
        "key": key,
        "calls": calls,
        "amount_micros": amount,
        "free_micros": amount,
        "balance_micros": 0,
    })
}

#[tokio::test]
async fn charges_are_summed_per_day_of_the_billing_zone_and_per_api() {
    // 23:30 on 24 November in Shanghai, then 00:30 on the 25th.
    let clock = Clock::manual(utc("2026-11-24T15:30:00Z"));
    let stack = spawn_stack_with(clock.clone(), &[]).await;
    let (user, other) = (new_user(&stack.tag), new_user(&stack.tag));
    charge(&stack, &user, CNY, "api.a", "u-1").await;
    charge(&stack, &user, 2 * CNY, "api.b", "u-2").await;
    charge(&stack, &other, 7 * CNY, "api.a", "o-1").await;
    clock.set(utc("2026-11-24T16:30:00Z"));
    charge(&stack, &user, 3 * CNY, "api.a", "u-3").await;
    for who in [&user, &other] {
        stack
            .eventually(std::time::Duration::from_secs(20), || async {
                projected(&stack, who).await.then_some(())
            })
            .await;
    }
    let token = stack.token(&user);

    let (status, body) = stack.get(PATH, &token).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(
        body,
        json!({
            "from": "2026-10-27",
            "to": "2026-11-26",
            "group_by": "day",
            "buckets": [bucket("2026-11-24", 2, 3 * CNY), bucket("2026-11-25", 1, 3 * CNY)],
        })
    );

    // An API's bucket sums the units of its priced calls too: none here.
    let by_api = |key, calls, amount| {
        let mut bucket = bucket(key, calls, amount);
        bucket["units"] = json!({});
        bucket
    };
    let (_, body) = stack.get(&format!("{PATH}?group_by=api"), &token).await;
    assert_eq!(
        body["buckets"],
        json!([by_api("api.a", 2, 4 * CNY), by_api("api.b", 1, 2 * CNY)])
    );

    let (_, body) = stack
        .get(&format!("{PATH}?from=2026-11-25&to=2026-11-26"), &token)
        .await;
    assert_eq!(body["buckets"], json!([bucket("2026-11-25", 1, 3 * CNY)]));

    let (_, body) = stack
        .get(&format!("{PATH}?from=2026-11-01&to=2026-11-24"), &token)
        .await;
    assert_eq!(body["buckets"], json!([]));
    stack.cleanup().await;
}

#[tokio::test]
async fn a_bad_date_or_grouping_is_a_400_and_no_token_a_401() {
    let stack = spawn_stack().await;
    let token = stack.token(&new_user(&stack.tag));
    for query in [
        "?group_by=week",
        "?from=yesterday",
        "?from=2026-1-05",
        "?to=2026-11-01T00:00:00Z",
    ] {
        let answer = stack.get(&format!("{PATH}{query}"), &token).await;
        assert_eq!(
            error_code(&answer),
            (StatusCode::BAD_REQUEST, "INVALID_ARGUMENT"),
            "{query}"
        );
    }
    // Any window of dates is taken: one whose from is after its to holds no day.
    for (query, from, to) in [
        ("?from=2026-11-02&to=2026-11-01", "2026-11-02", "2026-11-01"),
        ("?from=0001-01-01&to=9999-12-31", "0001-01-01", "9999-12-31"),
    ] {
        let (status, body) = stack.get(&format!("{PATH}{query}"), &token).await;
        assert_eq!(status, StatusCode::OK, "{query}: {body}");
        assert_eq!(
            (body["from"].as_str(), body["to"].as_str()),
            (Some(from), Some(to))
        );
        assert_eq!(body["buckets"], json!([]), "{query}");
    }
    let (status, _) = stack.get(PATH, "not-a-token").await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    stack.cleanup().await;
}
