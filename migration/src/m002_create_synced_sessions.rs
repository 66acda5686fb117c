//! `synced_sessions`: what a user's devices sync, keyed per user by a client-chosen id so a
//! device can retry a sync safely. Deleting a user deletes their sessions.

use sea_orm_migration::prelude::*;

use crate::dialect::Dialect;
use crate::idents::{SyncedSessions, Users};
use crate::operation::{NewTableIndex, Operation, Operations, TableSpec};
use crate::step::Mode;

#[derive(DeriveMigrationName)]
pub struct Migration;

pub const CLIENT_ID_INDEX: &str = "idx_sessions_user_client";

impl Operations for Migration {
    /// The MySQL sum of the plan before the table named its character set (below).
    const EARLIER_CHECKSUMS: &'static [&'static str] =
        &["40cf9763f459e8065226937a468c7c4de4f577d5a61838b3003545c57eb32c04"];

    const REQUIRED_TABLES: &'static [&'static str] = &["users"];

    /// `down` is derived: the table dropped.
    fn up(&self, _dialect: &dyn Dialect) -> Vec<Operation> {
        vec![Operation::CreateTable(TABLE)]
    }
}

/// A new table, created in the migration's transaction (no traffic uses it yet), and dropped
/// without `IF EXISTS`, as this migration always has been (its SQL stays as applied).
const TABLE: TableSpec = TableSpec {
    name: "synced_sessions",
    note: None,
    mode: Mode::Plain,
    drop_if_exists: false,
    create: create_table,
    indexes: &[NewTableIndex {
        name: CLIENT_ID_INDEX,
        summary: "unique client id per user",
        columns: &["user_id", "client_id"],
        unique: true,
    }],
};

/// MySQL/MariaDB: the table names its character set (`utf8mb4`, collation
/// `utf8mb4_unicode_ci`; [`Dialect::text_table`]). It took the database's default until
/// 2026-12; that plan's MySQL sum is listed in `EARLIER_CHECKSUMS`, so a database that applied
/// it is not flagged as changed. It is the same table wherever that default was `utf8mb4`, which
/// `up` has required since (charset.rs); an older `utf8mb3` database needs the conversion
/// that refusal gives. PostgreSQL and SQLite plans are unchanged.
fn create_table(dialect: &dyn Dialect) -> TableCreateStatement {
    dialect
        .text_table("synced_sessions")
        .col(
            ColumnDef::new(SyncedSessions::Id)
                .big_integer()
                .not_null()
                .auto_increment()
                .primary_key(),
        )
        .col(
            ColumnDef::new(SyncedSessions::UserId)
                .big_integer()
                .not_null(),
        )
        .col(
            ColumnDef::new(SyncedSessions::ClientId)
                .string_len(100)
                .not_null(),
        )
        .col(
            ColumnDef::new(SyncedSessions::DeviceName)
                .string_len(255)
                .not_null(),
        )
        .col(ColumnDef::new(SyncedSessions::Payload).text().not_null())
        .col(crate::created_at(SyncedSessions::CreatedAt))
        .col(crate::created_at(SyncedSessions::UpdatedAt))
        .foreign_key(
            ForeignKey::create()
                .name("fk_sessions_user")
                .from(dialect.table("synced_sessions"), SyncedSessions::UserId)
                .to(dialect.table("users"), Users::Id)
                .on_delete(ForeignKeyAction::Cascade),
        )
        .take()
}

crate::planned_migration!(Migration);
