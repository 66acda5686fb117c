//! Every knob of the server, from flags or the environment (docs/configuration.md lists them). Every flag is
//! `global`: it is accepted before or after the subcommand (`billing purge-deleted
//! --purge-batch-size 2`).

use std::ffi::OsStr;
use std::time::Duration;

use clap::builder::TypedValueParser;
use clap::error::ErrorKind;
use secrecy::{ExposeSecret, SecretString};

use crate::db::Pooler;
use crate::stripe::mode::{self, ModeError, StripeMode};
use crate::stripe::prices::ProPrices;
use crate::stripe::signature::WebhookSecrets;

#[derive(clap::Args, Clone, Debug)]
pub struct Settings {
    /// Address to listen on; port 0 picks a free one.
    #[arg(
        global = true,
        long,
        env = "BIND_ADDR",
        default_value = "127.0.0.1:8080"
    )]
    pub bind: String,
    /// Address of the Prometheus `/metrics` listener, apart from the API's (unset: no metrics).
    /// For `stripe-sync`, serves its progress while it runs.
    #[arg(global = true, long, env = "METRICS_ADDR", value_name = "HOST:PORT")]
    pub metrics_addr: Option<std::net::SocketAddr>,
    /// Database URL (default: the embedded SQLite file data/billing.sqlite).
    #[arg(
        global = true,
        short = 'u',
        long,
        env = "DATABASE_URL",
        hide_env_values = true,
        value_parser = secret_text
    )]
    pub database_url: Option<SecretString>,
    /// Database URL for the migrations (`--migrate on-start` and `check`): a direct connection
    /// to PostgreSQL, not a transaction-mode pooler, whose session-level migration lock would
    /// mean nothing (default: DATABASE_URL).
    #[arg(
        global = true,
        long,
        env = "MIGRATION_DATABASE_URL",
        hide_env_values = true,
        value_parser = secret_text
    )]
    pub migration_database_url: Option<SecretString>,
    /// What stands between the API and PostgreSQL: `transaction` behind a transaction-mode
    /// pooler (PgBouncer `pool_mode = transaction`), which the lock timeout must survive.
    #[arg(
        global = true,
        long,
        env = "DB_POOLER",
        value_enum,
        default_value_t = Pooler::None
    )]
    pub db_pooler: Pooler,
    /// PostgreSQL schema holding the tables (default: public), as for `migration -s`.
    #[arg(global = true, short = 's', long, env = "DATABASE_SCHEMA")]
    pub database_schema: Option<String>,
    /// Largest pool of database connections (SQLite always uses one writer).
    #[arg(global = true, long, env = "DB_MAX_CONNECTIONS", default_value_t = 10)]
    pub db_max_connections: u32,
    /// Milliseconds a statement waits for a lock another transaction holds before its request
    /// answers 503 with Retry-After (MySQL rounds up to whole seconds).
    #[arg(
        global = true,
        long,
        env = "DB_LOCK_TIMEOUT_MS",
        default_value_t = 2000,
        value_parser = clap::value_parser!(u64).range(1..)
    )]
    pub db_lock_timeout_ms: u64,
    /// Seconds a request may take in all before it is answered 503 with Retry-After.
    #[arg(
        global = true,
        long,
        env = "REQUEST_TIMEOUT_SECS",
        default_value_t = 30,
        value_parser = clap::value_parser!(u64).range(1..)
    )]
    pub request_timeout_secs: u64,
    #[command(flatten)]
    pub limits: Limits,
    #[command(flatten)]
    pub connections: ConnectionSettings,
    #[command(flatten)]
    pub stripe: StripeSettings,
    /// Run the retention purge every this many seconds inside the server (0: never).
    #[arg(global = true, long, env = "PURGE_EVERY_SECS", default_value_t = 0)]
    pub purge_every_secs: u64,
    /// What to do about pending migrations before serving (docs/operations.md).
    #[arg(
        global = true,
        long,
        env = "MIGRATE",
        value_enum,
        default_value_t = MigrateMode::OnStart
    )]
    pub migrate: MigrateMode,
}

/// `--migrate`: who applies the migrations.
#[derive(clap::ValueEnum, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum MigrateMode {
    /// Apply pending migrations under the migrator's lock, then serve (the embedded SQLite's
    /// way: nothing else to run).
    #[default]
    OnStart,
    /// Refuse to start while any migration is pending: `migration up` is the deploy's own step.
    Check,
    /// Serve the schema as it is, without looking.
    Skip,
}

impl Settings {
    /// `DATABASE_URL` as written, for the code that opens it; never for a message.
    pub fn database_url(&self) -> Option<&str> {
        self.database_url.as_ref().map(ExposeSecret::expose_secret)
    }

    /// `MIGRATION_DATABASE_URL`, else `DATABASE_URL`: where migrations run.
    pub fn migration_database_url(&self) -> Option<&str> {
        self.migration_database_url
            .as_ref()
            .map(ExposeSecret::expose_secret)
            .or_else(|| self.database_url())
    }

    pub fn lock_timeout(&self) -> Duration {
        Duration::from_millis(self.db_lock_timeout_ms.max(1))
    }

    pub fn request_timeout(&self) -> Duration {
        Duration::from_secs(self.request_timeout_secs.max(1))
    }
}

/// Stripe webhook verification.
#[derive(clap::Args, Clone, Debug)]
pub struct StripeSettings {
    /// Webhook signing secrets (whsec_...), comma-separated; several while one is rotated.
    /// Empty: webhooks are off (the endpoint answers 503).
    #[arg(
        global = true,
        long = "stripe-webhook-secrets",
        alias = "stripe-webhook-secret",
        env = "STRIPE_WEBHOOK_SECRETS",
        hide_env_values = true,
        value_name = "WHSEC,...",
        value_parser = SecretsParser,
        default_value = "",
        hide_default_value = true
    )]
    pub webhook_secrets: WebhookSecrets,
    /// Seconds a signature's timestamp may lie in the past (a later one is accepted, as
    /// Stripe's libraries do).
    #[arg(
        global = true,
        long,
        env = "STRIPE_WEBHOOK_TOLERANCE_SECS",
        default_value_t = 300
    )]
    pub webhook_tolerance_secs: u64,
    /// The Stripe mode this deployment serves (live or test); events of the other mode are
    /// acknowledged and ignored. Default: what STRIPE_API_KEY's prefix says. Required with
    /// webhook secrets when STRIPE_API_KEY is not set.
    #[arg(global = true, long = "stripe-mode", env = "STRIPE_MODE", value_enum)]
    pub mode: Option<StripeMode>,
    /// Stripe prices (price_...) and products (prod_...) whose subscriptions grant Pro,
    /// comma-separated. Empty: any subscription grants Pro. After a change, restart and run
    /// stripe-sync: stored subscriptions keep the answer they were written with.
    #[arg(
        global = true,
        long = "pro-price-ids",
        env = "PRO_PRICE_IDS",
        value_name = "PRICE_OR_PRODUCT,...",
        value_parser = PricesParser,
        default_value = "",
        hide_default_value = true
    )]
    pub pro_prices: ProPrices,
}

impl StripeSettings {
    /// The settings with the mode settled (`STRIPE_MODE`, else `api_key`'s prefix): required
    /// when webhooks are on.
    pub fn resolved(&self, api_key: Option<&str>) -> Result<Self, ModeError> {
        let mode = mode::resolve(self.mode, api_key)?;
        if mode.is_none() && !self.webhook_secrets.is_empty() {
            return Err(ModeError::Unknown);
        }
        Ok(Self {
            mode,
            ..self.clone()
        })
    }
}

/// How long and how many connections the server keeps (docs/operations.md, "Connections").
/// Each bound is what a slow or hostile client can hold: a socket, a task and a buffer.
#[derive(clap::Args, Clone, Debug)]
pub struct ConnectionSettings {
    /// Seconds a client has to send a whole request head, counted from the connection's
    /// opening or the head's first byte; then the connection is closed.
    #[arg(
        global = true,
        long,
        env = "HEADER_READ_TIMEOUT_SECS",
        default_value_t = 10,
        value_parser = clap::value_parser!(u64).range(1..)
    )]
    pub header_read_timeout_secs: u64,
    /// Seconds a kept-alive connection may sit between requests before it is closed.
    #[arg(
        global = true,
        long,
        env = "IDLE_TIMEOUT_SECS",
        default_value_t = 75,
        value_parser = clap::value_parser!(u64).range(1..)
    )]
    pub idle_timeout_secs: u64,
    /// Seconds a client has to send a request's whole body once its head arrived; then 408.
    #[arg(
        global = true,
        long,
        env = "BODY_READ_TIMEOUT_SECS",
        default_value_t = 10,
        value_parser = clap::value_parser!(u64).range(1..)
    )]
    pub body_read_timeout_secs: u64,
    /// Connections served at once; further ones wait in the listen queue until one closes.
    /// Lowered, with a warning, to what the open-file limit allows.
    #[arg(
        global = true,
        long,
        env = "MAX_CONNECTIONS",
        default_value_t = 4096,
        value_parser = clap::value_parser!(u32).range(1..)
    )]
    pub max_connections: u32,
    /// Largest request head (request line and headers) in bytes; larger ones are refused.
    /// It is also the most a connection buffers while its head arrives.
    #[arg(
        global = true,
        long,
        env = "MAX_HEADER_BYTES",
        default_value_t = 16_384,
        value_parser = clap::value_parser!(u32).range(8192..=1_048_576)
    )]
    pub max_header_bytes: u32,
    /// Seconds SIGTERM waits for requests in flight; then the remaining connections are
    /// closed and the process exits.
    #[arg(global = true, long, env = "SHUTDOWN_GRACE_SECS", default_value_t = 20)]
    pub shutdown_grace_secs: u64,
}

impl ConnectionSettings {
    pub fn header_read_timeout(&self) -> Duration {
        Duration::from_secs(self.header_read_timeout_secs.max(1))
    }

    pub fn idle_timeout(&self) -> Duration {
        Duration::from_secs(self.idle_timeout_secs.max(1))
    }

    pub fn body_read_timeout(&self) -> Duration {
        Duration::from_secs(self.body_read_timeout_secs.max(1))
    }

    pub fn shutdown_grace(&self) -> Duration {
        Duration::from_secs(self.shutdown_grace_secs)
    }
}

impl Default for ConnectionSettings {
    fn default() -> Self {
        Self {
            header_read_timeout_secs: 10,
            idle_timeout_secs: 75,
            body_read_timeout_secs: 10,
            max_connections: 4096,
            max_header_bytes: 16_384,
            shutdown_grace_secs: 20,
        }
    }
}

/// Product rules and input caps.
#[derive(clap::Args, Clone, Debug)]
pub struct Limits {
    /// Live synced sessions a Free account may keep.
    #[arg(global = true, long, env = "FREE_SESSION_LIMIT", default_value_t = 3)]
    pub free_session_limit: u64,
    /// Days a Free account's deleted session can be restored.
    #[arg(global = true, long, env = "RETENTION_DAYS_FREE", default_value_t = 7)]
    pub retention_days_free: i64,
    /// Days a Pro account's deleted session can be restored.
    #[arg(global = true, long, env = "RETENTION_DAYS_PRO", default_value_t = 30)]
    pub retention_days_pro: i64,
    /// Largest request body, in bytes.
    #[arg(global = true, long, env = "MAX_BODY_BYTES", default_value_t = 65_536)]
    pub max_body_bytes: usize,
    /// Largest page a list endpoint returns, 1 to 1000. Checked at start: 0 emptied every
    /// list, and huge values made sea-query panic or `limit + 1` overflow.
    #[arg(
        global = true,
        long,
        env = "MAX_PAGE_SIZE",
        default_value_t = 100,
        value_parser = clap::value_parser!(u64).range(1..=1000)
    )]
    pub max_page_size: u64,
    /// Requests one bearer token may have in flight at once, reads included; more wait (as
    /// long as a lock wait, DB_LOCK_TIMEOUT_MS) and then answer 503 `busy`.
    #[arg(
        global = true,
        long,
        env = "TOKEN_CONCURRENCY",
        default_value_t = 4,
        value_parser = clap::value_parser!(u32).range(1..)
    )]
    pub token_concurrency: u32,
    /// Requests one bearer token may start per second, reads included: a burst of this many,
    /// then one every 1/N s; a request whose turn is further off than a lock wait
    /// (DB_LOCK_TIMEOUT_MS) is answered 429 `rate_limited` with `Retry-After`. 0: no limit.
    #[arg(
        global = true,
        long,
        env = "TOKEN_REQUESTS_PER_SEC",
        default_value_t = 100
    )]
    pub token_requests_per_sec: u32,
    /// Failed bearer tokens (missing, malformed, unknown, revoked) one peer address may send
    /// per minute: a burst of this many, then one every 60/N seconds. Past it, a request
    /// without a token this instance lately saw valid is answered 429
    /// `too_many_unknown_tokens` (with `Retry-After`) without a query, after 1 to 2 s.
    /// 0: no limit.
    #[arg(
        global = true,
        long,
        env = "UNKNOWN_TOKENS_PER_PEER",
        default_value_t = 60
    )]
    pub unknown_tokens_per_peer: u32,
    /// Count the peer as the last address of `X-Forwarded-For` instead of the connection's
    /// (`true` only behind a load balancer that appends it; otherwise clients could pick any
    /// address).
    #[arg(
        global = true,
        long,
        env = "TRUST_X_FORWARDED_FOR",
        default_value_t = false,
        action = clap::ArgAction::Set,
        value_parser = clap::builder::BoolishValueParser::new()
    )]
    pub trust_x_forwarded_for: bool,
    /// Rows the retention purge deletes per batch (one short transaction each).
    #[arg(global = true, long, env = "PURGE_BATCH_SIZE", default_value_t = 1000)]
    pub purge_batch_size: u64,
    /// Milliseconds the purge pauses between batches, to leave room for live traffic.
    #[arg(global = true, long, env = "PURGE_PAUSE_MS", default_value_t = 0)]
    pub purge_pause_ms: u64,
}

impl Limits {
    pub fn retention(&self, tier: entity::Tier) -> Duration {
        let days = match tier {
            entity::Tier::Free => self.retention_days_free,
            entity::Tier::Pro => self.retention_days_pro,
        };
        Duration::from_secs(u64::try_from(days.max(0)).unwrap_or(0) * 86_400)
    }
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            free_session_limit: 3,
            retention_days_free: 7,
            retention_days_pro: 30,
            max_body_bytes: 65_536,
            max_page_size: 100,
            token_concurrency: 4,
            token_requests_per_sec: 100,
            unknown_tokens_per_peer: 60,
            trust_x_forwarded_for: false,
            purge_batch_size: 1000,
            purge_pause_ms: 0,
        }
    }
}

impl Default for StripeSettings {
    fn default() -> Self {
        Self {
            webhook_secrets: WebhookSecrets::default(),
            webhook_tolerance_secs: 300,
            mode: None,
            pro_prices: ProPrices::default(),
        }
    }
}

/// A value that may hold a password (a database URL), kept from `Debug`. Any text is accepted
/// here; the URL is checked where it is opened, with a message that hides the password.
fn secret_text(value: &str) -> Result<SecretString, std::convert::Infallible> {
    Ok(SecretString::from(value))
}

/// Parses the secrets list for clap without echoing it: clap's own "invalid value" message
/// would print the secrets.
#[derive(Clone)]
struct SecretsParser;

impl TypedValueParser for SecretsParser {
    type Value = WebhookSecrets;

    fn parse_ref(
        &self,
        _cmd: &clap::Command,
        _arg: Option<&clap::Arg>,
        value: &OsStr,
    ) -> Result<WebhookSecrets, clap::Error> {
        let text = value.to_str().ok_or_else(|| {
            clap::Error::raw(
                ErrorKind::InvalidUtf8,
                "STRIPE_WEBHOOK_SECRETS is not valid UTF-8\n",
            )
        })?;
        WebhookSecrets::parse(text)
            .map_err(|err| clap::Error::raw(ErrorKind::ValueValidation, format!("{err}\n")))
    }
}

/// Parses `PRO_PRICE_IDS` for clap with one line naming the refused entry's position: clap's
/// own "invalid value" message would print the whole list.
#[derive(Clone)]
struct PricesParser;

impl TypedValueParser for PricesParser {
    type Value = ProPrices;

    fn parse_ref(
        &self,
        _cmd: &clap::Command,
        _arg: Option<&clap::Arg>,
        value: &OsStr,
    ) -> Result<ProPrices, clap::Error> {
        let text = value.to_str().ok_or_else(|| {
            clap::Error::raw(ErrorKind::InvalidUtf8, "PRO_PRICE_IDS is not valid UTF-8\n")
        })?;
        ProPrices::parse(text)
            .map_err(|err| clap::Error::raw(ErrorKind::ValueValidation, format!("{err}\n")))
    }
}
