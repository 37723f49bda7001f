//! `free_quota_grants`: one row per account and period. Its primary key is the last word on
//! "a period is granted once": a second grant of the same period fails as a duplicate key.

use chrono::{DateTime, Utc};

use super::Writes;

#[derive(Clone, Debug)]
pub struct Grant<'a> {
    pub user_id: &'a str,
    pub period: String,
    pub granted_micros: i64,
    pub record_id: &'a str,
}

impl Writes {
    pub fn grants(&mut self, grants: &[Grant<'_>], now: DateTime<Utc>) -> &mut Self {
        self.script.insert(
            "INSERT INTO free_quota_grants (user_id, period, granted_micros, record_id, created_at) ",
            grants,
            "",
            |row, grant| {
                row.text(grant.user_id)
                    .text(&grant.period)
                    .int(grant.granted_micros)
                    .text(grant.record_id)
                    .instant(now);
            },
        );
        self
    }
}

/// Corrects the amount of a grant made in advance (a new plan for a period already granted).
pub async fn regrant(
    tx: &mut super::Tx,
    user_id: &str,
    period: &str,
    granted_micros: i64,
) -> Result<(), super::StoreError> {
    sqlx::query("UPDATE free_quota_grants SET granted_micros = ? WHERE user_id = ? AND period = ?")
        .bind(granted_micros)
        .bind(user_id)
        .bind(period)
        .execute(&mut **tx)
        .await?;
    Ok(())
}
