//! Recharge orders and the payment provider's notifications about them.

use chrono::{DateTime, Duration, Utc};
use shared::{
    ids::UserId,
    money::{MAX_BALANCE, Micros},
    proto::v1::{
        BalanceRecharged, PaymentUnmatched, RechargeOrderCreated, RechargeOrderFailed,
        billing_event::Kind,
    },
};

use super::{CommandError, Commands, account_tx::AccountTx, changes::Change};
use crate::{
    domain::{
        CreateRechargeOrder, GetRechargeOrder, RechargeCallback,
        payment::{
            CallbackDecision, Notification, OrderFacts, OrderStatus, Unmatched, decide_callback,
        },
    },
    events::{self, AccountOut, OrderOut},
    store::{self, Amounts, OrderRow, RecordKind, Refs, StoreError, UnmatchedRow},
};

#[derive(Clone, Debug)]
pub struct OrderCreated {
    pub order: OrderOut,
    pub replayed: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CallbackOutcome {
    Credited,
    Replayed,
    MarkedFailed,
    Unmatched,
}

impl CallbackOutcome {
    pub fn as_str(self) -> &'static str {
        match self {
            CallbackOutcome::Credited => "CREDITED",
            CallbackOutcome::Replayed => "REPLAYED",
            CallbackOutcome::MarkedFailed => "MARKED_FAILED",
            CallbackOutcome::Unmatched => "UNMATCHED",
        }
    }
}

#[derive(Clone, Debug)]
pub struct CallbackResult {
    pub outcome: CallbackOutcome,
    pub order: Option<OrderOut>,
    pub account: Option<AccountOut>,
    pub replayed: bool,
    pub unmatched_id: Option<String>,
}

impl Commands {
    /// Opens a PENDING order. With an idempotency key, the same key returns the same order.
    pub async fn create_recharge_order(
        &self,
        command: &CreateRechargeOrder,
    ) -> Result<OrderCreated, CommandError> {
        self.store
            .retrying(|| self.create_order_once(command))
            .await
    }

    async fn create_order_once(
        &self,
        command: &CreateRechargeOrder,
    ) -> Result<OrderCreated, CommandError> {
        let now = self.now();
        let user_id = &command.user_id;
        let mut account = AccountTx::lock(&self.store, &self.rules, user_id, now).await?;
        let key = command
            .idempotency_key
            .as_ref()
            .map(|key| key.as_str())
            .filter(|key| !key.is_empty());

        if let Some(key) = key
            && account.exists()
            && let Some(order) = store::find_order_by_key(account.tx(), user_id, key).await?
        {
            account.rollback().await?;
            if order.amount_micros != command.amount.get() {
                return Err(CommandError::KeyReused {
                    key: "idempotency_key",
                });
            }
            // The order as this call created it, whatever became of it since (GetRechargeOrder
            // tells that).
            return Ok(OrderCreated {
                order: OrderOut::as_created(order)?,
                replayed: true,
            });
        }

        let within_limit = account
            .state()
            .balance
            .checked_add(command.amount)
            .is_some_and(|balance| balance <= MAX_BALANCE);
        if !within_limit {
            account.rollback().await?;
            return Err(CommandError::BalanceLimit);
        }

        account.open_period();
        let ttl = Duration::from_std(self.rules.order_ttl).unwrap_or(Duration::MAX);
        let row = OrderRow {
            order_no: events::new_order_no(),
            user_id: user_id.to_owned(),
            amount_micros: command.amount.get(),
            channel: command.channel.to_string(),
            status: OrderStatus::Pending.as_str().to_owned(),
            idempotency_key: key.map(str::to_owned),
            provider_txn_id: None,
            created_at: now,
            expires_at: now.checked_add_signed(ttl).unwrap_or(now),
            paid_at: None,
        };
        store::insert_order(account.tx(), &row).await?;
        let order = OrderOut::new(row, now)?;
        account.publish(Kind::RechargeOrderCreated(RechargeOrderCreated {
            order: Some(order.message()),
        }));
        self.commit(account).await?;
        Ok(OrderCreated {
            order,
            replayed: false,
        })
    }

    /// A user's own order; another user's order is as unknown as a missing one.
    pub async fn get_recharge_order(
        &self,
        query: &GetRechargeOrder,
    ) -> Result<OrderOut, CommandError> {
        let row = store::find_order(self.store.pool(), query.order_no.as_str()).await?;
        match row {
            Some(row) if row.user_id == query.user_id => Ok(OrderOut::new(row, self.now())?),
            _ => Err(CommandError::OrderNotFound),
        }
    }

    /// Applies a payment notification. Never refused for a business reason: a payment that
    /// cannot be applied is stored as unmatched, and a repeated one is a replay.
    pub async fn recharge_callback(
        &self,
        callback: &RechargeCallback,
    ) -> Result<CallbackResult, CommandError> {
        let result = self.store.retrying(|| self.callback_once(callback)).await?;
        metrics::counter!("billing_payment_callbacks_total", "outcome" => result.outcome.as_str())
            .increment(1);
        match result.outcome {
            CallbackOutcome::Credited => metrics::counter!("billing_recharged_micros_total")
                .increment(callback.paid_amount.get().unsigned_abs()),
            CallbackOutcome::Unmatched => {
                metrics::counter!("billing_unmatched_payments_total").increment(1)
            }
            CallbackOutcome::Replayed | CallbackOutcome::MarkedFailed => {}
        }
        Ok(result)
    }

    async fn callback_once(
        &self,
        callback: &RechargeCallback,
    ) -> Result<CallbackResult, CommandError> {
        let now = self.now();
        let order_no = callback.order_no.as_str();
        let txn = callback.provider_txn_id.as_str();
        // Unlocked, only to learn whose account to lock first; re-read under the lock below.
        let Some(found) = store::find_order(self.store.pool(), order_no).await? else {
            return self.callback_without_order(callback).await;
        };

        let mut account = AccountTx::lock(&self.store, &self.rules, &found.user_id, now).await?;
        let order = store::lock_order(account.tx(), order_no)
            .await?
            .ok_or_else(|| {
                StoreError::internal(sqlx::Error::Protocol(format!("order {order_no} vanished")))
            })?;

        if let Some(replay) = self.replay_of(account.tx(), callback).await? {
            account.rollback().await?;
            return Ok(replay);
        }

        let facts = OrderFacts {
            status: order.status()?,
            amount: Micros::new(order.amount_micros),
            provider_txn_id: order.provider_txn_id.as_deref(),
        };
        let txn_credited = callback.success
            && store::find_credit_by_txn(&mut **account.tx(), txn)
                .await?
                .is_some();
        let notification = Notification {
            provider_txn_id: txn,
            paid_amount: callback.paid_amount,
            success: callback.success,
            txn_credited,
        };
        let decision = decide_callback(Some(facts), account.state(), notification);
        let mut unmatched_id = None;
        let outcome = match decision {
            CallbackDecision::Credit(_) => {
                self.credit_order(&mut account, callback).await?;
                CallbackOutcome::Credited
            }
            CallbackDecision::MarkFailed => {
                self.fail_order(&mut account, callback).await?;
                CallbackOutcome::MarkedFailed
            }
            CallbackDecision::Replayed => CallbackOutcome::Replayed,
            CallbackDecision::Unmatched(why) => {
                let mut row = unmatched_row(callback, Some(found.user_id.as_str()), why, now);
                row.account_version = Some(account.state().version);
                store::insert_unmatched(account.tx(), &row).await?;
                account.publish(unmatched_event(&row));
                unmatched_id = Some(row.unmatched_id);
                CallbackOutcome::Unmatched
            }
        };
        let account = self.commit(account).await?;
        let order = store::find_order(self.store.pool(), order_no).await?;
        Ok(CallbackResult {
            outcome,
            order: order.map(|row| OrderOut::new(row, now)).transpose()?,
            account: Some(account),
            replayed: outcome == CallbackOutcome::Replayed,
            unmatched_id,
        })
    }

    /// Marks the locked order paid and credits its amount: the `recharge` row and its event.
    async fn credit_order(
        &self,
        account: &mut AccountTx<'_>,
        callback: &RechargeCallback,
    ) -> Result<(), CommandError> {
        let now = self.now();
        let (order_no, txn) = (
            callback.order_no.as_str(),
            callback.provider_txn_id.as_str(),
        );
        account.open_period();
        let after = account.state().credit(callback.paid_amount)?;
        let paid = mark_order(account, callback, OrderStatus::Paid, now).await?;
        let record_id = events::new_id();
        let event = Kind::BalanceRecharged(BalanceRecharged {
            record_id: record_id.clone(),
            order_no: order_no.to_owned(),
            provider_txn_id: txn.to_owned(),
            amount_micros: callback.paid_amount.get(),
            order: Some(OrderOut::new(paid, now)?.message()),
        });
        account.append(Change {
            record_id,
            kind: RecordKind::Recharge,
            after,
            amounts: Amounts::of(callback.paid_amount, Micros::ZERO, callback.paid_amount),
            refs: Refs {
                order_no: Some(order_no.to_owned()),
                provider_txn_id: Some(txn.to_owned()),
                ..Refs::default()
            },
            event,
        });
        Ok(())
    }

    /// Marks the locked order failed, with its event; no money moves.
    async fn fail_order(
        &self,
        account: &mut AccountTx<'_>,
        callback: &RechargeCallback,
    ) -> Result<(), CommandError> {
        let now = self.now();
        let failed = mark_order(account, callback, OrderStatus::Failed, now).await?;
        let message = OrderOut::new(failed, now)?.message();
        account.publish(Kind::RechargeOrderFailed(RechargeOrderFailed {
            order: Some(message),
        }));
        Ok(())
    }

    /// A notification naming an order that does not exist: stored for operators, once.
    async fn callback_without_order(
        &self,
        callback: &RechargeCallback,
    ) -> Result<CallbackResult, CommandError> {
        let now = self.now();
        let mut tx = self.store.begin().await?;
        if let Some(replay) = self.replay_of(&mut tx, callback).await? {
            tx.rollback().await.map_err(StoreError::from)?;
            return Ok(replay);
        }
        let row = unmatched_row(callback, None, Unmatched::UnknownOrder, now);
        store::insert_unmatched(&mut tx, &row).await?;
        let event = events::event(None, "", unmatched_event(&row), now);
        let subject = self
            .rules
            .bus
            .event_subject(event.kind.as_ref().expect("set above"));
        let traceparent = shared::trace::current_traceparent();
        store::insert_event(&mut tx, &event, &subject, traceparent.as_deref(), now).await?;
        tx.commit().await.map_err(StoreError::from)?;
        self.store.outbox_written();
        Ok(CallbackResult {
            outcome: CallbackOutcome::Unmatched,
            order: None,
            account: None,
            replayed: false,
            unmatched_id: Some(row.unmatched_id),
        })
    }

    /// The earlier outcome of this very notification (the same provider transaction, outcome,
    /// order and amount), answered as it was recorded: the order and the account as the first
    /// answer showed them. The same transaction with another order or amount is no replay.
    async fn replay_of(
        &self,
        tx: &mut store::Tx,
        callback: &RechargeCallback,
    ) -> Result<Option<CallbackResult>, CommandError> {
        let txn = callback.provider_txn_id.as_str();
        let order_no = callback.order_no.as_str();
        if callback.success
            && let Some(credit) = store::find_credit_by_txn(&mut **tx, txn).await?
            && credit.order_no.as_deref() == Some(order_no)
            && credit.amount_micros == callback.paid_amount.get()
        {
            let order = store::find_order(&mut **tx, order_no).await?;
            let account = self
                .recorded_account(tx, &credit.user_id, credit.version)
                .await?;
            return Ok(Some(replayed(order, account, None, credit.created_at)?));
        }
        let key = store::UnmatchedKey {
            provider_txn_id: txn,
            success: callback.success,
            order_no,
            paid_amount_micros: callback.paid_amount.get(),
        };
        if let Some(unmatched) = store::find_unmatched(&mut **tx, &key).await? {
            let order = store::find_order(&mut **tx, &unmatched.order_no).await?;
            let account = match (&unmatched.user_id, unmatched.account_version) {
                (Some(user_id), Some(version)) => {
                    let user_id = UserId::stored(user_id.as_str());
                    self.recorded_account(tx, &user_id, version).await?
                }
                _ => None,
            };
            let at = unmatched.created_at;
            return Ok(Some(replayed(
                order,
                account,
                Some(unmatched.unmatched_id),
                at,
            )?));
        }
        Ok(None)
    }

    /// `user_id`'s account as it stood at `version`, from that version's ledger row (none for an
    /// account never written).
    async fn recorded_account(
        &self,
        tx: &mut store::Tx,
        user_id: &UserId,
        version: i64,
    ) -> Result<Option<AccountOut>, CommandError> {
        let Some(record) = store::find_record_at_version(tx, user_id, version).await? else {
            return Ok(None);
        };
        let stored = store::load_account(&mut **tx, user_id).await?;
        let (terms, monthly_free) = match &stored {
            Some(row) => (row.terms(), Micros::new(row.monthly_free_micros)),
            None => (self.rules.fresh_terms(), self.rules.default_monthly_free),
        };
        Ok(Some(self.rules.present_as_recorded(
            user_id,
            terms,
            &record,
            monthly_free,
        )?))
    }
}

/// The answer to a replayed notification: `REPLAYED`, with what was recorded; the order as it
/// was at `at` (its status then).
fn replayed(
    order: Option<OrderRow>,
    account: Option<AccountOut>,
    unmatched_id: Option<String>,
    at: DateTime<Utc>,
) -> Result<CallbackResult, CommandError> {
    Ok(CallbackResult {
        outcome: CallbackOutcome::Replayed,
        order: order.map(|row| OrderOut::new(row, at)).transpose()?,
        account,
        replayed: true,
        unmatched_id,
    })
}

fn unmatched_row(
    callback: &RechargeCallback,
    user_id: Option<&str>,
    why: Unmatched,
    now: DateTime<Utc>,
) -> UnmatchedRow {
    UnmatchedRow {
        unmatched_id: events::new_id(),
        order_no: callback.order_no.to_string(),
        user_id: user_id.map(str::to_owned),
        provider_txn_id: callback.provider_txn_id.to_string(),
        success: callback.success,
        paid_amount_micros: callback.paid_amount.get(),
        why: why.as_str().to_owned(),
        account_version: None,
        created_at: now,
    }
}

fn unmatched_event(row: &UnmatchedRow) -> Kind {
    Kind::PaymentUnmatched(PaymentUnmatched {
        unmatched_id: row.unmatched_id.clone(),
        order_no: row.order_no.clone(),
        provider_txn_id: row.provider_txn_id.clone(),
        paid_amount_micros: row.paid_amount_micros,
        why: row.why.clone(),
    })
}

/// Moves the locked order to `status` with the callback's transaction (paid at `now` when
/// paid), and reads it back as stored.
async fn mark_order(
    account: &mut AccountTx<'_>,
    callback: &RechargeCallback,
    status: OrderStatus,
    now: DateTime<Utc>,
) -> Result<store::OrderRow, StoreError> {
    let order_no = callback.order_no.as_str();
    let txn = callback.provider_txn_id.as_str();
    let paid_at = (status == OrderStatus::Paid).then_some(now);
    store::update_order_status(account.tx(), order_no, status, txn, paid_at, now).await?;
    let order = store::find_order(&mut **account.tx(), order_no).await?;
    Ok(order.expect("locked above"))
}
