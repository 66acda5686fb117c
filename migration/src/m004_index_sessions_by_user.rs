//! Index for a user's sessions newest first (`WHERE user_id = ? ORDER BY id DESC`), which the
//! API's cursor pagination walks.

use sea_orm_migration::prelude::*;
use sea_orm_migration::sea_orm::DbBackend;

use crate::idents::SyncedSessions;
use crate::probe::Probe;
use crate::schema::table;
use crate::step::{Direction, Mode, Planned, Step};

#[derive(DeriveMigrationName)]
pub struct Migration;

const INDEX: &str = "idx_sessions_user_id_id";

impl Planned for Migration {
    fn plan(&self, backend: DbBackend, direction: Direction) -> Vec<Step> {
        match direction {
            Direction::Up => vec![
                Step::new(
                    "index sessions by (user_id, id)",
                    Mode::Plain,
                    Probe::index_present("synced_sessions", INDEX),
                )
                .build(
                    backend,
                    Index::create()
                        .name(INDEX)
                        .table(table(backend, SyncedSessions::Table))
                        .col(SyncedSessions::UserId)
                        .col(SyncedSessions::Id),
                ),
            ],
            Direction::Down => vec![
                Step::new(
                    "drop index idx_sessions_user_id_id",
                    Mode::Plain,
                    Probe::index_absent("synced_sessions", INDEX),
                )
                .build(
                    backend,
                    Index::drop()
                        .name(INDEX)
                        .table(table(backend, SyncedSessions::Table)),
                ),
            ],
        }
    }
}

crate::planned_migration!(Migration);
