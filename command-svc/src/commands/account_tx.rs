//! One command's transaction on one account: the row locked first, the period opened when the
//! command is the account's first of a new period, each change recorded in memory
//! ([`super::changes`]), and everything written at commit: the rows in one round trip, then the
//! final state once, guarded by its version.

use chrono::{DateTime, Utc};
use shared::{ids::UserId, limits::Spend, proto::v1::billing_event::Kind};

use super::{
    CommandError, Rules,
    changes::{AccountChanges, Appends, Change},
};
use crate::{
    events::AccountOut,
    store::{self, LedgerRow, StoreError, Tx},
};

pub(super) struct AccountTx<'c> {
    tx: Tx,
    store: &'c store::Store,
    rules: &'c Rules,
    account: AccountChanges,
    appends: Appends<'c>,
    /// The trace context of the command, which its events carry.
    traceparent: Option<String>,
    now: DateTime<Utc>,
}

impl<'c> AccountTx<'c> {
    /// Begins the transaction and locks the account row (which may not exist yet).
    pub async fn lock(
        store: &'c store::Store,
        rules: &'c Rules,
        user_id: &UserId,
        now: DateTime<Utc>,
    ) -> Result<AccountTx<'c>, StoreError> {
        let mut tx = store.begin().await?;
        let account = match store::lock_account(&mut tx, user_id).await? {
            Some(row) => AccountChanges::stored(&row, rules)?,
            None => AccountChanges::fresh(user_id, rules, now),
        };
        Ok(AccountTx {
            tx,
            store,
            rules,
            account,
            appends: Appends::new(rules, now),
            traceparent: shared::trace::current_traceparent(),
            now,
        })
    }

    pub fn tx(&mut self) -> &mut Tx {
        &mut self.tx
    }

    pub fn state(&self) -> &shared::account::AccountSnapshot {
        &self.account.state
    }

    pub fn account(&mut self) -> &mut AccountChanges {
        &mut self.account
    }

    pub fn exists(&self) -> bool {
        self.account.exists()
    }

    pub fn now_period(&self) -> shared::period::Period {
        self.rules.zone.period_of(self.now)
    }

    /// Decides the grant of the command's period when the account lacks it (see
    /// [`AccountChanges::open_period`]).
    pub fn open_period(&mut self) {
        let period = shared::account::command_period(&self.account.state, self.now_period());
        self.account.open_period(period);
    }

    /// Whether `spend` fits under the account's limits (see
    /// [`AccountChanges::check_limits`]); on a refusal the caller commits (the limit's event,
    /// when due) and answers the refusal.
    pub fn check_limits(&mut self, spend: Spend<'_>) -> Result<(), CommandError> {
        let trace = self.traceparent.as_deref();
        self.account
            .check_limits(self.rules.zone, spend, &mut self.appends, trace)
    }

    /// Adds `spend`, checked and recorded, to the account's limits (see
    /// [`AccountChanges::add_spend`]).
    pub fn add_spend(&mut self, spend: Spend<'_>) {
        let trace = self.traceparent.as_deref();
        self.account.add_spend(spend, &mut self.appends, trace);
    }

    /// Gives `spend` back to the account's limits, in each only while its window is current.
    pub fn give_back_spend(&mut self, spend: Spend<'_>) {
        self.account
            .give_back_spend(self.rules.zone, spend, self.now);
    }

    /// Records one change: its ledger row, its event, and the events of the alerts it raised.
    pub fn append(&mut self, change: Change) {
        self.account
            .append(&mut self.appends, change, self.traceparent.as_deref());
    }

    /// Records an event about the account as it is now.
    pub fn publish(&mut self, kind: Kind) {
        self.account
            .publish(&mut self.appends, kind, self.traceparent.as_deref());
    }

    /// Writes what was recorded and the decided state (with the limits' counters), and commits.
    /// Returns the account as committed, and as stored when this transaction changed it.
    pub async fn commit_changed(mut self) -> Result<(AccountOut, Option<AccountOut>), StoreError> {
        self.account
            .record_grant(&mut self.appends, self.traceparent.as_deref());
        self.appends.writes().run(&mut self.tx).await?;
        let (account, now) = (&self.account, self.now);
        if account.is_created() {
            let price_list = account.price_list.as_deref();
            store::create_account(&mut self.tx, &account.write(), price_list, now).await?;
        } else if account.is_changed() {
            let from = account.stored_version;
            store::save_account(&mut self.tx, &account.write(), from, now).await?;
        }
        let changed = account.is_created() || account.is_changed();
        let out = self.out();
        let stored = changed.then(|| self.account.stored_view(self.rules));
        self.tx.commit().await?;
        if self.appends.has_events() {
            self.store.outbox_written();
        }
        Ok((out, stored))
    }

    /// The account as the command's answer shows it, at the command's instant.
    pub fn out(&self) -> AccountOut {
        let account = &self.account;
        self.rules.present(
            &account.user_id,
            Some(account.terms()),
            Some(&account.state),
            self.now,
        )
    }

    /// Ends the transaction of a command that was already applied: nothing is written, and the
    /// reply shows the account as it was right after the original change.
    pub async fn end_in_replay(self, original: &LedgerRow) -> Result<AccountOut, StoreError> {
        let account = &self.account;
        let out = self.rules.present_as_recorded(
            &account.user_id,
            account.terms(),
            original,
            account.state.monthly_free,
        )?;
        self.rollback().await?;
        Ok(out)
    }

    /// Ends a transaction that decided to change nothing.
    pub async fn rollback(self) -> Result<(), StoreError> {
        self.tx.rollback().await?;
        Ok(())
    }
}
