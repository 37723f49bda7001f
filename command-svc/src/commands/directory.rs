//! The ids that have an account, as a Bloom filter: a check of an id the filter has never seen
//! is answered as an account that does not exist yet, with no read of Redis or MySQL, however
//! many such ids come. An id it may have seen goes the usual way (memory, Redis, MySQL), so a
//! false positive costs one read, never a wrong answer.
//!
//! The filter is filled by a full scan of `accounts` at start, and kept whole by this replica's
//! own commits, by every replica's events, and by a scan of the accounts created since the last
//! one, every half of `max_age`. It is trusted for `max_age` after the start of its last
//! scan that succeeded: an account committed anywhere before that start is in the filter, so an
//! "absent" answer is never older than `max_age`. Untrusted (before the first scan, or when
//! MySQL cannot be scanned), it answers nothing and checks read the account as before.

use std::{
    hash::{BuildHasher, RandomState},
    sync::{
        Arc, Mutex, RwLock,
        atomic::{AtomicU64, AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use shared::ids::UserId;

/// Bits per id the filter is sized for, and bits set per id: about 1 % false positives at
/// capacity.
const BITS_PER_ID: usize = 10;
const HASHES: u64 = 7;

/// A Bloom filter of user ids, safe to add to from many tasks at once.
pub struct Bloom {
    words: Vec<AtomicU64>,
    hashers: (RandomState, RandomState),
    capacity: usize,
    added: AtomicUsize,
}

impl Bloom {
    /// A filter for `capacity` ids (at least 1,024).
    pub fn with_capacity(capacity: usize) -> Bloom {
        let capacity = capacity.max(1_024);
        let words = (capacity * BITS_PER_ID).div_ceil(64);
        Bloom {
            words: (0..words).map(|_| AtomicU64::new(0)).collect(),
            hashers: (RandomState::new(), RandomState::new()),
            capacity,
            added: AtomicUsize::new(0),
        }
    }

    /// Adds the id; counted when it sets a bit (an id added again sets none).
    pub fn add(&self, user_id: &UserId) {
        let mut new = false;
        for (word, bit) in self.positions(user_id) {
            new |= self.words[word].fetch_or(bit, Ordering::Relaxed) & bit == 0;
        }
        if new {
            self.added.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// False only for an id never added.
    pub fn may_contain(&self, user_id: &UserId) -> bool {
        self.positions(user_id)
            .all(|(word, bit)| self.words[word].load(Ordering::Relaxed) & bit != 0)
    }

    /// More ids were added than it was sized for: false positives grow past 1 % (an id whose
    /// bits were all set by others is not counted, which false positives bound).
    pub fn is_overfull(&self) -> bool {
        self.added.load(Ordering::Relaxed) > self.capacity
    }

    /// The word and bit of each of the id's `HASHES` positions (double hashing).
    fn positions(&self, user_id: &UserId) -> impl Iterator<Item = (usize, u64)> {
        let bits = (self.words.len() * 64) as u64;
        let first = self.hashers.0.hash_one(user_id);
        let step = self.hashers.1.hash_one(user_id) | 1;
        (0..HASHES).map(move |i| {
            let bit = first.wrapping_add(i.wrapping_mul(step)) % bits;
            ((bit / 64) as usize, 1 << (bit % 64))
        })
    }
}

/// The filter and how long it is trusted.
pub struct AccountDirectory {
    filter: RwLock<Arc<Bloom>>,
    trusted_until: Mutex<Option<Instant>>,
    max_age: Duration,
}

impl AccountDirectory {
    pub fn new(max_age: Duration) -> AccountDirectory {
        AccountDirectory {
            filter: RwLock::new(Arc::new(Bloom::with_capacity(0))),
            trusted_until: Mutex::new(None),
            max_age,
        }
    }

    /// A filter holding `ids`, with room for as many again: it is refilled (by a full scan)
    /// once it holds twice what it was filled with.
    pub fn filled(ids: &[UserId]) -> Bloom {
        let bloom = Bloom::with_capacity(ids.len() * 2);
        ids.iter().for_each(|id| bloom.add(id));
        bloom
    }

    /// Whether the id surely has no account (as of at most `max_age` ago).
    pub fn surely_absent(&self, user_id: &UserId) -> bool {
        let trusted = self
            .trusted_until
            .lock()
            .expect("directory lock")
            .is_some_and(|until| Instant::now() < until);
        trusted && !self.filter().may_contain(user_id)
    }

    /// An id that has an account now.
    pub fn add(&self, user_id: &UserId) {
        self.filter().add(user_id);
    }

    /// `filled` (by a full scan) replaces the filter. Ids added meanwhile by commits and events
    /// may be missing from it: the caller scans the accounts created since the scan's start
    /// right after.
    pub fn replace(&self, filled: Bloom) {
        *self.filter.write().expect("directory lock") = Arc::new(filled);
    }

    /// Every account committed before `started` is in the filter.
    pub fn confirm(&self, started: Instant) {
        *self.trusted_until.lock().expect("directory lock") = Some(started + self.max_age);
    }

    /// Whether the filter should be filled again, larger.
    pub fn is_overfull(&self) -> bool {
        self.filter().is_overfull()
    }

    fn filter(&self) -> Arc<Bloom> {
        self.filter.read().expect("directory lock").clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user(i: usize) -> UserId {
        UserId::stored(format!("dev-{i}"))
    }

    #[test]
    fn an_added_id_is_always_found_and_few_others_are() {
        let bloom = Bloom::with_capacity(10_000);
        (0..10_000).for_each(|i| bloom.add(&user(i)));
        assert!((0..10_000).all(|i| bloom.may_contain(&user(i))));
        let false_positives = (10_000..110_000)
            .filter(|&i| bloom.may_contain(&user(i)))
            .count();
        assert!(false_positives < 2_000, "{false_positives} of 100,000");
        // Added again, an id is not counted again.
        (0..10_000).for_each(|i| bloom.add(&user(i)));
        assert!(!bloom.is_overfull());
        (10_000..10_300).for_each(|i| bloom.add(&user(i)));
        assert!(bloom.is_overfull());
    }

    #[test]
    fn absence_is_answered_only_while_the_last_scan_is_recent() {
        let directory = AccountDirectory::new(Duration::from_millis(50));
        let (known, stranger) = (user(1), user(2));
        directory.add(&known);
        assert!(
            !directory.surely_absent(&stranger),
            "not trusted before a scan"
        );
        directory.confirm(Instant::now());
        assert!(directory.surely_absent(&stranger));
        assert!(!directory.surely_absent(&known));
        directory.confirm(Instant::now() - Duration::from_millis(60));
        assert!(
            !directory.surely_absent(&stranger),
            "the last scan is too old"
        );
    }

    #[test]
    fn a_refilled_filter_replaces_the_old_one() {
        let directory = AccountDirectory::new(Duration::from_secs(60));
        directory.confirm(Instant::now());
        directory.replace(AccountDirectory::filled(&[user(7)]));
        assert!(!directory.surely_absent(&user(7)));
        assert!(directory.surely_absent(&user(8)));
    }
}
