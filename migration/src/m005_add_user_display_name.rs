//! `users.display_name`: a nullable column with no default, metadata-only on every backend.

use sea_orm_migration::prelude::*;
use sea_orm_migration::sea_orm::DbBackend;

use crate::idents::Users;
use crate::probe::Probe;
use crate::schema::table;
use crate::step::{Direction, Mode, Planned, Step};

#[derive(DeriveMigrationName)]
pub struct Migration;

impl Planned for Migration {
    fn plan(&self, backend: DbBackend, direction: Direction) -> Vec<Step> {
        match direction {
            Direction::Up => vec![
                Step::new(
                    "add users.display_name",
                    Mode::Plain,
                    Probe::column_present("users", "display_name"),
                )
                .build(
                    backend,
                    Table::alter()
                        .table(table(backend, Users::Table))
                        .add_column(ColumnDef::new(Users::DisplayName).string_len(100).null()),
                ),
            ],
            Direction::Down => vec![
                Step::new(
                    "drop users.display_name",
                    Mode::Plain,
                    Probe::column_absent("users", "display_name"),
                )
                .build(
                    backend,
                    Table::alter()
                        .table(table(backend, Users::Table))
                        .drop_column(Users::DisplayName),
                ),
            ],
        }
    }
}

crate::planned_migration!(Migration);
