//! Spend limits: each user's limits with the counter of their current window, kept in the
//! account's own row (`accounts.spend_counters`, a JSON array; `spend_limited` says whether there
//! are any), so a limited account's charge locks and writes nothing more than its account; and
//! the sets that replaced them (`spend_limit_sets`, for idempotency).

use std::borrow::Cow;

use chrono::{DateTime, NaiveDate, Utc};
use serde::{Deserialize, Serialize};
use shared::{
    ids::UserId,
    limits::{Counter, Scope, SpendLimit, Window},
    money::Micros,
};
use sqlx::MySqlExecutor;

use super::{StoreError, Tx};

/// One limit and its counter as `accounts.spend_counters` holds it.
#[derive(Serialize, Deserialize)]
struct StoredCounter<'a> {
    #[serde(borrow)]
    scope: Cow<'a, str>,
    #[serde(borrow)]
    window: Cow<'a, str>,
    limit_micros: i64,
    #[serde(borrow)]
    window_first_day: Cow<'a, str>,
    spent_micros: i64,
    reached_published: bool,
}

/// The `spend_counters` column of an account with these limits: `None` for none.
pub fn counters_column(counters: Option<&[Counter]>) -> Option<String> {
    let counters = counters.filter(|counters| !counters.is_empty())?;
    let stored: Vec<StoredCounter<'_>> = counters
        .iter()
        .map(|counter| StoredCounter {
            scope: Cow::Owned(counter.limit.scope.to_string()),
            window: Cow::Borrowed(counter.limit.window.as_str()),
            limit_micros: counter.limit.limit.get(),
            window_first_day: Cow::Owned(counter.first_day.to_string()),
            spent_micros: counter.spent.get(),
            reached_published: counter.reached_published,
        })
        .collect();
    Some(serde_json::to_string(&stored).unwrap_or_default())
}

/// The limits a `spend_counters` column holds. The service writes only what it can read back;
/// a column that does not parse is a corrupt row.
pub fn counters_of(column: &str) -> Result<Vec<Counter>, StoreError> {
    let corrupt = |why: String| StoreError::internal(sqlx::Error::Decode(why.into()));
    let stored: Vec<StoredCounter<'_>> =
        serde_json::from_str(column).map_err(|e| corrupt(format!("spend_counters: {e}")))?;
    stored
        .into_iter()
        .map(|stored| {
            let window = Window::parse("window", &stored.window)
                .map_err(|e| corrupt(format!("spend_counters: {}", e.description)))?;
            let first_day = NaiveDate::parse_from_str(&stored.window_first_day, "%Y-%m-%d")
                .map_err(|e| corrupt(format!("spend_counters: window_first_day: {e}")))?;
            Ok(Counter {
                limit: SpendLimit {
                    scope: Scope::stored(&stored.scope),
                    window,
                    limit: Micros::new(stored.limit_micros),
                },
                first_day,
                spent: Micros::new(stored.spent_micros),
                reached_published: stored.reached_published,
            })
        })
        .collect()
}

/// Every user with limits (by the `spend_limited` index).
pub async fn limited_users<'e>(
    executor: impl MySqlExecutor<'e>,
) -> Result<Vec<UserId>, StoreError> {
    Ok(
        sqlx::query_scalar("SELECT user_id FROM accounts WHERE spend_limited")
            .fetch_all(executor)
            .await?,
    )
}

/// The digest a set was recorded with under `set_id`, if one was.
pub async fn find_limit_set(
    tx: &mut Tx,
    user_id: &UserId,
    set_id: &str,
) -> Result<Option<String>, StoreError> {
    Ok(sqlx::query_scalar(
        "SELECT content_sha256 FROM spend_limit_sets WHERE user_id = ? AND set_id = ?",
    )
    .bind(user_id)
    .bind(set_id)
    .fetch_optional(&mut **tx)
    .await?)
}

pub async fn insert_limit_set(
    tx: &mut Tx,
    user_id: &UserId,
    set_id: &str,
    digest: &str,
    now: DateTime<Utc>,
) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO spend_limit_sets (user_id, set_id, content_sha256, created_at) \
         VALUES (?, ?, ?, ?)",
    )
    .bind(user_id)
    .bind(set_id)
    .bind(digest)
    .bind(now)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// One amount a user spent: a charge (less what was refunded of it) or a hold still held.
#[derive(Clone, Debug, sqlx::FromRow)]
pub struct SpentRow {
    pub api_id: Option<String>,
    pub key_id: Option<String>,
    pub amount_micros: i64,
    pub at: DateTime<Utc>,
}

/// What `user_id` spent since `since`, for a new limit's counter: the charges decided since
/// (less their refunds; a settle counts where its reservation was taken, so the settles of
/// reservations taken before are left out) and the holds taken since that still hold.
pub async fn spent_since(
    tx: &mut Tx,
    user_id: &UserId,
    since: DateTime<Utc>,
) -> Result<Vec<SpentRow>, StoreError> {
    let charges = sqlx::query_as(
        "SELECT l.api_id, l.key_id, \
                CAST(l.amount_micros - COALESCE((SELECT SUM(r.amount_micros) FROM refunds r \
                                                 WHERE r.charge_record_id = l.record_id), 0) \
                     AS SIGNED) AS amount_micros, \
                l.created_at AS at \
         FROM ledger l WHERE l.user_id = ? AND l.kind = 'deduct' AND l.created_at >= ? \
           AND NOT EXISTS (SELECT 1 FROM reservations v \
                           WHERE v.user_id = l.user_id AND v.settle_record_id = l.record_id \
                             AND v.created_at < ? AND v.settled_after_expiry = FALSE)",
    )
    .bind(user_id)
    .bind(since)
    .bind(since)
    .fetch_all(&mut **tx);
    let mut spent: Vec<SpentRow> = charges.await?;
    let holds: Vec<SpentRow> = sqlx::query_as(
        "SELECT api_id, key_id, amount_micros, created_at AS at \
         FROM reservations WHERE user_id = ? AND status = 'held' AND created_at >= ?",
    )
    .bind(user_id)
    .bind(since)
    .fetch_all(&mut **tx)
    .await?;
    spent.extend(holds);
    Ok(spent)
}

/// When the reservation a charge settled was taken, for a settle made before its expiry (such a
/// charge spends in the reservation's window); `None` for any other charge.
pub async fn settled_reservation_taken_at(
    tx: &mut Tx,
    user_id: &UserId,
    charge_record_id: &str,
) -> Result<Option<DateTime<Utc>>, StoreError> {
    Ok(sqlx::query_scalar(
        "SELECT created_at FROM reservations \
         WHERE user_id = ? AND settle_record_id = ? AND settled_after_expiry = FALSE",
    )
    .bind(user_id)
    .bind(charge_record_id)
    .fetch_optional(&mut **tx)
    .await?)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn counter(scope: Scope, window: Window, spent: i64, reached: bool) -> Counter {
        Counter {
            limit: SpendLimit {
                scope,
                window,
                limit: Micros::new(5_000_000),
            },
            first_day: NaiveDate::from_ymd_opt(2026, 12, 1).unwrap(),
            spent: Micros::new(spent),
            reached_published: reached,
        }
    }

    #[test]
    fn counters_read_back_as_written() {
        let counters = vec![
            counter(Scope::Account, Window::Month, 1_250, false),
            counter(
                Scope::Api("chat \"v2\" \\ 路由".into()),
                Window::Day,
                0,
                true,
            ),
            counter(Scope::Key("k.1:a-b_c".into()), Window::Day, 5_000_000, true),
        ];
        let column = counters_column(Some(&counters)).unwrap();
        assert_eq!(counters_of(&column).unwrap(), counters);
    }

    #[test]
    fn no_limits_is_no_column() {
        assert_eq!(counters_column(None), None);
        assert_eq!(counters_column(Some(&[])), None);
    }

    #[test]
    fn a_column_that_does_not_parse_is_an_error() {
        let day = r#""limit_micros":1,"window_first_day":"2026-12-01","spent_micros":0,"reached_published":false"#;
        for column in [
            "",
            "{}",
            "[{\"scope\":\"account\"}]",
            &format!(r#"[{{"scope":"account","window":"week",{day}}}]"#),
            r#"[{"scope":"account","window":"day","limit_micros":1,"window_first_day":"2026-13-01","spent_micros":0,"reached_published":false}]"#,
        ] {
            assert!(counters_of(column).is_err(), "{column}");
        }
        let good = format!(r#"[{{"scope":"account","window":"day",{day}}}]"#);
        assert_eq!(counters_of(&good).unwrap().len(), 1);
    }
}
