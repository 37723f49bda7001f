//! The monthly free-quota reset: every account granted the period once. The accounts are split
//! into ranges of user ids (shards) walked side by side; each range goes in primary-key order, a
//! batch per transaction, with a cursor persisted per shard so a crash resumes where it stopped.
//! Charges run meanwhile: a batch locks its accounts in the same order as every command that
//! locks several, and an account a charge already moved into the period (its lazy grant) is
//! passed over, as is one granted by an earlier run of the period.

use chrono::{DateTime, Utc};
use shared::{
    account::stored_view,
    money::Micros,
    period::{Period, ResetNotDue},
    proto::v1::{FreeQuotaGranted, billing_event::Kind},
};

use super::{CommandError, Commands};
use crate::{
    events::{self, AccountOut},
    store::{self, Grant, LedgerEntry, Outgoing, RecordKind, Refs, StoreError, Writes},
};

/// What one batch did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ResetBatch {
    /// Accounts granted the period in this batch.
    pub granted: u64,
    /// The shard's range is walked to its end (or was already).
    pub finished: bool,
}

/// A range shorter than this many batches is not worth walking on its own.
const MIN_BATCHES_PER_SHARD: i64 = 4;

impl Commands {
    /// The largest batch: a ledger row binds 24 values, and a statement takes at most 65,535.
    pub const MAX_RESET_BATCH: u32 = 2_000;

    /// Whether a reset of `period` may be carried out now (see [`shared::period::BillingZone::reset_due`]).
    pub fn check_reset_period(&self, period: Period) -> Result<(), ResetNotDue> {
        self.rules()
            .zone
            .reset_due(period, self.now(), self.rules().reset_lead)
    }

    /// Registers the command and splits the accounts into at most `workers` ranges, once: a
    /// redelivered or concurrent run finds the same ranges. Returns the shards still to walk,
    /// empty when the command is finished.
    pub async fn plan_reset(
        &self,
        command_id: &str,
        period: Period,
        workers: u32,
        batch_size: u32,
    ) -> Result<Vec<i32>, CommandError> {
        let per_shard =
            MIN_BATCHES_PER_SHARD * i64::from(batch_size.clamp(1, Self::MAX_RESET_BATCH));
        self.store
            .retrying(|| self.plan_reset_once(command_id, period, workers, per_shard))
            .await
    }

    async fn plan_reset_once(
        &self,
        command_id: &str,
        period: Period,
        workers: u32,
        per_shard: i64,
    ) -> Result<Vec<i32>, CommandError> {
        let now = self.now();
        let mut tx = self.store.begin().await?;
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
        .map_err(StoreError::from)?;
        let finished: Option<DateTime<Utc>> = sqlx::query_scalar(
            "SELECT finished_at FROM command_progress WHERE command_id = ? FOR UPDATE",
        )
        .bind(command_id)
        .fetch_one(&mut *tx)
        .await
        .map_err(StoreError::from)?;
        if finished.is_some() {
            tx.rollback().await.map_err(StoreError::from)?;
            return Ok(Vec::new());
        }
        let planned: Vec<(i32, Option<DateTime<Utc>>)> = sqlx::query_as(
            "SELECT shard, finished_at FROM command_shards WHERE command_id = ? ORDER BY shard",
        )
        .bind(command_id)
        .fetch_all(&mut *tx)
        .await
        .map_err(StoreError::from)?;
        if !planned.is_empty() {
            tx.commit().await.map_err(StoreError::from)?;
            return Ok(planned
                .into_iter()
                .filter(|(_, done)| done.is_none())
                .map(|(shard, _)| shard)
                .collect());
        }

        // Split points at equal counts of the accounts there are now; accounts made later fall
        // in the last, open-ended range (and were granted by their first command anyway).
        let total: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM accounts")
            .fetch_one(&mut *tx)
            .await
            .map_err(StoreError::from)?;
        let shards = (total / per_shard).clamp(1, i64::from(workers.max(1)));
        let mut bounds: Vec<String> = Vec::new();
        for n in 1..shards {
            let bound: String = sqlx::query_scalar(
                "SELECT user_id FROM accounts ORDER BY user_id LIMIT 1 OFFSET ?",
            )
            .bind(total * n / shards)
            .fetch_one(&mut *tx)
            .await
            .map_err(StoreError::from)?;
            bounds.push(bound);
        }
        let mut start = String::new();
        for shard in 0..shards as i32 {
            let end = bounds.get(shard as usize).cloned();
            sqlx::query(
                "INSERT INTO command_shards (command_id, shard, cursor_user_id, end_user_id, accounts_granted) \
                 VALUES (?, ?, ?, ?, 0)",
            )
            .bind(command_id)
            .bind(shard)
            .bind(&start)
            .bind(&end)
            .execute(&mut *tx)
            .await
            .map_err(StoreError::from)?;
            start = end.unwrap_or_default();
        }
        tx.commit().await.map_err(StoreError::from)?;
        Ok((0..shards as i32).collect())
    }

    /// Grants `period` to the next `batch_size` accounts (at most [`Self::MAX_RESET_BATCH`]) of
    /// the shard's range, in one transaction with the cursor's move.
    pub async fn reset_batch(
        &self,
        command_id: &str,
        shard: i32,
        period: Period,
        batch_size: u32,
    ) -> Result<ResetBatch, CommandError> {
        self.store
            .retrying(|| self.reset_batch_once(command_id, shard, period, batch_size))
            .await
    }

    async fn reset_batch_once(
        &self,
        command_id: &str,
        shard: i32,
        period: Period,
        batch_size: u32,
    ) -> Result<ResetBatch, CommandError> {
        let now = self.now();
        let mut tx = self.store.begin().await?;
        // The shard's row first: two replicas on one shard take turns batch by batch.
        let (cursor, end, finished): (String, Option<String>, Option<DateTime<Utc>>) =
            sqlx::query_as(
                "SELECT cursor_user_id, end_user_id, finished_at FROM command_shards \
             WHERE command_id = ? AND shard = ? FOR UPDATE",
            )
            .bind(command_id)
            .bind(shard)
            .fetch_one(&mut *tx)
            .await
            .map_err(StoreError::from)?;
        if finished.is_some() {
            tx.rollback().await.map_err(StoreError::from)?;
            return Ok(ResetBatch {
                granted: 0,
                finished: true,
            });
        }

        let batch_size = batch_size.clamp(1, Self::MAX_RESET_BATCH);
        let accounts =
            store::lock_accounts_between(&mut tx, &cursor, end.as_deref(), batch_size).await?;
        let mut decided = Vec::new();
        for row in &accounts {
            // A row that cannot be read is passed over (and counted), not left to stop the
            // whole walk at this batch; its account is granted by its first change once repaired.
            let before = match row.snapshot() {
                Ok(before) => before,
                Err(error) => {
                    store::undecodable("accounts", &row.user_id, &error);
                    continue;
                }
            };
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
                Outgoing::in_current_trace(
                    events::event(Some(&account), &row.user_id, kind, now),
                    subject,
                )
            })
            .collect();
        let states: Vec<(&str, &str, _)> = decided
            .iter()
            .map(|(row, _, after, _)| (row.user_id.as_str(), row.currency.as_str(), *after))
            .collect();

        let mut writes = Writes::new();
        writes
            .grants(&grants, now)
            .entries(&entries)
            .events(&published, now)
            .save_accounts(&states, now);
        writes.run(&mut tx).await?;

        let finished = (accounts.len() as u64) < u64::from(batch_size);
        sqlx::query(
            "UPDATE command_shards SET cursor_user_id = COALESCE(?, cursor_user_id), \
             accounts_granted = accounts_granted + ?, finished_at = IF(?, ?, finished_at) \
             WHERE command_id = ? AND shard = ?",
        )
        .bind(accounts.last().map(|row| row.user_id.as_str()))
        .bind(decided.len() as i64)
        .bind(finished)
        .bind(now)
        .bind(command_id)
        .bind(shard)
        .execute(&mut *tx)
        .await
        .map_err(StoreError::from)?;
        tx.commit().await.map_err(StoreError::from)?;
        if !decided.is_empty() {
            self.store.outbox_written();
        }
        Ok(ResetBatch {
            granted: decided.len() as u64,
            finished,
        })
    }

    /// Marks the command finished once every shard is; returns the accounts granted by the
    /// command, or `None` while a shard is still walking.
    pub async fn finish_reset(&self, command_id: &str) -> Result<Option<i64>, CommandError> {
        let now = self.now();
        let mut tx = self.store.begin().await?;
        let (granted, open): (Option<i64>, i64) = sqlx::query_as(
            "SELECT CAST(SUM(accounts_granted) AS SIGNED), CAST(SUM(finished_at IS NULL) AS SIGNED) \
             FROM command_shards WHERE command_id = ?",
        )
        .bind(command_id)
        .fetch_one(&mut *tx)
        .await
        .map_err(StoreError::from)?;
        if open > 0 {
            tx.rollback().await.map_err(StoreError::from)?;
            return Ok(None);
        }
        let granted = granted.unwrap_or(0);
        sqlx::query(
            "UPDATE command_progress SET accounts_granted = ?, updated_at = ?, \
             finished_at = COALESCE(finished_at, ?) WHERE command_id = ?",
        )
        .bind(granted)
        .bind(now)
        .bind(now)
        .bind(command_id)
        .execute(&mut *tx)
        .await
        .map_err(StoreError::from)?;
        tx.commit().await.map_err(StoreError::from)?;
        Ok(Some(granted))
    }
}
