//! Stripe webhook signatures, pure (no clock: `now` is passed in).
//!
//! `Stripe-Signature: t=<unix>,v1=<hex>[,v1=<hex>…][,v0=…]`. The signed payload is
//! `"{t}.{raw body}"` as bytes, HMAC-SHA256 with the endpoint secret, compared in
//! constant time. **Any** `v1` matching **any** configured secret passes (Stripe sends
//! one `v1` per active secret while a secret is being rolled); `v0` and unknown schemes
//! are ignored; a `v1` that is not hex is skipped. Timestamps older than the tolerance
//! are refused (replay protection); the tolerance cannot be disabled.

use hmac::{Hmac, Mac};
use sha2::Sha256;

pub const DEFAULT_TOLERANCE_SECONDS: i64 = 300;
/// The largest tolerance configuration accepts (`WEBHOOK_TOLERANCE_SECONDS`).
pub const MAX_TOLERANCE_SECONDS: i64 = 3600;
/// `v1` signatures considered per header (Stripe sends one per active secret).
const MAX_SIGNATURES: usize = 8;
/// Secrets tried per delivery; configuring more is a configuration error.
pub const MAX_SECRETS: usize = 4;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SignatureError {
    /// No `Stripe-Signature` header, or an empty one.
    MissingHeader,
    /// No parsable `t=` timestamp.
    MalformedHeader,
    /// A timestamp but no `v1` signature.
    NoSignatures,
    /// Signed too long ago (or the header's timestamp was tampered with).
    TimestampOutsideTolerance,
    /// No `v1` matches any secret.
    NoMatch,
}

impl SignatureError {
    pub fn reason(self) -> &'static str {
        match self {
            SignatureError::MissingHeader => "missing Stripe-Signature header",
            SignatureError::MalformedHeader => "unable to extract timestamp and signatures from header",
            SignatureError::NoSignatures => "no signatures found with expected scheme v1",
            SignatureError::TimestampOutsideTolerance => "timestamp outside the tolerance zone",
            SignatureError::NoMatch => "no signatures found matching the expected signature for payload",
        }
    }
}

struct Header {
    timestamp: i64,
    v1: Vec<Vec<u8>>,
}

fn parse_header(header: &str) -> Result<Header, SignatureError> {
    let mut timestamp = None;
    let mut v1 = Vec::new();
    let mut saw_v1 = false;
    for item in header.split(',') {
        let Some((key, value)) = item.trim().split_once('=') else {
            continue;
        };
        match key {
            "t" => timestamp = value.parse::<i64>().ok(),
            "v1" => {
                saw_v1 = true;
                // A signature that is not 32 bytes of hex can never match: skip it, keep
                // the others. A bounded number are kept so a header stuffed with
                // signatures cannot multiply the work.
                if let Ok(bytes) = hex::decode(value) {
                    if bytes.len() == 32 && v1.len() < MAX_SIGNATURES {
                        v1.push(bytes);
                    }
                }
            }
            _ => {}
        }
    }
    let timestamp = timestamp.ok_or(SignatureError::MalformedHeader)?;
    if !saw_v1 {
        return Err(SignatureError::NoSignatures);
    }
    Ok(Header { timestamp, v1 })
}

/// Equal length and content, in time independent of where they differ.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn mac(secret: &str, timestamp: i64, payload: &[u8]) -> Hmac<Sha256> {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("HMAC accepts any key length");
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(payload);
    mac
}

/// Verifies `payload` against the header; returns the signed timestamp.
/// `secrets` must be non-empty (an unconfigured endpoint refuses before calling this).
pub fn verify(
    payload: &[u8],
    header: Option<&str>,
    secrets: &[String],
    tolerance: i64,
    now: i64,
) -> Result<i64, SignatureError> {
    let header = header.map(str::trim).filter(|h| !h.is_empty()).ok_or(SignatureError::MissingHeader)?;
    let parsed = parse_header(header)?;
    // One HMAC over the body per secret, compared in constant time with each `v1`.
    let matched = secrets.iter().filter(|s| !s.is_empty()).take(MAX_SECRETS).any(|secret| {
        let expected = mac(secret, parsed.timestamp, payload).finalize().into_bytes();
        parsed.v1.iter().any(|sig| constant_time_eq(&expected, sig))
    });
    if !matched {
        return Err(SignatureError::NoMatch);
    }
    // Checked after the signature so that a forged header cannot probe the clock.
    if parsed.timestamp < now.saturating_sub(tolerance.max(1)) {
        return Err(SignatureError::TimestampOutsideTolerance);
    }
    Ok(parsed.timestamp)
}

/// `STRIPE_WEBHOOK_SECRET` may hold several secrets, comma-separated (rotation).
pub fn parse_secrets(raw: Option<&str>) -> Vec<String> {
    raw.unwrap_or_default().split(',').map(str::trim).filter(|s| !s.is_empty()).map(str::to_string).collect()
}

/// A valid `Stripe-Signature` header for `payload`, as Stripe would send it. For tests
/// and local tooling.
pub fn sign_for_test(payload: &[u8], secret: &str, t: i64) -> String {
    format!("t={t},v1={}", hex::encode(mac(secret, t, payload).finalize().into_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &str = "whsec_test_secret";
    const NOW: i64 = 1_760_000_000;
    const PAYLOAD: &[u8] = br#"{"id":"evt_test_webhook","object":"event"}"#;

    fn secrets(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    fn check(header: Option<&str>) -> Result<i64, SignatureError> {
        verify(PAYLOAD, header, &secrets(&[SECRET]), DEFAULT_TOLERANCE_SECONDS, NOW)
    }

    #[test]
    fn a_valid_signature_passes_and_returns_the_timestamp() {
        assert_eq!(check(Some(&sign_for_test(PAYLOAD, SECRET, NOW))), Ok(NOW));
    }

    #[test]
    fn no_header_or_an_empty_one_is_refused() {
        assert_eq!(check(None), Err(SignatureError::MissingHeader));
        assert_eq!(check(Some("")), Err(SignatureError::MissingHeader));
        assert_eq!(check(Some("   ")), Err(SignatureError::MissingHeader));
    }

    #[test]
    fn a_header_without_the_expected_format_is_refused() {
        assert_eq!(check(Some("bad_header")), Err(SignatureError::MalformedHeader));
        assert_eq!(check(Some("t=")), Err(SignatureError::MalformedHeader));
        assert_eq!(check(Some("v1,t=1")), Err(SignatureError::NoSignatures));
        assert_eq!(check(Some("t=abc,v1=00")), Err(SignatureError::MalformedHeader));
    }

    #[test]
    fn a_header_with_only_v0_has_no_signature_of_the_expected_scheme() {
        let v1 = sign_for_test(PAYLOAD, SECRET, NOW);
        let v0 = v1.replace("v1=", "v0=");
        assert_eq!(check(Some(&v0)), Err(SignatureError::NoSignatures));
    }

    #[test]
    fn a_wrong_signature_is_refused() {
        let wrong = sign_for_test(PAYLOAD, "whsec_other", NOW);
        assert_eq!(check(Some(&wrong)), Err(SignatureError::NoMatch));
        let other_payload = sign_for_test(b"{}", SECRET, NOW);
        assert_eq!(check(Some(&other_payload)), Err(SignatureError::NoMatch));
        // The timestamp is signed too: changing it breaks the signature.
        let moved = sign_for_test(PAYLOAD, SECRET, NOW).replace(&format!("t={NOW}"), &format!("t={}", NOW + 1));
        assert_eq!(check(Some(&moved)), Err(SignatureError::NoMatch));
    }

    #[test]
    fn a_valid_signature_among_other_schemes_and_junk_passes() {
        let valid = sign_for_test(PAYLOAD, SECRET, NOW);
        assert_eq!(check(Some(&format!("{valid},v1=potato"))), Ok(NOW));
        assert_eq!(
            check(Some(&format!("{valid},v0=6ffbb59b2300aae63f272406069a9788598b792a944a07aba816edb039989a39"))),
            Ok(NOW)
        );
        let sig = valid.split("v1=").nth(1).unwrap();
        assert_eq!(check(Some(&format!("t={NOW},v1=potato,v1={sig},x=y"))), Ok(NOW));
        assert_eq!(check(Some(&format!("t={NOW}, v1={sig}"))), Ok(NOW));
    }

    #[test]
    fn either_of_two_secrets_passes_during_rotation() {
        let both = secrets(&["whsec_old", "whsec_new"]);
        for s in ["whsec_old", "whsec_new"] {
            let h = sign_for_test(PAYLOAD, s, NOW);
            assert_eq!(verify(PAYLOAD, Some(&h), &both, 300, NOW), Ok(NOW), "{s}");
        }
        let h = sign_for_test(PAYLOAD, "whsec_third", NOW);
        assert_eq!(verify(PAYLOAD, Some(&h), &both, 300, NOW), Err(SignatureError::NoMatch));
        // Stripe sends one v1 per secret while rolling: either one matching is enough.
        let old = sign_for_test(PAYLOAD, "whsec_old", NOW);
        let new_sig = sign_for_test(PAYLOAD, "whsec_new", NOW);
        let two = format!("{old},v1={}", new_sig.split("v1=").nth(1).unwrap());
        assert_eq!(verify(PAYLOAD, Some(&two), &secrets(&["whsec_new"]), 300, NOW), Ok(NOW));
    }

    #[test]
    fn the_tolerance_is_enforced_at_its_edge() {
        let h299 = sign_for_test(PAYLOAD, SECRET, NOW - 299);
        assert_eq!(check(Some(&h299)), Ok(NOW - 299));
        let h300 = sign_for_test(PAYLOAD, SECRET, NOW - 300);
        assert_eq!(check(Some(&h300)), Ok(NOW - 300));
        let h301 = sign_for_test(PAYLOAD, SECRET, NOW - 301);
        assert_eq!(check(Some(&h301)), Err(SignatureError::TimestampOutsideTolerance));
        // A tolerance of zero or less does not disable the check.
        assert_eq!(
            verify(PAYLOAD, Some(&h301), &secrets(&[SECRET]), 0, NOW),
            Err(SignatureError::TimestampOutsideTolerance)
        );
    }

    #[test]
    fn a_header_stuffed_with_signatures_only_has_its_first_few_considered() {
        let valid = sign_for_test(PAYLOAD, SECRET, NOW);
        let sig = valid.split("v1=").nth(1).unwrap();
        let junk: String = (0..50).map(|i| format!(",v1={:064x}", i)).collect();
        assert_eq!(check(Some(&format!("t={NOW}{junk},v1={sig}"))), Err(SignatureError::NoMatch));
        assert_eq!(check(Some(&format!("t={NOW},v1={sig}{junk}"))), Ok(NOW));
        // Empty or short hex never matches.
        assert_eq!(check(Some(&format!("t={NOW},v1=,v1=00"))), Err(SignatureError::NoMatch));
    }

    #[test]
    fn secrets_are_a_trimmed_comma_list() {
        assert_eq!(parse_secrets(Some(" whsec_a , whsec_b,,")), ["whsec_a", "whsec_b"]);
        assert!(parse_secrets(Some("  ")).is_empty());
        assert!(parse_secrets(None).is_empty());
        assert_eq!(
            verify(PAYLOAD, Some(&sign_for_test(PAYLOAD, SECRET, NOW)), &[], 300, NOW),
            Err(SignatureError::NoMatch)
        );
    }
}
