//! From one event to the writes that project it: decided without I/O, so the mapping is tested
//! on its own. Events carry derived values (the account right after them), which keeps this
//! trivial.

use chrono::{DateTime, Utc};
use prost::Message;
use shared::{
    order::OrderStatus,
    period::BillingZone,
    proto::{
        EVENT_SCHEMA_VERSION,
        v1::{self as pb, billing_event::Kind},
    },
    record::RecordKind,
};

use crate::store::projection::{OrderRow, RecordRow, SnapshotRow, UsageKey};

/// Why an event cannot be projected by this build.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    #[error("undecodable event: {0}")]
    Undecodable(String),
    #[error("unsupported event schema version {0}")]
    UnsupportedSchema(i32),
    /// A kind added after this build (a rolling deploy): kept in the dead-letter stream until a
    /// build that knows it replays it.
    #[error("unknown event kind")]
    UnknownKind,
    #[error("invalid event: {0}")]
    Invalid(String),
}

/// What one event writes to the read model.
#[derive(Clone, Debug, Default)]
pub struct Plan<'e> {
    pub snapshot: Option<SnapshotRow<'e>>,
    pub record: Option<(RecordRow, Option<UsageKey>)>,
    pub order: Option<OrderRow<'e>>,
}

pub fn decode(payload: &[u8]) -> Result<pb::BillingEvent, Refused> {
    let event =
        pb::BillingEvent::decode(payload).map_err(|e| Refused::Undecodable(e.to_string()))?;
    if event.schema_version != EVENT_SCHEMA_VERSION {
        return Err(Refused::UnsupportedSchema(event.schema_version));
    }
    if event.kind.is_none() {
        return Err(Refused::UnknownKind);
    }
    Ok(event)
}

fn instant(ms: i64, what: &str) -> Result<DateTime<Utc>, Refused> {
    DateTime::from_timestamp_millis(ms)
        .ok_or_else(|| Refused::Invalid(format!("{what} out of range")))
}

fn non_empty(text: &str) -> Option<&str> {
    (!text.is_empty()).then_some(text)
}

fn order_row<'e>(order: &'e pb::RechargeOrder) -> Result<OrderRow<'e>, Refused> {
    let status = match order.status() {
        pb::OrderStatus::Pending | pb::OrderStatus::Expired => OrderStatus::Pending,
        pb::OrderStatus::Paid => OrderStatus::Paid,
        pb::OrderStatus::Failed => OrderStatus::Failed,
        pb::OrderStatus::Unspecified => {
            return Err(Refused::Invalid("order without a status".into()));
        }
    };
    Ok(OrderRow {
        order_no: &order.order_no,
        user_id: &order.user_id,
        amount_micros: order.amount_micros,
        channel: &order.channel,
        status,
        provider_txn_id: non_empty(&order.provider_txn_id),
        created_at: instant(order.created_at_ms, "created_at")?,
        expires_at: instant(order.expires_at_ms, "expires_at")?,
        paid_at: (order.paid_at_ms != 0)
            .then(|| instant(order.paid_at_ms, "paid_at"))
            .transpose()?,
    })
}

/// The writes of `event`; `zone` decides the day a charge counts towards.
pub fn plan(event: &pb::BillingEvent, zone: BillingZone) -> Result<Plan<'_>, Refused> {
    let occurred_at = instant(event.occurred_at_ms, "occurred_at")?;
    let account = event.account.as_ref();
    let snapshot = account
        .map(|account| {
            if account.user_id != event.user_id || account.version != event.version {
                return Err(Refused::Invalid(
                    "the account does not match the event".into(),
                ));
            }
            Ok(SnapshotRow {
                user_id: &account.user_id,
                currency: &account.currency,
                balance_micros: account.balance_micros,
                period: &account.period,
                free_granted_micros: account.free_granted_micros,
                free_used_micros: account.free_used_micros,
                free_held_micros: account.free_held_micros,
                balance_held_micros: account.balance_held_micros,
                monthly_free_micros: account.monthly_free_micros,
                version: account.version,
                updated_at: occurred_at,
            })
        })
        .transpose()?;

    let record = |record_id: &str,
                  kind: RecordKind,
                  amounts: (i64, i64, i64)|
     -> Result<RecordRow, Refused> {
        let account =
            account.ok_or_else(|| Refused::Invalid("a record event without its account".into()))?;
        Ok(RecordRow {
            record_id: record_id.to_owned(),
            user_id: event.user_id.clone(),
            version: event.version,
            kind: kind.as_str().to_owned(),
            amount_micros: amounts.0,
            free_micros: amounts.1,
            balance_micros: amounts.2,
            balance_after_micros: account.balance_micros,
            free_remaining_after_micros: account.free_remaining_micros,
            api_id: None,
            request_id: None,
            order_no: None,
            period: account.period.clone(),
            created_at: occurred_at,
        })
    };

    let mut plan = Plan {
        snapshot,
        ..Plan::default()
    };
    match event.kind.as_ref().ok_or(Refused::UnknownKind)? {
        Kind::QuotaDeducted(charge) => {
            let row = RecordRow {
                api_id: Some(charge.api_id.clone()),
                request_id: Some(charge.request_id.clone()),
                ..record(
                    &charge.record_id,
                    RecordKind::Deduct,
                    (
                        charge.amount_micros,
                        charge.free_micros,
                        charge.balance_micros,
                    ),
                )?
            };
            let usage = UsageKey {
                day: occurred_at.with_timezone(&zone.tz()).date_naive(),
                api_id: charge.api_id.clone(),
            };
            plan.record = Some((row, Some(usage)));
        }
        Kind::BalanceRecharged(recharge) => {
            let row = RecordRow {
                order_no: Some(recharge.order_no.clone()),
                ..record(
                    &recharge.record_id,
                    RecordKind::Recharge,
                    (recharge.amount_micros, 0, recharge.amount_micros),
                )?
            };
            plan.record = Some((row, None));
            plan.order = recharge.order.as_ref().map(order_row).transpose()?;
        }
        Kind::FreeQuotaGranted(grant) => {
            let row = RecordRow {
                period: grant.period.clone(),
                ..record(
                    &grant.record_id,
                    RecordKind::FreeGrant,
                    (grant.amount_micros, grant.amount_micros, 0),
                )?
            };
            plan.record = Some((row, None));
        }
        Kind::BalanceAdjusted(adjustment) => {
            let amount = adjustment.amount_micros;
            plan.record = Some((
                record(
                    &adjustment.record_id,
                    RecordKind::Adjust,
                    (amount, 0, amount),
                )?,
                None,
            ));
        }
        Kind::RechargeOrderCreated(created) => {
            plan.order = created.order.as_ref().map(order_row).transpose()?;
        }
        Kind::RechargeOrderFailed(failed) => {
            plan.order = failed.order.as_ref().map(order_row).transpose()?;
        }
        Kind::FreeQuotaPlanSet(planned) => {
            // No money moves: the record shows the new monthly amount, and the snapshot (with
            // a next period granted in advance corrected) carries the rest.
            plan.record = Some((
                record(
                    &planned.record_id,
                    RecordKind::Plan,
                    (planned.monthly_free_micros, 0, 0),
                )?,
                None,
            ));
        }
        Kind::QuotaReserved(hold) => {
            let row = RecordRow {
                api_id: Some(hold.api_id.clone()),
                request_id: Some(hold.request_id.clone()),
                ..record(
                    &hold.record_id,
                    RecordKind::Hold,
                    (
                        hold.amount_micros,
                        hold.free_held_micros,
                        hold.balance_held_micros,
                    ),
                )?
            };
            plan.record = Some((row, None));
        }
        Kind::ReservationSettled(settled) => {
            // An ordinary charge: its record (the free quota's month that paid it) and its call
            // in the daily usage.
            let row = RecordRow {
                api_id: Some(settled.api_id.clone()),
                request_id: Some(settled.request_id.clone()),
                period: settled.free_period.clone(),
                ..record(
                    &settled.record_id,
                    RecordKind::Deduct,
                    (
                        settled.amount_micros,
                        settled.free_micros,
                        settled.balance_micros,
                    ),
                )?
            };
            let usage = UsageKey {
                day: occurred_at.with_timezone(&zone.tz()).date_naive(),
                api_id: settled.api_id.clone(),
            };
            plan.record = Some((row, Some(usage)));
        }
        Kind::ReservationReleased(released) => {
            let row = RecordRow {
                request_id: Some(released.request_id.clone()),
                ..record(
                    &released.record_id,
                    RecordKind::Release,
                    (
                        released.released_micros,
                        released.free_released_micros,
                        released.balance_released_micros,
                    ),
                )?
            };
            plan.record = Some((row, None));
        }
        Kind::ChargeRefunded(refund) => {
            // The whole refund, and the parts given back; daily usage keeps the charge as made.
            plan.record = Some((
                record(
                    &refund.record_id,
                    RecordKind::Refund,
                    (
                        refund.amount_micros,
                        refund.free_returned_micros,
                        refund.balance_returned_micros,
                    ),
                )?,
                None,
            ));
        }
        // Alerts change nothing: their snapshot repeats the change that raised them.
        Kind::PaymentUnmatched(_) | Kind::BalanceLow(_) | Kind::FreeQuotaExhausted(_) => {}
    }
    Ok(plan)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn account(version: i64) -> pb::AccountState {
        pb::AccountState {
            user_id: "u1".into(),
            currency: "CNY".into(),
            balance_micros: 500,
            period: "2026-11".into(),
            free_granted_micros: 1000,
            free_used_micros: 300,
            free_remaining_micros: 700,
            available_micros: 1200,
            version,
            monthly_free_micros: 1000,
            free_held_micros: 0,
            balance_held_micros: 0,
        }
    }

    fn event(kind: Kind) -> pb::BillingEvent {
        pb::BillingEvent {
            event_id: "e1".into(),
            user_id: "u1".into(),
            version: 4,
            // 2026-11-30 16:30 UTC is already 2026-12-01 in Shanghai.
            occurred_at_ms: 1_796_056_200_000,
            account: Some(account(4)),
            schema_version: 1,
            kind: Some(kind),
        }
    }

    #[test]
    fn a_charge_writes_its_record_its_usage_day_and_the_snapshot() {
        let e = event(Kind::QuotaDeducted(pb::QuotaDeducted {
            record_id: "r1".into(),
            request_id: "q1".into(),
            api_id: "api.x".into(),
            amount_micros: 30,
            free_micros: 20,
            balance_micros: 10,
        }));
        let plan = plan(&e, BillingZone::default()).unwrap();
        let (record, usage) = plan.record.unwrap();
        assert_eq!(
            (
                record.kind.as_str(),
                record.version,
                record.free_micros,
                record.balance_after_micros
            ),
            ("deduct", 4, 20, 500)
        );
        assert_eq!(record.free_remaining_after_micros, 700);
        assert_eq!(usage.unwrap().day.to_string(), "2026-12-01");
        assert_eq!(plan.snapshot.unwrap().version, 4);
    }

    #[test]
    fn a_paid_recharge_writes_its_record_and_moves_the_order() {
        let order = pb::RechargeOrder {
            order_no: "RO1".into(),
            user_id: "u1".into(),
            amount_micros: 100,
            status: pb::OrderStatus::Paid as i32,
            provider_txn_id: "t1".into(),
            created_at_ms: 1,
            paid_at_ms: 2,
            expires_at_ms: 3,
            ..Default::default()
        };
        let e = event(Kind::BalanceRecharged(pb::BalanceRecharged {
            record_id: "r2".into(),
            order_no: "RO1".into(),
            provider_txn_id: "t1".into(),
            amount_micros: 100,
            order: Some(order),
        }));
        let plan = plan(&e, BillingZone::default()).unwrap();
        assert_eq!(plan.record.unwrap().0.order_no.as_deref(), Some("RO1"));
        let order = plan.order.unwrap();
        assert_eq!(
            (order.status, order.provider_txn_id),
            (OrderStatus::Paid, Some("t1"))
        );
    }

    #[test]
    fn events_this_build_cannot_read_are_refused() {
        assert!(matches!(
            decode(b"\xff\xff\xff"),
            Err(Refused::Undecodable(_))
        ));
        let mut newer = event(Kind::PaymentUnmatched(Default::default()));
        newer.schema_version = 2;
        assert_eq!(
            decode(&newer.encode_to_vec()),
            Err(Refused::UnsupportedSchema(2))
        );
        let mut unknown = event(Kind::PaymentUnmatched(Default::default()));
        unknown.kind = None;
        assert_eq!(decode(&unknown.encode_to_vec()), Err(Refused::UnknownKind));
    }

    #[test]
    fn an_account_that_contradicts_its_event_is_refused() {
        let mut e = event(Kind::PaymentUnmatched(Default::default()));
        e.account = Some(account(5));
        assert!(matches!(
            plan(&e, BillingZone::default()),
            Err(Refused::Invalid(_))
        ));
    }
}
