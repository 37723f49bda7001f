//! The command handlers: each one validated command becomes one MySQL transaction that locks the
//! account, decides with the pure rules of `shared` and `domain`, and writes the new state, its
//! ledger rows and their outbox events together — or nothing at all.
//!
//! - `account_tx`: `AccountTx`, one command's transaction on one account, built on `changes`.
//! - `adjust`: `AdjustBalance`.
//! - `alerts`: `SetAlertSettings`, `GetAlertSettings`.
//! - `changes`: the one charge engine, without I/O: `Change`, `AccountChanges` (`open_period`,
//!   `decide_charge`, `append`, `publish`, `record_grant`) and `Appends`, whose `writes()` persist
//!   what a transaction recorded. Every change, of a command, a batch of charges or a reset batch,
//!   is recorded through it.
//! - `directory`: the Bloom filter of the ids that have an account, which answers a check of an
//!   id without one.
//! - `charge`: `CheckQuota`, `DeductQuota`, `GetAccount`, and a charge's ledger row and event.
//! - `group`: group commit of charges (`lock_batch`, `decide_batch`, `write_batch`); with group
//!   commit off, a charge is a batch of one.
//! - `memory`: the in-process view of accounts `CheckQuota` answers from first.
//! - `orders`: recharge orders and payment callbacks.
//! - `plans`: `SetFreeQuotaPlan`.
//! - `refunds`: `RefundCharge`.
//! - `reservations`: `ReserveQuota`, `SettleReservation`, `ReleaseReservation` and the expiry
//!   sweep; their decisions are pure functions.
//! - `reset`: the monthly reset's plan, batches and finish.
//! - `snapshots`: what `CheckQuota` answers from (memory, Redis, MySQL), written through after
//!   commits.
//!
//! The module itself holds [`Rules`], the deployment's rules; [`Commands`], what every handler
//! needs; and [`CommandError`], why a command did not apply.

mod account_tx;
mod adjust;
mod alerts;
mod changes;
mod charge;
mod directory;
mod group;
mod limits;
mod memory;
mod orders;
mod plans;
mod prices;
mod refunds;
mod reservations;
mod reset;
mod snapshots;

use std::{sync::Arc, time::Duration};

use chrono::{DateTime, Utc};
use shared::{
    account::{AccountSnapshot, stored_view, view_at},
    bus::BusNames,
    cache::SnapshotCache,
    clock::Clock,
    config::{AccountMemorySettings, GroupCommitSettings},
    config::{ConfigError, Settings},
    ids::{FieldViolation, UserId},
    money::Micros,
    period::BillingZone,
};

pub use adjust::Adjusted;
pub use alerts::{AlertSettingsSaved, AlertSettingsShown};
pub use charge::{Charged, Checked};
pub use limits::{LimitStatus, LimitsSet};
pub use memory::{AccountMemory, Known};
pub use orders::{CallbackOutcome, CallbackResult, OrderCreated};
pub use plans::PlanSet;
pub use prices::{Assigned, BOOK_REFRESH, PUBLICATION_LEAD, Published, PublishedList, ShownList};
pub use refunds::Refunded;
pub use reservations::{Released, Reserved, Settled};
pub use reset::ResetBatch;
pub use snapshots::known_from;

use crate::{
    events::{AccountOut, Terms},
    store::{self, AsStoreError, Store, StoreError},
};

/// The rules of this deployment, from configuration.
#[derive(Clone, Debug)]
pub struct Rules {
    pub zone: BillingZone,
    pub currency: String,
    pub default_monthly_free: Micros,
    pub order_ttl: Duration,
    /// `balance_low` fires at or below this, unless the user set their own threshold.
    pub default_low_balance_threshold: Micros,
    /// How long a reservation holds when its request names no lifetime.
    pub default_reservation_ttl: Duration,
    /// Where each event is published.
    pub bus: BusNames,
    /// The list that prices the usage of accounts assigned none.
    pub default_price_list: String,
    /// How long before its start the next period's reset is accepted.
    pub reset_lead: Duration,
}

impl Rules {
    /// The threshold an account's `balance_low` compares with: the user's own, else the default.
    pub fn low_balance_threshold(&self, own: Option<i64>) -> Micros {
        own.map_or(self.default_low_balance_threshold, Micros::new)
    }

    pub fn from_settings(settings: &Settings) -> Result<Rules, ConfigError> {
        Ok(Rules {
            zone: settings.billing.zone()?,
            currency: settings.billing.currency.clone(),
            default_monthly_free: settings.billing.default_monthly_free()?,
            order_ttl: Duration::from_secs(settings.billing.order_ttl_secs),
            default_low_balance_threshold: Micros::new(
                settings.alerts.low_balance_threshold_micros,
            ),
            default_reservation_ttl: Duration::from_millis(settings.reservations.default_ttl_ms),
            bus: BusNames::from_settings(&settings.nats),
            default_price_list: settings.billing.default_price_list.clone(),
            reset_lead: settings.reset.next_period_lead.get(),
        })
    }

    /// The list that prices an account's usage: its own, else the default list.
    pub fn price_list_of<'a>(&'a self, own: Option<&'a str>) -> &'a str {
        own.unwrap_or(&self.default_price_list)
    }

    /// The terms of an account never written.
    pub fn fresh_terms(&self) -> Terms<'_> {
        Terms {
            currency: &self.currency,
            price_list: None,
        }
    }

    /// How an account (or one never written) is presented at `now`.
    pub fn present(
        &self,
        user_id: &UserId,
        terms: Option<Terms<'_>>,
        snapshot: Option<&AccountSnapshot>,
        now: DateTime<Utc>,
    ) -> AccountOut {
        let fresh = AccountSnapshot::fresh(self.zone.period_of(now), self.default_monthly_free);
        let terms = terms.unwrap_or_else(|| self.fresh_terms());
        AccountOut {
            user_id: user_id.to_string(),
            currency: terms.currency.to_owned(),
            price_list: self.price_list_of(terms.price_list).to_owned(),
            view: view_at(snapshot.unwrap_or(&fresh), now, self.zone),
        }
    }
}

/// Why a command did not apply. Every variant leaves the stored state as it was.
#[derive(Clone, Debug, thiserror::Error)]
pub enum CommandError {
    #[error("invalid argument: {}", .0.iter().map(ToString::to_string).collect::<Vec<_>>().join("; "))]
    Invalid(Vec<FieldViolation>),
    #[error("free quota and balance cannot cover the amount")]
    InsufficientQuota,
    #[error("the balance would exceed its limit of 10^15 micros")]
    BalanceLimit,
    #[error("{key} was already used with other parameters")]
    KeyReused { key: &'static str },
    #[error("no such recharge order")]
    OrderNotFound,
    #[error("no charge under this request_id")]
    ChargeNotFound,
    #[error("the refunds of a charge may not exceed it, part by part")]
    RefundExceedsCharge,
    #[error("no reservation under this request_id")]
    ReservationNotFound,
    #[error("the actual amount exceeds what the reservation holds")]
    SettleExceedsHold,
    /// The usage names an API or meters the account's price list does not price (`version` 0:
    /// the list has no version in effect): nothing is charged, never 0 by accident.
    #[error("not priced by price list {list} (version {version}) for api_id {api_id:?}: {}", missing.join(", "))]
    Unpriced {
        api_id: String,
        list: String,
        version: i64,
        missing: Vec<String>,
    },
    #[error("the priced amount is above 10^12 micros, the most one charge may be")]
    AmountLimit,
    #[error("no price list is named {0}")]
    PriceListNotFound(String),
    /// A spend limit would go above its limit: nothing was charged or held.
    #[error("the spend limit of {} per {} has {} micros left", .0.scope, .0.window.as_str(), .0.remaining.get())]
    SpendLimitReached(shared::limits::LimitReached),
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl CommandError {
    /// MySQL could not be reached: every command fails alike, whatever its input.
    pub fn is_unavailable(&self) -> bool {
        matches!(self, CommandError::Store(StoreError::Unavailable(_)))
    }
}

impl AsStoreError for CommandError {
    fn is_conflict(&self) -> bool {
        matches!(self, CommandError::Store(error) if error.is_conflict())
    }
}

impl From<shared::account::Refusal> for CommandError {
    fn from(refusal: shared::account::Refusal) -> Self {
        match refusal {
            shared::account::Refusal::InsufficientQuota => CommandError::InsufficientQuota,
            shared::account::Refusal::BalanceLimit => CommandError::BalanceLimit,
            shared::account::Refusal::RefundExceedsCharge => CommandError::RefundExceedsCharge,
            shared::account::Refusal::SettleExceedsHold => CommandError::SettleExceedsHold,
        }
    }
}

impl Rules {
    /// The account as the first answer to `original`'s command showed it: the state recorded
    /// right after the row, seen at the row's instant, whatever changed since (a replay answers
    /// what the first call answered). `monthly_free` stands in for rows that do not hold it.
    pub fn present_as_recorded(
        &self,
        user_id: &UserId,
        terms: Terms<'_>,
        original: &store::LedgerRow,
        monthly_free: Micros,
    ) -> Result<AccountOut, StoreError> {
        let state = store::state_after(original, monthly_free)?;
        Ok(self.present(user_id, Some(terms), Some(&state), original.created_at))
    }

    /// An account exactly as stored, for the events that describe it.
    pub fn present_stored(
        &self,
        user_id: &UserId,
        terms: Terms<'_>,
        snapshot: &AccountSnapshot,
    ) -> AccountOut {
        AccountOut {
            user_id: user_id.to_string(),
            currency: terms.currency.to_owned(),
            price_list: self.price_list_of(terms.price_list).to_owned(),
            view: stored_view(snapshot, self.zone),
        }
    }
}

/// Everything a command handler needs: storage, time and the rules.
#[derive(Clone)]
pub struct Commands {
    store: Store,
    clock: Clock,
    rules: Rules,
    /// command-svc's Redis snapshots, written through after commits and read by `CheckQuota`.
    snapshots: Option<SnapshotCache>,
    /// command-svc's in-process view of accounts, read by `CheckQuota` before Redis.
    memory: Option<Arc<AccountMemory>>,
    /// Charges go through group commit when set.
    charges: Option<group::ChargeQueue>,
    /// Every published price list, which usage is priced from.
    prices: Arc<prices::PriceBook>,
}

impl Commands {
    /// Every command its own transaction, `CheckQuota` from MySQL.
    pub fn new(store: Store, clock: Clock, rules: Rules) -> Self {
        Commands {
            store,
            clock,
            rules,
            snapshots: None,
            memory: None,
            charges: None,
            prices: Arc::default(),
        }
    }

    /// `CheckQuota` answers from these snapshots (MySQL on a miss or when Redis is down), and
    /// every commit writes them through.
    pub fn with_snapshots(self, snapshots: SnapshotCache) -> Self {
        Commands {
            snapshots: Some(snapshots),
            ..self
        }
    }

    /// `CheckQuota` answers from an in-process view of accounts (with its directory of ids) first,
    /// when the settings enable it; every commit of this replica updates it (`bus::AccountFollower`
    /// brings those of others, `refresh_directory` the accounts created anywhere).
    pub fn with_memory(self, settings: &AccountMemorySettings) -> Self {
        if !settings.enabled {
            return self;
        }
        Commands {
            memory: Some(Arc::new(AccountMemory::new(settings))),
            ..self
        }
    }

    /// The in-process view of accounts, when enabled.
    pub fn memory(&self) -> Option<&Arc<AccountMemory>> {
        self.memory.as_ref()
    }

    /// Charges are committed in groups by these settings' workers (started now).
    pub fn with_group_commit(self, settings: &GroupCommitSettings) -> Self {
        if !settings.enabled {
            return self;
        }
        let queue = group::ChargeQueue::start(self.clone(), settings);
        Commands {
            charges: Some(queue),
            ..self
        }
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    pub fn rules(&self) -> &Rules {
        &self.rules
    }

    /// Now, to the millisecond: every stored instant is a whole millisecond, the precision of
    /// the events' timestamps, so the read model and the ledger agree exactly.
    pub fn now(&self) -> DateTime<Utc> {
        let now = self.clock.now();
        DateTime::from_timestamp_millis(now.timestamp_millis()).unwrap_or(now)
    }
}

/// Charges applied (and the amounts they took from free quota and balance) and charges refused
/// for insufficient quota, for `/metrics`. Replays count nothing: they applied before.
fn count_charges(results: &[Result<Charged, CommandError>]) {
    let (mut applied, mut free, mut balance, mut refused) = (0_u64, 0_u64, 0_u64, 0_u64);
    for result in results {
        match result {
            Ok(charged) if !charged.replayed => {
                applied += 1;
                free += charged.split.free.get().unsigned_abs();
                balance += charged.split.balance.get().unsigned_abs();
            }
            Err(CommandError::InsufficientQuota) => refused += 1,
            _ => {}
        }
    }
    metrics::counter!("billing_charges_total").increment(applied);
    metrics::counter!("billing_charged_micros_total", "part" => "free").increment(free);
    metrics::counter!("billing_charged_micros_total", "part" => "balance").increment(balance);
    metrics::counter!("billing_insufficient_quota_total").increment(refused);
}
