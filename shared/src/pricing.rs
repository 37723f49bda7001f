//! What a call costs from what it used: the priced amount of a request, exactly (API.md, "Third
//! stage: prices"; invariant 8 of the architecture).
//!
//! A meter's price is `price_micros` for every `per_units` units. A request's amount is
//! ⌈Σ quantity × price_micros ÷ per_units⌉ over its meters: the exact sum of the exact
//! fractions, rounded up once for the request, never once per meter. Every product fits 128 bits
//! (10^12 × 10^12); the fractions' remainders, whose denominators may differ, are summed over
//! their least common multiple in [`Natural`], which grows as needed, so no quantity and price in
//! range can overflow or round twice.

use std::{cmp::Ordering, collections::BTreeMap};

use chrono::{DateTime, Utc};

use crate::{
    ids::FieldViolation,
    money::{MAX_AMOUNT, Micros},
};

/// The most units of one meter one request may report.
pub const MAX_QUANTITY: u64 = 1_000_000_000_000;
/// The most one price may ask for its `per_units` units.
pub const MAX_PRICE_MICROS: u64 = 1_000_000_000_000;
/// The most units one price may be given for.
pub const MAX_PER_UNITS: u64 = 1_000_000_000;

/// A price: `price_micros` (0 ..= [`MAX_PRICE_MICROS`], 0 an explicit free meter) for every
/// `per_units` (1 ..= [`MAX_PER_UNITS`]) units.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UnitPrice {
    price_micros: u64,
    per_units: u32,
}

/// Why a price or a quantity is refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PricingError {
    #[error("price_micros must be 0..={MAX_PRICE_MICROS}")]
    Price,
    #[error("per_units must be 1..={MAX_PER_UNITS}")]
    PerUnits,
    #[error("quantity must be 1..={MAX_QUANTITY}")]
    Quantity,
}

impl UnitPrice {
    pub fn new(price_micros: i64, per_units: i64) -> Result<UnitPrice, PricingError> {
        let price_micros = u64::try_from(price_micros)
            .ok()
            .filter(|price| *price <= MAX_PRICE_MICROS)
            .ok_or(PricingError::Price)?;
        let per_units = u32::try_from(per_units)
            .ok()
            .filter(|units| (1..=MAX_PER_UNITS).contains(&u64::from(*units)))
            .ok_or(PricingError::PerUnits)?;
        Ok(UnitPrice {
            price_micros,
            per_units,
        })
    }

    pub fn price_micros(self) -> u64 {
        self.price_micros
    }

    pub fn per_units(self) -> u32 {
        self.per_units
    }
}

/// One meter of a request: how many units it used, at which price.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MeterUse {
    quantity: u64,
    price: UnitPrice,
}

impl MeterUse {
    pub fn new(quantity: i64, price: UnitPrice) -> Result<MeterUse, PricingError> {
        let quantity = u64::try_from(quantity)
            .ok()
            .filter(|quantity| (1..=MAX_QUANTITY).contains(quantity))
            .ok_or(PricingError::Quantity)?;
        Ok(MeterUse { quantity, price })
    }
}

/// ⌈Σ quantity × price_micros ÷ per_units⌉ over `uses`, exactly. The caller compares it with
/// the largest amount a charge may be.
pub fn priced_amount(uses: &[MeterUse]) -> u128 {
    let mut whole: u128 = 0;
    let mut parts: Vec<(u32, u32)> = Vec::new();
    for meter in uses {
        let product = u128::from(meter.quantity) * u128::from(meter.price.price_micros);
        let per_units = u128::from(meter.price.per_units);
        whole += product / per_units;
        let remainder = u32::try_from(product % per_units).expect("a remainder is below per_units");
        if remainder > 0 {
            parts.push((remainder, meter.price.per_units));
        }
    }
    whole + u128::from(ceil_of_fractions(&parts))
}

/// ⌈Σ numerator ÷ denominator⌉ of proper fractions: each below 1, so the sum is below their
/// count, and the answer is the least `k` with Σ ≤ k, found over the denominators' least common
/// multiple.
fn ceil_of_fractions(parts: &[(u32, u32)]) -> u32 {
    if parts.is_empty() {
        return 0;
    }
    let common = parts
        .iter()
        .fold(Natural::from(1), |lcm, (_, denominator)| {
            lcm.lcm(*denominator)
        });
    let sum = parts
        .iter()
        .fold(Natural::from(0), |sum, (numerator, denominator)| {
            let (scale, _) = common.div_small(*denominator);
            sum.add(&scale.mul_small(*numerator))
        });
    let count = u32::try_from(parts.len()).expect("fewer meters than 2^32");
    (1..=count)
        .find(|k| sum.cmp(&common.mul_small(*k)) != Ordering::Greater)
        .expect("a sum of proper fractions is below their count")
}

/// A meter's name: 1..32 of `[a-z0-9_]`; the meter [`Meter::CALL`] counts calls.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Meter(String);

impl Meter {
    /// The meter of one per call.
    pub const CALL: &str = "call";

    pub fn parse(value: &str) -> Option<Meter> {
        let ok = (1..=32).contains(&value.len())
            && value
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
        ok.then(|| Meter(value.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// The most meters one request may report.
pub const MAX_METERS: usize = 64;

/// What one request used: each meter once, with a quantity of 1 ..= [`MAX_QUANTITY`], in meter
/// order (so two requests that used the same compare equal, whatever order they listed it in).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Usage(Vec<(Meter, i64)>);

impl Usage {
    /// Checks a request's `(meter, quantity)` lines as the contract's field `field`: 1 ..=
    /// [`MAX_METERS`] lines, meters named by the rules of [`Meter`], each once.
    pub fn parse<'a>(
        field: &'static str,
        lines: impl IntoIterator<Item = (&'a str, i64)>,
    ) -> Result<Usage, FieldViolation> {
        let mut meters = BTreeMap::new();
        for (index, (name, quantity)) in lines.into_iter().enumerate() {
            // A refused name is not repeated back: it may be anything, of any length.
            let meter = Meter::parse(name).ok_or_else(|| {
                FieldViolation::new(field, format!("meter {index} must be 1..32 of [a-z0-9_]"))
            })?;
            if u64::try_from(quantity).map_or(true, |q| !(1..=MAX_QUANTITY).contains(&q)) {
                return Err(FieldViolation::new(
                    field,
                    format!("the quantity of {name} must be 1..={MAX_QUANTITY}"),
                ));
            }
            if meters.insert(meter, quantity).is_some() {
                return Err(FieldViolation::new(
                    field,
                    format!("meter {name} given twice"),
                ));
            }
            if meters.len() > MAX_METERS {
                return Err(FieldViolation::new(
                    field,
                    format!("at most {MAX_METERS} meters"),
                ));
            }
        }
        if meters.is_empty() {
            return Err(FieldViolation::new(field, "must name at least one meter"));
        }
        Ok(Usage(meters.into_iter().collect()))
    }

    /// The meters and their quantities, in meter order.
    pub fn lines(&self) -> &[(Meter, i64)] {
        &self.0
    }

    /// How it is stored and published: a JSON object of meter to quantity, in meter order, so
    /// two equal usages are the same text.
    pub fn to_json(&self) -> String {
        let fields: Vec<String> = self
            .0
            .iter()
            .map(|(meter, quantity)| format!("\"{}\":{quantity}", meter.as_str()))
            .collect();
        format!("{{{}}}", fields.join(","))
    }

    /// A usage read back from [`Usage::to_json`]'s text; `None` when it is not one.
    pub fn from_json(text: &str) -> Option<Usage> {
        let meters: BTreeMap<String, i64> = serde_json::from_str(text).ok()?;
        Usage::parse("usage", meters.iter().map(|(m, q)| (m.as_str(), *q))).ok()
    }
}

/// The digest of what a publication asks for (the list's name, the instant asked in
/// milliseconds, 0 for now, and its prices), which a replay of its `publish_id` must repeat:
/// SHA-256, in hex, over a text in which every field is preceded by its length, so no two
/// publications make one text.
pub fn publication_digest<'a>(
    name: &ListName,
    asked_from_ms: i64,
    prices: impl IntoIterator<Item = (&'a str, &'a Meter, UnitPrice)>,
) -> String {
    use sha2::Digest;
    let mut digest = sha2::Sha256::new();
    digest.update(format!("{}:{name}\n{asked_from_ms}\n", name.as_str().len()));
    for (api_id, meter, price) in prices {
        let meter = meter.as_str();
        digest.update(format!(
            "{}:{api_id}{}:{meter}{}/{}\n",
            api_id.len(),
            meter.len(),
            price.price_micros,
            price.per_units
        ));
    }
    hex::encode(digest.finalize())
}

/// What priced a charge or a hold: its usage, and the list and version that priced it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PricedBy {
    pub usage: Usage,
    pub list: String,
    pub version: i64,
}

/// A price list's name: 1..64 of `[a-z0-9_-]`.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ListName(String);

impl ListName {
    /// What [`ListName::parse`] accepts, as an OpenAPI (ECMA-262) pattern.
    pub const PATTERN: &str = "^[a-z0-9_-]{1,64}$";

    pub fn parse(field: &'static str, value: &str) -> Result<ListName, FieldViolation> {
        let ok = (1..=64).contains(&value.len())
            && value
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-');
        if ok {
            Ok(ListName(value.to_owned()))
        } else {
            Err(FieldViolation::new(field, "must be 1..64 of [a-z0-9_-]"))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for ListName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// One version of a price list as it applies from `effective_from`: a price per (API, meter).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PriceVersion {
    pub name: String,
    pub version: i64,
    pub effective_from: DateTime<Utc>,
    /// Prices by API, then by meter.
    prices: BTreeMap<String, BTreeMap<Meter, UnitPrice>>,
}

/// Why a request's usage has no amount.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Unpriceable {
    /// Meters the version does not price for the API (`UNPRICED`): never a charge of 0 by
    /// accident.
    #[error("not priced by {list} v{version}: {}", missing.iter().map(Meter::as_str).collect::<Vec<_>>().join(", "))]
    Unpriced {
        list: String,
        version: i64,
        missing: Vec<Meter>,
    },
    /// A meter's quantity outside 1 ..= [`MAX_QUANTITY`].
    #[error("the quantity of meter {0} must be 1..={MAX_QUANTITY}")]
    Quantity(String),
    /// A meter reported twice in one request.
    #[error("meter {0} reported twice")]
    DuplicateMeter(String),
    /// The amount is above what one charge may be (`AMOUNT_LIMIT`).
    #[error("the priced amount {0} is above {max}", max = MAX_AMOUNT.get())]
    AboveLimit(u128),
}

/// A request's usage priced: the amount and the version that priced it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PricedCharge {
    pub amount: Micros,
    pub version: i64,
}

impl PriceVersion {
    /// A version with its prices, one per (API, meter): a publication that repeats a pair is
    /// refused before it gets here (were one repeated, the last would hold).
    pub fn new(
        name: impl Into<String>,
        version: i64,
        effective_from: DateTime<Utc>,
        prices: impl IntoIterator<Item = (String, Meter, UnitPrice)>,
    ) -> PriceVersion {
        PriceVersion {
            name: name.into(),
            version,
            effective_from,
            prices: prices.into_iter().fold(
                BTreeMap::new(),
                |mut by_api: BTreeMap<String, BTreeMap<Meter, UnitPrice>>,
                 (api_id, meter, price)| {
                    by_api.entry(api_id).or_default().insert(meter, price);
                    by_api
                },
            ),
        }
    }

    /// Every price: (API, meter, price), in (API, meter) order.
    pub fn prices(&self) -> impl Iterator<Item = (&str, &Meter, UnitPrice)> {
        self.prices.iter().flat_map(|(api_id, meters)| {
            meters
                .iter()
                .map(move |(meter, price)| (api_id.as_str(), meter, *price))
        })
    }

    /// The amount of `usage` (meter, quantity) of `api_id` under this version: refused when a
    /// meter repeats, when a quantity is out of range, when any meter has no price for the API
    /// (all of them named), or above the largest charge.
    pub fn price(&self, api_id: &str, usage: &[(Meter, i64)]) -> Result<PricedCharge, Unpriceable> {
        let mut seen = std::collections::BTreeSet::new();
        let mut uses = Vec::with_capacity(usage.len());
        let mut missing = Vec::new();
        for (meter, quantity) in usage {
            if !seen.insert(meter) {
                return Err(Unpriceable::DuplicateMeter(meter.as_str().to_owned()));
            }
            match self.prices.get(api_id).and_then(|meters| meters.get(meter)) {
                Some(price) => uses.push(
                    MeterUse::new(*quantity, *price)
                        .map_err(|_| Unpriceable::Quantity(meter.as_str().to_owned()))?,
                ),
                None => missing.push(meter.clone()),
            }
        }
        if !missing.is_empty() {
            return Err(Unpriceable::Unpriced {
                list: self.name.clone(),
                version: self.version,
                missing,
            });
        }
        let amount = priced_amount(&uses);
        i64::try_from(amount)
            .ok()
            .map(Micros::new)
            .filter(|amount| *amount <= MAX_AMOUNT)
            .map(|amount| PricedCharge {
                amount,
                version: self.version,
            })
            .ok_or(Unpriceable::AboveLimit(amount))
    }
}

/// The version of a list in effect at `at`, among `versions` (each `version_of` one): the
/// latest whose `effective_from` is not after it (the higher version when two take effect at
/// the same instant).
pub fn in_effect<V>(
    versions: &[V],
    at: DateTime<Utc>,
    version_of: impl Fn(&V) -> &PriceVersion,
) -> Option<&V> {
    versions
        .iter()
        .filter(|held| version_of(held).effective_from <= at)
        .max_by_key(|held| {
            let version = version_of(held);
            (version.effective_from, version.version)
        })
}

/// A natural number of any size, little-endian in 32-bit limbs: only what summing fractions
/// over a common denominator needs.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Natural(Vec<u32>);

impl Natural {
    fn from(value: u32) -> Natural {
        Natural(vec![value]).trimmed()
    }

    fn trimmed(mut self) -> Natural {
        while self.0.last() == Some(&0) {
            self.0.pop();
        }
        self
    }

    fn mul_small(&self, factor: u32) -> Natural {
        let mut limbs = Vec::with_capacity(self.0.len() + 1);
        let mut carry: u64 = 0;
        for limb in &self.0 {
            let product = u64::from(*limb) * u64::from(factor) + carry;
            limbs.push(product as u32);
            carry = product >> 32;
        }
        limbs.push(carry as u32);
        Natural(limbs).trimmed()
    }

    /// The quotient and remainder of a division by `divisor` (not 0).
    fn div_small(&self, divisor: u32) -> (Natural, u32) {
        let mut limbs = vec![0; self.0.len()];
        let mut remainder: u64 = 0;
        for (index, limb) in self.0.iter().enumerate().rev() {
            let current = (remainder << 32) | u64::from(*limb);
            limbs[index] = (current / u64::from(divisor)) as u32;
            remainder = current % u64::from(divisor);
        }
        (Natural(limbs).trimmed(), remainder as u32)
    }

    fn add(&self, other: &Natural) -> Natural {
        let mut limbs = Vec::with_capacity(self.0.len().max(other.0.len()) + 1);
        let mut carry: u64 = 0;
        for index in 0..self.0.len().max(other.0.len()) {
            let a = u64::from(self.0.get(index).copied().unwrap_or(0));
            let b = u64::from(other.0.get(index).copied().unwrap_or(0));
            let sum = a + b + carry;
            limbs.push(sum as u32);
            carry = sum >> 32;
        }
        limbs.push(carry as u32);
        Natural(limbs).trimmed()
    }

    /// The least common multiple with `value` (not 0): `self × value ÷ gcd(self, value)`.
    fn lcm(&self, value: u32) -> Natural {
        let (_, remainder) = self.div_small(value);
        self.mul_small(value / gcd(value, remainder))
    }

    fn cmp(&self, other: &Natural) -> Ordering {
        self.0
            .len()
            .cmp(&other.0.len())
            .then_with(|| self.0.iter().rev().cmp(other.0.iter().rev()))
    }
}

fn gcd(mut a: u32, mut b: u32) -> u32 {
    while b != 0 {
        (a, b) = (b, a % b);
    }
    a
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn price(price_micros: i64, per_units: i64) -> UnitPrice {
        UnitPrice::new(price_micros, per_units).unwrap()
    }

    fn uses(lines: &[(i64, i64, i64)]) -> Vec<MeterUse> {
        lines
            .iter()
            .map(|(quantity, micros, per)| MeterUse::new(*quantity, price(*micros, *per)).unwrap())
            .collect()
    }

    #[test]
    fn worked_examples() {
        // A call at 2,000 micros, 1,234 input tokens at 0.5 CNY and 567 output tokens at 1.5 CNY
        // per million: 2000 + 617 + 850.5 = 3467.5, rounded up once: 3468.
        let chat_call = uses(&[
            (1, 2_000, 1),
            (1_234, 500_000, 1_000_000),
            (567, 1_500_000, 1_000_000),
        ]);
        assert_eq!(priced_amount(&chat_call), 3_468);
        // Two halves make one micro, not two: rounded up once per request.
        assert_eq!(priced_amount(&uses(&[(1, 1, 2), (1, 1, 2)])), 1);
        // Thirds and a sixth over different denominators: 1/3 + 1/3 + 1/6 = 5/6 → 1.
        assert_eq!(priced_amount(&uses(&[(1, 1, 3), (1, 1, 3), (1, 1, 6)])), 1);
        // 2/3 + 2/3 = 4/3 → 2.
        assert_eq!(priced_amount(&uses(&[(2, 1, 3), (2, 1, 3)])), 2);
        // Exact sums stay exact; a free meter costs nothing.
        assert_eq!(priced_amount(&uses(&[(3, 1, 3), (10, 0, 1)])), 1);
        assert_eq!(priced_amount(&uses(&[(10, 0, 1)])), 0);
        assert_eq!(priced_amount(&[]), 0);
        // The largest quantity at the largest price per unit: 10^24, far above a charge's limit,
        // computed without overflow for the caller to refuse.
        let max = MAX_QUANTITY as i64;
        assert_eq!(priced_amount(&uses(&[(max, max, 1)])), 10u128.pow(24));
        // Denominators whose least common multiple is far beyond 128 bits.
        let primes = [
            999_999_937,
            999_999_929,
            999_999_893,
            999_999_883,
            999_999_797,
        ];
        let lines: Vec<(i64, i64, i64)> = primes.iter().map(|p| (1, 1, *p)).collect();
        assert_eq!(priced_amount(&uses(&lines)), 1);
        let lines: Vec<(i64, i64, i64)> = primes.iter().map(|p| (1, p - 1, *p)).collect();
        assert_eq!(priced_amount(&uses(&lines)), 5);
    }

    #[test]
    fn prices_and_quantities_out_of_range_are_refused() {
        assert_eq!(UnitPrice::new(-1, 1), Err(PricingError::Price));
        assert_eq!(
            UnitPrice::new(1_000_000_000_001, 1),
            Err(PricingError::Price)
        );
        assert_eq!(UnitPrice::new(1, 0), Err(PricingError::PerUnits));
        assert_eq!(
            UnitPrice::new(1, 1_000_000_001),
            Err(PricingError::PerUnits)
        );
        assert!(UnitPrice::new(0, 1_000_000_000).is_ok());
        for quantity in [0, -1, 1_000_000_000_001] {
            assert_eq!(
                MeterUse::new(quantity, price(1, 1)),
                Err(PricingError::Quantity)
            );
        }
    }

    fn meter(name: &str) -> Meter {
        Meter::parse(name).unwrap()
    }

    fn at(text: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(text)
            .unwrap()
            .with_timezone(&Utc)
    }

    fn token_priced_list(version: i64, effective_from: &str, output_micros: i64) -> PriceVersion {
        PriceVersion::new(
            "default",
            version,
            at(effective_from),
            [
                ("chat".to_owned(), meter("call"), price(2_000, 1)),
                (
                    "chat".to_owned(),
                    meter("input_tokens"),
                    price(500_000, 1_000_000),
                ),
                (
                    "chat".to_owned(),
                    meter("output_tokens"),
                    price(output_micros, 1_000_000),
                ),
                ("embed".to_owned(), meter("input_tokens"), price(0, 1)),
            ],
        )
    }

    #[test]
    fn a_version_prices_its_apis_and_meters_and_refuses_the_rest() {
        let list = token_priced_list(1, "2026-12-01T00:00:00Z", 1_500_000);
        let usage = [
            (meter("call"), 1),
            (meter("input_tokens"), 1_234),
            (meter("output_tokens"), 567),
        ];
        assert_eq!(
            list.price("chat", &usage),
            Ok(PricedCharge {
                amount: Micros::new(3_468),
                version: 1
            })
        );
        // A free meter is an explicit charge of 0.
        assert_eq!(
            list.price("embed", &[(meter("input_tokens"), 10)])
                .map(|p| p.amount),
            Ok(Micros::ZERO)
        );
        // Unpriced meters are named, all of them; an unknown API prices nothing.
        assert_eq!(
            list.price(
                "embed",
                &[
                    (meter("call"), 1),
                    (meter("input_tokens"), 1),
                    (meter("images"), 2)
                ]
            ),
            Err(Unpriceable::Unpriced {
                list: "default".into(),
                version: 1,
                missing: vec![meter("call"), meter("images")],
            })
        );
        assert!(matches!(
            list.price("nope", &[(meter("call"), 1)]),
            Err(Unpriceable::Unpriced { .. })
        ));
        assert_eq!(
            list.price("chat", &[(meter("call"), 1), (meter("call"), 1)]),
            Err(Unpriceable::DuplicateMeter("call".into()))
        );
        // A quantity out of range is refused, never priced as nothing.
        for quantity in [0, -5, 1_000_000_000_001] {
            assert_eq!(
                list.price("chat", &[(meter("call"), quantity)]),
                Err(Unpriceable::Quantity("call".into()))
            );
        }
        // Above the largest charge: refused, not capped.
        let dear = PriceVersion::new(
            "dear",
            1,
            at("2026-12-01T00:00:00Z"),
            [("x".to_owned(), meter("call"), price(1_000_000_000_000, 1))],
        );
        assert!(dear.price("x", &[(meter("call"), 1)]).is_ok());
        assert_eq!(
            dear.price("x", &[(meter("call"), 2)]),
            Err(Unpriceable::AboveLimit(2_000_000_000_000))
        );
    }

    #[test]
    fn the_version_in_effect_is_the_latest_started() {
        let versions = [
            token_priced_list(1, "2026-12-01T00:00:00Z", 1_500_000),
            token_priced_list(2, "2026-12-10T00:00:00Z", 2_000_000),
            token_priced_list(3, "2026-12-10T00:00:00Z", 2_500_000),
            token_priced_list(4, "2027-01-01T00:00:00Z", 3_000_000),
        ];
        let version_at = |text: &str| in_effect(&versions, at(text), |v| v).map(|v| v.version);
        assert_eq!(version_at("2026-11-30T23:59:59.999999Z"), None);
        assert_eq!(version_at("2026-12-01T00:00:00Z"), Some(1));
        assert_eq!(version_at("2026-12-09T23:59:59.999999Z"), Some(1));
        assert_eq!(version_at("2026-12-10T00:00:00Z"), Some(3));
        assert_eq!(version_at("2027-01-01T00:00:00Z"), Some(4));
    }

    #[test]
    fn a_usage_is_each_meter_once_in_meter_order() {
        let usage = Usage::parse("usage", [("output_tokens", 7), ("call", 1)]).unwrap();
        assert_eq!(
            usage.lines(),
            [(meter("call"), 1), (meter("output_tokens"), 7)]
        );
        assert_eq!(usage.to_json(), r#"{"call":1,"output_tokens":7}"#);
        assert_eq!(Usage::from_json(&usage.to_json()), Some(usage.clone()));
        let reordered = Usage::parse("usage", [("call", 1), ("output_tokens", 7)]).unwrap();
        assert_eq!(reordered, usage);
        let refused = |lines: &[(&str, i64)]| Usage::parse("usage", lines.iter().copied()).is_err();
        assert!(refused(&[]));
        assert!(refused(&[("call", 1), ("call", 1)]));
        assert!(refused(&[("call", 0)]));
        assert!(refused(&[("call", -1)]));
        assert!(refused(&[("call", i64::MIN)]));
        assert!(refused(&[("call", 1_000_000_000_001)]));
        assert!(refused(&[("Call", 1)]));
        let many: Vec<String> = (0..=MAX_METERS).map(|i| format!("m{i}")).collect();
        assert!(refused(
            &many.iter().map(|m| (m.as_str(), 1)).collect::<Vec<_>>()
        ));
        assert!(!refused(
            &many[..MAX_METERS]
                .iter()
                .map(|m| (m.as_str(), 1))
                .collect::<Vec<_>>()
        ));
        assert_eq!(Usage::from_json("{}"), None);
        assert_eq!(Usage::from_json("not json"), None);
    }

    #[test]
    fn list_names_are_lowercase_letters_digits_underscores_and_dashes() {
        let pattern = regex::Regex::new(ListName::PATTERN).unwrap();
        for ok in ["default", "pro-2027", "a_b", &"z".repeat(64)] {
            assert!(
                ListName::parse("name", ok).is_ok() && pattern.is_match(ok),
                "{ok}"
            );
        }
        for bad in ["", "Default", "a b", "é", &"z".repeat(65)] {
            assert!(
                ListName::parse("name", bad).is_err() && !pattern.is_match(bad),
                "{bad}"
            );
        }
    }

    #[test]
    fn meter_names_are_lowercase_letters_digits_and_underscores() {
        for ok in ["call", "input_tokens", "gpu_seconds_2", &"a".repeat(32)] {
            assert!(Meter::parse(ok).is_some(), "{ok}");
        }
        for bad in ["", "Call", "in-put", "tokens ", "é", &"a".repeat(33)] {
            assert!(Meter::parse(bad).is_none(), "{bad}");
        }
    }

    /// One meter line in range: quantity, price, per units.
    fn line() -> impl Strategy<Value = (i64, i64, i64)> {
        (
            1..=MAX_QUANTITY as i64,
            0..=MAX_PRICE_MICROS as i64,
            1..=MAX_PER_UNITS as i64,
        )
    }

    proptest! {
        /// With one denominator, the exact sum is one fraction of 128-bit integers: the model.
        #[test]
        fn equals_the_exact_fraction_with_a_common_denominator(
            lines in proptest::collection::vec((1..=MAX_QUANTITY as i64, 0..=MAX_PRICE_MICROS as i64), 1..8),
            per in 1..=MAX_PER_UNITS as i64,
        ) {
            let numerator: u128 = lines.iter().map(|(q, p)| *q as u128 * *p as u128).sum();
            let per_units = per as u128;
            let model = numerator.div_ceil(per_units);
            let with: Vec<(i64, i64, i64)> = lines.iter().map(|(q, p)| (*q, *p, per)).collect();
            prop_assert_eq!(priced_amount(&uses(&with)), model);
        }

        /// Small values over different denominators fit 128 bits over their common multiple: the
        /// model adds the fractions there and rounds up once.
        #[test]
        fn equals_the_exact_sum_over_different_denominators(
            lines in proptest::collection::vec((1..=1_000_000i64, 0..=1_000_000i64, 1..=10_000i64), 1..4),
        ) {
            let lcm = lines.iter().fold(1u128, |l, (_, _, per)| {
                let per = *per as u128;
                let (mut a, mut b) = (l, per);
                while b != 0 { (a, b) = (b, a % b); }
                l / a * per
            });
            let numerator: u128 = lines
                .iter()
                .map(|(q, p, per)| *q as u128 * *p as u128 * (lcm / *per as u128))
                .sum();
            prop_assert_eq!(priced_amount(&uses(&lines)), numerator.div_ceil(lcm));
        }

        /// Anywhere in range: never below the exact sum, less than one micro above it, and never
        /// more than the sum of the meters each rounded up (rounding once never costs more).
        #[test]
        fn rounds_up_once_anywhere_in_range(lines in proptest::collection::vec(line(), 1..12)) {
            let meters = uses(&lines);
            let amount = priced_amount(&meters);
            let floors: u128 = lines.iter().map(|(q, p, per)| (*q as u128 * *p as u128) / *per as u128).sum();
            let ceils: u128 = lines.iter().map(|(q, p, per)| (*q as u128 * *p as u128).div_ceil(*per as u128)).sum();
            prop_assert!(floors <= amount && amount <= ceils);
            prop_assert!(amount <= floors + lines.len() as u128);
            let exact = lines.iter().all(|(q, p, per)| (*q as u128 * *p as u128).is_multiple_of(*per as u128));
            if exact {
                prop_assert_eq!(amount, floors);
            } else {
                prop_assert!(amount > floors);
            }
        }
    }
}
