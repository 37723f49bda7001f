//! From committed changes to the messages that leave the service: the `AccountState` every reply
//! and event carries, recharge orders as the contract shows them, and the events themselves.

use chrono::{DateTime, Utc};
use shared::{
    account::AccountView,
    proto::v1::{self as pb, billing_event::Kind},
};
use uuid::Uuid;

use shared::order::{OrderStatus, ShownStatus, shown_status};

use crate::store::OrderRow;

/// The events of the alerts a change (`record_id`) raised.
pub fn alert_kinds(
    record_id: &str,
    alerts: &[shared::alerts::Alert],
    period: shared::period::Period,
) -> Vec<Kind> {
    alerts
        .iter()
        .map(|alert| match alert {
            shared::alerts::Alert::BalanceLow { balance, threshold } => {
                Kind::BalanceLow(pb::BalanceLow {
                    record_id: record_id.to_owned(),
                    balance_micros: balance.get(),
                    threshold_micros: threshold.get(),
                })
            }
            shared::alerts::Alert::FreeQuotaExhausted => {
                Kind::FreeQuotaExhausted(pb::FreeQuotaExhausted {
                    record_id: record_id.to_owned(),
                    period: period.to_string(),
                })
            }
        })
        .collect()
}

/// A new time-ordered id for records, events, orders and unmatched payments.
pub fn new_id() -> String {
    Uuid::now_v7().to_string()
}

/// Order numbers are handed to payment providers: letters and digits only.
pub fn new_order_no() -> String {
    format!("RO{}", Uuid::now_v7().simple())
}

/// An account as the contract presents it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AccountOut {
    pub user_id: String,
    pub currency: String,
    /// The list that prices the account's usage (the default list's name when it has none).
    pub price_list: String,
    pub view: AccountView,
}

/// What an account is billed in and by: its currency, and the price list that prices its usage
/// (`None`: the default list).
#[derive(Clone, Copy, Debug)]
pub struct Terms<'a> {
    pub currency: &'a str,
    pub price_list: Option<&'a str>,
}

impl AccountOut {
    pub fn message(&self) -> pb::AccountState {
        let view = &self.view;
        pb::AccountState {
            user_id: self.user_id.clone(),
            currency: self.currency.clone(),
            price_list: self.price_list.clone(),
            balance_micros: view.balance.get(),
            period: view.period.to_string(),
            free_granted_micros: view.free_granted.get(),
            free_used_micros: view.free_used.get(),
            free_remaining_micros: view.free_remaining.get(),
            available_micros: view.available.get(),
            version: view.version,
            monthly_free_micros: view.monthly_free.get(),
            free_held_micros: view.free_held.get(),
            balance_held_micros: view.balance_held.get(),
        }
    }
}

/// A recharge order with the status it shows at one instant.
#[derive(Clone, Debug)]
pub struct OrderOut {
    pub row: OrderRow,
    pub status: ShownStatus,
}

impl OrderOut {
    pub fn new(row: OrderRow, now: DateTime<Utc>) -> Result<Self, crate::store::StoreError> {
        let status = shown_status(row.status()?, row.expires_at, now);
        Ok(OrderOut { row, status })
    }

    /// The order as its creation showed it: pending, not paid, at its creation's instant.
    pub fn as_created(row: OrderRow) -> Result<Self, crate::store::StoreError> {
        let created_at = row.created_at;
        let row = OrderRow {
            status: OrderStatus::Pending.as_str().to_owned(),
            provider_txn_id: None,
            paid_at: None,
            ..row
        };
        Self::new(row, created_at)
    }

    pub fn message(&self) -> pb::RechargeOrder {
        let row = &self.row;
        pb::RechargeOrder {
            order_no: row.order_no.clone(),
            user_id: row.user_id.to_string(),
            amount_micros: row.amount_micros,
            channel: row.channel.clone(),
            status: match self.status {
                ShownStatus::Pending => pb::OrderStatus::Pending,
                ShownStatus::Paid => pb::OrderStatus::Paid,
                ShownStatus::Failed => pb::OrderStatus::Failed,
                ShownStatus::Expired => pb::OrderStatus::Expired,
            } as i32,
            provider_txn_id: row.provider_txn_id.clone().unwrap_or_default(),
            created_at_ms: row.created_at.timestamp_millis(),
            paid_at_ms: row.paid_at.map_or(0, |at| at.timestamp_millis()),
            expires_at_ms: row.expires_at.timestamp_millis(),
        }
    }
}

/// One event about `account` (as it is right after the event), stamped now.
pub fn event(
    account: Option<&AccountOut>,
    user_id: &str,
    kind: Kind,
    now: DateTime<Utc>,
) -> pb::BillingEvent {
    pb::BillingEvent {
        event_id: new_id(),
        user_id: user_id.to_owned(),
        version: account.map_or(0, |a| a.view.version),
        occurred_at_ms: now.timestamp_millis(),
        account: account.map(AccountOut::message),
        schema_version: shared::proto::EVENT_SCHEMA_VERSION,
        kind: Some(kind),
    }
}
