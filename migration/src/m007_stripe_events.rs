//! `stripe_events`: every Stripe event applied, so deliveries are idempotent and order-safe.
//!
//! Stripe retries for days, may deliver an event twice and does not keep order. The event id
//! is the primary key, so a second delivery is recognised. Subscription events keep the
//! snapshot they carry (customer, subscription, status, period end, `created`), so the
//! billing state can always be recomputed as the latest snapshot: a late, older event never
//! rolls it back, and events that arrive before the customer is linked to a user are not lost.
//!
//! A new table: plain DDL, no lock on any table in use.

use sea_orm_migration::prelude::*;
use sea_orm_migration::sea_orm::DbBackend;

use crate::probe::Probe;
use crate::schema::table;
use crate::step::{Direction, Mode, Planned, Step};

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden, Clone, Copy)]
enum StripeEvents {
    Table,
    Id,
    EventType,
    Created,
    CustomerId,
    SubscriptionId,
    Status,
    CurrentPeriodEnd,
    ReceivedAt,
}

const CUSTOMER_INDEX: &str = "idx_stripe_events_customer";

/// Stripe ids are case-sensitive; MySQL's default collations are not, which would merge
/// `evt_AbC` with `evt_abc`. There the whole table compares bytes.
fn stripe_table(backend: DbBackend) -> TableCreateStatement {
    crate::dialect::of(backend).case_sensitive_table("stripe_events")
}

impl Planned for Migration {
    fn plan(&self, backend: DbBackend, direction: Direction) -> Vec<Step> {
        match direction {
            Direction::Up => vec![
                Step::new(
                    "create table stripe_events",
                    Mode::Plain,
                    Probe::Table {
                        table: "stripe_events",
                        present: true,
                    },
                )
                .build(
                    backend,
                    stripe_table(backend)
                        // Stripe's event id, e.g. evt_1Q...
                        .col(
                            ColumnDef::new(StripeEvents::Id)
                                .string_len(255)
                                .not_null()
                                .primary_key(),
                        )
                        .col(
                            ColumnDef::new(StripeEvents::EventType)
                                .string_len(100)
                                .not_null(),
                        )
                        // Stripe's `created`, whole seconds since the epoch.
                        .col(
                            ColumnDef::new(StripeEvents::Created)
                                .big_integer()
                                .not_null(),
                        )
                        .col(
                            ColumnDef::new(StripeEvents::CustomerId)
                                .string_len(255)
                                .null(),
                        )
                        .col(
                            ColumnDef::new(StripeEvents::SubscriptionId)
                                .string_len(255)
                                .null(),
                        )
                        .col(ColumnDef::new(StripeEvents::Status).string_len(50).null())
                        .col(
                            ColumnDef::new(StripeEvents::CurrentPeriodEnd)
                                .timestamp_with_time_zone()
                                .null(),
                        )
                        .col(crate::created_at(StripeEvents::ReceivedAt)),
                ),
                Step::new(
                    "index stripe_events by customer",
                    Mode::Plain,
                    Probe::index_present("stripe_events", CUSTOMER_INDEX),
                )
                .build(
                    backend,
                    Index::create()
                        .name(CUSTOMER_INDEX)
                        .table(table(backend, StripeEvents::Table))
                        .col(StripeEvents::CustomerId)
                        .col(StripeEvents::Created),
                ),
            ],
            Direction::Down => vec![
                Step::new(
                    "drop table stripe_events",
                    Mode::Plain,
                    Probe::Table {
                        table: "stripe_events",
                        present: false,
                    },
                )
                .build(
                    backend,
                    Table::drop().table(table(backend, StripeEvents::Table)),
                ),
            ],
        }
    }
}

crate::planned_migration!(Migration);
