//! `synced_sessions`: what a user's devices sync, keyed per user by a client-chosen id so a
//! device can retry a sync safely. Deleting a user deletes their sessions.

use sea_orm_migration::prelude::*;
use sea_orm_migration::sea_orm::DbBackend;

use crate::idents::{SyncedSessions, Users};
use crate::probe::Probe;
use crate::schema::table;
use crate::step::{Direction, Mode, Planned, Step};

#[derive(DeriveMigrationName)]
pub struct Migration;

pub const CLIENT_ID_INDEX: &str = "idx_sessions_user_client";

impl Planned for Migration {
    fn plan(&self, backend: DbBackend, direction: Direction) -> Vec<Step> {
        match direction {
            Direction::Up => vec![
                Step::new(
                    "create table synced_sessions",
                    Mode::Plain,
                    Probe::Table {
                        table: "synced_sessions",
                        present: true,
                    },
                )
                .build(
                    backend,
                    Table::create()
                        .table(table(backend, SyncedSessions::Table))
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
                                .from(
                                    table(backend, SyncedSessions::Table),
                                    SyncedSessions::UserId,
                                )
                                .to(table(backend, Users::Table), Users::Id)
                                .on_delete(ForeignKeyAction::Cascade),
                        ),
                ),
                Step::new(
                    "unique client id per user",
                    Mode::Plain,
                    Probe::index_present("synced_sessions", CLIENT_ID_INDEX),
                )
                .build(
                    backend,
                    Index::create()
                        .name(CLIENT_ID_INDEX)
                        .table(table(backend, SyncedSessions::Table))
                        .col(SyncedSessions::UserId)
                        .col(SyncedSessions::ClientId)
                        .unique(),
                ),
            ],
            Direction::Down => vec![
                Step::new(
                    "drop table synced_sessions",
                    Mode::Plain,
                    Probe::Table {
                        table: "synced_sessions",
                        present: false,
                    },
                )
                .build(
                    backend,
                    Table::drop().table(table(backend, SyncedSessions::Table)),
                ),
            ],
        }
    }
}

crate::planned_migration!(Migration);
