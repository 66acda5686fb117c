//! `Stripe-Signature` verification, as Stripe specifies it: HMAC-SHA256 over
//! `"{t}.{raw body}"` with the endpoint's signing secret, compared in constant time against
//! every `v1` entry, with the timestamp within a tolerance (300 s by default).
//!
//! Several secrets may be configured while one is rotated; any of them may match. The empty
//! key never does: anyone can sign with it.

use std::fmt;
use std::time::Duration;

use hmac::{Hmac, Mac};
use secrecy::{ExposeSecret, SecretString};
use sha2::Sha256;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    #[error("missing Stripe-Signature header")]
    Missing,
    #[error("malformed Stripe-Signature header")]
    Malformed,
    #[error("no signature matches any configured signing secret")]
    NoMatch,
    #[error("signature timestamp is outside the tolerance window")]
    Stale,
}

/// The endpoint's signing secrets, as `STRIPE_WEBHOOK_SECRETS` lists them: comma-separated,
/// each entry trimmed, none empty. Its `Debug` says how many there are, never what they are;
/// each is a `SecretString`, which has no `Display` and is zeroed when dropped.
#[derive(Clone, Default)]
pub struct WebhookSecrets(Vec<SecretString>);

/// Why a secrets list was refused. It names the entry by position: the list holds secrets.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "STRIPE_WEBHOOK_SECRETS (--stripe-webhook-secrets) has an empty entry (number {position} \
     of {count}): remove the stray comma; list the secrets as whsec_new,whsec_old, or leave \
     the variable empty to turn webhooks off"
)]
pub struct EmptySecret {
    pub position: usize,
    pub count: usize,
}

impl WebhookSecrets {
    /// A blank list configures nothing (the endpoint answers 503); an empty entry in a
    /// non-blank list (`whsec_a,`, `a,,b`, `a, ,b`) is a mistake, refused rather than guessed at.
    pub fn parse(list: &str) -> Result<Self, EmptySecret> {
        if list.trim().is_empty() {
            return Ok(Self::default());
        }
        let entries: Vec<&str> = list.split(',').map(str::trim).collect();
        if let Some(index) = entries.iter().position(|entry| entry.is_empty()) {
            return Err(EmptySecret {
                position: index + 1,
                count: entries.len(),
            });
        }
        Ok(Self(entries.into_iter().map(SecretString::from).collect()))
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn as_slice(&self) -> &[SecretString] {
        &self.0
    }
}

impl fmt::Debug for WebhookSecrets {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "WebhookSecrets({} redacted)", self.0.len())
    }
}

/// Checks `header` for `body`. `now` is seconds since the epoch. Empty secrets are skipped.
pub fn verify(
    header: Option<&str>,
    body: &[u8],
    secrets: &[SecretString],
    tolerance: Duration,
    now: i64,
) -> Result<(), SignatureError> {
    let header = header.ok_or(SignatureError::Missing)?;
    let mut timestamp = None;
    let mut signatures = Vec::new();
    let mut v1_entries = 0usize;
    for part in header.split(',') {
        let Some((key, value)) = part.trim().split_once('=') else {
            return Err(SignatureError::Malformed);
        };
        match key {
            "t" if timestamp.is_none() => {
                timestamp = Some(
                    value
                        .parse::<i64>()
                        .map_err(|_| SignatureError::Malformed)?,
                );
            }
            "t" => return Err(SignatureError::Malformed),
            // A v1 entry that is not hex cannot match; others may still.
            "v1" => {
                v1_entries += 1;
                signatures.extend(decode_hex(value));
            }
            // v0 and future schemes are ignored, as Stripe's libraries do.
            _ => {}
        }
    }
    let timestamp = timestamp.ok_or(SignatureError::Malformed)?;
    if v1_entries == 0 {
        return Err(SignatureError::Malformed);
    }
    // An empty key is no secret at all: anyone can sign with it. Stripe's library refuses it too.
    let mut usable = secrets
        .iter()
        .map(ExposeSecret::expose_secret)
        .filter(|secret| !secret.is_empty());
    let matched = usable.any(|secret| {
        let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(secret.as_bytes()) else {
            return false;
        };
        mac.update(timestamp.to_string().as_bytes());
        mac.update(b".");
        mac.update(body);
        // `verify_slice` compares in constant time.
        signatures
            .iter()
            .any(|candidate| mac.clone().verify_slice(candidate).is_ok())
    });
    if !matched {
        return Err(SignatureError::NoMatch);
    }
    let tolerance = i64::try_from(tolerance.as_secs()).unwrap_or(i64::MAX);
    if (now - timestamp).abs() > tolerance {
        return Err(SignatureError::Stale);
    }
    Ok(())
}

/// Lowercase hex only, as Stripe writes it: its library compares the hex text, so an uppercase
/// copy of a valid signature does not match there, and must not here.
fn decode_hex(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) || text.bytes().any(|b| b.is_ascii_uppercase()) {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok())
        .collect()
}

/// Signs like Stripe does; for tests and local tooling.
pub fn sign(body: &[u8], secret: &str, timestamp: i64) -> String {
    let mut mac = match Hmac::<Sha256>::new_from_slice(secret.as_bytes()) {
        Ok(mac) => mac,
        Err(_) => return String::new(),
    };
    mac.update(format!("{timestamp}.").as_bytes());
    mac.update(body);
    let digest = mac.finalize().into_bytes();
    let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
    format!("t={timestamp},v1={hex}")
}

#[cfg(test)]
mod tests {
    use super::*;

    const TOLERANCE: Duration = Duration::from_secs(300);

    fn secrets(list: &[&str]) -> Vec<SecretString> {
        list.iter().map(|s| SecretString::from(*s)).collect()
    }

    #[test]
    fn accepts_a_valid_signature_and_rejects_the_rest() {
        let body = br#"{"id":"evt_1"}"#;
        let header = sign(body, "whsec_a", 1_000);
        let ok =
            |h: Option<&str>, b: &[u8], s: &[&str], now| verify(h, b, &secrets(s), TOLERANCE, now);
        assert_eq!(ok(Some(&header), body, &["whsec_a"], 1_000), Ok(()));
        assert_eq!(
            ok(Some(&header), body, &["whsec_old", "whsec_a"], 1_100),
            Ok(())
        );
        assert_eq!(
            ok(Some(&header), body, &["whsec_b"], 1_000),
            Err(SignatureError::NoMatch)
        );
        assert_eq!(
            ok(Some(&header), b"{\"id\":\"evt_2\"}", &["whsec_a"], 1_000),
            Err(SignatureError::NoMatch)
        );
        assert_eq!(
            ok(Some(&header), body, &["whsec_a"], 1_301),
            Err(SignatureError::Stale)
        );
        assert_eq!(
            ok(None, body, &["whsec_a"], 1_000),
            Err(SignatureError::Missing)
        );
        for bad in [
            "",
            "t=1000",
            "v1=abcd",
            "t=x,v1=00",
            "garbage",
            "t=1,t=2,v1=00",
        ] {
            assert!(ok(Some(bad), body, &["whsec_a"], 1_000).is_err(), "{bad}");
        }
        // Several v1 entries: any one may match.
        let signature = header.split_once(",v1=").map(|(_, s)| s).unwrap();
        let several = format!("t=1000,v1={},v1={signature},v0=zz", "00".repeat(32));
        assert_eq!(ok(Some(&several), body, &["whsec_a"], 1_000), Ok(()));
    }

    #[test]
    fn parses_the_secrets_list() {
        let parsed = |list: &str| {
            WebhookSecrets::parse(list).map(|s| {
                s.as_slice()
                    .iter()
                    .map(|secret| secret.expose_secret().to_owned())
                    .collect::<Vec<_>>()
            })
        };
        assert_eq!(parsed("whsec_a"), Ok(vec!["whsec_a".to_owned()]));
        assert_eq!(
            parsed(" whsec_new , whsec_old\t"),
            Ok(vec!["whsec_new".to_owned(), "whsec_old".to_owned()])
        );
        assert_eq!(parsed(""), Ok(vec![]));
        assert_eq!(parsed("  "), Ok(vec![]));
        for (list, position, count) in [
            ("whsec_a,", 2, 2),
            (",whsec_a", 1, 2),
            ("whsec_a,,whsec_b", 2, 3),
            ("whsec_a, ,whsec_b", 2, 3),
            (",", 1, 2),
        ] {
            assert_eq!(
                WebhookSecrets::parse(list).err(),
                Some(EmptySecret { position, count }),
                "{list:?}"
            );
        }
        let debug = format!("{:?}", WebhookSecrets::parse("whsec_a,whsec_b").unwrap());
        assert!(!debug.contains("whsec"), "{debug}");
    }

    /// Anyone can compute an HMAC with the empty key: a configured empty secret must not
    /// verify anything, even if it reaches `verify`.
    #[test]
    fn never_verifies_with_an_empty_key() {
        let body = br#"{"id":"evt_forged"}"#;
        let forged = sign(body, "", 1_000);
        for configured in [&["whsec_a", ""][..], &[""], &[]] {
            assert_eq!(
                verify(Some(&forged), body, &secrets(configured), TOLERANCE, 1_000),
                Err(SignatureError::NoMatch),
                "{configured:?}"
            );
        }
    }
}
