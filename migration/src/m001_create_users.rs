//! `users`: one row per account. Plain DDL on a new table: nothing else can hold a lock on it.

use sea_orm_migration::prelude::*;

use crate::dialect::Dialect;
use crate::idents::Users;
use crate::operation::{Operation, Operations, TableSpec};
use crate::step::Mode;

#[derive(DeriveMigrationName)]
pub struct Migration;

impl Operations for Migration {
    /// The MySQL sum of the plan before the table named its character set (below).
    const EARLIER_CHECKSUMS: &'static [&'static str] =
        &["039c2dda3b071640ebd2b0de9477ed1150bf3bcad5a2d0fc991d5b8c4d11fb6a"];

    /// `down` is derived: the table dropped.
    fn up(&self, _dialect: &dyn Dialect) -> Vec<Operation> {
        vec![Operation::CreateTable(TABLE)]
    }
}

/// A new table, created in the migration's transaction (no traffic uses it yet), and dropped
/// without `IF EXISTS`, as this migration always has been (its SQL stays as applied).
const TABLE: TableSpec = TableSpec {
    name: "users",
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
        .text_table("users")
        .col(
            ColumnDef::new(Users::Id)
                .big_integer()
                .not_null()
                .auto_increment()
                .primary_key(),
        )
        .col(
            ColumnDef::new(Users::Email)
                .string_len(320)
                .not_null()
                .unique_key(),
        )
        .col(crate::created_at(Users::CreatedAt))
        .col(crate::created_at(Users::UpdatedAt))
        .take()
}

crate::planned_migration!(Migration);
