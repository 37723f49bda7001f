//! What the multi-process tests share: the services' binaries, spare ports, and plain HTTP.

// Each test crate that includes this module uses a part of it.
#![allow(dead_code)]

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    sync::Mutex,
    time::{Duration, Instant},
};

/// A service binary of the workspace, built beside this test.
pub fn binary(name: &str) -> PathBuf {
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

pub fn config_path() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../configs/config.yaml")
}

/// A free port for a replica, below the kernel's range of ephemeral ports (so no outgoing
/// connection takes it between this choice and the replica's bind, nor while a killed replica is
/// down) and never handed out twice by this process.
pub fn spare() -> SocketAddr {
    static GIVEN: Mutex<Vec<u16>> = Mutex::new(Vec::new());
    let mut given = GIVEN.lock().unwrap();
    loop {
        let port = 20_000 + (uuid::Uuid::new_v4().as_u128() % 12_000) as u16;
        let address = SocketAddr::from(([127, 0, 0, 1], port));
        if !given.contains(&port) && std::net::TcpListener::bind(address).is_ok() {
            given.push(port);
            return address;
        }
    }
}

pub async fn ready(http: SocketAddr) {
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

/// Whether a GET of `url` answers 200.
pub async fn get_ok(url: &str) -> std::io::Result<bool> {
    Ok(get(url, None).await?.0 == 200)
}

/// A GET of `url` (a plain HTTP/1.1 request, no client library needed): status and body.
pub async fn get(url: &str, bearer: Option<&str>) -> std::io::Result<(u16, String)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let rest = url.trim_start_matches("http://");
    let (host, path) = rest.split_once('/').unwrap_or((rest, ""));
    let mut stream = tokio::net::TcpStream::connect(host).await?;
    let authorization = bearer
        .map(|token| format!("Authorization: Bearer {token}\r\n"))
        .unwrap_or_default();
    let request =
        format!("GET /{path} HTTP/1.1\r\nHost: {host}\r\n{authorization}Connection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await?;
    let mut answer = Vec::new();
    stream.read_to_end(&mut answer).await?;
    let answer = String::from_utf8_lossy(&answer).into_owned();
    let status = answer.get(9..12).and_then(|s| s.parse().ok()).unwrap_or(0);
    let body = answer
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    Ok((status, body))
}

/// SIGTERM to `child`, then its exit within 15 s (its grace period and some), which must be clean.
pub async fn terminate(child: &mut tokio::process::Child, what: &str) {
    let pid = child.id().expect("the process is running");
    let sent = tokio::process::Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .await
        .unwrap();
    assert!(sent.success());
    let exited = tokio::time::timeout(Duration::from_secs(15), child.wait())
        .await
        .unwrap_or_else(|_| panic!("{what} did not stop within 15 s of SIGTERM"))
        .unwrap();
    assert!(
        exited.success(),
        "{what} exits cleanly on SIGTERM: {exited:?}"
    );
}
