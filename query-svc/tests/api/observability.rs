//! What operators see of query-svc: `/metrics` counts REST requests by route and status, events
//! projected with their lag, redeliveries, the consumer's backlog, dead letters and the size of
//! the dead-letter stream.

use std::time::Duration;

use testkit::metrics::Scrape;

use crate::{
    helpers::*,
    projection::{publish_from_the_future, until_projected},
};

const WAIT: Duration = Duration::from_secs(20);

async fn scrape(stack: &Stack) -> Scrape {
    let page = reqwest::get(stack.url("/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    Scrape::parse(&page)
}

#[tokio::test]
async fn projected_events_requests_and_the_backlog_are_measured() {
    let stack = spawn_stack().await;
    let user = new_user("observed");
    let mut gateway = stack.gateway().await;
    for request_id in ["o-1", "o-2", "o-3"] {
        gateway
            .deduct_quota(deduct(&user, CNY, request_id))
            .await
            .unwrap();
    }
    until_projected(&stack, &user, WAIT).await;
    let (status, _) = stack
        .get("/api/v1/billing/account", &stack.token(&user))
        .await;
    assert_eq!(status, 200);

    // The grant and three charges; the gauges are sampled every few seconds.
    let scraped = stack
        .eventually(WAIT, || async {
            let scraped = scrape(&stack).await;
            (scraped.value("billing_projection_consumer_pending", &[]) == Some(0.0)
                && scraped.value("billing_dlq_messages", &[]).is_some()
                && scraped.value("billing_nats_connected", &[]) == Some(1.0))
            .then_some(scraped)
        })
        .await;
    assert!(scraped.expect("billing_projection_events_applied_total", &[]) >= 4.0);
    assert!(scraped.expect("billing_projection_lag_seconds_count", &[]) >= 4.0);
    let within = scraped.expect("billing_projection_lag_seconds_bucket", &[("le", "300")]);
    assert!(within >= 4.0, "every lag under five minutes: {within}");
    assert_eq!(
        scraped.expect("billing_projection_dead_letters_total", &[]),
        0.0
    );
    assert!(
        scraped.expect(
            "billing_http_requests_total",
            &[
                ("route", "/api/v1/billing/account"),
                ("method", "GET"),
                ("status", "200")
            ]
        ) >= 1.0
    );
    assert!(
        scraped.expect(
            "billing_http_request_duration_seconds_count",
            &[("route", "/api/v1/billing/account")]
        ) >= 1.0
    );
    stack.cleanup().await;
}

#[tokio::test]
async fn dead_letters_and_redeliveries_are_counted_and_the_stream_measured() {
    let stack = spawn_stack_with(
        shared::clock::Clock::system(),
        &[("BILLING__QUERY__MAX_DELIVER", "2")],
    )
    .await;
    publish_from_the_future(&stack).await;

    let scraped = stack
        .eventually(WAIT, || async {
            let scraped = scrape(&stack).await;
            (scraped.value("billing_dlq_messages", &[]) == Some(1.0)).then_some(scraped)
        })
        .await;
    assert_eq!(
        scraped.expect("billing_projection_dead_letters_total", &[]),
        1.0
    );
    // Delivered twice: once more after the first refusal.
    assert!(scraped.expect("billing_projection_redeliveries_total", &[]) >= 1.0);
    stack.cleanup().await;
}
