//! `users`: one row per account. Plain DDL on a new table: nothing else can hold a lock on it.

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
        let absent = Probe::Table {
            table: "users",
            present: false,
        };
        match direction {
            Direction::Up => vec![
                Step::new(
                    "create table users",
                    Mode::Plain,
                    Probe::Table {
                        table: "users",
                        present: true,
                    },
                )
                .build(
                    backend,
                    Table::create()
                        .table(table(backend, Users::Table))
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
                        .col(crate::created_at(Users::UpdatedAt)),
                ),
            ],
            Direction::Down => vec![
                Step::new("drop table users", Mode::Plain, absent)
                    .build(backend, Table::drop().table(table(backend, Users::Table))),
            ],
        }
    }
}

crate::planned_migration!(Migration);
