use reqwest::Method;

use crate::helpers::spawn_app;
use crate::support::Backend;

/// Every operation in /openapi.json is routed (never the "no such route" fallback, never 405),
/// and a path the document does not list is not routed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openapi_matches_the_router() {
    let app = spawn_app(Backend::Sqlite).await;
    let token = app.user("ann@example.com").await;
    let (status, doc) = app.json(Method::GET, "/openapi.json", &token).await;
    assert_eq!(status, 200);
    // The field's rules are documented: no control characters (PostgreSQL refuses NUL), not
    // only spaces, at most 255 characters as sent.
    let device_name = &doc["components"]["schemas"]["SyncRequest"]["properties"]["device_name"];
    assert!(
        device_name["pattern"].as_str().is_some_and(
            |p| p.starts_with("^[^\\x00-\\x1F\\x7F-\\x9F\\u2028-\\u202E\\u2066-\\u2069]*")
        ),
        "{device_name}"
    );
    assert_eq!(device_name["maxLength"], 255);
    assert!(
        device_name["description"]
            .as_str()
            .is_some_and(|d| d.contains("control character") && d.contains("only spaces")),
        "{device_name}"
    );
    // The generated document is what the server serves.
    assert_eq!(
        doc,
        serde_json::to_value(api::routes::openapi::document()).unwrap()
    );
    let paths = doc["paths"].as_object().expect("paths");
    assert_eq!(paths.len(), 8);
    let mut operations = 0;
    for (path, item) in paths {
        for (method, operation) in item.as_object().unwrap() {
            if !["get", "put", "post", "delete", "patch"].contains(&method.as_str()) {
                continue; // "parameters"
            }
            // A path or query parameter that does not parse is a 400: documented wherever
            // there is one.
            if path.contains('{') || operation.get("parameters").is_some() {
                assert!(
                    operation["responses"].get("400").is_some(),
                    "{method} {path} does not document 400"
                );
            }
            let method: Method = method.to_uppercase().parse().unwrap();
            operations += 1;
            let concrete = path.replace("{client_id}", "x");
            let response = app
                .request(method.clone(), &concrete, Some(&token))
                .json(&serde_json::json!({"device_name": "d", "payload": 1}))
                .send()
                .await
                .unwrap();
            let status = response.status().as_u16();
            let body: serde_json::Value = response.json().await.unwrap_or_default();
            assert_ne!(status, 405, "{method} {path}");
            assert_ne!(body["error"]["message"], "no such route", "{method} {path}");
        }
    }
    assert_eq!(operations, 10);
    let (status, body) = app.json(Method::GET, "/v1/undocumented", &token).await;
    assert_eq!(
        (status, body["error"]["message"].as_str()),
        (404, Some("no such route"))
    );
    assert_eq!(app.status(Method::GET, "/healthz", &token).await, 200);
}

/// Each response type's schema lists exactly the fields serde writes for it, and requires
/// every field it always writes: the document is generated from the type, so a field added to
/// the struct appears here with no second edit (and this test, which builds every field, is
/// where the compiler asks for it).
#[test]
fn response_schemas_follow_the_serialised_types() {
    use api::error::{ErrorBody, ErrorDetail};
    use api::routes::billing::BillingResponse;
    use api::routes::health::{Database, Health, Status};
    use api::routes::sessions::{SessionPage, SessionResponse};
    use api::routes::webhooks::Receipt;
    use chrono::{DateTime, FixedOffset};
    use serde_json::Value;

    let at: DateTime<FixedOffset> = "2026-01-02T03:04:05+00:00".parse().unwrap();
    let session = || SessionResponse {
        client_id: "c".into(),
        device_name: "d".into(),
        payload: serde_json::value::to_raw_value(&1).unwrap(),
        created_at: at,
        updated_at: at,
        deleted_at: Some(at),
        purge_after: Some(at),
    };
    let samples: Vec<(&str, Value)> = vec![
        ("Session", serde_json::to_value(session()).unwrap()),
        (
            "SessionPage",
            serde_json::to_value(SessionPage {
                items: vec![session()],
                next_cursor: Some("1".into()),
            })
            .unwrap(),
        ),
        (
            "Billing",
            serde_json::to_value(BillingResponse {
                tier: "pro",
                subscription_status: "active".into(),
                current_period_end: Some(at),
                stripe_linked: true,
            })
            .unwrap(),
        ),
        (
            "Health",
            serde_json::to_value(Health {
                status: Status::Ok,
                database: Database::Reachable,
            })
            .unwrap(),
        ),
        (
            "Receipt",
            serde_json::to_value(Receipt {
                received: true,
                outcome: "applied",
            })
            .unwrap(),
        ),
        (
            "Error",
            serde_json::to_value(ErrorBody {
                error: ErrorDetail {
                    code: "c",
                    message: "m".into(),
                    field: Some("f"),
                },
            })
            .unwrap(),
        ),
        (
            "ErrorDetail",
            serde_json::to_value(ErrorDetail {
                code: "c",
                message: "m".into(),
                field: Some("f"),
            })
            .unwrap(),
        ),
    ];
    let doc = serde_json::to_value(api::routes::openapi::document()).unwrap();
    for (name, sample) in samples {
        let schema = &doc["components"]["schemas"][name];
        let documented: Vec<&String> = schema["properties"]
            .as_object()
            .unwrap_or_else(|| panic!("{name} has no properties: {schema}"))
            .keys()
            .collect();
        let written: Vec<&String> = sample.as_object().unwrap().keys().collect();
        let mut documented_sorted = documented.clone();
        documented_sorted.sort();
        let mut written_sorted = written.clone();
        written_sorted.sort();
        assert_eq!(documented_sorted, written_sorted, "{name}");
        let required: Vec<&str> = schema["required"]
            .as_array()
            .map(|r| r.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        for key in written {
            // Only the error's `field` is left out when it has no value.
            let always_written = !(name == "ErrorDetail" && key == "field");
            assert_eq!(
                required.contains(&key.as_str()),
                always_written,
                "{name}.{key} required: {required:?}"
            );
        }
    }
}

/// The document's pattern for `device_name` admits exactly what the server accepts, for every
/// character up to U+3000 and a few beyond: alone (only spaces is refused), and between two
/// letters (a control character is refused anywhere).
#[test]
fn the_device_name_pattern_is_the_servers_rule() {
    use api::domain::{SessionInput, SyncRequest};

    let doc = serde_json::to_value(api::routes::openapi::document()).unwrap();
    let pattern =
        doc["components"]["schemas"]["SyncRequest"]["properties"]["device_name"]["pattern"]
            .as_str()
            .unwrap()
            .to_owned();
    let documented = regex_automata::dfa::regex::Regex::new(&pattern).unwrap();
    let accepted = |name: &str| {
        let request: SyncRequest =
            serde_json::from_value(serde_json::json!({"device_name": name, "payload": 1})).unwrap();
        SessionInput::parse(request, 100).is_ok()
    };
    let extra = ['\u{feff}', '\u{180e}', '\u{200b}', '\u{fffd}', '\u{1f680}'];
    for c in (0..=0x3000u32).filter_map(char::from_u32).chain(extra) {
        for name in [c.to_string(), format!("a{c}b"), format!("{c}{c}")] {
            assert_eq!(
                documented.is_match(&name),
                accepted(&name),
                "{name:?} (U+{:04X})",
                c as u32
            );
        }
    }
}

/// The session operations are linked so that schemathesis's stateful phase chains create →
/// read → delete → trash and restore (it inferred links from PUT's 200 only, and a create is
/// a 201): every declared link is present and targets an operation of the document. None
/// leaves the trash or a restore (api/src/routes/openapi.rs says why).
#[test]
fn session_operations_are_linked_from_create_to_restore() {
    let doc = serde_json::to_value(api::routes::openapi::document()).unwrap();
    let mut operation_ids = Vec::new();
    let mut links = Vec::new();
    for (path, item) in doc["paths"].as_object().expect("paths") {
        for (method, operation) in item.as_object().unwrap() {
            if let Some(id) = operation["operationId"].as_str() {
                operation_ids.push(id.to_owned());
            }
            let Some(responses) = operation["responses"].as_object() else {
                continue;
            };
            for (status, response) in responses {
                for (name, link) in response["links"].as_object().into_iter().flatten() {
                    links.push((
                        format!("{method} {path} {status} {name}"),
                        link["operationId"].as_str().unwrap_or("").to_owned(),
                    ));
                }
            }
        }
    }
    for (from, target) in &links {
        assert!(operation_ids.contains(target), "{from} -> {target}");
    }
    let names: Vec<&str> = links.iter().map(|(from, _)| from.as_str()).collect();
    for chain in [
        "put /v1/sessions/{client_id} 201 UpdateSession",
        "put /v1/sessions/{client_id} 200 GetSession",
        "put /v1/sessions/{client_id} 201 GetSession",
        "get /v1/sessions/{client_id} 200 DeleteSession",
        "delete /v1/sessions/{client_id} 204 ListTrash",
        "delete /v1/sessions/{client_id} 204 RestoreSession",
    ] {
        assert!(names.contains(&chain), "{chain} missing from {names:?}");
    }
    assert!(
        !names
            .iter()
            .any(|name| name.starts_with("get /v1/trash ") || name.starts_with("post ")),
        "{names:?}"
    );
    assert_eq!(links.len(), 8, "{names:?}");
}
