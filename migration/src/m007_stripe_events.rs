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

use crate::dialect::Dialect;
use crate::operation::{NewTableIndex, Operation, Operations, TableSpec};
use crate::step::Mode;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden, Clone, Copy)]
enum StripeEvents {
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
fn stripe_table(dialect: &dyn Dialect) -> TableCreateStatement {
    dialect.case_sensitive_table("stripe_events")
}

impl Operations for Migration {
    /// `down` is derived: the table dropped.
    fn up(&self, _dialect: &dyn Dialect) -> Vec<Operation> {
        vec![Operation::CreateTable(TABLE)]
    }
}

/// A new table, created in the migration's transaction (no traffic uses it yet), and dropped
/// without `IF EXISTS`, as this migration always has been (its SQL stays as applied).
const TABLE: TableSpec = TableSpec {
    name: "stripe_events",
    note: None,
    mode: Mode::Plain,
    drop_if_exists: false,
    create: create_table,
    indexes: &[NewTableIndex {
        name: CUSTOMER_INDEX,
        summary: "index stripe_events by customer",
        columns: &["customer_id", "created"],
        unique: false,
    }],
};

fn create_table(dialect: &dyn Dialect) -> TableCreateStatement {
    stripe_table(dialect)
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
        .col(crate::created_at(StripeEvents::ReceivedAt))
        .take()
}

crate::planned_migration!(Migration);
