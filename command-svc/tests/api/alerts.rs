//! Alerts: `balance_low` and `free_quota_exhausted` raised once per crossing by the change that
//! crosses, and delivered, signed, to the developer's webhook, with retries, never holding up a
//! charge.

use std::{
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use axum::{Router, body::Bytes, extract::State, http::HeaderMap, http::StatusCode, routing::post};
use futures::future::join_all;
use shared::proto::v1 as pb;
use tonic::Code;

use crate::helpers::*;

const WAIT: Duration = Duration::from_secs(20);

fn settings(user: &str, threshold: i64, url: &str) -> pb::SetAlertSettingsRequest {
    pb::SetAlertSettingsRequest {
        user_id: user.to_owned(),
        low_balance_threshold_micros: threshold,
        webhook_url: url.to_owned(),
        rotate_signing_secret: false,
        keep_webhook_url: false,
        keep_threshold: false,
    }
}

/// The alert events in the outbox for `user`: (balance_low, free_quota_exhausted).
async fn alerts_raised(app: &TestApp, user: &str) -> (i64, i64) {
    let count = |kind: &'static str| async move {
        sqlx::query_scalar::<_, i64>(
            "SELECT COUNT(*) FROM outbox WHERE user_id = ? AND subject LIKE CONCAT('%.', ?)",
        )
        .bind(user)
        .bind(kind)
        .fetch_one(&app.db)
        .await
        .unwrap()
    };
    (
        count("balance_low").await,
        count("free_quota_exhausted").await,
    )
}

/// 10 CNY free and 10 CNY recharged, `balance_low` at 5 CNY: 150 concurrent charges of 0.1 CNY
/// use the free quota up once and cross the threshold once; the charges after raise nothing; a
/// recharge and one more fall cross again.
#[tokio::test]
async fn alerts_are_raised_once_per_crossing_under_concurrency() {
    for group_commit in ["true", "false"] {
        let app = spawn_app_at(
            chrono::Utc::now(),
            &[("BILLING__COMMAND__GROUP_COMMIT__ENABLED", group_commit)],
        )
        .await;
        let user = new_user("crossings");
        recharge(&app, &user, 10 * CNY).await;
        app.ops()
            .await
            .set_alert_settings(settings(&user, 5 * CNY, ""))
            .await
            .unwrap();
        let gateway = app.gateway().await;
        let charges = (0..160).map(|i| {
            let mut gateway = gateway.clone();
            let request = deduct(&user, CNY / 10, &format!("c{i}"));
            async move { gateway.deduct_quota(request).await.unwrap() }
        });
        join_all(charges).await;
        let view = account(&app, &user).await;
        assert_eq!(
            (view.free_remaining_micros, view.balance_micros),
            (0, 4 * CNY)
        );
        assert_eq!(
            alerts_raised(&app, &user).await,
            (1, 1),
            "group commit {group_commit}"
        );

        // Back above, then below again: a second crossing.
        recharge(&app, &user, 10 * CNY).await;
        let mut gateway = app.gateway().await;
        gateway
            .deduct_quota(deduct(&user, 9 * CNY, "fall"))
            .await
            .unwrap();
        gateway
            .deduct_quota(deduct(&user, CNY, "lower"))
            .await
            .unwrap();
        assert_eq!(alerts_raised(&app, &user).await, (2, 1));
        assert_invariants(&app.db, &user).await;
        app.cleanup().await;
    }
}

/// What a webhook receiver saw, and how it answers.
#[derive(Clone, Default)]
struct Receiver {
    received: Arc<Mutex<Vec<(Instant, HeaderMap, Bytes)>>>,
    /// Answer 500 to this many requests first.
    fail_first: Arc<Mutex<usize>>,
    /// Hold each answer this long.
    delay: Arc<Mutex<Duration>>,
}

impl Receiver {
    async fn start(self) -> SocketAddr {
        async fn hook(
            State(receiver): State<Receiver>,
            headers: HeaderMap,
            body: Bytes,
        ) -> StatusCode {
            receiver
                .received
                .lock()
                .unwrap()
                .push((Instant::now(), headers, body));
            let delay = *receiver.delay.lock().unwrap();
            tokio::time::sleep(delay).await;
            let mut failing = receiver.fail_first.lock().unwrap();
            if *failing > 0 {
                *failing -= 1;
                StatusCode::INTERNAL_SERVER_ERROR
            } else {
                StatusCode::NO_CONTENT
            }
        }
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let router = Router::new().route("/hook", post(hook)).with_state(self);
        tokio::spawn(async move { axum::serve(listener, router).await });
        addr
    }

    fn received(&self) -> Vec<(Instant, HeaderMap, Bytes)> {
        self.received.lock().unwrap().clone()
    }
}

/// A delivery as the receiver checks it: signed with the user's own secret, in the alert scheme,
/// over the raw body; never with another secret, never in the payment scheme's headers.
fn verified(headers: &HeaderMap, body: &[u8], secret: &str) -> serde_json::Value {
    use shared::signature::{Scheme, verify};
    let header = |name: &str| headers.get(name).unwrap().to_str().unwrap().to_owned();
    let timestamp: i64 = header("x-billing-alert-timestamp").parse().unwrap();
    let signature = header("x-billing-alert-signature");
    assert!(
        verify(Scheme::Alert, secret, timestamp, body, &signature),
        "the signature verifies"
    );
    assert!(!verify(
        Scheme::Alert,
        "another secret",
        timestamp,
        body,
        &signature
    ));
    assert!(!verify(
        Scheme::Payment,
        secret,
        timestamp,
        body,
        &signature
    ));
    assert!(headers.get("x-billing-signature").is_none());
    assert!(headers.get("x-billing-timestamp").is_none());
    let json: serde_json::Value = serde_json::from_slice(body).unwrap();
    assert_eq!(
        json["event_id"].as_str().unwrap(),
        header("x-billing-event-id")
    );
    json
}

async fn deliveries(app: &TestApp, user: &str) -> Vec<(String, String, i32)> {
    sqlx::query_as(
        "SELECT kind, status, attempts FROM alert_deliveries WHERE user_id = ? ORDER BY kind",
    )
    .bind(user)
    .fetch_all(&app.db)
    .await
    .unwrap()
}

#[tokio::test]
async fn alerts_are_delivered_signed_to_the_webhook_and_recorded() {
    let app = spawn_app().await;
    let receiver = Receiver::default();
    let addr = receiver.clone().start().await;
    let user = new_user("delivered");
    recharge(&app, &user, 3 * CNY).await;
    let secret = app
        .orders()
        .await
        .set_alert_settings(settings(&user, 2 * CNY, &format!("http://{addr}/hook")))
        .await
        .unwrap()
        .into_inner()
        .signing_secret;
    assert!(secret.starts_with("whsec_"), "{secret:?}");
    // 10 CNY free, then 1.5 CNY of the balance: both alerts.
    app.gateway()
        .await
        .deduct_quota(deduct(&user, 11_500_000, "big-call"))
        .await
        .unwrap();
    eventually(WAIT, "two deliveries", || async {
        (receiver.received().len() >= 2).then_some(())
    })
    .await;
    let mut kinds: Vec<String> = receiver
        .received()
        .iter()
        .map(|(_, headers, body)| {
            let json = verified(headers, body, &secret);
            assert_eq!(json["user_id"], serde_json::json!(user));
            if json["type"] == "balance_low" {
                assert_eq!(json["balance_micros"], serde_json::json!(1_500_000));
                assert_eq!(json["threshold_micros"], serde_json::json!(2 * CNY));
            }
            json["type"].as_str().unwrap().to_owned()
        })
        .collect();
    kinds.sort();
    assert_eq!(kinds, ["balance_low", "free_quota_exhausted"]);
    let recorded = eventually(WAIT, "both recorded", || async {
        let recorded = deliveries(&app, &user).await;
        (recorded.len() == 2 && recorded.iter().all(|d| d.1 == "delivered")).then_some(recorded)
    })
    .await;
    assert!(
        recorded.iter().all(|(_, _, attempts)| *attempts == 1),
        "{recorded:?}"
    );
    // A delivery sent on to the payment webhook, its headers as they came, is no callback.
    let (_, headers, body) = receiver.received().remove(0);
    let mut forwarded = reqwest::Client::new()
        .post(app.http("/api/v1/billing/recharge/callback"))
        .header("content-type", "application/json")
        .body(body.to_vec());
    for (name, value) in &headers {
        if name.as_str().starts_with("x-billing") {
            forwarded = forwarded.header(name.as_str(), value.as_bytes());
        }
    }
    assert_eq!(forwarded.send().await.unwrap().status(), 401);
    app.cleanup().await;
}

/// Each developer signs with a secret of their own, shown once; a rotation replaces it.
#[tokio::test]
async fn each_developer_has_a_signing_secret_of_their_own_shown_once_and_rotatable() {
    let app = spawn_app().await;
    let receiver = Receiver::default();
    let addr = receiver.clone().start().await;
    let hook = format!("http://{addr}/hook");
    let mut orders = app.orders().await;
    let (alice, bob) = (new_user("alice"), new_user("bob"));
    let alice_secret = orders
        .set_alert_settings(settings(&alice, 0, &hook))
        .await
        .unwrap()
        .into_inner()
        .signing_secret;
    let bob_secret = orders
        .set_alert_settings(settings(&bob, 0, &hook))
        .await
        .unwrap()
        .into_inner()
        .signing_secret;
    assert!(alice_secret.len() >= 32 && bob_secret.len() >= 32);
    assert_ne!(alice_secret, bob_secret);
    // Set again without a rotation: the secret stays and is not shown.
    let again = orders
        .set_alert_settings(settings(&alice, CNY, &hook))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(again.signing_secret, "");
    app.gateway()
        .await
        .deduct_quota(deduct(&alice, 10 * CNY, "alice-uses-it-up"))
        .await
        .unwrap();
    eventually(WAIT, "alice's delivery", || async {
        (!receiver.received().is_empty()).then_some(())
    })
    .await;
    let (_, headers, body) = receiver.received().remove(0);
    verified(&headers, &body, &alice_secret);
    let timestamp: i64 = headers["x-billing-alert-timestamp"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    let signature = headers["x-billing-alert-signature"].to_str().unwrap();
    assert!(!shared::signature::verify(
        shared::signature::Scheme::Alert,
        &bob_secret,
        timestamp,
        &body,
        signature
    ));

    // A rotation: a new secret, shown once; the next delivery is signed with it.
    let rotated = orders
        .set_alert_settings(pb::SetAlertSettingsRequest {
            rotate_signing_secret: true,
            ..settings(&bob, 0, &hook)
        })
        .await
        .unwrap()
        .into_inner()
        .signing_secret;
    assert!(rotated.starts_with("whsec_") && rotated != bob_secret);
    app.gateway()
        .await
        .deduct_quota(deduct(&bob, 10 * CNY, "bob-uses-it-up"))
        .await
        .unwrap();
    eventually(WAIT, "bob's delivery", || async {
        (receiver.received().len() >= 2).then_some(())
    })
    .await;
    let (_, headers, body) = receiver.received().remove(1);
    verified(&headers, &body, &rotated);
    app.cleanup().await;
}

#[tokio::test]
async fn a_failing_webhook_is_retried_with_growing_pauses_and_never_holds_up_a_charge() {
    let app = spawn_app_at(
        chrono::Utc::now(),
        &[
            ("BILLING__ALERTS__RETRY_INITIAL_MS", "200"),
            ("BILLING__ALERTS__DELIVERY_TIMEOUT_MS", "1000"),
        ],
    )
    .await;
    let receiver = Receiver::default();
    *receiver.fail_first.lock().unwrap() = 2;
    *receiver.delay.lock().unwrap() = Duration::from_millis(300);
    let addr = receiver.clone().start().await;
    let user = new_user("retried");
    app.ops()
        .await
        .set_alert_settings(settings(&user, 0, &format!("http://{addr}/hook")))
        .await
        .unwrap();
    let mut gateway = app.gateway().await;
    gateway
        .deduct_quota(deduct(&user, 10 * CNY, "uses-it-up"))
        .await
        .unwrap();
    // While the webhook is slow and failing, charges go on at their own pace.
    for i in 0..5 {
        let started = Instant::now();
        let refused = gateway
            .deduct_quota(deduct(&user, 1, &format!("after-{i}")))
            .await
            .expect_err("nothing left to charge");
        assert_eq!(reason(&refused), "INSUFFICIENT_QUOTA");
        assert!(started.elapsed() < Duration::from_millis(250));
    }
    let recorded = eventually(WAIT, "delivered on the third attempt", || async {
        let recorded = deliveries(&app, &user).await;
        recorded
            .first()
            .filter(|(_, status, _)| status == "delivered")
            .cloned()
    })
    .await;
    assert_eq!(
        recorded,
        ("free_quota_exhausted".to_owned(), "delivered".to_owned(), 3)
    );
    let times: Vec<Instant> = receiver.received().iter().map(|(at, ..)| *at).collect();
    assert_eq!(times.len(), 3, "three attempts, no more");
    let (first, second) = (times[1] - times[0], times[2] - times[1]);
    assert!(
        first >= Duration::from_millis(400) && second >= first + Duration::from_millis(150),
        "pauses grow: {first:?} then {second:?}"
    );
    app.cleanup().await;
}

#[tokio::test]
async fn a_delivery_out_of_attempts_is_recorded_failed_and_a_private_address_refused() {
    let app = spawn_app_at(
        chrono::Utc::now(),
        &[
            ("BILLING__ALERTS__RETRY_INITIAL_MS", "50"),
            ("BILLING__ALERTS__MAX_ATTEMPTS", "2"),
        ],
    )
    .await;
    let receiver = Receiver::default();
    *receiver.fail_first.lock().unwrap() = usize::MAX;
    let addr = receiver.clone().start().await;
    let user = new_user("gave-up");
    app.ops()
        .await
        .set_alert_settings(settings(&user, 0, &format!("http://{addr}/hook")))
        .await
        .unwrap();
    app.gateway()
        .await
        .deduct_quota(deduct(&user, 10 * CNY, "uses-it-up"))
        .await
        .unwrap();
    let recorded = eventually(WAIT, "recorded failed", || async {
        deliveries(&app, &user)
            .await
            .into_iter()
            .find(|(_, status, _)| status == "failed")
    })
    .await;
    assert_eq!(recorded.2, 2, "max_attempts attempts");
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(receiver.received().len(), 2, "and no more after");
    app.cleanup().await;

    // Without allow_private_addresses, a webhook on loopback is never called.
    let app = spawn_app_at(
        chrono::Utc::now(),
        &[
            ("BILLING__ALERTS__ALLOW_PRIVATE_ADDRESSES", "false"),
            ("BILLING__ALERTS__MAX_ATTEMPTS", "1"),
        ],
    )
    .await;
    let receiver = Receiver::default();
    let addr = receiver.clone().start().await;
    let user = new_user("private");
    app.ops()
        .await
        .set_alert_settings(settings(&user, 0, &format!("http://{addr}/hook")))
        .await
        .unwrap();
    app.gateway()
        .await
        .deduct_quota(deduct(&user, 10 * CNY, "uses-it-up"))
        .await
        .unwrap();
    let error: Option<String> = eventually(WAIT, "refused", || async {
        sqlx::query_scalar::<_, Option<String>>(
            "SELECT last_error FROM alert_deliveries WHERE user_id = ? AND status = 'failed'",
        )
        .bind(&user)
        .fetch_optional(&app.db)
        .await
        .unwrap()
    })
    .await;
    assert!(error.unwrap().contains("not a public one"));
    assert!(receiver.received().is_empty());
    app.cleanup().await;
}

#[tokio::test]
async fn alert_settings_are_validated_and_scoped() {
    let app = spawn_app().await;
    let user = new_user("settings");
    let mut orders = app.orders().await;
    for (threshold, url, field) in [
        (-1, "", "low_balance_threshold_micros"),
        (1_000_000_000_000_001, "", "low_balance_threshold_micros"),
        (0, "ftp://example.com/x", "webhook_url"),
        (0, "https://", "webhook_url"),
        (0, "https://exa mple.com/", "webhook_url"),
    ] {
        let status = orders
            .set_alert_settings(settings(&user, threshold, url))
            .await
            .expect_err("refused");
        assert_eq!(status.code(), Code::InvalidArgument, "{field}");
        assert!(format!("{status:?}").contains(field), "{status:?}");
    }
    let saved = orders
        .set_alert_settings(settings(
            &user,
            3 * CNY,
            "https://hooks.example.com/billing",
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (
            saved.low_balance_threshold_micros,
            saved.webhook_url.as_str()
        ),
        (3 * CNY, "https://hooks.example.com/billing")
    );
    let cleared = orders
        .set_alert_settings(settings(&user, 3 * CNY, ""))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(cleared.webhook_url, "");
    let stored: (Option<i64>, Option<String>) = sqlx::query_as(
        "SELECT low_balance_threshold_micros, webhook_url FROM alert_settings WHERE user_id = ?",
    )
    .bind(&user)
    .fetch_one(&app.db)
    .await
    .unwrap();
    assert_eq!(stored, (Some(3 * CNY), None));
    let status = app
        .gateway()
        .await
        .set_alert_settings(settings(&user, 0, ""))
        .await
        .expect_err("the gateway may not");
    assert_eq!(status.code(), Code::PermissionDenied);
    app.cleanup().await;
}

/// A webhook's URL may carry credentials and tokens: they are used, but never stored.
#[tokio::test]
async fn credentials_in_a_webhook_url_never_reach_the_records() {
    let app = spawn_app_at(
        chrono::Utc::now(),
        &[
            ("BILLING__ALERTS__RETRY_INITIAL_MS", "50"),
            ("BILLING__ALERTS__MAX_ATTEMPTS", "1"),
        ],
    )
    .await;
    let receiver = Receiver::default();
    *receiver.fail_first.lock().unwrap() = usize::MAX;
    let addr = receiver.clone().start().await;
    // Port 9 on loopback answers nothing: the attempt's error is the connection's.
    let user = new_user("secret-url");
    app.ops()
        .await
        .set_alert_settings(settings(
            &user,
            0,
            "http://hook-user:hunter2@127.0.0.1:9/hook?token=s3cr3t",
        ))
        .await
        .unwrap();
    let other = new_user("secret-url-answered");
    app.ops()
        .await
        .set_alert_settings(settings(
            &other,
            0,
            &format!("http://hook-user:hunter2@{addr}/hook?token=s3cr3t"),
        ))
        .await
        .unwrap();
    for who in [&user, &other] {
        app.gateway()
            .await
            .deduct_quota(deduct(who, 10 * CNY, "uses-it-up"))
            .await
            .unwrap();
    }
    let rows: Vec<(String, Option<String>)> = eventually(WAIT, "both failed", || async {
        let rows: Vec<(String, Option<String>)> =
            sqlx::query_as("SELECT url, last_error FROM alert_deliveries WHERE status = 'failed'")
                .fetch_all(&app.db)
                .await
                .unwrap();
        (rows.len() == 2).then_some(rows)
    })
    .await;
    for (url, error) in &rows {
        let seen = format!("{url} {error:?}");
        assert!(
            !seen.contains("hunter2") && !seen.contains("s3cr3t"),
            "{seen}"
        );
        assert!(url.ends_with("/hook"), "{url}");
    }
    // The receiver was called with its credentials (basic auth) all the same.
    let (_, headers, _) = receiver.received().remove(0);
    assert!(headers.contains_key("authorization"));
    app.cleanup().await;
}

#[tokio::test]
async fn settled_deliveries_are_purged_after_their_retention() {
    let app = spawn_app_at(
        chrono::Utc::now(),
        &[("BILLING__ALERTS__PURGE_INTERVAL_SECS", "1")],
    )
    .await;
    let insert = |event: &'static str, status: &'static str, days_ago: i64| {
        let at = chrono::Utc::now() - chrono::Duration::days(days_ago);
        sqlx::query(
            "INSERT INTO alert_deliveries (event_id, user_id, kind, url, status, attempts, \
             first_attempt_at, last_attempt_at) VALUES (?, 'u', 'balance_low', NULL, ?, 1, ?, ?)",
        )
        .bind(event)
        .bind(status)
        .bind(at)
        .bind(at)
        .execute(&app.db)
    };
    insert("old-delivered", "delivered", 31).await.unwrap();
    insert("old-failed", "failed", 45).await.unwrap();
    insert("old-pending", "pending", 45).await.unwrap();
    insert("recent", "delivered", 2).await.unwrap();
    let left: Vec<String> = eventually(WAIT, "purged", || async {
        let left: Vec<String> =
            sqlx::query_scalar("SELECT event_id FROM alert_deliveries ORDER BY event_id")
                .fetch_all(&app.db)
                .await
                .unwrap();
        (left.len() == 2).then_some(left)
    })
    .await;
    assert_eq!(left, ["old-pending", "recent"]);
    app.cleanup().await;
}

/// A proxy named by the environment never carries a delivery: it would see the alert, and it
/// would decide where the delivery goes after the address was checked.
#[tokio::test]
async fn deliveries_ignore_proxies_named_by_the_environment() {
    let proxy = Receiver::default();
    let proxy_addr = proxy.clone().start().await;
    // SAFETY: set before the service starts, while no other thread of this test process reads
    // the environment (nextest runs each test in a process of its own).
    unsafe {
        for name in [
            "http_proxy",
            "HTTP_PROXY",
            "https_proxy",
            "HTTPS_PROXY",
            "ALL_PROXY",
        ] {
            std::env::set_var(name, format!("http://{proxy_addr}"));
        }
    }
    let app = spawn_app().await;
    let receiver = Receiver::default();
    let addr = receiver.clone().start().await;
    let user = new_user("proxied");
    app.ops()
        .await
        .set_alert_settings(settings(&user, 0, &format!("http://{addr}/hook")))
        .await
        .unwrap();
    app.gateway()
        .await
        .deduct_quota(deduct(&user, 10 * CNY, "uses-it-up"))
        .await
        .unwrap();
    eventually(WAIT, "delivered directly", || async {
        (!receiver.received().is_empty()).then_some(())
    })
    .await;
    assert!(proxy.received().is_empty(), "the proxy saw a delivery");
    app.cleanup().await;
}

#[tokio::test]
async fn alert_settings_are_read_back_by_the_callers_that_may_set_them() {
    let app = spawn_app().await;
    let user = new_user("get-settings");
    let get = || pb::GetAlertSettingsRequest {
        user_id: user.clone(),
    };
    let mut orders = app.orders().await;
    let fresh = orders.get_alert_settings(get()).await.unwrap().into_inner();
    assert_eq!(
        (
            fresh.low_balance_threshold_micros,
            fresh.threshold_set,
            fresh.webhook_url.as_str()
        ),
        (CNY, false, "")
    );
    orders
        .set_alert_settings(settings(&user, 4 * CNY, "https://hooks.example.com/b"))
        .await
        .unwrap();
    let shown = app
        .ops()
        .await
        .get_alert_settings(get())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (
            shown.low_balance_threshold_micros,
            shown.threshold_set,
            shown.webhook_url.as_str(),
            shown.signing_secret_set
        ),
        (4 * CNY, true, "https://hooks.example.com/b", true)
    );
    let denied = app
        .gateway()
        .await
        .get_alert_settings(get())
        .await
        .unwrap_err();
    assert_eq!(denied.code(), Code::PermissionDenied);
    let invalid = orders
        .get_alert_settings(pb::GetAlertSettingsRequest {
            user_id: "no spaces".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(invalid.code(), Code::InvalidArgument);
    app.cleanup().await;
}

/// A new set of spend limits and a limit reached are delivered to the webhook too, the reached
/// one once in its window however many charges it refuses after.
#[tokio::test]
async fn spend_limit_events_are_delivered_to_the_webhook_once_per_window() {
    let app = spawn_app().await;
    let receiver = Receiver::default();
    let addr = receiver.clone().start().await;
    let user = new_user("limit-alerts");
    recharge(&app, &user, 3 * CNY).await;
    let secret = app
        .orders()
        .await
        .set_alert_settings(settings(&user, 0, &format!("http://{addr}/hook")))
        .await
        .unwrap()
        .into_inner()
        .signing_secret;
    let limit = pb::SpendLimit {
        scope: "api:chat".into(),
        window: "day".into(),
        limit_micros: CNY,
    };
    app.orders()
        .await
        .set_spend_limits(pb::SetSpendLimitsRequest {
            user_id: user.clone(),
            limits: vec![limit.clone()],
            actor: format!("user:{user}"),
            set_id: String::new(),
        })
        .await
        .unwrap();
    let mut gateway = app.gateway().await;
    let chat = |request_id: &str, amount: i64| pb::DeductQuotaRequest {
        api_id: "chat".into(),
        ..deduct(&user, amount, request_id)
    };
    gateway
        .deduct_quota(chat("to-the-limit", CNY))
        .await
        .unwrap();
    for request_id in ["over-1", "over-2"] {
        let refused = gateway.deduct_quota(chat(request_id, 1)).await.unwrap_err();
        assert_eq!(refused.code(), Code::FailedPrecondition);
    }
    eventually(WAIT, "two deliveries", || async {
        (receiver.received().len() >= 2).then_some(())
    })
    .await;
    // A moment more: nothing else arrives.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut bodies: Vec<serde_json::Value> = receiver
        .received()
        .iter()
        .map(|(_, headers, body)| verified(headers, body, &secret))
        .collect();
    bodies.sort_by_key(|json| json["type"].as_str().unwrap_or_default().to_owned());
    let limit_json = serde_json::json!({"scope": "api:chat", "window": "day", "limit_micros": CNY});
    assert_eq!(bodies.len(), 2, "{bodies:?}");
    assert_eq!(bodies[0]["type"], "spend_limit_reached");
    assert_eq!(bodies[0]["limit"], limit_json);
    assert_eq!(
        (&bodies[0]["spent_micros"], &bodies[0]["refused_micros"]),
        (&serde_json::json!(CNY), &serde_json::json!(0))
    );
    assert_eq!(bodies[1]["type"], "spend_limits_set");
    assert_eq!(bodies[1]["limits"], serde_json::json!([limit_json]));
    assert_eq!(
        bodies[1]["actor"],
        serde_json::json!(format!("user:{user}"))
    );
    app.cleanup().await;
}
