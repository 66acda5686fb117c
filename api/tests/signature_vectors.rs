//! Our `Stripe-Signature` verifier against cases made and judged by Stripe's own library.
//!
//! `tests/fixtures/stripe_signature_vectors.json` is written by `scripts/stripe_vectors.py` with
//! the pinned `stripe` Python package; CI regenerates it and fails on any difference, so these
//! answers are Stripe's, while running this test needs nothing but Rust.

use std::time::Duration;

use api::stripe::signature::{SignatureError, verify};
use serde_json::Value;

const VECTORS: &str = include_str!("../../tests/fixtures/stripe_signature_vectors.json");

fn outcome(result: Result<(), SignatureError>) -> &'static str {
    match result {
        Ok(()) => "ok",
        Err(SignatureError::Missing) => "missing",
        Err(SignatureError::Malformed) => "malformed",
        Err(SignatureError::NoMatch) => "no_match",
        Err(SignatureError::Stale) => "stale",
    }
}

fn field<'a>(vector: &'a Value, key: &str) -> &'a Value {
    vector
        .get(key)
        .unwrap_or_else(|| panic!("vector without {key}: {vector}"))
}

fn vectors() -> Vec<Value> {
    let document: Value = serde_json::from_str(VECTORS).expect("the vectors file is JSON");
    field(&document, "vectors")
        .as_array()
        .expect("vectors is a list")
        .clone()
}

#[test]
fn our_verifier_answers_as_stripes_library_does() {
    let vectors = vectors();
    assert!(vectors.len() >= 15, "too few vectors: {}", vectors.len());
    let mut disagreements = Vec::new();
    for vector in &vectors {
        let name = field(vector, "name").as_str().expect("name");
        let payload = field(vector, "payload").as_str().expect("payload");
        let secret = secrecy::SecretString::from(field(vector, "secret").as_str().expect("secret"));
        let header = field(vector, "header").as_str();
        let now = field(vector, "now").as_i64().expect("now");
        let tolerance = field(vector, "tolerance_secs").as_u64().expect("tolerance");
        let expected = field(vector, "expect").as_str().expect("expect");
        let got = outcome(verify(
            header,
            payload.as_bytes(),
            &[secret],
            Duration::from_secs(tolerance),
            now,
        ));
        if got != expected {
            disagreements.push(format!(
                "{name}: Stripe's library says {expected}, ours {got}"
            ));
        }
    }
    assert!(disagreements.is_empty(), "{}", disagreements.join("\n"));
}

#[test]
fn every_outcome_is_covered() {
    let expected: Vec<String> = vectors()
        .iter()
        .map(|v| field(v, "expect").as_str().expect("expect").to_owned())
        .collect();
    for wanted in ["ok", "missing", "malformed", "no_match", "stale"] {
        assert!(
            expected.iter().any(|e| e == wanted),
            "no vector expects {wanted}"
        );
    }
}
