//! When a change of an account deserves an alert to its developer: the balance falling to or
//! below their threshold, or the month's free quota running out. Each is raised once per
//! crossing: by the change that crosses, never by the ones after it, until the account is back
//! above and crosses again.

use crate::{account::AccountSnapshot, money::Micros};

/// An alert a change raised.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Alert {
    /// The balance went from above `threshold` to at or below it.
    BalanceLow { balance: Micros, threshold: Micros },
    /// The period's free quota went from some left to none left.
    FreeQuotaExhausted,
}

/// The alerts of the change from `before` to `after`, with the account's balance threshold.
/// A change that opens a new period compares with the new period's grant, so a charge that
/// uses up a fresh month's quota at once raises the alert too.
pub fn raised(before: &AccountSnapshot, after: &AccountSnapshot, threshold: Micros) -> Vec<Alert> {
    let mut alerts = Vec::new();
    if before.balance > threshold && after.balance <= threshold {
        alerts.push(Alert::BalanceLow {
            balance: after.balance,
            threshold,
        });
    }
    let had_free = if after.period > before.period || before.version == 0 {
        after.free_granted > Micros::ZERO
    } else {
        before.free_remaining() > Micros::ZERO
    };
    if had_free && after.free_remaining() == Micros::ZERO {
        alerts.push(Alert::FreeQuotaExhausted);
    }
    alerts
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn state(balance: i64, granted: i64, used: i64, period: &str) -> AccountSnapshot {
        AccountSnapshot {
            balance: Micros::new(balance),
            period: period.parse().unwrap(),
            free_granted: Micros::new(granted),
            free_used: Micros::new(used),
            free_held: Micros::ZERO,
            balance_held: Micros::ZERO,
            monthly_free: Micros::new(granted),
            version: 3,
        }
    }

    #[test]
    fn the_crossing_change_raises_the_alert_and_the_changes_after_it_do_not() {
        let t = Micros::new(100);
        let above = state(150, 10, 5, "2026-11");
        let at = state(100, 10, 5, "2026-11");
        let below = state(40, 10, 5, "2026-11");
        assert_eq!(
            raised(&above, &at, t),
            vec![Alert::BalanceLow {
                balance: Micros::new(100),
                threshold: t
            }]
        );
        assert_eq!(
            raised(&at, &below, t),
            vec![],
            "already below: no new alert"
        );
        assert_eq!(
            raised(&below, &above, t),
            vec![],
            "a recharge raises nothing"
        );
        assert_eq!(raised(&above, &below, t).len(), 1, "but the next fall does");
    }

    #[test]
    fn free_quota_exhausted_once_per_period() {
        let t = Micros::ZERO;
        let some_left = state(0, 10, 7, "2026-11");
        let none_left = state(0, 10, 10, "2026-11");
        assert_eq!(
            raised(&some_left, &none_left, t),
            vec![Alert::FreeQuotaExhausted]
        );
        assert_eq!(raised(&none_left, &none_left, t), vec![]);
        // A new month's quota used up by the change that opens it.
        let december = state(0, 10, 10, "2026-12");
        assert_eq!(
            raised(&none_left, &december, t),
            vec![Alert::FreeQuotaExhausted]
        );
        // A month that grants nothing has nothing to exhaust.
        let nothing = state(0, 0, 0, "2026-12");
        assert_eq!(raised(&none_left, &nothing, t), vec![]);
    }

    proptest! {
        /// Along any sequence of balances, alerts are raised exactly at the downward crossings.
        #[test]
        fn one_alert_per_downward_crossing(balances in prop::collection::vec(0_i64..300, 1..40)) {
            let t = Micros::new(100);
            let mut before = state(200, 0, 0, "2026-11");
            let (mut alerts, mut crossings) = (0, 0);
            for balance in balances {
                let after = state(balance, 0, 0, "2026-11");
                if before.balance.get() > 100 && balance <= 100 {
                    crossings += 1;
                }
                alerts += raised(&before, &after, t)
                    .iter()
                    .filter(|a| matches!(a, Alert::BalanceLow { .. }))
                    .count();
                before = after;
            }
            prop_assert_eq!(alerts, crossings);
        }
    }
}
