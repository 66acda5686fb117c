//! Why the server (or a command of `billing`) could not start, by kind.

use migration::connect::ConnectError;

#[derive(Debug, thiserror::Error)]
pub enum StartupError {
    #[error(transparent)]
    Database(#[from] ConnectError),
    /// `migration up`'s own error, as its CLI would print it.
    #[error(transparent)]
    Migration(#[from] migration::Error),
    #[error(
        "the database has {} pending migration(s) ({}), and --migrate check (MIGRATE=check) does \
         not apply them: run `migration up` first (the deploy step), or start with --migrate \
         on-start",
        pending.len(),
        pending.join(", ")
    )]
    PendingMigrations { pending: Vec<String> },
    #[error(
        "DATABASE_URL leads to a pooler that refused the `options` startup parameter (PgBouncer \
         does): behind a transaction-mode pooler set DB_POOLER=transaction (docs/operations.md)"
    )]
    PoolerRefusedOptions,
    #[error(
        "lock_timeout is {found} on DATABASE_URL's connections, not DB_LOCK_TIMEOUT_MS={expected}: \
         something between the API and PostgreSQL dropped the setting (a pooler with \
         ignore_startup_parameters = options?); behind a transaction-mode pooler set \
         DB_POOLER=transaction"
    )]
    LockTimeoutNotInForce { found: String, expected: u64 },
    #[error(
        "DB_POOLER=transaction: --migrate on-start and check need MIGRATION_DATABASE_URL, a direct \
         connection to PostgreSQL (the migration lock is a session's, which the pooler does not \
         keep); or run `migration up` as a deploy step and start with --migrate skip"
    )]
    MigrationsNeedDirectUrl,
    #[error("cannot read lock_timeout on DATABASE_URL's connections: {detail}")]
    SettingsUnreadable { detail: String },
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: String,
        #[source]
        source: std::io::Error,
    },
    /// Another metrics recorder holds the process's slot (only an embedding program could).
    #[error("cannot record metrics: {0}")]
    MetricsRecorder(String),
    #[error("cannot read the bound address: {0}")]
    LocalAddr(#[source] std::io::Error),
    /// Webhooks on, and the Stripe mode not settled (or contradicted).
    #[error(transparent)]
    StripeMode(#[from] crate::stripe::mode::ModeError),
    #[error("server error: {0}")]
    Serve(#[source] std::io::Error),
}
