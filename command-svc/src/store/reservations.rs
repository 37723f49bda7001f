//! `reservations`: one row per `ReserveQuota`, its hold and how it ended. Read and changed only
//! under the account's row lock, which every command on the account takes first, and then the
//! reservation's own lock: a settle, a release and the sweeper never end one twice.

use chrono::{DateTime, Utc};
use shared::{
    account::Hold,
    ids::{RequestId, UserId},
    money::Micros,
    period::Period,
    pricing::Usage,
};
use sqlx::MySqlPool;

use super::{StoreError, Tx, accounts::parse_period};

/// How a reservation stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReservationStatus {
    Held,
    Settled,
    Released,
    Expired,
}

impl ReservationStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            ReservationStatus::Held => "held",
            ReservationStatus::Settled => "settled",
            ReservationStatus::Released => "released",
            ReservationStatus::Expired => "expired",
        }
    }

    fn parse(text: &str) -> Result<Self, StoreError> {
        Ok(match text {
            "held" => ReservationStatus::Held,
            "settled" => ReservationStatus::Settled,
            "released" => ReservationStatus::Released,
            "expired" => ReservationStatus::Expired,
            _ => {
                return Err(StoreError::internal(sqlx::Error::Protocol(format!(
                    "a reservation with status {text:?}"
                ))));
            }
        })
    }
}

#[derive(Clone, Debug, sqlx::FromRow)]
struct Row {
    reservation_id: String,
    request_id: String,
    api_id: String,
    amount_micros: i64,
    free_held_micros: i64,
    balance_held_micros: i64,
    period: String,
    status: String,
    hold_record_id: String,
    end_record_id: Option<String>,
    settle_record_id: Option<String>,
    actual_micros: Option<i64>,
    settle_released_micros: Option<i64>,
    settled_after_expiry: Option<bool>,
    expires_at: DateTime<Utc>,
    usage_units: Option<String>,
    price_list: Option<String>,
    price_version: Option<i64>,
    key_id: Option<String>,
    created_at: DateTime<Utc>,
}

/// A reservation as stored.
#[derive(Clone, Debug)]
pub struct Reservation {
    pub reservation_id: String,
    pub request_id: String,
    pub api_id: String,
    pub amount: Micros,
    pub hold: Hold,
    /// The month whose free quota the hold took.
    pub period: Period,
    pub status: ReservationStatus,
    pub hold_record_id: String,
    /// The ledger row that ended it first: the settle's charge, or the release (a caller's, or
    /// the sweeper's at expiry). Never overwritten.
    pub end_record_id: Option<String>,
    /// How it was settled, if it was (before or after its expiry).
    pub settle: Option<SettleRecord>,
    pub expires_at: DateTime<Utc>,
    /// The usage it holds for, when it was reserved with one.
    pub usage: Option<Usage>,
    /// The version of the account's list in effect when it was reserved (if any): a settle's
    /// usage is priced with it.
    pub price: Option<(String, i64)>,
    /// The caller's API key, when it gave one.
    pub key_id: String,
    /// When it was taken: the window its hold (and its settle) spends in.
    pub created_at: DateTime<Utc>,
}

/// A settle as its first answer gave it: the charge's row, the actual price, what it released
/// (0 after expiry, when the hold had been given back already) and whether it came after expiry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SettleRecord {
    pub record_id: String,
    pub actual: Micros,
    pub released: Micros,
    pub after_expiry: bool,
}

impl Reservation {
    /// What the reservation spends under the account's limits: `amount`, in the window it was
    /// taken in.
    pub fn spend(&self, amount: Micros) -> shared::limits::Spend<'_> {
        shared::limits::Spend::new(&self.api_id, &self.key_id, amount, self.created_at)
    }

    /// What the end of the hold gave back, as its first answer said: the whole hold when a
    /// release (or expiry) ended it, the rest of the actual price when a settle did.
    pub fn released_at_end(&self) -> Micros {
        match &self.settle {
            Some(settle) if self.end_record_id.as_deref() == Some(settle.record_id.as_str()) => {
                settle.released
            }
            _ => self.amount,
        }
    }
}

impl TryFrom<Row> for Reservation {
    type Error = StoreError;

    fn try_from(row: Row) -> Result<Self, StoreError> {
        Ok(Reservation {
            reservation_id: row.reservation_id,
            request_id: row.request_id,
            api_id: row.api_id,
            amount: Micros::new(row.amount_micros),
            hold: Hold {
                free: Micros::new(row.free_held_micros),
                balance: Micros::new(row.balance_held_micros),
            },
            period: parse_period(&row.period)?,
            status: ReservationStatus::parse(&row.status)?,
            hold_record_id: row.hold_record_id,
            end_record_id: row.end_record_id,
            settle: match (row.settle_record_id, row.actual_micros) {
                (Some(record_id), Some(actual)) => Some(SettleRecord {
                    record_id,
                    actual: Micros::new(actual),
                    released: Micros::new(row.settle_released_micros.unwrap_or(0)),
                    after_expiry: row.settled_after_expiry.unwrap_or(false),
                }),
                _ => None,
            },
            expires_at: row.expires_at,
            usage: row.usage_units.as_deref().and_then(Usage::from_json),
            price: row.price_list.zip(row.price_version),
            key_id: row.key_id.unwrap_or_default(),
            created_at: row.created_at,
        })
    }
}

/// Locks and reads the reservation under `(user_id, request_id)`, if any.
pub async fn lock_reservation(
    tx: &mut Tx,
    user_id: &UserId,
    request_id: &RequestId,
) -> Result<Option<Reservation>, StoreError> {
    let row: Option<Row> = sqlx::query_as(
        "SELECT reservation_id, request_id, api_id, amount_micros, free_held_micros, balance_held_micros, \
         period, status, hold_record_id, end_record_id, settle_record_id, actual_micros, \
         settle_released_micros, settled_after_expiry, expires_at, usage_units, price_list, \
         price_version, key_id, created_at \
         FROM reservations WHERE user_id = ? AND request_id = ? FOR UPDATE",
    )
    .bind(user_id)
    .bind(request_id)
    .fetch_optional(&mut **tx)
    .await?;
    row.map(Reservation::try_from).transpose()
}

/// A reservation about to be stored, held.
pub struct NewReservation<'a> {
    pub reservation_id: &'a str,
    pub user_id: &'a UserId,
    pub request_id: &'a RequestId,
    pub api_id: &'a str,
    pub hold: Hold,
    pub period: Period,
    pub hold_record_id: &'a str,
    pub expires_at: DateTime<Utc>,
    pub usage: Option<&'a Usage>,
    pub price: Option<(&'a str, i64)>,
    pub key_id: &'a str,
}

pub async fn insert_reservation(
    tx: &mut Tx,
    reservation: &NewReservation<'_>,
    now: DateTime<Utc>,
) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO reservations (reservation_id, user_id, request_id, api_id, amount_micros, \
         free_held_micros, balance_held_micros, period, status, hold_record_id, created_at, \
         expires_at, usage_units, price_list, price_version, key_id) \
         VALUES (?, ?, ?, ?, ?, ?, ?, ?, 'held', ?, ?, ?, ?, ?, ?, ?)",
    )
    .bind(reservation.reservation_id)
    .bind(reservation.user_id)
    .bind(reservation.request_id)
    .bind(reservation.api_id)
    .bind(reservation.hold.total().get())
    .bind(reservation.hold.free.get())
    .bind(reservation.hold.balance.get())
    .bind(reservation.period.to_string())
    .bind(reservation.hold_record_id)
    .bind(now)
    .bind(reservation.expires_at)
    .bind(reservation.usage.map(Usage::to_json))
    .bind(reservation.price.map(|(list, _)| list))
    .bind(reservation.price.map(|(_, version)| version))
    .bind(Some(reservation.key_id).filter(|key| !key.is_empty()))
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// Ends a held reservation by a release: the caller's (`Released`) or at expiry (`Expired`),
/// with the release's ledger row.
pub async fn end_reservation(
    tx: &mut Tx,
    reservation_id: &str,
    status: ReservationStatus,
    end_record_id: &str,
    now: DateTime<Utc>,
) -> Result<(), StoreError> {
    sqlx::query(
        "UPDATE reservations SET status = ?, end_record_id = ?, ended_at = ? \
         WHERE reservation_id = ?",
    )
    .bind(status.as_str())
    .bind(end_record_id)
    .bind(now)
    .bind(reservation_id)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// Records a reservation's settle. When it is its first end (settled while held), the settle's
/// row is its end too; after an expiry the release stays its end.
pub async fn record_settle(
    tx: &mut Tx,
    reservation_id: &str,
    settle: &SettleRecord,
    now: DateTime<Utc>,
) -> Result<(), StoreError> {
    sqlx::query(
        "UPDATE reservations SET status = 'settled', settle_record_id = ?, actual_micros = ?, \
         settle_released_micros = ?, settled_after_expiry = ?, \
         end_record_id = COALESCE(end_record_id, ?), ended_at = COALESCE(ended_at, ?) \
         WHERE reservation_id = ?",
    )
    .bind(&settle.record_id)
    .bind(settle.actual.get())
    .bind(settle.released.get())
    .bind(settle.after_expiry)
    .bind(&settle.record_id)
    .bind(now)
    .bind(reservation_id)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// Up to `limit` held reservations that expired by `now`, after `after` in the order of expiry
/// then id (from the oldest without it), so that a walk passes over a hold it could not release.
/// Not locked: the sweeper locks each account, then the reservation, and checks again.
pub async fn expired_reservations(
    pool: &MySqlPool,
    now: DateTime<Utc>,
    after: Option<&ExpiredHold>,
    limit: u32,
) -> Result<Vec<ExpiredHold>, StoreError> {
    let before_any = DateTime::<Utc>::UNIX_EPOCH;
    let (after_at, after_id) = after.map_or((before_any, ""), |hold| {
        (hold.expires_at, hold.reservation_id.as_str())
    });
    Ok(sqlx::query_as(
        "SELECT reservation_id, user_id, request_id, expires_at FROM reservations \
         WHERE status = 'held' AND expires_at <= ? \
           AND (expires_at > ? OR (expires_at = ? AND reservation_id > ?)) \
         ORDER BY expires_at, reservation_id LIMIT ?",
    )
    .bind(now)
    .bind(after_at)
    .bind(after_at)
    .bind(after_id)
    .bind(limit)
    .fetch_all(pool)
    .await?)
}

/// A hold past its time, as the sweeper walks them: in order of expiry, then of id.
#[derive(Clone, Debug, sqlx::FromRow)]
pub struct ExpiredHold {
    pub reservation_id: String,
    pub user_id: UserId,
    pub request_id: RequestId,
    pub expires_at: DateTime<Utc>,
}
