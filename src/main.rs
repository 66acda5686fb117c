//! `cargo run`: the billing API server, plus the account commands a newcomer needs.

// The release build of this binary stopped with "queries overflow the depth limit!" while
// computing the layout of `main`'s future (rustc 1.95, depth 128 by default); the debug build
// did not. The future nests every awaited service future of every subcommand. CI builds
// release (`.ci/run`), so a future regression shows there.
#![recursion_limit = "256"]

mod logging;

use std::process::ExitCode;

use api::Settings;
use api::domain::Email;
use api::service::{accounts, stripe_backfill};
use clap::{Parser, Subcommand};

#[derive(Parser, Debug)]
#[command(
    name = "billing",
    version,
    about = "The billing API: synced sessions and billing state"
)]
struct Cli {
    #[command(flatten)]
    settings: Settings,
    /// Log lines as text, or as one JSON object per line.
    #[arg(
        global = true,
        long,
        env = "LOG_FORMAT",
        value_enum,
        default_value_t = logging::LogFormat::Text
    )]
    log_format: logging::LogFormat,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Serve the HTTP API (the default).
    Serve,
    /// Create a user and print their first API token (shown once).
    CreateUser {
        #[arg(long)]
        email: String,
    },
    /// Print a new API token for an existing user (shown once).
    CreateToken {
        #[arg(long)]
        email: String,
    },
    /// Revoke every API token of a user.
    RevokeTokens {
        #[arg(long)]
        email: String,
    },
    /// Hard-delete sessions soft-deleted longer ago than their tier's retention window
    /// (batch size and pause: --purge-batch-size, --purge-pause-ms).
    PurgeDeleted,
    /// Backfill and repair customer links and billing columns from Stripe's API
    /// (STRIPE_API_KEY; docs/stripe.md).
    StripeSync(stripe_backfill::SyncArgs),
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = match parse_args() {
        Ok(cli) => cli,
        Err(code) => return code,
    };
    logging::init(cli.log_format);
    match run(cli).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            tell(&format!("error: {message}"));
            ExitCode::FAILURE
        }
    }
}

/// The command line and the environment, parsed. clap's own refusal runs over several lines
/// (the error, a tip, the usage, "For more information"); a setting a user got wrong
/// (`LOG_FORMAT=yaml`) gets one `error:` line, like every other refusal, with clap's exit
/// code 2. `--help` and `--version` print as clap prints them.
fn parse_args() -> Result<Cli, ExitCode> {
    match Cli::try_parse() {
        Ok(cli) => Ok(cli),
        Err(err) if !err.use_stderr() => err.exit(),
        Err(err) => {
            tell(&one_line(&err.render().to_string()));
            Err(ExitCode::from(2))
        }
    }
}

/// clap's rendered error on one line: its text lines joined, without the usage and the
/// pointer to `--help`.
fn one_line(rendered: &str) -> String {
    rendered
        .lines()
        .map(str::trim)
        .filter(|line| {
            !line.is_empty()
                && !line.starts_with("Usage:")
                && !line.starts_with("For more information")
        })
        .collect::<Vec<_>>()
        .join(" ")
}

async fn run(cli: Cli) -> Result<(), String> {
    let settings = cli.settings;
    match cli.command.unwrap_or(Command::Serve) {
        Command::Serve => {
            let app = api::Application::build(&settings)
                .await
                .map_err(|e| e.to_string())?;
            let addr = app.local_addr().map_err(|e| e.to_string())?;
            if let Some(metrics) = app.metrics_addr().map_err(|e| e.to_string())? {
                tracing::info!("metrics on http://{metrics}/metrics");
            }
            tracing::info!("listening on http://{addr}");
            app.run_until(api::startup::shutdown_signal())
                .await
                .map_err(|e| e.to_string())
        }
        Command::CreateUser { email } => {
            let db = migrated(&settings).await?;
            let email = Email::parse(&email).map_err(|e| e.to_string())?;
            let (user, token) = accounts::create_user(&db, &email)
                .await
                .map_err(|e| e.to_string())?;
            say(&format!(
                "created user {} <{}>\ntoken (shown once): {token}",
                user.id, user.email
            ))
        }
        Command::CreateToken { email } => {
            let db = migrated(&settings).await?;
            let email = Email::parse(&email).map_err(|e| e.to_string())?;
            let user = accounts::find_by_email(&db, &email)
                .await
                .map_err(|e| e.to_string())?;
            let token = api::auth::issue(&db, user.id, Some("created from the CLI".to_owned()))
                .await
                .map_err(|e| e.to_string())?;
            say(&format!("token (shown once): {token}"))
        }
        Command::PurgeDeleted => purge(&settings).await,
        Command::StripeSync(args) => stripe_sync(&settings, &args).await,
        Command::RevokeTokens { email } => {
            let db = migrated(&settings).await?;
            let email = Email::parse(&email).map_err(|e| e.to_string())?;
            let user = accounts::find_by_email(&db, &email)
                .await
                .map_err(|e| e.to_string())?;
            let n = api::auth::revoke_all(&db, user.id)
                .await
                .map_err(|e| e.to_string())?;
            say(&format!("revoked {n} token(s) of {}", user.email))
        }
    }
}

async fn purge(settings: &Settings) -> Result<(), String> {
    let db = migrated(settings).await?;
    let purged = api::service::retention::purge_expired(&db, &settings.limits, |so_far| {
        tell(&format!(
            "purged {} session(s) in {} batch(es)",
            so_far.removed, so_far.batches
        ))
    })
    .await
    .map_err(|e| format!("purge failed: {e}"))?;
    say(&format!(
        "removed {} session(s) soft-deleted past their retention window (Free {} days, Pro {} days)",
        purged.removed, settings.limits.retention_days_free, settings.limits.retention_days_pro
    ))
}

async fn stripe_sync(settings: &Settings, args: &stripe_backfill::SyncArgs) -> Result<(), String> {
    // A missing key or a bad flag fails before the database is opened.
    let mut client = args
        .client(settings.stripe.mode)
        .map_err(|e| e.to_string())?;
    let db = migrated(settings).await?;
    let metrics = match settings.metrics_addr {
        Some(addr) => Some(stripe_sync_metrics(settings, addr).await?),
        None => None,
    };
    let tally = stripe_backfill::sync(
        &db,
        &mut client,
        args.customer.as_deref(),
        args.link_by_email,
        args.writers_within(settings.db_max_connections, db.get_database_backend()),
        &settings.stripe.pro_prices,
        |note| match note {
            stripe_backfill::Note::Progress(tally) => {
                api::metrics::stripe_sync_progress(&tally.counts());
                tell(&format!("stripe-sync: {tally}"))
            }
            stripe_backfill::Note::Customer { customer, detail } => {
                tell(&format!("stripe-sync: customer {customer}: {detail}"))
            }
        },
    )
    .await
    .map_err(|e| e.to_string());
    if let Some(metrics) = metrics {
        metrics.stop().await;
    }
    let tally = tally?;
    say(&format!("stripe-sync: {tally}"))?;
    if tally.failed > 0 {
        return Err(format!(
            "stripe-sync: {} customer(s) or subscription(s) failed (see above); the rest is synced",
            tally.failed
        ));
    }
    Ok(())
}

/// stripe-sync's progress on `METRICS_ADDR` while it runs (a long first backfill is worth
/// watching); the listener closes when the run ends.
async fn stripe_sync_metrics(
    settings: &Settings,
    addr: std::net::SocketAddr,
) -> Result<api::startup::MetricsServer, String> {
    let metrics =
        api::metrics::Metrics::install().map_err(|e| format!("cannot record metrics: {e}"))?;
    let connections = api::serve::ConnectionLimits::fitted(&settings.connections, 0);
    let server = api::startup::MetricsServer::start(addr, metrics, &connections)
        .await
        .map_err(|e| e.to_string())?;
    tracing::info!("stripe-sync: metrics on http://{}/metrics", server.addr);
    Ok(server)
}

/// One line of a command's result on standard output. A reader that closed the pipe early
/// (`| head -1`) ends it quietly, where `println!` would panic; any other write failure is
/// an error.
fn say(line: &str) -> Result<(), String> {
    use std::io::Write;
    let mut stdout = std::io::stdout().lock();
    match writeln!(stdout, "{line}").and_then(|()| stdout.flush()) {
        Err(err) if err.kind() != std::io::ErrorKind::BrokenPipe => {
            Err(format!("cannot write the output: {err}"))
        }
        _ => Ok(()),
    }
}

/// One line on stderr, for people watching. Not `eprintln!`, which panics when the reader of
/// stderr has gone away (`billing stripe-sync 2>&1 | head -1`): a line nobody can read is
/// dropped, and the command goes on to its end and its exit status.
fn tell(line: &str) {
    use std::io::Write;
    let _ = writeln!(std::io::stderr().lock(), "{line}");
}

/// The database, migrated (a newcomer's first `create-user` works on a fresh clone).
async fn migrated(settings: &Settings) -> Result<api::db::Db, String> {
    let (db, _) = api::startup::open_migrated(settings)
        .await
        .map_err(|e| e.to_string())?;
    Ok(db)
}
