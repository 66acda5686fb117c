//! Secrets never print: the settings and the stripe-sync flags hold them (webhook secrets,
//! the Stripe API key, the database URL with its password) in `secrecy` types, whose `Debug`
//! is redacted and which have no `Display`.

use api::Settings;
use api::service::stripe_backfill::SyncArgs;
use clap::Parser;

/// The server's settings and the stripe-sync flags, as `billing` parses them.
#[derive(Parser, Debug)]
struct Flags {
    #[command(flatten)]
    settings: Settings,
    #[command(flatten)]
    sync: SyncArgs,
}

/// Shaped like Stripe's signing secrets (`whsec_` and 32+ characters), which the parser requires.
const WEBHOOK_SECRETS: [&str; 2] = [
    "whsec_live_supersecret_0123456789abcdef",
    "whsec_rotated_out_0123456789abcdefghijk",
];
const API_KEY: &str = "sk_live_topsecretkey";
const DATABASE_URL: &str = "postgres://app:hunter2dbpass@127.0.0.1:5432/billing";

#[test]
fn debug_of_the_settings_never_shows_a_secret() {
    let flags = Flags::try_parse_from([
        "billing",
        "--stripe-webhook-secrets",
        &WEBHOOK_SECRETS.join(","),
        "--stripe-api-key",
        API_KEY,
        "--database-url",
        DATABASE_URL,
    ])
    .expect("the flags parse");
    // The secrets did arrive: the redaction is not an empty list.
    assert_eq!(flags.settings.stripe.webhook_secrets.as_slice().len(), 2);
    assert!(!flags.sync.api_key.as_ref().is_none_or(|key| key.is_empty()));
    assert!(flags.settings.database_url.is_some());
    for shown in [
        format!("{flags:?}"),
        format!("{flags:#?}"),
        format!("{:?}", flags.settings),
        format!("{:?}", flags.settings.stripe),
        format!("{:?}", flags.sync),
    ] {
        for secret in WEBHOOK_SECRETS.iter().chain([&API_KEY, &"hunter2dbpass"]) {
            assert!(!shown.contains(secret), "{secret} shown in:\n{shown}");
        }
        // Not even a prefix of one.
        assert!(
            !shown.contains("supersecret") && !shown.contains("topsecret"),
            "{shown}"
        );
    }
}

/// A refused secrets list is named by position in the error, never echoed.
#[test]
fn a_refused_secrets_list_is_not_echoed() {
    let error = Flags::try_parse_from([
        "billing",
        "--stripe-webhook-secrets",
        &format!("{},", WEBHOOK_SECRETS[0]),
    ])
    .expect_err("an empty entry is refused");
    let text = error.to_string();
    assert!(text.contains("empty entry"), "{text}");
    assert!(!text.contains(WEBHOOK_SECRETS[0]), "{text}");
}
