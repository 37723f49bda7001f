//! JWT bearer authentication of the frontend's users.
//!
//! A token is accepted when it is HS256, signed with `auth.jwt_secret` or one of
//! `auth.jwt_previous_secrets` (so secrets rotate without logging anybody out), carries a `sub`
//! that is a valid user id and an `exp` that has not passed. Everything else — no token, another
//! algorithm (`none`, HS512, RS256 …), a bad signature, a missing or expired `exp`, a missing or
//! malformed `sub` — is a 401.
//!
//! Expiry (and `nbf`, when present) is checked against the service's [`Clock`], with
//! [`LEEWAY_SECS`] of tolerance, rather than inside `jsonwebtoken` with the system clock: in
//! production the two are the same clock, and in tests a set clock then governs tokens too.
//!
//! The user is always the token's subject: handlers take an [`AuthUser`] and never read a user id
//! from a parameter, so a user only ever sees their own data. A handler without an `AuthUser` has
//! no user to query for, which is why every `/api/v1/billing/*` handler takes one first (before
//! the body is read, so an unauthenticated request gets a 401 whatever its body).

use std::sync::Arc;

use axum::{extract::FromRequestParts, http::request::Parts};
use chrono::{DateTime, Utc};
use jsonwebtoken::{Algorithm, DecodingKey, Validation, errors::ErrorKind};
use serde::Deserialize;
use shared::{config::AuthSettings, ids::UserId};

use super::error::ApiError;
use crate::app::AppState;

/// Tolerated clock difference between the token's issuer and this service.
pub const LEEWAY_SECS: i64 = 5;

/// The keys a token may be signed with, current first, and the rules it must pass.
#[derive(Clone)]
pub struct JwtKeys {
    keys: Arc<[DecodingKey]>,
    validation: Arc<Validation>,
}

/// The claims read from a verified token. `exp` and `sub` are required; an `aud` or `iss` is
/// ignored, since no audience or issuer is configured.
#[derive(Deserialize)]
struct Claims {
    sub: String,
    exp: i64,
    #[serde(default)]
    nbf: Option<i64>,
}

/// The user a request is made for: the verified token's subject.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AuthUser(pub UserId);

impl JwtKeys {
    /// The current secret and every previous one. Empty previous secrets (an empty list entry
    /// in the environment) are skipped: an empty HMAC key would accept tokens anybody can sign.
    pub fn from_settings(settings: &AuthSettings) -> Self {
        let keys: Vec<DecodingKey> = std::iter::once(&settings.jwt_secret)
            .chain(&settings.jwt_previous_secrets)
            .map(|secret| secret.expose())
            .filter(|secret| !secret.is_empty())
            .map(|secret| DecodingKey::from_secret(secret.as_bytes()))
            .collect();
        let mut validation = Validation::new(Algorithm::HS256);
        validation.set_required_spec_claims(&["exp", "sub"]);
        validation.leeway = LEEWAY_SECS as u64;
        // Expiry is checked below against the service's clock (see the module's doc).
        validation.validate_exp = false;
        validation.validate_aud = false;
        JwtKeys {
            keys: keys.into(),
            validation: Arc::new(validation),
        }
    }

    /// The subject of `token` when it is valid at `now`.
    pub fn verify(&self, token: &str, now: DateTime<Utc>) -> Result<UserId, ApiError> {
        let mut claims = None;
        for key in self.keys.iter() {
            match jsonwebtoken::decode::<Claims>(token, key, &self.validation) {
                Ok(data) => {
                    claims = Some(data.claims);
                    break;
                }
                // Another key may have signed it: try the next one.
                Err(error) if matches!(error.kind(), ErrorKind::InvalidSignature) => continue,
                Err(error) => return Err(refusal(error.kind())),
            }
        }
        let claims = claims.ok_or(ApiError::Unauthenticated(
            "the token's signature is invalid",
        ))?;
        let now = now.timestamp();
        if claims.exp < now.saturating_sub(LEEWAY_SECS) {
            return Err(ApiError::Unauthenticated("the token has expired"));
        }
        if claims
            .nbf
            .is_some_and(|nbf| nbf > now.saturating_add(LEEWAY_SECS))
        {
            return Err(ApiError::Unauthenticated("the token is not valid yet"));
        }
        UserId::parse("sub", &claims.sub)
            .map_err(|_| ApiError::Unauthenticated("the token's subject is not a valid user id"))
    }
}

/// Why `jsonwebtoken` refused a token, in words that reveal nothing about the keys.
fn refusal(kind: &ErrorKind) -> ApiError {
    ApiError::Unauthenticated(match kind {
        ErrorKind::InvalidAlgorithm | ErrorKind::InvalidAlgorithmName => {
            "only HS256 tokens are accepted"
        }
        ErrorKind::MissingRequiredClaim(_) => "the token needs a sub and an exp",
        ErrorKind::InvalidClaimFormat(_) | ErrorKind::Json(_) => {
            "the token's claims are malformed (sub must be a string, exp a number)"
        }
        _ => "the token is malformed",
    })
}

/// The bearer token of `Authorization: Bearer <token>` (the scheme in any case).
fn bearer(parts: &Parts) -> Result<&str, ApiError> {
    let value = parts
        .headers
        .get(axum::http::header::AUTHORIZATION)
        .ok_or(ApiError::Unauthenticated(
            "an Authorization: Bearer token is required",
        ))?
        .to_str()
        .map_err(|_| ApiError::Unauthenticated("the Authorization header is malformed"))?;
    let (scheme, token) = value
        .trim()
        .split_once(' ')
        .ok_or(ApiError::Unauthenticated(
            "an Authorization: Bearer token is required",
        ))?;
    let token = token.trim();
    if !scheme.eq_ignore_ascii_case("bearer") || token.is_empty() {
        return Err(ApiError::Unauthenticated(
            "an Authorization: Bearer token is required",
        ));
    }
    Ok(token)
}

impl FromRequestParts<AppState> for AuthUser {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let token = bearer(parts)?;
        state.jwt.verify(token, state.clock.now()).map(AuthUser)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
    use jsonwebtoken::{EncodingKey, Header};
    use serde_json::json;
    use shared::config::Secret;

    const NOW: i64 = 1_795_000_000;

    fn keys(current: &str, previous: &[&str]) -> JwtKeys {
        JwtKeys::from_settings(&AuthSettings {
            callers: vec![],
            jwt_secret: Secret::new(current),
            jwt_previous_secrets: previous.iter().map(|s| Secret::new(*s)).collect(),
        })
    }

    fn now() -> DateTime<Utc> {
        DateTime::from_timestamp(NOW, 0).unwrap()
    }

    fn sign(algorithm: Algorithm, secret: &str, claims: serde_json::Value) -> String {
        jsonwebtoken::encode(
            &Header::new(algorithm),
            &claims,
            &EncodingKey::from_secret(secret.as_bytes()),
        )
        .unwrap()
    }

    fn unauthenticated(result: Result<UserId, ApiError>) -> bool {
        matches!(result, Err(ApiError::Unauthenticated(_)))
    }

    #[test]
    fn a_current_or_previous_secret_verifies() {
        let keys = keys("new", &["old"]);
        let claims = json!({ "sub": "dev-1", "exp": NOW + 60 });
        for secret in ["new", "old"] {
            let token = sign(Algorithm::HS256, secret, claims.clone());
            assert_eq!(keys.verify(&token, now()).unwrap().as_str(), "dev-1");
        }
        let token = sign(Algorithm::HS256, "other", claims);
        assert!(unauthenticated(keys.verify(&token, now())));
    }

    #[test]
    fn expiry_allows_only_the_leeway() {
        let keys = keys("s", &[]);
        let at = |exp| sign(Algorithm::HS256, "s", json!({ "sub": "u", "exp": exp }));
        assert!(keys.verify(&at(NOW - LEEWAY_SECS), now()).is_ok());
        assert!(unauthenticated(
            keys.verify(&at(NOW - LEEWAY_SECS - 1), now())
        ));
    }

    #[test]
    fn missing_claims_other_algorithms_and_bad_subjects_are_refused() {
        let keys = keys("s", &[]);
        for claims in [
            json!({ "sub": "u" }),
            json!({ "exp": NOW + 60 }),
            json!({ "sub": "u", "exp": "later" }),
            json!({ "sub": "bad user/id", "exp": NOW + 60 }),
            json!({ "sub": 42, "exp": NOW + 60 }),
            json!({ "sub": "u", "exp": NOW + 60, "nbf": NOW + 600 }),
        ] {
            let token = sign(Algorithm::HS256, "s", claims.clone());
            assert!(unauthenticated(keys.verify(&token, now())), "{claims}");
        }
        let hs512 = sign(
            Algorithm::HS512,
            "s",
            json!({ "sub": "u", "exp": NOW + 60 }),
        );
        assert!(unauthenticated(keys.verify(&hs512, now())));
        let none = format!(
            "{}.{}.",
            URL_SAFE_NO_PAD.encode(r#"{"alg":"none","typ":"JWT"}"#),
            URL_SAFE_NO_PAD.encode(json!({ "sub": "u", "exp": NOW + 60 }).to_string())
        );
        assert!(unauthenticated(keys.verify(&none, now())));
        assert!(unauthenticated(keys.verify("not.a.token", now())));
    }

    #[test]
    fn an_empty_previous_secret_is_never_a_key() {
        let keys = keys("s", &[""]);
        let token = sign(Algorithm::HS256, "", json!({ "sub": "u", "exp": NOW + 60 }));
        assert!(unauthenticated(keys.verify(&token, now())));
    }
}
