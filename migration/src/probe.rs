//! Questions a step asks the catalog before it runs: "is this already done?".
//!
//! Each probe reads the live catalog of the migrations' schema (PostgreSQL: the schema chosen
//! with `-s`, `public` by default, never `current_schema()`, which follows `search_path`; MySQL
//! `DATABASE()`; SQLite `main`). On PostgreSQL an index only counts as present when it is
//! valid: an interrupted `CREATE INDEX CONCURRENTLY` leaves an INVALID index behind, which the
//! step must drop and build again.

use sea_orm_migration::sea_orm::{ConnectionTrait, DbBackend, DbErr, Statement, Value};

/// The collation a [`Probe::MySqlColumnType`] expects.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MySqlCollation {
    Named(&'static str),
    /// The table's default, which a column created without a collation has.
    TableDefault,
}

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
    /// No INVALID index of this name is left on this table (PostgreSQL: an interrupted
    /// `CREATE INDEX CONCURRENTLY`). Guards the step that drops such a leftover, so an index of
    /// the same name anywhere else is never touched.
    NoInvalidIndex {
        table: &'static str,
        index: &'static str,
    },
    /// MySQL/MariaDB: the column has exactly this `column_type` (`mediumtext`,
    /// `varchar(100)`) and collation. Never holds elsewhere.
    MySqlColumnType {
        table: &'static str,
        column: &'static str,
        column_type: &'static str,
        collation: MySqlCollation,
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
            Probe::NoInvalidIndex { table, index } => {
                format!("skipped unless an INVALID index {index} is left on {table}")
            }
            Probe::MySqlColumnType {
                table,
                column,
                column_type,
                collation,
            } => match collation {
                MySqlCollation::Named(name) => {
                    format!("skipped when {table}.{column} is {column_type} COLLATE {name}")
                }
                MySqlCollation::TableDefault => format!(
                    "skipped when {table}.{column} is {column_type} in the table's collation"
                ),
            },
            Probe::All(probes) => joined(probes, " and "),
            Probe::Any(probes) => joined(probes, " or "),
        }
    }

    /// Whether the probe holds on the live database, in the schema of [`crate::schema::of`].
    pub async fn holds<C: ConnectionTrait>(&self, db: &C) -> Result<bool, DbErr> {
        let schema = crate::schema::of(db).await?;
        self.holds_in(db, schema.as_deref().unwrap_or_default())
            .await
    }

    /// Whether the probe holds in `schema` (PostgreSQL; ignored elsewhere).
    pub async fn holds_in<C: ConnectionTrait>(&self, db: &C, schema: &str) -> Result<bool, DbErr> {
        let backend = db.get_database_backend();
        let at = Catalog {
            db,
            backend,
            sql: crate::dialect::of(backend).catalog(),
            schema,
        };
        let (found, present) = match self {
            Probe::Never => return Ok(false),
            Probe::All(probes) => {
                for probe in probes {
                    if !Box::pin(probe.holds_in(db, schema)).await? {
                        return Ok(false);
                    }
                }
                return Ok(true);
            }
            Probe::Any(probes) => {
                for probe in probes {
                    if Box::pin(probe.holds_in(db, schema)).await? {
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
                let found = at.index_columns(table, index).await?;
                return Ok(found.is_some_and(|found| found.iter().eq(columns.iter())));
            }
            Probe::NoInvalidIndex { table, index } => {
                return Ok(!at.invalid_index_exists(table, index).await?);
            }
            Probe::MySqlColumnType {
                table,
                column,
                column_type,
                collation,
            } => {
                let found = at.mysql_column_type(table, column).await?;
                return Ok(found.is_some_and(|found| {
                    let wanted = match collation {
                        MySqlCollation::Named(name) => Some(*name),
                        MySqlCollation::TableDefault => found.table_collation.as_deref(),
                    };
                    found.column_type.eq_ignore_ascii_case(column_type)
                        && found.collation.as_deref() == wanted
                }));
            }
            Probe::Column {
                table,
                column,
                present,
            } => (at.column_exists(table, column).await?, *present),
            Probe::Index {
                table,
                index,
                present,
            } => (
                // Only a valid index counts as built; any index at all counts as not gone.
                at.index_exists(table, index, *present).await?,
                *present,
            ),
            Probe::Constraint {
                table,
                name,
                present,
            } => (at.constraint_exists(table, name, false).await?, *present),
            Probe::ConstraintValidated { table, name } => {
                (at.constraint_exists(table, name, true).await?, true)
            }
            Probe::View { name, present } => (at.relation_exists(name, true).await?, *present),
            Probe::Table { table, present } => (at.relation_exists(table, false).await?, *present),
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

struct MySqlColumn {
    column_type: String,
    collation: Option<String>,
    table_collation: Option<String>,
}

/// The catalog of one schema, as the probes read it.
struct Catalog<'a, C> {
    db: &'a C,
    backend: DbBackend,
    /// The backend's catalog queries (its dialect's).
    sql: &'static CatalogQueries,
    /// PostgreSQL only; bound as the last parameter of every query that names it.
    schema: &'a str,
}

/// The queries a backend's catalog answers the probes with, each selecting a row when the
/// object exists. Parameters: the table (or relation) name, then the object's name where it
/// has one; the schema last where [`CatalogQueries::binds_schema`]. Each dialect holds its own.
pub struct CatalogQueries {
    /// Whether the queries take the PostgreSQL schema as their last parameter.
    pub binds_schema: bool,
    pub column: &'static str,
    /// Any index of that name; [`CatalogQueries::valid_index`] counts only a usable one.
    pub index: &'static str,
    pub valid_index: &'static str,
    /// An INVALID index (an interrupted concurrent build); `None` where there are none.
    pub invalid_index: Option<&'static str>,
    /// A valid index's column names, in key order.
    pub index_columns: &'static str,
    /// A column's `column_type`, `collation` and its table's `table_collation` (MySQL).
    pub column_type: Option<&'static str>,
    pub constraint: &'static str,
    pub validated_constraint: &'static str,
    pub view: &'static str,
    pub table: &'static str,
}

impl<C: ConnectionTrait> Catalog<'_, C> {
    fn statement(&self, sql: &str, mut values: Vec<Value>) -> Statement {
        if self.sql.binds_schema {
            values.push(self.schema.into());
        }
        Statement::from_sql_and_values(self.backend, sql, values)
    }

    async fn exists(&self, sql: &str, values: Vec<Value>) -> Result<bool, DbErr> {
        let stmt = self.statement(sql, values);
        Ok(self.db.query_one_raw(stmt).await?.is_some())
    }

    async fn column_exists(&self, table: &str, column: &str) -> Result<bool, DbErr> {
        self.exists(self.sql.column, vec![table.into(), column.into()])
            .await
    }

    async fn index_exists(
        &self,
        table: &str,
        index: &str,
        valid_only: bool,
    ) -> Result<bool, DbErr> {
        let sql = if valid_only {
            self.sql.valid_index
        } else {
            self.sql.index
        };
        self.exists(sql, vec![table.into(), index.into()]).await
    }

    /// Whether `index` is an INVALID index on `table` (an interrupted concurrent build).
    async fn invalid_index_exists(&self, table: &str, index: &str) -> Result<bool, DbErr> {
        let Some(sql) = self.sql.invalid_index else {
            return Ok(false);
        };
        self.exists(sql, vec![table.into(), index.into()]).await
    }

    /// The columns of a valid index, in key order; `None` when there is no such index.
    async fn index_columns(&self, table: &str, index: &str) -> Result<Option<Vec<String>>, DbErr> {
        let stmt = self.statement(self.sql.index_columns, vec![table.into(), index.into()]);
        let rows = self.db.query_all_raw(stmt).await?;
        if rows.is_empty() {
            return Ok(None);
        }
        let columns = rows
            .iter()
            .map(|row| row.try_get_by_index::<String>(0))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Some(columns))
    }

    /// A column's type and collation as MySQL's catalog spells them (`mediumtext`,
    /// `utf8mb4_bin`); `None` when there is no such column. Other backends: `None`.
    async fn mysql_column_type(
        &self,
        table: &str,
        column: &str,
    ) -> Result<Option<MySqlColumn>, DbErr> {
        let Some(sql) = self.sql.column_type else {
            return Ok(None);
        };
        let stmt = self.statement(sql, vec![table.into(), column.into()]);
        let Some(row) = self.db.query_one_raw(stmt).await? else {
            return Ok(None);
        };
        Ok(Some(MySqlColumn {
            column_type: row.try_get("", "column_type")?,
            collation: row.try_get("", "collation")?,
            table_collation: row.try_get("", "table_collation")?,
        }))
    }

    async fn constraint_exists(
        &self,
        table: &str,
        name: &str,
        validated: bool,
    ) -> Result<bool, DbErr> {
        let sql = if validated {
            self.sql.validated_constraint
        } else {
            self.sql.constraint
        };
        self.exists(sql, vec![table.into(), name.into()]).await
    }

    async fn relation_exists(&self, name: &str, view: bool) -> Result<bool, DbErr> {
        let sql = if view { self.sql.view } else { self.sql.table };
        self.exists(sql, vec![name.into()]).await
    }
}
