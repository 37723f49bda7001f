//! MySQL going away: callers get UNAVAILABLE (outcome unknown, retry with the same key), never a
//! wrong answer or a half-written change, and the service recovers by itself.

use reqwest::StatusCode;
use shared::{clock::Clock, proto::v1 as pb};
use tonic::Code;

use testkit::OwnMariaDb;

use crate::helpers::*;

#[tokio::test]
async fn mysql_down_gives_unavailable_and_the_service_recovers_without_a_restart() {
    let mut mariadb = OwnMariaDb::start().await;
    let url = mariadb.database("billing").await;
    let settings = test_settings(&url, &[("BILLING__DATABASE__ACQUIRE_TIMEOUT_MS", "1000")]);
    let app = spawn_with(settings, Clock::system(), String::new()).await;
    let user = new_user("outage");
    let mut gateway = app.gateway().await;
    gateway
        .deduct_quota(deduct(&user, CNY, "before"))
        .await
        .unwrap();

    mariadb.kill().await;
    let during = gateway
        .deduct_quota(deduct(&user, 2 * CNY, "during"))
        .await
        .unwrap_err();
    assert_eq!(
        (during.code(), reason(&during)),
        (Code::Unavailable, "STORE_UNAVAILABLE".to_owned())
    );
    let read = gateway
        .get_account(pb::GetAccountRequest {
            user_id: user.clone(),
        })
        .await
        .unwrap_err();
    assert_eq!(read.code(), Code::Unavailable);
    let ready = reqwest::get(app.http("/readyz")).await.unwrap();
    assert_eq!(ready.status(), StatusCode::SERVICE_UNAVAILABLE);

    mariadb.restart().await;
    let retried = gateway
        .deduct_quota(deduct(&user, 2 * CNY, "during"))
        .await
        .unwrap()
        .into_inner();
    assert!(!retried.replayed, "the refused attempt never committed");
    let again = gateway
        .deduct_quota(deduct(&user, 2 * CNY, "during"))
        .await
        .unwrap()
        .into_inner();
    assert!(again.replayed);
    assert_eq!(account(&app, &user).await.free_used_micros, 3 * CNY);
    assert_eq!(
        reqwest::get(app.http("/readyz")).await.unwrap().status(),
        StatusCode::OK
    );

    let pool = sqlx::MySqlPool::connect(&url).await.unwrap();
    assert_invariants(&pool, &user).await;
    let mut app = app;
    app.stop().await;
}
