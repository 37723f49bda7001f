//! Group commit of charges: the gateway's hot path.
//!
//! Charges are queued; a few workers each take what has arrived (up to a bound, optionally
//! waiting a little for more) and commit it as one MySQL transaction: the accounts locked in
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

use shared::{
    account::{AccountSnapshot, Split, command_period, stored_view},
    config::GroupCommitSettings,
    money::Micros,
    proto::v1::{FreeQuotaGranted, billing_event::Kind},
};
use tokio::sync::{Mutex, mpsc, oneshot};

use super::{Charged, CommandError, Commands};
use crate::store::AsStoreError;
use crate::{
    domain::DeductQuota,
    events::{self, AccountOut},
    store::{
        self, Grant, LedgerEntry, LedgerRecord, Outgoing, RecordKind, Refs, StoreError, Writes,
    },
};

struct Pending {
    command: DeductQuota,
    /// The caller's trace context, which the charge's events carry.
    traceparent: Option<String>,
    reply: oneshot::Sender<Result<Charged, CommandError>>,
}

/// The queue in front of the group-commit workers.
#[derive(Clone)]
pub(super) struct ChargeQueue {
    sender: mpsc::Sender<Pending>,
}

impl ChargeQueue {
    /// Starts `settings.workers` workers committing batches for `commands` (which must not
    /// itself route charges to a queue).
    pub(super) fn start(commands: Commands, settings: &GroupCommitSettings) -> ChargeQueue {
        let (sender, receiver) =
            mpsc::channel(settings.max_batch.max(1) * settings.workers.max(1) * 4);
        let receiver = Arc::new(Mutex::new(receiver));
        let max_batch = settings.max_batch.max(1);
        let max_wait = Duration::from_micros(settings.max_wait_us);
        for _ in 0..settings.workers.max(1) {
            let (commands, receiver) = (commands.clone(), receiver.clone());
            tokio::spawn(async move {
                while let Some(batch) = next_batch(&receiver, max_batch, max_wait).await {
                    commands.commit_charges(batch).await;
                }
            });
        }
        ChargeQueue { sender }
    }

    pub(super) async fn charge(&self, command: DeductQuota) -> Result<Charged, CommandError> {
        let (reply, answer) = oneshot::channel();
        let closed = || CommandError::Store(StoreError::internal(sqlx::Error::PoolClosed));
        self.sender
            .send(Pending {
                command,
                traceparent: shared::trace::current_traceparent(),
                reply,
            })
            .await
            .map_err(|_| closed())?;
        answer.await.map_err(|_| closed())?
    }
}

/// Takes the next batch: the first charge waited for, then what is already queued and what
/// arrives within `max_wait`, up to `max_batch`. The batch's size is a power of two (the rest
/// stays queued for the next batch), so its multi-row statements are among a few prepared ones.
/// `None` once the queue is closed and empty.
async fn next_batch(
    receiver: &Mutex<mpsc::Receiver<Pending>>,
    max_batch: usize,
    max_wait: Duration,
) -> Option<Vec<Pending>> {
    let mut receiver = receiver.lock().await;
    let first = receiver.recv().await?;
    let mut batch = vec![first];
    if !max_wait.is_zero() && receiver.is_empty() {
        // Nothing else yet: give concurrent callers a moment to join.
        if let Ok(Some(pending)) = tokio::time::timeout(max_wait, receiver.recv()).await {
            batch.push(pending);
        }
    }
    let available = (batch.len() + receiver.len()).min(max_batch);
    let size = 1_usize << (usize::BITS - 1 - available.leading_zeros());
    while batch.len() < size {
        match receiver.try_recv() {
            Ok(pending) => batch.push(pending),
            Err(_) => break,
        }
    }
    Some(batch)
}

/// One account's state as the batch decides it.
struct Working {
    currency: String,
    /// The version stored now (0: no row yet).
    stored_version: i64,
    state: AccountSnapshot,
    /// What `balance_low` compares the balance with.
    low_balance_threshold: Micros,
}

/// What the batch decided for one charge.
enum Decided {
    Done(Result<Charged, CommandError>),
    /// Same as the charge at this index of the batch, which was applied.
    SameAs(usize),
}

impl Commands {
    /// Commits the batch and answers each caller. When the batch as a whole fails for a reason
    /// other than an unreachable store, each charge is committed again on its own, so that one
    /// caller's faulty row fails only that caller (invariant 10).
    async fn commit_charges(&self, batch: Vec<Pending>) {
        let outcome = self.charge_batch(&batch).await;
        let results = match outcome {
            Ok(results) => results,
            Err(error) if batch.len() > 1 && !error.is_unavailable() => {
                tracing::warn!(%error, size = batch.len(), "batch failed; its charges committed one by one");
                metrics::counter!("billing_group_commit_isolated_total").increment(1);
                let mut results = Vec::with_capacity(batch.len());
                for pending in &batch {
                    results.push(
                        match self.charge_batch(std::slice::from_ref(pending)).await {
                            Ok(mut alone) => alone.pop().expect("a batch of one has one result"),
                            Err(error) => Err(error),
                        },
                    );
                }
                results
            }
            Err(error) => vec![Err(error); batch.len()],
        };
        super::count_charges(&results);
        for (pending, result) in batch.into_iter().zip(results) {
            let _ = pending.reply.send(result);
        }
    }

    /// The batch decided and committed: optimistically first, then with every key looked up
    /// (and again on conflicts) when a key turned out to be a repeat.
    async fn charge_batch(
        &self,
        batch: &[Pending],
    ) -> Result<Vec<Result<Charged, CommandError>>, CommandError> {
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
        batch: &[Pending],
    ) -> Result<Vec<Result<Charged, CommandError>>, CommandError> {
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
        batch: &[Pending],
        look_up: bool,
    ) -> Result<Option<Vec<Result<Charged, CommandError>>>, CommandError> {
        let commands: Vec<&DeductQuota> = batch.iter().map(|pending| &pending.command).collect();
        let now = self.now();
        let now_period = self.rules.zone.period_of(now);
        let mut tx = self.store.begin().await?;

        let users: BTreeSet<&str> = commands.iter().map(|c| c.user_id.as_str()).collect();
        let users: Vec<&str> = users.into_iter().collect();
        let rows = store::lock_accounts(&mut tx, &users).await?;
        let mut accounts: HashMap<&str, Working> = HashMap::new();
        // Accounts whose row cannot be read: their charges fail, the others' go on.
        let mut unreadable: HashMap<&str, StoreError> = HashMap::new();
        for row in &rows {
            let state = match row.snapshot() {
                Ok(state) => state,
                Err(error) => {
                    store::undecodable("accounts", &row.user_id, &error);
                    unreadable.insert(row.user_id.as_str(), error);
                    continue;
                }
            };
            let working = Working {
                currency: row.currency.clone(),
                stored_version: row.version,
                state,
                low_balance_threshold: self
                    .rules
                    .low_balance_threshold(row.low_balance_threshold_micros),
            };
            accounts.insert(row.user_id.as_str(), working);
        }
        // Most keys are new: the optimistic pass does not look them up and lets the ledger's
        // unique key catch a repeated one (then the batch runs again with the look-up).
        let keys: Vec<(&str, &str)> = commands
            .iter()
            .filter(|c| look_up && accounts.contains_key(c.user_id.as_str()))
            .map(|c| (c.user_id.as_str(), c.request_id.as_str()))
            .collect();
        let mut earlier: HashMap<(&str, &str), &LedgerRecord> = HashMap::new();
        let found = store::find_charges(&mut tx, &keys).await?;
        for record in &found {
            if let Some(request_id) = record.request_id.as_deref() {
                earlier.insert((record.user_id.as_str(), request_id), record);
            }
        }

        let mut decided: Vec<Decided> = Vec::with_capacity(commands.len());
        let mut applied: HashMap<(&str, &str), usize> = HashMap::new();
        let mut grants = Vec::new();
        let mut entries = Vec::new();
        let mut published = Vec::new();
        for (index, command) in commands.iter().enumerate() {
            let user_id = command.user_id.as_str();
            if let Some(error) = unreadable.get(user_id) {
                decided.push(Decided::Done(Err(CommandError::Store(error.clone()))));
                continue;
            }
            let key = (user_id, command.request_id.as_str());
            if let Some(record) = earlier.get(&key) {
                // A reservation's hold under this key is no charge to replay: the key is taken.
                let same = record.kind == RecordKind::Deduct.as_str()
                    && record.amount_micros == command.amount.get()
                    && record.api_id.as_deref().unwrap_or("") == command.api_id.as_str();
                let result = if same {
                    let working = &accounts[user_id];
                    Ok(Charged {
                        split: Split {
                            free: Micros::new(record.free_micros),
                            balance: Micros::new(record.balance_micros),
                        },
                        account: self.rules.present_as_recorded(
                            user_id,
                            &working.currency,
                            record,
                            working.state.monthly_free,
                        )?,
                        record_id: record.record_id.clone(),
                        replayed: true,
                    })
                } else {
                    Err(CommandError::KeyReused { key: "request_id" })
                };
                decided.push(Decided::Done(result));
                continue;
            }
            if let Some(&first) = applied.get(&key) {
                let original = commands[first];
                let same = original.amount == command.amount && original.api_id == command.api_id;
                decided.push(if same {
                    Decided::SameAs(first)
                } else {
                    Decided::Done(Err(CommandError::KeyReused { key: "request_id" }))
                });
                continue;
            }

            let working = accounts.entry(user_id).or_insert_with(|| Working {
                currency: self.rules.currency.clone(),
                stored_version: 0,
                state: AccountSnapshot::fresh(now_period, self.rules.default_monthly_free),
                low_balance_threshold: self.rules.default_low_balance_threshold,
            });
            // The period's grant and the charge are decided together: a refused charge writes
            // nothing, not even the grant.
            let period = command_period(&working.state, now_period);
            let opened = working
                .state
                .open_period(period, working.state.monthly_free);
            let base = opened.unwrap_or(working.state);
            let (split, after) = match base.charge(command.amount) {
                Ok(charged) => charged,
                Err(refusal) => {
                    decided.push(Decided::Done(Err(refusal.into())));
                    continue;
                }
            };
            if let Some(granted) = opened {
                let record_id = events::new_id();
                grants.push((
                    user_id,
                    granted.period.to_string(),
                    granted.free_granted.get(),
                    record_id.clone(),
                ));
                entries.push(self.entry(
                    user_id,
                    RecordKind::FreeGrant,
                    &record_id,
                    working.state,
                    granted,
                    (granted.free_granted, granted.free_granted, Micros::ZERO),
                    None,
                    now,
                ));
                let kind = Kind::FreeQuotaGranted(FreeQuotaGranted {
                    record_id: record_id.clone(),
                    period: granted.period.to_string(),
                    amount_micros: granted.free_granted.get(),
                });
                published.push(self.event_about(
                    user_id,
                    &working.currency,
                    &granted,
                    kind,
                    &batch[index].traceparent,
                    now,
                ));
            }
            let record_id = events::new_id();
            entries.push(self.entry(
                user_id,
                RecordKind::Deduct,
                &record_id,
                base,
                after,
                (command.amount, split.free, split.balance),
                Some(command),
                now,
            ));
            let kind = super::charge::deducted(command, &record_id, split);
            let alerts = shared::alerts::raised(&base, &after, working.low_balance_threshold);
            for kind in
                std::iter::once(kind).chain(events::alert_kinds(&record_id, &alerts, after.period))
            {
                published.push(self.event_about(
                    user_id,
                    &working.currency,
                    &after,
                    kind,
                    &batch[index].traceparent,
                    now,
                ));
            }
            working.state = after;
            applied.insert(key, index);
            decided.push(Decided::Done(Ok(Charged {
                record_id,
                split,
                account: self
                    .rules
                    .present(user_id, Some(&working.currency), Some(&after), now),
                replayed: false,
            })));
        }

        if !look_up {
            // A refused charge may be the retry of one applied earlier, whose answer is the
            // original, not a refusal: those keys are looked up before a refusal is final.
            let refused: Vec<(&str, &str)> = commands
                .iter()
                .zip(&decided)
                .filter(|(command, decision)| {
                    matches!(decision, Decided::Done(Err(_)))
                        && accounts
                            .get(command.user_id.as_str())
                            .is_some_and(|w| w.stored_version > 0)
                })
                .map(|(command, _)| (command.user_id.as_str(), command.request_id.as_str()))
                .collect();
            if !store::find_charges(&mut tx, &refused).await?.is_empty() {
                tx.rollback().await.map_err(StoreError::from)?;
                return Ok(None);
            }
        }

        if !entries.is_empty() {
            let created: Vec<(&str, &str, AccountSnapshot)> = accounts
                .iter()
                .filter(|(_, w)| w.stored_version == 0 && w.state.version > 0)
                .map(|(user, w)| (*user, w.currency.as_str(), w.state))
                .collect();
            let changed: Vec<(&str, &str, AccountSnapshot)> = accounts
                .iter()
                .filter(|(_, w)| w.stored_version > 0 && w.state.version != w.stored_version)
                .map(|(user, w)| (*user, w.currency.as_str(), w.state))
                .collect();
            let grant_rows: Vec<Grant> = grants
                .iter()
                .map(|(user_id, period, granted, record_id)| Grant {
                    user_id,
                    period: period.clone(),
                    granted_micros: *granted,
                    record_id,
                })
                .collect();
            let ledger: Vec<LedgerEntry> = entries.iter().map(|e| e.borrowed()).collect();
            let mut writes = Writes::new();
            writes
                .create_accounts(&created, now)
                .save_accounts(&changed, now)
                .grants(&grant_rows, now)
                .entries(&ledger)
                .events(&published, now);
            writes.run(&mut tx).await?;
            tx.commit().await.map_err(StoreError::from)?;
            self.store.outbox_written();
            let written: Vec<AccountOut> = accounts
                .iter()
                .filter(|(_, w)| w.state.version != w.stored_version)
                .map(|(user, w)| self.rules.present_stored(user, &w.currency, &w.state))
                .collect();
            self.write_through(&written).await;
        } else {
            tx.rollback().await.map_err(StoreError::from)?;
        }

        let mut results: Vec<Option<Result<Charged, CommandError>>> =
            Vec::with_capacity(decided.len());
        for decision in &decided {
            results.push(match decision {
                Decided::Done(result) => Some(result.clone()),
                Decided::SameAs(_) => None,
            });
        }
        for (index, decision) in decided.iter().enumerate() {
            if let Decided::SameAs(first) = decision {
                let original = results[*first]
                    .clone()
                    .expect("an applied charge has its result");
                results[index] = Some(original.map(|charged| Charged {
                    replayed: true,
                    ..charged
                }));
            }
        }
        Ok(Some(
            results
                .into_iter()
                .map(|r| r.expect("every charge decided"))
                .collect(),
        ))
    }

    #[allow(clippy::too_many_arguments)]
    fn entry(
        &self,
        user_id: &str,
        kind: RecordKind,
        record_id: &str,
        before: AccountSnapshot,
        after: AccountSnapshot,
        amounts: (Micros, Micros, Micros),
        charge: Option<&DeductQuota>,
        now: chrono::DateTime<chrono::Utc>,
    ) -> OwnedEntry {
        OwnedEntry {
            record_id: record_id.to_owned(),
            user_id: user_id.to_owned(),
            kind,
            amounts,
            before,
            after,
            request_id: charge.map(|c| c.request_id.to_string()),
            api_id: charge.map(|c| c.api_id.to_string()),
            description: charge.map(|c| c.description.to_string()),
            created_at: now,
        }
    }

    fn event_about(
        &self,
        user_id: &str,
        currency: &str,
        state: &AccountSnapshot,
        kind: Kind,
        traceparent: &Option<String>,
        now: chrono::DateTime<chrono::Utc>,
    ) -> Outgoing {
        let subject = self.rules.bus.event_subject(&kind);
        let account = AccountOut {
            user_id: user_id.to_owned(),
            currency: currency.to_owned(),
            view: stored_view(state, self.rules.zone),
        };
        Outgoing {
            event: events::event(Some(&account), user_id, kind, now),
            subject,
            traceparent: traceparent.clone(),
        }
    }
}

/// A ledger row owned by the batch until it is written.
struct OwnedEntry {
    record_id: String,
    user_id: String,
    kind: RecordKind,
    amounts: (Micros, Micros, Micros),
    before: AccountSnapshot,
    after: AccountSnapshot,
    request_id: Option<String>,
    api_id: Option<String>,
    description: Option<String>,
    created_at: chrono::DateTime<chrono::Utc>,
}

impl OwnedEntry {
    fn borrowed(&self) -> LedgerEntry<'_> {
        LedgerEntry {
            record_id: &self.record_id,
            user_id: &self.user_id,
            kind: self.kind,
            amount: self.amounts.0,
            free: self.amounts.1,
            balance: self.amounts.2,
            before: self.before,
            after: self.after,
            refs: Refs {
                request_id: self.request_id.as_deref(),
                api_id: self.api_id.as_deref(),
                description: self.description.as_deref(),
                ..Refs::default()
            },
            created_at: self.created_at,
        }
    }
}
