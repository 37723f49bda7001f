//! The services as separate processes, several replicas of each on one MySQL, NATS and Redis,
//! under load; every invariant checked afterwards, and `billingctl reconcile` finds no difference.

use std::{
    collections::HashMap,
    net::SocketAddr,
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use sqlx::MySqlPool;
use testkit::{
    Bearer, Client, GATEWAY, ORDERS, PAYMENT, TestDatabase, admin_url, connect_client, deduct,
    invariants::assert_invariants, nats_url, reason, redis_url, unique_tag,
};
use tokio::process::{Child, Command};

/// A service binary of the workspace, built beside this test.
fn binary(name: &str) -> PathBuf {
    let deps = std::env::current_exe().expect("the test's own path");
    let path = deps
        .parent()
        .and_then(Path::parent)
        .expect("target/<profile>/deps")
        .join(name);
    assert!(
        path.exists(),
        "{} is not built: build the workspace's binaries first (cargo build --bins)",
        path.display()
    );
    path
}

fn config_path() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../configs/config.yaml")
}

fn spare() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], testkit::spare_port()))
}

/// One replica: its process, and where it listens.
struct Replica {
    child: Child,
    grpc: Option<SocketAddr>,
    http: SocketAddr,
}

/// A database, streams and keys of the test's own, and the replicas running on them.
struct Cluster {
    env: HashMap<String, String>,
    db: MySqlPool,
    db_name: String,
    stream_prefix: String,
    commands: Vec<Replica>,
    queries: Vec<Replica>,
}

impl Cluster {
    async fn start(commands: usize, queries: usize) -> Cluster {
        let tag = unique_tag();
        let database = TestDatabase::create(&tag).await;
        let env = HashMap::from([
            (
                "BILLING__DATABASE__URL".to_owned(),
                format!("{}/{}", admin_url(), database.name),
            ),
            ("BILLING__NATS__URL".to_owned(), nats_url()),
            (
                "BILLING__NATS__STREAM_PREFIX".to_owned(),
                format!("T{tag}_"),
            ),
            (
                "BILLING__NATS__SUBJECT_PREFIX".to_owned(),
                format!("t{tag}"),
            ),
            ("BILLING__REDIS__URL".to_owned(), redis_url()),
            (
                "BILLING__REDIS__KEY_PREFIX".to_owned(),
                format!("test:{tag}:"),
            ),
            ("BILLING__TELEMETRY__FILTER".to_owned(), "warn".to_owned()),
        ]);
        let mut cluster = Cluster {
            db: MySqlPool::connect(&format!("{}/{}", admin_url(), database.name))
                .await
                .unwrap(),
            db_name: database.name,
            stream_prefix: format!("T{tag}_"),
            env,
            commands: Vec::new(),
            queries: Vec::new(),
        };
        for _ in 0..commands {
            let (grpc, http) = (spare(), spare());
            let child = cluster.spawn(
                "command-svc",
                &[
                    ("BILLING__COMMAND__GRPC_ADDR", grpc.to_string()),
                    ("BILLING__COMMAND__HTTP_ADDR", http.to_string()),
                ],
            );
            cluster.commands.push(Replica {
                child,
                grpc: Some(grpc),
                http,
            });
        }
        for index in 0..queries {
            let http = spare();
            let command = cluster.commands[index % commands].grpc.unwrap();
            let child = cluster.spawn(
                "query-svc",
                &[
                    ("BILLING__QUERY__HTTP_ADDR", http.to_string()),
                    (
                        "BILLING__QUERY__COMMAND_ENDPOINT",
                        format!("http://{command}"),
                    ),
                ],
            );
            cluster.queries.push(Replica {
                child,
                grpc: None,
                http,
            });
        }
        for replica in cluster.commands.iter().chain(&cluster.queries) {
            ready(replica.http).await;
        }
        cluster
    }

    fn spawn(&self, service: &str, own: &[(&str, String)]) -> Child {
        Command::new(binary(service))
            .arg("-conf")
            .arg(config_path())
            .envs(&self.env)
            .envs(own.iter().map(|(k, v)| (*k, v.as_str())))
            .kill_on_drop(true)
            .spawn()
            .expect("the service starts")
    }

    async fn client(&self, replica: usize, token: &str) -> Client {
        let grpc = self.commands[replica].grpc.unwrap();
        connect_client(grpc, Bearer::token(token)).await
    }

    async fn billingctl(&self, args: &[&str]) -> std::process::Output {
        Command::new(env!("CARGO_BIN_EXE_billingctl"))
            .arg("--config")
            .arg(config_path())
            .args(args)
            .envs(&self.env)
            .output()
            .await
            .expect("billingctl runs")
    }

    async fn stop(mut self) {
        for replica in self.commands.iter_mut().chain(self.queries.iter_mut()) {
            let _ = replica.child.kill().await;
        }
        testkit::delete_streams(&shared::bus::BusNames::new(&self.stream_prefix, "")).await;
        self.db.close().await;
        TestDatabase::drop_named(&self.db_name).await;
    }
}

async fn ready(http: SocketAddr) {
    let deadline = Instant::now() + Duration::from_secs(60);
    let url = format!("http://{http}/readyz");
    while Instant::now() < deadline {
        if let Ok(true) = get_ok(&url).await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("{url} not ready within 60 s");
}

/// Whether a GET of `url` answers 200 (a plain HTTP/1.1 request, no client library needed).
async fn get_ok(url: &str) -> std::io::Result<bool> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let rest = url.trim_start_matches("http://");
    let (host, path) = rest.split_once('/').unwrap_or((rest, ""));
    let mut stream = tokio::net::TcpStream::connect(host).await?;
    let request = format!("GET /{path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await?;
    let mut answer = Vec::new();
    stream.read_to_end(&mut answer).await?;
    Ok(answer.starts_with(b"HTTP/1.1 200"))
}

/// What the load generator saw.
#[derive(Default)]
struct Seen {
    /// Acknowledged charges by request id: (user, amount).
    acknowledged: HashMap<String, (String, i64)>,
    /// Retries with the same amount, answered as replays.
    replays: u64,
    /// Retries with another amount, refused as a reused key.
    reused_refused: u64,
    /// Answers neither success nor a defined refusal.
    unknown: u64,
}

/// Two command-svc and two query-svc processes; charges spread over both command replicas, half
/// of them retries of earlier request ids (a fifth of those with another amount). Every
/// acknowledged charge is in the ledger once, retries with the same amount are replays, the
/// others are refused; the invariants hold for every account and the read model converges to
/// the write model.
#[tokio::test]
async fn two_replicas_of_each_service_with_retries_keep_every_invariant() {
    let cluster = Cluster::start(2, 2).await;
    let users: Vec<String> = (0..40).map(|i| format!("replica-user-{i}")).collect();
    {
        let (mut orders, mut payment) = (
            cluster.client(0, ORDERS).await,
            cluster.client(1, PAYMENT).await,
        );
        for user in &users {
            testkit::recharge_with(&mut orders, &mut payment, user, 1_000_000_000).await;
        }
    }
    let seen = Arc::new(Mutex::new(Seen::default()));
    let mut callers = Vec::new();
    for caller in 0..16_u64 {
        let mut client = cluster.client(caller as usize % 2, GATEWAY).await;
        let (seen, users) = (seen.clone(), users.clone());
        callers.push(tokio::spawn(async move {
            let mut state = caller * 7_919 + 1;
            let mut next = move || {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                state
            };
            let mut mine: Vec<String> = Vec::new();
            for call in 0..150 {
                let r = next();
                let retry = r % 2 == 0 && !mine.is_empty();
                let (request_id, user, amount, same) = if retry {
                    let request_id = mine[(r / 2) as usize % mine.len()].clone();
                    let (user, amount) = seen.lock().unwrap().acknowledged[&request_id].clone();
                    let same = r % 10 != 0;
                    (
                        request_id,
                        user,
                        if same { amount } else { amount + 1 },
                        same,
                    )
                } else {
                    let user = users[(r / 2) as usize % users.len()].clone();
                    (
                        format!("c{caller}-{call}"),
                        user,
                        1_000 + (r % 1_000) as i64,
                        true,
                    )
                };
                let answer = client
                    .deduct_quota(deduct(&user, amount, &request_id))
                    .await;
                let mut seen = seen.lock().unwrap();
                match answer {
                    Ok(reply) if !retry => {
                        assert!(!reply.into_inner().replayed, "{request_id}: a new key");
                        seen.acknowledged.insert(request_id.clone(), (user, amount));
                        mine.push(request_id);
                    }
                    Ok(reply) if same => {
                        assert!(reply.into_inner().replayed, "{request_id}: a retry");
                        seen.replays += 1;
                    }
                    Ok(_) => panic!("{request_id}: another amount under a used key was applied"),
                    Err(status)
                        if retry && !same && reason(&status) == "IDEMPOTENCY_KEY_REUSED" =>
                    {
                        seen.reused_refused += 1;
                    }
                    Err(status) => {
                        eprintln!("{request_id}: {status:?}");
                        seen.unknown += 1;
                    }
                }
            }
        }));
    }
    for caller in callers {
        caller.await.unwrap();
    }

    let seen = Arc::try_unwrap(seen).ok().unwrap().into_inner().unwrap();
    let recorded: Vec<(String, String, i64)> = sqlx::query_as(
        "SELECT request_id, user_id, amount_micros FROM ledger WHERE kind = 'deduct'",
    )
    .fetch_all(&cluster.db)
    .await
    .unwrap();
    let recorded: HashMap<String, (String, i64)> = recorded
        .into_iter()
        .map(|(request_id, user, amount)| (request_id, (user, amount)))
        .collect();
    assert_eq!(seen.unknown, 0, "no answer outside the contract");
    assert_eq!(
        recorded, seen.acknowledged,
        "every acknowledged charge recorded once, nothing else"
    );
    assert!(
        seen.replays > 0 && seen.reused_refused > 0,
        "both kinds of retry ran"
    );
    for user in &users {
        assert_invariants(&cluster.db, user).await;
    }
    println!(
        "two replicas each: {} charges acknowledged, {} replays, {} reused keys refused",
        seen.acknowledged.len(),
        seen.replays,
        seen.reused_refused
    );

    // The read model converges: reconcile (which compares at equal versions) finds nothing.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let output = cluster.billingctl(&["reconcile"]).await;
        if output.status.success() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "reconcile still finds differences after 60 s: {}",
            String::from_utf8_lossy(&output.stdout)
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    cluster.stop().await;
}
