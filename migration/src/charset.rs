//! MariaDB/MySQL: the migrations need a database whose default character set is `utf8mb4`.
//!
//! Tables take the database's default character set. On a `utf8mb3` database, an emoji in a
//! device name or a session payload is an error (500), or with a non-strict `sql_mode` it is
//! silently stored as `?` (the API answers 201). On a `latin1` database, m009's online
//! collation change is refused ("ALGORITHM=INPLACE is not supported") after m001-m008 were
//! applied. So `up`, `refresh` and `fresh` refuse such a database before their first
//! statement, in one line that says how to convert it. (The connections themselves speak
//! `utf8mb4`: sqlx's MySQL default.)
//!
//! `ALTER DATABASE … CHARACTER SET utf8mb4` changes the default for new tables only: a
//! database converted that way keeps its old `utf8mb3` columns, and the same emoji fails in
//! them. So the text columns of the tables already there are read too, and any that is not
//! `utf8mb4` is named (views have no storage of their own, and SeaORM's `seaql_migrations`
//! holds migration names only).

use sea_orm_migration::sea_orm::{ConnectionTrait, DbBackend, Statement};

use crate::error::Error;

/// Refuses a MySQL/MariaDB database whose default character set is not `utf8mb4`; other
/// backends always pass.
pub async fn require_utf8mb4<C: ConnectionTrait>(db: &C) -> Result<(), Error> {
    let backend = db.get_database_backend();
    if backend != DbBackend::MySql {
        return Ok(());
    }
    let row = db
        .query_one_raw(Statement::from_string(
            backend,
            "SELECT @@character_set_database AS charset, DATABASE() AS name",
        ))
        .await?;
    let Some(row) = row else {
        return Ok(());
    };
    let charset: String = row.try_get("", "charset")?;
    let database: Option<String> = row.try_get("", "name")?;
    if !charset.eq_ignore_ascii_case("utf8mb4") {
        return Err(Error::NotUtf8mb4 {
            database: database.unwrap_or_default(),
            charset,
        });
    }
    let columns = db
        .query_all_raw(Statement::from_string(
            backend,
            "SELECT CONCAT(c.table_name, '.', c.column_name, ' (', c.collation_name, ')') AS what \
             FROM information_schema.columns c JOIN information_schema.tables t \
             ON t.table_schema = c.table_schema AND t.table_name = c.table_name \
             WHERE c.table_schema = DATABASE() AND t.table_type = 'BASE TABLE' \
             AND c.character_set_name IS NOT NULL AND c.character_set_name <> 'utf8mb4' \
             AND c.table_name <> 'seaql_migrations' \
             ORDER BY c.table_name, c.ordinal_position",
        ))
        .await?;
    let columns = columns
        .iter()
        .map(|row| row.try_get::<String>("", "what"))
        .collect::<Result<Vec<_>, _>>()?;
    if columns.is_empty() {
        return Ok(());
    }
    Err(Error::ColumnsNotUtf8mb4 {
        database: database.unwrap_or_default(),
        columns,
    })
}
