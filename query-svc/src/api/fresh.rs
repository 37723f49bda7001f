//! Read-your-writes: `min_version=N` on the account and records routes. A client that has just
//! made a change (and was told the account's new version) asks for a read model at least that
//! new; the request waits up to [`PATIENCE`] for the projection to reach it, then answers with
//! what there is, marked `X-Billing-Stale: true` when it is older.

use std::{future::Future, time::Duration};

use axum::http::{HeaderName, HeaderValue};

use super::error::ApiError;

/// How long a request waits for the read model to reach the version asked for.
pub const PATIENCE: Duration = Duration::from_secs(2);
/// How often it looks again meanwhile.
const POLL: Duration = Duration::from_millis(25);
/// Set on an answer whose read model is older than the `min_version` asked for.
pub const STALE: HeaderName = HeaderName::from_static("x-billing-stale");

/// The `min_version` parameter: absent or empty, or a version 0 ..= 2^63 − 1.
pub fn min_version(text: Option<&str>) -> Result<Option<i64>, ApiError> {
    match text.filter(|text| !text.is_empty()) {
        None => Ok(None),
        Some(text) => text
            .parse::<i64>()
            .ok()
            .filter(|version| *version >= 0)
            .map(Some)
            .ok_or_else(|| ApiError::invalid("min_version must be a non-negative integer")),
    }
}

/// Reads with `read` (which returns what it read and the account version it reflects) until the
/// version reaches `min`, for at most [`PATIENCE`]. Returns the last reading and whether it is
/// stale. Without `min`, reads once.
pub async fn read_at_least<T, F, Fut>(min: Option<i64>, mut read: F) -> Result<(T, bool), ApiError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<(T, i64), ApiError>>,
{
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let (value, version) = read().await?;
        let Some(min) = min else {
            return Ok((value, false));
        };
        if version >= min {
            return Ok((value, false));
        }
        if tokio::time::Instant::now() + POLL > deadline {
            return Ok((value, true));
        }
        tokio::time::sleep(POLL).await;
    }
}

/// The headers of an answer: `X-Billing-Stale: true` when it is stale.
pub fn stale_header(stale: bool) -> Option<[(HeaderName, HeaderValue); 1]> {
    stale.then(|| [(STALE, HeaderValue::from_static("true"))])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn min_version_is_a_non_negative_integer_or_absent() {
        assert_eq!(min_version(None).unwrap(), None);
        assert_eq!(min_version(Some("")).unwrap(), None);
        assert_eq!(min_version(Some("0")).unwrap(), Some(0));
        assert_eq!(min_version(Some("42")).unwrap(), Some(42));
        for bad in ["-1", "1.5", "x", "9223372036854775808", " 3"] {
            assert!(min_version(Some(bad)).is_err(), "{bad}");
        }
    }

    #[tokio::test]
    async fn a_reading_old_past_the_patience_is_stale() {
        let mut readings = 0;
        let (value, stale) = read_at_least(Some(5), || {
            readings += 1;
            let seen = readings;
            async move { Ok((seen, 4)) }
        })
        .await
        .unwrap();
        assert!(stale);
        assert!(value > 10, "it kept looking: {value} readings");
        let (_, stale) = read_at_least(Some(4), || async { Ok(((), 4)) })
            .await
            .unwrap();
        assert!(!stale);
    }
}
