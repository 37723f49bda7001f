//! Quota checks, charges and account reads: the gateway's hot path.

use shared::{
    account::Split,
    money::Micros,
    proto::v1::{QuotaDeducted, billing_event::Kind},
};

use super::{CommandError, Commands, account_tx::AccountTx};
use crate::{
    domain::{CheckQuota, DeductQuota},
    events::{self, AccountOut},
    store::{self, RecordKind, Refs},
};

#[derive(Clone, Debug)]
pub struct Checked {
    pub allowed: bool,
    pub account: AccountOut,
}

#[derive(Clone, Debug)]
pub struct Charged {
    pub record_id: String,
    pub split: Split,
    pub account: AccountOut,
    pub replayed: bool,
}

impl Commands {
    /// The authoritative account view from MySQL; an account never written reads as fresh.
    /// Reads never write, not even the period's grant.
    pub async fn get_account(&self, user_id: &str) -> Result<AccountOut, CommandError> {
        let row = store::load_account(self.store.pool(), user_id).await?;
        let now = self.now();
        let snapshot = row.as_ref().map(store::AccountRow::snapshot).transpose()?;
        let currency = row.as_ref().map(|row| row.currency.as_str());
        Ok(self
            .rules
            .present(user_id, currency, snapshot.as_ref(), now))
    }

    /// The account from MySQL after a cache miss; its snapshot is then cached (version-guarded,
    /// so it never replaces a newer one written through by a charge meanwhile), and the next
    /// checks of the account are answered from Redis.
    async fn load_and_cache(&self, user_id: &str) -> Result<AccountOut, CommandError> {
        let row = store::load_account(self.store.pool(), user_id).await?;
        let Some(row) = row else {
            return Ok(self.rules.present(user_id, None, None, self.now()));
        };
        let snapshot = row.snapshot()?;
        let stored = self.rules.present_stored(user_id, &row.currency, &snapshot);
        self.write_through(std::slice::from_ref(&stored)).await;
        Ok(self
            .rules
            .present(user_id, Some(&row.currency), Some(&snapshot), self.now()))
    }

    /// Would a charge of this amount be allowed now? From the Redis snapshot when there is one,
    /// MySQL otherwise. Redis never decides a charge: only this answer.
    pub async fn check_quota(&self, command: &CheckQuota) -> Result<Checked, CommandError> {
        let account = match self.cached_account(command.user_id.as_str()).await {
            Some(account) => account,
            None => self.load_and_cache(command.user_id.as_str()).await?,
        };
        Ok(Checked {
            allowed: command.amount <= account.view.available,
            account,
        })
    }

    /// Charges once per `(user_id, request_id)`; a retry of a refused charge is decided afresh.
    pub async fn deduct_quota(&self, command: &DeductQuota) -> Result<Charged, CommandError> {
        match &self.charges {
            Some(queue) => queue.charge(command.clone()).await,
            None => {
                let result = self.store.retrying(|| self.deduct_once(command)).await;
                super::count_charges(std::slice::from_ref(&result));
                result
            }
        }
    }

    async fn deduct_once(&self, command: &DeductQuota) -> Result<Charged, CommandError> {
        let now = self.now();
        let user_id = command.user_id.as_str();
        let mut account = AccountTx::lock(&self.store, &self.rules, user_id, now).await?;

        if account.exists() {
            let earlier =
                store::find_charge(account.tx(), user_id, command.request_id.as_str()).await?;
            if let Some(record) = earlier {
                // A reservation's hold under this key is no charge to replay: the key is taken.
                let same = record.kind == RecordKind::Deduct.as_str()
                    && record.amount_micros == command.amount.get()
                    && record.api_id.as_deref().unwrap_or("") == command.api_id.as_str();
                let account = account.end_in_replay(&record).await?;
                if !same {
                    return Err(CommandError::KeyReused { key: "request_id" });
                }
                return Ok(Charged {
                    split: Split {
                        free: Micros::new(record.free_micros),
                        balance: Micros::new(record.balance_micros),
                    },
                    account,
                    record_id: record.record_id,
                    replayed: true,
                });
            }
        }

        account.open_period();
        let (split, after) = match account.state().charge(command.amount) {
            Ok(decided) => decided,
            Err(refusal) => {
                account.rollback().await?;
                return Err(refusal.into());
            }
        };
        let record_id = events::new_id();
        let event = deducted(command, &record_id, split);
        let refs = Refs {
            request_id: Some(command.request_id.as_str()),
            api_id: Some(command.api_id.as_str()),
            description: Some(command.description.as_str()),
            ..Refs::default()
        };
        account
            .append(
                &record_id,
                RecordKind::Deduct,
                after,
                (command.amount, split.free, split.balance),
                refs,
                event,
            )
            .await?;
        let account = self.commit(account).await?;
        Ok(Charged {
            record_id,
            split,
            account,
            replayed: false,
        })
    }
}

/// The event of an applied charge.
pub(super) fn deducted(command: &DeductQuota, record_id: &str, split: Split) -> Kind {
    Kind::QuotaDeducted(QuotaDeducted {
        record_id: record_id.to_owned(),
        request_id: command.request_id.to_string(),
        api_id: command.api_id.to_string(),
        amount_micros: command.amount.get(),
        free_micros: split.free.get(),
        balance_micros: split.balance.get(),
    })
}
