//! The kinds of change an account's history records (the `kind` of a ledger row, the `type` of a
//! read-model record and of a REST record, one vocabulary for all three), and the ledger row as
//! stored, read back by the write side's replays and by the operators' rebuild and reconcile.

use std::fmt;

use chrono::{DateTime, Utc};

use crate::ids::UserId;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum RecordKind {
    Deduct,
    Recharge,
    FreeGrant,
    Adjust,
    /// A new free-quota plan: `amount` is the new monthly free quota; no money moves.
    Plan,
    /// A refund of a charge: `balance` back to the balance, `free` back to the free quota,
    /// `amount` the whole refund (with a free part forfeited after the charge's period).
    Refund,
    /// A reservation's hold: `free` and `balance` held, `amount` their sum; the row carries
    /// the reservation's request id, in the charges' key space.
    Hold,
    /// A hold given back: `free` and `balance` available again, `amount` the whole hold.
    Release,
}

impl RecordKind {
    pub const ALL: [RecordKind; 8] = [
        RecordKind::Deduct,
        RecordKind::Recharge,
        RecordKind::FreeGrant,
        RecordKind::Adjust,
        RecordKind::Plan,
        RecordKind::Refund,
        RecordKind::Hold,
        RecordKind::Release,
    ];

    /// The stored and published name.
    pub fn as_str(self) -> &'static str {
        match self {
            RecordKind::Deduct => "deduct",
            RecordKind::Recharge => "recharge",
            RecordKind::FreeGrant => "free_grant",
            RecordKind::Adjust => "adjust",
            RecordKind::Plan => "plan",
            RecordKind::Refund => "refund",
            RecordKind::Hold => "hold",
            RecordKind::Release => "release",
        }
    }

    pub fn parse(text: &str) -> Option<RecordKind> {
        RecordKind::ALL
            .into_iter()
            .find(|kind| kind.as_str() == text)
    }

    /// Whether `text` (a stored kind) names this kind.
    pub fn is(self, text: &str) -> bool {
        self.as_str() == text
    }

    /// The names of every kind, for error messages and schemas.
    pub fn names() -> [&'static str; 8] {
        RecordKind::ALL.map(RecordKind::as_str)
    }
}

// Stored as its name; a name no kind has is an error of the row, never a default.
impl sqlx::Type<sqlx::MySql> for RecordKind {
    fn type_info() -> sqlx::mysql::MySqlTypeInfo {
        <String as sqlx::Type<sqlx::MySql>>::type_info()
    }

    fn compatible(ty: &sqlx::mysql::MySqlTypeInfo) -> bool {
        <String as sqlx::Type<sqlx::MySql>>::compatible(ty)
    }
}

impl sqlx::Decode<'_, sqlx::MySql> for RecordKind {
    fn decode(value: sqlx::mysql::MySqlValueRef<'_>) -> Result<Self, sqlx::error::BoxDynError> {
        let name = <&str as sqlx::Decode<sqlx::MySql>>::decode(value)?;
        RecordKind::parse(name).ok_or_else(|| format!("no record kind is named {name:?}").into())
    }
}

impl fmt::Display for RecordKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_reads_back_from_its_name_and_names_are_distinct() {
        for kind in RecordKind::ALL {
            assert_eq!(RecordKind::parse(kind.as_str()), Some(kind));
        }
        let mut names = RecordKind::names().to_vec();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), RecordKind::ALL.len());
        assert_eq!(RecordKind::parse("Deduct"), None);
        assert_eq!(RecordKind::parse(""), None);
    }
}

/// A ledger row as stored: the change, its split, and the account right after it.
#[derive(Clone, Debug, sqlx::FromRow)]
pub struct LedgerRow {
    pub record_id: String,
    pub user_id: UserId,
    pub version: i64,
    pub kind: RecordKind,
    /// A magnitude, except for adjustments (signed: + credit, - debit).
    pub amount_micros: i64,
    pub free_micros: i64,
    pub balance_micros: i64,
    pub period: String,
    pub balance_after_micros: i64,
    pub free_granted_after_micros: i64,
    pub free_used_after_micros: i64,
    pub free_held_after_micros: i64,
    pub balance_held_after_micros: i64,
    /// The account's monthly free quota right after the row (`None` in rows written before it
    /// was recorded).
    pub monthly_free_after_micros: Option<i64>,
    /// The month of the free part, when it is not `period` (a hold settled after its month).
    pub free_period: Option<String>,
    pub api_id: Option<String>,
    pub request_id: Option<String>,
    pub order_no: Option<String>,
    pub created_at: DateTime<Utc>,
    /// A priced charge's (or hold's) usage, as [`crate::pricing::Usage::to_json`] wrote it, and
    /// the list and version that priced it; `None` for an amount.
    pub usage_units: Option<String>,
    pub price_list: Option<String>,
    pub price_version: Option<i64>,
    /// The caller's API key of a charge or a hold (absent from the read model's selections).
    #[sqlx(default)]
    pub key_id: Option<String>,
}

impl LedgerRow {
    /// What priced the row, when it was priced (a row whose usage does not read back is taken
    /// for an amount's).
    pub fn priced_by(&self) -> Option<crate::pricing::PricedBy> {
        Some(crate::pricing::PricedBy {
            usage: crate::pricing::Usage::from_json(self.usage_units.as_deref()?)?,
            list: self.price_list.clone()?,
            version: self.price_version?,
        })
    }

    /// The account's amounts right after this row.
    pub fn after(&self) -> AccountAmounts {
        AccountAmounts {
            balance: self.balance_after_micros,
            period: self.period.clone(),
            granted: self.free_granted_after_micros,
            used: self.free_used_after_micros,
            free_held: self.free_held_after_micros,
            balance_held: self.balance_held_after_micros,
        }
    }
}

/// An account's amounts at one version, as the account row, a ledger row (before or after it) or
/// a read-model snapshot holds them: two of them of the same version must be equal.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AccountAmounts {
    pub balance: i64,
    pub period: String,
    pub granted: i64,
    pub used: i64,
    pub free_held: i64,
    pub balance_held: i64,
}
