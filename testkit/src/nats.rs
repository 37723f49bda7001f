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
        let store_dir = std::env::temp_dir().join(format!(
            "billing-test-nats-{}",
            uuid::Uuid::new_v4().simple()
        ));
        std::fs::create_dir_all(&store_dir).unwrap();
        let mut nats = OwnNats {
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
        };
        nats.restart().await;
        nats
    }

    pub fn url(&self) -> String {
        format!("{}://127.0.0.1:{}", self.scheme, self.port)
    }

    /// (Re)starts the server on the same port and store folder, so streams and their messages
    /// survive; waits until JetStream answers.
    pub async fn restart(&mut self) {
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

    /// Asks JetStream's API for the account info. (A raw request: async-nats 0.51's
    /// `query_account` cannot parse what nats-server 2.9 answers.)
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
            .is_ok_and(|reply| !reply.payload.is_empty())
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

impl Drop for OwnNats {
    fn drop(&mut self) {
        if let Some(child) = self.child.as_mut() {
            let _ = child.start_kill();
        }
        let _ = std::fs::remove_dir_all(&self.store_dir);
    }
}
