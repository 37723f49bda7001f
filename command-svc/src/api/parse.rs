//! Requests from the wire into validated commands. Every field is checked, every violation is
//! reported at once, and nothing reaches a handler unless all of it is valid.

use shared::{
    ids::{
        Actor, AdjustmentId, ApiId, Channel, Description, FieldViolation, IdempotencyKey, OrderNo,
        ProviderTxnId, Reason, RefundId, RequestId, UserId, Violations, WebhookUrl,
    },
    money::{self, MAX_AMOUNT, Micros},
    proto::v1 as pb,
};

use crate::{
    commands::CommandError,
    domain::{
        AdjustBalance, CheckQuota, CreateRechargeOrder, DeductQuota, GetRechargeOrder,
        RechargeCallback, RefundCharge, ReleaseReservation, ReserveQuota, SetAlertSettings,
        SetFreeQuotaPlan, SettleReservation,
    },
};

fn amount(field: &'static str, raw: i64) -> Result<Micros, FieldViolation> {
    money::parse_amount(raw).map_err(|e| FieldViolation::new(field, e.to_string()))
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
    let amount = v.take(amount("amount_micros", request.amount_micros));
    parse_all!(v => CheckQuota { user_id: user_id?, amount: amount? })
}

pub fn deduct_quota(request: &pb::DeductQuotaRequest) -> Result<DeductQuota, CommandError> {
    let mut v = Violations::new();
    let user_id = v.take(UserId::parse("user_id", &request.user_id));
    let amount = v.take(amount("amount_micros", request.amount_micros));
    let request_id = v.take(RequestId::parse("request_id", &request.request_id));
    let api_id = v.take(ApiId::parse("api_id", &request.api_id));
    let description = v.take(Description::parse("description", &request.description));
    parse_all!(v => DeductQuota {
        user_id: user_id?,
        amount: amount?,
        request_id: request_id?,
        api_id: api_id?,
        description: description?,
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
    let amount = v.take(amount("amount_micros", request.amount_micros));
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
    parse_all!(v => ReserveQuota {
        user_id: user_id?,
        request_id: request_id?,
        amount: amount?,
        api_id: api_id?,
        ttl: ttl?,
    })
}

pub fn settle_reservation(
    request: &pb::SettleReservationRequest,
) -> Result<SettleReservation, CommandError> {
    let mut v = Violations::new();
    let user_id = v.take(UserId::parse("user_id", &request.user_id));
    let request_id = v.take(RequestId::parse("request_id", &request.request_id));
    // A call that costs nothing is released, not settled.
    let actual = v.take(amount("actual_amount_micros", request.actual_amount_micros));
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
