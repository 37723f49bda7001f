//! `free_quota_grants`: one row per account and period. Its primary key is the last word on
//! "a period is granted once": a second grant of the same period fails as a duplicate key.

use chrono::{DateTime, Utc};

use super::{StoreError, Tx};

#[derive(Clone, Debug)]
pub struct Grant<'a> {
    pub user_id: &'a str,
    pub period: String,
    pub granted_micros: i64,
    pub record_id: &'a str,
}

pub async fn insert_grants(
    tx: &mut Tx,
    grants: &[Grant<'_>],
    now: DateTime<Utc>,
) -> Result<(), StoreError> {
    if grants.is_empty() {
        return Ok(());
    }
    for chunk in shared::db::pow2_chunks(grants) {
        let mut insert = sqlx::QueryBuilder::new(
            "INSERT INTO free_quota_grants (user_id, period, granted_micros, record_id, created_at) ",
        );
        insert.push_values(chunk, |mut row, grant| {
            row.push_bind(grant.user_id)
                .push_bind(&grant.period)
                .push_bind(grant.granted_micros)
                .push_bind(grant.record_id)
                .push_bind(now);
        });
        insert.build().execute(&mut **tx).await?;
    }
    Ok(())
}
