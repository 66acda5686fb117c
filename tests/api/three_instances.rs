//! The production shape (docs/operations.md, "Three instances behind PgBouncer"): `migration up`
//! on the direct URL, then three `billing` processes with `MIGRATE=check` on one PostgreSQL
//! database through the transaction-mode PgBouncer (TEST_POSTGRES_POOLER_URL, else
//! 127.0.0.1:6432; unreachable fails the test, never skips it), each running the purge every
//! second, under mixed traffic spread across the three:
//!
//! * several clients per Free user racing to create sessions at the limit, then a deleted
//!   session's restore racing two creations;
//! * sequential writes to each session, each through another instance than the last, each read
//!   back through a third;
//! * Stripe events shuffled, each delivered twice, to any instance;
//! * trashed sessions either side of the Free and Pro windows.
//!
//! Every guarantee is checked: exactly 3 live sessions per Free user, the billing state equal
//! to a ledger of the events (the newest event of each subscription decides), no lost update,
//! the purge windows, and no 5xx but the documented 503s (`busy`, `unavailable`, `timeout`),
//! which are retried as a client (and Stripe) would, and counted.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::Utc;
use reqwest::{Client, Method};
use serde_json::{Value, json};

use crate::binary::{Server, serve_with};
use crate::helpers::{SECRET, TestApp, checkout, database_env, subscription};
use crate::support::{Backend, TestDb, migration_bin};

const INSTANCES: usize = 3;
const FREE_USERS: usize = 6;
/// Clients per Free user racing for the 3 places.
const CLIENTS: usize = 5;
const FREE_LIMIT: usize = 3;
/// Sequential writes to each live session.
const WRITES: u64 = 4;
const BILLED_USERS: usize = 4;

/// The 503s met, by error code: each was retried.
#[derive(Clone, Default)]
struct Unavailable(Arc<Mutex<BTreeMap<String, u64>>>);

/// The documented 503 codes (docs/operations.md, "Database faults").
const RETRYABLE: [&str; 3] = ["busy", "unavailable", "timeout"];

impl Unavailable {
    /// Sends until the answer is not a documented 503; any other 5xx fails the test.
    async fn call(
        &self,
        client: &Client,
        method: Method,
        url: &str,
        token: Option<&str>,
        body: Option<(&str, &str)>,
    ) -> (u16, Value) {
        for _ in 0..100 {
            let mut request = client.request(method.clone(), url);
            if let Some(token) = token {
                request = request.bearer_auth(token);
            }
            if let Some((content, signature)) = body {
                request = request
                    .header("content-type", "application/json")
                    .body(content.to_owned());
                if !signature.is_empty() {
                    request = request.header("stripe-signature", signature);
                }
            }
            let response = request.send().await.expect("request");
            let status = response.status().as_u16();
            let body = response.json().await.unwrap_or(Value::Null);
            if status == 503 {
                let code = body["error"]["code"].as_str().unwrap_or("?").to_owned();
                assert!(RETRYABLE.contains(&code.as_str()), "503 {code}: {body}");
                *self.0.lock().unwrap().entry(code).or_default() += 1;
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
            assert!(status < 500, "{method} {url}: {status} {body}");
            return (status, body);
        }
        panic!("{method} {url}: still 503 after 100 tries");
    }
}

/// A tiny deterministic generator: the same shuffles on every run.
struct Draws(u64);

impl Draws {
    fn below(&mut self, n: usize) -> usize {
        self.0 = self
            .0
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        ((self.0 >> 33) % n as u64) as usize
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn behind_pgbouncer() {
    let started = Instant::now();
    let db = TestDb::new(Backend::Postgres).await;
    // The deploy step, on the direct URL.
    let migrated = std::process::Command::new(migration_bin())
        .args(["-u", &db.url, "up"])
        .output()
        .expect("run migration up");
    assert!(migrated.status.success(), "{migrated:?}");

    let mut env = database_env(&db, true);
    assert!(
        env.iter()
            .any(|(name, value)| *name == "DB_POOLER" && value == "transaction")
    );
    env.extend([
        ("MIGRATE", "check".to_owned()),
        ("STRIPE_WEBHOOK_SECRETS", SECRET.to_owned()),
        ("PURGE_EVERY_SECS", "1".to_owned()),
        ("DB_MAX_CONNECTIONS", "4".to_owned()),
    ]);
    let vars: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let servers: Vec<Server> = start_three(&vars).await;
    let primary = TestApp::at(servers[0].address.clone(), db);
    let apps: Arc<Vec<TestApp>> = Arc::new(
        servers
            .iter()
            .map(|server| primary.sibling(server.address.clone()))
            .collect(),
    );
    let unavailable = Unavailable::default();

    // Trash either side of each window, 5 minutes from its edge (the run takes well under).
    let purge_cases = seed_trash(&primary).await;

    // Free users, each with a token per client.
    let mut free = Vec::new();
    for u in 0..FREE_USERS {
        let email = format!("free{u}@example.com");
        let first = primary.user(&email).await;
        let id = primary.user_id(&email).await;
        let mut tokens = vec![first];
        for _ in 1..CLIENTS {
            let token = api::auth::issue(&primary.db.db, id, None)
                .await
                .expect("token");
            tokens.push(token);
        }
        free.push(tokens);
    }

    // Billed users and their events: the ledger says the newest event of each decides.
    let now = Utc::now().timestamp();
    let mut deliveries = Vec::new();
    let mut expected = HashMap::new();
    for b in 0..BILLED_USERS {
        let email = format!("billed{b}@example.com");
        primary.user(&email).await;
        let id = primary.user_id(&email).await;
        let (customer, sub) = (format!("cus_three{b}"), format!("sub_three{b}"));
        let end = now + 30 * 86_400;
        let mut events = vec![checkout(
            &format!("evt_{b}_0"),
            now - 100,
            id,
            &customer,
            &sub,
        )];
        let mut statuses = vec![
            ("created", "active"),
            ("updated", "past_due"),
            ("updated", "active"),
        ];
        if b % 2 == 1 {
            statuses.push(("deleted", "canceled"));
        }
        for (i, (kind, status)) in statuses.iter().enumerate() {
            let created = now - 90 + i as i64;
            let id = format!("evt_{b}_{}", i + 1);
            events.push(subscription(
                &id,
                kind,
                created,
                (&customer, &sub),
                status,
                end,
                true,
            ));
        }
        let last = statuses.last().map(|(_, status)| *status).unwrap_or("none");
        expected.insert(email, (customer, last.to_owned()));
        for event in events {
            deliveries.push(event.to_string());
            deliveries.push(event.to_string());
        }
    }
    let mut draws = Draws(0x5eed_2020);
    for i in (1..deliveries.len()).rev() {
        deliveries.swap(i, draws.below(i + 1));
    }
    let event_count = deliveries.len() / 2;

    // Phase 1, all at once: the Free race and the webhook deliveries.
    let mut tasks = tokio::task::JoinSet::new();
    let created = Arc::new(Mutex::new(vec![Vec::new(); FREE_USERS]));
    for (u, tokens) in free.iter().enumerate() {
        for (k, token) in tokens.iter().enumerate() {
            let (apps, unavailable, created) = (apps.clone(), unavailable.clone(), created.clone());
            let token = token.clone();
            tasks.spawn(async move {
                let app = &apps[(u + k) % INSTANCES];
                let client_id = format!("u{u}-c{k}");
                let url = format!("{}/v1/sessions/{client_id}", app.address);
                let body = json!({"device_name": "d", "payload": {"n": 0}}).to_string();
                let (status, answer) = unavailable
                    .call(
                        &app.client,
                        Method::PUT,
                        &url,
                        Some(&token),
                        Some((&body, "")),
                    )
                    .await;
                match status {
                    200 | 201 => created.lock().unwrap()[u].push((client_id, token)),
                    402 => assert_eq!(answer["error"]["code"], "tier_limit_reached"),
                    other => panic!("PUT {client_id}: {other} {answer}"),
                }
            });
        }
    }
    let receipts = Arc::new(Mutex::new(HashMap::<String, Vec<String>>::new()));
    let queue = Arc::new(Mutex::new(deliveries));
    for worker in 0..6 {
        let (apps, unavailable, queue, receipts) = (
            apps.clone(),
            unavailable.clone(),
            queue.clone(),
            receipts.clone(),
        );
        tasks.spawn(async move {
            let mut turn = worker;
            loop {
                let Some(body) = queue.lock().unwrap().pop() else {
                    return;
                };
                let app = &apps[turn % INSTANCES];
                turn += 1;
                let signature =
                    api::stripe::signature::sign(body.as_bytes(), SECRET, Utc::now().timestamp());
                let url = format!("{}/webhooks/stripe", app.address);
                let (status, receipt) = unavailable
                    .call(
                        &app.client,
                        Method::POST,
                        &url,
                        None,
                        Some((&body, &signature)),
                    )
                    .await;
                assert_eq!(status, 200, "{receipt}");
                let id = serde_json::from_str::<Value>(&body).unwrap()["id"]
                    .as_str()
                    .unwrap()
                    .to_owned();
                let outcome = receipt["outcome"].as_str().unwrap_or("?").to_owned();
                receipts
                    .lock()
                    .unwrap()
                    .entry(id)
                    .or_default()
                    .push(outcome);
            }
        });
    }
    while let Some(joined) = tasks.join_next().await {
        joined.expect("phase 1 task");
    }
    let winners = created.lock().unwrap().clone();
    for (u, sessions) in winners.iter().enumerate() {
        assert_eq!(
            sessions.len(),
            FREE_LIMIT,
            "user {u}'s successful creations: {sessions:?}"
        );
    }

    // Phase 2: each live session written WRITES times, each write through the next instance
    // and read back through the one after: an acknowledged write is never lost or unseen.
    for (u, sessions) in winners.iter().enumerate() {
        for (s, (client_id, token)) in sessions.iter().enumerate() {
            let (apps, unavailable) = (apps.clone(), unavailable.clone());
            let (client_id, token) = (client_id.clone(), token.clone());
            tasks.spawn(async move {
                for n in 1..=WRITES {
                    let at = (u + s + n as usize) % INSTANCES;
                    let (writer, reader) = (&apps[at], &apps[(at + 1) % INSTANCES]);
                    let url = format!("{}/v1/sessions/{client_id}", writer.address);
                    let body = json!({"device_name": "d", "payload": {"n": n}}).to_string();
                    let (status, answer) = unavailable
                        .call(
                            &writer.client,
                            Method::PUT,
                            &url,
                            Some(&token),
                            Some((&body, "")),
                        )
                        .await;
                    assert_eq!(status, 200, "write {n} of {client_id}: {answer}");
                    let url = format!("{}/v1/sessions/{client_id}", reader.address);
                    let (status, read) = unavailable
                        .call(&reader.client, Method::GET, &url, Some(&token), None)
                        .await;
                    assert_eq!(
                        (status, &read["payload"]["n"]),
                        (200, &json!(n)),
                        "{client_id}"
                    );
                }
            });
        }
    }
    while let Some(joined) = tasks.join_next().await {
        joined.expect("phase 2 task");
    }

    // Phase 3: per user, one session deleted, then its restore races two new sessions, each
    // through another instance: exactly one of the three may win the freed place.
    let raced = Arc::new(Mutex::new(vec![0usize; FREE_USERS]));
    for (u, sessions) in winners.iter().enumerate() {
        let (apps, unavailable, raced) = (apps.clone(), unavailable.clone(), raced.clone());
        let (victim, token) = sessions[0].clone();
        tasks.spawn(async move {
            let app = &apps[u % INSTANCES];
            let url = format!("{}/v1/sessions/{victim}", app.address);
            let (status, _) = unavailable
                .call(&app.client, Method::DELETE, &url, Some(&token), None)
                .await;
            assert_eq!(status, 204);
            let mut racers = tokio::task::JoinSet::new();
            for r in 0..3 {
                let (apps, unavailable, token, victim) = (
                    apps.clone(),
                    unavailable.clone(),
                    token.clone(),
                    victim.clone(),
                );
                racers.spawn(async move {
                    let app = &apps[(u + r) % INSTANCES];
                    let (status, answer) = if r == 0 {
                        let url = format!("{}/v1/sessions/{victim}/restore", app.address);
                        unavailable
                            .call(&app.client, Method::POST, &url, Some(&token), None)
                            .await
                    } else {
                        let url = format!("{}/v1/sessions/u{u}-new{r}", app.address);
                        let body = json!({"device_name": "d", "payload": {"n": 0}}).to_string();
                        unavailable
                            .call(
                                &app.client,
                                Method::PUT,
                                &url,
                                Some(&token),
                                Some((&body, "")),
                            )
                            .await
                    };
                    match status {
                        200 | 201 => 1,
                        402 => 0,
                        other => panic!("racer {r} of user {u}: {other} {answer}"),
                    }
                });
            }
            let mut won = 0;
            while let Some(result) = racers.join_next().await {
                won += result.expect("racer");
            }
            raced.lock().unwrap()[u] = won;
        });
    }
    while let Some(joined) = tasks.join_next().await {
        joined.expect("phase 3 task");
    }
    assert_eq!(
        *raced.lock().unwrap(),
        vec![1; FREE_USERS],
        "winners of each freed place"
    );

    // Exactly 3 live sessions per Free user, and no lost update.
    for (u, sessions) in winners.iter().enumerate() {
        let email = format!("free{u}@example.com");
        let live = primary
            .db
            .texts(&format!(
                "SELECT s.client_id || '=' || s.payload FROM synced_sessions s JOIN users u \
                 ON u.id = s.user_id WHERE u.email = '{email}' AND s.deleted_at IS NULL \
                 ORDER BY s.client_id"
            ))
            .await;
        assert_eq!(live.len(), FREE_LIMIT, "{email}: {live:?}");
        for (client_id, _) in &sessions[1..] {
            let row = live
                .iter()
                .find(|row| row.starts_with(&format!("{client_id}=")));
            let payload = row.and_then(|row| row.split_once('=')).map(|(_, p)| p);
            let n = payload.and_then(|p| serde_json::from_str::<Value>(p).ok());
            assert_eq!(
                n.map(|p| p["n"].clone()),
                Some(json!(WRITES)),
                "{client_id}: {live:?}"
            );
        }
    }

    // The billing state equals the ledger's; each event recorded once, each answered
    // `duplicate` at least once (it was delivered twice).
    for (email, (customer, status)) in &expected {
        let row = primary
            .db
            .texts(&format!(
                "SELECT coalesce(stripe_customer_id, '-') || '|' || subscription_status \
                 FROM users WHERE email = '{email}'"
            ))
            .await;
        assert_eq!(row, vec![format!("{customer}|{status}")], "{email}");
    }
    let recorded = primary.db.texts("SELECT count(*) FROM stripe_events").await;
    assert_eq!(recorded, vec![event_count.to_string()]);
    let receipts = receipts.lock().unwrap().clone();
    assert_eq!(receipts.len(), event_count);
    for (id, outcomes) in &receipts {
        assert_eq!(outcomes.len(), 2, "{id}: {outcomes:?}");
        let firsts = outcomes.iter().filter(|o| *o != "duplicate").count();
        assert!(firsts <= 1, "{id} applied twice: {outcomes:?}");
    }

    // The purge windows: everything past its window gone, nothing inside it touched.
    let deadline = Instant::now() + Duration::from_secs(15);
    let expired: Vec<&str> = purge_cases.iter().filter(|c| c.1).map(|c| c.0).collect();
    loop {
        let left = trash_left(&primary, &purge_cases).await;
        if !left.iter().any(|id| expired.contains(&id.as_str())) || Instant::now() > deadline {
            let kept: Vec<&str> = purge_cases.iter().filter(|c| !c.1).map(|c| c.0).collect();
            assert_eq!(left, kept, "trash left after the purges");
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    // The sessions deleted in phase 3 (restored since, or in the trash a minute at most) are
    // all still there.
    let victims: Vec<String> = winners.iter().map(|s| format!("'{}'", s[0].0)).collect();
    let kept = primary
        .db
        .texts(&format!(
            "SELECT count(*) FROM synced_sessions WHERE client_id IN ({})",
            victims.join(", ")
        ))
        .await;
    assert_eq!(kept, vec![FREE_USERS.to_string()]);

    let met = unavailable.0.lock().unwrap().clone();
    eprintln!(
        "three instances: {} s, documented 503s met and retried: {met:?}",
        started.elapsed().as_secs()
    );
    drop(servers);
}

/// Starts the three instances at once; each must refuse nothing (`MIGRATE=check`).
async fn start_three(vars: &[(&str, &str)]) -> Vec<Server> {
    let (a, b, c) = tokio::join!(serve_with(vars), serve_with(vars), serve_with(vars));
    [a, b, c]
        .into_iter()
        .map(|server| server.expect("billing serves"))
        .collect()
}

/// Trashed sessions of a Free and a Pro user, 5 minutes inside or past each window:
/// (client id, past its window).
async fn seed_trash(app: &TestApp) -> Vec<(&'static str, bool)> {
    app.user("trash-free@example.com").await;
    app.user("trash-pro@example.com").await;
    app.set_subscription("trash-pro@example.com", "active")
        .await;
    let margin = chrono::Duration::minutes(5);
    let cases = [
        (
            "trash-free",
            "free-inside",
            chrono::Duration::days(7) - margin,
            false,
        ),
        (
            "trash-free",
            "free-past",
            chrono::Duration::days(7) + margin,
            true,
        ),
        (
            "trash-pro",
            "pro-inside",
            chrono::Duration::days(30) - margin,
            false,
        ),
        (
            "trash-pro",
            "pro-past",
            chrono::Duration::days(30) + margin,
            true,
        ),
    ];
    for (user, client_id, ago, _) in cases {
        let uid = app.user_id(&format!("{user}@example.com")).await;
        let deleted_at = (Utc::now() - ago).fixed_offset();
        let stmt = app.db.stmt(
            "INSERT INTO synced_sessions (user_id, client_id, device_name, payload, deleted_at) \
             VALUES ($1, $2, 'd', '{}', $3)",
            vec![uid.into(), client_id.into(), deleted_at.into()],
        );
        sea_orm::ConnectionTrait::execute_raw(&app.db.db, stmt)
            .await
            .expect("insert trashed session");
    }
    cases.iter().map(|c| (c.1, c.3)).collect()
}

async fn trash_left(app: &TestApp, cases: &[(&str, bool)]) -> Vec<String> {
    let ids: Vec<String> = cases.iter().map(|c| format!("'{}'", c.0)).collect();
    app.db
        .texts(&format!(
            "SELECT client_id FROM synced_sessions WHERE client_id IN ({}) ORDER BY client_id",
            ids.join(", ")
        ))
        .await
}
