//! Only an HS256 token signed with a configured secret, with a valid subject and an unexpired
//! `exp`, gets in; and a user only ever sees their own account, records and orders.

use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use chrono::Duration;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use shared::clock::Clock;

use crate::{helpers::*, support::*};

const ROUTES: [&str; 6] = [
    "/api/v1/billing/account",
    "/api/v1/billing/records",
    "/api/v1/billing/records/export",
    "/api/v1/billing/usage",
    "/api/v1/billing/recharge/orders",
    "/api/v1/billing/recharge/orders/RO1",
];

fn signed(algorithm: Algorithm, secret: &str, claims: &Value) -> String {
    jsonwebtoken::encode(
        &Header::new(algorithm),
        claims,
        &EncodingKey::from_secret(secret.as_bytes()),
    )
    .unwrap()
}

/// A token with a header of our choosing, HMAC-SHA256-signed with `secret` all the same.
fn with_header(header: &Value, claims: &Value, secret: &str) -> String {
    let message = format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(header.to_string()),
        URL_SAFE_NO_PAD.encode(claims.to_string())
    );
    let signature = jsonwebtoken::crypto::sign(
        message.as_bytes(),
        &EncodingKey::from_secret(secret.as_bytes()),
        Algorithm::HS256,
    )
    .unwrap();
    format!("{message}.{signature}")
}

async fn get_with(stack: &Stack, path: &str, authorization: Option<&str>) -> (StatusCode, Value) {
    send(stack, Method::GET, path, authorization, None, None).await
}

#[tokio::test]
async fn every_billing_route_refuses_a_request_without_a_valid_token() {
    let stack = spawn_stack().await;
    let user = new_user(&stack.tag);
    let exp = (stack.clock.now() + Duration::hours(1)).timestamp();
    let claims = json!({ "sub": user, "exp": exp });
    let bearer = |token: &str| format!("Bearer {token}");
    let refused = [
        None,
        Some("Bearer".to_owned()),
        Some("Bearer ".to_owned()),
        Some(bearer("not-a-token")),
        Some(bearer("a.b.c")),
        Some(format!("Basic {}", URL_SAFE_NO_PAD.encode("user:pass"))),
        // Signed with a secret the service does not know.
        Some(bearer(&signed(Algorithm::HS256, "another-secret", &claims))),
        // A good token whose signature was altered.
        Some(bearer(&format!(
            "{}x",
            signed(Algorithm::HS256, JWT_SECRET, &claims)
        ))),
        // Unsigned.
        Some(bearer(&format!(
            "{}.{}.",
            URL_SAFE_NO_PAD.encode(r#"{"alg":"none","typ":"JWT"}"#),
            URL_SAFE_NO_PAD.encode(claims.to_string())
        ))),
        // Another HMAC, with the right secret.
        Some(bearer(&signed(Algorithm::HS512, JWT_SECRET, &claims))),
        // An asymmetric algorithm named, signed with the secret as an HMAC key.
        Some(bearer(&with_header(
            &json!({ "alg": "RS256", "typ": "JWT" }),
            &claims,
            JWT_SECRET,
        ))),
        // Expired an hour ago.
        Some(bearer(&token_with(
            JWT_SECRET,
            &user,
            stack.clock.now() - Duration::hours(1),
        ))),
        // No exp, no sub, a sub that is not a user id, an exp that is not a number.
        Some(bearer(&signed(
            Algorithm::HS256,
            JWT_SECRET,
            &json!({ "sub": user }),
        ))),
        Some(bearer(&signed(
            Algorithm::HS256,
            JWT_SECRET,
            &json!({ "exp": exp }),
        ))),
        Some(bearer(&signed(
            Algorithm::HS256,
            JWT_SECRET,
            &json!({ "sub": "not/a user", "exp": exp }),
        ))),
        Some(bearer(&signed(
            Algorithm::HS256,
            JWT_SECRET,
            &json!({ "sub": user, "exp": "tomorrow" }),
        ))),
    ];
    for authorization in &refused {
        for route in ROUTES {
            let answer = get_with(&stack, route, authorization.as_deref()).await;
            assert_eq!(
                error_code(&answer),
                (StatusCode::UNAUTHORIZED, "UNAUTHENTICATED"),
                "{route} with {authorization:?}"
            );
        }
    }

    // Refused before the body is looked at, and nothing is created.
    let answer = send(
        &stack,
        Method::POST,
        "/api/v1/billing/recharge",
        refused[6].as_deref(),
        Some("application/json"),
        Some(json!({ "amount_micros": 1_000_000 }).to_string()),
    )
    .await;
    assert_eq!(
        error_code(&answer),
        (StatusCode::UNAUTHORIZED, "UNAUTHENTICATED")
    );
    assert_eq!(command_orders(&stack).await, 0);

    // The same claims signed properly get in; the scheme's case does not matter.
    let good = signed(Algorithm::HS256, JWT_SECRET, &claims);
    for authorization in [format!("Bearer {good}"), format!("bearer {good}")] {
        let (status, body) = get_with(&stack, ROUTES[0], Some(&authorization)).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        assert_eq!(body["user_id"], json!(user));
    }
    stack.cleanup().await;
}

#[tokio::test]
async fn a_rotated_out_secret_verifies_only_while_it_is_listed() {
    let rotating = [
        ("BILLING__AUTH__JWT_SECRET", "jwt-secret-new"),
        ("BILLING__AUTH__JWT_PREVIOUS_SECRETS", "jwt-secret-old"),
    ];
    let stack = spawn_stack_with(Clock::system(), &rotating).await;
    let user = new_user(&stack.tag);
    let exp = stack.clock.now() + Duration::hours(1);
    for secret in ["jwt-secret-new", "jwt-secret-old"] {
        let (status, body) = stack
            .get("/api/v1/billing/account", &token_with(secret, &user, exp))
            .await;
        assert_eq!(status, StatusCode::OK, "{secret}: {body}");
    }
    let answer = stack
        .get(
            "/api/v1/billing/account",
            &token_with(JWT_SECRET, &user, exp),
        )
        .await;
    assert_eq!(error_code(&answer).0, StatusCode::UNAUTHORIZED);
    stack.cleanup().await;

    let stack = spawn_stack_with(
        Clock::system(),
        &[("BILLING__AUTH__JWT_SECRET", "jwt-secret-new")],
    )
    .await;
    let new = stack
        .get(
            "/api/v1/billing/account",
            &token_with("jwt-secret-new", &user, exp),
        )
        .await;
    assert_eq!(new.0, StatusCode::OK);
    let old = stack
        .get(
            "/api/v1/billing/account",
            &token_with("jwt-secret-old", &user, exp),
        )
        .await;
    assert_eq!(
        error_code(&old),
        (StatusCode::UNAUTHORIZED, "UNAUTHENTICATED")
    );
    stack.cleanup().await;
}

#[tokio::test]
async fn a_user_sees_only_their_own_account_records_and_orders() {
    let stack = spawn_stack().await;
    let (alice, bob) = (new_user(&stack.tag), new_user(&stack.tag));
    let now = stack.clock.now();
    for (user, balance) in [(&alice, 1_000), (&bob, 2_000_000)] {
        seed_account(
            &stack,
            AccountRow {
                user,
                balance,
                period: &shared::period::BillingZone::default()
                    .period_of(now)
                    .to_string(),
                granted: 10 * CNY,
                used: 0,
                monthly: 10 * CNY,
                version: 2,
                updated_at: now,
            },
        )
        .await;
    }
    for (user, version) in [(&alice, 1), (&bob, 1), (&bob, 2)] {
        seed_record(
            &stack,
            RecordSeed {
                user,
                version,
                kind: "recharge",
                amount: CNY,
                created_at: now,
            },
        )
        .await;
    }
    let order = |order_no, user| OrderSeed {
        order_no,
        user,
        amount: CNY,
        status: "PENDING",
        provider_txn_id: None,
        created_at: now,
        expires_at: now + Duration::minutes(30),
        paid_at: None,
    };
    seed_rm_order(&stack, &order("RO-ALICE", &alice)).await;
    seed_rm_order(&stack, &order("RO-BOB", &bob)).await;
    seed_command_order(&stack, &order("RO-BOB-UNPROJECTED", &bob)).await;

    let token = stack.token(&alice);
    let (_, account) = stack.get("/api/v1/billing/account", &token).await;
    assert_eq!(
        (&account["user_id"], &account["balance_micros"]),
        (&json!(alice), &json!(1_000))
    );
    let (_, records) = stack.get("/api/v1/billing/records", &token).await;
    assert_eq!(records["records"].as_array().unwrap().len(), 1);
    let (_, orders) = stack.get("/api/v1/billing/recharge/orders", &token).await;
    let numbers: Vec<&str> = orders["orders"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o["order_no"].as_str().unwrap())
        .collect();
    assert_eq!(numbers, ["RO-ALICE"]);
    for foreign in ["RO-BOB", "RO-BOB-UNPROJECTED", "RO-NOBODY"] {
        let answer = stack
            .get(
                &format!("/api/v1/billing/recharge/orders/{foreign}"),
                &token,
            )
            .await;
        assert_eq!(
            error_code(&answer),
            (StatusCode::NOT_FOUND, "ORDER_NOT_FOUND"),
            "{foreign}"
        );
    }
    let (status, _) = stack
        .get("/api/v1/billing/recharge/orders/RO-ALICE", &token)
        .await;
    assert_eq!(status, StatusCode::OK);
    // A user id in the query is no way around the token.
    let (_, account) = stack
        .get(&format!("/api/v1/billing/account?user_id={bob}"), &token)
        .await;
    assert_eq!(account["user_id"], json!(alice));
    stack.cleanup().await;
}
