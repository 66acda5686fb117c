//! Table and column names shared by the migrations.
//!
//! Migrations are frozen history: they never import `entity`, whose models move on.

use sea_orm_migration::prelude::*;

#[derive(DeriveIden, Clone, Copy)]
pub enum Users {
    Table,
    Id,
    Email,
    DisplayName,
    CreatedAt,
    UpdatedAt,
    StripeCustomerId,
    SubscriptionId,
    SubscriptionStatus,
    CurrentPeriodEnd,
}

#[derive(DeriveIden, Clone, Copy)]
pub enum SyncedSessions {
    Table,
    Id,
    UserId,
    ClientId,
    DeviceName,
    Payload,
    CreatedAt,
    UpdatedAt,
    DeletedAt,
}

#[derive(DeriveIden, Clone, Copy)]
pub enum ApiTokens {
    Table,
    Id,
    UserId,
    TokenHash,
    Label,
    CreatedAt,
    RevokedAt,
}
