//! `GET /api/v1/billing/records/export`: every record the listing's filters select (`type`,
//! `from`, `to`; `limit` and `cursor` do not apply), as CSV, newest first like the listing.
//!
//! The answer is streamed: the records are read a page of [`PAGE`] at a time by the same keyset
//! query the listing uses, and each page is written out before the next is read, so memory stays
//! bounded whatever the number of records. A failure after the first bytes ends the stream
//! abruptly (the download is then visibly incomplete) rather than with a truncated file that
//! looks whole. Text fields that a spreadsheet would read as a formula are prefixed with `'`.

use axum::{
    body::{Body, Bytes},
    extract::State,
    http::header,
    response::{IntoResponse, Response},
};
use shared::ids::UserId;
use utoipa_axum::{router::OpenApiRouter, routes};

use super::{
    auth::AuthUser,
    error::{ApiError, ErrorBody},
    openapi,
    records::{PageRequest, RecordJson, RecordType, UsageLine, record_json},
};
use crate::{app::AppState, store::queries};

/// Records read from MySQL per round.
const PAGE: u32 = 1000;

/// The CSV header: the listing's fields, in its order.
const HEADER: &str = "record_id,type,amount_micros,free_micros,balance_micros,\
balance_after_micros,free_remaining_after_micros,api_id,request_id,order_no,period,version,\
created_at,usage,price_list,price_version\r\n";

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::default().routes(routes!(export))
}

/// The caller's records as CSV, newest first.
///
/// The listing's filters with the same rules (`limit` and `cursor` do not apply). A header row,
/// then one line per record with the listing's fields in its order, lines ending CRLF; absent
/// references are empty cells. The body is streamed: a failure after the first bytes aborts the
/// response rather than ending it like a complete file.
#[utoipa::path(
    get,
    path = "/api/v1/billing/records/export",
    tag = openapi::BILLING_TAG,
    security(("bearer_jwt" = [])),
    params(
        ("type" = inline(Option<RecordType>), Query, description = "Only records of this type."),
        ("from" = Option<String>, Query, format = DateTime,
            description = "Only records created at or after this instant (RFC 3339)."),
        ("to" = Option<String>, Query, format = DateTime,
            description = "Only records created before this instant (RFC 3339)."),
    ),
    responses(
        (status = 200, description = "The records as CSV (`text/csv; charset=utf-8`)",
            content_type = "text/csv", body = String,
            headers(("Content-Disposition" = String,
                description = "`attachment; filename=\"records.csv\"`"))),
        (status = 400, description = "A bad filter (`INVALID_ARGUMENT`)", body = ErrorBody),
        (status = 401, description = "No valid bearer token (`UNAUTHENTICATED`)", body = ErrorBody),
    )
)]
#[tracing::instrument(skip_all, fields(user_id = %user))]
async fn export(
    AuthUser(user): AuthUser,
    State(state): State<AppState>,
    request: PageRequest,
) -> Result<Response, ApiError> {
    let pages = futures::stream::unfold(Some(Cursor::Start), move |cursor| {
        let (state, user, filter) = (state.clone(), user.clone(), request.filter());
        async move {
            let before = match cursor? {
                Cursor::Start => {
                    return Some((
                        Ok(Bytes::from_static(HEADER.as_bytes())),
                        Some(Cursor::Below(None)),
                    ));
                }
                Cursor::Below(before) => before,
            };
            match read_page(&state, &user, filter, before).await {
                Ok((chunk, next)) => Some((Ok(chunk), next.map(|v| Cursor::Below(Some(v))))),
                Err(error) => {
                    tracing::warn!(%error, "export interrupted");
                    Some((Err(error), None))
                }
            }
        }
    });
    Ok((
        [
            (header::CONTENT_TYPE, "text/csv; charset=utf-8"),
            (
                header::CONTENT_DISPOSITION,
                "attachment; filename=\"records.csv\"",
            ),
        ],
        Body::from_stream(pages),
    )
        .into_response())
}

/// Where the export stands: the header is next, or the records below a version.
#[derive(Clone, Copy)]
enum Cursor {
    Start,
    Below(Option<i64>),
}

/// One page as CSV lines, and the version to continue below when the page was full.
async fn read_page(
    state: &AppState,
    user: &UserId,
    filter: queries::RecordFilter<'static>,
    before: Option<i64>,
) -> Result<(Bytes, Option<i64>), sqlx::Error> {
    let rows =
        queries::records_page(state.store.pool(), user.as_str(), filter, before, PAGE).await?;
    let next = (rows.len() == PAGE as usize)
        .then(|| rows.last().map(|row| row.version))
        .flatten();
    let mut chunk = String::with_capacity(rows.len() * 200);
    for row in rows {
        write_line(&mut chunk, &record_json(row));
    }
    Ok((Bytes::from(chunk), next))
}

fn write_line(out: &mut String, record: &RecordJson) {
    use std::fmt::Write;
    let text = |value: &Option<String>| value.as_deref().map(cell).unwrap_or_default();
    let _ = write!(
        out,
        "{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{}\r\n",
        record.record_id,
        record.kind,
        record.amount_micros,
        record.free_micros,
        record.balance_micros,
        record.balance_after_micros,
        record.free_remaining_after_micros,
        text(&record.api_id),
        text(&record.request_id),
        text(&record.order_no),
        record.period,
        record.version,
        record.created_at,
        usage_cell(record.usage.as_deref()),
        text(&record.price_list),
        record
            .price_version
            .map(|v| v.to_string())
            .unwrap_or_default(),
    );
}

/// A priced record's usage as one cell: `meter=quantity` pairs separated by `;`.
fn usage_cell(usage: Option<&[UsageLine]>) -> String {
    let pairs = usage.unwrap_or_default().iter();
    let pairs: Vec<String> = pairs
        .map(|u| format!("{}={}", u.meter, u.quantity))
        .collect();
    pairs.join(";")
}

/// A text field as a CSV cell (RFC 4180): quoted when it holds a comma, a quote or a line break,
/// with quotes doubled; prefixed with `'` when a spreadsheet would take it for a formula.
fn cell(value: &str) -> String {
    let guarded = if value.starts_with(['=', '+', '-', '@', '\t', '\r']) {
        format!("'{value}")
    } else {
        value.to_owned()
    };
    if guarded.contains([',', '"', '\r', '\n']) {
        format!("\"{}\"", guarded.replace('"', "\"\""))
    } else {
        guarded
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cells_are_quoted_and_formulas_defused() {
        assert_eq!(cell("api.search"), "api.search");
        assert_eq!(cell("a,b"), "\"a,b\"");
        assert_eq!(cell("say \"hi\""), "\"say \"\"hi\"\"\"");
        assert_eq!(cell("line\nbreak"), "\"line\nbreak\"");
        assert_eq!(cell("=SUM(A1:A9)"), "'=SUM(A1:A9)");
        assert_eq!(cell("@cmd,x"), "\"'@cmd,x\"");
    }
}
