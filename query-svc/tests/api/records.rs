//! `GET /api/v1/billing/records`: newest first by version, keyset pages that visit every record
//! exactly once, filters by type and by `[from, to)`, and a clear 400 for every bad parameter.

use chrono::{DateTime, Duration, Utc};
use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::{helpers::*, support::*};

const KINDS: [&str; 4] = ["deduct", "recharge", "adjust", "free_grant"];

fn base() -> DateTime<Utc> {
    utc("2026-11-10T00:00:00Z")
}

/// Record `version` of the seeded history: created `version` minutes after [`base`], of a type
/// cycling through [`KINDS`].
fn kind_of(version: i64) -> &'static str {
    KINDS[(version % 4) as usize]
}

async fn seed_history(stack: &Stack, user: &str, count: i64) {
    for version in 1..=count {
        let kind = kind_of(version);
        seed_record(
            stack,
            RecordSeed {
                user,
                version,
                kind,
                amount: if kind == "adjust" && version % 8 == 2 {
                    -version * 1_000
                } else {
                    version * 1_000
                },
                created_at: base() + Duration::minutes(version),
            },
        )
        .await;
    }
}

/// Every version a walk through the pages of `query` visits, and how many pages it took.
async fn walk(stack: &Stack, token: &str, query: &str) -> (Vec<i64>, usize) {
    let mut versions = Vec::new();
    let mut pages = 0;
    let mut cursor: Option<String> = None;
    loop {
        let path = match &cursor {
            Some(cursor) => format!("/api/v1/billing/records?{query}&cursor={cursor}"),
            None => format!("/api/v1/billing/records?{query}"),
        };
        let (status, body) = stack.get(&path, token).await;
        assert_eq!(status, StatusCode::OK, "{path}: {body}");
        pages += 1;
        versions.extend(
            body["records"]
                .as_array()
                .unwrap()
                .iter()
                .map(|r| r["version"].as_i64().unwrap()),
        );
        match &body["next_cursor"] {
            Value::String(next) => cursor = Some(next.clone()),
            Value::Null => return (versions, pages),
            other => panic!("next_cursor is a string or null, got {other}"),
        }
        assert!(pages < 100, "the walk ends");
    }
}

#[tokio::test]
async fn walking_the_cursor_visits_every_record_once_newest_first() {
    let stack = spawn_stack().await;
    let (user, other) = (new_user(&stack.tag), new_user(&stack.tag));
    seed_history(&stack, &user, 45).await;
    seed_history(&stack, &other, 5).await;
    let token = stack.token(&user);

    let (versions, pages) = walk(&stack, &token, "limit=7").await;
    assert_eq!(versions, (1..=45).rev().collect::<Vec<_>>());
    assert_eq!(pages, 7);

    // Exactly a page's worth: the last full page says there is no more.
    let (versions, pages) = walk(&stack, &token, "limit=9").await;
    assert_eq!((versions.len(), pages), (45, 5));

    let (_, body) = stack.get("/api/v1/billing/records", &token).await;
    assert_eq!(body["records"].as_array().unwrap().len(), 20);
    assert_eq!(body["records"][0]["version"], json!(45));
    stack.cleanup().await;
}

#[tokio::test]
async fn records_are_shown_as_the_contract_writes_them() {
    let stack = spawn_stack().await;
    let user = new_user(&stack.tag);
    seed_history(&stack, &user, 4).await;
    let created = |version| {
        (base() + Duration::minutes(version)).to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
    };
    let (_, body) = stack
        .get("/api/v1/billing/records", &stack.token(&user))
        .await;
    let records = body["records"].as_array().unwrap();
    let record_ids: Vec<&str> = records
        .iter()
        .map(|r| r["record_id"].as_str().unwrap())
        .collect();
    assert_eq!(
        records[0],
        json!({
            "record_id": record_ids[0], "type": "deduct", "amount_micros": 4_000,
            "free_micros": 2_000, "balance_micros": 2_000, "balance_after_micros": 4_000,
            "free_remaining_after_micros": 8_000, "api_id": "api.chat", "request_id": "req-4",
            "order_no": null, "period": "2026-11", "version": 4, "created_at": created(4),
            "usage": null, "price_list": null, "price_version": null,
        })
    );
    assert_eq!(
        records[1],
        json!({
            "record_id": record_ids[1], "type": "free_grant", "amount_micros": 3_000,
            "free_micros": 3_000, "balance_micros": 0, "balance_after_micros": 3_000,
            "free_remaining_after_micros": 6_000, "api_id": null, "request_id": null,
            "order_no": null, "period": "2026-11", "version": 3, "created_at": created(3),
            "usage": null, "price_list": null, "price_version": null,
        })
    );
    // A debit adjustment keeps its sign.
    assert_eq!(
        (&records[2]["type"], &records[2]["amount_micros"]),
        (&json!("adjust"), &json!(-2_000))
    );
    assert_eq!(
        (&records[3]["type"], &records[3]["order_no"]),
        (&json!("recharge"), &json!("RO1"))
    );
    stack.cleanup().await;
}

#[tokio::test]
async fn filters_by_type_and_time_window() {
    let stack = spawn_stack().await;
    let user = new_user(&stack.tag);
    seed_history(&stack, &user, 45).await;
    let token = stack.token(&user);

    let (versions, _) = walk(&stack, &token, "type=deduct&limit=4").await;
    let deducts: Vec<i64> = (1..=45).rev().filter(|v| kind_of(*v) == "deduct").collect();
    assert_eq!(versions, deducts);

    // [from, to): minute 10 is in, minute 20 is out; the offset form is the same instant.
    let window = "from=2026-11-10T08:10:00%2B08:00&to=2026-11-10T00:20:00Z";
    let (versions, _) = walk(&stack, &token, &format!("{window}&limit=3")).await;
    assert_eq!(versions, (10..20).rev().collect::<Vec<_>>());

    let (versions, _) = walk(&stack, &token, &format!("{window}&type=recharge&limit=1")).await;
    assert_eq!(
        versions,
        (10..20)
            .rev()
            .filter(|v| kind_of(*v) == "recharge")
            .collect::<Vec<_>>()
    );

    let (versions, _) = walk(&stack, &token, "from=2026-11-10T00:40:00Z").await;
    assert_eq!(versions, (40..=45).rev().collect::<Vec<_>>());
    let (versions, _) = walk(&stack, &token, "to=2026-11-10T00:03:00Z").await;
    assert_eq!(versions, vec![2, 1]);
    // An empty window is an empty page.
    let (versions, pages) = walk(
        &stack,
        &token,
        "from=2026-11-10T00:05:00Z&to=2026-11-10T00:05:00Z",
    )
    .await;
    assert_eq!((versions.len(), pages), (0, 1));
    stack.cleanup().await;
}

#[tokio::test]
async fn a_cursor_continues_below_its_version_whatever_the_filters() {
    let stack = spawn_stack().await;
    let user = new_user(&stack.tag);
    seed_history(&stack, &user, 12).await;
    let token = stack.token(&user);
    let (_, all) = stack.get("/api/v1/billing/records?limit=100", &token).await;
    let all = all["records"].as_array().unwrap().clone();
    let (_, first) = stack.get("/api/v1/billing/records?limit=4", &token).await;
    let cursor = first["next_cursor"].as_str().unwrap().to_owned();
    let after: i64 = cursor
        .parse()
        .expect("a records cursor is an account version");
    assert_eq!(Some(after), first["records"][3]["version"].as_i64());
    for filter in [
        "",
        "type=deduct&",
        "type=free_grant&",
        "to=2999-01-01T00:00:00Z&",
    ] {
        let (status, page) = stack
            .get(
                &format!("/api/v1/billing/records?{filter}limit=100&cursor={cursor}"),
                &token,
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{filter}: {page}");
        let shown: Vec<i64> = page["records"]
            .as_array()
            .unwrap()
            .iter()
            .map(|record| record["version"].as_i64().unwrap())
            .collect();
        let kind = filter
            .strip_prefix("type=")
            .map(|rest| rest.trim_end_matches('&'));
        let expected: Vec<i64> = all
            .iter()
            .filter(|record| record["version"].as_i64().unwrap() < after)
            .filter(|record| kind.is_none_or(|kind| record["type"] == kind))
            .map(|record| record["version"].as_i64().unwrap())
            .collect();
        assert_eq!(shown, expected, "{filter}");
    }
    // A records cursor is no position of the orders listing.
    let answer = stack
        .get(
            &format!("/api/v1/billing/recharge/orders?cursor={cursor}"),
            &token,
        )
        .await;
    assert_eq!(
        error_code(&answer),
        (StatusCode::BAD_REQUEST, "INVALID_ARGUMENT")
    );
    stack.cleanup().await;
}

#[tokio::test]
async fn bad_parameters_get_a_400_with_a_json_error() {
    let stack = spawn_stack().await;
    let user = new_user(&stack.tag);
    let token = stack.token(&user);
    // An unknown type is refused with every type there is.
    let (status, body) = stack
        .get("/api/v1/billing/records?type=bonus", &token)
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let message = body["error"]["message"].as_str().unwrap_or_default();
    for kind in [
        "deduct",
        "recharge",
        "free_grant",
        "adjust",
        "plan",
        "refund",
        "hold",
        "release",
    ] {
        assert!(message.contains(kind), "{kind}: {message}");
    }
    for query in [
        "limit=0",
        "limit=101",
        "limit=1000",
        "limit=abc",
        "limit=-1",
        "limit=2.5",
        "cursor=abc",
        "cursor=%21%21%21",
        "cursor=cmVjb3Jkcy52MQ",
        "type=bogus",
        "type=Deduct",
        "from=yesterday",
        "from=2026-11-10",
        "to=2026-13-01T00:00:00Z",
        "to=2026-11-10T00:00:00",
        "from=2026-11-10 00:00:00Z",
        "cursor=012",
        "cursor=-1",
        "cursor=1000000000000000000",
        "limit=1&limit=2",
    ] {
        let answer = stack
            .get(&format!("/api/v1/billing/records?{query}"), &token)
            .await;
        assert_eq!(
            error_code(&answer),
            (StatusCode::BAD_REQUEST, "INVALID_ARGUMENT"),
            "{query}"
        );
    }
    for query in [
        "limit=1",
        "limit=100",
        "type=free_grant",
        "limit=&type=",
        // From after to is an empty window, and bounds beyond MySQL's years are taken.
        "from=2026-11-10T00:00:01Z&to=2026-11-10T00:00:00Z",
        "from=0790-06-28T03:06:38Z&to=9999-12-31T23:59:59.999999999-23:59",
        "cursor=999999999999999999",
    ] {
        let (status, body) = stack
            .get(&format!("/api/v1/billing/records?{query}"), &token)
            .await;
        assert_eq!(status, StatusCode::OK, "{query}");
        assert_eq!(body, json!({ "records": [], "next_cursor": null }));
    }
    stack.cleanup().await;
}
