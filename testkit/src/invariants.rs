//! The invariants of ARCHITECTURE.md checked against what MySQL holds, for any test that has
//! written through the services.
//!
//! `assert_invariants` reads the account and its ledger once, then checks one rule (or one
//! family of rules) per function, in order: the account's bounds, the ledger chain and each
//! row's rule, the ledger ending at the account, conservation, holds, refunds, events.

use prost::Message;
use shared::proto::v1 as pb;
use shared::record::{AccountAmounts, RecordKind};
use sqlx::mysql::MySqlRow;
use sqlx::{MySqlPool, Row};

/// Invariants 1, 4 and 5 of ARCHITECTURE.md for one account, from what MySQL holds:
/// the ledger chain, conservation of balance and free quota, every change with its event.
pub async fn assert_invariants(pool: &MySqlPool, user: &str) {
    let account = fetch_account(pool, user).await;
    let ledger = fetch_ledger(pool, user).await;
    let Some(account) = account else {
        assert!(ledger.is_empty(), "{user}: ledger rows without an account");
        return;
    };
    assert!(
        account.state.within_account_bounds(),
        "{user}: invariant 1 broken"
    );
    let sums = assert_ledger_chain(user, &ledger, &account.state.period);
    assert_ledger_ends_at_account(user, &ledger, &account);
    assert_ledger_conserves_account(user, &sums, &account.state);
    assert_holds_are_open_reservations(pool, user, &account.state).await;
    assert_refunds_match_their_rows_and_charges(pool, user).await;
    assert_one_event_per_ledger_row(pool, user, &ledger).await;
}

/// The chain: versions 1..=n, the first row starting empty, each row's before the previous
/// row's after, each row true to its kind's rule and to invariant 1. Returns what the rows add
/// up to, for the conservation checks.
fn assert_ledger_chain<'a>(user: &str, ledger: &[LedgerRow], period: &'a str) -> LedgerSums<'a> {
    let mut sums = LedgerSums::for_period(period);
    let mut previous: Option<&AccountAmounts> = None;
    for (index, row) in ledger.iter().enumerate() {
        let v = row.version;
        assert_eq!(v, index as i64 + 1, "{user}: versions must be consecutive");
        match previous {
            None => assert_eq!(
                row.before,
                empty_in(&row.before.period),
                "{user}: the first row starts empty"
            ),
            Some(state) => assert_eq!(&row.before, state, "{user}: chain broken at version {v}"),
        }
        // Which account, which row, which rule: the message of every check below.
        let at = format!("account {user}, version {v} ({})", row.kind);
        assert_kind_rule(user, row, &at, previous.is_none(), &mut sums);
        assert!(
            row.after.within_ledger_bounds(),
            "{at}: invariant 1 broken in the ledger"
        );
        previous = Some(&row.after);
    }
    sums
}

/// One ledger row against the rule of its kind; `first` says whether it opens the chain.
fn assert_kind_rule(user: &str, row: &LedgerRow, at: &str, first: bool, sums: &mut LedgerSums) {
    match RecordKind::parse(&row.kind) {
        Some(RecordKind::Deduct) => assert_deduct_splits_free_then_balance(row, at, sums),
        Some(RecordKind::Recharge | RecordKind::Adjust) => {
            assert_credit_moves_only_balance(row, at, sums)
        }
        Some(RecordKind::FreeGrant) => assert_grant_opens_later_period(row, at, first, sums),
        Some(RecordKind::Hold) => assert_hold_only_holds(row, at),
        Some(RecordKind::Release) => assert_release_only_unholds(row, at),
        Some(RecordKind::Refund) => assert_refund_returns_its_parts(row, at, sums),
        Some(RecordKind::Plan) => assert_plan_moves_no_money(row, at, sums),
        None => panic!("{user}: unknown ledger kind {}", row.kind),
    }
}

/// A charge: its free and balance parts add up to it; the free part is used from this month's
/// quota, or, settled after its month, was paid from that month's quota.
fn assert_deduct_splits_free_then_balance(row: &LedgerRow, at: &str, sums: &mut LedgerSums) {
    let (before, after) = (&row.before, &row.after);
    assert_eq!(
        row.free_part + row.balance_part,
        row.amount,
        "{at}: split must add up"
    );
    assert_eq!(
        after.balance,
        before.balance - row.balance_part,
        "{at}: the balance part taken"
    );
    if row.free_belongs_to_its_period() {
        assert_eq!(
            after.used,
            before.used + row.free_part,
            "{at}: the free part used"
        );
        if sums.counts(row) {
            sums.free_used_in_period += row.free_part;
        }
    } else {
        assert_eq!(
            after.used, before.used,
            "{at}: an earlier month's quota paid"
        );
    }
    sums.debits += row.balance_part;
}

/// A recharge or an adjustment: the balance credited, the free quota untouched.
fn assert_credit_moves_only_balance(row: &LedgerRow, at: &str, sums: &mut LedgerSums) {
    let (before, after) = (&row.before, &row.after);
    assert_eq!(
        after.balance,
        before.balance + row.balance_part,
        "{at}: the balance credited"
    );
    assert_eq!(
        (after.granted, after.used),
        (before.granted, before.used),
        "{at}: the free quota untouched"
    );
    sums.credits += row.balance_part;
}

/// A free grant opens a later period (or the first one) with its quota, unused, moving no money.
fn assert_grant_opens_later_period(row: &LedgerRow, at: &str, first: bool, sums: &mut LedgerSums) {
    let (before, after) = (&row.before, &row.after);
    assert!(
        after.period > before.period || first,
        "{at}: a grant opens a later period"
    );
    assert_eq!(
        (after.balance, after.granted, after.used),
        (before.balance, row.free_part, 0),
        "{at}: a grant sets the period's quota, unused, and moves no money"
    );
    if sums.counts(row) {
        sums.granted_in_period = Some(row.free_part);
    }
}

/// A hold: free quota first, then balance, held, neither used nor taken.
fn assert_hold_only_holds(row: &LedgerRow, at: &str) {
    let (before, after) = (&row.before, &row.after);
    assert_eq!(
        row.free_part + row.balance_part,
        row.amount,
        "{at}: a hold's parts add up"
    );
    assert_eq!(
        after.apart_from_holds(),
        before.apart_from_holds(),
        "{at}: a hold takes and uses nothing"
    );
    assert_eq!(
        (after.free_held, after.balance_held),
        (
            before.free_held + row.free_part,
            before.balance_held + row.balance_part
        ),
        "{at}: the hold's parts held"
    );
}

/// A release: what became available again, at most the hold; a free part of an ended month
/// is not.
fn assert_release_only_unholds(row: &LedgerRow, at: &str) {
    let (before, after) = (&row.before, &row.after);
    assert!(
        row.free_part + row.balance_part <= row.amount,
        "{at}: a release gives back at most the hold"
    );
    assert_eq!(
        after.apart_from_holds(),
        before.apart_from_holds(),
        "{at}: a release takes and uses nothing"
    );
    assert_eq!(
        (after.free_held, after.balance_held),
        (
            before.free_held - row.free_part,
            before.balance_held - row.balance_part
        ),
        "{at}: the released parts no longer held"
    );
}

/// A refund: the balance part back to the balance; the free part back to the quota only in
/// the charge's period (the rest of `amount` was forfeited).
fn assert_refund_returns_its_parts(row: &LedgerRow, at: &str, sums: &mut LedgerSums) {
    let (before, after) = (&row.before, &row.after);
    assert!(
        row.free_part >= 0
            && row.balance_part >= 0
            && row.free_part + row.balance_part <= row.amount,
        "{at}: refund parts"
    );
    assert_eq!(
        after.balance,
        before.balance + row.balance_part,
        "{at}: the balance part returned"
    );
    assert_eq!(
        (&after.period, after.granted),
        (&before.period, before.granted),
        "{at}: the grant untouched"
    );
    assert_eq!(
        after.used,
        before.used - row.free_part,
        "{at}: the free part returned"
    );
    sums.credits += row.balance_part;
    if sums.counts(row) {
        sums.free_used_in_period -= row.free_part;
    }
}

/// A plan: the monthly amount changes; a period granted in advance may be granted anew, never
/// below what it used. No money moves.
fn assert_plan_moves_no_money(row: &LedgerRow, at: &str, sums: &mut LedgerSums) {
    let (before, after) = (&row.before, &row.after);
    assert_eq!(
        (after.balance, &after.period, after.used),
        (before.balance, &before.period, before.used),
        "{at}: a plan moves no money"
    );
    assert_eq!(
        (row.free_part, row.balance_part),
        (0, 0),
        "{at}: a plan moves no money"
    );
    assert!(
        after.granted >= after.used,
        "{at}: a new grant below what was used"
    );
    if sums.counts(row) {
        sums.granted_in_period = Some(after.granted);
    }
}

/// The last row is the account (an empty ledger an empty account), one row per version.
fn assert_ledger_ends_at_account(user: &str, ledger: &[LedgerRow], account: &Account) {
    let last = ledger
        .last()
        .map_or_else(AccountAmounts::default, |row| row.after.clone());
    assert_eq!(
        last, account.state,
        "{user}: the last row must be the account"
    );
    assert_eq!(
        account.version,
        ledger.len() as i64,
        "{user}: one ledger row per version"
    );
}

/// Conservation: the balance is what was credited less what was taken; the period's free quota
/// used and granted are what its rows used and granted.
fn assert_ledger_conserves_account(user: &str, sums: &LedgerSums, account: &AccountAmounts) {
    assert_eq!(
        account.balance,
        sums.credits - sums.debits,
        "{user}: balance conservation"
    );
    assert_eq!(
        account.used, sums.free_used_in_period,
        "{user}: free quota conservation"
    );
    assert_eq!(
        Some(account.granted),
        sums.granted_in_period,
        "{user}: the period's grant"
    );
}

/// Holds: what the account holds is exactly what its open reservations hold (the free part
/// only of those of the account's period), each counted once.
async fn assert_holds_are_open_reservations(
    pool: &MySqlPool,
    user: &str,
    account: &AccountAmounts,
) {
    let reserved: (i64, i64) = sqlx::query_as(
        "SELECT CAST(COALESCE(SUM(IF(period = ?, free_held_micros, 0)), 0) AS SIGNED), \
         CAST(COALESCE(SUM(balance_held_micros), 0) AS SIGNED) \
         FROM reservations WHERE user_id = ? AND status = 'held'",
    )
    .bind(&account.period)
    .bind(user)
    .fetch_one(pool)
    .await
    .unwrap();
    assert_eq!(
        (account.free_held, account.balance_held),
        reserved,
        "{user}: the account's holds are its open reservations"
    );
}

/// Refunds: each has its ledger row with the same parts, and the refunds of a charge never
/// exceed it, part by part.
async fn assert_refunds_match_their_rows_and_charges(pool: &MySqlPool, user: &str) {
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
}

/// Invariant 4 on the write side: every ledger row has its event in the outbox, and every
/// change event in the outbox its ledger row.
async fn assert_one_event_per_ledger_row(pool: &MySqlPool, user: &str, ledger: &[LedgerRow]) {
    let payloads: Vec<Vec<u8>> = sqlx::query_scalar("SELECT payload FROM outbox WHERE user_id = ?")
        .bind(user)
        .fetch_all(pool)
        .await
        .unwrap();
    let mut event_records: Vec<String> = payloads
        .iter()
        .filter_map(|payload| record_id_of(&pb::BillingEvent::decode(payload.as_slice()).unwrap()))
        .collect();
    let mut ledger_records: Vec<String> = ledger.iter().map(|row| row.record_id.clone()).collect();
    event_records.sort();
    ledger_records.sort();
    assert_eq!(
        event_records, ledger_records,
        "{user}: one event per ledger row"
    );
}

/// The columns of [`AccountAmounts`], in its field order, as the account row names them.
const ACCOUNT_COLUMNS: [&str; 6] = [
    "balance_micros",
    "period",
    "free_granted_micros",
    "free_used_micros",
    "free_held_micros",
    "balance_held_micros",
];
/// The same, for a ledger row's state before it.
const BEFORE_COLUMNS: [&str; 6] = [
    "balance_before_micros",
    "period_before",
    "free_granted_before_micros",
    "free_used_before_micros",
    "free_held_before_micros",
    "balance_held_before_micros",
];
/// The same, for a ledger row's state after it.
const AFTER_COLUMNS: [&str; 6] = [
    "balance_after_micros",
    "period",
    "free_granted_after_micros",
    "free_used_after_micros",
    "free_held_after_micros",
    "balance_held_after_micros",
];

/// Reads the six `columns` (named in the field order) of one row.
fn read_amounts(row: &MySqlRow, columns: [&str; 6]) -> AccountAmounts {
    let [balance, period, granted, used, free_held, balance_held] = columns;
    AccountAmounts {
        balance: row.get(balance),
        period: row.get(period),
        granted: row.get(granted),
        used: row.get(used),
        free_held: row.get(free_held),
        balance_held: row.get(balance_held),
    }
}

/// Nothing yet, in `period`: where the first ledger row starts.
fn empty_in(period: &str) -> AccountAmounts {
    AccountAmounts {
        period: period.to_owned(),
        ..AccountAmounts::default()
    }
}

/// What the checks ask of an account's amounts.
trait Checked {
    /// Everything but the holds: what a hold or a release leaves alone.
    fn apart_from_holds(&self) -> (i64, &str, i64, i64);

    /// Invariant 1 on the account: nothing negative, the free quota used and held within the
    /// grant, the balance held within the balance.
    fn within_account_bounds(&self) -> bool;

    /// Invariant 1 as every ledger row's after must keep it.
    fn within_ledger_bounds(&self) -> bool;
}

impl Checked for AccountAmounts {
    fn apart_from_holds(&self) -> (i64, &str, i64, i64) {
        (self.balance, &self.period, self.granted, self.used)
    }

    fn within_account_bounds(&self) -> bool {
        self.balance >= 0
            && 0 <= self.used
            && self.free_held >= 0
            && self.used + self.free_held <= self.granted
            && (0..=self.balance).contains(&self.balance_held)
    }

    fn within_ledger_bounds(&self) -> bool {
        self.balance >= 0
            && self.used + self.free_held <= self.granted
            && (0..=self.balance).contains(&self.balance_held)
    }
}

/// The account row: its amounts and its version.
struct Account {
    state: AccountAmounts,
    version: i64,
}

async fn fetch_account(pool: &MySqlPool, user: &str) -> Option<Account> {
    let row = sqlx::query(
        "SELECT balance_micros, period, free_granted_micros, free_used_micros, free_held_micros, \
         balance_held_micros, version FROM accounts WHERE user_id = ?",
    )
    .bind(user)
    .fetch_optional(pool)
    .await
    .unwrap()?;
    Some(Account {
        state: read_amounts(&row, ACCOUNT_COLUMNS),
        version: row.get("version"),
    })
}

/// One ledger row: its parts (`free_part` from the quota, `balance_part` from the balance,
/// `amount` the whole) and the account before and after it.
struct LedgerRow {
    record_id: String,
    version: i64,
    kind: String,
    amount: i64,
    free_part: i64,
    balance_part: i64,
    before: AccountAmounts,
    after: AccountAmounts,
    free_period: Option<String>,
}

impl LedgerRow {
    fn read(row: &MySqlRow) -> Self {
        LedgerRow {
            record_id: row.get("record_id"),
            version: row.get("version"),
            kind: row.get("kind"),
            amount: row.get("amount_micros"),
            free_part: row.get("free_micros"),
            balance_part: row.get("balance_micros"),
            before: read_amounts(row, BEFORE_COLUMNS),
            after: read_amounts(row, AFTER_COLUMNS),
            free_period: row.get("free_period"),
        }
    }

    /// The free part of a hold settled after its month belongs to that month's quota, not to
    /// this row's period.
    fn free_belongs_to_its_period(&self) -> bool {
        self.free_period
            .as_ref()
            .is_none_or(|period| *period == self.after.period)
    }
}

async fn fetch_ledger(pool: &MySqlPool, user: &str) -> Vec<LedgerRow> {
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
    rows.iter().map(LedgerRow::read).collect()
}

/// What the ledger adds up to, to compare with the account: money credited and taken over the
/// whole history, the free quota used and granted in the account's period only.
struct LedgerSums<'a> {
    period: &'a str,
    credits: i64,
    debits: i64,
    free_used_in_period: i64,
    granted_in_period: Option<i64>,
}

impl<'a> LedgerSums<'a> {
    fn for_period(period: &'a str) -> Self {
        LedgerSums {
            period,
            credits: 0,
            debits: 0,
            free_used_in_period: 0,
            granted_in_period: None,
        }
    }

    /// Whether `row`'s free quota counts: it ends in the account's period.
    fn counts(&self, row: &LedgerRow) -> bool {
        row.after.period == self.period
    }
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
        | Kind::FreeQuotaExhausted(_)
        | Kind::PriceListPublished(_)
        | Kind::PriceListAssigned(_)
        | Kind::SpendLimitsSet(_)
        | Kind::SpendLimitReached(_) => None,
    }
}
