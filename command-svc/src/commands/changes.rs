//! The one place a decided change becomes what is written, in memory and without I/O: the
//! period's grant (its grant row, ledger row and event), each change's ledger row and event, and
//! the alerts the change crosses. A single command ([`super::account_tx`]), a batch of charges
//! ([`super::group`]) and the monthly reset ([`super::reset`]) all record through it; the caller
//! only persists the rows it gathered ([`Appends::writes`]).

use chrono::{DateTime, Utc};
use shared::{
    account::{AccountSnapshot, Refusal, Split, command_period},
    ids::UserId,
    money::Micros,
    period::Period,
    proto::v1::{FreeQuotaGranted, billing_event::Kind},
};

use super::Rules;
use crate::{
    events::{self, AccountOut, Terms},
    store::{
        AccountRow, AccountWrite, Amounts, Grant, LedgerEntry, Outgoing, RecordKind, Refs,
        StoreError, Writes,
    },
};

/// One change of an account's state, as decided: the row it appends and the event it publishes.
pub(super) struct Change {
    pub record_id: String,
    pub kind: RecordKind,
    pub after: AccountSnapshot,
    pub amounts: Amounts,
    pub refs: Refs,
    pub event: Kind,
}

/// One account as a transaction decides it: the stored version it started from, the state so
/// far, and a period's grant decided but not yet recorded.
#[derive(Clone, Debug)]
pub(super) struct AccountChanges {
    pub user_id: UserId,
    pub currency: String,
    /// The list that prices the account's usage (`None`: the default list).
    pub price_list: Option<String>,
    /// The version stored in MySQL (0: no row yet).
    pub stored_version: i64,
    /// What `balance_low` compares the balance with.
    pub low_balance_threshold: Micros,
    pub state: AccountSnapshot,
    /// The state before a grant decided by [`AccountChanges::open_period`], until it is recorded.
    pending_grant: Option<AccountSnapshot>,
    /// The account's spend limits with their counters, read with its row (`None`: it has none).
    pub limits: Option<Vec<shared::limits::Counter>>,
    /// Whether this transaction changed a limit or a counter (the row is written then, even
    /// when its state is unchanged).
    pub limits_changed: bool,
}

impl AccountChanges {
    /// An account as its stored row holds it.
    pub fn stored(row: &AccountRow, rules: &Rules) -> Result<AccountChanges, StoreError> {
        Ok(AccountChanges {
            user_id: row.user_id.clone(),
            currency: row.currency.clone(),
            price_list: row.price_list.clone(),
            stored_version: row.version,
            low_balance_threshold: rules.low_balance_threshold(row.low_balance_threshold_micros),
            state: row.snapshot()?,
            pending_grant: None,
            limits: row.counters()?,
            limits_changed: false,
        })
    }

    /// An account never written, as its first command finds it at `now`.
    pub fn fresh(user_id: &UserId, rules: &Rules, now: DateTime<Utc>) -> AccountChanges {
        AccountChanges {
            user_id: user_id.clone(),
            currency: rules.currency.clone(),
            price_list: None,
            stored_version: 0,
            low_balance_threshold: rules.default_low_balance_threshold,
            state: AccountSnapshot::fresh(rules.zone.period_of(now), rules.default_monthly_free),
            pending_grant: None,
            limits: None,
            limits_changed: false,
        }
    }

    pub fn terms(&self) -> Terms<'_> {
        Terms {
            currency: &self.currency,
            price_list: self.price_list.as_deref(),
        }
    }

    pub fn exists(&self) -> bool {
        self.stored_version > 0
    }

    /// No row yet, and something to store.
    pub fn is_created(&self) -> bool {
        self.stored_version == 0 && self.state.version > 0
    }

    /// A stored row this transaction changed: its state, or its limits' counters alone.
    pub fn is_changed(&self) -> bool {
        self.stored_version > 0
            && (self.state.version != self.stored_version || self.limits_changed)
    }

    /// The row as this transaction writes it.
    pub fn write(&self) -> AccountWrite<'_> {
        AccountWrite {
            user_id: &self.user_id,
            currency: &self.currency,
            state: self.state,
            counters: crate::store::counters_column(self.limits.as_deref()),
        }
    }

    /// Decides the grant of `period` when the account lacks it (a command's first change of a
    /// period grants it, exactly as the monthly reset would). It is recorded with the next
    /// change, so a command refused after this records nothing.
    pub fn open_period(&mut self, period: Period) {
        if let Some(granted) = self.state.open_period(period, self.state.monthly_free) {
            self.pending_grant.get_or_insert(self.state);
            self.state = granted;
        }
    }

    /// Decides a charge of `amount`, the command's period `now_period`: the period opened if
    /// the charge is the account's first of a new one, then the amount taken from free quota
    /// first, then balance. The split and the state after it are the change to append; a
    /// refused charge leaves the account as it was, its grant undecided.
    pub fn decide_charge(
        &mut self,
        amount: Micros,
        now_period: Period,
    ) -> Result<(Split, AccountSnapshot), Refusal> {
        let undo = (self.state, self.pending_grant);
        self.open_period(command_period(&self.state, now_period));
        self.state.charge(amount).inspect_err(|_| {
            (self.state, self.pending_grant) = undo;
        })
    }

    /// Records `change` (and the grant before it, if one is pending): its ledger row with the
    /// state before and after, its event, and an event per alert it raised.
    pub fn append(&mut self, appends: &mut Appends<'_>, change: Change, trace: Option<&str>) {
        self.record_grant(appends, trace);
        let Change {
            record_id,
            kind,
            after,
            amounts,
            refs,
            event,
        } = change;
        let alerts = shared::alerts::raised(&self.state, &after, self.low_balance_threshold);
        appends.entries.push(LedgerEntry {
            record_id: record_id.clone(),
            user_id: self.user_id.clone(),
            kind,
            amounts,
            before: self.state,
            after,
            refs,
            created_at: appends.now,
        });
        self.state = after;
        appends.event(self, event, trace);
        for alert in events::alert_kinds(&record_id, &alerts, after.period) {
            appends.event(self, alert, trace);
        }
    }

    /// Records an event about the account as it is (an event that changes no state repeats the
    /// current version), after the grant pending, if any.
    pub fn publish(&mut self, appends: &mut Appends<'_>, kind: Kind, trace: Option<&str>) {
        self.record_grant(appends, trace);
        appends.event(self, kind, trace);
    }

    /// Records the grant decided by [`AccountChanges::open_period`]: the one writer of a
    /// period's grant row, ledger row and event.
    pub fn record_grant(&mut self, appends: &mut Appends<'_>, trace: Option<&str>) {
        let Some(before) = self.pending_grant.take() else {
            return;
        };
        let granted = self.state;
        let record_id = events::new_id();
        appends.grants.push(Grant {
            user_id: self.user_id.clone(),
            period: granted.period,
            granted: granted.free_granted,
            record_id: record_id.clone(),
        });
        appends.entries.push(LedgerEntry {
            record_id: record_id.clone(),
            user_id: self.user_id.clone(),
            kind: RecordKind::FreeGrant,
            amounts: Amounts::of(granted.free_granted, granted.free_granted, Micros::ZERO),
            before,
            after: granted,
            refs: Refs::default(),
            created_at: appends.now,
        });
        let kind = Kind::FreeQuotaGranted(FreeQuotaGranted {
            record_id,
            period: granted.period.to_string(),
            amount_micros: granted.free_granted.get(),
        });
        appends.event(self, kind, trace);
    }

    /// The account exactly as stored once this transaction commits, for events and caches.
    pub fn stored_view(&self, rules: &Rules) -> AccountOut {
        rules.present_stored(&self.user_id, self.terms(), &self.state)
    }
}

/// The rows one transaction appends, in the order they were decided.
pub(super) struct Appends<'r> {
    rules: &'r Rules,
    now: DateTime<Utc>,
    grants: Vec<Grant>,
    entries: Vec<LedgerEntry>,
    events: Vec<Outgoing>,
}

impl<'r> Appends<'r> {
    pub fn new(rules: &'r Rules, now: DateTime<Utc>) -> Appends<'r> {
        Appends {
            rules,
            now,
            grants: Vec::new(),
            entries: Vec::new(),
            events: Vec::new(),
        }
    }

    /// Whether anything was recorded (a transaction that recorded nothing changed nothing).
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty() && self.events.is_empty()
    }

    pub fn has_events(&self) -> bool {
        !self.events.is_empty()
    }

    fn event(&mut self, account: &AccountChanges, kind: Kind, trace: Option<&str>) {
        let subject = self.rules.bus.event_subject(&kind);
        let shown = account.stored_view(self.rules);
        self.events.push(Outgoing {
            event: events::event(Some(&shown), account.user_id.as_str(), kind, self.now),
            subject,
            traceparent: trace.map(str::to_owned),
        });
    }

    /// The statements that persist what was recorded: grants, ledger rows, outbox events.
    pub fn writes(&self) -> Writes {
        let mut writes = Writes::new();
        writes
            .grants(&self.grants, self.now)
            .entries(&self.entries)
            .events(&self.events, self.now);
        writes
    }
}
