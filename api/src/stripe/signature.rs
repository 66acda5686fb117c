//! `Stripe-Signature` verification, as Stripe specifies it: HMAC-SHA256 over
//! `"{t}.{raw body}"` with the endpoint's signing secret, compared in constant time against
//! every `v1` entry, with the timestamp no older than a tolerance (300 s by default).
//!
//! As in Stripe's own libraries, the tolerance bounds the signature's *age* only: a timestamp
//! ahead of our clock is accepted (the HMAC covers `t`, so only the secret's holder can set it,
//! and a server clock a few minutes slow must not lose deliveries). The age is checked before
//! any HMAC is computed, and a header may carry at most [`MAX_V1_ENTRIES`] `v1` entries, so an
//! unsigned request costs little.
//!
//! Several secrets may be configured while one is rotated; any of them may match. Each must
//! look like a Stripe signing secret (`whsec_` and at least [`MIN_SECRET_CHARS`] characters):
//! a placeholder (`whsec_...`, `whsec_test`) would let anyone who guesses it forge events.

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
    #[error("signature timestamp is older than the tolerance")]
    Stale,
}

/// The endpoint's signing secrets, as `STRIPE_WEBHOOK_SECRETS` lists them: comma-separated,
/// each entry trimmed, none empty. Its `Debug` says how many there are, never what they are;
/// each is a `SecretString`, which has no `Display` and is zeroed when dropped.
#[derive(Clone, Default)]
pub struct WebhookSecrets(Vec<SecretString>);

/// `v1` entries a header may carry: Stripe sends one per secret the endpoint has (two while
/// one is rolled). More is not Stripe, and each costs an HMAC comparison.
pub const MAX_V1_ENTRIES: usize = 8;

/// Characters a signing secret has after `whsec_`, at least: Stripe's have 32 (Dashboard) or
/// 64 (Stripe CLI).
pub const MIN_SECRET_CHARS: usize = 32;

/// Why a secrets list was refused. It names the entry by position, never its value: the list
/// holds secrets.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SecretsError {
    #[error(
        "STRIPE_WEBHOOK_SECRETS (--stripe-webhook-secrets) has an empty entry (number \
         {position} of {count}): remove the stray comma; list the secrets as \
         whsec_new,whsec_old, or leave the variable empty to turn webhooks off"
    )]
    Empty { position: usize, count: usize },
    #[error(
        "STRIPE_WEBHOOK_SECRETS (--stripe-webhook-secrets) entry number {position} of {count} \
         is not a Stripe signing secret: expected whsec_ followed by at least 32 characters, \
         as the Dashboard or `stripe listen` shows it (a placeholder would let anyone forge \
         events)"
    )]
    NotASecret { position: usize, count: usize },
}

/// Whether `entry` has the shape of a Stripe signing secret.
fn looks_like_a_secret(entry: &str) -> bool {
    entry.strip_prefix("whsec_").is_some_and(|rest| {
        rest.chars().count() >= MIN_SECRET_CHARS && rest.chars().all(|c| c.is_ascii_graphic())
    })
}

impl WebhookSecrets {
    /// A blank list configures nothing (the endpoint answers 503); an empty entry in a
    /// non-blank list (`whsec_a,`, `a,,b`, `a, ,b`) is a mistake, refused rather than guessed
    /// at, and so is an entry without a signing secret's shape.
    pub fn parse(list: &str) -> Result<Self, SecretsError> {
        if list.trim().is_empty() {
            return Ok(Self::default());
        }
        let entries: Vec<&str> = list.split(',').map(str::trim).collect();
        let count = entries.len();
        for (index, entry) in entries.iter().enumerate() {
            let position = index + 1;
            if entry.is_empty() {
                return Err(SecretsError::Empty { position, count });
            }
            if !looks_like_a_secret(entry) {
                return Err(SecretsError::NotASecret { position, count });
            }
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
                if v1_entries > MAX_V1_ENTRIES {
                    return Err(SignatureError::Malformed);
                }
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
    // Age only, as Stripe's libraries check it, and before any HMAC: a replayed or forged
    // header with an old `t` costs no hashing.
    let tolerance = i64::try_from(tolerance.as_secs()).unwrap_or(i64::MAX);
    if now.saturating_sub(timestamp) > tolerance {
        return Err(SignatureError::Stale);
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

    /// Stripe's libraries bound the age only: a timestamp ahead of our clock (a server a few
    /// minutes slow) is accepted; the age is checked before any HMAC; `v1` entries are capped.
    #[test]
    fn bounds_the_age_only_cheaply() {
        let body = br#"{"id":"evt_1"}"#;
        let ok = |h: &str, now| verify(Some(h), body, &secrets(&["whsec_a"]), TOLERANCE, now);
        let ahead = sign(body, "whsec_a", 1_000 + 3_600);
        assert_eq!(ok(&ahead, 1_000), Ok(()));
        // Old and wrong: refused as stale, before any HMAC was computed.
        let old_and_wrong = format!("t=100,v1={}", "00".repeat(32));
        assert_eq!(ok(&old_and_wrong, 1_000), Err(SignatureError::Stale));
        let valid = sign(body, "whsec_a", 1_000);
        let signature = valid.split_once(",v1=").map(|(_, s)| s).unwrap();
        let padded = |n: usize| {
            let filler = format!(",v1={}", "00".repeat(32)).repeat(n);
            format!("t=1000{filler},v1={signature}")
        };
        assert_eq!(ok(&padded(MAX_V1_ENTRIES - 1), 1_000), Ok(()));
        assert_eq!(
            ok(&padded(MAX_V1_ENTRIES), 1_000),
            Err(SignatureError::Malformed)
        );
    }

    #[test]
    fn parses_the_secrets_list() {
        let new = format!("whsec_{}", "n".repeat(32));
        let old = format!("whsec_{}", "o".repeat(64));
        let parsed = |list: &str| {
            WebhookSecrets::parse(list).map(|s| {
                s.as_slice()
                    .iter()
                    .map(|secret| secret.expose_secret().to_owned())
                    .collect::<Vec<_>>()
            })
        };
        assert_eq!(parsed(&new), Ok(vec![new.clone()]));
        assert_eq!(
            parsed(&format!(" {new} , {old}\t")),
            Ok(vec![new.clone(), old.clone()])
        );
        assert_eq!(parsed(""), Ok(vec![]));
        assert_eq!(parsed("  "), Ok(vec![]));
        for (list, position, count) in [
            (format!("{new},"), 2, 2),
            (format!(",{new}"), 1, 2),
            (format!("{new},,{old}"), 2, 3),
            (format!("{new}, ,{old}"), 2, 3),
            (",".to_owned(), 1, 2),
        ] {
            assert_eq!(
                WebhookSecrets::parse(&list).err(),
                Some(SecretsError::Empty { position, count }),
                "{list:?}"
            );
        }
        // Placeholders and anything else without a signing secret's shape: refused, by
        // position, never echoed.
        let short = format!("whsec_{}", "s".repeat(31));
        let spaced = format!("whsec_{} x", "s".repeat(32));
        let wrong_prefix = format!("sk_test_{}", "s".repeat(32));
        for (list, position, count) in [
            ("whsec_...".to_owned(), 1, 1),
            ("whsec_".to_owned(), 1, 1),
            ("x".to_owned(), 1, 1),
            ("whsec_schemathesis".to_owned(), 1, 1),
            (format!("{new},{short}"), 2, 2),
            (format!("{spaced},{new}"), 1, 2),
            (format!("{new},{old},{wrong_prefix}"), 3, 3),
        ] {
            let err = WebhookSecrets::parse(&list).err();
            assert_eq!(
                err,
                Some(SecretsError::NotASecret { position, count }),
                "{list:?}"
            );
            let message = err.map(|e| e.to_string()).unwrap_or_default();
            assert!(
                !message.contains("sss") && !message.contains("..."),
                "{message}"
            );
            assert_eq!(message.lines().count(), 1, "{message}");
        }
        let debug = format!(
            "{:?}",
            WebhookSecrets::parse(&format!("{new},{old}")).unwrap()
        );
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
