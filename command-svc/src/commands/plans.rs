//! Per-user plans: the free quota each period grants an account, set by an operator.

use shared::{
    money::Micros,
    proto::v1::{FreeQuotaPlanSet, billing_event::Kind},
};

use super::{CommandError, Commands, account_tx::AccountTx, changes::Change};
use crate::{
    domain::SetFreeQuotaPlan,
    events::{self, AccountOut},
    store::{self, Amounts, RecordKind, Refs},
};

#[derive(Clone, Debug)]
pub struct PlanSet {
    pub account: AccountOut,
    /// What the next period grants: the new plan.
    pub next_period_free: shared::money::Micros,
}

impl Commands {
    /// Applies from the next period on; a next period granted in advance gets the new amount
    /// too (never less than it used). Setting the plan the account has writes nothing, so a
    /// retry applies once. Creates the account (with this period's grant) when it has none.
    pub async fn set_free_quota_plan(
        &self,
        command: &SetFreeQuotaPlan,
    ) -> Result<PlanSet, CommandError> {
        self.store.retrying(|| self.set_plan_once(command)).await
    }

    async fn set_plan_once(&self, command: &SetFreeQuotaPlan) -> Result<PlanSet, CommandError> {
        let now = self.now();
        let user_id = &command.user_id;
        let mut account = AccountTx::lock(&self.store, &self.rules, user_id, now).await?;
        account.open_period();
        let now_period = self.rules.zone.period_of(now);
        let before = *account.state();
        let Some(after) = before.set_plan(command.monthly_free, now_period) else {
            let account = self.commit(account).await?;
            return Ok(PlanSet {
                account,
                next_period_free: command.monthly_free,
            });
        };
        if after.free_granted != before.free_granted {
            store::regrant(
                account.tx(),
                user_id,
                after.period,
                after.free_granted.get(),
            )
            .await?;
        }
        let record_id = events::new_id();
        let event = Kind::FreeQuotaPlanSet(FreeQuotaPlanSet {
            record_id: record_id.clone(),
            monthly_free_micros: command.monthly_free.get(),
            previous_monthly_free_micros: before.monthly_free.get(),
            effective_period: now_period.next().to_string(),
            actor: command.actor.to_string(),
        });
        account.append(Change {
            record_id,
            kind: RecordKind::Plan,
            after,
            amounts: Amounts::of(command.monthly_free, Micros::ZERO, Micros::ZERO),
            refs: Refs {
                actor: Some(command.actor.to_string()),
                ..Refs::default()
            },
            event,
        });
        let account = self.commit(account).await?;
        Ok(PlanSet {
            account,
            next_period_free: command.monthly_free,
        })
    }
}
