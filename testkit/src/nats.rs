//! A NATS server with JetStream owned by one test, on a spare port with its own store folder, so
//! the test can stop and restart it without touching the machine's shared server.

use std::{path::PathBuf, process::Stdio, time::Duration};

use tokio::process::{Child, Command};

pub struct OwnNats {
    pub port: u16,
    store_dir: PathBuf,
    /// More options of the server: credentials it requires, TLS.
    extra: Vec<String>,
    /// The options a client needs to reach it (JetStream's readiness is asked with them).
    client: Option<async_nats::ConnectOptions>,
    scheme: &'static str,
    child: Option<Child>,
}

/// Debian installs the server outside a normal user's PATH.
fn server_binary() -> PathBuf {
    let debian = PathBuf::from("/usr/sbin/nats-server");
    if debian.exists() {
        debian
    } else {
        PathBuf::from("nats-server")
    }
}

impl OwnNats {
    /// Starts a server with a fresh store folder; waits until JetStream answers.
    pub async fn start() -> OwnNats {
        Self::start_with(&[], None).await
    }

    /// As [`OwnNats::start`], with more server options (`--user`, `--pass`, `--auth`, `--tls`…)
    /// and the client options that reach it; a `--tls` server's URL is `tls://`.
    pub async fn start_with(extra: &[&str], client: Option<async_nats::ConnectOptions>) -> OwnNats {
        let mut nats = OwnNats::new(extra, client);
        nats.restart().await;
        nats
    }

    /// A server not started yet, on a spare port with a fresh store folder.
    fn new(extra: &[&str], client: Option<async_nats::ConnectOptions>) -> OwnNats {
        let store_dir = std::env::temp_dir().join(format!(
            "billing-test-nats-{}",
            uuid::Uuid::new_v4().simple()
        ));
        std::fs::create_dir_all(&store_dir).unwrap();
        OwnNats {
            port: crate::spare_port(),
            store_dir,
            scheme: if extra.contains(&"--tls") {
                "tls"
            } else {
                "nats"
            },
            extra: extra.iter().map(|arg| (*arg).to_owned()).collect(),
            client,
            child: None,
        }
    }

    pub fn url(&self) -> String {
        format!("{}://127.0.0.1:{}", self.scheme, self.port)
    }

    /// (Re)starts the server on the same port and store folder, so streams and their messages
    /// survive; waits until JetStream answers.
    pub async fn restart(&mut self) {
        self.spawn();
        self.wait_ready().await;
    }

    /// Starts the server process without waiting for it.
    fn spawn(&mut self) {
        let child = Command::new(server_binary())
            .args([
                "-a",
                "127.0.0.1",
                "-p",
                &self.port.to_string(),
                "-js",
                "-sd",
            ])
            .arg(&self.store_dir)
            .args(&self.extra)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("nats-server starts");
        self.child = Some(child);
    }

    /// Waits until JetStream answers (30 s at most).
    async fn wait_ready(&self) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            if self.jetstream_answers().await {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "the test's NATS server did not come up"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Asks JetStream's API for the account info, and takes an answer that is not an error (a
    /// server of a cluster answers one until the cluster has elected its leader). (A raw
    /// request: async-nats 0.51's `query_account` cannot parse what nats-server 2.9 answers.)
    async fn jetstream_answers(&self) -> bool {
        let options = self
            .client
            .clone()
            .unwrap_or_default()
            .connection_timeout(Duration::from_secs(2));
        let Ok(client) = options.connect(self.url()).await else {
            return false;
        };
        client
            .request("$JS.API.INFO", "".into())
            .await
            .is_ok_and(|reply| {
                let error = reply.payload.windows(8).any(|part| part == b"\"error\":");
                !reply.payload.is_empty() && !error
            })
    }

    /// Stops the server as an orderly shutdown would (SIGTERM, so what it acked is on disk),
    /// and waits until it has exited; killed if it takes longer than 10 s.
    pub async fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        if let Some(pid) = child.id() {
            let _ = Command::new("kill")
                .args(["-TERM", &pid.to_string()])
                .status()
                .await;
        }
        if tokio::time::timeout(Duration::from_secs(10), child.wait())
            .await
            .is_err()
        {
            let _ = child.kill().await;
        }
    }
}

impl OwnNats {
    /// `kill -9`: the server ends at once, with no goodbye to its clients or its cluster.
    pub async fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill().await;
        }
    }

    /// Cuts the server off: frozen (SIGSTOP), it answers no one, clients and cluster alike, as
    /// a partition looks to them; [`OwnNats::resume`] lets it go on.
    pub async fn pause(&self) {
        self.signal("-STOP").await;
    }

    pub async fn resume(&self) {
        self.signal("-CONT").await;
    }

    async fn signal(&self, signal: &str) {
        if let Some(pid) = self.child.as_ref().and_then(Child::id) {
            let _ = Command::new("kill")
                .args([signal, &pid.to_string()])
                .status()
                .await;
        }
    }
}

/// Three NATS servers with JetStream as one cluster on loopback ports of their own (as
/// production runs them, streams at R3), each of which a test may kill, restart or cut off.
pub struct OwnNatsCluster {
    pub nodes: Vec<OwnNats>,
}

impl OwnNatsCluster {
    /// Starts the three servers together (a server of a cluster has no JetStream until a
    /// majority is up) and waits until each answers JetStream's API.
    pub async fn start() -> OwnNatsCluster {
        let name = format!("billing-test-{}", uuid::Uuid::new_v4().simple());
        let cluster_ports: Vec<u16> = (0..3).map(|_| crate::spare_port()).collect();
        let routes: Vec<String> = cluster_ports
            .iter()
            .map(|port| format!("nats://127.0.0.1:{port}"))
            .collect();
        let mut nodes = Vec::new();
        for (index, port) in cluster_ports.iter().enumerate() {
            let extra = [
                "--server_name".to_owned(),
                format!("node-{index}"),
                "--cluster_name".to_owned(),
                name.clone(),
                "--cluster".to_owned(),
                format!("nats://127.0.0.1:{port}"),
                "--routes".to_owned(),
                routes.join(","),
            ];
            let extra: Vec<&str> = extra.iter().map(String::as_str).collect();
            let mut node = OwnNats::new(&extra, None);
            node.spawn();
            nodes.push(node);
        }
        for node in &nodes {
            node.wait_ready().await;
        }
        OwnNatsCluster { nodes }
    }

    /// Every server's URL, as a client's list of servers.
    pub fn urls(&self) -> String {
        let urls: Vec<String> = self.nodes.iter().map(OwnNats::url).collect();
        urls.join(",")
    }

    /// The index of the server JetStream names `name` (`node-<index>`).
    pub fn index_of(&self, name: &str) -> Option<usize> {
        name.strip_prefix("node-")?
            .parse()
            .ok()
            .filter(|index| *index < self.nodes.len())
    }
}

impl Drop for OwnNats {
    fn drop(&mut self) {
        if let Some(child) = self.child.as_mut() {
            let _ = child.start_kill();
        }
        let _ = std::fs::remove_dir_all(&self.store_dir);
    }
}
