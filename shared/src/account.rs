//! An account's money state and the only ways it may change.
//!
//! Deciding is pure: each transition takes a snapshot and returns the next one (or a refusal), so
//! the rules are tested here without a database, and the command side only stores what they say.
//! Every transition that changes the state adds one to the version.

use chrono::{DateTime, Utc};

use crate::{
    money::{MAX_BALANCE, Micros},
    period::{BillingZone, Period},
};

/// The stored state of one account. A row exists once a mutating command touched the account;
/// an account never written is [`AccountSnapshot::fresh`] with version 0.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AccountSnapshot {
    pub balance: Micros,
    /// The latest period this account was granted; it only moves forward.
    pub period: Period,
    pub free_granted: Micros,
    pub free_used: Micros,
    /// Free quota of `period` reserved by open holds: neither used nor available.
    pub free_held: Micros,
    /// Balance reserved by open holds: still on the balance, not available.
    pub balance_held: Micros,
    /// What each new period grants this account.
    pub monthly_free: Micros,
    pub version: i64,
}

/// How a charge was paid: free quota first, the rest from the balance.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Split {
    pub free: Micros,
    pub balance: Micros,
}

/// Refusals of a transition. Nothing changes when one is returned.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("free quota and balance cannot cover the amount")]
    InsufficientQuota,
    #[error("the balance would exceed its limit")]
    BalanceLimit,
    #[error("the refunds of a charge would exceed it")]
    RefundExceedsCharge,
    #[error("the actual amount exceeds what the reservation holds")]
    SettleExceedsHold,
}

/// What a reservation holds: free quota first, then balance.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Hold {
    pub free: Micros,
    pub balance: Micros,
}

impl Hold {
    /// What a settle of `actual` gives back of the hold: the hold less the actual price.
    pub fn left_after(&self, actual: Micros) -> Micros {
        self.total().checked_sub(actual).unwrap_or(Micros::ZERO)
    }

    pub fn total(&self) -> Micros {
        self.free.checked_add(self.balance).unwrap_or(Micros::ZERO)
    }
}

/// What is left to refund of one charge, part by part: its parts less its earlier refunds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Refundable {
    pub balance: Micros,
    /// The free part not yet refunded (returned or forfeited).
    pub free: Micros,
}

/// How a refund is paid back: the balance part first, then the free part, which goes back to
/// the free quota only within the charge's own period and is forfeited after it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RefundSplit {
    pub balance: Micros,
    /// Back to the free quota of the charge's period (the account's current one).
    pub free: Micros,
    /// The free part of a charge whose period has ended: refunded, but not given back.
    pub forfeited: Micros,
}

impl RefundSplit {
    /// The free part of the refund, returned or forfeited.
    pub fn free_part(&self) -> Micros {
        self.free
            .checked_add(self.forfeited)
            .unwrap_or(Micros::ZERO)
    }
}

/// The free quota left of `granted` once `used` and `held` are taken: never below zero (a
/// period's use may pass a grant lowered afterwards by a new plan).
pub fn free_left(granted: Micros, used: Micros, held: Micros) -> Micros {
    granted
        .checked_sub(used)
        .and_then(|left| left.checked_sub(held))
        .filter(|left| *left >= Micros::ZERO)
        .unwrap_or(Micros::ZERO)
}

/// The free-first split of `amount`, or `None` when free quota and balance together fall short.
pub fn split_charge(amount: Micros, free_remaining: Micros, balance: Micros) -> Option<Split> {
    let free = amount.min(free_remaining.max(Micros::ZERO));
    let rest = amount.checked_sub(free)?;
    (rest <= balance).then_some(Split {
        free,
        balance: rest,
    })
}

/// An amount whose checked arithmetic did not overflow; else the account cannot cover it.
fn or_insufficient(amount: Option<Micros>) -> Result<Micros, Refusal> {
    amount.ok_or(Refusal::InsufficientQuota)
}

/// The period a mutating command applies in: `max(period of now, account's period)`, so a clock
/// that lags behind another replica's can never reopen last month's quota.
pub fn command_period(snapshot: &AccountSnapshot, now: Period) -> Period {
    if snapshot.version == 0 {
        now
    } else {
        now.max(snapshot.period)
    }
}

impl AccountSnapshot {
    /// An account never written: nothing granted yet, nothing on the balance.
    pub fn fresh(period: Period, monthly_free: Micros) -> Self {
        AccountSnapshot {
            balance: Micros::ZERO,
            period,
            free_granted: Micros::ZERO,
            free_used: Micros::ZERO,
            free_held: Micros::ZERO,
            balance_held: Micros::ZERO,
            monthly_free,
            version: 0,
        }
    }

    /// The state an `AccountState` message carries (an event's account, a Redis snapshot);
    /// `None` when its period does not parse.
    pub fn from_message(state: &crate::proto::v1::AccountState) -> Option<AccountSnapshot> {
        Some(AccountSnapshot {
            balance: Micros::new(state.balance_micros),
            period: state.period.parse().ok()?,
            free_granted: Micros::new(state.free_granted_micros),
            free_used: Micros::new(state.free_used_micros),
            free_held: Micros::new(state.free_held_micros),
            balance_held: Micros::new(state.balance_held_micros),
            monthly_free: Micros::new(state.monthly_free_micros),
            version: state.version,
        })
    }

    /// The same state one version later: what every transition starts from.
    fn next_version(&self) -> AccountSnapshot {
        AccountSnapshot {
            version: self.version + 1,
            ..*self
        }
    }

    /// The free-first split of `amount` over the free quota and the balance not held; refused
    /// whole when they cannot cover it.
    fn split_available(&self, amount: Micros) -> Result<Split, Refusal> {
        split_charge(amount, self.free_remaining(), self.balance_free())
            .ok_or(Refusal::InsufficientQuota)
    }

    /// The period's free quota neither used nor held.
    pub fn free_remaining(&self) -> Micros {
        free_left(self.free_granted, self.free_used, self.free_held)
    }

    /// The balance not held: what a charge or a debit may take.
    pub fn balance_free(&self) -> Micros {
        self.balance
            .checked_sub(self.balance_held)
            .filter(|left| *left >= Micros::ZERO)
            .unwrap_or(Micros::ZERO)
    }

    /// The state after granting `period` its free quota, when the account lacks that period;
    /// `None` when it already has it (or a later one), so a grant happens once per period.
    pub fn open_period(&self, period: Period, amount: Micros) -> Option<AccountSnapshot> {
        let lacks = self.version == 0 || period > self.period;
        // Free holds of the earlier period stay with their reservations: the new period's quota
        // starts with nothing used and nothing held.
        lacks.then(|| AccountSnapshot {
            period,
            free_granted: amount,
            free_used: Micros::ZERO,
            free_held: Micros::ZERO,
            ..self.next_version()
        })
    }

    /// Charges `amount` free quota first. Refused as a whole when it cannot be covered.
    pub fn charge(&self, amount: Micros) -> Result<(Split, AccountSnapshot), Refusal> {
        let split = self.split_available(amount)?;
        let after = AccountSnapshot {
            balance: or_insufficient(self.balance.checked_sub(split.balance))?,
            free_used: or_insufficient(self.free_used.checked_add(split.free))?,
            ..self.next_version()
        };
        Ok((split, after))
    }

    /// Adds `amount` to the balance (recharge, credit adjustment), up to [`MAX_BALANCE`].
    pub fn credit(&self, amount: Micros) -> Result<AccountSnapshot, Refusal> {
        let balance = self
            .balance
            .checked_add(amount)
            .filter(|balance| *balance <= MAX_BALANCE)
            .ok_or(Refusal::BalanceLimit)?;
        Ok(AccountSnapshot {
            balance,
            ..self.next_version()
        })
    }

    /// Takes `amount` from the balance only (debit adjustment); free quota is never debited,
    /// nor balance that holds reserve.
    pub fn debit(&self, amount: Micros) -> Result<AccountSnapshot, Refusal> {
        if amount > self.balance_free() {
            return Err(Refusal::InsufficientQuota);
        }
        let balance = self
            .balance
            .checked_sub(amount)
            .filter(|balance| *balance >= Micros::ZERO)
            .ok_or(Refusal::InsufficientQuota)?;
        Ok(AccountSnapshot {
            balance,
            ..self.next_version()
        })
    }

    /// Reserves `amount` for a call whose price is known only afterwards: free quota first, then
    /// balance, as a charge would take them; both stay on the account but are no longer
    /// available. Refused whole when they cannot cover it.
    pub fn hold(&self, amount: Micros) -> Result<(Hold, AccountSnapshot), Refusal> {
        let split = self.split_available(amount)?;
        let hold = Hold {
            free: split.free,
            balance: split.balance,
        };
        let after = AccountSnapshot {
            free_held: or_insufficient(self.free_held.checked_add(hold.free))?,
            balance_held: or_insufficient(self.balance_held.checked_add(hold.balance))?,
            ..self.next_version()
        };
        Ok((hold, after))
    }

    /// The part of a hold of `hold_period` still reserved on this account: all of its balance
    /// part; its free part only while the account is still in `hold_period` (a new period's
    /// quota starts with nothing held, and the earlier period's quota has ended).
    /// What releasing it gives back here.
    pub fn held_here(&self, hold: Hold, hold_period: Period) -> Hold {
        Hold {
            free: if hold_period == self.period {
                hold.free.min(self.free_held)
            } else {
                Micros::ZERO
            },
            balance: hold.balance.min(self.balance_held),
        }
    }

    /// Gives a hold back, whole.
    pub fn release(&self, hold: Hold, hold_period: Period) -> AccountSnapshot {
        let here = self.held_here(hold, hold_period);
        AccountSnapshot {
            free_held: self
                .free_held
                .checked_sub(here.free)
                .unwrap_or(Micros::ZERO),
            balance_held: self
                .balance_held
                .checked_sub(here.balance)
                .unwrap_or(Micros::ZERO),
            ..self.next_version()
        }
    }

    /// Settles a hold of `hold_period` with the call's `actual` price (at most what it holds):
    /// charges it from what the hold reserved, its free part first, and gives the rest back.
    /// The free part comes from the quota of `hold_period`, even when the account has moved on
    /// to a later period since (that quota was set aside then); it counts as used only while the
    /// account is still in that period.
    pub fn settle(
        &self,
        hold: Hold,
        hold_period: Period,
        actual: Micros,
    ) -> Result<(Split, AccountSnapshot), Refusal> {
        if actual > hold.total() {
            return Err(Refusal::SettleExceedsHold);
        }
        let free = actual.min(hold.free);
        let split = Split {
            free,
            balance: actual.checked_sub(free).ok_or(Refusal::SettleExceedsHold)?,
        };
        let released = self.release(hold, hold_period);
        let used_here = if hold_period == self.period {
            split.free
        } else {
            Micros::ZERO
        };
        let after = AccountSnapshot {
            balance: released
                .balance
                .checked_sub(split.balance)
                .filter(|balance| *balance >= Micros::ZERO)
                .ok_or(Refusal::SettleExceedsHold)?,
            free_used: released
                .free_used
                .checked_add(used_here)
                .ok_or(Refusal::SettleExceedsHold)?,
            ..released
        };
        Ok((split, after))
    }

    /// Refunds `amount` of a charge made in `charge_period` of which `left` is still refundable:
    /// balance part first, then the free part, returned to the free quota when the account is
    /// still in `charge_period`, else forfeited. Refused when `amount` exceeds what is left, or
    /// when the balance would pass its limit.
    pub fn refund(
        &self,
        amount: Micros,
        left: Refundable,
        charge_period: Period,
    ) -> Result<(RefundSplit, AccountSnapshot), Refusal> {
        let balance = amount.min(left.balance.max(Micros::ZERO));
        let free_part = amount
            .checked_sub(balance)
            .filter(|free| *free <= left.free)
            .ok_or(Refusal::RefundExceedsCharge)?;
        let returned = if charge_period == self.period {
            // Never below zero, even were the quota's use somehow smaller than the charge's part.
            free_part.min(self.free_used)
        } else {
            Micros::ZERO
        };
        let split = RefundSplit {
            balance,
            free: returned,
            forfeited: free_part
                .checked_sub(returned)
                .ok_or(Refusal::RefundExceedsCharge)?,
        };
        let credited = self.credit(split.balance)?;
        let after = AccountSnapshot {
            free_used: self
                .free_used
                .checked_sub(split.free)
                .ok_or(Refusal::RefundExceedsCharge)?,
            ..credited
        };
        Ok((split, after))
    }

    /// The state after a new plan: `monthly_free` is what each period after `now` grants. The
    /// period of `now` keeps its grant; a later period the account was already granted (in
    /// advance, by a reset or a clock running ahead) is granted the new amount instead, never
    /// less than it has used. `None` when nothing would change.
    pub fn set_plan(&self, monthly_free: Micros, now: Period) -> Option<AccountSnapshot> {
        let free_granted = if self.version > 0 && self.period > now {
            monthly_free.max(
                self.free_used
                    .checked_add(self.free_held)
                    .unwrap_or(self.free_used),
            )
        } else {
            self.free_granted
        };
        let changed = monthly_free != self.monthly_free || free_granted != self.free_granted;
        changed.then(|| AccountSnapshot {
            monthly_free,
            free_granted,
            ..self.next_version()
        })
    }

    /// Applies a signed adjustment: positive credits, negative debits.
    pub fn adjust(&self, signed: Micros) -> Result<AccountSnapshot, Refusal> {
        if signed.is_positive() {
            self.credit(signed)
        } else {
            self.debit(signed.checked_neg().ok_or(Refusal::InsufficientQuota)?)
        }
    }
}

/// An account as every reader presents it at one instant.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AccountView {
    pub balance: Micros,
    pub period: Period,
    pub free_granted: Micros,
    pub free_used: Micros,
    pub free_held: Micros,
    pub free_remaining: Micros,
    pub balance_held: Micros,
    /// Free quota remaining plus the balance not held.
    pub available: Micros,
    pub monthly_free: Micros,
    pub version: i64,
    /// When this view's period ends and the next free quota applies.
    pub resets_at: DateTime<Utc>,
}

/// The one view function. A snapshot from an earlier period (or never written) is shown rolled
/// forward to the period of `now`: granted = the monthly free amount, nothing used. So on the
/// 1st every reader is right at 00:00, before the reset or a charge reaches the account. A snapshot
/// already in a later period than `now` (a lagging clock) is shown as it is.
pub fn view_at(snapshot: &AccountSnapshot, now: DateTime<Utc>, zone: BillingZone) -> AccountView {
    let now_period = zone.period_of(now);
    let rolled = snapshot.version == 0 || snapshot.period < now_period;
    if rolled {
        // Nothing of the new period is used or held yet.
        view(
            snapshot,
            now_period,
            snapshot.monthly_free,
            (Micros::ZERO, Micros::ZERO),
            zone,
        )
    } else {
        stored_view(snapshot, zone)
    }
}

/// The snapshot exactly as stored, never rolled forward: what an event carries, so that every
/// event of one version describes the same state, whenever it was published.
pub fn stored_view(snapshot: &AccountSnapshot, zone: BillingZone) -> AccountView {
    view(
        snapshot,
        snapshot.period,
        snapshot.free_granted,
        (snapshot.free_used, snapshot.free_held),
        zone,
    )
}

fn view(
    snapshot: &AccountSnapshot,
    period: Period,
    free_granted: Micros,
    (free_used, free_held): (Micros, Micros),
    zone: BillingZone,
) -> AccountView {
    let free_remaining = free_left(free_granted, free_used, free_held);
    AccountView {
        balance: snapshot.balance,
        period,
        free_granted,
        free_used,
        free_held,
        free_remaining,
        balance_held: snapshot.balance_held,
        available: free_remaining
            .checked_add(snapshot.balance_free())
            .unwrap_or(MAX_BALANCE),
        monthly_free: snapshot.monthly_free,
        version: snapshot.version,
        resets_at: zone.period_start(period.next()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const TEN: Micros = Micros::new(10_000_000);

    fn period(text: &str) -> Period {
        text.parse().unwrap()
    }

    fn account(balance: i64, granted: i64, used: i64) -> AccountSnapshot {
        AccountSnapshot {
            balance: Micros::new(balance),
            period: period("2026-11"),
            free_granted: Micros::new(granted),
            free_used: Micros::new(used),
            free_held: Micros::ZERO,
            balance_held: Micros::ZERO,
            monthly_free: TEN,
            version: 7,
        }
    }

    fn split_of(free: i64, balance: i64) -> Split {
        Split {
            free: Micros::new(free),
            balance: Micros::new(balance),
        }
    }

    fn hold_of(free: i64, balance: i64) -> Hold {
        Hold {
            free: Micros::new(free),
            balance: Micros::new(balance),
        }
    }

    fn utc(text: &str) -> DateTime<Utc> {
        crate::period::parse_instant(text).unwrap()
    }

    #[test]
    fn a_hold_reserves_free_quota_first_and_is_settled_or_released() {
        let before = account(100, 10, 4);
        let (hold, held) = before.hold(Micros::new(20)).unwrap();
        assert_eq!(hold, hold_of(6, 14));
        assert_eq!(
            (held.free_held, held.balance_held),
            (Micros::new(6), Micros::new(14))
        );
        assert_eq!(held.free_remaining(), Micros::ZERO);
        assert_eq!(held.balance_free(), Micros::new(86));
        assert_eq!(
            (held.balance, held.free_used),
            (before.balance, before.free_used)
        );
        // What is held is not available to a charge, a debit or another hold.
        assert_eq!(
            held.charge(Micros::new(87)),
            Err(Refusal::InsufficientQuota)
        );
        assert_eq!(held.debit(Micros::new(87)), Err(Refusal::InsufficientQuota));
        assert!(held.hold(Micros::new(86)).is_ok());

        // Settled below the hold: free part first, the rest given back.
        let (split, settled) = held.settle(hold, held.period, Micros::new(9)).unwrap();
        assert_eq!(split, split_of(6, 3));
        assert_eq!(
            (settled.free_held, settled.balance_held),
            (Micros::ZERO, Micros::ZERO)
        );
        assert_eq!(
            (settled.free_used, settled.balance),
            (Micros::new(10), Micros::new(97))
        );
        assert_eq!(
            held.settle(hold, held.period, Micros::new(21)),
            Err(Refusal::SettleExceedsHold)
        );

        // Released: all back.
        let released = held.release(hold, held.period);
        assert_eq!(
            (
                released.free_held,
                released.balance_held,
                released.free_remaining(),
                released.balance
            ),
            (Micros::ZERO, Micros::ZERO, Micros::new(6), Micros::new(100))
        );
    }

    #[test]
    fn a_hold_keeps_its_period_after_midnight() {
        let november = account(100, 10, 0);
        let (hold, held) = november.hold(Micros::new(8)).unwrap();
        let december = held.open_period(period("2026-12"), TEN).unwrap();
        assert_eq!(
            december.free_held,
            Micros::ZERO,
            "December's quota starts unheld"
        );
        assert_eq!(december.free_remaining(), TEN);
        // Settled in December: November's free quota pays, December's is untouched.
        let (split, settled) = december
            .settle(hold, period("2026-11"), Micros::new(5))
            .unwrap();
        assert_eq!(split, split_of(5, 0));
        assert_eq!(
            (settled.free_used, settled.free_remaining()),
            (Micros::ZERO, TEN)
        );
        assert_eq!(settled.balance, Micros::new(100));
    }

    proptest! {
        /// Any mix of holds, settles, releases and charges keeps invariant 1 with holds:
        /// free_used + free_held <= free_granted and balance_held <= balance.
        #[test]
        fn holds_never_break_invariant_one(steps in prop::collection::vec((0_u8..4, 1_i64..60), 1..40)) {
            let mut state = account(100, 50, 0);
            let mut open: Vec<Hold> = Vec::new();
            for (step, amount) in steps {
                let amount = Micros::new(amount);
                match step {
                    0 => if let Ok((hold, after)) = state.hold(amount) { open.push(hold); state = after; },
                    1 => if let Some(hold) = open.pop() {
                        let actual = amount.min(hold.total());
                        state = state.settle(hold, state.period, actual).unwrap().1;
                    },
                    2 => if let Some(hold) = open.pop() { state = state.release(hold, state.period); },
                    _ => if let Ok((_, after)) = state.charge(amount) { state = after; },
                }
                prop_assert!(state.free_used.get() + state.free_held.get() <= state.free_granted.get());
                prop_assert!(state.balance_held <= state.balance && state.balance >= Micros::ZERO);
                let held: i64 = open.iter().map(|h| h.total().get()).sum();
                prop_assert_eq!(held, state.free_held.get() + state.balance_held.get(), "no hold counted twice");
            }
        }
    }

    #[test]
    fn a_refund_returns_the_balance_part_first_then_the_free_part_within_its_period() {
        // A charge of 8 paid 5 free + 3 balance in November; nothing refunded yet.
        let now = account(100, 10, 5);
        let left = Refundable {
            balance: Micros::new(3),
            free: Micros::new(5),
        };
        let (split, after) = now.refund(Micros::new(4), left, period("2026-11")).unwrap();
        assert_eq!(
            split,
            RefundSplit {
                balance: Micros::new(3),
                free: Micros::new(1),
                forfeited: Micros::ZERO
            }
        );
        assert_eq!(
            (after.balance, after.free_used),
            (Micros::new(103), Micros::new(4))
        );
        assert_eq!(after.version, now.version + 1);
        // In December the free part is forfeited: reported, not returned.
        let december = AccountSnapshot {
            period: period("2026-12"),
            free_used: Micros::ZERO,
            ..now
        };
        let (split, after) = december
            .refund(Micros::new(8), left, period("2026-11"))
            .unwrap();
        assert_eq!(
            (split.balance, split.free, split.forfeited),
            (Micros::new(3), Micros::ZERO, Micros::new(5))
        );
        assert_eq!(
            (after.balance, after.free_used),
            (Micros::new(103), Micros::ZERO)
        );
        // Never more than is left, part by part.
        assert_eq!(
            now.refund(Micros::new(9), left, period("2026-11")),
            Err(Refusal::RefundExceedsCharge)
        );
    }

    proptest! {
        #[test]
        fn refunds_never_exceed_the_charge_nor_break_the_account(
            charge_free in 0_i64..1_000, charge_balance in 0_i64..1_000,
            refunds in prop::collection::vec(1_i64..700, 1..8), same_period: bool,
        ) {
            let mut state = account(0, 1_000, charge_free);
            let charge_period = if same_period { state.period } else { period("2026-10") };
            let mut left = Refundable { balance: Micros::new(charge_balance), free: Micros::new(charge_free) };
            let (mut balance_back, mut free_back) = (0, 0);
            for amount in refunds {
                match state.refund(Micros::new(amount), left, charge_period) {
                    Ok((split, after)) => {
                        prop_assert_eq!(split.balance.get() + split.free_part().get(), amount);
                        balance_back += split.balance.get();
                        free_back += split.free_part().get();
                        left = Refundable {
                            balance: Micros::new(charge_balance - balance_back),
                            free: Micros::new(charge_free - free_back),
                        };
                        prop_assert!(after.free_used >= Micros::ZERO && after.free_used <= after.free_granted);
                        prop_assert_eq!(after.balance.get(), state.balance.get() + split.balance.get());
                        state = after;
                    }
                    Err(refusal) => {
                        prop_assert_eq!(refusal, Refusal::RefundExceedsCharge);
                        prop_assert!(amount > left.balance.get() + left.free.get());
                    }
                }
                prop_assert!(balance_back <= charge_balance && free_back <= charge_free);
            }
        }
    }

    #[test]
    fn a_plan_applies_from_the_next_period_and_corrects_one_granted_in_advance() {
        let now = period("2026-11");
        let current = account(100, 10_000_000, 4_000_000);
        let planned = current.set_plan(Micros::new(30_000_000), now).unwrap();
        assert_eq!(planned.monthly_free, Micros::new(30_000_000));
        assert_eq!(
            planned.free_granted, current.free_granted,
            "this month keeps its grant"
        );
        assert_eq!(planned.version, current.version + 1);
        // The next month, granted in advance: it gets the new amount, never less than used.
        let ahead = AccountSnapshot {
            period: period("2026-12"),
            ..current
        };
        let raised = ahead.set_plan(Micros::new(30_000_000), now).unwrap();
        assert_eq!(raised.free_granted, Micros::new(30_000_000));
        let cut = ahead.set_plan(Micros::new(1_000_000), now).unwrap();
        assert_eq!(cut.free_granted, current.free_used);
        assert!(cut.free_used <= cut.free_granted);
        // The same plan again changes nothing.
        assert_eq!(planned.set_plan(Micros::new(30_000_000), now), None);
        // The next period granted by the new plan.
        let next = planned
            .open_period(period("2026-12"), planned.monthly_free)
            .unwrap();
        assert_eq!(next.free_granted, Micros::new(30_000_000));
    }

    #[test]
    fn charge_uses_free_quota_only_while_it_lasts() {
        let (split, after) = account(100, 50, 0).charge(Micros::new(30)).unwrap();
        assert_eq!(split, split_of(30, 0));
        assert_eq!(
            (after.balance, after.free_used, after.version),
            (Micros::new(100), Micros::new(30), 8)
        );
    }

    #[test]
    fn charge_uses_balance_when_free_quota_is_gone() {
        let (split, after) = account(100, 50, 50).charge(Micros::new(30)).unwrap();
        assert_eq!(split, split_of(0, 30));
        assert_eq!(after.balance, Micros::new(70));
    }

    #[test]
    fn charge_mixes_free_and_balance() {
        let (split, after) = account(100, 50, 40).charge(Micros::new(30)).unwrap();
        assert_eq!(split, split_of(10, 20));
        assert_eq!(
            (after.balance, after.free_used),
            (Micros::new(80), Micros::new(50))
        );
    }

    #[test]
    fn charge_may_take_everything_to_exactly_zero() {
        let (split, after) = account(20, 50, 40).charge(Micros::new(30)).unwrap();
        assert_eq!(split, split_of(10, 20));
        assert_eq!(
            (after.balance, after.free_remaining()),
            (Micros::ZERO, Micros::ZERO)
        );
    }

    #[test]
    fn charge_beyond_free_and_balance_is_refused_whole() {
        assert_eq!(
            account(19, 50, 40).charge(Micros::new(30)),
            Err(Refusal::InsufficientQuota)
        );
    }

    #[test]
    fn credit_stops_at_the_balance_limit() {
        let near = account(MAX_BALANCE.get() - 5, 0, 0);
        assert_eq!(near.credit(Micros::new(5)).unwrap().balance, MAX_BALANCE);
        assert_eq!(near.credit(Micros::new(6)), Err(Refusal::BalanceLimit));
    }

    #[test]
    fn debit_takes_balance_only() {
        let a = account(10, 50, 0);
        assert_eq!(a.adjust(Micros::new(-10)).unwrap().balance, Micros::ZERO);
        assert_eq!(a.adjust(Micros::new(-11)), Err(Refusal::InsufficientQuota));
        assert_eq!(a.adjust(Micros::new(5)).unwrap().balance, Micros::new(15));
    }

    #[test]
    fn a_period_is_opened_once_and_only_forward() {
        let a = account(0, 50, 50);
        let opened = a.open_period(period("2026-12"), TEN).unwrap();
        assert_eq!(
            (
                opened.period,
                opened.free_granted,
                opened.free_used,
                opened.version
            ),
            (period("2026-12"), TEN, Micros::ZERO, 8)
        );
        assert_eq!(opened.open_period(period("2026-12"), TEN), None);
        assert_eq!(opened.open_period(period("2026-11"), TEN), None);
    }

    #[test]
    fn a_fresh_account_opens_its_first_period() {
        let fresh = AccountSnapshot::fresh(period("2026-11"), TEN);
        let opened = fresh.open_period(period("2026-11"), TEN).unwrap();
        assert_eq!((opened.version, opened.free_granted), (1, TEN));
    }

    #[test]
    fn command_period_never_goes_back() {
        let a = account(0, 0, 0);
        assert_eq!(command_period(&a, period("2026-10")), period("2026-11"));
        assert_eq!(command_period(&a, period("2026-12")), period("2026-12"));
        let fresh = AccountSnapshot::fresh(period("2026-11"), TEN);
        assert_eq!(command_period(&fresh, period("2026-10")), period("2026-10"));
    }

    #[test]
    fn the_view_rolls_an_older_period_forward() {
        let zone = BillingZone::default();
        let a = account(100, 50, 50);
        let before = view_at(&a, utc("2026-11-30T15:59:59.999Z"), zone);
        assert_eq!(
            (before.period, before.free_remaining, before.available),
            (period("2026-11"), Micros::ZERO, Micros::new(100))
        );
        assert_eq!(before.resets_at, utc("2026-11-30T16:00:00Z"));

        let after = view_at(&a, utc("2026-11-30T16:00:00Z"), zone);
        assert_eq!(
            (after.period, after.free_granted, after.free_used),
            (period("2026-12"), TEN, Micros::ZERO)
        );
        assert_eq!(after.available, Micros::new(100 + TEN.get()));
        assert_eq!(after.version, 7);
    }

    #[test]
    fn the_view_of_an_account_never_written_shows_this_months_quota() {
        let zone = BillingZone::default();
        let view = view_at(
            &AccountSnapshot::fresh(period("2020-01"), TEN),
            utc("2026-11-25T00:00:00Z"),
            zone,
        );
        assert_eq!(
            (view.period, view.free_granted, view.available, view.version),
            (period("2026-11"), TEN, TEN, 0)
        );
    }

    #[test]
    fn the_stored_view_never_rolls() {
        let a = account(100, 50, 50);
        let view = stored_view(&a, BillingZone::default());
        assert_eq!(
            (view.period, view.free_used, view.available),
            (period("2026-11"), Micros::new(50), Micros::new(100))
        );
    }

    #[test]
    fn the_view_keeps_a_later_period_than_a_lagging_clock() {
        let zone = BillingZone::default();
        let ahead = AccountSnapshot {
            period: period("2026-12"),
            ..account(0, 50, 20)
        };
        let view = view_at(&ahead, utc("2026-11-30T15:59:59Z"), zone);
        assert_eq!(
            (view.period, view.free_remaining),
            (period("2026-12"), Micros::new(30))
        );
    }

    fn arb_account() -> impl Strategy<Value = AccountSnapshot> {
        (0..=MAX_BALANCE.get(), 0..=10_000_000_000_i64, 0..=100_i64).prop_map(
            |(balance, granted, used_pct)| account(balance, granted, granted / 100 * used_pct),
        )
    }

    proptest! {
        #[test]
        fn a_charge_is_free_first_and_all_or_nothing(a in arb_account(), amount in 1..=1_000_000_000_000_i64) {
            let amount = Micros::new(amount);
            match a.charge(amount) {
                Ok((split, after)) => {
                    prop_assert_eq!(split.free.checked_add(split.balance), Some(amount));
                    prop_assert_eq!(split.free, amount.min(a.free_remaining()));
                    prop_assert!(after.balance >= Micros::ZERO);
                    prop_assert!(after.free_used <= after.free_granted);
                    prop_assert_eq!(after.balance, a.balance.checked_sub(split.balance).unwrap());
                    prop_assert_eq!(after.version, a.version + 1);
                }
                Err(refusal) => {
                    prop_assert_eq!(refusal, Refusal::InsufficientQuota);
                    prop_assert!(amount > a.free_remaining().checked_add(a.balance).unwrap());
                }
            }
        }

        #[test]
        fn adjustments_keep_the_balance_in_bounds(a in arb_account(), signed in -1_000_000_000_000_i64..=1_000_000_000_000) {
            if let Ok(after) = a.adjust(Micros::new(signed)) {
                prop_assert!(after.balance >= Micros::ZERO && after.balance <= MAX_BALANCE);
                prop_assert_eq!(after.balance.get(), a.balance.get() + signed);
            }
        }

        #[test]
        fn the_view_never_shows_more_used_than_granted(a in arb_account(), secs in 1_700_000_000_i64..1_900_000_000) {
            let now = DateTime::<Utc>::from_timestamp(secs, 0).unwrap();
            let view = view_at(&a, now, BillingZone::default());
            prop_assert!(view.free_used <= view.free_granted);
            prop_assert_eq!(view.available, view.free_remaining.checked_add(view.balance).unwrap());
            prop_assert!(view.period >= BillingZone::default().period_of(now).min(a.period));
        }
    }
}
