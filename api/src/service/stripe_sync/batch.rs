//! A page of subscriptions fetched by `stripe-sync`, or a page of its links, applied in one
//! transaction.
//!
//! One transaction per subscription costs five to eight round trips each, and at a million
//! subscriptions those round trips, not Stripe's rate, bound the run (docs/benchmarks.md,
//! "stripe-sync at a million customers"). A page here costs a few statements whatever its size
//! when nothing changed (the repeat run), and one more per user whose columns change.
//!
//! The same rule as one subscription's write ([`super::apply_fetched_subscription`]): each
//! snapshot is planned by [`plan_keep`] against its locked stored row, and each user whose
//! subscriptions changed is settled by [`settled`] over every subscription of their live
//! customers, read after their row is locked. What differs is only how many rows a statement
//! takes, and so the lock order, kept compatible with a webhook's (customer, subscription,
//! user):
//! 1. the page's customers, in the order of their ids, one statement;
//! 2. the page's subscriptions, in the order of their ids, one statement;
//! 3. the users to settle, in the order of their ids, one statement.
//!
//! Two pages, or a page and a webhook, therefore do not wait for each other in a cycle: each
//! takes every row of one table before any row of the next, and each table in one order (a
//! page that must go row by row locks them all first the same way). A deadlock a server
//! reports anyway (new customers are inserted after the existing ones are locked, and
//! InnoDB's duplicate check takes a lock of its own) starts the page again, as it would a
//! webhook; a page that keeps failing is written a row at a time by the caller. A page the database refuses fails whole: the caller applies its subscriptions one
//! at a time then, so that one bad subscription fails alone.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

use chrono::Utc;
use entity::{stripe_customers, stripe_subscriptions, users};
use sea_orm::{
    ActiveModelTrait, ColumnTrait, ConnectionTrait, DbErr, EntityTrait, IntoActiveModel,
    QueryFilter, QueryOrder, QuerySelect,
};

use sea_orm::sea_query::{CaseStatement, Expr};

use super::{
    IfNone, Keep, Kept, LinkOutcome, Outcome, UserColumns, customer_refuses, fetched_outcome,
    linked_user, move_keys, plan_keep, retrying, settled, user_refuses,
};
use crate::db::Db;
use crate::error::ApiError;
use crate::stripe::event::Snapshot;

/// Applies `snapshots` (a page, as fetched at `observed_at` by Stripe's clock) in one
/// transaction; an outcome per snapshot, in their order, as
/// [`super::apply_fetched_subscription`] answers for each.
#[tracing::instrument(level = "debug", skip_all, fields(subscriptions = snapshots.len()))]
pub async fn apply_fetched_subscriptions(
    db: &Db,
    snapshots: &[Snapshot],
    observed_at: i64,
) -> Result<Vec<Outcome>, ApiError> {
    Ok(retrying!(db, |txn| apply_page(
        txn,
        snapshots,
        observed_at - 1
    )))
}

async fn apply_page<C: ConnectionTrait>(
    db: &C,
    snapshots: &[Snapshot],
    created: i64,
) -> Result<Vec<Outcome>, DbErr> {
    let mut seen = HashSet::with_capacity(snapshots.len());
    if !snapshots.iter().all(|s| seen.insert(&s.subscription)) {
        // One subscription twice in a page (Stripe's list moved under the cursor): each
        // snapshot must be planned over the one before it, so one after the other, once
        // every row they touch is locked in the page's order.
        let customers = lock_customers(db, snapshots.iter().map(|s| s.customer.as_str())).await?;
        lock_subscriptions(db, snapshots).await?;
        lock_users(db, customers.values().filter_map(linked_user)).await?;
        let mut outcomes = Vec::with_capacity(snapshots.len());
        for snapshot in snapshots {
            outcomes.push(fetched_outcome(
                super::apply_snapshot(db, snapshot, created).await?,
            ));
        }
        return Ok(outcomes);
    }
    let customers = lock_customers(db, snapshots.iter().map(|s| s.customer.as_str())).await?;
    let mut stored = lock_subscriptions(db, snapshots).await?;
    let now = Utc::now().fixed_offset();
    let mut inserts = Vec::new();
    let mut updates = Vec::new();
    let mut moved: BTreeMap<i16, Vec<&str>> = BTreeMap::new();
    let mut kept = Vec::with_capacity(snapshots.len());
    for snapshot in snapshots {
        let plan = plan_keep(
            stored.remove(snapshot.subscription.as_str()),
            snapshot,
            created,
            now,
        );
        kept.push(plan.kept());
        match plan {
            Keep::Insert(row) => inserts.push(row),
            Keep::Update(row) => updates.push(row),
            Keep::MoveKey { rank, .. } => moved
                .entry(rank)
                .or_default()
                .push(snapshot.subscription.as_str()),
            Keep::Stale => {}
        }
    }
    stripe_subscriptions::Entity::insert_many(inserts)
        .exec_without_returning(db)
        .await?;
    for (rank, subscriptions) in &moved {
        move_keys(db, subscriptions, created, *rank).await?;
    }
    for row in updates {
        row.update(db).await?;
    }
    let mut to_settle = BTreeSet::new();
    let outcomes = snapshots
        .iter()
        .zip(kept)
        .map(|(snapshot, kept)| {
            let Some(user) = customers.get(&snapshot.customer).and_then(linked_user) else {
                return fetched_outcome((kept, Outcome::UnknownCustomer));
            };
            if kept == Kept::Changed {
                to_settle.insert(user);
            }
            fetched_outcome((kept, Outcome::Applied))
        })
        .collect();
    settle_users(db, &to_settle).await?;
    Ok(outcomes)
}

/// The customers' rows, locked in the order of their ids; those the database does not hold
/// yet are created (and so locked) after them, as a webhook creates one.
async fn lock_customers<'a, C: ConnectionTrait>(
    db: &C,
    ids: impl Iterator<Item = &'a str>,
) -> Result<HashMap<String, stripe_customers::Model>, DbErr> {
    let ids: BTreeSet<&str> = ids.collect();
    let mut locked: HashMap<String, stripe_customers::Model> = stripe_customers::Entity::find()
        .filter(stripe_customers::Column::CustomerId.is_in(ids.iter().copied()))
        .order_by_asc(stripe_customers::Column::CustomerId)
        .lock_exclusive()
        .all(db)
        .await?
        .into_iter()
        .map(|row| (row.customer_id.clone(), row))
        .collect();
    let now = Utc::now().fixed_offset();
    let created: Vec<stripe_customers::Model> = ids
        .iter()
        .filter(|id| !locked.contains_key(**id))
        .map(|id| stripe_customers::Model {
            customer_id: (*id).to_owned(),
            user_id: None,
            deleted_at: None,
            created_at: now,
        })
        .collect();
    // One statement for all of them. A twin's insert of one (a webhook's, meanwhile) is a
    // unique violation, which starts the page again; the select above then finds it.
    stripe_customers::Entity::insert_many(
        created
            .iter()
            .cloned()
            .map(IntoActiveModel::into_active_model),
    )
    .exec_without_returning(db)
    .await?;
    locked.extend(
        created
            .into_iter()
            .map(|row| (row.customer_id.clone(), row)),
    );
    Ok(locked)
}

/// The users' rows, locked in the order of their ids.
async fn lock_users<C: ConnectionTrait>(
    db: &C,
    ids: impl Iterator<Item = i64>,
) -> Result<Vec<users::Model>, DbErr> {
    let ids: BTreeSet<i64> = ids.collect();
    if ids.is_empty() {
        return Ok(Vec::new());
    }
    super::super::lock_user_rows(
        db,
        users::Entity::find()
            .filter(users::Column::Id.is_in(ids))
            .order_by_asc(users::Column::Id),
    )
    .all(db)
    .await
}

/// The page's stored subscriptions, locked in the order of their ids.
async fn lock_subscriptions<C: ConnectionTrait>(
    db: &C,
    snapshots: &[Snapshot],
) -> Result<HashMap<String, stripe_subscriptions::Model>, DbErr> {
    let ids = snapshots.iter().map(|s| s.subscription.as_str());
    by_subscription_id(
        db,
        subscriptions_with(ids)
            .order_by_asc(stripe_subscriptions::Column::SubscriptionId)
            .lock_exclusive(),
    )
    .await
}

/// The stored states of `subscriptions`, by id, in one query, unlocked: what `stripe-sync`
/// compares Stripe's with once a page changed nothing.
pub async fn stored_subscriptions(
    db: &Db,
    subscriptions: &[&str],
) -> Result<HashMap<String, stripe_subscriptions::Model>, ApiError> {
    if subscriptions.is_empty() {
        return Ok(HashMap::new());
    }
    let found = subscriptions_with(subscriptions.iter().copied());
    Ok(by_subscription_id(db, found).await?)
}

fn subscriptions_with<'a>(
    ids: impl Iterator<Item = &'a str>,
) -> sea_orm::Select<stripe_subscriptions::Entity> {
    stripe_subscriptions::Entity::find()
        .filter(stripe_subscriptions::Column::SubscriptionId.is_in(ids))
}

async fn by_subscription_id<C: ConnectionTrait>(
    db: &C,
    select: sea_orm::Select<stripe_subscriptions::Entity>,
) -> Result<HashMap<String, stripe_subscriptions::Model>, DbErr> {
    let rows = select.all(db).await?;
    Ok(rows
        .into_iter()
        .map(|row| (row.subscription_id.clone(), row))
        .collect())
}

/// [`super::refresh_user`] for several users: their rows locked in the order of their ids (one
/// statement), then every subscription of their live customers read (two), then each user's
/// columns set where they change.
async fn settle_users<C: ConnectionTrait>(db: &C, ids: &BTreeSet<i64>) -> Result<(), DbErr> {
    if ids.is_empty() {
        return Ok(());
    }
    let locked = lock_users(db, ids.iter().copied()).await?;
    let owners: HashMap<String, i64> = stripe_customers::Entity::find()
        .select_only()
        .column(stripe_customers::Column::CustomerId)
        .column(stripe_customers::Column::UserId)
        .filter(stripe_customers::Column::UserId.is_in(ids.iter().copied()))
        .filter(stripe_customers::Column::DeletedAt.is_null())
        .into_tuple::<(String, Option<i64>)>()
        .all(db)
        .await?
        .into_iter()
        .filter_map(|(customer, user)| Some((customer, user?)))
        .collect();
    let mut rows_of: HashMap<i64, Vec<stripe_subscriptions::Model>> = HashMap::new();
    if !owners.is_empty() {
        let rows = stripe_subscriptions::Entity::find()
            .filter(
                stripe_subscriptions::Column::CustomerId.is_in(owners.keys().map(String::as_str)),
            )
            .all(db)
            .await?;
        for row in rows {
            if let Some(user) = owners.get(&row.customer_id) {
                rows_of.entry(*user).or_default().push(row);
            }
        }
    }
    let changed: Vec<(i64, UserColumns)> = locked
        .iter()
        .filter_map(|user| {
            let rows = rows_of.remove(&user.id).unwrap_or_default();
            Some((user.id, settled(user, &rows, IfNone::Keep)?))
        })
        .collect();
    write_users(db, changed).await
}

/// Sets each user's columns, in one statement (a `CASE` over the ids per column; the WHERE
/// takes only the rows a WHEN names, so there is no ELSE).
async fn write_users<C: ConnectionTrait>(
    db: &C,
    changed: Vec<(i64, UserColumns)>,
) -> Result<(), DbErr> {
    if changed.is_empty() {
        return Ok(());
    }
    let ids: Vec<i64> = changed.iter().map(|(id, _)| *id).collect();
    let column = |value: fn(&UserColumns) -> sea_orm::Value| -> Expr {
        changed
            .iter()
            .fold(CaseStatement::new(), |case, (id, columns)| {
                case.case(users::Column::Id.eq(*id), value(columns))
            })
            .into()
    };
    users::Entity::update_many()
        .col_expr(
            users::Column::StripeCustomerId,
            column(|c| c.stripe_customer_id.clone().into()),
        )
        .col_expr(
            users::Column::SubscriptionId,
            column(|c| c.subscription_id.clone().into()),
        )
        .col_expr(
            users::Column::SubscriptionStatus,
            column(|c| c.subscription_status.clone().into()),
        )
        .col_expr(
            users::Column::CurrentPeriodEnd,
            column(|c| c.current_period_end.into()),
        )
        .col_expr(
            users::Column::PastDueSince,
            column(|c| c.past_due_since.into()),
        )
        .col_expr(
            users::Column::EndsAtPeriodEnd,
            column(|c| c.ends_at_period_end.into()),
        )
        .col_expr(
            users::Column::PriceGrantsPro,
            column(|c| c.price_grants_pro.into()),
        )
        .col_expr(
            users::Column::UpdatedAt,
            Expr::value(Utc::now().fixed_offset()),
        )
        .filter(users::Column::Id.is_in(ids))
        .exec(db)
        .await?;
    Ok(())
}

/// Links each `(user, customer)` of `links` as [`super::link_customer`] would, one after the
/// other in their order, in one transaction: an outcome per link, in their order. The lock
/// order is a page's: every customer (in the order of their ids), then every user linked (in
/// theirs).
#[tracing::instrument(level = "debug", skip_all, fields(links = links.len()))]
pub async fn link_customers(
    db: &Db,
    links: &[(i64, String)],
) -> Result<Vec<LinkOutcome>, ApiError> {
    Ok(retrying!(db, |txn| link_page(txn, links)))
}

async fn link_page<C: ConnectionTrait>(
    db: &C,
    links: &[(i64, String)],
) -> Result<Vec<LinkOutcome>, DbErr> {
    let (mut users_seen, mut customers_seen) = (HashSet::new(), HashSet::new());
    if !links
        .iter()
        .all(|(user, customer)| users_seen.insert(*user) && customers_seen.insert(customer))
    {
        // A user or a customer twice: each link must see the one before it.
        return one_after_another(db, links).await;
    }
    let customers = lock_customers(db, links.iter().map(|(_, c)| c.as_str())).await?;
    let mut outcomes: Vec<Option<LinkOutcome>> = vec![None; links.len()];
    let mut candidates = Vec::new();
    for (n, (user, customer)) in links.iter().enumerate() {
        if let Some(row) = customers.get(customer) {
            outcomes[n] = customer_refuses(row, *user);
            if outcomes[n].is_none() {
                candidates.push(n);
            }
        }
    }
    if candidates.is_empty() {
        return Ok(finished(outcomes));
    }
    let mut users: HashMap<i64, users::Model> =
        lock_users(db, candidates.iter().map(|&n| links[n].0))
            .await?
            .into_iter()
            .map(|user| (user.id, user))
            .collect();
    // Checked, not left to the unique index, as one link checks it.
    let claimed: HashMap<String, i64> = users::Entity::find()
        .select_only()
        .column(users::Column::StripeCustomerId)
        .column(users::Column::Id)
        .filter(
            users::Column::StripeCustomerId.is_in(candidates.iter().map(|&n| links[n].1.as_str())),
        )
        .into_tuple::<(Option<String>, i64)>()
        .all(db)
        .await?
        .into_iter()
        .filter_map(|(customer, user)| Some((customer?, user)))
        .collect();
    // A customer held in the column of another user of this page (set before m010, with no
    // link): one link after the other, that user's own link may free it for this one.
    let linking: HashMap<&str, i64> = candidates
        .iter()
        .map(|&n| (links[n].1.as_str(), links[n].0))
        .collect();
    let paged_users: HashSet<i64> = linking.values().copied().collect();
    if claimed.iter().any(|(customer, owner)| {
        paged_users.contains(owner) && linking.get(customer.as_str()) != Some(owner)
    }) {
        return one_after_another(db, links).await;
    }
    let mut linked: Vec<(i64, &str)> = Vec::new();
    for n in candidates {
        let (user_id, customer) = (links[n].0, links[n].1.as_str());
        let claimed_by = claimed.get(customer).copied();
        match user_refuses(users.remove(&user_id), claimed_by, user_id, customer) {
            Ok(_) => {
                outcomes[n] = Some(LinkOutcome::Linked);
                linked.push((user_id, customer));
            }
            Err(refused) => outcomes[n] = Some(refused),
        }
    }
    if !linked.is_empty() {
        link_rows(db, &linked).await?;
        settle_users(db, &linked.iter().map(|(user, _)| *user).collect()).await?;
    }
    Ok(finished(outcomes))
}

/// The links one after the other, each seeing the one before it, in the page's transaction.
async fn one_after_another<C: ConnectionTrait>(
    db: &C,
    links: &[(i64, String)],
) -> Result<Vec<LinkOutcome>, DbErr> {
    // Every row the links touch, locked first in the page's order (again, where held).
    lock_customers(db, links.iter().map(|(_, c)| c.as_str())).await?;
    lock_users(db, links.iter().map(|(user, _)| *user)).await?;
    let mut outcomes = Vec::with_capacity(links.len());
    for (user, customer) in links {
        outcomes.push(super::link(db, *user, customer, None).await?);
    }
    Ok(outcomes)
}

/// Every link's outcome, each decided above (every customer was locked or created).
fn finished(outcomes: Vec<Option<LinkOutcome>>) -> Vec<LinkOutcome> {
    outcomes
        .into_iter()
        .map(|outcome| outcome.unwrap_or(LinkOutcome::UnknownUser))
        .collect()
}

/// Writes the links: each customer's user, and each user's `stripe_customer_id` (the customer
/// just linked, as one link sets it, before the tier's subscription decides it), two
/// statements for the page (`CASE` over the ids; users and customers are distinct here).
async fn link_rows<C: ConnectionTrait>(db: &C, linked: &[(i64, &str)]) -> Result<(), DbErr> {
    // No ELSE: the WHERE takes only the rows a WHEN names.
    let owners = linked
        .iter()
        .fold(CaseStatement::new(), |case, (user, customer)| {
            case.case(stripe_customers::Column::CustomerId.eq(*customer), *user)
        });
    stripe_customers::Entity::update_many()
        .col_expr(stripe_customers::Column::UserId, owners.into())
        .filter(stripe_customers::Column::CustomerId.is_in(linked.iter().map(|(_, c)| *c)))
        .exec(db)
        .await?;
    let chosen = linked
        .iter()
        .fold(CaseStatement::new(), |case, (user, customer)| {
            case.case(users::Column::Id.eq(*user), *customer)
        });
    users::Entity::update_many()
        .col_expr(users::Column::StripeCustomerId, chosen.into())
        .col_expr(
            users::Column::UpdatedAt,
            Expr::value(Utc::now().fixed_offset()),
        )
        .filter(users::Column::Id.is_in(linked.iter().map(|(user, _)| *user)))
        .exec(db)
        .await?;
    Ok(())
}

/// A table a `stripe-sync` run grows.
#[derive(Debug, Clone, Copy)]
pub enum Grown {
    Customers,
    Subscriptions,
}

/// PostgreSQL: refreshes the planner's statistics of a table a `stripe-sync` run is growing.
/// A page reads `IN (…)` lists over non-unique indexes (customers by user, subscriptions by
/// customer); planned from the statistics of the near-empty table it was (right after m010,
/// or where autovacuum is off or has not come round yet), each read turns into a scan of the
/// whole table, and a first run at a million customers slows to a crawl (docs/benchmarks.md).
/// A role that does not own the table gets a warning from PostgreSQL and keeps the old
/// statistics. Other backends are left to their own: InnoDB recalculates as a table changes,
/// SQLite plans without.
pub async fn refresh_statistics(db: &Db, table: Grown) -> Result<(), ApiError> {
    if db.get_database_backend() != sea_orm::DbBackend::Postgres {
        return Ok(());
    }
    let table = match table {
        Grown::Customers => "stripe_customers",
        Grown::Subscriptions => "stripe_subscriptions",
    };
    db.execute_unprepared(&format!("ANALYZE {table}")).await?;
    Ok(())
}
