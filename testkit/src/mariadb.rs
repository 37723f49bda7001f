//! A MariaDB server owned by one test, on a spare port with its own data folder, so the test can
//! stop and restart it without touching the machine's shared server.

use std::{path::PathBuf, process::Stdio, time::Duration};

use sqlx::{Connection, MySqlConnection};
use tokio::process::{Child, Command};

pub struct OwnMariaDb {
    pub port: u16,
    datadir: PathBuf,
    child: Option<Child>,
}

fn is_root() -> bool {
    std::process::Command::new("id")
        .arg("-u")
        .output()
        .map(|out| out.stdout.starts_with(b"0"))
        .unwrap_or(false)
}

impl OwnMariaDb {
    /// Initialises a data folder and starts the server; waits until it answers.
    pub async fn start() -> OwnMariaDb {
        let datadir = std::env::temp_dir().join(format!(
            "billing-test-mariadb-{}",
            uuid::Uuid::new_v4().simple()
        ));
        std::fs::create_dir_all(&datadir).unwrap();
        let mut install = Command::new("mariadb-install-db");
        install
            .arg("--no-defaults")
            .arg(format!("--datadir={}", datadir.display()))
            .arg("--auth-root-authentication-method=normal")
            .arg("--skip-test-db")
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        if is_root() {
            install.arg("--user=root");
        }
        assert!(
            install
                .status()
                .await
                .expect("mariadb-install-db runs")
                .success(),
            "data folder initialised"
        );
        let mut db = OwnMariaDb {
            port: crate::spare_port(),
            datadir,
            child: None,
        };
        db.restart().await;
        db
    }

    pub fn url(&self) -> String {
        format!("mysql://root@127.0.0.1:{}", self.port)
    }

    /// (Re)starts the server on the same port and data folder.
    pub async fn restart(&mut self) {
        let mut server = Command::new("/usr/sbin/mariadbd");
        server
            .arg("--no-defaults")
            .arg(format!("--datadir={}", self.datadir.display()))
            .arg(format!("--port={}", self.port))
            .arg("--bind-address=127.0.0.1")
            .arg(format!(
                "--socket={}",
                self.datadir.join("mysqld.sock").display()
            ))
            .arg(format!(
                "--pid-file={}",
                self.datadir.join("mysqld.pid").display()
            ))
            .arg("--skip-grant-tables")
            .arg("--skip-log-bin")
            .arg("--innodb-buffer-pool-size=32M")
            .arg("--innodb-log-file-size=16M")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true);
        if is_root() {
            server.arg("--user=root");
        }
        self.child = Some(server.spawn().expect("mariadbd starts"));
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        loop {
            if MySqlConnection::connect(&self.url()).await.is_ok() {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "the test's MariaDB did not come up"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Kills the server outright, as a crash or a lost host would.
    pub async fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill().await;
        }
    }

    /// Creates a database and returns its URL.
    pub async fn database(&self, name: &str) -> String {
        let mut conn = MySqlConnection::connect(&self.url()).await.unwrap();
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "CREATE DATABASE IF NOT EXISTS `{name}`"
        )))
        .execute(&mut conn)
        .await
        .unwrap();
        format!("{}/{name}", self.url())
    }
}

impl Drop for OwnMariaDb {
    fn drop(&mut self) {
        if let Some(child) = self.child.as_mut() {
            let _ = child.start_kill();
        }
        let _ = std::fs::remove_dir_all(&self.datadir);
    }
}
