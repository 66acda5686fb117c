//! `api_tokens`: bearer tokens, stored only as SHA-256 hashes, revocable.

use sea_orm_migration::prelude::*;

use crate::dialect::Dialect;
use crate::idents::{ApiTokens, Users};
use crate::operation::{Operation, Operations, TableSpec};
use crate::step::Mode;

#[derive(DeriveMigrationName)]
pub struct Migration;

impl Operations for Migration {
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

fn create_table(dialect: &dyn Dialect) -> TableCreateStatement {
    Table::create()
        .table(dialect.table("api_tokens"))
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
