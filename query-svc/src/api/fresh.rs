//! Read-your-writes: `min_version=N` on the account and records routes. A client that has just
//! made a change (and was told the account's new version) asks for a read model at least that
//! new; the request waits up to [`PATIENCE`] for the projection to reach it, then answers with
//! what there is, marked `X-Billing-Stale: true` when it is older.
//!
//! A waiting request does not poll: it is woken when a projected batch announces the account's
//! new version ([`VersionWaiters::advanced`], fed by every replica's projection over core NATS),
//! and looks again only then, or once every [`RECHECK`] in case an announcement was lost. The
//! number of waiting requests is bounded: past it, a request answers at once with what there is.

use std::{
    collections::HashMap,
    future::Future,
    sync::{Arc, Mutex},
    time::Duration,
};

use axum::{
    extract::{FromRequestParts, Query},
    http::{HeaderName, HeaderValue, request::Parts},
};
use serde::Deserialize;
use tokio::sync::{Semaphore, watch};
use utoipa::IntoParams;

use super::error::ApiError;

/// How long a request waits for the read model to reach the version asked for.
pub const PATIENCE: Duration = Duration::from_secs(2);
/// A waiting request looks again this often even without an announcement (one may be lost:
/// core NATS delivers at most once).
const RECHECK: Duration = Duration::from_millis(500);
/// Set on an answer whose read model is older than the `min_version` asked for.
pub const STALE: HeaderName = HeaderName::from_static("x-billing-stale");

/// The query parameter of a route that reads your writes.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct MinVersionParams {
    /// Wait up to 2 s for the read model to reach this account version (read-your-writes).
    #[param(value_type = Option<i64>, minimum = 0)]
    min_version: Option<String>,
}

/// The account version a request asks the read model to reach, if any: its `min_version`
/// ([`min_version`]), taken from the query beside the route's other parameters.
pub struct MinVersion(pub Option<i64>);

impl<S: Send + Sync> FromRequestParts<S> for MinVersion {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        let Query(params) = Query::<MinVersionParams>::from_request_parts(parts, state).await?;
        min_version(params.min_version.as_deref()).map(MinVersion)
    }
}

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

/// The requests waiting for accounts to reach a version, woken by the projection.
#[derive(Clone)]
pub struct VersionWaiters {
    /// Per account with someone waiting: the newest version announced since.
    accounts: Arc<Mutex<HashMap<String, watch::Sender<i64>>>>,
    /// Places for waiting requests; none left: answer at once.
    places: Arc<Semaphore>,
}

impl VersionWaiters {
    pub fn new(max_waiting: usize) -> VersionWaiters {
        VersionWaiters {
            accounts: Arc::default(),
            places: Arc::new(Semaphore::new(max_waiting)),
        }
    }

    /// The projection reached `version` of `user`'s account: its waiters look again.
    pub fn advanced(&self, user: &str, version: i64) {
        let accounts = self
            .accounts
            .lock()
            .expect("the waiters' lock is never poisoned");
        if let Some(newest) = accounts.get(user) {
            newest.send_if_modified(|seen| {
                let newer = version > *seen;
                *seen = (*seen).max(version);
                newer
            });
        }
    }

    /// Every `user version` line of an announcement (see `Projector`'s announcement).
    pub fn advanced_all(&self, announcement: &[u8]) {
        for line in String::from_utf8_lossy(announcement).lines() {
            if let Some((user, version)) = line.split_once(' ')
                && let Ok(version) = version.parse()
            {
                self.advanced(user, version);
            }
        }
    }

    /// How many accounts have a request waiting for them now.
    pub fn watched(&self) -> usize {
        self.accounts
            .lock()
            .expect("the waiters' lock is never poisoned")
            .len()
    }

    fn watch(&self, user: &str) -> Watching<'_> {
        let mut accounts = self
            .accounts
            .lock()
            .expect("the waiters' lock is never poisoned");
        let receiver = accounts
            .entry(user.to_owned())
            .or_insert_with(|| watch::channel(0).0)
            .subscribe();
        Watching {
            waiters: self,
            user: user.to_owned(),
            receiver: Some(receiver),
        }
    }
}

/// One request's interest in an account; the account is forgotten when nobody waits any more.
struct Watching<'a> {
    waiters: &'a VersionWaiters,
    user: String,
    receiver: Option<watch::Receiver<i64>>,
}

impl Drop for Watching<'_> {
    fn drop(&mut self) {
        drop(self.receiver.take());
        let mut accounts = self
            .waiters
            .accounts
            .lock()
            .expect("the waiters' lock is never poisoned");
        if accounts
            .get(&self.user)
            .is_some_and(|sender| sender.receiver_count() == 0)
        {
            accounts.remove(&self.user);
        }
    }
}

/// Reads with `read` (which returns what it read and the account version it reflects) until the
/// version reaches `min`, for at most [`PATIENCE`]: again after each announcement of a newer
/// version of `user`'s account, and every [`RECHECK`]. Returns the last reading and whether it
/// is stale. Without `min`, or with every waiting place taken, reads once.
pub async fn read_at_least<T, F, Fut>(
    waiters: &VersionWaiters,
    user: &str,
    min: Option<i64>,
    mut read: F,
) -> Result<(T, bool), ApiError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<(T, i64), ApiError>>,
{
    let Some(min) = min else {
        return Ok((read().await?.0, false));
    };
    let Ok(_place) = waiters.places.try_acquire() else {
        metrics::counter!("billing_min_version_waiters_full_total").increment(1);
        let (value, version) = read().await?;
        return Ok((value, version < min));
    };
    // Watched before the first read, so an announcement between the two is not missed.
    let mut watching = waiters.watch(user);
    let receiver = watching.receiver.as_mut().expect("set until dropped");
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let (value, version) = read().await?;
        if version >= min {
            return Ok((value, false));
        }
        let now = tokio::time::Instant::now();
        if now >= deadline {
            return Ok((value, true));
        }
        let wake = (now + RECHECK).min(deadline);
        tokio::select! {
            _ = receiver.wait_for(|announced| *announced >= min) => {}
            () = tokio::time::sleep_until(wake) => {}
        }
    }
}

/// The headers of an answer: `X-Billing-Stale: true` when it is stale.
pub fn stale_header(stale: bool) -> Option<[(HeaderName, HeaderValue); 1]> {
    stale.then(|| [(STALE, HeaderValue::from_static("true"))])
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicI64, AtomicUsize, Ordering};

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

    #[tokio::test(start_paused = true)]
    async fn a_reading_old_past_the_patience_is_stale_and_read_only_a_few_times() {
        let waiters = VersionWaiters::new(8);
        let readings = AtomicUsize::new(0);
        let (_, stale) = read_at_least(&waiters, "u", Some(5), || async {
            readings.fetch_add(1, Ordering::Relaxed);
            Ok(((), 4))
        })
        .await
        .unwrap();
        assert!(stale);
        // Once at first, then at each recheck: no polling every few milliseconds.
        let read = readings.load(Ordering::Relaxed);
        assert!((2..=6).contains(&read), "{read} readings");
        assert_eq!(waiters.watched(), 0, "nobody waits any more");
        let (_, stale) = read_at_least(&waiters, "u", Some(4), || async { Ok(((), 4)) })
            .await
            .unwrap();
        assert!(!stale);
    }

    #[tokio::test(start_paused = true)]
    async fn an_announcement_wakes_the_waiting_request_at_once() {
        let waiters = VersionWaiters::new(8);
        let version = Arc::new(AtomicI64::new(1));
        let started = tokio::time::Instant::now();
        let reader = {
            let (waiters, version) = (waiters.clone(), version.clone());
            tokio::spawn(async move {
                read_at_least(&waiters, "u", Some(3), || {
                    let version = version.load(Ordering::Relaxed);
                    async move { Ok((version, version)) }
                })
                .await
                .unwrap()
            })
        };
        tokio::time::sleep(Duration::from_millis(10)).await;
        assert_eq!(waiters.watched(), 1);
        version.store(3, Ordering::Relaxed);
        waiters.advanced_all(b"someone-else 9\nu 3\n");
        let (seen, stale) = reader.await.unwrap();
        assert_eq!((seen, stale), (3, false));
        assert!(started.elapsed() < RECHECK, "woken, not rechecked");
        assert_eq!(waiters.watched(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn with_every_place_taken_a_request_answers_at_once() {
        let waiters = VersionWaiters::new(1);
        let holder = waiters.places.clone().try_acquire_owned().unwrap();
        let started = tokio::time::Instant::now();
        let (_, stale) = read_at_least(&waiters, "u", Some(5), || async { Ok(((), 4)) })
            .await
            .unwrap();
        assert!(stale);
        assert_eq!(started.elapsed(), Duration::ZERO);
        drop(holder);
    }
}
