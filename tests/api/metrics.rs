//! `/metrics` on `METRICS_ADDR`, scraped from a `billing` process (a process of its own: the
//! recorder is one per process, and in-process servers of other tests would add to its counts).

use std::collections::HashMap;
use std::time::{Duration, Instant};

use chrono::Utc;
use reqwest::Method;
use serde_json::json;

use crate::binary::serve_with;
use crate::helpers::{SECRET, TestApp, database_env, event, subscription};
use crate::support::{self, Backend, TestDb};

crate::on_every_backend!(metrics_count_requests_webhooks_pool_and_purges);

/// Every sample of a scrape, by its name and labels as rendered.
async fn scrape(url: &str) -> HashMap<String, f64> {
    let response = reqwest::get(url).await.expect("scrape");
    assert_eq!(response.status(), 200);
    let content_type = response.headers()["content-type"].to_str().unwrap_or("");
    assert!(content_type.starts_with("text/plain"), "{content_type}");
    let text = response.text().await.expect("metrics text");
    assert!(
        !text.contains("tab-1") && !text.contains("tab-404"),
        "a raw path in:\n{text}"
    );
    text.lines()
        .filter(|line| !line.starts_with('#') && !line.is_empty())
        .filter_map(|line| {
            let (series, value) = line.rsplit_once(' ')?;
            Some((series.to_owned(), value.parse().ok()?))
        })
        .collect()
}

fn value(samples: &HashMap<String, f64>, series: &str) -> f64 {
    samples.get(series).copied().unwrap_or(0.0)
}

fn moved(before: &HashMap<String, f64>, after: &HashMap<String, f64>, series: &str) -> f64 {
    value(after, series) - value(before, series)
}

async fn metrics_count_requests_webhooks_pool_and_purges(backend: Backend) {
    let db = TestDb::new(backend).await;
    let mut env = database_env(&db, false);
    env.extend([
        ("METRICS_ADDR", "127.0.0.1:0".to_owned()),
        ("STRIPE_WEBHOOK_SECRETS", SECRET.to_owned()),
        ("PURGE_EVERY_SECS", "1".to_owned()),
    ]);
    let vars: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let server = serve_with(&vars).await.expect("billing serves");
    let url = server
        .started
        .iter()
        .find_map(|line| Some(line.split_once("metrics on ")?.1.trim().to_owned()))
        .unwrap_or_else(|| panic!("no `metrics on` line in {:?}", server.started));
    let app = TestApp::at(server.address.clone(), db);
    let token = app.user("metrics@example.com").await;

    let before = scrape(&url).await;
    assert_eq!(
        app.put_session(&token, "tab-1", "laptop").await.status(),
        201
    );
    assert_eq!(
        app.status(Method::GET, "/v1/sessions/tab-1", &token).await,
        200
    );
    assert_eq!(
        app.status(Method::GET, "/v1/sessions/tab-404", &token)
            .await,
        404
    );
    assert_eq!(
        app.status(Method::DELETE, "/v1/sessions/tab-1", &token)
            .await,
        204
    );
    let now = Utc::now().timestamp();
    let updated = subscription(
        "evt_metrics_1",
        "updated",
        now,
        ("cus_metrics", "sub_metrics"),
        "active",
        now + 30 * 86_400,
        true,
    );
    let (status, receipt) = app.deliver_event(&updated).await;
    assert_eq!(
        (status, receipt["outcome"].as_str()),
        (200, Some("unknown_customer"))
    );
    let invoice = event(
        "evt_metrics_2",
        "invoice.paid",
        now,
        json!({"id": "in_1", "object": "invoice"}),
    );
    let (status, receipt) = app.deliver_event(&invoice).await;
    assert_eq!(
        (status, receipt["outcome"].as_str()),
        (200, Some("ignored"))
    );
    let (status, _) = app.deliver("{}", Some("t=1,v1=00")).await;
    assert_eq!(status, 400);
    // Past the Free window: the server's own purge (every second) removes it.
    app.age_deletion("tab-1", 8).await;

    let purged = "billing_purge_rows_total";
    let deadline = Instant::now() + Duration::from_secs(30);
    let after = loop {
        let after = scrape(&url).await;
        if value(&after, purged) >= 1.0 || Instant::now() > deadline {
            break after;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };

    let route = r#"route="/v1/sessions/{client_id}""#;
    for (method, status) in [("PUT", 201), ("GET", 200), ("GET", 404), ("DELETE", 204)] {
        let labels = format!(r#"{{method="{method}",{route},status="{status}"}}"#);
        let requests = format!("billing_http_requests_total{labels}");
        assert_eq!(moved(&before, &after, &requests), 1.0, "{requests}");
        let timed = format!("billing_http_request_duration_seconds_count{labels}");
        assert_eq!(moved(&before, &after, &timed), 1.0, "{timed}");
    }
    let webhook_200 =
        r#"billing_http_requests_total{method="POST",route="/webhooks/stripe",status="200"}"#;
    assert_eq!(moved(&before, &after, webhook_200), 2.0);
    for (event_type, outcome) in [
        ("customer.subscription.updated", "unknown_customer"),
        ("other", "ignored"),
        ("unread", "invalid_signature"),
    ] {
        let series = format!(
            r#"billing_webhook_events_total{{event_type="{event_type}",outcome="{outcome}"}}"#
        );
        assert_eq!(moved(&before, &after, &series), 1.0, "{series}");
    }

    let pool_max = if backend == Backend::Sqlite {
        1.0
    } else {
        10.0
    };
    assert_eq!(value(&after, "billing_db_pool_max_connections"), pool_max);
    let open = value(&after, "billing_db_pool_open_connections");
    assert!((1.0..=pool_max).contains(&open), "open connections: {open}");
    assert!(after.contains_key("billing_db_pool_in_use_connections"));
    assert!(moved(&before, &after, "billing_db_begin_wait_seconds_count") >= 4.0);

    let age = value(&after, "billing_stripe_newest_event_age_seconds");
    assert!(after.contains_key("billing_stripe_newest_event_age_seconds"));
    assert!((0.0..120.0).contains(&age), "newest event age: {age}");

    assert_eq!(value(&after, purged), 1.0, "the aged session, once");
    assert!(value(&after, r#"billing_purge_runs_total{outcome="ok"}"#) >= 1.0);
    assert!(value(&after, "billing_purge_duration_seconds_count") >= 1.0);
    assert!(value(&after, "billing_purge_last_success_timestamp_seconds") >= now as f64);
}
