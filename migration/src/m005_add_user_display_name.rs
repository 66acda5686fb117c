//! `users.display_name`: a nullable column with no default, metadata-only on every backend.

use sea_orm_migration::prelude::*;

use crate::dialect::Dialect;
use crate::operation::{NewColumn, Operation, Operations, PlainColumn};

#[derive(DeriveMigrationName)]
pub struct Migration;

impl Operations for Migration {
    const REQUIRED_TABLES: &'static [&'static str] = &["users"];

    /// `down` is derived: the column dropped.
    fn up(&self, _dialect: &dyn Dialect) -> Vec<Operation> {
        vec![Operation::PlainAddColumn(PlainColumn {
            table: "users",
            column: NewColumn {
                name: "display_name",
                def: ColumnDef::new(Alias::new("display_name"))
                    .string_len(100)
                    .null()
                    .take(),
            },
        })]
    }
}

crate::planned_migration!(Migration);
