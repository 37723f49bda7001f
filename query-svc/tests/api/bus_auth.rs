//! The bus is a trust boundary: the stack runs against a NATS server of the test's own that
//! refuses anonymous clients (user and password, a token) or speaks only TLS, configured through
//! the `nats.*` settings, and a charge still reaches the read model.

use std::{path::Path, time::Duration};

use shared::clock::Clock;
use testkit::OwnNats;

use crate::helpers::*;

/// A charge made through command-svc shows in query-svc's REST account: its event crossed the
/// bus, out and back in.
async fn a_charge_reaches_the_read_model(stack: &Stack) {
    let user = new_user(&stack.tag);
    let charged = stack
        .gateway()
        .await
        .deduct_quota(deduct(&user, CNY, "over-the-bus"))
        .await
        .unwrap()
        .into_inner()
        .account
        .unwrap()
        .version;
    let url = stack.url(&format!("/api/v1/billing/account?min_version={charged}"));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let answer: serde_json::Value = reqwest::Client::new()
            .get(&url)
            .bearer_auth(stack.token(&user))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        if answer["version"].as_i64() == Some(charged) {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the charge's event never reached the read model: {answer}"
        );
    }
}

/// A client without the server's credentials is refused: the server really asks for them.
async fn anonymous_clients_are_refused(nats: &OwnNats) {
    let anonymous = async_nats::ConnectOptions::new()
        .connection_timeout(Duration::from_secs(2))
        .connect(nats.url())
        .await;
    assert!(anonymous.is_err(), "the test's server admits anyone");
}

#[tokio::test]
async fn the_stack_runs_on_a_bus_that_requires_a_user_and_password() {
    let password = "bus-password-q2Vb1Nc0uYw8R7tZk3LmP9";
    let nats = OwnNats::start_with(
        &["--user", "billing", "--pass", password],
        Some(async_nats::ConnectOptions::with_user_and_password(
            "billing".into(),
            password.into(),
        )),
    )
    .await;
    anonymous_clients_are_refused(&nats).await;
    let stack = spawn_stack_with(
        Clock::system(),
        &[
            ("BILLING__NATS__URL", &nats.url()),
            ("BILLING__NATS__USER", "billing"),
            ("BILLING__NATS__PASSWORD", password),
        ],
    )
    .await;
    a_charge_reaches_the_read_model(&stack).await;
    stack.cleanup().await;
}

/// Makes a CA and a certificate for 127.0.0.1 signed by it, with openssl, in `dir`; returns the
/// paths of the CA's certificate, the server's certificate and its key.
fn certificates(dir: &Path) -> (String, String, String) {
    let run = |args: &[&str]| {
        let status = std::process::Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status()
            .expect("openssl runs");
        assert!(status.success(), "openssl {args:?}");
    };
    std::fs::write(dir.join("san.ext"), "subjectAltName=IP:127.0.0.1\n").unwrap();
    run(&[
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-days",
        "1",
        "-subj",
        "/CN=test-ca",
        "-keyout",
        "ca.key",
        "-out",
        "ca.pem",
    ]);
    run(&[
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-subj",
        "/CN=127.0.0.1",
        "-keyout",
        "server.key",
        "-out",
        "server.csr",
    ]);
    run(&[
        "x509",
        "-req",
        "-in",
        "server.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-days",
        "1",
        "-extfile",
        "san.ext",
        "-out",
        "server.pem",
    ]);
    let path = |name: &str| dir.join(name).to_string_lossy().into_owned();
    (path("ca.pem"), path("server.pem"), path("server.key"))
}

#[tokio::test]
async fn the_stack_runs_on_a_bus_that_speaks_only_tls_and_requires_a_token() {
    let dir = std::env::temp_dir().join(format!("billing-test-tls-{}", unique_tag()));
    std::fs::create_dir_all(&dir).unwrap();
    let (ca, cert, key) = certificates(&dir);
    let token = "bus-token-Wm5Qe8Rt1Yu4Io7Pa0Sd3Fg6Hj9K";
    let nats = OwnNats::start_with(
        &[
            "--tls",
            "--tlscert",
            &cert,
            "--tlskey",
            &key,
            "--auth",
            token,
        ],
        Some(
            async_nats::ConnectOptions::with_token(token.into())
                .add_root_certificates(ca.clone().into())
                .require_tls(true),
        ),
    )
    .await;
    anonymous_clients_are_refused(&nats).await;
    let stack = spawn_stack_with(
        Clock::system(),
        &[
            ("BILLING__NATS__URL", &nats.url()),
            ("BILLING__NATS__TOKEN", token),
            ("BILLING__NATS__TLS_CA_FILE", &ca),
        ],
    )
    .await;
    a_charge_reaches_the_read_model(&stack).await;
    stack.cleanup().await;
    let _ = std::fs::remove_dir_all(&dir);
}
