//! Refunds of charges, partial or whole, by operators.

use shared::{
    account::{AccountSnapshot, RefundSplit},
    ids::{RequestId, UserId},
    limits::Spend,
    money::Micros,
    proto::v1::{ChargeRefunded, billing_event::Kind},
};

use super::{CommandError, Commands, account_tx::AccountTx, changes::Change};
use crate::{
    domain::RefundCharge,
    events::{self, AccountOut},
    store::{self, Amounts, LedgerRow, NewRefund, RecordKind, Refs, StoreError, Tx},
};

/// The charge a refund under `request_id` refers to: the charge made under it, or the charge
/// that settled the reservation made under it (whose ledger row carries no request id: the
/// hold's row holds the key). Nothing for a hold still held, released or expired.
async fn charge_to_refund(
    tx: &mut Tx,
    user_id: &UserId,
    request_id: &RequestId,
) -> Result<Option<LedgerRow>, StoreError> {
    let Some(record) = store::find_charge(tx, user_id, request_id).await? else {
        return Ok(None);
    };
    if record.kind == RecordKind::Deduct {
        return Ok(Some(record));
    }
    if record.kind != RecordKind::Hold {
        return Ok(None);
    }
    let settle = store::lock_reservation(tx, user_id, request_id)
        .await?
        .and_then(|reservation| reservation.settle);
    let Some(settle) = settle else {
        return Ok(None);
    };
    Ok(store::find_record(tx, user_id, &settle.record_id)
        .await?
        .filter(|record| record.kind == RecordKind::Deduct))
}

#[derive(Clone, Debug)]
pub struct Refunded {
    pub record_id: String,
    pub split: RefundSplit,
    pub account: AccountOut,
    pub replayed: bool,
}

impl Commands {
    /// Refunds part or all of the charge under `(user_id, request_id)`: the balance part
    /// first, then the free part, returned to the free quota only while the account is still
    /// in the charge's period (forfeited after it, and reported). A charge's refunds never
    /// exceed it, part by part. Applies once per `(user_id, refund_id)`.
    pub async fn refund_charge(&self, command: &RefundCharge) -> Result<Refunded, CommandError> {
        self.store.retrying(|| self.refund_once(command)).await
    }

    async fn refund_once(&self, command: &RefundCharge) -> Result<Refunded, CommandError> {
        let now = self.now();
        let user_id = &command.user_id;
        let mut account = AccountTx::lock(&self.store, &self.rules, user_id, now).await?;
        if !account.exists() {
            account.rollback().await?;
            return Err(CommandError::ChargeNotFound);
        }
        let charge = charge_to_refund(account.tx(), user_id, &command.request_id).await?;

        if let Some(earlier) =
            store::find_refund(account.tx(), user_id, command.refund_id.as_str()).await?
        {
            let same = earlier.amount_micros == command.amount.get()
                && charge
                    .as_ref()
                    .is_some_and(|charge| charge.record_id == earlier.charge_record_id);
            // A refund row always has its ledger row: the two are written together.
            let record = store::find_record(account.tx(), user_id, &earlier.record_id)
                .await?
                .ok_or_else(|| StoreError::internal(sqlx::Error::RowNotFound))?;
            let shown = account.end_in_replay(&record).await?;
            if !same {
                return Err(CommandError::KeyReused { key: "refund_id" });
            }
            return Ok(Refunded {
                record_id: earlier.record_id,
                split: RefundSplit {
                    balance: Micros::new(earlier.balance_micros),
                    free: Micros::new(earlier.free_micros),
                    forfeited: Micros::new(earlier.free_forfeited_micros),
                },
                account: shown,
                replayed: true,
            });
        }

        let Some(charge) = charge else {
            account.rollback().await?;
            return Err(CommandError::ChargeNotFound);
        };
        let left = store::refundable(account.tx(), &charge).await?;
        let charge_period = store::parse_period(&charge.period)?;
        account.open_period();
        let (split, after) = match account.state().refund(command.amount, left, charge_period) {
            Ok(refunded) => refunded,
            Err(refusal) => {
                account.rollback().await?;
                return Err(refusal.into());
            }
        };

        let record_id = events::new_id();
        let refund = NewRefund {
            record_id: &record_id,
            user_id,
            refund_id: command.refund_id.as_str(),
            charge_record_id: &charge.record_id,
            amount: command.amount,
            split,
            reason: command.reason.as_str(),
        };
        store::insert_refund(account.tx(), &refund, now).await?;
        let spent_at = charge_spent_at(account.tx(), &charge).await?;
        let (api_id, key_id) = (charge.api_id.as_deref(), charge.key_id.as_deref());
        let spend = Spend::new(
            api_id.unwrap_or(""),
            key_id.unwrap_or(""),
            command.amount,
            spent_at,
        );
        account.give_back_spend(spend);
        account.append(refund_change(command, &refund, after));
        let account = self.commit(account).await?;
        Ok(Refunded {
            record_id,
            split,
            account,
            replayed: false,
        })
    }
}

/// When `charge` spent under the account's limits: its own instant, or, for the settle of a
/// reservation settled before its expiry, the instant the reservation was taken.
async fn charge_spent_at(
    tx: &mut store::Tx,
    charge: &store::LedgerRow,
) -> Result<chrono::DateTime<chrono::Utc>, StoreError> {
    let taken = store::settled_reservation_taken_at(tx, &charge.user_id, &charge.record_id).await?;
    Ok(taken.unwrap_or(charge.created_at))
}

/// The ledger row and event of a refund.
fn refund_change(command: &RefundCharge, refund: &NewRefund<'_>, after: AccountSnapshot) -> Change {
    let split = refund.split;
    let event = Kind::ChargeRefunded(ChargeRefunded {
        record_id: refund.record_id.to_owned(),
        refund_id: command.refund_id.to_string(),
        request_id: command.request_id.to_string(),
        charge_record_id: refund.charge_record_id.to_owned(),
        amount_micros: command.amount.get(),
        balance_returned_micros: split.balance.get(),
        free_returned_micros: split.free.get(),
        free_forfeited_micros: split.forfeited.get(),
        reason: command.reason.to_string(),
    });
    Change {
        record_id: refund.record_id.to_owned(),
        kind: RecordKind::Refund,
        after,
        amounts: Amounts::of(command.amount, split.free, split.balance),
        refs: Refs {
            reason: Some(command.reason.to_string()),
            ..Refs::default()
        },
        event,
    }
}
