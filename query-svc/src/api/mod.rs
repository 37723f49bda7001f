//! The REST API for the frontend (API.md, "REST"), one router per resource:
//!
//! - [`account`]: `GET /api/v1/billing/account`.
//! - [`records`]: `GET /api/v1/billing/records`.
//! - [`export`]: `GET /api/v1/billing/records/export`, the same records as CSV, streamed.
//! - [`orders`]: `POST /api/v1/billing/recharge`, `GET /api/v1/billing/recharge/orders[/{no}]`.
//! - [`usage`]: `GET /api/v1/billing/usage`, charges per day or per API.
//! - [`alerts`]: `GET`, `PUT` and `PATCH /api/v1/billing/alerts`; the changes forwarded to
//!   command-svc.
//! - [`prices`]: `GET /api/v1/billing/prices`; [`limits`]: `GET` and `PUT
//!   /api/v1/billing/limits`, forwarded to command-svc.
//! - [`console`]: `GET /console`, the developer console that uses the routes above.
//! - [`auth`]: the JWT every `/api/v1/billing/*` handler requires; [`command`]: the gRPC client
//!   that forwards recharges to command-svc; [`cursor`]: page sizes and cursors; [`error`]: every
//!   failure as one JSON shape, the framework's own rejections, unknown routes and wrong methods
//!   included; [`fresh`]: `min_version` read-your-writes; [`openapi`]: `GET /openapi.json`, the
//!   OpenAPI document generated from the routes themselves.
//!
//! Instants are RFC 3339 in UTC with microseconds (`2026-11-30T16:00:00.000000Z`): exact to
//! what is stored, and of one width.

pub mod account;
pub mod alerts;
pub mod auth;
pub mod command;
pub mod console;
pub mod cursor;
pub mod error;
pub mod export;
pub mod fresh;
pub mod limits;
pub mod openapi;
pub mod orders;
pub mod prices;
pub mod records;
pub mod usage;

use axum::{Extension, Json, Router, extract::State};
use chrono::{DateTime, NaiveDate, NaiveTime, SecondsFormat, Utc};
use serde::Serialize;
use utoipa::{OpenApi, ToSchema};
use utoipa_axum::{router::OpenApiRouter, routes};

use crate::app::AppState;
use error::{ApiError, ErrorBody};

pub fn router(state: AppState) -> Router {
    let (routes, api) = openapi_router().split_for_parts();
    routes
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(Extension(openapi::Document::new(&openapi::exact(api))))
        .layer(axum::middleware::from_fn(shared::telemetry::observe_http))
        .with_state(state)
}

/// Every route with its documentation. Each is registered from its handler's `#[utoipa::path]`,
/// so a route cannot be served undocumented, nor documented unserved.
pub fn openapi_router() -> OpenApiRouter<AppState> {
    OpenApiRouter::with_openapi(openapi::ApiDoc::openapi())
        .routes(routes!(healthz))
        .routes(routes!(readyz))
        .routes(routes!(metrics))
        .routes(routes!(openapi::document))
        .merge(account::router())
        .merge(records::router())
        .merge(export::router())
        .merge(orders::router())
        .merge(usage::router())
        .merge(alerts::router())
        .merge(prices::router())
        .merge(limits::router())
        .merge(console::router())
}

/// The OpenAPI document `GET /openapi.json` serves.
pub fn openapi_document() -> serde_json::Value {
    openapi::exact(openapi_router().into_openapi())
}

/// What a probe answers.
#[derive(Debug, Serialize, ToSchema)]
#[schema(as = Probe)]
pub struct ProbeJson {
    /// `ok` (liveness) or `ready` (readiness).
    #[schema(example = "ok")]
    pub status: &'static str,
}

/// Liveness: the process is alive.
#[utoipa::path(
    get,
    path = shared::endpoints::LIVENESS,
    tag = openapi::OPERATIONS_TAG,
    responses((status = 200, description = "Alive: `{\"status\": \"ok\"}`", body = ProbeJson))
)]
async fn healthz() -> Json<ProbeJson> {
    Json(ProbeJson { status: "ok" })
}

/// Readiness: can serve reads.
///
/// MySQL answers and the read model's tables are at this build's schema. Redis, NATS and
/// command-svc being away only degrade the service.
#[utoipa::path(
    get,
    path = shared::endpoints::READINESS,
    tag = openapi::OPERATIONS_TAG,
    responses(
        (status = 200, description = "Ready: `{\"status\": \"ready\"}`", body = ProbeJson),
        (status = 503, description = "MySQL is unreachable or not migrated (`UNAVAILABLE`)",
            body = ErrorBody),
    )
)]
async fn readyz(State(state): State<AppState>) -> Result<Json<ProbeJson>, ApiError> {
    if state.store.is_ready().await {
        Ok(Json(ProbeJson { status: "ready" }))
    } else {
        Err(ApiError::Unavailable {
            reason: error::UNAVAILABLE.to_owned(),
            message: "MySQL is unreachable or not migrated".to_owned(),
        })
    }
}

/// Prometheus metrics, in the text exposition format.
#[utoipa::path(
    get,
    path = shared::endpoints::METRICS,
    tag = openapi::OPERATIONS_TAG,
    responses((status = 200, description = "The metrics", content_type = "text/plain",
        body = String))
)]
async fn metrics() -> String {
    shared::telemetry::metrics().render()
}

async fn not_found() -> ApiError {
    ApiError::NoRoute
}

async fn method_not_allowed() -> ApiError {
    ApiError::MethodNotAllowed
}

/// An instant as every answer writes it.
pub(crate) fn rfc3339(at: DateTime<Utc>) -> String {
    at.to_rfc3339_opts(SecondsFormat::Micros, true)
}

/// Whether `bytes` begin with a date written `YYYY-MM-DD`, the shape of the document's
/// `format: date` (chrono alone would also take `2026-1-5`).
pub(crate) fn date_shaped(bytes: &[u8]) -> bool {
    bytes.len() >= 10
        && bytes[..10].iter().enumerate().all(|(i, b)| {
            if i == 4 || i == 7 {
                *b == b'-'
            } else {
                b.is_ascii_digit()
            }
        })
}

/// An RFC 3339 `date-time` as a query writes it (`2026-11-01T00:00:00Z`, `…T08:00:00.5+08:00`;
/// `T` and `Z` in either case), exactly the texts the document's `format: date-time` admits:
/// no space for the `T`, seconds and an offset always there.
pub(crate) fn rfc3339_instant(text: &str) -> Option<DateTime<Utc>> {
    let bytes = text.as_bytes();
    let digits = |range: std::ops::Range<usize>| {
        bytes
            .get(range)
            .is_some_and(|part| part.iter().all(u8::is_ascii_digit))
    };
    let shaped = date_shaped(bytes)
        && matches!(bytes.get(10), Some(b'T' | b't'))
        && digits(11..13)
        && bytes.get(13) == Some(&b':')
        && digits(14..16)
        && bytes.get(16) == Some(&b':')
        && digits(17..19);
    if !shaped {
        return None;
    }
    DateTime::parse_from_rfc3339(text)
        .ok()
        .map(|at| at.with_timezone(&Utc))
}

/// The first and the last day MySQL's `DATE` and `DATETIME` hold (years 1000 to 9999).
const STORE_DAYS: (NaiveDate, NaiveDate) = (
    NaiveDate::from_ymd_opt(1000, 1, 1).expect("a date"),
    NaiveDate::from_ymd_opt(9999, 12, 31).expect("a date"),
);

/// `day` brought into the days MySQL holds. Nothing is stored outside them, so a bound beyond
/// selects the same rows.
pub(crate) fn within_store_days(day: NaiveDate) -> NaiveDate {
    day.clamp(STORE_DAYS.0, STORE_DAYS.1)
}

/// `at` brought into the instants MySQL holds, as [`within_store_days`].
pub(crate) fn within_store_range(at: DateTime<Utc>) -> DateTime<Utc> {
    let first = STORE_DAYS.0.and_time(NaiveTime::MIN).and_utc();
    let last = STORE_DAYS.1.and_time(NaiveTime::MIN).and_utc() + chrono::TimeDelta::days(1)
        - chrono::TimeDelta::microseconds(1);
    at.clamp(first, last)
}

/// The largest integer every JSON number of a body field is exact at (2^53).
const EXACT_JSON_INTEGER: f64 = 9_007_199_254_740_992.0;

/// A JSON integer as JSON Schema's `integer` counts them: written as digits, or with a zero
/// fraction or an exponent (`1000000.0`, `1e6`), which is the same number. A fraction that is
/// not zero, a string or `null` is refused; so is a number written as a float beyond 2^53,
/// where a float is no longer exact (every amount the API takes is far below).
pub(crate) fn json_integer<'de, D: serde::Deserializer<'de>>(
    deserializer: D,
) -> Result<i64, D::Error> {
    use serde::{Deserialize, de::Error};
    let number = serde_json::Number::deserialize(deserializer)?;
    if let Some(integer) = number.as_i64() {
        return Ok(integer);
    }
    number
        .as_f64()
        .filter(|float| float.fract() == 0.0 && float.abs() <= EXACT_JSON_INTEGER)
        .map(|float| float as i64)
        .ok_or_else(|| D::Error::custom(format!("invalid type: {number}, expected an integer")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn instants_are_rfc3339_date_times_and_kept_in_the_store_range() {
        for ok in [
            "2026-11-01T00:00:00Z",
            "2026-11-01t00:00:00z",
            "2026-11-01T08:00:00.123456789+08:00",
            "0000-01-01T00:00:00Z",
            "9999-12-31T23:59:59-23:59",
        ] {
            assert!(rfc3339_instant(ok).is_some(), "{ok}");
        }
        for bad in [
            "",
            "2026-11-01 00:00:00Z",
            "2026-11-01T00:00Z",
            "2026-11-01T00:00:00",
            "2026-13-01T00:00:00Z",
            "+2026-11-01T00:00:00Z",
            "2026-11-01",
        ] {
            assert!(rfc3339_instant(bad).is_none(), "{bad}");
        }
        let early = rfc3339_instant("0790-06-28T03:06:38Z").unwrap();
        assert_eq!(
            rfc3339(within_store_range(early)),
            "1000-01-01T00:00:00.000000Z"
        );
        let late = rfc3339_instant("9999-12-31T23:59:59.9999999-23:59").unwrap();
        assert_eq!(
            rfc3339(within_store_range(late)),
            "9999-12-31T23:59:59.999999Z"
        );
        let now = rfc3339_instant("2026-11-01T00:00:00Z").unwrap();
        assert_eq!(within_store_range(now), now);
    }

    #[derive(Debug, serde::Deserialize)]
    struct Amount {
        #[serde(deserialize_with = "json_integer")]
        micros: i64,
    }

    #[test]
    fn json_integers_may_be_written_with_a_zero_fraction() {
        let parse = |json: &str| serde_json::from_str::<Amount>(json).map(|a| a.micros);
        assert_eq!(parse(r#"{"micros": 74125498}"#).unwrap(), 74_125_498);
        assert_eq!(parse(r#"{"micros": 74125498.0}"#).unwrap(), 74_125_498);
        assert_eq!(parse(r#"{"micros": 1e6}"#).unwrap(), 1_000_000);
        assert_eq!(parse(r#"{"micros": -2.0}"#).unwrap(), -2);
        assert_eq!(
            parse(r#"{"micros": 9223372036854775807}"#).unwrap(),
            i64::MAX
        );
        for bad in [
            r#"{"micros": 1.5}"#,
            r#"{"micros": 1.0000001e6}"#,
            r#"{"micros": 1e300}"#,
            r#"{"micros": 9223372036854775808}"#,
            r#"{"micros": "1"}"#,
            r#"{"micros": null}"#,
        ] {
            assert!(parse(bad).is_err(), "{bad}");
        }
    }
}
