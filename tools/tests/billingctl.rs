//! billingctl against a running command-svc and query-svc on their own database, streams and
//! keys: each command as an operator runs it, as a separate process.

use std::{collections::HashMap, path::Path, process::Output, time::Duration};

use chrono::{DateTime, Utc};
use shared::{clock::Clock, config::Settings};
use sqlx::MySqlPool;

use testkit::{TestDatabase, admin_url, unique_tag};

/// The services and the environment that points billingctl at them.
struct Stack {
    env: HashMap<String, String>,
    clock: Clock,
    db: MySqlPool,
    db_name: String,
    stream_prefix: String,
    stops: Vec<tokio::sync::oneshot::Sender<()>>,
}

async fn spawn_stack(now: DateTime<Utc>) -> Stack {
    let tag = unique_tag();
    let database = TestDatabase::create(&tag).await;
    let db_name = database.name;
    let spare = || format!("127.0.0.1:{}", testkit::spare_port());
    let mut env = testkit::isolated_env(&tag, &format!("{}/{db_name}", admin_url()));
    let grpc = spare();
    for (name, value) in [
        ("BILLING__QUERY__COMMAND_ENDPOINT", format!("http://{grpc}")),
        ("BILLING__COMMAND__GRPC_ADDR", grpc),
        ("BILLING__COMMAND__HTTP_ADDR", spare()),
        ("BILLING__QUERY__HTTP_ADDR", spare()),
        ("BILLING__OUTBOX__RETENTION_HOURS", "100000".to_owned()),
    ] {
        env.insert(name.to_owned(), value);
    }
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../configs/config.yaml");
    let settings = Settings::load_with_env(&path, Some(env.clone())).unwrap();
    shared::telemetry::init(&settings.telemetry);
    let clock = Clock::manual(now);
    let clock_for_test = clock.clone();
    let mut stops = Vec::new();
    let command = command_svc::app::Application::build(&settings, clock.clone())
        .await
        .unwrap();
    let query = query_svc::app::Application::build(&settings, clock)
        .await
        .unwrap();
    for run in [
        Box::pin(command.run_until_stopped(wait(&mut stops)))
            as std::pin::Pin<Box<dyn std::future::Future<Output = anyhow::Result<()>> + Send>>,
        Box::pin(query.run_until_stopped(wait(&mut stops))),
    ] {
        tokio::spawn(run);
    }
    let db = MySqlPool::connect(&format!("{}/{db_name}", admin_url()))
        .await
        .unwrap();
    Stack {
        env,
        clock: clock_for_test,
        db,
        db_name,
        stream_prefix: format!("T{tag}_"),
        stops,
    }
}

fn wait(
    stops: &mut Vec<tokio::sync::oneshot::Sender<()>>,
) -> impl std::future::Future<Output = ()> + Send + 'static {
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    stops.push(stop);
    async move {
        let _ = stopped.await;
    }
}

impl Stack {
    /// Runs billingctl with `args` against this stack (the services keep serving meanwhile).
    async fn billingctl(&self, args: &[&str]) -> Output {
        let config = Path::new(env!("CARGO_MANIFEST_DIR")).join("../configs/config.yaml");
        tokio::process::Command::new(env!("CARGO_BIN_EXE_billingctl"))
            .arg("--config")
            .arg(config)
            .args(args)
            .envs(&self.env)
            .output()
            .await
            .expect("billingctl runs")
    }

    async fn cleanup(self) {
        for stop in self.stops {
            let _ = stop.send(());
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
        testkit::delete_streams(&shared::bus::BusNames::new(&self.stream_prefix, "")).await;
        self.db.close().await;
        TestDatabase::drop_named(&self.db_name).await;
    }
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

async fn eventually<F: std::future::Future<Output = bool>>(mut probe: impl FnMut() -> F) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while !probe().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "not reached in time"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn operators_adjust_mint_tokens_and_list_unmatched_payments() {
    let stack = spawn_stack(Utc::now()).await;
    let out = stack
        .billingctl(&[
            "adjust", "--user", "ops-user", "--amount", "-1", "--reason", "test", "--actor", "ops",
        ])
        .await;
    assert!(
        !out.status.success(),
        "a debit beyond the balance is refused"
    );
    let out = stack
        .billingctl(&[
            "adjust",
            "--user",
            "ops-user",
            "--amount",
            "2500000",
            "--reason",
            "goodwill",
            "--actor",
            "ops@example.com",
            "--adjustment-id",
            "adj-1",
        ])
        .await;
    assert!(out.status.success(), "{out:?}");
    assert!(
        stdout(&out).contains("balance now 2500000 micros"),
        "{}",
        stdout(&out)
    );
    let again = stack
        .billingctl(&[
            "adjust",
            "--user",
            "ops-user",
            "--amount",
            "2500000",
            "--reason",
            "goodwill",
            "--actor",
            "ops@example.com",
            "--adjustment-id",
            "adj-1",
        ])
        .await;
    assert!(stdout(&again).contains("(replayed)"));

    let out = stack
        .billingctl(&["token", "--user", "ops-user", "--ttl-secs", "60"])
        .await;
    let token = stdout(&out).trim().to_owned();
    let mut validation = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::HS256);
    validation.set_required_spec_claims(&["exp", "sub"]);
    let claims = jsonwebtoken::decode::<serde_json::Value>(
        &token,
        &jsonwebtoken::DecodingKey::from_secret(b"dev-jwt-secret-change-me"),
        &validation,
    )
    .unwrap();
    assert_eq!(claims.claims["sub"], "ops-user");

    // `-conf PATH`, as the services take it, works the same.
    let config = Path::new(env!("CARGO_MANIFEST_DIR")).join("../configs/config.yaml");
    let seed_form = tokio::process::Command::new(env!("CARGO_BIN_EXE_billingctl"))
        .arg("-conf")
        .arg(&config)
        .args(["token", "--user", "ops-user"])
        .envs(&stack.env)
        .output()
        .await
        .unwrap();
    assert!(seed_form.status.success(), "{seed_form:?}");
    assert_eq!(stdout(&seed_form).trim().split('.').count(), 3, "a JWT");

    sqlx::query(
        "INSERT INTO unmatched_payments (unmatched_id, order_no, user_id, provider_txn_id, success, \
         paid_amount_micros, why, created_at) VALUES ('u-1', 'RO-x', NULL, 'txn-x', TRUE, 700, 'unknown_order', NOW(6))",
    )
    .execute(&stack.db)
    .await
    .unwrap();
    let out = stack.billingctl(&["unmatched", "list"]).await;
    assert!(
        stdout(&out).contains("unknown_order") && stdout(&out).contains("txn-x"),
        "{}",
        stdout(&out)
    );
    assert!(stdout(&out).contains("1 unmatched payment(s)"));
    stack.cleanup().await;
}

#[tokio::test]
async fn reconcile_exits_nonzero_on_a_difference_and_repair_fixes_it() {
    let stack = spawn_stack(Utc::now()).await;
    let out = stack
        .billingctl(&[
            "adjust", "--user", "rec-user", "--amount", "1000000", "--reason", "r", "--actor", "a",
        ])
        .await;
    assert!(out.status.success(), "{out:?}");
    eventually(|| async {
        let projected: Option<i64> =
            sqlx::query_scalar("SELECT version FROM rm_accounts WHERE user_id = 'rec-user'")
                .fetch_optional(&stack.db)
                .await
                .unwrap();
        projected == Some(2)
    })
    .await;
    let clean = stack.billingctl(&["reconcile", "--settle-ms", "100"]).await;
    assert!(clean.status.success(), "{}", stdout(&clean));
    assert!(stdout(&clean).contains("0 difference(s)"));

    sqlx::query("UPDATE rm_accounts SET balance_micros = 1 WHERE user_id = 'rec-user'")
        .execute(&stack.db)
        .await
        .unwrap();
    let found = stack
        .billingctl(&["reconcile", "--settle-ms", "100", "--repair"])
        .await;
    assert_eq!(found.status.code(), Some(1));
    assert!(
        stdout(&found).contains("rec-user: snapshot at version 2"),
        "{}",
        stdout(&found)
    );
    let after = stack.billingctl(&["reconcile", "--settle-ms", "100"]).await;
    assert!(after.status.success(), "{}", stdout(&after));

    let rebuilt = stack.billingctl(&["rebuild-read-model"]).await;
    assert!(
        stdout(&rebuilt).contains("rebuilt: 1 accounts, 2 records"),
        "{}",
        stdout(&rebuilt)
    );
    let letters = stack.billingctl(&["dlq", "list"]).await;
    assert!(
        stdout(&letters).contains("0 dead letter(s)"),
        "{}",
        stdout(&letters)
    );
    stack.cleanup().await;
}

#[tokio::test]
async fn reset_free_quota_runs_again_under_its_own_id() {
    // billingctl checks the period against the real clock, so the test runs in the real month:
    // the account is made in the month before; then command-svc's clock is five seconds into
    // the current month, the month billingctl publishes.
    let config = Path::new(env!("CARGO_MANIFEST_DIR")).join("../configs/config.yaml");
    let zone = Settings::load_with_env(&config, Some(HashMap::new()))
        .unwrap()
        .billing
        .zone()
        .unwrap();
    let current = zone.period_of(Utc::now());
    let month_start = zone.period_start(current);
    let stack = spawn_stack(month_start - chrono::Duration::days(10)).await;
    let out = stack
        .billingctl(&[
            "adjust",
            "--user",
            "reset-user",
            "--amount",
            "1000000",
            "--reason",
            "r",
            "--actor",
            "a",
        ])
        .await;
    assert!(out.status.success(), "{out:?}");
    stack.clock.set(month_start + chrono::Duration::seconds(5));
    let published = stack
        .billingctl(&["reset-free-quota", "--period", &current.to_string()])
        .await;
    assert!(published.status.success(), "{published:?}");
    // published <command id> (trace <trace id>)
    let printed = stdout(&published);
    let words: Vec<&str> = printed.split_whitespace().collect();
    assert_eq!((words[0], words[2]), ("published", "(trace"), "{printed}");
    let command_id = words[1].to_owned();
    let trace_id = words[3].trim_end_matches(')').to_owned();
    assert_eq!(trace_id.len(), 32, "{printed}");
    assert!(
        command_id.starts_with(&format!("reset-free-quota:{current}:")),
        "{command_id}"
    );
    eventually(|| async {
        let finished: Option<Option<DateTime<Utc>>> =
            sqlx::query_scalar("SELECT finished_at FROM command_progress WHERE command_id = ?")
                .bind(&command_id)
                .fetch_optional(&stack.db)
                .await
                .unwrap();
        matches!(finished, Some(Some(_)))
    })
    .await;
    // Each grant's event carries the command's trace.
    let granted: i64 = sqlx::query_scalar(
        "SELECT CAST(SUM(accounts_granted) AS SIGNED) FROM command_shards WHERE command_id = ?",
    )
    .bind(&command_id)
    .fetch_one(&stack.db)
    .await
    .unwrap();
    let traced: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM outbox WHERE traceparent LIKE ?")
        .bind(format!("00-{trace_id}-%"))
        .fetch_one(&stack.db)
        .await
        .unwrap();
    assert!(granted > 0);
    assert_eq!(traced, granted, "one traced event per grant");
    let bad = stack
        .billingctl(&["reset-free-quota", "--period", "2026-13"])
        .await;
    assert!(!bad.status.success());
    // Next month's reset is refused before its lead (5 minutes before it starts), as are past
    // periods and later ones; nothing is published.
    let next = current.next();
    let early = zone.reset_due(next, Utc::now(), std::time::Duration::from_secs(300));
    for period in [current.previous(), next.next()]
        .into_iter()
        .chain(early.is_err().then_some(next))
    {
        let refused = stack
            .billingctl(&["reset-free-quota", "--period", &period.to_string()])
            .await;
        assert!(!refused.status.success(), "{period}: {refused:?}");
        let said = String::from_utf8_lossy(&refused.stderr);
        assert!(said.contains("not published"), "{period}: {said}");
    }
    let runs: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM command_progress")
        .fetch_one(&stack.db)
        .await
        .unwrap();
    assert_eq!(runs, 1, "only the current period's run");
    stack.cleanup().await;
}

#[tokio::test]
async fn prices_are_published_from_a_file_shown_and_assigned() {
    let stack = spawn_stack(Utc::now()).await;
    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("../configs/prices.example.yaml");
    let example = example.to_str().unwrap();
    let at = (stack.clock.now() + chrono::TimeDelta::hours(1)).to_rfc3339();
    let publish = [
        "prices",
        "publish",
        "--name",
        "default",
        "--file",
        example,
        "--at",
        &at,
        "--publish-id",
        "pub-1",
        "--actor",
        "pricing",
    ];
    let out = stack.billingctl(&publish).await;
    assert!(out.status.success(), "{out:?}");
    assert!(
        stdout(&out).contains("default version 1 in CNY"),
        "{}",
        stdout(&out)
    );
    assert!(stdout(&out).contains("12 price(s)"), "{}", stdout(&out));
    assert!(stdout(&out).contains("chat.gpt-4o\toutput_tokens\t72000000 micros per 1000000"));
    let again = stack.billingctl(&publish).await;
    assert!(stdout(&again).contains("(replayed)"), "{}", stdout(&again));

    // Not in effect yet: shown as scheduled; at its instant, in effect.
    let shown = stack
        .billingctl(&["prices", "show", "--name", "default"])
        .await;
    assert!(shown.status.success(), "{shown:?}");
    assert!(stdout(&shown).contains("no version in effect"));
    assert!(stdout(&shown).contains("scheduled: default version 1"));
    let then = stack
        .billingctl(&["prices", "show", "--name", "default", "--at", &at])
        .await;
    assert!(
        stdout(&then).starts_with("default version 1"),
        "{}",
        stdout(&then)
    );

    let assigned = stack
        .billingctl(&[
            "prices",
            "assign",
            "--user",
            "priced-user",
            "--name",
            "default",
        ])
        .await;
    assert!(assigned.status.success(), "{assigned:?}");
    assert!(stdout(&assigned).contains("priced-user is priced by default"));
    let unknown = stack
        .billingctl(&[
            "prices",
            "assign",
            "--user",
            "priced-user",
            "--name",
            "nope",
        ])
        .await;
    assert!(!unknown.status.success());
    assert!(
        String::from_utf8_lossy(&unknown.stderr).contains("NotFound"),
        "{unknown:?}"
    );

    let bad = std::env::temp_dir().join(format!("prices-{}.yaml", unique_tag()));
    std::fs::write(
        &bad,
        "prices:\n  - {api_id: a, meter: call, price_micros: 1, per_units: 1}\n  - {api_id: a, meter: call, price_micros: 2, per_units: 1}\n",
    )
    .unwrap();
    let refused = stack
        .billingctl(&[
            "prices",
            "publish",
            "--name",
            "default",
            "--file",
            bad.to_str().unwrap(),
        ])
        .await;
    std::fs::remove_file(&bad).unwrap();
    assert!(!refused.status.success());
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("same api_id and meter"),
        "{refused:?}"
    );
    let versions: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM price_list_versions")
        .fetch_one(&stack.db)
        .await
        .unwrap();
    assert_eq!(versions, 1);
    stack.cleanup().await;
}

#[tokio::test]
async fn limits_are_set_shown_replayed_and_removed() {
    let stack = spawn_stack(Utc::now()).await;
    let set = [
        "limits",
        "set",
        "--user",
        "limited-user",
        "--limit",
        "day:10000000:account",
        "--limit",
        "month:200000000:api:chat.gpt-4o",
        "--set-id",
        "set-1",
    ];
    let out = stack.billingctl(&set).await;
    assert!(out.status.success(), "{out:?}");
    assert!(
        stdout(&out).contains("limited-user: 2 limit(s) set"),
        "{}",
        stdout(&out)
    );
    assert!(
        stdout(&out)
            .contains("api:chat.gpt-4o\tmonth\tlimit 200000000\tspent 0\tremaining 200000000"),
        "{}",
        stdout(&out)
    );
    let again = stack.billingctl(&set).await;
    assert!(stdout(&again).contains("(replayed)"), "{}", stdout(&again));

    let shown = stack
        .billingctl(&["limits", "show", "--user", "limited-user"])
        .await;
    assert!(shown.status.success(), "{shown:?}");
    assert!(
        stdout(&shown).contains("account\tday\tlimit 10000000\tspent 0\tremaining 10000000"),
        "{}",
        stdout(&shown)
    );

    // A malformed --limit is refused before anything is sent; a bad scope by the service.
    for (limit, said) in [
        ("day:ten:account", "not a whole number of micros"),
        ("day:1:team:x", "InvalidArgument"),
    ] {
        let args = ["limits", "set", "--user", "limited-user", "--limit", limit];
        let refused = stack.billingctl(&args).await;
        assert!(!refused.status.success(), "{limit}: {refused:?}");
        let stderr = String::from_utf8_lossy(&refused.stderr);
        assert!(stderr.contains(said), "{limit}: {stderr}");
    }
    let shown = stack
        .billingctl(&["limits", "show", "--user", "limited-user"])
        .await;
    assert!(
        stdout(&shown).contains("account\tday\tlimit 10000000"),
        "the refused sets changed nothing: {}",
        stdout(&shown)
    );

    let removed = stack
        .billingctl(&["limits", "set", "--user", "limited-user"])
        .await;
    assert!(removed.status.success(), "{removed:?}");
    assert!(
        stdout(&removed).contains("no limits"),
        "{}",
        stdout(&removed)
    );
    stack.cleanup().await;
}
