//! Request signatures (GitHub/Stripe style): `X-Lookout-Signature: sha256=<hex>` is the
//! HMAC-SHA256, keyed with the shared secret, of `"<timestamp>.<raw body>"`, and
//! `X-Lookout-Timestamp` carries the timestamp (Unix seconds). Signing the timestamp with the
//! body lets receivers refuse forgeries and replays of old requests.

use std::time::Duration;

use hmac::{Hmac, Mac};
use sha2::Sha256;

/// Header carrying `sha256=<lowercase hex>`.
pub const SIGNATURE_HEADER: &str = "x-lookout-signature";
/// Header carrying the Unix seconds the signature was made at.
pub const TIMESTAMP_HEADER: &str = "x-lookout-timestamp";

type HmacSha256 = Hmac<Sha256>;

fn mac(secret: &[u8], timestamp: &str, body: &[u8]) -> HmacSha256 {
    let mut mac = HmacSha256::new_from_slice(secret).expect("HMAC takes keys of any length");
    mac.update(timestamp.as_bytes());
    mac.update(b".");
    mac.update(body);
    mac
}

/// The `X-Lookout-Signature` value for `body` sent at `timestamp`.
pub fn sign(secret: &[u8], timestamp: u64, body: &[u8]) -> String {
    let tag = mac(secret, &timestamp.to_string(), body)
        .finalize()
        .into_bytes();
    format!("sha256={}", hex::encode(tag))
}

/// Why a request's signature does not hold.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SignatureError {
    /// The timestamp header is not Unix seconds.
    #[error("timestamp is not a number of seconds")]
    BadTimestamp,
    /// The request is older (or newer) than the tolerance: possibly a replay.
    #[error("timestamp outside the tolerance window")]
    Stale,
    /// The signature header is not `sha256=<hex>`.
    #[error("signature header is not `sha256=<hex>`")]
    Malformed,
    /// The body or timestamp was not signed with this secret.
    #[error("signature does not match")]
    Mismatch,
}

/// Checks a received request, as a receiver would: the timestamp is within `tolerance` of
/// `now` (Unix seconds) and the signature matches (compared in constant time).
///
/// # Errors
/// Which check failed.
pub fn verify(
    secret: &[u8],
    timestamp: &str,
    signature: &str,
    body: &[u8],
    now: u64,
    tolerance: Duration,
) -> Result<(), SignatureError> {
    let ts: u64 = timestamp
        .trim()
        .parse()
        .map_err(|_| SignatureError::BadTimestamp)?;
    if ts.abs_diff(now) > tolerance.as_secs() {
        return Err(SignatureError::Stale);
    }
    let tag = signature
        .trim()
        .strip_prefix("sha256=")
        .and_then(|h| hex::decode(h).ok())
        .ok_or(SignatureError::Malformed)?;
    mac(secret, timestamp.trim(), body)
        .verify_slice(&tag)
        .map_err(|_| SignatureError::Mismatch)
}

#[cfg(test)]
mod tests {
    use super::*;

    const TOLERANCE: Duration = Duration::from_secs(300);

    #[test]
    fn signature_matches_openssl_and_python() {
        // printf '1700000000.{"a":1}' | openssl dgst -sha256 -hmac s3cr3t
        assert_eq!(
            sign(b"s3cr3t", 1_700_000_000, br#"{"a":1}"#),
            "sha256=8dbbbbf4523b10bbb793e74d854144c45acccc2d233667b1c06b805b6ded8a84"
        );
    }

    #[test]
    fn a_signed_body_verifies_and_a_tampered_one_does_not() {
        let sig = sign(b"k", 100, b"body");
        assert_eq!(verify(b"k", "100", &sig, b"body", 100, TOLERANCE), Ok(()));
        assert_eq!(
            verify(b"k", "100", &sig, b"bodY", 100, TOLERANCE),
            Err(SignatureError::Mismatch)
        );
        assert_eq!(
            verify(b"other", "100", &sig, b"body", 100, TOLERANCE),
            Err(SignatureError::Mismatch)
        );
        assert_eq!(
            verify(b"k", "101", &sig, b"body", 100, TOLERANCE),
            Err(SignatureError::Mismatch)
        );
    }

    #[test]
    fn an_old_request_is_refused_as_a_replay() {
        let sig = sign(b"k", 100, b"body");
        assert_eq!(
            verify(b"k", "100", &sig, b"body", 100 + 301, TOLERANCE),
            Err(SignatureError::Stale)
        );
    }
}
