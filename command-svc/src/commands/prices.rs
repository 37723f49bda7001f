//! Price lists: the book every replica prices usage from, in memory, and the commands that
//! publish a version, assign a list to an account and show a list.
//!
//! Each replica holds every published version ([`Book`]), reloads it every [`BOOK_REFRESH`],
//! and prices with a book only while its load started less than [`BOOK_LEASE`] ago (an older one
//! is reloaded first, on the charge's path). A version takes effect no sooner than
//! [`PUBLICATION_LEAD`] after its publication began, so every replica holds it before its
//! instant: once committed (within `PUBLICATION_LEAD - BOOK_LEASE`), any load that started after
//! the commit sees it, and a book older than the lease is never priced with. A version published
//! for now is therefore in effect from the same instant on every replica, and the publication
//! answers once that instant has come.

use std::{
    collections::HashMap,
    sync::{Arc, RwLock},
    time::{Duration, Instant},
};

use chrono::{DateTime, TimeDelta, Utc};
use shared::{
    ids::{ApiId, UserId},
    money::Micros,
    pricing::{self, Meter, PriceVersion, PricedBy, UnitPrice, Unpriceable, Usage},
    proto::v1::{self as pb, billing_event::Kind},
};

use super::{CommandError, Commands, account_tx::AccountTx};
use crate::{
    domain::{Asked, AssignPriceList, GetPriceList, ListOf, PublishPriceList},
    events::{self, AccountOut},
    store::{self, Outgoing, PriceRow, Store, StoreError, VersionRow, Writes},
};

/// How long a loaded book may price: a book whose load started longer ago is reloaded first.
pub const BOOK_LEASE: Duration = Duration::from_secs(1);
/// How often each replica reloads its book.
pub const BOOK_REFRESH: Duration = Duration::from_millis(250);
/// How long after its publication begins a version may take effect at the earliest.
pub const PUBLICATION_LEAD: TimeDelta = TimeDelta::seconds(2);

/// One published version and what the contract shows of it besides its prices.
#[derive(Debug)]
pub struct Published {
    pub prices: PriceVersion,
    pub published_at: DateTime<Utc>,
    pub actor: String,
}

impl Published {
    pub fn message(&self, currency: &str) -> pb::PriceList {
        let version = &self.prices;
        pb::PriceList {
            name: version.name.clone(),
            version: version.version,
            effective_from_ms: version.effective_from.timestamp_millis(),
            currency: currency.to_owned(),
            prices: version
                .prices()
                .map(|(api_id, meter, price)| pb::Price {
                    api_id: api_id.to_owned(),
                    meter: meter.as_str().to_owned(),
                    price_micros: price.price_micros() as i64,
                    per_units: i64::from(price.per_units()),
                })
                .collect(),
            published_at_ms: self.published_at.timestamp_millis(),
            actor: self.actor.clone(),
        }
    }
}

/// What a charge, a check or a hold costs: the amount asked, or its usage priced (and by what).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Priced {
    pub amount: Micros,
    pub by: Option<PricedBy>,
}

/// Every published version of every list, as one load found them.
#[derive(Debug, Default)]
pub struct Book {
    lists: HashMap<String, Vec<Arc<Published>>>,
    /// When the load that made this book started; `None` for the empty book before any load.
    confirmed: Option<Instant>,
}

impl Book {
    pub fn has_list(&self, list: &str) -> bool {
        self.lists.contains_key(list)
    }

    /// The version of `list` in effect at `at`.
    pub fn in_effect(&self, list: &str, at: DateTime<Utc>) -> Option<&Arc<Published>> {
        pricing::in_effect(self.lists.get(list)?, at, |held| &held.prices)
    }

    /// Version `version` of `list`.
    pub fn version(&self, list: &str, version: i64) -> Option<&Arc<Published>> {
        self.lists
            .get(list)?
            .iter()
            .find(|published| published.prices.version == version)
    }

    /// The versions of `list` that take effect after `at`, earliest first.
    pub fn scheduled_after(&self, list: &str, at: DateTime<Utc>) -> Vec<&Arc<Published>> {
        let mut later: Vec<_> = self
            .lists
            .get(list)
            .into_iter()
            .flatten()
            .filter(|published| published.prices.effective_from > at)
            .collect();
        later.sort_by_key(|p| (p.prices.effective_from, p.prices.version));
        later
    }

    fn is_fresh(&self) -> bool {
        self.confirmed
            .is_some_and(|confirmed| confirmed.elapsed() < BOOK_LEASE)
    }
}

/// What `asked` costs on `api_id` for an account priced by `list`, at `at`: an amount as it is;
/// a usage by the version of `list` in effect then (`book` holds it when the caller asked for
/// one, see [`Commands::book_for`]).
pub fn price(
    book: Option<&Book>,
    list: &str,
    api_id: &ApiId,
    asked: &Asked,
    at: DateTime<Utc>,
) -> Result<Priced, CommandError> {
    match asked {
        Asked::Amount(amount) => Ok(Priced {
            amount: *amount,
            by: None,
        }),
        Asked::Usage(usage) => {
            let version = book.and_then(|book| book.in_effect(list, at));
            price_usage(version.map(|v| &**v), list, api_id, usage)
        }
    }
}

/// `usage` priced by `version` of `list` (none: nothing of the list is in effect).
pub fn price_usage(
    version: Option<&Published>,
    list: &str,
    api_id: &ApiId,
    usage: &Usage,
) -> Result<Priced, CommandError> {
    let unpriced = |version: i64, missing: Vec<&Meter>| CommandError::Unpriced {
        api_id: api_id.to_string(),
        list: list.to_owned(),
        version,
        missing: missing.iter().map(|m| m.as_str().to_owned()).collect(),
    };
    let Some(version) = version else {
        return Err(unpriced(0, usage.lines().iter().map(|(m, _)| m).collect()));
    };
    match version.prices.price(api_id.as_str(), usage.lines()) {
        Ok(priced) => Ok(Priced {
            amount: priced.amount,
            by: Some(PricedBy {
                usage: usage.clone(),
                list: list.to_owned(),
                version: priced.version,
            }),
        }),
        Err(Unpriceable::Unpriced {
            version, missing, ..
        }) => Err(unpriced(version, missing.iter().collect())),
        Err(Unpriceable::AboveLimit(_)) => Err(CommandError::AmountLimit),
        Err(refused @ (Unpriceable::Quantity(_) | Unpriceable::DuplicateMeter(_))) => {
            Err(CommandError::Invalid(vec![
                shared::ids::FieldViolation::new("usage", refused.to_string()),
            ]))
        }
    }
}

/// The book of this replica, reloaded in the background and on demand.
#[derive(Debug, Default)]
pub struct PriceBook {
    book: RwLock<Arc<Book>>,
    loading: tokio::sync::Mutex<()>,
}

impl PriceBook {
    pub fn current(&self) -> Arc<Book> {
        Arc::clone(
            &self
                .book
                .read()
                .expect("the price book's lock is never poisoned"),
        )
    }

    /// A book that may price now: the current one, or a new load when it is older than the lease.
    pub async fn fresh(&self, store: &Store) -> Result<Arc<Book>, StoreError> {
        let book = self.current();
        if book.is_fresh() {
            return Ok(book);
        }
        self.load(store).await
    }

    /// Loads what was published since the current book (whose versions never change), and
    /// makes it current. A load that waited for another one started after it began takes that.
    pub async fn load(&self, store: &Store) -> Result<Arc<Book>, StoreError> {
        let asked_at = Instant::now();
        let _loading = self.loading.lock().await;
        let old = self.current();
        if old.confirmed.is_some_and(|confirmed| confirmed >= asked_at) {
            return Ok(old);
        }
        let started = Instant::now();
        let versions = store::price_versions(store.pool()).await?;
        let new: Vec<&VersionRow> = versions
            .iter()
            .filter(|row| old.version(&row.name, row.version).is_none())
            .collect();
        let keys: Vec<(&str, i64)> = new.iter().map(|r| (r.name.as_str(), r.version)).collect();
        let mut prices: HashMap<(&str, i64), Vec<PriceRow>> = HashMap::new();
        for row in store::prices_of(store.pool(), &keys).await? {
            let key = keys
                .iter()
                .find(|(name, version)| *name == row.name && *version == row.version)
                .copied()
                .expect("only the prices of the versions asked for");
            prices.entry(key).or_default().push(row);
        }
        let mut lists = old.lists.clone();
        for row in new {
            let rows = prices.remove(&(row.name.as_str(), row.version));
            let published = published_version(row, rows.unwrap_or_default())?;
            lists
                .entry(row.name.clone())
                .or_default()
                .push(Arc::new(published));
        }
        let book = Arc::new(Book {
            lists,
            confirmed: Some(started),
        });
        *self
            .book
            .write()
            .expect("the price book's lock is never poisoned") = Arc::clone(&book);
        Ok(book)
    }
}

/// A stored version and its prices as the book holds them.
fn published_version(row: &VersionRow, prices: Vec<PriceRow>) -> Result<Published, StoreError> {
    let corrupt = |why: String| {
        StoreError::internal(sqlx::Error::Protocol(format!(
            "price list {} version {}: {why}",
            row.name, row.version
        )))
    };
    let mut parsed = Vec::with_capacity(prices.len());
    for price in prices {
        let meter =
            Meter::parse(&price.meter).ok_or_else(|| corrupt(format!("meter {}", price.meter)))?;
        let unit = UnitPrice::new(price.price_micros, price.per_units)
            .map_err(|error| corrupt(error.to_string()))?;
        parsed.push((price.api_id, meter, unit));
    }
    Ok(Published {
        prices: PriceVersion::new(&row.name, row.version, row.effective_from, parsed),
        published_at: row.published_at,
        actor: row.actor.clone(),
    })
}

/// A publication's answer.
#[derive(Debug)]
pub struct PublishedList {
    pub list: Arc<Published>,
    pub replayed: bool,
}

/// A user's list (or one by name): its name, the version in effect and the later ones.
#[derive(Debug)]
pub struct ShownList {
    pub name: String,
    pub current: Option<Arc<Published>>,
    pub scheduled: Vec<Arc<Published>>,
}

/// An assignment's answer.
#[derive(Debug)]
pub struct Assigned {
    pub name: String,
    pub account: AccountOut,
}

impl Commands {
    /// A book that may price now, when `needed` (a request of the batch reports usage).
    pub(super) async fn book_for(&self, needed: bool) -> Result<Option<Arc<Book>>, StoreError> {
        if !needed {
            return Ok(None);
        }
        self.prices.fresh(&self.store).await.map(Some)
    }

    /// Reloads the price book; the background task calls this every [`BOOK_REFRESH`].
    pub async fn reload_prices(&self) -> Result<(), StoreError> {
        self.prices.load(&self.store).await.map(drop)
    }

    /// Publishes a new version of a list (or answers a retry of a publication with the version
    /// it made). A version for now takes effect [`PUBLICATION_LEAD`] after the publication began,
    /// and the answer waits for that instant; a later one takes effect at its instant.
    pub async fn publish_price_list(
        &self,
        command: &PublishPriceList,
    ) -> Result<PublishedList, CommandError> {
        let began = Instant::now();
        let now = self.now();
        let effective_from = command
            .effective_from
            .map_or(now, |asked| asked.max(now))
            .max(now + PUBLICATION_LEAD);
        let digest = command.content_digest();
        let (name, version, replayed) = self
            .store
            .retrying(|| self.publish_once(command, &digest, effective_from, now))
            .await?;
        let committed_in = began.elapsed();
        if committed_in > (PUBLICATION_LEAD.to_std().unwrap_or_default() - BOOK_LEASE) {
            tracing::error!(?committed_in, list = %name, version, "a price list's publication committed late: replicas may have priced with the version before it for a moment after its instant");
            metrics::counter!("billing_price_publications_late_total").increment(1);
        }
        let book = self.prices.load(&self.store).await?;
        let list = Arc::clone(
            book.version(&name, version)
                .ok_or_else(|| StoreError::internal(sqlx::Error::RowNotFound))?,
        );
        self.wait_until_in_effect(list.prices.effective_from).await;
        Ok(PublishedList { list, replayed })
    }

    /// One run of a publication: a replay found by its `publish_id`, or the next version
    /// written with its event. Returns the list's name, the version, and whether it replayed.
    async fn publish_once(
        &self,
        command: &PublishPriceList,
        digest: &str,
        effective_from: DateTime<Utc>,
        now: DateTime<Utc>,
    ) -> Result<(String, i64, bool), CommandError> {
        let mut tx = self.store.begin().await?;
        if let Some(earlier) = store::find_publication(&mut tx, command.publish_id.as_str()).await?
        {
            tx.rollback().await.map_err(StoreError::from)?;
            if earlier.content_sha256 != digest {
                return Err(CommandError::KeyReused { key: "publish_id" });
            }
            return Ok((earlier.name, earlier.version, true));
        }
        let name = command.name.to_string();
        let version = store::next_version(&mut tx, &name, now).await?;
        let row = VersionRow {
            name: name.clone(),
            version,
            effective_from,
            published_at: now,
            actor: command.actor.to_string(),
            publish_id: command.publish_id.to_string(),
            content_sha256: digest.to_owned(),
        };
        let prices: Vec<PriceRow> = command
            .prices
            .iter()
            .map(|(api_id, meter, price)| PriceRow {
                name: name.clone(),
                version,
                api_id: api_id.to_string(),
                meter: meter.as_str().to_owned(),
                price_micros: price.price_micros() as i64,
                per_units: i64::from(price.per_units()),
            })
            .collect();
        let published = published_version(&row, prices.clone())?;
        let kind = Kind::PriceListPublished(pb::PriceListPublished {
            list: Some(published.message(&self.rules.currency)),
            publish_id: row.publish_id.clone(),
        });
        let subject = self.rules.bus.event_subject(&kind);
        let event = Outgoing::in_current_trace(events::event(None, "", kind, now), subject);
        let mut writes = Writes::new();
        writes
            .price_version(&row, &prices)
            .events(std::slice::from_ref(&event), now);
        writes.run(&mut tx).await?;
        tx.commit().await.map_err(StoreError::from)?;
        self.store.outbox_written();
        Ok((name, version, false))
    }

    /// Sleeps until `at` when it is at most [`PUBLICATION_LEAD`] away: the answer to a
    /// publication for now comes once its version is in effect.
    async fn wait_until_in_effect(&self, at: DateTime<Utc>) {
        let ahead = at - self.now();
        if ahead > TimeDelta::zero() && ahead <= PUBLICATION_LEAD {
            tokio::time::sleep(ahead.to_std().unwrap_or_default()).await;
        }
    }

    /// Prices the account's usage with the list `name` (or the default list) from the commit on.
    /// An account that does not exist yet is created, with its period's free quota.
    pub async fn assign_price_list(
        &self,
        command: &AssignPriceList,
    ) -> Result<Assigned, CommandError> {
        let name = command.name.as_ref().map(ToString::to_string);
        if let Some(name) = &name
            && !store::list_exists(self.store.pool(), name).await?
        {
            return Err(CommandError::PriceListNotFound(name.clone()));
        }
        let account = self
            .store
            .retrying(|| async {
                let now = self.now();
                let mut account =
                    AccountTx::lock(&self.store, &self.rules, &command.user_id, now).await?;
                if account.exists() {
                    store::set_price_list(account.tx(), &command.user_id, name.as_deref()).await?;
                } else {
                    account.open_period();
                }
                let previous = self
                    .rules
                    .price_list_of(account.account().price_list.as_deref())
                    .to_owned();
                account.account().price_list = name.clone();
                account.publish(Kind::PriceListAssigned(pb::PriceListAssigned {
                    name: self.rules.price_list_of(name.as_deref()).to_owned(),
                    previous_name: previous,
                    actor: command.actor.to_string(),
                }));
                Ok::<_, CommandError>(self.commit(account).await?)
            })
            .await?;
        // The snapshots checks answer from hold the list too, at the same version: forgotten,
        // so the next check reads the account again.
        self.forget_snapshot(&command.user_id).await;
        Ok(Assigned {
            name: account.price_list.clone(),
            account,
        })
    }

    /// A user's list, or a list by name, as in effect at `at` (now when absent), with the versions
    /// scheduled after it.
    pub async fn get_price_list(&self, query: &GetPriceList) -> Result<ShownList, CommandError> {
        let book = self.prices.fresh(&self.store).await?;
        let name = match &query.list_of {
            ListOf::User(user_id) => self.price_list_of_user(user_id).await?,
            ListOf::Named(name) if book.has_list(name.as_str()) => name.to_string(),
            ListOf::Named(name) => return Err(CommandError::PriceListNotFound(name.to_string())),
        };
        let at = query.at.unwrap_or_else(|| self.now());
        Ok(ShownList {
            current: book.in_effect(&name, at).cloned(),
            scheduled: book
                .scheduled_after(&name, at)
                .into_iter()
                .cloned()
                .collect(),
            name,
        })
    }

    async fn price_list_of_user(&self, user_id: &UserId) -> Result<String, CommandError> {
        let row = store::load_account(self.store.pool(), user_id).await?;
        let own = row.as_ref().and_then(|row| row.price_list.as_deref());
        Ok(self.rules.price_list_of(own).to_owned())
    }
}
