//! The invariants of ARCHITECTURE.md checked against what MySQL holds, for any test that has
//! written through the services.

use prost::Message;
use shared::proto::v1 as pb;
use sqlx::{MySqlPool, Row};

/// Invariants 1, 4 and 5 of ARCHITECTURE.md for one account, from what MySQL holds:
/// the ledger chain, conservation of balance and free quota, every change with its event.
pub async fn assert_invariants(pool: &MySqlPool, user: &str) {
    let account = sqlx::query(
        "SELECT balance_micros, period, free_granted_micros, free_used_micros, free_held_micros, \
         balance_held_micros, version FROM accounts WHERE user_id = ?",
    )
    .bind(user)
    .fetch_optional(pool)
    .await
    .unwrap();
    let rows = sqlx::query(
        "SELECT record_id, version, kind, amount_micros, free_micros, balance_micros, period, \
         period_before, balance_before_micros, balance_after_micros, free_granted_before_micros, \
         free_granted_after_micros, free_used_before_micros, free_used_after_micros, \
         free_held_before_micros, free_held_after_micros, balance_held_before_micros, \
         balance_held_after_micros, free_period FROM ledger WHERE user_id = ? ORDER BY version",
    )
    .bind(user)
    .fetch_all(pool)
    .await
    .unwrap();
    let Some(account) = account else {
        assert!(rows.is_empty(), "{user}: ledger rows without an account");
        return;
    };

    let balance: i64 = account.get("balance_micros");
    let period: String = account.get("period");
    let (granted, used): (i64, i64) = (
        account.get("free_granted_micros"),
        account.get("free_used_micros"),
    );
    let version: i64 = account.get("version");
    let (free_held, balance_held): (i64, i64) = (
        account.get("free_held_micros"),
        account.get("balance_held_micros"),
    );
    assert!(
        balance >= 0
            && 0 <= used
            && free_held >= 0
            && used + free_held <= granted
            && (0..=balance).contains(&balance_held),
        "{user}: invariant 1 broken"
    );

    // The chain: versions 1..=n, each row's before is the previous row's after.
    // (balance, period, granted, used, free held, balance held)
    let mut state = (0_i64, String::new(), 0_i64, 0_i64, 0_i64, 0_i64);
    let (mut credits, mut debits, mut free_in_period, mut granted_in_period) =
        (0_i64, 0_i64, 0_i64, None);
    for (index, row) in rows.iter().enumerate() {
        let v: i64 = row.get("version");
        assert_eq!(v, index as i64 + 1, "{user}: versions must be consecutive");
        let before = (
            row.get::<i64, _>("balance_before_micros"),
            row.get::<String, _>("period_before"),
            row.get::<i64, _>("free_granted_before_micros"),
            row.get::<i64, _>("free_used_before_micros"),
            row.get::<i64, _>("free_held_before_micros"),
            row.get::<i64, _>("balance_held_before_micros"),
        );
        let after = (
            row.get::<i64, _>("balance_after_micros"),
            row.get::<String, _>("period"),
            row.get::<i64, _>("free_granted_after_micros"),
            row.get::<i64, _>("free_used_after_micros"),
            row.get::<i64, _>("free_held_after_micros"),
            row.get::<i64, _>("balance_held_after_micros"),
        );
        // The free part of a hold settled after its month belongs to that month's quota.
        let free_period: Option<String> = row.get("free_period");
        let free_here = free_period.as_ref().is_none_or(|p| *p == after.1);
        if index == 0 {
            assert_eq!(
                (before.0, before.2, before.3, before.4, before.5),
                (0, 0, 0, 0, 0),
                "{user}: the first row starts empty"
            );
        } else {
            assert_eq!(before, state, "{user}: chain broken at version {v}");
        }
        let (amount, free, part): (i64, i64, i64) = (
            row.get("amount_micros"),
            row.get("free_micros"),
            row.get("balance_micros"),
        );
        let kind: String = row.get("kind");
        // Which account, which row, which rule: the message of every check below.
        let at = format!("account {user}, version {v} ({kind})");
        match kind.as_str() {
            "deduct" => {
                assert_eq!(free + part, amount, "{at}: split must add up");
                assert_eq!(after.0, before.0 - part, "{at}: the balance part taken");
                if free_here {
                    assert_eq!(after.3, before.3 + free, "{at}: the free part used");
                    if after.1 == period {
                        free_in_period += free;
                    }
                } else {
                    assert_eq!(after.3, before.3, "{at}: an earlier month's quota paid");
                }
                debits += part;
            }
            "recharge" | "adjust" => {
                assert_eq!(after.0, before.0 + part, "{at}: the balance credited");
                assert_eq!(
                    (after.2, after.3),
                    (before.2, before.3),
                    "{at}: the free quota untouched"
                );
                credits += part;
            }
            "free_grant" => {
                assert!(
                    after.1 > before.1 || index == 0,
                    "{at}: a grant opens a later period"
                );
                assert_eq!(
                    (after.0, after.2, after.3),
                    (before.0, free, 0),
                    "{at}: a grant sets the period's quota, unused, and moves no money"
                );
                if after.1 == period {
                    granted_in_period = Some(free);
                }
            }
            "hold" => {
                // Free quota first, then balance: held, neither used nor taken.
                assert_eq!(free + part, amount, "{at}: a hold's parts add up");
                assert_eq!(
                    (after.0, &after.1, after.2, after.3),
                    (before.0, &before.1, before.2, before.3),
                    "{at}: a hold takes and uses nothing"
                );
                assert_eq!(
                    (after.4, after.5),
                    (before.4 + free, before.5 + part),
                    "{at}: the hold's parts held"
                );
            }
            "release" => {
                // What became available again; a free part of an ended month is not.
                assert!(
                    free + part <= amount,
                    "{at}: a release gives back at most the hold"
                );
                assert_eq!(
                    (after.0, &after.1, after.2, after.3),
                    (before.0, &before.1, before.2, before.3),
                    "{at}: a release takes and uses nothing"
                );
                assert_eq!(
                    (after.4, after.5),
                    (before.4 - free, before.5 - part),
                    "{at}: the released parts no longer held"
                );
            }
            "refund" => {
                // The balance part back to the balance; the free part back to the quota only
                // in the charge's period (the rest of `amount` was forfeited).
                assert!(
                    free >= 0 && part >= 0 && free + part <= amount,
                    "{at}: refund parts"
                );
                assert_eq!(after.0, before.0 + part, "{at}: the balance part returned");
                assert_eq!(
                    (&after.1, after.2),
                    (&before.1, before.2),
                    "{at}: the grant untouched"
                );
                assert_eq!(after.3, before.3 - free, "{at}: the free part returned");
                credits += part;
                if after.1 == period {
                    free_in_period -= free;
                }
            }
            "plan" => {
                // The monthly amount changes; a period granted in advance may be granted anew,
                // never below what it used. No money moves.
                assert_eq!(
                    (after.0, &after.1, after.3),
                    (before.0, &before.1, before.3),
                    "{at}: a plan moves no money"
                );
                assert_eq!((free, part), (0, 0), "{at}: a plan moves no money");
                assert!(after.2 >= after.3, "{at}: a new grant below what was used");
                if after.1 == period {
                    granted_in_period = Some(after.2);
                }
            }
            other => panic!("{user}: unknown ledger kind {other}"),
        }
        assert!(
            after.0 >= 0 && after.3 + after.4 <= after.2 && (0..=after.0).contains(&after.5),
            "{at}: invariant 1 broken in the ledger"
        );
        state = after;
    }
    assert_eq!(
        state,
        (
            balance,
            period.clone(),
            granted,
            used,
            free_held,
            balance_held
        ),
        "{user}: the last row must be the account"
    );
    assert_eq!(
        version,
        rows.len() as i64,
        "{user}: one ledger row per version"
    );
    assert_eq!(balance, credits - debits, "{user}: balance conservation");
    assert_eq!(used, free_in_period, "{user}: free quota conservation");
    assert_eq!(
        Some(granted),
        granted_in_period,
        "{user}: the period's grant"
    );

    // Holds: what the account holds is exactly what its open reservations hold (the free part
    // only of those of the account's period), each counted once.
    let (held_free, held_balance): (i64, i64) = sqlx::query_as(
        "SELECT CAST(COALESCE(SUM(IF(period = ?, free_held_micros, 0)), 0) AS SIGNED), \
         CAST(COALESCE(SUM(balance_held_micros), 0) AS SIGNED) \
         FROM reservations WHERE user_id = ? AND status = 'held'",
    )
    .bind(&period)
    .bind(user)
    .fetch_one(pool)
    .await
    .unwrap();
    assert_eq!(
        (free_held, balance_held),
        (held_free, held_balance),
        "{user}: the account's holds are its open reservations"
    );

    // Refunds: each has its ledger row with the same parts, and the refunds of a charge never
    // exceed it, part by part.
    let (unmatched, excessive): (i64, i64) = sqlx::query_as(
        "SELECT \
           (SELECT COUNT(*) FROM refunds r LEFT JOIN ledger l ON l.record_id = r.record_id \
            WHERE r.user_id = ? AND (l.record_id IS NULL OR l.kind <> 'refund' \
              OR l.amount_micros <> r.amount_micros OR l.balance_micros <> r.balance_micros \
              OR l.free_micros <> r.free_micros)), \
           (SELECT COUNT(*) FROM ledger c JOIN \
              (SELECT charge_record_id, SUM(balance_micros) AS b, \
                      SUM(free_micros + free_forfeited_micros) AS f \
               FROM refunds WHERE user_id = ? GROUP BY charge_record_id) s \
              ON s.charge_record_id = c.record_id \
            WHERE c.kind <> 'deduct' OR s.b > c.balance_micros OR s.f > c.free_micros)",
    )
    .bind(user)
    .bind(user)
    .fetch_one(pool)
    .await
    .unwrap();
    assert_eq!(unmatched, 0, "{user}: a refund without its ledger row");
    assert_eq!(excessive, 0, "{user}: refunds exceeding their charge");

    // Invariant 4 on the write side: every ledger row has its event in the outbox.
    let payloads: Vec<Vec<u8>> = sqlx::query_scalar("SELECT payload FROM outbox WHERE user_id = ?")
        .bind(user)
        .fetch_all(pool)
        .await
        .unwrap();
    let mut event_records: Vec<String> = payloads
        .iter()
        .filter_map(|payload| record_id_of(&pb::BillingEvent::decode(payload.as_slice()).unwrap()))
        .collect();
    let mut ledger_records: Vec<String> = rows.iter().map(|row| row.get("record_id")).collect();
    event_records.sort();
    ledger_records.sort();
    assert_eq!(
        event_records, ledger_records,
        "{user}: one event per ledger row"
    );
}

fn record_id_of(event: &pb::BillingEvent) -> Option<String> {
    use pb::billing_event::Kind;
    match event.kind.as_ref()? {
        Kind::QuotaDeducted(e) => Some(e.record_id.clone()),
        Kind::BalanceRecharged(e) => Some(e.record_id.clone()),
        Kind::FreeQuotaGranted(e) => Some(e.record_id.clone()),
        Kind::BalanceAdjusted(e) => Some(e.record_id.clone()),
        Kind::FreeQuotaPlanSet(e) => Some(e.record_id.clone()),
        Kind::ChargeRefunded(e) => Some(e.record_id.clone()),
        Kind::QuotaReserved(e) => Some(e.record_id.clone()),
        Kind::ReservationSettled(e) => Some(e.record_id.clone()),
        Kind::ReservationReleased(e) => Some(e.record_id.clone()),
        Kind::RechargeOrderCreated(_)
        | Kind::RechargeOrderFailed(_)
        | Kind::PaymentUnmatched(_)
        | Kind::BalanceLow(_)
        | Kind::FreeQuotaExhausted(_) => None,
    }
}
