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
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: String,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot read the bound address: {0}")]
    LocalAddr(#[source] std::io::Error),
}
