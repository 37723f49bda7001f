//! Quota checks, charges and account reads: the gateway's hot path.

use shared::{
    account::{AccountSnapshot, Split},
    ids::UserId,
    limits::Spend,
    money::Micros,
    pricing::PricedBy,
    proto::v1::{self as pb, QuotaDeducted, billing_event::Kind},
};

use super::{
    CommandError, Commands,
    changes::Change,
    prices::{self, Priced},
};
use crate::{
    domain::{Asked, CheckQuota, DeductQuota},
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
    /// What was charged: the amount asked, or the usage's priced amount.
    pub amount: Micros,
    /// The usage and the version that priced it, for a priced charge.
    pub priced_by: Option<PricedBy>,
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
        let terms = row.as_ref().map(store::AccountRow::terms);
        Ok(self.rules.present(user_id, terms, snapshot.as_ref(), now))
    }

    /// Would this charge be allowed now? From memory, Redis or MySQL, nearest first
    /// (`snapshots`); a usage is priced as a charge now would be. Neither memory nor Redis ever
    /// decides a charge: only this answer.
    pub async fn check_quota(&self, command: &CheckQuota) -> Result<Checked, CommandError> {
        let account = self.account_to_check(&command.user_id).await?;
        let book = self.book_for(command.asked.usage().is_some()).await?;
        let now = self.now();
        let list = &account.price_list;
        let priced = prices::price(book.as_deref(), list, &command.api_id, &command.asked, now)?;
        let spend = Spend::new(
            command.api_id.as_str(),
            command.key_id.as_str(),
            priced.amount,
            now,
        );
        let within_limits = self.fits_limits(&command.user_id, spend).await?.is_ok();
        Ok(Checked {
            allowed: within_limits && priced.amount <= account.view.available,
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
            amount: Micros::new(record.amount_micros),
            priced_by: record.priced_by(),
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
        && record.api_id.as_deref().unwrap_or("") == command.api_id.as_str()
        && asks_as_recorded(record, &command.asked)
}

/// Whether `record` charged what `asked` asks for: the same amount, or the same usage (as a set
/// of meter to quantity), whatever prices were published since.
pub(super) fn asks_as_recorded(record: &LedgerRow, asked: &Asked) -> bool {
    match (asked, record.priced_by()) {
        (Asked::Amount(amount), None) => record.amount_micros == amount.get(),
        (Asked::Usage(usage), Some(priced_by)) => priced_by.usage == *usage,
        _ => false,
    }
}

/// The ledger row and event of an applied charge.
pub(super) fn charge_change(
    command: &DeductQuota,
    priced: &Priced,
    record_id: String,
    split: Split,
    after: AccountSnapshot,
) -> Change {
    let event = deducted(command, priced, &record_id, split);
    Change {
        record_id,
        kind: RecordKind::Deduct,
        after,
        amounts: Amounts::of(priced.amount, split.free, split.balance),
        refs: Refs {
            request_id: Some(command.request_id.to_string()),
            api_id: Some(command.api_id.to_string()),
            description: Some(command.description.to_string()),
            priced_by: priced.by.clone(),
            key_id: Some(command.key_id.to_string()).filter(|key| !key.is_empty()),
            ..Refs::default()
        },
        event,
    }
}

/// The event of an applied charge.
fn deducted(command: &DeductQuota, priced: &Priced, record_id: &str, split: Split) -> Kind {
    let (usage, price_list, price_version) = priced_fields(priced.by.as_ref());
    Kind::QuotaDeducted(QuotaDeducted {
        record_id: record_id.to_owned(),
        request_id: command.request_id.to_string(),
        api_id: command.api_id.to_string(),
        amount_micros: priced.amount.get(),
        free_micros: split.free.get(),
        balance_micros: split.balance.get(),
        usage,
        price_list,
        price_version,
        key_id: command.key_id.to_string(),
    })
}

/// What the messages of a priced change carry: the usage, the list and the version (empty and 0
/// for an amount).
pub fn priced_fields(priced_by: Option<&PricedBy>) -> (Vec<pb::Usage>, String, i64) {
    let Some(priced_by) = priced_by else {
        return (Vec::new(), String::new(), 0);
    };
    let usage = priced_by
        .usage
        .lines()
        .iter()
        .map(|(meter, quantity)| pb::Usage {
            meter: meter.as_str().to_owned(),
            quantity: *quantity,
        })
        .collect();
    (usage, priced_by.list.clone(), priced_by.version)
}
