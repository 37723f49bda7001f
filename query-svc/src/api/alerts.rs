//! `PUT /api/v1/billing/alerts`: a developer's alert settings, forwarded to command-svc
//! (`SetAlertSettings`, with the `orders` token), which owns every write. The body is strict:
//! `low_balance_threshold_micros` a JSON integer in 0 ..= 10^15, `webhook_url` an http(s) URL of
//! at most 2048 characters, or empty or `null` for none, and no other field.

use axum::{
    Json,
    extract::{State, rejection::JsonRejection},
};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use shared::{
    ids::{FieldViolation, UserId, Violations, WebhookUrl},
    money,
    proto::v1 as pb,
};
use utoipa::ToSchema;
use utoipa_axum::{router::OpenApiRouter, routes};

use super::{
    auth::AuthUser,
    error::{ApiError, ErrorBody},
    openapi,
};
use crate::app::AppState;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::default().routes(routes!(put_alerts))
}

/// Alert settings: a JSON object with no other field.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(as = AlertSettingsRequest)]
struct AlertsBody {
    /// `balance_low` fires when the balance falls to or below this (a JSON integer).
    #[schema(minimum = 0, maximum = 1_000_000_000_000_000_i64, example = 5_000_000)]
    low_balance_threshold_micros: i64,
    /// Where alerts are delivered, signed; empty or `null` for nowhere.
    #[serde(default)]
    #[schema(max_length = 2048, example = "https://hooks.example.com/billing")]
    webhook_url: Option<String>,
    /// `true`: a new signing secret replaces the current one, and the answer shows it.
    #[serde(default)]
    rotate_signing_secret: bool,
}

/// The settings as saved.
#[derive(Debug, Serialize, ToSchema)]
#[schema(as = AlertSettings)]
pub struct AlertsJson {
    pub low_balance_threshold_micros: i64,
    /// `null` when alerts are not delivered anywhere.
    #[schema(required = true)]
    pub webhook_url: Option<String>,
    /// The secret deliveries are signed with (`X-Billing-Alert-Signature`), present only in the
    /// answer that made it (the first webhook set, or a rotation): it is never shown again.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(example = "whsec_3f1c…")]
    pub signing_secret: Option<String>,
}

fn alerts_request(user: &UserId, body: Value) -> Result<pb::SetAlertSettingsRequest, ApiError> {
    if !body.is_object() {
        return Err(ApiError::invalid("the body must be a JSON object"));
    }
    let body: AlertsBody = serde_json::from_value(body)
        .map_err(|error| ApiError::invalid(format!("invalid body: {error}")))?;
    let mut violations = Violations::new();
    let threshold = violations.take(
        money::parse_balance(body.low_balance_threshold_micros).map_err(|error| {
            FieldViolation::new("low_balance_threshold_micros", error.to_string())
        }),
    );
    let url = violations.take(WebhookUrl::parse(
        "webhook_url",
        body.webhook_url.as_deref().unwrap_or_default(),
    ));
    match (violations.finish(), threshold, url) {
        (Ok(()), Some(threshold), Some(url)) => Ok(pb::SetAlertSettingsRequest {
            user_id: user.to_string(),
            low_balance_threshold_micros: threshold.get(),
            webhook_url: url.map(|url| url.as_str().to_owned()).unwrap_or_default(),
            rotate_signing_secret: body.rotate_signing_secret,
        }),
        (Err(violations), ..) => Err(ApiError::invalid(
            violations
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join("; "),
        )),
        _ => Err(ApiError::internal("a refused field recorded no violation")),
    }
}

/// Sets the caller's alert settings.
///
/// `balance_low` is raised once each time the balance falls from above the threshold to at or
/// below it; `free_quota_exhausted` once when the month's free quota is used up. Both are
/// delivered to the webhook, signed with the caller's own secret (`X-Billing-Alert-Timestamp`,
/// `X-Billing-Alert-Signature`: `sha256=` and the hex HMAC-SHA256 of `alert.<timestamp>.<body>`),
/// and retried when it fails. The first webhook set gets a signing secret, shown in that answer
/// only; `rotate_signing_secret` replaces it. Setting the same values again changes nothing.
#[utoipa::path(
    put,
    path = "/api/v1/billing/alerts",
    tag = openapi::BILLING_TAG,
    security(("bearer_jwt" = [])),
    request_body(content = AlertsBody, content_type = "application/json"),
    responses(
        (status = 200, description = "The settings as saved", body = AlertsJson),
        (status = 400, description = "A bad body, every violated field at once \
            (`INVALID_ARGUMENT`)", body = ErrorBody),
        (status = 401, description = "No valid bearer token (`UNAUTHENTICATED`)", body = ErrorBody),
        (status = 413, description = "A body over `listeners.max_body_bytes`, 8 KiB by default \
            (`PAYLOAD_TOO_LARGE`)", body = ErrorBody),
        (status = 415, description = "The body is not `application/json` \
            (`UNSUPPORTED_MEDIA_TYPE`)", body = ErrorBody),
        (status = 500, description = "A fault of the service (`INTERNAL`)", body = ErrorBody),
        (status = 503, description = "command-svc cannot answer (`UNAVAILABLE`, \
            `STORE_UNAVAILABLE`); send the settings again", body = ErrorBody),
    )
)]
#[tracing::instrument(skip_all, fields(user_id = %user))]
async fn put_alerts(
    AuthUser(user): AuthUser,
    State(state): State<AppState>,
    body: Result<Json<Value>, JsonRejection>,
) -> Result<Json<AlertsJson>, ApiError> {
    let Json(body) = body?;
    let request = alerts_request(&user, body)?;
    let saved = state.command.set_alert_settings(request).await?;
    Ok(Json(AlertsJson {
        low_balance_threshold_micros: saved.low_balance_threshold_micros,
        webhook_url: Some(saved.webhook_url).filter(|url| !url.is_empty()),
        signing_secret: Some(saved.signing_secret).filter(|secret| !secret.is_empty()),
    }))
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn the_body_is_strict_and_every_field_checked() {
        let user = UserId::parse("user_id", "u1").unwrap();
        let ok = alerts_request(
            &user,
            json!({"low_balance_threshold_micros": 5, "webhook_url": "https://h.example/x"}),
        )
        .unwrap();
        assert_eq!(
            (ok.low_balance_threshold_micros, ok.webhook_url.as_str()),
            (5, "https://h.example/x")
        );
        let none = alerts_request(
            &user,
            json!({"low_balance_threshold_micros": 0, "webhook_url": null}),
        )
        .unwrap();
        assert_eq!(none.webhook_url, "");
        for bad in [
            json!({"low_balance_threshold_micros": -1}),
            json!({"low_balance_threshold_micros": "5"}),
            json!({"low_balance_threshold_micros": 5, "webhook_url": "ftp://x"}),
            json!({"low_balance_threshold_micros": 5, "extra": 1}),
            json!({}),
            json!([5]),
        ] {
            assert!(alerts_request(&user, bad.clone()).is_err(), "{bad}");
        }
    }
}
