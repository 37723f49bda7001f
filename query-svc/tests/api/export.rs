//! `GET /api/v1/billing/records/export`: the listing's records as CSV, streamed with bounded
//! memory, in the same order and with the same values as the paginated listing.

use std::hash::{DefaultHasher, Hash, Hasher};

use reqwest::StatusCode;
use serde_json::Value;

use crate::{helpers::*, support::*};

const EXPORT: &str = "/api/v1/billing/records/export";

/// Seeds `n` deduct records for `user`, versions 1..=n, in one statement.
async fn seed_many(stack: &Stack, user: &str, n: u32) {
    let sql = format!(
        "INSERT INTO rm_records (record_id, user_id, version, type, amount_micros, free_micros, \
         balance_micros, balance_after_micros, free_remaining_after_micros, api_id, request_id, \
         order_no, period, created_at) \
         SELECT UUID(), ?, seq, 'deduct', seq, seq, 0, 1000 * seq, 0, 'api.bulk', \
         CONCAT('req-', seq), NULL, '2026-11', \
         TIMESTAMPADD(SECOND, seq, '2026-11-01 00:00:00') FROM seq_1_to_{n}"
    );
    sqlx::query(sqlx::AssertSqlSafe(sql))
        .bind(user)
        .execute(&stack.db)
        .await
        .unwrap();
}

/// The process's peak resident memory so far, in kB.
fn peak_memory_kb() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmHWM:"))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

/// What the check compares of a record, in order: its id, version, type and amount.
fn fold(hasher: &mut DefaultHasher, record_id: &str, version: i64, kind: &str, amount: i64) {
    (record_id, version, kind, amount).hash(hasher);
}

/// Streams the export, folding each row into a hash; returns rows, bytes and the hash.
async fn stream_export(stack: &Stack, token: &str, query: &str) -> (u64, u64, u64) {
    let mut response = reqwest::Client::new()
        .get(stack.url(&format!("{EXPORT}{query}")))
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(
        response.headers()["content-type"],
        "text/csv; charset=utf-8"
    );
    let (mut carry, mut rows, mut bytes) = (String::new(), 0_u64, 0_u64);
    let mut header_seen = false;
    let mut hasher = DefaultHasher::new();
    while let Some(chunk) = response.chunk().await.unwrap() {
        bytes += chunk.len() as u64;
        carry.push_str(std::str::from_utf8(&chunk).unwrap());
        while let Some(end) = carry.find("\r\n") {
            let line: String = carry.drain(..end + 2).collect();
            let fields: Vec<&str> = line.trim_end().split(',').collect();
            if !header_seen {
                assert_eq!(fields[0], "record_id");
                header_seen = true;
                continue;
            }
            fold(
                &mut hasher,
                fields[0],
                fields[11].parse().unwrap(),
                fields[1],
                fields[2].parse().unwrap(),
            );
            rows += 1;
        }
    }
    assert!(carry.is_empty(), "the last line is complete");
    (rows, bytes, hasher.finish())
}

/// Walks the paginated listing, folding each record into a hash; returns rows and the hash.
async fn walk_listing(stack: &Stack, token: &str, query: &str) -> (u64, u64) {
    let (mut rows, mut hasher) = (0_u64, DefaultHasher::new());
    let mut cursor: Option<String> = None;
    loop {
        let after = cursor
            .as_ref()
            .map(|c| format!("&cursor={c}"))
            .unwrap_or_default();
        let (status, page) = stack
            .get(
                &format!("/api/v1/billing/records?limit=100{query}{after}"),
                token,
            )
            .await;
        assert_eq!(status, StatusCode::OK);
        for record in page["records"].as_array().unwrap() {
            fold(
                &mut hasher,
                record["record_id"].as_str().unwrap(),
                record["version"].as_i64().unwrap(),
                record["type"].as_str().unwrap(),
                record["amount_micros"].as_i64().unwrap(),
            );
            rows += 1;
        }
        match &page["next_cursor"] {
            Value::String(next) => cursor = Some(next.clone()),
            _ => return (rows, hasher.finish()),
        }
    }
}

#[tokio::test]
async fn a_hundred_thousand_records_stream_with_bounded_memory_and_match_the_listing() {
    let stack = spawn_stack().await;
    let user = new_user(&stack.tag);
    seed_many(&stack, &user, 100_000).await;
    let token = stack.token(&user);

    let before = peak_memory_kb();
    let (rows, bytes, exported) = stream_export(&stack, &token, "").await;
    let grown = peak_memory_kb().saturating_sub(before);
    assert_eq!(rows, 100_000);
    // The whole file is far larger than what serving it took: it was never held at once.
    assert!(bytes > 10_000_000, "{bytes} bytes");
    assert!(
        grown * 1024 < bytes / 2,
        "peak memory grew by {grown} kB while {bytes} bytes were served"
    );

    let (listed, walked) = walk_listing(&stack, &token, "").await;
    assert_eq!(
        (listed, walked),
        (rows, exported),
        "the export is the listing"
    );

    // The same filters as the listing.
    let window = "&from=2026-11-01T01:00:00Z&to=2026-11-01T02:00:00Z";
    let (rows, _, exported) = stream_export(&stack, &token, &window.replacen('&', "?", 1)).await;
    let (listed, walked) = walk_listing(&stack, &token, window).await;
    assert_eq!(rows, 3600);
    assert_eq!((listed, walked), (rows, exported));
    stack.cleanup().await;
}

#[tokio::test]
async fn text_is_quoted_formulas_are_defused_and_bad_filters_refused() {
    let stack = spawn_stack().await;
    let user = new_user(&stack.tag);
    let record_id = seed_record(
        &stack,
        RecordSeed {
            user: &user,
            version: 1,
            kind: "deduct",
            amount: 5,
            created_at: utc("2026-11-02T00:00:00Z"),
        },
    )
    .await;
    sqlx::query("UPDATE rm_records SET api_id = '=HYPERLINK(\"x\"),y' WHERE record_id = ?")
        .bind(&record_id)
        .execute(&stack.db)
        .await
        .unwrap();
    let token = stack.token(&user);
    let csv = reqwest::Client::new()
        .get(stack.url(EXPORT))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let lines: Vec<&str> = csv.split("\r\n").collect();
    assert_eq!(
        lines.len(),
        3,
        "header, one record, nothing after the last break: {csv:?}"
    );
    assert!(
        lines[1].contains(",\"'=HYPERLINK(\"\"x\"\"),y\",req-1,"),
        "{}",
        lines[1]
    );
    let answer = stack.get(&format!("{EXPORT}?type=bogus"), &token).await;
    assert_eq!(
        error_code(&answer),
        (StatusCode::BAD_REQUEST, "INVALID_ARGUMENT")
    );
    let (status, _) = stack.get(EXPORT, "not-a-token").await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    stack.cleanup().await;
}
