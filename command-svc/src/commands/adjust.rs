//! Operators' balance adjustments: signed, idempotent, never below zero or past the limit.

use shared::{
    money::Micros,
    proto::v1::{BalanceAdjusted, billing_event::Kind},
};

use super::{CommandError, Commands, account_tx::AccountTx, changes::Change};
use crate::{
    domain::AdjustBalance,
    events::{self, AccountOut},
    store::{self, Amounts, RecordKind, Refs},
};

#[derive(Clone, Debug)]
pub struct Adjusted {
    pub record_id: String,
    pub account: AccountOut,
    pub replayed: bool,
}

impl Commands {
    /// Applies once per `(user_id, adjustment_id)`. A debit takes balance only, never free quota.
    pub async fn adjust_balance(&self, command: &AdjustBalance) -> Result<Adjusted, CommandError> {
        self.store.retrying(|| self.adjust_once(command)).await
    }

    async fn adjust_once(&self, command: &AdjustBalance) -> Result<Adjusted, CommandError> {
        let now = self.now();
        let user_id = &command.user_id;
        let mut account = AccountTx::lock(&self.store, &self.rules, user_id, now).await?;

        if account.exists() {
            let earlier =
                store::find_adjustment(account.tx(), user_id, command.adjustment_id.as_str())
                    .await?;
            if let Some(record) = earlier {
                let same = record.amount_micros == command.amount.get();
                let account = account.end_in_replay(&record).await?;
                if !same {
                    return Err(CommandError::KeyReused {
                        key: "adjustment_id",
                    });
                }
                return Ok(Adjusted {
                    account,
                    record_id: record.record_id,
                    replayed: true,
                });
            }
        }

        account.open_period();
        let after = match account.state().adjust(command.amount) {
            Ok(after) => after,
            Err(refusal) => {
                account.rollback().await?;
                return Err(refusal.into());
            }
        };
        let record_id = events::new_id();
        let event = Kind::BalanceAdjusted(BalanceAdjusted {
            record_id: record_id.clone(),
            adjustment_id: command.adjustment_id.to_string(),
            amount_micros: command.amount.get(),
            reason: command.reason.to_string(),
            actor: command.actor.to_string(),
        });
        account.append(Change {
            record_id: record_id.clone(),
            kind: RecordKind::Adjust,
            after,
            amounts: Amounts::of(command.amount, Micros::ZERO, command.amount),
            refs: Refs {
                adjustment_id: Some(command.adjustment_id.to_string()),
                reason: Some(command.reason.to_string()),
                actor: Some(command.actor.to_string()),
                ..Refs::default()
            },
            event,
        });
        let account = self.commit(account).await?;
        Ok(Adjusted {
            record_id,
            account,
            replayed: false,
        })
    }
}
