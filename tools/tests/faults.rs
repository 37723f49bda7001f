//! The services as separate processes, several replicas of each on one MySQL, NATS and Redis,
//! under load; every invariant checked afterwards, and `billingctl reconcile` finds no difference.

use std::{
    collections::{BTreeMap, HashMap},
    net::SocketAddr,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use shared::proto::v1 as pb;
use sqlx::MySqlPool;
use testkit::{
    Bearer, Client, GATEWAY, ORDERS, PAYMENT, TestDatabase, admin_url, connect_client, deduct,
    invariants::assert_invariants, reason, unique_tag,
};
use tokio::process::{Child, Command};

mod support;
use support::{binary, config_path, get, ready, spare, terminate};

/// How hard the scenarios push: the quick profile of `make test`, or `make soak`
/// (`BILLING_FAULTS_SOAK=1`).
struct Profile {
    /// Kills of a replica in the kill scenarios.
    kills: usize,
    /// How long their load runs (it must outlast the kills).
    kills_load: Duration,
    /// How long NATS stays down.
    nats_down: Duration,
    /// How long MySQL stays down.
    mysql_down: Duration,
    /// Rounds of the NATS cluster's faults, and the pause between two of its steps.
    bus_rounds: usize,
    bus_pause: Duration,
}

fn profile() -> Profile {
    if std::env::var_os("BILLING_FAULTS_SOAK").is_some() {
        Profile {
            kills: 10,
            kills_load: Duration::from_secs(15),
            nats_down: Duration::from_secs(30),
            mysql_down: Duration::from_secs(10),
            bus_rounds: 5,
            bus_pause: Duration::from_secs(8),
        }
    } else {
        Profile {
            kills: 3,
            kills_load: Duration::from_secs(4),
            nats_down: Duration::from_secs(5),
            mysql_down: Duration::from_secs(10),
            bus_rounds: 1,
            bus_pause: Duration::from_secs(2),
        }
    }
}

/// One replica: its process, how it was started, and where it listens.
struct Replica {
    child: Child,
    service: &'static str,
    own: Vec<(&'static str, String)>,
    grpc: Option<SocketAddr>,
    http: SocketAddr,
}

/// A database, streams and keys of the test's own, and the replicas running on them.
struct Cluster {
    env: HashMap<String, String>,
    db: MySqlPool,
    /// The database created on the shared server (none when the test brought its own).
    db_name: Option<String>,
    stream_prefix: String,
    commands: Vec<Replica>,
    queries: Vec<Replica>,
}

impl Cluster {
    async fn start(commands: usize, queries: usize) -> Cluster {
        Cluster::start_with(commands, queries, &[]).await
    }

    /// The same, with settings of the test's own (a NATS or Redis of its own, say).
    async fn start_with(commands: usize, queries: usize, overrides: &[(&str, String)]) -> Cluster {
        let tag = unique_tag();
        let own_database = overrides
            .iter()
            .find(|(name, _)| *name == "BILLING__DATABASE__URL")
            .map(|(_, url)| url.clone());
        let (database_url, db_name) = match own_database {
            Some(url) => (url, None),
            None => {
                let database = TestDatabase::create(&tag).await;
                (
                    format!("{}/{}", admin_url(), database.name),
                    Some(database.name),
                )
            }
        };
        let mut env = testkit::isolated_env(&tag, &database_url);
        for (name, value) in overrides {
            env.insert((*name).to_owned(), value.clone());
        }
        let mut cluster = Cluster {
            db: MySqlPool::connect(&database_url).await.unwrap(),
            db_name,
            stream_prefix: format!("T{tag}_"),
            env,
            commands: Vec::new(),
            queries: Vec::new(),
        };
        for _ in 0..commands {
            let (grpc, http) = (spare(), spare());
            let own = vec![
                ("BILLING__COMMAND__GRPC_ADDR", grpc.to_string()),
                ("BILLING__COMMAND__HTTP_ADDR", http.to_string()),
            ];
            let replica = cluster.spawn("command-svc", own, Some(grpc), http);
            cluster.commands.push(replica);
        }
        for index in 0..queries {
            let http = spare();
            let command = cluster.commands[index % commands].grpc.unwrap();
            let own = vec![
                ("BILLING__QUERY__HTTP_ADDR", http.to_string()),
                (
                    "BILLING__QUERY__COMMAND_ENDPOINT",
                    format!("http://{command}"),
                ),
            ];
            let replica = cluster.spawn("query-svc", own, None, http);
            cluster.queries.push(replica);
        }
        for replica in cluster
            .commands
            .iter_mut()
            .chain(cluster.queries.iter_mut())
        {
            replica.ready().await;
        }
        cluster
    }

    fn spawn(
        &self,
        service: &'static str,
        own: Vec<(&'static str, String)>,
        grpc: Option<SocketAddr>,
        http: SocketAddr,
    ) -> Replica {
        let child = Command::new(binary(service))
            .arg("-conf")
            .arg(config_path())
            .envs(&self.env)
            .envs(own.iter().map(|(k, v)| (*k, v.as_str())))
            .kill_on_drop(true)
            .spawn()
            .expect("the service starts");
        Replica {
            child,
            service,
            own,
            grpc,
            http,
        }
    }

    /// `kill -9` of a replica (no shutdown, no goodbye to MySQL or NATS), then, after `down`,
    /// the same replica started again on its own ports.
    async fn kill_and_restart(&mut self, query: bool, index: usize, down: Duration) {
        let child = &mut self.replicas(query)[index].child;
        child.start_kill().expect("the replica is running");
        child.wait().await.expect("the replica ends");
        self.restart(query, index, down).await;
    }

    /// SIGTERM to a command-svc replica under load: it must finish what it holds and exit
    /// cleanly within its grace period; then it is started again. Returns how long it took to go.
    async fn terminate_and_restart(&mut self, index: usize) -> Duration {
        let asked = Instant::now();
        terminate(&mut self.commands[index].child, "a command-svc replica").await;
        let took = asked.elapsed();
        self.restart(false, index, Duration::ZERO).await;
        took
    }

    fn replicas(&mut self, query: bool) -> &mut Vec<Replica> {
        if query {
            &mut self.queries
        } else {
            &mut self.commands
        }
    }

    /// Starts a replica that has stopped again after `down`, on its own ports.
    async fn restart(&mut self, query: bool, index: usize, down: Duration) {
        tokio::time::sleep(down).await;
        let replica = &self.replicas(query)[index];
        let (service, own, grpc, http) = (
            replica.service,
            replica.own.clone(),
            replica.grpc,
            replica.http,
        );
        let restarted = self.spawn(service, own, grpc, http);
        let replica = &mut self.replicas(query)[index];
        *replica = restarted;
        replica.ready().await;
    }

    async fn client(&self, replica: usize, token: &str) -> Client {
        let grpc = self.commands[replica].grpc.unwrap();
        connect_client(grpc, Bearer::token(token)).await
    }

    /// `count` accounts named `<prefix>-<i>`, each credited 1,000 units through an order and its
    /// paid callback.
    async fn funded_users(&self, prefix: &str, count: usize) -> Vec<String> {
        let users: Vec<String> = (0..count).map(|i| format!("{prefix}-{i}")).collect();
        let payment_replica = self.commands.len() - 1;
        let (mut orders, mut payment) = (
            self.client(0, ORDERS).await,
            self.client(payment_replica, PAYMENT).await,
        );
        for user in &users {
            testkit::recharge_with(&mut orders, &mut payment, user, 1_000_000_000).await;
        }
        users
    }

    /// A gateway client of each of the first two command-svc replicas (the same one twice when
    /// there is one).
    async fn gateways(&self) -> Vec<Client> {
        let second = 1.min(self.commands.len() - 1);
        vec![
            self.client(0, GATEWAY).await,
            self.client(second, GATEWAY).await,
        ]
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

    /// The read model converges to the write model within two minutes: every account's read-model
    /// version reaches its write-model version (reconcile alone would pass a model that is only
    /// behind), then `billingctl reconcile`, which compares at equal versions, finds no
    /// difference. Prints how long it took.
    async fn assert_converged(&self) -> Duration {
        let started = Instant::now();
        // Events a killed replica held come back after `query.ack_wait_secs` (30 s); a batch
        // that met MySQL down is retried every 5 s at most once MySQL is back.
        let limit = Duration::from_secs(120);
        loop {
            let behind: i64 = sqlx::query_scalar(
                "SELECT COUNT(*) FROM accounts a LEFT JOIN rm_accounts r ON r.user_id = a.user_id \
                 WHERE r.version IS NULL OR r.version < a.version",
            )
            .fetch_one(&self.db)
            .await
            .unwrap();
            if behind == 0 {
                break;
            }
            assert!(
                started.elapsed() < limit,
                "{behind} accounts still behind in the read model after {limit:?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        loop {
            let output = self.billingctl(&["reconcile"]).await;
            if output.status.success() {
                break;
            }
            assert!(
                started.elapsed() < limit,
                "reconcile still finds differences after {limit:?}: {}",
                String::from_utf8_lossy(&output.stdout)
            );
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        started.elapsed()
    }

    async fn stop(self) {
        self.stop_at(&testkit::nats_url()).await;
    }

    /// Stops the replicas and removes what the test made, its streams on the NATS at `nats`.
    async fn stop_at(mut self, nats: &str) {
        for replica in self.commands.iter_mut().chain(self.queries.iter_mut()) {
            let _ = replica.child.kill().await;
        }
        let names = shared::bus::BusNames::new(&self.stream_prefix, "");
        testkit::delete_streams_at(nats, &names).await;
        self.db.close().await;
        if let Some(name) = &self.db_name {
            TestDatabase::drop_named(name).await;
        }
    }
}

impl Replica {
    /// Waits until the replica answers `/readyz` (and accepts gRPC connections, for command-svc),
    /// and checks that it is this replica that answers: it is still running.
    async fn ready(&mut self) {
        ready(self.http).await;
        if let Some(grpc) = self.grpc {
            tokio::net::TcpStream::connect(grpc)
                .await
                .unwrap_or_else(|e| panic!("{} does not accept gRPC on {grpc}: {e}", self.service));
        }
        assert!(
            self.child.try_wait().unwrap().is_none(),
            "{} exited at start",
            self.service
        );
    }
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
    let users = cluster.funded_users("replica-user", 40).await;
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

    let converged = cluster.assert_converged().await;
    let load = Load {
        acknowledged: seen.acknowledged,
        operations: 16 * 150,
        calls: 16 * 150,
        unknown: BTreeMap::new(),
        applied_unanswered: 0,
    };
    println!("  {}", tally(&cluster.db, &load, converged).await);
    cluster.stop().await;
}

/// What a load of charges saw.
#[derive(Default)]
struct Load {
    /// Acknowledged charges by request id: (user, amount).
    acknowledged: HashMap<String, (String, i64)>,
    /// Charges attempted (distinct request ids).
    operations: u64,
    /// Calls sent, retries included.
    calls: u64,
    /// Unknown outcomes (each sent again with its request id), by code and reason.
    unknown: BTreeMap<String, u64>,
    /// Charges whose answer after an unknown outcome was a replay: the lost attempt had been
    /// applied.
    applied_unanswered: u64,
}

impl Load {
    fn unknown_total(&self) -> u64 {
        self.unknown.values().sum()
    }

    fn count_unknown(&mut self, status: &tonic::Status) {
        let reason = reason(status);
        let key = if status.code() == tonic::Code::Internal {
            "Internal (connection closed)".to_owned()
        } else if reason.is_empty() {
            format!("{:?}", status.code())
        } else {
            format!("{:?} {reason}", status.code())
        };
        *self.unknown.entry(key).or_default() += 1;
    }

    fn merge(&mut self, other: Load) {
        self.acknowledged.extend(other.acknowledged);
        self.operations += other.operations;
        self.calls += other.calls;
        self.applied_unanswered += other.applied_unanswered;
        for (key, count) in other.unknown {
            *self.unknown.entry(key).or_default() += count;
        }
    }
}

/// A failed call whose outcome the caller cannot know: the replica was away or its database was
/// (`UNAVAILABLE`), or the connection broke under the call. A connection that a stopping replica
/// closes (HTTP/2 `GOAWAY`) fails the calls it did not take with a transport error that tonic
/// reports as `INTERNAL` "h2 protocol error", never an answer of the service.
fn unknown_outcome(status: &tonic::Status) -> bool {
    match status.code() {
        tonic::Code::Unavailable | tonic::Code::Unknown | tonic::Code::Cancelled => true,
        tonic::Code::Internal => status.message().starts_with("h2 protocol error"),
        _ => false,
    }
}

/// Charges on `users`, one caller after another sending each charge until it is answered: a
/// failure that is not a refusal (the replica died, the connection broke, the database was
/// away) is an unknown outcome, retried with the same request id on the other replica.
async fn charge_until_answered(
    clients: Vec<Client>,
    users: &[String],
    duration: Duration,
    run: &str,
) -> Load {
    let going = Arc::new(AtomicBool::new(true));
    tokio::spawn({
        let going = going.clone();
        async move {
            tokio::time::sleep(duration).await;
            going.store(false, Ordering::Relaxed);
        }
    });
    charge_while(clients, users, run, going).await
}

/// As [`charge_until_answered`], for as long as `going` is set.
async fn charge_while(
    clients: Vec<Client>,
    users: &[String],
    run: &str,
    going: Arc<AtomicBool>,
) -> Load {
    let mut tasks = Vec::new();
    for caller in 0..16_usize {
        let mut clients = clients.clone();
        let users = users.to_vec();
        let run = run.to_owned();
        let going = going.clone();
        tasks.push(tokio::spawn(async move {
            let mut load = Load::default();
            let mut call = 0;
            while going.load(Ordering::Relaxed) {
                call += 1;
                load.operations += 1;
                let request_id = format!("{run}-{caller}-{call}");
                let user = users[(caller * 31 + call * 7) % users.len()].clone();
                let amount = 1_000 + (call % 100) as i64;
                let deadline = Instant::now() + Duration::from_secs(60);
                let mut attempt = caller + call;
                let mut unanswered = false;
                loop {
                    let client = &mut clients[attempt % 2];
                    load.calls += 1;
                    match client
                        .deduct_quota(deduct(&user, amount, &request_id))
                        .await
                    {
                        Ok(reply) => {
                            if unanswered && reply.into_inner().replayed {
                                load.applied_unanswered += 1;
                            }
                            load.acknowledged
                                .insert(request_id.clone(), (user.clone(), amount));
                            break;
                        }
                        Err(status) => {
                            assert!(unknown_outcome(&status), "{request_id}: {status:?}");
                            assert!(Instant::now() < deadline, "{request_id}: never answered");
                            load.count_unknown(&status);
                            unanswered = true;
                            attempt += 1;
                            tokio::time::sleep(Duration::from_millis(20)).await;
                        }
                    }
                }
            }
            load
        }));
    }
    let mut load = Load::default();
    for task in tasks {
        load.merge(task.await.unwrap());
    }
    load
}

/// The end of a scenario as figures: charges attempted and calls sent, acknowledged, unknown
/// outcomes by code and reason, found in the ledger, found twice (under one request id),
/// acknowledged but not found, and how long the read model took to converge.
async fn tally(db: &MySqlPool, load: &Load, converged: Duration) -> String {
    let (rows, distinct): (i64, i64) = sqlx::query_as(
        "SELECT COUNT(*), COUNT(DISTINCT user_id, request_id) FROM ledger WHERE kind = 'deduct'",
    )
    .fetch_one(db)
    .await
    .unwrap();
    let recorded = recorded_charges(db).await;
    let lost = load
        .acknowledged
        .keys()
        .filter(|id| !recorded.contains_key(*id))
        .count();
    let unknown: Vec<String> = load
        .unknown
        .iter()
        .map(|(key, count)| format!("{key}: {count}"))
        .collect();
    format!(
        "operations {} ({} calls), acknowledged {}, unknown {} [{}] ({} of them applied), found \
         {rows}, duplicates {}, lost {lost}, converged in {:.1} s",
        load.operations,
        load.calls,
        load.acknowledged.len(),
        load.unknown_total(),
        unknown.join(", "),
        load.applied_unanswered,
        rows - distinct,
        converged.as_secs_f64()
    )
}

/// The charges recorded in the ledger: request id → (user, amount).
async fn recorded_charges(db: &MySqlPool) -> HashMap<String, (String, i64)> {
    let rows: Vec<(String, String, i64)> = sqlx::query_as(
        "SELECT request_id, user_id, amount_micros FROM ledger WHERE kind = 'deduct'",
    )
    .fetch_all(db)
    .await
    .unwrap();
    rows.into_iter()
        .map(|(request_id, user, amount)| (request_id, (user, amount)))
        .collect()
}

/// `kill -9` of one command-svc replica, three times, while 16 callers charge through both
/// replicas; each killed replica is started again. A charge whose answer was lost is sent again
/// with its request id until answered: every acknowledged charge is in the ledger exactly once,
/// nothing else is, and every invariant holds.
#[tokio::test]
async fn command_replicas_killed_mid_load_lose_and_double_nothing() {
    let mut cluster = Cluster::start(2, 1).await;
    let users = cluster.funded_users("killed-user", 20).await;
    let clients = cluster.gateways().await;
    let load = tokio::spawn({
        let users = users.clone();
        async move { charge_until_answered(clients, &users, profile().kills_load, "k").await }
    });
    for _ in 0..profile().kills {
        tokio::time::sleep(Duration::from_millis(400)).await;
        cluster
            .kill_and_restart(false, 0, Duration::from_millis(300))
            .await;
    }
    let load = load.await.unwrap();
    assert_eq!(
        recorded_charges(&cluster.db).await,
        load.acknowledged,
        "every acknowledged charge recorded once, nothing else"
    );
    assert!(load.unknown_total() > 0, "the kills hit the load");
    for user in &users {
        assert_invariants(&cluster.db, user).await;
    }
    let converged = cluster.assert_converged().await;
    println!("{} kills of a command-svc replica:", profile().kills);
    println!("  {}", tally(&cluster.db, &load, converged).await);
    cluster.stop().await;
}

/// `kill -9` of a query-svc replica mid-projection, three times, while charges run: its
/// unacknowledged events are delivered again (to it or to the other replica), and the read model
/// converges with no record twice and no usage counted twice.
#[tokio::test]
async fn query_replicas_killed_mid_projection_converge_without_duplicates() {
    let mut cluster = Cluster::start(1, 2).await;
    let users = cluster.funded_users("projected-user", 20).await;
    let clients = cluster.gateways().await;
    let load = tokio::spawn({
        let users = users.clone();
        async move { charge_until_answered(clients, &users, profile().kills_load, "q").await }
    });
    for round in 0..profile().kills {
        tokio::time::sleep(Duration::from_millis(300)).await;
        cluster
            .kill_and_restart(true, round % 2, Duration::from_millis(200))
            .await;
    }
    let load = load.await.unwrap();
    assert_eq!(recorded_charges(&cluster.db).await, load.acknowledged);
    for user in &users {
        assert_invariants(&cluster.db, user).await;
    }
    let converged = cluster.assert_converged().await;
    let charges = assert_projected_once(&cluster.db, &load).await;
    println!(
        "{} kills of a query-svc replica: {charges} charges, each projected once",
        profile().kills
    );
    println!("  {}", tally(&cluster.db, &load, converged).await);
    cluster.stop().await;
}

/// NATS stopped under load, for 5 s (30 s in `make soak`): no charge fails because of it (the
/// events wait in the outbox), and once NATS is back the read model catches up with every one.
#[tokio::test]
async fn nats_stopped_under_load_fails_no_charge_and_the_read_model_catches_up() {
    let mut nats = testkit::OwnNats::start().await;
    let cluster = Cluster::start_with(2, 1, &[("BILLING__NATS__URL", nats.url())]).await;
    let users = cluster.funded_users("no-nats-user", 20).await;
    let clients = cluster.gateways().await;
    let down = profile().nats_down;
    let load = tokio::spawn({
        let users = users.clone();
        let duration = down + Duration::from_secs(2);
        async move { charge_until_answered(clients, &users, duration, "n").await }
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    nats.stop().await;
    let during: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM ledger WHERE kind = 'deduct'")
        .fetch_one(&cluster.db)
        .await
        .unwrap();
    tokio::time::sleep(down).await;
    let after: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM ledger WHERE kind = 'deduct'")
        .fetch_one(&cluster.db)
        .await
        .unwrap();
    nats.restart().await;
    let load = load.await.unwrap();
    assert_eq!(
        load.unknown_total(),
        0,
        "no charge failed while NATS was down"
    );
    assert!(after > during, "charges went on while NATS was down");
    assert_eq!(recorded_charges(&cluster.db).await, load.acknowledged);
    for user in &users {
        assert_invariants(&cluster.db, user).await;
    }
    let converged = cluster.assert_converged().await;
    println!(
        "NATS down for {} s under load: {} charges while it was down, none failed",
        down.as_secs(),
        after - during
    );
    println!("  {}", tally(&cluster.db, &load, converged).await);
    cluster.stop().await;
}

/// A three-node JetStream cluster (streams at R3, as production runs them) under a steady charge
/// load through 2 command-svc and 2 query-svc replicas, in each round: the leader of the events
/// stream killed (`kill -9`), then another server (the cluster loses its majority), both started
/// again, then the new leader cut off (frozen) for longer than a client takes to give up on it,
/// and let back. Charges never wait on the bus; while the leader is cut off the others elect a
/// new one and the relay and the consumers find them by themselves (the read model keeps
/// growing); every acknowledged charge reaches the read model once.
#[tokio::test]
async fn a_nats_cluster_losing_its_leader_and_a_server_loses_and_doubles_nothing() {
    let mut nats = testkit::OwnNatsCluster::start().await;
    let cluster = Cluster::start_with(
        2,
        2,
        &[
            ("BILLING__NATS__URL", nats.urls()),
            ("BILLING__NATS__STREAM_REPLICAS", "3".to_owned()),
        ],
    )
    .await;
    let users = cluster.funded_users("bus-user", 20).await;
    let clients = cluster.gateways().await;
    let (rounds, pause) = (profile().bus_rounds, profile().bus_pause);
    // Longer than a connection takes to leave a server that stopped answering.
    let cut_off = shared::bus::PING_INTERVAL * 5;
    let going = Arc::new(AtomicBool::new(true));
    let load = tokio::spawn({
        let (users, going) = (users.clone(), going.clone());
        async move { charge_while(clients, &users, "b", going).await }
    });
    let events = shared::bus::BusNames::new(&cluster.stream_prefix, "").events_stream();
    let mut faults = Vec::new();
    for _ in 0..rounds {
        tokio::time::sleep(pause).await;
        let leader = events_leader(&nats, &events).await;
        nats.nodes[leader].kill().await;
        tokio::time::sleep(pause).await;
        let other = (leader + 1) % nats.nodes.len();
        nats.nodes[other].kill().await;
        tokio::time::sleep(pause).await;
        nats.nodes[leader].restart().await;
        nats.nodes[other].restart().await;
        tokio::time::sleep(pause).await;
        let cut = events_leader(&nats, &events).await;
        nats.nodes[cut].pause().await;
        tokio::time::sleep(cut_off - pause).await;
        let before = projected_records(&cluster.db).await;
        tokio::time::sleep(pause).await;
        let during = projected_records(&cluster.db).await - before;
        nats.nodes[cut].resume().await;
        assert!(
            during > 0,
            "nothing reached the read model at the end of node-{cut}'s cut-off"
        );
        faults.push(format!(
            "leader node-{leader} and node-{other} killed, leader node-{cut} cut off for {} s \
             ({during} events projected in its last {} s)",
            cut_off.as_secs(),
            pause.as_secs()
        ));
    }
    tokio::time::sleep(pause).await;
    going.store(false, Ordering::Relaxed);
    let load = load.await.unwrap();
    assert_eq!(
        recorded_charges(&cluster.db).await,
        load.acknowledged,
        "every acknowledged charge recorded once, nothing else"
    );
    for user in &users {
        assert_invariants(&cluster.db, user).await;
    }
    let converged = cluster.assert_converged().await;
    let charges = assert_projected_once(&cluster.db, &load).await;
    println!(
        "a three-node NATS cluster, {rounds} round(s): {}; {charges} charges, each projected once",
        faults.join("; ")
    );
    println!("  {}", tally(&cluster.db, &load, converged).await);
    cluster.stop_at(&nats.nodes[0].url()).await;
}

/// Every acknowledged charge is one record and one call in the read model's usage, no more;
/// returns how many charges that is.
async fn assert_projected_once(db: &MySqlPool, load: &Load) -> i64 {
    let (records, calls): (i64, i64) = sqlx::query_as(
        "SELECT (SELECT COUNT(*) FROM rm_records WHERE type = 'deduct'), \
         (SELECT CAST(COALESCE(SUM(calls), 0) AS SIGNED) FROM rm_daily_usage)",
    )
    .fetch_one(db)
    .await
    .unwrap();
    let charges = load.acknowledged.len() as i64;
    assert_eq!(
        (records, calls),
        (charges, charges),
        "each charge one record and one call in the usage"
    );
    charges
}

/// The charges the read model holds now.
async fn projected_records(db: &MySqlPool) -> i64 {
    sqlx::query_scalar("SELECT COUNT(*) FROM rm_records WHERE type = 'deduct'")
        .fetch_one(db)
        .await
        .unwrap()
}

/// The server that leads `stream` now, by index in `nats` (asked until one is elected).
async fn events_leader(nats: &testkit::OwnNatsCluster, stream: &str) -> usize {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        for node in &nats.nodes {
            let Ok(client) = async_nats::ConnectOptions::new()
                .connection_timeout(Duration::from_secs(1))
                .connect(node.url())
                .await
            else {
                continue;
            };
            let js = async_nats::jetstream::new(client);
            let Ok(mut stream) = js.get_stream(stream).await else {
                continue;
            };
            let leader = stream.info().await.ok().and_then(|info| {
                let name = info.cluster.as_ref()?.leader.as_deref()?.to_owned();
                nats.index_of(&name)
            });
            if let Some(leader) = leader {
                return leader;
            }
        }
        assert!(Instant::now() < deadline, "{stream} has no leader");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The state the ledger gives an account at `version`: (balance, free used).
async fn state_at(db: &MySqlPool, user: &str, version: i64) -> (i64, i64) {
    sqlx::query_as(
        "SELECT balance_after_micros, free_used_after_micros FROM ledger \
         WHERE user_id = ? AND version = ?",
    )
    .bind(user)
    .bind(version)
    .fetch_one(db)
    .await
    .unwrap()
}

/// A `CheckQuota` of `user`: its account's version, after checking that it shows the account as
/// MySQL had it at that version.
async fn checked_version(client: &mut Client, db: &MySqlPool, user: &str) -> i64 {
    let check = pb::CheckQuotaRequest {
        user_id: user.to_owned(),
        amount_micros: 1,
        ..Default::default()
    };
    let seen = client
        .check_quota(check)
        .await
        .expect("checks go on without Redis")
        .into_inner()
        .account
        .unwrap();
    assert_eq!(
        (seen.balance_micros, seen.free_used_micros),
        state_at(db, user, seen.version).await,
        "{user}: the check shows the account as MySQL had it at its version"
    );
    seen.version
}

/// How long after a commit on one replica another replica's check may still miss it: the
/// memory's `max_age_ms` (2 s), with slack for a busy machine.
const CHECK_STALENESS_BOUND: Duration = Duration::from_millis(2_500);

/// Redis stopped under load: every `CheckQuota` answer is the account as MySQL had it at some
/// version; on the replica that took the caller's last acknowledged charge it is at least that
/// charge's version at once, on the other replica within the memory's bound; before, during and
/// after the outage. Charges go on; query-svc's account reads stay right (from MySQL) meanwhile.
#[tokio::test]
async fn redis_stopped_under_load_leaves_every_check_and_read_right() {
    let mut redis = testkit::OwnRedis::start().await;
    let cluster = Cluster::start_with(2, 1, &[("BILLING__REDIS__URL", redis.url())]).await;
    let users = cluster.funded_users("no-redis-user", 16).await;
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let checked = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let mut callers = Vec::new();
    // Each caller charges its own account and checks it on both replicas after every
    // acknowledged charge.
    for (index, user) in users.iter().enumerate() {
        let mut charging = cluster.client(index % 2, GATEWAY).await;
        let mut other = cluster.client((index + 1) % 2, GATEWAY).await;
        let (user, stop, db) = (user.clone(), stop.clone(), cluster.db.clone());
        let checked = checked.clone();
        callers.push(tokio::spawn(async move {
            let mut load = Load::default();
            let mut call = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                call += 1;
                let request_id = format!("{user}-r{call}");
                load.operations += 1;
                load.calls += 1;
                let charged = charging
                    .deduct_quota(deduct(&user, 1_000, &request_id))
                    .await
                    .expect("charges go on without Redis")
                    .into_inner();
                let acknowledged_at = Instant::now();
                load.acknowledged.insert(request_id, (user.clone(), 1_000));
                let acknowledged = charged.account.unwrap().version;
                let seen = checked_version(&mut charging, &db, &user).await;
                assert!(
                    seen >= acknowledged,
                    "{user}: a check at version {seen} after a charge at {acknowledged} on the same replica"
                );
                while checked_version(&mut other, &db, &user).await < acknowledged {
                    assert!(
                        acknowledged_at.elapsed() < CHECK_STALENESS_BOUND,
                        "{user}: the other replica's checks missed the charge at {acknowledged} for longer than the bound"
                    );
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                checked.fetch_add(2, std::sync::atomic::Ordering::Relaxed);
            }
            load
        }));
    }
    tokio::time::sleep(Duration::from_millis(800)).await;
    redis.kill().await;
    let before = checked.load(std::sync::atomic::Ordering::Relaxed);
    // Account reads through query-svc while Redis is down: from rm_accounts, each the state of
    // the write model at the version it shows.
    let query = cluster.queries[0].http;
    for user in &users {
        let token = cluster.billingctl(&["token", "--user", user]).await;
        let token = String::from_utf8_lossy(&token.stdout).trim().to_owned();
        let (status, body) = get(
            &format!("http://{query}/api/v1/billing/account"),
            Some(&token),
        )
        .await
        .unwrap();
        assert_eq!(status, 200, "{body}");
        let account: serde_json::Value = serde_json::from_str(&body).unwrap();
        let version = account["version"].as_i64().unwrap();
        assert_eq!(
            (
                account["balance_micros"].as_i64().unwrap(),
                account["free_quota"]["used_micros"].as_i64().unwrap()
            ),
            state_at(&cluster.db, user, version).await,
            "{user}: the REST account at version {version}"
        );
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut load = Load::default();
    for caller in callers {
        load.merge(caller.await.unwrap());
    }
    let checks = checked.load(std::sync::atomic::Ordering::Relaxed);
    assert!(checks > before, "checks ran while Redis was down");
    assert_eq!(
        recorded_charges(&cluster.db).await,
        load.acknowledged,
        "every acknowledged charge recorded once, nothing else"
    );
    for user in &users {
        assert_invariants(&cluster.db, user).await;
    }
    let converged = cluster.assert_converged().await;
    println!(
        "Redis killed under load: {checks} checks ({} while it was down), each at least as new \
         as the caller's last charge on its replica, and within the bound on the other",
        checks - before
    );
    println!("  {}", tally(&cluster.db, &load, converged).await);
    cluster.stop().await;
}

/// `billingctl reconcile` while charges run through two replicas of each service: it compares
/// the models at equal versions, so a read model that is merely behind is no difference, and
/// every run finds none.
#[tokio::test]
async fn reconcile_during_load_reports_no_false_difference() {
    let cluster = Cluster::start(2, 2).await;
    let users = cluster.funded_users("reconciled-user", 20).await;
    let clients = cluster.gateways().await;
    let load = tokio::spawn({
        let users = users.clone();
        async move { charge_until_answered(clients, &users, Duration::from_secs(4), "c").await }
    });
    // Every run while the load goes on (and one at least, however fast the load) finds none.
    let mut runs = 0;
    loop {
        runs += 1;
        let output = cluster.billingctl(&["reconcile"]).await;
        assert!(
            output.status.success(),
            "reconcile during load: {}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        if load.is_finished() {
            break;
        }
    }
    let load = load.await.unwrap();
    assert_eq!(recorded_charges(&cluster.db).await, load.acknowledged);
    for user in &users {
        assert_invariants(&cluster.db, user).await;
    }
    let converged = cluster.assert_converged().await;
    println!("reconcile during load: {runs} runs, no difference");
    println!("  {}", tally(&cluster.db, &load, converged).await);
    cluster.stop().await;
}

/// SIGTERM to a command-svc replica while charges run through both, three times: it finishes or
/// cleanly refuses what it holds (a refusal is retried on the other replica), exits with success
/// within its grace period, and nothing is lost or doubled.
#[tokio::test]
async fn sigterm_under_load_finishes_or_cleanly_refuses_in_flight_charges() {
    let mut cluster = Cluster::start(2, 1).await;
    let users = cluster.funded_users("terminated-user", 20).await;
    let clients = cluster.gateways().await;
    let load = tokio::spawn({
        let users = users.clone();
        async move { charge_until_answered(clients, &users, profile().kills_load, "t").await }
    });
    let mut stops = Vec::new();
    for _ in 0..profile().kills {
        tokio::time::sleep(Duration::from_millis(400)).await;
        stops.push(cluster.terminate_and_restart(0).await);
    }
    let load = load.await.unwrap();
    assert_eq!(recorded_charges(&cluster.db).await, load.acknowledged);
    assert_eq!(
        load.applied_unanswered, 0,
        "a stopping replica answers every charge it applies: the calls it did not answer were \
         refused, not applied"
    );
    for user in &users {
        assert_invariants(&cluster.db, user).await;
    }
    let converged = cluster.assert_converged().await;
    let slowest = stops.iter().max().unwrap();
    println!(
        "{} SIGTERMs under load, slowest stop {:.2} s:",
        stops.len(),
        slowest.as_secs_f64()
    );
    println!("  {}", tally(&cluster.db, &load, converged).await);
    cluster.stop().await;
}

/// MySQL (a MariaDB of the test's own) killed for 10 s under load: callers get `UNAVAILABLE` (an
/// unknown outcome, sent again with the same request id), never a wrong answer or a half-written
/// change; the services report not ready meanwhile and recover without a restart.
#[tokio::test]
async fn mysql_stopped_under_load_gives_unavailable_and_the_services_recover() {
    let mut mysql = testkit::OwnMariaDb::start().await;
    let url = mysql.database("faults").await;
    let mut cluster = Cluster::start_with(2, 1, &[("BILLING__DATABASE__URL", url)]).await;
    let users = cluster.funded_users("no-mysql-user", 20).await;
    let clients = cluster.gateways().await;
    let down = profile().mysql_down;
    let load = tokio::spawn({
        let users = users.clone();
        let duration = down + Duration::from_secs(3);
        async move { charge_until_answered(clients, &users, duration, "m").await }
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    mysql.kill().await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let http = cluster.commands[0].http;
    assert_ne!(
        get(&format!("http://{http}/readyz"), None).await.unwrap().0,
        200,
        "not ready while MySQL is down"
    );
    tokio::time::sleep(down - Duration::from_secs(2)).await;
    mysql.restart().await;
    let load = load.await.unwrap();
    // No replica died: every call that failed was answered, and answered UNAVAILABLE.
    assert!(
        load.unknown_total() > 0
            && load
                .unknown
                .keys()
                .all(|key| key == "Unavailable STORE_UNAVAILABLE"),
        "callers were told UNAVAILABLE (STORE_UNAVAILABLE), nothing else: {:?}",
        load.unknown
    );
    for replica in cluster
        .commands
        .iter_mut()
        .chain(cluster.queries.iter_mut())
    {
        assert!(
            replica.child.try_wait().unwrap().is_none(),
            "{} recovered without a restart",
            replica.service
        );
        ready(replica.http).await;
    }
    assert_eq!(recorded_charges(&cluster.db).await, load.acknowledged);
    for user in &users {
        assert_invariants(&cluster.db, user).await;
    }
    let converged = cluster.assert_converged().await;
    println!("MySQL down for {} s under load:", down.as_secs());
    println!("  {}", tally(&cluster.db, &load, converged).await);
    cluster.stop().await;
}
