//! The free-first split, refusals, replays and concurrency of DeductQuota.

use std::collections::HashSet;

use futures::future::join_all;
use shared::proto::v1 as pb;
use tonic::Code;

use crate::helpers::*;

/// A fresh account has the default 10 CNY of free quota; `balance` more comes from a recharge.
async fn account_with_balance(app: &TestApp, tag: &str, balance: i64) -> String {
    let user = new_user(tag);
    if balance > 0 {
        recharge(app, &user, balance).await;
    }
    user
}

#[tokio::test]
async fn deduct_uses_free_quota_before_balance() {
    let app = spawn_app().await;
    let user = account_with_balance(&app, "free-only", 5 * CNY).await;
    let reply = app
        .gateway()
        .await
        .deduct_quota(deduct(&user, 3 * CNY, "r1"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (reply.free_deducted_micros, reply.balance_deducted_micros),
        (3 * CNY, 0)
    );
    let account = reply.account.unwrap();
    assert_eq!(
        (
            account.balance_micros,
            account.free_used_micros,
            account.free_remaining_micros
        ),
        (5 * CNY, 3 * CNY, 7 * CNY)
    );
    assert!(!reply.replayed);
    assert_invariants(&app.db, &user).await;
    app.cleanup().await;
}

#[tokio::test]
async fn deduct_takes_balance_once_free_quota_is_used_up() {
    let app = spawn_app().await;
    let user = account_with_balance(&app, "balance-only", 5 * CNY).await;
    let mut gateway = app.gateway().await;
    gateway
        .deduct_quota(deduct(&user, 10 * CNY, "use-free"))
        .await
        .unwrap();
    let reply = gateway
        .deduct_quota(deduct(&user, 2 * CNY, "r2"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (reply.free_deducted_micros, reply.balance_deducted_micros),
        (0, 2 * CNY)
    );
    assert_eq!(reply.account.unwrap().balance_micros, 3 * CNY);
    assert_invariants(&app.db, &user).await;
    app.cleanup().await;
}

#[tokio::test]
async fn deduct_mixes_free_quota_and_balance() {
    let app = spawn_app().await;
    let user = account_with_balance(&app, "mixed", 5 * CNY).await;
    let reply = app
        .gateway()
        .await
        .deduct_quota(deduct(&user, 12 * CNY, "mixed"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (reply.free_deducted_micros, reply.balance_deducted_micros),
        (10 * CNY, 2 * CNY)
    );
    let account = reply.account.unwrap();
    assert_eq!(
        (
            account.balance_micros,
            account.free_remaining_micros,
            account.available_micros
        ),
        (3 * CNY, 0, 3 * CNY)
    );
    assert_invariants(&app.db, &user).await;
    app.cleanup().await;
}

#[tokio::test]
async fn deduct_may_empty_free_quota_and_balance_to_exactly_zero() {
    let app = spawn_app().await;
    let user = account_with_balance(&app, "zero", 5 * CNY).await;
    let reply = app
        .gateway()
        .await
        .deduct_quota(deduct(&user, 15 * CNY, "all"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (reply.free_deducted_micros, reply.balance_deducted_micros),
        (10 * CNY, 5 * CNY)
    );
    let account = reply.account.unwrap();
    assert_eq!(
        (
            account.balance_micros,
            account.free_remaining_micros,
            account.available_micros
        ),
        (0, 0, 0)
    );
    let refused = app
        .gateway()
        .await
        .deduct_quota(deduct(&user, 1, "one-more"))
        .await
        .unwrap_err();
    assert_eq!(reason(&refused), "INSUFFICIENT_QUOTA");
    assert_invariants(&app.db, &user).await;
    app.cleanup().await;
}

#[tokio::test]
async fn insufficient_quota_changes_nothing() {
    let app = spawn_app().await;
    let user = account_with_balance(&app, "short", 5 * CNY).await;
    let before = fingerprint(&app.db).await;
    let refused = app
        .gateway()
        .await
        .deduct_quota(deduct(&user, 15 * CNY + 1, "too-much"))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::FailedPrecondition);
    assert_eq!(reason(&refused), "INSUFFICIENT_QUOTA");
    assert_eq!(fingerprint(&app.db).await, before);

    // An unknown user is not created by a refused charge either.
    let stranger = new_user("stranger");
    let refused = app
        .gateway()
        .await
        .deduct_quota(deduct(&stranger, 10 * CNY + 1, "x"))
        .await
        .unwrap_err();
    assert_eq!(reason(&refused), "INSUFFICIENT_QUOTA");
    assert_eq!(fingerprint(&app.db).await, before);
    app.cleanup().await;
}

#[tokio::test]
async fn first_charge_creates_the_account_with_its_free_grant() {
    let app = spawn_app().await;
    let user = new_user("newcomer");
    let reply = app
        .gateway()
        .await
        .deduct_quota(deduct(&user, CNY, "first"))
        .await
        .unwrap()
        .into_inner();
    let account = reply.account.unwrap();
    assert_eq!(
        (
            account.version,
            account.free_granted_micros,
            account.free_used_micros
        ),
        (2, 10 * CNY, CNY)
    );
    let kinds: Vec<String> =
        sqlx::query_scalar("SELECT kind FROM ledger WHERE user_id = ? ORDER BY version")
            .bind(&user)
            .fetch_all(&app.db)
            .await
            .unwrap();
    assert_eq!(kinds, ["free_grant", "deduct"]);
    assert_invariants(&app.db, &user).await;
    app.cleanup().await;
}

#[tokio::test]
async fn reads_never_create_an_account() {
    let app = spawn_app().await;
    let user = new_user("reader");
    let before = fingerprint(&app.db).await;
    let check = app
        .gateway()
        .await
        .check_quota(pb::CheckQuotaRequest {
            user_id: user.clone(),
            amount_micros: 10 * CNY,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(check.allowed);
    let view = check.account.unwrap();
    assert_eq!(
        (
            view.version,
            view.available_micros,
            view.free_granted_micros
        ),
        (0, 10 * CNY, 10 * CNY)
    );
    let over = app
        .gateway()
        .await
        .check_quota(pb::CheckQuotaRequest {
            user_id: user.clone(),
            amount_micros: 10 * CNY + 1,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(!over.allowed);
    assert_eq!(account(&app, &user).await.version, 0);
    assert_eq!(fingerprint(&app.db).await, before);
    app.cleanup().await;
}

#[tokio::test]
async fn same_request_id_sent_50_times_concurrently_charges_once() {
    let app = spawn_app().await;
    let user = account_with_balance(&app, "dup", 5 * CNY).await;
    let gateway = app.gateway().await;
    let calls = (0..50).map(|_| {
        let mut gateway = gateway.clone();
        let request = deduct(&user, 3 * CNY, "same-request");
        async move {
            gateway
                .deduct_quota(request)
                .await
                .map(|reply| reply.into_inner())
        }
    });
    let replies: Vec<_> = join_all(calls)
        .await
        .into_iter()
        .map(|reply| reply.expect("every duplicate succeeds"))
        .collect();
    let record_ids: HashSet<_> = replies
        .iter()
        .map(|reply| reply.record_id.clone())
        .collect();
    assert_eq!(
        record_ids.len(),
        1,
        "every reply carries the same record_id"
    );
    assert_eq!(replies.iter().filter(|reply| !reply.replayed).count(), 1);
    assert!(
        replies
            .iter()
            .all(|reply| reply.free_deducted_micros == 3 * CNY)
    );
    let charges = count(
        &app.db,
        "SELECT COUNT(*) FROM ledger WHERE user_id = ? AND kind = 'deduct'",
        &user,
    )
    .await;
    assert_eq!(charges, 1);
    assert_eq!(account(&app, &user).await.free_used_micros, 3 * CNY);
    assert_invariants(&app.db, &user).await;
    app.cleanup().await;
}

#[tokio::test]
async fn same_request_id_for_a_new_account_charges_once() {
    let app = spawn_app().await;
    let user = new_user("dup-new");
    let gateway = app.gateway().await;
    let calls = (0..20).map(|_| {
        let mut gateway = gateway.clone();
        let request = deduct(&user, CNY, "first-ever");
        async move {
            gateway
                .deduct_quota(request)
                .await
                .map(|reply| reply.into_inner().record_id)
        }
    });
    let ids: HashSet<_> = join_all(calls)
        .await
        .into_iter()
        .map(Result::unwrap)
        .collect();
    assert_eq!(ids.len(), 1);
    assert_eq!(
        ledger_count(&app, &user).await,
        2,
        "one grant and one charge"
    );
    assert_invariants(&app.db, &user).await;
    app.cleanup().await;
}

#[tokio::test]
async fn same_request_id_with_other_parameters_is_refused() {
    let app = spawn_app().await;
    let user = account_with_balance(&app, "reuse", 0).await;
    let mut gateway = app.gateway().await;
    gateway
        .deduct_quota(deduct(&user, CNY, "key"))
        .await
        .unwrap();
    let before = fingerprint(&app.db).await;

    let other_amount = gateway
        .deduct_quota(deduct(&user, 2 * CNY, "key"))
        .await
        .unwrap_err();
    assert_eq!(
        (other_amount.code(), reason(&other_amount)),
        (Code::AlreadyExists, "IDEMPOTENCY_KEY_REUSED".into())
    );
    let mut other_api = deduct(&user, CNY, "key");
    other_api.api_id = "api.other".into();
    let other_api = gateway.deduct_quota(other_api).await.unwrap_err();
    assert_eq!(reason(&other_api), "IDEMPOTENCY_KEY_REUSED");

    // The description is not part of the key: a replay.
    let mut other_description = deduct(&user, CNY, "key");
    other_description.description = "changed".into();
    assert!(
        gateway
            .deduct_quota(other_description)
            .await
            .unwrap()
            .into_inner()
            .replayed
    );
    assert_eq!(fingerprint(&app.db).await, before);
    app.cleanup().await;
}

#[tokio::test]
async fn a_retry_after_insufficient_quota_succeeds_once_recharged() {
    let app = spawn_app().await;
    let user = account_with_balance(&app, "retry", 0).await;
    let mut gateway = app.gateway().await;
    let refused = gateway
        .deduct_quota(deduct(&user, 12 * CNY, "retry-me"))
        .await
        .unwrap_err();
    assert_eq!(reason(&refused), "INSUFFICIENT_QUOTA");
    recharge(&app, &user, 5 * CNY).await;
    let reply = gateway
        .deduct_quota(deduct(&user, 12 * CNY, "retry-me"))
        .await
        .unwrap()
        .into_inner();
    assert!(!reply.replayed);
    assert_eq!(
        (reply.free_deducted_micros, reply.balance_deducted_micros),
        (10 * CNY, 2 * CNY)
    );
    let again = gateway
        .deduct_quota(deduct(&user, 12 * CNY, "retry-me"))
        .await
        .unwrap()
        .into_inner();
    assert!(again.replayed);
    assert_eq!(again.record_id, reply.record_id);
    assert_invariants(&app.db, &user).await;
    app.cleanup().await;
}

#[tokio::test]
async fn a_thousand_concurrent_charges_on_one_account_take_exactly_what_it_has() {
    let app = spawn_app().await;
    // 10 CNY free + 490 CNY balance = exactly 500 charges of 1 CNY.
    let user = account_with_balance(&app, "hot", 490 * CNY).await;
    let gateway = app.gateway().await;
    let calls = (0..1000).map(|i| {
        let mut gateway = gateway.clone();
        let request = deduct(&user, CNY, &format!("call-{i}"));
        async move { gateway.deduct_quota(request).await }
    });
    let results = join_all(calls).await;
    let ok = results.iter().filter(|result| result.is_ok()).count();
    let refused = results
        .iter()
        .filter(|result| matches!(result, Err(status) if reason(status) == "INSUFFICIENT_QUOTA"))
        .count();
    assert_eq!((ok, refused), (500, 500));
    let account = account(&app, &user).await;
    assert_eq!(
        (account.balance_micros, account.free_remaining_micros),
        (0, 0)
    );
    let charges = count(
        &app.db,
        "SELECT COUNT(*) FROM ledger WHERE user_id = ? AND kind = 'deduct'",
        &user,
    )
    .await;
    assert_eq!(charges, 500);
    assert_invariants(&app.db, &user).await;
    app.cleanup().await;
}

#[tokio::test]
async fn a_charge_that_times_out_on_a_lock_is_retried_and_applies_once() {
    let app = spawn_app_at(
        chrono::Utc::now(),
        &[("BILLING__DATABASE__LOCK_WAIT_TIMEOUT_SECS", "1")],
    )
    .await;
    let user = account_with_balance(&app, "locked", 0).await;
    app.gateway()
        .await
        .deduct_quota(deduct(&user, CNY, "open"))
        .await
        .unwrap();

    // Another session holds the account row for longer than the service's lock wait timeout.
    let mut blocker = app.db.begin().await.unwrap();
    sqlx::query("SELECT version FROM accounts WHERE user_id = ? FOR UPDATE")
        .bind(&user)
        .execute(&mut *blocker)
        .await
        .unwrap();
    let mut gateway = app.gateway().await;
    let request = deduct(&user, CNY, "waits");
    let charge = tokio::spawn(async move { gateway.deduct_quota(request).await });
    tokio::time::sleep(std::time::Duration::from_millis(2_500)).await;
    assert!(
        !charge.is_finished(),
        "the first attempt timed out and is being retried"
    );
    blocker.commit().await.unwrap();

    let reply = charge
        .await
        .unwrap()
        .expect("the retried charge succeeds")
        .into_inner();
    assert!(!reply.replayed);
    assert_eq!(account(&app, &user).await.free_used_micros, 2 * CNY);
    let charges = count(
        &app.db,
        "SELECT COUNT(*) FROM ledger WHERE user_id = ? AND kind = 'deduct'",
        &user,
    )
    .await;
    assert_eq!(charges, 2);
    assert_invariants(&app.db, &user).await;
    app.cleanup().await;
}

/// The counterpart of the test above: without retries the same wait ends the call, so the
/// success above is the retry's doing, and the bounded wait is really applied.
#[tokio::test]
async fn a_lock_held_too_long_ends_in_unavailable_without_a_write() {
    let app = spawn_app_at(
        chrono::Utc::now(),
        &[
            ("BILLING__DATABASE__LOCK_WAIT_TIMEOUT_SECS", "1"),
            ("BILLING__DATABASE__MAX_RETRIES", "0"),
        ],
    )
    .await;
    let user = account_with_balance(&app, "held", 0).await;
    app.gateway()
        .await
        .deduct_quota(deduct(&user, CNY, "open"))
        .await
        .unwrap();
    let before = fingerprint(&app.db).await;

    let mut blocker = app.db.begin().await.unwrap();
    sqlx::query("SELECT version FROM accounts WHERE user_id = ? FOR UPDATE")
        .bind(&user)
        .execute(&mut *blocker)
        .await
        .unwrap();
    let started = std::time::Instant::now();
    let refused = app
        .gateway()
        .await
        .deduct_quota(deduct(&user, CNY, "gives-up"))
        .await
        .unwrap_err();
    assert_eq!(
        (refused.code(), reason(&refused)),
        (Code::Unavailable, "STORE_UNAVAILABLE".to_owned())
    );
    assert!(
        started.elapsed() < std::time::Duration::from_secs(10),
        "the wait is bounded by the setting"
    );
    blocker.rollback().await.unwrap();
    assert_eq!(fingerprint(&app.db).await, before);
    app.cleanup().await;
}

/// A charge chosen as a deadlock's victim (MySQL error 1213) is run again and applies once,
/// with group commit and with one transaction per charge.
#[tokio::test]
async fn a_charge_that_loses_a_deadlock_is_retried_and_applies_once() {
    for group_commit in ["true", "false"] {
        let app = spawn_app_at(
            chrono::Utc::now(),
            &[("BILLING__COMMAND__GROUP_COMMIT__ENABLED", group_commit)],
        )
        .await;
        charge_through_a_deadlock(&app).await;
        app.cleanup().await;
    }
}

/// Makes the next charge of a fresh account deadlock with another session: that session holds
/// the gaps of the account's charge keys, so the charge waits to insert its ledger row while it
/// holds the account row, which the session then asks for. The session has written far more,
/// so the database rolls the charge back, not the session.
async fn charge_through_a_deadlock(app: &TestApp) {
    let user = account_with_balance(app, "deadlock", 0).await;
    let mut gateway = app.gateway().await;
    gateway
        .deduct_quota(deduct(&user, CNY, "open"))
        .await
        .unwrap();
    sqlx::query("CREATE TABLE IF NOT EXISTS deadlock_ballast (id INT PRIMARY KEY)")
        .execute(&app.db)
        .await
        .unwrap();

    let mut session = app.db.begin().await.unwrap();
    let ballast: Vec<String> = (0..500).map(|id| format!("({id})")).collect();
    let fill = format!(
        "INSERT INTO deadlock_ballast (id) VALUES {}",
        ballast.join(", ")
    );
    sqlx::raw_sql(sqlx::AssertSqlSafe(fill))
        .execute(&mut *session)
        .await
        .unwrap();
    sqlx::query(
        "SELECT id FROM ledger FORCE INDEX (ledger_user_request) WHERE user_id = ? FOR UPDATE",
    )
    .bind(&user)
    .execute(&mut *session)
    .await
    .unwrap();

    let request = deduct(&user, CNY, "through-a-deadlock");
    let charge = tokio::spawn(async move { gateway.deduct_quota(request).await });
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    assert!(
        !charge.is_finished(),
        "the charge waits for the session's gap lock"
    );
    sqlx::query("SELECT version FROM accounts WHERE user_id = ? FOR UPDATE")
        .bind(&user)
        .execute(&mut *session)
        .await
        .expect("the session wins the deadlock: the charge is its victim");
    session.rollback().await.unwrap();

    let reply = charge
        .await
        .unwrap()
        .expect("the charge is run again after the deadlock and succeeds")
        .into_inner();
    assert!(!reply.replayed);
    let charges = count(
        &app.db,
        "SELECT COUNT(*) FROM ledger WHERE user_id = ? AND kind = 'deduct'",
        &user,
    )
    .await;
    assert_eq!(charges, 2, "the deadlocked charge applied exactly once");
    assert_eq!(account(app, &user).await.free_used_micros, 2 * CNY);
    assert_invariants(&app.db, &user).await;
}
