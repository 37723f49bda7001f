//! The monthly free-quota reset: every account granted the period once, in primary-key order,
//! a batch per transaction, with a cursor persisted per command so a crash resumes where it
//! stopped. Charges run meanwhile: each batch locks its accounts in the same order as every
//! command that locks several, and an account a charge already moved into the period (its lazy
//! grant) is simply passed over, as is one granted by an earlier run of the period.

use chrono::{DateTime, Utc};
use shared::{
    account::stored_view,
    money::Micros,
    period::Period,
    proto::v1::{FreeQuotaGranted, billing_event::Kind},
};

use super::{CommandError, Commands};
use crate::{
    events::{self, AccountOut},
    store::{self, Grant, LedgerEntry, RecordKind, Refs},
};

/// What one batch did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ResetBatch {
    /// Accounts granted the period in this batch.
    pub granted: u64,
    /// The walk has passed the last account (or had already finished).
    pub finished: bool,
}

/// Why a reset command is not carried out.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ResetRefused {
    #[error("period {0} is neither the current nor the next one")]
    OutOfRange(Period),
}

impl Commands {
    /// The periods a reset may grant now: the current one and the next one (a scheduler whose
    /// clock runs a little ahead of this replica's).
    pub fn check_reset_period(&self, period: Period) -> Result<(), ResetRefused> {
        let current = self.rules().zone.period_of(self.now());
        if period == current || period == current.next() {
            Ok(())
        } else {
            Err(ResetRefused::OutOfRange(period))
        }
    }

    /// Grants `period` to the next `batch_size` accounts after the command's cursor, in one
    /// transaction with the cursor's move.
    pub async fn reset_batch(
        &self,
        command_id: &str,
        period: Period,
        batch_size: u32,
    ) -> Result<ResetBatch, CommandError> {
        self.store
            .retrying(|| self.reset_batch_once(command_id, period, batch_size))
            .await
    }

    async fn reset_batch_once(
        &self,
        command_id: &str,
        period: Period,
        batch_size: u32,
    ) -> Result<ResetBatch, CommandError> {
        let now = self.now();
        let mut tx = self.store.begin().await?;
        // The progress row first: two replicas on one command take turns batch by batch.
        sqlx::query(
            "INSERT IGNORE INTO command_progress (command_id, kind, period, cursor_user_id, \
             accounts_granted, started_at, updated_at) VALUES (?, 'reset_free_quota', ?, NULL, 0, ?, ?)",
        )
        .bind(command_id)
        .bind(period.to_string())
        .bind(now)
        .bind(now)
        .execute(&mut *tx)
        .await
        .map_err(store::StoreError::from)?;
        let (cursor, finished): (Option<String>, Option<DateTime<Utc>>) = sqlx::query_as(
            "SELECT cursor_user_id, finished_at FROM command_progress WHERE command_id = ? FOR UPDATE",
        )
        .bind(command_id)
        .fetch_one(&mut *tx)
        .await
        .map_err(store::StoreError::from)?;
        if finished.is_some() {
            tx.rollback().await.map_err(store::StoreError::from)?;
            return Ok(ResetBatch {
                granted: 0,
                finished: true,
            });
        }

        let accounts =
            store::lock_accounts_after(&mut tx, cursor.as_deref().unwrap_or(""), batch_size)
                .await?;
        let mut decided = Vec::new();
        for row in &accounts {
            let before = row.snapshot()?;
            if let Some(after) = before.open_period(period, before.monthly_free) {
                decided.push((row, before, after, events::new_id()));
            }
        }

        let grants: Vec<Grant> = decided
            .iter()
            .map(|(row, _, after, record_id)| Grant {
                user_id: &row.user_id,
                period: period.to_string(),
                granted_micros: after.free_granted.get(),
                record_id,
            })
            .collect();
        let entries: Vec<LedgerEntry> = decided
            .iter()
            .map(|(row, before, after, record_id)| LedgerEntry {
                record_id,
                user_id: &row.user_id,
                kind: RecordKind::FreeGrant,
                amount: after.free_granted,
                free: after.free_granted,
                balance: Micros::ZERO,
                before: *before,
                after: *after,
                refs: Refs::default(),
                created_at: now,
            })
            .collect();
        let zone = self.rules().zone;
        let published: Vec<_> = decided
            .iter()
            .map(|(row, _, after, record_id)| {
                let kind = Kind::FreeQuotaGranted(FreeQuotaGranted {
                    record_id: record_id.clone(),
                    period: period.to_string(),
                    amount_micros: after.free_granted.get(),
                });
                let subject = self.rules().bus.event_subject(&kind);
                let account = AccountOut {
                    user_id: row.user_id.clone(),
                    currency: row.currency.clone(),
                    view: stored_view(after, zone),
                };
                (
                    events::event(Some(&account), &row.user_id, kind, now),
                    subject,
                )
            })
            .collect();
        let states: Vec<(&str, &str, _)> = decided
            .iter()
            .map(|(row, _, after, _)| (row.user_id.as_str(), row.currency.as_str(), *after))
            .collect();

        store::insert_grants(&mut tx, &grants, now).await?;
        store::insert_entries(&mut tx, &entries).await?;
        store::insert_events(&mut tx, &published, now).await?;
        store::save_accounts(&mut tx, &states, now).await?;

        let finished = (accounts.len() as u64) < u64::from(batch_size);
        sqlx::query(
            "UPDATE command_progress SET cursor_user_id = COALESCE(?, cursor_user_id), \
             accounts_granted = accounts_granted + ?, updated_at = ?, \
             finished_at = IF(?, ?, finished_at) WHERE command_id = ?",
        )
        .bind(accounts.last().map(|row| row.user_id.as_str()))
        .bind(decided.len() as i64)
        .bind(now)
        .bind(finished)
        .bind(now)
        .bind(command_id)
        .execute(&mut *tx)
        .await
        .map_err(store::StoreError::from)?;
        tx.commit().await.map_err(store::StoreError::from)?;
        if !decided.is_empty() {
            self.store.outbox_written();
        }
        Ok(ResetBatch {
            granted: decided.len() as u64,
            finished,
        })
    }
}
