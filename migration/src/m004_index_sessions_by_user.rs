//! Index for a user's sessions newest first (`WHERE user_id = ? ORDER BY id DESC`), which the
//! API's cursor pagination walks.

use sea_orm_migration::prelude::*;

use crate::dialect::Dialect;
use crate::operation::{Operation, Operations, PlainIndex};

#[derive(DeriveMigrationName)]
pub struct Migration;

const INDEX: &str = "idx_sessions_user_id_id";

impl Operations for Migration {
    const REQUIRED_TABLES: &'static [&'static str] = &["synced_sessions"];

    /// `down` is derived: the index dropped.
    fn up(&self, _dialect: &dyn Dialect) -> Vec<Operation> {
        vec![Operation::PlainCreateIndex(PlainIndex {
            name: INDEX,
            table: "synced_sessions",
            columns: &["user_id", "id"],
            summary: "index sessions by (user_id, id)",
        })]
    }
}

crate::planned_migration!(Migration);
