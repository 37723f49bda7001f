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

/// A handler of one console file at `$path`, documented with its description and media type,
/// which it answers with (in UTF-8) through [`asset`].
macro_rules! console_file {
    ($(#[doc = $doc:literal])* $handler:ident, $path:ident, $description:literal,
        $media_type:literal, $body:ident) => {
        $(#[doc = $doc])*
        #[utoipa::path(
            get,
            path = $path,
            tag = openapi::CONSOLE_TAG,
            responses((status = 200, description = $description, content_type = $media_type,
                body = String))
        )]
        async fn $handler() -> Response {
            asset(concat!($media_type, "; charset=utf-8"), $body)
        }
    };
}

console_file!(
    /// The console page. The developer's JWT comes in the fragment (`/console#token=…`, never sent
    /// to the server) or is asked for; the page keeps it for the browser tab only.
    page, PAGE, "The console's HTML page", "text/html", INDEX_HTML
);
console_file!(
    /// The console's stylesheet.
    stylesheet, STYLESHEET, "The console's CSS", "text/css", CONSOLE_CSS
);
console_file!(
    /// The console's script.
    script, SCRIPT, "The console's JavaScript", "text/javascript", CONSOLE_JS
);
