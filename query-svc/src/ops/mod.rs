//! Operations on the read model, run from the command line (`billingctl <command>`) while the
//! service keeps running:
//! - [`rebuild`]: the read model rebuilt from the ledger into shadow tables, swapped in at once;
//! - [`reconcile`]: read and write models compared at equal versions, every difference printed,
//!   and optionally repaired;
//! - [`dlq`]: the dead-letter stream listed and replayed.

pub mod dlq;
pub mod rebuild;
pub mod reconcile;

use chrono::{DateTime, Utc};
use shared::{account::free_left, money::Micros, period::BillingZone, record::RecordKind};
use sqlx::FromRow;

use crate::store::projection::{RecordRow, UsageKey};

/// A ledger row as the read model needs it.
#[derive(Clone, Debug, FromRow)]
pub struct LedgerRow {
    pub record_id: String,
    pub user_id: String,
    pub version: i64,
    pub kind: String,
    pub amount_micros: i64,
    pub free_micros: i64,
    pub balance_micros: i64,
    pub period: String,
    pub balance_after_micros: i64,
    pub free_granted_after_micros: i64,
    pub free_used_after_micros: i64,
    pub free_held_after_micros: i64,
    pub balance_held_after_micros: i64,
    /// The month of the free part, when it is not `period` (a hold settled after its month).
    pub free_period: Option<String>,
    pub api_id: Option<String>,
    pub request_id: Option<String>,
    pub order_no: Option<String>,
    pub created_at: DateTime<Utc>,
}

/// The columns of [`LedgerRow`] in [`LEDGER_FROM`], for every SELECT of the ledger here. The
/// rows that end a reservation (its release, its settle's charge, or both when it was settled
/// after it expired) show the reservation's request id: the hold's row carries it in the ledger,
/// where it is the charges' unique key.
pub const LEDGER_COLUMNS: &str = "l.record_id, l.user_id, l.version, l.kind, l.amount_micros, \
    l.free_micros, l.balance_micros, l.period, l.balance_after_micros, l.free_granted_after_micros, \
    l.free_used_after_micros, l.free_held_after_micros, l.balance_held_after_micros, l.free_period, \
    l.api_id, COALESCE(l.request_id, r.request_id, s.request_id) AS request_id, l.order_no, \
    l.created_at";

/// The ledger (`l`) with the reservation a row ended (`r`) or settled (`s`), if any.
pub const LEDGER_FROM: &str = "ledger l \
    LEFT JOIN reservations r ON r.user_id = l.user_id AND r.end_record_id = l.record_id \
    LEFT JOIN reservations s ON s.user_id = l.user_id AND s.settle_record_id = l.record_id";

impl LedgerRow {
    /// The record the projection writes for the event of this row, with the usage it counts to.
    pub fn record(&self, zone: BillingZone) -> (RecordRow, Option<UsageKey>) {
        let record = RecordRow {
            record_id: self.record_id.clone(),
            user_id: self.user_id.clone(),
            version: self.version,
            kind: self.kind.clone(),
            amount_micros: self.amount_micros,
            free_micros: self.free_micros,
            balance_micros: self.balance_micros,
            balance_after_micros: self.balance_after_micros,
            free_remaining_after_micros: free_left(
                Micros::new(self.free_granted_after_micros),
                Micros::new(self.free_used_after_micros),
                Micros::new(self.free_held_after_micros),
            )
            .get(),
            api_id: self.api_id.clone(),
            request_id: self.request_id.clone(),
            order_no: self.order_no.clone(),
            period: self
                .free_period
                .clone()
                .unwrap_or_else(|| self.period.clone()),
            created_at: self.created_at,
        };
        let usage = (RecordKind::Deduct.is(&self.kind)).then(|| UsageKey {
            day: self.created_at.with_timezone(&zone.tz()).date_naive(),
            api_id: self.api_id.clone().unwrap_or_default(),
        });
        (record, usage)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(granted: i64, used: i64, held: i64) -> LedgerRow {
        LedgerRow {
            record_id: "r".into(),
            user_id: "u".into(),
            version: 3,
            kind: RecordKind::Deduct.as_str().into(),
            amount_micros: 5,
            free_micros: 5,
            balance_micros: 0,
            period: "2026-11".into(),
            balance_after_micros: 0,
            free_granted_after_micros: granted,
            free_used_after_micros: used,
            free_held_after_micros: held,
            balance_held_after_micros: 0,
            free_period: None,
            api_id: Some("chat".into()),
            request_id: Some("q".into()),
            order_no: None,
            created_at: DateTime::from_timestamp_millis(1_795_000_000_000).unwrap(),
        }
    }

    /// The rebuilt record shows the free quota left as the projection does: never below zero,
    /// even where use passed a grant lowered later by a new plan.
    #[test]
    fn the_free_quota_left_after_a_row_is_never_below_zero() {
        let zone = BillingZone::default();
        assert_eq!(
            row(100, 30, 20).record(zone).0.free_remaining_after_micros,
            50
        );
        assert_eq!(
            row(100, 90, 20).record(zone).0.free_remaining_after_micros,
            0
        );
        assert_eq!(row(0, 5, 0).record(zone).0.free_remaining_after_micros, 0);
    }
}
