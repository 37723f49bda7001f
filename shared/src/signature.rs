//! The HMAC-SHA256 signatures of signed HTTP deliveries, both ways, each in a scheme of its own
//! so that a signature of one can never pass as the other:
//! - [`Scheme::Payment`]: the payment provider's callbacks to command-svc, signed with the
//!   configured webhook secret. Headers `X-Billing-Timestamp: <unix seconds>` and
//!   `X-Billing-Signature: sha256=<hex of HMAC-SHA256(secret, "<timestamp>.<raw body>")>`.
//! - [`Scheme::Alert`]: command-svc's alert deliveries to a developer's webhook, signed with that
//!   developer's own secret (generated when the webhook is set). Headers
//!   `X-Billing-Alert-Timestamp` and `X-Billing-Alert-Signature: sha256=<hex of
//!   HMAC-SHA256(secret, "alert.<timestamp>.<raw body>")>`.

use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;

pub const TIMESTAMP_HEADER: &str = "x-billing-timestamp";
pub const SIGNATURE_HEADER: &str = "x-billing-signature";
pub const ALERT_TIMESTAMP_HEADER: &str = "x-billing-alert-timestamp";
pub const ALERT_SIGNATURE_HEADER: &str = "x-billing-alert-signature";

/// Who signs, which fixes the headers and what the HMAC covers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scheme {
    Payment,
    Alert,
}

impl Scheme {
    /// The timestamp's header and the signature's header.
    pub fn headers(self) -> (&'static str, &'static str) {
        match self {
            Scheme::Payment => (TIMESTAMP_HEADER, SIGNATURE_HEADER),
            Scheme::Alert => (ALERT_TIMESTAMP_HEADER, ALERT_SIGNATURE_HEADER),
        }
    }

    /// What the signed text starts with, so one scheme's HMAC input is never the other's.
    fn context(self) -> &'static [u8] {
        match self {
            Scheme::Payment => b"",
            Scheme::Alert => b"alert.",
        }
    }
}

fn mac(scheme: Scheme, secret: &str, timestamp: i64, body: &[u8]) -> Hmac<Sha256> {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("HMAC takes any key");
    mac.update(scheme.context());
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    mac
}

/// The signature of `body` sent at `timestamp` with `secret`, as the header carries it.
pub fn sign(scheme: Scheme, secret: &str, timestamp: i64, body: &[u8]) -> String {
    format!(
        "sha256={}",
        hex::encode(mac(scheme, secret, timestamp, body).finalize().into_bytes())
    )
}

/// Whether `header` (`sha256=<hex>`) signs `body` at `timestamp` with `secret`; compared in
/// constant time. An empty secret verifies nothing.
pub fn verify(scheme: Scheme, secret: &str, timestamp: i64, body: &[u8], header: &str) -> bool {
    !secret.is_empty()
        && header
            .trim()
            .strip_prefix("sha256=")
            .and_then(|hex_text| hex::decode(hex_text).ok())
            .is_some_and(|signature| {
                mac(scheme, secret, timestamp, body)
                    .verify_slice(&signature)
                    .is_ok()
            })
}

/// A new signing secret for a developer's webhook: `whsec_` and 64 hexadecimal digits, two
/// version-4 UUIDs of the operating system's randomness (244 random bits).
pub fn new_secret() -> String {
    let (a, b) = (uuid::Uuid::new_v4(), uuid::Uuid::new_v4());
    format!("whsec_{}{}", a.simple(), b.simple())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_signature_verifies_only_with_its_secret_body_and_timestamp() {
        let signed = sign(Scheme::Payment, "s3cret", 1_700_000_000, b"{\"a\":1}");
        assert!(signed.starts_with("sha256=") && signed.len() == 7 + 64);
        let check = |secret, ts, body: &[u8], header: &str| {
            verify(Scheme::Payment, secret, ts, body, header)
        };
        assert!(check("s3cret", 1_700_000_000, b"{\"a\":1}", &signed));
        assert!(!check("other", 1_700_000_000, b"{\"a\":1}", &signed));
        assert!(!check("s3cret", 1_700_000_001, b"{\"a\":1}", &signed));
        assert!(!check("s3cret", 1_700_000_000, b"{\"a\":2}", &signed));
        assert!(!check("s3cret", 1_700_000_000, b"{\"a\":1}", "sha256=zz"));
        assert!(!check("s3cret", 1_700_000_000, b"{\"a\":1}", &signed[7..]));
    }

    #[test]
    fn an_alert_signature_never_verifies_as_a_payment_one_even_with_the_same_key() {
        let body = b"{\"order_no\":\"o\"}";
        let alert = sign(Scheme::Alert, "same-key", 1_700_000_000, body);
        assert!(verify(
            Scheme::Alert,
            "same-key",
            1_700_000_000,
            body,
            &alert
        ));
        assert!(!verify(
            Scheme::Payment,
            "same-key",
            1_700_000_000,
            body,
            &alert
        ));
        assert_ne!(Scheme::Alert.headers(), Scheme::Payment.headers());
    }

    #[test]
    fn an_empty_secret_verifies_nothing() {
        let signed = sign(Scheme::Payment, "", 1, b"x");
        assert!(!verify(Scheme::Payment, "", 1, b"x", &signed));
    }

    #[test]
    fn new_secrets_are_long_and_never_repeat() {
        let (a, b) = (new_secret(), new_secret());
        assert_ne!(a, b);
        assert_eq!(a.len(), "whsec_".len() + 64);
        assert!(a.starts_with("whsec_"));
    }
}
