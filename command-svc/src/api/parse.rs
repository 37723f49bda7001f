//! Requests from the wire into validated commands. Every field is checked, every violation is
//! reported at once, and nothing reaches a handler unless all of it is valid.

use chrono::{DateTime, Utc};
use shared::{
    ids::{
        Actor, AdjustmentId, ApiId, Channel, Description, FieldViolation, IdempotencyKey, KeyId,
        OrderNo, ProviderTxnId, PublishId, Reason, RefundId, RequestId, SetId, UserId, Violations,
        WebhookUrl,
    },
    limits::{self, SpendLimit},
    money::{self, MAX_AMOUNT, Micros},
    pricing::{ListName, Meter, UnitPrice, Usage},
    proto::v1 as pb,
};

use crate::{
    commands::CommandError,
    domain::{
        AdjustBalance, Asked, AssignPriceList, CheckQuota, CreateRechargeOrder, DeductQuota,
        GetPriceList, GetRechargeOrder, ListOf, PublishPriceList, RechargeCallback, RefundCharge,
        ReleaseReservation, ReserveQuota, SetAlertSettings, SetFreeQuotaPlan, SetSpendLimits,
        SettleReservation,
    },
};

fn amount(field: &'static str, raw: i64) -> Result<Micros, FieldViolation> {
    money::parse_amount(raw).map_err(|e| FieldViolation::new(field, e.to_string()))
}

/// Exactly one of an amount (`amount_field`) and a usage: what a charge, a check, a hold or a
/// settle asks for.
fn asked(
    amount_field: &'static str,
    raw_amount: i64,
    usage: &[pb::Usage],
) -> Result<Asked, FieldViolation> {
    if usage.is_empty() {
        return amount(amount_field, raw_amount).map(Asked::Amount);
    }
    if raw_amount != 0 {
        return Err(FieldViolation::new(
            amount_field,
            format!("give exactly one of {amount_field} and usage"),
        ));
    }
    Usage::parse(
        "usage",
        usage.iter().map(|u| (u.meter.as_str(), u.quantity)),
    )
    .map(Asked::Usage)
}

/// [`asked`] of a request that names its API: a usage is priced by the API's prices, so it
/// needs one.
fn asked_of_api(
    raw_amount: i64,
    usage: &[pb::Usage],
    api_id: &str,
) -> Result<Asked, FieldViolation> {
    let asked = asked("amount_micros", raw_amount, usage)?;
    if asked.usage().is_some() && api_id.is_empty() {
        return Err(FieldViolation::new(
            "api_id",
            "a usage needs the api_id it was used by",
        ));
    }
    Ok(asked)
}

/// Collects the parsed fields; fails with every violation when any field was refused.
macro_rules! parse_all {
    ($violations:ident => $build:expr) => {{
        let result = (|| Some($build))();
        match ($violations.finish(), result) {
            (Ok(()), Some(command)) => Ok(command),
            (Err(violations), _) => Err(CommandError::Invalid(violations)),
            (Ok(()), None) => unreachable!("a missing field always records a violation"),
        }
    }};
}

pub fn user_id(raw: &str) -> Result<UserId, CommandError> {
    UserId::parse("user_id", raw).map_err(|v| CommandError::Invalid(vec![v]))
}

pub fn check_quota(request: &pb::CheckQuotaRequest) -> Result<CheckQuota, CommandError> {
    let mut v = Violations::new();
    let user_id = v.take(UserId::parse("user_id", &request.user_id));
    let api_id = v.take(ApiId::parse("api_id", &request.api_id));
    let asked = v.take(asked_of_api(
        request.amount_micros,
        &request.usage,
        &request.api_id,
    ));
    let key_id = v.take(KeyId::parse("key_id", &request.key_id));
    parse_all!(v => CheckQuota { user_id: user_id?, api_id: api_id?, asked: asked?, key_id: key_id? })
}

pub fn deduct_quota(request: &pb::DeductQuotaRequest) -> Result<DeductQuota, CommandError> {
    let mut v = Violations::new();
    let user_id = v.take(UserId::parse("user_id", &request.user_id));
    let asked = v.take(asked_of_api(
        request.amount_micros,
        &request.usage,
        &request.api_id,
    ));
    let request_id = v.take(RequestId::parse("request_id", &request.request_id));
    let api_id = v.take(ApiId::parse("api_id", &request.api_id));
    let description = v.take(Description::parse("description", &request.description));
    let key_id = v.take(KeyId::parse("key_id", &request.key_id));
    parse_all!(v => DeductQuota {
        user_id: user_id?,
        asked: asked?,
        request_id: request_id?,
        api_id: api_id?,
        description: description?,
        key_id: key_id?,
    })
}

pub fn create_recharge_order(
    request: &pb::CreateRechargeOrderRequest,
) -> Result<CreateRechargeOrder, CommandError> {
    let mut v = Violations::new();
    let user_id = v.take(UserId::parse("user_id", &request.user_id));
    let amount = v.take(amount("amount_micros", request.amount_micros));
    let channel = v.take(Channel::parse("channel", &request.channel));
    let key = v.take(IdempotencyKey::parse(
        "idempotency_key",
        &request.idempotency_key,
    ));
    parse_all!(v => CreateRechargeOrder {
        user_id: user_id?,
        amount: amount?,
        channel: channel?,
        idempotency_key: key.filter(|key| !key.as_str().is_empty()),
    })
}

pub fn get_recharge_order(
    request: &pb::GetRechargeOrderRequest,
) -> Result<GetRechargeOrder, CommandError> {
    let mut v = Violations::new();
    let user_id = v.take(UserId::parse("user_id", &request.user_id));
    let order_no = v.take(OrderNo::parse("order_no", &request.order_no));
    parse_all!(v => GetRechargeOrder { user_id: user_id?, order_no: order_no? })
}

/// A success must carry the paid amount; a failure may carry 0.
pub fn recharge_callback(
    order_no: &str,
    provider_txn_id: &str,
    paid_amount_micros: i64,
    success: bool,
) -> Result<RechargeCallback, CommandError> {
    let mut v = Violations::new();
    let order_no = v.take(OrderNo::parse("order_no", order_no));
    let provider_txn_id = v.take(ProviderTxnId::parse("provider_txn_id", provider_txn_id));
    // An authentic success is money that arrived, whatever amount it names: one outside the
    // contract's range is kept as it is and becomes an unmatched payment, never a refusal that
    // the provider would retry forever (invariant 7). A failure may carry 0.
    let paid = if success {
        Some(Micros::new(paid_amount_micros))
    } else if paid_amount_micros != 0 {
        v.take(amount("paid_amount_micros", paid_amount_micros))
    } else {
        Some(Micros::ZERO)
    };
    parse_all!(v => RechargeCallback {
        order_no: order_no?,
        provider_txn_id: provider_txn_id?,
        paid_amount: paid?,
        success,
    })
}

pub fn adjust_balance(request: &pb::AdjustBalanceRequest) -> Result<AdjustBalance, CommandError> {
    let mut v = Violations::new();
    let user_id = v.take(UserId::parse("user_id", &request.user_id));
    let adjustment_id = v.take(AdjustmentId::parse("adjustment_id", &request.adjustment_id));
    let amount = v.take(
        money::parse_signed_amount(request.amount_micros).map_err(|_| {
            FieldViolation::new(
                "amount_micros",
                format!(
                    "must be non-zero and at most {} micros either way",
                    MAX_AMOUNT.get()
                ),
            )
        }),
    );
    let reason = v.take(Reason::parse("reason", &request.reason));
    let actor = v.take(Actor::parse("actor", &request.actor));
    parse_all!(v => AdjustBalance {
        user_id: user_id?,
        adjustment_id: adjustment_id?,
        amount: amount?,
        reason: reason?,
        actor: actor?,
    })
}

/// The shortest and longest reservation a caller may ask for.
pub const MIN_TTL_MS: i64 = 1_000;
pub const MAX_TTL_MS: i64 = 3_600_000;

pub fn reserve_quota(request: &pb::ReserveQuotaRequest) -> Result<ReserveQuota, CommandError> {
    let mut v = Violations::new();
    let user_id = v.take(UserId::parse("user_id", &request.user_id));
    let request_id = v.take(RequestId::parse("request_id", &request.request_id));
    let asked = v.take(asked_of_api(
        request.amount_micros,
        &request.usage,
        &request.api_id,
    ));
    let api_id = v.take(ApiId::parse("api_id", &request.api_id));
    let ttl = v.take(match request.ttl_ms {
        0 => Ok(None),
        ms if (MIN_TTL_MS..=MAX_TTL_MS).contains(&ms) => {
            Ok(Some(std::time::Duration::from_millis(ms as u64)))
        }
        _ => Err(FieldViolation::new(
            "ttl_ms",
            format!("must be 0 (the default) or between {MIN_TTL_MS} and {MAX_TTL_MS}"),
        )),
    });
    let key_id = v.take(KeyId::parse("key_id", &request.key_id));
    parse_all!(v => ReserveQuota {
        user_id: user_id?,
        request_id: request_id?,
        asked: asked?,
        api_id: api_id?,
        ttl: ttl?,
        key_id: key_id?,
    })
}

pub fn settle_reservation(
    request: &pb::SettleReservationRequest,
) -> Result<SettleReservation, CommandError> {
    let mut v = Violations::new();
    let user_id = v.take(UserId::parse("user_id", &request.user_id));
    let request_id = v.take(RequestId::parse("request_id", &request.request_id));
    // A call that costs nothing is released, not settled; a usage is priced with the
    // reservation's API and version.
    let actual = v.take(asked(
        "actual_amount_micros",
        request.actual_amount_micros,
        &request.usage,
    ));
    parse_all!(v => SettleReservation {
        user_id: user_id?,
        request_id: request_id?,
        actual: actual?,
    })
}

pub fn release_reservation(
    request: &pb::ReleaseReservationRequest,
) -> Result<ReleaseReservation, CommandError> {
    let mut v = Violations::new();
    let user_id = v.take(UserId::parse("user_id", &request.user_id));
    let request_id = v.take(RequestId::parse("request_id", &request.request_id));
    parse_all!(v => ReleaseReservation {
        user_id: user_id?,
        request_id: request_id?,
    })
}

pub fn refund_charge(request: &pb::RefundChargeRequest) -> Result<RefundCharge, CommandError> {
    let mut v = Violations::new();
    let user_id = v.take(UserId::parse("user_id", &request.user_id));
    let refund_id = v.take(RefundId::parse("refund_id", &request.refund_id));
    let request_id = v.take(RequestId::parse("request_id", &request.request_id));
    let amount = v.take(amount("amount_micros", request.amount_micros));
    let reason = v.take(Reason::parse("reason", &request.reason));
    parse_all!(v => RefundCharge {
        user_id: user_id?,
        refund_id: refund_id?,
        request_id: request_id?,
        amount: amount?,
        reason: reason?,
    })
}

pub fn set_alert_settings(
    request: &pb::SetAlertSettingsRequest,
) -> Result<SetAlertSettings, CommandError> {
    let mut v = Violations::new();
    let user_id = v.take(UserId::parse("user_id", &request.user_id));
    // A field kept as stored is not read.
    let threshold = if request.keep_threshold {
        Some(Micros::ZERO)
    } else {
        v.take(
            money::parse_balance(request.low_balance_threshold_micros)
                .map_err(|e| FieldViolation::new("low_balance_threshold_micros", e.to_string())),
        )
    };
    let webhook_url = if request.keep_webhook_url {
        Some(None)
    } else {
        v.take(WebhookUrl::parse("webhook_url", &request.webhook_url))
    };
    parse_all!(v => SetAlertSettings {
        user_id: user_id?,
        low_balance_threshold: threshold?,
        webhook_url: webhook_url?,
        rotate_signing_secret: request.rotate_signing_secret,
        keep_webhook_url: request.keep_webhook_url,
        keep_threshold: request.keep_threshold,
    })
}

pub fn get_alert_settings(
    request: &pb::GetAlertSettingsRequest,
) -> Result<shared::ids::UserId, CommandError> {
    user_id(&request.user_id)
}

pub fn set_free_quota_plan(
    request: &pb::SetFreeQuotaPlanRequest,
) -> Result<SetFreeQuotaPlan, CommandError> {
    let mut v = Violations::new();
    let user_id = v.take(UserId::parse("user_id", &request.user_id));
    let monthly_free = v.take(
        money::parse_quota(request.monthly_free_micros)
            .map_err(|e| FieldViolation::new("monthly_free_micros", e.to_string())),
    );
    let actor = v.take(Actor::parse("actor", &request.actor));
    parse_all!(v => SetFreeQuotaPlan {
        user_id: user_id?,
        monthly_free: monthly_free?,
        actor: actor?,
    })
}

/// At most this many prices in one version of a list.
pub const MAX_PRICES: usize = 10_000;

/// How far in the past a publication's instant may lie (it is then taken for now).
pub const PUBLISH_SLACK: chrono::TimeDelta = chrono::TimeDelta::seconds(5);
/// How far ahead a version may be scheduled.
pub const MAX_SCHEDULE_AHEAD: chrono::TimeDelta = chrono::TimeDelta::days(366);

/// A publication, its instant checked against `now`.
pub fn publish_price_list(
    request: &pb::PublishPriceListRequest,
    now: DateTime<Utc>,
) -> Result<PublishPriceList, CommandError> {
    let mut v = Violations::new();
    let name = v.take(ListName::parse("name", &request.name));
    let effective_from = v.take(match request.effective_from_ms {
        0 => Ok(None),
        ms => DateTime::from_timestamp_millis(ms)
            .filter(|at| *at >= now - PUBLISH_SLACK && *at <= now + MAX_SCHEDULE_AHEAD)
            .map(Some)
            .ok_or_else(|| {
                FieldViolation::new(
                    "effective_from_ms",
                    "must be 0 (now) or an instant neither in the past (5 s of slack) nor more \
                     than 366 days ahead",
                )
            }),
    });
    let prices = v.take(prices(&request.prices));
    let publish_id = v.take(PublishId::parse("publish_id", &request.publish_id));
    let actor = v.take(Actor::parse("actor", &request.actor));
    parse_all!(v => PublishPriceList {
        name: name?,
        effective_from: effective_from?,
        prices: prices?,
        publish_id: publish_id?,
        actor: actor?,
    })
}

/// A version's prices: at most [`MAX_PRICES`], each in range, one per (API, meter); in (API,
/// meter) order.
fn prices(prices: &[pb::Price]) -> Result<Vec<(ApiId, Meter, UnitPrice)>, FieldViolation> {
    let refused =
        |index: usize, why: &str| FieldViolation::new("prices", format!("prices[{index}]: {why}"));
    if prices.len() > MAX_PRICES {
        return Err(FieldViolation::new(
            "prices",
            format!("at most {MAX_PRICES} prices"),
        ));
    }
    let mut parsed = std::collections::BTreeMap::new();
    for (index, price) in prices.iter().enumerate() {
        let api_id = ApiId::parse("api_id", &price.api_id)
            .map_err(|violation| refused(index, &format!("api_id {}", violation.description)))?;
        let meter = Meter::parse(&price.meter)
            .ok_or_else(|| refused(index, "meter must be 1..32 of [a-z0-9_]"))?;
        let unit = UnitPrice::new(price.price_micros, price.per_units)
            .map_err(|error| refused(index, &error.to_string()))?;
        if parsed.insert((api_id, meter), unit).is_some() {
            return Err(refused(
                index,
                "a second price for the same api_id and meter",
            ));
        }
    }
    Ok(parsed
        .into_iter()
        .map(|((api_id, meter), unit)| (api_id, meter, unit))
        .collect())
}

pub fn assign_price_list(
    request: &pb::AssignPriceListRequest,
) -> Result<AssignPriceList, CommandError> {
    let mut v = Violations::new();
    let user_id = v.take(UserId::parse("user_id", &request.user_id));
    let name = v.take(match request.name.as_str() {
        "" => Ok(None),
        name => ListName::parse("name", name).map(Some),
    });
    let actor = v.take(Actor::parse("actor", &request.actor));
    parse_all!(v => AssignPriceList { user_id: user_id?, name: name?, actor: actor? })
}

pub fn get_price_list(request: &pb::GetPriceListRequest) -> Result<GetPriceList, CommandError> {
    let mut v = Violations::new();
    let list_of = v.take(match (request.user_id.as_str(), request.name.as_str()) {
        (user_id, "") if !user_id.is_empty() => UserId::parse("user_id", user_id).map(ListOf::User),
        ("", name) if !name.is_empty() => ListName::parse("name", name).map(ListOf::Named),
        _ => Err(FieldViolation::new(
            "user_id",
            "give exactly one of user_id and name",
        )),
    });
    let at = v.take(match request.at_ms {
        0 => Ok(None),
        ms => DateTime::from_timestamp_millis(ms)
            .filter(|_| ms > 0)
            .map(Some)
            .ok_or_else(|| FieldViolation::new("at_ms", "must be 0 (now) or a positive instant")),
    });
    parse_all!(v => GetPriceList { list_of: list_of?, at: at? })
}

pub fn set_spend_limits(
    request: &pb::SetSpendLimitsRequest,
) -> Result<SetSpendLimits, CommandError> {
    let mut v = Violations::new();
    let user_id = v.take(UserId::parse("user_id", &request.user_id));
    let actor = v.take(Actor::parse("actor", &request.actor));
    let set_id = v.take(SetId::parse("set_id", &request.set_id));
    let mut each = Vec::with_capacity(request.limits.len());
    for limit in &request.limits {
        if let Some(limit) = v.take(SpendLimit::parse(
            &limit.scope,
            &limit.window,
            limit.limit_micros,
        )) {
            each.push(limit);
        }
    }
    let limits = v.take(limits::checked_set(each));
    parse_all!(v => SetSpendLimits {
        user_id: user_id?,
        limits: limits?,
        actor: actor?,
        set_id: Some(set_id?).filter(|id| !id.as_str().is_empty()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_bad_field_is_reported_at_once() {
        let request = pb::DeductQuotaRequest {
            user_id: "bad user".into(),
            amount_micros: 0,
            request_id: String::new(),
            api_id: "x".repeat(129),
            description: "fine".into(),
            ..Default::default()
        };
        let Err(CommandError::Invalid(violations)) = deduct_quota(&request) else {
            panic!("must be refused");
        };
        let fields: Vec<_> = violations.iter().map(|v| v.field).collect();
        assert_eq!(fields, ["user_id", "amount_micros", "request_id", "api_id"]);
    }

    #[test]
    fn a_failure_may_carry_zero_and_a_successs_amount_is_never_refused() {
        assert!(recharge_callback("RO1", "t1", 0, false).is_ok());
        assert!(recharge_callback("RO1", "t1", -5, false).is_err());
        assert!(recharge_callback("RO1", "t1", MAX_AMOUNT.get() + 1, false).is_err());
        // Money that arrived: kept as it is, to be stored as an unmatched payment.
        for paid in [0, -5, MAX_AMOUNT.get() + 1] {
            let callback = recharge_callback("RO1", "t1", paid, true).unwrap();
            assert_eq!(callback.paid_amount.get(), paid);
        }
    }

    #[test]
    fn adjustments_are_signed_but_never_zero() {
        let request = |amount| pb::AdjustBalanceRequest {
            user_id: "u".into(),
            adjustment_id: "a".into(),
            amount_micros: amount,
            reason: "goodwill".into(),
            actor: "ops@example.com".into(),
        };
        assert!(adjust_balance(&request(-5)).is_ok());
        assert!(adjust_balance(&request(0)).is_err());
        assert!(adjust_balance(&request(MAX_AMOUNT.get() + 1)).is_err());
    }
}
