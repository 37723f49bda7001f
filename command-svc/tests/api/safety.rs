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
