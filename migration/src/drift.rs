//! Drift: objects that applied migrations made and the catalog no longer has (a view dropped
//! by hand, an index lost to an interrupted `fresh` on MariaDB), and their repair.
//!
//! Every step says what it leaves in the catalog ([`Step::expected`]: its probe, or what it
//! declares with [`Step::expecting`]). Walking the applied migrations' `up` plans in order
//! gives what the schema should hold now: a later step about the same object (a column, an
//! index, a constraint, a view, a table) replaces what an earlier one expected, and a table a
//! later step creates or drops replaces every expectation about its columns and indexes.
//! Objects that a pending migration touches are left out: an interrupted migration that runs
//! outside a transaction may have changed them half-way, and `up` finishes that.
//!
//! A step that always runs and declares nothing (a backfill) expects nothing: drift in data
//! is not seen here.

use sea_orm_migration::MigratorTrait;
use sea_orm_migration::sea_orm::{ConnectionTrait, DatabaseConnection, DbErr};
use sea_orm_migration::{MigrationStatus, SchemaManager};

use crate::Migrator;
use crate::probe::Probe;
use crate::step::{self, Direction, Step};

/// An object an applied migration's step made, missing (or one it removed, back).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Drift {
    pub migration: String,
    /// 1-based, of `total`, as `up` numbers its steps.
    pub step: usize,
    pub total: usize,
    pub summary: String,
    /// `view user_tiers missing`.
    pub what: String,
}

impl std::fmt::Display for Drift {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "DRIFT: {} (made by {} step {}/{}: {}); `migration repair` restores it",
            self.what, self.migration, self.step, self.total, self.summary
        )
    }
}

/// The object a leaf probe is about: (table or view, object within it; `*` for the table or
/// view itself).
fn key(probe: &Probe) -> Option<(&'static str, String)> {
    match probe {
        Probe::Column { table, column, .. } | Probe::MySqlColumnType { table, column, .. } => {
            Some((table, format!("column {column}")))
        }
        Probe::Index { table, index, .. }
        | Probe::IndexOn { table, index, .. }
        | Probe::NoInvalidIndex { table, index } => Some((table, format!("index {index}"))),
        Probe::Constraint { table, name, .. } | Probe::ConstraintValidated { table, name } => {
            Some((table, format!("constraint {name}")))
        }
        Probe::View { name, .. } => Some((name, "*".to_owned())),
        Probe::Table { table, .. } => Some((table, "*".to_owned())),
        Probe::Never | Probe::All(_) | Probe::Any(_) => None,
    }
}

/// The keys of every leaf of `probe`.
fn keys(probe: &Probe) -> Vec<(&'static str, String)> {
    match probe {
        Probe::All(probes) | Probe::Any(probes) => probes.iter().flat_map(keys).collect(),
        leaf => key(leaf).into_iter().collect(),
    }
}

/// Whether an expectation about `old` is replaced by a later step about `new`.
fn overrides(new: &(&'static str, String), old: &(&'static str, String)) -> bool {
    new.0 == old.0 && (new.1 == "*" || new.1 == old.1)
}

/// What a failed expectation means, in a few words.
fn missing(probe: &Probe) -> String {
    let gone_or_back = |present: &bool, what: String| {
        if *present {
            format!("{what} missing")
        } else {
            format!("{what} present, which a migration removed")
        }
    };
    match probe {
        Probe::View { name, present } => gone_or_back(present, format!("view {name}")),
        Probe::Table { table, present } => gone_or_back(present, format!("table {table}")),
        Probe::Column {
            table,
            column,
            present,
        } => gone_or_back(present, format!("column {table}.{column}")),
        Probe::Index {
            table,
            index,
            present,
        } => gone_or_back(present, format!("index {index} on {table}")),
        Probe::Constraint {
            table,
            name,
            present,
        } => gone_or_back(present, format!("constraint {name} on {table}")),
        Probe::ConstraintValidated { table, name } => {
            format!("constraint {name} on {table} missing or not validated")
        }
        Probe::IndexOn {
            table,
            index,
            columns,
        } => format!(
            "index {index} on {table} ({}) missing or on other columns",
            columns.join(", ")
        ),
        Probe::NoInvalidIndex { table, index } => {
            format!("an INVALID index {index} left on {table}")
        }
        Probe::MySqlColumnType {
            table,
            column,
            column_type,
            ..
        } => format!("column {table}.{column} is not {column_type} in its collation"),
        other => format!("not so: {}", other.describe()),
    }
}

/// One expected object, and the step that made it.
struct Expected {
    keys: Vec<(&'static str, String)>,
    probe: Probe,
    migration: String,
    step: usize,
    total: usize,
    summary: String,
}

/// The `up` plan of `name` for `db`'s backend, in its schema; none for a plain migration.
fn up_steps(name: &str, db: &impl ConnectionTrait, schema: &str) -> Option<Vec<Step>> {
    crate::plan_of(name)
        .map(|plan| step::plan_in(plan, db.get_database_backend(), schema, Direction::Up))
}

/// Every object the applied migrations should have left, in the order they made them.
async fn expectations(db: &DatabaseConnection, schema: &str) -> Result<Vec<Expected>, DbErr> {
    let statuses = Migrator::get_migration_with_status_read_only(db).await?;
    let mut expected: Vec<Expected> = Vec::new();
    let mut in_flux: Vec<(&'static str, String)> = Vec::new();
    for migration in &statuses {
        let Some(steps) = up_steps(migration.name(), db, schema) else {
            continue;
        };
        if migration.status() != MigrationStatus::Applied {
            in_flux.extend(steps.iter().flat_map(|s| {
                let mut touched = keys(&s.done_when);
                touched.extend(keys(s.expected()));
                touched
            }));
            continue;
        }
        let total = steps.len();
        for (i, step) in steps.iter().enumerate() {
            let probe = step.expected();
            let new_keys = keys(probe);
            if new_keys.is_empty() {
                continue;
            }
            expected.retain(|old| {
                !old.keys
                    .iter()
                    .any(|o| new_keys.iter().any(|n| overrides(n, o)))
            });
            expected.push(Expected {
                keys: new_keys,
                probe: probe.clone(),
                migration: migration.name().to_owned(),
                step: i + 1,
                total,
                summary: step.summary.to_string(),
            });
        }
    }
    expected.retain(|e| {
        !e.keys
            .iter()
            .any(|k| in_flux.iter().any(|f| overrides(f, k) || overrides(k, f)))
    });
    Ok(expected)
}

/// The leaves of `probe` that must each hold (an `All` is its parts; an `Any` stays whole).
fn leaves(probe: &Probe) -> Vec<Probe> {
    match probe {
        Probe::All(probes) => probes.iter().flat_map(leaves).collect(),
        other => vec![other.clone()],
    }
}

/// Reads the catalog; writes nothing.
pub async fn find(db: &DatabaseConnection) -> Result<Vec<Drift>, DbErr> {
    let schema = crate::schema::of(db).await?.unwrap_or_default();
    let mut found = Vec::new();
    for expected in expectations(db, &schema).await? {
        for leaf in leaves(&expected.probe) {
            if !leaf.holds_in(db, &schema).await? {
                found.push(Drift {
                    migration: expected.migration.clone(),
                    step: expected.step,
                    total: expected.total,
                    summary: expected.summary.clone(),
                    what: missing(&leaf),
                });
            }
        }
    }
    Ok(found)
}

/// Runs again, in migration order, every step whose object is missing; the caller holds the
/// migrator lock. Each step runs as `up` runs it (its probe first, its lock mode), outside any
/// transaction of ours: a step that needs one opens its own (lock-timed steps), and an online
/// index build must run outside one. Returns what was repaired; what is still missing
/// afterwards is an error.
pub async fn repair(db: &DatabaseConnection) -> Result<Vec<Drift>, DbErr> {
    let drift = find(db).await?;
    let schema = crate::schema::of(db).await?.unwrap_or_default();
    let mut done: Vec<(String, usize)> = Vec::new();
    for item in &drift {
        let at = (item.migration.clone(), item.step);
        if done.contains(&at) {
            continue;
        }
        let Some(step) = up_steps(&item.migration, db, &schema)
            .and_then(|steps| steps.into_iter().nth(item.step - 1))
        else {
            continue;
        };
        tracing::info!(
            "repairing {}: {} step {}/{} ({})",
            item.what,
            item.migration,
            item.step,
            item.total,
            item.summary
        );
        let manager = SchemaManager::new(db);
        step::apply(&manager, &item.migration, Direction::Up, vec![step]).await?;
        done.push(at);
    }
    Ok(drift)
}
