//! `GET /api/v1/billing/usage`: the caller's charges summed per day or per API.
//!
//! Query parameters: `from` (inclusive) and `to` (exclusive), dates `YYYY-MM-DD` in the billing
//! time zone, default the 30 days up to and including today (`from` after `to`: no day); `group_by`
//! `day` (default) or `api`. Buckets hold only days or APIs with charges: days in date order, APIs
//! by amount charged, largest first (then by name); an API's bucket also sums the units its priced
//! calls used, per meter. Read from `rm_daily_usage`, which counts each charge once however
//! often its event is delivered.

use axum::{
    Json,
    extract::{Query, State, rejection::QueryRejection},
};
use std::collections::BTreeMap;

use chrono::{Days, NaiveDate};
use serde::{Deserialize, Serialize};
use utoipa::{
    IntoParams, PartialSchema, ToSchema,
    openapi::{RefOr, schema::Schema},
};
use utoipa_axum::{router::OpenApiRouter, routes};

use super::{
    auth::AuthUser,
    error::{ApiError, ErrorBody},
    openapi,
};
use crate::{
    app::AppState,
    store::{
        projection::UsageDelta,
        queries::{self, UsageGrouping},
    },
};

/// The default window, in days ending today.
const DEFAULT_DAYS: u64 = 30;
pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::default().routes(routes!(usage))
}

/// The groupings, as the parameter and the answer write them.
const GROUPINGS: [UsageGrouping; 2] = [UsageGrouping::Day, UsageGrouping::Api];

impl PartialSchema for UsageGrouping {
    fn schema() -> RefOr<Schema> {
        openapi::string_enum(GROUPINGS.map(UsageGrouping::as_str))
    }
}

impl ToSchema for UsageGrouping {}

#[derive(Debug, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
struct UsageParams {
    /// The first day (inclusive), `YYYY-MM-DD` in the billing time zone; default 30 days
    /// before `to`.
    #[param(format = Date)]
    from: Option<String>,
    /// The day after the last (exclusive); default tomorrow.
    #[param(format = Date)]
    to: Option<String>,
    /// Sum per day (default) or per API.
    #[param(value_type = Option<UsageGrouping>, inline)]
    group_by: Option<String>,
}

/// The caller's charges in a window of days.
#[derive(Debug, Serialize, ToSchema)]
#[schema(as = Usage)]
pub struct UsageJson {
    /// The window's first day.
    #[schema(format = Date)]
    pub from: String,
    /// The day after the window's last.
    #[schema(format = Date)]
    pub to: String,
    #[schema(value_type = UsageGrouping)]
    pub group_by: &'static str,
    /// Only days or APIs with charges: days in date order, APIs by amount, largest first.
    pub buckets: Vec<BucketJson>,
}

/// One day (`2026-11-25`) or one API, with its charges.
#[derive(Debug, Serialize, ToSchema)]
#[schema(as = UsageBucket)]
pub struct BucketJson {
    pub key: String,
    pub calls: i64,
    pub amount_micros: i64,
    pub free_micros: i64,
    pub balance_micros: i64,
    /// By API only: the units the API's priced calls used, per meter (`{}` when none were
    /// priced).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub units: Option<BTreeMap<String, i64>>,
}

/// The caller's charges per day or per API.
///
/// Summed from the read model's daily usage, which counts each charge once.
#[utoipa::path(
    get,
    path = "/api/v1/billing/usage",
    tag = openapi::BILLING_TAG,
    security(("bearer_jwt" = [])),
    params(UsageParams),
    responses(
        (status = 200, description = "The buckets", body = UsageJson),
        (status = 400, description = "A bad date or grouping (`INVALID_ARGUMENT`)",
            body = ErrorBody),
        (status = 401, description = "No valid bearer token (`UNAUTHENTICATED`)", body = ErrorBody),
        (status = 500, description = "A fault of the service (`INTERNAL`)", body = ErrorBody),
        (status = 503, description = "MySQL cannot answer (`UNAVAILABLE`)", body = ErrorBody),
    )
)]
#[tracing::instrument(skip_all, fields(user_id = %user))]
async fn usage(
    AuthUser(user): AuthUser,
    State(state): State<AppState>,
    params: Result<Query<UsageParams>, QueryRejection>,
) -> Result<Json<UsageJson>, ApiError> {
    let Query(params) = params?;
    let today = state
        .clock
        .now()
        .with_timezone(&state.accounts.zone.tz())
        .date_naive();
    let (from, to, grouping) = parse(&params, today)?;
    let (first, end) = (super::within_store_days(from), super::within_store_days(to));
    let pool = state.store.pool();
    let mut units: BTreeMap<String, BTreeMap<String, i64>> = BTreeMap::new();
    if grouping == UsageGrouping::Api {
        for (api_id, day) in queries::units(pool, user.as_str(), first, end).await? {
            let day = UsageDelta::units_of(Some(&day))
                .ok_or_else(|| ApiError::internal("a day's units are not a JSON object"))?;
            let api = units.entry(api_id).or_default();
            for (meter, quantity) in day {
                *api.entry(meter).or_default() += quantity;
            }
        }
    }
    let buckets = queries::usage(pool, user.as_str(), first, end, grouping)
        .await?
        .into_iter()
        .map(|row| BucketJson {
            units: (grouping == UsageGrouping::Api)
                .then(|| units.remove(&row.key).unwrap_or_default()),
            key: row.key,
            calls: row.calls,
            amount_micros: row.amount_micros,
            free_micros: row.free_micros,
            balance_micros: row.balance_micros,
        })
        .collect();
    Ok(Json(UsageJson {
        from: from.to_string(),
        to: to.to_string(),
        group_by: grouping.as_str(),
        buckets,
    }))
}

fn parse(
    params: &UsageParams,
    today: NaiveDate,
) -> Result<(NaiveDate, NaiveDate, UsageGrouping), ApiError> {
    let present = |value: &Option<String>| value.clone().filter(|v| !v.is_empty());
    let date = |field: &str, text: String| {
        let shaped = text.len() == 10 && super::date_shaped(text.as_bytes());
        shaped
            .then(|| NaiveDate::parse_from_str(&text, "%Y-%m-%d").ok())
            .flatten()
            .ok_or_else(|| ApiError::invalid(format!("{field} must be a date such as 2026-11-01")))
    };
    let tomorrow = today.checked_add_days(Days::new(1)).unwrap_or(today);
    let to = present(&params.to)
        .map(|text| date("to", text))
        .transpose()?
        .unwrap_or(tomorrow);
    let from = present(&params.from)
        .map(|text| date("from", text))
        .transpose()?
        .unwrap_or_else(|| to.checked_sub_days(Days::new(DEFAULT_DAYS)).unwrap_or(to));
    let grouping = match present(&params.group_by).as_deref() {
        None | Some("day") => UsageGrouping::Day,
        Some("api") => UsageGrouping::Api,
        Some(_) => return Err(ApiError::invalid("group_by must be day or api")),
    };
    Ok((from, to, grouping))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(from: &str, to: &str, group_by: &str) -> UsageParams {
        let some = |text: &str| Some(text.to_owned());
        UsageParams {
            from: some(from),
            to: some(to),
            group_by: some(group_by),
        }
    }

    fn day(text: &str) -> NaiveDate {
        text.parse().unwrap()
    }

    #[test]
    fn the_default_window_is_the_thirty_days_up_to_today() {
        let (from, to, grouping) = parse(&UsageParams::default(), day("2026-11-25")).unwrap();
        assert_eq!((from, to), (day("2026-10-27"), day("2026-11-26")));
        assert_eq!(grouping, UsageGrouping::Day);
    }

    #[test]
    fn any_window_of_dates_is_taken() {
        let today = day("2026-11-25");
        for (from, to) in [
            ("2026-11-02", "2026-11-01"),
            ("2000-01-01", ""),
            ("0000-01-01", "9999-12-31"),
        ] {
            assert!(
                parse(&params(from, to, "day"), today).is_ok(),
                "{from} {to}"
            );
        }
        assert_eq!(
            crate::api::within_store_days(day("0790-06-28")),
            day("1000-01-01")
        );
    }

    #[test]
    fn bad_dates_and_groupings_are_refused() {
        let today = day("2026-11-25");
        for bad in [
            params("2026-1-05", "", "day"),
            params("2026-11-01 ", "", "day"),
            params("2026-11-01", "2026-11-02", "week"),
            params("2026-13-01", "", ""),
            params("2026-11-01T00:00:00Z", "", ""),
        ] {
            assert!(parse(&bad, today).is_err(), "{bad:?}");
        }
        let (_, _, grouping) = parse(&params("2026-11-01", "2026-11-02", "api"), today).unwrap();
        assert_eq!(grouping, UsageGrouping::Api);
    }
}
