//! `billing.v1.BillingCommandService`: the scope check, then the parse, then the command.

use shared::{
    config::Scope,
    proto::v1::{self as pb, billing_command_service_server::BillingCommandService},
};
use tonic::{Request, Response, Status};

use super::{auth::require, parse};
use crate::commands::{CallbackOutcome, Charged, Commands, LimitStatus, Published};

pub struct GrpcApi {
    commands: Commands,
}

impl GrpcApi {
    pub fn new(commands: Commands) -> Self {
        GrpcApi { commands }
    }

    /// A version as the contract shows it, in this deployment's currency.
    fn list_message(&self, list: &Published) -> pb::PriceList {
        list.message(&self.commands.rules().currency)
    }
}

/// A charge's answer, as `DeductQuota` and a settle give it.
fn charge_message(charged: Charged) -> pb::DeductQuotaResponse {
    let priced_by = charged.priced_by.as_ref();
    pb::DeductQuotaResponse {
        record_id: charged.record_id,
        free_deducted_micros: charged.split.free.get(),
        balance_deducted_micros: charged.split.balance.get(),
        account: Some(charged.account.message()),
        replayed: charged.replayed,
        amount_micros: charged.amount.get(),
        price_list: priced_by.map(|p| p.list.clone()).unwrap_or_default(),
        price_version: priced_by.map_or(0, |p| p.version),
    }
}

/// A limit and its counter in the current window, as the contract shows it.
fn limit_status_message(status: &LimitStatus) -> pb::SpendLimitStatus {
    let counter = &status.counter;
    pb::SpendLimitStatus {
        limit: Some(counter.limit.message()),
        spent_micros: counter.spent.get(),
        remaining_micros: counter.remaining().get(),
        window_start_ms: status.window_start.timestamp_millis(),
        resets_at_ms: status.resets_at.timestamp_millis(),
    }
}

fn outcome_message(outcome: CallbackOutcome) -> pb::CallbackOutcome {
    match outcome {
        CallbackOutcome::Credited => pb::CallbackOutcome::Credited,
        CallbackOutcome::Replayed => pb::CallbackOutcome::Replayed,
        CallbackOutcome::MarkedFailed => pb::CallbackOutcome::MarkedFailed,
        CallbackOutcome::Unmatched => pb::CallbackOutcome::Unmatched,
    }
}

#[tonic::async_trait]
impl BillingCommandService for GrpcApi {
    async fn check_quota(
        &self,
        request: Request<pb::CheckQuotaRequest>,
    ) -> Result<Response<pb::CheckQuotaResponse>, Status> {
        require(&request, &[Scope::Quota])?;
        let command = parse::check_quota(request.get_ref())?;
        let checked = self.commands.check_quota(&command).await?;
        Ok(Response::new(pb::CheckQuotaResponse {
            allowed: checked.allowed,
            account: Some(checked.account.message()),
        }))
    }

    async fn deduct_quota(
        &self,
        request: Request<pb::DeductQuotaRequest>,
    ) -> Result<Response<pb::DeductQuotaResponse>, Status> {
        require(&request, &[Scope::Quota])?;
        let command = parse::deduct_quota(request.get_ref())?;
        let charged = self.commands.deduct_quota(&command).await?;
        Ok(Response::new(charge_message(charged)))
    }

    async fn get_account(
        &self,
        request: Request<pb::GetAccountRequest>,
    ) -> Result<Response<pb::GetAccountResponse>, Status> {
        require(&request, &[Scope::Quota, Scope::Orders])?;
        let user_id = parse::user_id(&request.get_ref().user_id)?;
        let account = self.commands.get_account(&user_id).await?;
        Ok(Response::new(pb::GetAccountResponse {
            account: Some(account.message()),
        }))
    }

    async fn create_recharge_order(
        &self,
        request: Request<pb::CreateRechargeOrderRequest>,
    ) -> Result<Response<pb::CreateRechargeOrderResponse>, Status> {
        require(&request, &[Scope::Orders])?;
        let command = parse::create_recharge_order(request.get_ref())?;
        let created = self.commands.create_recharge_order(&command).await?;
        Ok(Response::new(pb::CreateRechargeOrderResponse {
            order: Some(created.order.message()),
            replayed: created.replayed,
        }))
    }

    async fn get_recharge_order(
        &self,
        request: Request<pb::GetRechargeOrderRequest>,
    ) -> Result<Response<pb::GetRechargeOrderResponse>, Status> {
        require(&request, &[Scope::Orders])?;
        let query = parse::get_recharge_order(request.get_ref())?;
        let order = self.commands.get_recharge_order(&query).await?;
        Ok(Response::new(pb::GetRechargeOrderResponse {
            order: Some(order.message()),
        }))
    }

    async fn recharge_callback(
        &self,
        request: Request<pb::RechargeCallbackRequest>,
    ) -> Result<Response<pb::RechargeCallbackResponse>, Status> {
        require(&request, &[Scope::Payment])?;
        let body = request.get_ref();
        let callback = parse::recharge_callback(
            &body.order_no,
            &body.provider_txn_id,
            body.paid_amount_micros,
            body.success,
        )?;
        let result = self.commands.recharge_callback(&callback).await?;
        Ok(Response::new(pb::RechargeCallbackResponse {
            order: result.order.as_ref().map(|order| order.message()),
            account: result.account.as_ref().map(|account| account.message()),
            replayed: result.replayed,
            outcome: outcome_message(result.outcome) as i32,
            unmatched_id: result.unmatched_id.unwrap_or_default(),
        }))
    }

    async fn adjust_balance(
        &self,
        request: Request<pb::AdjustBalanceRequest>,
    ) -> Result<Response<pb::AdjustBalanceResponse>, Status> {
        require(&request, &[Scope::Admin])?;
        let command = parse::adjust_balance(request.get_ref())?;
        let adjusted = self.commands.adjust_balance(&command).await?;
        Ok(Response::new(pb::AdjustBalanceResponse {
            record_id: adjusted.record_id,
            account: Some(adjusted.account.message()),
            replayed: adjusted.replayed,
        }))
    }

    async fn set_free_quota_plan(
        &self,
        request: Request<pb::SetFreeQuotaPlanRequest>,
    ) -> Result<Response<pb::SetFreeQuotaPlanResponse>, Status> {
        require(&request, &[Scope::Admin])?;
        let command = parse::set_free_quota_plan(request.get_ref())?;
        let planned = self.commands.set_free_quota_plan(&command).await?;
        Ok(Response::new(pb::SetFreeQuotaPlanResponse {
            account: Some(planned.account.message()),
            next_period_free_micros: planned.next_period_free.get(),
        }))
    }

    async fn refund_charge(
        &self,
        request: Request<pb::RefundChargeRequest>,
    ) -> Result<Response<pb::RefundChargeResponse>, Status> {
        require(&request, &[Scope::Admin])?;
        let command = parse::refund_charge(request.get_ref())?;
        let refunded = self.commands.refund_charge(&command).await?;
        Ok(Response::new(pb::RefundChargeResponse {
            record_id: refunded.record_id,
            free_returned_micros: refunded.split.free.get(),
            balance_returned_micros: refunded.split.balance.get(),
            account: Some(refunded.account.message()),
            replayed: refunded.replayed,
            free_forfeited_micros: refunded.split.forfeited.get(),
        }))
    }

    async fn set_alert_settings(
        &self,
        request: Request<pb::SetAlertSettingsRequest>,
    ) -> Result<Response<pb::SetAlertSettingsResponse>, Status> {
        require(&request, &[Scope::Orders, Scope::Admin])?;
        let command = parse::set_alert_settings(request.get_ref())?;
        let saved = self.commands.set_alert_settings(&command).await?;
        Ok(Response::new(pb::SetAlertSettingsResponse {
            low_balance_threshold_micros: saved.low_balance_threshold.get(),
            webhook_url: saved.webhook_url.unwrap_or_default(),
            signing_secret: saved.new_signing_secret.unwrap_or_default(),
        }))
    }

    async fn get_alert_settings(
        &self,
        request: Request<pb::GetAlertSettingsRequest>,
    ) -> Result<Response<pb::GetAlertSettingsResponse>, Status> {
        require(&request, &[Scope::Orders, Scope::Admin])?;
        let user_id = parse::get_alert_settings(request.get_ref())?;
        let shown = self.commands.get_alert_settings(&user_id).await?;
        Ok(Response::new(pb::GetAlertSettingsResponse {
            low_balance_threshold_micros: shown.low_balance_threshold.get(),
            webhook_url: shown.webhook_url.unwrap_or_default(),
            signing_secret_set: shown.signing_secret_set,
            threshold_set: shown.threshold_set,
        }))
    }

    async fn reserve_quota(
        &self,
        request: Request<pb::ReserveQuotaRequest>,
    ) -> Result<Response<pb::ReserveQuotaResponse>, Status> {
        require(&request, &[Scope::Quota])?;
        let command = parse::reserve_quota(request.get_ref())?;
        let reserved = self.commands.reserve_quota(&command).await?;
        Ok(Response::new(pb::ReserveQuotaResponse {
            reservation_id: reserved.reservation_id,
            free_held_micros: reserved.hold.free.get(),
            balance_held_micros: reserved.hold.balance.get(),
            expires_at_ms: reserved.expires_at.timestamp_millis(),
            account: Some(reserved.account.message()),
            replayed: reserved.replayed,
        }))
    }

    async fn settle_reservation(
        &self,
        request: Request<pb::SettleReservationRequest>,
    ) -> Result<Response<pb::SettleReservationResponse>, Status> {
        require(&request, &[Scope::Quota])?;
        let command = parse::settle_reservation(request.get_ref())?;
        let settled = self.commands.settle_reservation(&command).await?;
        Ok(Response::new(pb::SettleReservationResponse {
            released_micros: settled.released.get(),
            replayed: settled.replayed,
            after_expiry: settled.after_expiry,
            charge: Some(charge_message(Charged {
                record_id: settled.record_id,
                amount: settled.amount,
                priced_by: settled.priced_by,
                split: settled.split,
                account: settled.account,
                replayed: settled.replayed,
            })),
        }))
    }

    async fn release_reservation(
        &self,
        request: Request<pb::ReleaseReservationRequest>,
    ) -> Result<Response<pb::ReleaseReservationResponse>, Status> {
        require(&request, &[Scope::Quota])?;
        let command = parse::release_reservation(request.get_ref())?;
        let released = self.commands.release_reservation(&command).await?;
        Ok(Response::new(pb::ReleaseReservationResponse {
            released_micros: released.released.get(),
            account: Some(released.account.message()),
            replayed: released.replayed,
        }))
    }

    async fn publish_price_list(
        &self,
        request: Request<pb::PublishPriceListRequest>,
    ) -> Result<Response<pb::PublishPriceListResponse>, Status> {
        require(&request, &[Scope::Admin])?;
        let command = parse::publish_price_list(request.get_ref(), self.commands.now())?;
        let published = self.commands.publish_price_list(&command).await?;
        Ok(Response::new(pb::PublishPriceListResponse {
            list: Some(self.list_message(&published.list)),
            replayed: published.replayed,
        }))
    }

    async fn assign_price_list(
        &self,
        request: Request<pb::AssignPriceListRequest>,
    ) -> Result<Response<pb::AssignPriceListResponse>, Status> {
        require(&request, &[Scope::Admin])?;
        let command = parse::assign_price_list(request.get_ref())?;
        let assigned = self.commands.assign_price_list(&command).await?;
        Ok(Response::new(pb::AssignPriceListResponse {
            name: assigned.name,
            account: Some(assigned.account.message()),
        }))
    }

    async fn get_price_list(
        &self,
        request: Request<pb::GetPriceListRequest>,
    ) -> Result<Response<pb::GetPriceListResponse>, Status> {
        require(&request, &[Scope::Quota, Scope::Orders])?;
        let query = parse::get_price_list(request.get_ref())?;
        let shown = self.commands.get_price_list(&query).await?;
        Ok(Response::new(pb::GetPriceListResponse {
            current: shown.current.as_deref().map(|list| self.list_message(list)),
            scheduled: shown
                .scheduled
                .iter()
                .map(|list| self.list_message(list))
                .collect(),
        }))
    }

    async fn set_spend_limits(
        &self,
        request: Request<pb::SetSpendLimitsRequest>,
    ) -> Result<Response<pb::SetSpendLimitsResponse>, Status> {
        require(&request, &[Scope::Orders])?;
        let command = parse::set_spend_limits(request.get_ref())?;
        let set = self.commands.set_spend_limits(&command).await?;
        Ok(Response::new(pb::SetSpendLimitsResponse {
            limits: set.limits.iter().map(limit_status_message).collect(),
            replayed: set.replayed,
        }))
    }

    async fn get_spend_limits(
        &self,
        request: Request<pb::GetSpendLimitsRequest>,
    ) -> Result<Response<pb::GetSpendLimitsResponse>, Status> {
        require(&request, &[Scope::Quota, Scope::Orders])?;
        let user_id = parse::user_id(&request.get_ref().user_id)?;
        let limits = self.commands.spend_limits(&user_id).await?;
        Ok(Response::new(pb::GetSpendLimitsResponse {
            limits: limits.iter().map(limit_status_message).collect(),
        }))
    }
}
