//! Running safely: the service refuses to start with secrets a production service must not have,
//! and its listeners bound what one client may hold or send.

use command_svc::app::Application;
use shared::clock::Clock;

use crate::helpers::*;

#[tokio::test]
async fn development_secrets_start_nothing_outside_dev_mode() {
    let db = TestDatabase::create(&unique_tag()).await;
    let settings = test_settings(&db.url, &[("BILLING__DEV_MODE", "false")]);
    let refused = Application::build(&settings, Clock::system())
        .await
        .err()
        .expect("refused");
    let said = format!("{refused:#}");
    assert!(said.contains("auth.callers"), "{said}");
    assert!(said.contains("development value"), "{said}");

    // Strong, distinct secrets start it.
    let strong = |name: &str| format!("{name}-{}", "q2Vb1Nc0uYw8R7tZk3LmP9sDf6HgJx4E");
    let callers = format!(
        "[{{name: gateway, token: {}, scopes: [quota]}}]",
        strong("gateway")
    );
    let dir = std::env::temp_dir().join(format!("billing-safety-{}", unique_tag()));
    std::fs::create_dir_all(&dir).unwrap();
    let secrets = dir.join("secrets.yaml");
    std::fs::write(
        &secrets,
        format!(
            "auth:\n  callers: {callers}\n  jwt_secret: {}\npayment:\n  webhook_secret: {}\nquery:\n  command_token: {}\n",
            strong("jwt"),
            strong("webhook"),
            strong("gateway"),
        ),
    )
    .unwrap();
    let mut env: std::collections::HashMap<String, String> = std::env::vars()
        .filter(|(name, _)| !name.starts_with("BILLING__"))
        .collect();
    env.extend(testkit::isolated_env(&unique_tag(), &db.url));
    env.insert("BILLING__DEV_MODE".into(), "false".into());
    env.insert("BILLING__COMMAND__GRPC_ADDR".into(), "127.0.0.1:0".into());
    env.insert("BILLING__COMMAND__HTTP_ADDR".into(), "127.0.0.1:0".into());
    let config = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../configs/config.yaml");
    let settings =
        shared::config::Settings::load_files(&[config, secrets], Some(env)).expect("loads");
    let app = Application::build(&settings, Clock::system())
        .await
        .expect("strong secrets start it");
    drop(app);
    TestDatabase::drop_named(&db.name).await;
}

/// Listeners with short bounds, so the tests see them act.
const TIGHT: [(&str, &str); 4] = [
    ("BILLING__LISTENERS__HEADER_READ_TIMEOUT_MS", "500"),
    ("BILLING__LISTENERS__IDLE_TIMEOUT_MS", "2000"),
    ("BILLING__LISTENERS__REQUEST_TIMEOUT_MS", "1000"),
    ("BILLING__LISTENERS__MAX_CONNECTIONS", "4"),
];

/// Reads until the server closes the connection (or `limit` passes); how long that took.
async fn closed_within(
    stream: &mut tokio::net::TcpStream,
    limit: std::time::Duration,
) -> Option<std::time::Duration> {
    use tokio::io::AsyncReadExt;
    let started = std::time::Instant::now();
    let mut sink = [0_u8; 1024];
    tokio::time::timeout(limit, async {
        loop {
            match stream.read(&mut sink).await {
                Ok(0) | Err(_) => return started.elapsed(),
                Ok(_) => {}
            }
        }
    })
    .await
    .ok()
}

#[tokio::test]
async fn a_half_sent_request_head_or_a_silent_connection_is_closed() {
    use tokio::io::AsyncWriteExt;
    let app = spawn_app_at(chrono::Utc::now(), &TIGHT).await;
    let limit = std::time::Duration::from_secs(5);
    // Slow-loris on the webhook's listener: half a head, then a byte now and then.
    let mut loris = tokio::net::TcpStream::connect(app.http_addr).await.unwrap();
    loris
        .write_all(b"POST /api/v1/billing/recharge/callback HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    let trickle = async {
        for _ in 0..20 {
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            if loris.write_all(b"X-A: b\r\n").await.is_err() {
                break;
            }
        }
    };
    trickle.await;
    let closed = closed_within(&mut loris, limit).await;
    assert!(closed.is_some(), "a trickled head is cut off");
    // A connection that never says anything, on either listener.
    for addr in [app.http_addr, app.grpc_addr] {
        let mut silent = tokio::net::TcpStream::connect(addr).await.unwrap();
        let closed = closed_within(&mut silent, limit).await;
        assert!(
            closed.is_some_and(|after| after < std::time::Duration::from_secs(2)),
            "{addr}: {closed:?}"
        );
    }
    // The service still answers.
    let health = reqwest::get(app.http("/healthz")).await.unwrap();
    assert_eq!(health.status(), 200);
    app.gateway()
        .await
        .deduct_quota(deduct(&new_user("after-loris"), 1_000, "r"))
        .await
        .unwrap();
    app.cleanup().await;
}

#[tokio::test]
async fn connections_beyond_the_cap_wait_until_one_closes() {
    let app = spawn_app_at(chrono::Utc::now(), &TIGHT).await;
    let mut held = Vec::new();
    for _ in 0..4 {
        held.push(tokio::net::TcpStream::connect(app.http_addr).await.unwrap());
    }
    let client = reqwest::Client::builder()
        .timeout(std::time::Duration::from_millis(300))
        .build()
        .unwrap();
    assert!(
        client.get(app.http("/healthz")).send().await.is_err(),
        "a fifth connection is not served while four are open"
    );
    drop(held);
    let answered = client.get(app.http("/healthz")).send().await.unwrap();
    assert_eq!(answered.status(), 200);
    app.cleanup().await;
}

#[tokio::test]
async fn a_body_too_large_or_too_slow_gets_a_json_error() {
    use tokio::io::AsyncWriteExt;
    let app = spawn_app_at(chrono::Utc::now(), &TIGHT).await;
    let big = format!("{{\"order_no\": \"{}\"}}", "o".repeat(9_000));
    let answer = reqwest::Client::new()
        .post(app.http("/api/v1/billing/recharge/callback"))
        .header("content-type", "application/json")
        .header(
            "x-billing-timestamp",
            chrono::Utc::now().timestamp().to_string(),
        )
        .header("x-billing-signature", "sha256=00")
        .body(big)
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), 413);
    let body: serde_json::Value = answer.json().await.unwrap();
    assert_eq!(body["error"]["code"], "PAYLOAD_TOO_LARGE", "{body}");

    // A body that arrives a byte at a time outlasts the request's deadline: 408.
    let mut slow = tokio::net::TcpStream::connect(app.http_addr).await.unwrap();
    slow.write_all(
        b"POST /api/v1/billing/recharge/callback HTTP/1.1\r\nHost: x\r\n\
          Content-Type: application/json\r\nX-Billing-Timestamp: 1\r\n\
          X-Billing-Signature: sha256=00\r\nContent-Length: 100\r\n\r\n{",
    )
    .await
    .unwrap();
    let mut answer = Vec::new();
    let read = async {
        use tokio::io::AsyncReadExt;
        let mut chunk = [0_u8; 512];
        loop {
            tokio::select! {
                read = slow.read(&mut chunk) => match read {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        answer.extend_from_slice(&chunk[..n]);
                        if answer.windows(4).any(|w| w == b"\r\n\r\n") { break; }
                    }
                },
                () = tokio::time::sleep(std::time::Duration::from_millis(150)) => {
                    let _ = slow.write_all(b" ").await;
                }
            }
        }
    };
    tokio::time::timeout(std::time::Duration::from_secs(5), read)
        .await
        .expect("answered before the test gives up");
    let head = String::from_utf8_lossy(&answer);
    assert!(head.starts_with("HTTP/1.1 408"), "{head}");
    app.cleanup().await;
}

#[tokio::test]
async fn a_grpc_message_over_the_limit_is_refused_before_it_is_read() {
    let app = spawn_app_at(
        chrono::Utc::now(),
        &[("BILLING__LISTENERS__GRPC_MAX_MESSAGE_BYTES", "4096")],
    )
    .await;
    let user = new_user("big-message");
    let mut request = deduct(&user, 1_000, "r");
    request.description = "d".repeat(8_000);
    let status = app
        .gateway()
        .await
        .deduct_quota(request)
        .await
        .expect_err("refused");
    assert_eq!(status.code(), tonic::Code::OutOfRange, "{status:?}");
    assert_eq!(ledger_count(&app, &user).await, 0);
    app.cleanup().await;
}
