//! `api_tokens`: bearer tokens, stored only as SHA-256 hashes, revocable.

use sea_orm_migration::prelude::*;
use sea_orm_migration::sea_orm::DbBackend;

use crate::idents::{ApiTokens, Users};
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
                    "create table api_tokens",
                    Mode::Plain,
                    Probe::Table {
                        table: "api_tokens",
                        present: true,
                    },
                )
                .build(
                    backend,
                    Table::create()
                        .table(table(backend, ApiTokens::Table))
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
                                .from(table(backend, ApiTokens::Table), ApiTokens::UserId)
                                .to(table(backend, Users::Table), Users::Id)
                                .on_delete(ForeignKeyAction::Cascade),
                        ),
                ),
            ],
            Direction::Down => vec![
                Step::new(
                    "drop table api_tokens",
                    Mode::Plain,
                    Probe::Table {
                        table: "api_tokens",
                        present: false,
                    },
                )
                .build(
                    backend,
                    Table::drop().table(table(backend, ApiTokens::Table)),
                ),
            ],
        }
    }
}

crate::planned_migration!(Migration);
