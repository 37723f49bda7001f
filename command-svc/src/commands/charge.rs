//! Quota checks, charges and account reads: the gateway's hot path.

use shared::{
    account::{AccountSnapshot, Split},
    ids::UserId,
    money::Micros,
    proto::v1::{QuotaDeducted, billing_event::Kind},
};

use super::{CommandError, Commands, changes::Change};
use crate::{
    domain::{CheckQuota, DeductQuota},
    events::AccountOut,
    store::{self, Amounts, LedgerRow, RecordKind, Refs},
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
    pub async fn get_account(&self, user_id: &UserId) -> Result<AccountOut, CommandError> {
        let row = store::load_account(self.store.pool(), user_id).await?;
        let now = self.now();
        let snapshot = row.as_ref().map(store::AccountRow::snapshot).transpose()?;
        let currency = row.as_ref().map(|row| row.currency.as_str());
        Ok(self
            .rules
            .present(user_id, currency, snapshot.as_ref(), now))
    }

    /// Would a charge of this amount be allowed now? From memory, Redis or MySQL, nearest first
    /// (`snapshots`). Neither memory nor Redis ever decides a charge: only this answer.
    pub async fn check_quota(&self, command: &CheckQuota) -> Result<Checked, CommandError> {
        let account = self.account_to_check(&command.user_id).await?;
        Ok(Checked {
            allowed: command.amount <= account.view.available,
            account,
        })
    }

    /// Charges once per `(user_id, request_id)`; a retry of a refused charge is decided afresh.
    /// With group commit off a charge is a batch of one, decided and written the same way.
    pub async fn deduct_quota(&self, command: &DeductQuota) -> Result<Charged, CommandError> {
        match &self.charges {
            Some(queue) => queue.charge(command.clone()).await,
            None => self.charge_alone(command.clone()).await,
        }
    }
}

impl Charged {
    /// The answer to a charge already recorded as `record`, shown as it was then.
    pub(super) fn replayed(record: &LedgerRow, account: AccountOut) -> Charged {
        Charged {
            record_id: record.record_id.clone(),
            split: Split {
                free: Micros::new(record.free_micros),
                balance: Micros::new(record.balance_micros),
            },
            account,
            replayed: true,
        }
    }
}

/// Whether `record`, found under the command's key, is the same charge (then the command is its
/// retry). A reservation's hold under the key is no charge to replay: the key is taken.
pub(super) fn is_same_charge(record: &LedgerRow, command: &DeductQuota) -> bool {
    record.kind == RecordKind::Deduct
        && record.amount_micros == command.amount.get()
        && record.api_id.as_deref().unwrap_or("") == command.api_id.as_str()
}

/// The ledger row and event of an applied charge.
pub(super) fn charge_change(
    command: &DeductQuota,
    record_id: String,
    split: Split,
    after: AccountSnapshot,
) -> Change {
    let event = deducted(command, &record_id, split);
    Change {
        record_id,
        kind: RecordKind::Deduct,
        after,
        amounts: Amounts::of(command.amount, split.free, split.balance),
        refs: Refs {
            request_id: Some(command.request_id.to_string()),
            api_id: Some(command.api_id.to_string()),
            description: Some(command.description.to_string()),
            ..Refs::default()
        },
        event,
    }
}

/// The event of an applied charge.
fn deducted(command: &DeductQuota, record_id: &str, split: Split) -> Kind {
    Kind::QuotaDeducted(QuotaDeducted {
        record_id: record_id.to_owned(),
        request_id: command.request_id.to_string(),
        api_id: command.api_id.to_string(),
        amount_micros: command.amount.get(),
        free_micros: split.free.get(),
        balance_micros: split.balance.get(),
    })
}
