//! Several statements sent to MySQL as one script, in one round trip.
//!
//! A batch of charges or of monthly grants writes four tables; as prepared statements that is four
//! round trips to a server that shares the machine's cores, each costing far more in waiting
//! than in work. A script carries them all in one text. Its values are literals that cannot
//! leave their place, whatever they hold: integers are written as digits, every string and byte
//! string as hexadecimal (`X'…'`), instants as quoted digits. Only the statements' fixed parts
//! are SQL text, and those are `&'static str`: nothing a caller sends can become SQL.

use std::fmt::Write;

use chrono::{DateTime, Utc};

/// The statements of a script, in order.
#[derive(Debug, Default)]
pub struct SqlScript {
    text: String,
    statements: usize,
}

/// One row of a multi-row `VALUES` list: values in column order.
pub struct Row<'s> {
    text: &'s mut String,
    first: bool,
}

impl SqlScript {
    pub fn new() -> SqlScript {
        SqlScript::default()
    }

    pub fn is_empty(&self) -> bool {
        self.statements == 0
    }

    /// The number of statements.
    pub fn len(&self) -> usize {
        self.statements
    }

    pub fn as_str(&self) -> &str {
        &self.text
    }

    pub fn into_string(self) -> String {
        self.text
    }

    /// Appends `head` (`INSERT INTO t (a, b) `), a `VALUES` list with one row per item written by
    /// `row`, and `tail` (`ON DUPLICATE KEY UPDATE …` or nothing). Nothing when `items` is empty.
    pub fn insert<T>(
        &mut self,
        head: &'static str,
        items: &[T],
        tail: &'static str,
        mut row: impl FnMut(&mut Row<'_>, &T),
    ) {
        if items.is_empty() {
            return;
        }
        self.text.push_str(head);
        self.text.push_str("VALUES ");
        for (index, item) in items.iter().enumerate() {
            if index > 0 {
                self.text.push_str(", ");
            }
            self.text.push('(');
            row(
                &mut Row {
                    text: &mut self.text,
                    first: true,
                },
                item,
            );
            self.text.push(')');
        }
        self.text.push_str(tail);
        self.text.push_str(";\n");
        self.statements += 1;
    }
}

impl Row<'_> {
    fn next(&mut self) -> &mut String {
        if !self.first {
            self.text.push_str(", ");
        }
        self.first = false;
        self.text
    }

    pub fn int(&mut self, value: i64) -> &mut Self {
        let _ = write!(self.next(), "{value}");
        self
    }

    /// A string, as the hexadecimal of its UTF-8 bytes.
    pub fn text(&mut self, value: &str) -> &mut Self {
        self.bytes(value.as_bytes())
    }

    pub fn opt_int(&mut self, value: Option<i64>) -> &mut Self {
        match value {
            Some(value) => self.int(value),
            None => {
                self.next().push_str("NULL");
                self
            }
        }
    }

    pub fn opt_text(&mut self, value: Option<&str>) -> &mut Self {
        match value {
            Some(value) => self.text(value),
            None => {
                self.next().push_str("NULL");
                self
            }
        }
    }

    pub fn bytes(&mut self, value: &[u8]) -> &mut Self {
        let text = self.next();
        text.push_str("X'");
        for byte in value {
            let _ = write!(text, "{byte:02X}");
        }
        text.push('\'');
        self
    }

    /// An instant in UTC with microseconds, for a `DATETIME(6)` column (sessions run in UTC).
    pub fn instant(&mut self, value: DateTime<Utc>) -> &mut Self {
        let _ = write!(self.next(), "'{}'", value.format("%Y-%m-%d %H:%M:%S%.6f"));
        self
    }
}

#[cfg(test)]
mod tests {
    use chrono::TimeZone;

    use super::*;

    #[test]
    fn values_are_literals_that_keep_their_place() {
        let mut script = SqlScript::new();
        let at = Utc.with_ymd_and_hms(2026, 11, 25, 7, 40, 1).unwrap();
        let rows = [("dev-1", Some("x'); DROP TABLE t; --"), -5_i64)];
        script.insert(
            "INSERT INTO t (a, b, c, d) ",
            &rows,
            "",
            |row, (a, b, c)| {
                row.text(a).opt_text(*b).int(*c).instant(at);
            },
        );
        assert_eq!(
            script.as_str(),
            "INSERT INTO t (a, b, c, d) VALUES (X'6465762D31', \
             X'7827293B2044524F50205441424C4520743B202D2D', -5, '2026-11-25 07:40:01.000000');\n"
        );
        assert_eq!(script.len(), 1);
    }

    #[test]
    fn rows_are_separated_and_nothing_is_written_for_no_rows() {
        let mut script = SqlScript::new();
        script.insert("INSERT INTO t (a) ", &[] as &[i64], "", |row, a| {
            row.int(*a);
        });
        assert!(script.is_empty());
        script.insert(
            "INSERT INTO t (a, b) ",
            &[1_i64, 2],
            " ON DUPLICATE KEY UPDATE a = a",
            |row, a| {
                row.int(*a).opt_text(None).bytes(&[]);
            },
        );
        assert_eq!(
            script.as_str(),
            "INSERT INTO t (a, b) VALUES (1, NULL, X''), (2, NULL, X'') ON DUPLICATE KEY UPDATE a = a;\n"
        );
    }
}
