//! Bearer tokens: 256 random bits shown once, stored only as their SHA-256, revocable.

use axum::extract::FromRequestParts;
use axum::http::header::AUTHORIZATION;
use axum::http::request::Parts;
use chrono::Utc;
use entity::{api_tokens, users};
use sea_orm::{
    ActiveModelTrait, ActiveValue::Set, ColumnTrait, ConnectionTrait, EntityTrait, QueryFilter,
};
use sha2::{Digest, Sha256};

use crate::error::ApiError;
use crate::state::AppState;

const PREFIX: &str = "bst_";

/// A new token's secret form (give it to the user) and the hash to store.
pub struct NewToken {
    pub secret: String,
    pub hash: String,
}

pub fn new_token() -> Result<NewToken, ApiError> {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes)
        .map_err(|e| ApiError::internal(std::io::Error::other(e.to_string())))?;
    let secret = format!("{PREFIX}{}", hex(&bytes));
    Ok(NewToken {
        hash: hash(&secret),
        secret,
    })
}

pub fn hash(secret: &str) -> String {
    hex(&Sha256::digest(secret.as_bytes()))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Issues a token for `user_id` and returns its secret.
pub async fn issue<C: ConnectionTrait>(
    db: &C,
    user_id: i64,
    label: Option<String>,
) -> Result<String, ApiError> {
    let token = new_token()?;
    api_tokens::ActiveModel {
        user_id: Set(user_id),
        token_hash: Set(token.hash),
        label: Set(label),
        created_at: Set(Utc::now().fixed_offset()),
        ..Default::default()
    }
    .insert(db)
    .await?;
    Ok(token.secret)
}

/// Revokes every live token of `user_id`; returns how many.
pub async fn revoke_all<C: ConnectionTrait>(db: &C, user_id: i64) -> Result<u64, ApiError> {
    let result = api_tokens::Entity::update_many()
        .col_expr(
            api_tokens::Column::RevokedAt,
            sea_orm::sea_query::Expr::value(Utc::now().fixed_offset()),
        )
        .filter(api_tokens::Column::UserId.eq(user_id))
        .filter(api_tokens::Column::RevokedAt.is_null())
        .exec(db)
        .await?;
    Ok(result.rows_affected)
}

/// The caller, from `Authorization: Bearer <token>`. Any failure is the same 401.
pub struct CurrentUser(pub users::Model);

impl FromRequestParts<AppState> for CurrentUser {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        // Every failure counts against the peer's allowance (UNKNOWN_TOKENS_PER_PEER); past
        // it, the answer is a 429 held 1 to 2 s (`crate::rate_buckets::held`).
        let peer = || {
            let connection = crate::token_gate::connection_address(parts);
            state.peer_limit.peer(&parts.headers, connection)
        };
        // A malformed token, or one the database lately did not know, costs no query.
        let Some(secret) = parts
            .headers
            .get(AUTHORIZATION)
            .and_then(|value| value.to_str().ok())
            .and_then(well_formed_token)
        else {
            return Err(state.peer_limit.failed(peer()).await);
        };
        let token_hash = hash(secret);
        if state.unknown_tokens.is_known_unknown(&token_hash) {
            return Err(state.peer_limit.failed(peer()).await);
        }
        // A token lately found valid is looked up whatever its peer did; any other lookup is
        // taken from the peer's allowance (given back if the token is found).
        let lookup = if state.valid_tokens.contains(&token_hash) {
            None
        } else {
            Some(state.peer_limit.admit(peer()).await?)
        };
        let found = api_tokens::Entity::find()
            .filter(api_tokens::Column::TokenHash.eq(token_hash.as_str()))
            .filter(api_tokens::Column::RevokedAt.is_null())
            .find_also_related(users::Entity)
            .one(&state.db)
            .await?;
        match found {
            Some((_, Some(user))) => {
                state.valid_tokens.remember(&token_hash);
                Ok(CurrentUser(user))
            }
            // Revoked tokens too: revocation is for good.
            _ => {
                if let Some(lookup) = lookup {
                    lookup.found_nothing();
                }
                state.unknown_tokens.remember(token_hash);
                Err(ApiError::Unauthorized)
            }
        }
    }
}

/// The token of an `Authorization` value if it has the form [`new_token`] gives every token:
/// `bst_` and 64 lowercase hex digits. Anything else cannot be a token and is refused without
/// a query (before, any value starting with `bst_` cost one).
pub fn well_formed_token(value: &str) -> Option<&str> {
    let token = bearer_credentials(value)?;
    let digits = token.strip_prefix(PREFIX)?;
    let hex = digits.len() == 64
        && digits
            .bytes()
            .all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
    hex.then_some(token)
}

/// The credentials of an `Authorization: Bearer <token>` value. The scheme name is
/// case-insensitive and may be followed by several spaces (RFC 9110 section 11.1).
fn bearer_credentials(value: &str) -> Option<&str> {
    let (scheme, credentials) = value.trim().split_once([' ', '\t'])?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| credentials.trim())
        .filter(|credentials| !credentials.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bearer_scheme_is_case_insensitive() {
        for value in [
            "Bearer bst_1",
            "bearer bst_1",
            "BEARER  bst_1",
            " Bearer\tbst_1 ",
        ] {
            assert_eq!(bearer_credentials(value), Some("bst_1"), "{value:?}");
        }
        for value in [
            "Basic bst_1",
            "Bearer",
            "Bearer ",
            "Bearerbst_1",
            "bst_1",
            "",
        ] {
            assert_eq!(bearer_credentials(value), None, "{value:?}");
        }
    }

    #[test]
    fn tokens_are_long_random_and_hashed() {
        let a = new_token().unwrap();
        let b = new_token().unwrap();
        assert_ne!(a.secret, b.secret);
        assert_eq!(a.secret.len(), PREFIX.len() + 64);
        assert_eq!(a.hash, hash(&a.secret));
        assert!(!a.hash.contains(&a.secret[PREFIX.len()..]));
    }
}
