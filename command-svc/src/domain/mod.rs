//! The commands command-svc accepts, already validated, and the pure decisions it makes about
//! them. Money arithmetic itself lives in the `shared` crate; nothing here touches I/O.

pub mod payment;

use shared::{
    ids::{
        Actor, AdjustmentId, ApiId, Channel, Description, IdempotencyKey, OrderNo, ProviderTxnId,
        Reason, RefundId, RequestId, UserId, WebhookUrl,
    },
    money::Micros,
};

/// May this call go ahead? Never writes.
#[derive(Clone, Debug)]
pub struct CheckQuota {
    pub user_id: UserId,
    pub amount: Micros,
}

/// Charge one API call, free quota first; idempotent by `(user_id, request_id)`.
#[derive(Clone, Debug)]
pub struct DeductQuota {
    pub user_id: UserId,
    pub amount: Micros,
    pub request_id: RequestId,
    pub api_id: ApiId,
    pub description: Description,
}

/// Open a recharge order; idempotent by `(user_id, idempotency_key)` when a key is given.
#[derive(Clone, Debug)]
pub struct CreateRechargeOrder {
    pub user_id: UserId,
    pub amount: Micros,
    pub channel: Channel,
    pub idempotency_key: Option<IdempotencyKey>,
}

#[derive(Clone, Debug)]
pub struct GetRechargeOrder {
    pub user_id: UserId,
    pub order_no: OrderNo,
}

/// The payment provider's word on an order; one provider transaction credits at most once.
#[derive(Clone, Debug)]
pub struct RechargeCallback {
    pub order_no: OrderNo,
    pub provider_txn_id: ProviderTxnId,
    /// Positive when `success`; a failure may carry 0.
    pub paid_amount: Micros,
    pub success: bool,
}

/// Hold `amount` for a call priced afterwards, for `ttl`; idempotent by `(user_id,
/// request_id)`, the charges' key space.
#[derive(Clone, Debug)]
pub struct ReserveQuota {
    pub user_id: UserId,
    pub request_id: RequestId,
    pub amount: Micros,
    pub api_id: ApiId,
    /// `None`: the configured default.
    pub ttl: Option<std::time::Duration>,
}

/// Settle the reservation under `(user_id, request_id)` with the call's actual price.
#[derive(Clone, Debug)]
pub struct SettleReservation {
    pub user_id: UserId,
    pub request_id: RequestId,
    pub actual: Micros,
}

/// Give the reservation under `(user_id, request_id)` back.
#[derive(Clone, Debug)]
pub struct ReleaseReservation {
    pub user_id: UserId,
    pub request_id: RequestId,
}

/// An operator's refund of (part of) the charge recorded under `(user_id, request_id)`;
/// idempotent by `(user_id, refund_id)`.
#[derive(Clone, Debug)]
pub struct RefundCharge {
    pub user_id: UserId,
    pub refund_id: RefundId,
    pub request_id: RequestId,
    pub amount: Micros,
    pub reason: Reason,
}

/// A developer's alert settings: their `balance_low` threshold and webhook (none when `None`).
#[derive(Clone, Debug)]
pub struct SetAlertSettings {
    pub user_id: UserId,
    pub low_balance_threshold: Micros,
    pub webhook_url: Option<WebhookUrl>,
    /// Replace the signing secret with a new one.
    pub rotate_signing_secret: bool,
    /// Keep the stored webhook (a partial update), whatever `webhook_url` says.
    pub keep_webhook_url: bool,
    /// Keep the stored threshold, whatever `low_balance_threshold` says.
    pub keep_threshold: bool,
}

/// An operator's new free quota for each period after the current one. Setting the plan an
/// account has is a no-op, so a retry applies once.
#[derive(Clone, Debug)]
pub struct SetFreeQuotaPlan {
    pub user_id: UserId,
    pub monthly_free: Micros,
    pub actor: Actor,
}

/// An operator's signed change of the balance; idempotent by `(user_id, adjustment_id)`.
#[derive(Clone, Debug)]
pub struct AdjustBalance {
    pub user_id: UserId,
    pub adjustment_id: AdjustmentId,
    pub amount: Micros,
    pub reason: Reason,
    pub actor: Actor,
}
