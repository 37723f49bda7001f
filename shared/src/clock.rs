//! The time source. Services ask the clock, never the system directly, so a test can stand at
//! 23:59:59.999 on the last day of a month and step over midnight.

use std::sync::{
    Arc,
    atomic::{AtomicI64, Ordering},
};

use chrono::{DateTime, Duration, Utc};

#[derive(Clone, Debug)]
pub struct Clock(Source);

#[derive(Clone, Debug)]
enum Source {
    System,
    /// Microseconds since the epoch, shared by every clone.
    Manual(Arc<AtomicI64>),
}

impl Clock {
    pub fn system() -> Self {
        Clock(Source::System)
    }

    /// A clock that stands still at `at` until it is set or advanced.
    pub fn manual(at: DateTime<Utc>) -> Self {
        Clock(Source::Manual(Arc::new(AtomicI64::new(
            at.timestamp_micros(),
        ))))
    }

    pub fn now(&self) -> DateTime<Utc> {
        match &self.0 {
            Source::System => Utc::now(),
            Source::Manual(micros) => {
                DateTime::from_timestamp_micros(micros.load(Ordering::SeqCst))
                    .expect("a manual clock holds a representable instant")
            }
        }
    }

    /// Moves a manual clock to `at`.
    ///
    /// # Panics
    /// On the system clock, which cannot be set.
    pub fn set(&self, at: DateTime<Utc>) {
        match &self.0 {
            Source::System => panic!("the system clock cannot be set"),
            Source::Manual(micros) => micros.store(at.timestamp_micros(), Ordering::SeqCst),
        }
    }

    /// Moves a manual clock forward (or back, with a negative step).
    pub fn advance(&self, step: Duration) {
        self.set(self.now() + step);
    }
}

impl Default for Clock {
    fn default() -> Self {
        Clock::system()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_manual_clock_is_shared_by_its_clones() {
        let start = crate::period::parse_instant("2026-11-30T15:59:59.999Z").unwrap();
        let clock = Clock::manual(start);
        let seen_elsewhere = clock.clone();
        clock.advance(Duration::milliseconds(1));
        assert_eq!(seen_elsewhere.now(), start + Duration::milliseconds(1));
    }

    #[test]
    fn the_system_clock_moves() {
        let clock = Clock::system();
        let first = clock.now();
        std::thread::sleep(std::time::Duration::from_millis(2));
        assert!(clock.now() > first);
    }
}
