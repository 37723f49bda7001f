//! A recharge order's status as stored and as shown. EXPIRED is never stored: it is a PENDING
//! order past its expiry, and it can still be paid (the money would arrive all the same).

use chrono::{DateTime, Utc};

/// The stored status.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OrderStatus {
    Pending,
    Paid,
    Failed,
}

impl OrderStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            OrderStatus::Pending => "PENDING",
            OrderStatus::Paid => "PAID",
            OrderStatus::Failed => "FAILED",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "PENDING" => Some(OrderStatus::Pending),
            "PAID" => Some(OrderStatus::Paid),
            "FAILED" => Some(OrderStatus::Failed),
            _ => None,
        }
    }

    /// How far along an order is; a status never moves back (PENDING → FAILED → PAID), so a
    /// projection applying events out of order keeps the furthest.
    pub fn rank(self) -> u8 {
        match self {
            OrderStatus::Pending => 0,
            OrderStatus::Failed => 1,
            OrderStatus::Paid => 2,
        }
    }
}

/// The status an order shows at one instant.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ShownStatus {
    Pending,
    Paid,
    Failed,
    Expired,
}

impl ShownStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            ShownStatus::Pending => "PENDING",
            ShownStatus::Paid => "PAID",
            ShownStatus::Failed => "FAILED",
            ShownStatus::Expired => "EXPIRED",
        }
    }
}

pub fn shown_status(
    status: OrderStatus,
    expires_at: DateTime<Utc>,
    now: DateTime<Utc>,
) -> ShownStatus {
    match status {
        OrderStatus::Pending if now >= expires_at => ShownStatus::Expired,
        OrderStatus::Pending => ShownStatus::Pending,
        OrderStatus::Paid => ShownStatus::Paid,
        OrderStatus::Failed => ShownStatus::Failed,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pending_order_expires_but_stays_payable() {
        let expires = DateTime::from_timestamp(1_000, 0).unwrap();
        let before = DateTime::from_timestamp(999, 0).unwrap();
        assert_eq!(
            shown_status(OrderStatus::Pending, expires, before),
            ShownStatus::Pending
        );
        assert_eq!(
            shown_status(OrderStatus::Pending, expires, expires),
            ShownStatus::Expired
        );
        assert_eq!(
            shown_status(OrderStatus::Paid, expires, expires),
            ShownStatus::Paid
        );
    }

    #[test]
    fn statuses_only_move_forward() {
        assert!(OrderStatus::Pending.rank() < OrderStatus::Failed.rank());
        assert!(OrderStatus::Failed.rank() < OrderStatus::Paid.rank());
        for status in [OrderStatus::Pending, OrderStatus::Paid, OrderStatus::Failed] {
            assert_eq!(OrderStatus::parse(status.as_str()), Some(status));
        }
    }
}
