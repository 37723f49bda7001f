//! Keyset pagination: page sizes and cursors.
//!
//! A cursor is the position of the last row of a page, written plainly so that the OpenAPI
//! document can say exactly which cursors the server accepts: every text that matches the
//! pattern is a position, and a page starts after it whatever the filters. A records cursor is
//! an account version ([`RECORDS_PATTERN`]); an orders cursor is the instant in microseconds
//! since 1970 and the order number ([`ORDERS_PATTERN`]). A hand-made cursor can only position a
//! query on the caller's own rows, which the token already scopes.

use chrono::{DateTime, Utc};
use shared::ids::OrderNo;

use super::error::ApiError;

/// A records cursor: the version of the last record shown, 0 ..= 10^18 − 1.
pub const RECORDS_PATTERN: &str = "^(0|[1-9][0-9]{0,17})$";
/// An orders cursor: `<microseconds since 1970>-<order number>`, the number as
/// [`OrderNo::PATTERN`] writes it (1..128 printable ASCII).
pub const ORDERS_PATTERN: &str = "^(0|[1-9][0-9]{0,17})-[ -~]{1,128}$";

pub const DEFAULT_LIMIT: u32 = 20;
pub const MAX_LIMIT: u32 = 100;

/// `limit`: absent or empty means [`DEFAULT_LIMIT`]; otherwise digits for 1 ..= [`MAX_LIMIT`].
pub fn parse_limit(raw: Option<&str>) -> Result<u32, ApiError> {
    let Some(raw) = raw.filter(|raw| !raw.is_empty()) else {
        return Ok(DEFAULT_LIMIT);
    };
    raw.parse::<u32>()
        .ok()
        .filter(|limit| raw.bytes().all(|b| b.is_ascii_digit()) && (1..=MAX_LIMIT).contains(limit))
        .ok_or_else(|| ApiError::invalid(format!("limit must be an integer from 1 to {MAX_LIMIT}")))
}

/// The cursor after the record of account version `version`.
pub fn records_cursor(version: i64) -> String {
    version.to_string()
}

/// The account version a records cursor starts after; anything else is a 400.
pub fn records_position(cursor: &str) -> Result<i64, ApiError> {
    number(cursor).ok_or_else(invalid)
}

/// The cursor after the order `order_no` created at `created_at`.
pub fn orders_cursor(created_at: DateTime<Utc>, order_no: &str) -> String {
    format!("{}-{order_no}", created_at.timestamp_micros())
}

/// The `(created_at, order_no)` an orders cursor starts after; anything else is a 400.
pub fn orders_position(cursor: &str) -> Result<(DateTime<Utc>, String), ApiError> {
    let (micros, order_no) = cursor.split_once('-').ok_or_else(invalid)?;
    let at = number(micros)
        .and_then(DateTime::from_timestamp_micros)
        .ok_or_else(invalid)?;
    let order_no = OrderNo::parse("cursor", order_no).map_err(|_| invalid())?;
    Ok((at, order_no.into_string()))
}

/// Digits of 0 ..= 10^18 − 1 without a leading zero, as the cursor patterns write them.
fn number(text: &str) -> Option<i64> {
    let digits_ok = (1..=18).contains(&text.len())
        && text.bytes().all(|b| b.is_ascii_digit())
        && (text == "0" || !text.starts_with('0'));
    digits_ok.then(|| text.parse().ok()).flatten()
}

fn invalid() -> ApiError {
    ApiError::invalid("cursor is not a position of this listing; start again without one")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_are_one_to_a_hundred() {
        assert_eq!(parse_limit(None).unwrap(), DEFAULT_LIMIT);
        assert_eq!(parse_limit(Some("")).unwrap(), DEFAULT_LIMIT);
        assert_eq!(parse_limit(Some("1")).unwrap(), 1);
        assert_eq!(parse_limit(Some("100")).unwrap(), 100);
        for bad in [
            "0",
            "101",
            "1000",
            "abc",
            "-1",
            "+5",
            " 5",
            "5.0",
            "99999999999",
        ] {
            assert!(parse_limit(Some(bad)).is_err(), "{bad}");
        }
    }

    #[test]
    fn cursors_are_exactly_their_patterns() {
        assert_eq!(records_position(&records_cursor(42)).unwrap(), 42);
        assert_eq!(records_position("0").unwrap(), 0);
        assert_eq!(
            records_position("999999999999999999").unwrap(),
            999_999_999_999_999_999
        );
        for bad in [
            "",
            "01",
            "-1",
            "+1",
            "1.0",
            "1000000000000000000",
            "abc",
            " 1",
        ] {
            assert!(records_position(bad).is_err(), "{bad:?}");
        }
        let at = DateTime::from_timestamp_micros(1_700_000_000_000_001).unwrap();
        let cursor = orders_cursor(at, "RO0193ab");
        assert_eq!(cursor, "1700000000000001-RO0193ab");
        assert_eq!(
            orders_position(&cursor).unwrap(),
            (at, "RO0193ab".to_owned())
        );
        assert!(orders_position("0-a").is_ok());
        assert_eq!(orders_position("7-RO-1 x").unwrap().1, "RO-1 x");
        for bad in [
            "",
            "1",
            "1-",
            "-RO1",
            "01-RO1",
            "x-RO1",
            "1-RO\u{e9}",
            "1-RO\t1",
        ] {
            assert!(orders_position(bad).is_err(), "{bad:?}");
        }
        assert!(orders_position(&format!("1-{}", "a".repeat(129))).is_err());
    }
}
