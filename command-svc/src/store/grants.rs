//! `free_quota_grants`: one row per account and period. Its primary key is the last word on
//! "a period is granted once": a second grant of the same period fails as a duplicate key.

use chrono::{DateTime, Utc};
use shared::{ids::UserId, money::Micros, period::Period};

use super::Writes;

#[derive(Clone, Debug)]
pub struct Grant {
    pub user_id: UserId,
    pub period: Period,
    pub granted: Micros,
    pub record_id: String,
}

impl Writes {
    pub fn grants(&mut self, grants: &[Grant], now: DateTime<Utc>) -> &mut Self {
        self.script.insert(
            "INSERT INTO free_quota_grants (user_id, period, granted_micros, record_id, created_at) ",
            grants,
            "",
            |row, grant| {
                row.text(grant.user_id.as_str())
                    .text(&grant.period.to_string())
                    .int(grant.granted.get())
                    .text(&grant.record_id)
                    .instant(now);
            },
        );
        self
    }
}

/// Corrects the amount of a grant made in advance (a new plan for a period already granted).
pub async fn regrant(
    tx: &mut super::Tx,
    user_id: &UserId,
    period: Period,
    granted_micros: i64,
) -> Result<(), super::StoreError> {
    sqlx::query("UPDATE free_quota_grants SET granted_micros = ? WHERE user_id = ? AND period = ?")
        .bind(granted_micros)
        .bind(user_id)
        .bind(period.to_string())
        .execute(&mut **tx)
        .await?;
    Ok(())
}
