//! `deploy/dev-deps.sh`, the script behind `make run` and `make test`, against servers these tests
//! start on spare ports, with the init system played by a stand-in `systemctl` (and `journalctl`)
//! first on the PATH that records what it was asked and starts or restarts the test's server as
//! systemd would. The machine's own servers are only ever read.

use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
    time::{Duration, Instant},
};

/// A folder of the test's own, removed at the end.
struct Scratch(PathBuf);

impl Scratch {
    fn new(what: &str) -> Scratch {
        let dir =
            std::env::temp_dir().join(format!("billing-test-{what}-{}", testkit::unique_tag()));
        std::fs::create_dir_all(&dir).unwrap();
        Scratch(dir)
    }

    fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }

    /// An executable shell script named `name` in the folder's `bin/`.
    fn script(&self, name: &str, body: &str) {
        use std::os::unix::fs::PermissionsExt;
        let bin = self.path("bin");
        std::fs::create_dir_all(&bin).unwrap();
        let path = bin.join(name);
        std::fs::write(&path, format!("#!/bin/bash\n{body}\n")).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    }

    /// What the stand-in `systemctl` was asked, a line per call.
    fn calls(&self) -> String {
        std::fs::read_to_string(self.path("calls")).unwrap_or_default()
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        // Servers started by a stand-in write a pid file here: stop them with the folder.
        for pid_file in ["nats.pid", "mysqld.pid"] {
            if let Ok(pid) = std::fs::read_to_string(self.path(pid_file)) {
                let _ = Command::new("kill").arg(pid.trim()).status();
            }
        }
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Runs the script with `env` (the test's ports, folders and init system), the scratch folder's
/// `bin/` first on the PATH.
fn dev_deps(scratch: &Scratch, env: &[(&str, String)]) -> Output {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/dev-deps.sh");
    let path = format!(
        "{}:{}",
        scratch.path("bin").display(),
        std::env::var("PATH").unwrap_or_default()
    );
    Command::new(script)
        .env("PATH", path)
        .env("BILLING_DEPS_STATE_DIR", scratch.path("state"))
        .envs(env.iter().map(|(name, value)| (*name, value.as_str())))
        .output()
        .expect("the script runs")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// A nats-server without JetStream on `port`, as Debian's package runs it (`-c` its config).
fn nats_without_jetstream(scratch: &Scratch, port: u16) -> Child {
    let config = scratch.path("nats-server.conf");
    std::fs::write(&config, format!("host: 127.0.0.1\nport: {port}\n")).unwrap();
    let child = Command::new("/usr/sbin/nats-server")
        .arg("-c")
        .arg(&config)
        .arg("-P")
        .arg(scratch.path("nats.pid"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("nats-server starts");
    wait_for_port(port);
    child
}

fn wait_for_port(port: u16) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "nothing answers on {port}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Whether JetStream answers on `port`: a stream can be made there.
fn jetstream_answers(port: u16) -> bool {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let Ok(client) = async_nats::connect(format!("nats://127.0.0.1:{port}")).await else {
            return false;
        };
        let js = async_nats::jetstream::new(client);
        js.create_stream(async_nats::jetstream::stream::Config {
            name: "PROBE".into(),
            subjects: vec!["probe".into()],
            ..Default::default()
        })
        .await
        .is_ok()
    })
}

#[test]
fn a_nats_without_jetstream_that_is_not_the_package_service_is_refused_with_what_to_do() {
    let scratch = Scratch::new("deps-nats-foreign");
    let port = testkit::spare_port();
    let mut server = nats_without_jetstream(&scratch, port);
    let out = dev_deps(
        &scratch,
        &[
            ("BILLING_DEPS_NATS_PORT", port.to_string()),
            ("BILLING_DEPS_INIT", "none".into()),
            (
                "BILLING_DEPS_NATS_CONF",
                "/nonexistent/nats-server.conf".into(),
            ),
        ],
    );
    let said = text(&out.stderr);
    assert!(!out.status.success(), "{said}");
    assert!(said.contains("without JetStream"), "{said}");
    assert!(said.contains("run it with -js"), "{said}");
    assert!(!jetstream_answers(port));
    let _ = server.kill();
    let _ = server.wait();
}

#[test]
fn debians_nats_service_without_jetstream_gets_it_enabled_once() {
    let scratch = Scratch::new("deps-nats-package");
    let port = testkit::spare_port();
    let mut server = nats_without_jetstream(&scratch, port);
    let (calls, pid, config) = (
        scratch.path("calls"),
        scratch.path("nats.pid"),
        scratch.path("nats-server.conf"),
    );
    // systemd's part: the package's service is active; a restart starts it again from its
    // configuration file, as nats-server.service's ExecStart does.
    scratch.script(
        "systemctl",
        &format!(
            r#"echo "$*" >> {calls}
case "$1" in
  is-active) exit 0 ;;
  restart)
    kill "$(cat {pid})"
    while (exec 3<>/dev/tcp/127.0.0.1/{port}) 2>/dev/null; do sleep 0.1; done
    setsid /usr/sbin/nats-server -c {config} -P {pid} </dev/null >/dev/null 2>&1 &
    exit 0 ;;
esac
exit 1"#,
            calls = calls.display(),
            port = port,
            pid = pid.display(),
            config = config.display(),
        ),
    );
    let env = [
        ("BILLING_DEPS_NATS_PORT", port.to_string()),
        ("BILLING_DEPS_INIT", "systemd".into()),
        ("BILLING_DEPS_NATS_CONF", config.display().to_string()),
        (
            "BILLING_DEPS_NATS_STORE",
            scratch.path("store").display().to_string(),
        ),
        ("BILLING_DEPS_NATS_OWNER", "root".into()),
    ];
    let out = dev_deps(&scratch, &env);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).contains("JetStream enabled"),
        "{}",
        text(&out.stdout)
    );
    let enabled = std::fs::read_to_string(&config).unwrap();
    assert!(enabled.contains("jetstream {"), "{enabled}");
    assert!(scratch.path("store").is_dir());
    assert!(
        scratch.calls().contains("restart nats-server"),
        "{}",
        scratch.calls()
    );
    assert!(jetstream_answers(port));
    let _ = server.wait();

    // A second run finds JetStream and changes nothing.
    let before = scratch.calls();
    let out = dev_deps(&scratch, &env);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).contains(&format!("reachable on 127.0.0.1:{port} with JetStream")),
        "{}",
        text(&out.stdout)
    );
    assert_eq!(std::fs::read_to_string(&config).unwrap(), enabled);
    assert_eq!(
        scratch.calls(),
        before,
        "no restart, no question to systemd"
    );
}

/// A MariaDB data folder with root allowed over its socket, as Debian's package makes it.
fn mariadb_data(scratch: &Scratch) -> PathBuf {
    let datadir = scratch.path("mysql");
    let status = Command::new("mariadb-install-db")
        .arg("--no-defaults")
        .arg(format!("--datadir={}", datadir.display()))
        .arg("--user=root")
        .arg("--skip-test-db")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .expect("mariadb-install-db runs");
    assert!(status.success());
    datadir
}

#[test]
fn a_stopped_mariadb_is_started_by_systemd_and_provisioned() {
    let scratch = Scratch::new("deps-mariadb-systemd");
    let port = testkit::spare_port();
    let datadir = mariadb_data(&scratch);
    let socket = scratch.path("mysqld.sock");
    scratch.script(
        "systemctl",
        &format!(
            r#"echo "$*" >> {calls}
if [ "$1" = start ] && [ "$2" = mariadb ]; then
  setsid /usr/sbin/mariadbd --no-defaults --user=root --datadir={datadir} --port={port} \
    --bind-address=127.0.0.1 --socket={socket} --pid-file={pid} --skip-log-bin \
    --innodb-buffer-pool-size=32M </dev/null >/dev/null 2>&1 &
  exit 0
fi
exit 1"#,
            calls = scratch.path("calls").display(),
            datadir = datadir.display(),
            socket = socket.display(),
            pid = scratch.path("mysqld.pid").display(),
        ),
    );
    let out = dev_deps(
        &scratch,
        &[
            ("BILLING_DEPS_MYSQL_PORT", port.to_string()),
            ("BILLING_DEPS_MYSQL_SOCKET", socket.display().to_string()),
            ("BILLING_DEPS_INIT", "systemd".into()),
        ],
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        scratch.calls().contains("start mariadb"),
        "{}",
        scratch.calls()
    );
    assert!(
        text(&out.stdout).contains(&format!("mariadb: started on 127.0.0.1:{port}")),
        "{}",
        text(&out.stdout)
    );
    // The services' user logs in over TCP, as the services do.
    let login = Command::new("mariadb")
        .args([
            "-ubilling",
            "-h127.0.0.1",
            &format!("-P{port}"),
            "-e",
            "SELECT 1",
        ])
        .env("MYSQL_PWD", "billing")
        .output()
        .unwrap();
    assert!(login.status.success(), "{}", text(&login.stderr));
}

#[test]
fn a_failed_start_shows_the_journal_under_systemd_and_the_servers_output_without() {
    let scratch = Scratch::new("deps-mariadb-fails");
    let port = testkit::spare_port();
    scratch.script(
        "systemctl",
        &format!("echo \"$*\" >> {}\nexit 1", scratch.path("calls").display()),
    );
    scratch.script(
        "journalctl",
        "echo 'mariadbd[42]: [ERROR] InnoDB: the journal tells why'",
    );
    let out = dev_deps(
        &scratch,
        &[
            ("BILLING_DEPS_MYSQL_PORT", port.to_string()),
            ("BILLING_DEPS_INIT", "systemd".into()),
        ],
    );
    let said = text(&out.stderr);
    assert!(!out.status.success());
    assert!(said.contains("systemctl start mariadb failed"), "{said}");
    assert!(said.contains("the journal tells why"), "{said}");

    // No init system: the server started in the background, its own output shown.
    scratch.script(
        "mariadbd",
        "echo '[ERROR] the server itself says why' >&2\nexit 1",
    );
    let out = dev_deps(
        &scratch,
        &[
            ("BILLING_DEPS_MYSQL_PORT", port.to_string()),
            ("BILLING_DEPS_INIT", "none".into()),
        ],
    );
    let said = text(&out.stderr);
    assert!(!out.status.success());
    assert!(said.contains("the server itself says why"), "{said}");
}

#[test]
fn make_run_needs_no_python_tools() {
    let scratch = Scratch::new("deps-no-tools");
    let out = dev_deps(
        &scratch,
        &[(
            "BILLING_DEPS_VENV",
            scratch.path("no-venv").display().to_string(),
        )],
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let said = format!("{}{}", text(&out.stdout), text(&out.stderr));
    assert!(!said.contains("kubernetes-validate"), "{said}");
    assert!(!scratch.path("no-venv").exists());
}
