//! Spend limits: hard caps on what an account, one of its APIs or one of its API keys spends in a
//! calendar day or month of the billing time zone (invariant 9). Everything here is a pure
//! decision on counters the caller has locked: which limits a charge matches, whether it fits
//! under all of them ([`check`]), what it adds ([`add`]), what a release or a refund gives back
//! ([`give_back`]), and when a window rolls over.
//!
//! A counter holds what its limit's scope spent in one window: the whole amount (free and
//! balance parts) of the charges decided in it, plus what the reservations taken in it hold. A
//! reservation's spend stays in the window it was taken in: its settle replaces the hold by the
//! actual amount there, and a release or expiry gives it back there, as a refund gives back to
//! its charge's window, in each case only while that window is still the counter's current one
//! (a window that has ended is history).

use chrono::{DateTime, Datelike, Duration, NaiveDate, TimeZone, Utc};

use crate::{
    ids::FieldViolation,
    money::Micros,
    period::{BillingZone, Period},
};

/// At most this many limits per account.
pub const MAX_LIMITS: usize = 20;
/// The largest limit, in micros (10^15).
pub const MAX_LIMIT_MICROS: i64 = 1_000_000_000_000_000;

/// A calendar window of the billing time zone.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Window {
    Day,
    Month,
}

impl Window {
    /// What [`Window::parse`] accepts, as an OpenAPI (ECMA-262) pattern.
    pub const PATTERN: &str = "^(day|month)$";

    pub fn parse(field: &'static str, text: &str) -> Result<Window, FieldViolation> {
        match text {
            "day" => Ok(Window::Day),
            "month" => Ok(Window::Month),
            _ => Err(FieldViolation::new(field, "must be day or month")),
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Window::Day => "day",
            Window::Month => "month",
        }
    }
}

/// What a limit binds: the whole account, the charges of one API, or those of one API key.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Scope {
    Account,
    Api(String),
    Key(String),
}

impl Scope {
    /// What [`Scope::parse`] accepts, as an OpenAPI (ECMA-262) pattern: an API id is 1..128
    /// characters without control characters, a key id 1..64 of `[A-Za-z0-9._:-]`.
    pub const PATTERN: &str =
        r"^(account|api:[^\u0000-\u001f\u007f-\u009f]{1,128}|key:[A-Za-z0-9._:-]{1,64})$";

    /// `account`, `api:<api_id>` (an API id of 1..128 characters without control characters)
    /// or `key:<key_id>` (1..64 of `[A-Za-z0-9._:-]`).
    pub fn parse(field: &'static str, text: &str) -> Result<Scope, FieldViolation> {
        let refused =
            || FieldViolation::new(field, "must be account, api:<api_id> or key:<key_id>");
        if text == "account" {
            return Ok(Scope::Account);
        }
        if let Some(api_id) = text.strip_prefix("api:") {
            crate::ids::ApiId::parse(field, api_id).map_err(|_| refused())?;
            return (!api_id.is_empty())
                .then(|| Scope::Api(api_id.to_owned()))
                .ok_or_else(refused);
        }
        if let Some(key_id) = text.strip_prefix("key:") {
            crate::ids::KeyId::parse(field, key_id).map_err(|_| refused())?;
            return (!key_id.is_empty())
                .then(|| Scope::Key(key_id.to_owned()))
                .ok_or_else(refused);
        }
        Err(refused())
    }

    /// A scope read back from the service's own tables.
    pub fn stored(text: &str) -> Scope {
        Scope::parse("scope", text).unwrap_or_else(|_| Scope::Key(text.to_owned()))
    }

    /// Whether a charge of `api_id` made with `key_id` counts against this scope.
    pub fn binds(&self, api_id: &str, key_id: &str) -> bool {
        match self {
            Scope::Account => true,
            Scope::Api(api) => api == api_id,
            Scope::Key(key) => !key_id.is_empty() && key == key_id,
        }
    }
}

impl std::fmt::Display for Scope {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Scope::Account => f.write_str("account"),
            Scope::Api(api_id) => write!(f, "api:{api_id}"),
            Scope::Key(key_id) => write!(f, "key:{key_id}"),
        }
    }
}

/// One limit: at most `limit` spent by `scope` in each `window`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SpendLimit {
    pub scope: Scope,
    pub window: Window,
    pub limit: Micros,
}

impl SpendLimit {
    /// One limit of a set, its fields checked.
    pub fn parse(
        scope: &str,
        window: &str,
        limit_micros: i64,
    ) -> Result<SpendLimit, FieldViolation> {
        let scope = Scope::parse("limits.scope", scope)?;
        let window = Window::parse("limits.window", window)?;
        if !(0..=MAX_LIMIT_MICROS).contains(&limit_micros) {
            return Err(FieldViolation::new(
                "limits.limit_micros",
                format!("must be 0..={MAX_LIMIT_MICROS}"),
            ));
        }
        Ok(SpendLimit {
            scope,
            window,
            limit: Micros::new(limit_micros),
        })
    }
}

impl SpendLimit {
    /// The limit as the contract's messages carry it.
    pub fn message(&self) -> crate::proto::v1::SpendLimit {
        crate::proto::v1::SpendLimit {
            scope: self.scope.to_string(),
            window: self.window.as_str().to_owned(),
            limit_micros: self.limit.get(),
        }
    }
}

/// A whole set of limits checked: at most [`MAX_LIMITS`], one per (scope, window), in the order
/// they are stored and locked (by scope, then window).
pub fn checked_set(mut limits: Vec<SpendLimit>) -> Result<Vec<SpendLimit>, FieldViolation> {
    if limits.len() > MAX_LIMITS {
        return Err(FieldViolation::new(
            "limits",
            format!("at most {MAX_LIMITS} limits"),
        ));
    }
    limits.sort_by(|a, b| storage_key(a).cmp(&storage_key(b)));
    if limits
        .windows(2)
        .any(|pair| storage_key(&pair[0]) == storage_key(&pair[1]))
    {
        return Err(FieldViolation::new(
            "limits",
            "at most one limit per scope and window",
        ));
    }
    Ok(limits)
}

/// A set as the REST API takes it: a scope and window given more than once keeps its smallest
/// limit (the safe reading), so every body the API's document allows is a set.
pub fn tightest_per_scope(limits: Vec<SpendLimit>) -> Vec<SpendLimit> {
    let mut kept: Vec<SpendLimit> = Vec::with_capacity(limits.len());
    for limit in limits {
        match kept
            .iter_mut()
            .find(|k| k.scope == limit.scope && k.window == limit.window)
        {
            Some(same) => same.limit = same.limit.min(limit.limit),
            None => kept.push(limit),
        }
    }
    kept
}

/// How a limit is keyed where it is stored: the scope's text, byte for byte, then the window.
fn storage_key(limit: &SpendLimit) -> (String, &'static str) {
    (limit.scope.to_string(), limit.window.as_str())
}

/// One window of one kind: the local date it starts on, and its first and last instants.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WindowSpan {
    /// The local date the window starts on (the 1st for a month): the window's key.
    pub first_day: NaiveDate,
    pub start: DateTime<Utc>,
    /// The first instant of the next window.
    pub end: DateTime<Utc>,
}

impl BillingZone {
    /// The first instant of the local `date`: midnight, or, where a daylight-saving jump skips
    /// midnight, the first local time that exists that day.
    pub fn day_start(self, date: NaiveDate) -> DateTime<Utc> {
        let midnight = date.and_hms_opt(0, 0, 0).expect("midnight exists");
        // Zones have skipped at most a few hours around midnight; step in quarter hours.
        (0..=24 * 4)
            .find_map(|quarter| {
                self.tz()
                    .from_local_datetime(&(midnight + Duration::minutes(15 * quarter)))
                    .earliest()
            })
            .expect("every local day has an instant")
            .with_timezone(&Utc)
    }

    /// The `window` that `instant` falls in, in this zone.
    pub fn window_of(self, window: Window, instant: DateTime<Utc>) -> WindowSpan {
        let today = instant.with_timezone(&self.tz()).date_naive();
        let (first_day, next_first_day) = match window {
            Window::Day => (today, today.succ_opt().expect("a next day")),
            Window::Month => {
                let period = Period::new(today.year(), today.month()).expect("a valid month");
                (period.first_day(), period.next().first_day())
            }
        };
        WindowSpan {
            first_day,
            start: self.day_start(first_day),
            end: self.day_start(next_first_day),
        }
    }
}

/// A limit as its counter stands: what its scope spent in the window starting on `first_day`,
/// and whether `spend_limit_reached` was published for that window.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Counter {
    pub limit: SpendLimit,
    pub first_day: NaiveDate,
    pub spent: Micros,
    pub reached_published: bool,
}

impl Counter {
    /// A new limit's counter in the window of `now`, starting from what was already spent in it.
    pub fn new(limit: SpendLimit, zone: BillingZone, now: DateTime<Utc>, spent: Micros) -> Counter {
        Counter {
            first_day: zone.window_of(limit.window, now).first_day,
            limit,
            spent,
            reached_published: false,
        }
    }

    /// The counter in the window of `now`: unchanged within its window, empty in a later one.
    pub fn roll(&mut self, zone: BillingZone, now: DateTime<Utc>) {
        let current = zone.window_of(self.limit.window, now).first_day;
        if current > self.first_day {
            self.first_day = current;
            self.spent = Micros::ZERO;
            self.reached_published = false;
        }
    }

    /// What the scope may still spend in the window (0 when a lowered limit is below what was
    /// spent).
    pub fn remaining(&self) -> Micros {
        self.limit
            .limit
            .checked_sub(self.spent)
            .filter(|left| *left > Micros::ZERO)
            .unwrap_or(Micros::ZERO)
    }

    /// Whether an amount spent at `at` belongs to this counter's window.
    fn holds_instant(&self, zone: BillingZone, at: DateTime<Utc>) -> bool {
        zone.window_of(self.limit.window, at).first_day == self.first_day
    }
}

/// Why a charge was refused: the tightest limit it would have gone above.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LimitReached {
    pub scope: Scope,
    pub window: Window,
    pub remaining: Micros,
}

/// What a charge, a hold or a give-back spends, for [`check`], [`add`] and [`give_back`]: its
/// API and key (which limits it matches), its amount, and when it was spent.
#[derive(Clone, Copy, Debug)]
pub struct Spend<'a> {
    pub api_id: &'a str,
    pub key_id: &'a str,
    pub amount: Micros,
    /// When the amount was spent: the charge's (or the reservation's) instant.
    pub at: DateTime<Utc>,
}

impl<'a> Spend<'a> {
    pub fn new(api_id: &'a str, key_id: &'a str, amount: Micros, at: DateTime<Utc>) -> Spend<'a> {
        Spend {
            api_id,
            key_id,
            amount,
            at,
        }
    }

    /// Whether `counter`'s limit binds this spend.
    fn binds(&self, counter: &Counter) -> bool {
        counter.limit.scope.binds(self.api_id, self.key_id)
    }
}

/// Whether `spend` fits under every limit whose scope it matches, each of those counters first
/// rolled to `spend.at` (a counter whose window ended starts the current one from 0; no window's
/// spend changes). The refusal names the matching limit with the least remaining.
pub fn check(
    counters: &mut [Counter],
    zone: BillingZone,
    spend: Spend<'_>,
) -> Result<(), LimitReached> {
    for counter in counters.iter_mut().filter(|c| spend.binds(c)) {
        counter.roll(zone, spend.at);
    }
    let tightest = counters
        .iter()
        .filter(|counter| spend.binds(counter) && spend.amount > counter.remaining())
        .min_by_key(|counter| counter.remaining());
    match tightest {
        Some(counter) => Err(LimitReached {
            scope: counter.limit.scope.clone(),
            window: counter.limit.window,
            remaining: counter.remaining(),
        }),
        None => Ok(()),
    }
}

/// Adds `spend` to every counter whose scope it matches, once [`check`] admitted it on these
/// counters; the indexes of those it brought to exactly 0 remaining.
pub fn add(counters: &mut [Counter], spend: Spend<'_>) -> Vec<usize> {
    let mut reached = Vec::new();
    for (index, counter) in counters.iter_mut().enumerate() {
        if !spend.binds(counter) {
            continue;
        }
        counter.spent = counter
            .spent
            .checked_add(spend.amount)
            .expect("checked within the limit, below 10^15");
        if spend.amount > Micros::ZERO && counter.remaining() == Micros::ZERO {
            reached.push(index);
        }
    }
    reached
}

/// Gives `spend` back to the limits it counted against (a release, an expiry, the unused part
/// of a settled hold, a refund), in each counter only while `spend.at` is in its current window
/// at `now`.
pub fn give_back(
    counters: &mut [Counter],
    zone: BillingZone,
    spend: Spend<'_>,
    now: DateTime<Utc>,
) {
    for counter in counters.iter_mut() {
        if !spend.binds(counter) {
            continue;
        }
        counter.roll(zone, now);
        if counter.holds_instant(zone, spend.at) {
            counter.spent = counter
                .spent
                .checked_sub(spend.amount)
                .filter(|left| *left >= Micros::ZERO)
                .unwrap_or(Micros::ZERO);
        }
    }
}

/// The limits as a reader sees them at `now`: each counter rolled to the current window.
pub fn current(counters: &[Counter], zone: BillingZone, now: DateTime<Utc>) -> Vec<Counter> {
    counters
        .iter()
        .cloned()
        .map(|mut counter| {
            counter.roll(zone, now);
            counter
        })
        .collect()
}

/// The digest a set of limits is recorded with, so that a retry of its `set_id` with other
/// limits is told apart (each field length-prefixed: no two sets share a text).
pub fn set_digest(limits: &[SpendLimit]) -> String {
    use sha2::Digest;
    let mut digest = sha2::Sha256::new();
    for limit in limits {
        let scope = limit.scope.to_string();
        digest.update(format!(
            "{}:{scope}{}:{}\n",
            scope.len(),
            limit.window.as_str(),
            limit.limit.get()
        ));
    }
    hex::encode(digest.finalize())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A charge as the services decide it: checked, then added.
    fn admit(
        counters: &mut [Counter],
        zone: BillingZone,
        spend: Spend<'_>,
    ) -> Result<Vec<usize>, LimitReached> {
        check(counters, zone, spend)?;
        Ok(add(counters, spend))
    }

    /// A check on a copy, as CheckQuota makes it.
    fn fits(counters: &[Counter], zone: BillingZone, spend: Spend<'_>) -> Result<(), LimitReached> {
        check(&mut counters.to_vec(), zone, spend)
    }

    fn zone(name: &str) -> BillingZone {
        BillingZone::new(name.parse().expect("a zone"))
    }

    fn at(text: &str) -> DateTime<Utc> {
        crate::period::parse_instant(text).expect("an instant")
    }

    fn limit(scope: &str, window: &str, micros: i64) -> SpendLimit {
        SpendLimit::parse(scope, window, micros).expect("a valid limit")
    }

    fn spend<'a>(api_id: &'a str, key_id: &'a str, micros: i64, when: &str) -> Spend<'a> {
        Spend {
            api_id,
            key_id,
            amount: Micros::new(micros),
            at: at(when),
        }
    }

    #[test]
    fn scopes_parse_and_bind_only_their_own_charges() {
        assert_eq!(Scope::parse("s", "account"), Ok(Scope::Account));
        assert_eq!(
            Scope::parse("s", "api:gpt-4o"),
            Ok(Scope::Api("gpt-4o".into()))
        );
        assert_eq!(
            Scope::parse("s", "key:k_1.a"),
            Ok(Scope::Key("k_1.a".into()))
        );
        for bad in [
            "",
            "Account",
            "api:",
            "key:",
            "key:a b",
            "team:x",
            "api:a\u{7}",
        ] {
            assert!(Scope::parse("s", bad).is_err(), "{bad:?} was accepted");
        }
        assert!(Scope::Account.binds("any", ""));
        assert!(Scope::Api("a".into()).binds("a", "k"));
        assert!(
            !Scope::Api("a".into()).binds("a ", "k"),
            "compared byte for byte"
        );
        assert!(Scope::Key("k".into()).binds("a", "k"));
        assert!(!Scope::Key("k".into()).binds("a", ""));
        assert!(!Scope::Key("k".into()).binds("a", "K"));
        for text in ["account", "api:x", "key:y"] {
            assert_eq!(Scope::parse("s", text).unwrap().to_string(), text);
        }
    }

    #[test]
    fn a_set_is_bounded_and_has_one_limit_per_scope_and_window() {
        assert!(SpendLimit::parse("account", "week", 1).is_err());
        assert!(SpendLimit::parse("account", "day", -1).is_err());
        assert!(SpendLimit::parse("account", "day", MAX_LIMIT_MICROS + 1).is_err());
        assert!(SpendLimit::parse("account", "day", MAX_LIMIT_MICROS).is_ok());
        assert!(SpendLimit::parse("account", "day", 0).is_ok());
        let twice = vec![limit("account", "day", 1), limit("account", "day", 2)];
        assert!(checked_set(twice).is_err());
        let both = vec![limit("account", "month", 1), limit("account", "day", 2)];
        let sorted = checked_set(both).expect("two windows of one scope");
        assert_eq!(sorted[0].window, Window::Day);
        let many: Vec<SpendLimit> = (0..=MAX_LIMITS)
            .map(|n| limit(&format!("key:k{n}"), "day", 1))
            .collect();
        assert!(checked_set(many[..MAX_LIMITS].to_vec()).is_ok());
        assert!(checked_set(many).is_err());
    }

    #[test]
    fn a_scope_and_window_given_twice_keeps_the_smallest_limit() {
        let merged = tightest_per_scope(vec![
            limit("account", "day", 7),
            limit("api:a", "day", 9),
            limit("account", "day", 5),
            limit("account", "month", 8),
            limit("account", "day", 6),
        ]);
        let kept: Vec<(String, Window, i64)> = merged
            .iter()
            .map(|l| (l.scope.to_string(), l.window, l.limit.get()))
            .collect();
        assert_eq!(
            kept,
            vec![
                ("account".to_owned(), Window::Day, 5),
                ("api:a".to_owned(), Window::Day, 9),
                ("account".to_owned(), Window::Month, 8),
            ]
        );
    }

    proptest::proptest! {
        /// The document's patterns say exactly what the parsers accept.
        #[test]
        fn the_patterns_are_the_parsers(
            scope in "(account|Account|api:|key:|team:)?[\u{0}-\u{a0}a-zA-Z0-9._:\u{e9} -]{0,132}",
            window in "(day|month|week|Day)?[a-z]{0,2}",
        ) {
            let scopes = regex::Regex::new(Scope::PATTERN).unwrap();
            proptest::prop_assert_eq!(
                scopes.is_match(&scope),
                Scope::parse("scope", &scope).is_ok(),
                "{:?}", scope
            );
            let windows = regex::Regex::new(Window::PATTERN).unwrap();
            proptest::prop_assert_eq!(
                windows.is_match(&window),
                Window::parse("window", &window).is_ok()
            );
        }
    }

    #[test]
    fn windows_are_calendar_days_and_months_of_the_billing_zone() {
        let shanghai = zone("Asia/Shanghai");
        let day = shanghai.window_of(Window::Day, at("2026-12-03T16:00:00Z"));
        assert_eq!(day.first_day, NaiveDate::from_ymd_opt(2026, 12, 4).unwrap());
        assert_eq!(day.start, at("2026-12-03T16:00:00Z"));
        assert_eq!(day.end, at("2026-12-04T16:00:00Z"));
        let before = shanghai.window_of(Window::Day, at("2026-12-03T15:59:59.999Z"));
        assert_eq!(
            before.first_day,
            NaiveDate::from_ymd_opt(2026, 12, 3).unwrap()
        );
        let month = shanghai.window_of(Window::Month, at("2026-12-31T16:00:00Z"));
        assert_eq!(
            month.first_day,
            NaiveDate::from_ymd_opt(2027, 1, 1).unwrap()
        );
        assert_eq!(month.end, at("2027-01-31T16:00:00Z"));
    }

    #[test]
    fn a_dst_change_makes_a_day_of_23_or_25_hours() {
        let new_york = zone("America/New_York");
        let spring = new_york.window_of(Window::Day, at("2026-03-08T12:00:00Z"));
        assert_eq!(spring.start, at("2026-03-08T05:00:00Z"));
        assert_eq!(spring.end, at("2026-03-09T04:00:00Z"));
        let autumn = new_york.window_of(Window::Day, at("2026-11-01T12:00:00Z"));
        assert_eq!(autumn.end - autumn.start, Duration::hours(25));
        // Where midnight itself is skipped, the day starts at the first local time that exists.
        let havana = zone("America/Havana");
        let skipped = havana.window_of(Window::Day, at("2026-03-08T12:00:00Z"));
        assert_eq!(skipped.start, at("2026-03-08T05:00:00Z"));
    }

    #[test]
    fn admits_up_to_exactly_the_limit_and_refuses_whole_above_it() {
        let utc = zone("UTC");
        let now = "2026-12-04T10:00:00Z";
        let mut counters = vec![Counter::new(
            limit("account", "day", 100),
            utc,
            at(now),
            Micros::ZERO,
        )];
        assert_eq!(
            admit(&mut counters, utc, spend("a", "", 60, now)),
            Ok(vec![])
        );
        let refused = admit(&mut counters, utc, spend("a", "", 41, now)).unwrap_err();
        assert_eq!(refused.remaining, Micros::new(40));
        assert_eq!(
            counters[0].spent,
            Micros::new(60),
            "a refusal changes nothing"
        );
        assert_eq!(
            admit(&mut counters, utc, spend("a", "", 40, now)),
            Ok(vec![0])
        );
        assert_eq!(counters[0].remaining(), Micros::ZERO);
        assert!(admit(&mut counters, utc, spend("a", "", 1, now)).is_err());
        assert_eq!(
            admit(&mut counters, utc, spend("a", "", 0, now)),
            Ok(vec![])
        );
    }

    #[test]
    fn the_tightest_of_several_limits_refuses_and_nothing_moves() {
        let utc = zone("UTC");
        let now = at("2026-12-04T10:00:00Z");
        let mut counters = vec![
            Counter::new(limit("account", "month", 1_000), utc, now, Micros::new(100)),
            Counter::new(limit("api:chat", "day", 300), utc, now, Micros::new(250)),
            Counter::new(limit("key:k1", "day", 500), utc, now, Micros::new(480)),
        ];
        let before = counters.clone();
        let refused = admit(
            &mut counters,
            utc,
            spend("chat", "k1", 60, "2026-12-04T10:00:00Z"),
        )
        .unwrap_err();
        assert_eq!(refused.scope, Scope::Key("k1".into()));
        assert_eq!(refused.remaining, Micros::new(20));
        assert_eq!(counters, before);
        // Another API and no key: only the account's limit binds.
        admit(
            &mut counters,
            utc,
            spend("embed", "", 60, "2026-12-04T10:00:00Z"),
        )
        .unwrap();
        assert_eq!(counters[0].spent, Micros::new(160));
        assert_eq!(counters[1].spent, Micros::new(250));
        assert_eq!(counters[2].spent, Micros::new(480));
    }

    #[test]
    fn a_window_rolls_at_local_midnight_and_the_last_instant_counts_in_the_old_day() {
        let shanghai = zone("Asia/Shanghai");
        let mut counters = vec![Counter::new(
            limit("account", "day", 100),
            shanghai,
            at("2026-12-03T02:00:00Z"),
            Micros::ZERO,
        )];
        admit(
            &mut counters,
            shanghai,
            spend("a", "", 100, "2026-12-03T15:59:59.999Z"),
        )
        .unwrap();
        assert!(
            admit(
                &mut counters,
                shanghai,
                spend("a", "", 1, "2026-12-03T15:59:59.999Z")
            )
            .is_err()
        );
        admit(
            &mut counters,
            shanghai,
            spend("a", "", 100, "2026-12-03T16:00:00Z"),
        )
        .unwrap();
        assert_eq!(
            counters[0].first_day,
            NaiveDate::from_ymd_opt(2026, 12, 4).unwrap()
        );
        assert_eq!(counters[0].spent, Micros::new(100));
    }

    #[test]
    fn giving_back_reaches_only_the_current_window() {
        let utc = zone("UTC");
        let mut counters = vec![
            Counter::new(
                limit("account", "day", 100),
                utc,
                at("2026-12-04T10:00:00Z"),
                Micros::ZERO,
            ),
            Counter::new(
                limit("account", "month", 1_000),
                utc,
                at("2026-12-04T10:00:00Z"),
                Micros::ZERO,
            ),
        ];
        admit(
            &mut counters,
            utc,
            spend("a", "", 70, "2026-12-04T10:00:00Z"),
        )
        .unwrap();
        give_back(
            &mut counters,
            utc,
            spend("a", "", 30, "2026-12-04T10:00:00Z"),
            at("2026-12-04T11:00:00Z"),
        );
        assert_eq!(
            (counters[0].spent, counters[1].spent),
            (Micros::new(40), Micros::new(40))
        );
        // The next day: yesterday's charge gives back to the month, not to the new day.
        admit(
            &mut counters,
            utc,
            spend("a", "", 10, "2026-12-05T01:00:00Z"),
        )
        .unwrap();
        give_back(
            &mut counters,
            utc,
            spend("a", "", 40, "2026-12-04T10:00:00Z"),
            at("2026-12-05T02:00:00Z"),
        );
        assert_eq!(
            (counters[0].spent, counters[1].spent),
            (Micros::new(10), Micros::new(10))
        );
        // Never below 0, and never to a scope the spend did not match.
        give_back(
            &mut counters,
            utc,
            spend("a", "", 999, "2026-12-05T01:00:00Z"),
            at("2026-12-05T02:00:00Z"),
        );
        assert_eq!(counters[0].spent, Micros::ZERO);
    }

    #[test]
    fn a_lowered_limit_leaves_nothing_remaining_but_keeps_what_was_spent() {
        let utc = zone("UTC");
        let now = at("2026-12-04T10:00:00Z");
        let counter = Counter::new(limit("account", "day", 50), utc, now, Micros::new(80));
        assert_eq!(counter.remaining(), Micros::ZERO);
        assert_eq!(counter.spent, Micros::new(80));
        let mut counters = vec![counter];
        assert!(fits(&counters, utc, spend("a", "", 1, "2026-12-04T10:00:00Z")).is_err());
        assert!(fits(&counters, utc, spend("a", "", 0, "2026-12-04T10:00:00Z")).is_ok());
        assert!(
            admit(
                &mut counters,
                utc,
                spend("a", "", 1, "2026-12-05T00:00:00Z")
            )
            .is_ok()
        );
    }
}
