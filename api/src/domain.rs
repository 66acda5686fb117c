//! Request values parsed into types that cannot hold a bad value (parse, don't validate).
//! Caps match the schema: `client_id` VARCHAR(100), `device_name` VARCHAR(255), `payload` as
//! many bytes as its column holds on the backend in use ([`payload_capacity`]).

use sea_orm::DbBackend;
use serde::Deserialize;

use crate::error::ApiError;

/// A client-chosen session id: 1-100 of `A-Z a-z 0-9 _ - . :`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClientId(String);

impl ClientId {
    pub const MAX_LEN: usize = 100;

    pub fn parse(raw: &str) -> Result<Self, ApiError> {
        let ok = !raw.is_empty()
            && raw.len() <= Self::MAX_LEN
            && raw
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.' | ':'));
        if ok {
            Ok(Self(raw.to_owned()))
        } else {
            Err(ApiError::invalid(
                "client_id",
                "client_id must be 1-100 characters of A-Z, a-z, 0-9, _ - . :",
            ))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// The body of `PUT /v1/sessions/{client_id}`.
#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields)]
pub struct SyncRequest {
    pub device_name: String,
    pub payload: serde_json::Value,
}

/// The most bytes `synced_sessions.payload` can hold: `MEDIUMTEXT` on MySQL/MariaDB (m009),
/// `text` on PostgreSQL (1 GB a value), and SQLite's default `SQLITE_MAX_LENGTH`.
///
/// The request body is capped separately (MAX_BODY_BYTES, 413). This cap is about what is
/// stored, which is the payload re-serialised as compact JSON and can be longer than what was
/// sent (`1e5` is stored as `100000.0`).
pub fn payload_capacity(backend: DbBackend) -> usize {
    match backend {
        DbBackend::MySql => 16_777_215,
        DbBackend::Postgres => 1_073_741_823,
        _ => 1_000_000_000,
    }
}

/// A sync request that passed every check.
#[derive(Debug)]
pub struct SessionInput {
    pub device_name: String,
    /// The payload as stored: compact JSON text.
    pub payload: String,
}

impl SessionInput {
    pub const MAX_DEVICE_NAME: usize = 255;

    /// `capacity`: the most bytes the payload column stores ([`payload_capacity`]).
    pub fn parse(request: SyncRequest, capacity: usize) -> Result<Self, ApiError> {
        // A device name is one line of text: no control character (Unicode Cc) anywhere, not
        // even around it. PostgreSQL refuses NUL in text outright (a 500 before this check);
        // MariaDB and SQLite would store it, and a newline or escape would reach whatever
        // displays the name.
        if request.device_name.chars().any(char::is_control) {
            return Err(ApiError::invalid(
                "device_name",
                "device_name must not contain control characters (U+0000-U+001F, U+007F-U+009F)",
            ));
        }
        let device_name = request.device_name.trim().to_owned();
        if device_name.is_empty() || device_name.chars().count() > Self::MAX_DEVICE_NAME {
            return Err(ApiError::invalid(
                "device_name",
                "device_name must be 1-255 characters",
            ));
        }
        let payload = serde_json::to_string(&request.payload).map_err(ApiError::internal)?;
        if payload.len() > capacity {
            return Err(ApiError::invalid(
                "payload",
                format!(
                    "payload is {} bytes as stored (compact JSON); this database stores at most \
                     {capacity}",
                    payload.len()
                ),
            ));
        }
        Ok(Self {
            device_name,
            payload,
        })
    }
}

/// An e-mail address as accounts use it: trimmed, lower-cased, at most 320 characters, no
/// whitespace or control characters inside (PostgreSQL refuses NUL in text).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Email(String);

impl Email {
    pub fn parse(raw: &str) -> Result<Self, ApiError> {
        let email = raw.trim().to_lowercase();
        let valid = email.len() <= 320
            && email
                .split_once('@')
                .is_some_and(|(local, domain)| !local.is_empty() && domain.contains('.'))
            && !email.chars().any(|c| c.is_whitespace() || c.is_control());
        if valid {
            Ok(Self(email))
        } else {
            Err(ApiError::invalid(
                "email",
                format!("{raw:?} is not an e-mail address"),
            ))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// `?cursor=…&limit=…` for list endpoints.
#[derive(Deserialize, Debug, Default)]
pub struct PageQuery {
    pub cursor: Option<String>,
    pub limit: Option<String>,
}

pub struct Page {
    /// Return rows with an id below this one (newest first).
    pub before_id: Option<i64>,
    pub limit: u64,
}

impl Page {
    pub fn parse(query: &PageQuery, max: u64) -> Result<Self, ApiError> {
        let limit = match query.limit.as_deref() {
            None | Some("") => max.min(50),
            Some(raw) => match raw.parse::<u64>() {
                Ok(n) if (1..=max).contains(&n) => n,
                _ => {
                    return Err(ApiError::invalid(
                        "limit",
                        format!("limit must be a whole number from 1 to {max}"),
                    ));
                }
            },
        };
        let before_id =
            match query.cursor.as_deref() {
                None | Some("") => None,
                Some(raw) => Some(raw.parse::<i64>().ok().filter(|id| *id > 0).ok_or_else(
                    || ApiError::invalid("cursor", "cursor is not one this API issued"),
                )?),
            };
        Ok(Self { before_id, limit })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_ids() {
        assert!(ClientId::parse("laptop-1.tab:3").is_ok());
        for bad in ["", "has space", "é", &"x".repeat(101), "a/b"] {
            assert!(ClientId::parse(bad).is_err(), "{bad}");
        }
    }

    /// The cap is on the bytes stored, not the bytes sent: `[1e5]` (5 bytes) stores as
    /// `[100000.0]` (10 bytes).
    #[test]
    fn payload_cap_counts_the_stored_form() {
        let request = |payload: &str| SyncRequest {
            device_name: "d".to_owned(),
            payload: serde_json::from_str(payload).unwrap(),
        };
        let stored = SessionInput::parse(request("[1e5]"), 10).unwrap();
        assert_eq!(stored.payload, "[100000.0]");
        let refused = SessionInput::parse(request("[1e5]"), 9).unwrap_err();
        assert!(
            matches!(&refused, ApiError::Invalid { field, .. } if field == "payload"),
            "{refused:?}"
        );
        assert!(payload_capacity(DbBackend::MySql) > 65_535);
    }

    #[test]
    fn device_names_are_one_line_without_control_characters() {
        let request = |device_name: &str| SyncRequest {
            device_name: device_name.to_owned(),
            payload: serde_json::Value::Null,
        };
        for bad in [
            "a\0b",
            "a\nb",
            "a\rb",
            "a\u{1b}[31mb",
            "a\u{7f}b",
            "a\u{85}b",
            "laptop\n",
            "\tlaptop",
        ] {
            let refused = SessionInput::parse(request(bad), 100).unwrap_err();
            assert!(
                matches!(&refused, ApiError::Invalid { field, .. } if field == "device_name"),
                "{bad:?}: {refused:?}"
            );
        }
        // Surrounding spaces are trimmed.
        let ok = SessionInput::parse(request(" Ann's laptop "), 100).unwrap();
        assert_eq!(ok.device_name, "Ann's laptop");
        assert!(SessionInput::parse(request("Café ☕ 🚀"), 100).is_ok());
    }

    #[test]
    fn emails() {
        assert_eq!(
            Email::parse(" Ann@Example.COM ").unwrap().as_str(),
            "ann@example.com"
        );
        for bad in [
            "",
            "ann",
            "@x.y",
            "ann@localhost",
            "a b@x.y",
            "a\0b@x.y",
            "ann@x.y\0",
            "a\u{7f}b@x.y",
            "a\u{85}b@x.y",
            "a\u{1b}b@x.y",
        ] {
            assert!(Email::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn pages() {
        let q = |cursor: Option<&str>, limit: Option<&str>| PageQuery {
            cursor: cursor.map(str::to_owned),
            limit: limit.map(str::to_owned),
        };
        assert_eq!(Page::parse(&q(None, None), 100).unwrap().limit, 50);
        assert_eq!(
            Page::parse(&q(Some("17"), Some("5")), 100)
                .unwrap()
                .before_id,
            Some(17)
        );
        assert!(Page::parse(&q(None, Some("0")), 100).is_err());
        assert!(Page::parse(&q(None, Some("101")), 100).is_err());
        assert!(Page::parse(&q(Some("abc"), None), 100).is_err());
    }
}
