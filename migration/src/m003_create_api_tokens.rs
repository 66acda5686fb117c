//! `api_tokens`: bearer tokens, stored only as SHA-256 hashes, revocable.

use sea_orm_migration::prelude::*;

use crate::dialect::Dialect;
use crate::idents::{ApiTokens, Users};
use crate::operation::{Operation, Operations, TableSpec};
use crate::step::Mode;

#[derive(DeriveMigrationName)]
pub struct Migration;

impl Operations for Migration {
    /// The MySQL sum of the plan before the table named its character set (below).
    const EARLIER_CHECKSUMS: &'static [&'static str] =
        &["84de06c5d49da99dd504881a602d2931baf9c154fc83f585055ded90bec9357e"];

    const REQUIRED_TABLES: &'static [&'static str] = &["users"];

    /// `down` is derived: the table dropped.
    fn up(&self, _dialect: &dyn Dialect) -> Vec<Operation> {
        vec![Operation::CreateTable(TABLE)]
    }
}

/// A new table, created in the migration's transaction (no traffic uses it yet), and dropped
/// without `IF EXISTS`, as this migration always has been (its SQL stays as applied).
const TABLE: TableSpec = TableSpec {
    name: "api_tokens",
    note: None,
    mode: Mode::Plain,
    drop_if_exists: false,
    create: create_table,
    indexes: &[],
};

/// MySQL/MariaDB: the table names its character set (`utf8mb4`, collation
/// `utf8mb4_unicode_ci`; [`Dialect::text_table`]). It took the database's default until
/// 2026-12; that plan's MySQL sum is listed in `EARLIER_CHECKSUMS`, so a database that applied
/// it is not flagged as changed. It is the same table wherever that default was `utf8mb4`, which
/// `up` has required since (charset.rs); an older `utf8mb3` database needs the conversion
/// that refusal gives. PostgreSQL and SQLite plans are unchanged.
fn create_table(dialect: &dyn Dialect) -> TableCreateStatement {
    dialect
        .text_table("api_tokens")
        .col(
            ColumnDef::new(ApiTokens::Id)
                .big_integer()
                .not_null()
                .auto_increment()
                .primary_key(),
        )
        .col(ColumnDef::new(ApiTokens::UserId).big_integer().not_null())
        // Hex SHA-256 of the token; the token itself is never stored.
        .col(
            ColumnDef::new(ApiTokens::TokenHash)
                .string_len(64)
                .not_null()
                .unique_key(),
        )
        .col(ColumnDef::new(ApiTokens::Label).string_len(100).null())
        .col(crate::created_at(ApiTokens::CreatedAt))
        .col(
            ColumnDef::new(ApiTokens::RevokedAt)
                .timestamp_with_time_zone()
                .null(),
        )
        .foreign_key(
            ForeignKey::create()
                .name("fk_api_tokens_user")
                .from(dialect.table("api_tokens"), ApiTokens::UserId)
                .to(dialect.table("users"), Users::Id)
                .on_delete(ForeignKeyAction::Cascade),
        )
        .take()
}

crate::planned_migration!(Migration);
