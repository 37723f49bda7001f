//! The developer console at `/console`: its files are served from the binary with a policy that
//! keeps the page to this origin, and the page itself, driven in headless Chromium, shows what
//! the REST API answers, pages and filters the records (by type and by days), recharges and
//! follows the order to PAID after a signed payment callback, reads and saves the alert settings
//! (the signing secret shown once), shows the caller's prices (the version in effect, or that
//! none is, and the scheduled ones) and each priced record's usage and the version that priced
//! it, shows the spend limits with what their windows spent and saves a changed set whole (a
//! refused one shown in the card, nothing changed), shows times in the billing zone and the
//! browser's, works from the keyboard, passes axe-core's serious and critical rules, and asks for
//! a new token when its token has expired (`query-svc/console/e2e/console.test.mjs`, run by
//! Node.js with playwright-core and axe-core).
//!
//! Chromium, Node.js, playwright-core and axe-core are installed by `deploy/dev-deps.sh
//! --browser` (as `make test` runs it); without them the browser test fails, it never skips.

use std::{
    path::{Path, PathBuf},
    process::Stdio,
    time::Duration,
};

use chrono::TimeDelta;
use reqwest::header;
use shared::proto::v1 as pb;

use crate::{helpers::*, projection::until_projected};

const WAIT: Duration = Duration::from_secs(20);

/// Charges of an amount in the sample data, split between two APIs.
const CHARGES: usize = 45;

/// Charges of the sample data priced by the user's list from the usage they report, made after
/// the others so the first page of records shows both kinds.
const PRICED_CHARGES: usize = 4;

/// Charges of the user with spend limits, made after the limits so both count them.
const LIMITED_CHARGES: usize = 5;

/// The API of that user's monthly limit; its charges alternate with others.
const LIMITED_API: &str = "chat.completions";

/// The API key some of that user's charges are made with: the browser test adds a limit for it,
/// which starts from what the key already spent that day.
const LIMITED_KEY: &str = "console-key-1";

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

fn price(api_id: &str, meter: &str, price_micros: i64, per_units: i64) -> pb::Price {
    pb::Price {
        api_id: api_id.into(),
        meter: meter.into(),
        price_micros,
        per_units,
    }
}

/// A list for the sample's two APIs: per call and per million tokens, the output tokens at
/// `output_per_million` (so versions differ).
fn sample_prices(output_per_million: i64) -> Vec<pb::Price> {
    vec![
        price("chat.completions", "call", 2_000, 1),
        price("chat.completions", "input_tokens", 500_000, 1_000_000),
        price(
            "chat.completions",
            "output_tokens",
            output_per_million,
            1_000_000,
        ),
        price("embeddings", "input_tokens", 20_000, 1_000_000),
    ]
}

/// Publishes `prices` as the next version of the list `name`, taking effect at `at`, or now
/// when `None` (the answer then comes once it is in effect).
async fn publish(
    stack: &Stack,
    name: &str,
    at: Option<chrono::DateTime<chrono::Utc>>,
    prices: Vec<pb::Price>,
    publish_id: &str,
) {
    stack
        .ops()
        .await
        .publish_price_list(pb::PublishPriceListRequest {
            name: name.into(),
            effective_from_ms: at.map_or(0, |at| at.timestamp_millis()),
            prices,
            publish_id: publish_id.into(),
            actor: "pricing@example.com".into(),
        })
        .await
        .unwrap();
}

fn usage(lines: &[(&str, i64)]) -> Vec<pb::Usage> {
    lines
        .iter()
        .map(|(meter, quantity)| pb::Usage {
            meter: (*meter).into(),
            quantity: *quantity,
        })
        .collect()
}

/// What the `i`th priced call of the sample used: chat calls with their tokens, or embeddings;
/// enough tokens that each costs a few cents, so the records show the amounts.
fn sample_usage(i: usize) -> (&'static str, Vec<pb::Usage>) {
    let i = i as i64;
    if i % 2 == 0 {
        let chat = [
            ("call", 1),
            ("input_tokens", 182_400 + 3_700 * i),
            ("output_tokens", 96_001 + 2_500 * i),
        ];
        ("chat.completions", usage(&chat))
    } else {
        let embedded = [("input_tokens", 1_250_000 + 100_000 * i)];
        ("embeddings", usage(&embedded))
    }
}

/// The default list in effect for `user`'s priced charges and its next version a week ahead;
/// the stack runs on the system clock, so the first version is published for now.
async fn seed_prices(stack: &Stack, user: &str) {
    publish(
        stack,
        "default",
        None,
        sample_prices(1_500_000),
        "console-1",
    )
    .await;
    let next_week = stack.clock.now() + TimeDelta::days(7);
    publish(
        stack,
        "default",
        Some(next_week),
        sample_prices(1_200_000),
        "console-2",
    )
    .await;
    let mut gateway = stack.gateway().await;
    for i in 0..PRICED_CHARGES {
        let (api_id, usage) = sample_usage(i);
        gateway
            .deduct_quota(pb::DeductQuotaRequest {
                user_id: user.into(),
                request_id: format!("priced-{i}"),
                api_id: api_id.into(),
                usage,
                ..Default::default()
            })
            .await
            .unwrap();
    }
}

/// A user with a little balance whose list has only a version scheduled ahead, so the console
/// has no prices in effect to show them.
async fn user_without_prices_in_effect(stack: &Stack) -> String {
    let user = new_user("unpriced");
    let next_month = stack.clock.now() + TimeDelta::days(30);
    publish(
        stack,
        "enterprise",
        Some(next_month),
        sample_prices(1_000_000),
        "console-e1",
    )
    .await;
    stack
        .ops()
        .await
        .assign_price_list(pb::AssignPriceListRequest {
            user_id: user.clone(),
            name: "enterprise".into(),
            actor: "ops@example.com".into(),
        })
        .await
        .unwrap();
    recharge(stack, &user, 5 * CNY).await;
    user
}

fn spend_limit(scope: &str, window: &str, limit_micros: i64) -> pb::SpendLimit {
    pb::SpendLimit {
        scope: scope.into(),
        window: window.into(),
        limit_micros,
    }
}

/// A user with two spend limits, the whole account per day and one API per month, set as the
/// console sets them, then charges against both (some with an API key, some on another API), all
/// under the limits.
async fn user_with_spend_limits(stack: &Stack) -> String {
    let user = new_user("limited");
    recharge(stack, &user, 20 * CNY).await;
    stack
        .orders()
        .await
        .set_spend_limits(pb::SetSpendLimitsRequest {
            user_id: user.clone(),
            limits: vec![
                spend_limit("account", "day", 10 * CNY),
                spend_limit(&format!("api:{LIMITED_API}"), "month", 4 * CNY + 500_000),
            ],
            actor: format!("user:{user}"),
            set_id: String::new(),
        })
        .await
        .unwrap();
    let mut gateway = stack.gateway().await;
    for i in 0..LIMITED_CHARGES {
        let api_id = if i % 2 == 0 {
            LIMITED_API
        } else {
            "embeddings"
        };
        let key_id = if i % 3 == 0 { LIMITED_KEY } else { "" };
        gateway
            .deduct_quota(pb::DeductQuotaRequest {
                api_id: api_id.into(),
                key_id: key_id.into(),
                ..deduct(&user, 1_234_567 + 1_001 * i as i64, &format!("limited-{i}"))
            })
            .await
            .unwrap();
    }
    user
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
            .deduct_quota(pb::DeductQuotaRequest {
                api_id: api_id.into(),
                ..deduct(&user, 350_000 + 10_007 * i as i64, &format!("call-{i}"))
            })
            .await
            .unwrap();
    }
    seed_prices(&stack, &user).await;
    let unpriced = user_without_prices_in_effect(&stack).await;
    let limited = user_with_spend_limits(&stack).await;
    until_projected(&stack, &user, WAIT).await;
    until_projected(&stack, &unpriced, WAIT).await;
    until_projected(&stack, &limited, WAIT).await;

    let mut node = tokio::process::Command::new("node");
    node.arg("console.test.mjs")
        .current_dir(e2e_dir())
        .env("CONSOLE_URL", format!("http://{}", stack.query_http))
        .env("CHROMIUM", &chromium)
        .env("JWT_SECRET", testkit::JWT_SECRET)
        .env("USER_ID", &user)
        .env("UNPRICED_USER_ID", &unpriced)
        .env("LIMITED_USER_ID", &limited)
        .env("LIMITED_API", LIMITED_API)
        .env("LIMITED_KEY", LIMITED_KEY)
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
    assert_eq!(passed, 17, "every check ran and passed:\n{stdout}");
    assert!(!stdout.contains("not ok"), "{stdout}");
    stack.cleanup().await;
}
