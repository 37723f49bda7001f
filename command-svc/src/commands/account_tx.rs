//! One command's transaction on one account: the row locked first, the period opened when the
//! command is the account's first of a new period, then each change appended as a ledger row with
//! its outbox event, and the final state written once at commit.

use chrono::{DateTime, Utc};
use shared::{
    account::{AccountSnapshot, command_period},
    money::Micros,
    proto::v1::{FreeQuotaGranted, billing_event::Kind},
};

use super::Rules;
use crate::{
    events::{self, AccountOut},
    store::{self, LedgerEntry, LedgerRecord, RecordKind, Refs, StoreError, Tx, Writes},
};

pub(super) struct AccountTx<'c> {
    tx: Tx,
    store: &'c store::Store,
    rules: &'c Rules,
    user_id: &'c str,
    currency: String,
    /// The version stored in MySQL right now (0: no row yet).
    stored_version: i64,
    /// What `balance_low` compares the balance with.
    low_balance_threshold: Micros,
    /// The state as the command has decided it so far.
    state: AccountSnapshot,
    /// A period grant decided but not yet written, with the state before it.
    pending_grant: Option<AccountSnapshot>,
    /// Whether the transaction wrote outbox rows, so its commit should wake the relay.
    wrote_events: bool,
    now: DateTime<Utc>,
}

impl<'c> AccountTx<'c> {
    /// Begins the transaction and locks the account row (which may not exist yet).
    pub async fn lock(
        store: &'c store::Store,
        rules: &'c Rules,
        user_id: &'c str,
        now: DateTime<Utc>,
    ) -> Result<AccountTx<'c>, StoreError> {
        let mut tx = store.begin().await?;
        let row = store::lock_account(&mut tx, user_id).await?;
        let low_balance_threshold = rules.low_balance_threshold(
            row.as_ref()
                .and_then(|row| row.low_balance_threshold_micros),
        );
        let (stored_version, state, currency) = match row {
            Some(row) => (row.version, row.snapshot()?, row.currency),
            None => (
                0,
                AccountSnapshot::fresh(rules.zone.period_of(now), rules.default_monthly_free),
                rules.currency.clone(),
            ),
        };
        Ok(AccountTx {
            tx,
            store,
            rules,
            user_id,
            currency,
            stored_version,
            low_balance_threshold,
            state,
            pending_grant: None,
            wrote_events: false,
            now,
        })
    }

    pub fn tx(&mut self) -> &mut Tx {
        &mut self.tx
    }

    pub fn state(&self) -> &AccountSnapshot {
        &self.state
    }

    pub fn exists(&self) -> bool {
        self.stored_version > 0
    }

    pub fn out(&self) -> AccountOut {
        self.rules.present(
            self.user_id,
            Some(&self.currency),
            Some(&self.state),
            self.now,
        )
    }

    /// Decides, in memory, the grant of the command's period when the account lacks it: the
    /// first mutating command of a period grants it, exactly as the monthly reset would. Written
    /// with the first change, so a refused command writes nothing.
    pub fn open_period(&mut self) {
        let period = command_period(&self.state, self.rules.zone.period_of(self.now));
        if let Some(granted) = self.state.open_period(period, self.state.monthly_free) {
            self.pending_grant = Some(self.state);
            self.state = granted;
        }
    }

    async fn flush_grant(&mut self) -> Result<(), StoreError> {
        let Some(before) = self.pending_grant.take() else {
            return Ok(());
        };
        let granted = self.state;
        if self.stored_version == 0 {
            store::create_account(
                &mut self.tx,
                self.user_id,
                &self.currency,
                &granted,
                self.now,
            )
            .await?;
            self.stored_version = granted.version;
        }
        let record_id = events::new_id();
        let grant = store::Grant {
            user_id: self.user_id,
            period: granted.period.to_string(),
            granted_micros: granted.free_granted.get(),
            record_id: &record_id,
        };
        let entry = LedgerEntry {
            record_id: &record_id,
            user_id: self.user_id,
            kind: RecordKind::FreeGrant,
            amount: granted.free_granted,
            free: granted.free_granted,
            balance: Micros::ZERO,
            before,
            after: granted,
            refs: Refs::default(),
            created_at: self.now,
        };
        let mut writes = Writes::new();
        writes.grants(&[grant], self.now).entries(&[entry]);
        writes.run(&mut self.tx).await?;
        let kind = Kind::FreeQuotaGranted(FreeQuotaGranted {
            record_id: record_id.clone(),
            period: granted.period.to_string(),
            amount_micros: granted.free_granted.get(),
        });
        self.write_event(kind).await
    }

    /// Appends one change: its ledger row (state before = the current state), its event, and
    /// the events of the alerts it raised.
    pub async fn append(
        &mut self,
        record_id: &str,
        kind: RecordKind,
        after: AccountSnapshot,
        amounts: (Micros, Micros, Micros),
        refs: Refs<'_>,
        event: Kind,
    ) -> Result<(), StoreError> {
        self.flush_grant().await?;
        let (amount, free, balance) = amounts;
        let entry = LedgerEntry {
            record_id,
            user_id: self.user_id,
            kind,
            amount,
            free,
            balance,
            before: self.state,
            after,
            refs,
            created_at: self.now,
        };
        let mut writes = Writes::new();
        writes.entries(&[entry]);
        writes.run(&mut self.tx).await?;
        let alerts = shared::alerts::raised(&self.state, &after, self.low_balance_threshold);
        self.state = after;
        self.write_event(event).await?;
        for alert in events::alert_kinds(record_id, &alerts, after.period) {
            self.write_event(alert).await?;
        }
        Ok(())
    }

    /// Writes an event about the account as it is now (events that change no state repeat the
    /// current version).
    pub async fn publish(&mut self, kind: Kind) -> Result<(), StoreError> {
        self.flush_grant().await?;
        self.write_event(kind).await
    }

    async fn write_event(&mut self, kind: Kind) -> Result<(), StoreError> {
        let subject = self.rules.bus.event_subject(&kind);
        let account = self
            .rules
            .present_stored(self.user_id, &self.currency, &self.state);
        let event = events::event(Some(&account), self.user_id, kind, self.now);
        let traceparent = shared::trace::current_traceparent();
        store::insert_event(
            &mut self.tx,
            &event,
            &subject,
            traceparent.as_deref(),
            self.now,
        )
        .await?;
        self.wrote_events = true;
        Ok(())
    }

    /// Writes the decided state and commits. Returns the account as committed, and as stored
    /// when this transaction changed it.
    /// Also returns the account as stored when this transaction changed it.
    pub async fn commit_changed(mut self) -> Result<(AccountOut, Option<AccountOut>), StoreError> {
        self.flush_grant().await?;
        let changed = self.state.version != self.stored_version;
        if changed {
            store::save_account(
                &mut self.tx,
                self.user_id,
                self.stored_version,
                &self.state,
                self.now,
            )
            .await?;
        }
        let out = self.out();
        let stored = changed.then(|| {
            self.rules
                .present_stored(self.user_id, &self.currency, &self.state)
        });
        self.tx.commit().await?;
        if self.wrote_events {
            self.store.outbox_written();
        }
        Ok((out, stored))
    }

    /// Ends the transaction of a command that was already applied: nothing is written, and the
    /// reply shows the account as it was right after the original change.
    pub async fn end_in_replay(self, original: &LedgerRecord) -> Result<AccountOut, StoreError> {
        let out = self.rules.present_as_recorded(
            self.user_id,
            &self.currency,
            original,
            self.state.monthly_free,
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
