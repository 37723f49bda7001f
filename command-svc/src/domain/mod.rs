//! The commands command-svc accepts, already validated, and the pure decisions it makes about
//! them. Money arithmetic itself lives in the `shared` crate; nothing here touches I/O.

pub mod payment;

use chrono::{DateTime, Utc};
use shared::{
    ids::{
        Actor, AdjustmentId, ApiId, Channel, Description, IdempotencyKey, KeyId, OrderNo,
        ProviderTxnId, PublishId, Reason, RefundId, RequestId, SetId, UserId, WebhookUrl,
    },
    money::Micros,
    pricing::{ListName, Meter, UnitPrice, Usage},
};

/// What a call is charged for: an amount, or what it used, which the account's price list
/// prices.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Asked {
    Amount(Micros),
    Usage(Usage),
}

impl Asked {
    pub fn usage(&self) -> Option<&Usage> {
        match self {
            Asked::Amount(_) => None,
            Asked::Usage(usage) => Some(usage),
        }
    }
}

/// May this call go ahead? Never writes.
#[derive(Clone, Debug)]
pub struct CheckQuota {
    pub user_id: UserId,
    pub api_id: ApiId,
    pub asked: Asked,
    pub key_id: KeyId,
}

/// Charge one API call, free quota first; idempotent by `(user_id, request_id)`.
#[derive(Clone, Debug)]
pub struct DeductQuota {
    pub user_id: UserId,
    pub asked: Asked,
    pub request_id: RequestId,
    pub api_id: ApiId,
    pub description: Description,
    pub key_id: KeyId,
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
    pub asked: Asked,
    pub api_id: ApiId,
    /// `None`: the configured default.
    pub ttl: Option<std::time::Duration>,
    pub key_id: KeyId,
}

/// Settle the reservation under `(user_id, request_id)` with the call's actual price.
#[derive(Clone, Debug)]
pub struct SettleReservation {
    pub user_id: UserId,
    pub request_id: RequestId,
    /// The call's actual price, or its usage priced by the reservation's version.
    pub actual: Asked,
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

/// A new version of the price list `name`, replacing the whole list from `effective_from` (`None`:
/// now); idempotent by `publish_id`.
#[derive(Clone, Debug)]
pub struct PublishPriceList {
    pub name: ListName,
    pub effective_from: Option<DateTime<Utc>>,
    /// One per (API, meter), in (API, meter) order.
    pub prices: Vec<(ApiId, Meter, UnitPrice)>,
    pub publish_id: PublishId,
    pub actor: Actor,
}

impl PublishPriceList {
    /// The digest of what the publication asks for, which a replay of its `publish_id` must
    /// repeat.
    pub fn content_digest(&self) -> String {
        let asked_from = self.effective_from.map_or(0, |at| at.timestamp_millis());
        let prices = self
            .prices
            .iter()
            .map(|(api_id, meter, price)| (api_id.as_str(), meter, *price));
        shared::pricing::publication_digest(&self.name, asked_from, prices)
    }
}

/// Price the account's usage with the list `name` (`None`: the default list) from now on.
#[derive(Clone, Debug)]
pub struct AssignPriceList {
    pub user_id: UserId,
    pub name: Option<ListName>,
    pub actor: Actor,
}

/// Whose price list to show.
#[derive(Clone, Debug)]
pub enum ListOf {
    User(UserId),
    Named(ListName),
}

/// A price list as in effect at `at` (`None`: now), with the versions scheduled after it.
#[derive(Clone, Debug)]
pub struct GetPriceList {
    pub list_of: ListOf,
    pub at: Option<DateTime<Utc>>,
}

/// Replace the user's whole set of spend limits; idempotent by `set_id` when one is given.
#[derive(Clone, Debug)]
pub struct SetSpendLimits {
    pub user_id: UserId,
    /// Checked as a set: at most 20, one per scope and window, in storage order.
    pub limits: Vec<shared::limits::SpendLimit>,
    pub actor: Actor,
    pub set_id: Option<SetId>,
}
