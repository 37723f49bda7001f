//! `GET /api/v1/billing/records`: the caller's ledger as the read model holds it, newest first.
//!
//! Query parameters: `limit` (1 ..= 100, default 20), `cursor` (from the previous page's
//! `next_cursor`), `type` (`deduct`, `recharge`, `free_grant`, `adjust`), `from` (inclusive) and
//! `to` (exclusive), RFC 3339 instants compared with `created_at` (`from` after `to` selects
//! nothing). An empty parameter counts as absent; parameters the API does not know are ignored.
//! Pages are keyed by the account version, which is unique per user, so walking the cursors
//! visits every record exactly once; a cursor is the version of the last record shown, and the
//! next page starts below it with whatever filters come with it. `min_version=N` first waits for
//! the read model to reach version N ([`super::fresh`]).

use axum::{
    Json,
    extract::{FromRequestParts, Query, State},
    http::request::Parts,
    response::{IntoResponse, Response},
};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use shared::{pricing::Usage, record::RecordKind};
use utoipa::{IntoParams, PartialSchema, ToSchema, openapi::RefOr, openapi::schema::Schema};
use utoipa_axum::{router::OpenApiRouter, routes};

use super::{
    account::read_model_version,
    auth::AuthUser,
    cursor,
    error::{ApiError, ErrorBody},
    fresh::{self, MinVersion},
    openapi, rfc3339,
};
use crate::{
    app::AppState,
    store::{
        RecordRow,
        queries::{self, RecordFilter},
    },
};

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::default().routes(routes!(list_records))
}

/// The schema of a record's `type`: the names of [`RecordKind::ALL`].
pub struct RecordType;

impl PartialSchema for RecordType {
    fn schema() -> RefOr<Schema> {
        openapi::string_enum(RecordKind::names())
    }
}

impl ToSchema for RecordType {}

/// The listing's filters and page (the export takes the same, and documents its filters
/// itself). The fields are kept as text and parsed by [`PageRequest::parse`], so a bad value
/// gets the contract's 400.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
struct RecordsParams {
    /// Records per page.
    #[param(value_type = Option<u32>, minimum = 1, maximum = 100, default = 20)]
    limit: Option<String>,
    /// The previous page's `next_cursor`: the page starts below that account version.
    cursor: Option<String>,
    /// Only records of this type.
    #[serde(rename = "type")]
    #[param(value_type = Option<RecordType>, inline)]
    kind: Option<String>,
    /// Only records created at or after this instant (RFC 3339).
    #[param(format = DateTime)]
    from: Option<String>,
    /// Only records created before this instant (RFC 3339).
    #[param(format = DateTime)]
    to: Option<String>,
}

/// One page of records, newest first.
#[derive(Debug, Serialize, ToSchema)]
pub struct RecordsPage {
    pub records: Vec<RecordJson>,
    /// The `cursor` of the next page; `null` on the last page.
    #[schema(required = true)]
    pub next_cursor: Option<String>,
}

/// One record as the contract shows it. `amount_micros` is a magnitude (the type says the
/// direction) except for `adjust`, where it is signed: + credit, − debit.
#[derive(Debug, Serialize, ToSchema)]
#[schema(as = Record)]
pub struct RecordJson {
    pub record_id: String,
    #[serde(rename = "type")]
    #[schema(value_type = RecordType)]
    pub kind: String,
    pub amount_micros: i64,
    /// The part taken from (deduct) or added to (free_grant) the free quota.
    pub free_micros: i64,
    /// The part taken from or added to the balance.
    pub balance_micros: i64,
    pub balance_after_micros: i64,
    pub free_remaining_after_micros: i64,
    /// The API a charge paid for; `null` for other types.
    #[schema(required = true)]
    pub api_id: Option<String>,
    /// The gateway's key of a charge; `null` for other types.
    #[schema(required = true)]
    pub request_id: Option<String>,
    /// The order a recharge paid; `null` for other types.
    #[schema(required = true)]
    pub order_no: Option<String>,
    /// The free quota's month, `YYYY-MM`.
    pub period: String,
    /// The account version the record produced.
    pub version: i64,
    #[schema(format = DateTime)]
    pub created_at: String,
    /// What a priced charge (or hold) used, meter by meter; `null` for one of an amount.
    #[schema(required = true)]
    pub usage: Option<Vec<UsageLine>>,
    /// The price list that priced it; `null` for a charge of an amount.
    #[schema(required = true)]
    pub price_list: Option<String>,
    /// The version of the list that priced it; `null` for a charge of an amount.
    #[schema(required = true)]
    pub price_version: Option<i64>,
}

/// What a call used of one meter.
#[derive(Debug, Serialize, ToSchema)]
pub struct UsageLine {
    pub meter: String,
    pub quantity: i64,
}

/// A page request, validated.
#[derive(Debug, PartialEq, Eq)]
pub(super) struct PageRequest {
    kind: Option<RecordKind>,
    from: Option<DateTime<Utc>>,
    to: Option<DateTime<Utc>>,
    before: Option<i64>,
    limit: u32,
}

impl PageRequest {
    fn parse(params: &RecordsParams) -> Result<PageRequest, ApiError> {
        let present = |value: &Option<String>| value.clone().filter(|v| !v.is_empty());
        let limit = cursor::parse_limit(params.limit.as_deref())?;
        let kind = present(&params.kind)
            .map(|text| {
                RecordKind::parse(&text).ok_or_else(|| {
                    let types = RecordKind::names().join(", ");
                    ApiError::invalid(format!("type must be one of {types}"))
                })
            })
            .transpose()?;
        let from = present(&params.from)
            .map(|text| instant("from", &text))
            .transpose()?;
        let to = present(&params.to)
            .map(|text| instant("to", &text))
            .transpose()?;
        let before = present(&params.cursor)
            .map(|token| cursor::records_position(&token))
            .transpose()?;
        Ok(PageRequest {
            kind,
            from,
            to,
            before,
            limit,
        })
    }

    /// What the request selects, for the store.
    pub(super) fn filter(&self) -> RecordFilter<'static> {
        RecordFilter {
            kind: self.kind.map(RecordKind::as_str),
            from: self.from,
            to: self.to,
        }
    }
}

/// The listing's filters and page from the query, refused with the contract's 400.
impl<S: Send + Sync> FromRequestParts<S> for PageRequest {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        let Query(params) = Query::<RecordsParams>::from_request_parts(parts, state).await?;
        PageRequest::parse(&params)
    }
}

fn instant(field: &str, text: &str) -> Result<DateTime<Utc>, ApiError> {
    super::rfc3339_instant(text)
        .map(super::within_store_range)
        .ok_or_else(|| {
            ApiError::invalid(format!(
                "{field} must be an RFC 3339 instant such as 2026-11-01T00:00:00Z (a + in an offset is written %2B)"
            ))
        })
}

/// The caller's records, newest first.
///
/// Keyset pages ordered by account version: walking `next_cursor` visits every record once. An
/// empty parameter counts as absent. With `min_version`, an answer whose read model is still
/// older than that version carries `X-Billing-Stale: true`.
#[utoipa::path(
    get,
    path = "/api/v1/billing/records",
    tag = openapi::BILLING_TAG,
    security(("bearer_jwt" = [])),
    params(RecordsParams, fresh::MinVersionParams),
    responses(
        (status = 200, description = "A page of records", body = RecordsPage,
            headers(("X-Billing-Stale" = String, description = "`true` when the read model is \
                older than `min_version`"))),
        (status = 400, description = "A bad parameter (`INVALID_ARGUMENT`)", body = ErrorBody),
        (status = 401, description = "No valid bearer token (`UNAUTHENTICATED`)", body = ErrorBody),
        (status = 500, description = "A fault of the service (`INTERNAL`)", body = ErrorBody),
        (status = 503, description = "MySQL cannot answer (`UNAVAILABLE`)", body = ErrorBody),
    )
)]
#[tracing::instrument(skip_all, fields(user_id = %user))]
async fn list_records(
    AuthUser(user): AuthUser,
    State(state): State<AppState>,
    request: PageRequest,
    MinVersion(min_version): MinVersion,
) -> Result<Response, ApiError> {
    let stale = match min_version {
        Some(_) => {
            let ((), stale) =
                fresh::read_at_least(&state.waiters, user.as_str(), min_version, || async {
                    Ok(((), read_model_version(&state, &user).await?))
                })
                .await?;
            stale
        }
        None => false,
    };
    let filter = request.filter();
    let mut rows = queries::records_page(
        state.store.pool(),
        user.as_str(),
        filter,
        request.before,
        request.limit + 1,
    )
    .await?;
    let more = rows.len() > request.limit as usize;
    rows.truncate(request.limit as usize);
    let next_cursor = match rows.last() {
        Some(last) if more => Some(cursor::records_cursor(last.version)),
        _ => None,
    };
    let page = RecordsPage {
        records: rows.into_iter().map(record_json).collect(),
        next_cursor,
    };
    Ok((fresh::stale_header(stale), Json(page)).into_response())
}

/// Empty references are shown as absent, like the ones never given.
pub(super) fn record_json(row: RecordRow) -> RecordJson {
    let amount = if RecordKind::Adjust.is(&row.kind) {
        row.amount_micros
    } else {
        row.amount_micros.saturating_abs()
    };
    let absent_if_empty = |value: Option<String>| value.filter(|v| !v.is_empty());
    RecordJson {
        record_id: row.record_id,
        kind: row.kind,
        amount_micros: amount,
        free_micros: row.free_micros,
        balance_micros: row.balance_micros,
        balance_after_micros: row.balance_after_micros,
        free_remaining_after_micros: row.free_remaining_after_micros,
        api_id: absent_if_empty(row.api_id),
        request_id: absent_if_empty(row.request_id),
        order_no: absent_if_empty(row.order_no),
        period: row.period,
        version: row.version,
        created_at: rfc3339(row.created_at),
        usage: row
            .usage_units
            .as_deref()
            .and_then(Usage::from_json)
            .map(|usage| {
                let lines = usage.lines().iter();
                lines
                    .map(|(meter, quantity)| UsageLine {
                        meter: meter.as_str().to_owned(),
                        quantity: *quantity,
                    })
                    .collect()
            }),
        price_list: row.price_list,
        price_version: row.price_version,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(pairs: &[(&str, &str)]) -> RecordsParams {
        let mut params = RecordsParams::default();
        for (key, value) in pairs {
            let value = Some((*value).to_owned());
            match *key {
                "limit" => params.limit = value,
                "cursor" => params.cursor = value,
                "type" => params.kind = value,
                "from" => params.from = value,
                "to" => params.to = value,
                _ => unreachable!(),
            }
        }
        params
    }

    #[test]
    fn defaults_and_filters_parse() {
        let request = PageRequest::parse(&params(&[])).unwrap();
        assert_eq!(
            (request.limit, request.kind, request.before),
            (20, None, None)
        );
        let request = PageRequest::parse(&params(&[
            ("type", "free_grant"),
            ("from", "2026-11-01T00:00:00+08:00"),
            ("to", "2026-12-01T00:00:00Z"),
            ("limit", "7"),
        ]))
        .unwrap();
        assert_eq!(request.kind, Some(RecordKind::FreeGrant));
        assert_eq!(
            request.from.unwrap().to_rfc3339(),
            "2026-10-31T16:00:00+00:00"
        );
        assert_eq!(request.limit, 7);
    }

    #[test]
    fn a_cursor_continues_below_its_version_with_any_filters() {
        let request = PageRequest::parse(&params(&[("type", "deduct"), ("cursor", "42")])).unwrap();
        assert_eq!(
            (request.before, request.kind),
            (Some(42), Some(RecordKind::Deduct))
        );
        // `from` after `to` is an empty window, not an error.
        let empty = PageRequest::parse(&params(&[
            ("from", "2026-11-02T00:00:00Z"),
            ("to", "2026-11-01T00:00:00Z"),
        ]));
        assert!(empty.is_ok());
    }

    #[test]
    fn bad_parameters_are_refused() {
        for bad in [
            params(&[("type", "bogus")]),
            params(&[("type", "DEDUCT")]),
            params(&[("from", "yesterday")]),
            params(&[("to", "2026-13-01T00:00:00Z")]),
            params(&[("from", "2026-11-01 00:00:00Z")]),
            params(&[("from", "2026-11-01T00:00Z")]),
            params(&[("limit", "0")]),
            params(&[("cursor", "not a cursor")]),
            params(&[("cursor", "042")]),
        ] {
            assert!(PageRequest::parse(&bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn only_adjustments_keep_a_sign() {
        let row = |kind: &str, amount| RecordRow {
            record_id: "r".into(),
            user_id: "u".into(),
            kind: kind.into(),
            amount_micros: amount,
            free_micros: 0,
            balance_micros: 0,
            balance_after_micros: 0,
            free_remaining_after_micros: 0,
            api_id: Some(String::new()),
            request_id: None,
            order_no: None,
            period: "2026-11".into(),
            version: 1,
            created_at: DateTime::from_timestamp(0, 0).unwrap(),
            usage_units: None,
            price_list: None,
            price_version: None,
        };
        assert_eq!(record_json(row("adjust", -5)).amount_micros, -5);
        assert_eq!(record_json(row("deduct", -5)).amount_micros, 5);
        assert_eq!(record_json(row("deduct", 5)).api_id, None);
    }
}
