//! When the reset fires, and which period it is for.
//!
//! The cron expression (seconds first, default `0 0 0 1 * *`) is evaluated in the billing time
//! zone by this code, not by the job scheduler: a zone job there freezes the UTC offset when it
//! is created and drifts by an hour across daylight-saving changes. Each firing computes the next
//! one afresh, so every fire time is the expression's local time on its own date.

use chrono::{DateTime, Utc};
use croner::{
    Cron,
    parser::{CronParser, Seconds},
};
use shared::period::{BillingZone, Period};

#[derive(Clone, Debug)]
pub struct FireSchedule {
    cron: Cron,
    zone: BillingZone,
}

#[derive(Debug, thiserror::Error)]
#[error("invalid schedule {expression:?}: {reason}")]
pub struct ScheduleError {
    expression: String,
    reason: String,
}

impl FireSchedule {
    /// Six fields, seconds first; the five-field form is refused so a schedule is never
    /// misread by a minute.
    pub fn new(expression: &str, zone: BillingZone) -> Result<Self, ScheduleError> {
        let invalid = |reason: String| ScheduleError {
            expression: expression.to_owned(),
            reason,
        };
        if expression.split_whitespace().count() != 6 {
            return Err(invalid(
                "six fields are required, seconds first (e.g. 0 0 0 1 * *)".into(),
            ));
        }
        let cron = CronParser::builder()
            .seconds(Seconds::Required)
            .build()
            .parse(expression)
            .map_err(|e| invalid(e.to_string()))?;
        Ok(FireSchedule { cron, zone })
    }

    /// The first fire instant strictly after `after`.
    pub fn next_after(&self, after: DateTime<Utc>) -> DateTime<Utc> {
        let local = after.with_timezone(&self.zone.tz());
        self.cron
            .find_next_occurrence(&local, false)
            .map(|fire| fire.with_timezone(&Utc))
            .expect("a valid expression fires again")
    }

    /// The period a firing is for: the month of the *scheduled* instant, whenever the job
    /// actually runs.
    pub fn period_of(&self, scheduled: DateTime<Utc>) -> Period {
        self.zone.period_of(scheduled)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn utc(text: &str) -> DateTime<Utc> {
        shared::period::parse_instant(text).unwrap()
    }

    /// The next 24 firings of the monthly schedule from `start`, with their periods.
    fn two_years(zone: &str, start: &str) -> Vec<(DateTime<Utc>, String)> {
        let schedule = FireSchedule::new("0 0 0 1 * *", zone.parse().unwrap()).unwrap();
        let mut at = utc(start);
        (0..24)
            .map(|_| {
                at = schedule.next_after(at);
                (at, schedule.period_of(at).to_string())
            })
            .collect()
    }

    /// Checks every firing is local midnight on the 1st, for the month it names.
    fn assert_local_midnights(zone: &str, fires: &[(DateTime<Utc>, String)], first_period: &str) {
        let tz: chrono_tz::Tz = zone.parse().unwrap();
        let mut period: Period = first_period.parse().unwrap();
        for (fire, named) in fires {
            let local = fire.with_timezone(&tz);
            assert_eq!(
                local.format("%d %H:%M:%S").to_string(),
                "01 00:00:00",
                "{zone}: {fire} is {local}"
            );
            assert_eq!(named, &period.to_string(), "{zone}: {fire}");
            period = period.next();
        }
    }

    #[test]
    fn shanghai_fires_at_local_midnight_on_every_first_for_two_years() {
        let fires = two_years("Asia/Shanghai", "2026-11-25T00:00:00Z");
        assert_eq!(fires[0].0, utc("2026-11-30T16:00:00Z"));
        assert_local_midnights("Asia/Shanghai", &fires, "2026-12");
        assert_eq!(fires[23].1, "2028-11");
    }

    #[test]
    fn utc_fires_at_midnight_utc() {
        let fires = two_years("UTC", "2026-11-25T00:00:00Z");
        assert_eq!(fires[0].0, utc("2026-12-01T00:00:00Z"));
        assert_local_midnights("UTC", &fires, "2026-12");
    }

    #[test]
    fn new_york_fires_at_local_midnight_on_both_sides_of_daylight_saving() {
        let fires = two_years("America/New_York", "2026-11-25T00:00:00Z");
        assert_local_midnights("America/New_York", &fires, "2026-12");
        // EST (UTC-5) in winter, EDT (UTC-4) in summer: the offset follows the date.
        let winter = fires.iter().find(|(_, p)| p == "2027-01").unwrap().0;
        let summer = fires.iter().find(|(_, p)| p == "2027-07").unwrap().0;
        assert_eq!(winter, utc("2027-01-01T05:00:00Z"));
        assert_eq!(summer, utc("2027-07-01T04:00:00Z"));
    }

    #[test]
    fn a_late_run_still_names_the_scheduled_month() {
        let schedule = FireSchedule::new("0 0 0 1 * *", BillingZone::default()).unwrap();
        let scheduled = schedule.next_after(utc("2026-12-31T15:00:00Z"));
        assert_eq!(scheduled, utc("2026-12-31T16:00:00Z"));
        // Whenever the job really runs, the period is that of the scheduled instant.
        assert_eq!(schedule.period_of(scheduled).to_string(), "2027-01");
    }

    #[test]
    fn the_next_fire_is_strictly_later() {
        let schedule = FireSchedule::new("0 0 0 1 * *", BillingZone::default()).unwrap();
        let fire = utc("2026-11-30T16:00:00Z");
        assert_eq!(schedule.next_after(fire), utc("2026-12-31T16:00:00Z"));
    }

    #[test]
    fn malformed_or_five_field_expressions_are_refused() {
        for bad in ["0 0 1 * *", "not a schedule", "0 0 0 32 * *", ""] {
            assert!(
                FireSchedule::new(bad, BillingZone::default()).is_err(),
                "{bad:?}"
            );
        }
    }
}
