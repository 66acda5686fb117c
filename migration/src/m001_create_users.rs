//! `users`: one row per account. Plain DDL on a new table: nothing else can hold a lock on it.

use sea_orm_migration::prelude::*;

use crate::dialect::Dialect;
use crate::idents::Users;
use crate::operation::{Operation, Operations, TableSpec};
use crate::step::Mode;

#[derive(DeriveMigrationName)]
pub struct Migration;

impl Operations for Migration {
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

fn create_table(dialect: &dyn Dialect) -> TableCreateStatement {
    Table::create()
        .table(dialect.table("users"))
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
