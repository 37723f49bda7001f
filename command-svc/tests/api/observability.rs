//! What operators see of command-svc: `/metrics` counts and times every call by method and code,
//! counts charges, their amounts, refusals, payments and the outbox; each call runs under a
//! request id it is answered with, and the trace context it arrived with (or a new one) is stored
//! with every event it writes.

use std::time::{Duration, Instant};

use shared::trace::TraceContext;
use testkit::metrics::Scrape;
use tonic::Request;

use crate::helpers::*;

const DEDUCT: &str = "/billing.v1.BillingCommandService/DeductQuota";
const CALLER_TRACE: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

/// Scrapes until `done` holds (the relay and the samplers run on their own), for ten seconds.
async fn scrape_until(app: &TestApp, done: impl Fn(&Scrape) -> bool) -> Scrape {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let scraped = scrape(app).await;
        if done(&scraped) || Instant::now() > deadline {
            return scraped;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn metrics_count_calls_charges_refusals_payments_and_the_outbox() {
    let app = spawn_app().await;
    let before = scrape(&app).await;
    let counted = |scrape: &Scrape, name: &str, labels: &[(&str, &str)]| {
        scrape.value(name, labels).unwrap_or(0.0) - before.value(name, labels).unwrap_or(0.0)
    };
    let mut gateway = app.gateway().await;
    let user = new_user("metrics");
    // The default monthly free quota is 10 CNY: 3 CNY come from it.
    gateway
        .deduct_quota(deduct(&user, 3 * CNY, "m-1"))
        .await
        .unwrap();
    let refused = gateway
        .deduct_quota(deduct(&user, 1000 * CNY, "m-2"))
        .await
        .unwrap_err();
    assert_eq!(reason(&refused), "INSUFFICIENT_QUOTA");
    let invalid = gateway
        .deduct_quota(deduct(&user, -1, "m-3"))
        .await
        .unwrap_err();
    assert_eq!(invalid.code(), tonic::Code::InvalidArgument);
    let unmatched = app
        .payment()
        .await
        .recharge_callback(paid("RO-metrics-unknown", "txn-metrics", 2 * CNY))
        .await
        .unwrap()
        .into_inner();
    assert!(!unmatched.unmatched_id.is_empty());
    let unsigned = reqwest::Client::new()
        .post(app.http("/api/v1/billing/recharge/callback"))
        .header("x-request-id", "req-metrics-1")
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(unsigned.status(), 401);
    assert_eq!(unsigned.headers()["x-request-id"], "req-metrics-1");

    // Events: the grant and the charge of the user, and the unmatched payment.
    let after = scrape_until(&app, |s| {
        counted(s, "billing_outbox_published_total", &[]) >= 3.0
            && s.value("billing_outbox_backlog", &[]) == Some(0.0)
    })
    .await;
    let calls = |code| {
        counted(
            &after,
            "billing_grpc_requests_total",
            &[("method", DEDUCT), ("code", code)],
        )
    };
    assert!(calls("OK") >= 1.0);
    assert!(calls("FAILED_PRECONDITION") >= 1.0);
    assert!(calls("INVALID_ARGUMENT") >= 1.0);
    assert!(
        counted(
            &after,
            "billing_grpc_request_duration_seconds_count",
            &[("method", DEDUCT)]
        ) >= 3.0
    );
    // A histogram with buckets, not a summary: its +Inf bucket holds every call.
    assert!(
        counted(
            &after,
            "billing_grpc_request_duration_seconds_bucket",
            &[("method", DEDUCT), ("le", "+Inf")]
        ) >= 3.0
    );
    assert!(counted(&after, "billing_charges_total", &[]) >= 1.0);
    assert!(
        counted(&after, "billing_charged_micros_total", &[("part", "free")]) >= 3.0 * CNY as f64
    );
    assert!(counted(&after, "billing_insufficient_quota_total", &[]) >= 1.0);
    assert!(counted(&after, "billing_unmatched_payments_total", &[]) >= 1.0);
    assert!(
        counted(
            &after,
            "billing_payment_callbacks_total",
            &[("outcome", "UNMATCHED")]
        ) >= 1.0
    );
    assert!(
        counted(
            &after,
            "billing_http_requests_total",
            &[
                ("route", "/api/v1/billing/recharge/callback"),
                ("status", "401")
            ]
        ) >= 1.0
    );
    assert!(counted(&after, "billing_outbox_published_total", &[]) >= 3.0);
    assert_eq!(after.expect("billing_outbox_oldest_age_seconds", &[]), 0.0);
    app.cleanup().await;
}

#[tokio::test]
async fn a_hostile_path_is_counted_under_one_label() {
    let app = spawn_app().await;
    let response = reqwest::Client::new()
        .get(app.http("/no/such/route/../x?y=1"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 404);
    let scraped = scrape(&app).await;
    assert!(
        scraped
            .samples
            .iter()
            .filter(|s| s.name == "billing_http_requests_total")
            .all(|s| s.labels["route"] != "/no/such/route/../x"),
        "raw paths never become labels"
    );
    assert!(scraped.expect("billing_http_requests_total", &[("route", "unmatched")]) >= 1.0);
    app.cleanup().await;
}

/// The outbox rows of `user`: their event kinds (by subject) and traceparents.
async fn traced_events(app: &TestApp, user: &str) -> Vec<(String, Option<String>)> {
    sqlx::query_as("SELECT subject, traceparent FROM outbox WHERE user_id = ? ORDER BY id")
        .bind(user)
        .fetch_all(&app.db)
        .await
        .unwrap()
}

fn traced(
    request_id: &str,
    user: &str,
    amount: i64,
) -> Request<shared::proto::v1::DeductQuotaRequest> {
    let mut request = Request::new(deduct(user, amount, request_id));
    request
        .metadata_mut()
        .insert("traceparent", CALLER_TRACE.parse().unwrap());
    request
}

async fn events_continue_the_caller_s_trace(overrides: &[(&str, &str)]) {
    let app = spawn_app_at(chrono::Utc::now(), overrides).await;
    let caller = TraceContext::parse(CALLER_TRACE).unwrap();
    let mut gateway = app.gateway().await;
    let traced_user = new_user("traced");
    let answered = gateway
        .deduct_quota(traced("t-1", &traced_user, CNY))
        .await
        .unwrap();
    let echoed = answered.metadata().get("x-request-id");
    assert!(
        echoed.is_some_and(|id| id.len() == 32),
        "a new request id, echoed: {echoed:?}"
    );
    let mut adjustment = Request::new(adjust(&traced_user, CNY, "t-adj"));
    adjustment
        .metadata_mut()
        .insert("traceparent", CALLER_TRACE.parse().unwrap());
    app.ops().await.adjust_balance(adjustment).await.unwrap();
    let untraced_user = new_user("untraced");
    gateway
        .deduct_quota(deduct(&untraced_user, CNY, "u-1"))
        .await
        .unwrap();

    let events = traced_events(&app, &traced_user).await;
    assert_eq!(events.len(), 3, "grant, charge and adjustment: {events:?}");
    for (subject, traceparent) in &events {
        let context = traceparent
            .as_deref()
            .and_then(TraceContext::parse)
            .unwrap_or_else(|| panic!("{subject} has no valid traceparent: {traceparent:?}"));
        assert_eq!(context.trace_id(), caller.trace_id(), "{subject}");
        assert_ne!(
            context.span_id(),
            caller.span_id(),
            "{subject}: the service's own span"
        );
    }
    let untraced = traced_events(&app, &untraced_user).await;
    assert_eq!(untraced.len(), 2);
    let trace_ids: Vec<_> = untraced
        .iter()
        .map(|(_, traceparent)| {
            TraceContext::parse(traceparent.as_deref().unwrap())
                .unwrap()
                .trace_id()
        })
        .collect();
    assert_eq!(trace_ids[0], trace_ids[1], "one call, one trace");
    assert_ne!(
        trace_ids[0],
        caller.trace_id(),
        "a call without a context starts a trace"
    );
    app.cleanup().await;
}

#[tokio::test]
async fn events_continue_the_caller_s_trace_with_group_commit() {
    events_continue_the_caller_s_trace(&[]).await;
}

#[tokio::test]
async fn events_continue_the_caller_s_trace_without_group_commit() {
    events_continue_the_caller_s_trace(&[("BILLING__COMMAND__GROUP_COMMIT__ENABLED", "false")])
        .await;
}

/// A call whose deadline passes while it waits (here for a row lock a test transaction holds) is
/// counted too, although no answer of the handler ever reaches the caller.
#[tokio::test]
async fn a_call_that_outlives_its_deadline_is_counted() {
    let app = spawn_app().await;
    let mut gateway = app.gateway().await;
    let user = new_user("deadline");
    gateway
        .deduct_quota(deduct(&user, CNY, "d-1"))
        .await
        .unwrap();
    let before = scrape(&app).await;
    let gone = |scrape: &Scrape| {
        ["CANCELLED", "DEADLINE_EXCEEDED"]
            .iter()
            .map(|code| {
                scrape
                    .value(
                        "billing_grpc_requests_total",
                        &[("method", DEDUCT), ("code", code)],
                    )
                    .unwrap_or(0.0)
            })
            .sum::<f64>()
    };

    let mut lock = app.db.begin().await.unwrap();
    sqlx::query("SELECT version FROM accounts WHERE user_id = ? FOR UPDATE")
        .bind(&user)
        .execute(&mut *lock)
        .await
        .unwrap();
    let mut late = Request::new(deduct(&user, CNY, "d-2"));
    late.set_timeout(Duration::from_millis(300));
    let status = gateway.deduct_quota(late).await.unwrap_err();
    assert!(
        matches!(
            status.code(),
            tonic::Code::DeadlineExceeded | tonic::Code::Cancelled
        ),
        "{status:?}"
    );
    let after = scrape_until(&app, |s| gone(s) > gone(&before)).await;
    lock.rollback().await.unwrap();
    assert_eq!(gone(&after) - gone(&before), 1.0);
    app.cleanup().await;
}
