//! Keyset pagination: page sizes and opaque cursors.
//!
//! A cursor is the base64url (no padding) of a short text: a kind and version tag (`records.v1`,
//! `orders.v1`), then the fields of the position, one per line. A records cursor also carries
//! its filters in a canonical form, so a cursor used with other filters is refused instead of
//! silently skipping or repeating records. Cursors are not signed: a hand-made one can only
//! position a query on the caller's own rows, which the token already scopes.

use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};

use super::error::ApiError;

pub const DEFAULT_LIMIT: u32 = 20;
pub const MAX_LIMIT: u32 = 100;

/// Cursors longer than this are not ours (an order number is at most 128 characters).
const MAX_CURSOR_CHARS: usize = 1024;

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

/// The cursor of a page that ends at `fields`.
pub fn encode(tag: &str, fields: &[&str]) -> String {
    let mut text = tag.to_owned();
    for field in fields {
        text.push('\n');
        text.push_str(field);
    }
    URL_SAFE_NO_PAD.encode(text)
}

/// The `n` fields of a cursor made by [`encode`] with `tag`; anything else is a 400.
pub fn decode(cursor: &str, tag: &str, n: usize) -> Result<Vec<String>, ApiError> {
    let invalid = || ApiError::invalid("cursor is not valid here; start again without one");
    if cursor.len() > MAX_CURSOR_CHARS {
        return Err(invalid());
    }
    let bytes = URL_SAFE_NO_PAD.decode(cursor).map_err(|_| invalid())?;
    let text = String::from_utf8(bytes).map_err(|_| invalid())?;
    let mut parts = text.splitn(n + 1, '\n');
    if parts.next() != Some(tag) {
        return Err(invalid());
    }
    let fields: Vec<String> = parts.map(str::to_owned).collect();
    if fields.len() == n {
        Ok(fields)
    } else {
        Err(invalid())
    }
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
    fn a_cursor_decodes_only_as_its_own_kind() {
        let cursor = encode("orders.v1", &["1700000000000000", "RO1|x"]);
        assert_eq!(
            decode(&cursor, "orders.v1", 2).unwrap(),
            vec!["1700000000000000", "RO1|x"]
        );
        assert!(decode(&cursor, "records.v1", 2).is_err());
        assert!(decode(&cursor, "orders.v1", 3).is_err());
        assert!(decode("!!!", "orders.v1", 2).is_err());
        assert!(decode("", "orders.v1", 2).is_err());
    }
}
