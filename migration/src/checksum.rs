//! Checksums of applied migrations, so that editing one after it ran does not go unnoticed.
//!
//! What is summed is the migration's `up` plan as `migration sql --backend B` prints it
//! (statements, transactions, lock timeouts; not its `--` comment lines), rendered for the
//! connection's backend with the default schema and lock settings: the same code gives the same
//! sum whatever `DATABASE_SCHEMA` or `MIGRATION_LOCK_TIMEOUT_MS` a run used. A plain
//! `MigrationTrait` has no plan and gets no checksum.
//!
//! The sums live in a table of ours, `migration_checksums` (`seaql_migrations` belongs to
//! SeaORM), beside `seaql_migrations` in the migrations' schema. A planned migration records
//! its sum in the same run (on PostgreSQL, the same transaction) that applies it, and `down`
//! deletes it. A database applied before checksums existed gets the sums of the code that
//! runs now on its next `up` (backfill). Everything that writes here runs under the migrator
//! lock, so eight migrators starting at once create the table once.

use std::collections::HashMap;
use std::fmt::Write;

use sea_orm_migration::prelude::*;
use sea_orm_migration::sea_orm::{ConnectionTrait, DbBackend, DbErr};
use sha2::{Digest, Sha256};

use crate::dry_run::{self, Listed};
use crate::error::Error;
use crate::settings::LockSettings;
use crate::step::Direction;
use crate::{Migrator, PlannedMigration};

pub const TABLE: &str = "migration_checksums";

/// The SHA-256 (hex) of `migration`'s `up` plan for `backend`.
pub fn of(migration: &dyn PlannedMigration, backend: DbBackend) -> String {
    let plan = dry_run::render(
        backend,
        crate::schema::DEFAULT_SCHEMA,
        Direction::Up,
        &[Listed {
            name: migration.name(),
            plan: Some(migration),
        }],
        &LockSettings::default(),
    );
    // Only what is sent to the server: the comment lines (names, step summaries, probe
    // descriptions) can be reworded without flagging every database that ran the migration.
    let mut hasher = Sha256::new();
    for line in plan
        .lines()
        .filter(|line| !line.starts_with("--") && !line.trim().is_empty())
    {
        hasher.update(line.as_bytes());
        hasher.update(b"\n");
    }
    let digest = hasher.finalize();
    digest
        .iter()
        .fold(String::with_capacity(64), |mut hex, byte| {
            let _ = write!(hex, "{byte:02x}");
            hex
        })
}

/// Our table, named in the connection's schema on PostgreSQL.
async fn table<C: ConnectionTrait>(db: &C) -> Result<TableName, DbErr> {
    let backend = db.get_database_backend();
    let schema = crate::schema::of(db).await?.unwrap_or_default();
    Ok(crate::schema::planning_in(&schema, || {
        crate::schema::table(backend, Alias::new(TABLE))
    }))
}

async fn exists<C: ConnectionTrait>(db: &C) -> Result<bool, DbErr> {
    crate::probe::Probe::Table {
        table: TABLE,
        present: true,
    }
    .holds(db)
    .await
}

/// Created as the migrations' own tables are: on MySQL/MariaDB with a named `utf8mb4`
/// character set ([`crate::dialect::Dialect::text_table`]).
async fn create_if_missing<C: ConnectionTrait>(db: &C) -> Result<(), DbErr> {
    let backend = db.get_database_backend();
    let schema = crate::schema::of(db).await?.unwrap_or_default();
    let create =
        crate::schema::planning_in(&schema, || crate::dialect::of(backend).text_table(TABLE))
            .if_not_exists()
            .col(
                ColumnDef::new("version")
                    .string_len(255)
                    .not_null()
                    .primary_key(),
            )
            .col(ColumnDef::new("checksum").string_len(64).not_null())
            .col(crate::created_at("recorded_at"))
            .take();
    db.execute(&create).await.map(|_| ())
}

/// Records `checksum` as `name`'s, replacing any row it had.
pub async fn record<C: ConnectionTrait>(db: &C, name: &str, checksum: &str) -> Result<(), DbErr> {
    create_if_missing(db).await?;
    let table = table(db).await?;
    let delete = Query::delete()
        .from_table(table.clone())
        .and_where(Expr::col("version").eq(name))
        .take();
    db.execute(&delete).await?;
    let insert = Query::insert()
        .into_table(table)
        .columns(["version", "checksum"])
        .values_panic([name.into(), checksum.into()])
        .take();
    db.execute(&insert).await.map(|_| ())
}

/// Deletes `name`'s checksum (its `down` ran), if there is a table to delete it from.
pub async fn forget<C: ConnectionTrait>(db: &C, name: &str) -> Result<(), DbErr> {
    if !exists(db).await? {
        return Ok(());
    }
    let delete = Query::delete()
        .from_table(table(db).await?)
        .and_where(Expr::col("version").eq(name))
        .take();
    db.execute(&delete).await.map(|_| ())
}

/// Drops our table, as `reset` drops SeaORM's `seaql_migrations` beside it: a reset schema
/// keeps nothing of the migrator's.
pub async fn uninstall<C: ConnectionTrait>(db: &C) -> Result<(), DbErr> {
    let drop = Table::drop().table(table(db).await?).if_exists().take();
    db.execute(&drop).await.map(|_| ())
}

/// The recorded checksums by migration name; none where the table does not exist (reading
/// creates nothing).
pub async fn recorded<C: ConnectionTrait>(db: &C) -> Result<HashMap<String, String>, DbErr> {
    if !exists(db).await? {
        return Ok(HashMap::new());
    }
    let select = Query::select()
        .columns(["version", "checksum"])
        .from(table(db).await?)
        .take();
    let mut sums = HashMap::new();
    for row in db.query_all(&select).await? {
        sums.insert(row.try_get("", "version")?, row.try_get("", "checksum")?);
    }
    Ok(sums)
}

/// How an applied migration's code compares with what was recorded when it ran.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Check {
    /// The plan is the one recorded.
    Same,
    /// Nothing recorded yet (applied before checksums existed, or a plain migration).
    Unrecorded,
    /// The plan differs from the one recorded: the code was edited after it ran.
    Changed,
    /// What was recorded is the sum of an earlier plan the migration declares equivalent
    /// ([`crate::step::Planned::earlier_checksums`]): as good as [`Check::Same`], and the
    /// next `up` records the current sum.
    Earlier,
    /// A plain `MigrationTrait`: no plan to sum.
    NoPlan,
}

/// Compares each applied migration (by name) with its recorded checksum.
pub async fn check_applied<C: ConnectionTrait>(
    db: &C,
    applied: &[String],
) -> Result<Vec<(String, Check)>, DbErr> {
    let backend = db.get_database_backend();
    let sums = recorded(db).await?;
    Ok(applied
        .iter()
        .map(|name| {
            let check = match (crate::plan_of(name), sums.get(name)) {
                (None, _) => Check::NoPlan,
                (Some(_), None) => Check::Unrecorded,
                (Some(plan), Some(sum)) if *sum == of(plan, backend) => Check::Same,
                (Some(plan), Some(sum)) if plan.earlier_checksums().contains(&sum.as_str()) => {
                    Check::Earlier
                }
                (Some(_), Some(_)) => Check::Changed,
            };
            (name.clone(), check)
        })
        .collect())
}

/// Names of the applied migrations, oldest first, read without writing.
pub async fn applied<C: ConnectionTrait>(db: &C) -> Result<Vec<String>, DbErr> {
    Ok(Migrator::get_applied_migrations_read_only(db)
        .await?
        .iter()
        .map(|m| m.name().to_owned())
        .collect())
}

/// Before `up`: records the sums of applied migrations that have none (the code that runs now
/// is taken as what was applied), then refuses if any applied migration's plan has changed.
/// The caller holds the migrator lock.
pub async fn backfill_and_verify<C: ConnectionTrait>(db: &C) -> Result<(), Error> {
    let backend = db.get_database_backend();
    let applied = applied(db).await?;
    let mut changed = Vec::new();
    for (name, check) in check_applied(db, &applied).await? {
        match check {
            Check::Unrecorded => {
                if let Some(plan) = crate::plan_of(&name) {
                    record(db, &name, &of(plan, backend)).await?;
                    tracing::info!("recorded the checksum of {name} (applied before checksums)");
                }
            }
            Check::Earlier => {
                if let Some(plan) = crate::plan_of(&name) {
                    record(db, &name, &of(plan, backend)).await?;
                    tracing::info!(
                        "{name} was applied by an earlier, equivalent plan; recorded the \
                         current plan's checksum"
                    );
                }
            }
            Check::Changed => changed.push(name),
            Check::Same | Check::NoPlan => {}
        }
    }
    if changed.is_empty() {
        return Ok(());
    }
    Err(Error::ChecksumMismatch { names: changed })
}

/// Takes the current plan of the applied migration `name` as its checksum: the explicit way to
/// accept a deliberate edit. The caller holds the migrator lock.
pub async fn accept<C: ConnectionTrait>(db: &C, name: &str) -> Result<String, Error> {
    let known: Vec<String> = Migrator::migrations()
        .iter()
        .map(|m| m.name().to_owned())
        .collect();
    if !known.iter().any(|k| k == name) {
        return Err(Error::UnknownMigration {
            name: name.to_owned(),
            known,
        });
    }
    let Some(plan) = crate::plan_of(name) else {
        return Err(Error::NoPlan {
            name: name.to_owned(),
        });
    };
    if !applied(db).await?.iter().any(|a| a == name) {
        return Err(Error::NotApplied {
            name: name.to_owned(),
        });
    }
    let sum = of(plan, db.get_database_backend());
    record(db, name, &sum).await?;
    Ok(sum)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_checksum_is_stable_and_differs_by_backend_and_migration() {
        let m006 = crate::plan_of("m006_billing_fields").expect("m006 is planned");
        let m007 = crate::plan_of("m007_stripe_events").expect("m007 is planned");
        let pg = of(m006, DbBackend::Postgres);
        assert_eq!(pg.len(), 64);
        assert_eq!(pg, of(m006, DbBackend::Postgres));
        assert_ne!(pg, of(m006, DbBackend::MySql));
        assert_ne!(pg, of(m007, DbBackend::Postgres));
    }

    #[test]
    fn comments_do_not_count() {
        let m006 = crate::plan_of("m006_billing_fields").expect("m006 is planned");
        let plan = dry_run::render(
            DbBackend::Postgres,
            crate::schema::DEFAULT_SCHEMA,
            Direction::Up,
            &[Listed {
                name: m006.name(),
                plan: Some(m006),
            }],
            &LockSettings::default(),
        );
        assert!(plan.contains("-- step 1/"), "{plan}");
        let statements: String = plan
            .lines()
            .filter(|line| !line.starts_with("--") && !line.trim().is_empty())
            .map(|line| format!("{line}\n"))
            .collect();
        let expected = Sha256::digest(statements.as_bytes())
            .iter()
            .map(|byte| format!("{byte:02x}"))
            .collect::<String>();
        assert_eq!(of(m006, DbBackend::Postgres), expected);
    }

    #[test]
    fn the_schema_chosen_does_not_change_a_checksum() {
        let m006 = crate::plan_of("m006_billing_fields").expect("m006 is planned");
        let sum = of(m006, DbBackend::Postgres);
        crate::schema::planning_in("elsewhere", || {
            assert_eq!(of(m006, DbBackend::Postgres), sum);
        });
    }
}
