//! Priced charges in the read model: records show their usage and the version that priced them,
//! usage per API sums units per meter, the caller sees their prices, and rebuild and reconcile
//! carry all of it.

use std::time::Duration;

use billing_ops::{rebuild, reconcile};
use chrono::TimeDelta;
use reqwest::StatusCode;
use serde_json::json;
use shared::{clock::Clock, period::BillingZone, proto::v1 as pb};

use crate::{helpers::*, projection::until_projected, support::*};

const WAIT: Duration = Duration::from_secs(20);

fn price(api_id: &str, meter: &str, price_micros: i64, per_units: i64) -> pb::Price {
    pb::Price {
        api_id: api_id.into(),
        meter: meter.into(),
        price_micros,
        per_units,
    }
}

fn usage(lines: &[(&str, i64)]) -> Vec<pb::Usage> {
    lines
        .iter()
        .map(|(meter, quantity)| pb::Usage {
            meter: (*meter).into(),
            quantity: *quantity,
        })
        .collect()
}

#[tokio::test]
async fn priced_charges_show_their_usage_and_price_everywhere_the_read_model_does() {
    let clock = Clock::manual(utc("2026-11-24T04:00:00Z"));
    let stack = spawn_stack_with(clock.clone(), &[]).await;
    let user = new_user(&stack.tag);
    recharge(&stack, &user, 20 * CNY).await;
    let token = stack.token(&user);

    // Nothing published yet: the list is named, with nothing in effect.
    let (status, body) = stack.get("/api/v1/billing/prices", &token).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(
        body,
        json!({"name": "default", "version": null, "currency": "CNY", "effective_from": null,
               "prices": [], "scheduled": []})
    );

    let at = clock.now() + TimeDelta::seconds(5);
    let mut ops = stack.ops().await;
    ops.publish_price_list(pb::PublishPriceListRequest {
        name: "default".into(),
        effective_from_ms: at.timestamp_millis(),
        prices: vec![
            price("chat", "call", 2_000, 1),
            price("chat", "output_tokens", 1_500_000, 1_000_000),
        ],
        publish_id: "v1".into(),
        actor: "pricing".into(),
    })
    .await
    .unwrap();
    let later = at + TimeDelta::days(7);
    ops.publish_price_list(pb::PublishPriceListRequest {
        name: "default".into(),
        effective_from_ms: later.timestamp_millis(),
        prices: vec![price("chat", "call", 3_000, 1)],
        publish_id: "v2".into(),
        actor: "pricing".into(),
    })
    .await
    .unwrap();
    clock.set(at);
    let (_, body) = stack.get("/api/v1/billing/prices", &token).await;
    assert_eq!(
        body,
        json!({
            "name": "default", "version": 1, "currency": "CNY",
            "effective_from": "2026-11-24T04:00:05.000000Z",
            "prices": [
                {"api_id": "chat", "meter": "call", "price_micros": 2000, "per_units": 1},
                {"api_id": "chat", "meter": "output_tokens", "price_micros": 1500000, "per_units": 1000000},
            ],
            "scheduled": [{
                "name": "default", "version": 2, "currency": "CNY",
                "effective_from": "2026-12-01T04:00:05.000000Z",
                "prices": [{"api_id": "chat", "meter": "call", "price_micros": 3000, "per_units": 1}],
            }],
        })
    );

    let mut gateway = stack.gateway().await;
    for (request_id, lines) in [
        ("a", [("call", 1), ("output_tokens", 1_001)]),
        ("b", [("call", 2), ("output_tokens", 3)]),
    ] {
        gateway
            .deduct_quota(pb::DeductQuotaRequest {
                user_id: user.clone(),
                request_id: request_id.into(),
                api_id: "chat".into(),
                usage: usage(&lines),
                ..Default::default()
            })
            .await
            .unwrap();
    }
    gateway
        .deduct_quota(deduct(&user, 5, "plain"))
        .await
        .unwrap();
    until_projected(&stack, &user, WAIT).await;

    let (_, page) = stack
        .get("/api/v1/billing/records?type=deduct", &token)
        .await;
    let records = page["records"].as_array().unwrap().clone();
    let shown: Vec<_> = records
        .iter()
        .map(|r| {
            (
                r["request_id"].clone(),
                r["amount_micros"].clone(),
                r["usage"].clone(),
                r["price_list"].clone(),
                r["price_version"].clone(),
            )
        })
        .collect();
    assert_eq!(
        shown,
        [
            (
                json!("plain"),
                json!(5),
                json!(null),
                json!(null),
                json!(null)
            ),
            // ⌈2 × 2000 + 3 × 1.5⌉ = 4005
            (
                json!("b"),
                json!(4_005),
                json!([{"meter": "call", "quantity": 2}, {"meter": "output_tokens", "quantity": 3}]),
                json!("default"),
                json!(1)
            ),
            // ⌈2000 + 1001 × 1.5⌉ = 3502
            (
                json!("a"),
                json!(3_502),
                json!([{"meter": "call", "quantity": 1}, {"meter": "output_tokens", "quantity": 1001}]),
                json!("default"),
                json!(1)
            ),
        ]
    );
    let (_, body) = stack
        .get("/api/v1/billing/usage?group_by=api", &token)
        .await;
    let buckets = body["buckets"].as_array().unwrap();
    let chat = buckets.iter().find(|b| b["key"] == "chat").unwrap();
    assert_eq!(chat["units"], json!({"call": 3, "output_tokens": 1_004}));
    assert_eq!(chat["amount_micros"], json!(7_507));
    let (_, by_day) = stack.get("/api/v1/billing/usage", &token).await;
    assert!(by_day["buckets"][0].get("units").is_none(), "{by_day}");

    // The CSV export carries them too.
    let csv = reqwest::Client::new()
        .get(stack.url("/api/v1/billing/records/export?type=deduct"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        csv.lines()
            .next()
            .unwrap()
            .ends_with(",usage,price_list,price_version")
    );
    assert!(
        csv.contains(",call=1;output_tokens=1001,default,1\r\n"),
        "{csv}"
    );

    // Reconcile finds nothing; a rebuild from the ledger makes the same records and units.
    let options = reconcile::Options {
        repair: false,
        settle: Duration::from_millis(300),
    };
    let zone = BillingZone::default();
    assert_eq!(
        reconcile::reconcile(&stack.db, None, zone, &options)
            .await
            .unwrap(),
        vec![]
    );
    let units_before = units(&stack, &user).await;
    sqlx::query("UPDATE rm_daily_usage SET units = '{\"call\": 4, \"output_tokens\": 1004}' WHERE user_id = ? AND api_id = 'chat'")
        .bind(&user)
        .execute(&stack.db)
        .await
        .unwrap();
    let found = reconcile::reconcile(&stack.db, None, zone, &options)
        .await
        .unwrap();
    assert_eq!(found.len(), 1, "{found:?}");
    rebuild::rebuild(&stack.db, zone, clock.now())
        .await
        .unwrap();
    assert_eq!(units(&stack, &user).await, units_before);
    let (_, rebuilt) = stack
        .get("/api/v1/billing/records?type=deduct", &token)
        .await;
    assert_eq!(rebuilt["records"], json!(records));
    assert_eq!(
        reconcile::reconcile(&stack.db, None, zone, &options)
            .await
            .unwrap(),
        vec![]
    );
    stack.cleanup().await;
}

async fn units(stack: &Stack, user: &str) -> Vec<(String, serde_json::Value)> {
    let rows: Vec<(String, Option<String>)> = sqlx::query_as(
        "SELECT api_id, units FROM rm_daily_usage WHERE user_id = ? ORDER BY api_id",
    )
    .bind(user)
    .fetch_all(&stack.db)
    .await
    .unwrap();
    rows.into_iter()
        .map(|(api_id, units)| {
            let units = units.map_or(json!(null), |u| serde_json::from_str(&u).unwrap());
            (api_id, units)
        })
        .collect()
}
