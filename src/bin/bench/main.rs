//! Benchmarks on PostgreSQL (results in docs/benchmarks.md; never timed tests):
//!
//! * `bench m006`: the billing migration under live traffic, beside the card's SQL;
//! * `bench webhooks`: Stripe webhook deliveries per second and their latency;
//! * `bench purge`: the retention purge of soft-deleted sessions under live traffic;
//! * `bench sync`: session sync requests per second and their latency, beside their SQL;
//! * `bench migrations`: every migration under live clients, on PostgreSQL and MariaDB;
//! * `bench fairness`: one user's latency while 1,000 clients send bad tokens, and while
//!   another user floods reads (printed only, no chart);
//! * `bench stripe-sync`: `billing stripe-sync` against a fake Stripe of up to millions of
//!   customers, held to Stripe's rate limit, beside that limit's floor.
//!
//! Each measures its own floor in the same run and prints its figures as ratios to it, and
//! writes an SVG chart of what it measured.
//!
//! `cargo run --release --bin bench -- <m006|webhooks|purge|sync|migrations|fairness|stripe-sync> --help`

mod about;
mod chart;
mod cpu;
mod fairness;
mod fake_stripe;
mod fewest_statements;
mod live_migrations;
mod load;
mod m006;
mod migrations;
mod migrator_log;
mod purge;
mod replay;
mod stripe_sync;
mod sync;
mod webhooks;

use clap::{Parser, Subcommand};

#[derive(Parser, Debug)]
#[command(about = "Benchmarks of the billing schema and API on PostgreSQL")]
struct Cli {
    #[command(subcommand)]
    bench: Bench,
}

#[derive(Subcommand, Debug)]
enum Bench {
    /// m006 under concurrent writers and readers, beside the card's SQL.
    M006(m006::Args),
    /// Stripe webhook deliveries per second with concurrent senders.
    Webhooks(webhooks::Args),
    /// The retention purge under concurrent writers and readers.
    Purge(purge::Args),
    /// Session sync (PUT and GET /v1/sessions) from many users, beside its SQL alone.
    Sync(sync::Args),
    /// Every migration, up, down and up again, under clients, on PostgreSQL and MariaDB.
    Migrations(migrations::Args),
    /// One user's latency while others send bad tokens or flood reads.
    Fairness(fairness::Args),
    /// `billing stripe-sync` against a fake Stripe held to a rate limit, at each size.
    StripeSync(stripe_sync::Args),
    /// The other clients of one `fairness` phase, in their own process (run by `fairness`).
    #[command(hide = true)]
    FairnessFlood(fairness::FloodArgs),
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let result = match Cli::parse().bench {
        Bench::M006(args) => m006::run(args).await,
        Bench::Webhooks(args) => webhooks::run(args).await,
        Bench::Purge(args) => purge::run(args).await,
        Bench::Sync(args) => sync::run(args).await,
        Bench::Migrations(args) => migrations::run(args).await,
        Bench::Fairness(args) => fairness::run(args).await,
        Bench::StripeSync(args) => stripe_sync::run(args).await,
        Bench::FairnessFlood(args) => fairness::flood(args).await,
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("error: {message}");
            std::process::ExitCode::FAILURE
        }
    }
}
