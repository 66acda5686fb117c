//! A backend's schema as sorted text lines, so two states can be compared with `assert_eq!`.

use super::{Backend, TestDb};

/// Columns (with type and collation), indexes, constraints and views of the test database, one
/// line each; on PostgreSQL, of the `public` schema.
pub async fn snapshot(t: &TestDb) -> Vec<String> {
    snapshot_in(t, "public").await
}

/// [`snapshot`] of one PostgreSQL schema, with the schema's (or MySQL database's) name left out
/// of the lines so two schemas or databases can be compared. MySQL and SQLite have one schema
/// per database: `schema` is ignored.
pub async fn snapshot_in(t: &TestDb, schema: &str) -> Vec<String> {
    let mut pg: Vec<String> = Vec::new();
    let queries: &[&str] = match t.backend {
        Backend::Postgres => {
            let quoted = format!("'{}'", schema.replace('\'', "''"));
            pg = [
                "SELECT concat_ws('|', 'column', table_name, column_name, data_type, is_nullable, \
                 column_default, character_maximum_length, collation_name) \
                 FROM information_schema.columns WHERE table_schema = SCHEMA",
                "SELECT concat_ws('|', 'index', tablename, indexname, indexdef) FROM pg_indexes \
                 WHERE schemaname = SCHEMA",
                "SELECT concat_ws('|', 'constraint', c.conrelid::regclass::text, c.conname, \
                 pg_get_constraintdef(c.oid), c.convalidated) FROM pg_constraint c \
                 JOIN pg_namespace n ON n.oid = c.connamespace WHERE n.nspname = SCHEMA",
                "SELECT concat_ws('|', 'view', table_name, view_definition) \
                 FROM information_schema.views WHERE table_schema = SCHEMA",
            ]
            .iter()
            .map(|sql| sql.replace("SCHEMA", &quoted))
            .collect();
            &[]
        }
        Backend::MySql => &[
            "SELECT concat_ws('|', 'column', table_name, column_name, column_type, is_nullable, \
             ifnull(column_default, 'NULL'), extra, ifnull(collation_name, '-')) \
             FROM information_schema.columns WHERE table_schema = DATABASE()",
            "SELECT concat_ws('|', 'index', table_name, index_name, non_unique, seq_in_index, \
             column_name) FROM information_schema.statistics WHERE table_schema = DATABASE()",
            "SELECT concat_ws('|', 'constraint', t.table_name, t.constraint_name, \
             t.constraint_type, ifnull(c.check_clause, '')) \
             FROM information_schema.table_constraints t \
             LEFT JOIN information_schema.check_constraints c \
             ON c.constraint_schema = t.constraint_schema AND c.constraint_name = t.constraint_name \
             AND c.table_name = t.table_name WHERE t.constraint_schema = DATABASE()",
            "SELECT concat_ws('|', 'view', table_name, view_definition) \
             FROM information_schema.views WHERE table_schema = DATABASE()",
        ],
        Backend::Sqlite => &[
            "SELECT 'column|' || m.name || '|' || p.name || '|' || p.type || '|' || p.\"notnull\" \
             || '|' || ifnull(p.dflt_value, 'NULL') || '|' || p.pk \
             FROM sqlite_master m JOIN pragma_table_info(m.name) p \
             WHERE m.type = 'table' AND m.name NOT LIKE 'sqlite_%'",
            "SELECT 'object|' || type || '|' || name || '|' || tbl_name || '|' || ifnull(sql, '') \
             FROM sqlite_master WHERE type IN ('index', 'view', 'trigger')",
            // CHECK constraints live in the table's CREATE text; list the ones that name one.
            "SELECT 'check|' || name || '|' || (instr(sql, 'chk_subscription_status') > 0) \
             FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'",
        ],
    };
    let mut lines = Vec::new();
    for sql in queries.iter().copied().chain(pg.iter().map(String::as_str)) {
        lines.extend(t.texts(sql).await);
    }
    // Names qualified with the schema (PostgreSQL) or the database (MySQL view bodies) would
    // keep two databases' snapshots from comparing equal.
    let prefixes = match t.backend {
        Backend::Postgres => vec![format!("{schema}."), format!("\"{schema}\".")],
        Backend::MySql => vec![format!("`{}`.", t.name)],
        Backend::Sqlite => Vec::new(),
    };
    lines = lines
        .into_iter()
        .map(|line| {
            prefixes
                .iter()
                .fold(line, |line, prefix| line.replace(prefix, ""))
        })
        .collect();
    lines.sort();
    lines
}

/// The migrator's own bookkeeping tables (SeaORM's history and our checksums), left out of
/// schema comparisons.
pub fn without_bookkeeping(lines: Vec<String>) -> Vec<String> {
    lines
        .into_iter()
        .filter(|line| !line.contains("seaql_migrations") && !line.contains("migration_checksums"))
        .collect()
}
