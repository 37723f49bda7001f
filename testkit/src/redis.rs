//! A Redis server owned by one test, on a spare port, to kill while the services run.

use std::{process::Stdio, time::Duration};

use tokio::process::{Child, Command};

pub struct OwnRedis {
    pub port: u16,
    child: Option<Child>,
}

impl OwnRedis {
    pub async fn start() -> OwnRedis {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child = Command::new("redis-server")
            .args([
                "--port",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .stdout(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("redis-server runs");
        for _ in 0..100 {
            if tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .is_ok()
            {
                return OwnRedis {
                    port,
                    child: Some(child),
                };
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("the test's redis-server did not start");
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    pub async fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill().await;
        }
    }
}

/// A Redis Cluster of three primaries owned by one test, each node on spare ports of its own
/// (client and cluster bus), with its node file in a temporary folder.
pub struct OwnRedisCluster {
    pub ports: Vec<u16>,
    children: Vec<Child>,
    dir: std::path::PathBuf,
}

impl OwnRedisCluster {
    pub async fn start() -> OwnRedisCluster {
        let dir = std::env::temp_dir().join(format!("billing-test-redis-{}", crate::unique_tag()));
        std::fs::create_dir_all(&dir).expect("a folder for the cluster's node files");
        let mut ports = Vec::new();
        let mut children = Vec::new();
        for _ in 0..3 {
            let (port, bus) = (crate::spare_port(), crate::spare_port());
            let child = Command::new("redis-server")
                .args([
                    "--port",
                    &port.to_string(),
                    "--cluster-port",
                    &bus.to_string(),
                ])
                .args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
                .args(["--cluster-enabled", "yes", "--cluster-node-timeout", "2000"])
                .args(["--cluster-config-file", &format!("nodes-{port}.conf")])
                .arg("--dir")
                .arg(&dir)
                .stdout(Stdio::null())
                .kill_on_drop(true)
                .spawn()
                .expect("redis-server runs");
            children.push(child);
            wait_for_port(port).await;
            ports.push(port);
        }
        let nodes: Vec<String> = ports.iter().map(|p| format!("127.0.0.1:{p}")).collect();
        let created = Command::new("redis-cli")
            .args(["--cluster", "create"])
            .args(&nodes)
            .args(["--cluster-replicas", "0", "--cluster-yes"])
            .output()
            .await
            .expect("redis-cli runs");
        assert!(
            created.status.success(),
            "the cluster was not created: {}",
            String::from_utf8_lossy(&created.stdout)
        );
        let cluster = OwnRedisCluster {
            ports,
            children,
            dir,
        };
        cluster.wait_until_ok().await;
        cluster
    }

    /// Every node reports `cluster_state:ok` (all slots covered and agreed on).
    async fn wait_until_ok(&self) {
        for _ in 0..200 {
            let mut ok = true;
            for port in &self.ports {
                let info = Command::new("redis-cli")
                    .args(["-p", &port.to_string(), "cluster", "info"])
                    .output()
                    .await
                    .expect("redis-cli runs");
                ok &= String::from_utf8_lossy(&info.stdout).contains("cluster_state:ok");
            }
            if ok {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("the test's Redis Cluster did not reach cluster_state:ok");
    }

    /// Its nodes as `redis.url` lists them for a cluster: comma-separated.
    pub fn url(&self) -> String {
        let nodes: Vec<String> = self
            .ports
            .iter()
            .map(|p| format!("redis://127.0.0.1:{p}"))
            .collect();
        nodes.join(",")
    }

    /// How many keys each node holds.
    pub async fn keys_per_node(&self) -> Vec<u64> {
        let mut counts = Vec::new();
        for port in &self.ports {
            let size = Command::new("redis-cli")
                .args(["-p", &port.to_string(), "dbsize"])
                .output()
                .await
                .expect("redis-cli runs");
            counts.push(
                String::from_utf8_lossy(&size.stdout)
                    .trim()
                    .parse()
                    .expect("a count"),
            );
        }
        counts
    }
}

impl Drop for OwnRedisCluster {
    fn drop(&mut self) {
        for child in &mut self.children {
            let _ = child.start_kill();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

async fn wait_for_port(port: u16) {
    for _ in 0..100 {
        if tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_ok()
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("the test's redis-server on {port} did not start");
}
