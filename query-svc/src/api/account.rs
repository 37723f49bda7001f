//! `GET /api/v1/billing/account`: the caller's wallet.
//!
//! The snapshot comes from Redis and from `rm_accounts`, read together; the higher version wins,
//! because a Redis write the projection could not make leaves an older snapshot there until the
//! next event. When MySQL cannot answer, the Redis snapshot alone is served; when neither holds
//! the account, it is a fresh one (version 0, `updated_at: null`, since nothing was ever
//! written). Only when MySQL is down *and* Redis lacks the account is the answer a 503: a fresh
//! view then could hide a real balance.
//!
//! Whatever the source, the account is presented through [`shared::account::view_at`] at the
//! service clock's now, so an older period shows rolled forward (on the 1st, before any event).
//! `min_version=N` waits for the read model to reach version N ([`super::fresh`]).

use axum::{
    Json,
    extract::State,
    response::{IntoResponse, Response},
};
use chrono::{DateTime, Utc};
use prost::Message;
use serde::Serialize;
use shared::cache::CachedSnapshot;
use shared::{
    account::{AccountSnapshot, view_at},
    ids::UserId,
    proto::v1 as pb,
};
use utoipa::ToSchema;
use utoipa_axum::{router::OpenApiRouter, routes};

use super::{
    auth::AuthUser,
    error::{ApiError, ErrorBody},
    fresh::{self, MinVersion},
    openapi, rfc3339,
};
use crate::{
    app::AppState,
    store::{self, RmAccount},
};

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::default().routes(routes!(get_account))
}

/// The account as the contract shows it.
#[derive(Debug, Serialize, ToSchema)]
#[schema(as = Account)]
pub struct AccountJson {
    /// The token's subject.
    pub user_id: String,
    #[schema(example = "CNY")]
    pub currency: String,
    pub balance_micros: i64,
    /// Of the balance, what open reservations hold.
    pub balance_held_micros: i64,
    pub free_quota: FreeQuotaJson,
    /// `free_quota.remaining_micros + balance_micros - balance_held_micros`: what a call may
    /// spend now.
    pub available_micros: i64,
    /// What each new period grants this account.
    pub monthly_free_micros: i64,
    /// +1 on every change of the account; 0 for an account never written.
    pub version: i64,
    /// When the snapshot was last written; `null` for an account never written.
    #[schema(format = DateTime, required = true)]
    pub updated_at: Option<String>,
}

/// This period's free quota.
#[derive(Debug, Serialize, ToSchema)]
#[schema(as = FreeQuota)]
pub struct FreeQuotaJson {
    /// The month, `YYYY-MM`, in the billing time zone.
    #[schema(example = "2026-11")]
    pub period: String,
    pub granted_micros: i64,
    pub used_micros: i64,
    /// What open reservations hold of it.
    pub held_micros: i64,
    /// Neither used nor held.
    pub remaining_micros: i64,
    /// The start of the next period.
    #[schema(format = DateTime)]
    pub resets_at: String,
    /// The billing time zone (IANA name) the period and its reset are reckoned in.
    #[schema(example = "Asia/Shanghai")]
    pub time_zone: String,
}

/// A snapshot with what the view needs besides it.
#[derive(Debug, PartialEq, Eq)]
struct Found {
    snapshot: AccountSnapshot,
    currency: String,
    updated_at: Option<DateTime<Utc>>,
}

/// The caller's account.
///
/// The newer of the Redis snapshot and the read model's table, shown at the current period. A
/// user never seen gets a fresh account (version 0, this period's quota). With `min_version`,
/// an answer still older than that version carries `X-Billing-Stale: true`.
#[utoipa::path(
    get,
    path = "/api/v1/billing/account",
    tag = openapi::BILLING_TAG,
    security(("bearer_jwt" = [])),
    params(fresh::MinVersionParams),
    responses(
        (status = 200, description = "The account", body = AccountJson,
            headers(("X-Billing-Stale" = String, description = "`true` when the read model is \
                older than `min_version`"))),
        (status = 400, description = "A bad `min_version` (`INVALID_ARGUMENT`)", body = ErrorBody),
        (status = 401, description = "No valid bearer token (`UNAUTHENTICATED`)", body = ErrorBody),
        (status = 500, description = "A fault of the service (`INTERNAL`)", body = ErrorBody),
        (status = 503, description = "MySQL cannot answer and Redis lacks the account \
            (`UNAVAILABLE`)", body = ErrorBody),
    )
)]
#[tracing::instrument(skip_all, fields(user_id = %user))]
async fn get_account(
    AuthUser(user): AuthUser,
    State(state): State<AppState>,
    MinVersion(min_version): MinVersion,
) -> Result<Response, ApiError> {
    let (found, stale) =
        fresh::read_at_least(&state.waiters, user.as_str(), min_version, || async {
            let found = find(&state, &user).await?;
            let version = found.as_ref().map_or(0, |found| found.snapshot.version);
            Ok((found, version))
        })
        .await?;
    let now = state.clock.now();
    let rules = &state.accounts;
    let found = found.unwrap_or_else(|| Found {
        snapshot: AccountSnapshot::fresh(rules.zone.period_of(now), rules.default_monthly_free),
        currency: rules.currency.clone(),
        updated_at: None,
    });
    let view = view_at(&found.snapshot, now, rules.zone);
    let account = AccountJson {
        user_id: user.into_string(),
        currency: found.currency,
        balance_micros: view.balance.get(),
        balance_held_micros: view.balance_held.get(),
        free_quota: FreeQuotaJson {
            period: view.period.to_string(),
            granted_micros: view.free_granted.get(),
            used_micros: view.free_used.get(),
            held_micros: view.free_held.get(),
            remaining_micros: view.free_remaining.get(),
            resets_at: rfc3339(view.resets_at),
            time_zone: rules.zone.tz().name().to_owned(),
        },
        available_micros: view.available.get(),
        monthly_free_micros: view.monthly_free.get(),
        version: view.version,
        updated_at: found.updated_at.map(rfc3339),
    };
    Ok((fresh::stale_header(stale), Json(account)).into_response())
}

/// The version of `user`'s account the read model holds now (0: none), for `min_version`.
pub async fn read_model_version(state: &AppState, user: &UserId) -> Result<i64, ApiError> {
    Ok(find(state, user)
        .await?
        .map_or(0, |found| found.snapshot.version))
}

/// The newer of the Redis snapshot and `rm_accounts`; `None` when neither holds the account.
async fn find(state: &AppState, user: &UserId) -> Result<Option<Found>, ApiError> {
    let (cached, stored) = tokio::join!(
        state.cache.get(user.as_str()),
        store::load_account(state.store.pool(), user.as_str())
    );
    let cached = cached.and_then(|cached| from_cache(user, cached));
    let stored = stored
        .map_err(ApiError::from)
        .and_then(|row| row.map(from_row).transpose());
    let found = match (cached, stored) {
        (Some(cached), Ok(Some(stored))) => Some(newer(cached, stored)),
        (cached, Ok(stored)) => cached.or(stored),
        // MySQL cannot answer (or holds a row we cannot read): Redis alone is still the truth
        // as of its version.
        (Some(cached), Err(error)) => {
            tracing::warn!(?error, "rm_accounts unreadable; answering from Redis");
            Some(cached)
        }
        (None, Err(error)) => return Err(error),
    };
    Ok(found)
}

fn from_row(row: RmAccount) -> Result<Found, ApiError> {
    let snapshot = row.snapshot().ok_or_else(|| {
        ApiError::internal(format!(
            "rm_accounts holds a malformed period for {}",
            row.user_id
        ))
    })?;
    Ok(Found {
        snapshot,
        currency: row.currency,
        updated_at: Some(row.updated_at),
    })
}

/// The higher version; MySQL at a tie (both hold the same state then).
fn newer(cached: Found, stored: Found) -> Found {
    if cached.snapshot.version > stored.snapshot.version {
        cached
    } else {
        stored
    }
}

/// A Redis snapshot as an [`AccountSnapshot`]; `None` (logged) when it cannot be decoded, is
/// another user's, or disagrees with its own version, so a bad cache entry is never shown.
fn from_cache(user: &UserId, cached: CachedSnapshot) -> Option<Found> {
    let state = match pb::AccountState::decode(cached.state.as_slice()) {
        Ok(state) => state,
        Err(error) => {
            tracing::error!(%error, "undecodable account snapshot in Redis; ignored");
            return None;
        }
    };
    let consistent = state.user_id == user.as_str() && state.version == cached.version;
    let Some(snapshot) = AccountSnapshot::from_message(&state) else {
        tracing::error!(
            period = state.period,
            "account snapshot in Redis with a bad period"
        );
        return None;
    };
    if !consistent {
        tracing::error!(
            snapshot_user = state.user_id,
            snapshot_version = state.version,
            key_version = cached.version,
            "account snapshot in Redis does not match its key; ignored"
        );
        return None;
    }
    Some(Found {
        snapshot,
        currency: state.currency,
        updated_at: DateTime::from_timestamp_millis(cached.updated_at_ms),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user() -> UserId {
        UserId::parse("user_id", "dev-1").unwrap()
    }

    fn state(user_id: &str, version: i64, period: &str) -> pb::AccountState {
        pb::AccountState {
            user_id: user_id.into(),
            currency: "CNY".into(),
            balance_micros: 5,
            period: period.into(),
            free_granted_micros: 10,
            free_used_micros: 3,
            free_remaining_micros: 7,
            available_micros: 12,
            version,
            monthly_free_micros: 10,
            free_held_micros: 0,
            balance_held_micros: 0,
            ..Default::default()
        }
    }

    fn cached(state: pb::AccountState, version: i64) -> CachedSnapshot {
        CachedSnapshot {
            version,
            state: state.encode_to_vec(),
            updated_at_ms: 1_700_000_000_123,
        }
    }

    #[test]
    fn a_cached_state_becomes_a_snapshot() {
        let found = from_cache(&user(), cached(state("dev-1", 4, "2026-11"), 4)).unwrap();
        assert_eq!(found.snapshot.version, 4);
        assert_eq!(found.snapshot.free_used, shared::money::Micros::new(3));
        assert_eq!(found.snapshot.period.to_string(), "2026-11");
        assert_eq!(
            found.updated_at.unwrap().timestamp_millis(),
            1_700_000_000_123
        );
    }

    #[test]
    fn a_cached_state_that_does_not_fit_its_key_is_ignored() {
        assert!(from_cache(&user(), cached(state("dev-2", 4, "2026-11"), 4)).is_none());
        assert!(from_cache(&user(), cached(state("dev-1", 3, "2026-11"), 4)).is_none());
        assert!(from_cache(&user(), cached(state("dev-1", 4, "2026-13"), 4)).is_none());
        let garbage = CachedSnapshot {
            version: 1,
            state: vec![0xff, 0xff, 0xff],
            updated_at_ms: 0,
        };
        assert!(from_cache(&user(), garbage).is_none());
    }
}
