//! Identifiers and free texts of the contract, each a newtype that can only hold a valid value.
//!
//! Parse at the edge (gRPC, webhook, REST), trust inside. A refusal names the field and says what
//! the field accepts, so it can go straight into a `BadRequest` field violation.

use std::fmt;

/// One refused field: which one and why, in words a caller can act on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FieldViolation {
    pub field: &'static str,
    pub description: String,
}

impl FieldViolation {
    pub fn new(field: &'static str, description: impl Into<String>) -> Self {
        FieldViolation {
            field,
            description: description.into(),
        }
    }
}

impl fmt::Display for FieldViolation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.field, self.description)
    }
}

/// Which characters a kind of text accepts.
#[derive(Clone, Copy)]
enum Charset {
    /// `[A-Za-z0-9._:-]`
    UserId,
    /// Printable ASCII, space included (0x20 ..= 0x7E).
    PrintableAscii,
    /// Any Unicode text without control characters.
    Text,
}

impl Charset {
    fn accepts(self, c: char) -> bool {
        match self {
            Charset::UserId => c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | ':' | '-'),
            Charset::PrintableAscii => (' '..='~').contains(&c),
            Charset::Text => !c.is_control(),
        }
    }

    fn describe(self) -> &'static str {
        match self {
            Charset::UserId => "letters, digits and . _ : -",
            Charset::PrintableAscii => "printable ASCII",
            Charset::Text => "text without control characters",
        }
    }
}

fn check(
    field: &'static str,
    value: &str,
    min: usize,
    max: usize,
    charset: Charset,
) -> Result<(), FieldViolation> {
    let length = value.chars().count();
    let ok = (min..=max).contains(&length) && value.chars().all(|c| charset.accepts(c));
    if ok {
        Ok(())
    } else {
        Err(FieldViolation::new(
            field,
            format!("must be {min}..{max} characters of {}", charset.describe()),
        ))
    }
}

macro_rules! text_type {
    ($(#[$doc:meta])* $name:ident, $min:expr, $max:expr, $charset:expr) => {
        $(#[$doc])*
        #[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
        pub struct $name(String);

        impl $name {
            pub const MAX_CHARS: usize = $max;

            /// Checks `value` as the contract's field `field`.
            pub fn parse(field: &'static str, value: &str) -> Result<Self, FieldViolation> {
                check(field, value, $min, $max, $charset).map(|()| $name(value.to_owned()))
            }

            /// A value read back from the service's own tables or events, checked when it was
            /// first accepted.
            pub fn stored(value: impl Into<String>) -> Self {
                $name(value.into())
            }

            pub fn as_str(&self) -> &str {
                &self.0
            }

            pub fn into_string(self) -> String {
                self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl AsRef<str> for $name {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }

        // Bound to a query as the text it is, so store functions take the type, not a `&str`.
        impl sqlx::Type<sqlx::MySql> for $name {
            fn type_info() -> sqlx::mysql::MySqlTypeInfo {
                <String as sqlx::Type<sqlx::MySql>>::type_info()
            }

            fn compatible(ty: &sqlx::mysql::MySqlTypeInfo) -> bool {
                <String as sqlx::Type<sqlx::MySql>>::compatible(ty)
            }
        }

        // Read back as stored: checked when it was first accepted.
        impl sqlx::Decode<'_, sqlx::MySql> for $name {
            fn decode(
                value: sqlx::mysql::MySqlValueRef<'_>,
            ) -> Result<Self, sqlx::error::BoxDynError> {
                <String as sqlx::Decode<sqlx::MySql>>::decode(value).map($name)
            }
        }

        impl sqlx::Encode<'_, sqlx::MySql> for $name {
            fn encode_by_ref(
                &self,
                buf: &mut <sqlx::MySql as sqlx::Database>::ArgumentBuffer,
            ) -> Result<sqlx::encode::IsNull, sqlx::error::BoxDynError> {
                <String as sqlx::Encode<sqlx::MySql>>::encode_by_ref(&self.0, buf)
            }
        }
    };
}

text_type!(
    /// A developer's id: 1..64 of `[A-Za-z0-9._:-]`.
    UserId, 1, 64, Charset::UserId
);
text_type!(
    /// The gateway's key of one charge; idempotent per user.
    RequestId, 1, 128, Charset::PrintableAscii
);
text_type!(
    /// A recharge order's number, given out by command-svc.
    OrderNo, 1, 128, Charset::PrintableAscii
);

impl OrderNo {
    /// What [`OrderNo::parse`] accepts, as an OpenAPI (ECMA-262) pattern.
    pub const PATTERN: &str = "^[ -~]{1,128}$";
}
text_type!(
    /// The payment provider's transaction id; one credits at most once.
    ProviderTxnId, 1, 128, Charset::PrintableAscii
);
text_type!(
    /// An operator's key of one adjustment; idempotent per user.
    AdjustmentId, 1, 128, Charset::PrintableAscii
);
text_type!(
    /// An operator's key of one refund; idempotent per user.
    RefundId, 1, 128, Charset::PrintableAscii
);
text_type!(
    /// The optional key that makes order creation idempotent per user (empty = none).
    IdempotencyKey, 0, 128, Charset::PrintableAscii
);
text_type!(
    /// The key that makes a price list's publication idempotent.
    PublishId, 1, 128, Charset::PrintableAscii
);
text_type!(
    /// The caller's API key of a charge or a reservation, for limits of scope `key:<key_id>`
    /// (may be empty).
    KeyId, 0, 64, Charset::UserId
);
text_type!(
    /// The key that makes a set of spend limits idempotent (empty: none).
    SetId, 0, 128, Charset::PrintableAscii
);
text_type!(
    /// Which API a charge paid for (may be empty).
    ApiId, 0, 128, Charset::Text
);
text_type!(
    /// The payment channel of an order, e.g. `alipay` (may be empty).
    Channel, 0, 32, Charset::Text
);

impl Channel {
    /// What [`Channel::parse`] accepts, as an OpenAPI (ECMA-262) pattern; the length is the
    /// schema's `maxLength` (32 characters), which counts characters as this type does.
    pub const PATTERN: &str = r"^[^\u0000-\u001f\u007f-\u009f]*$";
}
text_type!(
    /// Free text stored with a charge.
    Description, 0, 512, Charset::Text
);
text_type!(
    /// Why an operator adjusted a balance (required).
    Reason, 1, 512, Charset::Text
);
text_type!(
    /// Who adjusted a balance (required).
    Actor, 1, 64, Charset::Text
);

/// Collects the violations of several fields, so one reply lists every mistake at once.
#[derive(Default, Debug)]
pub struct Violations(Vec<FieldViolation>);

impl Violations {
    pub fn new() -> Self {
        Self::default()
    }

    /// Keeps the parsed value, or records the violation and returns `None`.
    pub fn take<T>(&mut self, parsed: Result<T, FieldViolation>) -> Option<T> {
        match parsed {
            Ok(value) => Some(value),
            Err(violation) => {
                self.0.push(violation);
                None
            }
        }
    }

    pub fn push(&mut self, violation: FieldViolation) {
        self.0.push(violation);
    }

    /// `Ok(())` when nothing was refused.
    pub fn finish(self) -> Result<(), Vec<FieldViolation>> {
        if self.0.is_empty() {
            Ok(())
        } else {
            Err(self.0)
        }
    }
}

/// Where a developer's alerts are delivered: an `http` or `https` URL with a host, at most 2048
/// printable ASCII characters without spaces. Whether its address may be called is decided at
/// delivery (`alerts.allow_private_addresses`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WebhookUrl(String);

impl WebhookUrl {
    pub const MAX_CHARS: usize = 2048;

    /// What [`WebhookUrl::parse`] accepts (with [`WebhookUrl::MAX_CHARS`] as the length), as an
    /// OpenAPI (ECMA-262) pattern: empty, or `http://` or `https://`, then the authority (up to
    /// the first `/`, `?` or `#`, without `[` or `]`) whose host (after its last `@`, before a
    /// `:`) is not empty, then anything printable.
    pub const PATTERN: &str = concat!(
        r#"^(https?://([!"$-.0->@-Z\\^-~]*@)?[!"$-.0-9;->A-Z\\^-~][!"$-.0->A-Z\\^-~]*"#,
        r#"([/?#][!-~]*)?)?$"#
    );

    /// `None` for an empty value: no webhook.
    pub fn parse(field: &'static str, value: &str) -> Result<Option<Self>, FieldViolation> {
        if value.is_empty() {
            return Ok(None);
        }
        let refused = || {
            FieldViolation::new(
                field,
                format!(
                    "must be empty or an http(s) URL with a host, at most {} printable ASCII \
                     characters without spaces",
                    Self::MAX_CHARS
                ),
            )
        };
        if value.len() > Self::MAX_CHARS || !value.chars().all(|c| ('!'..='~').contains(&c)) {
            return Err(refused());
        }
        let rest = value
            .strip_prefix("https://")
            .or_else(|| value.strip_prefix("http://"))
            .ok_or_else(refused)?;
        let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
        let host = authority.rsplit('@').next().unwrap_or_default();
        let host = host.split(':').next().unwrap_or_default();
        // No IPv6 literal (`[::1]`): a webhook is named by a host name or an IPv4 address.
        if host.is_empty() || authority.contains(['[', ']']) {
            return Err(refused());
        }
        Ok(Some(WebhookUrl(value.to_owned())))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

#[cfg(test)]
mod tests {
    /// `pattern` without its `^` and `$`, for generating the texts it matches.
    fn unanchored(pattern: &str) -> &str {
        pattern.trim_start_matches('^').trim_end_matches('$')
    }

    proptest::proptest! {
        /// The document's patterns say exactly what the parsers accept: every text a pattern
        /// generates is accepted, and on texts made of URL-like pieces the two always agree.
        #[test]
        fn the_patterns_are_the_parsers(
            generated in proptest::string::string_regex(unanchored(WebhookUrl::PATTERN)).unwrap(),
            pieces in proptest::collection::vec(
                proptest::sample::select(vec![
                    "http", "https", "://", "/", "?", "#", "@", ":", "[", "]", "a", "9", ".", "\\\\",
                    "-", " ", "\u{7f}", "\u{e9}", "%", "ftp:", "\"",
                ]),
                0..12,
            ),
            order_no in "[ -\u{7f}\u{e9}]{0,130}",
            channel in "[\u{0}-\u{a0}\u{e9}\u{1f600}]{0,34}",
        ) {
            let pattern = regex::Regex::new(WebhookUrl::PATTERN).unwrap();
            proptest::prop_assert!(WebhookUrl::parse("webhook_url", &generated).is_ok());
            let text = pieces.concat();
            proptest::prop_assert_eq!(
                pattern.is_match(&text),
                WebhookUrl::parse("webhook_url", &text).is_ok(),
                "{:?}", text
            );
            let channels = regex::Regex::new(Channel::PATTERN).unwrap();
            proptest::prop_assert_eq!(
                channels.is_match(&channel) && channel.chars().count() <= 32,
                Channel::parse("channel", &channel).is_ok()
            );
            let orders = regex::Regex::new(OrderNo::PATTERN).unwrap();
            proptest::prop_assert_eq!(
                orders.is_match(&order_no),
                OrderNo::parse("order_no", &order_no).is_ok()
            );
        }
    }

    #[test]
    fn webhook_urls_are_http_or_https_with_a_host() {
        let ok = |v: &str| WebhookUrl::parse("webhook_url", v).unwrap();
        assert_eq!(ok(""), None);
        assert!(ok("https://hooks.example.com/billing?x=1").is_some());
        assert!(ok("http://127.0.0.1:8080/alerts").is_some());
        assert!(ok("https://user@hooks.example.com:8443/a[1]?b#c").is_some());
        for bad in [
            "ftp://example.com/",
            "https://",
            "https:///path",
            "example.com/hook",
            "https://exa mple.com/",
            "https://example.com/\u{7f}",
            "javascript:alert(1)",
            "http://[::1]:9000/a",
            "http://a[b/",
            "http://a]/",
        ] {
            assert!(WebhookUrl::parse("webhook_url", bad).is_err(), "{bad}");
        }
        let long = format!("https://example.com/{}", "a".repeat(2048));
        assert!(WebhookUrl::parse("webhook_url", &long).is_err());
    }

    use super::*;
    use proptest::prelude::*;

    #[test]
    fn user_ids_accept_the_contract_alphabet_only() {
        assert!(UserId::parse("user_id", "dev-42.team:eu_1").is_ok());
        for bad in ["", "a b", "ü", "x/y", "a\n", "'; DROP TABLE accounts; --"] {
            assert!(UserId::parse("user_id", bad).is_err(), "{bad:?}");
        }
        assert!(UserId::parse("user_id", &"a".repeat(64)).is_ok());
        assert!(UserId::parse("user_id", &"a".repeat(65)).is_err());
    }

    #[test]
    fn keys_are_printable_ascii_up_to_128() {
        assert!(RequestId::parse("request_id", "req 1/~!").is_ok());
        assert!(RequestId::parse("request_id", "").is_err());
        assert!(RequestId::parse("request_id", "tab\there").is_err());
        assert!(RequestId::parse("request_id", "é").is_err());
        assert!(RequestId::parse("request_id", &"k".repeat(129)).is_err());
        assert!(IdempotencyKey::parse("idempotency_key", "").is_ok());
    }

    #[test]
    fn texts_count_characters_not_bytes() {
        assert!(Description::parse("description", &"é".repeat(512)).is_ok());
        assert!(Description::parse("description", &"é".repeat(513)).is_err());
        assert!(Description::parse("description", "line\nbreak").is_err());
        assert!(Reason::parse("reason", "").is_err());
    }

    #[test]
    fn a_violation_names_its_field() {
        let violation = Actor::parse("actor", "").unwrap_err();
        assert_eq!(violation.field, "actor");
        assert!(violation.description.contains("1..64"));
    }

    proptest! {
        #[test]
        fn parsed_user_ids_obey_the_contract(raw in ".{0,80}") {
            if let Ok(id) = UserId::parse("user_id", &raw) {
                prop_assert!((1..=64).contains(&id.as_str().len()));
                prop_assert!(id.as_str().bytes().all(|b| b.is_ascii_alphanumeric() || b".:_-".contains(&b)));
            }
        }
    }
}
