//! Group commit of charges: the gateway's hot path.
//!
//! Charges are queued; a few workers each take everything that has arrived (up to a bound) and
//! commit it as one MySQL transaction, so batches grow with the load: the accounts locked in
//! primary-key order, earlier charges of the same keys found with one query, every decision made
//! in memory with the same rules as a single charge, then every row written with multi-row
//! statements. Each caller is answered only after the commit, with its own result: a refusal or a
//! replay in a batch never affects the other charges, and a key sent twice in one batch charges
//! once. The whole batch is one unit for the database: a conflict runs it again from the start;
//! a batch that fails otherwise is committed again charge by charge, so one caller's fault is
//! answered to that caller alone (an unreachable store answers every caller with it).

use std::{
    collections::{BTreeSet, HashMap},
    sync::Arc,
    time::Duration,
};

use chrono::{DateTime, Utc};
use shared::{config::GroupCommitSettings, ids::UserId, limits::Spend, shard::Shards};
use tokio::sync::{Mutex, mpsc, oneshot};

use super::{
    Charged, CommandError, Commands,
    changes::{AccountChanges, Appends},
    charge::{charge_change, is_same_charge},
    prices::{self, Book},
};
use crate::{
    domain::DeductQuota,
    events::{self, AccountOut},
    store::{self, AccountWrite, AsStoreError, LedgerRow, StoreError, Tx},
};

/// A charge as it waits to be decided: the command and the caller's trace context, which the
/// charge's events carry.
pub(super) struct ChargeRequest {
    command: DeductQuota,
    traceparent: Option<String>,
}

impl ChargeRequest {
    fn new(command: DeductQuota) -> ChargeRequest {
        ChargeRequest {
            command,
            traceparent: shared::trace::current_traceparent(),
        }
    }

    fn key(&self) -> (&str, &str) {
        (
            self.command.user_id.as_str(),
            self.command.request_id.as_str(),
        )
    }
}

struct Pending {
    request: ChargeRequest,
    reply: oneshot::Sender<Result<Charged, CommandError>>,
}

/// The queues in front of the group-commit workers: one per shard of the database (one for a
/// database not split), so that a batch never spans two shards.
#[derive(Clone)]
pub(super) struct ChargeQueue {
    shards: Shards,
    /// By shard index ([`Shards::of`]).
    senders: Vec<mpsc::Sender<Pending>>,
}

impl ChargeQueue {
    /// Starts `settings.workers` workers per shard committing batches for `commands` (which
    /// must not itself route charges to a queue).
    pub(super) fn start(commands: Commands, settings: &GroupCommitSettings) -> ChargeQueue {
        ChargeQueue::start_with(settings, move |batch| {
            let commands = commands.clone();
            async move { commands.commit_charges(batch).await }
        })
    }

    /// As [`ChargeQueue::start`], each batch committed by `commit`.
    fn start_with<F, Fut>(settings: &GroupCommitSettings, commit: F) -> ChargeQueue
    where
        F: Fn(Vec<Pending>) -> Fut + Clone + Send + 'static,
        Fut: std::future::Future<Output = ()> + Send,
    {
        let shards = settings.shards();
        let max_batch = settings.max_batch.max(1);
        let max_wait = Duration::from_micros(settings.max_wait_us);
        let workers = settings.workers.max(1);
        let senders = (0..shards.count())
            .map(|_| {
                let (sender, receiver) = mpsc::channel(max_batch * workers * 4);
                let receiver = Arc::new(Mutex::new(receiver));
                for _ in 0..workers {
                    let (commit, receiver) = (commit.clone(), receiver.clone());
                    tokio::spawn(async move {
                        while let Some(batch) = next_batch(&receiver, max_batch, max_wait).await {
                            commit(batch).await;
                        }
                    });
                }
                sender
            })
            .collect();
        ChargeQueue { shards, senders }
    }

    pub(super) async fn charge(&self, command: DeductQuota) -> Result<Charged, CommandError> {
        let (reply, answer) = oneshot::channel();
        let closed = || CommandError::Store(StoreError::internal(sqlx::Error::PoolClosed));
        let shard = self.shards.of(command.user_id.as_str());
        let request = ChargeRequest::new(command);
        let sender = self.senders.get(shard).ok_or_else(closed)?;
        sender
            .send(Pending { request, reply })
            .await
            .map_err(|_| closed())?;
        answer.await.map_err(|_| closed())?
    }
}

/// Takes the next batch: the first charge waited for, then everything already queued (what
/// arrived while the previous batches committed), up to `max_batch`. With `max_wait` set, a
/// charge that finds nothing else queued waits that long for company; by default it does not,
/// so batches grow with the load alone. `None` once the queue is closed and empty.
async fn next_batch(
    receiver: &Mutex<mpsc::Receiver<Pending>>,
    max_batch: usize,
    max_wait: Duration,
) -> Option<Vec<Pending>> {
    let mut receiver = receiver.lock().await;
    let first = receiver.recv().await?;
    let mut batch = vec![first];
    if !max_wait.is_zero()
        && receiver.is_empty()
        && let Ok(Some(pending)) = tokio::time::timeout(max_wait, receiver.recv()).await
    {
        batch.push(pending);
    }
    while batch.len() < max_batch {
        match receiver.try_recv() {
            Ok(pending) => batch.push(pending),
            Err(_) => break,
        }
    }
    Some(batch)
}

/// What the batch decided for one charge.
#[derive(Clone)]
enum Decided {
    Done(Box<Result<Charged, CommandError>>),
    /// Same as the charge at this index of the batch, which was applied.
    SameAs(usize),
}

type Results = Vec<Result<Charged, CommandError>>;

/// The accounts of a batch, locked: those that can be read, and why the others cannot.
struct Locked {
    accounts: HashMap<UserId, AccountChanges>,
    unreadable: HashMap<UserId, StoreError>,
}

impl Commands {
    /// A charge on its own: a batch of one.
    pub(super) async fn charge_alone(&self, command: DeductQuota) -> Result<Charged, CommandError> {
        let request = ChargeRequest::new(command);
        let mut results = match self.charge_batch(std::slice::from_ref(&request)).await {
            Ok(results) => results,
            Err(error) => vec![Err(error)],
        };
        super::count_charges(&results);
        results.pop().expect("a batch of one has one result")
    }

    /// Commits the batch and answers each caller. When the batch as a whole fails for a reason
    /// other than an unreachable store, each charge is committed again on its own, so that one
    /// caller's faulty row fails only that caller (invariant 10).
    async fn commit_charges(&self, batch: Vec<Pending>) {
        let (requests, replies): (Vec<ChargeRequest>, Vec<_>) = batch
            .into_iter()
            .map(|pending| (pending.request, pending.reply))
            .unzip();
        let results = match self.charge_batch(&requests).await {
            Ok(results) => results,
            Err(error) if requests.len() > 1 && !error.is_unavailable() => {
                tracing::warn!(%error, size = requests.len(), "batch failed; its charges committed one by one");
                metrics::counter!("billing_group_commit_isolated_total").increment(1);
                let mut results = Vec::with_capacity(requests.len());
                for request in &requests {
                    let alone = self.charge_batch(std::slice::from_ref(request)).await;
                    results.push(alone.and_then(|mut one| one.pop().expect("one result")));
                }
                results
            }
            Err(error) => vec![Err(error); requests.len()],
        };
        super::count_charges(&results);
        for (reply, result) in replies.into_iter().zip(results) {
            let _ = reply.send(result);
        }
    }

    /// The batch decided and committed: optimistically first, then with every key looked up
    /// (and again on conflicts) when a key turned out to be a repeat.
    async fn charge_batch(&self, batch: &[ChargeRequest]) -> Result<Results, CommandError> {
        match self.charge_batch_once(batch, false).await {
            Ok(Some(results)) => Ok(results),
            Ok(None) => self.charge_batch_looked_up(batch).await,
            Err(error) if error.is_conflict() => self.charge_batch_looked_up(batch).await,
            Err(error) => Err(error),
        }
    }

    /// The batch with every key looked up first, run again on conflicts.
    async fn charge_batch_looked_up(
        &self,
        batch: &[ChargeRequest],
    ) -> Result<Results, CommandError> {
        self.store
            .retrying(|| async {
                let results = self.charge_batch_once(batch, true).await?;
                Ok(results.expect("a looked-up batch always decides"))
            })
            .await
    }

    /// One run of the batch. Without `look_up`, `None` when a key turned out to be a repeat
    /// (the batch must run again with the look-up).
    async fn charge_batch_once(
        &self,
        batch: &[ChargeRequest],
        look_up: bool,
    ) -> Result<Option<Results>, CommandError> {
        let priced = batch.iter().any(|r| r.command.asked.usage().is_some());
        let book = self.book_for(priced).await?;
        let now = self.now();
        let mut tx = self.store.begin().await?;
        let mut locked = self.lock_batch(&mut tx, batch).await?;
        // Most keys are new: the optimistic pass does not look them up and lets the ledger's
        // unique key catch a repeated one (then the batch runs again with the look-up).
        let earlier = if look_up {
            let keys = known_keys(batch, &locked.accounts, |_| true);
            store::find_charges(&mut tx, &keys).await?
        } else {
            Vec::new()
        };
        let mut appends = Appends::new(&self.rules, now);
        let decided = self.decide_batch(
            batch,
            &mut locked,
            &earlier,
            &mut appends,
            (book.as_deref(), now),
        );
        if !look_up {
            // A refused charge may be the retry of one applied earlier, whose answer is the
            // original, not a refusal: those keys are looked up before a refusal is final.
            let refused = known_keys(
                batch,
                &locked.accounts,
                |index| matches!(&decided[index], Decided::Done(result) if result.is_err()),
            );
            if !store::find_charges(&mut tx, &refused).await?.is_empty() {
                tx.rollback().await.map_err(StoreError::from)?;
                return Ok(None);
            }
        }
        if appends.is_empty() {
            tx.rollback().await.map_err(StoreError::from)?;
        } else {
            self.write_batch(tx, &locked.accounts, &appends, now)
                .await?;
        }
        Ok(Some(answers(decided)))
    }

    /// Locks the batch's accounts in primary-key order, each with its spend limits' counters
    /// (held in its row). An account whose row cannot be read fails its charges; the others go
    /// on.
    async fn lock_batch(&self, tx: &mut Tx, batch: &[ChargeRequest]) -> Result<Locked, StoreError> {
        let users: BTreeSet<&UserId> = batch.iter().map(|r| &r.command.user_id).collect();
        let users: Vec<&UserId> = users.into_iter().collect();
        let mut locked = Locked {
            accounts: HashMap::new(),
            unreadable: HashMap::new(),
        };
        for row in store::lock_accounts(tx, &users).await? {
            match AccountChanges::stored(&row, &self.rules) {
                Ok(account) => {
                    locked.accounts.insert(row.user_id, account);
                }
                Err(error) => {
                    store::undecodable("accounts", row.user_id.as_str(), &error);
                    locked.unreadable.insert(row.user_id, error);
                }
            }
        }
        Ok(locked)
    }

    /// Decides every charge of the batch in order, in memory, recording the applied ones; a
    /// usage is priced with `book` (held when any charge of the batch reports one) at `now`.
    fn decide_batch(
        &self,
        batch: &[ChargeRequest],
        locked: &mut Locked,
        earlier: &[LedgerRow],
        appends: &mut Appends<'_>,
        (book, now): (Option<&Book>, DateTime<Utc>),
    ) -> Vec<Decided> {
        let earlier: HashMap<(&str, &str), &LedgerRow> = earlier
            .iter()
            .filter_map(|record| {
                let request_id = record.request_id.as_deref()?;
                Some(((record.user_id.as_str(), request_id), record))
            })
            .collect();
        let mut applied: HashMap<(&str, &str), usize> = HashMap::new();
        let mut decided = Vec::with_capacity(batch.len());
        for (index, request) in batch.iter().enumerate() {
            let (user_id, key) = (&request.command.user_id, request.key());
            let decision = if let Some(error) = locked.unreadable.get(user_id) {
                Decided::Done(Box::new(Err(CommandError::Store(error.clone()))))
            } else if let Some(record) = earlier.get(&key) {
                Decided::Done(Box::new(self.replay(
                    &locked.accounts[user_id],
                    record,
                    &request.command,
                )))
            } else if let Some(&first) = applied.get(&key) {
                same_in_batch(&batch[first].command, &request.command, first)
            } else {
                let account = locked
                    .accounts
                    .entry(user_id.clone())
                    .or_insert_with(|| AccountChanges::fresh(user_id, &self.rules, now));
                let result = self.decide_charge(account, request, appends, (book, now));
                if result.is_ok() {
                    applied.insert(key, index);
                }
                Decided::Done(Box::new(result))
            };
            decided.push(decision);
        }
        decided
    }

    /// The answer to a charge whose key was recorded before `record`.
    fn replay(
        &self,
        account: &AccountChanges,
        record: &LedgerRow,
        command: &DeductQuota,
    ) -> Result<Charged, CommandError> {
        if !is_same_charge(record, command) {
            return Err(CommandError::KeyReused { key: "request_id" });
        }
        let shown = self.rules.present_as_recorded(
            &account.user_id,
            account.terms(),
            record,
            account.state.monthly_free,
        )?;
        Ok(Charged::replayed(record, shown))
    }

    /// One new charge priced, decided on `account` and, when applied, recorded.
    fn decide_charge(
        &self,
        account: &mut AccountChanges,
        request: &ChargeRequest,
        appends: &mut Appends<'_>,
        (book, now): (Option<&Book>, DateTime<Utc>),
    ) -> Result<Charged, CommandError> {
        let command = &request.command;
        let list = self.rules.price_list_of(account.price_list.as_deref());
        let priced = prices::price(book, list, &command.api_id, &command.asked, now)?;
        let trace = request.traceparent.as_deref();
        let spend = Spend::new(
            command.api_id.as_str(),
            command.key_id.as_str(),
            priced.amount,
            now,
        );
        account.check_limits(self.rules.zone, spend, appends, trace)?;
        let (split, after) =
            account.decide_charge(priced.amount, self.rules.zone.period_of(now))?;
        let record_id = events::new_id();
        let change = charge_change(command, &priced, record_id.clone(), split, after);
        account.append(appends, change, trace);
        account.add_spend(spend, appends, trace);
        let shown = self
            .rules
            .present(&account.user_id, Some(account.terms()), Some(&after), now);
        Ok(Charged {
            record_id,
            amount: priced.amount,
            priced_by: priced.by,
            split,
            account: shown,
            replayed: false,
        })
    }

    /// Writes the batch's rows and accounts in one round trip, commits, and writes the changed
    /// accounts through to Redis.
    async fn write_batch(
        &self,
        mut tx: Tx,
        accounts: &HashMap<UserId, AccountChanges>,
        appends: &Appends<'_>,
        now: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        let rows = |pick: fn(&AccountChanges) -> bool| -> Vec<AccountWrite<'_>> {
            accounts
                .values()
                .filter(|account| pick(account))
                .map(AccountChanges::write)
                .collect()
        };
        let mut writes = appends.writes();
        writes
            .create_accounts(&rows(AccountChanges::is_created), now)
            .save_accounts(&rows(AccountChanges::is_changed), now);
        writes.run(&mut tx).await?;
        tx.commit().await?;
        self.store.outbox_written();
        let written: Vec<AccountOut> = accounts
            .values()
            .filter(|account| account.is_created() || account.is_changed())
            .map(|account| account.stored_view(&self.rules))
            .collect();
        self.write_through(&written).await;
        Ok(())
    }
}

/// The keys of the batch's charges on accounts that exist, among those `pick` takes by index.
fn known_keys<'b>(
    batch: &'b [ChargeRequest],
    accounts: &HashMap<UserId, AccountChanges>,
    pick: impl Fn(usize) -> bool,
) -> Vec<(&'b str, &'b str)> {
    batch
        .iter()
        .enumerate()
        .filter(|(index, request)| {
            pick(*index)
                && accounts
                    .get(&request.command.user_id)
                    .is_some_and(AccountChanges::exists)
        })
        .map(|(_, request)| request.key())
        .collect()
}

/// A key sent twice in one batch: the same charge answers as the first, applied once.
fn same_in_batch(first: &DeductQuota, command: &DeductQuota, index: usize) -> Decided {
    if first.asked == command.asked && first.api_id == command.api_id {
        Decided::SameAs(index)
    } else {
        Decided::Done(Box::new(Err(CommandError::KeyReused { key: "request_id" })))
    }
}

/// Each charge's answer; a repeat within the batch answers as its first, marked a replay.
fn answers(decided: Vec<Decided>) -> Results {
    let mut results: Vec<Result<Charged, CommandError>> = Vec::with_capacity(decided.len());
    for decision in &decided {
        results.push(match decision {
            Decided::Done(result) => (**result).clone(),
            Decided::SameAs(first) => results[*first].clone().map(|charged| Charged {
                replayed: true,
                ..charged
            }),
        });
    }
    results
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex as Recorded;

    use shared::proto::v1 as pb;

    use super::*;

    fn charge(user_id: &str) -> DeductQuota {
        let request = pb::DeductQuotaRequest {
            user_id: user_id.to_owned(),
            amount_micros: 1_000,
            request_id: format!("r-{user_id}"),
            api_id: "chat".to_owned(),
            ..Default::default()
        };
        crate::api::parse::deduct_quota(&request).unwrap()
    }

    #[tokio::test]
    async fn a_batch_never_spans_two_shards() {
        let settings = GroupCommitSettings {
            enabled: true,
            max_batch: 64,
            max_wait_us: 0,
            workers: 2,
            shards: vec!["80-".into(), "-80".into()],
        };
        let shards = settings.shards();
        let batches: Arc<Recorded<Vec<Vec<usize>>>> = Arc::default();
        let recorded = batches.clone();
        let queue = ChargeQueue::start_with(&settings, move |batch: Vec<Pending>| {
            let (recorded, shards) = (recorded.clone(), shards.clone());
            async move {
                // A commit takes a while, so the next charges queue up behind it.
                tokio::time::sleep(Duration::from_millis(2)).await;
                let by_shard = batch
                    .iter()
                    .map(|pending| shards.of(pending.request.command.user_id.as_str()))
                    .collect();
                recorded.lock().unwrap().push(by_shard);
                for pending in batch {
                    let _ = pending.reply.send(Err(CommandError::InsufficientQuota));
                }
            }
        });
        let charges = (0..400).map(|n| {
            let queue = queue.clone();
            async move { queue.charge(charge(&format!("user-{n}"))).await }
        });
        let answers = futures::future::join_all(charges).await;
        assert!(
            answers
                .iter()
                .all(|answer| matches!(answer, Err(CommandError::InsufficientQuota)))
        );
        let batches = batches.lock().unwrap();
        assert_eq!(batches.iter().map(Vec::len).sum::<usize>(), 400);
        assert!(batches.iter().any(|batch| batch.len() > 1), "{batches:?}");
        for batch in batches.iter() {
            assert!(batch.iter().all(|shard| *shard == batch[0]), "{batch:?}");
        }
        for shard in [0, 1] {
            assert!(batches.iter().any(|batch| batch[0] == shard), "{batches:?}");
        }
    }
}
