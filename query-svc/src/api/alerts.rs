//! A developer's alert settings, `/api/v1/billing/alerts`: `GET` reads them, `PUT` replaces them
//! whole (both fields required; `webhook_url: null` removes the webhook), `PATCH` changes only the
//! fields it names. Writes are forwarded to command-svc (`SetAlertSettings`, reads to
//! `GetAlertSettings`, with the `orders` token), which owns them. Bodies are strict:
//! `low_balance_threshold_micros` a JSON integer in 0 ..= 10^15, `webhook_url` an http(s) URL of
//! at most 2048 characters (empty or `null`: none), `rotate_signing_secret` a boolean, and no
//! other field.

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
use utoipa::{IntoResponses, ToSchema};
use utoipa_axum::{router::OpenApiRouter, routes};

use super::{
    auth::AuthUser,
    error::{ApiError, ErrorBody},
    openapi,
};
use crate::app::AppState;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::default().routes(routes!(get_alerts, put_alerts, patch_alerts))
}

/// Alert settings, the whole of them (`PUT`): a JSON object with no other field.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(as = AlertSettingsRequest)]
struct AlertsBody {
    /// `balance_low` fires when the balance falls to or below this (a JSON integer).
    #[serde(deserialize_with = "super::json_integer")]
    #[schema(minimum = 0, maximum = 1_000_000_000_000_000_i64, example = 5_000_000)]
    low_balance_threshold_micros: i64,
    /// Where alerts are delivered, signed; empty or `null` for nowhere. Required: a `PUT`
    /// replaces the whole setting.
    #[schema(
        required = true,
        max_length = 2048,
        example = "https://hooks.example.com/billing"
    )]
    webhook_url: Option<String>,
    /// `true`: a new signing secret replaces the current one, and the answer shows it.
    #[serde(default)]
    rotate_signing_secret: bool,
}

/// Some of the alert settings (`PATCH`): a field left out keeps its value.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(as = AlertSettingsPatch)]
struct AlertsPatch {
    /// A JSON integer; left out, the threshold stays (`null` is not a threshold).
    #[serde(default, deserialize_with = "integer")]
    #[schema(value_type = i64, minimum = 0, maximum = 1_000_000_000_000_000_i64, example = 5_000_000)]
    low_balance_threshold_micros: Option<i64>,
    /// Empty or `null` removes the webhook; left out, it stays.
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<String>, max_length = 2048, example = "https://hooks.example.com/billing")]
    webhook_url: Option<Option<String>>,
    #[serde(default)]
    rotate_signing_secret: bool,
}

/// An integer that is there (`Some`); a field left out is `None` by its default, and `null` is
/// refused.
fn integer<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<Option<i64>, D::Error> {
    super::json_integer(deserializer).map(Some)
}

/// A field that is there, even as `null` (`Some(None)`), apart from one left out (`None`).
fn present<'de, D: serde::Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<Option<String>>, D::Error> {
    Option::<String>::deserialize(deserializer).map(Some)
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

/// The settings as they apply.
#[derive(Debug, Serialize, ToSchema)]
#[schema(as = AlertSettingsView)]
pub struct AlertsView {
    /// What `balance_low` compares the balance with: the caller's own threshold, else the
    /// service's default.
    pub low_balance_threshold_micros: i64,
    /// Whether the threshold is the caller's own.
    pub threshold_set: bool,
    /// `null` when alerts are not delivered anywhere.
    #[schema(required = true)]
    pub webhook_url: Option<String>,
    /// Whether deliveries have a signing secret (it is never shown here).
    pub signing_secret_set: bool,
}

/// Every violated field at once, as one `INVALID_ARGUMENT`.
fn refused(violations: Vec<FieldViolation>) -> ApiError {
    ApiError::invalid(
        violations
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join("; "),
    )
}

fn threshold(violations: &mut Violations, raw: i64) -> Option<i64> {
    violations
        .take(money::parse_balance(raw).map_err(|error| {
            FieldViolation::new("low_balance_threshold_micros", error.to_string())
        }))
        .map(|micros| micros.get())
}

fn webhook(violations: &mut Violations, raw: Option<&str>) -> Option<String> {
    violations
        .take(WebhookUrl::parse("webhook_url", raw.unwrap_or_default()))
        .map(|url| url.map(|url| url.as_str().to_owned()).unwrap_or_default())
}

fn object(body: &Value) -> Result<(), ApiError> {
    if body.is_object() {
        Ok(())
    } else {
        Err(ApiError::invalid("the body must be a JSON object"))
    }
}

fn alerts_request(user: &UserId, body: Value) -> Result<pb::SetAlertSettingsRequest, ApiError> {
    object(&body)?;
    if body.get("webhook_url").is_none() {
        return Err(ApiError::invalid(
            "webhook_url is required: a PUT replaces the whole setting (null removes the \
             webhook; PATCH changes only the fields it names)",
        ));
    }
    let body: AlertsBody = serde_json::from_value(body)
        .map_err(|error| ApiError::invalid(format!("invalid body: {error}")))?;
    let mut violations = Violations::new();
    let threshold = threshold(&mut violations, body.low_balance_threshold_micros);
    let webhook_url = webhook(&mut violations, body.webhook_url.as_deref());
    violations.finish().map_err(refused)?;
    Ok(pb::SetAlertSettingsRequest {
        user_id: user.to_string(),
        low_balance_threshold_micros: threshold.unwrap_or_default(),
        webhook_url: webhook_url.unwrap_or_default(),
        rotate_signing_secret: body.rotate_signing_secret,
        keep_webhook_url: false,
        keep_threshold: false,
    })
}

fn patch_request(user: &UserId, body: Value) -> Result<pb::SetAlertSettingsRequest, ApiError> {
    object(&body)?;
    let body: AlertsPatch = serde_json::from_value(body)
        .map_err(|error| ApiError::invalid(format!("invalid body: {error}")))?;
    let mut violations = Violations::new();
    let threshold = body
        .low_balance_threshold_micros
        .map(|raw| threshold(&mut violations, raw));
    let webhook_url = body
        .webhook_url
        .as_ref()
        .map(|raw| webhook(&mut violations, raw.as_deref()));
    violations.finish().map_err(refused)?;
    Ok(pb::SetAlertSettingsRequest {
        user_id: user.to_string(),
        low_balance_threshold_micros: threshold.flatten().unwrap_or_default(),
        keep_threshold: threshold.is_none(),
        keep_webhook_url: webhook_url.is_none(),
        webhook_url: webhook_url.flatten().unwrap_or_default(),
        rotate_signing_secret: body.rotate_signing_secret,
    })
}

/// The caller's alert settings.
///
/// The threshold `balance_low` compares with (the caller's own, else the service's default), the
/// webhook alerts go to, and whether deliveries have a signing secret (never shown here).
#[utoipa::path(
    get,
    path = "/api/v1/billing/alerts",
    tag = openapi::BILLING_TAG,
    security(("bearer_jwt" = [])),
    responses(
        (status = 200, description = "The settings as they apply", body = AlertsView),
        (status = 401, description = "No valid bearer token (`UNAUTHENTICATED`)", body = ErrorBody),
        (status = 500, description = "A fault of the service (`INTERNAL`)", body = ErrorBody),
        (status = 503, description = "command-svc cannot answer (`UNAVAILABLE`, \
            `STORE_UNAVAILABLE`)", body = ErrorBody),
    )
)]
#[tracing::instrument(skip_all, fields(user_id = %user))]
async fn get_alerts(
    AuthUser(user): AuthUser,
    State(state): State<AppState>,
) -> Result<Json<AlertsView>, ApiError> {
    let shown = state.command.get_alert_settings(&user).await?;
    Ok(Json(AlertsView {
        low_balance_threshold_micros: shown.low_balance_threshold_micros,
        threshold_set: shown.threshold_set,
        webhook_url: Some(shown.webhook_url).filter(|url| !url.is_empty()),
        signing_secret_set: shown.signing_secret_set,
    }))
}

/// Replaces the caller's alert settings, both fields.
///
/// `balance_low` is raised once each time the balance falls from above the threshold to at or
/// below it; `free_quota_exhausted` once when the month's free quota is used up. Both are
/// delivered to the webhook, signed with the caller's own secret (`X-Billing-Alert-Timestamp`,
/// `X-Billing-Alert-Signature`: `sha256=` and the hex HMAC-SHA256 of `alert.<timestamp>.<body>`),
/// and retried when it fails. The first webhook set gets a signing secret, shown in that answer
/// only; `rotate_signing_secret` replaces it. A `PUT` replaces the whole setting: `webhook_url`
/// is required (`null` removes the webhook); `PATCH` changes only the fields it names. Setting
/// the same values again changes nothing.
#[utoipa::path(
    put,
    path = "/api/v1/billing/alerts",
    tag = openapi::BILLING_TAG,
    security(("bearer_jwt" = [])),
    request_body(content = AlertsBody, content_type = "application/json"),
    responses((status = 200, description = "The settings as saved", body = AlertsJson), SaveFailure)
)]
#[tracing::instrument(skip_all, fields(user_id = %user))]
async fn put_alerts(
    AuthUser(user): AuthUser,
    State(state): State<AppState>,
    body: Result<Json<Value>, JsonRejection>,
) -> Result<Json<AlertsJson>, ApiError> {
    let Json(body) = body?;
    save(&state, alerts_request(&user, body)?).await
}

/// Changes some of the caller's alert settings.
///
/// Each field given replaces its value (`webhook_url: null` removes the webhook); a field left
/// out keeps it. As with `PUT`, the first webhook set gets a signing secret, shown in that answer
/// only, and `rotate_signing_secret` replaces it.
#[utoipa::path(
    patch,
    path = "/api/v1/billing/alerts",
    tag = openapi::BILLING_TAG,
    security(("bearer_jwt" = [])),
    request_body(content = AlertsPatch, content_type = "application/json"),
    responses((status = 200, description = "The settings as saved", body = AlertsJson), SaveFailure)
)]
#[tracing::instrument(skip_all, fields(user_id = %user))]
async fn patch_alerts(
    AuthUser(user): AuthUser,
    State(state): State<AppState>,
    body: Result<Json<Value>, JsonRejection>,
) -> Result<Json<AlertsJson>, ApiError> {
    let Json(body) = body?;
    save(&state, patch_request(&user, body)?).await
}

/// How a write of the settings fails, `PUT` and `PATCH` alike: the document's side of the
/// [`ApiError`]s they answer.
#[derive(IntoResponses)]
pub enum SaveFailure {
    /// A bad body, every violated field at once (`INVALID_ARGUMENT`)
    #[response(status = 400)]
    Invalid(ErrorBody),
    /// No valid bearer token (`UNAUTHENTICATED`)
    #[response(status = 401)]
    Unauthenticated(ErrorBody),
    /// A body over `listeners.max_body_bytes`, 8 KiB by default (`PAYLOAD_TOO_LARGE`)
    #[response(status = 413)]
    PayloadTooLarge(ErrorBody),
    /// The body is not `application/json` (`UNSUPPORTED_MEDIA_TYPE`)
    #[response(status = 415)]
    UnsupportedMediaType(ErrorBody),
    /// A fault of the service (`INTERNAL`)
    #[response(status = 500)]
    Internal(ErrorBody),
    /// command-svc cannot answer (`UNAVAILABLE`, `STORE_UNAVAILABLE`); send the request again
    #[response(status = 503)]
    Unavailable(ErrorBody),
}

/// Forwards the settings to command-svc, which owns them, and shows what it saved.
async fn save(
    state: &AppState,
    request: pb::SetAlertSettingsRequest,
) -> Result<Json<AlertsJson>, ApiError> {
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

    fn user() -> UserId {
        UserId::parse("user_id", "u1").unwrap()
    }

    #[test]
    fn a_put_is_strict_whole_and_every_field_checked() {
        let ok = alerts_request(
            &user(),
            json!({"low_balance_threshold_micros": 5, "webhook_url": "https://h.example/x"}),
        )
        .unwrap();
        assert_eq!(
            (ok.low_balance_threshold_micros, ok.webhook_url.as_str()),
            (5, "https://h.example/x")
        );
        assert!(!ok.keep_webhook_url && !ok.keep_threshold);
        let none = alerts_request(
            &user(),
            json!({"low_balance_threshold_micros": 0, "webhook_url": null}),
        )
        .unwrap();
        assert_eq!(none.webhook_url, "");
        for bad in [
            json!({"low_balance_threshold_micros": -1, "webhook_url": null}),
            json!({"low_balance_threshold_micros": "5", "webhook_url": null}),
            json!({"low_balance_threshold_micros": 5, "webhook_url": "ftp://x"}),
            json!({"low_balance_threshold_micros": 5, "webhook_url": null, "extra": 1}),
            json!({"low_balance_threshold_micros": 5}),
            json!({"webhook_url": null}),
            json!({}),
            json!([5]),
        ] {
            assert!(alerts_request(&user(), bad.clone()).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_patch_keeps_what_it_leaves_out() {
        let threshold_only =
            patch_request(&user(), json!({"low_balance_threshold_micros": 9})).unwrap();
        assert_eq!(threshold_only.low_balance_threshold_micros, 9);
        assert!(threshold_only.keep_webhook_url && !threshold_only.keep_threshold);
        let removed = patch_request(&user(), json!({"webhook_url": null})).unwrap();
        assert!(!removed.keep_webhook_url && removed.keep_threshold);
        assert_eq!(removed.webhook_url, "");
        let nothing = patch_request(&user(), json!({})).unwrap();
        assert!(nothing.keep_webhook_url && nothing.keep_threshold);
        for bad in [
            json!({"low_balance_threshold_micros": -1}),
            json!({"low_balance_threshold_micros": null}),
            json!({"webhook_url": "ftp://x"}),
            json!({"extra": 1}),
            json!("x"),
        ] {
            assert!(patch_request(&user(), bad.clone()).is_err(), "{bad}");
        }
    }
}
