//! `CheckQuota` from command-svc's in-process memory of accounts: ids without an account are
//! answered without reading the store; another replica's commits reach a replica's checks through
//! the events, long before the memory's `max_age`; and without the events, a check never answers
//! from a state older than `max_age`, for an account created or changed elsewhere.

use std::time::{Duration, Instant};

use shared::{clock::Clock, proto::v1 as pb};

use crate::helpers::*;

fn check(user: &str) -> pb::CheckQuotaRequest {
    pb::CheckQuotaRequest {
        user_id: user.into(),
        amount_micros: 1,
        ..Default::default()
    }
}

async fn checked(client: &mut Client, user: &str) -> pb::AccountState {
    client
        .check_quota(check(user))
        .await
        .unwrap()
        .into_inner()
        .account
        .unwrap()
}

fn checks_from(scrape: &testkit::metrics::Scrape, tier: &str) -> f64 {
    scrape
        .value("billing_checks_total", &[("from", tier)])
        .unwrap_or(0.0)
}

fn max_age(ms: &str) -> (&'static str, &str) {
    ("BILLING__COMMAND__ACCOUNT_MEMORY__MAX_AGE_MS", ms)
}

/// The checks answered by Redis or MySQL so far.
async fn store_reads(app: &TestApp) -> f64 {
    let scrape = scrape(app).await;
    checks_from(&scrape, "redis") + checks_from(&scrape, "mysql")
}

#[tokio::test]
async fn ids_without_an_account_are_answered_without_reading_the_store() {
    let app = spawn_app_at(chrono::Utc::now(), &[max_age("60000")]).await;
    let mut gateway = app.gateway().await;
    // The directory's first scan runs as the service starts.
    eventually(Duration::from_secs(10), "the directory answers", || {
        let (app, mut gateway) = (&app, gateway.clone());
        async move {
            let before = store_reads(app).await;
            checked(&mut gateway, &new_user("probe")).await;
            (store_reads(app).await == before).then_some(())
        }
    })
    .await;

    let before = store_reads(&app).await;
    let strangers: Vec<String> = (0..100).map(|_| new_user("nobody")).collect();
    for stranger in strangers.iter().chain(&strangers) {
        let seen = checked(&mut gateway, stranger).await;
        // Shown as an account would start: this period's free quota, version 0.
        assert_eq!((seen.version, seen.balance_micros), (0, 0));
        assert_eq!(seen.available_micros, seen.monthly_free_micros);
    }
    assert_eq!(store_reads(&app).await, before, "200 checks, no store read");

    // An account's first charge, on this replica, is seen by the next check at once.
    let stranger = &strangers[0];
    let charged = gateway
        .deduct_quota(deduct(stranger, 300_000, "first"))
        .await
        .unwrap()
        .into_inner();
    let seen = checked(&mut gateway, stranger).await;
    assert_eq!(
        (seen.version, seen.free_used_micros),
        (charged.account.unwrap().version, 300_000)
    );
    app.cleanup().await;
}

/// A second replica on the same database, Redis and NATS streams, with its own clock and
/// `overrides` over the first's settings.
async fn second_replica(first: &TestApp, overrides: &[(&str, &str)]) -> TestApp {
    let mut settings = first.settings.clone();
    for (key, value) in overrides {
        match *key {
            "BILLING__NATS__URL" => settings.nats.url = (*value).to_owned(),
            "BILLING__COMMAND__ACCOUNT_MEMORY__MAX_AGE_MS" => {
                settings.command.account_memory.max_age_ms = value.parse().unwrap();
            }
            other => panic!("no override for {other} here"),
        }
    }
    spawn_with(settings, Clock::system(), first.db_name.clone()).await
}

#[tokio::test]
async fn another_replicas_charges_reach_the_checks_through_the_events() {
    // Remembered for a minute: only the events can bring the other replica's charges in time.
    let first = spawn_app_at(chrono::Utc::now(), &[max_age("60000")]).await;
    let second = second_replica(&first, &[]).await;
    let user = new_user("two-replicas");
    let (mut charger, mut checker) = (first.gateway().await, second.gateway().await);
    let seen = checked(&mut checker, &user).await;
    assert_eq!(seen.version, 0, "no account yet");
    let reads = store_reads(&second).await;

    let mut last = 0;
    for i in 0..5 {
        let charged = charger
            .deduct_quota(deduct(&user, 100_000, &format!("c{i}")))
            .await
            .unwrap()
            .into_inner();
        last = charged.account.unwrap().version;
    }
    let seen = eventually(
        Duration::from_secs(10),
        "the second replica's check shows the first's last charge",
        || {
            let mut checker = checker.clone();
            let user = user.clone();
            async move {
                let seen = checked(&mut checker, &user).await;
                (seen.version == last).then_some(seen)
            }
        },
    )
    .await;
    assert_eq!(seen.free_used_micros, 500_000);
    assert_eq!(
        store_reads(&second).await,
        reads,
        "the second replica learned the charges from the events alone"
    );
    let mut second = second;
    second.stop().await;
    first.cleanup().await;
}

/// Checks `user` on `checker` until it shows `version`, failing if that takes longer than
/// `bound` after `since`.
async fn seen_within(
    checker: &mut Client,
    user: &str,
    version: i64,
    since: Instant,
    bound: Duration,
) -> pb::AccountState {
    loop {
        let seen = checked(checker, user).await;
        if seen.version == version {
            return seen;
        }
        assert!(
            since.elapsed() < bound,
            "a check answered from a state older than max_age"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn without_the_events_a_check_is_never_older_than_max_age() {
    const MAX_AGE: Duration = Duration::from_millis(1500);
    // Slack for a busy machine: a scan or a read that started within max_age may end later.
    let bound = MAX_AGE + Duration::from_millis(1000);
    let first = spawn_app_at(chrono::Utc::now(), &[]).await;
    // The second replica cannot reach NATS: no event ever arrives.
    let nowhere = format!("nats://127.0.0.1:{}", testkit::spare_port());
    let millis = MAX_AGE.as_millis().to_string();
    let second = second_replica(
        &first,
        &[("BILLING__NATS__URL", &nowhere), max_age(&millis)],
    )
    .await;
    let user = new_user("no-events");
    let (mut charger, mut checker) = (first.gateway().await, second.gateway().await);
    assert_eq!(checked(&mut checker, &user).await.version, 0);

    // An account created on the first replica: the second's scan of new accounts finds it.
    let created = charger
        .deduct_quota(deduct(&user, 100_000, "before"))
        .await
        .unwrap()
        .into_inner();
    let created = created.account.unwrap().version;
    let seen = seen_within(&mut checker, &user, created, Instant::now(), bound).await;
    assert_eq!(seen.free_used_micros, 100_000);
    let learned_at = Instant::now();

    // A change of an account the second replica remembers: it reads it again after max_age.
    let charged = charger
        .deduct_quota(deduct(&user, 200_000, "after"))
        .await
        .unwrap()
        .into_inner();
    let charged_at = Instant::now();
    let version = charged.account.unwrap().version;
    let seen = checked(&mut checker, &user).await;
    if learned_at.elapsed() < MAX_AGE {
        assert_eq!(
            seen.version, created,
            "within max_age the remembered state answers"
        );
    }
    let seen = seen_within(&mut checker, &user, version, charged_at, bound).await;
    assert_eq!(seen.free_used_micros, 300_000);
    let mut second = second;
    second.stop().await;
    first.cleanup().await;
}
