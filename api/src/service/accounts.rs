//! Accounts: creating users (with their first token) and reading billing state.

use chrono::Utc;
use entity::users;
use sea_orm::{
    ActiveModelTrait, ActiveValue::Set, ColumnTrait, ConnectionTrait, EntityTrait, QueryFilter,
    SqlErr,
};

use crate::auth;
use crate::domain::Email;
use crate::error::ApiError;

/// Creates a user and returns it with a fresh token's secret.
#[tracing::instrument(level = "debug", skip_all)]
pub async fn create_user<C: ConnectionTrait>(
    db: &C,
    email: &Email,
) -> Result<(users::Model, String), ApiError> {
    let now = Utc::now().fixed_offset();
    let user = users::ActiveModel {
        email: Set(email.as_str().to_owned()),
        created_at: Set(now),
        updated_at: Set(now),
        ..Default::default()
    }
    .insert(db)
    .await
    .map_err(|err| match err.sql_err() {
        Some(SqlErr::UniqueConstraintViolation(_)) => ApiError::Conflict {
            code: "email_taken",
            message: format!("a user with e-mail {} already exists", email.as_str()),
        },
        _ => err.into(),
    })?;
    let token = auth::issue(db, user.id, Some("created with the user".to_owned())).await?;
    Ok((user, token))
}

#[tracing::instrument(level = "debug", skip_all)]
pub async fn find_by_email<C: ConnectionTrait>(
    db: &C,
    email: &Email,
) -> Result<users::Model, ApiError> {
    users::Entity::find()
        .filter(users::Column::Email.eq(email.as_str()))
        .one(db)
        .await?
        .ok_or(ApiError::NotFound("no user with that e-mail"))
}
