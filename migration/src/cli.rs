//! The `migration` command: SeaORM's `up|down|status|fresh|refresh|reset` with the same flags
//! (`sea-orm-cli migrate ...` runs this binary), plus `sql`, a dry run.
//!
//! What it adds to the stock runner: a database-wide lock around every command that changes
//! the schema, checksums of applied migrations (`checksum.rs`), progress on stderr, and one
//! readable message (never a panic) when anything fails: errors are typed ([`Error`]) up to
//! [`main`], which prints them.

use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand, ValueEnum};
use sea_orm_migration::MigratorTrait;
use sea_orm_migration::sea_orm::{DatabaseConnection, DbBackend, DbErr};

use crate::Migrator;
use crate::checksum::{self, Check};
use crate::connect::{self, DatabaseUrl};
use crate::dry_run::{self, Listed};
use crate::error::{Error, catching, raise};
use crate::lock::{self, MigrationLock};
use crate::settings::{LockSettings, env_number};
use crate::step::Direction;

#[derive(Parser, Debug)]
#[command(
    name = "migration",
    version,
    about = "Apply, roll back and inspect the billing schema"
)]
pub struct Cli {
    #[arg(short = 'v', long, global = true, help = "Show debug messages")]
    pub verbose: bool,

    #[arg(
        short = 's',
        long,
        global = true,
        env = "DATABASE_SCHEMA",
        help = "PostgreSQL schema (default: public); ignored by MySQL and SQLite"
    )]
    pub database_schema: Option<String>,

    #[arg(
        short = 'u',
        long,
        global = true,
        env = "MIGRATION_DATABASE_URL",
        // The URL may hold a password: `--help` must not print the environment's value.
        hide_env_values = true,
        help = "Database URL: a direct connection, not a transaction-mode pooler (default: \
                DATABASE_URL, else the embedded SQLite file data/billing.sqlite)"
    )]
    pub database_url: Option<String>,

    #[arg(
        long,
        global = true,
        env = "DATABASE_CONNECT_TIMEOUT",
        default_value_t = connect::DEFAULT_CONNECT_TIMEOUT.as_secs(),
        help = "Seconds to keep trying to reach the database server"
    )]
    pub connect_timeout: u64,

    #[command(subcommand)]
    pub command: Option<Command>,
}

#[derive(Subcommand, Debug, Clone)]
pub enum Command {
    #[command(about = "Drop all tables and views, then reapply all migrations")]
    Fresh,
    #[command(about = "Roll back all applied migrations, then reapply all migrations")]
    Refresh,
    #[command(about = "Roll back all applied migrations")]
    Reset,
    #[command(
        about = "Show which migrations are applied and which are pending, and any object an \
                 applied migration made that is missing (DRIFT; exit code 1)"
    )]
    Status,
    #[command(
        about = "Run again the steps of applied migrations whose objects are missing (what \
                 `status` reports as DRIFT)"
    )]
    Repair,
    #[command(about = "Apply pending migrations (the default)")]
    Up {
        #[arg(short, long, help = "Number of pending migrations to apply")]
        num: Option<u32>,
    },
    #[command(about = "Roll back applied migrations")]
    Down {
        #[arg(
            short,
            long,
            default_value = "1",
            help = "Number of applied migrations to roll back"
        )]
        num: u32,
    },
    #[command(about = "Print the SQL that up or down would run, without running it")]
    Sql(SqlArgs),
    #[command(
        about = "Record the current plan of an applied migration as its checksum, accepting a \
                 deliberate edit that `up` refuses"
    )]
    AcceptChecksum {
        #[arg(help = "The migration's name, e.g. m006_billing_fields")]
        name: String,
    },
}

#[derive(clap::Args, Debug, Clone)]
pub struct SqlArgs {
    #[arg(value_enum, default_value_t = SqlDirection::Up)]
    pub direction: SqlDirection,
    #[arg(
        long,
        help = "Render for this backend (postgres, mysql, sqlite) without connecting; \
                prints every migration unless --migration narrows it"
    )]
    pub backend: Option<String>,
    #[arg(long, help = "Only this migration, e.g. m006_billing_fields")]
    pub migration: Option<String>,
    #[arg(
        short,
        long,
        help = "With a database: how many pending (up) or applied (down) migrations"
    )]
    pub num: Option<u32>,
}

#[derive(ValueEnum, Clone, Copy, Debug)]
pub enum SqlDirection {
    Up,
    Down,
}

/// A line on stderr; a reader that went away (`2>&1 | head -5`) gets nothing, where
/// `eprintln!` would panic.
fn note(line: &str) {
    use std::io::Write;
    let _ = writeln!(std::io::stderr().lock(), "{line}");
}

/// Parses the command line, runs it, and turns any failure into a message and exit code 1.
pub async fn main() -> ExitCode {
    let cli = Cli::parse();
    init_tracing(cli.verbose);
    match run(cli).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            note(&format!("error: {err}"));
            ExitCode::FAILURE
        }
    }
}

fn init_tracing(verbose: bool) {
    let filter = if verbose {
        "debug"
    } else {
        "migration=info,sea_orm_migration=info"
    };
    // Colour codes only on a terminal: in a file or a CI log they are noise.
    let colour = std::io::IsTerminal::is_terminal(&std::io::stderr())
        && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty());
    // Without `log_internal_errors(false)`, a write to a closed stderr (`2>&1 | head -5`) is
    // reported with `eprintln!`, which panics on that same closed stderr.
    let builder = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .log_internal_errors(false)
        .with_ansi(colour)
        .with_env_filter(tracing_subscriber::EnvFilter::new(filter));
    let _ = if verbose {
        builder.try_init()
    } else {
        builder
            .without_time()
            .with_target(false)
            .with_level(false)
            .try_init()
    };
}

/// The API's database URL, the migrator's fallback after `MIGRATION_DATABASE_URL`.
const DATABASE_URL_ENV: &str = "DATABASE_URL";

pub async fn run(cli: Cli) -> Result<(), Error> {
    // The engine's knobs are read here, at the edge, and handed to it.
    let engine = crate::error::catching(async { crate::step::EngineSettings::from_env() }).await?;
    crate::step::configure(engine);
    let command = cli.command.clone().unwrap_or(Command::Up { num: None });
    if let Command::Sql(args) = &command
        && let Some(name) = &args.backend
    {
        let schema = connect::chosen_schema(cli.database_schema.as_deref())?
            .unwrap_or(crate::schema::DEFAULT_SCHEMA);
        return print_sql_offline(name, schema, args);
    }
    // -u, else MIGRATION_DATABASE_URL (clap), else the URL the API uses.
    let raw_url = cli
        .database_url
        .clone()
        .or_else(|| std::env::var(DATABASE_URL_ENV).ok());
    let url = connect::resolve_url(raw_url.as_deref())?;
    let timeout = Duration::from_secs(cli.connect_timeout.max(1));
    let schema = cli.database_schema.as_deref();
    let db = match command {
        Command::Status | Command::Sql(_) => {
            connect::open_to_read(&url, schema, timeout, 4).await?
        }
        _ => connect::open(&url, schema, timeout, 4).await?,
    };
    let result = run_with(&db, &url, &command).await;
    let _ = db.close().await;
    result
}

/// Applies every pending migration under the migrator's lock (what the API does on start).
pub async fn migrate_up(db: &DatabaseConnection, url: &DatabaseUrl) -> Result<(), Error> {
    run_with(db, url, &Command::Up { num: None }).await
}

/// The history as a server of this build reads it at start, without writing
/// ([`crate::rollback`]: one rule for `--migrate on-start` and `check`). Behind a
/// transaction-mode pooler it refuses first, as every migrator command does: the reading
/// itself may fail half-way there, and `on-start` would go on to migrate through it.
pub async fn history_for_serving(
    db: &DatabaseConnection,
    url: &DatabaseUrl,
) -> Result<crate::rollback::History, Error> {
    if url.backend == DbBackend::Postgres {
        crate::pooler::refuse_transaction_pooler(url).await?;
    }
    crate::rollback::read(db)
        .await
        .map_err(|err| err.scrubbed(url))
}

/// Runs `command`; a database message in its error never shows the URL's password (a server
/// may quote what it was sent).
async fn run_with(
    db: &DatabaseConnection,
    url: &DatabaseUrl,
    command: &Command,
) -> Result<(), Error> {
    run_unscrubbed(db, url, command)
        .await
        .map_err(|err| err.scrubbed(url))
}

async fn run_unscrubbed(
    db: &DatabaseConnection,
    url: &DatabaseUrl,
    command: &Command,
) -> Result<(), Error> {
    // First: behind a transaction-mode pooler even reading the history may fail half-way
    // (a prepared statement bound on another server connection), and the lock would not hold.
    if url.backend == DbBackend::Postgres {
        crate::pooler::refuse_transaction_pooler(url).await?;
    }
    check_history(db).await?;
    match command {
        Command::Status => return print_status(db).await,
        Command::Sql(args) => return print_sql_pending(db, args).await,
        _ => {}
    }
    let max_wait = Duration::from_secs(env_number(
        lock::LOCK_WAIT_ENV,
        lock::DEFAULT_LOCK_WAIT.as_secs(),
    )?);
    let held = MigrationLock::acquire(url, max_wait).await?;
    let result = lock::while_held(held.holder(), url, catching(change_schema(db, command))).await;
    held.release().await;
    result
}

/// Everything that changes the schema; the caller holds the migration lock. Typed errors
/// travel as [`raise`]d `DbErr`s here, like those of the migrations inside SeaORM's runner.
async fn change_schema(db: &DatabaseConnection, command: &Command) -> Result<(), DbErr> {
    if matches!(
        command,
        Command::Up { .. } | Command::Refresh | Command::Fresh
    ) {
        crate::charset::require_utf8mb4(db).await.map_err(raise)?;
    }
    match command {
        Command::Up { num } => {
            // Refused before anything runs: a changed migration means this build's idea of
            // the schema is not the database's.
            checksum::backfill_and_verify(db).await.map_err(raise)?;
            Migrator::up(db, *num).await
        }
        // A changed migration's `down` is edited code too: refused like `up`, unless accepted.
        Command::Down { num } => {
            checksum::backfill_and_verify(db).await.map_err(raise)?;
            Migrator::down(db, Some(*num)).await
        }
        Command::Refresh => {
            checksum::backfill_and_verify(db).await.map_err(raise)?;
            Migrator::refresh(db).await
        }
        Command::Reset => {
            checksum::backfill_and_verify(db).await.map_err(raise)?;
            // SeaORM's reset drops `seaql_migrations`; ours goes with it (it was left empty).
            Migrator::reset(db).await?;
            checksum::uninstall(db).await
        }
        // Views and tables in one transaction where DDL is transactional (`fresh.rs`). Our
        // checksum table goes with the tables, and `up` records anew.
        Command::Fresh => crate::fresh::run(db).await,
        Command::Repair => {
            // A changed migration's steps are edited code: refused like `up`.
            checksum::backfill_and_verify(db).await.map_err(raise)?;
            let repaired = crate::drift::repair(db).await?;
            let left = crate::drift::find(db).await?;
            if !left.is_empty() {
                return Err(raise(Error::Drift {
                    found: left.iter().map(ToString::to_string).collect(),
                }));
            }
            if repaired.is_empty() {
                tracing::info!(
                    "nothing to repair: every object of the applied migrations is there"
                );
            } else {
                tracing::info!("repaired {} missing object(s)", repaired.len());
            }
            Ok(())
        }
        Command::AcceptChecksum { name } => {
            let sum = checksum::accept(db, name).await.map_err(raise)?;
            tracing::info!("recorded the current plan of {name} as applied (sha256 {sum})");
            Ok(())
        }
        Command::Status | Command::Sql(_) => Ok(()),
    }
}

/// Refuses to go on when the database records a migration this build does not have: the
/// migrator runs code, and an old one must not change a newer schema (a server may serve it:
/// [`crate::rollback`]).
async fn check_history(db: &DatabaseConnection) -> Result<(), Error> {
    let known: Vec<String> = migration_names();
    let unknown: Vec<String> = crate::rollback::recorded_versions(db)
        .await?
        .into_iter()
        .filter(|version| !known.contains(version))
        .collect();
    if unknown.is_empty() {
        return Ok(());
    }
    Err(Error::UnknownApplied { versions: unknown })
}

/// Reads the history without writing: no `seaql_migrations` is created where there is none
/// (a read-only user or a read-only SQLite file must be able to ask). An applied migration
/// whose plan differs from its recorded checksum is marked, and an object that an applied
/// migration made and the catalog lacks is listed as DRIFT, which makes the command fail.
async fn print_status(db: &DatabaseConnection) -> Result<(), Error> {
    let migrations = Migrator::get_migration_with_status_read_only(db).await?;
    let applied = checksum::applied(db).await?;
    let changed: Vec<String> = checksum::check_applied(db, &applied)
        .await?
        .into_iter()
        .filter(|(_, check)| *check == Check::Changed)
        .map(|(name, _)| name)
        .collect();
    let drift = crate::drift::find(db).await?;
    let mut listing = String::new();
    for migration in migrations {
        let mark = if changed.iter().any(|name| name == migration.name()) {
            "  CHANGED since it was applied (checksum differs): `up` refuses to run; see \
             `migration accept-checksum`"
        } else {
            ""
        };
        listing.push_str(&format!(
            "{:<32} {}{mark}\n",
            migration.name(),
            migration.status()
        ));
    }
    for item in &drift {
        listing.push_str(&format!("{item}\n"));
    }
    print_out(&listing)?;
    if drift.is_empty() {
        return Ok(());
    }
    Err(Error::Drift {
        found: drift.iter().map(|d| d.what.clone()).collect(),
    })
}

/// Writes `text` to standard output. A reader that closed the pipe early (`| head -1`,
/// `| grep -q`) has had what it wanted, so that ends the output quietly; `print!` would panic
/// there. Any other failure to write is an error.
fn print_out(text: &str) -> Result<(), Error> {
    use std::io::Write;
    let mut stdout = std::io::stdout().lock();
    match stdout
        .write_all(text.as_bytes())
        .and_then(|()| stdout.flush())
    {
        Err(err) if err.kind() != std::io::ErrorKind::BrokenPipe => Err(Error::Output(err)),
        _ => Ok(()),
    }
}

/// Every migration, oldest first, with its step plan where it has one.
fn listed(names: &[String]) -> Vec<Listed<'_>> {
    names
        .iter()
        .map(|name| Listed {
            name,
            plan: crate::plan_of(name),
        })
        .collect()
}

fn migration_names() -> Vec<String> {
    Migrator::migrations()
        .iter()
        .map(|m| m.name().to_owned())
        .collect()
}

fn print_sql_offline(backend_name: &str, schema: &str, args: &SqlArgs) -> Result<(), Error> {
    let backend = crate::parse_backend(backend_name)
        .ok_or_else(|| Error::UnknownBackend(backend_name.to_owned()))?;
    let names = migration_names();
    let all = listed(&names);
    let mut chosen = match &args.migration {
        Some(name) => vec![find(&all, name)?],
        None => all.clone(),
    };
    let direction = direction(args.direction);
    if direction == Direction::Down {
        chosen.reverse();
    }
    print_rendered(backend, schema, direction, &chosen)
}

async fn print_sql_pending(db: &DatabaseConnection, args: &SqlArgs) -> Result<(), Error> {
    let names = migration_names();
    let all = listed(&names);
    let direction = direction(args.direction);
    let chosen = if let Some(name) = &args.migration {
        vec![find(&all, name)?]
    } else {
        let statuses = Migrator::get_migration_with_status_read_only(db).await?;
        let wanted = match direction {
            Direction::Up => sea_orm_migration::MigrationStatus::Pending,
            Direction::Down => sea_orm_migration::MigrationStatus::Applied,
        };
        let names: Vec<String> = statuses
            .iter()
            .filter(|m| m.status() == wanted)
            .map(|m| m.name().to_owned())
            .collect();
        let mut chosen: Vec<Listed<'_>> = all
            .iter()
            .filter(|m| names.iter().any(|n| n == m.name))
            .copied()
            .collect();
        if direction == Direction::Down {
            chosen.reverse();
            chosen.truncate(args.num.unwrap_or(1) as usize);
        } else if let Some(num) = args.num {
            chosen.truncate(num as usize);
        }
        chosen
    };
    if chosen.is_empty() {
        note(&format!("nothing to {}", direction.as_str()));
    }
    let schema = crate::schema::of(db).await?.unwrap_or_default();
    print_rendered(db.get_database_backend(), &schema, direction, &chosen)
}

/// Prints what can be printed; then, if a plain migration was among them, says so as an error:
/// the SQL printed is not all that would run.
fn print_rendered(
    backend: DbBackend,
    schema: &str,
    direction: Direction,
    chosen: &[Listed<'_>],
) -> Result<(), Error> {
    let settings = LockSettings::from_env()?;
    print_out(&dry_run::render(
        backend, schema, direction, chosen, &settings,
    ))?;
    let plain: Vec<String> = chosen
        .iter()
        .filter(|m| m.plan.is_none())
        .map(|m| m.name.to_owned())
        .collect();
    if plain.is_empty() {
        return Ok(());
    }
    Err(Error::Unprintable { names: plain })
}

fn find<'a>(all: &[Listed<'a>], name: &str) -> Result<Listed<'a>, Error> {
    all.iter()
        .find(|m| m.name == name)
        .copied()
        .ok_or_else(|| Error::UnknownMigration {
            name: name.to_owned(),
            known: all.iter().map(|m| m.name.to_owned()).collect(),
        })
}

fn direction(direction: SqlDirection) -> Direction {
    match direction {
        SqlDirection::Up => Direction::Up,
        SqlDirection::Down => Direction::Down,
    }
}
