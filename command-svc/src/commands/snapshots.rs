//! What `CheckQuota` answers from, nearest first: command-svc's in-process memory of accounts
//! (`memory`), its own account snapshots in Redis, then MySQL. Every commit that changes an
//! account writes it through to both (before its caller is answered, so a caller's next check on
//! this replica sees at least its own change, and on any replica once the snapshot is read); a
//! check that missed remembers and caches what it read. A failed Redis write removes the snapshot
//! rather than leave an old one; a snapshot that could be removed neither is gone with its TTL.

use std::time::Instant;

use chrono::{DateTime, Utc};
use prost::Message;
use shared::{account::AccountSnapshot, cache::CachedSnapshot, ids::UserId, proto::v1 as pb};

use super::{
    CommandError, Commands, account_tx::AccountTx, directory::AccountDirectory, memory::Known,
};
use crate::{
    events::{AccountOut, Terms},
    store::{self, StoreError},
};

impl Commands {
    /// Commits a command's transaction and writes the account's snapshot through.
    pub(super) async fn commit(&self, account: AccountTx<'_>) -> Result<AccountOut, StoreError> {
        let (out, stored) = account.commit_changed().await?;
        if let Some(stored) = stored {
            self.write_through(&[stored]).await;
        }
        Ok(out)
    }

    /// Remembers these accounts as stored, and writes their snapshots (version-guarded in Redis).
    pub(super) async fn write_through(&self, accounts: &[AccountOut]) {
        let messages: Vec<pb::AccountState> = accounts.iter().map(AccountOut::message).collect();
        if let Some(memory) = &self.memory {
            let learned_at = Instant::now();
            for (account, message) in accounts.iter().zip(&messages) {
                if let Some(known) = known_from(message) {
                    let user_id = UserId::stored(account.user_id.as_str());
                    memory.remember(&user_id, known, learned_at);
                }
            }
        }
        let Some(cache) = &self.snapshots else { return };
        let now = self.now().timestamp_millis();
        let snapshots: Vec<CachedSnapshot> = accounts
            .iter()
            .zip(&messages)
            .map(|(account, message)| CachedSnapshot {
                version: account.view.version,
                state: message.encode_to_vec(),
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

    /// Forgets the account's snapshots, in memory and in Redis, after a change its version does
    /// not show (its price list): the next check reads MySQL.
    pub(super) async fn forget_snapshot(&self, user_id: &UserId) {
        if let Some(memory) = &self.memory {
            memory.forget(user_id);
        }
        if let Some(cache) = &self.snapshots {
            cache.remove(user_id.as_str()).await;
        }
    }

    /// The account a check answers with: from memory, else the directory when the id surely has
    /// no account, else Redis, else MySQL (then cached in Redis); what was read is remembered, an
    /// id without an account included.
    pub(super) async fn account_to_check(
        &self,
        user_id: &UserId,
    ) -> Result<AccountOut, CommandError> {
        if let Some(memory) = &self.memory {
            if let Some(known) = memory.recall(user_id) {
                metrics::counter!("billing_checks_total", "from" => "memory").increment(1);
                return Ok(self.present_known(user_id, &known));
            }
            if memory.directory().surely_absent(user_id) {
                metrics::counter!("billing_checks_total", "from" => "directory").increment(1);
                return Ok(self.present_known(user_id, &Known::Absent));
            }
        }
        let learned_at = Instant::now();
        let known = match self.cached_account(user_id).await {
            Some(known) => {
                metrics::counter!("billing_checks_total", "from" => "redis").increment(1);
                known
            }
            None => {
                metrics::counter!("billing_checks_total", "from" => "mysql").increment(1);
                self.load_and_cache(user_id).await?
            }
        };
        if let Some(memory) = &self.memory {
            memory.remember(user_id, known.clone(), learned_at);
        }
        Ok(self.present_known(user_id, &known))
    }

    /// The account from its Redis snapshot; `None` on a miss, a Redis failure or a snapshot that
    /// does not decode (MySQL answers then).
    async fn cached_account(&self, user_id: &UserId) -> Option<Known> {
        let cached = self.snapshots.as_ref()?.get(user_id.as_str()).await?;
        let state = pb::AccountState::decode(cached.state.as_slice()).ok()?;
        known_from(&pb::AccountState {
            version: cached.version,
            ..state
        })
    }

    /// The account from MySQL after a cache miss; its snapshot is then cached (version-guarded,
    /// so it never replaces a newer one written through by a charge meanwhile). An id without an
    /// account is not cached in Redis: there is nothing to be newer than.
    async fn load_and_cache(&self, user_id: &UserId) -> Result<Known, CommandError> {
        let Some(row) = store::load_account(self.store.pool(), user_id).await? else {
            return Ok(Known::Absent);
        };
        let snapshot = row.snapshot()?;
        let stored = self.rules.present_stored(user_id, row.terms(), &snapshot);
        self.write_through(std::slice::from_ref(&stored)).await;
        Ok(Known::Account {
            currency: stored.currency,
            price_list: stored.price_list,
            snapshot,
        })
    }

    /// What is known of an account, presented now.
    fn present_known(&self, user_id: &UserId, known: &Known) -> AccountOut {
        let now = self.now();
        match known {
            Known::Account {
                currency,
                price_list,
                snapshot,
            } => {
                let terms = Terms {
                    currency,
                    price_list: Some(price_list),
                };
                self.rules
                    .present(user_id, Some(terms), Some(snapshot), now)
            }
            Known::Absent => self.rules.present(user_id, None, None, now),
        }
    }
}

/// How far before its last scan the directory looks for created accounts: a row's `created_at`
/// is stamped before its commit (earlier by a batch's lock waits and retries, seconds at most)
/// and by the clock of the replica that created it.
const CREATION_MARGIN: chrono::TimeDelta = chrono::TimeDelta::seconds(60);

/// Ids read per page of the directory's full scan.
const SCAN_PAGE: u32 = 10_000;

impl Commands {
    /// Brings the directory of ids up to date and trusts it from this scan's start: a full scan
    /// the first time (`last` is `None`) or when the filter is overfull, then the accounts created
    /// since `last`; the accounts with spend limits read again when that is due. Returns when
    /// this scan started, for the next.
    pub async fn refresh_directory(
        &self,
        last: Option<DateTime<Utc>>,
    ) -> Result<DateTime<Utc>, StoreError> {
        let Some(directory) = self.memory.as_ref().map(|memory| memory.directory()) else {
            return Ok(self.now());
        };
        let (started, started_at) = (Instant::now(), self.now());
        let since = match last {
            Some(last) if !directory.is_overfull() => last,
            _ => {
                directory.replace(AccountDirectory::filled(&self.every_account_id().await?));
                started_at
            }
        };
        let pool = self.store.pool();
        for user_id in store::accounts_created_since(pool, since - CREATION_MARGIN).await? {
            directory.add(&user_id);
        }
        if let Some(limited) = self.memory.as_ref().map(|memory| memory.limited())
            && limited.reload_due()
        {
            limited.replace(store::limited_users(pool).await?.into_iter().collect());
        }
        directory.confirm(started);
        Ok(started_at)
    }

    async fn every_account_id(&self) -> Result<Vec<UserId>, StoreError> {
        let mut ids = Vec::new();
        loop {
            let page = store::account_ids_after(self.store.pool(), ids.last(), SCAN_PAGE).await?;
            let full = page.len() >= SCAN_PAGE as usize;
            ids.extend(page);
            if !full {
                return Ok(ids);
            }
        }
    }
}

/// The account a stored state describes (a Redis snapshot, an event's account); `None` when its
/// period does not parse.
pub fn known_from(state: &pb::AccountState) -> Option<Known> {
    Some(Known::Account {
        snapshot: AccountSnapshot::from_message(state)?,
        currency: state.currency.clone(),
        price_list: state.price_list.clone(),
    })
}
