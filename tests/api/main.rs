//! The API over real HTTP, on every backend, each test with its own database and server.

// `cargo build --release --all-targets` stopped here with "queries overflow the depth limit!"
// (the layout of `helpers::spawn_app_on`'s future, as in src/main.rs); debug builds did not.
#![recursion_limit = "256"]

#[path = "../support/mod.rs"]
mod support;

mod fake_stripe;
mod helpers;

mod auth;
mod binary;
mod busy;
mod connections;
mod default_database;
mod edges;
mod extractors;
mod fairness;
mod faults;
mod limits;
mod logs;
mod metrics;
mod migrate_mode;
mod openapi;
mod pool;
mod pooler;
mod redaction;
mod retention;
mod sessions;
mod storage;
mod stripe;
mod stripe_model;
mod stripe_pages;
mod stripe_prices;
mod stripe_rules;
mod stripe_sync_command;
mod three_instances;
mod throwaway_mariadb;
mod throwaway_pg;
