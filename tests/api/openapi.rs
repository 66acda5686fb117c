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
    // The field's rules are documented: no control characters (PostgreSQL refuses NUL).
    let device_name = &doc["components"]["schemas"]["SyncRequest"]["properties"]["device_name"];
    assert_eq!(device_name["pattern"], "^[^\\x00-\\x1F\\x7F-\\x9F]*$");
    assert!(
        device_name["description"]
            .as_str()
            .is_some_and(|d| d.contains("control characters")),
        "{device_name}"
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
