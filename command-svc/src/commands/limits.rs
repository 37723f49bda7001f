//! Spend limits: setting a user's whole set, reading it, and the decisions every charge and
//! reservation of a limited account takes on its counters ([`shared::limits`]) inside its own
//! transaction, the counters read and written with the account's own row.

use chrono::{DateTime, Utc};
use shared::{
    ids::UserId,
    limits::{self, Counter, LimitReached, Spend, SpendLimit},
    money::Micros,
    period::BillingZone,
    proto::v1::{self as pb, billing_event::Kind},
};

use super::{
    CommandError, Commands,
    account_tx::AccountTx,
    changes::{AccountChanges, Appends},
};
use crate::{
    domain::SetSpendLimits,
    store::{self, StoreError, Tx},
};

/// A limit as a reader sees it now: its counter rolled to the current window, and that window.
#[derive(Clone, Debug)]
pub struct LimitStatus {
    pub counter: Counter,
    pub window_start: DateTime<Utc>,
    pub resets_at: DateTime<Utc>,
}

#[derive(Clone, Debug)]
pub struct LimitsSet {
    pub limits: Vec<LimitStatus>,
    pub replayed: bool,
}

impl Commands {
    /// Replaces the user's whole set of limits. Each new limit's counter starts from what its
    /// scope already spent in the current window (the ledger's charges and the holds still held);
    /// a limit kept (same scope and window) keeps its counter. Idempotent by `set_id`.
    pub async fn set_spend_limits(
        &self,
        command: &SetSpendLimits,
    ) -> Result<LimitsSet, CommandError> {
        let digest = limits::set_digest(&command.limits);
        let replayed = self
            .store
            .retrying(|| async {
                let now = self.now();
                let mut account =
                    AccountTx::lock(&self.store, &self.rules, &command.user_id, now).await?;
                if let Some(set_id) = &command.set_id {
                    match store::find_limit_set(account.tx(), &command.user_id, set_id.as_str())
                        .await?
                    {
                        Some(recorded) if recorded == digest => {
                            account.rollback().await?;
                            return Ok(true);
                        }
                        Some(_) => return Err(CommandError::KeyReused { key: "set_id" }),
                        None => {
                            store::insert_limit_set(
                                account.tx(),
                                &command.user_id,
                                set_id.as_str(),
                                &digest,
                                now,
                            )
                            .await?;
                        }
                    }
                }
                if !account.exists() {
                    account.open_period();
                }
                // The counters of a limited account were read with its locked row.
                let kept = account.account().limits.clone().unwrap_or_default();
                let counters = self
                    .new_counters(account.tx(), &command.user_id, &command.limits, &kept, now)
                    .await?;
                account.publish(Kind::SpendLimitsSet(pb::SpendLimitsSet {
                    limits: counters.iter().map(|c| c.limit.message()).collect(),
                    actor: command.actor.to_string(),
                }));
                account.account().replace_limits(counters);
                self.commit(account).await?;
                Ok::<_, CommandError>(false)
            })
            .await?;
        if let Some(memory) = &self.memory {
            memory
                .limited()
                .set(&command.user_id, !command.limits.is_empty());
        }
        let limits = self.spend_limits(&command.user_id).await?;
        Ok(LimitsSet { limits, replayed })
    }

    /// The user's limits, each counter in its current window.
    pub async fn spend_limits(&self, user_id: &UserId) -> Result<Vec<LimitStatus>, CommandError> {
        let counters = self.committed_limits(user_id).await?;
        let now = self.now();
        Ok(limits::current(&counters, self.rules.zone, now)
            .into_iter()
            .map(|counter| self.status(counter, now))
            .collect())
    }

    /// Whether a charge of `spend` would fit under the user's limits now (for CheckQuota: read,
    /// not locked; an account without limits reads nothing).
    pub(super) async fn fits_limits(
        &self,
        user_id: &UserId,
        spend: Spend<'_>,
    ) -> Result<Result<(), LimitReached>, CommandError> {
        if self
            .memory
            .as_ref()
            .is_some_and(|memory| !memory.limited().may_be_limited(user_id))
        {
            return Ok(Ok(()));
        }
        let mut counters = self.committed_limits(user_id).await?;
        Ok(limits::check(&mut counters, self.rules.zone, spend))
    }

    /// The user's limits with their counters as committed, read without a lock.
    async fn committed_limits(&self, user_id: &UserId) -> Result<Vec<Counter>, CommandError> {
        let row = store::load_account(self.store.pool(), user_id).await?;
        let counters = row.map(|row| row.counters()).transpose()?.flatten();
        Ok(counters.unwrap_or_default())
    }

    fn status(&self, counter: Counter, now: DateTime<Utc>) -> LimitStatus {
        let span = self.rules.zone.window_of(counter.limit.window, now);
        LimitStatus {
            counter,
            window_start: span.start,
            resets_at: span.end,
        }
    }

    /// The counters of a new set: a limit kept keeps its counter (rolled to now), a new one
    /// starts from what its scope spent in the current window.
    async fn new_counters(
        &self,
        tx: &mut Tx,
        user_id: &UserId,
        limits: &[SpendLimit],
        kept: &[Counter],
        now: DateTime<Utc>,
    ) -> Result<Vec<Counter>, StoreError> {
        let zone = self.rules.zone;
        let earliest = limits
            .iter()
            .map(|limit| zone.window_of(limit.window, now).start)
            .min();
        let spent = match earliest {
            Some(since) => store::spent_since(tx, user_id, since).await?,
            None => Vec::new(),
        };
        Ok(limits
            .iter()
            .map(|limit| {
                let same = kept
                    .iter()
                    .find(|c| c.limit.scope == limit.scope && c.limit.window == limit.window);
                if let Some(same) = same {
                    let mut counter = same.clone();
                    counter.roll(zone, now);
                    counter.limit = limit.clone();
                    return counter;
                }
                let start = zone.window_of(limit.window, now).start;
                let in_window: i64 = spent
                    .iter()
                    .filter(|row| row.at >= start)
                    .filter(|row| {
                        let api_id = row.api_id.as_deref().unwrap_or("");
                        let key_id = row.key_id.as_deref().unwrap_or("");
                        limit.scope.binds(api_id, key_id)
                    })
                    .map(|row| row.amount_micros.max(0))
                    .sum();
                Counter::new(limit.clone(), zone, now, Micros::new(in_window))
            })
            .collect())
    }
}

impl AccountChanges {
    /// Replaces the account's whole set of limits by `counters` (none: it has no limits), kept
    /// in the order of their scope and window.
    pub fn replace_limits(&mut self, mut counters: Vec<Counter>) {
        counters.sort_by_cached_key(|c| (c.limit.scope.to_string(), c.limit.window.as_str()));
        self.limits = (!counters.is_empty()).then_some(counters);
        self.limits_changed = true;
    }

    /// Whether a charge (or hold) of `spend` fits under the account's limits (an account without
    /// any: it does). A refusal changes no counter's spend; the event of the limit that refused,
    /// when its window had none yet, is recorded at once (a batch commits it with the other
    /// charges).
    pub fn check_limits(
        &mut self,
        zone: BillingZone,
        spend: Spend<'_>,
        appends: &mut Appends<'_>,
        trace: Option<&str>,
    ) -> Result<(), CommandError> {
        let Some(counters) = self.limits.as_mut() else {
            return Ok(());
        };
        let Err(refusal) = limits::check(counters, zone, spend) else {
            return Ok(());
        };
        let event = counters
            .iter_mut()
            .find(|c| c.limit.scope == refusal.scope && c.limit.window == refusal.window)
            .and_then(|counter| reached_event(counter, spend.amount));
        if let Some(event) = event {
            self.limits_changed = true;
            self.publish(appends, event, trace);
        }
        Err(CommandError::SpendLimitReached(refusal))
    }

    /// Adds a charge (or hold) of `spend`, admitted by [`AccountChanges::check_limits`] and
    /// recorded, to the account's limits, with the `spend_limit_reached` of each limit it brought
    /// to exactly 0 remaining whose window had none yet.
    pub fn add_spend(&mut self, spend: Spend<'_>, appends: &mut Appends<'_>, trace: Option<&str>) {
        let Some(counters) = self.limits.as_mut() else {
            return;
        };
        self.limits_changed = true;
        let events: Vec<Kind> = limits::add(counters, spend)
            .into_iter()
            .filter_map(|index| reached_event(&mut counters[index], Micros::ZERO))
            .collect();
        for event in events {
            self.publish(appends, event, trace);
        }
    }

    /// Gives `spend` back to the account's limits (a release, an expiry, a settle's unused
    /// hold, a refund), in each only while its window is current.
    pub fn give_back_spend(&mut self, zone: BillingZone, spend: Spend<'_>, now: DateTime<Utc>) {
        if let Some(counters) = self.limits.as_mut()
            && spend.amount > Micros::ZERO
        {
            limits::give_back(counters, zone, spend, now);
            self.limits_changed = true;
        }
    }
}

/// The `spend_limit_reached` event of `counter`, once per window: `None` when its window already
/// had one. `refused` is the amount of the charge it refused (0 when a charge brought it to 0).
fn reached_event(counter: &mut Counter, refused: Micros) -> Option<Kind> {
    if counter.reached_published {
        return None;
    }
    counter.reached_published = true;
    Some(Kind::SpendLimitReached(pb::SpendLimitReached {
        limit: Some(counter.limit.message()),
        spent_micros: counter.spent.get(),
        window_first_day: counter.first_day.to_string(),
        refused_micros: refused.get(),
    }))
}
