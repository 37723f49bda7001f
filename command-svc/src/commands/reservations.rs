//! Reservations, for calls whose price is known only afterwards (streaming, long jobs):
//! `ReserveQuota` holds an amount (free quota first, then balance), `SettleReservation` charges
//! the actual price from it as an ordinary charge and gives the rest back, `ReleaseReservation`
//! gives it all back, and the sweeper releases the holds that expired. A hold keeps the month it
//! was taken in: settled after midnight, its free part is that month's quota. Every step is
//! idempotent by `(user_id, request_id)`: the hold's ledger row carries the request id under the
//! ledger's unique key, the one charges use, so a charge and a reservation never share a key.

use chrono::{DateTime, Utc};
use shared::{
    account::{AccountSnapshot, Hold, Refusal, Split},
    ids::{RequestId, UserId},
    limits::Spend,
    money::Micros,
    period::Period,
    proto::v1::{QuotaReserved, ReservationReleased, ReservationSettled, billing_event::Kind},
};

use super::{
    CommandError, Commands,
    account_tx::AccountTx,
    changes::{AccountChanges, Change},
    charge::{asks_as_recorded, priced_fields},
    prices::{self, Priced},
};
use crate::{
    domain::{Asked, ReleaseReservation, ReserveQuota, SettleReservation},
    events::{self, AccountOut},
    store::{
        self, Amounts, NewReservation, RecordKind, Refs, Reservation, ReservationStatus,
        SettleRecord, StoreError,
    },
};

#[derive(Clone, Debug)]
pub struct Reserved {
    pub reservation_id: String,
    pub hold: Hold,
    pub expires_at: DateTime<Utc>,
    pub account: AccountOut,
    pub replayed: bool,
}

#[derive(Clone, Debug)]
pub struct Settled {
    pub record_id: String,
    /// What the call was charged: the actual amount, or its usage priced.
    pub amount: Micros,
    pub priced_by: Option<shared::pricing::PricedBy>,
    pub split: Split,
    pub released: Micros,
    pub account: AccountOut,
    pub replayed: bool,
    pub after_expiry: bool,
}

#[derive(Clone, Debug)]
pub struct Released {
    pub released: Micros,
    pub account: AccountOut,
    pub replayed: bool,
}

/// A record of the key space shared by charges and reservations.
fn record_or_missing<T>(record: Option<T>) -> Result<T, StoreError> {
    record.ok_or_else(|| StoreError::internal(sqlx::Error::RowNotFound))
}

impl Commands {
    pub async fn reserve_quota(&self, command: &ReserveQuota) -> Result<Reserved, CommandError> {
        self.store.retrying(|| self.reserve_once(command)).await
    }

    async fn reserve_once(&self, command: &ReserveQuota) -> Result<Reserved, CommandError> {
        // Every reservation keeps the version of its account's list in effect when it is
        // taken, for a settle's usage.
        let book = self.prices.fresh(&self.store).await?;
        let now = self.now();
        let user_id = &command.user_id;
        let request_id = &command.request_id;
        let mut account = AccountTx::lock(&self.store, &self.rules, user_id, now).await?;
        if account.exists() {
            if let Some(earlier) =
                store::lock_reservation(account.tx(), user_id, request_id).await?
            {
                let same = earlier.api_id == command.api_id.as_str()
                    && match &command.asked {
                        Asked::Amount(amount) => {
                            earlier.usage.is_none() && earlier.amount == *amount
                        }
                        Asked::Usage(usage) => earlier.usage.as_ref() == Some(usage),
                    };
                let record =
                    store::find_record(account.tx(), user_id, &earlier.hold_record_id).await?;
                let shown = account.end_in_replay(&record_or_missing(record)?).await?;
                if !same {
                    return Err(CommandError::KeyReused { key: "request_id" });
                }
                return Ok(Reserved {
                    reservation_id: earlier.reservation_id,
                    hold: earlier.hold,
                    expires_at: earlier.expires_at,
                    account: shown,
                    replayed: true,
                });
            }
            if store::find_charge(account.tx(), user_id, request_id)
                .await?
                .is_some()
            {
                account.rollback().await?;
                return Err(CommandError::KeyReused { key: "request_id" });
            }
        }

        let list = self
            .rules
            .price_list_of(account.account().price_list.as_deref())
            .to_owned();
        let in_effect = book.in_effect(&list, now);
        let priced = match &command.asked {
            Asked::Amount(amount) => Ok(Priced {
                amount: *amount,
                by: None,
            }),
            Asked::Usage(usage) => {
                prices::price_usage(in_effect.map(|v| &**v), &list, &command.api_id, usage)
            }
        };
        let priced = match priced {
            Ok(priced) => priced,
            Err(error) => {
                account.rollback().await?;
                return Err(error);
            }
        };
        let spend = Spend::new(
            command.api_id.as_str(),
            command.key_id.as_str(),
            priced.amount,
            now,
        );
        if let Err(error) = account.check_limits(spend) {
            self.commit(account).await?;
            return Err(error);
        }
        account.open_period();
        let (hold, after) = match account.state().hold(priced.amount) {
            Ok(held) => held,
            Err(refusal) => {
                account.rollback().await?;
                return Err(refusal.into());
            }
        };
        let ttl = command.ttl.unwrap_or(self.rules.default_reservation_ttl);
        let expires_at = now + chrono::Duration::from_std(ttl).unwrap_or(chrono::Duration::MAX);
        let (reservation_id, record_id) = (events::new_id(), events::new_id());
        let reservation = NewReservation {
            reservation_id: &reservation_id,
            user_id,
            request_id,
            api_id: command.api_id.as_str(),
            hold,
            period: account.state().period,
            hold_record_id: &record_id,
            expires_at,
            usage: command.asked.usage(),
            price: in_effect.map(|v| (list.as_str(), v.prices.version)),
            key_id: command.key_id.as_str(),
        };
        store::insert_reservation(account.tx(), &reservation, now).await?;
        account.append(hold_change(&priced, &reservation, after));
        account.add_spend(spend);
        let account = self.commit(account).await?;
        Ok(Reserved {
            reservation_id,
            hold,
            expires_at,
            account,
            replayed: false,
        })
    }

    /// The account locked, with the reservation under `request_id` locked too when both exist.
    async fn lock_reservation(
        &self,
        user_id: &UserId,
        request_id: &RequestId,
        now: DateTime<Utc>,
    ) -> Result<(AccountTx<'_>, Option<Reservation>), StoreError> {
        let mut account = AccountTx::lock(&self.store, &self.rules, user_id, now).await?;
        let reservation = if account.exists() {
            store::lock_reservation(account.tx(), user_id, request_id).await?
        } else {
            None
        };
        Ok((account, reservation))
    }

    pub async fn settle_reservation(
        &self,
        command: &SettleReservation,
    ) -> Result<Settled, CommandError> {
        self.store.retrying(|| self.settle_once(command)).await
    }

    async fn settle_once(&self, command: &SettleReservation) -> Result<Settled, CommandError> {
        let book = self.book_for(command.actual.usage().is_some()).await?;
        let now = self.now();
        let (mut account, reservation) = self
            .lock_reservation(&command.user_id, &command.request_id, now)
            .await?;
        let Some(reservation) = reservation.filter(|r| r.status != ReservationStatus::Released)
        else {
            account.rollback().await?;
            return Err(CommandError::ReservationNotFound);
        };
        if let Some(settle) = &reservation.settle {
            return self.settle_replayed(account, command, settle).await;
        }
        let list = self
            .rules
            .price_list_of(account.account().price_list.as_deref())
            .to_owned();
        let actual = match settle_price(book.as_deref(), &reservation, &list, &command.actual) {
            Ok(actual) if actual.amount > reservation.amount => {
                Err(CommandError::SettleExceedsHold)
            }
            priced => priced,
        };
        let actual = match actual {
            Ok(actual) => actual,
            Err(error) => {
                account.rollback().await?;
                return Err(error);
            }
        };

        account.open_period();
        let expired =
            reservation.status == ReservationStatus::Expired || now >= reservation.expires_at;
        if expired && reservation.status == ReservationStatus::Held {
            // Past its time the hold is given back, and the call is an ordinary charge.
            self.append_release(&mut account, &reservation, true)
                .await?;
        }
        // Past its expiry the call is an ordinary charge, spent now; before it, the hold (spent
        // when it was taken) is replaced by the actual amount.
        let late_charge = expired.then(|| Spend {
            at: now,
            ..reservation.spend(actual.amount)
        });
        if let Some(spend) = late_charge
            && let Err(error) = account.check_limits(spend)
        {
            // The expired hold's release (and the limit's event) stand.
            self.commit(account).await?;
            return Err(error);
        }
        if !expired {
            let unused = reservation
                .amount
                .checked_sub(actual.amount)
                .unwrap_or(Micros::ZERO);
            account.give_back_spend(reservation.spend(unused));
        }
        let now_period = account.now_period();
        let decided = match decide_settle(
            account.account(),
            &reservation,
            actual.amount,
            expired,
            now_period,
        ) {
            Ok(decided) => decided,
            Err(refusal) => {
                account.rollback().await?;
                return Err(refusal.into());
            }
        };
        let record_id = events::new_id();
        let settle = store::SettleRecord {
            record_id: record_id.clone(),
            actual: actual.amount,
            released: decided.released,
            after_expiry: expired,
        };
        store::record_settle(account.tx(), &reservation.reservation_id, &settle, now).await?;
        account.append(settle_change(&reservation, &settle, &actual, &decided));
        if let Some(spend) = late_charge {
            account.add_spend(spend);
        }
        let account = self.commit(account).await?;
        Ok(Settled {
            record_id,
            amount: actual.amount,
            priced_by: actual.by,
            split: decided.split,
            released: decided.released,
            account,
            replayed: false,
            after_expiry: expired,
        })
    }

    /// A settle already recorded, answered from what it recorded, whatever happened since; the
    /// same key with another amount is refused.
    async fn settle_replayed(
        &self,
        mut account: AccountTx<'_>,
        command: &SettleReservation,
        settle: &store::SettleRecord,
    ) -> Result<Settled, CommandError> {
        let record = store::find_record(account.tx(), &command.user_id, &settle.record_id).await?;
        let record = record_or_missing(record)?;
        let shown = account.end_in_replay(&record).await?;
        if !asks_as_recorded(&record, &command.actual) {
            return Err(CommandError::KeyReused { key: "request_id" });
        }
        Ok(Settled {
            amount: settle.actual,
            priced_by: record.priced_by(),
            record_id: record.record_id,
            split: Split {
                free: Micros::new(record.free_micros),
                balance: Micros::new(record.balance_micros),
            },
            released: settle.released,
            account: shown,
            replayed: true,
            after_expiry: settle.after_expiry,
        })
    }

    pub async fn release_reservation(
        &self,
        command: &ReleaseReservation,
    ) -> Result<Released, CommandError> {
        self.store.retrying(|| self.release_once(command)).await
    }

    async fn release_once(&self, command: &ReleaseReservation) -> Result<Released, CommandError> {
        let now = self.now();
        let user_id = &command.user_id;
        let (mut account, reservation) = self
            .lock_reservation(&command.user_id, &command.request_id, now)
            .await?;
        let Some(reservation) = reservation else {
            account.rollback().await?;
            return Err(CommandError::ReservationNotFound);
        };
        if reservation.status != ReservationStatus::Held {
            // Already ended: what its end gave back then, as recorded.
            let released = reservation.released_at_end();
            let record = match &reservation.end_record_id {
                Some(id) => store::find_record(account.tx(), user_id, id).await?,
                None => None,
            };
            let shown = account.end_in_replay(&record_or_missing(record)?).await?;
            return Ok(Released {
                released,
                account: shown,
                replayed: true,
            });
        }
        account.open_period();
        self.append_release(&mut account, &reservation, false)
            .await?;
        let account = self.commit(account).await?;
        Ok(Released {
            released: reservation.amount,
            account,
            replayed: false,
        })
    }

    /// Gives a held reservation back in `account`'s transaction: its `release` ledger row and
    /// event, and its end (expired, or released by the caller).
    async fn append_release(
        &self,
        account: &mut AccountTx<'_>,
        reservation: &Reservation,
        expired: bool,
    ) -> Result<(), StoreError> {
        let record_id = events::new_id();
        let status = if expired {
            ReservationStatus::Expired
        } else {
            ReservationStatus::Released
        };
        store::end_reservation(
            account.tx(),
            &reservation.reservation_id,
            status,
            &record_id,
            self.now(),
        )
        .await?;
        let change = release_change(account.state(), reservation, record_id, expired);
        account.append(change);
        account.give_back_spend(reservation.spend(reservation.amount));
        Ok(())
    }

    /// Releases every hold that expired by now, `page` at a time, each in its own transaction,
    /// taking the account's lock and then the reservation's, as every command does, and looking
    /// again under them: a hold settled or released meanwhile, or by another replica, is left
    /// alone, so each expires exactly once. A hold that cannot be released (its account's row
    /// unreadable, say) is counted and passed over, never left to stop the ones behind it; it is
    /// tried again at the next sweep. Returns how many this call released; stops at an
    /// unreachable store.
    pub async fn release_expired(&self, page: u32) -> Result<u32, CommandError> {
        let now = self.now();
        let mut released = 0;
        let mut after: Option<store::ExpiredHold> = None;
        loop {
            let holds =
                store::expired_reservations(self.store.pool(), now, after.as_ref(), page).await?;
            let full = holds.len() >= page as usize;
            for hold in &holds {
                match self.expire_hold(&hold.user_id, &hold.request_id).await {
                    Ok(true) => released += 1,
                    Ok(false) => {}
                    Err(error) if error.is_unavailable() => return Err(error),
                    Err(error) => {
                        metrics::counter!("billing_reservation_sweep_errors_total").increment(1);
                        tracing::error!(%error, reservation_id = %hold.reservation_id, "an expired hold could not be released; passed over");
                    }
                }
            }
            after = holds.last().cloned();
            if !full {
                return Ok(released);
            }
        }
    }

    /// Releases the hold under `(user_id, request_id)` if it is held and expired by now;
    /// whether it did.
    pub async fn expire_hold(
        &self,
        user_id: &UserId,
        request_id: &RequestId,
    ) -> Result<bool, CommandError> {
        self.store
            .retrying(|| self.expire_once(user_id, request_id))
            .await
    }

    async fn expire_once(
        &self,
        user_id: &UserId,
        request_id: &RequestId,
    ) -> Result<bool, CommandError> {
        let now = self.now();
        let mut account = AccountTx::lock(&self.store, &self.rules, user_id, now).await?;
        let reservation = store::lock_reservation(account.tx(), user_id, request_id).await?;
        let Some(reservation) =
            reservation.filter(|r| r.status == ReservationStatus::Held && r.expires_at <= now)
        else {
            account.rollback().await?;
            return Ok(false);
        };
        account.open_period();
        self.append_release(&mut account, &reservation, true)
            .await?;
        self.commit(account).await?;
        metrics::counter!("billing_reservations_expired_total").increment(1);
        Ok(true)
    }
}

/// What a settle charges: the actual amount, or its usage priced by the version the reservation
/// was taken under (with the reservation's API); when nothing of the account's `list` was in
/// effect then, the usage is unpriced.
fn settle_price(
    book: Option<&prices::Book>,
    reservation: &Reservation,
    list: &str,
    actual: &Asked,
) -> Result<Priced, CommandError> {
    let api_id = shared::ids::ApiId::stored(reservation.api_id.as_str());
    let usage = match actual {
        Asked::Amount(amount) => {
            return Ok(Priced {
                amount: *amount,
                by: None,
            });
        }
        Asked::Usage(usage) => usage,
    };
    let Some((list, version)) = &reservation.price else {
        return prices::price_usage(None, list, &api_id, usage);
    };
    let version = book.and_then(|book| book.version(list, *version));
    prices::price_usage(version.map(|v| &**v), list, &api_id, usage)
}

/// A settle's charge, decided.
struct SettleDecided {
    split: Split,
    after: AccountSnapshot,
    /// What the settle gives back of the hold (nothing after expiry: the hold was given back).
    released: Micros,
    /// The month of the free part, when it is not the account's (a hold settled after its
    /// month ended).
    free_period: Option<Period>,
}

/// Decides a settle of `actual` on `account`: past the reservation's expiry the hold was given
/// back and the call is an ordinary charge ([`AccountChanges::decide_charge`]); before it, the
/// price is taken from what the hold reserved, its free part from the hold's month.
fn decide_settle(
    account: &mut AccountChanges,
    reservation: &Reservation,
    actual: Micros,
    expired: bool,
    now_period: Period,
) -> Result<SettleDecided, Refusal> {
    if expired {
        let (split, after) = account.decide_charge(actual, now_period)?;
        return Ok(SettleDecided {
            split,
            after,
            released: Micros::ZERO,
            free_period: None,
        });
    }
    let (split, after) = account
        .state
        .settle(reservation.hold, reservation.period, actual)?;
    Ok(SettleDecided {
        split,
        after,
        released: reservation.hold.left_after(actual),
        free_period: (reservation.period != after.period).then_some(reservation.period),
    })
}

/// The ledger row and event of a settle's charge.
fn settle_change(
    reservation: &Reservation,
    settle: &SettleRecord,
    actual: &Priced,
    decided: &SettleDecided,
) -> Change {
    let (usage, price_list, price_version) = priced_fields(actual.by.as_ref());
    let SettleDecided {
        split,
        after,
        released,
        free_period,
    } = *decided;
    let event = Kind::ReservationSettled(ReservationSettled {
        record_id: settle.record_id.clone(),
        reservation_id: reservation.reservation_id.clone(),
        request_id: reservation.request_id.clone(),
        api_id: reservation.api_id.clone(),
        amount_micros: settle.actual.get(),
        free_micros: split.free.get(),
        balance_micros: split.balance.get(),
        released_micros: released.get(),
        after_expiry: settle.after_expiry,
        free_period: free_period.unwrap_or(after.period).to_string(),
        usage,
        price_list,
        price_version,
    });
    Change {
        record_id: settle.record_id.clone(),
        kind: RecordKind::Deduct,
        after,
        amounts: Amounts::of(settle.actual, split.free, split.balance),
        refs: Refs {
            api_id: Some(reservation.api_id.clone()),
            free_period: free_period.map(|period| period.to_string()),
            priced_by: actual.by.clone(),
            key_id: Some(reservation.key_id.clone()).filter(|key| !key.is_empty()),
            ..Refs::default()
        },
        event,
    }
}

/// The ledger row and event of a hold given back whole, from the account as it is `before`.
fn release_change(
    before: &AccountSnapshot,
    reservation: &Reservation,
    record_id: String,
    expired: bool,
) -> Change {
    let after = before.release(reservation.hold, reservation.period);
    let released_here = before.held_here(reservation.hold, reservation.period);
    let event = Kind::ReservationReleased(ReservationReleased {
        record_id: record_id.clone(),
        reservation_id: reservation.reservation_id.clone(),
        request_id: reservation.request_id.clone(),
        released_micros: reservation.amount.get(),
        expired,
        free_released_micros: released_here.free.get(),
        balance_released_micros: released_here.balance.get(),
    });
    Change {
        record_id,
        kind: RecordKind::Release,
        after,
        amounts: Amounts::of(
            reservation.amount,
            released_here.free,
            released_here.balance,
        ),
        refs: Refs::default(),
        event,
    }
}

/// The ledger row and event of a reservation's hold.
fn hold_change(
    priced: &Priced,
    reservation: &NewReservation<'_>,
    after: AccountSnapshot,
) -> Change {
    let hold = reservation.hold;
    let (usage, price_list, price_version) = priced_fields(priced.by.as_ref());
    let event = Kind::QuotaReserved(QuotaReserved {
        record_id: reservation.hold_record_id.to_owned(),
        reservation_id: reservation.reservation_id.to_owned(),
        request_id: reservation.request_id.as_str().to_owned(),
        api_id: reservation.api_id.to_owned(),
        amount_micros: priced.amount.get(),
        free_held_micros: hold.free.get(),
        balance_held_micros: hold.balance.get(),
        expires_at_ms: reservation.expires_at.timestamp_millis(),
        period: reservation.period.to_string(),
        usage,
        price_list,
        price_version,
    });
    Change {
        record_id: reservation.hold_record_id.to_owned(),
        kind: RecordKind::Hold,
        after,
        amounts: Amounts::of(priced.amount, hold.free, hold.balance),
        refs: Refs {
            request_id: Some(reservation.request_id.as_str().to_owned()),
            api_id: Some(reservation.api_id.to_owned()),
            priced_by: priced.by.clone(),
            key_id: Some(reservation.key_id.to_owned()).filter(|key| !key.is_empty()),
            ..Refs::default()
        },
        event,
    }
}
