//! The HMAC scheme of every signed HTTP delivery, both ways: the payment provider's callbacks to
//! command-svc, and command-svc's alert deliveries to developers' webhooks. Headers
//! `X-Billing-Timestamp: <unix seconds>` and `X-Billing-Signature: sha256=<hex of
//! HMAC-SHA256(secret, "<timestamp>.<raw body>")>`.

use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;

pub const TIMESTAMP_HEADER: &str = "x-billing-timestamp";
pub const SIGNATURE_HEADER: &str = "x-billing-signature";

fn mac(secret: &str, timestamp: i64, body: &[u8]) -> Hmac<Sha256> {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("HMAC takes any key");
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    mac
}

/// The signature of `body` sent at `timestamp` with `secret`, as the header carries it.
pub fn sign(secret: &str, timestamp: i64, body: &[u8]) -> String {
    format!(
        "sha256={}",
        hex::encode(mac(secret, timestamp, body).finalize().into_bytes())
    )
}

/// Whether `header` (`sha256=<hex>`) signs `body` at `timestamp` with `secret`; compared in
/// constant time.
pub fn verify(secret: &str, timestamp: i64, body: &[u8], header: &str) -> bool {
    header
        .trim()
        .strip_prefix("sha256=")
        .and_then(|hex_text| hex::decode(hex_text).ok())
        .is_some_and(|signature| {
            mac(secret, timestamp, body)
                .verify_slice(&signature)
                .is_ok()
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_signature_verifies_only_with_its_secret_body_and_timestamp() {
        let signed = sign("s3cret", 1_700_000_000, b"{\"a\":1}");
        assert!(signed.starts_with("sha256=") && signed.len() == 7 + 64);
        assert!(verify("s3cret", 1_700_000_000, b"{\"a\":1}", &signed));
        assert!(!verify("other", 1_700_000_000, b"{\"a\":1}", &signed));
        assert!(!verify("s3cret", 1_700_000_001, b"{\"a\":1}", &signed));
        assert!(!verify("s3cret", 1_700_000_000, b"{\"a\":2}", &signed));
        assert!(!verify("s3cret", 1_700_000_000, b"{\"a\":1}", "sha256=zz"));
        assert!(!verify("s3cret", 1_700_000_000, b"{\"a\":1}", &signed[7..]));
    }
}
