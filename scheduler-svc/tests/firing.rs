//! The scheduler as it runs: the start-up publication and the midnight firing, read back from
//! the commands stream with their message ids.

use std::{path::Path, time::Duration};

use async_nats::jetstream;
use prost::Message;
use scheduler_svc::app::Application;
use shared::{bus::BusNames, clock::Clock, config::Settings, proto::v1::ResetFreeQuota};

/// The commands in the stream, oldest first: (Nats-Msg-Id, the command).
async fn published(js: &jetstream::Context, names: &BusNames) -> Vec<(String, ResetFreeQuota)> {
    let Ok(mut stream) = js.get_stream(names.commands_stream()).await else {
        return Vec::new();
    };
    let state = stream.info().await.unwrap().state.clone();
    let mut commands = Vec::new();
    for sequence in state.first_sequence..=state.last_sequence {
        let Ok(message) = stream.get_raw_message(sequence).await else {
            continue;
        };
        let id = message
            .headers
            .get("Nats-Msg-Id")
            .map(|v| v.to_string())
            .unwrap_or_default();
        commands.push((id, ResetFreeQuota::decode(message.payload).unwrap()));
    }
    commands
}

#[tokio::test]
async fn midnight_on_the_first_publishes_the_scheduled_month_under_its_message_id() {
    // The workspace's reqwest has no TLS crypto provider of its own.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let tag = testkit::unique_tag();
    let mut env = testkit::isolated_env(&tag, "mysql://unused@127.0.0.1:3306/unused");
    env.insert("BILLING__SCHEDULER__HTTP_ADDR".into(), "127.0.0.1:0".into());
    let config = Path::new(env!("CARGO_MANIFEST_DIR")).join("../configs/config.yaml");
    let settings = Settings::load_with_env(&config, Some(env)).unwrap();
    shared::telemetry::init(&settings.telemetry);
    let names = BusNames::from_settings(&settings.nats);
    let js = jetstream::new(async_nats::connect(testkit::nats_url()).await.unwrap());

    // One second before midnight on 1 January in the billing zone.
    let zone = settings.billing.zone().unwrap();
    let january = zone.period_start("2027-01".parse().unwrap());
    let clock = Clock::manual(january - chrono::Duration::seconds(1));
    let app = Application::build(&settings, clock.clone()).await.unwrap();
    let probes = app.http_addr();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let running = tokio::spawn(app.run_until_stopped(async move {
        let _ = stopped.await;
    }));

    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while published(&js, &names).await.is_empty() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "no start-up command"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The job's timer runs out a second later; by then the wall clock says three hours past
    // midnight (a late run), and the command still names the month of the scheduled instant.
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    let late = january + chrono::Duration::hours(3);
    clock.set(late);
    let commands = loop {
        let commands = published(&js, &names).await;
        if commands.len() >= 2 {
            break commands;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no midnight command: {commands:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };

    let (startup_id, startup) = &commands[0];
    assert_eq!(startup_id, "reset-free-quota:2026-12");
    assert_eq!(startup.command_id, "reset-free-quota:2026-12");
    assert_eq!(startup.period, "2026-12");
    let (midnight_id, midnight) = &commands[1];
    assert_eq!(midnight_id, "reset-free-quota:2027-01");
    assert_eq!(midnight.command_id, "reset-free-quota:2027-01");
    assert_eq!(midnight.period, "2027-01");
    assert_eq!(midnight.issued_at_ms, late.timestamp_millis());
    assert_eq!(commands.len(), 2, "one command per month: {commands:?}");

    // A wrong method is answered in JSON, as every error of the three services.
    let wrong = reqwest::Client::new()
        .post(format!("http://{probes}/metrics"))
        .send()
        .await
        .unwrap();
    assert_eq!(wrong.status(), 405);
    let body: serde_json::Value = wrong.json().await.unwrap();
    assert_eq!(body["error"]["code"], "METHOD_NOT_ALLOWED");

    // Its rare counters are on the page from the start (a rate sees their first occurrence).
    let page = reqwest::get(format!("http://{probes}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        page.lines()
            .any(|line| line.starts_with("billing_scheduler_publish_failures_total ")),
        "{page}"
    );

    // The next firing is scheduled afresh: local midnight on 1 February.
    let february = zone.period_start("2027-02".parse().unwrap());
    let next_fire = || async {
        let metrics = reqwest::get(format!("http://{probes}/metrics"))
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        metrics
            .lines()
            .find_map(|line| line.strip_prefix("billing_scheduler_next_fire_timestamp_seconds "))
            .and_then(|value| value.trim().parse::<f64>().ok())
    };
    while next_fire().await != Some(february.timestamp() as f64) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "next fire time {:?}, not 1 February",
            next_fire().await
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let healthy = reqwest::get(format!("http://{probes}/healthz"))
        .await
        .unwrap();
    assert_eq!(healthy.status(), 200);

    let _ = stop.send(());
    let _ = running.await;
    testkit::delete_streams(&names).await;
}
