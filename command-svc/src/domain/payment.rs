//! What a payment notification does to an order, decided without I/O.
//!
//! Money that arrived is never refused (invariant 7): whatever cannot be applied becomes an
//! unmatched payment for operators rather than an error that would make the provider give up.

use shared::{account::AccountSnapshot, money::Micros};

pub use shared::order::OrderStatus;

/// Why a payment could not be applied to its order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Unmatched {
    UnknownOrder,
    AmountMismatch,
    /// A second provider transaction for an order that is already paid.
    AlreadyPaid,
    /// Crediting would take the balance past its limit.
    BalanceLimit,
    /// A failure notice for an order that was already paid: operators should look.
    FailureAfterPaid,
    /// A success whose amount is outside 1 ..= 10^12 micros: no order can match it.
    AmountOutOfRange,
    /// A success under a provider transaction that already credited another order (or another
    /// amount): not a replay, and not to be credited twice.
    ProviderTxnReused,
}

impl Unmatched {
    pub fn as_str(self) -> &'static str {
        match self {
            Unmatched::UnknownOrder => "unknown_order",
            Unmatched::AmountMismatch => "amount_mismatch",
            Unmatched::AlreadyPaid => "already_paid",
            Unmatched::BalanceLimit => "balance_limit",
            Unmatched::FailureAfterPaid => "failure_after_paid",
            Unmatched::AmountOutOfRange => "amount_out_of_range",
            Unmatched::ProviderTxnReused => "provider_txn_reused",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CallbackDecision {
    /// Credit the balance with the state after it; the order becomes PAID.
    Credit(AccountSnapshot),
    /// The order becomes FAILED; the balance is untouched.
    MarkFailed,
    /// Nothing changes: this was already decided.
    Replayed,
    Unmatched(Unmatched),
}

/// What is known of the order a notification names.
#[derive(Clone, Copy, Debug)]
pub struct OrderFacts<'a> {
    pub status: OrderStatus,
    pub amount: Micros,
    pub provider_txn_id: Option<&'a str>,
}

/// What is known of the notification itself.
#[derive(Clone, Copy, Debug)]
pub struct Notification<'a> {
    pub provider_txn_id: &'a str,
    pub paid_amount: Micros,
    pub success: bool,
    /// Its provider transaction already credited an order (another order, or another amount:
    /// the same order and amount is a replay, answered before any decision).
    pub txn_credited: bool,
}

/// Decides a notification that is not a replay of an earlier one (the same transaction for the
/// same order and amount). A success credits PENDING, FAILED and expired orders alike: the money
/// arrived.
pub fn decide_callback(
    order: Option<OrderFacts<'_>>,
    account: &AccountSnapshot,
    notification: Notification<'_>,
) -> CallbackDecision {
    let Notification {
        provider_txn_id,
        paid_amount,
        success,
        txn_credited,
    } = notification;
    if success && shared::money::parse_amount(paid_amount.get()).is_err() {
        return CallbackDecision::Unmatched(Unmatched::AmountOutOfRange);
    }
    if success && txn_credited {
        return CallbackDecision::Unmatched(Unmatched::ProviderTxnReused);
    }
    let Some(order) = order else {
        return CallbackDecision::Unmatched(Unmatched::UnknownOrder);
    };
    let same_txn = order.provider_txn_id == Some(provider_txn_id);
    match (success, order.status) {
        (true, OrderStatus::Paid) if same_txn => CallbackDecision::Replayed,
        (true, OrderStatus::Paid) => CallbackDecision::Unmatched(Unmatched::AlreadyPaid),
        (true, _) if paid_amount != order.amount => {
            CallbackDecision::Unmatched(Unmatched::AmountMismatch)
        }
        (true, _) => match account.credit(paid_amount) {
            Ok(after) => CallbackDecision::Credit(after),
            // A credit is refused only at the balance limit.
            Err(_) => CallbackDecision::Unmatched(Unmatched::BalanceLimit),
        },
        (false, OrderStatus::Pending) => CallbackDecision::MarkFailed,
        (false, OrderStatus::Failed) => CallbackDecision::Replayed,
        (false, OrderStatus::Paid) => CallbackDecision::Unmatched(Unmatched::FailureAfterPaid),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use shared::money::MAX_BALANCE;

    fn account(balance: i64) -> AccountSnapshot {
        AccountSnapshot {
            balance: Micros::new(balance),
            period: "2026-11".parse().unwrap(),
            free_granted: Micros::ZERO,
            free_used: Micros::ZERO,
            free_held: Micros::ZERO,
            balance_held: Micros::ZERO,
            monthly_free: Micros::ZERO,
            version: 3,
        }
    }

    fn order(status: OrderStatus, txn: Option<&str>) -> Option<OrderFacts<'_>> {
        Some(OrderFacts {
            status,
            amount: Micros::new(100),
            provider_txn_id: txn,
        })
    }

    const HUNDRED: Micros = Micros::new(100);

    fn note(provider_txn_id: &str, paid_amount: Micros, success: bool) -> Notification<'_> {
        Notification {
            provider_txn_id,
            paid_amount,
            success,
            txn_credited: false,
        }
    }

    #[test]
    fn a_transaction_that_credited_another_order_is_unmatched_not_credited_again() {
        let reused = Notification {
            txn_credited: true,
            ..note("t1", HUNDRED, true)
        };
        for status in [OrderStatus::Pending, OrderStatus::Failed, OrderStatus::Paid] {
            assert_eq!(
                decide_callback(order(status, None), &account(5), reused),
                CallbackDecision::Unmatched(Unmatched::ProviderTxnReused),
                "{status:?}"
            );
        }
    }

    #[test]
    fn a_success_for_an_amount_out_of_range_is_unmatched_whatever_the_order() {
        for paid in [0, -1, i64::MIN, 1_000_000_000_001, i64::MAX] {
            for order in [order(OrderStatus::Pending, None), None] {
                assert_eq!(
                    decide_callback(order, &account(5), note("t1", Micros::new(paid), true)),
                    CallbackDecision::Unmatched(Unmatched::AmountOutOfRange),
                    "{paid}"
                );
            }
        }
    }

    #[test]
    fn success_credits_pending_failed_and_expired_orders() {
        for status in [OrderStatus::Pending, OrderStatus::Failed] {
            match decide_callback(
                order(status, Some("t0")),
                &account(5),
                note("t1", HUNDRED, true),
            ) {
                CallbackDecision::Credit(after) => assert_eq!(after.balance, Micros::new(105)),
                other => panic!("{status:?}: {other:?}"),
            }
        }
    }

    #[test]
    fn what_cannot_be_applied_is_unmatched() {
        let a = account(0);
        assert_eq!(
            decide_callback(None, &a, note("t", HUNDRED, true)),
            CallbackDecision::Unmatched(Unmatched::UnknownOrder)
        );
        assert_eq!(
            decide_callback(
                order(OrderStatus::Pending, None),
                &a,
                note("t", Micros::new(99), true)
            ),
            CallbackDecision::Unmatched(Unmatched::AmountMismatch)
        );
        assert_eq!(
            decide_callback(
                order(OrderStatus::Paid, Some("t1")),
                &a,
                note("t2", HUNDRED, true)
            ),
            CallbackDecision::Unmatched(Unmatched::AlreadyPaid)
        );
        assert_eq!(
            decide_callback(
                order(OrderStatus::Pending, None),
                &account(MAX_BALANCE.get() - 99),
                note("t", HUNDRED, true)
            ),
            CallbackDecision::Unmatched(Unmatched::BalanceLimit)
        );
        assert_eq!(
            decide_callback(
                order(OrderStatus::Paid, Some("t1")),
                &a,
                note("t2", Micros::ZERO, false)
            ),
            CallbackDecision::Unmatched(Unmatched::FailureAfterPaid)
        );
    }

    #[test]
    fn failure_marks_only_a_pending_order() {
        let a = account(0);
        assert_eq!(
            decide_callback(
                order(OrderStatus::Pending, None),
                &a,
                note("t", Micros::ZERO, false)
            ),
            CallbackDecision::MarkFailed
        );
        assert_eq!(
            decide_callback(
                order(OrderStatus::Failed, Some("t")),
                &a,
                note("t", Micros::ZERO, false)
            ),
            CallbackDecision::Replayed
        );
    }

    #[test]
    fn the_paying_transaction_again_is_a_replay() {
        assert_eq!(
            decide_callback(
                order(OrderStatus::Paid, Some("t1")),
                &account(0),
                note("t1", HUNDRED, true)
            ),
            CallbackDecision::Replayed
        );
    }
}
