//! The monthly free-quota reset: every account granted the period once. The accounts are split
//! into ranges of user ids (shards) walked side by side; each range goes in primary-key order, a
//! batch per transaction, with a cursor persisted per shard so a crash resumes where it stopped.
//! Charges run meanwhile: a batch locks its accounts in the same order as every command that
//! locks several, and an account a charge already moved into the period (its lazy grant) is
//! passed over, as is one granted by an earlier run of the period.

use chrono::{DateTime, Utc};
use shared::period::{Period, ResetNotDue};

use super::{
    CommandError, Commands,
    changes::{AccountChanges, Appends},
};
use crate::store::{self, StoreError, Writes};

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

        let shards = split_into_shards(&mut tx, command_id, workers, per_shard).await?;
        tx.commit().await.map_err(StoreError::from)?;
        Ok(shards)
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
        let (granted, writes) = self.grant_period(&accounts, period, now);
        writes.run(&mut tx).await?;

        let finished = (accounts.len() as u64) < u64::from(batch_size);
        sqlx::query(
            "UPDATE command_shards SET cursor_user_id = COALESCE(?, cursor_user_id), \
             accounts_granted = accounts_granted + ?, finished_at = IF(?, ?, finished_at) \
             WHERE command_id = ? AND shard = ?",
        )
        .bind(accounts.last().map(|row| row.user_id.as_str()))
        .bind(granted as i64)
        .bind(finished)
        .bind(now)
        .bind(command_id)
        .bind(shard)
        .execute(&mut *tx)
        .await
        .map_err(StoreError::from)?;
        tx.commit().await.map_err(StoreError::from)?;
        if granted > 0 {
            self.store.outbox_written();
        }
        Ok(ResetBatch { granted, finished })
    }

    /// Decides the grant of `period` for each of these locked accounts that lacks it, recorded
    /// as every grant is ([`AccountChanges::record_grant`]); returns how many were granted and
    /// the statements that write them. A row that cannot be read is passed over (and counted),
    /// not left to stop the whole walk at this batch; its account is granted by its first
    /// change once repaired.
    fn grant_period(
        &self,
        rows: &[store::AccountRow],
        period: Period,
        now: DateTime<Utc>,
    ) -> (u64, Writes) {
        let trace = shared::trace::current_traceparent();
        let mut appends = Appends::new(&self.rules, now);
        let mut granted: Vec<AccountChanges> = Vec::new();
        for row in rows {
            let mut account = match AccountChanges::stored(row, &self.rules) {
                Ok(account) => account,
                Err(error) => {
                    store::undecodable("accounts", row.user_id.as_str(), &error);
                    continue;
                }
            };
            account.open_period(period);
            if account.is_changed() {
                account.record_grant(&mut appends, trace.as_deref());
                granted.push(account);
            }
        }
        let mut writes = appends.writes();
        let rows: Vec<_> = granted.iter().map(AccountChanges::write).collect();
        writes.save_accounts(&rows, now);
        (granted.len() as u64, writes)
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

/// Splits the accounts into at most `workers` ranges of about `per_shard` or more, and records
/// them: split points at equal counts of the accounts there are now; accounts made later fall in
/// the last, open-ended range (and were granted by their first command anyway).
async fn split_into_shards(
    tx: &mut store::Tx,
    command_id: &str,
    workers: u32,
    per_shard: i64,
) -> Result<Vec<i32>, StoreError> {
    let total: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM accounts")
        .fetch_one(&mut **tx)
        .await?;
    let shards = (total / per_shard).clamp(1, i64::from(workers.max(1)));
    let mut bounds: Vec<String> = Vec::new();
    for n in 1..shards {
        let bound: String =
            sqlx::query_scalar("SELECT user_id FROM accounts ORDER BY user_id LIMIT 1 OFFSET ?")
                .bind(total * n / shards)
                .fetch_one(&mut **tx)
                .await?;
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
        .execute(&mut **tx)
        .await?;
        start = end.unwrap_or_default();
    }
    Ok((0..shards as i32).collect())
}
