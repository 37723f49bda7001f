//! command-svc's in-process view of accounts, read first by `CheckQuota`: a check of an account
//! this replica knows costs no I/O at all.
//!
//! What it holds was learned from this replica's own commits (before their callers are answered),
//! from the events other replicas' commits publish (`bus::follow`), and from the snapshot or row
//! a check read on a miss, including the fact that no account exists under an id (so an unknown
//! id costs one store read per `max_age`, not one per check). Knowledge of an account only moves
//! to newer versions. Every entry is forgotten `max_age` after it was learned: however the events
//! fare, a check never answers from a state older than that. It never decides a charge. An id
//! it does not remember may still be answered without I/O by its directory of the ids that have
//! an account (`directory`), and it knows which accounts have spend limits (`LimitedUsers`).

use std::{
    collections::{HashMap, HashSet},
    hash::{BuildHasher, RandomState},
    sync::{Mutex, RwLock},
    time::{Duration, Instant},
};

use shared::{account::AccountSnapshot, config::AccountMemorySettings, ids::UserId};

use super::directory::AccountDirectory;

/// What is known of the account under an id.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Known {
    /// The account as stored at `snapshot.version`.
    Account {
        currency: String,
        /// The list that prices the account's usage, by name.
        price_list: String,
        snapshot: AccountSnapshot,
    },
    /// No account was stored under the id when it was read.
    Absent,
}

struct Remembered {
    known: Known,
    learned_at: Instant,
}

/// Independent locks, so that concurrent checks rarely wait on one another.
const SHARDS: usize = 64;

pub struct AccountMemory {
    shards: Vec<Mutex<HashMap<UserId, Remembered>>>,
    hasher: RandomState,
    max_age: Duration,
    per_shard: usize,
    /// The ids that have an account, for the ids not remembered.
    directory: AccountDirectory,
    /// The ids whose accounts have spend limits.
    limited: LimitedUsers,
}

/// Which accounts have spend limits, as this replica knows: loaded from MySQL (with the
/// directory's refreshes, at most every [`LimitedUsers::RELOAD`]), kept by this replica's sets and
/// every replica's `spend_limits_set` events. Until it is first loaded every account counts as
/// limited (a check then reads the counters).
#[derive(Default)]
pub struct LimitedUsers {
    /// The limited accounts and when they were loaded.
    loaded: RwLock<Option<(HashSet<UserId>, Instant)>>,
}

impl LimitedUsers {
    /// How often the whole set is read again, in case an event was missed.
    pub const RELOAD: Duration = Duration::from_secs(60);

    /// Whether a check must read the account's counters.
    pub fn may_be_limited(&self, user_id: &UserId) -> bool {
        let loaded = self.loaded.read().expect("limited users lock");
        loaded
            .as_ref()
            .is_none_or(|(users, _)| users.contains(user_id))
    }

    pub fn set(&self, user_id: &UserId, limited: bool) {
        let mut loaded = self.loaded.write().expect("limited users lock");
        if let Some((users, _)) = loaded.as_mut() {
            if limited {
                users.insert(user_id.clone());
            } else {
                users.remove(user_id);
            }
        }
    }

    /// Whether the set was never loaded, or loaded more than [`LimitedUsers::RELOAD`] ago.
    pub fn reload_due(&self) -> bool {
        let loaded = self.loaded.read().expect("limited users lock");
        loaded
            .as_ref()
            .is_none_or(|(_, at)| at.elapsed() >= Self::RELOAD)
    }

    /// Every limited account, as MySQL listed them.
    pub fn replace(&self, limited: HashSet<UserId>) {
        *self.loaded.write().expect("limited users lock") = Some((limited, Instant::now()));
    }
}

impl AccountMemory {
    pub fn new(settings: &AccountMemorySettings) -> AccountMemory {
        let max_age = Duration::from_millis(settings.max_age_ms);
        AccountMemory {
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
            hasher: RandomState::new(),
            max_age,
            per_shard: settings.capacity.div_ceil(SHARDS).max(1),
            directory: AccountDirectory::new(max_age),
            limited: LimitedUsers::default(),
        }
    }

    /// How long an entry, and an answer of the directory, is trusted.
    pub fn max_age(&self) -> Duration {
        self.max_age
    }

    pub fn directory(&self) -> &AccountDirectory {
        &self.directory
    }

    pub fn limited(&self) -> &LimitedUsers {
        &self.limited
    }

    /// What is known of the account, if it was learned within `max_age`.
    pub fn recall(&self, user_id: &UserId) -> Option<Known> {
        let shard = self.shard(user_id).lock().expect("memory lock");
        let remembered = shard.get(user_id)?;
        is_fresh(remembered, Instant::now(), self.max_age).then(|| remembered.known.clone())
    }

    /// Forgets what is known of the account under `user_id` (a change its version does not
    /// show, such as its price list): the next check reads it again.
    pub fn forget(&self, user_id: &UserId) {
        self.shard(user_id)
            .lock()
            .expect("memory lock")
            .remove(user_id);
    }

    /// Remembers `known`, learned at `learned_at`, unless what is remembered is newer; an
    /// account's id goes into the directory.
    pub fn remember(&self, user_id: &UserId, known: Known, learned_at: Instant) {
        if matches!(known, Known::Account { .. }) {
            self.directory.add(user_id);
        }
        let now = Instant::now();
        let mut shard = self.shard(user_id).lock().expect("memory lock");
        if let Some(held) = shard.get_mut(user_id) {
            if supersedes(&known, held, now, self.max_age) {
                *held = Remembered { known, learned_at };
            }
            return;
        }
        if shard.len() >= self.per_shard {
            make_room(&mut shard, now, self.max_age, self.per_shard);
        }
        shard.insert(user_id.clone(), Remembered { known, learned_at });
    }

    fn shard(&self, user_id: &UserId) -> &Mutex<HashMap<UserId, Remembered>> {
        let index = self.hasher.hash_one(user_id) as usize % self.shards.len();
        &self.shards[index]
    }
}

fn is_fresh(remembered: &Remembered, now: Instant, max_age: Duration) -> bool {
    now.saturating_duration_since(remembered.learned_at) < max_age
}

/// Whether `new` replaces what is held: a newer or equal version of the account (equal renews
/// it), absence over absence, and anything over an entry already forgotten. An account is never
/// taken back to absent while it is remembered.
fn supersedes(new: &Known, held: &Remembered, now: Instant, max_age: Duration) -> bool {
    if !is_fresh(held, now, max_age) {
        return true;
    }
    match (new, &held.known) {
        (Known::Account { snapshot: new, .. }, Known::Account { snapshot: old, .. }) => {
            new.version >= old.version
        }
        (_, Known::Absent) => true,
        (Known::Absent, Known::Account { .. }) => false,
    }
}

/// A full shard drops what it has forgotten; when most of it is still fresh, it starts over
/// (the ids come back with one read each), so the memory stays within its capacity.
fn make_room(
    shard: &mut HashMap<UserId, Remembered>,
    now: Instant,
    max_age: Duration,
    per_shard: usize,
) {
    shard.retain(|_, remembered| is_fresh(remembered, now, max_age));
    if shard.len() >= per_shard * 3 / 4 {
        metrics::counter!("billing_account_memory_cleared_total").increment(1);
        shard.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use shared::{money::Micros, period::Period};

    fn settings(max_age_ms: u64, capacity: usize) -> AccountMemorySettings {
        AccountMemorySettings {
            enabled: true,
            max_age_ms,
            capacity,
        }
    }

    fn account(version: i64) -> Known {
        let period: Period = "2026-12".parse().unwrap();
        let mut snapshot = AccountSnapshot::fresh(period, Micros::new(1_000_000));
        snapshot.version = version;
        Known::Account {
            currency: "CNY".into(),
            price_list: "default".into(),
            snapshot,
        }
    }

    fn user(name: &str) -> UserId {
        UserId::stored(name)
    }

    #[test]
    fn knowledge_only_moves_to_newer_versions() {
        let memory = AccountMemory::new(&settings(60_000, 1_000));
        let dev = user("dev-1");
        memory.remember(&dev, account(3), Instant::now());
        memory.remember(&dev, account(2), Instant::now());
        assert_eq!(memory.recall(&dev), Some(account(3)));
        memory.remember(&dev, account(4), Instant::now());
        assert_eq!(memory.recall(&dev), Some(account(4)));
        // A read that found nothing does not hide an account learned since.
        memory.remember(&dev, Known::Absent, Instant::now());
        assert_eq!(memory.recall(&dev), Some(account(4)));
    }

    #[test]
    fn an_absent_account_is_remembered_until_it_appears() {
        let memory = AccountMemory::new(&settings(60_000, 1_000));
        let dev = user("dev-2");
        assert_eq!(memory.recall(&dev), None);
        memory.remember(&dev, Known::Absent, Instant::now());
        assert_eq!(memory.recall(&dev), Some(Known::Absent));
        memory.remember(&dev, account(1), Instant::now());
        assert_eq!(memory.recall(&dev), Some(account(1)));
    }

    #[test]
    fn nothing_is_recalled_after_max_age() {
        let memory = AccountMemory::new(&settings(50, 1_000));
        let (dev, old) = (user("dev-3"), Instant::now() - Duration::from_millis(60));
        memory.remember(&dev, account(5), old);
        assert_eq!(memory.recall(&dev), None);
        // A forgotten entry takes whatever is learned next, even an older version.
        memory.remember(&dev, account(4), Instant::now());
        assert_eq!(memory.recall(&dev), Some(account(4)));
    }

    #[test]
    fn every_account_may_be_limited_until_the_limited_ones_are_loaded() {
        let limited = LimitedUsers::default();
        let (dev, other) = (user("dev-limited"), user("dev-free"));
        assert!(limited.reload_due());
        assert!(
            limited.may_be_limited(&other),
            "nothing loaded: read the counters"
        );
        limited.set(&other, false);
        assert!(
            limited.may_be_limited(&other),
            "a set before the load decides nothing"
        );
        limited.replace(HashSet::from([dev.clone()]));
        assert!(!limited.reload_due());
        assert!(limited.may_be_limited(&dev));
        assert!(!limited.may_be_limited(&other));
        limited.set(&other, true);
        limited.set(&dev, false);
        assert!(limited.may_be_limited(&other));
        assert!(!limited.may_be_limited(&dev));
    }

    #[test]
    fn the_memory_stays_within_its_capacity() {
        let memory = AccountMemory::new(&settings(60_000, SHARDS * 8));
        for i in 0..SHARDS * 100 {
            memory.remember(&user(&format!("dev-{i}")), Known::Absent, Instant::now());
        }
        for shard in &memory.shards {
            assert!(shard.lock().unwrap().len() <= 8);
        }
        let last = user(&format!("dev-{}", SHARDS * 100 - 1));
        assert_eq!(memory.recall(&last), Some(Known::Absent));
    }
}
