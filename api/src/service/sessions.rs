//! Synced sessions: sync (create or update by client id), read, list, soft delete, restore,
//! trash. Every function is scoped to one user: another user's session is simply not found.

use chrono::{DateTime, FixedOffset, Utc};
use entity::{Billing, Tier, synced_sessions as sessions, users};
use sea_orm::{
    ActiveModelTrait, ActiveValue::Set, ColumnTrait, ConnectionTrait, EntityTrait, IntoActiveModel,
    PaginatorTrait, QueryFilter, QueryOrder, QuerySelect,
};

use crate::domain::{ClientId, Page, SessionInput};
use crate::error::ApiError;
use crate::settings::Limits;

pub enum Synced {
    Created(sessions::Model),
    Updated(sessions::Model),
}

/// Reloads the user with a row lock, so concurrent creates for one user queue up and the tier
/// limit holds. (SQLite has one writer at a time already.)
async fn lock_user<C: ConnectionTrait>(db: &C, user_id: i64) -> Result<users::Model, ApiError> {
    super::lock_user_rows(db, users::Entity::find_by_id(user_id))
        .one(db)
        .await?
        .ok_or(ApiError::Unauthorized)
}

async fn find<C: ConnectionTrait>(
    db: &C,
    user_id: i64,
    id: &ClientId,
) -> Result<Option<sessions::Model>, ApiError> {
    Ok(sessions::Entity::find()
        .filter(sessions::Column::UserId.eq(user_id))
        .filter(sessions::Column::ClientId.eq(id.as_str()))
        .one(db)
        .await?)
}

async fn live_count<C: ConnectionTrait>(db: &C, user_id: i64) -> Result<u64, ApiError> {
    Ok(sessions::Entity::find()
        .filter(sessions::Column::UserId.eq(user_id))
        .filter(sessions::Column::DeletedAt.is_null())
        .count(db)
        .await?)
}

/// The user's billing (tier and retention tier), read at most once per request: a create
/// over an expired trashed row needs both, and each read is a query over every subscription
/// of the user. Read under the user's row lock, which every webhook takes before it commits
/// a change for the user, so one read serves the whole request.
struct BillingOnce<'a> {
    user: &'a users::Model,
    now: DateTime<Utc>,
    read: Option<Billing>,
}

impl<'a> BillingOnce<'a> {
    fn new(user: &'a users::Model, now: DateTime<Utc>) -> Self {
        Self {
            user,
            now,
            read: None,
        }
    }

    async fn get<C: ConnectionTrait>(&mut self, db: &C) -> Result<&Billing, ApiError> {
        let billing = match self.read.take() {
            Some(read) => read,
            None => self.user.billing_at(db, self.now).await?,
        };
        Ok(self.read.insert(billing))
    }
}

/// Refuses one more live session for a Free account at its limit.
async fn ensure_room<C: ConnectionTrait>(
    db: &C,
    billing: &mut BillingOnce<'_>,
    limits: &Limits,
) -> Result<(), ApiError> {
    if billing.get(db).await?.tier == Tier::Pro {
        return Ok(());
    }
    let live = live_count(db, billing.user.id).await?;
    if live >= limits.free_session_limit {
        return Err(ApiError::PaymentRequired {
            message: format!(
                "the Free plan keeps at most {} synced sessions and this account has {live}; \
                 delete one, or upgrade to Pro for unlimited sessions",
                limits.free_session_limit
            ),
        });
    }
    Ok(())
}

#[tracing::instrument(level = "debug", skip_all, fields(user_id = user_id, client_id = id.as_str()))]
pub async fn sync<C: ConnectionTrait>(
    db: &C,
    user_id: i64,
    limits: &Limits,
    id: &ClientId,
    input: SessionInput,
    now: DateTime<Utc>,
) -> Result<Synced, ApiError> {
    let user = lock_user(db, user_id).await?;
    let stamp = now.fixed_offset();
    let mut billing = BillingOnce::new(&user, now);
    let found = find(db, user.id, id).await?;
    let expired = match found.as_ref().and_then(|session| session.deleted_at) {
        Some(at) => retention_expired(at, billing.get(db).await?.retention_tier, limits, now),
        None => false,
    };
    let found = match found {
        // Past its window the session is gone for the user, purged or not (the purge may be
        // off, or behind): its client id starts a new session.
        Some(trashed) if expired => {
            sessions::Entity::delete_many()
                .filter(sessions::Column::Id.eq(trashed.id))
                .filter(sessions::Column::DeletedAt.is_not_null())
                .exec(db)
                .await?;
            None
        }
        found => found,
    };
    match found {
        Some(existing) if existing.deleted_at.is_some() => Err(ApiError::Conflict {
            code: "session_deleted",
            message: format!(
                "session {} is in the trash; restore it (POST /v1/sessions/{}/restore) before syncing it",
                id.as_str(),
                id.as_str()
            ),
        }),
        Some(existing) => {
            let mut active = existing.into_active_model();
            active.device_name = Set(input.device_name);
            active.payload = Set(input.payload);
            active.updated_at = Set(stamp);
            Ok(Synced::Updated(
                active.update(db).await.map_err(purged_meanwhile)?,
            ))
        }
        None => {
            ensure_room(db, &mut billing, limits).await?;
            let created = sessions::ActiveModel {
                user_id: Set(user.id),
                client_id: Set(id.as_str().to_owned()),
                device_name: Set(input.device_name),
                payload: Set(input.payload),
                created_at: Set(stamp),
                updated_at: Set(stamp),
                deleted_at: Set(None),
                ..Default::default()
            }
            .insert(db)
            .await?;
            Ok(Synced::Created(created))
        }
    }
}

#[tracing::instrument(level = "debug", skip_all, fields(user_id = user_id, client_id = id.as_str()))]
pub async fn get<C: ConnectionTrait>(
    db: &C,
    user_id: i64,
    id: &ClientId,
) -> Result<sessions::Model, ApiError> {
    find(db, user_id, id)
        .await?
        .filter(|s| s.deleted_at.is_none())
        .ok_or(ApiError::NotFound("no such session"))
}

/// Which of a user's sessions [`list`] pages through.
pub enum Listing {
    Live,
    /// The trash: soft-deleted sessions still inside the owner's retention window.
    Trash {
        deleted_after: DateTime<FixedOffset>,
    },
}

impl Listing {
    /// The trash as a user of `tier` sees it at `now`.
    pub fn trash(tier: Tier, limits: &Limits, now: DateTime<Utc>) -> Self {
        let window =
            chrono::Duration::from_std(limits.retention(tier)).unwrap_or(chrono::Duration::MAX);
        let deleted_after = now
            .checked_sub_signed(window)
            .unwrap_or(DateTime::<Utc>::MIN_UTC)
            .fixed_offset();
        Listing::Trash { deleted_after }
    }
}

/// A page of sessions, newest first. Returns the rows and the cursor for the next page, if
/// there is one. The window is filtered here, not after the page is cut, so pages stay full.
#[tracing::instrument(level = "debug", skip_all, fields(user_id = user_id))]
pub async fn list<C: ConnectionTrait>(
    db: &C,
    user_id: i64,
    page: &Page,
    listing: Listing,
) -> Result<(Vec<sessions::Model>, Option<i64>), ApiError> {
    let mut query = sessions::Entity::find().filter(sessions::Column::UserId.eq(user_id));
    query = match listing {
        Listing::Live => query.filter(sessions::Column::DeletedAt.is_null()),
        Listing::Trash { deleted_after } => query
            .filter(sessions::Column::DeletedAt.is_not_null())
            .filter(sessions::Column::DeletedAt.gt(deleted_after)),
    };
    if let Some(before) = page.before_id {
        query = query.filter(sessions::Column::Id.lt(before));
    }
    let mut rows = query
        .order_by_desc(sessions::Column::Id)
        .limit(page.limit + 1)
        .all(db)
        .await?;
    let next = if rows.len() as u64 > page.limit {
        rows.truncate(page.limit as usize);
        rows.last().map(|s| s.id)
    } else {
        None
    };
    Ok((rows, next))
}

/// Moves a session to the trash; doing it again changes nothing.
#[tracing::instrument(level = "debug", skip_all, fields(user_id = user_id, client_id = id.as_str()))]
pub async fn soft_delete<C: ConnectionTrait>(
    db: &C,
    user_id: i64,
    id: &ClientId,
    now: DateTime<Utc>,
) -> Result<(), ApiError> {
    let session = find(db, user_id, id)
        .await?
        .ok_or(ApiError::NotFound("no such session"))?;
    if session.deleted_at.is_none() {
        let mut active = session.into_active_model();
        active.deleted_at = Set(Some(now.fixed_offset()));
        active.update(db).await.map_err(purged_meanwhile)?;
    }
    Ok(())
}

/// When a session deleted at `deleted_at` leaves the trash for good.
pub fn purge_after(
    deleted_at: DateTime<FixedOffset>,
    tier: Tier,
    limits: &Limits,
) -> DateTime<FixedOffset> {
    let window =
        chrono::Duration::from_std(limits.retention(tier)).unwrap_or(chrono::Duration::MAX);
    deleted_at.checked_add_signed(window).unwrap_or(deleted_at)
}

/// The tier whose window a trashed session keeps: the purge's (`retention_tier`: Pro when the
/// user held Pro at any moment of the renewal grace). Restore, the trash listing and a PUT over
/// an expired row all use it, so none of them treats as gone a row the purge still keeps.
#[tracing::instrument(level = "debug", skip_all, fields(user_id = user.id))]
pub async fn retention_tier<C: ConnectionTrait>(
    db: &C,
    user: &users::Model,
    now: DateTime<Utc>,
) -> Result<Tier, ApiError> {
    Ok(user.billing_at(db, now).await?.retention_tier)
}

/// Whether a session deleted at `deleted_at` is past its tier's window at `now`: the purge
/// may delete it, restore refuses it, the trash hides it.
pub fn retention_expired(
    deleted_at: DateTime<FixedOffset>,
    tier: Tier,
    limits: &Limits,
    now: DateTime<Utc>,
) -> bool {
    purge_after(deleted_at, tier, limits) <= now
}

/// Restore's answer for a session that does not exist, or no longer: never created, purged,
/// or deleted longer ago than the retention window.
const NOTHING_TO_RESTORE: &str =
    "no such session, or deleted longer ago than the plan's retention window";

/// Brings a session back from the trash while its tier's retention window lasts.
#[tracing::instrument(level = "debug", skip_all, fields(user_id = user_id, client_id = id.as_str()))]
pub async fn restore<C: ConnectionTrait>(
    db: &C,
    user_id: i64,
    limits: &Limits,
    id: &ClientId,
    now: DateTime<Utc>,
) -> Result<sessions::Model, ApiError> {
    let user = lock_user(db, user_id).await?;
    let session = find(db, user.id, id)
        .await?
        .ok_or(ApiError::NotFound(NOTHING_TO_RESTORE))?;
    let Some(deleted_at) = session.deleted_at else {
        return Ok(session);
    };
    let mut billing = BillingOnce::new(&user, now);
    let tier = billing.get(db).await?.retention_tier;
    // Past its window a session is gone for the user whether the purge has removed its row
    // yet or not (the purge may be off, or behind): the same answer as after the purge, so a
    // client sees one status for it, not 410 until the purge runs and 404 after.
    if retention_expired(deleted_at, tier, limits, now) {
        return Err(ApiError::NotFound(NOTHING_TO_RESTORE));
    }
    ensure_room(db, &mut billing, limits).await?;
    let mut active = session.into_active_model();
    active.deleted_at = Set(None);
    active.updated_at = Set(now.fixed_offset());
    active.update(db).await.map_err(purged_meanwhile)
}

/// The retention job may hard-delete a session between our read and our write: to the
/// caller it is simply gone.
fn purged_meanwhile(err: sea_orm::DbErr) -> ApiError {
    match err {
        sea_orm::DbErr::RecordNotUpdated => ApiError::NotFound("no such session"),
        other => other.into(),
    }
}
