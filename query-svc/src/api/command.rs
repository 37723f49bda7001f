//! The gRPC client through which query-svc forwards recharge orders to command-svc, presenting
//! its `orders` caller token.
//!
//! The channel connects lazily (query-svc starts, and serves reads, while command-svc is away)
//! and reconnects by itself. Each call is bounded by [`CALL_TIMEOUT`], sent along as the gRPC
//! deadline too; a call that times out or cannot connect surfaces as a 503 whose outcome is
//! unknown (see [`super::error`]). Cloning is cheap: every clone shares the one channel.

use std::time::Duration;

use shared::{
    config::QuerySettings,
    ids::{OrderNo, UserId},
    proto::v1::{self as pb, billing_command_service_client::BillingCommandServiceClient},
};
use tonic::{
    Request, Status,
    metadata::{Ascii, MetadataValue},
    transport::{Channel, Endpoint},
};

/// How long a forwarded call may take, connection included.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(5);

/// How long establishing the connection may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

#[derive(Clone)]
pub struct CommandClient {
    channel: Channel,
    bearer: MetadataValue<Ascii>,
}

impl CommandClient {
    /// Fails only on a malformed endpoint or a token that cannot be a header value; nothing is
    /// connected yet. Must run inside the Tokio runtime.
    pub fn new(settings: &QuerySettings) -> anyhow::Result<Self> {
        let channel = Endpoint::from_shared(settings.command_endpoint.clone())?
            .connect_timeout(CONNECT_TIMEOUT)
            .timeout(CALL_TIMEOUT)
            .connect_lazy();
        let bearer = format!("Bearer {}", settings.command_token.expose())
            .parse()
            .map_err(|_| anyhow::anyhow!("query.command_token is not a valid header value"))?;
        Ok(CommandClient { channel, bearer })
    }

    fn request<T>(&self, message: T) -> Request<T> {
        let mut request = Request::new(message);
        request
            .metadata_mut()
            .insert("authorization", self.bearer.clone());
        request.set_timeout(CALL_TIMEOUT);
        // The REST request's trace continues on the command side.
        if let Some(traceparent) = shared::trace::current_traceparent()
            .and_then(|value| MetadataValue::<Ascii>::try_from(value).ok())
        {
            request
                .metadata_mut()
                .insert(shared::trace::TRACEPARENT, traceparent);
        }
        request
    }

    fn client(&self) -> BillingCommandServiceClient<Channel> {
        BillingCommandServiceClient::new(self.channel.clone())
    }

    /// Opens a recharge order for `user_id` (or returns the one its idempotency key made).
    pub async fn create_recharge_order(
        &self,
        request: pb::CreateRechargeOrderRequest,
    ) -> Result<pb::RechargeOrder, Status> {
        let reply = self
            .client()
            .create_recharge_order(self.request(request))
            .await?;
        reply
            .into_inner()
            .order
            .ok_or_else(|| Status::internal("CreateRechargeOrder answered without an order"))
    }

    /// The order `order_no` if it belongs to `user_id`; NOT_FOUND otherwise.
    pub async fn get_recharge_order(
        &self,
        user_id: &UserId,
        order_no: &OrderNo,
    ) -> Result<pb::RechargeOrder, Status> {
        let request = pb::GetRechargeOrderRequest {
            user_id: user_id.to_string(),
            order_no: order_no.to_string(),
        };
        let reply = self
            .client()
            .get_recharge_order(self.request(request))
            .await?;
        reply
            .into_inner()
            .order
            .ok_or_else(|| Status::internal("GetRechargeOrder answered without an order"))
    }

    /// `user_id`'s alert settings as they apply.
    pub async fn get_alert_settings(
        &self,
        user_id: &UserId,
    ) -> Result<pb::GetAlertSettingsResponse, Status> {
        let request = pb::GetAlertSettingsRequest {
            user_id: user_id.to_string(),
        };
        let reply = self
            .client()
            .get_alert_settings(self.request(request))
            .await?;
        Ok(reply.into_inner())
    }

    /// `user_id`'s price list: the version in effect now and the ones scheduled after it.
    pub async fn get_price_list(
        &self,
        user_id: &UserId,
    ) -> Result<pb::GetPriceListResponse, Status> {
        let request = pb::GetPriceListRequest {
            user_id: user_id.to_string(),
            ..Default::default()
        };
        let reply = self.client().get_price_list(self.request(request)).await?;
        Ok(reply.into_inner())
    }

    /// `user_id`'s account as command-svc holds it.
    pub async fn get_account(&self, user_id: &UserId) -> Result<pb::AccountState, Status> {
        let request = pb::GetAccountRequest {
            user_id: user_id.to_string(),
        };
        let reply = self.client().get_account(self.request(request)).await?;
        reply
            .into_inner()
            .account
            .ok_or_else(|| Status::internal("GetAccount answered without an account"))
    }

    /// Saves `user_id`'s alert settings.
    pub async fn set_alert_settings(
        &self,
        request: pb::SetAlertSettingsRequest,
    ) -> Result<pb::SetAlertSettingsResponse, Status> {
        let reply = self
            .client()
            .set_alert_settings(self.request(request))
            .await?;
        Ok(reply.into_inner())
    }

    /// `user_id`'s spend limits, each with what was spent in its current window.
    pub async fn get_spend_limits(
        &self,
        user_id: &UserId,
    ) -> Result<pb::GetSpendLimitsResponse, Status> {
        let request = pb::GetSpendLimitsRequest {
            user_id: user_id.to_string(),
        };
        let reply = self
            .client()
            .get_spend_limits(self.request(request))
            .await?;
        Ok(reply.into_inner())
    }

    /// Replaces `user_id`'s whole set of spend limits.
    pub async fn set_spend_limits(
        &self,
        request: pb::SetSpendLimitsRequest,
    ) -> Result<pb::SetSpendLimitsResponse, Status> {
        let reply = self
            .client()
            .set_spend_limits(self.request(request))
            .await?;
        Ok(reply.into_inner())
    }
}
