//! The developer console: a page at `/console` that shows the caller's wallet, usage and records
//! and starts recharges, using only the REST API above with the developer's JWT. Its three
//! files are compiled into the binary, so nothing is fetched at build or run time, and they are
//! served with a content security policy that lets the page talk to this origin alone.

use axum::{
    http::header,
    response::{IntoResponse, Response},
};
use utoipa_axum::{router::OpenApiRouter, routes};

use super::openapi;
use crate::app::AppState;

pub const PAGE: &str = "/console";
pub const STYLESHEET: &str = "/console/console.css";
pub const SCRIPT: &str = "/console/console.js";

const INDEX_HTML: &str = include_str!("../../console/index.html");
const CONSOLE_CSS: &str = include_str!("../../console/console.css");
const CONSOLE_JS: &str = include_str!("../../console/console.js");

/// Scripts, styles and requests from this origin only; no inline code, no frames.
const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
    img-src 'self' data:; connect-src 'self'; base-uri 'none'; form-action 'none'; \
    frame-ancestors 'none'";

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::default()
        .routes(routes!(page))
        .routes(routes!(stylesheet))
        .routes(routes!(script))
}

/// One of the console's files, with the headers every one of them carries. They change only
/// with the binary, so a browser revalidates them rather than keeping an old script.
fn asset(content_type: &'static str, body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CONTENT_SECURITY_POLICY, CONTENT_SECURITY_POLICY),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
            (header::REFERRER_POLICY, "no-referrer"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        body,
    )
        .into_response()
}

/// The console page. The developer's JWT comes in the fragment (`/console#token=…`, never sent
/// to the server) or is asked for; the page keeps it for the browser tab only.
#[utoipa::path(
    get,
    path = PAGE,
    tag = openapi::CONSOLE_TAG,
    responses((status = 200, description = "The console's HTML page", content_type = "text/html",
        body = String))
)]
async fn page() -> Response {
    asset("text/html; charset=utf-8", INDEX_HTML)
}

/// The console's stylesheet.
#[utoipa::path(
    get,
    path = STYLESHEET,
    tag = openapi::CONSOLE_TAG,
    responses((status = 200, description = "The console's CSS", content_type = "text/css",
        body = String))
)]
async fn stylesheet() -> Response {
    asset("text/css; charset=utf-8", CONSOLE_CSS)
}

/// The console's script.
#[utoipa::path(
    get,
    path = SCRIPT,
    tag = openapi::CONSOLE_TAG,
    responses((status = 200, description = "The console's JavaScript",
        content_type = "text/javascript", body = String))
)]
async fn script() -> Response {
    asset("text/javascript; charset=utf-8", CONSOLE_JS)
}
