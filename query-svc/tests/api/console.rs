//! The developer console at `/console`: its files are served from the binary with a policy that
//! keeps the page to this origin.

use reqwest::header;

use crate::helpers::*;

#[tokio::test]
async fn the_console_is_served_from_the_binary_and_kept_to_this_origin() {
    let stack = spawn_stack().await;
    let http = reqwest::Client::new();
    for (path, content_type) in [
        ("/console", "text/html"),
        ("/console/console.css", "text/css"),
        ("/console/console.js", "text/javascript"),
    ] {
        let response = http.get(stack.url(path)).send().await.unwrap();
        assert_eq!(response.status(), 200, "{path}");
        let headers = response.headers().clone();
        let value = |name: header::HeaderName| {
            headers
                .get(&name)
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
                .to_owned()
        };
        assert!(
            value(header::CONTENT_TYPE).starts_with(content_type),
            "{path}: {headers:?}"
        );
        let policy = value(header::CONTENT_SECURITY_POLICY);
        for directive in [
            "default-src 'none'",
            "script-src 'self'",
            "connect-src 'self'",
            "frame-ancestors 'none'",
        ] {
            assert!(policy.contains(directive), "{path}: {policy}");
        }
        assert!(!policy.contains("unsafe"), "{path}: {policy}");
        assert_eq!(value(header::X_CONTENT_TYPE_OPTIONS), "nosniff", "{path}");
        let body = response
            .text()
            .await
            .unwrap()
            .replace("http://www.w3.org/2000/svg", "");
        // Nothing is fetched from elsewhere: no absolute URL in any of the files (but the SVG
        // namespace, which is a name).
        for scheme in ["http://", "https://", "//cdn", "fonts.googleapis"] {
            assert!(!body.contains(scheme), "{path} refers to {scheme}");
        }
    }
    let page = http
        .get(stack.url("/console"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        page.contains("/console/console.js") && page.contains("/console/console.css"),
        "{page}"
    );
    // The page needs no token (it asks for one); the API behind it does.
    let (status, _) = stack.get("/api/v1/billing/account", "").await;
    assert_eq!(status, 401);
    stack.cleanup().await;
}
