//! `GET /openapi.json`: every endpoint, its inputs, responses and error shape. A test walks
//! this document against the running router (every documented route answers, every routed
//! path is documented), and CI runs schemathesis against it.

use axum::routing::get;
use axum::{Json, Router};
use serde_json::{Value, json};

use crate::state::AppState;

pub fn router() -> Router<AppState> {
    Router::new().route("/openapi.json", get(|| async { Json(document()) }))
}

fn error(description: &str) -> Value {
    json!({
        "description": description,
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}
    })
}

fn body(schema: &str, description: &str) -> Value {
    json!({
        "description": description,
        "content": {"application/json": {"schema": {"$ref": format!("#/components/schemas/{schema}")}}}
    })
}

fn client_id() -> Value {
    json!({
        "name": "client_id", "in": "path", "required": true,
        "description": "Client-chosen session id: 1-100 of A-Z a-z 0-9 _ - . :",
        "schema": {"type": "string", "minLength": 1, "maxLength": 100, "pattern": "^[A-Za-z0-9_.:-]+$"}
    })
}

fn paging() -> Value {
    json!([
        {"name": "cursor", "in": "query", "required": false,
         "description": "next_cursor from the previous page", "schema": {"type": "string"}},
        {"name": "limit", "in": "query", "required": false,
         "description": "page size, 1 to MAX_PAGE_SIZE (default 100); 50 when absent",
         "schema": {"type": "integer", "minimum": 1, "maximum": 100}}
    ])
}

/// The error responses every authenticated endpoint can give.
fn authed(mut responses: Value) -> Value {
    if let Some(map) = responses.as_object_mut() {
        map.insert(
            "401".into(),
            error("missing, malformed or revoked bearer token"),
        );
        map.insert(
            "503".into(),
            error(
                "the database is unavailable or busy (a lock wait past DB_LOCK_TIMEOUT_MS), or \
                 the request ran past REQUEST_TIMEOUT_SECS; retry after Retry-After seconds",
            ),
        );
        map.insert(
            "500".into(),
            error("unexpected error (logged; body is opaque)"),
        );
    }
    responses
}

pub fn document() -> Value {
    let security = json!([{"bearer": []}]);
    json!({
        "openapi": "3.0.3",
        "info": {
            "title": "billing API",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "Synced sessions with soft delete, and the account's billing state. \
                Every error, including a method a path does not accept (405, with an Allow \
                header), has the Error shape."
        },
        "paths": {
            "/healthz": {"get": {
                "summary": "Database reachability",
                "responses": {
                    "200": body("Health", "the database answers (`reachable`), or every pooled connection is in use (`busy`)"),
                    "503": body("Health", "the database does not answer (`unreachable`)")
                }
            }},
            "/openapi.json": {"get": {
                "summary": "This document",
                "responses": {"200": {"description": "OpenAPI 3 document",
                    "content": {"application/json": {"schema": {"type": "object"}}}}}
            }},
            "/v1/billing": {"get": {
                "summary": "Tier and subscription of the caller",
                "security": security,
                "responses": authed(json!({"200": body("Billing", "billing state")}))
            }},
            "/v1/sessions": {"get": {
                "summary": "Live synced sessions, newest first",
                "security": security,
                "parameters": paging(),
                "responses": authed(json!({
                    "200": body("SessionPage", "one page"),
                    "400": error("query string that does not parse (e.g. a parameter given twice)"),
                    "422": error("bad cursor or limit")
                }))
            }},
            "/v1/sessions/{client_id}": {
                "parameters": [client_id()],
                "get": {
                    "summary": "One live session",
                    "security": security,
                    "responses": authed(json!({
                        "200": body("Session", "the session"),
                        "400": error("client_id is not valid percent-encoded UTF-8"),
                        "404": error("no such live session for this user"),
                        "422": error("bad client_id")
                    }))
                },
                "put": {
                    "summary": "Create or update (sync) a session by its client id",
                    "security": security,
                    "requestBody": {"required": true, "content": {"application/json": {
                        "schema": {"$ref": "#/components/schemas/SyncRequest"}}}},
                    "responses": authed(json!({
                        "200": body("Session", "updated"),
                        "201": body("Session", "created (also over a trashed session past its retention window)"),
                        "400": error("malformed JSON, or client_id is not valid percent-encoded UTF-8"),
                        "402": error("the Free plan's session limit is reached"),
                        "409": error("the session is in the trash, inside its retention window; restore it first"),
                        "413": error("body larger than MAX_BODY_BYTES"),
                        "415": error("Content-Type is not application/json"),
                        "422": error("a field is missing, of the wrong type, or too long (payload: longer as stored than its column holds)")
                    }))
                },
                "delete": {
                    "summary": "Soft delete (move to the trash); repeating it is fine",
                    "security": security,
                    "responses": authed(json!({
                        "204": {"description": "in the trash"},
                        "400": error("client_id is not valid percent-encoded UTF-8"),
                        "404": error("no such session for this user"),
                        "422": error("bad client_id")
                    }))
                }
            },
            "/v1/sessions/{client_id}/restore": {
                "parameters": [client_id()],
                "post": {
                    "summary": "Restore from the trash within the retention window",
                    "security": security,
                    "responses": authed(json!({
                        "200": body("Session", "restored (or was not deleted)"),
                        "400": error("client_id is not valid percent-encoded UTF-8"),
                        "402": error("the Free plan's session limit is reached"),
                        "404": error("no such session for this user"),
                        "410": error("deleted longer ago than the plan's retention window"),
                        "422": error("bad client_id")
                    }))
                }
            },
            "/webhooks/stripe": {"post": {
                "summary": "Stripe events (signed with Stripe-Signature)",
                "description": "Acts on checkout.session.completed, customer.subscription.created, \
                    .updated, .deleted, .paused and .resumed, and customer.deleted; acknowledges \
                    any other type. Recording and applying an event are one transaction: a 5xx \
                    leaves nothing behind, and Stripe's retry applies the event.",
                "parameters": [{"name": "Stripe-Signature", "in": "header", "required": true,
                                "schema": {"type": "string"}}],
                "requestBody": {"required": true, "content": {"application/json": {
                    "schema": {"type": "object"}}}},
                "responses": {
                    "200": body("Receipt", "received; `outcome` says what it did"),
                    "400": error("missing, malformed, wrong or stale signature, or not a Stripe event"),
                    "413": error("event larger than 1 MiB"),
                    "500": error("unexpected error, nothing recorded; Stripe retries"),
                    "503": error("database unavailable or busy, request timed out, or webhooks not configured, nothing recorded; Stripe retries")
                }
            }},
            "/v1/trash": {"get": {
                "summary": "Soft-deleted sessions still inside the retention window, newest first, with their purge time",
                "security": security,
                "parameters": paging(),
                "responses": authed(json!({
                    "200": body("SessionPage", "one page"),
                    "400": error("query string that does not parse (e.g. a parameter given twice)"),
                    "422": error("bad cursor or limit")
                }))
            }}
        },
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
            "schemas": {
                "Error": {"type": "object", "required": ["error"], "properties": {
                    "error": {"type": "object", "required": ["code", "message"], "properties": {
                        "code": {"type": "string", "description": "stable, for machines"},
                        "message": {"type": "string", "description": "for people"},
                        "field": {"type": "string", "description": "the offending field, if one"}
                    }}
                }},
                "Health": {"type": "object", "required": ["status", "database"], "properties": {
                    "status": {"type": "string", "enum": ["ok", "unavailable"]},
                    "database": {"type": "string", "enum": ["reachable", "busy", "unreachable"]}
                }},
                "Billing": {"type": "object",
                    "required": ["tier", "subscription_status", "current_period_end", "stripe_linked"],
                    "properties": {
                        "tier": {"type": "string", "enum": ["free", "pro"]},
                        "subscription_status": {"type": "string",
                            "description": "of the subscription that decides the tier now, among all of the user's",
                            "enum": ["none", "trialing", "active", "past_due", "canceled", "unpaid"]},
                        "current_period_end": {"type": "string", "format": "date-time", "nullable": true,
                            "description": "of the same subscription"},
                        "stripe_linked": {"type": "boolean"}
                    }},
                "SyncRequest": {"type": "object", "additionalProperties": false,
                    "required": ["device_name", "payload"],
                    "properties": {
                        "device_name": {"type": "string", "minLength": 1, "maxLength": 255,
                            "pattern": "^[^\\x00-\\x1F\\x7F-\\x9F]*$",
                            "description": "one line of text: 1-255 characters once surrounding spaces are trimmed; control characters (Unicode Cc: U+0000-U+001F, U+007F-U+009F, NUL, tab and newline included) are refused anywhere with 422 naming device_name"},
                        "payload": {"description": "any JSON value; the body is capped by MAX_BODY_BYTES, and the payload as stored (compact JSON) by its column (16 MiB on MySQL)"}
                    }},
                "Session": {"type": "object",
                    "required": ["client_id", "device_name", "payload", "created_at", "updated_at",
                                 "deleted_at", "purge_after"],
                    "properties": {
                        "client_id": {"type": "string"},
                        "device_name": {"type": "string"},
                        "payload": {},
                        "created_at": {"type": "string", "format": "date-time"},
                        "updated_at": {"type": "string", "format": "date-time"},
                        "deleted_at": {"type": "string", "format": "date-time", "nullable": true},
                        "purge_after": {"type": "string", "format": "date-time", "nullable": true}
                    }},
                "Receipt": {"type": "object", "required": ["received", "outcome"], "properties": {
                    "received": {"type": "boolean"},
                    "outcome": {"type": "string", "enum": ["applied", "duplicate", "unknown_customer",
                        "unknown_user", "ignored"]}
                }},
                "SessionPage": {"type": "object", "required": ["items", "next_cursor"], "properties": {
                    "items": {"type": "array", "items": {"$ref": "#/components/schemas/Session"}},
                    "next_cursor": {"type": "string", "nullable": true}
                }}
            }
        }
    })
}
