//! `migration sql`: the SQL that `up` or `down` would send, without touching the database.
//!
//! It prints the very step lists the runner executes, with the transactions and lock timeouts
//! the runner wraps them in, so what is reviewed (or linted with squawk) is what runs. On a
//! database where some steps are already done, the runner skips those (the comment above each
//! step says when).

use std::fmt::Write;

use sea_orm_migration::sea_orm::DbBackend;

use crate::PlannedMigration;
use crate::settings::LockSettings;
use crate::step::{Direction, Mode, lock_timeout_reset_sql, lock_timeout_sql};

/// A [`Mode::Backfill`] step: each statement in a `READ COMMITTED` transaction of its own,
/// the range placeholders named in a comment.
fn render_backfill(
    out: &mut String,
    backend: DbBackend,
    step: &crate::step::Step,
    ranges: Option<crate::step::KeyRanges>,
) {
    if let Some(r) = ranges {
        let _ = writeln!(
            out,
            "-- each statement once per range of about {} rows by {}.{}, from the smallest \
             value until none is left past the last range, bound as {}..{} (inclusive)",
            r.rows,
            r.table,
            r.key,
            crate::step::RANGE_START,
            crate::step::RANGE_END
        );
        if backend == DbBackend::Postgres {
            let _ = writeln!(
                out,
                "-- and in each range's transaction, before the statement: {};",
                crate::step::CUSTOM_PLANS
            );
        }
    }
    for sql in &step.statements {
        match backend {
            DbBackend::MySql => {
                out.push_str("SET TRANSACTION ISOLATION LEVEL READ COMMITTED;\nBEGIN;\n")
            }
            DbBackend::Postgres => {
                out.push_str("BEGIN;\nSET TRANSACTION ISOLATION LEVEL READ COMMITTED;\n")
            }
            _ => out.push_str("BEGIN;\n"),
        }
        let _ = writeln!(out, "{sql};");
        out.push_str("COMMIT;\n");
    }
}

pub fn backend_name(backend: DbBackend) -> &'static str {
    crate::dialect::of(backend).name()
}

/// A migration as the dry run sees it: its name, and its step plan unless it is a plain
/// `MigrationTrait` (whose `up` and `down` are code that can only be run, not printed).
#[derive(Clone, Copy)]
pub struct Listed<'a> {
    pub name: &'a str,
    pub plan: Option<&'a dyn PlannedMigration>,
}

/// Renders `migrations` (in the order given) for `backend`, naming the PostgreSQL `schema`; a
/// plain migration gets a comment saying its SQL cannot be shown.
pub fn render(
    backend: DbBackend,
    schema: &str,
    direction: Direction,
    migrations: &[Listed<'_>],
    settings: &LockSettings,
) -> String {
    let mut out = String::new();
    for listed in migrations {
        let Some(migration) = listed.plan else {
            let _ = writeln!(
                out,
                "-- {} {} ({}): a plain MigrationTrait; its SQL cannot be printed before it \
                 runs (its up/down are code, not a step plan)\n",
                listed.name,
                direction.as_str(),
                backend_name(backend),
            );
            continue;
        };
        let steps = crate::step::plan_in(migration, backend, schema, direction);
        let wrapped = migration
            .use_transaction()
            .unwrap_or(backend == DbBackend::Postgres);
        let _ = writeln!(
            out,
            "-- {} {} ({}): {} step(s){}",
            migration.name(),
            direction.as_str(),
            backend_name(backend),
            steps.len(),
            if wrapped { ", in one transaction" } else { "" }
        );
        if wrapped {
            out.push_str("BEGIN;\n");
        }
        for (i, step) in steps.iter().enumerate() {
            let _ = writeln!(
                out,
                "-- step {}/{}: {} ({})",
                i + 1,
                steps.len(),
                step.summary,
                step.done_when.describe()
            );
            let own_transaction =
                matches!(step.mode, Mode::LockTimed | Mode::TableCopy { .. }) && !wrapped;
            if own_transaction {
                out.push_str("BEGIN;\n");
                if let Some(sql) = lock_timeout_sql(backend, settings.lock_timeout) {
                    let _ = writeln!(out, "{sql};");
                }
                if let Some((sql, _)) =
                    crate::dialect::of(backend).row_lock_timeout_sql(settings.lock_timeout)
                {
                    let _ = writeln!(out, "-- the migrator's, not summed: {sql};");
                }
            }
            if let Mode::Backfill { ranges } = step.mode {
                render_backfill(&mut out, backend, step, ranges);
                continue;
            }
            for sql in &step.statements {
                let _ = writeln!(out, "{sql};");
            }
            if own_transaction {
                if let Some(sql) = lock_timeout_reset_sql(backend) {
                    let _ = writeln!(out, "{sql};");
                }
                if let Some((_, reset)) =
                    crate::dialect::of(backend).row_lock_timeout_sql(settings.lock_timeout)
                {
                    let _ = writeln!(out, "-- the migrator's, not summed: {reset};");
                }
                out.push_str("COMMIT;\n");
            }
        }
        if wrapped {
            out.push_str("COMMIT;\n");
        }
        out.push('\n');
    }
    out
}
