//! command-svc's own account snapshots in Redis: written through after every commit that changes
//! an account (before its caller is answered, so a caller's next check sees at least its own
//! change), read by `CheckQuota`, and written again by a `CheckQuota` that found none. A failed
//! write removes the snapshot rather than leave an old one; a snapshot that could be removed
//! neither is gone with its TTL.

use prost::Message;
use shared::{
    account::AccountSnapshot, cache::CachedSnapshot, ids::UserId, money::Micros, proto::v1 as pb,
};

use super::{Commands, account_tx::AccountTx};
use crate::{events::AccountOut, store::StoreError};

impl Commands {
    /// Commits a command's transaction and writes the account's snapshot through.
    pub(super) async fn commit(&self, account: AccountTx<'_>) -> Result<AccountOut, StoreError> {
        let (out, stored) = account.commit_changed().await?;
        if let Some(stored) = stored {
            self.write_through(&[stored]).await;
        }
        Ok(out)
    }

    /// Writes these accounts' snapshots (version-guarded in Redis).
    pub(super) async fn write_through(&self, accounts: &[AccountOut]) {
        let Some(cache) = &self.snapshots else { return };
        let now = self.now().timestamp_millis();
        let snapshots: Vec<CachedSnapshot> = accounts
            .iter()
            .map(|account| CachedSnapshot {
                version: account.view.version,
                state: account.message().encode_to_vec(),
                updated_at_ms: now,
            })
            .collect();
        let puts: Vec<(&str, &CachedSnapshot)> = accounts
            .iter()
            .map(|account| account.user_id.as_str())
            .zip(&snapshots)
            .collect();
        // One pipeline for the whole batch.
        let written = cache.put_many_if_newer(&puts).await;
        let unwritten = puts
            .iter()
            .zip(written)
            .filter(|(_, written)| !written)
            .map(|((user_id, snapshot), _)| async move {
                // Either a newer snapshot is there (fine) or the write failed: make sure no
                // older one stays behind.
                if cache
                    .get(user_id)
                    .await
                    .is_none_or(|held| held.version < snapshot.version)
                {
                    cache.remove(user_id).await;
                }
            });
        futures::future::join_all(unwritten).await;
    }

    /// The account from its Redis snapshot, presented now; `None` on a miss, a Redis failure or
    /// a snapshot that does not decode (MySQL answers then).
    pub(super) async fn cached_account(&self, user_id: &UserId) -> Option<AccountOut> {
        let cached = self.snapshots.as_ref()?.get(user_id.as_str()).await?;
        let state = pb::AccountState::decode(cached.state.as_slice()).ok()?;
        let snapshot = AccountSnapshot {
            balance: Micros::new(state.balance_micros),
            period: state.period.parse().ok()?,
            free_granted: Micros::new(state.free_granted_micros),
            free_used: Micros::new(state.free_used_micros),
            free_held: Micros::new(state.free_held_micros),
            balance_held: Micros::new(state.balance_held_micros),
            monthly_free: Micros::new(state.monthly_free_micros),
            version: cached.version,
        };
        Some(
            self.rules
                .present(user_id, Some(&state.currency), Some(&snapshot), self.now()),
        )
    }
}
