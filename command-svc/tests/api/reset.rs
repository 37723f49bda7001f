//! The monthly reset end to end: a command on NATS grants every account the period exactly once,
//! whatever the duplicates, replicas, crashes and concurrent charges.

use std::time::Duration;

use chrono::{DateTime, Utc};
use futures::future::join_all;

use crate::helpers::*;

fn utc(text: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(text)
        .unwrap()
        .with_timezone(&Utc)
}

/// Mid-November in Shanghai, when the accounts are made.
const NOVEMBER: &str = "2026-11-20T04:00:00Z";
/// Five seconds past midnight on 2026-12-01 in Shanghai.
const DECEMBER_FIRST: &str = "2026-11-30T16:00:05Z";

/// The clock jumps ten days here: published events are kept past that, so the invariant check
/// still finds every event in the outbox.
const KEEP_EVENTS: (&str, &str) = ("BILLING__OUTBOX__RETENTION_HOURS", "100000");

/// `n` accounts, each made by a first charge in November.
async fn november_accounts(app: &TestApp, tag: &str, n: usize) -> Vec<String> {
    let users: Vec<String> = (0..n).map(|i| new_user(&format!("{tag}{i}"))).collect();
    let gateway = app.gateway().await;
    let calls = users.iter().map(|user| {
        let mut gateway = gateway.clone();
        let request = deduct(user, 1_000, "first");
        async move { gateway.deduct_quota(request).await.unwrap() }
    });
    join_all(calls).await;
    users
}

async fn december_grants(app: &TestApp, user: &str) -> i64 {
    count(
        &app.db,
        "SELECT COUNT(*) FROM free_quota_grants WHERE user_id = ? AND period = '2026-12'",
        user,
    )
    .await
}

#[tokio::test]
async fn a_reset_published_twice_to_two_replicas_grants_each_account_once() {
    let app = spawn_app_at(
        utc(NOVEMBER),
        &[KEEP_EVENTS, ("BILLING__RESET__BATCH_SIZE", "25")],
    )
    .await;
    let users = november_accounts(&app, "twice", 120).await;
    app.clock.set(utc(DECEMBER_FIRST));
    let mut second = spawn_with(app.settings.clone(), app.clock.clone(), app.db_name.clone()).await;

    publish_reset(&app.settings, "reset-free-quota:2026-12", "2026-12").await;
    publish_reset(&app.settings, "reset-free-quota:2026-12", "2026-12").await;
    // An operator's re-run of the same period with its own id.
    publish_reset(&app.settings, "reset-free-quota:2026-12:rerun", "2026-12").await;

    let first_run =
        reset_finished(&app.db, "reset-free-quota:2026-12", Duration::from_secs(30)).await;
    let re_run = reset_finished(
        &app.db,
        "reset-free-quota:2026-12:rerun",
        Duration::from_secs(30),
    )
    .await;
    assert_eq!(
        first_run + re_run,
        120,
        "every account granted by exactly one of the runs"
    );
    for user in &users {
        assert_eq!(december_grants(&app, user).await, 1, "{user}");
        let view = account(&app, user).await;
        assert_eq!(
            (
                view.period.as_str(),
                view.free_used_micros,
                view.free_granted_micros
            ),
            ("2026-12", 0, 10 * CNY)
        );
        assert_invariants(&app.db, user).await;
    }
    second.stop().await;
    app.cleanup().await;
}

/// Two replicas carrying out one command at the same time (as after a redelivery that reached
/// one replica while another still walked): each range is walked batch by batch by whichever
/// replica holds its row, and every account is granted once.
#[tokio::test]
async fn two_replicas_walking_one_command_at_once_grant_each_account_once() {
    let app = spawn_app_at(utc(NOVEMBER), &[KEEP_EVENTS]).await;
    let users = november_accounts(&app, "side", 300).await;
    app.clock.set(utc(DECEMBER_FIRST));
    let period = "2026-12".parse().unwrap();
    let command_id = "reset-free-quota:2026-12:side-by-side";
    let mut replicas = Vec::new();
    for _ in 0..2 {
        let replica = command_svc::app::Application::build(&app.settings, app.clock.clone())
            .await
            .unwrap();
        replicas.push(replica.commands().clone());
    }
    // Both plan the command at once: one plan, three ranges, whoever wrote it.
    let plans = join_all(
        replicas
            .iter()
            .map(|commands| commands.plan_reset(command_id, period, 3, 10)),
    )
    .await;
    let plans: Vec<Vec<i32>> = plans.into_iter().map(Result::unwrap).collect();
    assert_eq!(plans[0], vec![0, 1, 2]);
    assert_eq!(plans[0], plans[1], "both replicas walk the same ranges");

    // Every range walked by both replicas at once, in batches of 7, with charges going on.
    let walk = |commands: command_svc::commands::Commands, shard: i32| async move {
        let mut granted = 0;
        loop {
            let batch = commands
                .reset_batch(command_id, shard, period, 7)
                .await
                .unwrap();
            granted += batch.granted;
            if batch.finished {
                return granted;
            }
        }
    };
    let walks = replicas
        .iter()
        .flat_map(|commands| (0..3).map(|shard| walk(commands.clone(), shard)));
    let gateway = app.gateway().await;
    let charges = users.iter().step_by(3).map(|user| {
        let mut gateway = gateway.clone();
        let request = deduct(user, 2_000, "during-the-reset");
        async move { gateway.deduct_quota(request).await.unwrap() }
    });
    let (granted, _) = tokio::join!(join_all(walks), join_all(charges));
    let granted: u64 = granted.iter().sum();
    let finished = replicas[0].finish_reset(command_id).await.unwrap();
    assert_eq!(
        finished,
        Some(granted as i64),
        "the recorded count is what the batches granted"
    );
    // A charge that reached its account before the walk granted December itself (its lazy
    // grant), so the walks granted at least every account without a charge; none twice.
    assert!((200..=300).contains(&granted), "walks granted {granted}");
    for user in &users {
        assert_eq!(december_grants(&app, user).await, 1, "{user}");
    }
    for user in users.iter().step_by(7) {
        assert_invariants(&app.db, user).await;
    }
    app.cleanup().await;
}

#[tokio::test]
async fn a_reset_for_any_other_period_is_ignored() {
    let app = spawn_app_at(utc(NOVEMBER), &[KEEP_EVENTS]).await;
    let users = november_accounts(&app, "other", 3).await;
    app.clock.set(utc(DECEMBER_FIRST));
    publish_reset(&app.settings, "reset-free-quota:2027-03", "2027-03").await;
    publish_reset(&app.settings, "reset-free-quota:2026-10", "2026-10").await;
    // A valid command behind them shows they were consumed (and ignored), not stuck.
    publish_reset(&app.settings, "reset-free-quota:2026-12", "2026-12").await;
    reset_finished(&app.db, "reset-free-quota:2026-12", Duration::from_secs(30)).await;
    let others: i64 = sqlx::query_scalar(
        "SELECT COUNT(*) FROM command_progress WHERE period IN ('2027-03', '2026-10')",
    )
    .fetch_one(&app.db)
    .await
    .unwrap();
    assert_eq!(others, 0);
    let foreign: i64 = sqlx::query_scalar(
        "SELECT COUNT(*) FROM free_quota_grants WHERE period IN ('2027-03', '2026-10')",
    )
    .fetch_one(&app.db)
    .await
    .unwrap();
    assert_eq!(foreign, 0);
    for user in &users {
        assert_eq!(december_grants(&app, user).await, 1);
    }
    app.cleanup().await;
}

/// How many reset commands the service ignored as early, from its `/metrics`.
async fn ignored_early(app: &TestApp) -> f64 {
    scrape(app)
        .await
        .expect("billing_reset_commands_ignored_total", &[("why", "early")])
}

async fn ignored_early_reaches(app: &TestApp, n: f64) {
    eventually(
        Duration::from_secs(30),
        "the early reset is ignored",
        || async { (ignored_early(app).await == n).then_some(()) },
    )
    .await;
}

#[tokio::test]
async fn the_next_periods_reset_is_ignored_until_the_lead_before_its_start() {
    let app = spawn_app_at(utc(NOVEMBER), &[KEEP_EVENTS]).await;
    let users = november_accounts(&app, "early", 3).await;
    // On 20 November, December's reset would hand out December's quota ten days early.
    publish_reset(&app.settings, "reset-free-quota:2026-12", "2026-12").await;
    ignored_early_reaches(&app, 1.0).await;
    // Six minutes before midnight in Shanghai: still early (the lead is five).
    app.clock.set(utc("2026-11-30T15:54:00Z"));
    publish_reset(
        &app.settings,
        "reset-free-quota:2026-12:six-minutes",
        "2026-12",
    )
    .await;
    ignored_early_reaches(&app, 2.0).await;
    // Four minutes before: due, absorbing the scheduler's clock running ahead.
    app.clock.set(utc("2026-11-30T15:56:00Z"));
    publish_reset(
        &app.settings,
        "reset-free-quota:2026-12:four-minutes",
        "2026-12",
    )
    .await;
    reset_finished(
        &app.db,
        "reset-free-quota:2026-12:four-minutes",
        Duration::from_secs(30),
    )
    .await;
    let runs: Vec<String> = sqlx::query_scalar("SELECT command_id FROM command_progress")
        .fetch_all(&app.db)
        .await
        .unwrap();
    assert_eq!(runs, ["reset-free-quota:2026-12:four-minutes"]);
    for user in &users {
        assert_eq!(december_grants(&app, user).await, 1);
        assert_invariants(&app.db, user).await;
    }
    assert_eq!(ignored_early(&app).await, 2.0);
    app.cleanup().await;
}

#[tokio::test]
async fn a_reset_killed_mid_run_resumes_where_it_stopped() {
    let app = spawn_app_at(
        utc(NOVEMBER),
        &[
            KEEP_EVENTS,
            ("BILLING__RESET__BATCH_SIZE", "5"),
            ("BILLING__RESET__ACK_WAIT_SECS", "2"),
            ("BILLING__RESET__WORKERS", "3"),
        ],
    )
    .await;
    let users = november_accounts(&app, "crash", 600).await;
    app.clock.set(utc(DECEMBER_FIRST));
    // The first app's own consumer must not take the command: stop it before publishing.
    let mut app = app;
    app.stop().await;

    let doomed = spawn_killable(app.settings.clone(), app.clock.clone()).await;
    publish_reset(&app.settings, "reset-free-quota:2026-12", "2026-12").await;
    // Progress as the shards record it, batch by batch.
    let progress = |pool: sqlx::MySqlPool| async move {
        let row: (Option<i64>, Option<DateTime<Utc>>) = sqlx::query_as(
            "SELECT CAST(SUM(s.accounts_granted) AS SIGNED), MAX(p.finished_at) FROM command_shards s \
             JOIN command_progress p ON p.command_id = s.command_id \
             WHERE s.command_id = 'reset-free-quota:2026-12'",
        )
        .fetch_one(&pool)
        .await
        .unwrap();
        row.0.map(|granted| (granted, row.1))
    };
    loop {
        if let Some((granted, finished)) = progress(app.db.clone()).await {
            assert!(
                finished.is_none(),
                "the run finished before it could be killed"
            );
            if granted >= 50 {
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    doomed.kill();
    let (granted_at_kill, _) = progress(app.db.clone()).await.unwrap();
    assert!(granted_at_kill < 600, "killed mid-run");

    // A fresh replica gets the command again after the ack wait and finishes the walk.
    let mut successor =
        spawn_with(app.settings.clone(), app.clock.clone(), app.db_name.clone()).await;
    let granted =
        reset_finished(&app.db, "reset-free-quota:2026-12", Duration::from_secs(60)).await;
    assert_eq!(granted, 600, "none missed, none twice");
    let shards: i64 = sqlx::query_scalar(
        "SELECT COUNT(*) FROM command_shards WHERE command_id = 'reset-free-quota:2026-12'",
    )
    .fetch_one(&app.db)
    .await
    .unwrap();
    assert_eq!(shards, 3, "three ranges walked side by side");
    for user in &users {
        assert_eq!(december_grants(&app, user).await, 1, "{user}");
    }
    for user in users.iter().step_by(37) {
        assert_invariants(&app.db, user).await;
    }
    successor.stop().await;
    app.cleanup().await;
}

#[tokio::test]
async fn charges_during_a_reset_are_neither_lost_nor_granted_twice() {
    let app = spawn_app_at(
        utc(NOVEMBER),
        &[KEEP_EVENTS, ("BILLING__RESET__BATCH_SIZE", "20")],
    )
    .await;
    let users = november_accounts(&app, "busy", 200).await;
    let mut ops = app.ops().await;
    for user in &users {
        ops.adjust_balance(adjust(user, 5 * CNY, "float"))
            .await
            .unwrap();
    }
    app.clock.set(utc(DECEMBER_FIRST));

    publish_reset(&app.settings, "reset-free-quota:2026-12", "2026-12").await;
    let gateway = app.gateway().await;
    let workers = (0..8).map(|worker| {
        let (mut gateway, users) = (gateway.clone(), users.clone());
        async move {
            let mut acknowledged = 0;
            for i in 0..100 {
                let user = &users[(worker * 37 + i * 13) % users.len()];
                let request = deduct(user, 20_000, &format!("during-{worker}-{i}"));
                gateway
                    .deduct_quota(request)
                    .await
                    .expect("no charge fails during the reset");
                acknowledged += 1;
            }
            acknowledged
        }
    });
    let acknowledged: i64 = join_all(workers).await.into_iter().sum();
    reset_finished(&app.db, "reset-free-quota:2026-12", Duration::from_secs(60)).await;

    let december_charges: i64 = sqlx::query_scalar(
        "SELECT COUNT(*) FROM ledger WHERE kind = 'deduct' AND period = '2026-12'",
    )
    .fetch_one(&app.db)
    .await
    .unwrap();
    assert_eq!(
        december_charges, acknowledged,
        "every acknowledged charge is recorded once"
    );
    for user in &users {
        assert_eq!(december_grants(&app, user).await, 1, "{user}");
        assert_invariants(&app.db, user).await;
    }
    app.cleanup().await;
}

#[tokio::test]
async fn the_scheduler_publishes_the_current_month_at_start_and_command_svc_grants_it() {
    let app = spawn_app_at(utc(NOVEMBER), &[KEEP_EVENTS]).await;
    let users = november_accounts(&app, "sched", 20).await;
    app.clock.set(utc(DECEMBER_FIRST));

    let mut settings = app.settings.clone();
    settings.scheduler.http_addr = "127.0.0.1:0".into();
    let scheduler = scheduler_svc::app::Application::build(&settings, app.clock.clone())
        .await
        .unwrap();
    let probes = scheduler.http_addr();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let running = tokio::spawn(scheduler.run_until_stopped(async move {
        let _ = stopped.await;
    }));

    reset_finished(&app.db, "reset-free-quota:2026-12", Duration::from_secs(30)).await;
    for user in &users {
        assert_eq!(december_grants(&app, user).await, 1);
    }
    let ready = reqwest::get(format!("http://{probes}/readyz"))
        .await
        .unwrap();
    assert_eq!(ready.status(), 200);
    let metrics = reqwest::get(format!("http://{probes}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("billing_scheduler_reset_published_total"),
        "{metrics}"
    );
    let _ = stop.send(());
    let _ = running.await;
    app.cleanup().await;
}

#[tokio::test]
async fn a_reset_run_again_grants_nothing_new() {
    let app = spawn_app_at(utc(NOVEMBER), &[KEEP_EVENTS]).await;
    let users = november_accounts(&app, "again", 10).await;
    app.clock.set(utc(DECEMBER_FIRST));
    publish_reset(&app.settings, "reset-free-quota:2026-12", "2026-12").await;
    assert_eq!(
        reset_finished(&app.db, "reset-free-quota:2026-12", Duration::from_secs(30)).await,
        10
    );
    // A new account this month, made by a charge (its lazy grant), then a re-run.
    let newcomer = new_user("newcomer");
    app.gateway()
        .await
        .deduct_quota(deduct(&newcomer, 1, "first"))
        .await
        .unwrap();
    publish_reset(&app.settings, "reset-free-quota:2026-12:again", "2026-12").await;
    assert_eq!(
        reset_finished(
            &app.db,
            "reset-free-quota:2026-12:again",
            Duration::from_secs(30)
        )
        .await,
        0
    );
    for user in users.iter().chain([&newcomer]) {
        assert_eq!(december_grants(&app, user).await, 1);
    }
    app.cleanup().await;
}

/// A reset passes over an account row it cannot read and grants every other account; it never
/// stops at that batch.
#[tokio::test]
async fn a_reset_passes_over_an_unreadable_account() {
    let app = spawn_app_at(
        utc(NOVEMBER),
        &[KEEP_EVENTS, ("BILLING__RESET__BATCH_SIZE", "10")],
    )
    .await;
    let users = november_accounts(&app, "unreadable", 30).await;
    let broken = &users[12];
    corrupt_account(&app, broken).await;
    app.clock.set(utc(DECEMBER_FIRST));
    publish_reset(&app.settings, "reset-free-quota:2026-12", "2026-12").await;
    let granted =
        reset_finished(&app.db, "reset-free-quota:2026-12", Duration::from_secs(30)).await;
    assert_eq!(granted, 29);
    for user in users.iter().filter(|user| *user != broken) {
        assert_eq!(december_grants(&app, user).await, 1, "{user}");
        assert_invariants(&app.db, user).await;
    }
    assert_eq!(december_grants(&app, broken).await, 0);
    app.cleanup().await;
}
