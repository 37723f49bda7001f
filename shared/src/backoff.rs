//! One backoff for every loop that tries again: the pause doubles from `first` up to `max`, and a
//! random part of up to `jitter_percent` of it is added, so that replicas that failed together do
//! not try again together.

use std::time::Duration;

/// A doubling, bounded, jittered pause.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Backoff {
    pub first: Duration,
    pub max: Duration,
    /// The most the random part adds, in percent of the pause.
    pub jitter_percent: u32,
}

impl Backoff {
    /// Reconnecting to NATS, MySQL or Redis after an outage: 100 ms doubling up to 5 s.
    pub const RECONNECT: Backoff = Backoff {
        first: Duration::from_millis(100),
        max: Duration::from_secs(5),
        jitter_percent: 20,
    };

    /// A transaction that lost a deadlock or a lock wait: 1 ms doubling up to 32 ms, with as
    /// much again at random (the losers of one deadlock must not meet again).
    pub const CONFLICT: Backoff = Backoff {
        first: Duration::from_millis(1),
        max: Duration::from_millis(32),
        jitter_percent: 100,
    };

    pub const fn new(first: Duration, max: Duration, jitter_percent: u32) -> Backoff {
        Backoff {
            first,
            max,
            jitter_percent,
        }
    }

    /// The pause before attempt `failures + 1`, after `failures` failed attempts (1 or more),
    /// without its random part.
    pub fn base(&self, failures: u32) -> Duration {
        self.first
            .saturating_mul(2_u32.saturating_pow(failures.saturating_sub(1)))
            .min(self.max.max(self.first))
    }

    /// The pause after `failures` failed attempts: the base and its random part.
    pub fn delay(&self, failures: u32) -> Duration {
        let base = self.base(failures);
        let spread = base.as_micros() * u128::from(self.jitter_percent) / 100;
        let random = u128::from(uuid::Uuid::new_v4().as_u128() as u64);
        let extra = if spread == 0 {
            0
        } else {
            random % (spread + 1)
        };
        base + Duration::from_micros(u64::try_from(extra).unwrap_or(u64::MAX))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_pause_doubles_from_first_up_to_max() {
        let steps: Vec<u128> = (1..=8)
            .map(|n| Backoff::RECONNECT.base(n).as_millis())
            .collect();
        assert_eq!(steps, [100, 200, 400, 800, 1600, 3200, 5000, 5000]);
        assert_eq!(Backoff::RECONNECT.base(u32::MAX), Duration::from_secs(5));
    }

    #[test]
    fn the_random_part_stays_within_its_share() {
        for failures in 1..=10 {
            let base = Backoff::RECONNECT.base(failures);
            for _ in 0..50 {
                let delay = Backoff::RECONNECT.delay(failures);
                assert!(
                    delay >= base && delay <= base + base / 5,
                    "{delay:?} of {base:?}"
                );
            }
        }
        let steady = Backoff::new(Duration::from_millis(10), Duration::from_millis(10), 0);
        assert_eq!(steady.delay(3), Duration::from_millis(10));
    }
}
