//! Questions a step asks the catalog before it runs: "is this already done?".
//!
//! Each probe reads the live catalog of the current schema (PostgreSQL `current_schema()`,
//! MySQL `DATABASE()`, SQLite `main`). On PostgreSQL an index only counts as present when it is
//! valid: an interrupted `CREATE INDEX CONCURRENTLY` leaves an INVALID index behind, which the
//! step must drop and build again.

use sea_orm_migration::sea_orm::{ConnectionTrait, DbBackend, DbErr, Statement, Value};

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Probe {
    /// Always run (the statements are themselves idempotent, or nothing can tell).
    Never,
    Column {
        table: &'static str,
        column: &'static str,
        present: bool,
    },
    Index {
        table: &'static str,
        index: &'static str,
        present: bool,
    },
    Constraint {
        table: &'static str,
        name: &'static str,
        present: bool,
    },
    /// The constraint exists and has been validated (PostgreSQL `convalidated`).
    ConstraintValidated {
        table: &'static str,
        name: &'static str,
    },
    View {
        name: &'static str,
        present: bool,
    },
    Table {
        table: &'static str,
        present: bool,
    },
    /// A valid index of this name exists on exactly these columns, in this order.
    IndexOn {
        table: &'static str,
        index: &'static str,
        columns: &'static [&'static str],
    },
    /// Every one of these holds.
    All(Vec<Probe>),
    /// At least one of these holds.
    Any(Vec<Probe>),
}

impl Probe {
    pub fn column_present(table: &'static str, column: &'static str) -> Self {
        Probe::Column {
            table,
            column,
            present: true,
        }
    }

    pub fn column_absent(table: &'static str, column: &'static str) -> Self {
        Probe::Column {
            table,
            column,
            present: false,
        }
    }

    pub fn index_present(table: &'static str, index: &'static str) -> Self {
        Probe::Index {
            table,
            index,
            present: true,
        }
    }

    pub fn index_absent(table: &'static str, index: &'static str) -> Self {
        Probe::Index {
            table,
            index,
            present: false,
        }
    }

    /// What a dry run prints next to the step.
    pub fn describe(&self) -> String {
        let presence = |present: &bool| if *present { "exists" } else { "is gone" };
        match self {
            Probe::Never => "always runs".to_owned(),
            Probe::Column {
                table,
                column,
                present,
            } => format!("skipped when column {table}.{column} {}", presence(present)),
            Probe::Index { index, present, .. } => {
                format!("skipped when index {index} {}", presence(present))
            }
            Probe::Constraint { name, present, .. } => {
                format!("skipped when constraint {name} {}", presence(present))
            }
            Probe::ConstraintValidated { name, .. } => {
                format!("skipped when constraint {name} is validated")
            }
            Probe::View { name, present } => {
                format!("skipped when view {name} {}", presence(present))
            }
            Probe::Table { table, present } => {
                format!("skipped when table {table} {}", presence(present))
            }
            Probe::IndexOn { index, columns, .. } => {
                format!("skipped when index {index} is on ({})", columns.join(", "))
            }
            Probe::All(probes) => joined(probes, " and "),
            Probe::Any(probes) => joined(probes, " or "),
        }
    }

    /// Whether the probe holds on the live database.
    pub async fn holds<C: ConnectionTrait>(&self, db: &C) -> Result<bool, DbErr> {
        let backend = db.get_database_backend();
        let (found, present) = match self {
            Probe::Never => return Ok(false),
            Probe::All(probes) => {
                for probe in probes {
                    if !Box::pin(probe.holds(db)).await? {
                        return Ok(false);
                    }
                }
                return Ok(true);
            }
            Probe::Any(probes) => {
                for probe in probes {
                    if Box::pin(probe.holds(db)).await? {
                        return Ok(true);
                    }
                }
                return Ok(false);
            }
            Probe::IndexOn {
                table,
                index,
                columns,
            } => {
                let found = index_columns(db, backend, table, index).await?;
                return Ok(found.is_some_and(|found| found.iter().eq(columns.iter())));
            }
            Probe::Column {
                table,
                column,
                present,
            } => (column_exists(db, backend, table, column).await?, *present),
            Probe::Index {
                table,
                index,
                present,
            } => (
                // Only a valid index counts as built; any index at all counts as not gone.
                index_exists(db, backend, table, index, *present).await?,
                *present,
            ),
            Probe::Constraint {
                table,
                name,
                present,
            } => (
                constraint_exists(db, backend, table, name, false).await?,
                *present,
            ),
            Probe::ConstraintValidated { table, name } => (
                constraint_exists(db, backend, table, name, true).await?,
                true,
            ),
            Probe::View { name, present } => {
                (relation_exists(db, backend, name, true).await?, *present)
            }
            Probe::Table { table, present } => {
                (relation_exists(db, backend, table, false).await?, *present)
            }
        };
        Ok(found == present)
    }
}

/// "skipped when a and b": the conditions of several probes, under one "skipped when".
fn joined(probes: &[Probe], conjunction: &str) -> String {
    let conditions: Vec<String> = probes
        .iter()
        .map(|probe| {
            let text = probe.describe();
            text.strip_prefix("skipped when ")
                .map(str::to_owned)
                .unwrap_or(text)
        })
        .collect();
    format!("skipped when {}", conditions.join(conjunction))
}

async fn exists<C: ConnectionTrait>(
    db: &C,
    backend: DbBackend,
    sql: &str,
    values: Vec<Value>,
) -> Result<bool, DbErr> {
    let stmt = Statement::from_sql_and_values(backend, sql, values);
    Ok(db.query_one_raw(stmt).await?.is_some())
}

async fn column_exists<C: ConnectionTrait>(
    db: &C,
    backend: DbBackend,
    table: &str,
    column: &str,
) -> Result<bool, DbErr> {
    let sql = match backend {
        DbBackend::Postgres => {
            "SELECT 1 FROM information_schema.columns \
             WHERE table_schema = current_schema() AND table_name = $1 AND column_name = $2"
        }
        DbBackend::MySql => {
            "SELECT 1 FROM information_schema.columns \
             WHERE table_schema = DATABASE() AND table_name = ? AND column_name = ?"
        }
        _ => "SELECT 1 FROM pragma_table_info(?) WHERE name = ?",
    };
    exists(db, backend, sql, vec![table.into(), column.into()]).await
}

async fn index_exists<C: ConnectionTrait>(
    db: &C,
    backend: DbBackend,
    table: &str,
    index: &str,
    valid_only: bool,
) -> Result<bool, DbErr> {
    let sql = match backend {
        DbBackend::Postgres if valid_only => {
            "SELECT 1 FROM pg_index i \
             JOIN pg_class ic ON ic.oid = i.indexrelid \
             JOIN pg_class tc ON tc.oid = i.indrelid \
             JOIN pg_namespace n ON n.oid = ic.relnamespace \
             WHERE n.nspname = current_schema() AND tc.relname = $1 AND ic.relname = $2 \
             AND i.indisvalid"
        }
        DbBackend::Postgres => {
            "SELECT 1 FROM pg_index i \
             JOIN pg_class ic ON ic.oid = i.indexrelid \
             JOIN pg_class tc ON tc.oid = i.indrelid \
             JOIN pg_namespace n ON n.oid = ic.relnamespace \
             WHERE n.nspname = current_schema() AND tc.relname = $1 AND ic.relname = $2"
        }
        DbBackend::MySql => {
            "SELECT 1 FROM information_schema.statistics \
             WHERE table_schema = DATABASE() AND table_name = ? AND index_name = ? LIMIT 1"
        }
        _ => "SELECT 1 FROM sqlite_master WHERE type = 'index' AND tbl_name = ? AND name = ?",
    };
    exists(db, backend, sql, vec![table.into(), index.into()]).await
}

/// The columns of a valid index, in key order; `None` when there is no such index.
async fn index_columns<C: ConnectionTrait>(
    db: &C,
    backend: DbBackend,
    table: &str,
    index: &str,
) -> Result<Option<Vec<String>>, DbErr> {
    let sql = match backend {
        DbBackend::Postgres => {
            "SELECT a.attname::text FROM pg_index i \
             JOIN pg_class ic ON ic.oid = i.indexrelid \
             JOIN pg_class tc ON tc.oid = i.indrelid \
             JOIN pg_namespace n ON n.oid = ic.relnamespace \
             CROSS JOIN LATERAL unnest(i.indkey) WITH ORDINALITY AS k(attnum, position) \
             JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum \
             WHERE n.nspname = current_schema() AND tc.relname = $1 AND ic.relname = $2 \
             AND i.indisvalid ORDER BY k.position"
        }
        DbBackend::MySql => {
            "SELECT column_name FROM information_schema.statistics \
             WHERE table_schema = DATABASE() AND table_name = ? AND index_name = ? \
             ORDER BY seq_in_index"
        }
        _ => {
            "SELECT p.name FROM sqlite_master m JOIN pragma_index_info(m.name) p \
             WHERE m.type = 'index' AND m.tbl_name = ? AND m.name = ? ORDER BY p.seqno"
        }
    };
    let stmt = Statement::from_sql_and_values(backend, sql, vec![table.into(), index.into()]);
    let rows = db.query_all_raw(stmt).await?;
    if rows.is_empty() {
        return Ok(None);
    }
    let columns = rows
        .iter()
        .map(|row| row.try_get_by_index::<String>(0))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Some(columns))
}

async fn constraint_exists<C: ConnectionTrait>(
    db: &C,
    backend: DbBackend,
    table: &str,
    name: &str,
    validated: bool,
) -> Result<bool, DbErr> {
    let sql = match (backend, validated) {
        (DbBackend::Postgres, false) => {
            "SELECT 1 FROM pg_constraint c JOIN pg_class t ON t.oid = c.conrelid \
             JOIN pg_namespace n ON n.oid = t.relnamespace \
             WHERE n.nspname = current_schema() AND t.relname = $1 AND c.conname = $2"
        }
        (DbBackend::Postgres, true) => {
            "SELECT 1 FROM pg_constraint c JOIN pg_class t ON t.oid = c.conrelid \
             JOIN pg_namespace n ON n.oid = t.relnamespace \
             WHERE n.nspname = current_schema() AND t.relname = $1 AND c.conname = $2 \
             AND c.convalidated"
        }
        // MySQL and MariaDB validate a CHECK when they add it.
        (DbBackend::MySql, _) => {
            "SELECT 1 FROM information_schema.table_constraints \
             WHERE constraint_schema = DATABASE() AND table_name = ? AND constraint_name = ?"
        }
        // SQLite keeps constraints in the table's CREATE text and validates on ADD COLUMN.
        _ => {
            "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ? \
             AND instr(sql, ?) > 0"
        }
    };
    exists(db, backend, sql, vec![table.into(), name.into()]).await
}

async fn relation_exists<C: ConnectionTrait>(
    db: &C,
    backend: DbBackend,
    name: &str,
    view: bool,
) -> Result<bool, DbErr> {
    let sql = match (backend, view) {
        (DbBackend::Postgres, true) => {
            "SELECT 1 FROM information_schema.views \
             WHERE table_schema = current_schema() AND table_name = $1"
        }
        (DbBackend::Postgres, false) => {
            "SELECT 1 FROM information_schema.tables \
             WHERE table_schema = current_schema() AND table_name = $1 \
             AND table_type = 'BASE TABLE'"
        }
        (DbBackend::MySql, true) => {
            "SELECT 1 FROM information_schema.views \
             WHERE table_schema = DATABASE() AND table_name = ?"
        }
        (DbBackend::MySql, false) => {
            "SELECT 1 FROM information_schema.tables \
             WHERE table_schema = DATABASE() AND table_name = ? AND table_type = 'BASE TABLE'"
        }
        (_, true) => "SELECT 1 FROM sqlite_master WHERE type = 'view' AND name = ?",
        (_, false) => "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?",
    };
    exists(db, backend, sql, vec![name.into()]).await
}
