//! Money is an exact count of micros (millionths of the account currency) in an `i64`.
//!
//! Floats never touch an amount. Every sum that could overflow is checked, and the contract's
//! limits keep every amount exact in JSON and JavaScript (below 2^53).

use std::{fmt, ops::RangeInclusive};

use serde::{Deserialize, Serialize};

/// An amount of money in micros. Signed, because a ledger row's adjustment can be a debit.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
#[serde(transparent)]
pub struct Micros(i64);

/// One charge, order or adjustment moves at most 10^12 micros (one million units).
pub const MAX_AMOUNT: Micros = Micros(1_000_000_000_000);

/// A balance never exceeds 10^15 micros; checked when an order is created and when money arrives.
pub const MAX_BALANCE: Micros = Micros(1_000_000_000_000_000);

// Every balance must be exact as a JavaScript number.
const _: () = assert!(MAX_BALANCE.0 < (1_i64 << 53));

/// Micros in one unit of currency.
pub const MICROS_PER_UNIT: i64 = 1_000_000;

impl Micros {
    pub const ZERO: Micros = Micros(0);

    pub const fn new(micros: i64) -> Self {
        Micros(micros)
    }

    pub const fn get(self) -> i64 {
        self.0
    }

    pub fn checked_add(self, other: Micros) -> Option<Micros> {
        self.0.checked_add(other.0).map(Micros)
    }

    pub fn checked_sub(self, other: Micros) -> Option<Micros> {
        self.0.checked_sub(other.0).map(Micros)
    }

    pub fn checked_neg(self) -> Option<Micros> {
        self.0.checked_neg().map(Micros)
    }

    pub fn is_positive(self) -> bool {
        self.0 > 0
    }

    /// The magnitude; `i64::MIN` never reaches here because every amount is bounded.
    pub fn abs(self) -> Micros {
        Micros(self.0.saturating_abs())
    }
}

impl fmt::Display for Micros {
    /// Shown in currency units with all six decimals, e.g. `-1.500000`; exact, no rounding.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let sign = if self.0 < 0 { "-" } else { "" };
        let magnitude = self.0.unsigned_abs();
        let unit = MICROS_PER_UNIT as u64;
        write!(f, "{sign}{}.{:06}", magnitude / unit, magnitude % unit)
    }
}

/// Why a raw amount was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum AmountError {
    #[error("must be between 1 and {max} micros", max = MAX_AMOUNT.0)]
    OutOfRange,
    #[error("must be non-zero and at most {max} micros in magnitude", max = MAX_AMOUNT.0)]
    SignedOutOfRange,
    #[error("must be between 0 and {max} micros", max = MAX_AMOUNT.0)]
    QuotaOutOfRange,
    #[error("must be between 0 and {max} micros", max = MAX_BALANCE.0)]
    BalanceOutOfRange,
}

/// `raw` as an amount when `allowed` holds it, else `refusal`.
fn parse_within(
    raw: i64,
    allowed: RangeInclusive<i64>,
    refusal: AmountError,
) -> Result<Micros, AmountError> {
    allowed.contains(&raw).then_some(Micros(raw)).ok_or(refusal)
}

/// A positive amount of one charge, order or payment: 1 ..= 10^12 micros.
pub fn parse_amount(raw: i64) -> Result<Micros, AmountError> {
    parse_within(raw, 1..=MAX_AMOUNT.0, AmountError::OutOfRange)
}

/// A monthly free quota (a plan): 0 ..= 10^12 micros; 0 grants nothing.
pub fn parse_quota(raw: i64) -> Result<Micros, AmountError> {
    parse_within(raw, 0..=MAX_AMOUNT.0, AmountError::QuotaOutOfRange)
}

/// An amount a balance may hold (a threshold, say): 0 ..= 10^15 micros.
pub fn parse_balance(raw: i64) -> Result<Micros, AmountError> {
    parse_within(raw, 0..=MAX_BALANCE.0, AmountError::BalanceOutOfRange)
}

/// A signed adjustment: non-zero and at most 10^12 micros either way.
pub fn parse_signed_amount(raw: i64) -> Result<Micros, AmountError> {
    let refusal = AmountError::SignedOutOfRange;
    if raw == 0 {
        return Err(refusal);
    }
    parse_within(raw, -MAX_AMOUNT.0..=MAX_AMOUNT.0, refusal)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn a_plan_may_grant_nothing_but_no_more_than_a_charge() {
        assert_eq!(parse_quota(0), Ok(Micros::ZERO));
        assert_eq!(parse_quota(MAX_AMOUNT.0), Ok(MAX_AMOUNT));
        assert_eq!(parse_quota(-1), Err(AmountError::QuotaOutOfRange));
        assert_eq!(
            parse_quota(MAX_AMOUNT.0 + 1),
            Err(AmountError::QuotaOutOfRange)
        );
    }

    #[test]
    fn amounts_are_bounded_by_the_contract() {
        assert_eq!(parse_amount(0), Err(AmountError::OutOfRange));
        assert_eq!(parse_amount(-1), Err(AmountError::OutOfRange));
        assert_eq!(parse_amount(1), Ok(Micros(1)));
        assert_eq!(parse_amount(MAX_AMOUNT.0), Ok(MAX_AMOUNT));
        assert_eq!(parse_amount(MAX_AMOUNT.0 + 1), Err(AmountError::OutOfRange));
        assert_eq!(parse_amount(i64::MAX), Err(AmountError::OutOfRange));
    }

    #[test]
    fn signed_amounts_refuse_zero_and_overflowing_magnitudes() {
        assert_eq!(parse_signed_amount(0), Err(AmountError::SignedOutOfRange));
        assert_eq!(
            parse_signed_amount(-MAX_AMOUNT.0),
            Ok(Micros(-MAX_AMOUNT.0))
        );
        assert_eq!(parse_signed_amount(MAX_AMOUNT.0), Ok(MAX_AMOUNT));
        assert_eq!(
            parse_signed_amount(i64::MIN),
            Err(AmountError::SignedOutOfRange)
        );
        assert_eq!(
            parse_signed_amount(-MAX_AMOUNT.0 - 1),
            Err(AmountError::SignedOutOfRange)
        );
    }

    #[test]
    fn display_is_exact_in_units() {
        assert_eq!(Micros(0).to_string(), "0.000000");
        assert_eq!(Micros(1).to_string(), "0.000001");
        assert_eq!(Micros(-1_500_000).to_string(), "-1.500000");
        assert_eq!(MAX_BALANCE.to_string(), "1000000000.000000");
        assert_eq!(Micros(i64::MIN).to_string(), "-9223372036854.775808");
    }

    proptest! {
        #[test]
        fn checked_arithmetic_never_wraps(a in any::<i64>(), b in any::<i64>()) {
            prop_assert_eq!(Micros(a).checked_add(Micros(b)).map(Micros::get), a.checked_add(b));
            prop_assert_eq!(Micros(a).checked_sub(Micros(b)).map(Micros::get), a.checked_sub(b));
        }

        #[test]
        fn parsed_amounts_stay_in_range(raw in any::<i64>()) {
            if let Ok(amount) = parse_amount(raw) {
                prop_assert!(amount.get() >= 1 && amount <= MAX_AMOUNT);
            }
            if let Ok(amount) = parse_signed_amount(raw) {
                prop_assert!(amount.get() != 0 && amount.abs() <= MAX_AMOUNT);
            }
        }
    }
}
