//! From one event to the writes that project it: decided without I/O, so the mapping is tested
//! on its own. Events carry derived values (the account right after them), which keeps this
//! trivial.

use chrono::{DateTime, Utc};
use shared::{
    order::OrderStatus,
    period::BillingZone,
    pricing::Usage,
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

/// What of a message this build cannot project: why, and the event when it decoded.
#[derive(Debug)]
pub struct Unreadable {
    pub why: Refused,
    pub event: Option<Box<pb::BillingEvent>>,
}

/// The events of a message: one, or a batch's (`shared::bus::events_of`), each checked; a
/// message that does not decode is one refusal.
pub fn decode_message(
    headers: Option<&async_nats::HeaderMap>,
    payload: &[u8],
) -> Vec<Result<pb::BillingEvent, Unreadable>> {
    match shared::bus::events_of(headers, payload) {
        Ok(events) => events.into_iter().map(checked).collect(),
        Err(error) => vec![Err(Unreadable {
            why: Refused::Undecodable(error.to_string()),
            event: None,
        })],
    }
}

/// An event this build can project: its schema version and a kind it knows.
fn checked(event: pb::BillingEvent) -> Result<pb::BillingEvent, Unreadable> {
    let why = if event.schema_version != EVENT_SCHEMA_VERSION {
        Refused::UnsupportedSchema(event.schema_version)
    } else if event.kind.is_none() {
        Refused::UnknownKind
    } else {
        return Ok(event);
    };
    Err(Unreadable {
        why,
        event: Some(Box::new(event)),
    })
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
    let kind = event.kind.as_ref().ok_or(Refused::UnknownKind)?;
    Ok(Plan {
        snapshot: snapshot_row(event, occurred_at)?,
        record: record_of(event, kind, occurred_at, zone)?,
        order: order_of(kind).map(order_row).transpose()?,
    })
}

/// The account right after the event, which every event carries (but an unmatched payment's).
fn snapshot_row(
    event: &pb::BillingEvent,
    occurred_at: DateTime<Utc>,
) -> Result<Option<SnapshotRow<'_>>, Refused> {
    let Some(account) = event.account.as_ref() else {
        return Ok(None);
    };
    if account.user_id != event.user_id || account.version != event.version {
        return Err(Refused::Invalid(
            "the account does not match the event".into(),
        ));
    }
    Ok(Some(SnapshotRow {
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
    }))
}

/// The order an event carries as it is now, if any.
fn order_of(kind: &Kind) -> Option<&pb::RechargeOrder> {
    match kind {
        Kind::BalanceRecharged(recharge) => recharge.order.as_ref(),
        Kind::RechargeOrderCreated(created) => created.order.as_ref(),
        Kind::RechargeOrderFailed(failed) => failed.order.as_ref(),
        _ => None,
    }
}

/// What a record of the history shows of its event: the row's kind and amounts (the change,
/// its free part, its balance part) and its references.
struct Shown<'e> {
    record_id: &'e str,
    kind: RecordKind,
    amounts: (i64, i64, i64),
    api_id: Option<&'e str>,
    request_id: Option<&'e str>,
    order_no: Option<&'e str>,
    /// The month shown when it is not the account's (a grant's, a late settle's free part's).
    period: Option<&'e str>,
    /// A charge: counted in the daily usage of its API.
    is_call: bool,
    /// A priced change: its usage, and the list and version that priced it.
    priced: Option<(&'e [pb::Usage], &'e str, i64)>,
}

impl<'e> Shown<'e> {
    fn new(record_id: &'e str, kind: RecordKind, amounts: (i64, i64, i64)) -> Shown<'e> {
        Shown {
            record_id,
            kind,
            amounts,
            api_id: None,
            request_id: None,
            order_no: None,
            period: None,
            is_call: false,
            priced: None,
        }
    }

    /// Priced by `list` version `version` from `usage` (none: an amount's).
    fn priced(self, usage: &'e [pb::Usage], list: &'e str, version: i64) -> Shown<'e> {
        Shown {
            priced: (!usage.is_empty()).then_some((usage, list, version)),
            ..self
        }
    }

    /// A call: its API and request, counted in the daily usage.
    fn call(self, api_id: &'e str, request_id: &'e str) -> Shown<'e> {
        Shown {
            api_id: Some(api_id),
            request_id: Some(request_id),
            is_call: true,
            ..self
        }
    }
}

/// What the record of an event shows; `None` for the events that are no change of the
/// account's history (orders opened or failed, alerts, unmatched payments).
fn shown(kind: &Kind) -> Option<Shown<'_>> {
    use RecordKind as K;
    Some(match kind {
        Kind::QuotaDeducted(c) => {
            let amounts = (c.amount_micros, c.free_micros, c.balance_micros);
            Shown::new(&c.record_id, K::Deduct, amounts)
                .call(&c.api_id, &c.request_id)
                .priced(&c.usage, &c.price_list, c.price_version)
        }
        Kind::BalanceRecharged(r) => Shown {
            order_no: Some(&r.order_no),
            ..Shown::new(
                &r.record_id,
                K::Recharge,
                (r.amount_micros, 0, r.amount_micros),
            )
        },
        Kind::FreeQuotaGranted(g) => Shown {
            period: Some(&g.period),
            ..Shown::new(
                &g.record_id,
                K::FreeGrant,
                (g.amount_micros, g.amount_micros, 0),
            )
        },
        Kind::BalanceAdjusted(a) => Shown::new(
            &a.record_id,
            K::Adjust,
            (a.amount_micros, 0, a.amount_micros),
        ),
        // No money moves: the record shows the new monthly amount, and the snapshot (with a
        // next period granted in advance corrected) carries the rest.
        Kind::FreeQuotaPlanSet(p) => {
            Shown::new(&p.record_id, K::Plan, (p.monthly_free_micros, 0, 0))
        }
        Kind::QuotaReserved(h) => {
            let amounts = (h.amount_micros, h.free_held_micros, h.balance_held_micros);
            Shown {
                api_id: Some(&h.api_id),
                request_id: Some(&h.request_id),
                ..Shown::new(&h.record_id, K::Hold, amounts).priced(
                    &h.usage,
                    &h.price_list,
                    h.price_version,
                )
            }
        }
        // An ordinary charge: its record (in the month of the free quota that paid it) and its
        // call in the daily usage.
        Kind::ReservationSettled(s) => {
            let amounts = (s.amount_micros, s.free_micros, s.balance_micros);
            Shown {
                period: Some(&s.free_period),
                ..Shown::new(&s.record_id, K::Deduct, amounts)
                    .call(&s.api_id, &s.request_id)
                    .priced(&s.usage, &s.price_list, s.price_version)
            }
        }
        Kind::ReservationReleased(r) => {
            let amounts = (
                r.released_micros,
                r.free_released_micros,
                r.balance_released_micros,
            );
            Shown {
                request_id: Some(&r.request_id),
                ..Shown::new(&r.record_id, K::Release, amounts)
            }
        }
        // The whole refund, and the parts given back; daily usage keeps the charge as made.
        Kind::ChargeRefunded(r) => {
            let amounts = (
                r.amount_micros,
                r.free_returned_micros,
                r.balance_returned_micros,
            );
            Shown::new(&r.record_id, K::Refund, amounts)
        }
        // Alerts change nothing: their snapshot repeats the change that raised them.
        Kind::RechargeOrderCreated(_)
        | Kind::RechargeOrderFailed(_)
        | Kind::PaymentUnmatched(_)
        | Kind::BalanceLow(_)
        | Kind::FreeQuotaExhausted(_)
        | Kind::PriceListPublished(_)
        | Kind::PriceListAssigned(_)
        | Kind::SpendLimitsSet(_)
        | Kind::SpendLimitReached(_) => return None,
    })
}

/// The record of a change of the account's history, with the daily usage a call counts to.
fn record_of(
    event: &pb::BillingEvent,
    kind: &Kind,
    occurred_at: DateTime<Utc>,
    zone: BillingZone,
) -> Result<Option<(RecordRow, Option<UsageKey>)>, Refused> {
    let Some(shown) = shown(kind) else {
        return Ok(None);
    };
    let account = event
        .account
        .as_ref()
        .ok_or_else(|| Refused::Invalid("a record event without its account".into()))?;
    let (amount, free, balance) = shown.amounts;
    let usage_units = shown
        .priced
        .map(|(usage, _, _)| {
            Usage::parse(
                "usage",
                usage.iter().map(|u| (u.meter.as_str(), u.quantity)),
            )
            .map(|usage| usage.to_json())
            .map_err(|violation| Refused::Invalid(violation.to_string()))
        })
        .transpose()?;
    let row = RecordRow {
        record_id: shown.record_id.to_owned(),
        user_id: event.user_id.clone(),
        version: event.version,
        kind: shown.kind.as_str().to_owned(),
        amount_micros: amount,
        free_micros: free,
        balance_micros: balance,
        balance_after_micros: account.balance_micros,
        free_remaining_after_micros: account.free_remaining_micros,
        api_id: shown.api_id.map(str::to_owned),
        request_id: shown.request_id.map(str::to_owned),
        order_no: shown.order_no.map(str::to_owned),
        period: shown.period.unwrap_or(&account.period).to_owned(),
        created_at: occurred_at,
        usage_units,
        price_list: shown.priced.map(|(_, list, _)| list.to_owned()),
        price_version: shown.priced.map(|(_, _, version)| version),
    };
    let usage = shown.is_call.then(|| UsageKey {
        day: occurred_at.with_timezone(&zone.tz()).date_naive(),
        api_id: shown.api_id.unwrap_or_default().to_owned(),
    });
    Ok(Some((row, usage)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message;

    /// A message holding one event, decoded and checked.
    fn decode_one(payload: &[u8]) -> Result<pb::BillingEvent, Refused> {
        let mut events = decode_message(None, payload);
        assert_eq!(events.len(), 1);
        events.pop().unwrap().map_err(|unreadable| unreadable.why)
    }

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
            ..Default::default()
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
            ..Default::default()
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
            decode_one(b"\xff\xff\xff"),
            Err(Refused::Undecodable(_))
        ));
        let mut newer = event(Kind::PaymentUnmatched(Default::default()));
        newer.schema_version = 2;
        assert_eq!(
            decode_one(&newer.encode_to_vec()),
            Err(Refused::UnsupportedSchema(2))
        );
        let mut unknown = event(Kind::PaymentUnmatched(Default::default()));
        unknown.kind = None;
        assert_eq!(
            decode_one(&unknown.encode_to_vec()),
            Err(Refused::UnknownKind)
        );
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
