//! Operators' work on the read model, run from the command line (`billingctl <command>`) while
//! the services keep running. This crate is the one place that reads both sides: the write
//! side's tables (`ledger`, `accounts`, `reservations`, `recharge_orders`) and query-svc's read
//! model, which it writes through `query_svc::store`; query-svc itself reads only its own tables.
//!
//! - [`dlq`]: the dead-letter stream listed and replayed.
//! - [`rebuild`]: the read model rebuilt from the ledger into shadow tables, swapped in at once.
//! - [`reconcile`]: read and write models compared at equal versions, every difference printed,
//!   and optionally repaired.
//!
//! The crate root holds the ledger as the read model needs it ([`LEDGER_COLUMNS`],
//! [`LEDGER_FROM`], [`record_of`]).

pub mod dlq;
pub mod rebuild;
pub mod reconcile;

use shared::{
    account::free_left,
    money::Micros,
    period::BillingZone,
    record::{LedgerRow, RecordKind},
};

use query_svc::store::projection::{RecordRow, UsageKey};

/// The columns of [`LedgerRow`] in [`LEDGER_FROM`], for every SELECT of the ledger here. The
/// rows that end a reservation (its release, its settle's charge, or both when it was settled
/// after it expired) show the reservation's request id: the hold's row carries it in the ledger,
/// where it is the charges' unique key.
pub const LEDGER_COLUMNS: &str = "l.record_id, l.user_id, l.version, l.kind, l.amount_micros, \
    l.free_micros, l.balance_micros, l.period, l.balance_after_micros, l.free_granted_after_micros, \
    l.free_used_after_micros, l.free_held_after_micros, l.balance_held_after_micros, \
    l.monthly_free_after_micros, l.free_period, \
    l.api_id, COALESCE(l.request_id, r.request_id, s.request_id) AS request_id, l.order_no, \
    l.created_at, l.usage_units, l.price_list, l.price_version";

/// The ledger (`l`) with the reservation a row ended (`r`) or settled (`s`), if any.
pub const LEDGER_FROM: &str = "ledger l \
    LEFT JOIN reservations r ON r.user_id = l.user_id AND r.end_record_id = l.record_id \
    LEFT JOIN reservations s ON s.user_id = l.user_id AND s.settle_record_id = l.record_id";

/// The record the projection writes for the event of `row`, with the usage it counts to.
pub fn record_of(row: &LedgerRow, zone: BillingZone) -> (RecordRow, Option<UsageKey>) {
    let record = RecordRow {
        record_id: row.record_id.clone(),
        user_id: row.user_id.to_string(),
        version: row.version,
        kind: row.kind.as_str().to_owned(),
        amount_micros: row.amount_micros,
        free_micros: row.free_micros,
        balance_micros: row.balance_micros,
        balance_after_micros: row.balance_after_micros,
        free_remaining_after_micros: free_left(
            Micros::new(row.free_granted_after_micros),
            Micros::new(row.free_used_after_micros),
            Micros::new(row.free_held_after_micros),
        )
        .get(),
        api_id: row.api_id.clone(),
        request_id: row.request_id.clone(),
        order_no: row.order_no.clone(),
        period: row
            .free_period
            .clone()
            .unwrap_or_else(|| row.period.clone()),
        created_at: row.created_at,
        usage_units: row.usage_units.clone(),
        price_list: row.price_list.clone(),
        price_version: row.price_version,
    };
    let usage = (row.kind == RecordKind::Deduct).then(|| UsageKey {
        day: row.created_at.with_timezone(&zone.tz()).date_naive(),
        api_id: row.api_id.clone().unwrap_or_default(),
    });
    (record, usage)
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::DateTime;
    use shared::ids::UserId;

    fn row(granted: i64, used: i64, held: i64) -> LedgerRow {
        LedgerRow {
            record_id: "r".into(),
            user_id: UserId::stored("u"),
            version: 3,
            kind: RecordKind::Deduct,
            amount_micros: 5,
            free_micros: 5,
            balance_micros: 0,
            period: "2026-11".into(),
            balance_after_micros: 0,
            free_granted_after_micros: granted,
            free_used_after_micros: used,
            free_held_after_micros: held,
            balance_held_after_micros: 0,
            monthly_free_after_micros: None,
            free_period: None,
            api_id: Some("chat".into()),
            request_id: Some("q".into()),
            order_no: None,
            created_at: DateTime::from_timestamp_millis(1_795_000_000_000).unwrap(),
            usage_units: None,
            price_list: None,
            price_version: None,
            key_id: None,
        }
    }

    /// The rebuilt record shows the free quota left as the projection does: never below zero,
    /// even where use passed a grant lowered later by a new plan.
    #[test]
    fn the_free_quota_left_after_a_row_is_never_below_zero() {
        let zone = BillingZone::default();
        assert_eq!(
            record_of(&row(100, 30, 20), zone)
                .0
                .free_remaining_after_micros,
            50
        );
        assert_eq!(
            record_of(&row(100, 90, 20), zone)
                .0
                .free_remaining_after_micros,
            0
        );
        assert_eq!(
            record_of(&row(0, 5, 0), zone).0.free_remaining_after_micros,
            0
        );
    }
}
