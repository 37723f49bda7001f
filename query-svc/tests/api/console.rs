//! The developer console at `/console`: its files are served from the binary with a policy that
//! keeps the page to this origin, and the page itself, driven in headless Chromium, shows what
//! the REST API answers, pages and filters the records (by type and by days), recharges and
//! follows the order to PAID after a signed payment callback, reads and saves the alert settings
//! (the signing secret shown once), shows times in the billing zone and the browser's, works from
//! the keyboard, passes axe-core's serious and critical rules, and asks for a new token when its
//! token has expired (`query-svc/console/e2e/console.test.mjs`, run by Node.js with
//! playwright-core and axe-core).
//!
//! Chromium, Node.js, playwright-core and axe-core are installed by `deploy/dev-deps.sh
//! --browser` (as `make test` runs it); without them the browser test fails, it never skips.

use std::{
    path::{Path, PathBuf},
    process::Stdio,
    time::Duration,
};

use reqwest::header;

use crate::{helpers::*, projection::until_projected};

const WAIT: Duration = Duration::from_secs(20);

/// Charges of the sample data, split between two APIs.
const CHARGES: usize = 45;

fn e2e_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("console/e2e")
}

/// The Chromium the tests drive: `$CHROMIUM`, else Debian's.
fn chromium() -> PathBuf {
    std::env::var_os("CHROMIUM")
        .filter(|path| !path.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/usr/bin/chromium"))
}

#[tokio::test]
async fn the_console_is_served_from_the_binary_and_kept_to_this_origin() {
    let stack = spawn_stack().await;
    let http = reqwest::Client::new();
    for (path, content_type) in [
        ("/console", "text/html"),
        ("/console/console.css", "text/css"),
        ("/console/console.js", "text/javascript"),
    ] {
        let response = http.get(stack.url(path)).send().await.unwrap();
        assert_eq!(response.status(), 200, "{path}");
        let headers = response.headers().clone();
        let value = |name: header::HeaderName| {
            headers
                .get(&name)
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
                .to_owned()
        };
        assert!(
            value(header::CONTENT_TYPE).starts_with(content_type),
            "{path}: {headers:?}"
        );
        let policy = value(header::CONTENT_SECURITY_POLICY);
        for directive in [
            "default-src 'none'",
            "script-src 'self'",
            "connect-src 'self'",
            "frame-ancestors 'none'",
        ] {
            assert!(policy.contains(directive), "{path}: {policy}");
        }
        assert!(!policy.contains("unsafe"), "{path}: {policy}");
        assert_eq!(value(header::X_CONTENT_TYPE_OPTIONS), "nosniff", "{path}");
        let body = response
            .text()
            .await
            .unwrap()
            .replace("http://www.w3.org/2000/svg", "");
        // Nothing is fetched from elsewhere: no absolute URL in any of the files (but the SVG
        // namespace, which is a name).
        for scheme in ["http://", "https://", "//cdn", "fonts.googleapis"] {
            assert!(!body.contains(scheme), "{path} refers to {scheme}");
        }
    }
    let page = http
        .get(stack.url("/console"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        page.contains("/console/console.js") && page.contains("/console/console.css"),
        "{page}"
    );
    // The page needs no token (it asks for one); the API behind it does.
    let (status, _) = stack.get("/api/v1/billing/account", "").await;
    assert_eq!(status, 401);
    stack.cleanup().await;
}

#[tokio::test]
async fn the_console_in_chromium_shows_pages_filters_and_recharges() {
    let chromium = chromium();
    assert!(
        chromium.exists(),
        "no Chromium at {}: run deploy/dev-deps.sh --browser",
        chromium.display()
    );
    assert!(
        e2e_dir().join("node_modules/playwright-core").exists(),
        "playwright-core is not installed in {}: run deploy/dev-deps.sh --browser",
        e2e_dir().display()
    );
    assert!(
        e2e_dir().join("node_modules/axe-core/axe.min.js").exists(),
        "axe-core is not installed in {}: run deploy/dev-deps.sh --browser",
        e2e_dir().display()
    );

    let stack = spawn_stack().await;
    let user = new_user("console");
    recharge(&stack, &user, 50 * CNY).await;
    let mut gateway = stack.gateway().await;
    for i in 0..CHARGES {
        let api_id = if i % 3 == 0 {
            "embeddings"
        } else {
            "chat.completions"
        };
        gateway
            .deduct_quota(shared::proto::v1::DeductQuotaRequest {
                api_id: api_id.into(),
                ..deduct(&user, 350_000 + 10_007 * i as i64, &format!("call-{i}"))
            })
            .await
            .unwrap();
    }
    until_projected(&stack, &user, WAIT).await;

    let mut node = tokio::process::Command::new("node");
    node.arg("console.test.mjs")
        .current_dir(e2e_dir())
        .env("CONSOLE_URL", format!("http://{}", stack.query_http))
        .env("CHROMIUM", &chromium)
        .env("JWT_SECRET", testkit::JWT_SECRET)
        .env("USER_ID", &user)
        .env(
            "WEBHOOK_URL",
            format!(
                "http://{}/api/v1/billing/recharge/callback",
                stack.command_http
            ),
        )
        .env("WEBHOOK_SECRET", testkit::WEBHOOK_SECRET)
        .env("BILLING_TIME_ZONE", &stack.settings.billing.time_zone)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    // `BILLING_CONSOLE_SCREENSHOT=docs/console.png make test TEST_ARGS=console` renews the
    // README's picture.
    if let Some(path) = std::env::var_os("BILLING_CONSOLE_SCREENSHOT").filter(|p| !p.is_empty()) {
        node.env(
            "SCREENSHOT",
            Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(path),
        );
    }
    let output = tokio::time::timeout(Duration::from_secs(240), node.output())
        .await
        .expect("the browser test finishes within four minutes")
        .expect("node runs (deploy/dev-deps.sh --browser installs it)");
    let (stdout, stderr) = (
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr),
    );
    println!("{stdout}");
    assert!(
        output.status.success(),
        "the browser test failed ({}):\n{stdout}\n{stderr}",
        output.status
    );
    // Every check of the script ran and passed.
    let passed = stdout.lines().filter(|l| l.starts_with("ok ")).count();
    assert_eq!(passed, 14, "every check ran and passed:\n{stdout}");
    assert!(!stdout.contains("not ok"), "{stdout}");
    stack.cleanup().await;
}
