//! One trace from the gateway's call to the projection, across processes: the services run as
//! in production, as separate processes writing JSON logs. A DeductQuota that carries a W3C
//! `traceparent` and an `x-request-id` is logged by command-svc under the caller's trace id and
//! that request id; the events it wrote carry the trace through the outbox and NATS; query-svc
//! logs projecting them under the same trace id. Then SIGTERM: every service exits cleanly.

use std::{
    collections::HashMap,
    fs::File,
    net::SocketAddr,
    path::{Path, PathBuf},
    process::Stdio,
    time::{Duration, Instant},
};

use serde_json::Value;
use shared::trace::TraceContext;
use testkit::{Bearer, CNY, GATEWAY, TestDatabase, admin_url, connect_client, deduct, unique_tag};
use tokio::process::{Child, Command};

mod support;
use support::{binary, config_path, ready, spare, terminate};

const CALLER_TRACE: &str = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
const REQUEST_ID: &str = "gw-req-0001";
/// Debug lines of the gRPC calls and of the projection, info elsewhere.
const FILTER: &str = "info,command_svc::api::observe=debug,query_svc::projection=debug";

/// A service process whose standard output (its JSON log) goes to a file.
struct Service {
    child: Child,
    log: PathBuf,
}

fn start(
    name: &str,
    env: &HashMap<String, String>,
    own: &[(&str, String)],
    logs: &Path,
) -> Service {
    let log = logs.join(format!("{name}.log"));
    let child = Command::new(binary(name))
        .arg("-conf")
        .arg(config_path())
        .envs(env)
        .envs(own.iter().map(|(k, v)| (*k, v.as_str())))
        .env("RUST_LOG", FILTER)
        .stdout(Stdio::from(File::create(&log).unwrap()))
        .kill_on_drop(true)
        .spawn()
        .expect("the service starts");
    Service { child, log }
}

/// Every JSON line of a log so far (lines that are not JSON fail the test: the format is JSON).
fn log_lines(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .filter(|line| !line.trim().is_empty())
        .map(|line| {
            serde_json::from_str(line).unwrap_or_else(|e| {
                panic!(
                    "{} logs a line that is not JSON ({e}): {line}",
                    path.display()
                )
            })
        })
        .collect()
}

/// Waits up to 30 s for a line of the log that satisfies `wanted`.
async fn logged(path: &Path, what: &str, wanted: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(line) = log_lines(path).into_iter().find(&wanted) {
            return line;
        }
        assert!(
            Instant::now() < deadline,
            "{} never logged {what}",
            path.display()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test]
async fn one_trace_id_from_the_gateway_call_to_the_projection() {
    let tag = unique_tag();
    let database = TestDatabase::create(&tag).await;
    let mut env = testkit::isolated_env(&tag, &format!("{}/{}", admin_url(), database.name));
    env.insert("BILLING__TELEMETRY__FORMAT".into(), "json".into());
    let logs = std::env::temp_dir().join(format!("billing-trace-{tag}"));
    std::fs::create_dir_all(&logs).unwrap();

    let (grpc, command_http): (SocketAddr, SocketAddr) = (spare(), spare());
    let command = start(
        "command-svc",
        &env,
        &[
            ("BILLING__COMMAND__GRPC_ADDR", grpc.to_string()),
            ("BILLING__COMMAND__HTTP_ADDR", command_http.to_string()),
        ],
        &logs,
    );
    ready(command_http).await;
    let query_http = spare();
    let query = start(
        "query-svc",
        &env,
        &[
            ("BILLING__QUERY__HTTP_ADDR", query_http.to_string()),
            ("BILLING__QUERY__COMMAND_ENDPOINT", format!("http://{grpc}")),
        ],
        &logs,
    );
    let scheduler_http = spare();
    let scheduler = start(
        "scheduler-svc",
        &env,
        &[("BILLING__SCHEDULER__HTTP_ADDR", scheduler_http.to_string())],
        &logs,
    );
    ready(query_http).await;
    ready(scheduler_http).await;

    let user = testkit::new_user("traced");
    let mut gateway = connect_client(grpc, Bearer::token(GATEWAY)).await;
    let mut request = tonic::Request::new(deduct(&user, CNY, "traced-1"));
    request
        .metadata_mut()
        .insert("traceparent", CALLER_TRACE.parse().unwrap());
    request
        .metadata_mut()
        .insert("x-request-id", REQUEST_ID.parse().unwrap());
    gateway.deduct_quota(request).await.unwrap();
    let caller = TraceContext::parse(CALLER_TRACE).unwrap();
    let trace_id = caller.trace_id_hex();

    // command-svc: the call, under the caller's request id and trace id.
    let call = logged(&command.log, "the DeductQuota call", |line| {
        line["span"]["method"] == "/billing.v1.BillingCommandService/DeductQuota"
            && line["message"] == "call finished"
    })
    .await;
    assert_eq!(call["span"]["request_id"], REQUEST_ID, "{call}");
    assert_eq!(call["span"]["trace_id"], trace_id.as_str(), "{call}");
    assert_eq!(call["code"], "Ok", "{call}");

    // The outbox: the grant and the charge, each with a traceparent of the caller's trace.
    let db = sqlx::MySqlPool::connect(&format!("{}/{}", admin_url(), database.name))
        .await
        .unwrap();
    let rows: Vec<(String, Option<String>)> =
        sqlx::query_as("SELECT event_id, traceparent FROM outbox WHERE user_id = ? ORDER BY id")
            .bind(&user)
            .fetch_all(&db)
            .await
            .unwrap();
    assert_eq!(rows.len(), 2, "the period's grant and the charge: {rows:?}");

    // query-svc: each of those events projected, in the same trace.
    for (event_id, traceparent) in &rows {
        let stored = TraceContext::parse(traceparent.as_deref().unwrap()).unwrap();
        assert_eq!(stored.trace_id_hex(), trace_id);
        let projected = logged(&query.log, "the event projected", |line| {
            line["message"] == "event projected" && line["event_id"] == event_id.as_str()
        })
        .await;
        assert_eq!(projected["trace_id"], trace_id.as_str(), "{projected}");
        assert_eq!(projected["user_id"], user.as_str(), "{projected}");
    }

    for (mut service, name) in [
        (command, "command-svc"),
        (query, "query-svc"),
        (scheduler, "scheduler-svc"),
    ] {
        terminate(&mut service.child, name).await;
    }
    db.close().await;
    testkit::delete_streams(&shared::bus::BusNames::new(&format!("T{tag}_"), "")).await;
    TestDatabase::drop_named(&database.name).await;
    let _ = std::fs::remove_dir_all(&logs);
}
