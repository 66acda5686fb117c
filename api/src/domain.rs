//! Request values parsed into types that cannot hold a bad value (parse, don't validate).
//! Caps match the schema: `client_id` VARCHAR(100), `device_name` VARCHAR(255), `payload` as
//! many bytes as its column holds on the backend in use ([`payload_capacity`]).

use sea_orm::DbBackend;
use serde::Deserialize;
use serde_json::value::RawValue;
use unicode_normalization::UnicodeNormalization;
use utoipa::{IntoParams, ToSchema};

use crate::error::ApiError;

/// A client-chosen session id: 1-100 of `A-Z a-z 0-9 _ - . :`, but not `.` or `..`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClientId(String);

impl ClientId {
    pub const MAX_LEN: usize = 100;

    pub fn parse(raw: &str) -> Result<Self, ApiError> {
        let ok = !raw.is_empty()
            && raw.len() <= Self::MAX_LEN
            && raw
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.' | ':'))
            // A client's URL library resolves `/v1/sessions/..` to `/v1/`, as RFC 3986's
            // dot-segment removal says: a session with this id could be stored, never reached.
            && !matches!(raw, "." | "..");
        if ok {
            Ok(Self(raw.to_owned()))
        } else {
            Err(ApiError::invalid(
                "client_id",
                "client_id must be 1-100 characters of A-Z, a-z, 0-9, _ - . :, and not . or ..",
            ))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// The body of `PUT /v1/sessions/{client_id}`.
#[derive(Deserialize, Debug, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SyncRequest {
    /// One line of text, at most 255 characters as sent, stored with surrounding spaces
    /// trimmed. Refused with 422 naming `device_name`: only spaces, any control character
    /// (Unicode Cc: U+0000-U+001F, U+007F-U+009F; NUL, tab and newline included), the line
    /// and paragraph separators U+2028 and U+2029, and the bidirectional controls
    /// U+202A-U+202E and U+2066-U+2069.
    //
    // The pattern: at least one character that is not a space, no control character (Unicode
    // Cc) anywhere. The spaces are those `str::trim` removes, less the control characters
    // already refused; ECMA-262's `\s` is not used, as it differs (e.g. on U+FEFF).
    #[schema(
        min_length = 1,
        max_length = 255,
        pattern = "^[^\\x00-\\x1F\\x7F-\\x9F\\u2028-\\u202E\\u2066-\\u2069]*[^\\x00-\\x20\\x7F-\\xA0\\u1680\\u2000-\\u200A\\u2028-\\u202F\\u205F\\u2066-\\u2069\\u3000][^\\x00-\\x1F\\x7F-\\x9F\\u2028-\\u202E\\u2066-\\u2069]*$"
    )]
    pub device_name: String,
    /// Any JSON value, stored and returned exactly as sent (numbers of any size, key order and
    /// whitespace kept). The body is capped by MAX_BODY_BYTES, the payload by its column (16 MiB
    /// on MySQL/MariaDB).
    #[schema(value_type = Value)]
    pub payload: Box<RawValue>,
}

/// The most bytes `synced_sessions.payload` can hold: `MEDIUMTEXT` on MySQL/MariaDB (m009),
/// `text` on PostgreSQL (1 GB a value), and SQLite's default `SQLITE_MAX_LENGTH`.
///
/// The request body is capped separately (MAX_BODY_BYTES, 413). This cap is about what is
/// stored: the payload's JSON text as sent.
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
    /// The payload as stored: its JSON text exactly as sent. It is never re-encoded, which
    /// would round a number beyond 64 bits to a float (the column is text on every backend,
    /// never `jsonb`/`JSON`, which would normalise it too).
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
        // U+2028/U+2029 break the line in JavaScript and in many displays; a bidirectional
        // override (U+202E) makes "laptop\u{202E}cod.exe" display as "laptopexe.doc".
        if request.device_name.chars().any(breaks_lines_or_reorders) {
            return Err(ApiError::invalid(
                "device_name",
                "device_name must not contain line or paragraph separators (U+2028, U+2029) \
                 or bidirectional controls (U+202A-U+202E, U+2066-U+2069)",
            ));
        }
        // The length is counted as sent, as the document's maxLength counts it.
        let device_name = request.device_name.trim().to_owned();
        if device_name.is_empty() || request.device_name.chars().count() > Self::MAX_DEVICE_NAME {
            return Err(ApiError::invalid(
                "device_name",
                "device_name must be 1-255 characters, not only spaces",
            ));
        }
        let payload = String::from(Box::<str>::from(request.payload));
        if payload.len() > capacity {
            return Err(ApiError::invalid(
                "payload",
                format!(
                    "payload is {} bytes; this database stores at most {capacity}",
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

fn breaks_lines_or_reorders(c: char) -> bool {
    matches!(c, '\u{2028}'..='\u{202E}' | '\u{2066}'..='\u{2069}')
}

/// An e-mail address as accounts use it: trimmed, lower-cased, in Unicode normal form C, at
/// most 320 characters, no whitespace or control characters inside (PostgreSQL refuses NUL in
/// text). Without NFC, `josé` typed as `e` + U+0301 and as U+00E9 were two users, and
/// `revoke-tokens` could hit the wrong one.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Email(String);

impl Email {
    pub fn parse(raw: &str) -> Result<Self, ApiError> {
        // Lower-casing can leave a string that is not NFC; normalising last keeps it NFC.
        let email: String = raw.trim().to_lowercase().nfc().collect();
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
#[derive(Deserialize, Debug, Default, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct PageQuery {
    /// `next_cursor` from the previous page (digits; empty or absent for the first page).
    #[param(pattern = "^[0-9]*$")]
    pub cursor: Option<String>,
    /// Page size, 1 to MAX_PAGE_SIZE (100 unless the server sets another); 50 when absent.
    #[param(value_type = Option<u64>, minimum = 1, maximum = 100)]
    pub limit: Option<String>,
}

pub struct Page {
    /// Return rows with an id below this one (newest first).
    pub before_id: Option<i64>,
    pub limit: u64,
}

impl Page {
    pub fn parse(query: &PageQuery, max: u64) -> Result<Self, ApiError> {
        // An empty `limit=` is refused like any other non-number: the document says integer.
        let limit = match query.limit.as_deref() {
            None => max.min(50),
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
        // A cursor is the last id of the previous page: the page holds the rows below it. Any
        // digits are a cursor, one past every id included (the next page is then the first).
        let before_id = match query.cursor.as_deref() {
            None | Some("") => None,
            Some(raw) if raw.bytes().all(|b| b.is_ascii_digit()) => {
                Some(raw.parse::<i64>().unwrap_or(i64::MAX))
            }
            Some(_) => {
                return Err(ApiError::invalid(
                    "cursor",
                    "cursor is not one this API issued (digits)",
                ));
            }
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

    fn sync_request(body: &str) -> SyncRequest {
        serde_json::from_str(body).unwrap()
    }

    /// The payload is kept as sent: a number beyond 64 bits, key order and whitespace inside
    /// it are not re-encoded, and the cap counts those bytes.
    #[test]
    fn payload_is_kept_as_sent() {
        let sent = r#"{"z": 123456789012345678901234567890, "a" :[1e5, 1.50]}"#;
        let body = format!(r#"{{"device_name": "d", "payload": {sent}}}"#);
        let stored = SessionInput::parse(sync_request(&body), sent.len()).unwrap();
        assert_eq!(stored.payload, sent);
        let refused = SessionInput::parse(sync_request(&body), sent.len() - 1).unwrap_err();
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
            payload: Box::<RawValue>::default(),
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
        // Only spaces, or longer than 255 characters as sent (the document's maxLength).
        for bad in ["   ", "\u{3000}", &format!(" {}", "x".repeat(255))] {
            assert!(SessionInput::parse(request(bad), 100).is_err(), "{bad:?}");
        }
        assert!(SessionInput::parse(request(&"x".repeat(255)), 100).is_ok());
    }

    #[test]
    fn emails_are_nfc_normalised() {
        let decomposed = Email::parse("Jose\u{301}@example.com").unwrap();
        let composed = Email::parse("jos\u{e9}@example.com").unwrap();
        assert_eq!(decomposed, composed);
        assert_eq!(composed.as_str(), "jos\u{e9}@example.com");
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
        assert!(Page::parse(&q(None, Some("")), 100).is_err());
        assert!(Page::parse(&q(None, Some("101")), 100).is_err());
        assert!(Page::parse(&q(Some("abc"), None), 100).is_err());
        assert!(Page::parse(&q(Some("-1"), None), 100).is_err());
        // Digits past every id (and past i64) are the first page.
        let far = "9".repeat(40);
        assert_eq!(
            Page::parse(&q(Some(&far), None), 100).unwrap().before_id,
            Some(i64::MAX)
        );
    }
}
